import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { AgentKey } from '../../src/index.js';
import { costFromUsage, createPriceCatalog } from '../../src/llm/index.js';
import { forEachDatabase } from '../helpers/databases.js';
import { type FakeLlm, startFakeLlm } from '../helpers/fake-llm.js';
import { expectOneSentence } from '../helpers/http.js';
import { type RunningProxy, ledgerOf, settledMoney, startProxy } from '../helpers/proxy.js';

/**
 * What the proxy refuses, before any upstream call, in the upstream API's own error shape so
 * the SDKs raise their own classes: a missing or bad key (401), a missing scope or a model
 * outside the key's allow-list (403), a body it cannot read or a model with no price (400),
 * a body too large (413), a budget that cannot take the worst case or a rate limit (429, with
 * Retry-After when the window's reset is known), an unknown upstream (404).
 */

const chat = { model: 'gpt-4o-mini', messages: [{ role: 'user' as const, content: 'Hi.' }], max_tokens: 20 };
const message = { model: 'claude-haiku-4-5', max_tokens: 20, messages: [{ role: 'user' as const, content: 'Hi.' }] };

async function caught(p: Promise<unknown>): Promise<Error & { status?: number; error?: unknown; code?: string; type?: string; headers?: Headers }> {
  try {
    await p;
  } catch (err) {
    return err as never;
  }
  throw new Error('expected a refusal');
}

/** An OpenAI SDK error: its class, status, and the body's `error` in OpenAI's shape with `code`. */
function expectOpenAIError(err: Awaited<ReturnType<typeof caught>>, cls: new (...args: never[]) => Error, status: number, code: string, type: string): void {
  expect(err).toBeInstanceOf(cls);
  expect({ status: err.status, code: err.code, type: err.type }).toEqual({ status, code, type });
  expect(err.error).toEqual({ message: expect.any(String), type, param: null, code });
  expectOneSentence((err.error as { message: string }).message);
}

/** An Anthropic SDK error: its class, status, and the body in Anthropic's shape. */
function expectAnthropicError(err: Awaited<ReturnType<typeof caught>>, cls: new (...args: never[]) => Error, status: number, code: string, type: string): void {
  expect(err).toBeInstanceOf(cls);
  expect(err.status).toBe(status);
  expect(err.error).toEqual({ type: 'error', error: { type, message: expect.any(String), details: { error_code: code } } });
  expect((err as unknown as { errorCode: string }).errorCode).toBe(code);
}

forEachDatabase((getDb) => {
  let fake: FakeLlm;
  let proxy: RunningProxy;
  let ak: AgentKey;
  const custom = createPriceCatalog({ custom: [{ model: 'acme-private-*', inputPerMTok: 1, outputPerMTok: 4, maxOutputTokens: 1000 }] });

  beforeAll(async () => {
    fake = await startFakeLlm();
    ak = await getDb().agentKey();
    proxy = await startProxy(ak, fake, { bodyLimitBytes: 4096 });
  });
  afterAll(async () => {
    await proxy.close();
    await fake.close();
    await ak.close();
  });

  const agent = (extra: Partial<Parameters<AgentKey['create']>[0]> = {}) => ak.create({ accountId: 'acct_refusals', scopes: ['proxy.chat'], budgetCents: 100, ...extra });
  /** Runs `call` and checks that no request reached the upstream. */
  const noUpstreamCall = async <T>(call: () => Promise<T>): Promise<T> => {
    const before = fake.requests.length;
    const out = await call();
    expect(fake.requests.length).toBe(before);
    return out;
  };
  const post = (path: string, body: string, headers: Record<string, string>) =>
    fetch(`${proxy.url}${path}`, { method: 'POST', body, headers: { 'content-type': 'application/json', ...headers } });

  describe('keys and scopes', () => {
    it('security: an unknown key is a 401 AuthenticationError in either shape, and nothing is called upstream', async () => {
      await noUpstreamCall(async () => {
        expectOpenAIError(await caught(proxy.openai('ak_not_a_real_key').chat.completions.create(chat)), OpenAI.AuthenticationError, 401, 'invalid_key', 'authentication_error');
        expectAnthropicError(await caught(proxy.anthropic('ak_not_a_real_key').messages.create(message)), Anthropic.AuthenticationError, 401, 'invalid_key', 'authentication_error');
      });
    });

    it('security: no key at all is a 401 missing_key; a revoked key a 401 key_revoked', async () => {
      await noUpstreamCall(async () => {
        const res = await post('/proxy/openai/v1/chat/completions', JSON.stringify(chat), {});
        expect(res.status).toBe(401);
        expect(await res.json()).toEqual({ error: { message: expect.any(String), type: 'authentication_error', param: null, code: 'missing_key' } });
        const { key, id } = await agent();
        await ak.revoke(id);
        expectOpenAIError(await caught(proxy.openai(key).chat.completions.create(chat)), OpenAI.AuthenticationError, 401, 'key_revoked', 'authentication_error');
      });
    });

    it('security: a key without the scope is a 403 PermissionDeniedError insufficient_scope', async () => {
      const { key } = await agent({ scopes: ['usage.read'] });
      await noUpstreamCall(async () => {
        expectOpenAIError(await caught(proxy.openai(key).chat.completions.create(chat)), OpenAI.PermissionDeniedError, 403, 'insufficient_scope', 'permission_error');
        expectAnthropicError(await caught(proxy.anthropic(key).messages.create(message)), Anthropic.PermissionDeniedError, 403, 'insufficient_scope', 'permission_error');
      });
    });
  });

  describe('the model allow-list (metadata.models)', () => {
    it('security: a model outside the list is a 403 model_not_allowed before any upstream call; one inside it (a glob too) goes through', async () => {
      const { key, id } = await agent({ metadata: { models: ['gpt-4o-mini', 'claude-*'] } });
      await noUpstreamCall(async () => {
        const err = await caught(proxy.openai(key).chat.completions.create({ ...chat, model: 'gpt-4.1-mini' }));
        expectOpenAIError(err, OpenAI.PermissionDeniedError, 403, 'model_not_allowed', 'permission_error');
        expect(err.message).toContain('"gpt-4o-mini", "claude-*"');
      });
      expect(await ledgerOf(ak, id)).toEqual([]);
      const before = fake.requests.length;
      await proxy.openai(key).chat.completions.create(chat);
      await proxy.anthropic(key).messages.create({ ...message, model: 'Claude-Haiku-4-5' });
      expect(fake.requests.slice(before).map((r) => r.body.model)).toEqual(['gpt-4o-mini', 'Claude-Haiku-4-5']);
    });

    it('security: a models entry that is not a list of names lets no model through', async () => {
      const { key } = await agent({ metadata: { models: 'gpt-4o-mini' } });
      await noUpstreamCall(async () => {
        expectOpenAIError(await caught(proxy.openai(key).chat.completions.create(chat)), OpenAI.PermissionDeniedError, 403, 'model_not_allowed', 'permission_error');
      });
    });
  });

  describe('bad requests', () => {
    it('error: a body that is not JSON is a 400 invalid_json in each API\'s shape', async () => {
      const { key } = await agent();
      await noUpstreamCall(async () => {
        const openai = await post('/proxy/openai/v1/chat/completions', '{"model": ', { authorization: `Bearer ${key}` });
        expect(openai.status).toBe(400);
        expect(await openai.json()).toEqual({ error: { message: 'The request body is not valid JSON.', type: 'invalid_request_error', param: null, code: 'invalid_json' } });
        const anthropic = await post('/proxy/anthropic/v1/messages', '[1, 2', { 'x-api-key': key });
        expect(anthropic.status).toBe(400);
        expect(await anthropic.json()).toEqual({ type: 'error', error: { type: 'invalid_request_error', message: 'The request body is not valid JSON.', details: { error_code: 'invalid_json' } } });
      });
    });

    it('error: no model, or a body the estimate cannot read, is a 400 BadRequestError', async () => {
      const { key } = await agent();
      await noUpstreamCall(async () => {
        const noModel = await caught(proxy.openai(key).chat.completions.create({ messages: chat.messages } as never));
        expectOpenAIError(noModel, OpenAI.BadRequestError, 400, 'invalid_request', 'invalid_request_error');
        const noMessages = await caught(proxy.anthropic(key).messages.create({ model: 'claude-haiku-4-5', max_tokens: 10, messages: [] }));
        expectAnthropicError(noMessages, Anthropic.BadRequestError, 400, 'invalid_llm_request', 'invalid_request_error');
      });
    });

    it('error: a model with no price is a 400 unknown_model (never charged 0); with a custom price it is metered at that price', async () => {
      const { key, id } = await agent();
      await noUpstreamCall(async () => {
        const err = await caught(proxy.openai(key).chat.completions.create({ ...chat, model: 'acme-private-7b' }));
        expectOpenAIError(err, OpenAI.BadRequestError, 400, 'unknown_model', 'invalid_request_error');
      });
      const priced = await startProxy(ak, fake, { prices: custom });
      try {
        await priced.openai(key).chat.completions.create({ ...chat, model: 'acme-private-7b' }, { headers: { 'x-fake': JSON.stringify({ usage: { input: 1000, output: 500 } }) } });
        const money = await settledMoney(ak, id);
        const expected = costFromUsage({ model: 'acme-private-7b', provider: 'openai', usage: { inputTokens: 1000, outputTokens: 500 } }, { prices: custom }).costCents;
        expect(expected).toBe(0.3); // 1000 at $1/M and 500 at $4/M: $0.003
        expect(money.spent).toBe(expected);
      } finally {
        await priced.close();
      }
    });

    it('error: a body past the limit is a 413 in the API\'s shape', async () => {
      const { key } = await agent();
      await noUpstreamCall(async () => {
        const big = await caught(proxy.openai(key).chat.completions.create({ ...chat, messages: [{ role: 'user', content: 'x'.repeat(5000) }] }));
        expect(big).toBeInstanceOf(OpenAI.APIError);
        expect(big.status).toBe(413);
        expect(big.error).toMatchObject({ code: 'body_too_large', type: 'invalid_request_error' });
        const anthropic = await caught(proxy.anthropic(key).messages.create({ ...message, messages: [{ role: 'user', content: 'x'.repeat(5000) }] }));
        expect(anthropic.error).toMatchObject({ type: 'error', error: { type: 'request_too_large' } });
      });
    });

    it('error: an upstream name the proxy does not have, or of the other API, is a 404', async () => {
      const { key } = await agent();
      await noUpstreamCall(async () => {
        expectOpenAIError(await caught(proxy.openai(key, 'nope').chat.completions.create(chat)), OpenAI.NotFoundError, 404, 'upstream_not_found', 'not_found_error');
        expectAnthropicError(await caught(proxy.anthropic(key, 'openai').messages.create(message)), Anthropic.NotFoundError, 404, 'upstream_not_found', 'not_found_error');
      });
    });
  });

  describe('budgets and rate limits', () => {
    it('error: a budget that cannot take the worst case is a 429 RateLimitError budget_exceeded that tells the SDK not to retry; nothing is held or spent', async () => {
      const { key, id } = await agent({ budgetCents: 0.0005 });
      await noUpstreamCall(async () => {
        const err = await caught(proxy.openai(key).chat.completions.create(chat));
        expectOpenAIError(err, OpenAI.RateLimitError, 429, 'budget_exceeded', 'rate_limit_error');
        expect(err.headers?.get('x-should-retry')).toBe('false');
        // A lifetime budget never frees by itself: no Retry-After.
        expect(err.headers?.get('retry-after')).toBeNull();
        expectAnthropicError(await caught(proxy.anthropic(key).messages.create(message)), Anthropic.RateLimitError, 429, 'budget_exceeded', 'rate_limit_error');
      });
      expect(await settledMoney(ak, id)).toEqual({ spent: 0, held: 0, overage: 0 });
    });

    it('error: a day window that cannot take it: Retry-After is the seconds until the window resets', async () => {
      const { key, id } = await agent({ budgetCents: undefined, budgets: [{ cents: 0.0005, period: 'day' }] });
      const err = await noUpstreamCall(() => caught(proxy.openai(key).chat.completions.create(chat)));
      expectOpenAIError(err, OpenAI.RateLimitError, 429, 'budget_exceeded', 'rate_limit_error');
      const resetAt = (await ak.getKey(id))?.budgets[0]?.resetAt as string;
      const seconds = Number(err.headers?.get('retry-after'));
      expect(seconds).toBeGreaterThanOrEqual(1);
      expect(seconds).toBeLessThanOrEqual(86_400);
      // The header points at the window's reset (within the few seconds the test itself takes).
      expect(Math.abs(Date.now() + seconds * 1000 - new Date(resetAt).getTime())).toBeLessThan(60_000);
    });

    it('error: a spent day window refused by the key check itself also says when it resets', async () => {
      const { key, id } = await agent({ budgetCents: undefined, budgets: [{ cents: 1, period: 'day' }] });
      expect(await ak.trackUsage(key, { costCents: 1 })).toMatchObject({ success: true });
      const err = await noUpstreamCall(() => caught(proxy.anthropic(key).messages.create(message)));
      expectAnthropicError(err, Anthropic.RateLimitError, 429, 'budget_exceeded', 'rate_limit_error');
      const resetAt = (await ak.getKey(id))?.budgets[0]?.resetAt as string;
      const seconds = Number(err.headers?.get('retry-after'));
      expect(Math.abs(Date.now() + seconds * 1000 - new Date(resetAt).getTime())).toBeLessThan(60_000);
    });

    it('error: past the key\'s rate limit, a 429 rate_limited with Retry-After; the upstream got only the calls that passed', async () => {
      const { key } = await agent({ rateLimit: { requests: 1, per: '1h' } });
      const before = fake.requests.length;
      await proxy.openai(key).chat.completions.create(chat);
      const err = await caught(proxy.openai(key).chat.completions.create(chat));
      expectOpenAIError(err, OpenAI.RateLimitError, 429, 'rate_limited', 'rate_limit_error');
      const seconds = Number(err.headers?.get('retry-after'));
      expect(seconds).toBeGreaterThan(0);
      expect(seconds).toBeLessThanOrEqual(3600);
      expect(fake.requests.length).toBe(before + 1);
    });
  });
});
