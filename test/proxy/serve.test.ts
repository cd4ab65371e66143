import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { AgentKey } from '../../src/index.js';
import { createApp } from '../../src/server/index.js';
import { cliEnv, startCli, stopCliProcesses, tempDir } from '../helpers/cli.js';
import { hangingPool } from '../helpers/faults.js';
import { FAKE_TEXT, type FakeLlm, startFakeLlm } from '../helpers/fake-llm.js';
import { useCliBundle } from '../helpers/processes.js';
import { until } from '../helpers/wait.js';

/**
 * The proxy as part of the service: `agentkey serve` (the real process, bundled from src/)
 * mounts it for each upstream whose key the environment sets, says which at start (never a
 * key), meters the official SDKs' calls through it, and shows them in /metrics; the OpenAPI
 * document lists its routes. Without an upstream (or with --no-proxy) nothing is mounted.
 */

const cli = useCliBundle('proxy-serve');
afterEach(stopCliProcesses);
const ADMIN = 'akadmin_proxy_test_0123456789abcdef';

describe('agentkey serve with upstreams in the environment', () => {
  let fake: FakeLlm;
  beforeAll(async () => {
    fake = await startFakeLlm();
  });
  afterAll(async () => {
    await fake.close();
  });

  async function serve(env: Record<string, string | undefined>, args: string[] = []) {
    const proc = startCli(cli(), ['serve', '--port', '0', '--host', '127.0.0.1', '--data-dir', tempDir('agentkey-proxy-serve'), '--no-webhooks', ...args], {
      env: cliEnv({ AGENTKEY_ADMIN_KEY: ADMIN, OPENAI_API_KEY: undefined, ANTHROPIC_API_KEY: undefined, AGENTKEY_UPSTREAMS: undefined, ...env }),
    });
    const listening = await proc.waitForLog(/^agentkey listening on /, 90_000);
    return { proc, url: listening.url as string };
  }

  it('happy: mounts openai and a named anthropic upstream, logs them without keys, meters both SDKs, and /metrics shows tokens, cost, requests and overhead', async () => {
    const { proc, url } = await serve({
      AGENTKEY_OPENAI_API_KEY: fake.apiKey,
      AGENTKEY_OPENAI_BASE_URL: fake.url,
      LOCAL_LLM_KEY: fake.apiKey,
      AGENTKEY_UPSTREAMS: JSON.stringify({ local: { flavor: 'anthropic', baseUrl: fake.url, apiKeyEnv: 'LOCAL_LLM_KEY' } }),
    });
    const mounted = await proc.waitForLog(/^LLM proxy at /);
    expect(mounted.proxy).toEqual([
      { name: 'openai', flavor: 'openai', baseUrl: fake.url },
      { name: 'local', flavor: 'anthropic', baseUrl: fake.url },
    ]);
    expect(mounted.msg).toBe(`LLM proxy at ${url}/proxy/<upstream>: openai (openai, ${fake.url}), local (anthropic, ${fake.url})`);

    const created = await fetch(`${url}/v1/keys`, {
      method: 'POST',
      headers: { authorization: `Bearer ${ADMIN}`, 'content-type': 'application/json' },
      body: JSON.stringify({ accountId: 'acct_serve', scopes: ['proxy.chat'], budgetCents: 50 }),
    });
    const { key, id } = (await created.json()) as { key: string; id: number };
    const openai = new OpenAI({ apiKey: key, baseURL: `${url}/proxy/openai/v1`, maxRetries: 0 });
    const reply = await openai.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Hi.' }], max_tokens: 20 }, { headers: { 'x-fake': JSON.stringify({ usage: { input: 12, output: 5 } }) } });
    expect(reply.choices[0]?.message.content).toBe(FAKE_TEXT);
    const anthropic = new Anthropic({ apiKey: key, baseURL: `${url}/proxy/local`, maxRetries: 0 });
    const message = await anthropic.messages.stream({ model: 'claude-haiku-4-5', max_tokens: 20, messages: [{ role: 'user', content: 'Hi.' }] }).finalMessage();
    expect(message.content).toEqual([{ type: 'text', text: FAKE_TEXT }]);
    await expect(new OpenAI({ apiKey: 'ak_nope', baseURL: `${url}/proxy/openai/v1`, maxRetries: 0 }).embeddings.create({ model: 'text-embedding-3-small', input: 'x' })).rejects.toBeInstanceOf(
      OpenAI.AuthenticationError,
    );

    // Both calls are in the key's spend once settled.
    await until(async () => {
      const res = await fetch(`${url}/v1/keys/${id}`, { headers: { authorization: `Bearer ${ADMIN}` } });
      const info = (await res.json()) as { spentCents: number; heldCents: number };
      return info.heldCents === 0 && info.spentCents > 0;
    }, 'the two calls to be committed');

    const metrics = await (await fetch(`${url}/metrics`)).text();
    expect(metrics).toMatch(/agentkey_proxy_requests_total\{upstream="openai",api="openai.chat",outcome="ok"\} 1/);
    expect(metrics).toMatch(/agentkey_proxy_requests_total\{upstream="local",api="anthropic.messages",outcome="ok"\} 1/);
    expect(metrics).toMatch(/agentkey_proxy_requests_total\{upstream="openai",api="openai.embeddings",outcome="refused"\} 1/);
    expect(metrics).toMatch(/agentkey_llm_tokens_total\{model="gpt-4o-mini",kind="input"\} 12/);
    expect(metrics).toMatch(/agentkey_llm_tokens_total\{model="gpt-4o-mini",kind="output"\} 5/);
    expect(metrics).toMatch(/agentkey_llm_cost_cents_total\{model="claude-haiku-4-5"\} [0-9.e-]+/);
    expect(metrics).toMatch(/agentkey_proxy_overhead_seconds_count\{upstream="openai",part="total"\} 1/);
    expect(metrics).toMatch(/agentkey_proxy_overhead_seconds_count\{upstream="openai",part="hold"\} 1/);

    const doc = (await (await fetch(`${url}/openapi.json`)).json()) as { paths: Record<string, Record<string, { security?: unknown }>> };
    for (const path of ['/proxy/{upstream}/v1/chat/completions', '/proxy/{upstream}/v1/responses', '/proxy/{upstream}/v1/embeddings', '/proxy/{upstream}/v1/messages']) {
      expect(Object.keys(doc.paths[path] ?? {}), path).toEqual(['post']);
    }

    // The operator's key: in no line the service wrote, nor in /metrics or the document.
    for (const text of [proc.stdout(), proc.stderr(), metrics, JSON.stringify(doc)]) expect(text).not.toContain(fake.apiKey);
    // Each proxied call is logged, by key id and outcome.
    expect(proc.lines.filter((l) => l.msg === 'proxy').map((l) => [l.upstream, l.outcome, l.keyId])).toEqual(
      expect.arrayContaining([
        ['openai', 'ok', id],
        ['local', 'ok', id],
      ]),
    );
  }, 180_000);

  it('happy: without an upstream key, or with --no-proxy, no proxy is mounted', async () => {
    const [none, off] = await Promise.all([serve({}), serve({ OPENAI_API_KEY: fake.apiKey }, ['--no-proxy'])]);
    const res = await fetch(`${none.url}/proxy/openai/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(res.status).toBe(404);
    expect((await fetch(`${off.url}/proxy/openai/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' })).status).toBe(404);
    for (const p of [none.proc, off.proc]) expect(p.lines.some((l) => typeof l.msg === 'string' && l.msg.startsWith('LLM proxy'))).toBe(false);
  }, 180_000);

  it('error: an AGENTKEY_UPSTREAMS that is not JSON stops the start with one line naming the variable', async () => {
    const proc = startCli(cli(), ['serve', '--port', '0', '--host', '127.0.0.1', '--data-dir', tempDir('agentkey-proxy-serve')], {
      env: cliEnv({ AGENTKEY_ADMIN_KEY: ADMIN, AGENTKEY_UPSTREAMS: '{"local": ' }),
    });
    const result = await proc.exited;
    expect(result.code).not.toBe(0);
    expect(result.stderr).toContain('AGENTKEY_UPSTREAMS is not valid JSON');
  }, 120_000);
});

describe('createApp with a proxy', () => {
  it('happy: the OpenAPI document lists the four proxy routes with their error answers; a GET on one is a 405 naming POST', async () => {
    const ak = new AgentKey({ pool: hangingPool() as never });
    const { app } = createApp(ak, { adminKey: ADMIN, proxy: { upstreams: { openai: { apiKey: 'sk-doc-test-key' }, anthropic: { apiKey: 'sk-doc-test-key' } } } });
    const doc = (await (await app.request('/openapi.json')).json()) as { paths: Record<string, Record<string, { operationId: string; responses: Record<string, unknown> }>> };
    const chat = doc.paths['/proxy/{upstream}/v1/chat/completions']?.post;
    expect(chat?.operationId).toBe('proxy.openai.chat');
    expect(Object.keys(chat?.responses ?? {}).sort()).toEqual(['200', '400', '401', '403', '404', '413', '429', '502', '503', '504']);
    expect(doc.paths['/proxy/{upstream}/v1/messages']?.post?.operationId).toBe('proxy.anthropic.messages');
    expect(JSON.stringify(doc)).not.toContain('sk-doc-test-key');
    const get = await app.request('/proxy/openai/v1/chat/completions');
    expect(get.status).toBe(405);
    expect(get.headers.get('allow')).toBe('POST');
  });
});
