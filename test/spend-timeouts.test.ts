/**
 * Bounded waits: every call answers within `timeoutMs`, a locked key holds up only its own
 * calls (never the batches of other keys), and a call that timed out is settled by a retry
 * with the same idempotency key, charged once. A row lock held by another connection and
 * a backend paused with SIGSTOP need a real PostgreSQL; PGlite has one connection.
 */
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError } from '../src/index.js';
import { errorToHttp } from '../src/http/errors.js';
import { mintKey } from '../src/keys.js';
import { tableNames } from '../src/store/identifiers.js';
import { isLocalPostgres, stopBackend } from './helpers/backends.js';
import { type TestDb, forEachDatabase, uniqueName } from './helpers/databases.js';
import { hangingPool } from './helpers/faults.js';
import { holdRowLock } from './helpers/locks.js';
import { ledgerRows } from './helpers/tables.js';
import { sleep, until } from './helpers/wait.js';

const TIMEOUT_MS = 1_000;
/** How much later than timeoutMs an answer may come on a loaded machine: a bound on the answer, not a speed test. */
const SLACK_MS = 1_500;

const newAccount = () => uniqueName('acct_timeouts');

/** A call's outcome and how long it took to answer. */
async function timed<T>(call: Promise<T>): Promise<{ ms: number; value?: T; error?: unknown }> {
  const started = Date.now();
  try {
    const value = await call;
    return { ms: Date.now() - started, value };
  } catch (error) {
    return { ms: Date.now() - started, error };
  }
}

/** Resolves with `calls`' results, or with 'stalled' when they have not all answered within `ms`. */
function allWithin<T>(calls: Promise<T>[], ms: number): Promise<T[] | 'stalled'> {
  return Promise.race([Promise.all(calls), sleep(ms).then(() => 'stalled' as const)]);
}

function expectStorageTimeout(outcome: { ms: number; error?: unknown }, what: string) {
  expect(outcome.error, what).toBeInstanceOf(AgentKeyError);
  expect((outcome.error as AgentKeyError).code, what).toBe('storage_timeout');
  expect(outcome.ms, `${what}: answered after ${outcome.ms} ms`).toBeLessThanOrEqual(TIMEOUT_MS + SLACK_MS);
}

/** A key's ledger rows: kind, amount in micro-dollars, idempotency key. */
async function ledgerOf(db: TestDb, ak: AgentKey, keyId: number) {
  return (await ledgerRows(db, ak, keyId)).map((r) => ({ kind: r.kind, micros: r.amount, idempotencyKey: r.idempotency_key }));
}

forEachDatabase(
  (getDb) => {
    it('concurrency: a key row held FOR UPDATE by another connection holds up only the calls that need it: charges on other keys, batched with them, complete while the lock is held; the locked key and the key under it answer storage_timeout within timeoutMs and change nothing; after the release, retries with the same idempotency keys charge exactly once', async () => {
      const db = getDb();
      const ak = await db.agentKey({ timeoutMs: TIMEOUT_MS });
      const t = tableNames(ak.tableName);
      const account = newAccount();
      const locked = await ak.create({ accountId: account, budgetCents: 100 });
      const under = await ak.create({ accountId: account, budgetCents: 50, parentId: locked.id });
      const others = await Promise.all([
        ak.create({ accountId: account, budgetCents: 1_000 }),
        ak.create({ accountId: account }),
        ak.create({ accountId: newAccount(), budgetCents: 1_000 }),
      ]);
      const hold = await ak.reserve(locked.key, { costCents: 5 });
      if (!hold.success) throw new Error('the hold was refused');

      const lock = await holdRowLock(db.url!, t.table, 'id = $1', [locked.id]);
      let lockedCalls: Promise<{ ms: number; error?: unknown }>[] = [];
      try {
        // All in one tick, so the calls on the locked key share batches with the others.
        lockedCalls = [
          timed(ak.trackUsage(locked.key, { costCents: 7, idempotencyKey: 'locked-charge' })),
          timed(ak.reserve(locked.key, { costCents: 3, idempotencyKey: 'locked-hold' })),
          timed(ak.commit(hold.reservationId, { costCents: 4 })),
          timed(ak.trackUsage(under.key, { costCents: 2, idempotencyKey: 'under-charge' })),
        ];
        const otherCalls = others.flatMap((k) => Array.from({ length: 20 }, (_, i) => ak.trackUsage(k.key, { costCents: 1, idempotencyKey: `other-${i}` })));
        const results = await allWithin(otherCalls, TIMEOUT_MS * 10);
        expect(results, 'charges on other keys stalled behind the locked key').not.toBe('stalled');
        expect((results as { success: boolean }[]).every((r) => r.success)).toBe(true);
        // And they keep going, one call after another, while the lock is still held.
        for (let i = 0; i < 5; i++) expect(await ak.trackUsage(others[0]!.key, { costCents: 1 })).toMatchObject({ success: true });

        const answers = await Promise.all(lockedCalls);
        answers.forEach((a, i) => expectStorageTimeout(a, `call ${i} on the locked key or under it`));
        for (const a of answers) expect(a.ms).toBeGreaterThanOrEqual(TIMEOUT_MS * 0.9);
        // Nothing of them was done: the lock holder still sees the key as it was.
        expect(await ak.getKey(locked.id)).toMatchObject({ spentCents: 0, heldCents: 5 });
        expect(await ak.getKey(under.id)).toMatchObject({ spentCents: 0, heldCents: 0 });
        expect(await ledgerOf(db, ak, locked.id)).toEqual([{ kind: 'hold', micros: 50_000, idempotencyKey: null }]);
        expect(await ledgerOf(db, ak, under.id)).toEqual([]);
        expect(await ak.getReservation(hold.reservationId)).toMatchObject({ status: 'held' });
      } finally {
        await lock.release();
        await Promise.all(lockedCalls);
      }

      // After the release, each retry lands once; a second retry is a replay.
      const charge = await ak.trackUsage(locked.key, { costCents: 7, idempotencyKey: 'locked-charge' });
      expect(charge).toMatchObject({ success: true });
      expect(charge.replayed).toBeUndefined();
      expect(await ak.trackUsage(locked.key, { costCents: 7, idempotencyKey: 'locked-charge' })).toMatchObject({ success: true, replayed: true });
      const reserve = await ak.reserve(locked.key, { costCents: 3, idempotencyKey: 'locked-hold' });
      expect(reserve).toMatchObject({ success: true });
      expect(reserve.success && reserve.replayed).toBeUndefined();
      expect(await ak.commit(hold.reservationId, { costCents: 4 })).toMatchObject({ success: true, costCents: 4, heldCents: 5 });
      expect(await ak.trackUsage(under.key, { costCents: 2, idempotencyKey: 'under-charge' })).toMatchObject({ success: true });
      expect(await ak.getKey(under.id)).toMatchObject({ spentCents: 2 });
      // The locked key's own spend (7 + 4) plus what the key under it spent (2); the new hold of 3.
      expect(await ak.getKey(locked.id)).toMatchObject({ spentCents: 13, heldCents: 3 });
      expect((await ledgerOf(db, ak, locked.id)).map((r) => [r.kind, r.micros, r.idempotencyKey])).toEqual([
        ['hold', 50_000, null],
        ['charge', 70_000, 'locked-charge'],
        ['hold', 30_000, 'locked-hold'],
        ['commit', 40_000, null],
      ]);
      expect(await ak.audit()).toMatchObject({ ok: true });
      await ak.close();
    }, 30_000);

    it("concurrency: the same for an account's ceiling row and for a hold's row: only the calls that need the held row wait and answer storage_timeout, changing nothing; the same key's other holds settle at once", async () => {
      const db = getDb();
      const ak = await db.agentKey({ timeoutMs: TIMEOUT_MS });
      const t = tableNames(ak.tableName);
      const ceiled = newAccount();
      await ak.setAccountBudget(ceiled, { budgetCents: 1_000 });
      const inCeiled = await ak.create({ accountId: ceiled });
      const elsewhere = await ak.create({ accountId: newAccount(), budgetCents: 1_000 });
      const holds = await Promise.all([1, 2, 3].map(() => ak.reserve(elsewhere.key, { costCents: 10 })));
      const [heldHold, ...freeHolds] = holds.map((h) => (h.success ? h.reservationId : ''));

      const accountLock = await holdRowLock(db.url!, t.accounts, 'account_id = $1', [ceiled]);
      const holdLock = await holdRowLock(db.url!, t.holds, 'id = $1', [heldHold]);
      let waiting: Promise<{ ms: number; error?: unknown }>[] = [];
      try {
        waiting = [
          timed(ak.trackUsage(inCeiled.key, { costCents: 1, idempotencyKey: 'ceiled' })),
          timed(ak.commit(heldHold!, { costCents: 10 })),
        ];
        const results = await allWithin<{ success: boolean }>(
          [
            ...freeHolds.map((id) => ak.commit(id, { costCents: 5 })),
            ...Array.from({ length: 10 }, () => ak.trackUsage(elsewhere.key, { costCents: 1 })),
          ],
          TIMEOUT_MS * 10,
        );
        expect(results, 'calls that need no held row stalled').not.toBe('stalled');
        expect((results as { success: boolean }[]).every((r) => r.success)).toBe(true);
        (await Promise.all(waiting)).forEach((a, i) => expectStorageTimeout(a, `call ${i} on a held row`));
        expect(await ak.getAccountBudget(ceiled)).toMatchObject({ spentCents: 0 });
        expect(await ak.getReservation(heldHold!)).toMatchObject({ status: 'held' });
      } finally {
        await accountLock.release();
        await holdLock.release();
        await Promise.all(waiting);
      }
      expect(await ak.trackUsage(inCeiled.key, { costCents: 1, idempotencyKey: 'ceiled' })).toMatchObject({ success: true, budgetUsedCents: 1 });
      expect(await ak.commit(heldHold!, { costCents: 10 })).toMatchObject({ success: true, costCents: 10 });
      expect(await ak.getKey(elsewhere.id)).toMatchObject({ spentCents: 30, heldCents: 0 });
      expect(await ak.audit()).toMatchObject({ ok: true });
      await ak.close();
    }, 30_000);

    it('concurrency: with batching off, a charge on a key held FOR UPDATE elsewhere answers storage_timeout within timeoutMs (the database ends its own wait: nothing charged) while charges on other keys go on; the retry after the release charges once', async () => {
      const db = getDb();
      const ak = await db.agentKey({ timeoutMs: TIMEOUT_MS, batching: false });
      const t = tableNames(ak.tableName);
      const account = newAccount();
      const locked = await ak.create({ accountId: account, budgetCents: 100 });
      const other = await ak.create({ accountId: account, budgetCents: 100 });

      const lock = await holdRowLock(db.url!, t.table, 'id = $1', [locked.id]);
      let call: Promise<{ ms: number; error?: unknown }> = Promise.resolve({ ms: 0 });
      try {
        call = timed(ak.trackUsage(locked.key, { costCents: 7, idempotencyKey: 'once' }));
        const results = await allWithin(Array.from({ length: 10 }, () => ak.trackUsage(other.key, { costCents: 1 })), TIMEOUT_MS * 10);
        expect(results, 'charges on the other key stalled').not.toBe('stalled');
        const answer = await call;
        expectStorageTimeout(answer, 'the charge on the locked key');
        // The database gave up the wait itself, before the client did: nothing was charged.
        expect(((answer.error as AgentKeyError).cause as { code?: string } | undefined)?.code).toBe('55P03');
        expect(await ledgerOf(db, ak, locked.id)).toEqual([]);
      } finally {
        await lock.release();
        await call;
      }
      const retry = await ak.trackUsage(locked.key, { costCents: 7, idempotencyKey: 'once' });
      expect(retry).toMatchObject({ success: true, budgetUsedCents: 7 });
      expect(retry.replayed).toBeUndefined();
      expect(await ak.getKey(other.id)).toMatchObject({ spentCents: 10 });
      expect(await ak.audit()).toMatchObject({ ok: true });
      await ak.close();
    }, 30_000);

    it('concurrency: a backend paused with SIGSTOP while it runs a charge: that call answers storage_timeout within timeoutMs and its connection is discarded, other calls keep going meanwhile, and once the backend runs again a retry with the same idempotency key leaves exactly one charge', async (ctx) => {
      const db = getDb();
      const table = (await db.agentKey()).tableName;
      const app = uniqueName('agentkey_pause');
      // A pool of its own, so its backends can be told apart.
      const pool = new pg.Pool({ connectionString: db.url, max: 4, application_name: app });
      const ak = new AgentKey({ pool, tableName: table, timeoutMs: TIMEOUT_MS, cache: false });
      const account = newAccount();
      const paused = await ak.create({ accountId: account, budgetCents: 100 });
      const other = await ak.create({ accountId: account, budgetCents: 100 });
      // The first step asks once whether the database is sharded by account: asked before the pause.
      expect(await ak.trackUsage(other.key, { costCents: 1 })).toMatchObject({ success: true });
      // One connection, idle now: the pool hands it to the next call.
      const idle = await db.query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND state = 'idle'`, [app]);
      expect(idle).toHaveLength(1);
      const pid = Number(idle[0]!.pid);
      if (!isLocalPostgres(pid)) {
        await ak.close();
        await pool.end();
        return ctx.skip();
      }

      const resume = stopBackend(pid);
      let call: Promise<{ ms: number; error?: unknown }> = Promise.resolve({ ms: 0 });
      try {
        call = timed(ak.trackUsage(paused.key, { costCents: 2, idempotencyKey: 'paused' }));
        await sleep(50);
        const results = await allWithin(Array.from({ length: 20 }, () => ak.trackUsage(other.key, { costCents: 1 })), TIMEOUT_MS * 10);
        expect(results, 'other calls stalled behind the paused backend').not.toBe('stalled');
        expect((results as { success: boolean }[]).every((r) => r.success)).toBe(true);
        expectStorageTimeout(await call, 'the call on the paused backend');
        // Its connection was thrown away, not handed to the next call.
        expect(await ak.trackUsage(other.key, { costCents: 1 })).toMatchObject({ success: true });
      } finally {
        resume();
        await call;
      }
      // Running again, the backend finds its client gone (it may have charged first) and exits.
      await until(async () => (await db.query('SELECT 1 FROM pg_stat_activity WHERE pid = $1', [pid])).length === 0, 'the paused backend to exit');
      expect(await ak.trackUsage(paused.key, { costCents: 2, idempotencyKey: 'paused' })).toMatchObject({ success: true, budgetUsedCents: 2 });
      expect(await ledgerOf(db, ak, paused.id)).toEqual([{ kind: 'charge', micros: 20_000, idempotencyKey: 'paused' }]);
      expect(await ak.getKey(other.id)).toMatchObject({ spentCents: 22 });
      expect(await ak.audit()).toMatchObject({ ok: true });
      await ak.close();
      await pool.end();
    }, 30_000);

    it('concurrency: last_used_at stamps never wait on a key another connection holds: a flush stamps the other keys at once and keeps the held one for a later write', async () => {
      const db = getDb();
      const ak = await db.agentKey({ timeoutMs: TIMEOUT_MS });
      const t = tableNames(ak.tableName);
      const account = newAccount();
      const first = await ak.create({ accountId: account });
      const held = await ak.create({ accountId: account });
      const last = await ak.create({ accountId: account });
      const stamped = async (id: number) =>
        (await db.query<{ at: Date | null }>(`SELECT last_used_at AS at FROM ${t.table} WHERE id = $1`, [id]))[0]!.at !== null;

      const lock = await holdRowLock(db.url!, t.table, 'id = $1', [held.id]);
      try {
        for (const k of [first, held, last]) expect(await ak.validate(k.key)).toMatchObject({ valid: true });
        expect((await timed(ak.flush())).error).toBeUndefined();
        expect([await stamped(first.id), await stamped(held.id), await stamped(last.id)]).toEqual([true, false, true]);
        // The keys it stamped are free: a charge on them does not wait for the held one.
        expect(await ak.trackUsage(first.key, { costCents: 1 })).toMatchObject({ success: true });
      } finally {
        await lock.release();
      }
      await ak.flush();
      expect(await stamped(held.id)).toBe(true);
      await ak.close();
    });
  },
  ['postgres'],
);

forEachDatabase(
  (getDb) => {
    it('concurrency: PGlite has one connection, so a transaction held open holds up every call: each answers storage_timeout within timeoutMs, and a retry with the same idempotency key after it ends is charged exactly once', async () => {
      const db = getDb();
      const ak = await db.agentKey({ timeoutMs: TIMEOUT_MS });
      const k = await ak.create({ accountId: newAccount(), budgetCents: 100 });
      let release = () => {};
      const held = (db.pool as import('@electric-sql/pglite').PGlite).transaction(async (tx) => {
        await tx.query('SELECT 1');
        await new Promise<void>((resolve) => (release = resolve));
      });
      try {
        expectStorageTimeout(await timed(ak.trackUsage(k.key, { costCents: 7, idempotencyKey: 'queued' })), 'the charge behind the open transaction');
      } finally {
        release();
        await held;
      }
      // The call is two statements (its key's account, then the charge): one that timed out
      // may still run when the transaction ends (then the retry is a replay of it), or not.
      expect(await ak.trackUsage(k.key, { costCents: 7, idempotencyKey: 'queued' })).toMatchObject({ success: true, budgetUsedCents: 7 });
      expect(await ledgerOf(db, ak, k.id)).toEqual([{ kind: 'charge', micros: 70_000, idempotencyKey: 'queued' }]);
      await ak.close();
    });
  },
  ['pglite'],
);

forEachDatabase((getDb) => {
  it('happy: the batch function works inside the account it is given (a key of another account is not found, nothing written), or across accounts when given none', async () => {
    const db = getDb();
    const ak = await db.agentKey();
    const account = newAccount();
    const k = await ak.create({ accountId: account, budgetCents: 10 });
    const t = tableNames(ak.tableName);
    const hash = (await db.query<{ key_hash: string }>(`SELECT key_hash FROM ${t.table} WHERE id = $1`, [k.id]))[0]!.key_hash;
    const call = (acct: string | null) =>
      db.query<{ r_outcome: string[]; r_ref_accounts: (string | null)[] }>(
        `SELECT r_outcome, r_ref_accounts FROM ${t.spendManyFn}($1::text, $2::text[], $3::text[], $4::bigint[], $5::text[], $6::int[], $7::text[],
           $8::bigint[], $9::text[], $10::jsonb[], $11::text[], $12::bigint[])`,
        [acct, [hash], [null], [null], [null], [1, 1], ['charge', 'charge'], [60_000, 60_000], [null, null], [null, null], [null, null], [null, null]],
      );
    expect((await call(newAccount()))[0]!.r_outcome).toEqual(['invalid', 'invalid']);
    expect(await ak.getKey(k.id)).toMatchObject({ spentCents: 0 });
    expect(await ledgerRows(db, ak, k.id)).toHaveLength(0);
    const [row] = await call(account);
    expect(row!.r_outcome).toEqual(['ok', 'budget_exceeded']);
    expect(row!.r_ref_accounts).toEqual([account]);
    expect(await ak.getKey(k.id)).toMatchObject({ spentCents: 6 });
    // No account: the batch may span accounts (what agentkey sends on one PostgreSQL).
    expect((await call(null))[0]!.r_outcome).toEqual(['budget_exceeded', 'budget_exceeded']);
    expect(await ledgerRows(db, ak, k.id)).toHaveLength(1);
    await ak.close();
  });

  it('error: a process of a version before the account argument fails its call with an error and writes nothing', async () => {
    const db = getDb();
    const ak = await db.agentKey();
    const k = await ak.create({ accountId: newAccount(), budgetCents: 10 });
    const t = tableNames(ak.tableName);
    const hash = (await db.query<{ key_hash: string }>(`SELECT key_hash FROM ${t.table} WHERE id = $1`, [k.id]))[0]!.key_hash;
    await expect(
      db.query(
        `SELECT r_outcome FROM ${t.spendManyFn}($1::text[], $2::text[], $3::bigint[], $4::text[], $5::int[], $6::text[],
           $7::bigint[], $8::text[], $9::jsonb[], $10::text[], $11::bigint[], $12::int, $13::jsonb[])`,
        [[hash], [null], [null], [null], [1], ['charge'], [60_000], [null], [null], [null], [null], null, null],
      ),
    ).rejects.toThrow(/does not exist/);
    expect(await ledgerRows(db, ak, k.id)).toHaveLength(0);
    await ak.close();
  });
});

describe('timeoutMs', () => {
  it('error: timeoutMs must be a whole number of milliseconds from 1 to 3600000', () => {
    const pool = hangingPool();
    for (const timeoutMs of [0, -1, 1.5, Number.NaN, Number.POSITIVE_INFINITY, 3_600_001, '5000', true]) {
      let thrown: unknown;
      try {
        new AgentKey({ pool: pool as never, timeoutMs: timeoutMs as never });
      } catch (err) {
        thrown = err;
      }
      expect(thrown, String(timeoutMs)).toBeInstanceOf(AgentKeyError);
      expect((thrown as AgentKeyError).code, String(timeoutMs)).toBe('invalid_argument');
      expect((thrown as AgentKeyError).message, String(timeoutMs)).toMatch(/^timeoutMs must be a whole number of milliseconds from 1 to 3600000/);
    }
    for (const timeoutMs of [1, 5_000, 3_600_000, undefined]) {
      expect(() => new AgentKey({ pool: pool as never, timeoutMs }), String(timeoutMs)).not.toThrow();
    }
  });

  it('error: a pool that never answers: every kind of call answers storage_timeout within timeoutMs, not never', async () => {
    const ak = new AgentKey({ pool: hangingPool() as never, timeoutMs: 200, cache: false });
    const key = mintKey('ak_').raw;
    const calls: Promise<unknown>[] = [
      ak.trackUsage(key, { costCents: 1 }),
      ak.reserve(key, { costCents: 1 }),
      ak.validate(key),
      ak.create({ accountId: 'a' }),
      ak.setAccountBudget('a', { budgetCents: 1 }),
    ];
    for (const [i, outcome] of (await Promise.all(calls.map((c) => timed(c)))).entries()) {
      expect((outcome.error as AgentKeyError | undefined)?.code, `call ${i}`).toBe('storage_timeout');
      expect(outcome.ms, `call ${i}`).toBeLessThanOrEqual(200 + SLACK_MS);
    }
  });

  it('happy: the service maps storage_timeout to 503 with a message that says to try again', () => {
    expect(errorToHttp(new AgentKeyError('storage_timeout', 'detail'))).toEqual({
      status: 503,
      body: { error: { code: 'storage_timeout', message: 'The key store did not answer in time; try again later.' } },
    });
  });
});
