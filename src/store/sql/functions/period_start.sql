-- Start of the calendar period (UTC) that contains `at`: account ceilings bill by calendar.
CREATE OR REPLACE FUNCTION {{schema}}agentkey_period_start(period TEXT, at TIMESTAMPTZ)
RETURNS TIMESTAMPTZ LANGUAGE sql IMMUTABLE AS $fn$
  SELECT date_trunc(period, at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
$fn$;
