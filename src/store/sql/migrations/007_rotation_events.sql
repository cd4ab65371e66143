-- Version 7: rotation, key metadata and the key event log.
-- A rotated key keeps the hash of its previous secret, valid until the end of its grace
-- period (NULL or past: the previous secret is refused as invalid). Rotating again replaces
-- it, so at most one old secret is ever alive.
ALTER TABLE {{table}}
  ADD COLUMN IF NOT EXISTS previous_key_hash TEXT,
  ADD COLUMN IF NOT EXISTS previous_key_valid_until TIMESTAMPTZ,
  -- A key's own metadata (a JSON object of yours), set by create() and update().
  ADD COLUMN IF NOT EXISTS key_metadata JSONB;

-- Every change to a key or an account's ceiling, with who made it: 'library' (a process
-- using agentkey directly), 'admin' (the service's admin key), 'cli', 'key' (a key acting on
-- its descendants through self-serve: actor_key_id), 'signup' (the self-serve signup route), or
-- 'sql' (an edit the trigger caught).
-- Written by triggers (functions/key_event.sql, ceiling_event.sql) and, for adjustments, by
-- the spend function, in the transaction that made the change. Append-only.
CREATE TABLE IF NOT EXISTS {{events}} (
  id BIGSERIAL PRIMARY KEY,
  key_id BIGINT,
  account_id TEXT NOT NULL,
  kind TEXT NOT NULL CHECK (kind IN ('created', 'updated', 'rotated', 'revoked', 'budget_set', 'adjusted')),
  actor TEXT NOT NULL CHECK (actor IN ('library', 'admin', 'cli', 'signup', 'key', 'sql')),
  actor_key_id BIGINT,
  changes JSONB NOT NULL DEFAULT '{}',
  created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp());
