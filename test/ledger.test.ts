import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { AgentKey, MAX_CENTS } from '../src/index.js';
import { tableNames } from '../src/store/identifiers.js';
import { forEachDatabase, type TestDb } from './helpers/databases.js';
import { rejectsWith } from './helpers/errors.js';
import { committed, reserved, valid } from './helpers/results.js';
import { endPeriod, expectAuditOk, type LedgerRow, ledgerRows, spentMicros, tableState, waitPastExpiry } from './helpers/tables.js';

/**
 * The usage ledger and what is read from it, on PostgreSQL and PGlite: one append-only row per
 * charge, hold and settlement, usage() reports, adjust() corrections, and audit().
 */

forEachDatabase((getDb) => {
  describe('the ledger', () => {
    it('records every charge, hold, commit, release, expiry, reset and adjustment as exactly one row, and equals the counters after each', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_l', budgetCents: 1000, budgetPeriod: 'month' });
      const other = await ak.create({ accountId: 'acct_other', budgetCents: 1000 });
      const row = (kind: string, amount: number, extra: Partial<LedgerRow> = {}): LedgerRow => ({
        key_id: id,
        account_id: 'acct_l',
        kind,
        amount,
        reservation_id: null,
        idempotency_key: null,
        metadata: null,
        ...extra,
      });
      const expected: LedgerRow[] = [];
      const check = async (label: string) => {
        expect(await ledgerRows(db, ak, id), label).toEqual(expected);
        await expectAuditOk(ak);
      };
      const call = { model: 'gpt-4o-mini', inputTokens: 1200, outputTokens: 350 };

      await ak.trackUsage(key, { costCents: 1.5, idempotencyKey: 'c1', metadata: call });
      expected.push(row('charge', 15_000, { idempotency_key: 'c1', metadata: call }));
      await check('charge');

      const h1 = reserved(await ak.reserve(key, { costCents: 20, idempotencyKey: 'h1', metadata: { model: 'gpt-4o' } }));
      expected.push(row('hold', 200_000, { reservation_id: h1.reservationId, idempotency_key: 'h1', metadata: { model: 'gpt-4o' } }));
      await check('hold');

      const real = { model: 'gpt-4o', inputTokens: 800, outputTokens: 1_000 };
      committed(await ak.commit(h1.reservationId, { costCents: 12.5, metadata: real }));
      expected.push(row('commit', 125_000, { reservation_id: h1.reservationId, metadata: real }));
      await check('commit');

      const h2 = reserved(await ak.reserve(key, { costCents: 5 }));
      expected.push(row('hold', 50_000, { reservation_id: h2.reservationId }));
      await ak.release(h2.reservationId);
      expected.push(row('release', -50_000, { reservation_id: h2.reservationId }));
      await check('release');

      const h3 = reserved(await ak.reserve(key, { costCents: 7, ttl: '1s' }));
      expected.push(row('hold', 70_000, { reservation_id: h3.reservationId }));
      await waitPastExpiry(db, ak, [h3.reservationId]);
      expect(await ak.sweepExpiredHolds()).toBe(1);
      expected.push(row('expire', -70_000, { reservation_id: h3.reservationId }));
      await check('expire');

      await ak.adjust(id, { costCents: 2, reason: 'correction: provider bill' });
      expected.push(row('adjust', 20_000, { metadata: { reason: 'correction: provider bill' } }));
      await ak.adjust(String(id), { costCents: -1, reason: 'refund', metadata: { ticket: 'T-1' } });
      expected.push(row('adjust', -10_000, { metadata: { ticket: 'T-1', reason: 'refund' } }));
      await check('adjust');

      // Spent this period: 1.5 + 12.5 + 2 - 1 = 15 cents.
      expect(await spentMicros(db, ak, id)).toBe(150_000);
      await endPeriod(db, ak, id);
      expect(await ak.trackUsage(key, { costCents: 0.5 })).toEqual({ success: true, budgetUsedCents: 0.5, budgetRemainingCents: 999.5 });
      expected.push(row('reset', -150_000));
      expected.push(row('charge', 5_000));
      await check('reset');
      expect(await spentMicros(db, ak, id)).toBe(5_000);

      // Refused and invalid calls add nothing.
      await ak.trackUsage(key, { costCents: 5_000 });
      await ak.reserve(key, { costCents: 5_000 });
      await ak.trackUsage(key, { costCents: -1 });
      await check('refusals');
      // The other key's rows are its own.
      await ak.trackUsage(other.key, { costCents: 3 });
      expect(await ledgerRows(db, ak, other.id)).toEqual([{ ...row('charge', 30_000), key_id: other.id, account_id: 'acct_other' }]);
      await check('other key');

      // usage() counts the spend rows (charges, commits, adjustments), not holds, releases, expiries or resets.
      expect(await ak.usage({ keyId: id })).toEqual({ totalCents: 15.5, count: 5, overageCents: 0, buckets: [] });
    });

    it('happy: a period reset with nothing spent writes no reset row', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 10, budgetPeriod: 'day' });
      await endPeriod(db, ak, id);
      await ak.trackUsage(key, { costCents: 1 });
      expect((await ledgerRows(db, ak)).map((r) => r.kind)).toEqual(['charge']);
      await expectAuditOk(ak);
    });

    it('happy: a reset forgets last period spend but not live holds', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100, budgetPeriod: 'month' });
      await ak.trackUsage(key, { costCents: 60 });
      const h = reserved(await ak.reserve(key, { costCents: 30 }));
      await endPeriod(db, ak, id);
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 0, budgetHeldCents: 30, budgetRemainingCents: 70 });
      expect(await ak.trackUsage(key, { costCents: 70.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded', budgetUsedCents: 0, budgetRemainingCents: 70 });
      // The failed call rolled the period over: the reset is in the ledger once.
      expect((await ledgerRows(db, ak)).filter((r) => r.kind === 'reset').map((r) => r.amount)).toEqual([-600_000]);
      expect(await ak.commit(h.reservationId, { costCents: 25 })).toMatchObject({ success: true, budgetUsedCents: 25, budgetRemainingCents: 75 });
      expect((await ledgerRows(db, ak)).filter((r) => r.kind === 'reset')).toHaveLength(1);
      await expectAuditOk(ak);
    });

    it('security: the ledger is append-only: UPDATE and DELETE raise', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 5 });
      const before = await ledgerRows(db, ak);
      const attempts = [
        `UPDATE ${tableNames(ak.tableName).ledger} SET amount_micros = 0`,
        `UPDATE ${tableNames(ak.tableName).ledger} SET kind = 'adjust' WHERE key_id = ${id}`,
        `DELETE FROM ${tableNames(ak.tableName).ledger}`,
        `DELETE FROM ${tableNames(ak.tableName).ledger} WHERE key_id = ${id}`,
      ];
      for (const sql of attempts) {
        await expect(db.query(sql), sql).rejects.toThrow(/append-only/);
      }
      expect(await ledgerRows(db, ak)).toEqual(before);
      await expectAuditOk(ak);
    });

    it('security: audit() detects a counter changed behind its back, and names the key', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const a = await ak.create({ accountId: 'a', budgetCents: 100 });
      const b = await ak.create({ accountId: 'b', budgetCents: 100 });
      await ak.trackUsage(a.key, { costCents: 10 });
      await ak.trackUsage(b.key, { costCents: 4 });
      expect(await ak.audit()).toEqual({ ok: true, keysChecked: 2, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });

      // Someone "gives back" 6 cents of spend by editing the counter.
      await db.query(`UPDATE ${ak.tableName} SET spent_micros = 40000 WHERE id = $1`, [a.id]);
      expect(await ak.audit()).toEqual({ ok: false, keysChecked: 2, mismatches: [{ keyId: a.id, counterCents: 4, ledgerCents: 10 }], accountMismatches: [], overageMismatches: [], overageCents: 0 });
      expect(await ak.audit({ keyId: a.id })).toEqual({ ok: false, keysChecked: 1, mismatches: [{ keyId: a.id, counterCents: 4, ledgerCents: 10 }], accountMismatches: [], overageMismatches: [], overageCents: 0 });
      expect(await ak.audit({ keyId: String(b.id) })).toEqual({ ok: true, keysChecked: 1, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });

      // So is an overage counter edited by hand, or an overage row forged.
      await db.query(`UPDATE ${ak.tableName} SET overage_micros = 5 WHERE id = $1`, [b.id]);
      expect(await ak.audit({ keyId: b.id })).toMatchObject({ ok: false, mismatches: [], overageMismatches: [{ keyId: b.id, counterCents: 0.0005, ledgerCents: 0 }] });
      await db.query(`INSERT INTO ${tableNames(ak.tableName).ledger} (key_id, account_id, kind, amount_micros) VALUES ($1, 'b', 'overage', 5)`, [b.id]);
      expect(await ak.audit({ keyId: b.id })).toMatchObject({ ok: true, overageMismatches: [], overageCents: 0.0005 });

      // A forged ledger row (inserts are allowed) is caught too.
      await db.query(
        `INSERT INTO ${tableNames(ak.tableName).ledger} (key_id, account_id, kind, amount_micros) VALUES ($1, 'b', 'charge', 1)`,
        [b.id],
      );
      expect((await ak.audit()).mismatches.sort((x, y) => x.keyId - y.keyId)).toEqual([
        { keyId: a.id, counterCents: 4, ledgerCents: 10 },
        { keyId: b.id, counterCents: 4, ledgerCents: 4.0001 },
      ].sort((x, y) => x.keyId - y.keyId));
    });

    it('error: audit() with a bad key id or an unknown option throws invalid_argument', async () => {
      const ak = await getDb().agentKey();
      await rejectsWith(() => ak.audit({ keyId: 'abc' }), 'invalid_argument', 'keyId abc');
      await rejectsWith(() => ak.audit({ keyId: 0 }), 'invalid_argument', 'keyId 0');
      await rejectsWith(() => ak.audit({ key: 1 } as never), 'invalid_argument', 'unknown option');
      expect(await ak.audit({ keyId: 999_999 })).toEqual({ ok: true, keysChecked: 0, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
    });
  });

  describe('usage()', () => {
    /** Three keys of two accounts, with ledger rows at chosen times (inserted with SQL). */
    async function seeded(db: TestDb, ak: AgentKey) {
      const a = await ak.create({ accountId: 'acct_1' });
      const b = await ak.create({ accountId: 'acct_1' });
      const c = await ak.create({ accountId: 'acct_2' });
      const rows: [number, string, string, number, string][] = [
        [a.id, 'acct_1', 'charge', 10_000, '2025-03-01T10:15:00Z'],
        [a.id, 'acct_1', 'hold', 999_999, '2025-03-01T10:20:00Z'],
        [a.id, 'acct_1', 'charge', 20_000, '2025-03-01T10:45:00Z'],
        [a.id, 'acct_1', 'release', -999_999, '2025-03-01T10:50:00Z'],
        [a.id, 'acct_1', 'commit', 30_000, '2025-03-01T11:05:00Z'],
        [a.id, 'acct_1', 'expire', -5, '2025-03-01T11:06:00Z'],
        [b.id, 'acct_1', 'charge', 5_000, '2025-03-01T23:59:59.999Z'],
        [b.id, 'acct_1', 'adjust', -2_000, '2025-03-02T00:00:00Z'],
        [b.id, 'acct_1', 'reset', -3_000, '2025-03-02T00:00:01Z'],
        [c.id, 'acct_2', 'charge', 7_000, '2025-03-02T05:00:00Z'],
      ];
      for (const [keyId, account, kind, amount, at] of rows) {
        await db.query(
          `INSERT INTO ${tableNames(ak.tableName).ledger} (key_id, account_id, kind, amount_micros, created_at) VALUES ($1, $2, $3, $4, $5::timestamptz)`,
          [keyId, account, kind, amount, at],
        );
      }
      return { a, b, c };
    }

    it('happy: totals and counts of spend rows for a key, an account, everything, since and until', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { a, b, c } = await seeded(db, ak);
      expect(await ak.usage()).toEqual({ totalCents: 7, count: 6, overageCents: 0, buckets: [] });
      expect(await ak.usage({})).toEqual({ totalCents: 7, count: 6, overageCents: 0, buckets: [] });
      expect(await ak.usage({ keyId: a.id })).toEqual({ totalCents: 6, count: 3, overageCents: 0, buckets: [] });
      expect(await ak.usage({ keyId: String(b.id) })).toEqual({ totalCents: 0.3, count: 2, overageCents: 0, buckets: [] });
      expect(await ak.usage({ keyId: c.id })).toEqual({ totalCents: 0.7, count: 1, overageCents: 0, buckets: [] });
      expect(await ak.usage({ accountId: 'acct_1' })).toEqual({ totalCents: 6.3, count: 5, overageCents: 0, buckets: [] });
      expect(await ak.usage({ accountId: 'acct_2' })).toEqual({ totalCents: 0.7, count: 1, overageCents: 0, buckets: [] });
      expect(await ak.usage({ accountId: 'acct_none' })).toEqual({ totalCents: 0, count: 0, overageCents: 0, buckets: [] });
      expect(await ak.usage({ keyId: a.id, accountId: 'acct_2' })).toEqual({ totalCents: 0, count: 0, overageCents: 0, buckets: [] });
      // [since, until): since is inclusive, until exclusive.
      expect(await ak.usage({ since: '2025-03-01T11:05:00Z' })).toEqual({ totalCents: 4, count: 4, overageCents: 0, buckets: [] });
      expect(await ak.usage({ until: '2025-03-02T00:00:00Z' })).toEqual({ totalCents: 6.5, count: 4, overageCents: 0, buckets: [] });
      expect(await ak.usage({ since: new Date('2025-03-01T10:45:00Z'), until: new Date('2025-03-01T23:59:59.999Z') })).toEqual({ totalCents: 5, count: 2, overageCents: 0, buckets: [] });
      expect(await ak.usage({ accountId: 'acct_1', since: '2025-03-02' })).toEqual({ totalCents: -0.2, count: 1, overageCents: 0, buckets: [] });
      expect(await ak.usage({ since: '2030-01-01T00:00:00Z' })).toEqual({ totalCents: 0, count: 0, overageCents: 0, buckets: [] });
    });

    it("happy: bucket 'hour' and 'day' give UTC-aligned buckets in time order", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await seeded(db, ak);
      expect(await ak.usage({ accountId: 'acct_1', bucket: 'hour' })).toEqual({
        totalCents: 6.3,
        count: 5,
        overageCents: 0,
        buckets: [
          { start: '2025-03-01T10:00:00.000Z', costCents: 3, count: 2, overageCents: 0 },
          { start: '2025-03-01T11:00:00.000Z', costCents: 3, count: 1, overageCents: 0 },
          { start: '2025-03-01T23:00:00.000Z', costCents: 0.5, count: 1, overageCents: 0 },
          { start: '2025-03-02T00:00:00.000Z', costCents: -0.2, count: 1, overageCents: 0 },
        ],
      });
      expect(await ak.usage({ bucket: 'day' })).toEqual({
        totalCents: 7,
        count: 6,
        overageCents: 0,
        buckets: [
          { start: '2025-03-01T00:00:00.000Z', costCents: 6.5, count: 4, overageCents: 0 },
          { start: '2025-03-02T00:00:00.000Z', costCents: 0.5, count: 2, overageCents: 0 },
        ],
      });
      expect(await ak.usage({ bucket: 'day', since: '2025-03-02T00:00:00Z' })).toEqual({
        totalCents: 0.5,
        count: 2,
        overageCents: 0,
        buckets: [{ start: '2025-03-02T00:00:00.000Z', costCents: 0.5, count: 2, overageCents: 0 }],
      });
      expect(await ak.usage({ bucket: 'hour', accountId: 'acct_none' })).toEqual({ totalCents: 0, count: 0, overageCents: 0, buckets: [] });
    });

    it('happy: buckets stay UTC-aligned when the database session runs in another time zone', async () => {
      const db = getDb();
      const table = db.freshTable();
      const zone = 'Asia/Kolkata'; // UTC+05:30: local days and hours are not UTC ones
      let pool: pg.Pool | undefined;
      if (db.name === 'postgres') {
        // A start-up option: a pooler would drop it, so the database's own URL in a pooled run.
        pool = new pg.Pool({ connectionString: db.directUrl ?? db.url, max: 2, options: `-c TimeZone=${zone}` });
      } else {
        await db.query(`SET TIME ZONE '${zone}'`);
      }
      try {
        const ak = new AgentKey({ pool: pool ?? db.pool, tableName: table });
        await ak.migrate();
        const [tz] = await (pool ? pool.query(`SHOW TimeZone`).then((r) => r.rows) : db.query(`SHOW TimeZone`));
        expect(Object.values(tz as object)[0]).toBe(zone);
        await seeded(db, ak);
        expect((await ak.usage({ bucket: 'day' })).buckets).toEqual([
          { start: '2025-03-01T00:00:00.000Z', costCents: 6.5, count: 4, overageCents: 0 },
          { start: '2025-03-02T00:00:00.000Z', costCents: 0.5, count: 2, overageCents: 0 },
        ]);
        expect((await ak.usage({ bucket: 'hour', accountId: 'acct_1' })).buckets.map((b) => b.start)).toEqual([
          '2025-03-01T10:00:00.000Z',
          '2025-03-01T11:00:00.000Z',
          '2025-03-01T23:00:00.000Z',
          '2025-03-02T00:00:00.000Z',
        ]);
      } finally {
        if (pool) await pool.end();
        else await db.query('RESET TIME ZONE');
      }
    });

    it('happy: usage() reports what the API spent', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_u', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 0.03 });
      const h = reserved(await ak.reserve(key, { costCents: 10 }));
      await ak.commit(h.reservationId, { costCents: 4 });
      const r = reserved(await ak.reserve(key, { costCents: 10 }));
      await ak.release(r.reservationId);
      await ak.adjust(id, { costCents: -1, reason: 'refund' });
      const report = await ak.usage({ accountId: 'acct_u', bucket: 'hour' });
      expect(report).toMatchObject({ totalCents: 3.03, count: 3 });
      expect(report.buckets.length).toBeGreaterThanOrEqual(1);
      expect(report.buckets.reduce((s, b) => s + b.count, 0)).toBe(3);
      for (const b of report.buckets) expect(new Date(b.start).getTime() % 3_600_000).toBe(0);
    });

    it('error: a bad bucket, bad dates, bad ids or unknown options throw invalid_argument', async () => {
      const ak = await getDb().agentKey();
      const bad: [string, unknown][] = [
        ['bucket week', { bucket: 'week' }],
        ['bucket HOUR', { bucket: 'HOUR' }],
        ['bucket null', { bucket: null }],
        ['bucket number', { bucket: 1 }],
        ['since not a date', { since: 'yesterday' }],
        ['since number', { since: 1_700_000_000_000 }],
        ['until invalid Date', { until: new Date(NaN) }],
        ['until object', { until: {} }],
        ['keyId negative', { keyId: -1 }],
        ['keyId text', { keyId: 'abc' }],
        ['accountId empty', { accountId: '' }],
        ['unknown option', { from: '2025-01-01' }],
        ['not an object', 'acct_1'],
        ['null', null],
      ];
      for (const [label, query] of bad) {
        await rejectsWith(() => ak.usage(query as never), 'invalid_argument', label);
      }
    });
  });

  describe('adjust()', () => {
    it('happy: a refund and a correction change spend at once, so a refused charge then fits; recorded with the reason', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_adj', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 90 });
      expect(await ak.trackUsage(key, { costCents: 20 })).toMatchObject({ success: false, reason: 'budget_exceeded' });

      expect(await ak.adjust(id, { costCents: -15, reason: 'refund: provider outage' })).toEqual({ success: true, budgetUsedCents: 75, budgetRemainingCents: 25 });
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 75, budgetRemainingCents: 25 });
      expect(await ak.trackUsage(key, { costCents: 20 })).toEqual({ success: true, budgetUsedCents: 95, budgetRemainingCents: 5 });

      // A correction upwards may take the key over its budget; nothing more is charged then.
      expect(await ak.adjust(String(id), { costCents: 30, reason: 'correction: late provider bill' })).toEqual({ success: true, budgetUsedCents: 125, budgetRemainingCents: 0 });
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded', budgetUsedCents: 125 });
      expect(await ak.reserve(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });

      expect((await ledgerRows(db, ak)).filter((r) => r.kind === 'adjust')).toEqual([
        { key_id: id, account_id: 'acct_adj', kind: 'adjust', amount: -150_000, reservation_id: null, idempotency_key: null, metadata: { reason: 'refund: provider outage' } },
        { key_id: id, account_id: 'acct_adj', kind: 'adjust', amount: 300_000, reservation_id: null, idempotency_key: null, metadata: { reason: 'correction: late provider bill' } },
      ]);
      expect(await spentMicros(db, ak, id)).toBe(1_250_000);
      await expectAuditOk(ak);
    });

    it('happy: a refund counts live holds when saying what remains', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 50 });
      reserved(await ak.reserve(key, { costCents: 40 }));
      expect(await ak.adjust(id, { costCents: -20, reason: 'refund' })).toEqual({ success: true, budgetUsedCents: 30, budgetRemainingCents: 30 });
    });

    it('happy: a revoked or expired key can still be refunded', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 10 });
      await ak.revoke(id);
      expect(await ak.adjust(id, { costCents: -10, reason: 'refund after revocation' })).toMatchObject({ success: true, budgetUsedCents: 0 });
      await expectAuditOk(ak);
    });

    it("error: a refund larger than the spend is 'refund_exceeds_spend' and writes nothing", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 10 });
      const before = await tableState(db, ak);
      expect(await ak.adjust(id, { costCents: -10.0001, reason: 'too much' })).toEqual({ success: false, reason: 'refund_exceeds_spend' });
      expect(await tableState(db, ak)).toBe(before);
      expect(await ak.adjust(id, { costCents: -10, reason: 'all of it' })).toEqual({ success: true, budgetUsedCents: 0, budgetRemainingCents: 100 });
      await expectAuditOk(ak);
    });

    it("error: a missing reason, a zero, NaN or non-numeric cost, or unknown options throw; an unknown key id is 'invalid_key'", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 10 });
      const before = await tableState(db, ak);
      const bad: [string, unknown, string][] = [
        ['missing reason', { costCents: -1 }, 'invalid_argument'],
        ['empty reason', { costCents: -1, reason: '' }, 'invalid_argument'],
        ['reason not a string', { costCents: -1, reason: 42 }, 'invalid_argument'],
        ['zero', { costCents: 0, reason: 'x' }, 'invalid_cost'],
        ['NaN', { costCents: NaN, reason: 'x' }, 'invalid_cost'],
        ['Infinity', { costCents: -Infinity, reason: 'x' }, 'invalid_cost'],
        ['non-decimal string cost', { costCents: '-1e0', reason: 'x' }, 'invalid_cost'],
        ['zero string cost', { costCents: '-0.00', reason: 'x' }, 'invalid_cost'],
        ['missing cost', { reason: 'x' }, 'invalid_cost'],
        ['over MAX_CENTS', { costCents: -(MAX_CENTS + 1), reason: 'x' }, 'invalid_cost'],
        ['unknown option', { costCents: -1, reason: 'x', note: 'y' }, 'invalid_argument'],
        ['bad metadata', { costCents: -1, reason: 'x', metadata: [1] }, 'invalid_argument'],
        ['no options', undefined, 'invalid_argument'],
      ];
      for (const [label, options, code] of bad) {
        await rejectsWith(() => ak.adjust(id, options as never), code, label);
      }
      for (const keyId of [0, -1, 1.5, 'abc', null]) {
        await rejectsWith(() => ak.adjust(keyId as never, { costCents: -1, reason: 'x' }), 'invalid_argument', `keyId ${String(keyId)}`);
      }
      expect(await ak.adjust(999_999, { costCents: -1, reason: 'x' })).toEqual({ success: false, reason: 'invalid_key' });
      expect(await ak.adjust(999_999, { costCents: 1, reason: 'x' })).toEqual({ success: false, reason: 'invalid_key' });
      expect(await tableState(db, ak)).toBe(before);
    });
  });
});
