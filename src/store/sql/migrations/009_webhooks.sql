-- Version 9: webhooks, the consumers of the outbox.
--
-- The outbox learns which transaction wrote each row (xact). Ids are handed out before
-- commit, so a reader that went by id alone could pass over a row whose transaction commits
-- after a later id's; every transaction below the snapshot's xmin has ended, so the rows
-- written by those are final, and a reader goes by (xact, id) up to that horizon.
ALTER TABLE {{outbox}} ADD COLUMN IF NOT EXISTS xact xid8 NOT NULL DEFAULT pg_current_xact_id();

-- Endpoints: where events are posted, signed with the endpoint's own secret ('whsec_' and
-- base64, the Standard Webhooks format). event_types NULL: every type; account_id NULL:
-- every account. since_xact: events written by transactions from this one on are its.
CREATE TABLE IF NOT EXISTS {{webhooks}} (
  id BIGSERIAL PRIMARY KEY,
  url TEXT NOT NULL,
  secret TEXT NOT NULL,
  event_types TEXT[],
  account_id TEXT,
  description TEXT,
  enabled BOOLEAN NOT NULL DEFAULT true,
  since_xact xid8 NOT NULL DEFAULT pg_snapshot_xmin(pg_current_snapshot()),
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now());

-- One delivery per outbox event and matching endpoint: pending until delivered, or failed
-- once its retries ran out. A deliverer takes one by setting leased_until (and lease, its
-- own token): no other takes it before the lease ends.
CREATE TABLE IF NOT EXISTS {{deliveries}} (
  id BIGSERIAL PRIMARY KEY,
  webhook_id BIGINT NOT NULL,
  outbox_id BIGINT NOT NULL,
  status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
  attempts INTEGER NOT NULL DEFAULT 0,
  next_attempt_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
  leased_until TIMESTAMPTZ,
  lease TEXT,
  last_status INTEGER,
  last_error TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp(),
  delivered_at TIMESTAMPTZ);

-- Every attempt of a delivery: when, the HTTP status or the error, and how long it took.
CREATE TABLE IF NOT EXISTS {{attempts}} (
  id BIGSERIAL PRIMARY KEY,
  delivery_id BIGINT NOT NULL,
  webhook_id BIGINT NOT NULL,
  attempt INTEGER NOT NULL,
  started_at TIMESTAMPTZ NOT NULL,
  status INTEGER,
  error TEXT,
  duration_ms INTEGER NOT NULL);
