import fc from 'fast-check';
import { encodeChat } from 'gpt-tokenizer/model/gpt-4o';
import { describe, expect, it } from 'vitest';
import { IMAGE_TOKENS, costFromUsage, countTokens, createPriceCatalog, estimateMaxCost } from '../../src/llm/index.js';

/**
 * estimateMaxCost(): the worst case of a request, for its hold. The property that matters
 * is that it is never below what the call can cost: checked against OpenAI's chat format
 * counted by its real tokenizer, and for Claude against the extreme of one token a byte,
 * with any output up to the limit and any split of the input into cache reads and writes.
 */

const text = fc.string({ unit: 'binary', maxLength: 400 });
const message = fc.record({ role: fc.constantFrom('system', 'user', 'assistant'), content: text });

describe('estimateMaxCost: never below the real cost', () => {
  it('property: OpenAI chat, any prompt, any output up to max_tokens, any cache hits', () => {
    fc.assert(
      fc.property(fc.array(message, { minLength: 1, maxLength: 6 }), fc.integer({ min: 1, max: 4000 }), fc.double({ min: 0, max: 1, noNaN: true }), fc.double({ min: 0, max: 1, noNaN: true }), (messages, maxTokens, outShare, cacheShare) => {
        const request = { model: 'gpt-4o', messages, max_tokens: maxTokens };
        const hold = estimateMaxCost({ api: 'openai.chat', request });
        const inputTokens = encodeChat(messages as never).length;
        const outputTokens = Math.floor(maxTokens * outShare);
        const real = costFromUsage({ model: 'gpt-4o', usage: { inputTokens, outputTokens, cachedInputTokens: Math.floor(inputTokens * cacheShare) } });
        expect(hold.inputTokens).toBeGreaterThanOrEqual(inputTokens);
        expect(hold.maxOutputTokens).toBe(maxTokens);
        expect(hold.costCents).toBeGreaterThanOrEqual(real.costCents);
      }),
      { numRuns: 150 },
    );
  });

  it('property: Anthropic messages, one token a byte of every text, cache writes (5m and 1h) and reads', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ role: fc.constantFrom('user', 'assistant'), content: text }), { minLength: 1, maxLength: 6 }),
        text,
        fc.integer({ min: 1, max: 8000 }),
        fc.constantFrom(null, '5m', '1h'),
        fc.double({ min: 0, max: 1, noNaN: true }),
        (messages, system, maxTokens, cache, writeShare) => {
          const request: Record<string, unknown> = { model: 'claude-sonnet-4-5', max_tokens: maxTokens, messages };
          request.system = cache ? [{ type: 'text', text: system, cache_control: { type: 'ephemeral', ...(cache === '1h' ? { ttl: '1h' } : {}) } }] : system;
          const hold = estimateMaxCost({ api: 'anthropic.messages', request });
          const inputTokens = Buffer.byteLength(system + messages.map((m) => m.content).join(''), 'utf8');
          const cacheWriteTokens = cache ? Math.floor(inputTokens * writeShare) : 0;
          const real = costFromUsage({ provider: 'anthropic', model: 'claude-sonnet-4-5', usage: { inputTokens, outputTokens: maxTokens, cacheWriteTokens } });
          expect(hold.costCents).toBeGreaterThanOrEqual(real.costCents);
        },
      ),
      { numRuns: 150 },
    );
  });
});

describe('estimateMaxCost: what it reads', () => {
  const messages = [{ role: 'user', content: 'Say hello.' }];

  it('happy: the output limit: max_completion_tokens, else max_tokens, times n; else what the context window leaves', () => {
    expect(estimateMaxCost({ api: 'openai.chat', request: { model: 'gpt-4o', messages, max_completion_tokens: 100, max_tokens: 5 } }).maxOutputTokens).toBe(100);
    expect(estimateMaxCost({ api: 'openai.chat', request: { model: 'gpt-4o', messages, max_tokens: 100, n: 3 } }).maxOutputTokens).toBe(300);
    const open = estimateMaxCost({ api: 'openai.chat', request: { model: 'gpt-4o', messages } });
    expect(open.maxOutputTokens + open.inputTokens).toBe(128_000);
    expect(estimateMaxCost({ api: 'openai.responses', request: { model: 'gpt-4o', input: 'Hi', max_output_tokens: 42 } }).maxOutputTokens).toBe(42);
    // A custom model's own output limit.
    const prices = createPriceCatalog({ custom: [{ model: 'local-llm', inputPerMTok: 1, outputPerMTok: 2, maxOutputTokens: 2048 }] });
    expect(estimateMaxCost({ api: 'openai.chat', request: { model: 'local-llm', messages } }, { prices })).toMatchObject({ maxOutputTokens: 2048, provider: 'custom' });
  });

  it('error: no output limit and no known limit of the model -> invalid_llm_request naming the field', () => {
    const prices = createPriceCatalog({ custom: [{ model: 'local-llm', inputPerMTok: 1, outputPerMTok: 2 }] });
    expect(() => estimateMaxCost({ api: 'openai.chat', request: { model: 'local-llm', messages } }, { prices })).toThrow(
      expect.objectContaining({ code: 'invalid_llm_request', message: expect.stringContaining('max_completion_tokens') }),
    );
  });

  it('happy: the cost is the catalog price of the bound: input at the dearest rate, the whole output', () => {
    const hold = estimateMaxCost({ api: 'openai.chat', request: { model: 'gpt-4o-mini', messages, max_tokens: 50 } });
    expect(hold.costCents).toBe(costFromUsage({ model: 'gpt-4o-mini', usage: { inputTokens: hold.inputTokens, outputTokens: 50 } }).costCents);
    expect(hold.inputTokens).toBe(countTokens(JSON.stringify([messages, null, null, null]), 'gpt-4o-mini') + 4 + 3);
    const cached = estimateMaxCost({
      api: 'anthropic.messages',
      request: { model: 'claude-haiku-4-5', max_tokens: 10, messages: [{ role: 'user', content: [{ type: 'text', text: 'x', cache_control: { type: 'ephemeral' } }] }] },
    });
    expect(cached.costCents).toBe(
      costFromUsage({ model: 'claude-haiku-4-5', usage: { inputTokens: cached.inputTokens, cacheWriteTokens: cached.inputTokens, outputTokens: 10 } }).costCents,
    );
  });

  it('happy: images count IMAGE_TOKENS each; embeddings count strings and token arrays, with no output', () => {
    const image = { type: 'image_url', image_url: { url: 'https://example.com/cat.png' } };
    const withImages = estimateMaxCost({ api: 'openai.chat', request: { model: 'gpt-4o', max_tokens: 1, messages: [{ role: 'user', content: [image, image] }] } });
    expect(withImages.inputTokens).toBeGreaterThan(2 * IMAGE_TOKENS);
    const one = estimateMaxCost({ api: 'openai.embeddings', request: { model: 'text-embedding-3-small', input: 'hello world' } });
    expect(one.maxOutputTokens).toBe(0);
    const tokens = estimateMaxCost({ api: 'openai.embeddings', request: { model: 'text-embedding-3-small', input: [[1, 2, 3], [4, 5]] } });
    expect(tokens.inputTokens).toBeGreaterThanOrEqual(5);
    const flat = estimateMaxCost({ api: 'openai.embeddings', request: { model: 'text-embedding-3-small', input: [1, 2, 3, 4, 5, 6, 7] } });
    expect(flat.inputTokens).toBeGreaterThanOrEqual(7);
  });

  it('edge: the input bound never passes the context window', () => {
    const huge = 'word '.repeat(60_000);
    const hold = estimateMaxCost({ api: 'anthropic.messages', request: { model: 'claude-sonnet-4-5', max_tokens: 1000, messages: [{ role: 'user', content: huge }] } });
    expect(hold.inputTokens).toBe(200_000);
  });

  it('error: bodies it cannot read -> invalid_llm_request; a model without a price -> unknown_model', () => {
    const bad: [string, unknown][] = [
      ['openai.chat', null],
      ['openai.chat', []],
      ['openai.chat', { model: 'gpt-4o' }],
      ['openai.chat', { model: 'gpt-4o', messages: [] }],
      ['openai.chat', { model: 'gpt-4o', messages, max_tokens: 0 }],
      ['openai.chat', { model: 'gpt-4o', messages, max_tokens: '100' }],
      ['openai.chat', { model: 'gpt-4o', messages, n: 0 }],
      ['openai.responses', { model: 'gpt-4o', input: 42 }],
      ['openai.embeddings', { model: 'text-embedding-3-small', input: [] }],
      ['openai.embeddings', { model: 'text-embedding-3-small', input: [{ text: 'x' }] }],
      ['anthropic.messages', { model: 'claude-haiku-4-5', max_tokens: 10 }],
      ['graphql', { model: 'gpt-4o', messages }],
    ];
    for (const [api, request] of bad) {
      expect(() => estimateMaxCost({ api: api as never, request }), JSON.stringify(request)).toThrow(expect.objectContaining({ code: 'invalid_llm_request' }));
    }
    expect(() => estimateMaxCost({ api: 'openai.chat', request: { messages, max_tokens: 5 } })).toThrow(expect.objectContaining({ code: 'unknown_model' }));
    expect(() => estimateMaxCost({ api: 'openai.chat', request: { model: 'no-such-model', messages, max_tokens: 5 } })).toThrow(expect.objectContaining({ code: 'unknown_model' }));
  });

  it('happy: countTokens uses the model family\'s encoding', () => {
    expect(countTokens('hello world')).toBe(2);
    expect(countTokens('hello world', 'gpt-4')).toBe(2);
    expect(countTokens('', 'gpt-4o')).toBe(0);
    expect(() => countTokens(42 as never)).toThrow(/string/);
  });
});
