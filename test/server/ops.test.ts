import { describe, expect, it } from 'vitest';
import { forEachDatabase } from '../helpers/databases.js';
import { ADMIN, expectError, memoryLogger, metric, onDatabase, parseMetrics, service } from '../helpers/service.js';

/**
 * The operators' routes, on PostgreSQL and PGlite: /healthz and /metrics.
 */

forEachDatabase((getDb) => {
  const { setup, createKey } = onDatabase(getDb);

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

      // The retry with the same idempotency key is a replay, not a third charge.
      expect(metric(samples, 'agentkey_charges_total', { kind: 'charge', outcome: 'charged' })).toBe(2);
      expect(metric(samples, 'agentkey_charges_total', { kind: 'charge', outcome: 'replayed' })).toBe(1);
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
      // Node's process metrics are on each app's registry too, without clashing.
      for (const app of [svc, other]) expect(metric(await app.metrics(), 'process_cpu_user_seconds_total')).toBeGreaterThan(0);
    });

    it('happy: holds, commits and releases are counted by outcome, with the cents held, charged, given back and over budget; replays add nothing', async () => {
      const { ak, svc } = await setup();
      const parent = await ak.create({ accountId: 'acct_h', budgetCents: 20 });
      const child = await ak.create({ accountId: 'acct_h', parentId: parent.id, budgetCents: 10 });
      const other = await ak.create({ accountId: 'acct_h' });
      const hold = async (json: Record<string, unknown>) => (await svc.post('/v1/reservations', json)).body.reservationId as string;

      const a = await hold({ key: child.key, costCents: 4, idempotencyKey: 'a' });
      expect(await hold({ key: child.key, costCents: 4, idempotencyKey: 'a' })).toBe(a);
      const b = await hold({ key: child.key, costCents: 3 });
      expect((await svc.post('/v1/reservations', { key: child.key, costCents: 50 })).status).toBe(429);
      expect((await svc.post('/v1/reservations', { key: 'ak_garbage', costCents: 1 })).status).toBe(401);
      expect((await svc.post('/v1/reservations', { key: child.key, costCents: 5, idempotencyKey: 'a' })).status).toBe(409);

      // a: commits 2.5 of its 4 (1.5 given back), then a replay; b: commits 9 of its 3, of which the budget takes 7.5.
      expect((await svc.post(`/v1/reservations/${a}/commit`, { key: child.key, costCents: 2.5 })).status).toBe(200);
      expect((await svc.post(`/v1/reservations/${a}/commit`, { key: child.key, costCents: 2.5 })).body.replayed).toBe(true);
      expect((await svc.post(`/v1/reservations/${a}/commit`, { key: child.key, costCents: 3 })).status).toBe(409);
      expect((await svc.post(`/v1/reservations/${a}/release`, { key: child.key })).status).toBe(409);
      expect((await svc.post(`/v1/reservations/${b}/commit`, { key: other.key, costCents: 1 })).status).toBe(404);
      expect((await svc.post(`/v1/reservations/${b}/commit`, { costCents: 1 })).status).toBe(401);
      const over = await svc.post(`/v1/reservations/${b}/commit`, { key: child.key, costCents: 9 });
      expect(over.body).toMatchObject({ chargedCents: 7.5, overageCents: 1.5 });

      // c: released, then a replay.
      const c = await hold({ key: parent.key, costCents: 0.5 });
      expect((await svc.post(`/v1/reservations/${c}/release`, { key: parent.key })).body).toMatchObject({ releasedCents: 0.5 });
      expect((await svc.post(`/v1/reservations/${c}/release`, { key: parent.key })).body.replayed).toBe(true);
      expect((await svc.post(`/v1/reservations/${c}/commit`, { key: parent.key, costCents: 1 })).status).toBe(409);

      const samples = await svc.metrics();
      const count = (name: string, labels: Record<string, string>) => metric(samples, name, labels) ?? 0;
      expect({
        held: count('agentkey_holds_total', { outcome: 'held' }),
        heldReplayed: count('agentkey_holds_total', { outcome: 'replayed' }),
        heldRefused: count('agentkey_holds_total', { outcome: 'budget_exceeded' }),
        heldInvalid: count('agentkey_holds_total', { outcome: 'invalid' }),
        heldConflict: count('agentkey_holds_total', { outcome: 'idempotency_conflict' }),
        committed: count('agentkey_charges_total', { kind: 'commit', outcome: 'charged' }),
        commitReplayed: count('agentkey_charges_total', { kind: 'commit', outcome: 'replayed' }),
        commitConflict: count('agentkey_charges_total', { kind: 'commit', outcome: 'idempotency_conflict' }),
        commitNotFound: count('agentkey_charges_total', { kind: 'commit', outcome: 'reservation_not_found' }),
        commitNoKey: count('agentkey_charges_total', { kind: 'commit', outcome: 'missing_key' }),
        commitReleased: count('agentkey_charges_total', { kind: 'commit', outcome: 'already_released' }),
        released: count('agentkey_releases_total', { outcome: 'released' }),
        releaseReplayed: count('agentkey_releases_total', { outcome: 'replayed' }),
        releaseCommitted: count('agentkey_releases_total', { outcome: 'already_committed' }),
        overageCommits: count('agentkey_overage_commits_total', {}),
      }).toEqual({
        held: 3, heldReplayed: 1, heldRefused: 1, heldInvalid: 1, heldConflict: 1,
        committed: 2, commitReplayed: 1, commitConflict: 1, commitNotFound: 1, commitNoKey: 1, commitReleased: 1,
        released: 1, releaseReplayed: 1, releaseCommitted: 1,
        overageCommits: 1,
      });
      expect(metric(samples, 'agentkey_held_cents_total')).toBeCloseTo(4 + 3 + 0.5, 10);
      expect(metric(samples, 'agentkey_charged_cents_total')).toBeCloseTo(2.5 + 7.5, 10);
      expect(metric(samples, 'agentkey_overage_cents_total')).toBeCloseTo(1.5, 10);
      expect(metric(samples, 'agentkey_released_cents_total')).toBeCloseTo(1.5 + 0.5, 10);
      // The counters agree with the ledger: what was charged is what it recorded.
      expect((await ak.usage({ accountId: 'acct_h' })).totalCents).toBeCloseTo(2.5 + 7.5, 10);
    });
  });

});
