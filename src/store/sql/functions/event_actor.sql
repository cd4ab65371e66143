-- Who is making the change this transaction makes: agentkey sets 'agentkey.actor' with
-- set_config(..., true) (local to its transaction) to 'library', 'admin', 'cli', 'signup' or 'key:<id>';
-- anything else, or nothing (an edit in SQL), is 'sql'. Returns the actor and the acting key.
CREATE OR REPLACE FUNCTION {{schema}}agentkey_event_actor(OUT actor TEXT, OUT actor_key_id BIGINT) LANGUAGE plpgsql STABLE AS $fn$
DECLARE v TEXT := current_setting('agentkey.actor', true);
BEGIN
  IF v IN ('library', 'admin', 'cli', 'signup') THEN
    actor := v;
  ELSIF v ~ '^key:[0-9]{1,18}$' THEN
    actor := 'key'; actor_key_id := substr(v, 5)::bigint;
  ELSE
    actor := 'sql';
  END IF;
END $fn$;
