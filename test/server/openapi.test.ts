import { describe, expect, it } from 'vitest';
import { AgentKey } from '../../src/index.js';
import { hangingPool } from '../helpers/faults.js';
import { service } from '../helpers/service.js';

/**
 * GET /openapi.json: the document generated from the schemas that validate the requests.
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
