-- The end of the period that contains `at`: 'day' at 00:00 UTC, 'month' on the anchor's
-- day of the month (clamped to shorter months), in UTC. Keys roll their budgets over by it.
-- PL/pgSQL, not SQL: the sync trigger's WHEN names it, and PostgreSQL prepares a trigger's
-- WHEN once per statement, which for a SQL function means parsing its body (to see whether
-- it can be inlined; this one cannot) on every UPDATE of a key's spend: about 90 µs each.
CREATE OR REPLACE FUNCTION {{schema}}agentkey_next_reset(period TEXT, anchor TIMESTAMPTZ, at TIMESTAMPTZ)
RETURNS TIMESTAMPTZ LANGUAGE plpgsql IMMUTABLE AS $fn$
BEGIN
  RETURN CASE period
    WHEN 'day' THEN (date_trunc('day', at AT TIME ZONE 'UTC') + interval '1 day') AT TIME ZONE 'UTC'
    WHEN 'month' THEN (
      SELECT (s.start + make_interval(months => k.n)) AT TIME ZONE 'UTC'
      FROM (SELECT date_trunc('day', anchor AT TIME ZONE 'UTC') AS start, at AT TIME ZONE 'UTC' AS now_utc) s,
           LATERAL (SELECT greatest(1, ((extract(year FROM s.now_utc) - extract(year FROM s.start)) * 12
                                       + extract(month FROM s.now_utc) - extract(month FROM s.start))::int) AS d) m,
           LATERAL generate_series(m.d, m.d + 1) AS k(n)
      WHERE s.start + make_interval(months => k.n) > s.now_utc
      ORDER BY k.n LIMIT 1)
  END;
END $fn$;
