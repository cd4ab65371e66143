-- Run by migrate() whenever keys may have spend the ledger does not explain (the package's
-- budget_used_cents of a table agentkey just took over, or a table restored without its
-- ledger): that spend becomes one opening row, so audit() holds from the first day. Keys
-- the ledger knows are left alone, so running it again never counts twice.
INSERT INTO {{ledger}} (key_id, account_id, kind, amount_micros, metadata)
  SELECT k.id, COALESCE(k.account_id::text, ''), 'adjust', k.spent_micros, '{"reason":"opening balance at migration"}'::jsonb
  FROM {{table}} k WHERE k.spent_micros <> 0
    AND NOT EXISTS (SELECT 1 FROM {{ledger}} l WHERE l.key_id = k.id);
