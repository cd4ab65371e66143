-- End of the calendar period (UTC) that contains `at`.
CREATE OR REPLACE FUNCTION {{schema}}agentkey_period_end(period TEXT, at TIMESTAMPTZ)
RETURNS TIMESTAMPTZ LANGUAGE sql IMMUTABLE AS $fn$
  SELECT (date_trunc(period, at AT TIME ZONE 'UTC') + ('1 ' || period)::interval) AT TIME ZONE 'UTC'
$fn$;
