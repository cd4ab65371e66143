import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { AgentKey } from '../src/index.js';
import { lookupHash } from '../src/keys.js';
import { toDb } from '../src/store/db.js';
import { type TableNames, tableNames } from '../src/store/identifiers.js';
import type { KeyRef } from '../src/store/keys.js';
import { type BatchItem, type SpendOutcome, type SpendRequest, SpendStore } from '../src/store/spend.js';
import { forEachDatabase, type TestDb } from './helpers/databases.js';

/**
 * Coalesced spending must give exactly the outcomes of serial execution.
 *
 * Two tables get identical keys (a tree with budgets under an account ceiling, a periodic
 * sibling, a revoked and an expired key, a subject, a key of another account) and identical
 * history (charges, live holds, holds already past their ttl). Then the same random list of
 * charges, holds, commits and releases (costs near the budget edges, repeated idempotency
 * keys with the same or another amount, commits over the hold, second settlements, unknown
 * keys and holds) runs on table A through `<table>_spend_many` (one batch, or random
 * consecutive batches) and on table B one by one through `<table>_spend` and
 * `<table>_settle`. Every outcome, the final counters, the holds and the ledger must match.
 */

const ROLES = ['root', 'child', 'grandchild', 'child2', 'sibling', 'revoked', 'expired', 'subject', 'other'] as const;
type Role = (typeof ROLES)[number];
type Target = Role | 'unknown';

/** Budgets and costs in micro-dollars, chosen so sums land on, just under and just over the edges. */
const BUDGETS = [0, 30_000, 50_000, 100_000, 100_001, 150_000, 300_000, 500_000];
const EDGE_COSTS = [0, 1, 9_999, 10_000, 10_001, 25_000, 30_000, 49_999, 50_000, 50_001, 100_000];
const costArb = fc.oneof(
  { arbitrary: fc.constantFrom(...EDGE_COSTS), weight: 3 },
  { arbitrary: fc.integer({ min: 1, max: 120_000 }), weight: 1 },
  { arbitrary: fc.integer({ min: 1, max: 5_000 }), weight: 2 },
);
const budgetArb = fc.option(fc.constantFrom(...BUDGETS), { nil: null, freq: 4 });

const setupArb = fc.record({
  root: budgetArb,
  child: budgetArb,
  grandchild: budgetArb,
  child2: budgetArb,
  sibling: budgetArb,
  subject: budgetArb,
  other: budgetArb,
  ceiling: fc.option(fc.constantFrom(0, 60_000, 120_000, 200_000, 400_000, 800_000), { nil: null, freq: 3 }),
  /** The sibling and child2 bill by period; when `roll`, their period is over before the run. */
  siblingPeriod: fc.boolean(),
  child2Period: fc.boolean(),
  roll: fc.boolean(),
});

const targetArb: fc.Arbitrary<Target> = fc.oneof(
  { arbitrary: fc.constantFrom<Target>('root', 'child', 'grandchild', 'child2', 'sibling'), weight: 10 },
  { arbitrary: fc.constantFrom<Target>('revoked', 'expired', 'subject', 'other', 'unknown'), weight: 3 },
);

const spendArb = fc.record({
  op: fc.constantFrom<'charge' | 'hold'>('charge', 'hold'),
  target: targetArb,
  byHash: fc.boolean(),
  cost: costArb,
  idem: fc.oneof(
    { arbitrary: fc.constant(null), weight: 3 },
    { arbitrary: fc.constantFrom('a', 'b', 'c', 'd', 'e', 'pre'), weight: 1 },
  ),
  meta: fc.boolean(),
  /** Sometimes a retry of an earlier item: same op, key and idempotency key, same or another cost. */
  repeat: fc.option(fc.record({ of: fc.nat(), sameCost: fc.constantFrom(true, true, true, false) }), { nil: null, freq: 3 }),
});

/** A commit or release of a hold: one an earlier item asked for, one from the history, or none at all. */
const settleArb = fc.record({
  op: fc.constantFrom<'commit' | 'release'>('commit', 'release'),
  source: fc.constantFrom<'item' | 'item' | 'pre' | 'unknown'>('item', 'item', 'pre', 'unknown'),
  pick: fc.nat(),
  cost: costArb,
  meta: fc.boolean(),
});

const itemArb = fc.oneof(
  { arbitrary: spendArb.map((x) => ({ kind: 'spend' as const, ...x })), weight: 3 },
  { arbitrary: settleArb.map((x) => ({ kind: 'settle' as const, ...x })), weight: 1 },
);
type RawItem = typeof itemArb extends fc.Arbitrary<infer T> ? T : never;
type SpendItem = { kind: 'spend'; op: 'charge' | 'hold'; target: Target; byHash: boolean; cost: number; idem: string | null; meta: boolean };
type SettleItem = { kind: 'settle'; op: 'commit' | 'release'; hold: string; cost: number; meta: boolean };
type Item = SpendItem | SettleItem;

/** History before the run, applied the same way to both tables (so stored idempotency keys and holds exist). */
const preArb = fc.array(
  fc.record({
    op: fc.constantFrom<'charge' | 'hold'>('charge', 'hold'),
    target: fc.constantFrom<Role>('root', 'child', 'grandchild', 'child2', 'sibling'),
    cost: fc.constantFrom(1, 5_000, 10_000, 20_000),
    idem: fc.option(fc.constant('pre'), { nil: null }),
    /** A hold that is already past its time when the run starts. */
    lapsed: fc.boolean(),
  }),
  { maxLength: 6 },
);

const planArb = fc.record({
  setup: setupArb,
  pre: preArb,
  items: fc.array(itemArb, { minLength: 1, maxLength: 40, size: 'max' }),
  /** Where table A's list is cut into consecutive batches (none: one batch). */
  cuts: fc.oneof(
    { arbitrary: fc.constant([] as number[]), weight: 1 },
    { arbitrary: fc.array(fc.integer({ min: 1, max: 39 }), { minLength: 1, maxLength: 6 }), weight: 2 },
  ),
});

/**
 * Turns generated items into concrete ones: `repeat` reuses an earlier item's key and
 * idempotency key; a settlement names the hold of a hold item of an earlier batch (whether
 * or not it was granted), a hold of the history, or a hold that never existed.
 *
 * Never a hold asked for in the same batch: a caller only learns a reservation id once its
 * reserve has returned, so a commit or release always comes in a later batch than its hold.
 */
function resolveItems(raw: RawItem[], run: number, preHolds: string[], batchStart: (i: number) => number): Item[] {
  const out: Item[] = [];
  raw.forEach((r, i) => {
    if (r.kind === 'settle') {
      const earlier = out.slice(0, batchStart(i)).flatMap((x, j) => (x.kind === 'spend' && x.op === 'hold' ? [holdId(run, j)] : []));
      const pool = r.source === 'item' && earlier.length > 0 ? earlier : r.source !== 'unknown' && preHolds.length > 0 ? preHolds : null;
      const hold = pool ? pool[r.pick % pool.length]! : `rsv_${'z'.repeat(24)}`;
      // A release carries no cost and no metadata (the AgentKey never sends any).
      out.push({ kind: 'settle', op: r.op, hold, cost: r.op === 'release' ? 0 : r.cost, meta: r.op === 'commit' && r.meta });
      return;
    }
    const { repeat, ...item } = r;
    const prev = repeat && i > 0 ? out[repeat.of % i]! : null;
    if (prev && prev.kind === 'spend' && prev.idem !== null) out.push({ ...prev, cost: repeat!.sameCost ? prev.cost : item.cost, meta: item.meta });
    else out.push(item);
  });
  return out;
}

let runCounter = 0;

interface Side {
  name: 'A' | 'B';
  ak: AgentKey;
  t: TableNames;
  store: SpendStore;
  ids: Map<Role, number>;
  hashes: Map<Role, string>;
  roleOf: Map<number, Role>;
}

/** Creates the same keys on one table; returns their ids and lookup hashes by role. */
async function buildSide(db: TestDb, name: 'A' | 'B', ak: AgentKey, run: number, s: Plan['setup']): Promise<Side> {
  const t = tableNames(ak.tableName);
  // Side A (batched) sends each account's steps in a call of their own, as on a database
  // sharded by account; side B (one step at a time) one call whatever the account.
  const store = new SpendStore(toDb(db.pool), t, name === 'A');
  const account = `acct_${run}`;
  const ids = new Map<Role, number>();
  const hashes = new Map<Role, string>();
  const cents = (micros: number | null) => (micros === null ? null : micros / 10_000);
  const under = (own: number | null, parent: number | null) => (own !== null && parent !== null ? Math.min(own, parent) : own);
  const add = (role: Role, created: { id: number; key: string }) => {
    ids.set(role, created.id);
    hashes.set(role, lookupHash(created.key, ak.keyPrefix)!);
  };
  if (s.ceiling !== null) await ak.setAccountBudget(account, { budgetCents: cents(s.ceiling)!, budgetPeriod: 'month' });
  const rootBudget = s.root;
  add('root', await ak.create({ accountId: account, budgetCents: cents(rootBudget) }));
  const childBudget = under(s.child, rootBudget);
  add('child', await ak.create({ accountId: account, budgetCents: cents(childBudget), parentId: ids.get('root')! }));
  add('grandchild', await ak.create({ accountId: account, budgetCents: cents(under(s.grandchild, childBudget)), parentId: ids.get('child')! }));
  add('child2', await ak.create({
    accountId: account, budgetCents: cents(under(s.child2, rootBudget)), budgetPeriod: s.child2Period ? 'day' : null, parentId: ids.get('root')!,
  }));
  add('sibling', await ak.create({ accountId: account, budgetCents: cents(s.sibling), budgetPeriod: s.siblingPeriod ? 'day' : null }));
  add('revoked', await ak.create({ accountId: account, parentId: ids.get('root')! }));
  add('expired', await ak.create({ accountId: account, parentId: ids.get('root')!, expiresIn: '1h' }));
  await ak.ensureSubject(`subj_${run}`, { accountId: account, budgetCents: cents(s.subject) });
  const [subjectRow] = await db.query<{ id: number }>(`SELECT id FROM ${t.table} WHERE external_subject = $1`, [`subj_${run}`]);
  ids.set('subject', Number(subjectRow!.id));
  add('other', await ak.create({ accountId: `other_${run}`, budgetCents: cents(s.other) }));
  expect(await ak.revoke(ids.get('revoked')!)).toBe(true);
  await db.query(`UPDATE ${t.table} SET expires_at = now() - interval '1 second' WHERE id = $1`, [ids.get('expired')]);
  const roleOf = new Map([...ids].map(([role, id]) => [id, role]));
  return { name, ak, t, store, ids, hashes, roleOf };
}
type Plan = typeof planArb extends fc.Arbitrary<infer P> ? P : never;

function refFor(side: Side, item: Pick<SpendItem, 'target' | 'byHash'>, run: number): KeyRef {
  if (item.target === 'unknown') return item.byHash ? { hash: 'f'.repeat(64) } : { id: 9_000_000_000 + run };
  if (item.target === 'subject') return item.byHash ? { subject: `subj_${run}` } : { id: side.ids.get('subject')! };
  return item.byHash ? { hash: side.hashes.get(item.target)! } : { id: side.ids.get(item.target)! };
}

const metadataFor = (meta: boolean, index: number) => (meta ? JSON.stringify({ item: index, note: 'batch "property"' }) : null);

function requestFor(item: Pick<SpendItem, 'op' | 'cost' | 'idem' | 'meta'>, holdId: string, index: number, ttlMs = 600_000): SpendRequest {
  return {
    op: item.op,
    micros: item.cost,
    idempotencyKey: item.idem,
    metadata: metadataFor(item.meta, index),
    holdId: item.op === 'hold' ? holdId : null,
    ttlMs: item.op === 'hold' ? ttlMs : null,
  };
}

/** Item `index` as one step of a batch. */
function batchItem(side: Side, item: Item, run: number, index: number): BatchItem {
  if (item.kind === 'settle') return { ref: { hold: item.hold }, request: { op: item.op, micros: item.cost, metadata: metadataFor(item.meta, index) } };
  return { ref: refFor(side, item, run), request: requestFor(item, holdId(run, index), index) };
}

/** Item `index` on its own, through the single-step functions. */
function serialStep(side: Side, item: Item, run: number, index: number): Promise<SpendOutcome> {
  if (item.kind === 'settle') return side.store.settle(item.hold, item.op, item.cost, metadataFor(item.meta, index));
  return side.store.spend(refFor(side, item, run), requestFor(item, holdId(run, index), index));
}

/** A hold id in the library's format, the same for both tables (their holds tables are separate). */
const holdId = (run: number, index: number) => `rsv_${`r${run.toString(36)}x${index.toString(36)}`.padStart(24, '0')}`;

/**
 * An outcome with key ids turned into roles, so two tables can be compared. A field one
 * function leaves out and the other reports as null means the same (nothing to report).
 */
function normalise(side: Side, o: SpendOutcome) {
  const role = (id: unknown) => (id == null ? null : (side.roleOf.get(Number(id)) ?? `unknown id ${id}`));
  const value = <T>(v: T | undefined) => (v === undefined ? null : v);
  return {
    outcome: o.outcome,
    key: role(o.key_id),
    budget: value(o.budget),
    spent: value(o.spent),
    held: value(o.held),
    limit: value(o.limit),
    limitKey: role(o.limit_key_id),
    limitAccount: value(o.limit_account_id),
    holdId: value(o.hold_id),
    status: value(o.status),
    expires: o.expires_at != null,
    hold: value(o.hold),
    committed: value(o.committed),
    released: value(o.released),
    expired: value(o.expired),
    overBudget: value(o.over_budget),
  };
}

async function finalState(db: TestDb, side: Side, run: number, ledgerFrom: number) {
  const role = (id: unknown) => (id === null ? null : (side.roleOf.get(Number(id)) ?? `unknown id ${id}`));
  const keys = await db.query<{ id: number; spent_micros: number; rolled: boolean }>(
    `SELECT id, spent_micros, budget_reset_at > now() + interval '1 hour' AS rolled FROM ${side.t.table} WHERE id = ANY($1::bigint[]) ORDER BY id`,
    [[...side.ids.values()]],
  );
  const accounts = await db.query<{ account_id: string; spent_micros: number; budget_micros: number }>(
    `SELECT account_id, spent_micros, budget_micros FROM ${side.t.accounts} WHERE account_id IN ($1, $2) ORDER BY account_id`,
    [`acct_${run}`, `other_${run}`],
  );
  const holds = await db.query<{ id: string; key_id: number; path: number[]; account_id: string; amount_micros: number; status: string; committed_micros: number | null; idempotency_key: string | null; metadata: unknown }>(
    `SELECT id, key_id, path, account_id, amount_micros, status, committed_micros, idempotency_key, metadata
     FROM ${side.t.holds} WHERE key_id = ANY($1::bigint[]) ORDER BY id`,
    [[...side.ids.values()]],
  );
  const ledger = await db.query<{ key_id: number | null; account_id: string; kind: string; amount_micros: number; reservation_id: string | null; idempotency_key: string | null; metadata: unknown }>(
    `SELECT key_id, account_id, kind, amount_micros, reservation_id, idempotency_key, metadata
     FROM ${side.t.ledger} WHERE id > $1 AND account_id IN ($2, $3) ORDER BY account_id, id`,
    [ledgerFrom, `acct_${run}`, `other_${run}`],
  );
  const rows = ledger.map((r) => ({ ...r, key_id: role(r.key_id), amount_micros: Number(r.amount_micros) }));
  // A batch rolls every period and ends every lapsed hold of the keys it touches before its
  // first item, the serial calls at the first item that touches them: those rows ('reset',
  // 'expire') are compared as a set, all other rows in order within each account (a batch
  // is one call per account, in account order).
  const tidy = (r: { kind: string }) => r.kind === 'reset' || r.kind === 'expire';
  const resets = rows.filter(tidy).map((r) => JSON.stringify(r)).sort();
  return {
    keys: keys.map((k) => ({ role: role(k.id), spent: Number(k.spent_micros), rolled: k.rolled })).sort((a, b) => String(a.role).localeCompare(String(b.role))),
    accounts: accounts.map((a) => ({ ...a, spent_micros: Number(a.spent_micros), budget_micros: Number(a.budget_micros) })),
    holds: holds.map((h) => ({
      ...h,
      key_id: role(h.key_id),
      path: h.path.map(role),
      amount_micros: Number(h.amount_micros),
      committed_micros: h.committed_micros === null ? null : Number(h.committed_micros),
    })),
    spendRows: rows.filter((r) => !tidy(r)),
    resets,
  };
}

forEachDatabase((getDb) => {
  describe('coalesced batches (property)', () => {
    it('property: spend_many, in one batch or split into consecutive batches, gives per item exactly the outcome of serial spend and settle calls; counters, holds and ledger match; audit ok', async () => {
      const db = getDb();
      const akA = await db.agentKey({ cache: false, batching: false });
      const akB = await db.agentKey({ cache: false, batching: false });
      const seen = new Map<string, number>();
      await fc.assert(
        fc.asyncProperty(planArb, async (plan) => {
          const run = ++runCounter;
          const a = await buildSide(db, 'A', akA, run, plan.setup);
          const b = await buildSide(db, 'B', akB, run, plan.setup);
          expect([...a.ids.keys()]).toEqual([...b.ids.keys()]);

          // The same history on both tables, one call at a time.
          const preHolds: string[] = [];
          for (const [i, p] of plan.pre.entries()) {
            const id = holdId(run, 1000 + i);
            const request = requestFor({ ...p, meta: false }, id, 1000 + i, p.lapsed ? 1 : 600_000);
            const [oa, ob] = [await a.store.spend({ id: a.ids.get(p.target)! }, request), await b.store.spend({ id: b.ids.get(p.target)! }, request)];
            expect(normalise(a, oa)).toEqual(normalise(b, ob));
            if (p.op === 'hold') preHolds.push(id);
          }
          if (plan.setup.roll) {
            for (const side of [a, b]) {
              await db.query(
                `UPDATE ${side.t.table} SET budget_reset_at = now() - interval '1 minute' WHERE id = ANY($1::bigint[]) AND budget_period IS NOT NULL`,
                [[side.ids.get('sibling'), side.ids.get('child2')]],
              );
            }
          }
          // Holds of one millisecond are past their time before anything else runs.
          if (plan.pre.some((p) => p.op === 'hold' && p.lapsed)) await new Promise((resolve) => setTimeout(resolve, 5));
          const cuts = [...new Set(plan.cuts.filter((c) => c < plan.items.length))].sort((x, y) => x - y);
          const bounds = [0, ...cuts, plan.items.length];
          const items = resolveItems(plan.items, run, preHolds, (i) => bounds.filter((b) => b <= i).pop()!);
          const [fromA] = await db.query<{ n: number }>(`SELECT COALESCE(max(id), 0)::bigint AS n FROM ${a.t.ledger}`);
          const [fromB] = await db.query<{ n: number }>(`SELECT COALESCE(max(id), 0)::bigint AS n FROM ${b.t.ledger}`);

          // Table A: the items in consecutive batches through spend_many.
          const outsA: SpendOutcome[] = [];
          for (let j = 0; j + 1 < bounds.length; j++) {
            const slice = items.slice(bounds[j], bounds[j + 1]).map((item, k) => batchItem(a, item, run, bounds[j]! + k));
            const outs = await a.store.spendMany(slice);
            expect(outs).toHaveLength(slice.length);
            outsA.push(...outs);
          }
          // Table B: the same items one after another through the single-step functions.
          const outsB: SpendOutcome[] = [];
          for (const [i, item] of items.entries()) outsB.push(await serialStep(b, item, run, i));

          const context = () => JSON.stringify({ setup: plan.setup, pre: plan.pre, items, cuts });
          for (let i = 0; i < items.length; i++) {
            expect(normalise(a, outsA[i]!), `item ${i} (${JSON.stringify(items[i])}) of ${context()}`).toEqual(normalise(b, outsB[i]!));
            const label = `${items[i]!.op}:${outsB[i]!.outcome}${outsB[i]!.limit ? `:${outsB[i]!.limit}` : ''}${outsB[i]!.over_budget ? ':over' : ''}${outsB[i]!.expired ? ':expired' : ''}`;
            seen.set(label, (seen.get(label) ?? 0) + 1);
          }

          const [stateA, stateB] = [await finalState(db, a, run, Number(fromA!.n)), await finalState(db, b, run, Number(fromB!.n))];
          expect(stateA, context()).toEqual(stateB);
          expect(await akA.audit(), context()).toMatchObject({ ok: true });
          expect(await akB.audit(), context()).toMatchObject({ ok: true });
        }),
        // A failure's shrinking is cut short rather than run past the test's timeout.
        { numRuns: Number(process.env.AGENTKEY_BATCH_RUNS ?? 30), interruptAfterTimeLimit: 40_000 },
      );
      // The generator really reaches the interesting outcomes (on both sides of the budget edges).
      const count = (prefix: string) => [...seen].filter(([label]) => label.startsWith(prefix)).reduce((n, [, c]) => n + c, 0);
      for (const prefix of ['charge:ok', 'hold:ok', 'charge:budget_exceeded', 'hold:budget_exceeded', 'charge:replayed', 'commit:ok', 'release:ok']) {
        expect(count(prefix), `${prefix} in ${JSON.stringify([...seen])}`).toBeGreaterThan(0);
      }
    }, 120_000);
  });
});
