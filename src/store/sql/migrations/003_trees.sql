-- Version 3: delegation trees and account ceilings. Keys get their parent and the ids of
-- all their ancestors (fixed at creation); accounts get an optional ceiling row; holds keep
-- the path and account they were taken on.
ALTER TABLE {{table}}
  ADD COLUMN IF NOT EXISTS parent_id BIGINT,
  ADD COLUMN IF NOT EXISTS ancestor_ids BIGINT[] NOT NULL DEFAULT '{}',
  ADD COLUMN IF NOT EXISTS depth INTEGER NOT NULL DEFAULT 0;

CREATE TABLE IF NOT EXISTS {{accounts}} (
  account_id TEXT PRIMARY KEY,
  budget_micros BIGINT NOT NULL,
  spent_micros BIGINT NOT NULL DEFAULT 0,
  budget_period TEXT CHECK (budget_period IN ('day', 'month')),
  period_start_at TIMESTAMPTZ,
  budget_reset_at TIMESTAMPTZ,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now());

ALTER TABLE {{holds}}
  ADD COLUMN IF NOT EXISTS path BIGINT[],
  ADD COLUMN IF NOT EXISTS account_id TEXT;

UPDATE {{holds}} h SET path = ARRAY[h.key_id], account_id = k.account_id::text
  FROM {{table}} k WHERE k.id = h.key_id AND h.path IS NULL;

-- An account's period reset is a ledger row of the account, with no key.
ALTER TABLE {{ledger}} ALTER COLUMN key_id DROP NOT NULL;
