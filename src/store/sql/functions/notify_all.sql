-- A change that may concern any cached key (an account's ceiling): every cache starts afresh.
CREATE OR REPLACE FUNCTION {{schema}}agentkey_notify_all() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  PERFORM pg_notify(TG_ARGV[0], 'all');
  RETURN NULL;
END $fn$;
