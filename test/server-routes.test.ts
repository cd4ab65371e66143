import { createHash } from 'node:crypto';
import fc from 'fast-check';
import type request from 'supertest';
import { describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError } from '../src/index.js';
import { type AppOptions, type Logger, createApp } from '../src/server/index.js';
import { type TestDb, forEachDatabase } from './helpers/databases.js';
import { hangingPool, rejectingPool, throwingPool } from './helpers/faults.js';
import { expectErrorShape, expectJsonError, expectPackageError } from './helpers/http.js';

/**
 * The HTTP service (createApp: Hono + @hono/zod-openapi) called in-process with
 * app.request(), on PostgreSQL and PGlite: every admin and agent route, /openapi.json,
 * /healthz, /metrics and the self-serve routes, with the effect of each request (or its
 * absence) checked in the database.
 */

const ADMIN = 'akadmin_test_0123456789abcdefghij';

type App = ReturnType<typeof createApp>['app'];

/** A fetch Response read once, in the shape the helpers in ./helpers/http.ts read. */
interface Reply {
  status: number;
  headers: Record<string, string>;
  text: string;
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  body: any;
}

interface CallOptions {
  /** Sent as JSON. */
  json?: unknown;
  /** Sent as is. */
  raw?: string;
  /** The Content-Type of a body; null for none. Default application/json. */
  type?: string | null;
  bearer?: string;
  headers?: Record<string, string>;
}

async function call(app: App, method: string, path: string, o: CallOptions = {}): Promise<Reply> {
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
function expectError(res: Reply, status: number, code?: string): void {
  expect(res.status, res.text).toBe(status);
  expectJsonError(res as unknown as request.Response, status, code);
}

/**
 * An error of a self-serve route (/signup, /sdk-keys...): the package's shape, `{ error:
 * '<string>', code, message, ...extra }`, as the package's clients parse it.
 */
function expectSelfServeError(res: Reply, status: number, error: string | RegExp, code?: string): void {
  expectPackageError(res as unknown as request.Response, status, error, code);
}

/** The error shape only: for fuzzed input, which the message may quote. */
function expectShape(res: Reply): void {
  expectErrorShape(res as unknown as request.Response, { quotesInput: true });
}

function service(ak: AgentKey, options: Partial<AppOptions> = {}) {
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
type Service = ReturnType<typeof service>;

/** Everything a request could change that the routes expose: every key (without its last-use stamp) and the ledger's totals. */
async function snapshot(ak: AgentKey) {
  const keys = await ak.listKeys({ includeRevoked: true, limit: 10_000 });
  return { keys: keys.map(({ lastUsedAt: _lastUsedAt, ...k }) => k), usage: await ak.usage() };
}

async function countKeys(db: TestDb, ak: AgentKey): Promise<number> {
  const [row] = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${ak.tableName}`);
  return Number(row?.n);
}

async function expireKey(db: TestDb, ak: AgentKey, id: number): Promise<void> {
  await db.query(`UPDATE ${ak.tableName} SET expires_at = now() - interval '1 second' WHERE id = $1`, [id]);
}

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

function parseMetrics(text: string): Sample[] {
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
function metric(samples: Sample[], name: string, labels: Record<string, string> = {}): number | undefined {
  const found = samples.filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v));
  return found.length === 0 ? undefined : found.reduce((sum, s) => sum + s.value, 0);
}

function memoryLogger() {
  const lines: { level: string; obj: Record<string, unknown>; msg: string | undefined }[] = [];
  const at = (level: string) => (obj: object, msg?: string) => void lines.push({ level, obj: obj as Record<string, unknown>, msg });
  const logger: Logger = { info: at('info'), warn: at('warn'), error: at('error') };
  return { logger, lines };
}

/** A syntactically fine key (so it reaches the store) that no table holds. */
const UNKNOWN_KEY = `ak_${'a'.repeat(32)}`;
const UNKNOWN_HOLD = `rsv_${'A'.repeat(24)}`;

/** Every route of the service, with a body each would accept. */
function everyRoute(key: string, holdId = UNKNOWN_HOLD) {
  return {
    admin: [
      ['POST', '/v1/keys', { accountId: 'acct_new' }],
      ['GET', '/v1/keys'],
      ['GET', '/v1/keys/1'],
      ['POST', '/v1/keys/1/revoke'],
      ['PUT', '/v1/accounts/acct_a/budget', { budgetCents: 1 }],
      ['GET', '/v1/accounts/acct_a/budget'],
      ['DELETE', '/v1/accounts/acct_a/budget'],
      ['GET', '/v1/usage'],
      ['GET', '/v1/accounts'],
      ['GET', '/v1/ledger'],
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

describe('createApp: options are checked when the app is built', () => {
  const ak = new AgentKey({ pool: hangingPool() as never });

  it('error: a short or malformed admin key, a bad body limit or timeout, bad self-serve options or no AgentKey throw an AgentKeyError', () => {
    const bad: [unknown, Partial<AppOptions>][] = [
      [ak, { adminKey: 'short' }],
      [ak, { adminKey: '' }],
      [ak, { adminKey: { sha256: 'not-hex' } }],
      [ak, { adminKey: { sha256: 'A'.repeat(64) } }],
      [ak, { adminKey: undefined as never }],
      [ak, { adminKey: ADMIN, bodyLimitBytes: 100 }],
      [ak, { adminKey: ADMIN, bodyLimitBytes: 2048.5 }],
      [ak, { adminKey: ADMIN, timeoutMs: 0 }],
      [ak, { adminKey: ADMIN, timeoutMs: -5 }],
      [ak, { adminKey: ADMIN, timeoutMs: 1.5 }],
      [ak, { adminKey: ADMIN, selfServe: { signupScope: ['x'] } as never }],
      [ak, { adminKey: ADMIN, selfServe: { signupRateLimit: 0 } }],
      [{}, { adminKey: ADMIN }],
      [null, { adminKey: ADMIN }],
    ];
    for (const [agentKey, options] of bad) {
      expect(() => createApp(agentKey as AgentKey, options as AppOptions), JSON.stringify(options)).toThrow(AgentKeyError);
    }
  });

  it('happy: the admin key or its SHA-256 builds an app', () => {
    expect(createApp(ak, { adminKey: ADMIN }).app).toBeDefined();
    expect(createApp(ak, { adminKey: { sha256: createHash('sha256').update(ADMIN).digest('hex') } }).app).toBeDefined();
    expect(createApp(ak, { adminKey: ADMIN, selfServe: {}, bodyLimitBytes: 1024, timeoutMs: 1 }).app).toBeDefined();
  });
});

describe('without a database: routes that need no store, and broken stores', () => {
  // Any store call would hang: the routes tested with this AgentKey answer without one.
  const ak = new AgentKey({ pool: hangingPool() as never });

  it('error: an unknown route or method -> 404 not_found (with the admin key under the admin prefixes)', async () => {
    const svc = service(ak);
    const cases: [string, string, string?][] = [
      ['GET', '/nope'],
      ['GET', '/'],
      ['GET', '/v1'],
      ['GET', '/v1/charge'],
      ['PUT', '/v1/verify'],
      ['GET', '/v1/reservations'],
      ['GET', '/V1/keys'],
      ['GET', '//v1/keys'],
      ['POST', '/signup'],
      ['GET', '/sdk-keys/me'],
      ['PUT', '/v1/keys', ADMIN],
      ['DELETE', '/v1/keys/1', ADMIN],
      ['GET', '/v1/keys/1/revoke', ADMIN],
      ['POST', '/v1/accounts/a/budget', ADMIN],
      ['GET', '/v1/usage/', ADMIN],
    ];
    for (const [method, path, bearer] of cases) {
      const res = await svc.send(method, path, bearer ? { bearer } : {});
      expectError(res, 404, 'not_found');
    }
  });

  it('happy: /healthz without a health check -> 200 ok; every answer carries an x-request-id (the client\'s own when it sent one)', async () => {
    const svc = service(ak, { database: 'pglite' });
    const res = await svc.send('GET', '/healthz');
    expect(res.status).toBe(200);
    expect(res.body).toEqual({ status: 'ok', database: 'pglite' });
    expect(res.headers['x-request-id']).toMatch(/^[0-9a-f-]{36}$/);
    const mine = await svc.send('GET', '/nope', { headers: { 'x-request-id': 'req-42' } });
    expect(mine.headers['x-request-id']).toBe('req-42');
    const long = await svc.send('GET', '/healthz', { headers: { 'x-request-id': 'r'.repeat(500) } });
    expect(long.headers['x-request-id']).toBe('r'.repeat(128));
  });

  describe('GET /openapi.json', () => {
    const svc = service(ak, { selfServe: {} });
    const doc = async () => {
      const res = await svc.send('GET', '/openapi.json');
      expect(res.status).toBe(200);
      expect(res.headers['content-type']).toMatch(/^application\/json/);
      return res.body as {
        openapi: string;
        info: { title: string };
        paths: Record<string, Record<string, { security?: unknown; requestBody?: { required?: boolean; content: Record<string, { schema: { $ref?: string } }> }; responses: Record<string, { content?: Record<string, { schema: { $ref?: string } }> }> }>>;
        components: { schemas: Record<string, { required?: string[]; properties?: Record<string, { minimum?: number; maximum?: number; anyOf?: Record<string, unknown>[] }>; additionalProperties?: unknown }>; securitySchemes: Record<string, unknown> };
      };
    };
    const schemaOf = (d: Awaited<ReturnType<typeof doc>>, path: string, method: string) => {
      const ref = d.paths[path]?.[method]?.requestBody?.content['application/json']?.schema.$ref as string;
      expect(ref, `${method} ${path}`).toMatch(/^#\/components\/schemas\//);
      return d.components.schemas[ref.split('/').pop() as string] as NonNullable<(typeof d.components.schemas)[string]>;
    };

    it('happy: OpenAPI 3.1.0 with every /v1 route and its methods, and no route that does not exist', async () => {
      const d = await doc();
      expect(d.openapi).toBe('3.1.0');
      expect(d.info.title).toBe('agentkey');
      const routes = Object.fromEntries(Object.entries(d.paths).map(([path, ops]) => [path, Object.keys(ops).sort()]));
      expect(routes).toEqual({
        '/v1/keys': ['get', 'post'],
        '/v1/keys/{id}': ['get'],
        '/v1/keys/{id}/revoke': ['post'],
        '/v1/accounts': ['get'],
        '/v1/accounts/{id}/budget': ['delete', 'get', 'put'],
        '/v1/usage': ['get'],
        '/v1/ledger': ['get'],
        '/v1/verify': ['post'],
        '/v1/charge': ['post'],
        '/v1/reservations': ['post'],
        '/v1/reservations/{id}/commit': ['post'],
        '/v1/reservations/{id}/release': ['post'],
        '/healthz': ['get'],
      });
    });

    it('happy: request schemas are the validating ones: /v1/charge requires key and costCents, refuses unknown fields and costs below 0', async () => {
      const d = await doc();
      const charge = schemaOf(d, '/v1/charge', 'post');
      expect(charge.required?.sort()).toEqual(['costCents', 'key']);
      expect(Object.keys(charge.properties ?? {}).sort()).toEqual(['costCents', 'idempotencyKey', 'key', 'metadata']);
      expect(charge.additionalProperties).toBe(false);
      // a number of at least 0, or a decimal string
      expect(charge.properties?.costCents?.anyOf).toEqual([
        expect.objectContaining({ type: 'number', minimum: 0 }),
        expect.objectContaining({ type: 'string', pattern: expect.stringContaining('\\d') }),
      ]);
      expect(d.paths['/v1/charge']?.post?.requestBody?.required).toBe(true);

      const create = schemaOf(d, '/v1/keys', 'post');
      expect(create.required).toEqual(['accountId']);
      expect(create.additionalProperties).toBe(false);
      expect(create.properties).toHaveProperty('budgetCents');
      expect(create.properties).not.toHaveProperty('budget_cents');
      expect(schemaOf(d, '/v1/reservations/{id}/commit', 'post').required).toEqual(['costCents']);
      expect(schemaOf(d, '/v1/accounts/{id}/budget', 'put').required).toEqual(['budgetCents']);
      expect(schemaOf(d, '/v1/verify', 'post').required).toEqual(['key']);
    });

    it('security: admin routes declare the admin bearer, agent routes do not; errors use the one Error schema', async () => {
      const d = await doc();
      expect(d.components.securitySchemes.adminKey).toMatchObject({ type: 'http', scheme: 'bearer' });
      for (const [path, ops] of Object.entries(d.paths)) {
        for (const [method, op] of Object.entries(ops)) {
          const adminRoute = path.startsWith('/v1/keys') || path.startsWith('/v1/accounts') || path === '/v1/usage' || path === '/v1/ledger';
          expect(op.security, `${method} ${path}`).toEqual(adminRoute ? [{ adminKey: [] }] : undefined);
          for (const [status, response] of Object.entries(op.responses)) {
            if (Number(status) >= 400) expect(response.content?.['application/json']?.schema.$ref, `${method} ${path} ${status}`).toBe('#/components/schemas/Error');
          }
        }
      }
    });
  });

  describe('storage faults', () => {
    const routesOf = (key: string) => {
      const { admin, agent } = everyRoute(key);
      return [
        ...admin.map(([m, p, j]) => ({ method: m, path: p, o: { bearer: ADMIN, ...(j === undefined ? {} : { json: j }) } as CallOptions })),
        ...agent.map(([m, p, j]) => ({ method: m, path: p, o: { json: j } as CallOptions })),
      ];
    };
    // `error`: the package's string for a failed store, as each route says it (a key is checked before its route runs).
    const selfServeRoutes = (key: string): { method: string; path: string; o: CallOptions; error: string }[] => [
      { method: 'POST', path: '/signup', o: { json: { email: 'agent@example.com' } }, error: 'Failed to create key' },
      { method: 'GET', path: '/sdk-keys/me', o: { bearer: key }, error: 'auth_unavailable' },
      { method: 'POST', path: '/sdk-keys', o: { bearer: key, json: {} }, error: 'auth_unavailable' },
      { method: 'DELETE', path: '/sdk-keys/1', o: { bearer: key }, error: 'auth_unavailable' },
    ];

    for (const [name, makePool] of [['rejects', rejectingPool], ['throws', throwingPool]] as const) {
      it(`security: a pool that ${name} -> every route answers a 5xx JSON error with no driver detail, which goes to the log with the request id`, async () => {
        const broken = new AgentKey({ pool: makePool() as never });
        const { logger, lines } = memoryLogger();
        const svc = service(broken, { logger, selfServe: { signupRateLimit: false } });
        const routes: { method: string; path: string; o: CallOptions; error?: string }[] = [...routesOf(UNKNOWN_KEY), ...selfServeRoutes(UNKNOWN_KEY)];
        for (const { method, path, o, error } of routes) {
          const res = await svc.send(method, path, { ...o, headers: { 'x-request-id': `r-${method}-${path}` } });
          expect([500, 503], `${method} ${path}`).toContain(res.status);
          // The /v1 routes answer { error: { code, message } }; the self-serve routes the package's shape.
          if (error === undefined) expectError(res, res.status);
          else expectSelfServeError(res, res.status, error);
          expect(res.text).not.toMatch(/hunter2|ECONNREFUSED|10\.9\.8\.7|TypeError|at .*\.(ts|js)/);
        }
        // The /v1 routes log the detail, tied to the request: operators see what clients do not.
        const failures = lines.filter((l) => l.level === 'error');
        expect(failures.length).toBeGreaterThanOrEqual(routesOf(UNKNOWN_KEY).length);
        expect(failures.map((l) => l.obj.requestId)).toContain('r-POST-/v1/charge');
        expect(JSON.stringify(failures)).toMatch(name === 'rejects' ? /ECONNREFUSED/ : /hunter2/);
      });
    }

    it('error: a store that never answers -> every /v1 route answers 503 storage_timeout after timeoutMs, not a hang', async () => {
      const slow = new AgentKey({ pool: hangingPool() as never });
      const svc = service(slow, { timeoutMs: 150 });
      const routes = routesOf(UNKNOWN_KEY);
      const replies = await Promise.all(routes.map(({ method, path, o }) => svc.send(method, path, o)));
      replies.forEach((res, i) => {
        expect(res.status, `${routes[i]?.method} ${routes[i]?.path}`).toBe(503);
        expectError(res, 503, 'storage_timeout');
      });
    });

    it('error: a store that never answers -> the self-serve routes answer 503 storage_timeout too, like every other route of the service', async () => {
      // The same condition must get the same answer across one service.
      const slow = new AgentKey({ pool: hangingPool() as never });
      const svc = service(slow, { timeoutMs: 150, selfServe: { timeoutMs: 150, signupRateLimit: false } });
      const routes = selfServeRoutes(UNKNOWN_KEY);
      const replies = await Promise.all(routes.map(({ method, path, o }) => svc.send(method, path, o)));
      replies.forEach((res, i) => {
        // In the package's shape: the code beside the package's string.
        expect({ route: `${routes[i]?.method} ${routes[i]?.path}`, status: res.status, code: res.body?.code, error: res.body?.error }).toEqual({
          route: `${routes[i]?.method} ${routes[i]?.path}`,
          status: 503,
          code: 'storage_timeout',
          error: routes[i]?.error,
        });
        expectSelfServeError(res, 503, routes[i]?.error as string, 'storage_timeout');
      });
    });

    it('error: a health check that never answers -> /healthz answers 503 (within timeoutMs), not a hang', async () => {
      const svc = service(ak, { timeoutMs: 150, health: () => new Promise<void>(() => {}) });
      // Only a guard against hanging the suite: the answer is due after 150 ms.
      const res = await Promise.race([
        svc.send('GET', '/healthz'),
        new Promise<'no answer'>((resolve) => setTimeout(() => resolve('no answer'), 3_000).unref()),
      ]);
      expect(res).not.toBe('no answer');
      expectError(res as Reply, 503);
    }, 10_000);
  });
});

forEachDatabase((getDb) => {
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

  describe('admin authentication', () => {
    it('security: every admin route refuses no bearer, a wrong one, an agent key, the hash of the admin key; nothing changes', async () => {
      const { ak, svc } = await setup();
      const agent = await ak.create({ accountId: 'acct_a', budgetCents: 100 });
      const child = await ak.create({ accountId: 'acct_a', parentId: agent.id });
      await ak.setAccountBudget('acct_a', { budgetCents: 50 });
      await ak.trackUsage(agent.key, { costCents: 3 });
      const before = await snapshot(ak);
      const budgetBefore = await ak.getAccountBudget('acct_a');

      const hash = createHash('sha256').update(ADMIN).digest('hex');
      const refused: [Record<string, string>, string][] = [
        [{}, 'missing_admin_key'],
        [{ 'x-api-key': ADMIN }, 'missing_admin_key'],
        [{ authorization: `Bearer ${agent.key}` }, 'invalid_admin_key'],
        [{ authorization: `Bearer ${child.key}` }, 'invalid_admin_key'],
        [{ authorization: 'Bearer akadmin_wrong_0123456789abcdefghij' }, 'invalid_admin_key'],
        [{ authorization: `Bearer ${ADMIN}x` }, 'invalid_admin_key'],
        [{ authorization: `Bearer ${ADMIN.slice(0, -1)}` }, 'invalid_admin_key'],
        [{ authorization: `Bearer ${ADMIN} ${ADMIN}` }, 'invalid_admin_key'],
        [{ authorization: `Bearer ${hash}` }, 'invalid_admin_key'],
        [{ authorization: ADMIN }, 'invalid_admin_key'],
        [{ authorization: `Basic ${Buffer.from(`admin:${ADMIN}`).toString('base64')}` }, 'invalid_admin_key'],
        [{ authorization: 'Bearer' }, 'invalid_admin_key'],
      ];
      const routes: [string, string, unknown?][] = [
        ['POST', '/v1/keys', { accountId: 'acct_a', budgetCents: 1_000_000 }],
        ['POST', '/v1/keys', { accountId: 'acct_a', parentId: agent.id }],
        ['GET', '/v1/keys'],
        ['GET', '/v1/keys?accountId=acct_a&includeRevoked=true'],
        ['GET', `/v1/keys/${agent.id}`],
        ['GET', '/v1/keys/abc'],
        ['POST', `/v1/keys/${agent.id}/revoke`],
        ['POST', `/v1/keys/${child.id}/revoke`],
        ['PUT', '/v1/accounts/acct_a/budget', { budgetCents: 1_000_000 }],
        ['GET', '/v1/accounts/acct_a/budget'],
        ['DELETE', '/v1/accounts/acct_a/budget'],
        ['GET', '/v1/usage'],
        ['GET', '/v1/usage?accountId=acct_a&bucket=day'],
      ];
      for (const [method, path, json] of routes) {
        for (const [headers, code] of refused) {
          const res = await svc.send(method, path, { headers, ...(json === undefined ? {} : { json }) });
          expect(res.status, `${method} ${path} ${JSON.stringify(headers)}`).toBe(401);
          expectError(res, 401, code);
          // Nothing about keys, budgets or usage leaks into a refusal.
          expect(res.text).not.toMatch(/acct_a|spentCents|totalCents/);
        }
      }
      expect(await snapshot(ak)).toEqual(before);
      expect(await ak.getAccountBudget('acct_a')).toEqual(budgetBefore);
      expect(await ak.validate(agent.key)).toMatchObject({ valid: true });
    });

    it('happy: the admin key is accepted raw or configured as its SHA-256, with any case of "Bearer"', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.create({ accountId: 'acct_a' });
      const hashed = service(ak, { adminKey: { sha256: createHash('sha256').update(ADMIN).digest('hex') } });
      for (const authorization of [`Bearer ${ADMIN}`, `bearer ${ADMIN}`, `BEARER   ${ADMIN}  `]) {
        const res = await hashed.send('GET', '/v1/keys', { headers: { authorization } });
        expect(res.status, authorization).toBe(200);
        expect(res.body.keys).toHaveLength(1);
      }
    });
  });

  describe('POST /v1/keys', () => {
    it('happy: 201 with the raw key once and the key as GET /v1/keys/:id shows it; the key works', async () => {
      const { db, ak, svc } = await setup();
      const before = Date.now();
      const res = await svc.admin('POST', '/v1/keys', {
        accountId: 'acct_1',
        name: 'agent',
        scopes: ['proxy.chat', 'usage.read'],
        budgetCents: 500,
        budgetPeriod: 'month',
        expiresIn: '7d',
        delegatedBy: 'user_9',
        userId: 'u_1',
      });
      expect(res.status).toBe(201);
      expect(res.headers['content-type']).toMatch(/^application\/json/);
      const created = res.body;
      expect(created).toMatchObject({
        key: expect.stringMatching(/^ak_/),
        id: expect.any(Number),
        accountId: 'acct_1',
        name: 'agent',
        scopes: ['proxy.chat', 'usage.read'],
        status: 'active',
        parentId: null,
        depth: 0,
        budgetCents: 500,
        spentCents: 0,
        heldCents: 0,
        remainingCents: 500,
        budgetPeriod: 'month',
        budgetResetAt: expect.any(String),
        revokedAt: null,
        delegatedBy: 'user_9',
        externalSubject: null,
      });
      expect(created.key.startsWith(created.prefix)).toBe(true);
      const expires = Date.parse(created.expiresAt);
      expect(expires).toBeGreaterThanOrEqual(before + 7 * 86_400_000);
      expect(expires).toBeLessThanOrEqual(Date.now() + 7 * 86_400_000);

      // Read back: the same key, never its secret.
      const read = await svc.admin('GET', `/v1/keys/${created.id}`);
      expect(read.status).toBe(200);
      const { key: raw, ...info } = created;
      expect(read.body).toEqual(info);
      expect(read.text).not.toContain(raw);
      expect((await svc.admin('GET', '/v1/keys')).text).not.toContain(raw);
      const [row] = await db.query<{ user_id: string; key_hash: string }>(`SELECT user_id, key_hash FROM ${ak.tableName} WHERE id = $1`, [created.id]);
      expect(row?.user_id).toBe('u_1');
      expect(res.text).not.toContain(row?.key_hash as string);

      expect(await ak.validate(raw)).toMatchObject({ valid: true, keyId: created.id, accountId: 'acct_1', scopes: ['proxy.chat', 'usage.read'], budgetCents: 500 });
      const verify = await svc.post('/v1/verify', { key: raw, scope: 'proxy.chat' });
      expect(verify.body).toMatchObject({ valid: true, keyId: created.id });
      expect(await countKeys(db, ak)).toBe(1);
    });

    it('happy: minimal bodies: a string or numeric account id, no budget, no expiry, all scopes', async () => {
      const { ak, svc } = await setup();
      const open = await createKey(svc, { accountId: 'acct_min' });
      expect(open).toMatchObject({ scopes: null, budgetCents: null, remainingCents: null, expiresAt: null, budgetPeriod: null, name: null });
      const numeric = await createKey(svc, { accountId: 7, budgetCents: null, expiresIn: null, scopes: [] });
      expect(String(numeric.accountId)).toBe('7');
      expect(numeric.scopes).toEqual([]);
      const listed = await svc.admin('GET', '/v1/keys?accountId=7');
      expect(listed.body.keys.map((k: { id: number }) => k.id)).toEqual([numeric.id]);
      const at = await createKey(svc, { accountId: 'acct_min', expiresAt: '2099-01-01T00:00:00Z' });
      expect(at.expiresAt).toBe('2099-01-01T00:00:00.000Z');
      expect((await ak.listKeys({})).length).toBe(3);
    });

    it('happy: parentId (as a number or a string) makes a child that inherits scopes and expiry and is listed under its parent', async () => {
      const { ak, svc } = await setup();
      const parent = await createKey(svc, { accountId: 'acct_p', scopes: ['proxy.chat', 'usage.read'], budgetCents: 100, expiresIn: '1d' });
      const a = await createKey(svc, { accountId: 'acct_p', parentId: parent.id });
      expect(a).toMatchObject({ parentId: parent.id, depth: 1, scopes: ['proxy.chat', 'usage.read'], expiresAt: parent.expiresAt, budgetCents: null });
      const b = await createKey(svc, { accountId: 'acct_p', parentId: String(parent.id), scopes: ['usage.read'], budgetCents: 40 });
      expect(b).toMatchObject({ parentId: parent.id, depth: 1, scopes: ['usage.read'], budgetCents: 40 });
      const grandchild = await createKey(svc, { accountId: 'acct_p', parentId: b.id });
      expect(grandchild).toMatchObject({ parentId: b.id, depth: 2 });
      const children = await svc.admin('GET', `/v1/keys?parentId=${parent.id}`);
      expect(children.body.keys.map((k: { id: number }) => k.id)).toEqual([a.id, b.id]);
      // A child's spend counts against its parent.
      expect((await svc.post('/v1/charge', { key: grandchild.key, costCents: 30 })).status).toBe(200);
      expect(await ak.getKey(parent.id)).toMatchObject({ spentCents: 30, remainingCents: 70 });
      expect(await ak.getKey(b.id)).toMatchObject({ spentCents: 30, remainingCents: 10 });
    });

    it('security: a child never escapes its parent: another account, wider scopes, larger budget, later expiry, a revoked or missing parent; nothing is created', async () => {
      const { ak, svc } = await setup();
      const parent = await ak.create({ accountId: 'acct_p', scopes: ['proxy.chat'], budgetCents: 100, expiresIn: '1d' });
      const revoked = await ak.create({ accountId: 'acct_p' });
      await ak.revoke(revoked.id);
      const before = await snapshot(ak);
      const cases: [Record<string, unknown>, number, string][] = [
        [{ accountId: 'acct_other', parentId: parent.id }, 400, 'invalid_argument'],
        [{ accountId: 'acct_p', parentId: parent.id, scopes: ['billing.write'] }, 403, 'scope_not_allowed'],
        [{ accountId: 'acct_p', parentId: parent.id, scopes: null }, 403, 'scope_not_allowed'],
        [{ accountId: 'acct_p', parentId: parent.id, scopes: ['admin'] }, 403, 'scope_not_allowed'],
        [{ accountId: 'acct_p', parentId: parent.id, budgetCents: 100.0001 }, 403, 'budget_exceeds_parent'],
        [{ accountId: 'acct_p', parentId: parent.id, expiresIn: '2d' }, 403, 'expiry_exceeds_parent'],
        [{ accountId: 'acct_p', parentId: parent.id, expiresIn: null }, 403, 'expiry_exceeds_parent'],
        [{ accountId: 'acct_p', parentId: revoked.id }, 403, 'parent_inactive'],
        [{ accountId: 'acct_p', parentId: 999_999 }, 404, 'parent_not_found'],
        [{ accountId: 'acct_p', parentId: String(Number.MAX_SAFE_INTEGER) }, 404, 'parent_not_found'],
        [{ accountId: 'acct_p', parentId: '12345678901234567' }, 400, 'invalid_request'],
      ];
      for (const [body, status, code] of cases) {
        const res = await svc.admin('POST', '/v1/keys', body);
        expect(res.status, JSON.stringify(body)).toBe(status);
        expectError(res, status, code);
      }
      expect(await snapshot(ak)).toEqual(before);
    });

    it('error: wrong types, missing fields and unknown fields (budget_cents) -> 400 naming the field; nothing is created (a zero expiresIn is no error: its key is expired at once)', async () => {
      const { db, ak, svc } = await setup();
      const cases: [unknown, string, RegExp?][] = [
        [{}, 'invalid_request', /accountId/],
        [{ name: 'no account' }, 'invalid_request', /accountId/],
        [{ accountId: '' }, 'invalid_request', /accountId/],
        [{ accountId: null }, 'invalid_request', /accountId/],
        [{ accountId: true }, 'invalid_request', /accountId/],
        [{ accountId: 1.5 }, 'invalid_request', /accountId/],
        [{ accountId: ['a'] }, 'invalid_request', /accountId/],
        [{ accountId: 'a'.repeat(257) }, 'invalid_request', /accountId/],
        [{ accountId: 'a', budget_cents: 100 }, 'invalid_request', /budget_cents/],
        [{ accountId: 'a', account_id: 'b' }, 'invalid_request', /account_id/],
        [{ accountId: 'a', Scopes: ['admin'] }, 'invalid_request', /Scopes/],
        [{ accountId: 'a', budgetCents: '1e2' }, 'invalid_request', /budgetCents/],
        [{ accountId: 'a', budgetCents: '-1' }, 'invalid_request', /budgetCents/],
        [{ accountId: 'a', budgetCents: -1 }, 'invalid_request', /budgetCents/],
        [{ accountId: 'a', budgetCents: 1e12 }, 'invalid_request', /budgetCents/],
        [{ accountId: 'a', budgetCents: true }, 'invalid_request', /budgetCents/],
        [{ accountId: 'a', scopes: 'proxy.chat' }, 'invalid_request', /scopes/],
        [{ accountId: 'a', scopes: [1] }, 'invalid_request', /scopes/],
        [{ accountId: 'a', scopes: [''] }, 'invalid_request', /scopes/],
        [{ accountId: 'a', scopes: ['has space'] }, 'invalid_scope'],
        [{ accountId: 'a', budgetPeriod: 'week' }, 'invalid_request', /budgetPeriod/],
        [{ accountId: 'a', expiresIn: 3600 }, 'invalid_request', /expiresIn/],
        [{ accountId: 'a', expiresIn: '7 days' }, 'invalid_duration', /^Invalid duration: 7 days/],
        [{ accountId: 'a', expiresIn: '-1d' }, 'invalid_duration', /^Invalid duration: -1d/],
        [{ accountId: 'a', expiresAt: '2020-01-01T00:00:00Z' }, 'invalid_argument'],
        [{ accountId: 'a', expiresAt: 'tomorrow' }, 'invalid_argument'],
        [{ accountId: 'a', expiresIn: '1h', expiresAt: '2099-01-01T00:00:00Z' }, 'invalid_argument'],
        [{ accountId: 'a', parentId: 0 }, 'invalid_request', /parentId/],
        [{ accountId: 'a', parentId: 'abc' }, 'invalid_request', /parentId/],
        [{ accountId: 'a', parentId: '0' }, 'invalid_request', /parentId/],
        [{ accountId: 'a', parentId: -1 }, 'invalid_request', /parentId/],
        [{ accountId: 'a', name: 'x'.repeat(300) }, 'invalid_request', /name/],
        [{ accountId: 'a', name: '' }, 'invalid_argument'],
        [{ accountId: 'a', name: 5 }, 'invalid_request', /name/],
        [{ accountId: 'a', delegatedBy: {} }, 'invalid_request', /delegatedBy/],
        [{ accountId: 'a', userId: 'nul\u0000' }, 'invalid_argument'],
        [{ accountId: 'a\u0000b' }, 'invalid_argument'],
        [[{ accountId: 'a' }], 'invalid_request'],
        ['acct_1', 'invalid_request'],
        [42, 'invalid_request'],
        [null, 'invalid_request'],
      ];
      for (const [json, code, names] of cases) {
        const res = await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw: JSON.stringify(json) });
        expect(res.status, JSON.stringify(json)).toBe(400);
        expectError(res, 400, code);
        if (names) expect(res.body.error.message).toMatch(names);
      }
      expect(await countKeys(db, ak)).toBe(0);
      // A zero duration is no error (as in the package): the key is made expired at once.
      const zero = await svc.admin('POST', '/v1/keys', { accountId: 'a', expiresIn: '0d' });
      expect(zero.status, zero.text).toBe(201);
      expect(Date.parse(zero.body.expiresAt)).toBeLessThanOrEqual(Date.now());
      expect(await ak.validate(zero.body.key)).toEqual({ valid: false, reason: 'expired' });
    });

    it('security: control and bidi characters in names, ids and labels -> 400 invalid_argument naming the field, never the database\'s words; nothing changes', async () => {
      const { ak, svc } = await setup({ selfServe: { signupRateLimit: false } });
      const k = await ak.create({ accountId: 'acct_t', budgetCents: 100 });
      const before = await snapshot(ak);
      const esc = 'red\u001b[31m', rlo = 'gpj\u202eexe', nul = 'nul\u0000x', bel = 'bel\u0007';
      const cases: [string, string, CallOptions, RegExp][] = [
        ['POST', '/v1/keys', { bearer: ADMIN, json: { accountId: 'a', name: esc } }, /^name must not contain control characters.*U\+001B/],
        ['POST', '/v1/keys', { bearer: ADMIN, json: { accountId: 'a', name: rlo } }, /^name must not contain control characters.*U\+202E/],
        ['POST', '/v1/keys', { bearer: ADMIN, json: { accountId: 'a', name: nul } }, /^name must not contain control characters.*U\+0000/],
        ['POST', '/v1/keys', { bearer: ADMIN, json: { accountId: nul } }, /^accountId must not contain control characters.*U\+0000/],
        ['POST', '/v1/keys', { bearer: ADMIN, json: { accountId: rlo } }, /^accountId must not contain control characters/],
        ['POST', '/v1/keys', { bearer: ADMIN, json: { accountId: 'a', delegatedBy: bel } }, /^delegatedBy must not contain control characters/],
        ['POST', '/v1/keys', { bearer: ADMIN, json: { accountId: 'a', userId: nul } }, /^userId must not contain control characters/],
        ['PUT', `/v1/accounts/${encodeURIComponent(esc)}/budget`, { bearer: ADMIN, json: { budgetCents: 5 } }, /^accountId must not contain control characters/],
        ['GET', `/v1/keys?accountId=${encodeURIComponent(nul)}`, { bearer: ADMIN }, /^accountId must not contain control characters/],
        ['POST', '/v1/charge', { json: { key: k.key, costCents: 1, idempotencyKey: esc } }, /^idempotencyKey must not contain control characters/],
        ['POST', '/v1/charge', { json: { key: k.key, costCents: 1, idempotencyKey: nul } }, /^idempotencyKey must not contain control characters/],
      ];
      for (const [method, path, o, message] of cases) {
        const res = await svc.send(method, path, o);
        const label = `${method} ${path} ${JSON.stringify(o.json)}`;
        expect(res.status, label).toBe(400);
        expectError(res, 400, 'invalid_argument');
        expect(res.body.error.message, label).toMatch(message);
        expect(res.body.error.message, label).not.toMatch(/invalid byte sequence|0x00|does not fit/);
      }
      // The self-serve routes refuse them too, in the package's shape.
      const signup = await svc.send('POST', '/signup', { json: { email: 'a@example.com', name: esc } });
      expectSelfServeError(signup, 400, /must not contain control characters/, 'invalid_argument');
      const child = await svc.send('POST', '/sdk-keys', { bearer: k.key, json: { name: rlo, budget_cents: 1 } });
      expectSelfServeError(child, 400, /must not contain control characters/, 'invalid_argument');
      expect(await snapshot(ak)).toEqual(before);
      expect(await ak.listAccounts()).toEqual([expect.objectContaining({ accountId: 'acct_t', ceiling: null })]);
    });

    it('error: malformed JSON, an empty body and no body -> 400; nothing is created', async () => {
      const { db, ak, svc } = await setup();
      for (const raw of ['{"accountId": ', '{accountId: "a"}', "{'accountId':'a'}", '{"accountId":"a",}', '', ' ', 'undefined', '{"accountId":"a"}{}']) {
        expectError(await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw }), 400, 'invalid_json');
      }
      expectError(await svc.send('POST', '/v1/keys', { bearer: ADMIN }), 400, 'invalid_request');
      expect(await countKeys(db, ak)).toBe(0);
    });

    it('error: a body over the limit -> 413 body_too_large, even with valid fields; bodyLimitBytes moves the limit', async () => {
      const { db, ak, svc } = await setup();
      const huge = { accountId: 'acct_1', name: 'n', delegatedBy: 'd', pad: 'x'.repeat(70_000) };
      expectError(await svc.admin('POST', '/v1/keys', huge), 413, 'body_too_large');
      // Within 64 KiB but with an unknown field: a 400, not a 413.
      expectError(await svc.admin('POST', '/v1/keys', { accountId: 'a', pad: 'x'.repeat(60_000) }), 400, 'invalid_request');
      // Spaces are bytes too.
      const padded = `{"accountId":"acct_1"${' '.repeat(70_000)}}`;
      expectError(await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw: padded }), 413, 'body_too_large');

      const small = service(ak, { bodyLimitBytes: 2048 });
      const over = { accountId: 'acct_1', name: 'x'.repeat(250), delegatedBy: 'y'.repeat(250), scopes: Array.from({ length: 100 }, (_, i) => `scope.item.${i}`) };
      expect(JSON.stringify(over).length).toBeGreaterThan(2048);
      expectError(await small.admin('POST', '/v1/keys', over), 413, 'body_too_large');
      expect(await countKeys(db, ak)).toBe(0);
      expect((await small.admin('POST', '/v1/keys', { accountId: 'acct_1', name: 'x'.repeat(250) })).status).toBe(201);
      expect(await countKeys(db, ak)).toBe(1);
    });

    it('error: a body that is not declared as JSON -> 415 unsupported_media_type; nothing is created', async () => {
      const { db, ak, svc } = await setup();
      const raw = JSON.stringify({ accountId: 'acct_1' });
      for (const type of [null, 'text/plain', 'text/json', 'application/x-www-form-urlencoded', 'multipart/form-data; boundary=x', 'application/octet-stream', 'application/json5', 'application/jsonx', 'json']) {
        const res = await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw, type });
        expectError(res, 415, 'unsupported_media_type');
      }
      expect(await countKeys(db, ak)).toBe(0);
      for (const type of ['application/json', 'application/json; charset=utf-8', 'APPLICATION/JSON;charset=UTF-8', 'application/vnd.api+json']) {
        expect((await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw, type })).status, type).toBe(201);
      }
      expect(await countKeys(db, ak)).toBe(4);
    });

    it('error: every content type the service turns away gets the same 415 unsupported_media_type, even "application/json ; charset=utf-8" (the validators\' rule: no space before ";")', async () => {
      const { db, ak, svc } = await setup();
      const raw = JSON.stringify({ accountId: 'acct_1' });
      // A malformed parameter on a JSON type: turned away, but with the code of every other 415.
      const malformed = await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw, type: 'application/json;charset' });
      expect(await countKeys(db, ak)).toBe(0);
      const spaced = await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw, type: 'application/json ; charset=utf-8' });
      expect({
        malformed: { status: malformed.status, code: malformed.body?.error?.code },
        spaced: { status: spaced.status, code: spaced.body?.error?.code },
        created: await countKeys(db, ak),
      }).toEqual({ malformed: { status: 415, code: 'unsupported_media_type' }, spaced: { status: 415, code: 'unsupported_media_type' }, created: 0 });
    });

    it('error: an expiry past the year 9999 is the client\'s value: 201 or 400, never a 5xx', async () => {
      const { db, ak, svc } = await setup();
      for (const expiresAt of ['10000-01-01T00:00:00Z', '+099999-01-01T00:00:00Z', '+275760-09-13T00:00:00Z']) {
        const before = await countKeys(db, ak);
        const res = await svc.admin('POST', '/v1/keys', { accountId: 'acct_1', expiresAt });
        expect({ expiresAt, status: res.status, body: res.status >= 500 ? res.body : 'not a 5xx' }).toEqual({ expiresAt, status: res.status, body: 'not a 5xx' });
        expect([201, 400]).toContain(res.status);
        if (res.status === 400) {
          expectError(res, 400);
          expect(await countKeys(db, ak)).toBe(before);
        } else {
          expect(await ak.validate(res.body.key)).toMatchObject({ valid: true });
        }
      }
    });
  });

  describe('GET /v1/keys', () => {
    it('happy: every account\'s keys in id order, filtered by account, parent, revoked and limit, never with a secret', async () => {
      const { db, ak, svc } = await setup();
      const a1 = await ak.create({ accountId: 'acct_a', budgetCents: 10 });
      const a2 = await ak.create({ accountId: 'acct_a', parentId: a1.id });
      const b1 = await ak.create({ accountId: 'acct_b' });
      const gone = await ak.create({ accountId: 'acct_a' });
      await ak.revoke(gone.id);
      await ak.trackUsage(a2.key, { costCents: 4 });
      const ids = async (query: string) => {
        const res = await svc.admin('GET', `/v1/keys${query}`);
        expect(res.status, query).toBe(200);
        for (const k of [a1, a2, b1, gone]) expect(res.text).not.toContain(k.key);
        for (const info of res.body.keys) expect(Object.keys(info).sort()).toEqual(Object.keys((await ak.getKey(a1.id)) as object).sort());
        return res.body.keys.map((k: { id: number }) => k.id);
      };
      expect(await ids('')).toEqual([a1.id, a2.id, b1.id]);
      expect(await ids('?accountId=acct_a')).toEqual([a1.id, a2.id]);
      expect(await ids('?accountId=acct_a&includeRevoked=true')).toEqual([a1.id, a2.id, gone.id]);
      expect(await ids('?includeRevoked=false')).toEqual([a1.id, a2.id, b1.id]);
      expect(await ids(`?parentId=${a1.id}`)).toEqual([a2.id]);
      expect(await ids(`?parentId=${b1.id}`)).toEqual([]);
      expect(await ids('?accountId=acct_none')).toEqual([]);
      expect(await ids('?limit=1')).toEqual([a1.id]);
      expect(await ids('?limit=00002')).toEqual([a1.id, a2.id]);
      const [row] = await db.query<{ key_hash: string }>(`SELECT key_hash FROM ${ak.tableName} WHERE id = $1`, [a1.id]);
      const all = await svc.admin('GET', '/v1/keys');
      expect(all.text).not.toContain(row?.key_hash as string);
      expect(all.body.keys[0]).toMatchObject({ id: a1.id, spentCents: 4, remainingCents: 6 });
      expect(all.body.keys[1]).toMatchObject({ id: a2.id, parentId: a1.id, depth: 1, spentCents: 4 });
    });

    it('error: bad query values and unknown parameters -> 400', async () => {
      const { ak, svc } = await setup();
      await ak.create({ accountId: 'acct_a' });
      const cases: [string, string][] = [
        ['limit=0', 'invalid_argument'],
        ['limit=10001', 'invalid_argument'],
        ['limit=99999', 'invalid_argument'],
        ['limit=abc', 'invalid_request'],
        ['limit=-1', 'invalid_request'],
        ['limit=1.5', 'invalid_request'],
        ['limit=', 'invalid_request'],
        ['limit=123456', 'invalid_request'],
        ['includeRevoked=yes', 'invalid_request'],
        ['includeRevoked=1', 'invalid_request'],
        ['includeRevoked=TRUE', 'invalid_request'],
        ['parentId=0', 'invalid_request'],
        ['parentId=abc', 'invalid_request'],
        ['parentId=-1', 'invalid_request'],
        ['parentId=01', 'invalid_request'],
        ['accountId=', 'invalid_request'],
        [`accountId=${'a'.repeat(257)}`, 'invalid_request'],
        ['accountId=a&accountId=b', 'invalid_request'],
        ['account_id=acct_a', 'invalid_request'],
        ['budget_cents=5', 'invalid_request'],
        ['accountId=%00', 'invalid_argument'],
      ];
      for (const [query, code] of cases) {
        const res = await svc.admin('GET', `/v1/keys?${query}`);
        expect(res.status, query).toBe(400);
        expectError(res, 400, code);
      }
    });
  });

  describe('GET /v1/keys/:id', () => {
    it('happy: 200 with the key as getKey() reads it, spend included', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 10, name: 'k' });
      await ak.trackUsage(k.key, { costCents: 2.5 });
      await ak.reserve(k.key, { costCents: 1 });
      const res = await svc.admin('GET', `/v1/keys/${k.id}`);
      expect(res.status).toBe(200);
      expect(res.body).toEqual(await ak.getKey(k.id));
      expect(res.body).toMatchObject({ id: k.id, name: 'k', spentCents: 2.5, heldCents: 1, remainingCents: 6.5 });
      expect(res.text).not.toContain(k.key);
    });

    it("error: ids that are not key ids ('abc', '0', ...) -> 400; an unknown id -> 404 key_not_found", async () => {
      const { ak, svc } = await setup();
      await ak.create({ accountId: 'acct_a' });
      for (const id of ['abc', '0', '-1', '1.5', '01', '1e3', '0x10', '%20', '12345678901234567', '1%00', "1'--", 'null']) {
        const res = await svc.admin('GET', `/v1/keys/${id}`);
        expect(res.status, id).toBe(400);
        expectError(res, 400);
      }
      // 16 digits pass the pattern but are past the largest safe id.
      expectError(await svc.admin('GET', '/v1/keys/9999999999999999'), 400);
      expectError(await svc.admin('GET', '/v1/keys/999999'), 404, 'key_not_found');
      expectError(await svc.admin('GET', `/v1/keys/${Number.MAX_SAFE_INTEGER}`), 404, 'key_not_found');
    });
  });

  describe('POST /v1/keys/:id/revoke', () => {
    it('happy: revokes the key and its whole subtree, and only that; a second revoke says revoked: false', async () => {
      const { ak, svc } = await setup();
      const root = await ak.create({ accountId: 'acct_a', budgetCents: 100 });
      const child = await ak.create({ accountId: 'acct_a', parentId: root.id });
      const grandchild = await ak.create({ accountId: 'acct_a', parentId: child.id });
      const sibling = await ak.create({ accountId: 'acct_a' });
      const other = await ak.create({ accountId: 'acct_b' });
      // Seen (and cached) as valid before the revoke.
      expect((await svc.post('/v1/verify', { key: grandchild.key })).body.valid).toBe(true);

      const res = await svc.admin('POST', `/v1/keys/${root.id}/revoke`);
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({ id: root.id, revoked: true, key: { id: root.id, status: 'revoked', revokedAt: expect.any(String) } });
      for (const k of [root, child, grandchild]) {
        expect((await ak.getKey(k.id))?.status).toBe('revoked');
        expect((await svc.post('/v1/verify', { key: k.key })).body).toEqual({ valid: false, reason: 'revoked' });
        expectError(await svc.post('/v1/charge', { key: k.key, costCents: 1 }), 401, 'key_revoked');
        expectError(await svc.post('/v1/reservations', { key: k.key, costCents: 1 }), 401, 'key_revoked');
      }
      for (const k of [sibling, other]) expect((await ak.getKey(k.id))?.status).toBe('active');
      expect(await ak.usage()).toMatchObject({ count: 0 });

      const again = await svc.admin('POST', `/v1/keys/${child.id}/revoke`);
      expect(again.status).toBe(200);
      expect(again.body).toMatchObject({ id: child.id, revoked: false, key: { status: 'revoked' } });
    });

    it('happy: revoking a child leaves its parent and siblings active', async () => {
      const { ak, svc } = await setup();
      const root = await ak.create({ accountId: 'acct_a' });
      const a = await ak.create({ accountId: 'acct_a', parentId: root.id });
      const b = await ak.create({ accountId: 'acct_a', parentId: root.id });
      expect((await svc.admin('POST', `/v1/keys/${a.id}/revoke`)).body.revoked).toBe(true);
      expect((await ak.getKey(a.id))?.status).toBe('revoked');
      expect((await ak.getKey(root.id))?.status).toBe('active');
      expect((await ak.getKey(b.id))?.status).toBe('active');
    });

    it('error: bad ids -> 400, an unknown id -> 404 key_not_found; nothing is revoked', async () => {
      const { ak, svc } = await setup();
      await ak.create({ accountId: 'acct_a' });
      const before = await snapshot(ak);
      for (const id of ['abc', '0', '-1', '1.5', '01', '9999999999999999']) expectError(await svc.admin('POST', `/v1/keys/${id}/revoke`), 400);
      expectError(await svc.admin('POST', '/v1/keys/424242/revoke'), 404, 'key_not_found');
      // A body is not needed, and a non-JSON one is still refused before anything happens.
      expectError(await svc.send('POST', `/v1/keys/${before.keys[0]?.id}/revoke`, { bearer: ADMIN, raw: 'now', type: 'text/plain' }), 415, 'unsupported_media_type');
      expect(await snapshot(ak)).toEqual(before);
    });
  });

  describe('/v1/accounts/:id/budget', () => {
    it('happy: PUT sets the ceiling, every key of the account counts against it, GET shows spend and holds, DELETE removes it', async () => {
      const { ak, svc } = await setup();
      const k1 = await ak.create({ accountId: 'acct_x' });
      const k2 = await ak.create({ accountId: 'acct_x' });
      const outsider = await ak.create({ accountId: 'acct_y' });

      const put = await svc.admin('PUT', '/v1/accounts/acct_x/budget', { budgetCents: 10, budgetPeriod: 'month' });
      expect(put.status).toBe(200);
      expect(put.body).toMatchObject({ accountId: 'acct_x', budgetCents: 10, budgetPeriod: 'month', spentCents: 0, heldCents: 0, remainingCents: 10, budgetResetAt: expect.any(String) });
      expect(await ak.getAccountBudget('acct_x')).toEqual(put.body);

      expect((await svc.post('/v1/charge', { key: k1.key, costCents: 6 })).status).toBe(200);
      const refused = await svc.post('/v1/charge', { key: k2.key, costCents: 5 });
      expectError(refused, 429, 'budget_exceeded');
      expect(refused.body.error.limitedBy).toEqual({ kind: 'account', accountId: 'acct_x' });
      expect(await ak.getKey(k2.id)).toMatchObject({ spentCents: 0 });
      expect((await svc.post('/v1/charge', { key: outsider.key, costCents: 50 })).status).toBe(200);
      expect((await svc.post('/v1/reservations', { key: k2.key, costCents: 3 })).status).toBe(201);

      const get = await svc.admin('GET', '/v1/accounts/acct_x/budget');
      expect(get.status).toBe(200);
      expect(get.body).toMatchObject({ accountId: 'acct_x', budgetCents: 10, spentCents: 6, heldCents: 3, remainingCents: 1 });

      // A new ceiling replaces the old one, keeping the spend.
      const raised = await svc.admin('PUT', '/v1/accounts/acct_x/budget', { budgetCents: 20, budgetPeriod: null });
      expect(raised.body).toMatchObject({ budgetCents: 20, budgetPeriod: null, spentCents: 6, remainingCents: 11 });

      const del = await svc.admin('DELETE', '/v1/accounts/acct_x/budget');
      expect(del.status).toBe(200);
      expect(del.body).toEqual({ accountId: 'acct_x', removed: true });
      expect(await ak.getAccountBudget('acct_x')).toBeNull();
      expectError(await svc.admin('GET', '/v1/accounts/acct_x/budget'), 404, 'not_found');
      expectError(await svc.admin('DELETE', '/v1/accounts/acct_x/budget'), 404, 'not_found');
      expect((await svc.post('/v1/charge', { key: k2.key, costCents: 50 })).status).toBe(200);
    });

    it('happy: a numeric account id and an id with odd characters are account ids like any other', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 7 });
      expect((await svc.admin('PUT', '/v1/accounts/7/budget', { budgetCents: 1 })).status).toBe(200);
      expectError(await svc.post('/v1/charge', { key: k.key, costCents: 2 }), 429, 'budget_exceeded');
      const odd = await svc.admin('PUT', `/v1/accounts/${encodeURIComponent('org/team a')}/budget`, { budgetCents: 5 });
      expect(odd.status).toBe(200);
      expect(odd.body.accountId).toBe('org/team a');
      expect(await ak.getAccountBudget('org/team a')).toMatchObject({ budgetCents: 5 });
      expectError(await svc.admin('GET', '/v1/accounts/0/budget'), 404, 'not_found');
    });

    it('error: bad bodies and ids -> 400, a huge body -> 413; the ceiling is neither created nor changed', async () => {
      const { ak, svc } = await setup();
      await ak.setAccountBudget('acct_set', { budgetCents: 10, budgetPeriod: 'day' });
      const setBefore = await ak.getAccountBudget('acct_set');
      const bodies: [unknown, string][] = [
        [{}, 'invalid_request'],
        [{ budgetCents: null }, 'invalid_request'],
        [{ budgetCents: -1 }, 'invalid_request'],
        [{ budgetCents: 'ten' }, 'invalid_request'],
        [{ budgetCents: 1e12 }, 'invalid_request'],
        [{ budget_cents: 10 }, 'invalid_request'],
        [{ budgetCents: 10, budgetPeriod: 'week' }, 'invalid_request'],
        [{ budgetCents: 10, accountId: 'acct_other' }, 'invalid_request'],
        [[10], 'invalid_request'],
        [10, 'invalid_request'],
      ];
      for (const account of ['acct_new', 'acct_set']) {
        for (const [json, code] of bodies) {
          const res = await svc.send('PUT', `/v1/accounts/${account}/budget`, { bearer: ADMIN, raw: JSON.stringify(json) });
          expect(res.status, JSON.stringify(json)).toBe(400);
          expectError(res, 400, code);
        }
        expectError(await svc.send('PUT', `/v1/accounts/${account}/budget`, { bearer: ADMIN, raw: '{"budgetCents": 5' }), 400, 'invalid_json');
        expectError(await svc.send('PUT', `/v1/accounts/${account}/budget`, { bearer: ADMIN }), 400, 'invalid_request');
        expectError(await svc.admin('PUT', `/v1/accounts/${account}/budget`, { budgetCents: 5, pad: 'x'.repeat(70_000) }), 413, 'body_too_large');
        expectError(await svc.send('PUT', `/v1/accounts/${account}/budget`, { bearer: ADMIN, raw: 'budgetCents=5', type: 'application/x-www-form-urlencoded' }), 415, 'unsupported_media_type');
      }
      const long = 'a'.repeat(257);
      expectError(await svc.admin('PUT', `/v1/accounts/${long}/budget`, { budgetCents: 5 }), 400, 'invalid_request');
      expectError(await svc.admin('GET', `/v1/accounts/${long}/budget`), 400, 'invalid_request');
      expectError(await svc.admin('DELETE', `/v1/accounts/${long}/budget`), 400, 'invalid_request');
      expect(await ak.getAccountBudget('acct_new')).toBeNull();
      expect(await ak.getAccountBudget(long.slice(0, 256))).toBeNull();
      expect(await ak.getAccountBudget('acct_set')).toEqual(setBefore);
    });
  });

  describe('GET /v1/accounts and GET /v1/ledger', () => {
    it('happy: accounts with keys or a ceiling, their key counts, lifetime spend and ceiling', async () => {
      const { ak, svc } = await setup();
      expect((await svc.admin('GET', '/v1/accounts')).body).toEqual({ accounts: [] });
      const a1 = await ak.create({ accountId: 'acct_a', budgetCents: 100 });
      const a2 = await ak.create({ accountId: 'acct_a' });
      await ak.create({ accountId: 'acct_b' });
      await ak.revoke(a2.id);
      await ak.setAccountBudget('acct_c', { budgetCents: 300, budgetPeriod: 'month' });
      await ak.setAccountBudget('acct_a', { budgetCents: 1000 });
      expect((await svc.post('/v1/charge', { key: a1.key, costCents: 12.5 })).status).toBe(200);
      expect((await svc.post('/v1/reservations', { key: a1.key, costCents: 5 })).status).toBe(201);
      const res = await svc.admin('GET', '/v1/accounts');
      expect(res.status).toBe(200);
      expect(res.body.accounts.map((a: { accountId: string }) => a.accountId)).toEqual(['acct_a', 'acct_b', 'acct_c']);
      const [a, b, c] = res.body.accounts;
      expect(a).toMatchObject({ keys: 2, liveKeys: 1, spentCents: 12.5, ceiling: { accountId: 'acct_a', budgetCents: 1000, spentCents: 12.5, heldCents: 5, remainingCents: 982.5, budgetPeriod: null } });
      expect(b).toEqual({ accountId: 'acct_b', keys: 1, liveKeys: 1, spentCents: 0, overageCents: 0, ceiling: null });
      expect(c).toMatchObject({ keys: 0, liveKeys: 0, spentCents: 0, ceiling: { budgetCents: 300, budgetPeriod: 'month' } });
      expect((await svc.admin('GET', '/v1/accounts?limit=1')).body.accounts).toHaveLength(1);
    });

    it('happy: ledger rows newest first with kind, amount and metadata, per key or account, paged with before', async () => {
      const { ak, svc } = await setup();
      const k1 = await ak.create({ accountId: 'acct_l' });
      const k2 = await ak.create({ accountId: 'acct_m' });
      expect((await svc.post('/v1/charge', { key: k1.key, costCents: 1.5, metadata: { model: 'm1', inputTokens: 10 } })).status).toBe(200);
      const hold = await svc.post('/v1/reservations', { key: k1.key, costCents: 4 });
      expect((await svc.post(`/v1/reservations/${hold.body.reservationId}/commit`, { key: k1.key, costCents: 3 })).status).toBe(200);
      expect((await svc.post('/v1/charge', { key: k2.key, costCents: 2 })).status).toBe(200);
      const rows = (await svc.admin('GET', `/v1/ledger?keyId=${k1.id}`)).body.entries;
      expect(rows.map((r: { kind: string; amountCents: number }) => [r.kind, r.amountCents])).toEqual([['commit', 3], ['hold', 4], ['charge', 1.5]]);
      expect(rows[2]).toMatchObject({ keyId: k1.id, accountId: 'acct_l', metadata: { model: 'm1', inputTokens: 10 }, reservationId: null });
      expect(rows[1].reservationId).toBe(hold.body.reservationId);
      expect(rows[0].id).toBeGreaterThan(rows[1].id);
      const page = (await svc.admin('GET', `/v1/ledger?keyId=${k1.id}&limit=1&before=${rows[0].id}`)).body.entries;
      expect(page.map((r: { id: number }) => r.id)).toEqual([rows[1].id]);
      expect((await svc.admin('GET', '/v1/ledger?accountId=acct_m')).body.entries.map((r: { keyId: number }) => r.keyId)).toEqual([k2.id]);
      expect((await svc.admin('GET', '/v1/ledger')).body.entries).toHaveLength(4);
    });

    it('error: bad query values are 400 and unknown fields are refused', async () => {
      const { svc } = await setup();
      for (const path of ['/v1/accounts?limit=0', '/v1/accounts?limit=x', '/v1/accounts?accountId=a', '/v1/ledger?keyId=abc', '/v1/ledger?limit=1001', '/v1/ledger?before=0', '/v1/ledger?kind=charge']) {
        const res = await svc.admin('GET', path);
        expect(res.status, path).toBe(400);
        expectError(res, 400);
      }
    });
  });

  describe('GET /v1/usage', () => {
    it('happy: charges and commits made over HTTP show up in totals, per key, per account, in hourly and daily buckets, within since/until', async () => {
      const { ak, svc } = await setup();
      const start = new Date(Date.now() - 1_000).toISOString();
      const k1 = await ak.create({ accountId: 'acct_u', budgetCents: 100 });
      const k2 = await ak.create({ accountId: 'acct_u' });
      const k3 = await ak.create({ accountId: 'acct_v' });
      for (const [key, costCents] of [[k1.key, 1.25], [k1.key, 2], [k2.key, 0.5], [k3.key, 4]] as const) {
        expect((await svc.post('/v1/charge', { key, costCents })).status).toBe(200);
      }
      const hold = await svc.post('/v1/reservations', { key: k1.key, costCents: 3 });
      expect((await svc.post(`/v1/reservations/${hold.body.reservationId}/commit`, { key: k1.key, costCents: 1 })).status).toBe(200);
      // A refused charge and a released hold are no spend.
      expect((await svc.post('/v1/charge', { key: k1.key, costCents: 1_000 })).status).toBe(429);
      const other = await svc.post('/v1/reservations', { key: k2.key, costCents: 2 });
      expect((await svc.post(`/v1/reservations/${other.body.reservationId}/release`, { key: k2.key })).status).toBe(200);

      const usage = async (query: string) => {
        const res = await svc.admin('GET', `/v1/usage${query}`);
        expect(res.status, query).toBe(200);
        return res.body as { totalCents: number; count: number; buckets: { start: string; costCents: number; count: number }[] };
      };
      expect(await usage('')).toEqual({ totalCents: 8.75, count: 5, overageCents: 0, buckets: [] });
      expect(await usage(`?keyId=${k1.id}`)).toEqual({ totalCents: 4.25, count: 3, overageCents: 0, buckets: [] });
      expect(await usage('?accountId=acct_u')).toEqual({ totalCents: 4.75, count: 4, overageCents: 0, buckets: [] });
      expect(await usage('?accountId=acct_v')).toEqual({ totalCents: 4, count: 1, overageCents: 0, buckets: [] });
      expect(await usage(`?keyId=${k3.id}&accountId=acct_u`)).toEqual({ totalCents: 0, count: 0, overageCents: 0, buckets: [] });
      expect(await usage('?accountId=acct_none')).toEqual({ totalCents: 0, count: 0, overageCents: 0, buckets: [] });
      expect(await usage(`?since=${encodeURIComponent(start)}`)).toMatchObject({ totalCents: 8.75, count: 5 });
      expect(await usage(`?until=${encodeURIComponent(start)}`)).toMatchObject({ totalCents: 0, count: 0 });
      expect(await usage(`?since=${encodeURIComponent(new Date(Date.now() + 3_600_000).toISOString())}`)).toMatchObject({ totalCents: 0, count: 0 });

      for (const bucket of ['hour', 'day'] as const) {
        const report = await usage(`?accountId=acct_u&bucket=${bucket}`);
        expect(report).toMatchObject({ totalCents: 4.75, count: 4 });
        expect(report.buckets.length).toBeGreaterThanOrEqual(1);
        expect(report.buckets.reduce((s, b) => s + b.costCents, 0)).toBeCloseTo(4.75, 10);
        expect(report.buckets.reduce((s, b) => s + b.count, 0)).toBe(4);
        for (const b of report.buckets) expect(b.start).toMatch(bucket === 'hour' ? /T\d\d:00:00\.000Z$/ : /T00:00:00\.000Z$/);
        expect(report).toEqual(await ak.usage({ accountId: 'acct_u', bucket }));
      }
    });

    it('error: bad query values and unknown parameters -> 400', async () => {
      const { svc } = await setup();
      const cases: [string, string][] = [
        ['bucket=week', 'invalid_request'],
        ['bucket=', 'invalid_request'],
        ['bucket=HOUR', 'invalid_request'],
        ['keyId=abc', 'invalid_request'],
        ['keyId=0', 'invalid_request'],
        ['keyId=-3', 'invalid_request'],
        ['keyId=9999999999999999', 'invalid_argument'],
        ['since=yesterday', 'invalid_argument'],
        ['since=', 'invalid_request'],
        ['until=not-a-date', 'invalid_argument'],
        ['until=2026-01-01T25:00:00Z', 'invalid_argument'],
        ['since=1e400', 'invalid_argument'],
        [`since=${'2'.repeat(65)}`, 'invalid_request'],
        ['accountId=', 'invalid_request'],
        ['accountId=%00', 'invalid_argument'],
        ['key_id=1', 'invalid_request'],
        ['keyId=1&keyId=2', 'invalid_request'],
      ];
      for (const [query, code] of cases) {
        const res = await svc.admin('GET', `/v1/usage?${query}`);
        expect(res.status, query).toBe(400);
        expectError(res, 400, code);
      }
    });

    it('error: since/until that are not ISO 8601 instants (\'-1\', \'12\', \'2026-02-30\') -> 400, not a silently different window', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a' });
      await ak.trackUsage(k.key, { costCents: 1 });
      const got: Record<string, unknown> = {};
      for (const query of ['since=-1', 'since=12', 'until=2026-02-30', 'since=March%207']) {
        const res = await svc.admin('GET', `/v1/usage?${query}`);
        got[query] = res.status === 400 ? 400 : res.body;
      }
      expect(got).toEqual({ 'since=-1': 400, 'since=12': 400, 'until=2026-02-30': 400, 'since=March%207': 400 });
    });

    it('error: since/until past the year 9999 are the client\'s values: 200 or 400, never a 5xx', async () => {
      const { svc } = await setup();
      const got: Record<string, number> = {};
      for (const query of ['since=10000-01-01', 'since=99999-01-01', 'until=%2B275760-09-13T00:00:00Z', 'since=0000-01-01']) {
        const res = await svc.admin('GET', `/v1/usage?${query}`);
        got[query] = res.status;
        if (res.status >= 400) expectShape(res);
      }
      for (const [query, status] of Object.entries(got)) expect([query, [200, 400].includes(status) ? 'ok' : status]).toEqual([query, 'ok']);
    });
  });

  describe('POST /v1/verify', () => {
    it('happy: always 200: valid with the key\'s metadata, or valid false with a reason (insufficient_scope names the scope)', async () => {
      const { db, ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', scopes: ['proxy.chat'], budgetCents: 10, name: 'bot', delegatedBy: 'user_1' });
      const revoked = await ak.create({ accountId: 'acct_a' });
      await ak.revoke(revoked.id);
      const expired = await ak.create({ accountId: 'acct_a', expiresIn: '1h' });
      await expireKey(db, ak, expired.id);
      await ak.trackUsage(k.key, { costCents: 2 });

      const ok = await svc.post('/v1/verify', { key: k.key });
      expect(ok.status).toBe(200);
      expect(ok.body).toMatchObject({ valid: true, keyId: k.id, accountId: 'acct_a', name: 'bot', scopes: ['proxy.chat'], budgetCents: 10, budgetUsedCents: 2, budgetRemainingCents: 8, delegatedBy: 'user_1' });
      expect(ok.text).not.toContain(k.key);
      expect((await svc.post('/v1/verify', { key: k.key, scope: 'proxy.chat' })).body).toMatchObject({ valid: true, keyId: k.id });
      const cases: [unknown, unknown][] = [
        [{ key: k.key, scope: 'billing.write' }, { valid: false, reason: 'insufficient_scope', requiredScope: 'billing.write' }],
        [{ key: k.key, scope: 'admin' }, { valid: false, reason: 'insufficient_scope', requiredScope: 'admin' }],
        [{ key: revoked.key }, { valid: false, reason: 'revoked' }],
        [{ key: revoked.key, scope: 'proxy.chat' }, { valid: false, reason: 'revoked' }],
        [{ key: expired.key }, { valid: false, reason: 'expired' }],
        [{ key: 'ak_garbage' }, { valid: false, reason: 'invalid' }],
        [{ key: 'hello' }, { valid: false, reason: 'invalid' }],
        [{ key: UNKNOWN_KEY }, { valid: false, reason: 'invalid' }],
        // The admin key is no agent key.
        [{ key: ADMIN }, { valid: false, reason: 'invalid' }],
      ];
      for (const [body, expected] of cases) {
        const res = await svc.post('/v1/verify', body);
        expect(res.status, JSON.stringify(body)).toBe(200);
        expect(res.body).toEqual(expected);
      }
    });

    it('security: verifying spends nothing and changes no key', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 10 });
      const before = await snapshot(ak);
      for (let i = 0; i < 5; i++) expect((await svc.post('/v1/verify', { key: k.key, scope: 'x' })).status).toBe(200);
      expect(await snapshot(ak)).toEqual(before);
    });

    it('error: missing, wrong-typed or unknown fields, malformed JSON, a huge body -> 400/413', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a' });
      const bodies: [unknown, string][] = [
        [{}, 'invalid_request'],
        [{ key: '' }, 'invalid_request'],
        [{ key: 5 }, 'invalid_request'],
        [{ key: null }, 'invalid_request'],
        [{ key: [k.key] }, 'invalid_request'],
        [{ key: 'k'.repeat(513) }, 'invalid_request'],
        [{ key: k.key, scope: '' }, 'invalid_request'],
        [{ key: k.key, scope: ['proxy.chat'] }, 'invalid_request'],
        [{ key: k.key, scopes: 'proxy.chat' }, 'invalid_request'],
        [{ apiKey: k.key }, 'invalid_request'],
        [[k.key], 'invalid_request'],
        [k.key, 'invalid_request'],
      ];
      for (const [json, code] of bodies) expectError(await svc.send('POST', '/v1/verify', { raw: JSON.stringify(json) }), 400, code);
      expectError(await svc.send('POST', '/v1/verify', { raw: `{"key":"${k.key}"` }), 400, 'invalid_json');
      expectError(await svc.send('POST', '/v1/verify', {}), 400, 'invalid_request');
      expectError(await svc.post('/v1/verify', { key: k.key, pad: 'x'.repeat(70_000) }), 413, 'body_too_large');
      expectError(await svc.send('POST', '/v1/verify', { raw: `key=${k.key}`, type: 'application/x-www-form-urlencoded' }), 415, 'unsupported_media_type');
      // The key in a header is not how /v1/verify is asked.
      expectError(await svc.send('POST', '/v1/verify', { raw: '{}', bearer: k.key }), 400, 'invalid_request');
    });
  });

  describe('POST /v1/charge', () => {
    it('happy: 200 with the new figures; the spend is in the key, the ledger and GET /v1/keys/:id', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 10 });
      const res = await svc.post('/v1/charge', { key: k.key, costCents: 2.5, metadata: { model: 'gpt-x', inputTokens: 1200 } });
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ success: true, budgetUsedCents: 2.5, budgetRemainingCents: 7.5 });
      expect(await ak.getKey(k.id)).toMatchObject({ spentCents: 2.5, remainingCents: 7.5 });
      expect(await ak.usage({ keyId: k.id })).toMatchObject({ totalCents: 2.5, count: 1 });
      expect((await svc.admin('GET', `/v1/keys/${k.id}`)).body).toMatchObject({ spentCents: 2.5 });
      // Cents down to 0.0001, rounded up (never under-charged); 0 succeeds but records nothing (as in the package).
      expect((await svc.post('/v1/charge', { key: k.key, costCents: 0.00005 })).body).toEqual({ success: true, budgetUsedCents: 2.5001, budgetRemainingCents: 7.4999 });
      const free = await svc.post('/v1/charge', { key: k.key, costCents: 0 });
      expect(free.status).toBe(200);
      expect(free.body).toEqual({ success: true });
      expect(await ak.usage({ keyId: k.id })).toMatchObject({ totalCents: 2.5001, count: 2 });
      // Up to exactly what is left.
      expect((await svc.post('/v1/charge', { key: k.key, costCents: 7.4999 })).body).toEqual({ success: true, budgetUsedCents: 10, budgetRemainingCents: 0 });
      // An unbudgeted key has no remaining figure.
      const open = await ak.create({ accountId: 'acct_a' });
      expect((await svc.post('/v1/charge', { key: open.key, costCents: 1e6 })).body).toEqual({ success: true, budgetUsedCents: 1e6, budgetRemainingCents: null });
    });

    it('happy: an idempotency key charges once; the same key with another cost -> 409 idempotency_conflict', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 10 });
      const first = await svc.post('/v1/charge', { key: k.key, costCents: 3, idempotencyKey: 'req-1' });
      expect(first.body).toEqual({ success: true, budgetUsedCents: 3, budgetRemainingCents: 7 });
      const retry = await svc.post('/v1/charge', { key: k.key, costCents: 3, idempotencyKey: 'req-1' });
      expect(retry.status).toBe(200);
      expect(retry.body).toMatchObject({ success: true, replayed: true });
      expectError(await svc.post('/v1/charge', { key: k.key, costCents: 4, idempotencyKey: 'req-1' }), 409, 'idempotency_conflict');
      expect(await ak.getKey(k.id)).toMatchObject({ spentCents: 3 });
      expect(await ak.usage({ keyId: k.id })).toMatchObject({ totalCents: 3, count: 1 });
      // Idempotency keys are per key: another key may use the same one.
      const other = await ak.create({ accountId: 'acct_a' });
      expect((await svc.post('/v1/charge', { key: other.key, costCents: 4, idempotencyKey: 'req-1' })).body).toMatchObject({ success: true });
      expect((await svc.post('/v1/charge', { key: other.key, costCents: 4, idempotencyKey: 'req-1' })).body).toMatchObject({ replayed: true });
    });

    it('error: past the budget -> 429 budget_exceeded saying which budget (key or ancestor); nothing is charged', async () => {
      const { ak, svc } = await setup();
      const parent = await ak.create({ accountId: 'acct_a', budgetCents: 5 });
      const child = await ak.create({ accountId: 'acct_a', parentId: parent.id, budgetCents: 4 });
      await ak.trackUsage(parent.key, { costCents: 2 });
      const before = await snapshot(ak);
      const own = await svc.post('/v1/charge', { key: child.key, costCents: 4.0001 });
      expectError(own, 429, 'budget_exceeded');
      expect(own.body.error).toMatchObject({ limitedBy: { kind: 'key', keyId: child.id }, budgetUsedCents: 0, budgetRemainingCents: 4 });
      const ancestor = await svc.post('/v1/charge', { key: child.key, costCents: 3.5 });
      expectError(ancestor, 429, 'budget_exceeded');
      expect(ancestor.body.error.limitedBy).toEqual({ kind: 'ancestor', keyId: parent.id });
      expectError(await svc.post('/v1/charge', { key: parent.key, costCents: 3.0001, idempotencyKey: 'i' }), 429, 'budget_exceeded');
      expect(await snapshot(ak)).toEqual(before);
      // The refused idempotency key was not used up.
      expect((await svc.post('/v1/charge', { key: parent.key, costCents: 1, idempotencyKey: 'i' })).body).toMatchObject({ success: true, budgetUsedCents: 3 });
    });

    it('security: the admin key, a garbage, unknown, revoked or expired key -> 401 with its code; nothing is charged', async () => {
      const { db, ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 10 });
      const revoked = await ak.create({ accountId: 'acct_a' });
      await ak.revoke(revoked.id);
      const expired = await ak.create({ accountId: 'acct_a', expiresIn: '1h' });
      await expireKey(db, ak, expired.id);
      const before = await snapshot(ak);
      const cases: [string, string][] = [
        [ADMIN, 'invalid_key'],
        ['ak_garbage', 'invalid_key'],
        [UNKNOWN_KEY, 'invalid_key'],
        [`${k.key}x`, 'invalid_key'],
        [k.key.toUpperCase(), 'invalid_key'],
        ['hello', 'invalid_key'],
        [revoked.key, 'key_revoked'],
        [expired.key, 'key_expired'],
      ];
      for (const [key, code] of cases) {
        expectError(await svc.post('/v1/charge', { key, costCents: 1 }), 401, code);
        // The bearer is not what /v1/charge reads: the body's key is.
        expectError(await svc.post('/v1/charge', { key, costCents: 1 }, k.key), 401, code);
      }
      // Nor does an admin bearer make the admin key an agent key.
      expectError(await svc.post('/v1/charge', { key: ADMIN, costCents: 1 }, ADMIN), 401, 'invalid_key');
      expect(await snapshot(ak)).toEqual(before);
    });

    it('happy: amounts may be decimal strings, read exactly: a key, a charge, a hold and its commit', async () => {
      const { ak, svc } = await setup();
      const created = await svc.post('/v1/keys', { accountId: 'acct_s', budgetCents: '10.5' }, ADMIN);
      expect(created.status).toBe(201);
      const { key, id } = created.body as { key: string; id: number };
      const charged = await svc.post('/v1/charge', { key, costCents: '0.30000000000000004' });
      expect(charged.status).toBe(200);
      expect(charged.body).toMatchObject({ success: true, budgetUsedCents: 0.3001 });
      // a number with float noise is charged as the decimal it came from
      expect((await svc.post('/v1/charge', { key, costCents: 0.1 + 0.2 })).body).toMatchObject({ budgetUsedCents: 0.6001 });
      const held = await svc.post('/v1/reservations', { key, costCents: '2' });
      expect(held.status).toBe(201);
      const rid = (held.body as { reservationId: string }).reservationId;
      const committed = await svc.post(`/v1/reservations/${rid}/commit`, { key, costCents: '1.25' });
      expect(committed.body).toMatchObject({ success: true, costCents: 1.25, releasedCents: 0.75 });
      expect(await ak.getKey(id)).toMatchObject({ budgetCents: 10.5, spentCents: 1.8501 });
    });

    it('error: missing, wrong-typed and unknown fields, malformed JSON, huge bodies -> 400/413/415; nothing is charged', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 10 });
      const before = await snapshot(ak);
      const bodies: [unknown, string, RegExp?][] = [
        [{}, 'invalid_request'],
        [{ key: k.key }, 'invalid_request', /costCents/],
        [{ costCents: 1 }, 'invalid_request', /key/],
        [{ key: k.key, costCents: '1e0' }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: '-1' }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: '1000000000000' }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: -1 }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: -0.0001 }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: 1e12 }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: null }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: [1] }, 'invalid_request', /costCents/],
        [{ key: k.key, costCents: { cents: 1 } }, 'invalid_request', /costCents/],
        [{ key: k.key, cost_cents: 1 }, 'invalid_request'],
        [{ key: k.key, costCents: 1, budget_cents: 1 }, 'invalid_request', /budget_cents/],
        [{ key: k.key, costCents: 1, accountId: 'acct_b' }, 'invalid_request', /accountId/],
        [{ key: k.key, costCents: 1, metadata: 'gpt' }, 'invalid_request', /metadata/],
        [{ key: k.key, costCents: 1, metadata: [1] }, 'invalid_request', /metadata/],
        [{ key: k.key, costCents: 1, metadata: { note: 'nul\u0000' } }, 'invalid_argument'],
        [{ key: k.key, costCents: 1, metadata: { big: 'x'.repeat(9_000) } }, 'invalid_argument'],
        [{ key: k.key, costCents: 1, idempotencyKey: '' }, 'invalid_request', /idempotencyKey/],
        [{ key: k.key, costCents: 1, idempotencyKey: 5 }, 'invalid_request', /idempotencyKey/],
        [{ key: k.key, costCents: 1, idempotencyKey: 'i'.repeat(257) }, 'invalid_request', /idempotencyKey/],
        [{ key: k.key, costCents: 1, idempotencyKey: 'nul\u0000' }, 'invalid_argument'],
        [{ key: 5, costCents: 1 }, 'invalid_request', /key/],
        [{ key: '', costCents: 1 }, 'invalid_request', /key/],
        [[{ key: k.key, costCents: 1 }], 'invalid_request'],
        [1, 'invalid_request'],
        [null, 'invalid_request'],
      ];
      for (const [json, code, names] of bodies) {
        const res = await svc.send('POST', '/v1/charge', { raw: JSON.stringify(json) });
        expect(res.status, JSON.stringify(json).slice(0, 100)).toBe(400);
        expectError(res, 400, code);
        if (names) expect(res.body.error.message).toMatch(names);
      }
      for (const raw of [`{"key":"${k.key}","costCents":1`, `{"key":"${k.key}","costCents":NaN}`, `{"key":"${k.key}","costCents":Infinity}`, `{"key":"${k.key}","costCents":0x10}`, '']) {
        expectError(await svc.send('POST', '/v1/charge', { raw }), 400, 'invalid_json');
      }
      expectError(await svc.send('POST', '/v1/charge', {}), 400, 'invalid_request');
      expectError(await svc.post('/v1/charge', { key: k.key, costCents: 1, metadata: { pad: 'x'.repeat(70_000) } }), 413, 'body_too_large');
      expectError(await svc.send('POST', '/v1/charge', { raw: JSON.stringify({ key: k.key, costCents: 1 }), type: 'text/plain' }), 415, 'unsupported_media_type');
      expect(await snapshot(ak)).toEqual(before);
    });
  });

  describe('POST /v1/reservations', () => {
    it('happy: 201 with a hold that counts against the budget until settled; ttl sets its expiry (default 5m)', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 10 });
      const before = Date.now();
      const res = await svc.post('/v1/reservations', { key: k.key, costCents: 4, ttl: '2m', metadata: { call: 1 } });
      expect(res.status).toBe(201);
      expect(res.body).toMatchObject({ success: true, reservationId: expect.stringMatching(/^rsv_[0-9A-Za-z]{24}$/), budgetRemainingCents: 6 });
      expect(Date.parse(res.body.expiresAt)).toBeGreaterThanOrEqual(before + 120_000 - 1_000);
      expect(Date.parse(res.body.expiresAt)).toBeLessThanOrEqual(Date.now() + 120_000 + 1_000);
      expect(await ak.getKey(k.id)).toMatchObject({ spentCents: 0, heldCents: 4, remainingCents: 6 });
      expect(await ak.getReservation(res.body.reservationId)).toMatchObject({ keyId: k.id, accountId: 'acct_a', heldCents: 4, status: 'held', costCents: null });
      // A hold is not spend.
      expect(await ak.usage()).toMatchObject({ count: 0 });
      // Holds leave less for charges.
      expectError(await svc.post('/v1/charge', { key: k.key, costCents: 6.0001 }), 429, 'budget_exceeded');

      const plain = await svc.post('/v1/reservations', { key: k.key, costCents: 1 });
      expect(plain.status).toBe(201);
      expect(Date.parse(plain.body.expiresAt)).toBeGreaterThanOrEqual(before + 300_000 - 1_000);
      expect(Date.parse(plain.body.expiresAt)).toBeLessThanOrEqual(Date.now() + 300_000 + 1_000);
      expect(await ak.getKey(k.id)).toMatchObject({ heldCents: 5, remainingCents: 5 });
    });

    it('happy: an idempotency key holds once and returns the same reservation', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 10 });
      const first = await svc.post('/v1/reservations', { key: k.key, costCents: 2, idempotencyKey: 'h-1' });
      const retry = await svc.post('/v1/reservations', { key: k.key, costCents: 2, idempotencyKey: 'h-1' });
      expect([first.status, retry.status]).toEqual([201, 201]);
      expect(retry.body).toMatchObject({ reservationId: first.body.reservationId, replayed: true, reservationStatus: 'held' });
      expect(await ak.getKey(k.id)).toMatchObject({ heldCents: 2 });
      expectError(await svc.post('/v1/reservations', { key: k.key, costCents: 3, idempotencyKey: 'h-1' }), 409, 'idempotency_conflict');
      expect(await ak.getKey(k.id)).toMatchObject({ heldCents: 2 });
    });

    it('error: past the budget -> 429, a bad key -> 401, bad fields -> 400, huge -> 413; nothing is held', async () => {
      const { db, ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a', budgetCents: 10 });
      const revoked = await ak.create({ accountId: 'acct_a' });
      await ak.revoke(revoked.id);
      const expired = await ak.create({ accountId: 'acct_a', expiresIn: '1h' });
      await expireKey(db, ak, expired.id);
      const before = await snapshot(ak);
      const over = await svc.post('/v1/reservations', { key: k.key, costCents: 10.0001 });
      expectError(over, 429, 'budget_exceeded');
      expect(over.body.error.limitedBy).toEqual({ kind: 'key', keyId: k.id });
      expectError(await svc.post('/v1/reservations', { key: ADMIN, costCents: 1 }), 401, 'invalid_key');
      expectError(await svc.post('/v1/reservations', { key: 'ak_garbage', costCents: 1 }), 401, 'invalid_key');
      expectError(await svc.post('/v1/reservations', { key: revoked.key, costCents: 1 }), 401, 'key_revoked');
      expectError(await svc.post('/v1/reservations', { key: expired.key, costCents: 1 }), 401, 'key_expired');
      const bodies: [unknown, string][] = [
        [{ key: k.key }, 'invalid_request'],
        [{ key: k.key, costCents: -1 }, 'invalid_request'],
        [{ key: k.key, costCents: ' 1' }, 'invalid_request'],
        [{ key: k.key, costCents: 1, ttl: 60 }, 'invalid_request'],
        [{ key: k.key, costCents: 1, ttl: 'x'.repeat(17) }, 'invalid_request'],
        [{ key: k.key, costCents: 1, ttl: '25h' }, 'invalid_duration'],
        [{ key: k.key, costCents: 1, ttl: '1mo' }, 'invalid_duration'],
        [{ key: k.key, costCents: 1, ttl: '0s' }, 'invalid_duration'],
        [{ key: k.key, costCents: 1, ttl: 'soon' }, 'invalid_duration'],
        [{ key: k.key, costCents: 1, hold: true }, 'invalid_request'],
        [{ key: k.key, costCents: 1, reservationId: UNKNOWN_HOLD }, 'invalid_request'],
        [{ costCents: 1 }, 'invalid_request'],
      ];
      for (const [json, code] of bodies) expectError(await svc.post('/v1/reservations', json), 400, code);
      expectError(await svc.send('POST', '/v1/reservations', { raw: '{"costCents":' }), 400, 'invalid_json');
      expectError(await svc.post('/v1/reservations', { key: k.key, costCents: 1, metadata: { pad: 'x'.repeat(70_000) } }), 413, 'body_too_large');
      expect(await snapshot(ak)).toEqual(before);
    });
  });

  describe('POST /v1/reservations/:id/commit and /release', () => {
    async function holds() {
      const ctx = await setup();
      const { ak, svc } = ctx;
      const owner = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const sibling = await ak.create({ accountId: 'acct_1', scopes: ['admin'] });
      const stranger = await ak.create({ accountId: 'acct_2', scopes: ['admin'] });
      const take = async (costCents: number) => {
        const res = await svc.post('/v1/reservations', { key: owner.key, costCents });
        expect(res.status).toBe(201);
        return res.body.reservationId as string;
      };
      return { ...ctx, owner, sibling, stranger, take };
    }

    it('happy: commit settles the real cost (even past the hold), gives the rest back, and is idempotent; release after it -> 409', async () => {
      const { ak, svc, owner, take } = await holds();
      const h = await take(10);
      const res = await svc.post(`/v1/reservations/${h}/commit`, { key: owner.key, costCents: 12, metadata: { model: 'm' } });
      expect(res.status).toBe(200);
      expect(res.body).toEqual({
        success: true,
        reservationId: h,
        costCents: 12,
        chargedCents: 12,
        overageCents: 0,
        heldCents: 10,
        releasedCents: 0,
        overHoldCents: 2,
        holdExpired: false,
        overBudget: false,
        budgetUsedCents: 12,
        budgetRemainingCents: 88,
      });
      expect(await ak.getKey(owner.id)).toMatchObject({ spentCents: 12, heldCents: 0, remainingCents: 88 });
      expect(await ak.getReservation(h)).toMatchObject({ status: 'committed', costCents: 12 });
      expect(await ak.usage({ keyId: owner.id })).toMatchObject({ totalCents: 12, count: 1 });

      const again = await svc.send('POST', `/v1/reservations/${h}/commit`, { json: { costCents: 12 }, bearer: owner.key });
      expect(again.status).toBe(200);
      expect(again.body).toMatchObject({ replayed: true, costCents: 12 });
      expectError(await svc.send('POST', `/v1/reservations/${h}/release`, { bearer: owner.key }), 409, 'already_committed');
      // A retry that disagrees on the cost is no replay.
      expectError(await svc.send('POST', `/v1/reservations/${h}/commit`, { json: { costCents: 13 }, bearer: owner.key }), 409, 'idempotency_conflict');
      expect(await ak.getKey(owner.id)).toMatchObject({ spentCents: 12, heldCents: 0 });
      expect(await ak.usage({ keyId: owner.id })).toMatchObject({ totalCents: 12, count: 1 });

      // Less than the hold: the rest is given back.
      const h2 = await take(5);
      const less = await svc.post(`/v1/reservations/${h2}/commit`, { key: owner.key, costCents: 1.5 });
      expect(less.body).toMatchObject({ costCents: 1.5, heldCents: 5, releasedCents: 3.5, overHoldCents: 0, budgetUsedCents: 13.5, budgetRemainingCents: 86.5 });
    });

    it('security: a child with a 1¢ budget that holds 0.0001¢ and commits 100¢ is charged its 1¢; the rest is overage, the parent keeps its budget for the other children', async () => {
      const { ak, svc } = await setup();
      const parent = await ak.create({ accountId: 'acct_o', budgetCents: 100 });
      const child = await ak.create({ accountId: 'acct_o', parentId: parent.id, budgetCents: 1 });
      const other = await ak.create({ accountId: 'acct_o', parentId: parent.id, budgetCents: 100 });
      const hold = await svc.post('/v1/reservations', { key: child.key, costCents: 0.0001 });
      expect(hold.status).toBe(201);
      const res = await svc.post(`/v1/reservations/${hold.body.reservationId}/commit`, { key: child.key, costCents: 100 });
      expect(res.status).toBe(200);
      expect(res.body).toMatchObject({
        success: true,
        costCents: 100,
        chargedCents: 1,
        overageCents: 99,
        overBudget: true,
        limitedBy: { kind: 'key', keyId: child.id },
        budgetUsedCents: 1,
        budgetRemainingCents: 0,
      });
      // The parent lost 1¢, not 100¢; its other child still spends.
      expect((await svc.admin('GET', `/v1/keys/${parent.id}`)).body).toMatchObject({ spentCents: 1, remainingCents: 99, overageCents: 0 });
      expect((await svc.admin('GET', `/v1/keys/${child.id}`)).body).toMatchObject({ spentCents: 1, remainingCents: 0, overageCents: 99 });
      expect((await svc.post('/v1/charge', { key: other.key, costCents: 50 })).body).toMatchObject({ success: true, budgetUsedCents: 50 });
      expect((await svc.admin('GET', `/v1/usage?accountId=acct_o`)).body).toMatchObject({ totalCents: 51, overageCents: 99 });
      const ledger = (await svc.admin('GET', `/v1/ledger?keyId=${child.id}`)).body.entries as { kind: string; amountCents: number }[];
      expect(ledger.filter((e) => e.kind === 'overage').map((e) => e.amountCents)).toEqual([99]);
      // /metrics counts what was charged and, apart, the overage.
      const samples = await svc.metrics();
      expect(metric(samples, 'agentkey_charged_cents_total')).toBeCloseTo(51, 10);
      expect(metric(samples, 'agentkey_overage_cents_total')).toBeCloseTo(99, 10);
      expect(metric(samples, 'agentkey_overage_commits_total')).toBe(1);
      // A replay counts nothing more.
      expect((await svc.post(`/v1/reservations/${hold.body.reservationId}/commit`, { key: child.key, costCents: 100 })).body).toMatchObject({ replayed: true, overageCents: 99 });
      expect(metric(await svc.metrics(), 'agentkey_overage_cents_total')).toBeCloseTo(99, 10);
      expect(await ak.audit()).toMatchObject({ ok: true, overageCents: 99 });
    });

    it('happy: release gives the whole hold back (key as bearer, no body; or in the body; or X-API-Key) and is idempotent; commit after it -> 409', async () => {
      const { ak, svc, owner, take } = await holds();
      const h = await take(7);
      const res = await svc.send('POST', `/v1/reservations/${h}/release`, { bearer: owner.key });
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ success: true, reservationId: h, releasedCents: 7, holdExpired: false });
      expect(await ak.getKey(owner.id)).toMatchObject({ spentCents: 0, heldCents: 0, remainingCents: 100 });
      expect(await ak.getReservation(h)).toMatchObject({ status: 'released' });
      expect((await svc.post(`/v1/reservations/${h}/release`, { key: owner.key })).body).toMatchObject({ success: true, replayed: true });
      expectError(await svc.post(`/v1/reservations/${h}/commit`, { key: owner.key, costCents: 1 }), 409, 'already_released');
      expect(await ak.usage()).toMatchObject({ count: 0 });

      const h2 = await take(3);
      expect((await svc.send('POST', `/v1/reservations/${h2}/release`, { headers: { 'x-api-key': owner.key } })).status).toBe(200);
      const h3 = await take(3);
      expect((await svc.send('POST', `/v1/reservations/${h3}/commit`, { json: { costCents: 3 }, headers: { 'x-api-key': owner.key } })).status).toBe(200);
      expect(await ak.getKey(owner.id)).toMatchObject({ spentCents: 3, heldCents: 0 });
    });

    it('happy: the key that took a hold may settle it after it was revoked (the money was spent)', async () => {
      const { ak, svc, owner, take } = await holds();
      const h = await take(4);
      await ak.revoke(owner.id);
      expectError(await svc.post('/v1/charge', { key: owner.key, costCents: 1 }), 401, 'key_revoked');
      const res = await svc.post(`/v1/reservations/${h}/commit`, { key: owner.key, costCents: 4 });
      expect(res.status).toBe(200);
      expect(await ak.getKey(owner.id)).toMatchObject({ spentCents: 4, heldCents: 0, status: 'revoked' });
    });

    it("security: another key's or another account's key's reservation id -> 404 reservation_not_found (never 409 or 200); the hold is untouched", async () => {
      const { ak, svc, owner, sibling, stranger, take } = await holds();
      const h = await take(10);
      const committed = await take(1);
      expect((await svc.post(`/v1/reservations/${committed}/commit`, { key: owner.key, costCents: 1 })).status).toBe(200);
      const before = await snapshot(ak);
      for (const id of [h, committed]) {
        for (const other of [sibling, stranger]) {
          const attempts = [
            await svc.post(`/v1/reservations/${id}/commit`, { key: other.key, costCents: 0 }),
            await svc.send('POST', `/v1/reservations/${id}/commit`, { json: { costCents: 0 }, bearer: other.key }),
            await svc.send('POST', `/v1/reservations/${id}/release`, { bearer: other.key }),
            await svc.post(`/v1/reservations/${id}/release`, { key: other.key }),
            await svc.send('POST', `/v1/reservations/${id}/release`, { headers: { 'x-api-key': other.key } }),
            // The body's key is the one checked, whatever the bearer.
            await svc.post(`/v1/reservations/${id}/commit`, { key: other.key, costCents: 0 }, owner.key),
          ];
          for (const res of attempts) expectError(res, 404, 'reservation_not_found');
        }
        // Keys that are nobody's, or the admin key, are not keys at all.
        for (const key of [ADMIN, 'ak_garbage', UNKNOWN_KEY]) {
          expectError(await svc.post(`/v1/reservations/${id}/commit`, { key, costCents: 0 }), 401, 'invalid_key');
          expectError(await svc.send('POST', `/v1/reservations/${id}/release`, { bearer: key }), 401, 'invalid_key');
        }
        expectError(await svc.post(`/v1/reservations/${id}/commit`, { costCents: 0 }), 401, 'missing_key');
        expectError(await svc.send('POST', `/v1/reservations/${id}/release`, {}), 401, 'missing_key');
        expectError(await svc.send('POST', `/v1/reservations/${id}/release`, { headers: { authorization: `Basic ${owner.key}` } }), 401, 'missing_key');
      }
      expect(await snapshot(ak)).toEqual(before);
      expect(await ak.getReservation(h)).toMatchObject({ keyId: owner.id, status: 'held', heldCents: 10 });
      // The owner still can.
      expect((await svc.post(`/v1/reservations/${h}/commit`, { key: owner.key, costCents: 10 })).status).toBe(200);
    });

    it("error: ids that are nobody's reservation ('abc', '0', ...) -> 404, over-long ids -> 400; nothing changes", async () => {
      const { ak, svc, owner, take } = await holds();
      const h = await take(2);
      const before = await snapshot(ak);
      for (const id of ['abc', '0', '-1', 'rsv_', `rsv_${'0'.repeat(24)}`, `${h}x`, h.toLowerCase(), h.slice(0, -1), '%20', 'null', encodeURIComponent(`${h}/../x`)]) {
        expectError(await svc.post(`/v1/reservations/${id}/commit`, { key: owner.key, costCents: 1 }), 404, 'reservation_not_found');
        expectError(await svc.post(`/v1/reservations/${id}/release`, { key: owner.key }), 404, 'reservation_not_found');
      }
      const long = `rsv_${'a'.repeat(61)}`;
      expectError(await svc.post(`/v1/reservations/${long}/commit`, { key: owner.key, costCents: 1 }), 400, 'invalid_request');
      expectError(await svc.post(`/v1/reservations/${long}/release`, { key: owner.key }), 400, 'invalid_request');
      expect(await snapshot(ak)).toEqual(before);
    });

    it('error: bad commit and release bodies -> 400/413/415; the hold stays held', async () => {
      const { ak, svc, owner, take } = await holds();
      const h = await take(5);
      const before = await snapshot(ak);
      const commits: [unknown, string][] = [
        [{ key: owner.key }, 'invalid_request'],
        [{}, 'invalid_request'],
        [{ key: owner.key, costCents: -1 }, 'invalid_request'],
        [{ key: owner.key, costCents: '0x1' }, 'invalid_request'],
        [{ key: owner.key, costCents: null }, 'invalid_request'],
        [{ key: owner.key, costCents: 1e12 }, 'invalid_request'],
        [{ key: owner.key, costCents: 1, cost: 1 }, 'invalid_request'],
        [{ key: owner.key, costCents: 1, idempotencyKey: 'x' }, 'invalid_request'],
        [{ key: owner.key, costCents: 1, metadata: 'm' }, 'invalid_request'],
        [{ key: 5, costCents: 1 }, 'invalid_request'],
        [{ key: '', costCents: 1 }, 'invalid_request'],
        [[1], 'invalid_request'],
      ];
      for (const [json, code] of commits) expectError(await svc.send('POST', `/v1/reservations/${h}/commit`, { raw: JSON.stringify(json), bearer: owner.key }), 400, code);
      expectError(await svc.send('POST', `/v1/reservations/${h}/commit`, { raw: '{"costCents":1', bearer: owner.key }), 400, 'invalid_json');
      expectError(await svc.send('POST', `/v1/reservations/${h}/commit`, { bearer: owner.key }), 400, 'invalid_request');
      expectError(await svc.post(`/v1/reservations/${h}/commit`, { key: owner.key, costCents: 1, metadata: { pad: 'x'.repeat(70_000) } }), 413, 'body_too_large');
      for (const json of [{ key: owner.key, costCents: 1 }, { reason: 'done' }, { key: 5 }, { key: '' }, [owner.key], 'x']) {
        expectError(await svc.send('POST', `/v1/reservations/${h}/release`, { raw: JSON.stringify(json), bearer: owner.key }), 400, 'invalid_request');
      }
      expectError(await svc.send('POST', `/v1/reservations/${h}/release`, { raw: '{', bearer: owner.key }), 400, 'invalid_json');
      expectError(await svc.send('POST', `/v1/reservations/${h}/release`, { raw: JSON.stringify({ key: owner.key }), type: 'text/plain' }), 415, 'unsupported_media_type');
      expectError(await svc.post(`/v1/reservations/${h}/release`, { key: owner.key, pad: 'x'.repeat(70_000) }), 413, 'body_too_large');
      expect(await snapshot(ak)).toEqual(before);
      expect(await ak.getReservation(h)).toMatchObject({ status: 'held', heldCents: 5 });
    });
  });

  describe('GET /healthz', () => {
    it('happy: 200 with the database while its check passes; 503 unhealthy, with no detail, when it throws', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const up = service(ak, { database: db.name, health: async () => void (await db.query('SELECT 1')) });
      const ok = await up.send('GET', '/healthz');
      expect(ok.status).toBe(200);
      expect(ok.body).toEqual({ status: 'ok', database: db.name });

      const { logger, lines } = memoryLogger();
      const down = service(ak, {
        database: db.name,
        logger,
        health: async () => {
          await db.query('SELECT * FROM no_such_table_for_health');
        },
      });
      const res = await down.send('GET', '/healthz');
      expectError(res, 503, 'unhealthy');
      expect(res.text).not.toMatch(/no_such_table|relation|42P01/);
      expect(JSON.stringify(lines.filter((l) => l.level === 'error'))).toMatch(/no_such_table_for_health/);
    });
  });

  describe('GET /metrics', () => {
    it('happy: Prometheus text counting charges, cents, verifications and requests by route pattern, with the cache counters', async () => {
      const { ak, svc } = await setup();
      const k = await createKey(svc, { accountId: 'acct_m', budgetCents: 10, scopes: ['proxy.chat'] });
      const gone = await createKey(svc, { accountId: 'acct_m' });
      expect((await svc.admin('POST', `/v1/keys/${gone.id}/revoke`)).status).toBe(200);

      expect((await svc.post('/v1/verify', { key: k.key })).body.valid).toBe(true);
      expect((await svc.post('/v1/verify', { key: k.key, scope: 'proxy.chat' })).body.valid).toBe(true);
      expect((await svc.post('/v1/verify', { key: k.key, scope: 'billing' })).body.reason).toBe('insufficient_scope');
      expect((await svc.post('/v1/verify', { key: 'ak_garbage' })).body.reason).toBe('invalid');
      expect((await svc.post('/v1/verify', { key: gone.key })).body.reason).toBe('revoked');

      expect((await svc.post('/v1/charge', { key: k.key, costCents: 2.5 })).status).toBe(200);
      expect((await svc.post('/v1/charge', { key: k.key, costCents: 1.25, idempotencyKey: 'i' })).status).toBe(200);
      expect((await svc.post('/v1/charge', { key: k.key, costCents: 1.25, idempotencyKey: 'i' })).body.replayed).toBe(true);
      expect((await svc.post('/v1/charge', { key: k.key, costCents: 100 })).status).toBe(429);
      expect((await svc.post('/v1/charge', { key: ADMIN, costCents: 1 })).status).toBe(401);
      const hold = await svc.post('/v1/reservations', { key: k.key, costCents: 2 });
      expect((await svc.post(`/v1/reservations/${hold.body.reservationId}/commit`, { key: k.key, costCents: 0.5 })).status).toBe(200);

      for (const id of [k.id, k.id]) expect((await svc.admin('GET', `/v1/keys/${id}`)).status).toBe(200);
      expect((await svc.admin('GET', '/v1/keys/abc')).status).toBe(400);
      expect((await svc.admin('GET', '/v1/keys/424242')).status).toBe(404);
      expect((await svc.send('GET', `/v1/keys/${k.id}`)).status).toBe(401);
      expect((await svc.send('GET', '/nowhere/42')).status).toBe(404);

      const res = await svc.send('GET', '/metrics');
      expect(res.status).toBe(200);
      expect(res.headers['content-type']).toMatch(/^text\/plain/);
      const samples = parseMetrics(res.text);
      const cacheHits = ak.cacheStats()?.hits;

      expect(metric(samples, 'agentkey_charges_total', { kind: 'charge', outcome: 'charged' })).toBe(3);
      expect(metric(samples, 'agentkey_charges_total', { kind: 'charge', outcome: 'budget_exceeded' })).toBe(1);
      expect(metric(samples, 'agentkey_charges_total', { kind: 'commit', outcome: 'charged' })).toBe(1);
      // The replay is not charged twice.
      expect(metric(samples, 'agentkey_charged_cents_total')).toBeCloseTo(4.25, 10);
      expect((await ak.usage({ keyId: k.id })).totalCents).toBeCloseTo(4.25, 10);

      expect(metric(samples, 'agentkey_verifications_total', { outcome: 'valid' })).toBe(2);
      expect(metric(samples, 'agentkey_verifications_total', { outcome: 'insufficient_scope' })).toBe(1);
      expect(metric(samples, 'agentkey_verifications_total', { outcome: 'invalid' })).toBe(1);
      expect(metric(samples, 'agentkey_verifications_total', { outcome: 'revoked' })).toBe(1);

      const requests = (labels: Record<string, string>) => metric(samples, 'agentkey_http_requests_total', labels);
      expect(requests({ method: 'GET', route: '/v1/keys/:id', status: '200' })).toBe(2);
      expect(requests({ method: 'GET', route: '/v1/keys/:id', status: '400' })).toBe(1);
      expect(requests({ method: 'GET', route: '/v1/keys/:id', status: '404' })).toBe(1);
      // Refused by the admin check before the route ran: still labelled by the route's pattern.
      expect(requests({ method: 'GET', route: '/v1/keys/:id', status: '401' })).toBe(1);
      expect(requests({ method: 'POST', route: '/v1/keys', status: '201' })).toBe(2);
      expect(requests({ method: 'POST', route: '/v1/keys/:id/revoke', status: '200' })).toBe(1);
      expect(requests({ method: 'POST', route: '/v1/charge', status: '200' })).toBe(3);
      expect(requests({ method: 'POST', route: '/v1/charge', status: '429' })).toBe(1);
      expect(requests({ method: 'POST', route: '/v1/charge', status: '401' })).toBe(1);
      expect(requests({ method: 'POST', route: '/v1/verify', status: '200' })).toBe(5);
      expect(requests({ method: 'POST', route: '/v1/reservations/:id/commit', status: '200' })).toBe(1);
      expect(requests({ method: 'GET', route: 'unmatched', status: '404' })).toBe(1);
      // Never the raw path: the label set stays small.
      const routes = new Set(samples.filter((s) => s.labels.route !== undefined).map((s) => s.labels.route));
      for (const route of routes) expect(route).not.toMatch(/(^|\/)\d+(\/|$)|rsv_|nowhere|abc/);
      expect(metric(samples, 'agentkey_http_request_duration_seconds_count', { route: '/v1/keys/:id' })).toBe(5);

      for (const name of ['agentkey_cache_hits_total', 'agentkey_cache_misses_total', 'agentkey_cache_evictions_total', 'agentkey_cache_invalidations_total']) {
        expect(metric(samples, name), name).toBeDefined();
      }
      expect(metric(samples, 'agentkey_cache_hits_total')).toBe(cacheHits);
      expect(res.text).toMatch(/^# HELP agentkey_cache_hits_total /m);
      expect(res.text).toMatch(/^# TYPE agentkey_charges_total counter$/m);
      // A charge with a key that is no agent key (401 invalid_key) is counted as 'invalid', as verifications are.
      expect(metric(samples, 'agentkey_charges_total', { kind: 'charge', outcome: 'invalid' })).toBe(1);
    });

    it('happy: agentkey_charged_cents_total counts the cents the ledger recorded (costs are rounded up to 0.0001 cent)', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_m' });
      for (const costCents of [0.00001, 1.23456, 0.00005]) expect((await svc.post('/v1/charge', { key: k.key, costCents })).status).toBe(200);
      const ledger = Number((await ak.usage({ keyId: k.id })).totalCents);
      expect(ledger).toBeCloseTo(1.2348, 10);
      const counted = metric(await svc.metrics(), 'agentkey_charged_cents_total');
      expect(counted).toBeCloseTo(ledger, 10);
    });

    it('happy: each app counts on a registry of its own', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_m' });
      expect((await svc.post('/v1/charge', { key: k.key, costCents: 1 })).status).toBe(200);
      const other = service(ak);
      expect(metric(await other.metrics(), 'agentkey_charges_total')).toBeUndefined();
      expect(metric(await svc.metrics(), 'agentkey_charges_total')).toBe(1);
    });
  });

  describe('self-serve routes', () => {
    it('security: without the selfServe option none of them exists (404) and nothing is created', async () => {
      const { db, ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_a' });
      expectError(await svc.send('POST', '/signup', { json: { email: 'a@example.com' } }), 404, 'not_found');
      expectError(await svc.send('GET', '/sdk-keys/me', { bearer: k.key }), 404, 'not_found');
      expectError(await svc.send('POST', '/sdk-keys', { bearer: k.key, json: {} }), 404, 'not_found');
      expectError(await svc.send('DELETE', `/sdk-keys/${k.id}`, { bearer: k.key }), 404, 'not_found');
      expect(await countKeys(db, ak)).toBe(1);
      expect((await ak.getKey(k.id))?.status).toBe('active');
    });

    it('happy: signup, me, a child key and revoking it, through the one service', async () => {
      const { ak, svc } = await setup({ selfServe: { signupScopes: ['proxy.chat'], signupRateLimit: false } });
      const signup = await svc.send('POST', '/signup', { json: { email: 'a@example.com', budget_cents: 50 } });
      expect(signup.status).toBe(201);
      expect(signup.body).toMatchObject({ key: expect.stringMatching(/^ak_/), id: expect.any(Number), accountId: expect.stringMatching(/^acct_/), scopes: ['proxy.chat'] });
      expect(await ak.getKey(signup.body.id)).toMatchObject({ accountId: signup.body.accountId, scopes: ['proxy.chat'], budgetCents: 50 });
      // As in the package: a signup key lasts 24 hours unless the body says otherwise.
      const lasts = Date.parse(signup.body.expiresAt) - Date.now();
      expect(lasts).toBeGreaterThan(23 * 3_600_000);
      expect(lasts).toBeLessThanOrEqual(24 * 3_600_000);
      // As in the package, signup needs an email by default.
      expectSelfServeError(await svc.send('POST', '/signup'), 400, 'Valid email is required', 'email_required');
      expect((await svc.send('POST', '/signup', { json: { email: 'b@example.com' } })).status).toBe(201);

      const me = await svc.send('GET', '/sdk-keys/me', { bearer: signup.body.key });
      expect(me.status).toBe(200);
      expect(me.body).toMatchObject({ valid: true, keyId: signup.body.id, budgetCents: 50 });

      // The caller expires, so its child must too, within the caller's expiry.
      expectSelfServeError(await svc.send('POST', '/sdk-keys', { bearer: signup.body.key, json: { name: 'child', budget_cents: 10 } }), 403, /\S/, 'expiry_exceeds_parent');
      const child = await svc.send('POST', '/sdk-keys', { bearer: signup.body.key, json: { name: 'child', budget_cents: 10, expires_in: '1h' } });
      expect(child.status, child.text).toBe(201);
      expect(await ak.getKey(child.body.id)).toMatchObject({ parentId: signup.body.id, accountId: signup.body.accountId, budgetCents: 10, name: 'child' });

      const del = await svc.send('DELETE', `/sdk-keys/${child.body.id}`, { bearer: signup.body.key });
      expect(del.status).toBe(200);
      expect(del.body).toEqual({ revoked: true, id: child.body.id });
      expect((await ak.getKey(child.body.id))?.status).toBe('revoked');
      // The admin API sees what the page did.
      expect((await svc.admin('GET', `/v1/keys?accountId=${signup.body.accountId}`)).body.keys.map((k: { id: number }) => k.id)).toEqual([signup.body.id]);
    });

    it("security: DELETE /sdk-keys/:id with another account's key id -> 404 and that key stays active; bad ids -> 400; the admin key is no agent key", async () => {
      const { ak, svc } = await setup({ selfServe: { signupRateLimit: false } });
      const caller = await ak.create({ accountId: 'acct_p', scopes: ['admin'] });
      const victim = await ak.create({ accountId: 'acct_victim' });
      const victimChild = await ak.create({ accountId: 'acct_victim', parentId: victim.id });
      const before = await snapshot(ak);
      // The package's shape: codes the package had no string for show their message as `error`.
      const notFound = 'No active key with this id belongs to your account.';
      for (const id of [victim.id, victimChild.id]) {
        expectSelfServeError(await svc.send('DELETE', `/sdk-keys/${id}`, { bearer: caller.key }), 404, notFound, 'not_found');
        expectSelfServeError(await svc.send('DELETE', `/sdk-keys/${id}`, { headers: { 'x-api-key': caller.key } }), 404, notFound, 'not_found');
        expectSelfServeError(await svc.send('DELETE', `/sdk-keys/${id}`, { bearer: ADMIN }), 401, 'invalid', 'invalid_key');
        expectSelfServeError(await svc.send('DELETE', `/sdk-keys/${id}`), 401, 'Missing API key', 'missing_key');
      }
      for (const id of ['abc', '0', '-1', '1.5', '1e3']) expectSelfServeError(await svc.send('DELETE', `/sdk-keys/${id}`, { bearer: caller.key }), 400, /\S/);
      expectSelfServeError(await svc.send('DELETE', '/sdk-keys/424242', { bearer: caller.key }), 404, notFound, 'not_found');
      expectSelfServeError(await svc.send('GET', '/sdk-keys/me', { bearer: ADMIN }), 401, 'invalid', 'invalid_key');
      expectSelfServeError(await svc.send('POST', '/sdk-keys', { bearer: ADMIN, json: {} }), 401, 'invalid', 'invalid_key');
      expect(await snapshot(ak)).toEqual(before);
      expect(await ak.validate(victim.key)).toMatchObject({ valid: true, accountId: 'acct_victim' });
    });

    it('error: malformed JSON -> 400 invalid_json, a huge body -> 413, a non-JSON body -> 415; no key is created', async () => {
      const { db, ak, svc } = await setup({ selfServe: { signupRateLimit: false } });
      const caller = await ak.create({ accountId: 'acct_p' });
      // Every answer of a self-serve route is in the package's shape, whichever step refuses the body.
      const notJson = 'The request body is not valid JSON.';
      expectSelfServeError(await svc.send('POST', '/signup', { raw: '{"email":' }), 400, notJson, 'invalid_json');
      expectSelfServeError(await svc.send('POST', '/signup', { raw: '[]' }), 400, /\S/);
      expectSelfServeError(await svc.send('POST', '/sdk-keys', { bearer: caller.key, raw: '{"scopes":[' }), 400, notJson, 'invalid_json');
      expectSelfServeError(await svc.send('POST', '/sdk-keys', { bearer: caller.key, json: { budget_cents: '5 cents' } }), 400, /\S/, 'invalid_budget');
      const hugeSignup = await svc.send('POST', '/signup', { json: { email: 'a@example.com', name: 'x'.repeat(70_000) } });
      const formSignup = await svc.send('POST', '/signup', { raw: 'email=a@b.co', type: 'application/x-www-form-urlencoded' });
      const hugeChild = await svc.send('POST', '/sdk-keys', { bearer: caller.key, json: { pad: 'x'.repeat(70_000) } });
      expect(await countKeys(db, ak)).toBe(1);
      // The body limit and the JSON check refuse before the route runs: their answers too are the package's shape.
      expectSelfServeError(hugeSignup, 413, /\S/, 'body_too_large');
      expectSelfServeError(formSignup, 415, /\S/, 'unsupported_media_type');
      expectSelfServeError(hugeChild, 413, /\S/, 'body_too_large');
    });
  });

  describe('property: random bodies', () => {
    const anyJson = fc.jsonValue({ maxDepth: 2 });
    const field = (...examples: unknown[]) => fc.oneof(anyJson, fc.constantFrom(...examples));

    const check = (res: Reply, what: string) => {
      expect(res.status, what).toBeLessThan(500);
      if (res.status >= 300) {
        expect(res.status, what).toBeGreaterThanOrEqual(400);
        expectShape(res);
      }
    };

    it('security: random bodies to POST /v1/charge never get a 5xx, always the error shape, and change nothing unless 2xx', async () => {
      const { db, ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_f', budgetCents: 1_000 });
      const revoked = await ak.create({ accountId: 'acct_f' });
      await ak.revoke(revoked.id);
      const expired = await ak.create({ accountId: 'acct_f', expiresIn: '1h' });
      await expireKey(db, ak, expired.id);
      const charge = {
        key: fc.oneof(fc.constantFrom(k.key, k.key, ADMIN, revoked.key, expired.key, 'ak_garbage', UNKNOWN_KEY), fc.string(), anyJson),
        costCents: fc.oneof(fc.double(), fc.integer(), fc.constantFrom(0, 0.5, 1, 5e-324, 0.00001, 999.9999, 1e12, -1, '1', null), anyJson),
        idempotencyKey: field('i-1', 'i-2', '', 'n\u0000'),
        metadata: field({}, { model: 'm' }, { n: '\u0000' }, [], 'm'),
        budget_cents: anyJson,
      };
      const body = fc.oneof(
        { weight: 4, arbitrary: fc.record(charge, { requiredKeys: ['key', 'costCents'] }).map((b) => JSON.stringify(b)) },
        { weight: 2, arbitrary: fc.record(charge, { requiredKeys: [] }).map((b) => JSON.stringify(b)) },
        { weight: 1, arbitrary: anyJson.map((b) => JSON.stringify(b)) },
        { weight: 1, arbitrary: fc.string() },
      );
      await fc.assert(
        fc.asyncProperty(body, async (raw) => {
          const before = await snapshot(ak);
          const res = await svc.send('POST', '/v1/charge', { raw });
          check(res, raw);
          const after = await snapshot(ak);
          if (res.status === 200) {
            expect(res.body.success).toBe(true);
            // A zero cost succeeds without figures and records nothing (as in the package).
            const charged = !res.body.replayed && res.body.budgetUsedCents !== undefined;
            expect(after.usage.count).toBe(before.usage.count + (charged ? 1 : 0));
            if (charged) expect(after.keys.find((x) => x.id === k.id)?.spentCents).toBe(res.body.budgetUsedCents);
            else if (!res.body.replayed) expect(res.body, raw).toEqual({ success: true });
            if (!charged) expect(after, raw).toEqual(before);
          } else {
            expect(after, raw).toEqual(before);
          }
        }),
        { numRuns: 60 },
      );
      expect(await ak.audit()).toMatchObject({ ok: true });
    });

    it('security: random bodies to POST /v1/keys never get a 5xx, always the error shape, and create exactly one key on 201 and none otherwise', async () => {
      const { ak, svc } = await setup();
      const parent = await ak.create({ accountId: 'acct_p', scopes: ['proxy.chat'], budgetCents: 100, expiresIn: '1d' });
      const other = await ak.create({ accountId: 'acct_q' });
      const create = {
        accountId: fc.oneof(fc.constantFrom('acct_p', 'acct_p', 'acct_q', 7, '', 'a\u0000'), fc.string(), anyJson),
        scopes: field(['proxy.chat'], [], null, ['admin'], ['a b'], 'proxy.chat'),
        budgetCents: fc.oneof(fc.double(), fc.constantFrom(0, 50, 100, 100.0001, -1, null, '5'), anyJson),
        budgetPeriod: field('day', 'month', null, 'week'),
        expiresIn: field('1h', '7d', '2d', '0d', null, 3600),
        expiresAt: field('2099-01-01T00:00:00Z', '2001-01-01', 'soon', null),
        name: field('n', '', null, 'x'.repeat(300)),
        delegatedBy: field('u', null),
        userId: field('u', null, 'n\u0000'),
        parentId: fc.constantFrom(parent.id, String(parent.id), other.id, 0, '0', 'abc', null, 999_999, -1),
        budget_cents: anyJson,
      };
      const body = fc.oneof(
        { weight: 4, arbitrary: fc.record(create, { requiredKeys: ['accountId'] }).map((b) => JSON.stringify(b)) },
        { weight: 2, arbitrary: fc.record(create, { requiredKeys: [] }).map((b) => JSON.stringify(b)) },
        { weight: 1, arbitrary: anyJson.map((b) => JSON.stringify(b)) },
        { weight: 1, arbitrary: fc.string() },
      );
      await fc.assert(
        fc.asyncProperty(body, async (raw) => {
          const before = await snapshot(ak);
          const res = await svc.send('POST', '/v1/keys', { bearer: ADMIN, raw });
          check(res, raw);
          const after = await snapshot(ak);
          if (res.status === 201) {
            expect(after.keys.length).toBe(before.keys.length + 1);
            expect(after.keys.slice(0, -1)).toEqual(before.keys);
            const { key, ...info } = res.body;
            expect(after.keys.at(-1)).toEqual(Object.fromEntries(Object.entries(info).filter(([name]) => name !== 'lastUsedAt')));
            // A zero duration makes a key expired at once, and a $0 budget leaves nothing to spend: validate() refuses both.
            const expected =
              info.expiresAt !== null && Date.parse(info.expiresAt) <= Date.now()
                ? { valid: false, reason: 'expired' }
                : info.budgetCents === 0
                  ? { valid: false, reason: 'budget_exceeded' }
                  : { valid: true, keyId: info.id };
            expect(await ak.validate(key), raw).toMatchObject(expected);
            expect([null, parent.id, other.id]).toContain(info.parentId);
            if (info.parentId === parent.id) {
              // Never wider than its parent.
              expect(info.accountId).toBe('acct_p');
              expect(Array.isArray(info.scopes)).toBe(true);
              for (const scope of info.scopes as string[]) expect(scope).toBe('proxy.chat');
              expect(info.budgetCents === null || info.budgetCents <= 100).toBe(true);
              expect(Date.parse(info.expiresAt)).toBeLessThanOrEqual(Date.parse(parent.expiresAt as string));
            }
          } else {
            expect(after, raw).toEqual(before);
          }
        }),
        { numRuns: 60 },
      );
    });
  });
});
