-- The ledger is append-only: any UPDATE or DELETE of a row is refused (triggers/append_only.sql).
CREATE OR REPLACE FUNCTION {{schema}}agentkey_append_only() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  RAISE EXCEPTION 'the agentkey ledger % is append-only', TG_TABLE_NAME USING ERRCODE = 'P0001';
END $fn$;
