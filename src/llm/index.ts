/**
 * agentkey/llm: LLM spend metered from usage. Prices from the maintained
 * `@pydantic/genai-prices` catalog (offline by default, custom prices on top), exact costs
 * from token counts, worst-case costs of requests for holds, and token counting.
 *
 * @example
 * import { costFromUsage, estimateMaxCost } from 'agentkey/llm';
 * const hold = await ak.reserve(key, { costCents: estimateMaxCost({ api: 'openai.chat', request: body }).costCents });
 * await ak.commit(hold.reservationId, { model: 'gpt-4o-mini', usage: { inputTokens: 812, outputTokens: 95 } });
 */
export { type TokenUsage, USAGE_FIELDS } from './usage.js';
export {
  type CustomPrice,
  type LlmCost,
  type ModelPrice,
  PriceCatalog,
  type PriceCatalogOptions,
  type RemoteStatus,
  costFromUsage,
  createPriceCatalog,
} from './prices.js';
export { IMAGE_TOKENS, type LlmApi, LLM_APIS, type MaxCost, countTokens, estimateMaxCost } from './estimate.js';
