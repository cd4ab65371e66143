-- Version 4 (batched charges and holds, change notifications: both are functions and
-- triggers, made by every migrate()): the ledger's B-tree time index gives way to a BRIN one.
DROP INDEX IF EXISTS {{schema}}"{{base}}_ledger_time_idx";
