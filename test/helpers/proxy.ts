import type { AddressInfo } from 'node:net';
import Anthropic from '@anthropic-ai/sdk';
import { serve } from '@hono/node-server';
import OpenAI from 'openai';
import type { AgentKey } from '../../src/index.js';
import { type Proxy, type ProxyOptions, createProxy } from '../../src/proxy/index.js';
import type { FakeLlm } from './fake-llm.js';
import { until } from './wait.js';

/** One line the proxy logged. */
export interface LogLine {
  level: 'info' | 'warn' | 'error';
  obj: object;
  msg: string | undefined;
}

export interface RunningProxy {
  url: string;
  proxy: Proxy;
  logs: LogLine[];
  /** An OpenAI SDK client of the agent with `key`, pointed at the proxy (no automatic retries). */
  openai(key: string, upstream?: string): OpenAI;
  /** An Anthropic SDK client of the agent with `key`, pointed at the proxy (no automatic retries). */
  anthropic(key: string, upstream?: string): Anthropic;
  close(): Promise<void>;
}

/**
 * createProxy() on a real port (@hono/node-server), with upstreams 'openai' and 'anthropic'
 * both at `fake`, and a logger that keeps every line.
 */
export async function startProxy(ak: AgentKey, fake: FakeLlm, options: Partial<ProxyOptions> = {}): Promise<RunningProxy> {
  const logs: LogLine[] = [];
  const line = (level: LogLine['level']) => (obj: object, msg?: string) => void logs.push({ level, obj, msg });
  const proxy = createProxy(ak, {
    upstreams: { openai: { apiKey: fake.apiKey, baseUrl: fake.url }, anthropic: { apiKey: fake.apiKey, baseUrl: fake.url } },
    logger: { info: line('info'), warn: line('warn'), error: line('error') },
    ...options,
  });
  const server = serve({ fetch: proxy.fetch, port: 0, hostname: '127.0.0.1' });
  await new Promise((resolve) => server.once('listening', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    proxy,
    logs,
    openai: (key, upstream = 'openai') => new OpenAI({ apiKey: key, baseURL: `${url}/proxy/${upstream}/v1`, maxRetries: 0 }),
    anthropic: (key, upstream = 'anthropic') => new Anthropic({ apiKey: key, baseURL: `${url}/proxy/${upstream}`, maxRetries: 0 }),
    async close() {
      (server as unknown as { closeAllConnections?(): void }).closeAllConnections?.();
      await new Promise((resolve) => server.close(resolve));
      await proxy.settled();
    },
  };
}

/** The key's money once nothing is held any more (holds settle after the answer ends). */
export async function settledMoney(ak: AgentKey, keyId: number): Promise<{ spent: number; held: number; overage: number }> {
  let info = await ak.getKey(keyId);
  await until(async () => {
    info = await ak.getKey(keyId);
    return Number(info?.heldCents) === 0;
  }, `key ${keyId}'s holds to settle`);
  return { spent: Number(info?.spentCents), held: Number(info?.heldCents), overage: Number(info?.overageCents) };
}

/** The key's ledger, oldest first, as kind, cents, metadata, and an LLM call's model and usage. */
export async function ledgerOf(ak: AgentKey, keyId: number) {
  const rows = await ak.ledger({ keyId, limit: 1000 });
  return rows
    .map((r) => ({ id: r.id, kind: r.kind, cents: Number(r.amountCents), reservationId: r.reservationId, metadata: r.metadata, model: r.model, usage: r.usage }))
    .sort((a, b) => a.id - b.id);
}

/** A usage as the ledger reports it: every count, zeros included. */
export function fullUsage(u: { inputTokens: number; outputTokens?: number; cachedInputTokens?: number; cacheWriteTokens?: number; reasoningTokens?: number }) {
  return { outputTokens: 0, cachedInputTokens: 0, cacheWriteTokens: 0, reasoningTokens: 0, ...u };
}
