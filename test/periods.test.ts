import fc from 'fast-check';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { AgentKey } from '../src/index.js';
import { forEachDatabase, type TestDb } from './helpers/databases.js';
import { rejectsWith } from './helpers/errors.js';
import { valid } from './helpers/results.js';
import { keyCount, keyRow } from './helpers/tables.js';
import { nextMonthlyReset, nextUtcMidnight, plusUtcMonths } from './helpers/utc.js';

/**
 * Time, on PostgreSQL and PGlite: expiry durations, budget periods that reset at UTC midnights
 * (month-ends clamped) whatever the session's time zone, and a period that ended.
 */

/** Runs `fn` on one database session with its TimeZone set, then puts it back. */
async function inTimeZone<T>(db: TestDb, zone: string, fn: (q: TestDb['query']) => Promise<T>): Promise<T> {
  if (db.name === 'postgres') {
    const client = await (db.pool as pg.Pool).connect();
    try {
      await client.query(`SET TIME ZONE '${zone}'`);
      return await fn(async (text, params) => (await client.query(text, params)).rows);
    } finally {
      await client.query('RESET TIME ZONE');
      client.release();
    }
  }
  await db.query(`SET TIME ZONE '${zone}'`);
  try {
    return await fn(db.query);
  } finally {
    await db.query('RESET TIME ZONE');
  }
}

forEachDatabase((getDb) => {
  describe('time', () => {
    it('happy: expiresIn accepts s, m (minutes), h, d, w and mo', async () => {
      const ak = await getDb().agentKey();
      const cases: [string, (t: number) => number][] = [
        ['45s', (t) => t + 45_000],
        ['30m', (t) => t + 30 * 60_000],
        ['2h', (t) => t + 2 * 3_600_000],
        ['7d', (t) => t + 7 * 86_400_000],
        ['2w', (t) => t + 14 * 86_400_000],
        ['1mo', (t) => plusUtcMonths(new Date(t), 1).getTime()],
      ];
      for (const [expiresIn, expected] of cases) {
        const before = Date.now();
        const { expiresAt, key } = await ak.create({ accountId: 'a', expiresIn });
        const after = Date.now();
        const at = Date.parse(expiresAt!);
        expect(at, expiresIn).toBeGreaterThanOrEqual(expected(before));
        expect(at, expiresIn).toBeLessThanOrEqual(expected(after));
        expect(valid(await ak.validate(key)).expiresAt).toBe(expiresAt);
      }
      const at = new Date(Date.now() + 3_600_000);
      expect((await ak.create({ accountId: 'a', expiresAt: at })).expiresAt).toBe(at.toISOString());
      expect((await ak.create({ accountId: 'a', expiresAt: at.toISOString() })).expiresAt).toBe(at.toISOString());
    });

    it('error: a malformed duration throws invalid_duration and writes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const bad: unknown[] = ['7x', '', '1.5h', -1, '999999999d', 'm', '7', 'd7', '7 d', '1y', '-7d', 7, {}, '40000d'];
      for (const expiresIn of bad) {
        await rejectsWith(() => ak.create({ accountId: 'a', expiresIn: expiresIn as string }), 'invalid_duration', JSON.stringify(expiresIn));
        const err = await rejectsWith(() => ak.ensureSubject('mch_t', { expiresIn: expiresIn as string }), 'invalid_duration', JSON.stringify(expiresIn));
        if (typeof expiresIn === 'string') expect(err.message.startsWith(`Invalid duration: ${expiresIn} (`), err.message).toBe(true);
      }
      expect(await keyCount(db, ak)).toBe(0);
    });

    it("happy: a zero expiresIn ('0h', '0d') makes a key that is expired at once", async () => {
      const ak = await getDb().agentKey();
      for (const expiresIn of ['0s', '0h', '0d']) {
        const before = Date.now();
        const created = await ak.create({ accountId: 'a', expiresIn });
        expect(Date.parse(created.expiresAt!), expiresIn).toBeGreaterThanOrEqual(before);
        expect(Date.parse(created.expiresAt!), expiresIn).toBeLessThanOrEqual(Date.now());
        expect(await ak.validate(created.key), expiresIn).toEqual({ valid: false, reason: 'expired' });
      }
      await ak.ensureSubject('mch_zero', { expiresIn: '0d' });
      expect(await ak.validateBySubject('mch_zero')).toEqual({ valid: false, reason: 'expired' });
    });

    it('error: an unknown budget period throws invalid_period and writes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      for (const budgetPeriod of ['week', 'year', 'Day', 'monthly', '', 1, {}]) {
        await rejectsWith(() => ak.create({ accountId: 'a', budgetCents: 5, budgetPeriod: budgetPeriod as 'day' }), 'invalid_period', JSON.stringify(budgetPeriod));
        await rejectsWith(() => ak.ensureSubject('mch_p', { budgetPeriod: budgetPeriod as 'day' }), 'invalid_period', JSON.stringify(budgetPeriod));
      }
      expect(await keyCount(db, ak)).toBe(0);
    });

    it('happy: agentkey_next_reset gives UTC midnights and clamps month-ends, whatever the session time zone', async () => {
      const db = getDb();
      await db.agentKey(); // migrate creates the function in the search-path schema
      const cases: [string, string, string, string][] = [
        // period, anchor, at, expected
        ['day', '2024-03-01T00:00:00Z', '2024-03-10T23:59:59.999Z', '2024-03-11T00:00:00.000Z'],
        ['day', '2024-03-01T00:00:00Z', '2024-03-10T00:00:00Z', '2024-03-11T00:00:00.000Z'],
        ['day', '2024-03-01T00:00:00Z', '2024-03-10T11:00:00Z', '2024-03-11T00:00:00.000Z'], // already Mar 11 in Kiritimati
        ['day', '2024-03-01T00:00:00Z', '2024-02-28T12:00:00Z', '2024-02-29T00:00:00.000Z'],
        ['day', '2024-03-01T00:00:00Z', '2024-12-31T22:00:00Z', '2025-01-01T00:00:00.000Z'],
        ['month', '2023-01-31T00:00:00Z', '2023-02-01T00:00:00Z', '2023-02-28T00:00:00.000Z'],
        ['month', '2023-01-31T00:00:00Z', '2023-02-28T00:00:00Z', '2023-03-31T00:00:00.000Z'],
        ['month', '2023-01-31T00:00:00Z', '2023-03-31T00:00:00Z', '2023-04-30T00:00:00.000Z'],
        ['month', '2023-01-31T00:00:00Z', '2023-04-30T00:00:00Z', '2023-05-31T00:00:00.000Z'],
        ['month', '2023-01-31T15:00:00Z', '2023-01-31T16:00:00Z', '2023-02-28T00:00:00.000Z'],
        ['month', '2024-01-31T00:00:00Z', '2024-02-10T00:00:00Z', '2024-02-29T00:00:00.000Z'],
        ['month', '2024-01-31T00:00:00Z', '2024-02-29T00:00:00Z', '2024-03-31T00:00:00.000Z'],
        ['month', '2024-01-31T20:00:00Z', '2024-02-05T00:00:00Z', '2024-02-29T00:00:00.000Z'], // Feb 1 in Kiritimati
        ['month', '2023-12-31T00:00:00Z', '2024-01-15T00:00:00Z', '2024-01-31T00:00:00.000Z'],
        ['month', '2023-12-31T00:00:00Z', '2024-02-01T00:00:00Z', '2024-02-29T00:00:00.000Z'],
        ['month', '2024-01-15T09:00:00Z', '2024-01-20T00:00:00Z', '2024-02-15T00:00:00.000Z'],
        ['month', '2024-01-15T09:00:00Z', '2024-02-15T00:00:00Z', '2024-03-15T00:00:00.000Z'],
        ['month', '2020-01-31T00:00:00Z', '2026-11-27T12:00:00Z', '2026-11-30T00:00:00.000Z'],
      ];
      const sql = `SELECT agentkey_next_reset($1::text, $2::timestamptz, $3::timestamptz) AS r`;
      const compute = async (q: TestDb['query']) => {
        const out: string[] = [];
        for (const [period, anchor, at] of cases) out.push((await q<{ r: Date }>(sql, [period, anchor, at]))[0]!.r.toISOString());
        return out;
      };
      const utc = await inTimeZone(db, 'UTC', compute);
      const kiritimati = await inTimeZone(db, 'Pacific/Kiritimati', compute);
      const shown = await inTimeZone(db, 'Pacific/Kiritimati', async (q) => (await q<{ tz: string }>('SHOW TimeZone'))[0]);
      expect(Object.values(shown!)).toEqual(['Pacific/Kiritimati']);
      expect(utc).toEqual(cases.map((c) => c[3]));
      expect(kiritimati).toEqual(utc);
      expect((await db.query<{ r: Date | null }>(sql, ['week', '2024-01-01T00:00:00Z', '2024-01-02T00:00:00Z']))[0]!.r).toBeNull();
    });

    it('happy: agentkey_next_reset matches a UTC calendar reference for random anchors (property)', async () => {
      const db = getDb();
      await db.agentKey();
      const lo = Date.UTC(2000, 0, 1);
      const samples = fc.sample(
        fc.tuple(fc.integer({ min: lo, max: Date.UTC(2090, 0, 1) }), fc.integer({ min: 0, max: 10 * 366 * 86_400_000 })),
        { numRuns: 300, seed: 42 },
      );
      const anchors = samples.map(([a]) => new Date(a).toISOString());
      const ats = samples.map(([a, d]) => new Date(a + d).toISOString());
      const sql = `SELECT agentkey_next_reset('month', a, t) AS m, agentkey_next_reset('day', a, t) AS d
                     FROM unnest($1::timestamptz[], $2::timestamptz[]) WITH ORDINALITY AS u(a, t, i) ORDER BY i`;
      for (const zone of ['UTC', 'Pacific/Kiritimati', 'America/Adak']) {
        const rows = await inTimeZone(db, zone, (q) => q<{ m: Date; d: Date }>(sql, [anchors, ats]));
        rows.forEach((row, i) => {
          const anchor = new Date(anchors[i]!);
          const at = new Date(ats[i]!);
          expect(row.m.toISOString(), `${zone} month ${anchors[i]} ${ats[i]}`).toBe(nextMonthlyReset(anchor, at));
          expect(row.d.toISOString(), `${zone} day ${ats[i]}`).toBe(nextUtcMidnight(at.getTime()));
        });
      }
    });

    it('happy: a day key created by a session in Pacific/Kiritimati resets at the next UTC midnight', async () => {
      const db = getDb();
      const check = async (ak: AgentKey) => {
        const before = Date.now();
        const { key } = await ak.create({ accountId: 'a', budgetCents: 10, budgetPeriod: 'day' });
        const after = Date.now();
        const v = valid(await ak.validate(key));
        expect([nextUtcMidnight(before), nextUtcMidnight(after)]).toContain(v.budgetResetAt);
      };
      if (db.name === 'postgres') {
        // A start-up option: a pooler would drop it, so the database's own URL in a pooled run.
        const pool = new pg.Pool({ connectionString: db.directUrl ?? db.url, max: 2, options: '-c TimeZone=Pacific/Kiritimati' });
        try {
          expect((await pool.query('SHOW TimeZone')).rows[0].TimeZone).toBe('Pacific/Kiritimati');
          const ak = new AgentKey({ pool, tableName: db.freshTable() });
          await ak.migrate();
          await check(ak);
        } finally {
          await pool.end();
        }
      } else {
        const ak = await db.agentKey();
        await inTimeZone(db, 'Pacific/Kiritimati', () => check(ak));
      }
    });

    it('happy: a key whose period ended shows no spend, and its next charge starts a new period', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100, budgetPeriod: 'day' });
      expect(await ak.trackUsage(key, { costCents: 30 })).toMatchObject({ success: true, budgetUsedCents: 30 });
      await db.query(`UPDATE ${ak.tableName} SET budget_reset_at = now() - interval '1 hour' WHERE id = $1`, [id]);

      const before = Date.now();
      const v = valid(await ak.validate(key));
      expect(v).toMatchObject({ budgetUsedCents: 0, budgetRemainingCents: 100 });
      expect([nextUtcMidnight(before), nextUtcMidnight(Date.now())]).toContain(v.budgetResetAt);

      expect(await ak.trackUsage(key, { costCents: 5 })).toEqual({ success: true, budgetUsedCents: 5, budgetRemainingCents: 95 });
      const row = await keyRow(db, ak, id);
      expect(row.spent_micros).toBe('50000');
      expect(Number(row.budget_used_cents)).toBe(5);
      expect(row.budget_reset_at!.getTime()).toBeGreaterThan(Date.now());
      expect(row.budget_reset_at!.toISOString()).toMatch(/T00:00:00\.000Z$/);
      expect(await ak.trackUsage(key, { costCents: 5 })).toMatchObject({ success: true, budgetUsedCents: 10 }); // same period now
    });

    it('happy: a monthly key anchored on the 31st resets on the last day of shorter months', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100, budgetPeriod: 'month' });
      await ak.trackUsage(key, { costCents: 40 });
      await db.query(
        `UPDATE ${ak.tableName} SET budget_anchor_at = '2023-01-31T12:00:00Z', created_at = '2023-01-31T12:00:00Z',
           budget_reset_at = now() - interval '1 second' WHERE id = $1`,
        [id],
      );
      const before = new Date();
      const v = valid(await ak.validate(key));
      const anchor = new Date('2023-01-31T12:00:00Z');
      expect([nextMonthlyReset(anchor, before), nextMonthlyReset(anchor, new Date())]).toContain(v.budgetResetAt);
      expect(v.budgetUsedCents).toBe(0);
      expect(await ak.trackUsage(key, { costCents: 1 })).toMatchObject({ success: true, budgetUsedCents: 1 });
      const row = await keyRow(db, ak, id);
      expect([nextMonthlyReset(anchor, before), nextMonthlyReset(anchor, new Date())]).toContain(row.budget_reset_at!.toISOString());
    });

    it('error: an expiry in the past, or both expiresIn and expiresAt, is refused', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await rejectsWith(() => ak.create({ accountId: 'a', expiresAt: new Date(Date.now() - 1000) }), 'invalid_argument', 'past');
      await rejectsWith(() => ak.create({ accountId: 'a', expiresAt: '2001-01-01T00:00:00Z' }), 'invalid_argument', 'past string');
      await rejectsWith(() => ak.create({ accountId: 'a', expiresIn: '1h', expiresAt: new Date(Date.now() + 7_200_000) }), 'invalid_argument', 'both');
      await rejectsWith(() => ak.create({ accountId: 'a', expiresAt: 'soon' }), 'invalid_argument', 'not a date');
      await rejectsWith(() => ak.create({ accountId: 'a', expiresAt: 12345 as never }), 'invalid_argument', 'number');
      expect(await keyCount(db, ak)).toBe(0);
    });
  });
});
