import { describe, expect, it } from 'vitest';
import type { AgentKey } from '../src/index.js';
import { tableNames } from '../src/store/identifiers.js';
import { forEachDatabase, type TestDb, uniqueName } from './helpers/databases.js';
import { rejectsWith } from './helpers/errors.js';
import { startWorker, useWorkerBundle } from './helpers/processes.js';
import { ISO, valid } from './helpers/results.js';
import { expectAuditOk, ledgerRows, tableState } from './helpers/tables.js';
import { sleep } from './helpers/wait.js';

/**
 * rotate(): a new secret for the same key, on PostgreSQL and PGlite. The key keeps its id,
 * budget, spend, ledger and children; the previous secret works for the grace period only
 * (validate and charges alike, from the cache too, and in another process), and rotating
 * again ends any older secret. A refused rotation changes nothing.
 */

const newAccount = () => uniqueName('acct_rotate');
const WORKER = 'test/fixtures/rotate-worker.mjs';
const bundle = useWorkerBundle('rotate');

/** `call` is refused with `code` and every table is as it was. */
async function refused(db: TestDb, ak: AgentKey, call: () => Promise<unknown>, code: string, label = code) {
  const before = await tableState(db, ak);
  const err = await rejectsWith(call, code, label);
  expect(await tableState(db, ak), `${label}: a refused rotation changed a table`).toEqual(before);
  return err;
}

/** Ends the grace period of key `id`'s previous secret now, standing in for time passing. */
async function endGrace(db: TestDb, ak: AgentKey, id: number): Promise<void> {
  await db.query(
    `UPDATE ${tableNames(ak.tableName).table} SET previous_key_valid_until = now() - interval '1 second' WHERE id = $1`,
    [id],
  );
}

forEachDatabase((getDb) => {
  describe('rotating a key', () => {
    it('happy: a new secret for the same key; with no grace period the old one is invalid at once, for validate and charges', async () => {
      const ak = await getDb().agentKey();
      const account = newAccount();
      const root = await ak.create({ accountId: account, scopes: ['a', 'b'], budgetCents: 1000, budgetPeriod: 'month', name: 'r' });
      const child = await ak.create({ accountId: account, parentId: root.id, budgetCents: 100 });
      expect((await ak.trackUsage(root.key, { costCents: 7 })).success).toBe(true);
      await ak.flush();
      const before = (await ak.getKey(root.id))!;

      const r = await ak.rotate(root.id);
      expect(r).toEqual({ key: expect.stringMatching(/^ak_/), id: root.id, prefix: expect.any(String), previousKeyValidUntil: null });
      expect(r.key).not.toBe(root.key);
      expect(r.key.startsWith(r.prefix)).toBe(true);

      // The same key: id, budget, spend, period, scopes, children; only its prefix differs.
      const after = (await ak.getKey(root.id))!;
      expect(after).toEqual({ ...before, prefix: r.prefix });
      expect((await ak.getKey(child.id))!.parentId).toBe(root.id);
      expect(valid(await ak.validate(r.key))).toMatchObject({ id: root.id, budgetUsedCents: 7, scopes: ['a', 'b'] });
      expect(await ak.validate(root.key)).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.trackUsage(root.key, { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
      expect(await ak.reserve(root.key, { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
      expect(await ak.identify(root.key)).toBeNull();
      expect(await ak.identify(r.key)).toBe(root.id);

      // Spending with the new secret goes on the same ledger and counters.
      expect((await ak.trackUsage(r.key, { costCents: 3 })).success).toBe(true);
      expect((await ledgerRows(getDb(), ak, root.id)).map((row) => row.kind)).toEqual(['charge', 'charge']);
      expect((await ak.getKey(root.id))!.spentCents).toBe(10);
      expect(valid(await ak.validate(child.key)).id).toBe(child.id);
      await expectAuditOk(ak);
    });

    it('happy: within the grace period both secrets work; past it the old one is refused as invalid, even from the cache', async () => {
      const db = getDb();
      const ak = await db.agentKey({ cache: { ttlMs: 600_000 } });
      const k = await ak.create({ accountId: newAccount(), budgetCents: 100 });
      valid(await ak.validate(k.key));

      const t0 = Date.now();
      const r = await ak.rotate(k.id, { gracePeriod: '1h' });
      expect(r.previousKeyValidUntil).toMatch(ISO);
      const until = Date.parse(r.previousKeyValidUntil!);
      expect(until).toBeGreaterThanOrEqual(t0 + 3_600_000 - 1_000);
      expect(until).toBeLessThanOrEqual(Date.now() + 3_600_000 + 1_000);

      expect(valid(await ak.validate(k.key)).id).toBe(k.id);
      expect(valid(await ak.validate(r.key)).id).toBe(k.id);
      expect(await ak.trackUsage(k.key, { costCents: 2 })).toMatchObject({ success: true, budgetUsedCents: 2 });
      expect(await ak.trackUsage(r.key, { costCents: 3 })).toMatchObject({ success: true, budgetUsedCents: 5 });
      const hold = await ak.reserve(k.key, { costCents: 4 });
      expect(hold.success).toBe(true);
      expect(await ak.identify(k.key)).toBe(k.id);

      // A real grace period of one second, the old secret cached meanwhile: the cache
      // never serves it past its end.
      const short = await ak.rotate(k.id, { gracePeriod: '1s' });
      const shortUntil = Date.parse(short.previousKeyValidUntil!);
      // Rotating again ended the first secret at once, grace period or not.
      expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.trackUsage(k.key, { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
      let lastValidAt = 0;
      let refusal: unknown = null;
      // Bounded: a second past the end at most, then whatever was last seen is judged.
      while (refusal === null && Date.now() < shortUntil + 1_000) {
        const startedAt = Date.now();
        const v = await ak.validate(r.key);
        if (v.valid) lastValidAt = startedAt;
        else refusal = v;
        await sleep(20);
      }
      expect(refusal).toEqual({ valid: false, reason: 'invalid' });
      expect(lastValidAt, 'the previous secret was served valid past its grace period').toBeLessThan(shortUntil);
      expect(ak.cacheStats()!.hits).toBeGreaterThan(0);
      expect(await ak.trackUsage(r.key, { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
      expect(valid(await ak.validate(short.key)).budgetUsedCents).toBe(5);
      await expectAuditOk(ak);
    });

    it('security: past its grace period the old secret is invalid even when looked up in one query with the key\'s current secret', async () => {
      const db = getDb();
      for (const cache of [false, undefined] as const) {
        const ak = await db.agentKey(cache === false ? { cache: false } : {});
        const k = await ak.create({ accountId: newAccount() });
        const r = await ak.rotate(k.id, { gracePeriod: '1h' });
        await endGrace(db, ak, k.id);
        // Lookups of concurrent validations go out together (one query for both hashes).
        const [old, fresh] = await Promise.all([ak.validate(k.key), ak.validate(r.key)]);
        expect(old, `cache ${String(cache)}`).toEqual({ valid: false, reason: 'invalid' });
        expect(valid(fresh).id).toBe(k.id);
        const again = await Promise.all([ak.validate(r.key), ak.validate(k.key), ak.identify(k.key)]);
        expect(again[1]).toEqual({ valid: false, reason: 'invalid' });
        expect(again[2]).toBeNull();
      }
    });

    it('happy: a grace period written to have ended (time passing) refuses the old secret for charges and holds', async () => {
      const db = getDb();
      const ak = await db.agentKey({ cache: false });
      const k = await ak.create({ accountId: newAccount(), budgetCents: 100 });
      const r = await ak.rotate(k.id, { gracePeriod: '7d' });
      expect(Date.parse(r.previousKeyValidUntil!)).toBeGreaterThan(Date.now() + 6 * 86_400_000);
      expect((await ak.trackUsage(k.key, { costCents: 1 })).success).toBe(true);
      await endGrace(db, ak, k.id);
      expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.trackUsage(k.key, { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
      expect(await ak.reserve(k.key, { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
      expect((await ak.trackUsage(r.key, { costCents: 1 })).success).toBe(true);
      expect((await ak.getKey(k.id))!.spentCents).toBe(2);
    });

    it('happy: gracePeriod 0 and "0s" mean none; an expired key may be rotated (it stays expired); accountId must match', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const account = newAccount();
      const k = await ak.create({ accountId: account });
      expect((await ak.rotate(k.id, { gracePeriod: 0 })).previousKeyValidUntil).toBeNull();
      expect((await ak.rotate(String(k.id), { gracePeriod: '0s', accountId: account })).previousKeyValidUntil).toBeNull();
      expect((await ak.rotate(k.id, { gracePeriod: '0' as never })).previousKeyValidUntil).toBeNull();
      const e = await ak.create({ accountId: account, expiresIn: '0h' });
      const re = await ak.rotate(e.id);
      expect(await ak.validate(re.key)).toEqual({ valid: false, reason: 'expired' });
    });

    it('unhappy: unknown, other account, revoked, a subject, bad grace periods and unknown options are refused and change nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const account = newAccount();
      const k = await ak.create({ accountId: account });
      const gone = await ak.create({ accountId: account });
      await ak.revoke(gone.id);
      await ak.ensureSubject(uniqueName('user'), { accountId: account, budgetCents: 5 });
      const [subject] = await db.query<{ id: number }>(
        `SELECT id FROM ${tableNames(ak.tableName).table} WHERE external_subject IS NOT NULL ORDER BY id DESC LIMIT 1`,
      );

      const e1 = await refused(db, ak, () => ak.rotate(999_999), 'key_not_found');
      expect(e1.message).toBe('No key has id 999999.');
      await refused(db, ak, () => ak.rotate(k.id, { accountId: 'someone_else' }), 'key_not_found', 'another account');
      expect((await refused(db, ak, () => ak.rotate(gone.id), 'key_inactive')).message).toMatch(/revoked/);
      expect((await refused(db, ak, () => ak.rotate(Number(subject!.id)), 'invalid_argument', 'subject')).message).toMatch(/subject/);
      for (const grace of ['8d', '2w', '1mo', '-1s', 'soon', '', 5, -1, null, true]) {
        await refused(db, ak, () => ak.rotate(k.id, { gracePeriod: grace as never }), 'invalid_duration', `gracePeriod ${JSON.stringify(grace)}`);
      }
      expect((await rejectsWith(() => ak.rotate(k.id, { gracePeriod: '8d' }), 'invalid_duration')).message).toBe(
        "Invalid duration: 8d (gracePeriod must be at most 7 days, '7d').",
      );
      await refused(db, ak, () => ak.rotate(k.id, { grace: '1h' } as never), 'invalid_argument', 'unknown option');
      await refused(db, ak, () => ak.rotate('abc'), 'invalid_argument', 'bad id');
      await refused(db, ak, () => ak.rotate(0), 'invalid_argument', 'zero id');
      valid(await ak.validate(k.key));
    });

    it('concurrency: charges with the old secret racing a rotation (no grace) either land before it or are refused; none is lost or doubled', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const k = await ak.create({ accountId: newAccount(), budgetCents: 10_000 });
      const charges = Array.from({ length: 40 }, (_, i) =>
        (async () => {
          await sleep(i % 8);
          return ak.trackUsage(k.key, { costCents: 1 });
        })(),
      );
      const rotated = ak.rotate(k.id);
      const results = await Promise.all(charges);
      const r = await rotated;
      const ok = results.filter((x) => x.success).length;
      for (const x of results) if (!x.success) expect(x).toEqual({ success: false, reason: 'invalid_key' });
      expect((await ak.getKey(k.id))!.spentCents).toBe(ok);
      expect((await ledgerRows(db, ak, k.id)).length).toBe(ok);
      // After the rotation has returned, the old secret never charges again.
      expect(await ak.trackUsage(k.key, { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
      expect((await ak.trackUsage(r.key, { costCents: 1 })).success).toBe(true);
      await expectAuditOk(ak);
    });
  });
});

forEachDatabase(
  (getDb) => {
    it('concurrency: another process that cached the old secret serves it only within the grace period, then refuses it', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const table = ak.tableName;
      const k = await ak.create({ accountId: newAccount(), budgetCents: 1_000 });
      const worker = startWorker(WORKER, [bundle(), JSON.stringify({ url: db.url, directUrl: db.directUrl, table, key: k.key, ttlMs: 600_000 })]);
      const ready = (await worker.nextMessage()) as { type: string; stats: { invalidations: number } };
      expect(ready, worker.stderr()).toMatchObject({ type: 'ready', stats: { listening: true } });

      const r = await ak.rotate(k.id, { gracePeriod: '2s' });
      const graceEnd = Date.parse(r.previousKeyValidUntil!);
      const seen = (await worker.nextMessage()) as {
        type: string;
        result: unknown;
        lastValidAt: number | null;
        chargedOk: number;
        chargeAfter: unknown;
        stats: { invalidations: number };
      };
      expect(seen, worker.stderr()).toMatchObject({ type: 'seen', result: { valid: false, reason: 'invalid' } });
      expect(seen.lastValidAt, 'the worker never validated the old secret during the grace period').not.toBeNull();
      expect(seen.lastValidAt!, 'the other process served the old secret past its grace period').toBeLessThan(graceEnd);
      expect(seen.chargeAfter).toEqual({ success: false, reason: 'invalid_key' });
      // It heard of the rotation (the change notification), so it read the key again.
      expect(seen.stats.invalidations).toBeGreaterThan(ready.stats.invalidations);
      expect(await worker.exited, worker.stderr()).toBe(0);
      // Every charge the worker made with the old secret is on the key.
      expect(Math.round(Number((await ak.getKey(k.id))!.spentCents) * 100)).toBe(seen.chargedOk);
      expect(valid(await ak.validate(r.key)).id).toBe(k.id);
      await expectAuditOk(ak);
    });
  },
  ['postgres'],
);
