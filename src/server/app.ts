// One file for now (about 570 lines): every route of the service is a closure over one
// createApp() scope (the AgentKey, options, metrics, logger). Issue 15 splits it into one
// module per route group with a shared context; until then, keep new routes here.
import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { OpenAPIHono, createRoute, type z } from '@hono/zod-openapi';
import type { Context, MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { HTTPException } from 'hono/http-exception';
import { matchedRoutes } from 'hono/route';
import { timeout } from 'hono/timeout';
import type { AgentKey, TrackUsageResult, ValidKey } from '../agentkey.js';
import { AgentKeyError } from '../errors.js';
import { type HttpError, errorToHttp, httpError, packageBody } from '../http/errors.js';
import { type CentsInput, MICROS_PER_CENT, centsToMicros } from '../money.js';
import { type AgentKeyRoutesOptions, checkRoutesOptions, selfServeHandlers } from '../http/self-serve.js';
import { TIMEOUT, checkAgentKey, checkVerifyOptions, keyFromHeaders, verifyKey, withTimeout } from '../http/verify.js';
import { mountDashboard } from './dashboard.js';
import { type Metrics, createMetrics } from './metrics.js';
import * as S from './schemas.js';

/** What the service logs through: pino, or anything with the same three methods. */
export interface Logger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface AppOptions {
  /** The admin bearer key, or its SHA-256 hash in hex (`{ sha256 }`) as the service stores it. */
  adminKey: string | { sha256: string };
  /** Mount the seed page's self-serve routes (/signup, /sdk-keys...). Off by default. */
  selfServe?: AgentKeyRoutesOptions | false;
  /** Largest request body accepted, in bytes (413 past it). Default 64 KiB. */
  bodyLimitBytes?: number;
  /** How long a request may wait for the database before a 503. Default 10 s. */
  timeoutMs?: number;
  /** Where request logs go. Default: nowhere. */
  logger?: Logger;
  /** Checks the database for /healthz; throws when it is down. */
  health?: () => Promise<void>;
  /** Which database the service runs on, as /healthz reports it. */
  database?: 'pglite' | 'postgres';
  /** Serve the web dashboard at /dashboard. Default true. */
  dashboard?: boolean;
  /** The client's address, for the signup rate limit. Default: the X-Forwarded-For header is NOT trusted; 'unknown'. */
  clientAddress?: (c: Context) => string;
}

type Env = { Variables: { requestId: string } };

/** An expected refusal: becomes the one JSON error shape with this status. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly extra: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

const NO_KEY = new ApiError(401, 'missing_admin_key', 'This route needs the admin key as "Authorization: Bearer <admin key>".');
const BAD_KEY = new ApiError(401, 'invalid_admin_key', 'The bearer is not the admin key; agent keys cannot use admin routes.');
const KEY_REFUSED: Record<string, [string, string]> = {
  invalid: ['invalid_key', 'The API key is not valid.'],
  invalid_key: ['invalid_key', 'The API key is not valid.'],
  expired: ['key_expired', 'The API key has expired.'],
  revoked: ['key_revoked', 'The API key has been revoked.'],
};

/**
 * The agentkey HTTP service as a Hono app: the admin API, the agent API, /openapi.json,
 * /healthz and /metrics, with one JSON error shape. It runs on any fetch runtime;
 * `startServer()` runs it on Node with storage and graceful shutdown.
 *
 * @example
 * const { app } = createApp(ak, { adminKey: process.env.AGENTKEY_ADMIN_KEY });
 * const res = await app.request('/v1/verify', { method: 'POST', body: JSON.stringify({ key }), headers: { 'content-type': 'application/json' } });
 */
export function createApp(ak: AgentKey, options: AppOptions) {
  checkAgentKey(ak, 'createApp');
  const isAdmin = adminCheck(options.adminKey);
  const { limit, timeoutMs, selfServe } = checkAppOptions(options);
  const log = options.logger;
  const metrics = createMetrics(ak);

  const app = new OpenAPIHono<Env>({
    defaultHook: (result) => {
      if (!result.success) throw new ApiError(400, 'invalid_request', describeIssue(result.error.issues[0], result.target));
    },
  });

  app.use('*', observe(metrics, log));
  app.use('*', requireJson);
  app.use('*', bodyLimit({ maxSize: limit, onError: () => { throw new ApiError(413, 'body_too_large', `The request body must be at most ${limit} bytes.`); } }));
  app.use('/v1/*', timeout(timeoutMs, () => new HTTPException(503, { message: 'timeout' })));

  const admin: MiddlewareHandler = async (c, next) => {
    const bearer = c.req.header('authorization');
    if (!bearer) throw NO_KEY;
    const match = /^Bearer\s+(\S+)\s*$/i.exec(bearer);
    if (!match || !isAdmin(match[1] as string)) throw BAD_KEY;
    await next();
  };
  app.use('/v1/keys', admin);
  app.use('/v1/keys/*', admin);
  app.use('/v1/accounts/*', admin);
  app.use('/v1/usage', admin);
  app.use('/v1/accounts', admin);
  app.use('/v1/ledger', admin);
  app.openAPIRegistry.registerComponent('securitySchemes', 'adminKey', { type: 'http', scheme: 'bearer', description: 'The admin key.' });
  const adminOnly = [{ adminKey: [] }];

  // ---- Admin API ----

  app.openapi(
    createRoute({
      method: 'post', path: '/v1/keys', tags: ['admin'], security: adminOnly, summary: 'Create a key (the raw key is returned once).',
      request: { body: { required: true, content: { 'application/json': { schema: S.CreateKeyBody } } } },
      responses: { 201: { description: 'Created', content: { 'application/json': { schema: S.CreatedKey } } }, ...errors(400, 401, 403, 404) },
    }),
    async (c) => {
      const created = await ak.create(c.req.valid('json'));
      const info = await ak.getKey(created.id);
      if (!info) throw new ApiError(500, 'internal_error', 'The new key could not be read back.');
      return c.json({ key: created.key, ...info }, 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'get', path: '/v1/keys', tags: ['admin'], security: adminOnly, summary: "List keys (an account's, or all), without secrets.",
      request: { query: S.KeyListQuery },
      responses: { 200: { description: 'The keys', content: { 'application/json': { schema: S.KeyList } } }, ...errors(400, 401) },
    }),
    async (c) => {
      const q = c.req.valid('query');
      const keys = await ak.listKeys({
        ...(q.accountId !== undefined ? { accountId: q.accountId } : {}),
        ...(q.parentId !== undefined ? { parentId: q.parentId } : {}),
        includeRevoked: q.includeRevoked === 'true',
        ...(q.limit !== undefined ? { limit: Number(q.limit) } : {}),
      });
      return c.json({ keys }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get', path: '/v1/keys/{id}', tags: ['admin'], security: adminOnly, summary: 'One key, without its secret.',
      request: { params: S.KeyIdParam },
      responses: { 200: { description: 'The key', content: { 'application/json': { schema: S.KeyInfo } } }, ...errors(400, 401, 404) },
    }),
    async (c) => c.json(await findKey(ak, c.req.valid('param').id), 200),
  );

  app.openapi(
    createRoute({
      method: 'post', path: '/v1/keys/{id}/revoke', tags: ['admin'], security: adminOnly, summary: 'Revoke a key and its whole subtree.',
      request: { params: S.KeyIdParam },
      responses: { 200: { description: 'Revoked', content: { 'application/json': { schema: S.Revoked } } }, ...errors(400, 401, 404) },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      await findKey(ak, id);
      const revoked = await ak.revoke(id);
      return c.json({ id: Number(id), revoked, key: await findKey(ak, id) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'put', path: '/v1/accounts/{id}/budget', tags: ['admin'], security: adminOnly, summary: "Set an account's ceiling.",
      request: { params: S.AccountIdParam, body: { required: true, content: { 'application/json': { schema: S.AccountBudgetBody } } } },
      responses: { 200: { description: 'The ceiling', content: { 'application/json': { schema: S.AccountBudget } } }, ...errors(400, 401) },
    }),
    async (c) => c.json(await ak.setAccountBudget(c.req.valid('param').id, c.req.valid('json')), 200),
  );

  app.openapi(
    createRoute({
      method: 'get', path: '/v1/accounts/{id}/budget', tags: ['admin'], security: adminOnly, summary: "An account's ceiling and spend this period.",
      request: { params: S.AccountIdParam },
      responses: { 200: { description: 'The ceiling', content: { 'application/json': { schema: S.AccountBudget } } }, ...errors(400, 401, 404) },
    }),
    async (c) => {
      const budget = await ak.getAccountBudget(c.req.valid('param').id);
      if (!budget) throw new ApiError(404, 'not_found', 'This account has no budget.');
      return c.json(budget, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'delete', path: '/v1/accounts/{id}/budget', tags: ['admin'], security: adminOnly, summary: "Remove an account's ceiling.",
      request: { params: S.AccountIdParam },
      responses: { 200: { description: 'Removed', content: { 'application/json': { schema: S.Removed } } }, ...errors(400, 401, 404) },
    }),
    async (c) => {
      const accountId = c.req.valid('param').id;
      if (!(await ak.clearAccountBudget(accountId))) throw new ApiError(404, 'not_found', 'This account has no budget.');
      return c.json({ accountId, removed: true as const }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get', path: '/v1/usage', tags: ['admin'], security: adminOnly, summary: 'Spend from the ledger, with hourly or daily buckets.',
      request: { query: S.UsageQuery },
      responses: { 200: { description: 'Usage', content: { 'application/json': { schema: S.UsageReport } } }, ...errors(400, 401) },
    }),
    async (c) => c.json(await ak.usage(c.req.valid('query')), 200),
  );

  app.openapi(
    createRoute({
      method: 'get', path: '/v1/accounts', tags: ['admin'], security: adminOnly, summary: 'Every account with keys or a ceiling: key counts, lifetime spend, ceiling.',
      request: { query: S.AccountListQuery },
      responses: { 200: { description: 'The accounts', content: { 'application/json': { schema: S.AccountList } } }, ...errors(400, 401) },
    }),
    async (c) => {
      const { limit } = c.req.valid('query');
      return c.json({ accounts: await ak.listAccounts(limit === undefined ? {} : { limit: Number(limit) }) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get', path: '/v1/ledger', tags: ['admin'], security: adminOnly, summary: 'Ledger rows, newest first (page with before=<last id>).',
      request: { query: S.LedgerQuery },
      responses: { 200: { description: 'Ledger rows', content: { 'application/json': { schema: S.LedgerList } } }, ...errors(400, 401) },
    }),
    async (c) => {
      const q = c.req.valid('query');
      const entries = await ak.ledger({
        ...(q.keyId !== undefined ? { keyId: q.keyId } : {}),
        ...(q.accountId !== undefined ? { accountId: q.accountId } : {}),
        ...(q.before !== undefined ? { before: Number(q.before) } : {}),
        ...(q.limit !== undefined ? { limit: Number(q.limit) } : {}),
      });
      return c.json({ entries }, 200);
    },
  );

  // ---- Agent API: the agent's own key, never the admin key ----

  app.openapi(
    createRoute({
      method: 'post', path: '/v1/verify', tags: ['agent'], summary: 'Validate a key (and a scope): 200 with valid true, or false and a reason.',
      request: { body: { required: true, content: { 'application/json': { schema: S.VerifyBody } } } },
      responses: { 200: { description: 'The validation result', content: { 'application/json': { schema: S.Verification } } }, ...errors(400) },
    }),
    async (c) => {
      const { key, scope } = c.req.valid('json');
      const result = await ak.validate(key);
      if (result.valid && scope !== undefined && !ak.hasScope(result, scope)) {
        metrics.verified('insufficient_scope');
        return c.json({ valid: false, reason: 'insufficient_scope' as const, requiredScope: scope }, 200);
      }
      metrics.verified(result.valid ? 'valid' : result.reason);
      return c.json(result, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post', path: '/v1/charge', tags: ['agent'], summary: "Charge a cost to the key's budget (and its ancestors' and account's).",
      request: { body: { required: true, content: { 'application/json': { schema: S.ChargeBody } } } },
      responses: { 200: { description: 'Charged', content: { 'application/json': { schema: S.Charged } } }, ...errors(400, 401, 409, 429) },
    }),
    async (c) => {
      const { key, ...usage } = c.req.valid('json');
      const result = await ak.trackUsage(key, usage);
      // 'invalid' as before: the library's 'invalid_key' keeps the label that verifications use too.
      const outcome = result.success ? 'charged' : result.reason === 'invalid_key' ? 'invalid' : result.reason;
      metrics.charged('charge', outcome, result.success && !result.replayed ? recorded(usage.costCents) : 0);
      if (!result.success) throw spendRefused(result);
      return c.json(result, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post', path: '/v1/reservations', tags: ['agent'], summary: 'Hold an amount before a costly call; settle it with commit or release.',
      request: { body: { required: true, content: { 'application/json': { schema: S.ReserveBody } } } },
      responses: { 201: { description: 'Held', content: { 'application/json': { schema: S.Reserved } } }, ...errors(400, 401, 409, 429) },
    }),
    async (c) => {
      const { key, ...hold } = c.req.valid('json');
      const result = await ak.reserve(key, hold);
      if (!result.success) throw spendRefused(result);
      return c.json(result, 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'post', path: '/v1/reservations/{id}/commit', tags: ['agent'], summary: 'Settle a hold with the real cost; the rest is given back.',
      request: { params: S.ReservationIdParam, body: { required: true, content: { 'application/json': { schema: S.CommitBody } } } },
      responses: { 200: { description: 'Committed', content: { 'application/json': { schema: S.Committed } } }, ...errors(400, 401, 404, 409) },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      const { key, ...cost } = c.req.valid('json');
      await ownHold(ak, id, key ?? bearer(c));
      const result = await ak.commit(id, cost);
      if (!result.success) throw settleRefused(result.reason);
      if (result.replayed) metrics.charged('commit', 'charged');
      else metrics.charged('commit', 'charged', result.chargedCents, result.overageCents);
      return c.json(result, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post', path: '/v1/reservations/{id}/release', tags: ['agent'], summary: 'Give a whole hold back.',
      request: { params: S.ReservationIdParam, body: { required: false, content: { 'application/json': { schema: S.ReleaseBody } } } },
      responses: { 200: { description: 'Released', content: { 'application/json': { schema: S.Released } } }, ...errors(400, 401, 404, 409) },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      const body = (c.req.valid('json') as z.infer<typeof S.ReleaseBody> | undefined) ?? {};
      await ownHold(ak, id, body.key ?? bearer(c));
      const result = await ak.release(id);
      if (!result.success) throw settleRefused(result.reason);
      return c.json(result, 200);
    },
  );

  // ---- Operations ----

  app.openapi(
    createRoute({
      method: 'get', path: '/healthz', tags: ['operations'], summary: 'Liveness and database reachability.',
      responses: { 200: { description: 'Healthy', content: { 'application/json': { schema: S.Health } } }, ...errors(503) },
    }),
    async (c) => {
      try {
        await withTimeout(Promise.resolve(options.health?.()), timeoutMs);
      } catch (err) {
        log?.error({ err: err === TIMEOUT ? 'timed out' : String(err) }, 'health check failed');
        throw new ApiError(503, 'unhealthy', 'The database is not reachable.');
      }
      return c.json({ status: 'ok' as const, database: options.database ?? 'postgres' }, 200);
    },
  );

  app.get('/metrics', async (c) => {
    c.header('content-type', metrics.registry.contentType);
    return c.body(await metrics.registry.metrics());
  });

  if (options.dashboard !== false) mountDashboard(app as never);
  if (selfServe) mountSelfServe(app, ak, selfServe, options.clientAddress ?? (() => 'unknown'));

  app.doc31('/openapi.json', {
    openapi: '3.1.0',
    info: {
      title: 'agentkey',
      version: '1',
      description: 'Scoped, budgeted, time-bounded API keys for AI agents. Admin routes need the admin key as a bearer; agent routes need the agent key.',
    },
  });

  app.notFound((c) => c.json(errorBody('not_found', `No route for ${c.req.method} ${c.req.path}.`), 404));
  app.onError((err, c) => {
    const { status, body } = toHttp(err);
    if (status >= 500) log?.error({ requestId: c.get('requestId'), err: errorDetail(err) }, 'request failed');
    // The page's routes answer in the package's shape even when the service refused the request first (413, 415).
    if (selfServe && isSelfServePath(c.req.path)) {
      const { code, message, ...extra } = (body as { error: { code: string; message: string } }).error;
      return c.json(packageBody(httpError(status, code, message, extra), 'Failed to create key'), status as 400);
    }
    return c.json(body, status as 400);
  });

  return { app, metrics };
}

/** Checks the options that need no AgentKey: createApp() calls it, and startServer() before it opens the database. */
export function checkAppOptions(options: Pick<AppOptions, 'bodyLimitBytes' | 'timeoutMs' | 'selfServe'>) {
  const limit = options.bodyLimitBytes ?? 64 * 1024;
  if (!Number.isInteger(limit) || limit < 1024) throw new AgentKeyError('invalid_argument', 'bodyLimitBytes must be a whole number of at least 1024.');
  const timeoutMs = options.timeoutMs ?? 10_000;
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) throw new AgentKeyError('invalid_argument', 'timeoutMs must be a positive whole number of milliseconds.');
  const selfServe = options.selfServe ? checkRoutesOptions({ timeoutMs, ...options.selfServe }) : null;
  return { limit, timeoutMs, selfServe };
}

function adminCheck(adminKey: AppOptions['adminKey']): (bearer: string) => boolean {
  const hex = typeof adminKey === 'string' ? sha256(adminKey) : adminKey?.sha256;
  if (typeof adminKey === 'string' && adminKey.length < 16) {
    throw new AgentKeyError('invalid_argument', 'The admin key must be at least 16 characters.');
  }
  if (typeof hex !== 'string' || !/^[0-9a-f]{64}$/.test(hex)) {
    throw new AgentKeyError('invalid_argument', 'adminKey must be the admin key or { sha256: <64 hex digits> }.');
  }
  const expected = Buffer.from(hex, 'hex');
  return (bearer) => timingSafeEqual(Buffer.from(sha256(bearer), 'hex'), expected);
}

export function sha256(text: string): string {
  return createHash('sha256').update(text).digest('hex');
}

function errors(...statuses: number[]) {
  const described: Record<number, string> = {
    400: 'Malformed input', 401: 'Missing or wrong key', 403: 'Not allowed', 404: 'Not found',
    409: 'Conflict', 429: 'Budget exceeded', 503: 'Unavailable',
  };
  return Object.fromEntries(
    statuses.map((s) => [s, { description: described[s] ?? 'Error', content: { 'application/json': { schema: S.ErrorBody } } }]),
  );
}

/** Cents as the ledger records them: rounded up to a whole micro-dollar. */
function recorded(cents: CentsInput): number {
  return centsToMicros(cents, 'up') / MICROS_PER_CENT;
}

function errorBody(code: string, message: string, extra: Record<string, unknown> = {}) {
  return { error: { code, message, ...extra } };
}

function toHttp(err: unknown): { status: number; body: unknown } {
  if (err instanceof ApiError) return { status: err.status, body: errorBody(err.code, err.message, err.extra) };
  if (err instanceof HTTPException) {
    if (err.status === 503) return { status: 503, body: errorBody('storage_timeout', 'The key store did not answer in time; try again later.') };
    if (err.status === 400) return { status: 400, body: errorBody('invalid_json', 'The request body is not valid JSON.') };
    if (err.status === 415) return { status: 415, body: errorBody('unsupported_media_type', 'Send the body as JSON with "Content-Type: application/json".') };
    return { status: err.status, body: errorBody('bad_request', 'The request could not be handled.') };
  }
  return errorToHttp(err);
}

function isSelfServePath(path: string): boolean {
  return path === '/signup' || path === '/sdk-keys' || path.startsWith('/sdk-keys/');
}

function errorDetail(err: unknown): Record<string, unknown> {
  if (err instanceof Error) return { name: err.name, message: err.message, cause: err.cause === undefined ? undefined : String(err.cause) };
  return { value: String(err) };
}

function describeIssue(issue: { path: PropertyKey[]; message: string; code?: string; keys?: string[] } | undefined, target: string): string {
  const where = target === 'json' ? 'the body' : target === 'query' ? 'the query' : target === 'param' ? 'the path' : target;
  if (!issue) return `The request is invalid in ${where}.`;
  if (issue.code === 'unrecognized_keys' && issue.keys) {
    return `Unknown field${issue.keys.length > 1 ? 's' : ''} in ${where}: ${issue.keys.map((k) => `"${k}"`).join(', ')}.`;
  }
  const field = issue.path.map(String).join('.');
  const message = issue.message.replace(/\.$/, '');
  return field ? `Field "${field}" in ${where} is invalid: ${message}.` : `The request is invalid in ${where}: ${message}.`;
}

// The rule @hono/zod-openapi's validators apply, so a type they refuse is refused here first, clearly.
const JSON_TYPE = /^application\/([a-z-.]+\+)?json(;\s*[a-zA-Z0-9-]+=([^;]+))*$/i;

/** 415 for a body that is not declared as JSON: the validators would otherwise see it as empty. */
const requireJson: MiddlewareHandler = async (c, next) => {
  const method = c.req.method;
  if (method === 'POST' || method === 'PUT' || method === 'PATCH') {
    const length = c.req.header('content-length');
    const hasBody = (length !== undefined && length !== '0') || c.req.header('transfer-encoding') !== undefined;
    const type = c.req.header('content-type') ?? '';
    if (hasBody && !JSON_TYPE.test(type)) {
      throw new ApiError(415, 'unsupported_media_type', 'Send the body as JSON with "Content-Type: application/json".');
    }
  }
  await next();
};

function observe(metrics: Metrics, log: Logger | undefined): MiddlewareHandler<Env> {
  return async (c, next) => {
    const started = performance.now();
    const requestId = c.req.header('x-request-id')?.slice(0, 128) || randomUUID();
    c.set('requestId', requestId);
    c.header('x-request-id', requestId);
    try {
      await next();
    } finally {
      const seconds = (performance.now() - started) / 1000;
      // The route's pattern ('/v1/keys/:id'), even when a middleware answered before it ran.
      const route = matchedRoutes(c).filter((r) => r.method !== 'ALL').at(-1)?.path ?? 'unmatched';
      metrics.request(c.req.method, route, c.res.status, seconds);
      log?.info({ requestId, method: c.req.method, route, path: c.req.path, status: c.res.status, ms: Math.round(seconds * 10_000) / 10 }, 'request');
    }
  };
}

async function findKey(ak: AgentKey, id: string) {
  const key = await ak.getKey(id);
  if (!key) throw new ApiError(404, 'key_not_found', `No key has id ${id}.`);
  return key;
}

function bearer(c: Context): string | undefined {
  return keyFromHeaders((name) => c.req.header(name)) ?? undefined;
}

/** The key settling a hold must be the key that took it (whatever its status now). */
async function ownHold(ak: AgentKey, reservationId: string, rawKey: string | undefined): Promise<void> {
  if (!rawKey) throw new ApiError(401, 'missing_key', 'Send the key that took the hold as "key" in the body or "Authorization: Bearer <key>".');
  const [keyId, hold] = await Promise.all([ak.identify(rawKey), ak.getReservation(reservationId)]);
  if (keyId === null) throw new ApiError(401, 'invalid_key', 'The API key is not valid.');
  // Another key's hold reads as missing: ids are not confirmed to a key that does not own them.
  if (!hold || hold.keyId !== keyId) throw new ApiError(404, 'reservation_not_found', 'This key has no reservation with this id.');
}

function spendRefused(result: Exclude<TrackUsageResult, { success: true }> | { success: false; reason: string }): ApiError {
  const r = result as { reason: string; limitedBy?: unknown; budgetUsedCents?: number; budgetRemainingCents?: number | null };
  if (r.reason === 'budget_exceeded') {
    return new ApiError(429, 'budget_exceeded', 'The budget cannot cover this cost.', {
      limitedBy: r.limitedBy,
      budgetUsedCents: r.budgetUsedCents,
      budgetRemainingCents: r.budgetRemainingCents,
    });
  }
  if (r.reason === 'idempotency_conflict') {
    return new ApiError(409, 'idempotency_conflict', 'This idempotency key was already used with a different cost.');
  }
  if (r.reason === 'invalid_cost') return new ApiError(400, 'invalid_cost', 'costCents must be a number of cents of at least 0.');
  const [code, message] = KEY_REFUSED[r.reason] ?? (KEY_REFUSED.invalid as [string, string]);
  return new ApiError(401, code, message);
}

function settleRefused(reason: string): ApiError {
  if (reason === 'reservation_not_found') return new ApiError(404, 'reservation_not_found', 'This key has no reservation with this id.');
  if (reason === 'already_released') return new ApiError(409, 'already_released', 'The hold was already released; it cannot be committed.');
  if (reason === 'already_committed') return new ApiError(409, 'already_committed', 'The hold was already committed; it cannot be released.');
  if (reason === 'idempotency_conflict') {
    return new ApiError(409, 'idempotency_conflict', 'The hold was already committed with a different cost; a retry must repeat the same cost.');
  }
  return new ApiError(400, reason, 'costCents must be a number of cents of at least 0.');
}

/**
 * The seed page's self-serve routes, with their security model (see README), answering
 * in the package's shape (`error` a string, with `code` and `message`), as its clients parse it.
 */
function mountSelfServe(app: OpenAPIHono<Env>, ak: AgentKey, opts: ReturnType<typeof checkRoutesOptions>, clientAddress: (c: Context) => string) {
  const handlers = selfServeHandlers(ak, opts);
  const verifyOpts = checkVerifyOptions({ timeoutMs: opts.timeoutMs });
  type Out = { status: number; body: unknown };
  const refused = (e: HttpError): Out => ({ status: e.status, body: packageBody(e) });
  const withKey = async (c: Context, handle: (key: ValidKey) => Promise<Out>): Promise<Out> => {
    const outcome = await verifyKey(ak, keyFromHeaders((name) => c.req.header(name)), verifyOpts);
    return outcome.ok ? handle(outcome.key) : refused(outcome.error);
  };
  const withJson = async (c: Context, handle: (body: unknown) => Promise<Out>): Promise<Out> => {
    const text = await c.req.text();
    if (text.trim() === '') return handle(undefined);
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      return refused(httpError(400, 'invalid_json', 'The request body is not valid JSON.'));
    }
    return handle(body);
  };
  // A store that did not answer is a 503 here, as on every /v1 route.
  const send = (c: Context, out: Out) => c.json(out.body as object, ((out.body as { code?: string }).code === 'storage_timeout' ? 503 : out.status) as 200);
  const ip = (c: Context) => clientAddress(c);
  app.post('/signup', async (c) => send(c, await withJson(c, (body) => handlers.signup({ body, key: undefined, ip: ip(c) }))));
  app.get('/sdk-keys/me', async (c) => send(c, await withKey(c, (key) => handlers.me({ body: undefined, key, ip: ip(c) }))));
  app.post('/sdk-keys', async (c) =>
    send(c, await withKey(c, (key) => withJson(c, (body) => handlers.createChild({ body, key, ip: ip(c) })))),
  );
  app.delete('/sdk-keys/:id', async (c) =>
    send(c, await withKey(c, (key) => handlers.revoke({ body: undefined, key, ip: ip(c), id: c.req.param('id') }))),
  );
}
