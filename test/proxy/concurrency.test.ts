import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentKey } from '../../src/index.js';
import { costFromUsage, estimateMaxCost } from '../../src/llm/index.js';
import { forEachDatabase } from '../helpers/databases.js';
import { type FakeLlm, type Script, startFakeLlm } from '../helpers/fake-llm.js';
import { type RunningProxy, settledMoney, startProxy } from '../helpers/proxy.js';
import { until } from '../helpers/wait.js';

/**
 * Many agents' calls at once on one small budget: every call holds its worst case before it
 * goes upstream, so the calls that pass never take more than the budget, those that do not
 * are refused with a 429 their SDK raises as RateLimitError, and each call that passed is
 * committed at exactly its reported cost. A key's concurrency limit counts a stream until it
 * ends.
 */

const header = (script: Script) => ({ headers: { 'x-fake': JSON.stringify(script) } });
const USAGE = { input: 20, output: 9 };

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

  describe('one budget, many streams at once', () => {
    it('concurrency: 30 streaming calls (OpenAI and Anthropic) on a budget that holds a few: spend and holds never pass it; the rest are RateLimitErrors; each call that passed is committed exactly', async () => {
      const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user' as const, content: 'Count to five.' }], max_tokens: 200, stream: true as const };
      const message = { model: 'claude-haiku-4-5', max_tokens: 100, messages: [{ role: 'user' as const, content: 'Count to five.' }] };
      const holdChat = estimateMaxCost({ model: chat.model, provider: 'openai', api: 'openai.chat', request: chat }).costCents;
      const holdMessage = estimateMaxCost({ model: message.model, provider: 'anthropic', api: 'anthropic.messages', request: message }).costCents;
      const budget = Math.round((2 * holdChat + 2 * holdMessage) * 10_000) / 10_000;
      const { key, id } = await ak.create({ accountId: 'acct_many', scopes: ['proxy.chat'], budgetCents: budget });
      const costChat = costFromUsage({ model: chat.model, provider: 'openai', usage: { inputTokens: USAGE.input, outputTokens: USAGE.output } }).costCents;
      const costMessage = costFromUsage({ model: message.model, provider: 'anthropic', usage: { inputTokens: USAGE.input, outputTokens: USAGE.output } }).costCents;
      const slow = header({ usage: USAGE, delayMs: 25 });

      // Sample the key while the calls run: its spend and holds never pass its budget.
      let sampling = true;
      const samples: number[] = [];
      const sampler = (async () => {
        while (sampling) {
          const info = await ak.getKey(id);
          samples.push(Number(info?.spentCents) + Number(info?.heldCents));
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
      })();

      const outcomes = await Promise.all(
        Array.from({ length: 30 }, async (_, i) => {
          try {
            if (i % 2 === 0) {
              const stream = await proxy.openai(key).chat.completions.create(chat, slow);
              let text = '';
              for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
              return { kind: 'chat' as const, text };
            }
            const final = await proxy.anthropic(key).messages.stream(message, slow).finalMessage();
            return { kind: 'message' as const, text: final.content.map((b) => (b.type === 'text' ? b.text : '')).join('') };
          } catch (err) {
            return { kind: 'refused' as const, err };
          }
        }),
      );
      sampling = false;
      await sampler;

      const refused = outcomes.filter((o) => o.kind === 'refused');
      const chats = outcomes.filter((o) => o.kind === 'chat');
      const messages = outcomes.filter((o) => o.kind === 'message');
      expect(refused.length).toBeGreaterThan(0);
      expect(chats.length + messages.length).toBeGreaterThan(0);
      for (const r of refused) {
        const err = (r as { err: unknown }).err;
        expect(err instanceof OpenAI.RateLimitError || err instanceof Anthropic.RateLimitError, String(err)).toBe(true);
      }
      for (const o of [...chats, ...messages]) expect((o as { text: string }).text).toBe('Hello from the fake upstream');

      const money = await settledMoney(ak, id);
      const expected = Math.round((chats.length * costChat + messages.length * costMessage) * 10_000) / 10_000;
      expect(money).toEqual({ spent: expected, held: 0, overage: 0 });
      expect(money.spent).toBeLessThanOrEqual(budget);
      expect(samples.length).toBeGreaterThan(0);
      for (const s of samples) expect(s).toBeLessThanOrEqual(budget + 1e-9);
      expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true });
      // The upstream got only the calls that passed.
      const calls = fake.requests.filter((r) => r.body.messages && JSON.stringify(r.body.messages).includes('Count to five.'));
      expect(calls.length).toBe(chats.length + messages.length);
    });
  });

  describe("a key's concurrency limit", () => {
    it('concurrency: with concurrency 1, a second call is refused while a stream is open, and passes once that stream ended', async () => {
      const { key } = await ak.create({ accountId: 'acct_slots', scopes: ['proxy.chat'], budgetCents: 100, concurrency: 1 });
      const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user' as const, content: 'Slots.' }], max_tokens: 50 };
      const abort = new AbortController();
      const stream = await proxy.openai(key).chat.completions.create({ ...chat, stream: true }, { ...header({ stall: true, afterChunks: 1 }), signal: abort.signal });
      const iterator = stream[Symbol.asyncIterator]();
      await iterator.next();
      const second = await proxy.openai(key).chat.completions.create(chat).catch((err: unknown) => err);
      expect(second).toBeInstanceOf(OpenAI.RateLimitError);
      expect((second as InstanceType<typeof OpenAI.RateLimitError>).code).toBe('rate_limited');
      abort.abort();
      await iterator.return?.();
      // The slot is freed when the proxy sees the stream end (the client's close reaches it a moment later).
      let third: unknown;
      await until(async () => {
        third = await proxy.openai(key).chat.completions.create(chat).catch((err: unknown) => err);
        return !(third instanceof OpenAI.RateLimitError);
      }, 'the slot to be freed');
      expect(third).toMatchObject({ choices: [{ message: { content: 'Hello from the fake upstream' } }] });
    });
  });
});
