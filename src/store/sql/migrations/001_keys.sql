-- Version 1: the keys table with the package's columns and agentkey's micro-dollar counters.
-- The package's base columns (for tables that lack some) and its own migration, verbatim in
-- its types, so tables it already migrated are left as they are.
CREATE TABLE IF NOT EXISTS {{table}} (
  id BIGSERIAL PRIMARY KEY,
  account_id TEXT NOT NULL,
  key_hash TEXT NOT NULL,
  key_prefix TEXT NOT NULL,
  name TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  last_used_at TIMESTAMPTZ,
  revoked_at TIMESTAMPTZ);

ALTER TABLE {{table}}
  ADD COLUMN IF NOT EXISTS key_prefix TEXT,
  ADD COLUMN IF NOT EXISTS name TEXT,
  ADD COLUMN IF NOT EXISTS created_at TIMESTAMPTZ DEFAULT now(),
  ADD COLUMN IF NOT EXISTS last_used_at TIMESTAMPTZ,
  ADD COLUMN IF NOT EXISTS revoked_at TIMESTAMPTZ,
  ADD COLUMN IF NOT EXISTS user_id TEXT,
  ADD COLUMN IF NOT EXISTS scopes TEXT[],
  ADD COLUMN IF NOT EXISTS budget_cents INTEGER,
  ADD COLUMN IF NOT EXISTS budget_used_cents INTEGER DEFAULT 0,
  ADD COLUMN IF NOT EXISTS budget_period TEXT,
  ADD COLUMN IF NOT EXISTS budget_reset_at TIMESTAMPTZ,
  ADD COLUMN IF NOT EXISTS expires_at TIMESTAMPTZ,
  ADD COLUMN IF NOT EXISTS delegated_by TEXT,
  ADD COLUMN IF NOT EXISTS external_subject TEXT,
  ADD COLUMN IF NOT EXISTS budget_micros BIGINT,
  ADD COLUMN IF NOT EXISTS spent_micros BIGINT NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS budget_anchor_at TIMESTAMPTZ;
