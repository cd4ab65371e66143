import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type TokenUsage, costFromUsage } from '../../src/llm/index.js';
import { forEachDatabase } from '../helpers/databases.js';
import { FAKE_TEXT, type FakeLlm, type Script, startFakeLlm } from '../helpers/fake-llm.js';
import { type RunningProxy, fullUsage, ledgerOf, settledMoney, startProxy } from '../helpers/proxy.js';

/**
 * The proxy's happy paths with the official SDKs as agents, against the fake upstream, on
 * PostgreSQL and PGlite: for each API, whole answers and streams, the agent gets the
 * upstream's answer, the hold taken first covers the call, and exactly the cost of the usage
 * the upstream reported is committed (costFromUsage of it), with the model and the token
 * counts in the ledger. The operator's key went upstream; the agent's did not.
 */

const header = (script: Script) => ({ headers: { 'x-fake': JSON.stringify(script) } });

/** The committed cost and the hold of the key's one call, once it is settled. */
async function oneCall(getAk: () => import('../../src/index.js').AgentKey, keyId: number) {
  const ak = getAk();
  const money = await settledMoney(ak, keyId);
  const rows = await ledgerOf(ak, keyId);
  const hold = rows.find((r) => r.kind === 'hold');
  const commit = rows.find((r) => r.kind === 'commit');
  expect(rows.map((r) => r.kind)).toEqual(['hold', 'commit']);
  expect(commit?.reservationId).toBe(hold?.reservationId);
  return { money, hold: hold?.cents as number, commit: commit?.cents as number, row: commit };
}

forEachDatabase((getDb) => {
  let fake: FakeLlm;
  let proxy: RunningProxy;
  let ak: import('../../src/index.js').AgentKey;

  beforeAll(async () => {
    fake = await startFakeLlm();
    ak = await getDb().agentKey();
    proxy = await startProxy(ak, fake);
  });
  afterAll(async () => {
    await proxy.close();
    await fake.close();
    await ak.close();
  });

  const agent = async () => ak.create({ accountId: 'acct_proxy', scopes: ['proxy.chat'], budgetCents: 100 });
  const expectCost = (model: string, provider: string, usage: TokenUsage, committed: number, held: number) => {
    const cost = costFromUsage({ model, provider, usage }).costCents;
    expect(committed).toBe(cost);
    expect(cost).toBeGreaterThan(0);
    expect(held).toBeGreaterThanOrEqual(cost);
  };

  describe('OpenAI chat completions', () => {
    it('happy: a whole answer: the text comes back; the hold covers it; exactly the reported usage is committed, with model and tokens in the ledger', async () => {
      const { key, id } = await agent();
      const usage = { input: 18, output: 7, cached: 6, reasoning: 2 };
      const before = fake.requests.length;
      const reply = await proxy.openai(key).chat.completions.create(
        { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello to the fake upstream.' }], max_tokens: 50 },
        header({ usage }),
      );
      expect(reply.choices[0]?.message.content).toBe(FAKE_TEXT);
      expect(reply.usage).toMatchObject({ prompt_tokens: 18, completion_tokens: 7 });
      const call = await oneCall(() => ak, id);
      const expected = { inputTokens: 18, outputTokens: 7, cachedInputTokens: 6, reasoningTokens: 2 };
      expectCost('gpt-4o-mini', 'openai', expected, call.commit, call.hold);
      expect(call.money).toEqual({ spent: call.commit, held: 0, overage: 0 });
      expect(call.row?.model).toBe('gpt-4o-mini');
      expect(call.row?.usage).toEqual({ provider: 'openai', ...fullUsage(expected) });
      expect(call.row?.metadata).toEqual({ upstream: 'openai' });
      // Upstream: the operator's key as the bearer, none of the agent's credentials.
      const got = fake.requests[before];
      expect(got?.headers.authorization).toBe(`Bearer ${fake.apiKey}`);
      expect(JSON.stringify(got?.headers)).not.toContain(key);
      expect(got?.body).toEqual({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello to the fake upstream.' }], max_tokens: 50 });
      expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true });
    });

    it('happy: a stream the client did not ask usage of: the proxy asks for it upstream, and the client gets the stream without the usage chunk', async () => {
      const { key, id } = await agent();
      const before = fake.requests.length;
      const stream = await proxy.openai(key).chat.completions.create(
        { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Stream it.' }], max_tokens: 40, stream: true },
        header({ usage: { input: 10, output: 6 } }),
      );
      const chunks = [];
      for await (const chunk of stream) chunks.push(chunk);
      expect(chunks.map((c) => c.choices[0]?.delta.content ?? '').join('')).toBe(FAKE_TEXT);
      // Every chunk has a choice: the usage-only chunk was left out.
      expect(chunks.every((c) => c.choices.length === 1)).toBe(true);
      expect(fake.requests[before]?.body.stream_options).toEqual({ include_usage: true });
      const call = await oneCall(() => ak, id);
      expectCost('gpt-4o-mini', 'openai', { inputTokens: 10, outputTokens: 6 }, call.commit, call.hold);
    });

    it('happy: a stream that asks for usage itself gets the usage chunk, as the upstream sent it', async () => {
      const { key, id } = await agent();
      const stream = await proxy.openai(key).chat.completions.create(
        { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Stream it.' }], max_tokens: 40, stream: true, stream_options: { include_usage: true } },
        header({ usage: { input: 11, output: 5 } }),
      );
      const chunks = [];
      for await (const chunk of stream) chunks.push(chunk);
      expect(chunks.at(-1)).toMatchObject({ choices: [], usage: { prompt_tokens: 11, completion_tokens: 5 } });
      const call = await oneCall(() => ak, id);
      expectCost('gpt-4o-mini', 'openai', { inputTokens: 11, outputTokens: 5 }, call.commit, call.hold);
    });

    it('happy: an upstream that compresses its answer anyway: the agent gets it decoded, and it is metered', async () => {
      const { key, id } = await agent();
      const reply = await proxy.openai(key).chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Zip it.' }], max_tokens: 20 }, header({ usage: { input: 8, output: 4 }, gzip: true }));
      expect(reply.choices[0]?.message.content).toBe(FAKE_TEXT);
      expect(fake.requests.at(-1)?.headers['accept-encoding']).toBe('identity');
      const call = await oneCall(() => ak, id);
      expectCost('gpt-4o-mini', 'openai', { inputTokens: 8, outputTokens: 4 }, call.commit, call.hold);
    });

    it('happy: a slow stream passes through chunk by chunk and is metered the same', async () => {
      const { key, id } = await agent();
      const stream = await proxy.openai(key).chat.completions.create(
        { model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Slowly.' }], max_tokens: 40, stream: true },
        header({ usage: { input: 9, output: 5 }, delayMs: 40 }),
      );
      const parts: string[] = [];
      for await (const chunk of stream) parts.push(chunk.choices[0]?.delta.content ?? '');
      expect(parts.join('')).toBe(FAKE_TEXT);
      const call = await oneCall(() => ak, id);
      expectCost('gpt-4o-mini', 'openai', { inputTokens: 9, outputTokens: 5 }, call.commit, call.hold);
    });
  });

  describe('OpenAI responses and embeddings', () => {
    it('happy: a whole response: output_text, and its usage committed', async () => {
      const { key, id } = await agent();
      const reply = await proxy.openai(key).responses.create({ model: 'gpt-4.1-mini', input: 'Hello?', max_output_tokens: 60 }, header({ usage: { input: 12, output: 8, cached: 4, reasoning: 3 } }));
      expect(reply.output_text).toBe(FAKE_TEXT);
      const call = await oneCall(() => ak, id);
      expectCost('gpt-4.1-mini', 'openai', { inputTokens: 12, outputTokens: 8, cachedInputTokens: 4, reasoningTokens: 3 }, call.commit, call.hold);
    });

    it('happy: a response stream: the deltas, and the usage of response.completed committed', async () => {
      const { key, id } = await agent();
      const stream = await proxy.openai(key).responses.create({ model: 'gpt-4.1-mini', input: 'Hello?', max_output_tokens: 60, stream: true }, header({ usage: { input: 13, output: 6 } }));
      const deltas: string[] = [];
      for await (const ev of stream) if (ev.type === 'response.output_text.delta') deltas.push(ev.delta);
      expect(deltas.join('')).toBe(FAKE_TEXT);
      const call = await oneCall(() => ak, id);
      expectCost('gpt-4.1-mini', 'openai', { inputTokens: 13, outputTokens: 6 }, call.commit, call.hold);
    });

    it('happy: embeddings: the vectors come back, the input tokens are committed', async () => {
      const { key, id } = await agent();
      const reply = await proxy.openai(key).embeddings.create({ model: 'text-embedding-3-small', input: ['one text', 'and another one'] }, header({ usage: { input: 6, output: 0 } }));
      expect(reply.data.map((d) => Array.from(d.embedding))).toEqual([[0.25, -0.5, 1], [0.25, -0.5, 1]]);
      const call = await oneCall(() => ak, id);
      expectCost('text-embedding-3-small', 'openai', { inputTokens: 6, outputTokens: 0 }, call.commit, call.hold);
    });
  });

  describe('Anthropic messages', () => {
    it('happy: a whole message: the agent key goes as x-api-key (as the SDK sends it); the operator key and the client\'s anthropic-version go upstream; cache tokens are priced', async () => {
      const { key, id } = await agent();
      const before = fake.requests.length;
      const usage = { input: 30, output: 12, cached: 10, cacheWrite: 5 };
      const reply = await proxy.anthropic(key).messages.create({ model: 'claude-haiku-4-5', max_tokens: 64, messages: [{ role: 'user', content: 'Hello, Claude.' }] }, header({ usage }));
      expect(reply.content).toEqual([{ type: 'text', text: FAKE_TEXT }]);
      const got = fake.requests[before];
      expect(got?.headers['x-api-key']).toBe(fake.apiKey);
      // The client's anthropic-version is kept (the SDK sends its own).
      expect(got?.headers['anthropic-version']).toMatch(/^\d{4}-\d{2}-\d{2}$/);
      expect(got?.headers.authorization).toBeUndefined();
      expect(JSON.stringify(got?.headers)).not.toContain(key);
      const call = await oneCall(() => ak, id);
      const expected = { inputTokens: 30, outputTokens: 12, cachedInputTokens: 10, cacheWriteTokens: 5 };
      expectCost('claude-haiku-4-5', 'anthropic', expected, call.commit, call.hold);
      expect(call.row?.model).toBe('claude-haiku-4-5');
      expect(call.row?.usage).toEqual({ provider: 'anthropic', ...fullUsage(expected) });
    });

    it('happy: a message stream: the text deltas, and message_start input with message_delta output committed', async () => {
      const { key, id } = await agent();
      const stream = proxy.anthropic(key).messages.stream({ model: 'claude-haiku-4-5', max_tokens: 64, messages: [{ role: 'user', content: 'Stream, Claude.' }] }, header({ usage: { input: 25, output: 11, cached: 3 } }));
      const message = await stream.finalMessage();
      expect(message.content).toEqual([{ type: 'text', text: FAKE_TEXT }]);
      expect(message.usage).toMatchObject({ output_tokens: 11 });
      const call = await oneCall(() => ak, id);
      expectCost('claude-haiku-4-5', 'anthropic', { inputTokens: 25, outputTokens: 11, cachedInputTokens: 3 }, call.commit, call.hold);
    });

    it('happy: a bearer works too (the SDK\'s authToken), and the hold is the request\'s worst case', async () => {
      const { key, id } = await agent();
      const Anthropic = (await import('@anthropic-ai/sdk')).default;
      const client = new Anthropic({ authToken: key, apiKey: null, baseURL: `${proxy.url}/proxy/anthropic`, maxRetries: 0 });
      const request = { model: 'claude-haiku-4-5', max_tokens: 64, messages: [{ role: 'user' as const, content: 'Bearer.' }] };
      await client.messages.create(request, header({ usage: { input: 20, output: 10 } }));
      const call = await oneCall(() => ak, id);
      const { estimateMaxCost } = await import('../../src/llm/index.js');
      expect(call.hold).toBe(estimateMaxCost({ model: 'claude-haiku-4-5', provider: 'anthropic', api: 'anthropic.messages', request }).costCents);
      expectCost('claude-haiku-4-5', 'anthropic', { inputTokens: 20, outputTokens: 10 }, call.commit, call.hold);
    });
  });
});
