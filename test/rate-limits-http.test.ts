import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { afterEach, describe, expect, it } from 'vitest';
import { agentKeyMiddleware } from '../src/index.js';
import { ALL_SURFACES, closeApps, refusalView } from './helpers/adapters.js';
import { forEachDatabase, uniqueName } from './helpers/databases.js';
import { ADMIN, expectError, service } from './helpers/service.js';
import { until } from './helpers/wait.js';

/**
 * Rate limits over HTTP: every surface (the Express middleware, Hono, fetch, Fastify, the
 * service's /v1/verify) answers a rate limit with 429 rate_limited, the same fields and a
 * Retry-After header in whole seconds (rounded up); a concurrency slot is freed when the
 * response ends, after a handler that threw and after a client that went away; the admin
 * routes set key and account limits, and refuse bad ones with 400 changing nothing.
 */

afterEach(closeApps);
const account = () => uniqueName('acct_rlh');

/** A gate the handler waits on, opened by the test. */
function gate() {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { opened, open };
}

forEachDatabase((getDb) => {
  for (const surface of ALL_SURFACES) {
    describe(`${surface.name}: rate limits`, () => {
      it('error: past the rate limit, 429 rate_limited with limit, limitedBy, retryAfterMs, resetAt and Retry-After; the handler is not reached', async () => {
        const ak = await getDb().agentKey();
        const { key, id } = await ak.create({ accountId: account(), rateLimit: { requests: 2, per: '1d' } });
        const app = await surface.build(ak, {});
        expect((await app.send({ key })).status).toBe(200);
        expect((await app.send({ key })).status).toBe(200);
        const reply = await app.send({ key });
        const view = refusalView(reply);
        expect(view.status).toBe(429);
        expect(view.code).toBe('rate_limited');
        expect(view.message).toMatch(/Retry-After/);
        expect(view.fields).toMatchObject({ limit: 'requests', limitedBy: { kind: 'key', keyId: id }, retryAfterMs: expect.any(Number) });
        const resetAt = Date.parse(view.fields.resetAt as string);
        expect(new Date(resetAt).getUTCHours()).toBe(0);
        expect(reply.headers['retry-after']).toBe(String(Math.ceil((view.fields.retryAfterMs as number) / 1000)));
        expect(app.state.reached).toBe(2);
        await ak.close();
      });

      it('happy: a concurrency slot is freed after a handler that threw, and a request past the limit is 429 concurrency', async () => {
        const ak = await getDb().agentKey();
        const { key } = await ak.create({ accountId: account(), concurrency: 1 });
        const g = gate();
        let calls = 0;
        const app = await surface.build(ak, {}, async () => {
          calls++;
          if (calls === 1) {
            await g.opened;
            throw new Error('handler failed');
          }
        });
        const first = app.send({ key });
        await until(() => app.state.reached === 1, 'the first request in its handler');
        const second = await app.send({ key });
        expect(refusalView(second)).toMatchObject({ status: 429, code: 'rate_limited', fields: { limit: 'concurrency', resetAt: null } });
        expect(second.headers['retry-after']).toBe('1');
        g.open();
        expect((await first).status).toBe(500);
        // The thrown handler's slot is free again (Express and Fastify free it when the response has ended).
        await until(async () => (await app.send({ key })).status === 200, 'the slot freed');
        expect(calls).toBe(2);
        await ak.close();
      });
    });
  }

  describe('express: a client that goes away', () => {
    it('happy: the concurrency slot is freed when the client aborts, before the handler ends', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: account(), concurrency: 1 });
      const g = gate();
      let reached = 0;
      const app = express();
      app.post('/slow', agentKeyMiddleware(ak), async (_req, res) => {
        reached++;
        if (reached === 1) await g.opened;
        res.json({ ok: true });
      });
      const server = http.createServer(app);
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const port = (server.address() as AddressInfo).port;
      const post = () =>
        new Promise<{ status: number; req: http.ClientRequest }>((resolve, reject) => {
          const req = http.request({ port, host: '127.0.0.1', path: '/slow', method: 'POST', headers: { authorization: `Bearer ${key}` } }, (res) => {
            res.resume();
            resolve({ status: res.statusCode ?? 0, req });
          });
          req.on('error', reject);
          req.end();
        });
      try {
        const aborted = http.request({ port, host: '127.0.0.1', path: '/slow', method: 'POST', headers: { authorization: `Bearer ${key}` } });
        aborted.on('error', () => {});
        aborted.end();
        await until(() => reached === 1, 'the first request in its handler');
        expect((await post()).status).toBe(429);
        aborted.destroy();
        // The handler is still waiting, but its client left: the slot is free.
        await until(async () => (await post()).status === 200, 'the slot freed');
        expect(reached).toBe(2);
      } finally {
        g.open();
        await new Promise((resolve) => server.close(resolve));
        await ak.close();
      }
    });
  });

  describe('the service', () => {
    it('error: /v1/verify past the rate limit is 429 rate_limited with Retry-After; under it, 200 valid', async () => {
      const ak = await getDb().agentKey();
      const svc = service(ak);
      const acct = account();
      const { key } = await ak.create({ accountId: acct });
      expect((await svc.admin('PUT', `/v1/accounts/${acct}/rate-limit`, { rateLimit: { requests: 1, per: '1h' } })).status).toBe(200);
      const ok = await svc.post('/v1/verify', { key });
      expect(ok.status).toBe(200);
      expect(ok.body.valid).toBe(true);
      const refused = await svc.post('/v1/verify', { key });
      expectError(refused, 429, 'rate_limited');
      expect(refused.body.error).toMatchObject({ limit: 'requests', limitedBy: { kind: 'account', accountId: acct } });
      expect(new Date(refused.body.error.resetAt).getUTCMinutes()).toBe(0);
      expect(refused.headers['retry-after']).toBe(String(Math.ceil(refused.body.error.retryAfterMs / 1000)));
      const metrics = await svc.metrics();
      expect(metrics.some((m) => m.name === 'agentkey_verifications_total' && m.labels.outcome === 'rate_limited')).toBe(true);
      await ak.close();
    });

    it('happy: POST and PATCH /v1/keys take rateLimit and concurrency; the account routes set, read and remove limits', async () => {
      const ak = await getDb().agentKey();
      const svc = service(ak);
      const acct = account();
      const created = await svc.admin('POST', '/v1/keys', { accountId: acct, rateLimit: { requests: 60, per: '1m' }, concurrency: 3 });
      expect(created.status).toBe(201);
      expect(created.body).toMatchObject({ rateLimit: { requests: 60, per: '1m' }, concurrency: 3 });
      const patched = await svc.admin('PATCH', `/v1/keys/${created.body.id}`, { rateLimit: null, concurrency: 9 });
      expect(patched.body).toMatchObject({ rateLimit: null, concurrency: 9 });
      expect((await svc.admin('GET', `/v1/accounts/${acct}/rate-limit`)).status).toBe(404);
      const put = await svc.admin('PUT', `/v1/accounts/${acct}/rate-limit`, { rateLimit: { requests: 100, per: '1d' }, concurrency: 4 });
      expect(put.body).toMatchObject({ accountId: acct, rateLimit: { requests: 100, per: '1d' }, concurrency: 4 });
      expect((await svc.admin('GET', `/v1/accounts/${acct}/rate-limit`)).body).toEqual(put.body);
      const listed = await svc.admin('GET', '/v1/accounts');
      expect(listed.body.accounts.find((a: { accountId: string }) => a.accountId === acct)).toMatchObject({ rateLimit: { requests: 100, per: '1d' }, concurrency: 4 });
      expect((await svc.admin('DELETE', `/v1/accounts/${acct}/rate-limit`)).body).toEqual({ accountId: acct, removed: true });
      expectError(await svc.admin('DELETE', `/v1/accounts/${acct}/rate-limit`), 404, 'not_found');
      await ak.close();
    });

    it('error: bad limits are 400 on every admin route and change nothing; the account routes need the admin key', async () => {
      const ak = await getDb().agentKey();
      const svc = service(ak);
      const acct = account();
      const { id } = await ak.create({ accountId: acct });
      const before = await ak.listKeys({ accountId: acct });
      const bad = [
        { rateLimit: { requests: 0, per: '1m' } },
        { rateLimit: { requests: 5, per: '1w' } },
        { rateLimit: { requests: 5, per: 'soon' } },
        { rateLimit: { requests: '5', per: '1m' } },
        { rateLimit: { requests: 5 } },
        { rateLimit: { requests: 5, per: '1m', burst: 1 } },
        { rateLimit: '5/1m' },
        { concurrency: 0 },
        { concurrency: 1.5 },
        { concurrency: 'many' },
      ];
      for (const body of bad) {
        const label = JSON.stringify(body);
        const create = await svc.admin('POST', '/v1/keys', { accountId: acct, ...body });
        expect([400], `create ${label}: ${create.text}`).toContain(create.status);
        expect(['invalid_rate_limit', 'invalid_request']).toContain(create.body.error.code);
        expectError(await svc.admin('PATCH', `/v1/keys/${id}`, body), 400);
        expectError(await svc.admin('PUT', `/v1/accounts/${acct}/rate-limit`, body), 400);
      }
      expectError(await svc.admin('PUT', `/v1/accounts/${acct}/rate-limit`, {}), 400, 'invalid_rate_limit');
      expect(await ak.listKeys({ accountId: acct })).toEqual(before);
      expect(await ak.getAccountRateLimit(acct)).toBeNull();
      expectError(await svc.send('PUT', `/v1/accounts/${acct}/rate-limit`, { json: { concurrency: 1 } }), 401, 'missing_admin_key');
      expectError(await svc.send('GET', `/v1/accounts/${acct}/rate-limit`, { bearer: `${ADMIN}x` }), 401, 'invalid_admin_key');
      await ak.close();
    });
  });
});
