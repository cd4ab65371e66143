-- Version 8: budget windows, alert thresholds and the outbox.
--
-- A key's or an account's first budget stays where it was (the package's columns for a key,
-- the ceiling row for an account): window 0. Any further windows (a daily cap inside a
-- monthly one, a lifetime cap beside both) are rows here, each with its own counter, reset at
-- its own UTC boundary ('day' at 00:00, 'week' on Monday 00:00, 'month' on the 1st; 'lifetime'
-- never). key_id NULL: a window of the account. A flag on the key or ceiling row says it has
-- some, so the spend function reads this table only for those.
CREATE TABLE IF NOT EXISTS {{windows}} (
  id BIGSERIAL PRIMARY KEY,
  account_id TEXT NOT NULL,
  key_id BIGINT,
  period TEXT NOT NULL CHECK (period IN ('day', 'week', 'month', 'lifetime')),
  budget_micros BIGINT NOT NULL CHECK (budget_micros >= 0),
  spent_micros BIGINT NOT NULL DEFAULT 0,
  period_start_at TIMESTAMPTZ,
  reset_at TIMESTAMPTZ,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now());

ALTER TABLE {{table}}
  ADD COLUMN IF NOT EXISTS budget_windows BOOLEAN NOT NULL DEFAULT false,
  -- Percents of each of the key's windows at which an alert is sent once per period (NULL: the global ones).
  ADD COLUMN IF NOT EXISTS alert_percents SMALLINT[];

ALTER TABLE {{accounts}}
  ADD COLUMN IF NOT EXISTS budget_windows BOOLEAN NOT NULL DEFAULT false,
  ADD COLUMN IF NOT EXISTS alert_percents SMALLINT[];

-- An account's first window may be a week too (the ceiling row is agentkey's own table): its
-- period check, made unnamed by version 3, is made again under a name.
DO $do$ DECLARE c TEXT; BEGIN FOR c IN SELECT conname FROM pg_constraint WHERE conrelid = '{{accounts}}'::regclass AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%budget_period%' LOOP EXECUTE format('ALTER TABLE {{accounts}} DROP CONSTRAINT %I', c); END LOOP; END $do$;
ALTER TABLE {{accounts}} ADD CONSTRAINT agentkey_accounts_period CHECK (budget_period IN ('day', 'week', 'month'));

-- Settings of the whole table, by name: 'alert_percents' (a JSON array of percents) applies
-- to every window whose key or account sets none.
CREATE TABLE IF NOT EXISTS {{settings}} (
  name TEXT PRIMARY KEY,
  value JSONB NOT NULL,
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now());

-- The outbox: events for webhooks and in-process handlers, written in the transaction that
-- made them, so none is lost and none is invented. 'budget.threshold' (a window's spend
-- reached an alert percent), 'key.revoked', 'key.expired', 'hold.expired',
-- 'overage.recorded'. dedupe, when set, makes an event once only (a threshold: once per
-- window, period and percent). Amounts in data are micro-dollars as text. Append-only.
CREATE TABLE IF NOT EXISTS {{outbox}} (
  id BIGSERIAL PRIMARY KEY,
  type TEXT NOT NULL CHECK (type IN ('budget.threshold', 'key.revoked', 'key.expired', 'hold.expired', 'overage.recorded')),
  account_id TEXT NOT NULL,
  key_id BIGINT,
  data JSONB NOT NULL,
  dedupe TEXT,
  created_at TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp());
