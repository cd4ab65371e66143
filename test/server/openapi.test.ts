import { describe, expect, it } from 'vitest';
import { AgentKey } from '../../src/index.js';
import { forEachDatabase } from '../helpers/databases.js';
import { hangingPool, throwingPool } from '../helpers/faults.js';
import { BAD_COSTS } from '../helpers/metered.js';
import { type OpenApiDoc, openApiContract } from '../helpers/openapi.js';
import { type CallOptions, type Service, ADMIN, UNKNOWN_KEY, everyRoute, service } from '../helpers/service.js';

/**
 * GET /openapi.json: the document generated from the schemas that validate the requests,
 * and held against real answers of every route, errors included, on PostgreSQL and PGlite.
 */

describe('GET /openapi.json', () => {
  const ak = new AgentKey({ pool: hangingPool() as never });
  const svc = service(ak, { selfServe: {} });
  const doc = async () => {
    const res = await svc.send('GET', '/openapi.json');
    expect(res.status).toBe(200);
    expect(res.headers['content-type']).toMatch(/^application\/json/);
    return res.body as {
      openapi: string;
      info: { title: string };
      paths: Record<string, Record<string, { operationId?: string; security?: unknown; requestBody?: { required?: boolean; content: Record<string, { schema: { $ref?: string } }> }; responses: Record<string, { headers?: Record<string, unknown>; content?: Record<string, { schema: { $ref?: string } }> }> }>>;
      components: { schemas: Record<string, { required?: string[]; properties?: Record<string, { minimum?: number; maximum?: number; anyOf?: Record<string, unknown>[] }>; additionalProperties?: unknown }>; securitySchemes: Record<string, unknown> };
    };
  };
  const schemaOf = (d: Awaited<ReturnType<typeof doc>>, path: string, method: string) => {
    const ref = d.paths[path]?.[method]?.requestBody?.content['application/json']?.schema.$ref as string;
    expect(ref, `${method} ${path}`).toMatch(/^#\/components\/schemas\//);
    return d.components.schemas[ref.split('/').pop() as string] as NonNullable<(typeof d.components.schemas)[string]>;
  };

  it('happy: OpenAPI 3.1.0 with every /v1 route, /healthz and /metrics and their methods, and no route that does not exist (the self-serve routes are the package\'s, documented by it)', async () => {
    const d = await doc();
    expect(d.openapi).toBe('3.1.0');
    expect(d.info.title).toBe('agentkey');
    const routes = Object.fromEntries(Object.entries(d.paths).map(([path, ops]) => [path, Object.keys(ops).sort()]));
    expect(routes).toEqual({
      '/v1/keys': ['get', 'post'],
      '/v1/keys/{id}': ['get', 'patch'],
      '/v1/keys/{id}/revoke': ['post'],
      '/v1/keys/{id}/rotate': ['post'],
      '/v1/keys/{id}/events': ['get'],
      '/v1/events': ['get'],
      '/v1/accounts': ['get'],
      '/v1/accounts/{id}/budget': ['delete', 'get', 'put'],
      '/v1/accounts/{id}/rate-limit': ['delete', 'get', 'put'],
      '/v1/alerts': ['get', 'put'],
      '/v1/usage': ['get'],
      '/v1/ledger': ['get'],
      '/v1/webhooks': ['get', 'post'],
      '/v1/webhooks/{id}': ['delete', 'get', 'patch'],
      '/v1/webhooks/{id}/deliveries': ['get'],
      '/v1/outbox': ['get'],
      '/v1/verify': ['post'],
      '/v1/charge': ['post'],
      '/v1/reservations': ['post'],
      '/v1/reservations/{id}/commit': ['post'],
      '/v1/reservations/{id}/release': ['post'],
      '/healthz': ['get'],
      '/metrics': ['get'],
    });
  });

  it('happy: request schemas are the validating ones: /v1/charge requires key and costCents or model and usage, refuses unknown fields and costs below 0', async () => {
    const d = await doc();
    const charge = schemaOf(d, '/v1/charge', 'post');
    expect(charge.required).toEqual(['key']);
    expect(Object.keys(charge.properties ?? {}).sort()).toEqual(['costCents', 'idempotencyKey', 'key', 'metadata', 'model', 'provider', 'usage']);
    // Exactly one of costCents and model + usage (a provider only beside a model), as the service checks it.
    for (const path of ['/v1/charge', '/v1/reservations', '/v1/reservations/{id}/commit']) {
      expect(schemaOf(d, path, 'post'), path).toMatchObject({
        oneOf: [{ required: ['costCents'] }, { required: ['model', 'usage'] }],
        dependentRequired: { model: ['usage'], usage: ['model'], provider: ['model'] },
        properties: { usage: { $ref: '#/components/schemas/TokenUsage' } },
      });
    }
    expect(d.components.schemas.TokenUsage).toMatchObject({ required: ['inputTokens'], additionalProperties: false });
    expect(Object.keys(d.components.schemas.TokenUsage?.properties ?? {}).sort()).toEqual(['cacheWriteTokens', 'cachedInputTokens', 'inputTokens', 'outputTokens', 'reasoningTokens']);
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
    expect(schemaOf(d, '/v1/reservations/{id}/commit', 'post').required).toBeUndefined();
    // A ceiling is budgetCents or budgets (the library says which is missing): neither is required alone.
    const ceiling = schemaOf(d, '/v1/accounts/{id}/budget', 'put');
    expect(ceiling.required).toBeUndefined();
    expect(Object.keys(ceiling.properties ?? {}).sort()).toEqual(['alerts', 'budgetCents', 'budgetPeriod', 'budgets']);
    expect(create.properties).toHaveProperty('budgets');
    expect(create.properties).toHaveProperty('alerts');
    expect(schemaOf(d, '/v1/alerts', 'put').required).toEqual(['percents']);
    expect(schemaOf(d, '/v1/verify', 'post').required).toEqual(['key']);
  });

  it('security: admin routes declare the admin bearer, agent routes do not; errors use the one Error schema', async () => {
    const d = await doc();
    expect(d.components.securitySchemes.adminKey).toMatchObject({ type: 'http', scheme: 'bearer' });
    for (const [path, ops] of Object.entries(d.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const adminRoute = path.startsWith('/v1/keys') || path.startsWith('/v1/accounts') || path === '/v1/usage' || path === '/v1/ledger' || path === '/v1/events' ||
          path.startsWith('/v1/webhooks') || path === '/v1/outbox' || path === '/v1/alerts';
        expect(op.security, `${method} ${path}`).toEqual(adminRoute ? [{ adminKey: [] }] : undefined);
        for (const [status, response] of Object.entries(op.responses)) {
          if (Number(status) >= 400) expect(response.content?.['application/json']?.schema.$ref, `${method} ${path} ${status}`).toBe('#/components/schemas/Error');
        }
      }
    }
  });

  it('happy: every operation has an operationId of its own; every route documents 405 with Allow, routes on the database 500 and 503, routes with a body 400, 413 and 415', async () => {
    const d = await doc();
    const ids: unknown[] = [];
    for (const [path, ops] of Object.entries(d.paths)) {
      for (const [method, op] of Object.entries(ops)) {
        const what = `${method} ${path}`;
        ids.push(op.operationId);
        const statuses = Object.keys(op.responses);
        expect(op.responses['405']?.headers, what).toHaveProperty('Allow');
        if (path.startsWith('/v1/')) expect(statuses, what).toEqual(expect.arrayContaining(['500', '503']));
        if (op.requestBody) expect(statuses, what).toEqual(expect.arrayContaining(['400', '413', '415']));
      }
    }
    expect(ids).toHaveLength(33);
    for (const id of ids) expect(id).toMatch(/^[a-z][A-Za-z]+$/);
    expect(new Set(ids).size).toBe(ids.length);
  });
});

forEachDatabase((getDb) => {
  it('happy: every answer of every route, errors included, is documented for its route and matches the schema of its status; every documented answer is seen', async () => {
    const db = getDb();
    const ak = await db.agentKey();
    const svc = service(ak, { database: db.name, health: async () => void (await db.query('SELECT 1')), bodyLimitBytes: 2048 });
    const contract = openApiContract((await svc.send('GET', '/openapi.json')).body as OpenApiDoc);
    const expectAnswer = async (status: number, method: string, path: string, o: CallOptions = {}, on: Service = svc) => {
      const res = await on.send(method, path, o);
      expect(res.status, `${method} ${path}: ${res.text}`).toBe(status);
      contract.check(method, path, res);
      return res;
    };
    const admin = (json?: unknown): CallOptions => ({ bearer: ADMIN, ...(json === undefined ? {} : { json }) });
    const huge = { pad: 'x'.repeat(3000) };
    const form: CallOptions = { raw: 'a=1', type: 'application/x-www-form-urlencoded' };

    // Keys.
    const parent = (await expectAnswer(201, 'POST', '/v1/keys', admin({ accountId: 'acct_c', scopes: ['proxy.chat'], budgetCents: 100, expiresIn: '1d', name: 'parent' })))
      .body as { key: string; id: number };
    const child = (await expectAnswer(201, 'POST', '/v1/keys', admin({ accountId: 'acct_c', parentId: parent.id, budgetCents: 10 }))).body as { key: string; id: number };
    const loner = (await expectAnswer(201, 'POST', '/v1/keys', admin({ accountId: 'acct_none' }))).body as { key: string; id: number };
    await expectAnswer(400, 'POST', '/v1/keys', admin({ accountId: 'acct_c', budget_cents: 5 }));
    await expectAnswer(400, 'POST', '/v1/keys', { bearer: ADMIN, raw: '{"accountId":' });
    await expectAnswer(401, 'POST', '/v1/keys', { json: { accountId: 'acct_c' } });
    await expectAnswer(401, 'POST', '/v1/keys', { bearer: parent.key, json: { accountId: 'acct_c' } });
    await expectAnswer(403, 'POST', '/v1/keys', admin({ accountId: 'acct_c', parentId: parent.id, scopes: ['billing'] }));
    await expectAnswer(404, 'POST', '/v1/keys', admin({ accountId: 'acct_c', parentId: 424242 }));
    await expectAnswer(413, 'POST', '/v1/keys', admin({ accountId: 'acct_c', ...huge }));
    await expectAnswer(415, 'POST', '/v1/keys', { bearer: ADMIN, ...form });
    await expectAnswer(200, 'GET', '/v1/keys', admin());
    await expectAnswer(200, 'GET', `/v1/keys?accountId=acct_c&parentId=${parent.id}&includeRevoked=true&limit=5`, admin());
    await expectAnswer(400, 'GET', '/v1/keys?limit=abc', admin());
    await expectAnswer(401, 'GET', '/v1/keys');
    await expectAnswer(200, 'GET', `/v1/keys/${parent.id}`, admin());
    await expectAnswer(400, 'GET', '/v1/keys/abc', admin());
    await expectAnswer(401, 'GET', `/v1/keys/${parent.id}`, { bearer: 'akadmin_wrong_0123456789abcdefghij' });
    await expectAnswer(404, 'GET', '/v1/keys/424242', admin());
    await expectAnswer(200, 'PATCH', `/v1/keys/${loner.id}`, admin({ name: 'loner', budgetCents: 50, expiresIn: '2d' }));
    await expectAnswer(400, 'PATCH', `/v1/keys/${loner.id}`, admin({ budget: 5 }));
    await expectAnswer(401, 'PATCH', `/v1/keys/${loner.id}`, { json: { name: 'x' } });
    await expectAnswer(403, 'PATCH', `/v1/keys/${child.id}`, admin({ budgetCents: 1000 }));
    await expectAnswer(404, 'PATCH', '/v1/keys/424242', admin({ name: 'x' }));
    await expectAnswer(409, 'PATCH', `/v1/keys/${parent.id}`, admin({ budgetCents: 5 }));
    await expectAnswer(413, 'PATCH', `/v1/keys/${loner.id}`, admin({ name: 'x', ...huge }));
    await expectAnswer(415, 'PATCH', `/v1/keys/${loner.id}`, { bearer: ADMIN, ...form });

    // Spending: verifications of every kind, charges, holds and their settling.
    await expectAnswer(200, 'POST', '/v1/verify', { json: { key: parent.key } });
    await expectAnswer(200, 'POST', '/v1/verify', { json: { key: parent.key, scope: 'billing' } });
    await expectAnswer(200, 'POST', '/v1/verify', { json: { key: 'ak_garbage' } });
    await expectAnswer(400, 'POST', '/v1/verify', { json: {} });
    await expectAnswer(413, 'POST', '/v1/verify', { json: { key: parent.key, ...huge } });
    await expectAnswer(415, 'POST', '/v1/verify', form);
    await expectAnswer(200, 'POST', '/v1/charge', { json: { key: child.key, costCents: 2.5, idempotencyKey: 'c-1', metadata: { model: 'm' } } });
    await expectAnswer(200, 'POST', '/v1/charge', { json: { key: child.key, costCents: 2.5, idempotencyKey: 'c-1' } });
    await expectAnswer(200, 'POST', '/v1/charge', { json: { key: child.key, costCents: 0 } });
    await expectAnswer(400, 'POST', '/v1/charge', { json: { key: child.key, costCents: -1 } });
    await expectAnswer(401, 'POST', '/v1/charge', { json: { key: ADMIN, costCents: 1 } });
    await expectAnswer(409, 'POST', '/v1/charge', { json: { key: child.key, costCents: 3, idempotencyKey: 'c-1' } });
    await expectAnswer(413, 'POST', '/v1/charge', { json: { key: child.key, costCents: 1, metadata: huge } });
    await expectAnswer(415, 'POST', '/v1/charge', form);
    const limited = await expectAnswer(429, 'POST', '/v1/charge', { json: { key: child.key, costCents: 50 } });
    expect(limited.body.error).toMatchObject({ code: 'budget_exceeded', limitedBy: { kind: 'key', keyId: child.id, window: 'lifetime' } });

    const hold = (await expectAnswer(201, 'POST', '/v1/reservations', { json: { key: parent.key, costCents: 5, ttl: '2m', idempotencyKey: 'h-1' } })).body as {
      reservationId: string;
    };
    await expectAnswer(201, 'POST', '/v1/reservations', { json: { key: parent.key, costCents: 5, ttl: '2m', idempotencyKey: 'h-1' } });
    await expectAnswer(400, 'POST', '/v1/reservations', { json: { key: parent.key } });
    await expectAnswer(401, 'POST', '/v1/reservations', { json: { key: 'ak_garbage', costCents: 1 } });
    await expectAnswer(409, 'POST', '/v1/reservations', { json: { key: parent.key, costCents: 6, idempotencyKey: 'h-1' } });
    await expectAnswer(413, 'POST', '/v1/reservations', { json: { key: parent.key, costCents: 1, metadata: huge } });
    await expectAnswer(415, 'POST', '/v1/reservations', form);
    await expectAnswer(429, 'POST', '/v1/reservations', { json: { key: parent.key, costCents: 1000 } });
    const other = (await expectAnswer(201, 'POST', '/v1/reservations', { json: { key: parent.key, costCents: 1 } })).body as { reservationId: string };
    const commit = `/v1/reservations/${hold.reservationId}/commit`;
    const release = `/v1/reservations/${other.reservationId}/release`;
    await expectAnswer(400, 'POST', commit, { json: { key: parent.key } });
    await expectAnswer(401, 'POST', commit, { json: { costCents: 1 } });
    await expectAnswer(404, 'POST', commit, { json: { key: loner.key, costCents: 1 } });
    await expectAnswer(413, 'POST', commit, { json: { key: parent.key, costCents: 1, metadata: huge } });
    await expectAnswer(415, 'POST', commit, form);
    await expectAnswer(200, 'POST', commit, { json: { key: parent.key, costCents: 7, metadata: { model: 'm' } } });
    await expectAnswer(200, 'POST', commit, { json: { key: parent.key, costCents: 7 } });
    await expectAnswer(409, 'POST', `/v1/reservations/${hold.reservationId}/release`, { bearer: parent.key });
    await expectAnswer(400, 'POST', release, { json: { key: parent.key, costCents: 1 } });
    await expectAnswer(401, 'POST', release, { bearer: 'ak_garbage' });
    await expectAnswer(404, 'POST', release, { bearer: loner.key });
    await expectAnswer(413, 'POST', release, { json: { key: parent.key, ...huge } });
    await expectAnswer(415, 'POST', release, form);
    await expectAnswer(200, 'POST', release, { bearer: parent.key });
    await expectAnswer(200, 'POST', release, { json: { key: parent.key } });
    await expectAnswer(409, 'POST', `/v1/reservations/${other.reservationId}/commit`, { json: { key: parent.key, costCents: 1 } });

    // Metered spend: a charge, a hold and a commit given an LLM call's model and usage; the catalog refusing a model.
    const tokens = { inputTokens: 120, outputTokens: 30, cachedInputTokens: 20 };
    await expectAnswer(200, 'POST', '/v1/charge', { json: { key: loner.key, model: 'gpt-4o-mini', usage: tokens, idempotencyKey: 'm-1' } });
    await expectAnswer(200, 'POST', '/v1/charge', { json: { key: loner.key, provider: 'anthropic', model: 'claude-haiku-4-5', usage: { inputTokens: 40 } } });
    await expectAnswer(400, 'POST', '/v1/charge', { json: { key: loner.key, model: 'my-private-llama', usage: tokens } });
    await expectAnswer(400, 'POST', '/v1/charge', { json: { key: loner.key, costCents: 1, model: 'gpt-4o-mini', usage: tokens } });
    await expectAnswer(409, 'POST', '/v1/charge', { json: { key: loner.key, model: 'gpt-4o-mini', usage: { inputTokens: 1 }, idempotencyKey: 'm-1' } });
    const llmHold = (await expectAnswer(201, 'POST', '/v1/reservations', { json: { key: loner.key, model: 'gpt-4o-mini', usage: { inputTokens: 500, outputTokens: 500 } } })).body as {
      reservationId: string;
    };
    await expectAnswer(400, 'POST', '/v1/reservations', { json: { key: loner.key, model: 'gpt-4o-mini', usage: { inputTokens: 1, reasoningTokens: 2 } } });
    await expectAnswer(400, 'POST', `/v1/reservations/${llmHold.reservationId}/commit`, { json: { key: loner.key, model: 'gpt-4o-mini' } });
    await expectAnswer(200, 'POST', `/v1/reservations/${llmHold.reservationId}/commit`, { json: { key: loner.key, model: 'gpt-4o-mini', usage: tokens } });
    const byModel = await expectAnswer(200, 'GET', `/v1/usage?keyId=${loner.id}&byModel=true`, admin());
    expect(byModel.body.models.map((m: { model: string }) => m.model).sort()).toEqual(['claude-haiku-4-5', 'gpt-4o-mini']);
    await expectAnswer(400, 'GET', '/v1/usage?byModel=yes', admin());
    const llmRows = await expectAnswer(200, 'GET', `/v1/ledger?keyId=${loner.id}`, admin());
    expect(llmRows.body.entries.filter((e: { usage?: unknown }) => e.usage).length).toBe(4);

    // Accounts, usage and the ledger: acct_none has keys and no ceiling.
    await expectAnswer(200, 'PUT', '/v1/accounts/acct_c/budget', admin({ budgetCents: 500, budgetPeriod: 'month' }));
    await expectAnswer(400, 'PUT', '/v1/accounts/acct_c/budget', admin({ budgetCents: 'lots' }));
    await expectAnswer(401, 'PUT', '/v1/accounts/acct_c/budget', { json: { budgetCents: 1 } });
    await expectAnswer(413, 'PUT', '/v1/accounts/acct_c/budget', admin({ budgetCents: 1, ...huge }));
    await expectAnswer(415, 'PUT', '/v1/accounts/acct_c/budget', { bearer: ADMIN, ...form });
    await expectAnswer(200, 'GET', '/v1/accounts/acct_c/budget', admin());
    await expectAnswer(400, 'GET', `/v1/accounts/${'a'.repeat(300)}/budget`, admin());
    await expectAnswer(401, 'GET', '/v1/accounts/acct_c/budget');
    await expectAnswer(404, 'GET', '/v1/accounts/acct_none/budget', admin());
    const accounts = await expectAnswer(200, 'GET', '/v1/accounts', admin());
    expect(accounts.body.accounts).toEqual(
      expect.arrayContaining([expect.objectContaining({ accountId: 'acct_none', ceiling: null }), expect.objectContaining({ accountId: 'acct_c', ceiling: expect.any(Object) })]),
    );
    await expectAnswer(400, 'GET', '/v1/accounts?limit=x', admin());
    await expectAnswer(401, 'GET', '/v1/accounts');
    await expectAnswer(200, 'GET', '/v1/usage', admin());
    await expectAnswer(200, 'GET', `/v1/usage?keyId=${parent.id}&bucket=hour&since=2020-01-01`, admin());
    await expectAnswer(400, 'GET', '/v1/usage?bucket=week', admin());
    await expectAnswer(401, 'GET', '/v1/usage');
    await expectAnswer(200, 'GET', '/v1/ledger', admin());
    await expectAnswer(200, 'GET', '/v1/ledger?accountId=acct_c&limit=2', admin());
    await expectAnswer(400, 'GET', '/v1/ledger?before=abc', admin());
    await expectAnswer(401, 'GET', '/v1/ledger');
    await expectAnswer(200, 'DELETE', '/v1/accounts/acct_c/budget', admin());
    await expectAnswer(400, 'DELETE', `/v1/accounts/${'a'.repeat(300)}/budget`, admin());
    await expectAnswer(401, 'DELETE', '/v1/accounts/acct_c/budget');
    await expectAnswer(404, 'DELETE', '/v1/accounts/acct_c/budget', admin());

    // Rate limits: an account's, and a verification past one (429 with Retry-After).
    await expectAnswer(404, 'GET', '/v1/accounts/acct_rl/rate-limit', admin());
    await expectAnswer(200, 'PUT', '/v1/accounts/acct_rl/rate-limit', admin({ rateLimit: { requests: 1, per: '1h' }, concurrency: 2 }));
    await expectAnswer(400, 'PUT', '/v1/accounts/acct_rl/rate-limit', admin({ rateLimit: { requests: 1, per: '2d' } }));
    await expectAnswer(401, 'PUT', '/v1/accounts/acct_rl/rate-limit', { json: { concurrency: 1 } });
    await expectAnswer(413, 'PUT', '/v1/accounts/acct_rl/rate-limit', admin({ concurrency: 1, ...huge }));
    await expectAnswer(415, 'PUT', '/v1/accounts/acct_rl/rate-limit', { bearer: ADMIN, ...form });
    await expectAnswer(200, 'GET', '/v1/accounts/acct_rl/rate-limit', admin());
    await expectAnswer(400, 'GET', `/v1/accounts/${'a'.repeat(300)}/rate-limit`, admin());
    await expectAnswer(401, 'GET', '/v1/accounts/acct_rl/rate-limit');
    const rl = (await expectAnswer(201, 'POST', '/v1/keys', admin({ accountId: 'acct_rl', rateLimit: { requests: 5, per: '1d' } }))).body as { key: string };
    await expectAnswer(200, 'POST', '/v1/verify', { json: { key: rl.key } });
    const rateLimited = await expectAnswer(429, 'POST', '/v1/verify', { json: { key: rl.key } });
    expect(rateLimited.headers['retry-after']).toMatch(/^\d+$/);
    await expectAnswer(404, 'PUT', '/v1/accounts/acct_rl/rate-limit', admin({ rateLimit: null, concurrency: null }));
    await expectAnswer(200, 'PUT', '/v1/accounts/acct_rl/rate-limit', admin({ concurrency: 2 }));
    await expectAnswer(200, 'DELETE', '/v1/accounts/acct_rl/rate-limit', admin());
    await expectAnswer(400, 'DELETE', `/v1/accounts/${'a'.repeat(300)}/rate-limit`, admin());
    await expectAnswer(401, 'DELETE', '/v1/accounts/acct_rl/rate-limit');
    await expectAnswer(404, 'DELETE', '/v1/accounts/acct_rl/rate-limit', admin());
    // Budget windows and the table's alert percents.
    const windowed = (await expectAnswer(201, 'POST', '/v1/keys', admin({ accountId: 'acct_w', budgets: [{ cents: 1000, period: 'day' }, { cents: 10000, period: 'month' }], alerts: [80] })))
      .body as { key: string; id: number };
    await expectAnswer(400, 'POST', '/v1/keys', admin({ accountId: 'acct_w', budgets: [{ cents: 1, period: 'day' }, { cents: 2, period: 'day' }] }));
    await expectAnswer(200, 'PATCH', `/v1/keys/${windowed.id}`, admin({ budgets: [{ cents: 500, period: 'week' }, { cents: 1000 }], alerts: null }));
    await expectAnswer(400, 'PATCH', `/v1/keys/${windowed.id}`, admin({ alerts: [0] }));
    const byWindow = await expectAnswer(429, 'POST', '/v1/charge', { json: { key: windowed.key, costCents: 600 } });
    expect(byWindow.body.error.limitedBy).toEqual({ kind: 'key', keyId: windowed.id, window: 'week' });
    await expectAnswer(200, 'PUT', '/v1/accounts/acct_w/budget', admin({ budgets: [{ cents: 100, period: 'week' }, { cents: 1000 }], alerts: [50, 100] }));
    await expectAnswer(400, 'PUT', '/v1/accounts/acct_w/budget', admin({ budgets: [] }));
    await expectAnswer(200, 'GET', '/v1/accounts/acct_w/budget', admin());
    await expectAnswer(200, 'GET', '/v1/alerts', admin());
    await expectAnswer(401, 'GET', '/v1/alerts');
    await expectAnswer(200, 'PUT', '/v1/alerts', admin({ percents: [50, 80] }));
    await expectAnswer(200, 'PUT', '/v1/alerts', admin({ percents: null }));
    await expectAnswer(400, 'PUT', '/v1/alerts', admin({ percents: [0] }));
    await expectAnswer(400, 'PUT', '/v1/alerts', admin({}));
    await expectAnswer(401, 'PUT', '/v1/alerts', { json: { percents: [50] } });
    await expectAnswer(413, 'PUT', '/v1/alerts', admin({ percents: [50], ...huge }));
    await expectAnswer(415, 'PUT', '/v1/alerts', { bearer: ADMIN, ...form });

    // Revoking, last: it ends the keys above.
    await expectAnswer(400, 'POST', '/v1/keys/0/revoke', admin());
    await expectAnswer(401, 'POST', `/v1/keys/${parent.id}/revoke`);
    await expectAnswer(404, 'POST', '/v1/keys/424242/revoke', admin());
    await expectAnswer(413, 'POST', `/v1/keys/${parent.id}/revoke`, admin(huge));
    await expectAnswer(415, 'POST', `/v1/keys/${parent.id}/revoke`, { bearer: ADMIN, ...form });
    // Rotation and the event log (before the revoke below: a revoked key is not rotated).
    await expectAnswer(200, 'POST', `/v1/keys/${loner.id}/rotate`, admin({ gracePeriod: '1h' }));
    await expectAnswer(200, 'POST', `/v1/keys/${loner.id}/rotate`, admin());
    await expectAnswer(200, 'POST', `/v1/keys/${loner.id}/rotate`, { bearer: ADMIN });
    await expectAnswer(400, 'POST', `/v1/keys/${loner.id}/rotate`, admin({ gracePeriod: '8d' }));
    await expectAnswer(400, 'POST', `/v1/keys/${loner.id}/rotate`, admin({ grace: '1h' }));
    await expectAnswer(401, 'POST', `/v1/keys/${loner.id}/rotate`, { json: {} });
    await expectAnswer(404, 'POST', '/v1/keys/424242/rotate', admin());
    await expectAnswer(413, 'POST', `/v1/keys/${loner.id}/rotate`, admin(huge));
    await expectAnswer(415, 'POST', `/v1/keys/${loner.id}/rotate`, { bearer: ADMIN, ...form });
    await expectAnswer(200, 'GET', `/v1/keys/${loner.id}/events?limit=2`, admin());
    await expectAnswer(400, 'GET', `/v1/keys/${loner.id}/events?limit=x`, admin());
    await expectAnswer(401, 'GET', `/v1/keys/${loner.id}/events`);
    await expectAnswer(404, 'GET', '/v1/keys/424242/events', admin());
    await expectAnswer(200, 'GET', '/v1/events?accountId=acct_c&limit=5', admin());
    await expectAnswer(400, 'GET', '/v1/events?kind=created', admin());
    await expectAnswer(401, 'GET', '/v1/events');
    await expectAnswer(200, 'POST', `/v1/keys/${parent.id}/revoke`, admin());
    await expectAnswer(200, 'POST', `/v1/keys/${parent.id}/revoke`, admin());
    await expectAnswer(409, 'POST', `/v1/keys/${parent.id}/rotate`, admin());
    await expectAnswer(200, 'POST', '/v1/verify', { json: { key: child.key } });
    await expectAnswer(401, 'POST', '/v1/charge', { json: { key: child.key, costCents: 1 } });

    // Webhooks and the outbox.
    const hook = (await expectAnswer(201, 'POST', '/v1/webhooks', admin({ url: 'https://example.com/h', events: ['key.expired'] }))).body as { id: number };
    await expectAnswer(400, 'POST', '/v1/webhooks', admin({ url: 'ftp://example.com' }));
    await expectAnswer(401, 'POST', '/v1/webhooks', { json: { url: 'https://example.com/h' } });
    await expectAnswer(413, 'POST', '/v1/webhooks', admin(huge));
    await expectAnswer(415, 'POST', '/v1/webhooks', { bearer: ADMIN, ...form });
    await expectAnswer(200, 'GET', '/v1/webhooks', admin());
    await expectAnswer(401, 'GET', '/v1/webhooks');
    await expectAnswer(200, 'GET', `/v1/webhooks/${hook.id}`, admin());
    await expectAnswer(400, 'GET', '/v1/webhooks/x', admin());
    await expectAnswer(401, 'GET', `/v1/webhooks/${hook.id}`);
    await expectAnswer(404, 'GET', '/v1/webhooks/424242', admin());
    await expectAnswer(200, 'PATCH', `/v1/webhooks/${hook.id}`, admin({ enabled: false, rotateSecret: true }));
    await expectAnswer(400, 'PATCH', `/v1/webhooks/${hook.id}`, admin({ events: [] }));
    await expectAnswer(401, 'PATCH', `/v1/webhooks/${hook.id}`, { json: {} });
    await expectAnswer(404, 'PATCH', '/v1/webhooks/424242', admin({ enabled: true }));
    await expectAnswer(413, 'PATCH', `/v1/webhooks/${hook.id}`, admin(huge));
    await expectAnswer(415, 'PATCH', `/v1/webhooks/${hook.id}`, { bearer: ADMIN, ...form });
    await expectAnswer(200, 'GET', `/v1/webhooks/${hook.id}/deliveries?status=failed&limit=5`, admin());
    await expectAnswer(400, 'GET', `/v1/webhooks/${hook.id}/deliveries?status=lost`, admin());
    await expectAnswer(401, 'GET', `/v1/webhooks/${hook.id}/deliveries`);
    await expectAnswer(404, 'GET', '/v1/webhooks/424242/deliveries', admin());
    await expectAnswer(200, 'GET', '/v1/outbox?type=key.expired&before=evt_5&limit=3', admin());
    await expectAnswer(400, 'GET', '/v1/outbox?type=key.deleted', admin());
    await expectAnswer(401, 'GET', '/v1/outbox');
    await expectAnswer(200, 'DELETE', `/v1/webhooks/${hook.id}`, admin());
    await expectAnswer(400, 'DELETE', '/v1/webhooks/0', admin());
    await expectAnswer(401, 'DELETE', `/v1/webhooks/${hook.id}`);
    await expectAnswer(404, 'DELETE', `/v1/webhooks/${hook.id}`, admin());

    // Operations.
    await expectAnswer(200, 'GET', '/healthz');
    await expectAnswer(200, 'GET', '/metrics');
    const down = service(ak, { health: async () => Promise.reject(new Error('down')) });
    await expectAnswer(503, 'GET', '/healthz', {}, down);

    // A method each path does not take.
    for (const [method, path] of [
      ['DELETE', '/v1/keys'], ['PUT', `/v1/keys/${parent.id}`], ['GET', `/v1/keys/${parent.id}/revoke`], ['POST', '/v1/accounts/acct_c/budget'], ['POST', '/v1/accounts/acct_c/rate-limit'],
      ['POST', '/v1/accounts'], ['POST', '/v1/usage'], ['DELETE', '/v1/ledger'], ['GET', '/v1/verify'], ['GET', '/v1/charge'], ['GET', '/v1/reservations'],
      ['GET', commit], ['DELETE', release], ['POST', '/healthz'], ['PUT', '/metrics'],
      ['GET', `/v1/keys/${parent.id}/rotate`], ['POST', `/v1/keys/${parent.id}/events`], ['DELETE', '/v1/events'],
      ['PUT', '/v1/webhooks'], ['POST', '/v1/webhooks/1'], ['POST', '/v1/webhooks/1/deliveries'], ['POST', '/v1/outbox'],
      ['GET', `/v1/keys/${parent.id}/rotate`], ['POST', `/v1/keys/${parent.id}/events`], ['DELETE', '/v1/events'], ['POST', '/v1/alerts'],
    ] as const) {
      await expectAnswer(405, method, path, method === 'GET' || method === 'DELETE' ? { bearer: ADMIN } : admin({}));
    }

    // A store that fails (500) and one that never answers (503), on every route that waits on it.
    const failing = service(new AgentKey({ pool: throwingPool() as never }));
    const stalled = service(new AgentKey({ pool: hangingPool() as never }), { timeoutMs: 100 });
    for (const [status, broken] of [[500, failing], [503, stalled]] as const) {
      const { admin: adminRoutes, agent } = everyRoute(UNKNOWN_KEY);
      for (const [method, path, json] of [...adminRoutes, ...agent]) {
        await expectAnswer(status, method, path, { bearer: ADMIN, ...(json === undefined ? {} : { json }) }, broken);
      }
    }

    expect(contract.uncovered()).toEqual([]);
  });
});

forEachDatabase((getDb) => {
  it('happy: a body the document lets a client send to /v1/charge, /v1/reservations or a commit is one the service takes; one it forbids is a 400 invalid_request', async () => {
    const db = getDb();
    const ak = await db.agentKey();
    const svc = service(ak);
    const contract = openApiContract((await svc.send('GET', '/openapi.json')).body as OpenApiDoc);
    const k = await ak.create({ accountId: 'acct_doc' });
    const usage = { inputTokens: 100, outputTokens: 10 };
    const costs: Record<string, unknown>[] = [
      { costCents: 1 },
      { costCents: '0.5' },
      { model: 'gpt-4o-mini', usage },
      { provider: 'openai', model: 'gpt-4o-mini', usage },
      ...BAD_COSTS.map(([, fields]) => fields),
      { costCents: 1, model: 'gpt-4o-mini' },
      { costCents: 1, usage },
      { model: 'gpt-4o-mini', usage, color: 'red' },
    ];
    let accepted = 0;
    for (const fields of costs) {
      const hold = await ak.reserve(k.key, { costCents: 1 });
      if (!hold.success) throw new Error(hold.reason);
      for (const path of ['/v1/charge', '/v1/reservations', `/v1/reservations/${hold.reservationId}/commit`]) {
        const body = { key: k.key, ...fields };
        const res = await svc.send('POST', path, { json: body });
        const what = `POST ${path} ${JSON.stringify(fields)} -> ${res.status} ${res.text}`;
        expect(res.status, what).toBeLessThan(500);
        const documented = contract.acceptsBody('POST', path, body);
        const refusedAsMalformed = res.status === 400 && res.body.error.code === 'invalid_request';
        expect({ documented: documented.valid, refusedAsMalformed }, `${what}\n${JSON.stringify(documented.errors)}`).toEqual({ documented: !refusedAsMalformed, refusedAsMalformed });
        if (res.status < 300) accepted++;
      }
    }
    // Each of the four good bodies on each of the three routes.
    expect(accepted).toBe(12);
  });
});
