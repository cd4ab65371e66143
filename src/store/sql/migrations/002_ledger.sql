-- Version 2: the append-only usage ledger and the holds (reservations) table. The ledger's
-- kinds are those of today (a ledger made before version 6 gets 'overage' there).
CREATE TABLE IF NOT EXISTS {{ledger}} (
  id BIGSERIAL PRIMARY KEY,
  key_id BIGINT NOT NULL,
  account_id TEXT NOT NULL,
  kind TEXT NOT NULL CONSTRAINT agentkey_ledger_kind
    CHECK (kind IN ('charge', 'hold', 'commit', 'release', 'expire', 'reset', 'adjust', 'overage')),
  amount_micros BIGINT NOT NULL,
  reservation_id TEXT,
  idempotency_key TEXT,
  metadata JSONB,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now());

CREATE TABLE IF NOT EXISTS {{holds}} (
  id TEXT PRIMARY KEY,
  key_id BIGINT NOT NULL,
  amount_micros BIGINT NOT NULL,
  status TEXT NOT NULL CHECK (status IN ('held', 'committed', 'released', 'expired')),
  expires_at TIMESTAMPTZ NOT NULL,
  committed_micros BIGINT,
  idempotency_key TEXT,
  metadata JSONB,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  settled_at TIMESTAMPTZ);
