-- Version 1, on a keys table agentkey has never seen (it lacked spent_micros): the package's
-- budgets and spend are carried into the exact columns, whatever numeric type the user's
-- columns have, as micro-dollars exactly.
UPDATE {{table}} SET
  budget_micros = round(budget_cents::numeric * 10000)::bigint,
  spent_micros = round(COALESCE(budget_used_cents, 0)::numeric * 10000)::bigint,
  budget_anchor_at = CASE WHEN budget_period IS NULL THEN NULL ELSE COALESCE(budget_reset_at, created_at, now()) END
  WHERE budget_cents IS NOT NULL OR budget_used_cents IS NOT NULL OR budget_period IS NOT NULL;

-- A period key without a future reset time would reset (and forget its spend) on its next
-- charge; moving the reset forward keeps the spend and never lets extra money through.
UPDATE {{table}}
  SET budget_reset_at = {{schema}}agentkey_next_reset(budget_period, budget_anchor_at, now())
  WHERE budget_period IN ('day', 'month') AND (budget_reset_at IS NULL OR budget_reset_at <= now());
