-- Spend as whole cents, rounded up (as the package rounded every cost), within INTEGER: the
-- package's budget_used_cents column. Division truncates toward zero and % keeps the dividend's
-- sign: no step can overflow, even at BIGINT's ends.
CREATE OR REPLACE FUNCTION {{schema}}agentkey_cents_up(micros BIGINT) RETURNS INTEGER LANGUAGE sql IMMUTABLE AS $fn$
  SELECT LEAST(2147483647, GREATEST(-2147483648, micros / 10000 + CASE WHEN micros % 10000 > 0 THEN 1 ELSE 0 END))::integer
$fn$;
