import type { TokenUsage } from '../llm/index.js';

/**
 * Token counts as each API reports them, read into agentkey's one convention (TokenUsage:
 * inputTokens counts every input token, cached and cache-written ones included; outputTokens
 * includes reasoning). A field that is missing or not a whole number counts as absent, and a
 * part never passes its whole, so what is read always prices.
 */

type Obj = Record<string, unknown>;

const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);
const count = (v: unknown): number | undefined => (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0 ? v : undefined);

/** OpenAI chat completions and embeddings: `{ prompt_tokens, completion_tokens, prompt_tokens_details, completion_tokens_details }`. */
export function openaiChatUsage(u: unknown): TokenUsage | null {
  if (!isObj(u)) return null;
  const input = count(u.prompt_tokens);
  if (input === undefined) return null;
  const details = isObj(u.prompt_tokens_details) ? u.prompt_tokens_details : {};
  const outDetails = isObj(u.completion_tokens_details) ? u.completion_tokens_details : {};
  return tidy({ inputTokens: input, outputTokens: count(u.completion_tokens) ?? 0, cachedInputTokens: count(details.cached_tokens), reasoningTokens: count(outDetails.reasoning_tokens) });
}

/** OpenAI responses: `{ input_tokens, input_tokens_details: { cached_tokens }, output_tokens, output_tokens_details: { reasoning_tokens } }`. */
export function openaiResponsesUsage(u: unknown): TokenUsage | null {
  if (!isObj(u)) return null;
  const input = count(u.input_tokens);
  if (input === undefined) return null;
  const details = isObj(u.input_tokens_details) ? u.input_tokens_details : {};
  const outDetails = isObj(u.output_tokens_details) ? u.output_tokens_details : {};
  return tidy({ inputTokens: input, outputTokens: count(u.output_tokens) ?? 0, cachedInputTokens: count(details.cached_tokens), reasoningTokens: count(outDetails.reasoning_tokens) });
}

/**
 * Anthropic: `{ input_tokens, output_tokens, cache_creation_input_tokens, cache_read_input_tokens }`,
 * where input_tokens excludes the cache's tokens. `base` is what message_start said, which a
 * stream's message_delta completes (its counts are totals so far, and may leave input out).
 */
export function anthropicUsage(u: unknown, base: TokenUsage | null = null): TokenUsage | null {
  if (!isObj(u)) return base;
  const uncached = count(u.input_tokens);
  const write = count(u.cache_creation_input_tokens);
  const read = count(u.cache_read_input_tokens);
  const output = count(u.output_tokens);
  if (uncached === undefined && base === null) return null;
  const inputTokens = uncached === undefined ? (base as TokenUsage).inputTokens : uncached + (write ?? 0) + (read ?? 0);
  return tidy({
    inputTokens,
    outputTokens: output ?? base?.outputTokens ?? 0,
    cachedInputTokens: uncached === undefined ? base?.cachedInputTokens : read,
    cacheWriteTokens: uncached === undefined ? base?.cacheWriteTokens : write,
  });
}

/** Drops absent and zero parts, and keeps each part within its whole. */
function tidy(u: { inputTokens: number; outputTokens: number; cachedInputTokens?: number | undefined; cacheWriteTokens?: number | undefined; reasoningTokens?: number | undefined }): TokenUsage {
  const out: TokenUsage = { inputTokens: u.inputTokens, outputTokens: u.outputTokens };
  const cached = Math.min(u.cachedInputTokens ?? 0, u.inputTokens);
  const write = Math.min(u.cacheWriteTokens ?? 0, u.inputTokens - cached);
  const reasoning = Math.min(u.reasoningTokens ?? 0, u.outputTokens);
  if (cached > 0) out.cachedInputTokens = cached;
  if (write > 0) out.cacheWriteTokens = write;
  if (reasoning > 0) out.reasoningTokens = reasoning;
  return out;
}
