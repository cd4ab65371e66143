import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { findProvider } from '@pydantic/genai-prices';
import { afterAll, describe, expect, it } from 'vitest';
import { AgentKeyError } from '../../src/errors.js';
import { costFromUsage, createPriceCatalog } from '../../src/llm/index.js';

/**
 * costFromUsage() against the @pydantic/genai-prices catalog: each usage field priced at
 * the catalog's own rate for it, exact to the micro-dollar (float noise put back on the
 * decimal, a genuine remainder rounded up), custom prices over the catalog, unknown models
 * refused, bad counts refused, and opt-in fetching of newer data that never breaks pricing.
 */

/** A model's rates as the catalog's data states them (dollars per million tokens = micros per token). */
function rates(provider: string, model: string): { input_mtok: number; output_mtok: number; cache_read_mtok: number } {
  const m = findProvider({ providerId: provider })?.models.find((x) => x.id === model);
  if (!m || Array.isArray(m.prices)) throw new Error(`no plain price for ${model}`);
  return m.prices as { input_mtok: number; output_mtok: number; cache_read_mtok: number };
}

const cents = (micros: number) => micros / 10_000;

describe('costFromUsage: each field at its catalog rate', () => {
  it('happy: input, output, cached input (OpenAI), reasoning (priced as output, part of it)', () => {
    const r = rates('openai', 'gpt-4o');
    expect(r.input_mtok).toBeGreaterThan(0);
    const cost = (usage: Parameters<typeof costFromUsage>[0]['usage']) => costFromUsage({ model: 'gpt-4o', usage }).costCents;
    expect(cost({ inputTokens: 1000 })).toBe(cents(1000 * r.input_mtok));
    expect(cost({ inputTokens: 0, outputTokens: 333 })).toBe(cents(333 * r.output_mtok));
    // 400 of the 1000 input tokens were cache reads.
    expect(cost({ inputTokens: 1000, cachedInputTokens: 400 })).toBe(cents(600 * r.input_mtok + 400 * r.cache_read_mtok));
    // Reasoning is part of the output: it adds nothing on top.
    expect(cost({ inputTokens: 10, outputTokens: 500, reasoningTokens: 400 })).toBe(cost({ inputTokens: 10, outputTokens: 500 }));
    expect(costFromUsage({ model: 'gpt-4o', usage: { inputTokens: 1 } })).toMatchObject({ provider: 'openai', model: 'gpt-4o' });
  });

  it('happy: cache writes and reads (Anthropic), and the long-context tier past 200k input tokens', () => {
    const m = findProvider({ providerId: 'anthropic' })?.models.find((x) => x.id === 'claude-sonnet-4-5');
    const p = m?.prices as Record<string, { base: number; tiers: { start: number; price: number }[] }>;
    const base = (k: string) => p[k]?.base as number;
    const tier = (k: string) => p[k]?.tiers[0]?.price as number;
    const cost = (usage: Parameters<typeof costFromUsage>[0]['usage']) => costFromUsage({ provider: 'anthropic', model: 'claude-sonnet-4-5', usage }).costCents;
    expect(cost({ inputTokens: 3000, cacheWriteTokens: 1000, cachedInputTokens: 1500, outputTokens: 200 })).toBe(
      cents(500 * base('input_mtok') + 1000 * base('cache_write_mtok') + 1500 * base('cache_read_mtok') + 200 * base('output_mtok')),
    );
    // Past the tier's start, every token is at the tier's rate.
    const start = p.input_mtok?.tiers[0]?.start as number;
    expect(cost({ inputTokens: start + 1000, outputTokens: 10 })).toBe(cents((start + 1000) * tier('input_mtok') + 10 * tier('output_mtok')));
  });

  it('edge: exact to the micro-dollar: float noise lands on the decimal, a real remainder rounds up', () => {
    const rate = rates('openai', 'gpt-4o-mini').input_mtok as number;
    expect(rate).toBe(0.15);
    // 20 x 0.15 is 3.0000000000000004 in floats: 3 micros, not 4.
    expect(costFromUsage({ model: 'gpt-4o-mini', usage: { inputTokens: 20 } }).costCents).toBe(0.0003);
    // 7 x 0.15 = 1.05 micros: rounded up to 2, never under-charged.
    expect(costFromUsage({ model: 'gpt-4o-mini', usage: { inputTokens: 7 } }).costCents).toBe(0.0002);
    expect(costFromUsage({ model: 'gpt-4o-mini', usage: { inputTokens: 0, outputTokens: 0 } }).costCents).toBe(0);
    // A million calls' worth in one: 10M tokens of a $0.15 model is $1.50.
    expect(costFromUsage({ model: 'gpt-4o-mini', usage: { inputTokens: 10_000_000 } }).costCents).toBe(150);
  });
});

describe('costFromUsage: custom prices and unknown models', () => {
  it('error: an unknown model is unknown_model, never a cost of 0', () => {
    for (const model of ['my-private-llama', 'gpt-99-ultra-nonexistent']) {
      expect(() => costFromUsage({ model, usage: { inputTokens: 10 } })).toThrow(
        expect.objectContaining({ code: 'unknown_model', message: expect.stringContaining(`No price is known for model "${model}"`) }),
      );
    }
    for (const model of ['', '  ', 42, null, 'x'.repeat(201)]) {
      expect(() => costFromUsage({ model: model as string, usage: { inputTokens: 1 } })).toThrow(AgentKeyError);
    }
  });

  it('happy: a custom price prices a private model and wins over the catalog; a trailing * matches by prefix', () => {
    const prices = createPriceCatalog({
      custom: [
        { model: 'my-private-llama', inputPerMTok: 0.5, outputPerMTok: 1.5, contextWindow: 8192 },
        { provider: 'openai', model: 'gpt-4o', inputPerMTok: 2, outputPerMTok: 8, cachedInputPerMTok: 1 },
        { model: 'ft:acme-*', inputPerMTok: 3, outputPerMTok: 12 },
      ],
    });
    expect(costFromUsage({ model: 'my-private-llama', usage: { inputTokens: 1000, outputTokens: 100 } }, { prices })).toEqual({
      costCents: cents(1000 * 0.5 + 100 * 1.5),
      provider: 'custom',
      model: 'my-private-llama',
    });
    // The negotiated price, not the catalog's.
    expect(costFromUsage({ model: 'gpt-4o', usage: { inputTokens: 1000, cachedInputTokens: 500, outputTokens: 10 } }, { prices }).costCents).toBe(
      cents(500 * 2 + 500 * 1 + 10 * 8),
    );
    expect(costFromUsage({ model: 'ft:acme-support-v3', usage: { inputTokens: 100 } }, { prices })).toEqual({ costCents: cents(300), provider: 'custom', model: 'ft:acme-support-v3' });
    // Other models still come from the catalog.
    expect(costFromUsage({ model: 'gpt-4o-mini', usage: { inputTokens: 20 } }, { prices }).costCents).toBe(0.0003);
    expect(prices.find('my-private-llama')).toMatchObject({ contextWindow: 8192, maxOutputTokens: null });
  });

  it('error: bad custom prices are refused when the catalog is made', () => {
    const bad: unknown[] = [
      [{ model: 'm', inputPerMTok: -1 }],
      [{ model: 'm' }],
      [{ model: '', inputPerMTok: 1 }],
      [{ model: 'm', inputPerMTok: 1, outputPerMTok: Number.NaN }],
      [{ model: 'm', inputPerMTok: 1, contextWindow: 0.5 }],
      [{ model: 'm', inputPerMTok: 1, colour: 'red' }],
      [{ model: 'm', inputPerMTok: 1, provider: 'has spaces' }],
      [{ model: 'evil\u001b[31m', inputPerMTok: 1 }],
      'not a list',
    ];
    for (const custom of bad) expect(() => createPriceCatalog({ custom: custom as never }), JSON.stringify(custom)).toThrow(AgentKeyError);
  });
});

describe('costFromUsage: bad token counts', () => {
  it('error: each bad usage is invalid_usage, naming the field', () => {
    const cases: [unknown, RegExp][] = [
      [null, /must be an object/],
      [{}, /inputTokens must be a whole number/],
      [{ inputTokens: -1 }, /inputTokens/],
      [{ inputTokens: 1.5 }, /inputTokens/],
      [{ inputTokens: '10' }, /inputTokens/],
      [{ inputTokens: 10, outputTokens: Number.POSITIVE_INFINITY }, /outputTokens/],
      [{ inputTokens: 10, cachedInputTokens: 8, cacheWriteTokens: 3 }, /cannot pass it/],
      [{ inputTokens: 10, outputTokens: 5, reasoningTokens: 6 }, /reasoningTokens are part of outputTokens/],
      [{ inputTokens: 10, prompt_tokens: 10 }, /prompt_tokens is not a token count/],
    ];
    for (const [usage, message] of cases) {
      expect(() => costFromUsage({ model: 'gpt-4o', usage: usage as never }), JSON.stringify(usage)).toThrow(
        expect.objectContaining({ code: 'invalid_usage', message: expect.stringMatching(message) }),
      );
    }
  });
});

describe('createPriceCatalog({ remote }): newer prices, opt-in', () => {
  const servers: http.Server[] = [];
  afterAll(() => Promise.all(servers.map((s) => new Promise((r) => s.close(r)))));
  const serve = async (handler: http.RequestListener) => {
    const server = http.createServer(handler);
    servers.push(server);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return `http://127.0.0.1:${(server.address() as AddressInfo).port}/data.json`;
  };

  it('error: a failed fetch (500, not JSON, not the catalog shape, nobody listening) keeps the prices in use and says why', async () => {
    const urls = [
      await serve((_q, s) => s.writeHead(500).end('down')),
      await serve((_q, s) => s.writeHead(200, { 'content-type': 'application/json' }).end('{not json')),
      await serve((_q, s) => s.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ providers: [] }))),
      'http://127.0.0.1:9/data.json',
    ];
    for (const url of urls) {
      const prices = createPriceCatalog({ remote: { url } });
      await prices.remote?.ready;
      expect(prices.remote?.lastError, url).toEqual(expect.any(String));
      expect(prices.remote?.lastSuccessAt).toBeNull();
      prices.remote?.stop();
      expect(costFromUsage({ model: 'gpt-4o-mini', usage: { inputTokens: 20 } }, { prices }).costCents).toBe(0.0003);
    }
  });

  it('happy: fetched data replaces the bundled prices (here: a new model and a new rate)', async () => {
    const openai = findProvider({ providerId: 'openai' });
    const changed = {
      ...openai,
      models: [...(openai?.models ?? []).filter((m) => m.id !== 'gpt-4o-mini'), { id: 'gpt-4o-mini', match: { equals: 'gpt-4o-mini' }, prices: { input_mtok: 0.1, output_mtok: 0.4 } }, {
        id: 'gpt-next-preview',
        match: { equals: 'gpt-next-preview' },
        prices: { input_mtok: 4, output_mtok: 16 },
      }],
    };
    let asked = 0;
    const url = await serve((_q, s) => {
      asked++;
      s.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify([changed]));
    });
    expect(() => costFromUsage({ model: 'gpt-next-preview', usage: { inputTokens: 1 } })).toThrow(/No price/);
    const prices = createPriceCatalog({ remote: { url } });
    await prices.remote?.ready;
    prices.remote?.stop();
    expect(asked).toBe(1);
    expect(prices.remote).toMatchObject({ lastError: null, lastSuccessAt: expect.any(Date) });
    expect(costFromUsage({ model: 'gpt-next-preview', usage: { inputTokens: 1000 } }, { prices }).costCents).toBe(cents(4000));
    expect(costFromUsage({ model: 'gpt-4o-mini', usage: { inputTokens: 1000 } }, { prices }).costCents).toBe(cents(100));
  });

  it('error: bad remote options are refused', () => {
    expect(() => createPriceCatalog({ remote: { url: 'ftp://x' } })).toThrow(/http/);
    expect(() => createPriceCatalog({ remote: { url: 'http://127.0.0.1:9/', refreshMs: 5 } })).toThrow(/refreshMs/);
  });
});
