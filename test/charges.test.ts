import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { AgentKey, MAX_CENTS } from '../src/index.js';
import { forEachDatabase } from './helpers/databases.js';
import { packageKey, packageTableSql } from './helpers/package.js';
import { rejectsWith } from './helpers/errors.js';
import { valid } from './helpers/results.js';
import { expectAuditOk, holdRows, keyCount, keyRow, ledgerRows, spentMicros } from './helpers/tables.js';

/**
 * Charges are exact and never pass a budget, on PostgreSQL and PGlite: amounts in micro-dollars
 * add up to the cent, the @katrinalaszlo/agentkey package's INTEGER cent columns round the safe
 * way, and concurrent charges, holds, commits and releases in one process stay within the
 * budget and equal to the ledger.
 * Races between OS processes are in spend-processes.test.ts.
 */

forEachDatabase((getDb) => {
  describe('money', () => {
    it('happy: 2000 charges of 0.03 cents add up to exactly 60 cents', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 60 });
      let floatSum = 0;
      for (let i = 0; i < 2000; i++) {
        const r = await ak.trackUsage(key, { costCents: 0.03 });
        expect(r.success).toBe(true);
        floatSum += 0.03;
      }
      expect(floatSum).not.toBe(60); // what summing floats would have stored
      // Nothing left: validate refuses the key; getKey shows its figures.
      expect(await ak.validate(key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect(await ak.getKey(id)).toMatchObject({ spentCents: 60, remainingCents: 0 });
      const row = await keyRow(db, ak, id);
      expect(row.spent_micros).toBe('600000');
      expect(row.budget_used_cents).toBe('60');
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded', budgetUsedCents: 60 });
      // 2000 calls one after another: about 15 s on PGlite on a loaded 2-core machine; a correctness test, so room to finish.
    }, 180_000);

    it('happy: a $0.0003 call costs 0.03 cents, not a whole cent', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 1 });
      expect(await ak.trackUsage(key, { costCents: 0.03 })).toEqual({ success: true, budgetUsedCents: 0.03, budgetRemainingCents: 0.97 });
      const row = await keyRow(db, ak, id);
      expect(row.spent_micros).toBe('300');
      // The package's INTEGER column shows whole cents, spend rounded up.
      expect(row.budget_used_cents).toBe('1');
      // 0.1 + 0.2 is exactly 0.3 here.
      await ak.trackUsage(key, { costCents: 0.1 });
      await ak.trackUsage(key, { costCents: 0.2 });
      expect(valid(await ak.validate(key)).budgetUsedCents).toBe(0.33);
      // 0.07 * 10000 is 700.0000000000001 in floating point; the charge is still 700 micros.
      expect(await ak.trackUsage(key, { costCents: 0.07 })).toEqual({ success: true, budgetUsedCents: 0.4, budgetRemainingCents: 0.6 });
      expect(await keyRow(db, ak, id)).toMatchObject({ spent_micros: '4000', budget_cents: '1', budget_used_cents: '1' });
    });

    it('happy: a $1 billion budget charges exactly to the cent, then refuses 0.0001 cent more', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 1e11 });
      expect(valid(await ak.validate(key))).toMatchObject({ budgetCents: 1e11, budgetRemainingCents: 1e11 });
      expect(await ak.trackUsage(key, { costCents: 99_999_999_999.9999 })).toEqual({
        success: true,
        budgetUsedCents: 99_999_999_999.9999,
        budgetRemainingCents: 0.0001,
      });
      expect(await ak.trackUsage(key, { costCents: 0.0002 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toEqual({ success: true, budgetUsedCents: 1e11, budgetRemainingCents: 0 });
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded', budgetUsedCents: 1e11 });
      const row = await keyRow(db, ak, id);
      expect(row.spent_micros).toBe('1000000000000000');
      expect(row.budget_micros).toBe('1000000000000000');
      // The package's INTEGER columns are capped at 2147483647 cents; the micros columns hold the figures.
      expect(row.budget_cents).toBe('2147483647');
      expect(row.budget_used_cents).toBe('2147483647');

      const max = await ak.create({ accountId: 'a', budgetCents: MAX_CENTS });
      expect(await ak.trackUsage(max.key, { costCents: MAX_CENTS })).toMatchObject({ success: true, budgetRemainingCents: 0 });
      await rejectsWith(() => ak.create({ accountId: 'a', budgetCents: MAX_CENTS + 1 }), 'invalid_budget');
    });

    it("happy: the package's budget_cents and budget_used_cents columns stay INTEGER whole cents (budget down, spend up); micros are exact", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 1234.5678 });
      await ak.trackUsage(key, { costCents: 0.0003 });
      await ak.trackUsage(key, { costCents: 12.5 });
      const row = await keyRow(db, ak, id);
      expect(row.budget_cents).toBe('1234');
      expect(row.budget_used_cents).toBe('13');
      expect(row.budget_micros).toBe('12345678');
      expect(row.spent_micros).toBe('125003');
      const types = await db.query<{ column_name: string; data_type: string }>(
        `SELECT column_name, data_type FROM information_schema.columns
          WHERE table_name = $1 AND column_name IN ('budget_cents', 'budget_used_cents', 'budget_micros', 'spent_micros')
          ORDER BY column_name`,
        [ak.tableName],
      );
      expect(Object.fromEntries(types.map((t) => [t.column_name, t.data_type]))).toEqual({
        budget_cents: 'integer',
        budget_used_cents: 'integer',
        budget_micros: 'bigint',
        spent_micros: 'bigint',
      });
    });

    it('security: budgets finer than a micro-dollar round down and costs round up', async () => {
      const ak = await getDb().agentKey();
      const half = await ak.create({ accountId: 'a', budgetCents: 0.00005 });
      expect(half.budgetCents).toBe(0);
      expect(await ak.getKey(half.id)).toMatchObject({ budgetCents: 0 });
      // A $0 budget leaves nothing to spend: validate refuses it.
      expect(await ak.validate(half.key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsage(half.key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      const k = await ak.create({ accountId: 'a', budgetCents: 0.00015 });
      expect(await ak.trackUsage(k.key, { costCents: 0.00001 })).toEqual({ success: true, budgetUsedCents: 0.0001, budgetRemainingCents: 0 });
      expect(await ak.trackUsage(k.key, { costCents: 0.00001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
    });
  });

  describe('concurrency', () => {
    it('security: 500 concurrent charges through a 10-connection pool never pass the budget', async () => {
      const db = getDb();
      if (db.name === 'postgres') expect((db.pool as pg.Pool).options.max).toBe(10);
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const results = await Promise.all(Array.from({ length: 500 }, () => ak.trackUsage(key, { costCents: 0.3 })));
      const accepted = results.filter((r) => r.success).length;
      expect(accepted).toBe(Math.floor(100 / 0.3)); // 333
      for (const r of results) if (!r.success) expect(r.reason).toBe('budget_exceeded');
      expect((await keyRow(db, ak, id)).spent_micros).toBe(String(accepted * 3000));
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 99.9, budgetRemainingCents: 0.1 });
    });

    it('security: 500 concurrent charges of mixed sizes: spend equals the accepted sum and never passes the budget', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 250 });
      const micros = Array.from({ length: 500 }, (_, i) => 1 + ((i * 7919) % 20_000)); // 0.0001 to 2 cents
      const results = await Promise.all(micros.map((m) => ak.trackUsage(key, { costCents: m / 10_000 })));
      let acceptedMicros = 0;
      let minRefused = Infinity;
      results.forEach((r, i) => {
        if (r.success) acceptedMicros += micros[i]!;
        else {
          expect(r.reason).toBe('budget_exceeded');
          minRefused = Math.min(minRefused, micros[i]!);
        }
      });
      expect(acceptedMicros).toBeLessThanOrEqual(2_500_000);
      expect(Number((await keyRow(db, ak, id)).spent_micros)).toBe(acceptedMicros);
      // A charge is only refused when it does not fit: every refused cost exceeds what is left at the end.
      expect(minRefused).toBeGreaterThan(2_500_000 - acceptedMicros);
    });

    it('security: concurrent charges at a period rollover reset the spend exactly once', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100, budgetPeriod: 'day' });
      expect(await ak.trackUsage(key, { costCents: 90 })).toMatchObject({ success: true });
      await db.query(`UPDATE ${ak.tableName} SET budget_reset_at = now() - interval '1 minute' WHERE id = $1`, [id]);
      const results = await Promise.all(Array.from({ length: 200 }, () => ak.trackUsage(key, { costCents: 1 })));
      expect(results.filter((r) => r.success)).toHaveLength(100);
      const row = await keyRow(db, ak, id);
      expect(row.spent_micros).toBe('1000000');
      expect(row.budget_reset_at!.getTime()).toBeGreaterThan(Date.now());
    });

    it('happy: concurrent ensureSubject of one subject makes one row', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const calls = await Promise.allSettled(
        Array.from({ length: 50 }, (_, i) => ak.ensureSubject('mch_race', { budgetCents: 100 + i })),
      );
      expect(calls.filter((c) => c.status === 'rejected')).toEqual([]);
      expect(await keyCount(db, ak)).toBe(1);
      expect(await ak.validateBySubject('mch_race')).toMatchObject({ valid: true, accountId: 'mch_race' });
    });
  });

  describe('precision and concurrency in one process', () => {
    it('happy: 2000 concurrent charges of 0.03 cents add up to exactly 60 cents (600000 micros), 2000 ledger rows, audit ok', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_p', budgetCents: 60 });
      const results = await Promise.all(Array.from({ length: 2000 }, () => ak.trackUsage(key, { costCents: 0.03 })));
      expect(results.filter((r) => !r.success)).toEqual([]);
      expect(await spentMicros(db, ak, id)).toBe(600_000);
      // Spent to the cent: validate refuses the key; getKey shows its figures.
      expect(await ak.validate(key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect(await ak.getKey(id)).toMatchObject({ budgetCents: 60, spentCents: 60, heldCents: 0, remainingCents: 0 });
      const rows = await ledgerRows(db, ak);
      expect(rows).toHaveLength(2000);
      expect(rows.every((r) => r.kind === 'charge' && r.amount === 300)).toBe(true);
      expect(await ak.usage({ keyId: id })).toEqual({ totalCents: 60, count: 2000, overageCents: 0, buckets: [] });
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.audit()).toEqual({ ok: true, keysChecked: 1, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
    });

    it('happy: float noise is not charged (500 charges of 0.1 + 0.2 cost 150 cents); decimal strings are exact everywhere', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_f', budgetCents: '150' });
      const results = await Promise.all(Array.from({ length: 500 }, () => ak.trackUsage(key, { costCents: 0.1 + 0.2 })));
      expect(results.filter((r) => !r.success)).toEqual([]);
      expect(await spentMicros(db, ak, id)).toBe(1_500_000);
      expect((await ledgerRows(db, ak)).every((r) => r.amount === 3_000)).toBe(true);
      // strings: a budget, a charge, a hold, a commit and an adjustment
      const s = await ak.create({ accountId: 'acct_f', budgetCents: '10.5' });
      expect(s.budgetCents).toBe(10.5);
      expect(await ak.trackUsage(s.key, { costCents: '0.30000000000000004' })).toMatchObject({ success: true, budgetUsedCents: 0.3001 });
      const hold = await ak.reserve(s.key, { costCents: '2' });
      if (!hold.success) throw new Error('hold failed');
      expect(await ak.commit(hold.reservationId, { costCents: '1.25' })).toMatchObject({ success: true, costCents: 1.25, releasedCents: 0.75 });
      expect(await ak.adjust(s.id, { costCents: '-0.5', reason: 'refund' })).toMatchObject({ success: true, budgetUsedCents: 1.0501 });
      expect(await ak.setAccountBudget('acct_f', { budgetCents: '1000.25' })).toMatchObject({ budgetCents: 1000.25 });
      await expectAuditOk(ak);
    });

    it('security: concurrent reserves, charges, commits and releases never pass the budget; ledger equals counters', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const ops = Array.from({ length: 200 }, async (_, i) => {
        if (i % 3 === 0) return ak.trackUsage(key, { costCents: 1.5 });
        const r = await ak.reserve(key, { costCents: 4 });
        if (!r.success) return r;
        return i % 2 === 0 ? ak.commit(r.reservationId, { costCents: 2.5 }) : ak.release(r.reservationId);
      });
      await Promise.all(ops);
      const spent = await spentMicros(db, ak, id);
      expect(spent).toBeLessThanOrEqual(1_000_000);
      expect(spent).toBeGreaterThan(0);
      expect(valid(await ak.validate(key))).toMatchObject({ budgetHeldCents: 0 });
      expect((await holdRows(db, ak)).filter((h) => h.status === 'held')).toEqual([]);
      await expectAuditOk(ak);
    });

    it("happy: a key without an account (the package's table allows a NULL account_id) charges, holds and commits; its rows are of the account ''", async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(packageTableSql(table));
      const legacy = packageKey(48);
      const [row] = await db.query<{ id: number }>(`INSERT INTO ${table} (account_id, key_hash, key_prefix) VALUES (NULL, $1, $2) RETURNING id`, [
        legacy.hash,
        legacy.prefix,
      ]);
      const id = Number(row!.id);
      for (const batching of [false, undefined]) {
        const ak = new AgentKey({ pool: db.pool, tableName: table, ...(batching === false ? { batching } : {}) });
        await ak.migrate();
        expect(await ak.trackUsage(legacy.raw, { costCents: 3 })).toMatchObject({ success: true });
        const hold = await ak.reserve(legacy.raw, { costCents: 5 });
        expect(hold).toMatchObject({ success: true });
        expect(await ak.commit((hold as { reservationId: string }).reservationId, { costCents: 2 })).toMatchObject({ success: true, costCents: 2 });
        await ak.close();
      }
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      expect(await ak.getKey(id)).toMatchObject({ spentCents: 10 });
      const ledger = await ledgerRows(db, ak, id);
      expect(ledger.map((l) => [l.kind, l.account_id])).toEqual([
        ['charge', ''], ['hold', ''], ['commit', ''], ['charge', ''], ['hold', ''], ['commit', ''],
      ]);
      await expectAuditOk(ak);
      await ak.close();
    });
  });
});
