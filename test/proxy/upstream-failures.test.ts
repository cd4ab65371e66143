import net from 'node:net';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentKey } from '../../src/index.js';
import { costFromUsage, countTokens, estimateMaxCost } from '../../src/llm/index.js';
import { forEachDatabase } from '../helpers/databases.js';
import { type FakeLlm, type Script, startFakeLlm } from '../helpers/fake-llm.js';
import { type RunningProxy, fullUsage, ledgerOf, settledMoney, startProxy } from '../helpers/proxy.js';
import { until } from '../helpers/wait.js';

/**
 * When the upstream fails, the agent pays nothing: the hold is released, and the agent gets
 * the upstream's 4xx as it was (the operator's key cut out of it), or a 502/504 in the API's
 * shape for a 5xx, the operator's key refused, a timeout or a connection that failed. A
 * stream that breaks after it began is ended with an error event the SDK raises, and what
 * was used until then is committed. The operator's key is in no answer and no log line.
 */

const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user' as const, content: 'Hi there.' }], max_tokens: 30 };
const message = { model: 'claude-haiku-4-5', max_tokens: 30, messages: [{ role: 'user' as const, content: 'Hi there.' }] };
const header = (script: Script) => ({ headers: { 'x-fake': JSON.stringify(script) } });

async function caught(p: Promise<unknown>): Promise<Error & { status?: number; error?: unknown; headers?: Headers }> {
  try {
    await p;
  } catch (err) {
    return err as never;
  }
  throw new Error('expected an error');
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

forEachDatabase((getDb) => {
  let fake: FakeLlm;
  let proxy: RunningProxy;
  let ak: AgentKey;
  /** Everything an agent got back, to check the operator's key is in none of it. */
  const seen: string[] = [];
  const see = (err: { error?: unknown; message: string; headers?: Headers }) => {
    seen.push(err.message, JSON.stringify(err.error ?? null), JSON.stringify([...(err.headers ?? new Headers())]));
    return err;
  };

  beforeAll(async () => {
    fake = await startFakeLlm();
    ak = await getDb().agentKey();
    proxy = await startProxy(ak, fake, { timeoutMs: 400 });
  });
  afterAll(async () => {
    await proxy.close();
    await fake.close();
    await ak.close();
  });

  const agent = () => ak.create({ accountId: 'acct_failures', scopes: ['proxy.chat'], budgetCents: 100 });
  /** Nothing spent, and the ledger a hold and its release. */
  const released = async (id: number) => {
    expect(await settledMoney(ak, id)).toEqual({ spent: 0, held: 0, overage: 0 });
    expect((await ledgerOf(ak, id)).map((r) => r.kind)).toEqual(['hold', 'release']);
  };

  describe('errors the upstream answers', () => {
    it('error: an upstream 4xx reaches the agent as it was (status, shape, message), without the operator key; the hold is released', async () => {
      const { key, id } = await agent();
      const err = see(await caught(proxy.openai(key).chat.completions.create(chat, header({ status: 400 })))) as Awaited<ReturnType<typeof caught>>;
      expect(err).toBeInstanceOf(OpenAI.BadRequestError);
      expect(err.error).toEqual({ message: 'Fake error 400 (the key was [redacted]).', type: 'invalid_request_error', param: null, code: null });
      await released(id);
      const a = see(await caught(proxy.anthropic(key).messages.create(message, header({ status: 422 })))) as Awaited<ReturnType<typeof caught>>;
      expect(a).toBeInstanceOf(Anthropic.UnprocessableEntityError);
      expect(a.error).toEqual({ type: 'error', error: { type: 'invalid_request_error', message: 'Fake error 422 (the key was [redacted]).' } });
    });

    it('error: an upstream 5xx is a 502 in the API\'s shape naming the upstream\'s status; nothing is spent', async () => {
      const { key, id } = await agent();
      const err = see(await caught(proxy.openai(key).chat.completions.create(chat, header({ status: 500 })))) as Awaited<ReturnType<typeof caught>>;
      expect(err).toBeInstanceOf(OpenAI.InternalServerError);
      expect(err.status).toBe(502);
      expect(err.error).toEqual({ message: 'The upstream failed (HTTP 500): Fake error 500 (the key was [redacted]).', type: 'server_error', param: null, code: 'upstream_error' });
      await released(id);
      const a = see(await caught(proxy.anthropic(key).messages.create(message, header({ status: 529 })))) as Awaited<ReturnType<typeof caught>>;
      expect(a).toBeInstanceOf(Anthropic.InternalServerError);
      expect(a.error).toMatchObject({ type: 'error', error: { type: 'api_error', details: { error_code: 'upstream_error' } } });
    });

    it('security: an upstream refusing the operator key is a 502 upstream_auth_failed that never carries the upstream\'s body (which quotes the key)', async () => {
      const { key, id } = await agent();
      const wrong = await startProxy(ak, fake, { upstreams: { openai: { apiKey: 'sk-wrong-operator-key-42', baseUrl: fake.url } } });
      try {
        const err = see(await caught(wrong.openai(key).chat.completions.create(chat))) as Awaited<ReturnType<typeof caught>>;
        expect(fake.requests.at(-1)?.headers.authorization).toBe('Bearer sk-wrong-operator-key-42');
        expect(err.status).toBe(502);
        expect(err.error).toMatchObject({ code: 'upstream_auth_failed', type: 'server_error' });
        expect(JSON.stringify(err.error)).not.toContain('sk-wrong-operator-key-42');
        await released(id);
        expect(JSON.stringify(wrong.logs)).not.toContain('sk-wrong-operator-key-42');
      } finally {
        await wrong.close();
      }
    });
  });

  describe('no answer', () => {
    it('error: an upstream that does not answer within timeoutMs is a 504; the upstream call is cancelled and the hold released', async () => {
      const { key, id } = await agent();
      const before = fake.requests.length;
      const err = see(await caught(proxy.openai(key).chat.completions.create(chat, header({ hang: true })))) as Awaited<ReturnType<typeof caught>>;
      expect(err).toBeInstanceOf(OpenAI.InternalServerError);
      expect(err.status).toBe(504);
      expect(err.error).toMatchObject({ code: 'upstream_timeout' });
      await until(() => fake.requests[before]?.cancelled === true, 'the upstream to see the cancel');
      await released(id);
    });

    it('error: an upstream that refuses the connection, or drops it before answering, is a 502 upstream_unreachable; nothing is spent', async () => {
      const { key, id } = await agent();
      const port = await closedPort();
      const down = await startProxy(ak, fake, { upstreams: { anthropic: { apiKey: fake.apiKey, baseUrl: `http://127.0.0.1:${port}` } } });
      try {
        const err = see(await caught(down.anthropic(key).messages.create(message))) as Awaited<ReturnType<typeof caught>>;
        expect(err).toBeInstanceOf(Anthropic.InternalServerError);
        expect(err.status).toBe(502);
        expect(err.error).toMatchObject({ type: 'error', error: { type: 'api_error', message: 'The upstream could not be reached (ECONNREFUSED).', details: { error_code: 'upstream_unreachable' } } });
        await released(id);
      } finally {
        await down.close();
      }
      const second = await agent();
      const dropped = see(await caught(proxy.openai(second.key).chat.completions.create(chat, header({ drop: 'before' })))) as Awaited<ReturnType<typeof caught>>;
      expect(dropped.status).toBe(502);
      expect(dropped.error).toMatchObject({ code: 'upstream_unreachable' });
      await released(second.id);
    });
  });

  describe('a stream that breaks after it began', () => {
    it('error: the connection dropped mid-stream: the agent\'s SDK raises the error event; the text so far and the input are committed', async () => {
      const { key, id } = await agent();
      const stream = await proxy.openai(key).chat.completions.create({ ...chat, stream: true }, header({ drop: 'mid', afterChunks: 2 }));
      const parts: string[] = [];
      const err = await caught(
        (async () => {
          for await (const chunk of stream) parts.push(chunk.choices[0]?.delta.content ?? '');
        })(),
      );
      see(err as never);
      expect(err).toBeInstanceOf(OpenAI.APIError);
      expect(err.message).toContain('The upstream broke off the stream.');
      expect(parts.join('')).toBe('Hello from');
      const money = await settledMoney(ak, id);
      const input = estimateMaxCost({ model: chat.model, provider: 'openai', api: 'openai.chat', request: { ...chat, stream: true } }).inputTokens;
      const usage = { inputTokens: input, outputTokens: countTokens('Hello from', chat.model) };
      expect(money.spent).toBe(costFromUsage({ model: chat.model, provider: 'openai', usage }).costCents);
      const commit = (await ledgerOf(ak, id)).find((r) => r.kind === 'commit');
      expect(commit?.metadata).toEqual({ upstream: 'openai', partial: true });
      expect(commit?.usage).toEqual({ provider: 'openai', ...fullUsage(usage) });
    });

    it('error: a whole answer cut in the middle is a 502 (never half a body); the input bound is committed', async () => {
      const { key, id } = await agent();
      const err = see(await caught(proxy.openai(key).chat.completions.create(chat, header({ drop: 'mid' })))) as Awaited<ReturnType<typeof caught>>;
      expect(err).toBeInstanceOf(OpenAI.InternalServerError);
      expect(err.status).toBe(502);
      expect(err.error).toMatchObject({ code: 'upstream_error', message: 'The upstream broke off its answer.' });
      const money = await settledMoney(ak, id);
      const input = estimateMaxCost({ model: chat.model, provider: 'openai', api: 'openai.chat', request: chat }).inputTokens;
      expect(money.spent).toBe(costFromUsage({ model: chat.model, provider: 'openai', usage: { inputTokens: input, outputTokens: 0 } }).costCents);
    });

    it('error: a stream that goes quiet for longer than timeoutMs is cut with an error event; the upstream sees the cancel; the usage so far is committed', async () => {
      const { key, id } = await agent();
      const before = fake.requests.length;
      const stream = proxy.anthropic(key).messages.stream(message, header({ stall: true, afterChunks: 3, usage: { input: 17, output: 30 } }));
      const err = await caught(stream.finalMessage());
      see(err as never);
      expect(err).toBeInstanceOf(Anthropic.APIError);
      expect(err.message).toContain('The upstream sent nothing for 400 ms; the stream was cut.');
      await until(() => fake.requests[before]?.cancelled === true, 'the upstream to see the cancel');
      const money = await settledMoney(ak, id);
      // Anthropic said the input (17) at message_start; the output is counted from the three words that came.
      const usage = { inputTokens: 17, outputTokens: countTokens('Hello from the', message.model) };
      expect(money.spent).toBe(costFromUsage({ model: message.model, provider: 'anthropic', usage }).costCents);
    });
  });

  it('security: the operator key is in no answer the agents got and no line the proxy logged; nor is its organization', () => {
    expect(seen.length).toBeGreaterThan(10);
    for (const text of seen) {
      expect(text).not.toContain(fake.apiKey);
      expect(text).not.toContain('org-operator-secret');
    }
    expect(JSON.stringify(proxy.logs)).not.toContain(fake.apiKey);
    expect(proxy.logs.some((l) => l.level === 'error')).toBe(true);
  });
});
