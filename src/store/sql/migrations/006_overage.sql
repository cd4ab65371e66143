-- Version 6: overage, the part of a commit's real cost that no budget over the key could
-- take. Keys count their overage (never toward a cap); a committed hold keeps the part of
-- its cost that was overage, for replays. (The ledger's kind check is made again to admit
-- the kind: 006_ledger_kinds.sql, after the old check is dropped by name.)
ALTER TABLE {{table}} ADD COLUMN IF NOT EXISTS overage_micros BIGINT NOT NULL DEFAULT 0;

ALTER TABLE {{holds}} ADD COLUMN IF NOT EXISTS overage_micros BIGINT;
