import { costFromUsage } from '../../src/llm/index.js';
import type { TokenUsage } from '../../src/index.js';

/**
 * What the HTTP tests of metered spend share: the catalog's cost of a usage (the figure a
 * charge must come to), and the bodies that say what a call cost wrongly, each with the
 * error it must get (always a 400, never a charge).
 */

export const USAGE = { inputTokens: 1200, outputTokens: 300, cachedInputTokens: 200, reasoningTokens: 100 } as const;

/** The catalog's exact cost of a usage, in cents. */
export function priced(model: string, usage: TokenUsage, provider?: string): number {
  return costFromUsage({ model, usage, ...(provider === undefined ? {} : { provider }) }).costCents;
}

/** The fields of a body (beside its key) that say what a call cost wrongly: [what, fields, code, the message names]. */
export const BAD_COSTS: [string, Record<string, unknown>, string, RegExp][] = [
  ['costCents and usage', { costCents: 1, model: 'gpt-4o-mini', usage: USAGE }, 'invalid_request', /costCents, or model and usage .*not both/],
  ['costCents and a provider', { costCents: 1, provider: 'openai' }, 'invalid_request', /not both/],
  ['neither', {}, 'invalid_request', /give costCents, or model and usage/],
  ['a model without usage', { model: 'gpt-4o-mini' }, 'invalid_request', /"usage".*required with model/],
  ['usage without a model', { usage: USAGE }, 'invalid_request', /"model".*required with usage/],
  ['a provider alone', { provider: 'openai' }, 'invalid_request', /"model"/],
  ['an empty model', { model: '', usage: USAGE }, 'invalid_request', /"model"/],
  ['a model of 201 characters', { model: 'm'.repeat(201), usage: USAGE }, 'invalid_request', /"model"/],
  ['a model that is a number', { model: 4, usage: USAGE }, 'invalid_request', /"model"/],
  ['usage null', { model: 'gpt-4o-mini', usage: null }, 'invalid_request', /"usage"/],
  ['usage an array', { model: 'gpt-4o-mini', usage: [1200, 300] }, 'invalid_request', /"usage"/],
  ['usage without inputTokens', { model: 'gpt-4o-mini', usage: { outputTokens: 3 } }, 'invalid_request', /"usage\.inputTokens"/],
  ['negative tokens', { model: 'gpt-4o-mini', usage: { inputTokens: -1 } }, 'invalid_request', /"usage\.inputTokens"/],
  ['fractional tokens', { model: 'gpt-4o-mini', usage: { inputTokens: 10, outputTokens: 1.5 } }, 'invalid_request', /"usage\.outputTokens"/],
  ['tokens as a string', { model: 'gpt-4o-mini', usage: { inputTokens: '10' } }, 'invalid_request', /"usage\.inputTokens"/],
  ["the provider's own field name", { model: 'gpt-4o-mini', usage: { inputTokens: 10, prompt_tokens: 10 } }, 'invalid_request', /Unknown field in the body: "usage\.prompt_tokens"/],
  ['a provider id with a space', { model: 'gpt-4o-mini', provider: 'open ai', usage: USAGE }, 'invalid_request', /"provider"/],
  ['a model the catalog does not know', { model: 'my-private-llama', usage: USAGE }, 'unknown_model', /my-private-llama/],
  ['a blank model', { model: '   ', usage: USAGE }, 'unknown_model', /model/],
  ['a provider the catalog does not know', { model: 'gpt-4o-mini', provider: 'nobody', usage: USAGE }, 'unknown_model', /nobody/],
  ['cached tokens past the input', { model: 'gpt-4o-mini', usage: { inputTokens: 10, cachedInputTokens: 8, cacheWriteTokens: 3 } }, 'invalid_usage', /cachedInputTokens and cacheWriteTokens/],
  ['reasoning past the output', { model: 'gpt-4o-mini', usage: { inputTokens: 10, outputTokens: 5, reasoningTokens: 6 } }, 'invalid_usage', /reasoningTokens/],
  ['more tokens than any call', { model: 'gpt-4o-mini', usage: { inputTokens: 2e12 } }, 'invalid_usage', /inputTokens/],
];
