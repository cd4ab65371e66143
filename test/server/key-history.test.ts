import { describe, expect, it } from 'vitest';
import { forEachDatabase } from '../helpers/databases.js';
import { ADMIN, expectError, service, snapshot } from '../helpers/service.js';

/**
 * The admin API's rotation and event log, on PostgreSQL and PGlite: POST /v1/keys/:id/rotate
 * (the new secret once, the old one for the grace period only), GET /v1/keys/:id/events and
 * GET /v1/events (newest first, paged, with who made each change: the admin through the
 * service, a key through self-serve); bad input refused with a JSON error, changing nothing.
 */

forEachDatabase((getDb) => {
  async function setup() {
    const db = getDb();
    // As `agentkey serve` makes it: the service's own changes are the admin's.
    const ak = await db.agentKey({ actor: 'admin' });
    return { db, ak, svc: service(ak, { selfServe: { signupRateLimit: false } }) };
  }

  describe('POST /v1/keys/:id/rotate', () => {
    it('happy: the new secret verifies and charges; the old one only within its grace period; the key keeps its spend', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_r', budgetCents: 100 });
      await ak.trackUsage(k.key, { costCents: 4 });

      const res = await svc.admin('POST', `/v1/keys/${k.id}/rotate`, { gracePeriod: '1h' });
      expect(res.status, res.text).toBe(200);
      expect(res.body).toEqual({ key: expect.stringMatching(/^ak_/), id: k.id, prefix: expect.any(String), previousKeyValidUntil: expect.any(String) });
      const fresh = res.body.key as string;
      expect((await svc.send('POST', '/v1/verify', { json: { key: fresh } })).body).toMatchObject({ valid: true, budgetUsedCents: 4 });
      expect((await svc.send('POST', '/v1/verify', { json: { key: k.key } })).body).toMatchObject({ valid: true });
      expect((await svc.send('POST', '/v1/charge', { json: { key: k.key, costCents: 1 } })).status).toBe(200);

      // No body, or an empty one: no grace period; the secret of a moment ago stops at once.
      const again = await svc.send('POST', `/v1/keys/${k.id}/rotate`, { bearer: ADMIN });
      expect(again.status, again.text).toBe(200);
      expect(again.body.previousKeyValidUntil).toBeNull();
      for (const old of [k.key, fresh]) {
        expect((await svc.send('POST', '/v1/verify', { json: { key: old } })).body).toMatchObject({ valid: false, reason: 'invalid' });
        expectError(await svc.send('POST', '/v1/charge', { json: { key: old, costCents: 1 } }), 401, 'invalid_key');
      }
      expect((await svc.send('POST', '/v1/charge', { json: { key: again.body.key, costCents: 1 } })).body).toMatchObject({ success: true, budgetUsedCents: 6 });
    });

    it('unhappy: bad grace periods, unknown fields and ids, revoked keys -> JSON errors; nothing changes', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_r' });
      const gone = await ak.create({ accountId: 'acct_r' });
      await ak.revoke(gone.id);
      const before = await snapshot(ak);
      for (const body of [{ gracePeriod: '8d' }, { gracePeriod: '1mo' }, { gracePeriod: 'soon' }, { gracePeriod: 5 }, { gracePeriod: null }, { grace: '1h' }]) {
        const res = await svc.admin('POST', `/v1/keys/${k.id}/rotate`, body);
        expectError(res, 400);
        expect(res.body.error.message, JSON.stringify(body)).toMatch(/\S.*\.$/);
      }
      expectError(await svc.admin('POST', '/v1/keys/424242/rotate', {}), 404, 'key_not_found');
      expectError(await svc.admin('POST', '/v1/keys/abc/rotate', {}), 400);
      expectError(await svc.admin('POST', `/v1/keys/${gone.id}/rotate`, {}), 409, 'key_inactive');
      expect(await snapshot(ak)).toEqual(before);
      expect((await svc.send('POST', '/v1/verify', { json: { key: k.key } })).body).toMatchObject({ valid: true });
    });
  });

  describe('the event log over HTTP', () => {
    it('happy: GET /v1/keys/:id/events and /v1/events show each change newest first, with the admin or the acting key as its actor', async () => {
      const { ak, svc } = await setup();
      const root = (await svc.admin('POST', '/v1/keys', { accountId: 'acct_e', budgetCents: 100, name: 'root' })).body as { id: number; key: string };
      const child = (await svc.admin('POST', '/v1/keys', { accountId: 'acct_e', parentId: root.id, budgetCents: 50 })).body as { id: number };
      expect((await svc.admin('PATCH', `/v1/keys/${root.id}`, { name: '<b>renamed</b>' })).status).toBe(200);
      // Self-serve: the root changes its child (the package's route), recorded as the root's.
      const patched = await svc.send('PATCH', `/sdk-keys/${child.id}`, { bearer: root.key, json: { budget_cents: 20 } });
      expect(patched.status, patched.text).toBe(200);
      expect((await svc.admin('POST', `/v1/keys/${root.id}/rotate`, {})).status).toBe(200);

      const ofRoot = await svc.admin('GET', `/v1/keys/${root.id}/events`);
      expect(ofRoot.status, ofRoot.text).toBe(200);
      expect(ofRoot.body.events.map((e: { kind: string; actor: string }) => [e.kind, e.actor])).toEqual([
        ['rotated', 'admin'],
        ['updated', 'admin'],
        ['created', 'admin'],
      ]);
      expect(ofRoot.body.events[1].changes).toEqual({ name: { before: 'root', after: '<b>renamed</b>' } });

      const all = await svc.admin('GET', '/v1/events?accountId=acct_e');
      const selfServed = all.body.events.find((e: { keyId: number; kind: string }) => e.keyId === child.id && e.kind === 'updated');
      expect(selfServed).toMatchObject({ actor: 'key', actorKeyId: root.id, changes: { budgetCents: { before: 50, after: 20 } } });
      expect(all.body.events).toHaveLength(5);

      // Paging: before=<last id> goes on where a page ended.
      const page = await svc.admin('GET', '/v1/events?accountId=acct_e&limit=2');
      const next = await svc.admin('GET', `/v1/events?accountId=acct_e&limit=2&before=${page.body.events[1].id}`);
      expect([...page.body.events, ...next.body.events].map((e: { id: number }) => e.id)).toEqual(all.body.events.slice(0, 4).map((e: { id: number }) => e.id));
      expect(await ak.keyEvents({ accountId: 'acct_e' })).toEqual(all.body.events);
    });

    it('happy: a key made through self-serve is recorded as its parent\'s, a signup as "signup"', async () => {
      const { ak, svc } = await setup();
      const signup = await svc.send('POST', '/signup', { json: { email: 'agent@example.com' } });
      expect(signup.status, signup.text).toBe(201);
      const child = await svc.send('POST', '/sdk-keys', { bearer: signup.body.key, json: { name: 'helper', expires_in: '1h' } });
      expect(child.status, child.text).toBe(201);
      const [made] = await ak.keyEvents({ keyId: signup.body.id });
      expect(made).toMatchObject({ kind: 'created', actor: 'signup', actorKeyId: null });
      const [madeChild] = await ak.keyEvents({ keyId: child.body.id });
      expect(madeChild).toMatchObject({ kind: 'created', actor: 'key', actorKeyId: signup.body.id, changes: { parentId: { after: signup.body.id } } });
      // The library's own check: a key makes keys only under itself.
      const other = await ak.create({ accountId: signup.body.accountId });
      await expect(ak.create({ accountId: signup.body.accountId, parentId: other.id }, { by: signup.body.id })).rejects.toMatchObject({ code: 'invalid_argument' });
      await expect(ak.create({ accountId: signup.body.accountId }, { by: signup.body.id })).rejects.toMatchObject({ code: 'invalid_argument' });
      await expect(ak.create({ accountId: signup.body.accountId }, { signup: 'yes' } as never)).rejects.toMatchObject({ code: 'invalid_argument' });
      await expect(ak.create({ accountId: signup.body.accountId }, { actor: 'admin' } as never)).rejects.toMatchObject({ code: 'invalid_argument' });
    });

    it('unhappy: unknown keys, bad ids and queries -> JSON errors', async () => {
      const { svc } = await setup();
      expectError(await svc.admin('GET', '/v1/keys/424242/events'), 404, 'key_not_found');
      expectError(await svc.admin('GET', '/v1/keys/abc/events'), 400);
      for (const q of ['limit=0', 'limit=1001', 'limit=x', 'before=-1', 'keyId=abc', 'kind=created']) {
        expectError(await svc.admin('GET', `/v1/events?${q}`), 400);
      }
      expect((await svc.admin('GET', '/v1/events?accountId=nobody')).body).toEqual({ events: [] });
    });
  });
});
