-- Version 11: what an LLM call used, on its ledger rows.
--
-- model: the catalog's id of the model that priced the row (on a charge, hold, commit and a
-- commit's overage row), for spend by model. usage: the call's token counts, on the row that
-- carries its cost (not on the overage row, so tokens are counted once):
-- { "provider", "inputTokens", "outputTokens", "cachedInputTokens", "cacheWriteTokens",
--   "reasoningTokens" }. Both NULL for a cost given in cents.
ALTER TABLE {{ledger}}
  ADD COLUMN IF NOT EXISTS model TEXT,
  ADD COLUMN IF NOT EXISTS usage JSONB;
