import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentKey } from '../../src/index.js';
import { costFromUsage, countTokens, estimateMaxCost } from '../../src/llm/index.js';
import { forEachDatabase } from '../helpers/databases.js';
import { type FakeLlm, type Script, startFakeLlm } from '../helpers/fake-llm.js';
import { type RunningProxy, fullUsage, ledgerOf, settledMoney, startProxy } from '../helpers/proxy.js';
import { until } from '../helpers/wait.js';

/**
 * An agent that goes away mid-call: the proxy cancels the upstream call (the fake upstream
 * sees its client close before the answer ended) and commits what was used: the input (as
 * Anthropic reported it at message_start, else the hold's bound of it) and the output counted
 * from the text streamed so far. Nothing more, and the hold's rest comes back.
 */

const header = (script: Script) => ({ headers: { 'x-fake': JSON.stringify(script) } });

forEachDatabase((getDb) => {
  let fake: FakeLlm;
  let proxy: RunningProxy;
  let ak: AgentKey;

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

  const agent = () => ak.create({ accountId: 'acct_abort', scopes: ['proxy.chat'], budgetCents: 100 });
  const commitOf = async (id: number) => {
    const rows = await ledgerOf(ak, id);
    expect(rows.map((r) => r.kind)).toEqual(['hold', 'commit']);
    return rows[1];
  };

  describe('a client that goes away', () => {
    it('happy: an OpenAI stream aborted after three words: the upstream sees the cancel; the input bound and the three words are committed', async () => {
      const { key, id } = await agent();
      const request = { model: 'gpt-4o-mini', messages: [{ role: 'user' as const, content: 'Tell me a long story.' }], max_tokens: 200, stream: true as const };
      const before = fake.requests.length;
      const abort = new AbortController();
      const stream = await proxy.openai(key).chat.completions.create(request, { ...header({ stall: true, afterChunks: 3 }), signal: abort.signal });
      const parts: string[] = [];
      // The SDK ends the iteration (or throws, by version) once aborted.
      await (async () => {
        for await (const chunk of stream) {
          const text = chunk.choices[0]?.delta.content ?? '';
          if (text) parts.push(text);
          if (parts.length === 3) abort.abort();
        }
      })().catch(() => {});
      expect(parts.join('')).toBe('Hello from the');
      await until(() => fake.requests[before]?.cancelled === true, 'the upstream to see the cancel');
      const money = await settledMoney(ak, id);
      const input = estimateMaxCost({ model: request.model, provider: 'openai', api: 'openai.chat', request }).inputTokens;
      const usage = { inputTokens: input, outputTokens: countTokens('Hello from the', request.model) };
      expect(money.spent).toBe(costFromUsage({ model: request.model, provider: 'openai', usage }).costCents);
      const row = await commitOf(id);
      expect(row?.metadata).toEqual({ upstream: 'openai', partial: true });
      expect(row?.model).toBe('gpt-4o-mini');
      expect(row?.usage).toEqual({ provider: 'openai', ...fullUsage(usage) });
      await until(() => proxy.logs.some((l) => (l.obj as { outcome?: string; keyId?: number }).outcome === 'partial' && (l.obj as { keyId?: number }).keyId === id), 'the partial outcome to be logged');
    });

    it('happy: an Anthropic stream aborted after two words: the input message_start reported and the two words are committed', async () => {
      const { key, id } = await agent();
      const before = fake.requests.length;
      const stream = proxy.anthropic(key).messages.stream(
        { model: 'claude-haiku-4-5', max_tokens: 300, messages: [{ role: 'user', content: 'A long story, please.' }] },
        header({ stall: true, afterChunks: 2, usage: { input: 40, output: 300, cached: 8 } }),
      );
      const words: string[] = [];
      stream.on('text', (text) => {
        words.push(text);
        if (words.length === 2) stream.abort();
      });
      await expect(stream.done()).rejects.toThrow();
      expect(words.join('')).toBe('Hello from');
      await until(() => fake.requests[before]?.cancelled === true, 'the upstream to see the cancel');
      const money = await settledMoney(ak, id);
      const usage = { inputTokens: 40, cachedInputTokens: 8, outputTokens: countTokens('Hello from', 'claude-haiku-4-5') };
      expect(money.spent).toBe(costFromUsage({ model: 'claude-haiku-4-5', provider: 'anthropic', usage }).costCents);
      const row = await commitOf(id);
      expect(row?.metadata).toEqual({ upstream: 'anthropic', partial: true });
      expect(row?.usage).toEqual({ provider: 'anthropic', ...fullUsage(usage) });
    });

    it('happy: a whole (non-streamed) call abandoned while the upstream works: the upstream is cancelled, and only the input bound is committed', async () => {
      const { key, id } = await agent();
      const request = { model: 'gpt-4o-mini', messages: [{ role: 'user' as const, content: 'Think hard.' }], max_tokens: 500 };
      const before = fake.requests.length;
      const abort = new AbortController();
      const call = proxy.openai(key).chat.completions.create(request, { ...header({ hang: true }), signal: abort.signal });
      await until(() => fake.requests.length > before, 'the call to reach the upstream');
      abort.abort();
      await expect(call).rejects.toThrow();
      await until(() => fake.requests[before]?.cancelled === true, 'the upstream to see the cancel');
      const money = await settledMoney(ak, id);
      const input = estimateMaxCost({ model: request.model, provider: 'openai', api: 'openai.chat', request }).inputTokens;
      expect(money.spent).toBe(costFromUsage({ model: request.model, provider: 'openai', usage: { inputTokens: input, outputTokens: 0 } }).costCents);
    });
  });
});
