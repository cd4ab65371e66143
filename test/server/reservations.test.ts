import { describe, expect, it } from 'vitest';
import { forEachDatabase } from '../helpers/databases.js';
import { BAD_COSTS, USAGE, priced } from '../helpers/metered.js';
import { ADMIN, UNKNOWN_HOLD, UNKNOWN_KEY, expectError, expireKey, metric, onDatabase, snapshot } from '../helpers/service.js';

/**
 * Holds over HTTP, on PostgreSQL and PGlite: POST /v1/reservations and settling them with
 * commit and release, only by the key that took them; a hold and a commit may name an LLM
 * call's model and usage instead of costCents.
 */

forEachDatabase((getDb) => {
  const { setup } = onDatabase(getDb);

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
      expect(over.body.error.limitedBy).toEqual({ kind: 'key', keyId: k.id, window: 'lifetime' });
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

  describe('holds and commits with a model and usage', () => {
    it("happy: a hold for a worst case in tokens, a commit of the real usage: the catalog's costs, the rest given back, the counts in the ledger", async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_m', budgetCents: 100 });
      const worst = { inputTokens: 2000, outputTokens: 1000 };
      const real = { inputTokens: 1800, outputTokens: 240, reasoningTokens: 40 };
      const held = await svc.post('/v1/reservations', { key: k.key, model: 'gpt-4o', usage: worst, ttl: '2m', idempotencyKey: 'h-1' });
      expect(held.status, held.text).toBe(201);
      expect(held.body).toMatchObject({ success: true, budgetRemainingCents: Number((100 - priced('gpt-4o', worst)).toFixed(4)) });
      const rid = held.body.reservationId as string;
      expect(await ak.getReservation(rid)).toMatchObject({ status: 'held', heldCents: priced('gpt-4o', worst) });
      // The same idempotency key replays the hold; other counts are a conflict.
      expect((await svc.post('/v1/reservations', { key: k.key, model: 'gpt-4o', usage: worst, ttl: '2m', idempotencyKey: 'h-1' })).body).toMatchObject({ reservationId: rid, replayed: true });
      expectError(await svc.post('/v1/reservations', { key: k.key, model: 'gpt-4o', usage: real, ttl: '2m', idempotencyKey: 'h-1' }), 409, 'idempotency_conflict');

      const committed = await svc.send('POST', `/v1/reservations/${rid}/commit`, { json: { model: 'gpt-4o', usage: real, metadata: { step: 'answer' } }, bearer: k.key });
      expect(committed.status, committed.text).toBe(200);
      const cost = priced('gpt-4o', real);
      expect(committed.body).toMatchObject({
        success: true,
        costCents: cost,
        chargedCents: cost,
        overageCents: 0,
        heldCents: priced('gpt-4o', worst),
        releasedCents: Number((priced('gpt-4o', worst) - cost).toFixed(4)),
        budgetUsedCents: cost,
      });
      // A retry of the commit replays it; other counts are a conflict.
      expect((await svc.post(`/v1/reservations/${rid}/commit`, { key: k.key, model: 'gpt-4o', usage: real, metadata: { step: 'answer' } })).body).toMatchObject({ replayed: true, costCents: cost });
      expectError(await svc.post(`/v1/reservations/${rid}/commit`, { key: k.key, model: 'gpt-4o', usage: worst }), 409, 'idempotency_conflict');
      expect(await ak.getKey(k.id)).toMatchObject({ spentCents: cost, heldCents: 0 });
      const rows = await ak.ledger({ keyId: k.id });
      expect(rows.map((r) => [r.kind, r.model ?? null, r.usage?.inputTokens ?? null])).toEqual([
        ['commit', 'gpt-4o', 1800],
        ['hold', 'gpt-4o', 2000],
      ]);
      expect(rows[0]).toMatchObject({ metadata: { step: 'answer' }, usage: { provider: 'openai', outputTokens: 240, reasoningTokens: 40 } });
      expect(await ak.audit({ keyId: k.id })).toMatchObject({ ok: true });
    });

    it('happy: a hold in cents committed with a usage past it and past the budget: the budget takes what it can, the rest is overage under the model', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_m', budgetCents: 1 });
      const held = await svc.post('/v1/reservations', { key: k.key, costCents: 0.5 });
      expect(held.status).toBe(201);
      const big = { inputTokens: 100_000, outputTokens: 20_000 };
      const res = await svc.post(`/v1/reservations/${held.body.reservationId}/commit`, { key: k.key, model: 'gpt-4o', usage: big });
      expect(res.status, res.text).toBe(200);
      expect(res.body).toMatchObject({ costCents: priced('gpt-4o', big), chargedCents: 1, overBudget: true, budgetRemainingCents: 0 });
      expect(res.body.overageCents).toBeCloseTo(priced('gpt-4o', big) - 1, 4);
      const report = await ak.usage({ keyId: k.id, byModel: true });
      expect(report.models).toEqual([expect.objectContaining({ model: 'gpt-4o', costCents: 1, count: 1, inputTokens: 100_000, outputTokens: 20_000 })]);
      expect(report.models?.[0]?.overageCents).toBeCloseTo(priced('gpt-4o', big) - 1, 4);
    });

    it('error: past the budget -> 429; a usage hold by another key cannot be committed (404); nothing is held or charged', async () => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_m', budgetCents: 0.01 });
      const other = await ak.create({ accountId: 'acct_m' });
      const before = await snapshot(ak);
      expectError(await svc.post('/v1/reservations', { key: k.key, model: 'gpt-4o', usage: { inputTokens: 100_000 } }), 429, 'budget_exceeded');
      expect(await snapshot(ak)).toEqual(before);
      const held = await svc.post('/v1/reservations', { key: other.key, model: 'gpt-4o-mini', usage: { inputTokens: 10 } });
      expect(held.status).toBe(201);
      expectError(await svc.post(`/v1/reservations/${held.body.reservationId}/commit`, { key: k.key, model: 'gpt-4o-mini', usage: { inputTokens: 10 } }), 404, 'reservation_not_found');
      expect(await ak.getReservation(held.body.reservationId)).toMatchObject({ status: 'held' });
    });

    it.each(BAD_COSTS)('error: %s -> 400 on a hold and on a commit, with its code; nothing is held, the hold stays held', async (_what, fields, code, names) => {
      const { ak, svc } = await setup();
      const k = await ak.create({ accountId: 'acct_m', budgetCents: 100 });
      const held = await svc.post('/v1/reservations', { key: k.key, costCents: 5 });
      expect(held.status).toBe(201);
      const before = await snapshot(ak);
      const hold = await svc.post('/v1/reservations', { key: k.key, ...fields });
      expectError(hold, 400, code);
      expect(hold.body.error.message).toMatch(names);
      const commit = await svc.post(`/v1/reservations/${held.body.reservationId}/commit`, { key: k.key, ...fields });
      expectError(commit, 400, code);
      expect(commit.body.error.message).toMatch(names);
      expect(await snapshot(ak)).toEqual(before);
      expect(await ak.getReservation(held.body.reservationId)).toMatchObject({ status: 'held', heldCents: 5 });
    });
  });
});
