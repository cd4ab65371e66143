import { countTokens as countO200k } from 'gpt-tokenizer/encoding/o200k_base';
import { countTokens as countCl100k } from 'gpt-tokenizer/encoding/cl100k_base';
import { AgentKeyError } from '../errors.js';
import { MICROS_PER_CENT, describe } from '../money.js';
import { type LlmCost, type PriceCatalog, defaultCatalog } from './prices.js';
import { checkModel } from './usage.js';

/**
 * The worst case of one LLM request, for the hold taken before it: an upper bound of its
 * input tokens and the most output it may produce, priced as dearly as the catalog prices
 * them (every input token at the dearest input rate the request can incur, the tier its
 * token count reaches). A hold made from it is never below what the call costs, unless the
 * upstream passes its own limits.
 *
 * - Input. OpenAI models are counted with their own tokenizer (gpt-tokenizer: o200k_base,
 *   or cl100k_base for the GPT-4 and 3.5 families) over the request's input as JSON, which
 *   has more tokens than the chat format the model sees, plus 4 a message and 3 for the
 *   reply. No tokenizer of Claude 3 or later is published, so for every other model each
 *   UTF-8 byte of that JSON counts as a token: byte-level tokenizers never make more tokens
 *   than bytes. Either way the bound is at most the model's context window, since the
 *   upstream refuses a longer input. Each image counts as IMAGE_TOKENS.
 * - Output. `max_tokens`, `max_completion_tokens` or `max_output_tokens` (times `n`), or,
 *   when the request sets none, the model's output limit or what its context window leaves.
 *   A model with neither needs the request to set one.
 */

export type LlmApi = 'openai.chat' | 'openai.responses' | 'openai.embeddings' | 'anthropic.messages';
export const LLM_APIS: readonly LlmApi[] = ['openai.chat', 'openai.responses', 'openai.embeddings', 'anthropic.messages'];

/** What one image may cost in input tokens, at most: the largest any of the two providers bills for one. */
export const IMAGE_TOKENS = 10_000;

export interface MaxCost extends LlmCost {
  /** An upper bound of the request's input tokens. */
  inputTokens: number;
  /** The most output tokens it may produce. */
  maxOutputTokens: number;
}

/**
 * The most a request may cost, for a hold. Throws `unknown_model` for a model with no
 * price, `invalid_llm_request` for a body it cannot read.
 *
 * @example estimateMaxCost({ model: 'gpt-4o-mini', api: 'openai.chat', request: { model: 'gpt-4o-mini', messages, max_tokens: 500 } })
 */
export function estimateMaxCost(
  input: { provider?: string; model?: string; api: LlmApi; request: unknown },
  options: { prices?: PriceCatalog } = {},
): MaxCost {
  if (input === null || typeof input !== 'object') throw new AgentKeyError('invalid_llm_request', `estimateMaxCost() takes { model, api, request }, not ${describe(input)}.`);
  if (!LLM_APIS.includes(input.api)) throw new AgentKeyError('invalid_llm_request', `api must be one of ${LLM_APIS.join(', ')}, not ${describe(input.api)}.`);
  const body = input.request;
  if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new AgentKeyError('invalid_llm_request', `The request must be a JSON object, not ${describe(body)}.`);
  const req = body as Record<string, unknown>;
  const model = checkModel(input.model ?? req.model, 'model');
  // The API's own provider is the one to try when the catalog cannot tell it from the name.
  const price = (options.prices ?? defaultCatalog()).price(model, input.provider, input.api.startsWith('openai') ? 'openai' : 'anthropic');
  const openaiTokens = price.provider === 'openai' || price.provider === 'azure';
  const count = openaiTokens ? (text: string) => countTokens(text, model) : utf8Bytes;
  const read = READERS[input.api](req);
  let inputTokens = count(JSON.stringify(read.parts)) + (read.tokens ?? 0) + 4 * read.messages + 3 + IMAGE_TOKENS * read.images;
  const context = price.contextWindow;
  if (context !== null) inputTokens = Math.min(inputTokens, context);
  let maxOutput: number;
  if (input.api === 'openai.embeddings') maxOutput = 0;
  else if (read.maxOutput !== null) maxOutput = read.maxOutput * read.choices;
  else if (price.maxOutputTokens !== null) maxOutput = price.maxOutputTokens * read.choices;
  else if (context !== null) maxOutput = Math.max(0, context - inputTokens) * read.choices;
  else {
    throw new AgentKeyError(
      'invalid_llm_request',
      `The request sets no ${read.maxField} and the output limit of ${model} is not known: set ${read.maxField}, or maxOutputTokens in a custom price.`,
    );
  }
  // Every input token at the dearest rate it can incur: a cache write when the request asks for caching.
  const caching = input.api === 'anthropic.messages' ? cacheTtl(req) : null;
  const micros = price.micros({
    inputTokens,
    outputTokens: maxOutput,
    cachedInputTokens: 0,
    cacheWriteTokens: caching ? inputTokens : 0,
    cacheWrite1hTokens: caching === '1h' ? inputTokens : 0,
    reasoningTokens: 0,
  });
  return { costCents: micros / MICROS_PER_CENT, provider: price.provider, model: price.model, inputTokens, maxOutputTokens: maxOutput };
}

/**
 * The tokens of a text, by the model's OpenAI tokenizer (o200k_base unless the model is of
 * the GPT-4 or 3.5 families, which use cl100k_base). For a model of another provider it is
 * an approximation, not a bound.
 */
export function countTokens(text: string, model = ''): number {
  if (typeof text !== 'string') throw new AgentKeyError('invalid_argument', `countTokens() takes a string, not ${describe(text)}.`);
  return /^(gpt-4(?!o|\.\d)|gpt-3\.5|text-embedding-(ada|3))/i.test(model) ? countCl100k(text) : countO200k(text);
}

const utf8Bytes = (text: string) => Buffer.byteLength(text, 'utf8');

// Reading each API's request: the parts that are input, how many messages and images, the output limit.

interface Read {
  parts: unknown[];
  /** Input given as tokens already (embeddings' token arrays). */
  tokens?: number;
  messages: number;
  images: number;
  maxOutput: number | null;
  maxField: string;
  choices: number;
}

const READERS: Record<LlmApi, (req: Record<string, unknown>) => Read> = {
  'openai.chat': (req) => {
    const messages = list(req.messages, 'messages', true);
    return {
      parts: [messages, req.tools ?? null, req.functions ?? null, req.response_format ?? null],
      messages: messages.length,
      images: countImages(messages),
      maxOutput: limit(req, ['max_completion_tokens', 'max_tokens']),
      maxField: 'max_completion_tokens',
      choices: choices(req.n),
    };
  },
  'openai.responses': (req) => {
    if (typeof req.input !== 'string' && !Array.isArray(req.input)) throw new AgentKeyError('invalid_llm_request', `input must be a string or a list of items, not ${describe(req.input)}.`);
    const items = Array.isArray(req.input) ? req.input : [req.input];
    return {
      parts: [req.instructions ?? null, req.input, req.tools ?? null, req.text ?? null],
      messages: items.length + (req.instructions ? 1 : 0),
      images: countImages(items),
      maxOutput: limit(req, ['max_output_tokens']),
      maxField: 'max_output_tokens',
      choices: 1,
    };
  },
  'openai.embeddings': (req) => {
    // A string, a list of strings, a token array, or a list of token arrays (already tokens: as many as they hold).
    const inputs = typeof req.input === 'string' ? [req.input] : list(req.input, 'input', true);
    const arrays = inputs.every((i) => typeof i === 'number') ? [inputs] : inputs.filter(Array.isArray);
    const texts = inputs.filter((i) => typeof i === 'string');
    if (texts.length + arrays.length !== inputs.length && !arrays.includes(inputs)) {
      throw new AgentKeyError('invalid_llm_request', 'input must be a string, a list of strings, or token arrays.');
    }
    return { parts: texts, tokens: arrays.reduce((s, a) => s + (a as unknown[]).length, 0), messages: 0, images: 0, maxOutput: 0, maxField: '', choices: 1 };
  },
  'anthropic.messages': (req) => {
    const messages = list(req.messages, 'messages', true);
    return {
      parts: [req.system ?? null, messages, req.tools ?? null],
      messages: messages.length + (req.system ? 1 : 0),
      images: countImages(messages),
      maxOutput: limit(req, ['max_tokens']),
      maxField: 'max_tokens',
      choices: 1,
    };
  },
};

function list(value: unknown, field: string, nonEmpty: boolean): unknown[] {
  if (!Array.isArray(value) || (nonEmpty && value.length === 0)) {
    throw new AgentKeyError('invalid_llm_request', `${field} must be a non-empty list, not ${describe(value)}.`);
  }
  return value;
}

function limit(req: Record<string, unknown>, fields: string[]): number | null {
  for (const field of fields) {
    const v = req[field];
    if (v === undefined || v === null) continue;
    if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1) {
      throw new AgentKeyError('invalid_llm_request', `${field} must be a whole number of tokens of at least 1, not ${describe(v)}.`);
    }
    return v;
  }
  return null;
}

function choices(n: unknown): number {
  if (n === undefined || n === null) return 1;
  if (typeof n !== 'number' || !Number.isSafeInteger(n) || n < 1 || n > 128) throw new AgentKeyError('invalid_llm_request', `n must be a whole number from 1 to 128, not ${describe(n)}.`);
  return n;
}

/** Image parts anywhere in the messages: OpenAI's image_url / input_image, Anthropic's image. */
function countImages(value: unknown): number {
  if (Array.isArray(value)) return value.reduce<number>((s, v) => s + countImages(v), 0);
  if (value === null || typeof value !== 'object') return 0;
  const o = value as Record<string, unknown>;
  const own = o.type === 'image_url' || o.type === 'input_image' || o.type === 'image' ? 1 : 0;
  return own + Object.values(o).reduce<number>((s, v) => s + countImages(v), 0);
}

/** The longest cache life an Anthropic request asks for: '1h', '5m', or null when it asks for none. */
function cacheTtl(value: unknown): '5m' | '1h' | null {
  let found: '5m' | '1h' | null = null;
  const walk = (v: unknown): void => {
    if (found === '1h') return;
    if (Array.isArray(v)) v.forEach(walk);
    else if (v !== null && typeof v === 'object') {
      const o = v as Record<string, unknown>;
      const cc = o.cache_control as { ttl?: unknown } | undefined;
      if (cc && typeof cc === 'object') found = cc.ttl === '1h' ? '1h' : (found ?? '5m');
      Object.values(o).forEach(walk);
    }
  };
  walk(value);
  return found;
}
