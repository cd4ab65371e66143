-- Announces a changed or deleted key on the channel given (TG_ARGV[0]), so caches in every
-- process drop it at once.
CREATE OR REPLACE FUNCTION {{schema}}agentkey_notify_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
  IF TG_OP = 'DELETE' THEN
    PERFORM pg_notify(TG_ARGV[0], OLD.id::text);
  ELSE
    PERFORM pg_notify(TG_ARGV[0], NEW.id::text);
  END IF;
  RETURN NULL;
END $fn$;
