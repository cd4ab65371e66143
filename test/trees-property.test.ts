import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type AgentKey, AgentKeyError } from '../src/index.js';
import { isAttenuation, parseScopes, scopeAllows } from '../src/scopes.js';
import { forEachDatabase, uniqueName } from './helpers/databases.js';

/**
 * Property-based tests of delegation trees and account ceilings (fast-check): random trees
 * under random account ceilings with random charges, holds, commits and releases fired
 * concurrently; the same sequentially against an exact model; attenuation never widens;
 * revocation always cascades.
 */

// ---------------------------------------------------------------- scopes

const SEGMENTS = ['a', 'b', 'ab'];
const PLAIN: string[] = [];
for (const x of SEGMENTS) {
  PLAIN.push(x);
  for (const y of SEGMENTS) {
    PLAIN.push(`${x}.${y}`);
    for (const z of SEGMENTS) PLAIN.push(`${x}.${y}.${z}`);
  }
}
/** Every scope a key could be asked about, including wildcards, supers and odd strings. */
const PROBES = [...PLAIN, ...PLAIN.map((s) => `${s}.*`), 'admin', '*', 'a.', 'a..b', '.a', 'a.b.ab.b', 'abb', 'b.a.*.c', ''];

const segmentArb = fc.constantFrom(...SEGMENTS);
const plainArb = fc.array(segmentArb, { minLength: 1, maxLength: 3 }).map((s) => s.join('.'));
const scopeArb = fc.oneof(
  { arbitrary: plainArb, weight: 5 },
  { arbitrary: plainArb.map((s) => `${s}.*`), weight: 3 },
  { arbitrary: fc.constantFrom('admin', '*'), weight: 1 },
);
const scopeSetArb: fc.Arbitrary<string[] | null> = fc.oneof(
  { arbitrary: fc.constant(null), weight: 1 },
  { arbitrary: fc.uniqueArray(scopeArb, { maxLength: 4 }), weight: 8 },
);

const isSuper = (s: string[] | null) => s === null || s.includes('admin') || s.includes('*');

describe('scopes (pure)', () => {
  it('property: attenuation never widens: whatever the child allows, the parent allows', () => {
    fc.assert(
      fc.property(scopeSetArb, scopeSetArb, (parent, child) => {
        if (!isAttenuation(parent, child)) return;
        for (const s of PROBES) {
          if (scopeAllows(child, s)) expect(scopeAllows(parent, s), `${JSON.stringify(parent)} ⊇ ${JSON.stringify(child)} on ${s}`).toBe(true);
        }
      }),
      { numRuns: 1_000 },
    );
  });

  it('property: attenuation is reflexive and transitive, and a super child needs a super parent', () => {
    fc.assert(
      fc.property(scopeSetArb, scopeSetArb, scopeSetArb, (a, b, c) => {
        expect(isAttenuation(a, a)).toBe(true);
        if (isAttenuation(a, b) && isAttenuation(b, c)) expect(isAttenuation(a, c)).toBe(true);
        if (isSuper(b)) expect(isAttenuation(a, b)).toBe(isSuper(a));
        if (isSuper(a)) expect(isAttenuation(a, b)).toBe(true);
      }),
      { numRuns: 1_000 },
    );
  });

  it('property: a child of plain scopes is allowed exactly when the parent allows each of them', () => {
    fc.assert(
      fc.property(scopeSetArb, fc.uniqueArray(plainArb, { maxLength: 4 }), (parent, child) => {
        expect(isAttenuation(parent, child)).toBe(child.every((s) => scopeAllows(parent, s)));
      }),
      { numRuns: 1_000 },
    );
  });

  it('property: a wildcard grants exactly the longer scopes under its prefix', () => {
    fc.assert(
      fc.property(plainArb, fc.constantFrom(...PROBES), (prefix, s) => {
        expect(scopeAllows([`${prefix}.*`], s)).toBe(s.startsWith(`${prefix}.`) && s.length > prefix.length + 1);
        expect(scopeAllows([prefix], s)).toBe(s === prefix);
      }),
      { numRuns: 1_000 },
    );
  });

  it('property: every generated scope set is accepted by parseScopes as it is', () => {
    fc.assert(
      fc.property(scopeSetArb, (s) => {
        expect(parseScopes(s, null)).toEqual(s);
      }),
      { numRuns: 300 },
    );
  });
});

// ---------------------------------------------------------------- trees

interface NodeSpec {
  parent: number | null;
  depth: number;
  budget: number | null;
}

const nodeArb = fc.record({
  parentPick: fc.integer({ min: -2, max: 9 }),
  budget: fc.option(fc.integer({ min: 0, max: 200 }), { nil: null, freq: 4 }),
});

/** A forest of keys: node 0 is a root; each next node hangs under an earlier one (or is a root). */
function buildTree(raw: { parentPick: number; budget: number | null }[], maxDepth: number): NodeSpec[] {
  const out: NodeSpec[] = [];
  raw.forEach((n, i) => {
    let parent = i === 0 || n.parentPick < 0 ? null : n.parentPick % i;
    while (parent !== null && out[parent]!.depth >= maxDepth) parent = out[parent]!.parent;
    const depth = parent === null ? 0 : out[parent]!.depth + 1;
    const parentBudget = parent === null ? null : out[parent]!.budget;
    const budget = n.budget !== null && parentBudget !== null ? Math.min(n.budget, parentBudget) : n.budget;
    out.push({ parent, depth, budget });
  });
  return out;
}

/** The node and its ancestors, nearest first. */
function pathOf(tree: NodeSpec[], i: number): number[] {
  const path: number[] = [];
  for (let n: number | null = i; n !== null; n = tree[n]!.parent) path.push(n);
  return path;
}
const inSubtree = (tree: NodeSpec[], node: number, top: number) => pathOf(tree, node).includes(top);

async function createTree(ak: AgentKey, tree: NodeSpec[], ceiling: number | null) {
  const account = uniqueName('acct');
  if (ceiling !== null) await ak.setAccountBudget(account, { budgetCents: ceiling, budgetPeriod: 'month' });
  const keys: { id: number; key: string }[] = [];
  for (const n of tree) {
    keys.push(await ak.create({ accountId: account, budgetCents: n.budget, parentId: n.parent === null ? null : keys[n.parent]!.id }));
  }
  return { account, keys };
}

type Refusal = { success: false; reason: string; limitedBy?: { kind: string; keyId?: number; accountId?: string } };

/** A refusal must be a budget refusal naming a budget the key is really under. */
function checkRefusal(r: Refusal, tree: NodeSpec[], ids: number[], node: number, account: string, ceiling: number | null): void {
  expect(r.reason).toBe('budget_exceeded');
  const by = r.limitedBy!;
  if (by.kind === 'account') {
    expect(ceiling).not.toBeNull();
    expect(by.accountId).toBe(account);
    return;
  }
  const at = ids.indexOf(by.keyId!);
  expect(pathOf(tree, node)).toContain(at);
  expect(by.kind).toBe(at === node ? 'key' : 'ancestor');
  expect(tree[at]!.budget).not.toBeNull();
}

const opArb = fc.record({
  kind: fc.constantFrom('charge', 'hold'),
  node: fc.nat({ max: 7 }),
  cents: fc.integer({ min: 1, max: 60 }),
  settle: fc.constantFrom('commit', 'commit', 'release', 'keep', 'over'),
  frac: fc.integer({ min: 0, max: 100 }),
  over: fc.integer({ min: 1, max: 40 }),
});
type Op = typeof opArb extends fc.Arbitrary<infer T> ? T : never;

const concurrentPlanArb = fc.record({
  nodes: fc.array(nodeArb, { minLength: 2, maxLength: 8 }),
  ceiling: fc.option(fc.integer({ min: 0, max: 300 }), { nil: null }),
  rounds: fc.array(fc.array(opArb, { minLength: 1, maxLength: 12 }), { minLength: 1, maxLength: 3 }),
});

const sequentialOpArb = fc.oneof(
  { arbitrary: fc.record({ kind: fc.constantFrom('charge' as const, 'hold' as const), node: fc.nat({ max: 7 }), cents: fc.integer({ min: 1, max: 80 }) }), weight: 3 },
  { arbitrary: fc.record({ kind: fc.constant('commit' as const), pick: fc.nat(), cents: fc.integer({ min: 0, max: 100 }) }), weight: 1 },
  { arbitrary: fc.record({ kind: fc.constant('release' as const), pick: fc.nat() }), weight: 1 },
  // A live hold runs past its ttl (its expiry is moved into the past): its money is free again,
  // and a commit of it later is a late commit.
  { arbitrary: fc.record({ kind: fc.constant('lapse' as const), pick: fc.nat() }), weight: 1 },
);

forEachDatabase((getDb) => {
  describe('trees under concurrency (property)', () => {
    it('property: concurrent charges, holds, commits and releases never pass a budget; children never outspend their parent; the account adds up; audit ok', async () => {
      const ak = await getDb().agentKey();
      await fc.assert(
        fc.asyncProperty(concurrentPlanArb, async (plan) => {
          const tree = buildTree(plan.nodes, 3);
          const n = tree.length;
          const { account, keys } = await createTree(ak, tree, plan.ceiling);
          const ids = keys.map((k) => k.id);
          const direct = new Array<number>(n).fill(0);
          // Per node, the overage its own commits recorded (never counted toward any cap).
          const overage = new Array<number>(n).fill(0);
          const live = new Map<string, { node: number; cents: number }>();
          let pending: { reservationId: string; node: number; op: Op }[] = [];
          /** One consistent read of every node while charges are in flight: no budget passed, no child outspending its parent. */
          const snapshot = async () => {
            const rows = await ak.listKeys({ accountId: account, includeRevoked: true });
            const byId = new Map(rows.map((r) => [r.id, r]));
            tree.forEach((node, i) => {
              const row = byId.get(ids[i]!)!;
              if (node.budget !== null) expect(Number(row.spentCents) + Number(row.heldCents), `node ${i} in flight`).toBeLessThanOrEqual(node.budget);
              const kids = tree.flatMap((c, j) => (c.parent === i ? [Number(byId.get(ids[j]!)!.spentCents)] : []));
              expect(kids.reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(Number(row.spentCents));
            });
          };

          for (const round of [...plan.rounds, []]) {
            const next: typeof pending = [];
            const tasks: Promise<void>[] = [];
            for (const h of pending) {
              if (h.op.settle === 'keep') continue;
              if (h.op.settle === 'release') {
                tasks.push(
                  ak.release(h.reservationId).then((r) => {
                    expect(r).toMatchObject({ success: true, releasedCents: h.op.cents });
                    live.delete(h.reservationId);
                  }),
                );
                continue;
              }
              const extra = h.op.settle === 'over' ? h.op.over : 0;
              const cost = h.op.settle === 'over' ? h.op.cents + extra : Math.floor((h.op.cents * h.op.frac) / 100);
              tasks.push(
                ak.commit(h.reservationId, { costCents: cost }).then((r) => {
                  expect(r).toMatchObject({ success: true, costCents: cost, overHoldCents: extra });
                  if (!r.success) return;
                  // The real cost is all there: what was charged plus the overage, and only what
                  // went past the hold can be overage (the hold's own money was set aside for it).
                  expect(r.chargedCents + r.overageCents).toBe(cost);
                  expect(r.overageCents).toBeLessThanOrEqual(extra);
                  expect(r.overBudget).toBe(r.overageCents > 0);
                  live.delete(h.reservationId);
                  direct[h.node]! += r.chargedCents;
                  overage[h.node]! += r.overageCents;
                }),
              );
            }
            for (const op of round) {
              const node = op.node % n;
              const key = keys[node]!.key;
              if (op.kind === 'charge') {
                tasks.push(
                  ak.trackUsage(key, { costCents: op.cents }).then((r) => {
                    if (r.success) direct[node]! += op.cents;
                    else checkRefusal(r as Refusal, tree, ids, node, account, plan.ceiling);
                  }),
                );
              } else {
                tasks.push(
                  ak.reserve(key, { costCents: op.cents }).then((r) => {
                    if (r.success) {
                      live.set(r.reservationId, { node, cents: op.cents });
                      next.push({ reservationId: r.reservationId, node, op });
                    } else checkRefusal(r as Refusal, tree, ids, node, account, plan.ceiling);
                  }),
                );
              }
            }
            tasks.splice(tasks.length >> 1, 0, snapshot());
            tasks.push(snapshot());
            await Promise.all(tasks);
            pending = next;
          }

          const infos = await Promise.all(ids.map((id) => ak.getKey(id)));
          const spent = infos.map((i) => Number(i!.spentCents));
          const held = infos.map((i) => Number(i!.heldCents));
          for (let i = 0; i < n; i++) {
            const sub = [...Array(n).keys()].filter((j) => inSubtree(tree, j, i));
            expect(spent[i], `spent of node ${i}`).toBe(sub.reduce((s, j) => s + direct[j]!, 0));
            expect(held[i], `held of node ${i}`).toBe([...live.values()].filter((h) => sub.includes(h.node)).reduce((s, h) => s + h.cents, 0));
            const budget = tree[i]!.budget;
            if (budget !== null) expect(spent[i]! + held[i]!, `node ${i} within budget`).toBeLessThanOrEqual(budget);
            expect(infos[i]!.overageCents, `overage of node ${i}`).toBe(overage[i]);
            const children = [...Array(n).keys()].filter((j) => tree[j]!.parent === i);
            expect(children.reduce((s, j) => s + spent[j]!, 0), `children of ${i}`).toBeLessThanOrEqual(spent[i]!);
          }
          const roots = [...Array(n).keys()].filter((j) => tree[j]!.parent === null);
          const rootSpent = roots.reduce((s, j) => s + spent[j]!, 0);
          const rootHeld = roots.reduce((s, j) => s + held[j]!, 0);
          expect((await ak.usage({ accountId: account })).totalCents).toBe(rootSpent);
          if (plan.ceiling !== null) {
            const acct = (await ak.getAccountBudget(account))!;
            expect(acct.spentCents).toBe(rootSpent);
            expect(acct.heldCents).toBe(rootHeld);
            expect(Number(acct.spentCents) + Number(acct.heldCents)).toBeLessThanOrEqual(plan.ceiling);
          }
          // Counters plus overage equal the ledger.
          const totalOverage = overage.reduce((a, b) => a + b, 0);
          expect((await ak.usage({ accountId: account })).overageCents).toBe(totalOverage);
          const audit = await ak.audit();
          expect(audit, JSON.stringify(audit)).toMatchObject({ ok: true });
        }),
        { numRuns: 20 },
      );
    });

    it('property: sequential charges, holds, commits (above the hold, and late) and releases match an exact model; no cap is ever passed and counters plus overage equal the ledger', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await fc.assert(
        fc.asyncProperty(
          fc.record({
            nodes: fc.array(nodeArb, { minLength: 2, maxLength: 6 }),
            ceiling: fc.option(fc.integer({ min: 0, max: 250 }), { nil: null }),
            ops: fc.array(sequentialOpArb, { minLength: 1, maxLength: 16 }),
          }),
          async (plan) => {
            const tree = buildTree(plan.nodes, 3);
            const n = tree.length;
            const { account, keys } = await createTree(ak, tree, plan.ceiling);
            const ids = keys.map((k) => k.id);
            const spent = new Array<number>(n).fill(0);
            const held = new Array<number>(n).fill(0);
            let acctSpent = 0;
            let acctHeld = 0;
            const live: { id: string; node: number; cents: number }[] = [];
            const lapsed: { id: string; node: number; cents: number }[] = [];
            /** The budget `more` would pass, nearest first, else the account, else null. */
            const limit = (node: number, more: number) => {
              for (const a of pathOf(tree, node)) {
                const b = tree[a]!.budget;
                if (b !== null && spent[a]! + held[a]! + more > b) return { kind: a === node ? 'key' : 'ancestor', keyId: ids[a], window: expect.any(String) };
              }
              if (plan.ceiling !== null && acctSpent + acctHeld + more > plan.ceiling) return { kind: 'account', accountId: account, window: expect.any(String) };
              return null;
            };
            /** What every budget over `node` leaves: the tightest (nearest on a tie, then the account if less), or null for none. */
            const room = (node: number) => {
              let best: { room: number; by: Record<string, unknown> } | null = null;
              for (const a of pathOf(tree, node)) {
                const b = tree[a]!.budget;
                if (b !== null && (best === null || b - spent[a]! - held[a]! < best.room)) {
                  best = { room: b - spent[a]! - held[a]!, by: { kind: a === node ? 'key' : 'ancestor', keyId: ids[a], window: expect.any(String) } };
                }
              }
              if (plan.ceiling !== null && (best === null || plan.ceiling - acctSpent - acctHeld < best.room)) {
                best = { room: plan.ceiling - acctSpent - acctHeld, by: { kind: 'account', accountId: account, window: expect.any(String) } };
              }
              return best;
            };
            const overage = new Array<number>(n).fill(0);
            const remaining = (node: number) => {
              const b = tree[node]!.budget;
              return b === null ? null : Math.max(0, b - spent[node]! - held[node]!);
            };
            for (const op of plan.ops) {
              if (op.kind === 'charge' || op.kind === 'hold') {
                const node = op.node % n;
                const refused = limit(node, op.cents);
                const r = op.kind === 'charge' ? await ak.trackUsage(keys[node]!.key, { costCents: op.cents }) : await ak.reserve(keys[node]!.key, { costCents: op.cents });
                if (refused) {
                  expect(r, JSON.stringify(op)).toEqual({ success: false, reason: 'budget_exceeded', limitedBy: refused, budgetUsedCents: spent[node], budgetRemainingCents: remaining(node) });
                  continue;
                }
                for (const a of pathOf(tree, node)) (op.kind === 'charge' ? spent : held)[a]! += op.cents;
                if (op.kind === 'charge') {
                  acctSpent += op.cents;
                  expect(r).toEqual({ success: true, budgetUsedCents: spent[node], budgetRemainingCents: remaining(node) });
                } else {
                  acctHeld += op.cents;
                  expect(r).toMatchObject({ success: true, budgetRemainingCents: remaining(node) });
                  live.push({ id: (r as { reservationId: string }).reservationId, node, cents: op.cents });
                }
              } else if (op.kind === 'lapse') {
                if (live.length === 0) continue;
                const [h] = live.splice(op.pick % live.length, 1);
                await db.query(`UPDATE "${ak.tableName}_holds" SET expires_at = now() - interval '1 millisecond' WHERE id = $1`, [h!.id]);
                for (const a of pathOf(tree, h!.node)) held[a]! -= h!.cents;
                acctHeld -= h!.cents;
                lapsed.push(h!);
              } else {
                const all = [...live.map((h) => ({ h, late: false })), ...lapsed.map((h) => ({ h, late: true }))];
                if (all.length === 0) continue;
                const { h, late } = all[(op as { pick: number }).pick % all.length]!;
                (late ? lapsed : live).splice((late ? lapsed : live).indexOf(h), 1);
                if (!late) {
                  for (const a of pathOf(tree, h.node)) held[a]! -= h.cents;
                  acctHeld -= h.cents;
                }
                if (op.kind === 'release') {
                  expect(await ak.release(h.id)).toMatchObject({ success: true, releasedCents: late ? 0 : h.cents, holdExpired: late });
                  continue;
                }
                // Charged up to what the budgets leave once the hold is back (a lapsed hold's
                // money already is); the rest is overage.
                const tight = room(h.node);
                const charged = tight === null ? op.cents : Math.min(op.cents, Math.max(0, tight.room));
                for (const a of pathOf(tree, h.node)) spent[a]! += charged;
                acctSpent += charged;
                overage[h.node]! += op.cents - charged;
                const r = await ak.commit(h.id, { costCents: op.cents });
                expect(r, JSON.stringify(op)).toMatchObject({
                  success: true,
                  costCents: op.cents,
                  chargedCents: charged,
                  overageCents: op.cents - charged,
                  overBudget: charged < op.cents,
                  holdExpired: late,
                  budgetUsedCents: spent[h.node],
                  budgetRemainingCents: remaining(h.node),
                });
                if (charged < op.cents) expect((r as { limitedBy?: unknown }).limitedBy).toEqual(tight!.by);
                else expect(r).not.toHaveProperty('limitedBy');
                // A commit within its live hold always fits.
                if (!late && op.cents <= h.cents) expect(charged).toBe(op.cents);
              }
            }
            for (let i = 0; i < n; i++) {
              expect(await ak.getKey(ids[i]!)).toMatchObject({ spentCents: spent[i], heldCents: held[i], remainingCents: remaining(i), overageCents: overage[i] });
              // No cap is ever passed.
              const b = tree[i]!.budget;
              if (b !== null) expect(spent[i]! + held[i]!).toBeLessThanOrEqual(b);
            }
            if (plan.ceiling !== null) {
              expect(await ak.getAccountBudget(account)).toMatchObject({ spentCents: acctSpent, heldCents: acctHeld });
              expect(acctSpent + acctHeld).toBeLessThanOrEqual(plan.ceiling);
            }
            const overageTotal = overage.reduce((a, b) => a + b, 0);
            expect(await ak.usage({ accountId: account })).toMatchObject({ totalCents: acctSpent, overageCents: overageTotal });
            expect(await ak.audit()).toMatchObject({ ok: true });
          },
        ),
        { numRuns: 15 },
      );
    });
  });

  describe('attenuation through create() (property)', () => {
    it('property: a child is created exactly when its scopes attenuate the parent, and then never allows more', async () => {
      const ak = await getDb().agentKey();
      await fc.assert(
        fc.asyncProperty(scopeSetArb, scopeSetArb, async (parentScopes, childScopes) => {
          const account = uniqueName('acct');
          const parent = await ak.create({ accountId: account, scopes: parentScopes });
          let child: { key: string } | null = null;
          try {
            child = await ak.create({ accountId: account, parentId: parent.id, scopes: childScopes });
          } catch (err) {
            expect(err).toBeInstanceOf(AgentKeyError);
            expect((err as AgentKeyError).code).toBe('scope_not_allowed');
          }
          expect(child !== null).toBe(isAttenuation(parentScopes, childScopes));
          if (!child) return;
          const [pv, cv] = [await ak.validate(parent.key), await ak.validate(child.key)];
          for (const s of PROBES) if (ak.hasScope(cv, s)) expect(ak.hasScope(pv, s), s).toBe(true);
          // Inheriting (no scopes given) is always allowed and gives the parent's scopes.
          const heir = await ak.create({ accountId: account, parentId: parent.id });
          expect((await ak.getKey(heir.id))!.scopes).toEqual(parentScopes);
        }),
        { numRuns: 20 },
      );
    });
  });

  describe('revocation (property)', () => {
    it('property: revoking a random node revokes exactly its subtree, even with charges in flight', async () => {
      const ak = await getDb().agentKey();
      await fc.assert(
        fc.asyncProperty(
          fc.array(nodeArb.map((n) => ({ ...n, budget: null })), { minLength: 2, maxLength: 10 }),
          fc.nat(),
          async (raw, pick) => {
            const tree = buildTree(raw, 5);
            const n = tree.length;
            const target = pick % n;
            const { account, keys } = await createTree(ak, tree, null);
            expect(await ak.revoke(keys[target]!.id, `${account}_other`)).toBe(false);
            expect((await ak.listKeys({ accountId: account })).length).toBe(n);
            const inflight = keys.map((k) => ak.trackUsage(k.key, { costCents: 1 }));
            const [revoked] = await Promise.all([ak.revoke(keys[target]!.id, account), ...inflight]);
            expect(revoked).toBe(true);
            const gone = [...Array(n).keys()].filter((i) => inSubtree(tree, i, target));
            const listed = (await ak.listKeys({ accountId: account })).map((k) => k.id);
            expect(listed).toEqual(keys.filter((_, i) => !gone.includes(i)).map((k) => k.id));
            for (let i = 0; i < n; i++) {
              const v = await ak.validate(keys[i]!.key);
              const r = await ak.trackUsage(keys[i]!.key, { costCents: 1 });
              if (gone.includes(i)) {
                expect(v).toEqual({ valid: false, reason: 'revoked' });
                expect(r).toEqual({ success: false, reason: 'revoked' });
                expect(await ak.revoke(keys[i]!.id)).toBe(false);
              } else {
                expect(v).toMatchObject({ valid: true });
                expect(r).toMatchObject({ success: true });
              }
            }
          },
        ),
        { numRuns: 15 },
      );
      expect(await ak.audit()).toMatchObject({ ok: true });
    });
  });
});
