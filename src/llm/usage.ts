import { AgentKeyError } from '../errors.js';
import { describe } from '../money.js';
import { checkText } from '../text.js';

/**
 * The token counts of one LLM call, in one convention for every provider:
 * - `inputTokens` counts every input token, cached and cache-written ones included
 *   (OpenAI's `prompt_tokens`; Anthropic's `input_tokens + cache_creation_input_tokens +
 *   cache_read_input_tokens`);
 * - `cachedInputTokens` and `cacheWriteTokens` are the parts of it read from and written to
 *   the provider's prompt cache, priced at their own rates;
 * - `outputTokens` counts every output token, reasoning included (OpenAI's
 *   `completion_tokens`), and `reasoningTokens` is the part of it that was reasoning, kept
 *   for the record (it is priced as output).
 */
export interface TokenUsage {
  inputTokens: number;
  outputTokens?: number;
  cachedInputTokens?: number;
  cacheWriteTokens?: number;
  reasoningTokens?: number;
}

/** A usage as checked: every count present, an integer of at least 0. */
export type Tokens = Required<TokenUsage>;

export const USAGE_FIELDS = ['inputTokens', 'outputTokens', 'cachedInputTokens', 'cacheWriteTokens', 'reasoningTokens'] as const;

/** The most tokens one call may report: far past any context window, and exact in a double. */
const MAX_TOKENS = 1_000_000_000_000;

/** Checks a usage given by a caller; throws `invalid_usage`, naming the field, for anything else. */
export function checkUsage(usage: unknown, what = 'usage'): Tokens {
  if (usage === null || typeof usage !== 'object' || Array.isArray(usage)) {
    throw new AgentKeyError('invalid_usage', `${what} must be an object of token counts such as { inputTokens: 1200, outputTokens: 300 }, not ${describe(usage)}.`);
  }
  const u = usage as Record<string, unknown>;
  for (const name of Object.keys(u)) {
    if (!(USAGE_FIELDS as readonly string[]).includes(name)) {
      throw new AgentKeyError('invalid_usage', `${what}.${name} is not a token count agentkey knows (${USAGE_FIELDS.join(', ')}).`);
    }
  }
  const count = (name: (typeof USAGE_FIELDS)[number], required = false): number => {
    const v = u[name];
    if (v === undefined && !required) return 0;
    if (typeof v !== 'number' || !Number.isInteger(v) || v < 0 || v > MAX_TOKENS) {
      throw new AgentKeyError('invalid_usage', `${what}.${name} must be a whole number of tokens of at least 0, not ${describe(v)}.`);
    }
    return v;
  };
  const tokens: Tokens = {
    inputTokens: count('inputTokens', true),
    outputTokens: count('outputTokens'),
    cachedInputTokens: count('cachedInputTokens'),
    cacheWriteTokens: count('cacheWriteTokens'),
    reasoningTokens: count('reasoningTokens'),
  };
  if (tokens.cachedInputTokens + tokens.cacheWriteTokens > tokens.inputTokens) {
    throw new AgentKeyError(
      'invalid_usage',
      `${what}: cachedInputTokens and cacheWriteTokens are parts of inputTokens, so together they cannot pass it (${tokens.cachedInputTokens} + ${tokens.cacheWriteTokens} > ${tokens.inputTokens}).`,
    );
  }
  if (tokens.reasoningTokens > tokens.outputTokens) {
    throw new AgentKeyError('invalid_usage', `${what}: reasoningTokens are part of outputTokens, so they cannot pass it (${tokens.reasoningTokens} > ${tokens.outputTokens}).`);
  }
  return tokens;
}

/** A model name given by a caller: a non-empty string of at most 200 characters. */
export function checkModel(model: unknown, what = 'model'): string {
  if (typeof model !== 'string' || model.trim() === '' || model.length > 200) {
    throw new AgentKeyError('unknown_model', `${what} must be a model name such as 'gpt-4o-mini', not ${describe(model)}.`);
  }
  // It reaches the ledger and operators' screens: no control or bidirectional characters.
  try {
    return checkText(model, what);
  } catch (err) {
    throw new AgentKeyError('unknown_model', (err as Error).message);
  }
}
