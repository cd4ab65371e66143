import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { AgentKey } from '../../src/index.js';
import { lookupHash } from '../../src/keys.js';
import { toDb } from '../../src/store/db.js';
import { type TableNames, tableNames } from '../../src/store/identifiers.js';
import type { KeyRef } from '../../src/store/keys.js';
import { type BatchItem, type SpendOutcome, SpendStore } from '../../src/store/spend.js';
import { forEachDatabase, type TestDb } from '../helpers/databases.js';

/**
 * The budget rules, against a model. `<table>_spend_many` is the one definition of every
 * rule (single calls are batches of one), so it is checked against the rules written out
 * again here as a plain serial model in TypeScript: random charges, holds, adjustments,
 * commits and releases over a tree of keys under an account ceiling, sent in random
 * batches, must give per item the outcome and figures the model gives, and leave the
 * counters, holds and ledger rows the model expects.
 */

const ROLES = ['root', 'child', 'grandchild', 'child2', 'sibling', 'revoked', 'underRevoked', 'expired', 'other'] as const;
type Role = (typeof ROLES)[number];
type Target = Role | 'unknown';
const PARENT: Record<Role, Role | null> = {
  root: null, child: 'root', grandchild: 'child', child2: 'root', sibling: null, revoked: 'root', underRevoked: 'revoked', expired: 'root', other: null,
};

/** Micro-dollars, so that sums land on, just under and just over the budgets. */
const BUDGETS = [0, 30_000, 50_000, 100_000, 100_001, 150_000, 300_000];
const COSTS = [0, 1, 9_999, 10_000, 10_001, 25_000, 30_000, 49_999, 50_000, 50_001, 100_000];
const costArb = fc.oneof(
  { arbitrary: fc.constantFrom(...COSTS), weight: 3 },
  { arbitrary: fc.integer({ min: 1, max: 120_000 }), weight: 1 },
);
const budgetArb = fc.option(fc.constantFrom(...BUDGETS), { nil: null, freq: 4 });

const setupArb = fc.record({
  budgets: fc.record({ root: budgetArb, child: budgetArb, grandchild: budgetArb, child2: budgetArb, sibling: budgetArb, other: budgetArb }),
  ceiling: fc.option(fc.constantFrom(0, 60_000, 120_000, 200_000, 400_000), { nil: null, freq: 3 }),
  /** The sibling bills by day, and its period is over when the run starts. */
  roll: fc.boolean(),
  /**
   * A key's spend raised by SQL (budget_used_cents: the key's alone, not its ancestors' or
   * its account's), past most budgets: the key of the first hold of the history, else the sibling.
   */
  edited: fc.boolean(),
});

const targetArb: fc.Arbitrary<Target> = fc.oneof(
  { arbitrary: fc.constantFrom<Target>('root', 'child', 'grandchild', 'child2', 'sibling'), weight: 8 },
  { arbitrary: fc.constantFrom<Target>('revoked', 'underRevoked', 'expired', 'other', 'unknown'), weight: 2 },
);

const itemArb = fc.oneof(
  {
    weight: 5,
    arbitrary: fc.record({
      kind: fc.constant('spend' as const),
      op: fc.constantFrom<'charge' | 'hold' | 'adjust'>('charge', 'hold', 'charge', 'hold', 'adjust'),
      target: targetArb,
      byHash: fc.boolean(),
      cost: costArb,
      /** An adjustment adds its cost, or gives it back, or gives back as much as an SQL edit of a key's spend added. */
      refund: fc.constantFrom<'no' | 'cost' | 'large'>('no', 'cost', 'cost', 'large'),
      idem: fc.option(fc.constantFrom('a', 'b', 'pre'), { nil: null, freq: 3 }),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      kind: fc.constant('settle' as const),
      op: fc.constantFrom<'commit' | 'release'>('commit', 'release'),
      source: fc.constantFrom<'earlier' | 'pre' | 'unknown'>('earlier', 'earlier', 'pre', 'pre', 'unknown'),
      pick: fc.nat(),
      cost: costArb,
    }),
  },
);
type RawItem = typeof itemArb extends fc.Arbitrary<infer T> ? T : never;

const planArb = fc.record({
  setup: setupArb,
  /** History before the run: holds (some then lapse) and charges, one call each. */
  pre: fc.array(
    fc.record({
      op: fc.constantFrom<'charge' | 'hold'>('charge', 'hold'),
      target: fc.constantFrom<Role>('root', 'child', 'grandchild', 'child2', 'sibling'),
      cost: fc.constantFrom(1, 5_000, 10_000, 20_000),
      idem: fc.option(fc.constant('pre'), { nil: null }),
      lapse: fc.boolean(),
    }),
    { maxLength: 5 },
  ),
  items: fc.array(itemArb, { minLength: 1, maxLength: 30, size: 'max' }),
  /** Where the items are cut into consecutive batches. */
  cuts: fc.array(fc.integer({ min: 1, max: 29 }), { maxLength: 6 }),
});
type Plan = typeof planArb extends fc.Arbitrary<infer P> ? P : never;

// ------------------------------------------------------------------ the model

interface ModelHold {
  id: string;
  role: Role;
  amount: number;
  status: 'held' | 'committed' | 'released';
  /** Past its time (whatever its status says): it holds nothing. */
  lapsed: boolean;
  committed: number | null;
  overage: number;
  /** Settled after its time (a late commit). */
  late: boolean;
}

/** What an item gives back, in the fields the test compares. */
interface Result {
  outcome: string;
  key: Role | null;
  budget: number | null;
  spent: number | null;
  held: number | null;
  limit: string | null;
  limitKey: Role | null;
  limitAccount: string | null;
  holdId: string | null;
  status: string | null;
  hold: number | null;
  committed: number | null;
  overage: number | null;
  released: number | null;
  expired: boolean | null;
  overBudget: boolean | null;
}

interface LedgerEntry {
  key: Role;
  kind: string;
  amount: number;
  reservation: string | null;
  idem: string | null;
}

const EMPTY: Omit<Result, 'outcome'> = {
  key: null, budget: null, spent: null, held: null, limit: null, limitKey: null, limitAccount: null, holdId: null,
  status: null, hold: null, committed: null, overage: null, released: null, expired: null, overBudget: null,
};

/** The rules, one step after another. */
class Model {
  spent = new Map<Role, number>(ROLES.map((r) => [r, 0]));
  held = new Map<Role, number>(ROLES.map((r) => [r, 0]));
  overage = new Map<Role, number>(ROLES.map((r) => [r, 0]));
  accountSpent = 0;
  accountHeld = 0;
  holds = new Map<string, ModelHold>();
  charges = new Map<string, number>();
  holdKeys = new Map<string, string>();
  ledger: LedgerEntry[] = [];
  /** Keys with a last use: an accepted charge, hold or commit on them. */
  used = new Set<Role>();
  pendingRoll = false;

  constructor(
    readonly budgets: Record<Role, number | null>,
    readonly ceiling: number | null,
    readonly account: string,
  ) {}

  path(role: Role): Role[] {
    const out: Role[] = [];
    for (let r: Role | null = role; r !== null; r = PARENT[r]) out.push(r);
    return out;
  }

  /** The ceiling counts for the account's keys; 'other' is of another account, without one. */
  private underCeiling(role: Role): boolean {
    return this.ceiling !== null && role !== 'other';
  }

  private figures(role: Role) {
    return { key: role, budget: this.budgets[role], spent: this.spent.get(role)!, held: this.held.get(role)! };
  }

  private move(role: Role, what: 'spent' | 'held', amount: number): void {
    const counters = what === 'spent' ? this.spent : this.held;
    for (const r of this.path(role)) counters.set(r, counters.get(r)! + amount);
    if (this.underCeiling(role)) {
      if (what === 'spent') this.accountSpent += amount;
      else this.accountHeld += amount;
    }
  }

  /** A batch rolls the sibling's ended period before its first item, if any item touches the sibling. */
  startBatch(roles: Role[]): void {
    if (this.pendingRoll && roles.includes('sibling')) {
      this.spent.set('sibling', 0);
      this.pendingRoll = false;
    }
  }

  spend(target: Target, op: 'charge' | 'hold' | 'adjust', amount: number, idem: string | null, holdId: string): Result {
    if (target === 'unknown') return { outcome: 'invalid', ...EMPTY };
    const role = target;
    const path = this.path(role);
    if (op !== 'adjust') {
      // A revoked ancestor says more than an expired key.
      if (path.includes('revoked')) return { outcome: 'revoked', ...EMPTY };
      if (path.includes('expired') || path.includes('underRevoked')) return { outcome: 'expired', ...EMPTY };
    }
    if (idem !== null && op === 'charge' && this.charges.has(`${role}|${idem}`)) {
      const prior = this.charges.get(`${role}|${idem}`)!;
      return { ...EMPTY, outcome: prior === amount ? 'replayed' : 'idempotency_conflict', ...this.figures(role) };
    }
    if (idem !== null && op === 'hold' && this.holdKeys.has(`${role}|${idem}`)) {
      const prior = this.holds.get(this.holdKeys.get(`${role}|${idem}`)!)!;
      return {
        ...EMPTY,
        outcome: prior.amount === amount ? 'replayed' : 'idempotency_conflict',
        ...this.figures(role),
        holdId: prior.id,
        status: prior.status === 'held' && prior.lapsed ? 'expired' : prior.status,
      };
    }
    if (op === 'adjust') {
      const below = path.some((r) => this.spent.get(r)! + amount < 0) || (this.underCeiling(role) && this.accountSpent + amount < 0);
      if (below) return { ...EMPTY, outcome: 'refund_exceeds_spend', ...this.figures(role) };
    } else {
      // The deepest budget this would pass, then the account's.
      const over = path.find((r) => this.budgets[r] !== null && this.spent.get(r)! + this.held.get(r)! + amount > this.budgets[r]!);
      if (over !== undefined) {
        return { ...EMPTY, outcome: 'budget_exceeded', ...this.figures(role), limit: over === role ? 'key' : 'ancestor', limitKey: over };
      }
      if (this.underCeiling(role) && this.accountSpent + this.accountHeld + amount > this.ceiling!) {
        return { ...EMPTY, outcome: 'budget_exceeded', ...this.figures(role), limit: 'account', limitAccount: this.account };
      }
    }
    this.move(role, op === 'hold' ? 'held' : 'spent', amount);
    this.ledger.push({ key: role, kind: op, amount, reservation: op === 'hold' ? holdId : null, idem });
    if (op !== 'adjust') this.used.add(role);
    if (op === 'charge' && idem !== null) this.charges.set(`${role}|${idem}`, amount);
    if (op !== 'hold') return { ...EMPTY, outcome: 'ok', ...this.figures(role) };
    this.holds.set(holdId, { id: holdId, role, amount, status: 'held', lapsed: false, committed: null, overage: 0, late: false });
    if (idem !== null) this.holdKeys.set(`${role}|${idem}`, holdId);
    return { ...EMPTY, outcome: 'ok', ...this.figures(role), holdId };
  }

  lapse(id: string): void {
    const h = this.holds.get(id)!;
    h.lapsed = true;
    this.move(h.role, 'held', -h.amount);
  }

  settle(id: string, op: 'commit' | 'release', cost: number): Result {
    const h = this.holds.get(id);
    if (!h) return { outcome: 'not_found', ...EMPTY };
    const base = { ...EMPTY, hold: h.amount };
    if (h.status === 'committed') {
      const outcome = op !== 'commit' ? 'already_committed' : h.committed === cost ? 'replayed' : 'idempotency_conflict';
      return { ...base, outcome, ...this.figures(h.role), committed: h.committed, overage: h.overage, expired: h.late };
    }
    if (h.status === 'released') {
      return { ...base, outcome: op === 'release' ? 'replayed' : 'already_released', ...this.figures(h.role), released: h.amount };
    }
    const live = !h.lapsed;
    if (op === 'release') {
      // A lapsed hold has nothing left to give back.
      if (!live) return { ...base, outcome: 'ok', ...this.figures(h.role), expired: true, released: 0 };
      this.move(h.role, 'held', -h.amount);
      h.status = 'released';
      this.ledger.push({ key: h.role, kind: 'release', amount: 0 - h.amount, reservation: h.id, idem: null });
      return { ...base, outcome: 'ok', ...this.figures(h.role), released: h.amount };
    }
    if (live) this.move(h.role, 'held', -h.amount);
    // Charged up to what the tightest budget leaves (deepest first on a tie), then the
    // account's if it leaves less; the rest is overage.
    let room: number | null = null;
    let by: { limit: string; limitKey: Role | null; limitAccount: string | null } | null = null;
    for (const r of this.path(h.role)) {
      const b = this.budgets[r];
      if (b === null) continue;
      const left = b - this.spent.get(r)! - this.held.get(r)!;
      if (room === null || left < room) {
        room = left;
        by = { limit: r === h.role ? 'key' : 'ancestor', limitKey: r, limitAccount: null };
      }
    }
    if (this.underCeiling(h.role) && (room === null || this.ceiling! - this.accountSpent - this.accountHeld < room)) {
      room = this.ceiling! - this.accountSpent - this.accountHeld;
      by = { limit: 'account', limitKey: null, limitAccount: this.account };
    }
    const charged = room === null ? cost : Math.min(cost, Math.max(room, 0));
    const overage = cost - charged;
    this.move(h.role, 'spent', charged);
    this.overage.set(h.role, this.overage.get(h.role)! + overage);
    Object.assign(h, { status: 'committed', committed: cost, overage, late: !live });
    this.used.add(h.role);
    this.ledger.push({ key: h.role, kind: 'commit', amount: charged, reservation: h.id, idem: null });
    if (overage > 0) this.ledger.push({ key: h.role, kind: 'overage', amount: overage, reservation: h.id, idem: null });
    return {
      ...base,
      outcome: 'ok',
      ...this.figures(h.role),
      committed: cost,
      overage,
      expired: !live,
      overBudget: overage > 0,
      ...(overage > 0 ? by : {}),
    };
  }
}

// ------------------------------------------------------------------ the database side

let runCounter = 0;
const holdId = (run: number, index: number) => `rsv_${`m${run.toString(36)}x${index.toString(36)}`.padStart(24, '0')}`;

interface Side {
  t: TableNames;
  store: SpendStore;
  ids: Map<Role, number>;
  hashes: Map<Role, string>;
  roleOf: Map<number, Role>;
}

async function buildKeys(db: TestDb, ak: AgentKey, account: string, other: string, plan: Plan, byAccount = false): Promise<Side> {
  const t = tableNames(ak.tableName);
  const ids = new Map<Role, number>();
  const hashes = new Map<Role, string>();
  const budgets = effectiveBudgets(plan);
  const cents = (micros: number | null) => (micros === null ? null : micros / 10_000);
  if (plan.setup.ceiling !== null) await ak.setAccountBudget(account, { budgetCents: cents(plan.setup.ceiling)!, budgetPeriod: 'month' });
  for (const role of ROLES) {
    const parent = PARENT[role];
    const created = await ak.create({
      accountId: role === 'other' ? other : account,
      budgetCents: cents(budgets[role]),
      budgetPeriod: role === 'sibling' && plan.setup.roll ? 'day' : null,
      parentId: parent === null ? null : ids.get(parent)!,
    });
    ids.set(role, created.id);
    hashes.set(role, lookupHash(created.key, ak.keyPrefix)!);
  }
  // Revoked with plain SQL (so not its subtree): a key under it that has expired is refused as revoked.
  await db.query(`UPDATE ${t.table} SET revoked_at = now() WHERE id = $1`, [ids.get('revoked')]);
  await db.query(`UPDATE ${t.table} SET expires_at = now() - interval '1 second' WHERE id = ANY($1::bigint[])`, [[ids.get('expired'), ids.get('underRevoked')]]);
  return { t, store: new SpendStore(toDb(db.pool), t, byAccount), ids, hashes, roleOf: new Map([...ids].map(([r, id]) => [id, r])) };
}

/** A child's budget never exceeds its parent's (create() refuses that). */
function effectiveBudgets(plan: Plan): Record<Role, number | null> {
  const out = {} as Record<Role, number | null>;
  for (const role of ROLES) {
    const own = role in plan.setup.budgets ? plan.setup.budgets[role as keyof Plan['setup']['budgets']] : null;
    const parent = PARENT[role];
    const cap = parent === null ? null : out[parent];
    out[role] = own !== null && cap !== null ? Math.min(own, cap) : own;
  }
  return out;
}

function refFor(side: Side, target: Target, byHash: boolean, run: number): KeyRef {
  if (target === 'unknown') return byHash ? { hash: 'e'.repeat(64) } : { id: 8_000_000_000 + run };
  return byHash ? { hash: side.hashes.get(target)! } : { id: side.ids.get(target)! };
}

function project(side: Side, o: SpendOutcome): Result {
  const role = (id: unknown) => (id == null ? null : (side.roleOf.get(Number(id)) ?? null));
  const v = <T>(x: T | undefined): T | null => (x === undefined ? null : x);
  return {
    outcome: o.outcome,
    key: role(o.key_id),
    budget: v(o.budget),
    spent: o.spent === undefined ? null : Number(o.spent),
    held: o.held === undefined ? null : Number(o.held),
    limit: v(o.limit),
    limitKey: role(o.limit_key_id),
    limitAccount: v(o.limit_account_id),
    holdId: v(o.hold_id),
    status: v(o.status),
    hold: v(o.hold),
    committed: v(o.committed),
    overage: v(o.overage),
    released: v(o.released),
    expired: v(o.expired),
    overBudget: v(o.over_budget),
  };
}

forEachDatabase((getDb) => {
  describe('the budget rules (property, against a serial model)', () => {
    it('property: random batches of charges, holds, adjustments, commits and releases give the outcomes, figures, counters, holds and ledger rows of the rules applied one step at a time', async () => {
      const db = getDb();
      const ak = await db.agentKey({ cache: false, batching: false });
      const seen = new Set<string>();
      await fc.assert(
        fc.asyncProperty(planArb, async (plan) => {
          const run = ++runCounter;
          const account = `acct_m${run}`;
          // Every other run sends each account's steps in a call of their own, as on a database sharded by account.
          const side = await buildKeys(db, ak, account, `other_m${run}`, plan, run % 2 === 0);
          const model = new Model(effectiveBudgets(plan), plan.setup.ceiling, account);
          const context = () => JSON.stringify(plan);

          // History, one call at a time, held to the same rules.
          const preHolds: string[] = [];
          for (const [i, p] of plan.pre.entries()) {
            const id = holdId(run, 1000 + i);
            const out = await side.store.spend({ id: side.ids.get(p.target)! }, {
              op: p.op, micros: p.cost, idempotencyKey: p.idem, metadata: null, holdId: p.op === 'hold' ? id : null, ttlMs: p.op === 'hold' ? 600_000 : null,
            });
            expect(project(side, out), `pre ${i} of ${context()}`).toEqual(model.spend(p.target, p.op, p.cost, p.idem, id));
            if (p.op === 'hold' && out.outcome === 'ok') preHolds.push(id);
          }
          if (plan.setup.edited) {
            const edited = plan.pre.find((p, i) => preHolds.includes(holdId(run, 1000 + i)))?.target ?? 'sibling';
            await db.query(`UPDATE ${side.t.table} SET budget_used_cents = budget_used_cents + 50 WHERE id = $1`, [side.ids.get(edited)]);
            model.spent.set(edited, (Math.ceil(model.spent.get(edited)! / 10_000) + 50) * 10_000);
          }
          // Some held money runs past its time; the sibling's period ends.
          for (const [i, p] of plan.pre.entries()) {
            const id = holdId(run, 1000 + i);
            if (!p.lapse || !preHolds.includes(id)) continue;
            await db.query(`UPDATE ${side.t.holds} SET expires_at = now() - interval '1 millisecond' WHERE id = $1`, [id]);
            model.lapse(id);
          }
          if (plan.setup.roll) {
            await db.query(`UPDATE ${side.t.table} SET budget_reset_at = now() - interval '1 minute' WHERE id = $1`, [side.ids.get('sibling')]);
            model.pendingRoll = true;
          }

          const cuts = [...new Set(plan.cuts.filter((c) => c < plan.items.length))].sort((x, y) => x - y);
          const bounds = [0, ...cuts, plan.items.length];
          const asked: string[] = [];
          for (let b = 0; b + 1 < bounds.length; b++) {
            // A settlement names a hold asked for in an earlier batch (granted or not), one of
            // the history, or none: a caller learns a hold's id only once its reserve returns.
            const earlier = [...asked];
            const raw = plan.items.slice(bounds[b], bounds[b + 1]) as RawItem[];
            const batch: BatchItem[] = [];
            const steps: (() => Result)[] = [];
            const touched: Role[] = [];
            raw.forEach((r, k) => {
              const index = bounds[b]! + k;
              if (r.kind === 'settle') {
                const pool = r.source === 'earlier' && earlier.length > 0 ? earlier : r.source !== 'unknown' && preHolds.length > 0 ? preHolds : null;
                const hold = pool ? pool[r.pick % pool.length]! : `rsv_${'y'.repeat(24)}`;
                const cost = r.op === 'release' ? 0 : r.cost;
                batch.push({ ref: { hold }, request: { op: r.op, micros: cost, metadata: null } });
                steps.push(() => model.settle(hold, r.op, cost));
                const h = model.holds.get(hold);
                if (h) touched.push(...model.path(h.role));
                return;
              }
              const id = holdId(run, index);
              const amount = r.op !== 'adjust' || r.refund === 'no' ? r.cost : r.refund === 'large' ? -500_000 : 0 - r.cost;
              batch.push({
                ref: refFor(side, r.target, r.byHash, run),
                request: { op: r.op, micros: amount, idempotencyKey: r.idem, metadata: null, holdId: r.op === 'hold' ? id : null, ttlMs: r.op === 'hold' ? 600_000 : null },
              });
              steps.push(() => model.spend(r.target, r.op, amount, r.idem, id));
              if (r.target !== 'unknown') touched.push(...model.path(r.target));
              if (r.op === 'hold') asked.push(id);
            });
            model.startBatch(touched);
            const outs = await side.store.spendMany(batch);
            outs.forEach((out, k) => {
              const expected = steps[k]!();
              expect(project(side, out), `item ${bounds[b]! + k} (${JSON.stringify(raw[k])}) of ${context()}`).toEqual(expected);
              seen.add(`${batch[k]!.request.op}:${expected.outcome}${expected.limit ? `:${expected.limit}` : ''}${expected.overBudget ? ':over' : ''}`);
            });
          }

          // What is stored: counters, overage, the account, the holds and the ledger's spend rows.
          await side.store.sweep(1_000);
          const keys = await db.query<{ id: number; spent_micros: number; overage_micros: number; used: boolean }>(
            `SELECT id, spent_micros, overage_micros, last_used_at IS NOT NULL AS used FROM ${side.t.table} WHERE id = ANY($1::bigint[])`,
            [[...side.ids.values()]],
          );
          const stored = Object.fromEntries(
            keys.map((k) => [side.roleOf.get(Number(k.id)), { spent: Number(k.spent_micros), overage: Number(k.overage_micros), used: k.used }]),
          );
          const expectedKeys = Object.fromEntries(ROLES.map((r) => [r, { spent: model.spent.get(r), overage: model.overage.get(r), used: model.used.has(r) }]));
          expect(stored, context()).toEqual(expectedKeys);
          const [acct] = await db.query<{ spent_micros: number }>(`SELECT spent_micros FROM ${side.t.accounts} WHERE account_id = $1`, [account]);
          if (plan.setup.ceiling !== null) expect(Number(acct!.spent_micros), context()).toBe(model.accountSpent);
          const holds = await db.query<{ id: string; status: string; committed_micros: number | null }>(
            `SELECT id, status, committed_micros FROM ${side.t.holds} WHERE key_id = ANY($1::bigint[]) ORDER BY id`,
            [[...side.ids.values()]],
          );
          expect(holds.map((h) => ({ ...h, committed_micros: h.committed_micros === null ? null : Number(h.committed_micros) })), context()).toEqual(
            [...model.holds.values()]
              .sort((x, y) => (x.id < y.id ? -1 : 1))
              .map((h) => ({ id: h.id, status: h.status === 'held' && h.lapsed ? 'expired' : h.status, committed_micros: h.committed })),
          );
          const ledger = await db.query<{ key_id: number; kind: string; amount_micros: number; reservation_id: string | null; idempotency_key: string | null }>(
            `SELECT key_id, kind, amount_micros, reservation_id, idempotency_key FROM ${side.t.ledger}
             WHERE key_id = ANY($1::bigint[]) AND kind NOT IN ('reset', 'expire') ORDER BY id`,
            [[...side.ids.values()]],
          );
          // In item order within each account: a batch is one call per account, in account order.
          const byAccount = <R extends { key: string | undefined }>(rows: R[]) => [...rows].sort((x, y) => Number(x.key === 'other') - Number(y.key === 'other'));
          expect(
            byAccount(ledger.map((l) => ({ key: side.roleOf.get(Number(l.key_id)), kind: l.kind, amount: Number(l.amount_micros), reservation: l.reservation_id, idem: l.idempotency_key }))),
            context(),
          ).toEqual(byAccount(model.ledger));
        }),
        { numRuns: Number(process.env.AGENTKEY_RULES_RUNS ?? 40), interruptAfterTimeLimit: 60_000 },
      );
      expect(await ak.audit()).toMatchObject({ ok: true });
      // The runs reach both sides of every rule.
      for (const label of [
        'charge:ok', 'charge:budget_exceeded:key', 'charge:budget_exceeded:ancestor', 'charge:budget_exceeded:account', 'charge:revoked',
        'charge:invalid', 'hold:ok', 'hold:budget_exceeded:key', 'adjust:ok', 'adjust:refund_exceeds_spend', 'commit:ok', 'release:ok',
        'commit:not_found',
      ]) {
        expect(seen, label).toContain(label);
      }
    }, 180_000);
  });

  describe('rules a random run seldom reaches', () => {
    async function setup(ceilingCents: number | null, budgetCents: number | null) {
      const db = getDb();
      const ak = await db.agentKey({ cache: false, batching: false });
      const t = tableNames(ak.tableName);
      const account = `acct_rare_${++runCounter}`;
      if (ceilingCents !== null) await ak.setAccountBudget(account, { budgetCents: ceilingCents, budgetPeriod: 'month' });
      const { id } = await ak.create({ accountId: account, budgetCents });
      const store = new SpendStore(toDb(db.pool), t);
      const spent = async () => {
        const [k] = await db.query<{ spent_micros: number }>(`SELECT spent_micros FROM ${t.table} WHERE id = $1`, [id]);
        const [a] = await db.query<{ spent_micros: number }>(`SELECT spent_micros FROM ${t.accounts} WHERE account_id = $1`, [account]);
        return { key: Number(k!.spent_micros), account: a ? Number(a.spent_micros) : null };
      };
      /** Raises the key's spend with SQL, as a user may: the key's alone, not its account's. */
      const edit = (cents: number) => db.query(`UPDATE ${t.table} SET budget_used_cents = budget_used_cents + $2 WHERE id = $1`, [id, cents]);
      const request = (op: 'charge' | 'hold' | 'adjust', micros: number, holdId: string | null = null) => ({
        op, micros, idempotencyKey: null, metadata: null, holdId, ttlMs: op === 'hold' ? 600_000 : null,
      });
      return { ak, store, id, spent, edit, request };
    }

    it('sad: a refund the key could take but its account could not is refused, alone or in a batch, and changes nothing', async () => {
      const { ak, store, id, spent, edit, request } = await setup(100, null);
      expect((await store.spend({ id }, request('charge', 100_000))).outcome).toBe('ok');
      await edit(50);
      expect(await spent()).toEqual({ key: 600_000, account: 100_000 });
      expect(await store.spend({ id }, request('adjust', -300_000))).toMatchObject({ outcome: 'refund_exceeds_spend', spent: 600_000 });
      const outs = await store.spendMany([{ ref: { id }, request: request('adjust', -300_000) }, { ref: { id }, request: request('adjust', -100_000) }]);
      expect(outs.map((o) => o.outcome)).toEqual(['refund_exceeds_spend', 'ok']);
      expect(await spent()).toEqual({ key: 500_000, account: 0 });
      expect(await ak.audit()).toMatchObject({ ok: true });
    });

    it('happy: a commit on a key already past its budget (by SQL) gives its hold back and records the whole cost as overage', async () => {
      const { ak, store, id, spent, edit, request } = await setup(null, 20);
      const holdId = `rsv_${'r'.repeat(24)}`;
      expect((await store.spend({ id }, request('hold', 100_000, holdId))).outcome).toBe('ok');
      await edit(50);
      expect(await store.settle(holdId, 'commit', 50_000, null)).toMatchObject({
        outcome: 'ok', committed: 50_000, overage: 50_000, over_budget: true, limit: 'key', limit_key_id: id, spent: 500_000, held: 0,
      });
      expect(await spent()).toEqual({ key: 500_000, account: null });
      expect(await ak.audit()).toMatchObject({ ok: true, overageCents: 5 });
    });
  });
});
