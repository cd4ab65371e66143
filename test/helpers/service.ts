import type request from 'supertest';
import { expect } from 'vitest';
import type { AgentKey } from '../../src/index.js';
import { type AppOptions, type Logger, createApp } from '../../src/server/index.js';
import type { TestDb } from './databases.js';
import { expectErrorShape, expectJsonError, expectPackageError } from './http.js';

/**
 * The HTTP service (createApp) called in-process with app.request(): a client for it, the
 * checks its answers get, and readers for what it exposes (the database, /metrics, logs).
 */

export const ADMIN = 'akadmin_test_0123456789abcdefghij';

export type App = ReturnType<typeof createApp>['app'];

/** A fetch Response read once, in the shape the helpers in ./helpers/http.ts read. */
export interface Reply {
  status: number;
  headers: Record<string, string>;
  text: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
}

export interface CallOptions {
  /** Sent as JSON. */
  json?: unknown;
  /** Sent as is. */
  raw?: string;
  /** The Content-Type of a body; null for none. Default application/json. */
  type?: string | null;
  bearer?: string;
  headers?: Record<string, string>;
}

export async function call(app: App, method: string, path: string, o: CallOptions = {}): Promise<Reply> {
  const headers: Record<string, string> = {};
  let body: Uint8Array | undefined;
  if (o.raw !== undefined || o.json !== undefined) {
    // Bytes, so that fetch adds no Content-Type of its own; and the Content-Length a real
    // HTTP client sends with a body (a fetch Request leaves it out).
    body = new TextEncoder().encode(o.raw ?? JSON.stringify(o.json));
    if (o.type !== null) headers['content-type'] = o.type ?? 'application/json';
    headers['content-length'] = String(body.byteLength);
  }
  if (o.bearer !== undefined) headers.authorization = `Bearer ${o.bearer}`;
  Object.assign(headers, o.headers);
  const res = await app.request(path, { method, headers, ...(body ? { body } : {}) });
  const text = await res.text();
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return { status: res.status, headers: Object.fromEntries(res.headers), text, body: parsed };
}

/** The one error shape, a snake_case code, one sentence, no stack trace. */
export function expectError(res: Reply, status: number, code?: string): void {
  expect(res.status, res.text).toBe(status);
  expectJsonError(res as unknown as request.Response, status, code);
}

/**
 * An error of a self-serve route (/signup, /sdk-keys...): the package's shape, `{ error:
 * '<string>', code, message, ...extra }`, as the package's clients parse it.
 */
export function expectSelfServeError(res: Reply, status: number, error: string | RegExp, code?: string): void {
  expectPackageError(res as unknown as request.Response, status, error, code);
}

/** The error shape only: for fuzzed input, which the message may quote. */
export function expectShape(res: Reply): void {
  expectErrorShape(res as unknown as request.Response, { quotesInput: true });
}

export function service(ak: AgentKey, options: Partial<AppOptions> = {}) {
  const { app } = createApp(ak, { adminKey: ADMIN, ...options });
  const send = (method: string, path: string, o: CallOptions = {}) => call(app, method, path, o);
  return {
    app,
    send,
    /** An admin call with the admin key. */
    admin: (method: string, path: string, json?: unknown) => send(method, path, json === undefined ? { bearer: ADMIN } : { bearer: ADMIN, json }),
    /** An agent POST with a JSON body (and optionally a bearer). */
    post: (path: string, json: unknown, bearer?: string) => send('POST', path, bearer === undefined ? { json } : { json, bearer }),
    metrics: async () => parseMetrics((await send('GET', '/metrics')).text),
  };
}
export type Service = ReturnType<typeof service>;

/** Everything a request could change that the routes expose: every key (without its last-use stamp) and the ledger's totals. */
export async function snapshot(ak: AgentKey) {
  const keys = await ak.listKeys({ includeRevoked: true, limit: 10_000 });
  return { keys: keys.map(({ lastUsedAt: _lastUsedAt, ...k }) => k), usage: await ak.usage() };
}

export async function countKeys(db: TestDb, ak: AgentKey): Promise<number> {
  const [row] = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${ak.tableName}`);
  return Number(row?.n);
}

export async function expireKey(db: TestDb, ak: AgentKey, id: number): Promise<void> {
  await db.query(`UPDATE ${ak.tableName} SET expires_at = now() - interval '1 second' WHERE id = $1`, [id]);
}

export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m || line.startsWith('#')) continue;
    const labels = Object.fromEntries([...(m[2] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)].map((x) => [x[1] as string, x[2] as string]));
    samples.push({ name: m[1] as string, labels, value: Number(m[3]) });
  }
  return samples;
}

/** The sum of the samples of `name` whose labels include `labels`; undefined when there is none. */
export function metric(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return found.length === 0 ? undefined : found.reduce((sum, s) => sum + s.value, 0);
}

export function memoryLogger() {
  const lines: { level: string; obj: Record<string, unknown>; msg: string | undefined }[] = [];
  const at = (level: string) => (obj: object, msg?: string) => void lines.push({ level, obj: obj as Record<string, unknown>, msg });
  const logger: Logger = { info: at('info'), warn: at('warn'), error: at('error') };
  return { logger, lines };
}

/** A syntactically fine key (so it reaches the store) that no table holds. */
export const UNKNOWN_KEY = `ak_${'a'.repeat(32)}`;
export const UNKNOWN_HOLD = `rsv_${'A'.repeat(24)}`;

/** Every route of the service, with a body each would accept. */
export function everyRoute(key: string, holdId = UNKNOWN_HOLD) {
  return {
    admin: [
      ['POST', '/v1/keys', { accountId: 'acct_new' }],
      ['GET', '/v1/keys'],
      ['GET', '/v1/keys/1'],
      ['PATCH', '/v1/keys/1', { name: 'renamed' }],
      ['POST', '/v1/keys/1/revoke'],
      ['POST', '/v1/keys/1/rotate', { gracePeriod: '1h' }],
      ['GET', '/v1/keys/1/events'],
      ['GET', '/v1/events'],
      ['PUT', '/v1/accounts/acct_a/budget', { budgetCents: 1 }],
      ['GET', '/v1/accounts/acct_a/budget'],
      ['DELETE', '/v1/accounts/acct_a/budget'],
      ['PUT', '/v1/accounts/acct_a/rate-limit', { concurrency: 1 }],
      ['GET', '/v1/accounts/acct_a/rate-limit'],
      ['DELETE', '/v1/accounts/acct_a/rate-limit'],
      ['GET', '/v1/usage'],
      ['GET', '/v1/accounts'],
      ['GET', '/v1/ledger'],
      ['POST', '/v1/webhooks', { url: 'https://example.com/hook' }],
      ['GET', '/v1/webhooks'],
      ['GET', '/v1/webhooks/1'],
      ['PATCH', '/v1/webhooks/1', { enabled: false }],
      ['DELETE', '/v1/webhooks/1'],
      ['GET', '/v1/webhooks/1/deliveries'],
      ['GET', '/v1/outbox'],
      ['GET', '/v1/alerts'],
      ['PUT', '/v1/alerts', { percents: [80] }],
    ] as [string, string, unknown?][],
    agent: [
      ['POST', '/v1/verify', { key }],
      ['POST', '/v1/charge', { key, costCents: 1 }],
      ['POST', '/v1/reservations', { key, costCents: 1 }],
      ['POST', `/v1/reservations/${holdId}/commit`, { key, costCents: 1 }],
      ['POST', `/v1/reservations/${holdId}/release`, { key }],
    ] as [string, string, unknown?][],
  };
}

/** Per database: a fresh AgentKey with a service over it, and key creation through the admin API. */
export function onDatabase(getDb: () => TestDb) {
  async function setup(options: Partial<AppOptions> = {}) {
    const db = getDb();
    const ak = await db.agentKey();
    return { db, ak, svc: service(ak, options) };
  }

  async function createKey(svc: Service, body: Record<string, unknown>): Promise<{ key: string; id: number } & Record<string, unknown>> {
    const res = await svc.admin('POST', '/v1/keys', body);
    expect(res.status, res.text).toBe(201);
    return res.body;
  }

  return { setup, createKey };
}
