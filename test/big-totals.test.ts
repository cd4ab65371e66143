import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { dollars } from '../src/cli/format.js';
import { AgentKey, AgentKeyError, MAX_CENTS } from '../src/index.js';
import { MAX_TOTAL_MICROS, addMicros, microsToCents, microsToCentsNumber, toMicros } from '../src/money.js';
import { createApp } from '../src/server/index.js';
import { type TestDb, forEachDatabase } from './helpers/databases.js';

/**
 * Totals past what a JavaScript number holds: an unlimited key's spend past 2^53
 * micro-dollars is reported exactly (a decimal string of cents past MAX_CENTS), and a step
 * that would take a BIGINT counter past its largest value is refused, changing nothing.
 */

/** The largest BIGINT, as the exact decimal string of cents it is. */
const TOP_CENTS = '922337203685477.5807';

describe('Cents past MAX_CENTS', () => {
  it('happy: figures up to MAX_CENTS are numbers; beyond, exact decimal strings', () => {
    const max = MAX_CENTS * 10_000;
    expect(microsToCents(max)).toBe(MAX_CENTS);
    expect(microsToCents(-max)).toBe(-MAX_CENTS);
    expect(microsToCents(max + 1)).toBe('500000000000.0001');
    expect(microsToCents(-(max + 1))).toBe('-500000000000.0001');
    expect(microsToCents(10_000_000_000_000_000n)).toBe('1000000000000');
    expect(microsToCents(MAX_TOTAL_MICROS)).toBe(TOP_CENTS);
    expect(microsToCentsNumber(MAX_TOTAL_MICROS)).toBe(922337203685477.6);
  });

  it('property: every amount of micro-dollars reads back from its figure exactly', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: -MAX_TOTAL_MICROS, max: MAX_TOTAL_MICROS }), (micros) => {
        const figure = microsToCents(toMicros(micros));
        const text = typeof figure === 'number' ? figure.toFixed(4) : figure;
        const [whole = '', fraction = ''] = text.replace(/^-/, '').split('.');
        const back = BigInt(whole + fraction.padEnd(4, '0'));
        expect(text.startsWith('-') && back !== 0n ? -back : back).toBe(micros);
      }),
    );
  });

  it('happy: the database reads a BIGINT or a NUMERIC sum as a number while safe, a bigint beyond', () => {
    expect(toMicros('9007199254740991')).toBe(9007199254740991);
    expect(toMicros('9007199254740993')).toBe(9007199254740993n);
    expect(toMicros(9007199254740993n)).toBe(9007199254740993n);
    expect(toMicros(12n)).toBe(12);
    expect(toMicros('-12')).toBe(-12);
    expect(addMicros(Number.MAX_SAFE_INTEGER, 2)).toBe(9007199254740993n);
    expect(addMicros(1, 2)).toBe(3);
    expect(() => toMicros('1.5')).toThrow(TypeError);
  });

  it('happy: the CLI prints a big total digit for digit', () => {
    expect(dollars('1000000000000.0001')).toBe('$10,000,000,000.000001');
    expect(dollars(TOP_CENTS)).toBe('$9,223,372,036,854.775807');
    expect(dollars('-500000000000.5')).toBe('-$5,000,000,000.005');
    expect(dollars(MAX_CENTS)).toBe('$5,000,000,000.00');
  });
});

forEachDatabase((getDb) => {
  /** Sets a key's counter by SQL, as if a long life of spending had put it there. */
  async function setCounter(db: TestDb, ak: AgentKey, keyId: number, column: 'spent_micros' | 'overage_micros', micros: bigint) {
    await db.query(`UPDATE ${ak.tableName} SET ${column} = $1::bigint WHERE id = $2`, [micros.toString(), keyId]);
  }

  async function ledgerRows(db: TestDb, ak: AgentKey, keyId: number): Promise<number> {
    const rows = await db.query<{ n: number | string }>(`SELECT count(*)::int AS n FROM ${ak.tableName}_ledger WHERE key_id = $1`, [keyId]);
    return Number(rows[0]?.n);
  }

  describe('an unlimited key past 2^53 micro-dollars', () => {
    it('happy: getKey, listKeys, usage, ledger, accounts and audit report the exact total', async () => {
      const ak = await getDb().agentKey();
      const { id, key } = await ak.create({ accountId: 'acct_big' });
      // Two of the largest single costs and one micro: 10^16 + 1 micro-dollars, past 2^53.
      for (const costCents of [MAX_CENTS, MAX_CENTS, '0.0001']) expect((await ak.trackUsage(key, { costCents })).success).toBe(true);
      const exact = '1000000000000.0001';
      expect((await ak.getKey(id))?.spentCents).toBe(exact);
      expect((await ak.listKeys({ accountId: 'acct_big' }))[0]?.spentCents).toBe(exact);
      expect(await ak.usage({ keyId: id, bucket: 'day' })).toMatchObject({ totalCents: exact, count: 3, buckets: [{ costCents: exact }] });
      expect((await ak.listAccounts()).find((a) => a.accountId === 'acct_big')?.spentCents).toBe(exact);
      expect((await ak.ledger({ keyId: id })).map((e) => e.amountCents)).toEqual([0.0001, MAX_CENTS, MAX_CENTS]);
      expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true, mismatches: [] });
      // The package's number-typed figures: the nearest number.
      const valid = await ak.validate(key);
      if (!valid.valid) throw new Error('the key was refused');
      expect(typeof valid.budgetUsedCents).toBe('number');
      expect(valid.budgetUsedCents).toBeCloseTo(1_000_000_000_000, 3);
      await ak.close();
    });

    it('happy: holds and commits past 2^53 are exact too, and the key keeps going', async () => {
      const ak = await getDb().agentKey();
      const { id, key } = await ak.create({ accountId: 'acct_big' });
      const holds = await Promise.all([1, 2, 3].map(() => ak.reserve(key, { costCents: MAX_CENTS })));
      expect(holds.every((h) => h.success)).toBe(true);
      expect((await ak.getKey(id))?.heldCents).toBe('1500000000000');
      for (const h of holds) if (h.success) expect((await ak.commit(h.reservationId, { costCents: '499999999999.9999' })).success).toBe(true);
      expect((await ak.getKey(id))).toMatchObject({ spentCents: '1499999999999.9997', heldCents: 0 });
      expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true });
      await ak.close();
    });
  });

  describe('a counter at the top of BIGINT', () => {
    it('sad: a charge that would pass it is refused with total_out_of_range and changes nothing; one that fits is charged exactly', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { id, key } = await ak.create({ accountId: 'acct_top' });
      await setCounter(db, ak, id, 'spent_micros', MAX_TOTAL_MICROS - 5_000n);
      const rowsBefore = await ledgerRows(db, ak, id);
      const err = await ak.trackUsage(key, { costCents: 1 }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(AgentKeyError);
      expect(err).toMatchObject({ code: 'total_out_of_range' });
      expect((err as Error).message).toContain(TOP_CENTS);
      expect((await ak.getKey(id))?.spentCents).toBe('922337203685477.0807');
      expect(await ledgerRows(db, ak, id)).toBe(rowsBefore);
      expect(await ak.trackUsage(key, { costCents: '0.4' })).toMatchObject({ success: true });
      expect((await ak.getKey(id))?.spentCents).toBe('922337203685477.4807');
      await ak.close();
    });

    it('sad: in a batch, only the step that would overflow fails; the others are charged', async () => {
      const db = getDb();
      const ak = await db.agentKey({ batching: { maxBatch: 64, lanes: 1 } });
      const top = await ak.create({ accountId: 'acct_top' });
      const other = await ak.create({ accountId: 'acct_other', budgetCents: 100 });
      await setCounter(db, ak, top.id, 'spent_micros', MAX_TOTAL_MICROS - 5_000n);
      const results = await Promise.allSettled([
        ak.trackUsage(top.key, { costCents: 1 }),
        ...Array.from({ length: 8 }, () => ak.trackUsage(other.key, { costCents: 1 })),
      ]);
      expect(results[0]).toMatchObject({ status: 'rejected', reason: { code: 'total_out_of_range' } });
      expect(results.slice(1).every((r) => r.status === 'fulfilled' && r.value.success)).toBe(true);
      expect((await ak.getKey(other.id))?.spentCents).toBe(8);
      expect((await ak.getKey(top.id))?.spentCents).toBe('922337203685477.0807');
      await ak.close();
    });

    it('sad: a commit whose overage would pass the overage counter is refused; its hold stays held', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { id, key } = await ak.create({ accountId: 'acct_top', budgetCents: 1 });
      const hold = await ak.reserve(key, { costCents: 1 });
      if (!hold.success) throw new Error('the hold was refused');
      await setCounter(db, ak, id, 'overage_micros', MAX_TOTAL_MICROS - 5_000n);
      await expect(ak.commit(hold.reservationId, { costCents: 3 })).rejects.toMatchObject({ code: 'total_out_of_range' });
      expect(await ak.getReservation(hold.reservationId)).toMatchObject({ status: 'held', costCents: null });
      expect(await ak.getKey(id)).toMatchObject({ spentCents: 0, heldCents: 1, overageCents: '922337203685477.0807' });
      // A commit within the budget adds no overage, so it goes through.
      expect(await ak.commit(hold.reservationId, { costCents: 1 })).toMatchObject({ success: true, overageCents: 0 });
      await ak.close();
    });
  });

  describe('over HTTP', () => {
    it('happy and sad: a big total is an exact string; an overflowing charge is 422 total_out_of_range', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const adminKey = 'akadmin_test_0123456789abcdefghij';
      const { app } = createApp(ak, { adminKey });
      const { id, key } = await ak.create({ accountId: 'acct_http' });
      for (const costCents of [MAX_CENTS, MAX_CENTS, '0.0001']) await ak.trackUsage(key, { costCents });
      const got = await app.request(`/v1/keys/${id}`, { headers: { authorization: `Bearer ${adminKey}` } });
      expect(got.status).toBe(200);
      // The exact digits are in the response's text, not only after parsing.
      expect(await got.text()).toContain('"spentCents":"1000000000000.0001"');
      await setCounter(db, ak, id, 'spent_micros', MAX_TOTAL_MICROS - 5_000n);
      const res = await app.request('/v1/charge', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ key, costCents: 1 }),
      });
      expect(res.status).toBe(422);
      expect(await res.json()).toMatchObject({ error: { code: 'total_out_of_range' } });
      expect((await ak.getKey(id))?.spentCents).toBe('922337203685477.0807');
      await ak.close();
    });
  });
});
