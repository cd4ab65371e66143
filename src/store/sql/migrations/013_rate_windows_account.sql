-- Version 13: the exact mode's rate counters carry their account, so the function that
-- counts works inside one account (docs/scaling.md: on Citus the counters are distributed by
-- account with the keys, and a request's key and account limits are one shard).
-- The counters are short-lived (a window of per_s seconds): those of the current windows are
-- filled from their scope ('a:<per_s>:<account>', or 'k:<per_s>:<key id>' and the key's
-- account); a counter whose key is gone counts for no request and goes.
ALTER TABLE {{rate_windows}} ADD COLUMN IF NOT EXISTS account_id TEXT;

UPDATE {{rate_windows}} SET account_id = substr(scope, length(split_part(scope, ':', 1)) + length(split_part(scope, ':', 2)) + 3)
  WHERE account_id IS NULL AND scope LIKE 'a:%';

UPDATE {{rate_windows}} w SET account_id = k.account_id::text
  FROM {{table}} k
  WHERE w.account_id IS NULL AND w.scope LIKE 'k:%' AND split_part(w.scope, ':', 3) ~ '^[0-9]{1,18}$'
    AND k.id = split_part(w.scope, ':', 3)::bigint;

DELETE FROM {{rate_windows}} WHERE account_id IS NULL;

ALTER TABLE {{rate_windows}} ALTER COLUMN account_id SET NOT NULL;
