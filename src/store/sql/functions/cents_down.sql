-- A budget as whole cents, rounded down, within INTEGER: the package's budget_cents column
-- (SQL over the package's columns never sees more room than there is).
CREATE OR REPLACE FUNCTION {{schema}}agentkey_cents_down(micros BIGINT) RETURNS INTEGER LANGUAGE sql IMMUTABLE AS $fn$
  SELECT LEAST(2147483647, GREATEST(-2147483648, micros / 10000 - CASE WHEN micros % 10000 < 0 THEN 1 ELSE 0 END))::integer
$fn$;
