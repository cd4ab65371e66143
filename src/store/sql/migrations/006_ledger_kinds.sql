-- Version 6: the ledger admits every kind of row, 'overage' among them.
ALTER TABLE {{ledger}} ADD CONSTRAINT agentkey_ledger_kind
  CHECK (kind IN ('charge', 'hold', 'commit', 'release', 'expire', 'reset', 'adjust', 'overage'));
