import type { PGlite } from '@electric-sql/pglite';
import { PGLiteSocketServer } from '@electric-sql/pglite-socket';
import { afterAll, expect, it } from 'vitest';
import type { AgentKey } from '../src/index.js';
import { type TableNames, tableNames } from '../src/store/identifiers.js';
import { forEachDatabase, type TestDb } from './helpers/databases.js';
import { runTogether, startWorker, useWorkerBundle, type Worker } from './helpers/processes.js';
import { SEED } from './helpers/random.js';
import { groupBy, micros, sum } from './helpers/tally.js';

/**
 * Spending from several OS processes at once, on PostgreSQL and on PGlite. Each worker
 * (test/fixtures/spend-worker.mjs) runs the package bundled from the current src/, connects
 * with `pg` (to PGlite through @electric-sql/pglite-socket), and prints every call it made with
 * the result of every attempt. The test then checks those reports against the key row, the
 * holds table and the ledger: the budget held, every accepted cost counted exactly once.
 */

const WORKER = 'test/fixtures/spend-worker.mjs';
const bundle = useWorkerBundle('spend');

interface Result {
  success?: boolean;
  replayed?: true;
  reason?: string;
  error?: { code?: string; message?: string };
  reservationId?: string;
  costCents?: number;
  heldCents?: number;
  releasedCents?: number;
  overHoldCents?: number;
  chargedCents?: number;
  overageCents?: number;
  overBudget?: boolean;
  budgetUsedCents?: number;
}

interface Line {
  w: number;
  op: 'charge' | 'conflict' | 'reserve' | 'commit' | 'release' | 'done' | 'crash';
  idem?: string;
  rid?: string;
  micros?: number;
  results?: Result[];
  result?: Result;
  reconnects?: number;
  key?: string;
}

interface LedgerRow {
  id: number;
  kind: string;
  amount_micros: number;
  reservation_id: string | null;
  idempotency_key: string | null;
}

/** In one line's attempts (a call and its retries): refusals until the first success, then only replays of it. */
function checkAttempts(results: Result[], refusals: string[], where: string): void {
  const first = results.findIndex((r) => r.success);
  const before = first === -1 ? results : results.slice(0, first);
  expect(before.filter((r) => !refusals.includes(r.reason!)), `${where}: only ${refusals} before a success`).toEqual([]);
  if (first !== -1) {
    expect(results.slice(first + 1).map((r) => [r.success, r.replayed]), where).toEqual(results.slice(first + 1).map(() => [true, true]));
  }
}

/** Successes that were not replays: what the database accepted, across every worker. */
const fresh = (results: Result[]) => results.filter((r) => r.success && !r.replayed);

async function workerLines(workers: Worker[], codes: (number | null)[]): Promise<Line[]> {
  const stderr = workers.map((w) => w.stderr()).join('\n');
  expect(codes, stderr).toEqual(workers.map(() => 0));
  const lines = workers.flatMap((w) => w.lines) as Line[];
  expect(lines.filter((l) => l.op === 'crash'), stderr).toEqual([]);
  expect(lines.filter((l) => l.op === 'done')).toHaveLength(workers.length);
  // No call threw (a storage error, a lost connection, a deadlock...).
  const thrown = lines.flatMap((l) => [...(l.results ?? []), ...(l.result ? [l.result] : [])]).filter((r) => r.error);
  expect(thrown).toEqual([]);
  return lines;
}

forEachDatabase((getDb) => {
  // PGlite lives in this process: workers reach it through a socket server on a free port.
  let server: PGLiteSocketServer | undefined;
  afterAll(async () => {
    await server?.stop();
  });
  async function workerUrl(db: TestDb): Promise<string> {
    if (db.name === 'postgres') return db.url!;
    if (!server) {
      server = new PGLiteSocketServer({ db: db.pool as PGlite, port: 0, host: '127.0.0.1', maxConnections: 40 });
      await server.start();
    }
    return `postgres://postgres@${server.getServerConn()}/postgres`;
  }

  async function keyRow(db: TestDb, t: TableNames, id: number) {
    const [row] = await db.query<{ spent_micros: number; budget_micros: number }>(
      `SELECT spent_micros::float8 AS spent_micros, budget_micros::float8 AS budget_micros FROM ${t.table} WHERE id = $1`,
      [id],
    );
    return row!;
  }

  function ledger(db: TestDb, t: TableNames, keyId: number): Promise<LedgerRow[]> {
    return db.query<LedgerRow>(
      `SELECT id::float8 AS id, kind, amount_micros::float8 AS amount_micros, reservation_id, idempotency_key
       FROM ${t.ledger} WHERE key_id = $1 ORDER BY id`,
      [keyId],
    );
  }

  async function holds(db: TestDb, t: TableNames, keyId: number) {
    const rows = await db.query<{ id: string; status: string; amount_micros: number; committed_micros: number | null }>(
      `SELECT id, status, amount_micros::float8 AS amount_micros, committed_micros::float8 AS committed_micros
       FROM ${t.holds} WHERE key_id = $1`,
      [keyId],
    );
    return new Map(rows.map((r) => [r.id, r]));
  }

  /**
   * Four processes, two connections each, race random reserve / commit / release / charge
   * calls on one key, retrying each; then every report is checked against the database.
   */
  async function race(overHold: boolean, seed: number) {
    const db = getDb();
    const ak: AgentKey = await db.agentKey();
    const t = tableNames(ak.tableName);
    const budgetCents = 150;
    const { key, id } = await ak.create({ accountId: 'acct_race', budgetCents });
    const url = await workerUrl(db);
    const base = {
      mode: 'race', url, table: ak.tableName, key, lanes: 2, ops: 25, overHold, sharedSeed: seed,
      sharedRate: 0.25, sharedKeys: 12, reconnectRate: 0.2,
      charge: [100, 20_000], // 0.01 to 2 cents
      hold: [5_000, 60_000], // 0.5 to 6 cents
    };
    const workers = Array.from({ length: 4 }, (_, w) =>
      startWorker(WORKER, [bundle(), JSON.stringify({ ...base, worker: w, seed: seed * 10 + w })]),
    );
    const lines = await workerLines(workers, await runTogether(workers));
    const where = `seed ${seed}`;

    // Charges: per idempotency key, accepted once across all processes, or never.
    const charges = groupBy(lines.filter((l) => l.op === 'charge'), (l) => l.idem!);
    const accepted = new Map<string, number>();
    for (const [idem, reports] of charges) {
      for (const r of reports) checkAttempts(r.results!, ['budget_exceeded'], `${where} charge ${idem}`);
      expect(new Set(reports.map((r) => r.micros)).size, `${where} ${idem}`).toBe(1);
      const wins = reports.flatMap((r) => fresh(r.results!));
      expect(wins.length, `${where} charge ${idem} accepted more than once`).toBeLessThanOrEqual(1);
      if (wins.length === 1) accepted.set(idem, reports[0]!.micros!);
      else expect(reports.flatMap((r) => r.results!).filter((r) => r.success), `${where} ${idem}`).toEqual([]);
    }
    for (const c of lines.filter((l) => l.op === 'conflict')) {
      expect(c.result, `${where} ${c.idem}`).toEqual({ success: false, reason: 'idempotency_conflict' });
    }

    // Holds: per idempotency key, one reservation id, taken once.
    const reserves = groupBy(lines.filter((l) => l.op === 'reserve'), (l) => l.idem!);
    const reservations = new Map<string, number>(); // id -> held micros
    for (const [idem, reports] of reserves) {
      for (const r of reports) checkAttempts(r.results!, ['budget_exceeded'], `${where} reserve ${idem}`);
      const wins = reports.flatMap((r) => fresh(r.results!));
      expect(wins.length, `${where} reserve ${idem} held more than once`).toBeLessThanOrEqual(1);
      const ids = new Set(reports.flatMap((r) => r.results!).filter((r) => r.success).map((r) => r.reservationId));
      expect(ids.size, `${where} ${idem}`).toBe(wins.length);
      if (wins.length === 1) reservations.set(wins[0]!.reservationId!, reports[0]!.micros!);
    }

    // Settlements: per reservation, exactly one commit or release won; every other call replays it or is refused.
    const settles = groupBy(lines.filter((l) => l.op === 'commit' || l.op === 'release'), (l) => l.rid!);
    expect([...settles.keys()].sort()).toEqual([...reservations.keys()].sort());
    // Per commit: its real cost, its hold, how far it went past the hold, what was charged and what was overage.
    const committed = new Map<string, { cost: number; hold: number; over: number; charged: number; overage: number }>();
    const released = new Set<string>();
    for (const [rid, reports] of settles) {
      const wins = reports.flatMap((r) => fresh(r.results!).map((res) => ({ op: r.op, micros: r.micros, res })));
      expect(wins.length, `${where} ${rid} settled ${wins.length} times`).toBe(1);
      const win = wins[0]!;
      const hold = reservations.get(rid)!;
      for (const r of reports) {
        // Another process's commit of a shared hold with another cost is no replay: a conflict.
        const refusals = win.op === 'commit' ? ['already_committed', 'idempotency_conflict'] : ['already_released'];
        checkAttempts(r.results!, refusals, `${where} ${r.op} ${rid}`);
        if (r.op === win.op && (r.op === 'release' || r.micros === win.micros)) {
          expect(r.results!.every((res) => res.success), `${where} ${rid}`).toBe(true);
        } else if (r.op === win.op) {
          expect(r.results!.map((res) => res.reason), `${where} ${rid}`).toEqual(r.results!.map(() => 'idempotency_conflict'));
        }
      }
      if (win.op === 'release') {
        released.add(rid);
        expect(win.res.releasedCents).toBe(hold / 10_000);
        continue;
      }
      const cost = micros(win.res.costCents);
      const over = micros(win.res.overHoldCents);
      const charged = micros(win.res.chargedCents);
      const overage = micros(win.res.overageCents);
      expect(micros(win.res.heldCents)).toBe(hold);
      expect(over).toBe(Math.max(0, cost - hold));
      expect(micros(win.res.releasedCents)).toBe(Math.max(0, hold - cost));
      // The real cost is all recorded; only what went past the hold can be overage.
      expect(charged + overage, `${where} ${rid}`).toBe(cost);
      expect(overage, `${where} ${rid}`).toBeLessThanOrEqual(over);
      expect(win.res.overBudget, `${where} ${rid}`).toBe(overage > 0);
      // Every later commit of it with the same cost reports that first outcome (the others are conflicts, above).
      const asked = reports.filter((r) => r.op === 'commit' && r.micros === win.micros).flatMap((r) => r.results!);
      expect(asked.map((r) => micros(r.costCents)), `${where} ${rid}`).toEqual(asked.map(() => cost));
      committed.set(rid, { cost, hold, over, charged, overage });
    }

    // The key row: every accepted cost counted exactly once.
    const spent = sum(accepted.values()) + sum([...committed.values()].map((c) => c.charged));
    const overHoldTotal = sum([...committed.values()].map((c) => c.over));
    const overageTotal = sum([...committed.values()].map((c) => c.overage));
    const row = await keyRow(db, t, id);
    expect(row.spent_micros, where).toBe(spent);

    // The ledger: one charge row per accepted idempotency key, one hold row per reservation,
    // one commit or release row per settled reservation, nothing expired, nothing else.
    const rows = await ledger(db, t, id);
    const byKind = groupBy(rows, (r) => r.kind);
    expect([...byKind.keys()].filter((k) => !['charge', 'hold', 'commit', 'release', 'overage'].includes(k))).toEqual([]);
    const chargeRows = byKind.get('charge') ?? [];
    expect(chargeRows.map((r) => r.idempotency_key).sort()).toEqual([...accepted.keys()].sort());
    for (const r of chargeRows) expect(r.amount_micros).toBe(accepted.get(r.idempotency_key!));
    const holdRows = byKind.get('hold') ?? [];
    expect(holdRows.map((r) => r.reservation_id).sort()).toEqual([...reservations.keys()].sort());
    for (const r of holdRows) expect(r.amount_micros).toBe(reservations.get(r.reservation_id!));
    const commitRows = byKind.get('commit') ?? [];
    expect(commitRows.map((r) => r.reservation_id).sort()).toEqual([...committed.keys()].sort());
    for (const r of commitRows) expect(r.amount_micros).toBe(committed.get(r.reservation_id!)!.charged);
    const overageRows = byKind.get('overage') ?? [];
    const withOverage = [...committed].filter(([, c]) => c.overage > 0);
    expect(overageRows.map((r) => r.reservation_id).sort()).toEqual(withOverage.map(([rid]) => rid).sort());
    for (const r of overageRows) expect(r.amount_micros).toBe(committed.get(r.reservation_id!)!.overage);
    const releaseRows = byKind.get('release') ?? [];
    expect(releaseRows.map((r) => r.reservation_id).sort()).toEqual([...released].sort());
    for (const r of releaseRows) expect(r.amount_micros).toBe(-reservations.get(r.reservation_id!)!);

    // No live hold is left, and each ended the way its winning call said.
    const holdTable = await holds(db, t, id);
    expect([...holdTable.values()].filter((h) => h.status === 'held')).toEqual([]);
    for (const rid of reservations.keys()) {
      expect(holdTable.get(rid)?.status, rid).toBe(committed.has(rid) ? 'committed' : 'released');
    }

    // Replaying the ledger in order (every write of a key holds its row lock, so ids are in
    // commit order): no row ever took spend + holds past the budget, and a commit that left
    // overage left the key exactly at its budget (it was charged all the budget had left).
    const budget = budgetCents * 10_000;
    let spentSoFar = 0;
    let held = 0;
    let overageSoFar = 0;
    let peak = 0;
    for (const r of rows) {
      if (r.kind === 'charge') spentSoFar += r.amount_micros;
      if (r.kind === 'hold' || r.kind === 'release') held += r.amount_micros;
      if (r.kind === 'commit') {
        held -= reservations.get(r.reservation_id!)!;
        spentSoFar += r.amount_micros;
      }
      if (r.kind === 'overage') {
        overageSoFar += r.amount_micros;
        expect(spentSoFar + held, `${where} overage row ${r.id}`).toBe(budget);
      }
      expect(spentSoFar + held, `${where} ledger row ${r.id}`).toBeLessThanOrEqual(budget);
      peak = Math.max(peak, spentSoFar + held);
    }
    expect([spentSoFar, held, overageSoFar]).toEqual([spent, 0, overageTotal]);

    expect(await ak.audit()).toEqual({
      ok: true,
      keysChecked: 1,
      mismatches: [],
      accountMismatches: [],
      overageMismatches: [],
      overageCents: overageTotal / 10_000,
    });
    expect(await ak.usage({ keyId: id })).toMatchObject({
      totalCents: spent / 10_000,
      count: accepted.size + committed.size,
      overageCents: overageTotal / 10_000,
    });
    // A key spent to its budget (commits past their holds can take it there) is refused as
    // the package refused it; otherwise its figures are the ledger's.
    if (spent >= budget) expect(await ak.validate(key)).toEqual({ valid: false, reason: 'budget_exceeded' });
    else expect(await ak.validate(key)).toMatchObject({ valid: true, budgetUsedCents: spent / 10_000, budgetHeldCents: 0 });
    expect(await ak.getKey(id)).toMatchObject({ spentCents: spent / 10_000, heldCents: 0, overageCents: overageTotal / 10_000 });

    // The race was real: calls were refused for the budget, retried over fresh connections,
    // and the same idempotency key was sent by more than one process.
    const all = lines.flatMap((l) => l.results ?? []);
    expect(all.filter((r) => r.reason === 'budget_exceeded').length, where).toBeGreaterThan(0);
    expect(all.filter((r) => r.replayed).length, where).toBeGreaterThan(0);
    expect(sum(lines.map((l) => l.reconnects ?? 0))).toBeGreaterThan(0);
    const sharedAcrossProcesses = [...charges.values(), ...reserves.values()].filter(
      (reports) => new Set(reports.filter((r) => r.results!.some((res) => res.success)).map((r) => r.w)).size > 1,
    );
    expect(sharedAcrossProcesses.length, where).toBeGreaterThan(0);
    expect(released.size).toBeGreaterThan(0);
    expect(committed.size).toBeGreaterThan(0);
    return { spent, budget, overHoldTotal, overageTotal, peak, committed, accepted, lines };
  }

  it('processes racing reserve/commit/release/charge with retries on one key never spend past its budget and count each cost once', async () => {
    const seed = SEED;
    const { spent, budget, overHoldTotal, peak } = await race(false, seed);
    expect(overHoldTotal).toBe(0);
    expect(spent, `seed ${seed}`).toBeLessThanOrEqual(budget);
    expect(peak, `seed ${seed}`).toBeLessThanOrEqual(budget);
    // The budget was actually contended: spend and holds got close to it at some point.
    expect(peak, `seed ${seed}`).toBeGreaterThan(budget - 20_000 * 3);
  }, 60_000);

  it('commits past their holds never take the key past its budget: what no budget could take is overage, recorded once', async () => {
    const seed = SEED + 1;
    const { spent, budget, overHoldTotal, overageTotal, committed, accepted, lines } = await race(true, seed);
    expect(overHoldTotal, `seed ${seed}`).toBeGreaterThan(0);
    expect(spent, `seed ${seed}`).toBeLessThanOrEqual(budget);
    // What the winning commits reported as overage is what the ledger has (checked in race()),
    // and the spend is exactly the charges plus what the commits were charged.
    const reported = sum(
      lines
        .filter((l) => l.op === 'commit')
        .flatMap((l) => fresh(l.results!))
        .map((r) => micros(r.overageCents)),
    );
    expect(reported).toBe(overageTotal);
    expect(spent).toBe(sum(accepted.values()) + sum([...committed.values()].map((c) => c.cost - c.overage)));
    // Overage is never invented: a commit within its hold is charged in full.
    for (const c of committed.values()) if (c.cost <= c.hold) expect(c.overage, `seed ${seed}`).toBe(0);
  }, 60_000);

  it('a process that dies holding money blocks it only until the hold’s ttl, with no sweeper running', async () => {
    const db = getDb();
    const ak = await db.agentKey();
    const t = tableNames(ak.tableName);
    const k = await ak.create({ accountId: 'acct_dead', budgetCents: 10 });
    const s = await ak.create({ accountId: 'acct_dead', budgetCents: 10 });
    const worker = startWorker(WORKER, [
      bundle(),
      JSON.stringify({
        mode: 'abandon', worker: 0, url: await workerUrl(db), table: ak.tableName,
        holds: [{ key: k.key, costCents: 8, ttl: '2s' }, { key: s.key, costCents: 8, ttl: '2s' }],
      }),
    ]);
    expect(await worker.exited, worker.stderr()).toBe(0);
    const lines = worker.lines as Line[];
    expect(lines.map((l) => l.result)).toEqual([
      expect.objectContaining({ success: true, budgetRemainingCents: 2 }),
      expect.objectContaining({ success: true, budgetRemainingCents: 2 }),
    ]);
    const [holdK, holdS] = lines.map((l) => l.result!.reservationId!) as [string, string];

    // The dead process's holds still count: a charge or hold that does not fit is refused.
    expect(await ak.trackUsage(k.key, { costCents: 5 })).toEqual({ success: false, reason: 'budget_exceeded', limitedBy: { kind: 'key', keyId: k.id, window: 'lifetime' }, budgetUsedCents: 0, budgetRemainingCents: 2 });
    expect(await ak.reserve(s.key, { costCents: 5 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
    expect(await ak.validate(k.key)).toMatchObject({ budgetHeldCents: 8, budgetRemainingCents: 2 });

    // Wait for the database's clock to pass the ttl. Nothing sweeps meanwhile.
    const deadline = Date.now() + 20_000;
    for (;;) {
      const [due] = await db.query<{ due: boolean }>(
        `SELECT bool_and(expires_at <= now()) AS due FROM ${t.holds} WHERE id IN ($1, $2)`,
        [holdK, holdS],
      );
      if (due?.due === true) break;
      if (Date.now() > deadline) throw new Error('the holds never reached their expiry');
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    const status = async (rid: string) =>
      (await db.query<{ status: string }>(`SELECT status FROM ${t.holds} WHERE id = $1`, [rid]))[0]?.status;
    expect([await status(holdK), await status(holdS)]).toEqual(['held', 'held']);

    // The money is free again at once: the expired hold no longer counts.
    expect(await ak.validate(k.key)).toMatchObject({ budgetHeldCents: 0, budgetRemainingCents: 10 });
    expect(await ak.trackUsage(k.key, { costCents: 5 })).toEqual({ success: true, budgetUsedCents: 5, budgetRemainingCents: 5 });
    // That charge tidied the key's own expired hold as it went (one 'expire' row) ...
    expect(await status(holdK)).toBe('expired');
    expect((await ledger(db, t, k.id)).map((r) => [r.kind, r.amount_micros, r.reservation_id])).toEqual([
      ['hold', 80_000, holdK],
      ['expire', -80_000, holdK],
      ['charge', 50_000, null],
    ]);

    // ... and sweepExpiredHolds() marks the other key's, once.
    expect(await status(holdS)).toBe('held');
    expect(await ak.sweepExpiredHolds()).toBe(1);
    expect(await ak.sweepExpiredHolds()).toBe(0);
    expect(await status(holdS)).toBe('expired');
    expect((await ledger(db, t, s.id)).map((r) => [r.kind, r.amount_micros, r.reservation_id])).toEqual([
      ['hold', 80_000, holdS],
      ['expire', -80_000, holdS],
    ]);
    expect(await ak.trackUsage(s.key, { costCents: 10 })).toEqual({ success: true, budgetUsedCents: 10, budgetRemainingCents: 0 });

    // Settling a hold after it expired gives nothing back twice.
    expect(await ak.release(holdS)).toMatchObject({ success: true, releasedCents: 0, holdExpired: true });
    expect((await ledger(db, t, s.id)).map((r) => r.kind)).toEqual(['hold', 'expire', 'charge']);

    expect(await ak.audit()).toEqual({ ok: true, keysChecked: 2, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
    expect(await db.query(`SELECT id FROM ${t.holds} WHERE status = 'held'`)).toEqual([]);
  }, 30_000);

  it('2000 charges of 0.03 cents from four processes add up to exactly 60 cents', async () => {
    const db = getDb();
    const ak = await db.agentKey();
    const t = tableNames(ak.tableName);
    const { key, id } = await ak.create({ accountId: 'acct_pennies', budgetCents: 60 });
    const url = await workerUrl(db);
    const workers = Array.from({ length: 4 }, (_, w) =>
      startWorker(WORKER, [
        bundle(),
        JSON.stringify({ mode: 'charges', worker: w, url, table: ak.tableName, key, count: 500, lanes: 2, costCents: 0.03, seed: SEED + w, reconnectRate: 0.2 }),
      ]),
    );
    const lines = await workerLines(workers, await runTogether(workers));
    const charges = lines.filter((l) => l.op === 'charge');
    expect(charges).toHaveLength(2000);
    // Every charge fitted (60 cents is exactly 2000 x 0.03) and was made once; retries replayed.
    expect(charges.filter((l) => fresh(l.results!).length !== 1)).toEqual([]);
    expect(charges.flatMap((l) => l.results!.slice(1)).every((r) => r.success && r.replayed)).toBe(true);

    expect(await keyRow(db, t, id)).toEqual({ spent_micros: 600_000, budget_micros: 600_000 });
    const [count] = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${t.ledger} WHERE key_id = $1 AND kind = 'charge'`, [id]);
    expect(count!.n).toBe(2000);
    expect(await ak.usage({ keyId: id })).toMatchObject({ totalCents: 60, count: 2000 });
    expect(await ak.getKey(id)).toMatchObject({ spentCents: 60, remainingCents: 0 });
    expect(await ak.validate(key)).toEqual({ valid: false, reason: 'budget_exceeded' });
    expect(await ak.trackUsage(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
    expect(await ak.audit()).toEqual({ ok: true, keysChecked: 1, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
  }, 60_000);
});
