-- Version 10: request rate limits and concurrency limits.
--
-- A key's limits are agentkey's own columns beside the package's (never a change to one of
-- its columns): at most rate_limit_requests validations per rate_limit_per_s seconds, and at
-- most concurrency_limit requests in flight. NULL: no limit.
ALTER TABLE {{table}}
  ADD COLUMN IF NOT EXISTS rate_limit_requests INTEGER,
  ADD COLUMN IF NOT EXISTS rate_limit_per_s INTEGER,
  ADD COLUMN IF NOT EXISTS concurrency_limit INTEGER;

-- An account's limits, over every key of the account together. A table of their own, not
-- columns of the ceiling row: an account may have a rate limit and no budget.
CREATE TABLE IF NOT EXISTS {{account_limits}} (
  account_id TEXT PRIMARY KEY,
  rate_limit_requests INTEGER CHECK (rate_limit_requests BETWEEN 1 AND 1000000000),
  rate_limit_per_s INTEGER CHECK (rate_limit_per_s BETWEEN 1 AND 86400),
  concurrency_limit INTEGER CHECK (concurrency_limit BETWEEN 1 AND 1000000),
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  CHECK ((rate_limit_requests IS NULL) = (rate_limit_per_s IS NULL)),
  CHECK (rate_limit_requests IS NOT NULL OR concurrency_limit IS NOT NULL));

-- The exact mode's counters: requests admitted in one window of one limit. scope is
-- 'k:<per_s>:<key id>' or 'a:<per_s>:<account id>'; window_no counts windows of per_s seconds
-- since the Unix epoch (database time). Only the current window of a limit is kept: the
-- function that counts drops the older ones when it opens a new one (sql/functions/rate_take.sql).
CREATE TABLE IF NOT EXISTS {{rate_windows}} (
  scope TEXT NOT NULL,
  window_no BIGINT NOT NULL,
  count INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (scope, window_no));
