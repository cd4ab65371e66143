import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError } from '../../src/index.js';
import { type AppOptions, createApp } from '../../src/server/index.js';
import { hangingPool, rejectingPool, throwingPool } from '../helpers/faults.js';
import { type CallOptions, type Reply, ADMIN, UNKNOWN_KEY, everyRoute, expectError, expectSelfServeError, memoryLogger, service } from '../helpers/service.js';

/**
 * The service as a whole, without a database: its options, unknown routes and methods,
 * request ids, and what it answers when the store fails or never answers.
 */

describe('createApp: options are checked when the app is built', () => {
  const ak = new AgentKey({ pool: hangingPool() as never });

  it('error: a short admin key or one that is no bearer token, a malformed hash, a bad body limit or timeout, bad self-serve options or no AgentKey throw an AgentKeyError', () => {
    const bad: [unknown, Partial<AppOptions>][] = [
      [ak, { adminKey: 'short' }],
      [ak, { adminKey: '' }],
      // Not a bearer token (RFC 6750): it could never be sent as "Authorization: Bearer <key>".
      [ak, { adminKey: 'akadmin with spaces 0123456789' }],
      [ak, { adminKey: 'akadmin_"quoted"_0123456789' }],
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

  it('error: an unknown path -> 404 not_found, with or without the admin key', async () => {
    const svc = service(ak);
    const cases: [string, string, string?][] = [
      ['GET', '/nope'],
      ['GET', '/'],
      ['GET', '/v1'],
      ['GET', '/V1/keys'],
      ['GET', '//v1/keys'],
      ['POST', '/signup'],
      ['GET', '/sdk-keys/me'],
      ['GET', '/v1/usage/', ADMIN],
      ['GET', '/v1/keys/1/nope', ADMIN],
      ['POST', '/v1/reservations/r/settle'],
    ];
    for (const [method, path, bearer] of cases) {
      const res = await svc.send(method, path, bearer ? { bearer } : {});
      expectError(res, 404, 'not_found');
      expect(res.headers.allow).toBeUndefined();
    }
  });

  it('error: a known path with a method it does not take -> 405 method_not_allowed with Allow naming the methods it takes; nothing reaches the store', async () => {
    // The store would hang: a 405 is answered before any route runs.
    const svc = service(ak, { timeoutMs: 5_000 });
    const cases: [string, string, string, string?][] = [
      ['GET', '/v1/charge', 'POST'],
      ['PUT', '/v1/verify', 'POST'],
      ['GET', '/v1/reservations', 'POST'],
      ['DELETE', '/v1/reservations/rsv_x/commit', 'POST'],
      ['PUT', '/v1/keys', 'GET, HEAD, POST', ADMIN],
      ['PUT', '/v1/keys', 'GET, HEAD, POST'],
      ['DELETE', '/v1/keys/1', 'GET, HEAD, PATCH', ADMIN],
      ['GET', '/v1/keys/1/revoke', 'POST', ADMIN],
      ['POST', '/v1/accounts/a/budget', 'DELETE, GET, HEAD, PUT', ADMIN],
      ['POST', '/healthz', 'GET, HEAD'],
      ['DELETE', '/metrics', 'GET, HEAD'],
      ['OPTIONS', '/v1/charge', 'POST'],
    ];
    for (const [method, path, allow, bearer] of cases) {
      const res = await svc.send(method, path, bearer ? { bearer } : {});
      expectError(res, 405, 'method_not_allowed');
      expect(res.headers.allow?.split(', ').sort().join(', '), `${method} ${path}`).toBe(allow);
      expect(res.body.error.message).toContain(allow.split(', ')[0]);
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

  it('happy: one log line per request, its level following the status (info 2xx/3xx, warn 4xx, error 5xx), with the error code on 4xx and 5xx lines', async () => {
    const { logger, lines } = memoryLogger();
    const svc = service(ak, { logger, timeoutMs: 100, selfServe: { signupRateLimit: false, timeoutMs: 100 } });
    const failing = service(new AgentKey({ pool: throwingPool() as never }), { logger });
    const cases: [Promise<unknown>, string, string, string | undefined][] = [
      [svc.send('GET', '/healthz', { headers: { 'x-request-id': 'ok' } }), 'ok', 'info', undefined],
      [svc.send('GET', '/openapi.json', { headers: { 'x-request-id': 'doc' } }), 'doc', 'info', undefined],
      [svc.send('GET', '/nope', { headers: { 'x-request-id': 'unknown' } }), 'unknown', 'warn', 'not_found'],
      [svc.send('PUT', '/v1/charge', { headers: { 'x-request-id': 'method' } }), 'method', 'warn', 'method_not_allowed'],
      [svc.send('GET', '/v1/keys', { headers: { 'x-request-id': 'no-admin' } }), 'no-admin', 'warn', 'missing_admin_key'],
      [svc.send('GET', '/v1/keys', { bearer: 'not-the-admin-key-0123', headers: { 'x-request-id': 'bad-admin' } }), 'bad-admin', 'warn', 'invalid_admin_key'],
      [svc.send('POST', '/v1/charge', { json: {}, headers: { 'x-request-id': 'invalid' } }), 'invalid', 'warn', 'invalid_request'],
      [svc.send('POST', '/v1/charge', { raw: '{', headers: { 'x-request-id': 'json' } }), 'json', 'warn', 'invalid_json'],
      [svc.send('POST', '/v1/charge', { raw: 'a=1', type: 'text/plain', headers: { 'x-request-id': 'type' } }), 'type', 'warn', 'unsupported_media_type'],
      [svc.send('POST', '/v1/charge', { json: { pad: 'x'.repeat(70_000) }, headers: { 'x-request-id': 'huge' } }), 'huge', 'warn', 'body_too_large'],
      [svc.send('POST', '/signup', { raw: 'a=1', type: 'text/plain', headers: { 'x-request-id': 'signup-type' } }), 'signup-type', 'warn', 'unsupported_media_type'],
      [svc.send('GET', '/sdk-keys/me', { headers: { 'x-request-id': 'signup-key' } }), 'signup-key', 'warn', 'missing_key'],
      [svc.send('POST', '/v1/verify', { json: { key: UNKNOWN_KEY }, headers: { 'x-request-id': 'slow' } }), 'slow', 'error', 'storage_timeout'],
      [failing.send('POST', '/v1/verify', { json: { key: UNKNOWN_KEY }, headers: { 'x-request-id': 'fault' } }), 'fault', 'error', 'storage_error'],
    ];
    await Promise.all(cases.map(([reply]) => reply));
    for (const [, requestId, level, code] of cases) {
      const requestLines = lines.filter((l) => l.msg === 'request' && l.obj.requestId === requestId);
      expect(requestLines, requestId).toHaveLength(1);
      const [line] = requestLines;
      expect({ requestId, level: line?.level, code: line?.obj.code }).toEqual({ requestId, level, code });
      expect(line?.obj).toMatchObject({ method: expect.any(String), route: expect.any(String), status: expect.any(Number), ms: expect.any(Number) });
    }
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
