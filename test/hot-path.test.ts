import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError, type TrackUsageResult } from '../src/index.js';
import { type TableNames, tableNames } from '../src/store/identifiers.js';
import { forEachDatabase, type TestDb, uniqueName } from './helpers/databases.js';
import { SEED, between, seededRandom as rng } from './helpers/random.js';
import { cents as toCents, micros as toMicros } from './helpers/tally.js';
import { sleep, until } from './helpers/wait.js';
import { agentKeyErrorOf } from './helpers/errors.js';

/**
 * The hot path: charges coalesced under concurrency stay exact (no overspend, one
 * ledger row per accepted call, refusals that really did not fit), a fault in a batch fails
 * the whole batch cleanly, the validation cache is bounded, expires, and is dropped by
 * revocations and by changes made anywhere (LISTEN/NOTIFY), `last_used_at` is written in
 * batches, and the options and close() behave.
 */

/** Validates until the AgentKey hears change notifications (before that nothing is cached). */
async function untilListening(ak: AgentKey, rawKey: string): Promise<void> {
  await until(async () => {
    await ak.validate(rawKey);
    return ak.cacheStats()?.listening === true;
  }, 'the cache to listen');
}

const newAccount = () => uniqueName('acct_hot');

interface LedgerRow {
  id: number;
  key_id: number | null;
  kind: string;
  amount_micros: number;
  i: string | null;
  created_at: string;
}

async function ledgerOf(db: TestDb, t: TableNames, accountId: string): Promise<LedgerRow[]> {
  const rows = await db.query<LedgerRow>(
    `SELECT id, key_id, kind, amount_micros, metadata->>'i' AS i, created_at::text AS created_at
     FROM ${t.ledger} WHERE account_id = $1 ORDER BY id`,
    [accountId],
  );
  return rows.map((r) => ({ ...r, id: Number(r.id), key_id: r.key_id === null ? null : Number(r.key_id), amount_micros: Number(r.amount_micros) }));
}

/** Running totals of a ledger in order: prefix[n] is the spend after its first n rows. */
function prefixSums(rows: LedgerRow[]): number[] {
  const out = [0];
  for (const r of rows) out.push(out[out.length - 1]! + r.amount_micros);
  return out;
}

/** A second connection to the same database: another pg connection, or the same PGlite. */
async function otherConnection(db: TestDb): Promise<{ query(text: string, params?: unknown[]): Promise<unknown>; close(): Promise<void> }> {
  if (db.name === 'pglite') return { query: (text, params) => db.query(text, params), close: async () => {} };
  const client = new pg.Client({ connectionString: db.url });
  await client.connect();
  return { query: (text, params) => client.query(text, params), close: () => client.end() };
}

/** Drops what differs between two runs of the same story (ids, accounts, times). */
const strip = (value: unknown) =>
  JSON.parse(JSON.stringify(value, (key, v) => (['keyId', 'accountId', 'reservationId', 'expiresAt', 'budgetResetAt'].includes(key) ? undefined : v)));

forEachDatabase((getDb) => {
  describe('coalesced charges under concurrency', () => {
    it('concurrency: 200 concurrent charges on one hot key: the budget is never passed, every accepted call has exactly one ledger row, and every outcome is the one a serial replay of the ledger order gives', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const t = tableNames(ak.tableName);
      const random = rng(SEED);
      const costs = Array.from({ length: 200 }, () => between(random, 1, 20_000));
      const total = costs.reduce((a, b) => a + b, 0);
      const budget = Math.floor(total * (0.6 + random() * 0.35));
      const account = newAccount();
      const k = await ak.create({ accountId: account, budgetCents: toCents(budget) });
      const where = `seed ${SEED}, budget ${budget}, costs ${JSON.stringify(costs)}`;

      const results = await Promise.all(costs.map((c, i) => ak.trackUsage(k.key, { costCents: toCents(c), metadata: { i } })));

      const ledger = await ledgerOf(db, t, account);
      expect(ledger.every((r) => r.kind === 'charge' && r.key_id === k.id), where).toBe(true);
      const accepted = results.flatMap((r, i) => (r.success ? [i] : []));
      // Exactly one ledger row per accepted call, none for a refused one, each with its cost.
      expect(ledger.map((r) => Number(r.i)).sort((a, b) => a - b), where).toEqual(accepted);
      for (const r of ledger) expect(r.amount_micros, where).toBe(costs[Number(r.i)]);
      const spent = accepted.reduce((s, i) => s + costs[i]!, 0);
      expect(spent, where).toBeLessThanOrEqual(budget);
      expect(await ak.getKey(k.id), where).toMatchObject({ spentCents: toCents(spent), heldCents: 0 });
      expect(await ak.audit({ keyId: k.id }), where).toMatchObject({ ok: true });

      // Serial replay in ledger order: each accepted call saw exactly the spend of the rows before it.
      const prefix = prefixSums(ledger);
      const position = new Map(ledger.map((r, p) => [Number(r.i), p]));
      for (const i of accepted) {
        const after = prefix[position.get(i)! + 1]!;
        expect(results[i], `call ${i}: ${where}`).toEqual({ success: true, budgetUsedCents: toCents(after), budgetRemainingCents: toCents(budget - after) });
      }
      // A refused call was decided at some point of that same order, and really did not fit there.
      const reached = new Set(prefix);
      const refused = results.flatMap((r, i) => (r.success ? [] : [i]));
      for (const i of refused) {
        const r = results[i] as Extract<TrackUsageResult, { success: false }> & { budgetUsedCents: number };
        expect(r, `call ${i}: ${where}`).toMatchObject({ success: false, reason: 'budget_exceeded', limitedBy: { kind: 'key', keyId: k.id } });
        const usedThen = toMicros(r.budgetUsedCents);
        expect(reached.has(usedThen), `call ${i} saw a spend no serial order reaches: ${where}`).toBe(true);
        expect(usedThen + costs[i]!, `call ${i}: ${where}`).toBeGreaterThan(budget);
        // Spend only grows, so what is left at the end is less than every refused cost.
        expect(budget - spent, `call ${i}: ${where}`).toBeLessThan(costs[i]!);
      }
      // The calls were coalesced: batches share one statement, so ledger rows share their time.
      expect(new Set(ledger.map((r) => r.created_at)).size, where).toBeLessThan(ledger.length);

      // The edge itself: one micro-dollar too many is refused, the exact rest is accepted.
      const left = budget - spent;
      expect(await ak.trackUsage(k.key, { costCents: toCents(left + 1) }), where).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsage(k.key, { costCents: toCents(left) }), where).toMatchObject({ success: true, budgetRemainingCents: 0 });
      expect(await ak.audit({ keyId: k.id })).toMatchObject({ ok: true });
    });

    it('concurrency: 500 concurrent charges over 50 keys under one account ceiling: the account never passes its ceiling, the ledger has every accepted charge once, refusals name the budget that was really full', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const t = tableNames(ak.tableName);
      const random = rng(SEED + 1);
      const account = newAccount();
      const keys: { id: number; key: string; budget: number | null }[] = [];
      for (let n = 0; n < 50; n++) {
        // Most keys have no budget of their own; some have a small one, so both limits are hit.
        const budget = n % 5 === 0 ? between(random, 10_000, 60_000) : null;
        const created = await ak.create({ accountId: account, budgetCents: budget === null ? null : toCents(budget) });
        keys.push({ ...created, budget });
      }
      const calls = Array.from({ length: 500 }, () => ({ key: between(random, 0, 49), cost: between(random, 1, 20_000) }));
      // Below what the keys without a budget of their own ask for: the ceiling must refuse some.
      const unlimited = calls.filter((c) => keys[c.key]!.budget === null).reduce((s, c) => s + c.cost, 0);
      const ceiling = Math.floor(unlimited * (0.5 + random() * 0.4));
      await ak.setAccountBudget(account, { budgetCents: toCents(ceiling) });
      const where = `seed ${SEED + 1}, ceiling ${ceiling}`;

      const results = await Promise.all(
        calls.map((c, i) => ak.trackUsage(keys[c.key]!.key, { costCents: toCents(c.cost), metadata: { i } })),
      );

      const ledger = await ledgerOf(db, t, account);
      const accepted = results.flatMap((r, i) => (r.success ? [i] : []));
      expect(ledger.map((r) => Number(r.i)).sort((a, b) => a - b), where).toEqual(accepted);
      for (const r of ledger) {
        const c = calls[Number(r.i)]!;
        expect([r.kind, r.key_id, r.amount_micros], where).toEqual(['charge', keys[c.key]!.id, c.cost]);
      }
      const accountSpent = accepted.reduce((s, i) => s + calls[i]!.cost, 0);
      expect(accountSpent, where).toBeLessThanOrEqual(ceiling);
      expect(await ak.getAccountBudget(account), where).toMatchObject({ spentCents: toCents(accountSpent), heldCents: 0 });
      expect(await ak.audit(), where).toMatchObject({ ok: true });

      const keySpent = keys.map((_, n) => ledger.filter((r) => r.key_id === keys[n]!.id).reduce((s, r) => s + r.amount_micros, 0));
      for (const [n, key] of keys.entries()) {
        expect((await ak.getKey(key.id))!.spentCents, where).toBe(toCents(keySpent[n]!));
        if (key.budget !== null) expect(keySpent[n]!, where).toBeLessThanOrEqual(key.budget);
      }
      // Per key, in ledger order: each accepted call reports the key's spend right after its own row.
      for (const [n, key] of keys.entries()) {
        const rows = ledger.filter((r) => r.key_id === key.id);
        const prefix = prefixSums(rows);
        rows.forEach((r, p) => expect((results[Number(r.i)] as { budgetUsedCents: number }).budgetUsedCents, `key ${n}: ${where}`).toBe(toCents(prefix[p + 1]!)));
      }
      let refusedByAccount = 0;
      for (const [i, r] of results.entries()) {
        if (r.success) continue;
        const c = calls[i]!;
        const key = keys[c.key]!;
        expect(r, `call ${i}: ${where}`).toMatchObject({ success: false, reason: 'budget_exceeded' });
        const by = (r as { limitedBy: { kind: string; keyId?: number; accountId?: string } }).limitedBy;
        // Spend only grows: whatever refused a call has less left at the end than that call's cost.
        if (by.kind === 'account') {
          refusedByAccount++;
          expect(by.accountId, where).toBe(account);
          expect(ceiling - accountSpent, `call ${i}: ${where}`).toBeLessThan(c.cost);
        } else {
          expect(by, `call ${i}: ${where}`).toEqual({ kind: 'key', keyId: key.id, window: expect.any(String) });
          expect(key.budget! - keySpent[c.key]!, `call ${i}: ${where}`).toBeLessThan(c.cost);
        }
      }
      expect(refusedByAccount, where).toBeGreaterThan(0);
    });
    it('concurrency: a reserve retried in the same tick as the commit or release of its hold says where the hold stands now (reservationStatus), as it would one after another', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const k = await ak.create({ accountId: newAccount(), budgetCents: 100 });
      for (const [settle, status] of [['commit', 'committed'], ['release', 'released']] as const) {
        const idem = `job-${settle}`;
        const first = await ak.reserve(k.key, { costCents: 5, idempotencyKey: idem });
        if (!first.success) throw new Error(`the first reserve failed: ${JSON.stringify(first)}`);
        // Made in one tick, the two go out in one batch, the settlement first.
        const [settled, retried] = await Promise.all([
          settle === 'commit' ? ak.commit(first.reservationId, { costCents: 3 }) : ak.release(first.reservationId),
          ak.reserve(k.key, { costCents: 5, idempotencyKey: idem }),
        ]);
        expect(settled, settle).toMatchObject({ success: true });
        // A retry must not be told that a settled hold still holds money.
        expect(retried, settle).toMatchObject({ success: true, replayed: true, reservationId: first.reservationId, reservationStatus: status });
      }
      expect(await ak.getKey(k.id)).toMatchObject({ spentCents: 3, heldCents: 0 });
      expect(await ak.audit()).toMatchObject({ ok: true });
    });
  });

  describe('a fault in the middle of a batch', () => {
    /** A ledger trigger, made in the test, that fails any row whose metadata says fail: yes. */
    async function failMarkedRows(db: TestDb, t: TableNames): Promise<void> {
      const fn = `${t.schema}"${t.indexBase}_fail_marked"`;
      await db.query(`CREATE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
          IF NEW.metadata->>'fail' = 'yes' THEN RAISE EXCEPTION 'injected fault in the ledger'; END IF;
          RETURN NEW;
        END $fn$`);
      await db.query(`CREATE TRIGGER test_fail_marked BEFORE INSERT ON ${t.ledger} FOR EACH ROW EXECUTE FUNCTION ${fn}()`);
    }

    it('error: a storage fault on the 10th of 20 charges sent in one tick fails all 20 with storage_error, and nothing at all is charged', async () => {
      const db = getDb();
      const ak = await db.agentKey({ batching: { lanes: 1 } });
      const t = tableNames(ak.tableName);
      const account = newAccount();
      const k = await ak.create({ accountId: account, budgetCents: 100 });
      await failMarkedRows(db, t);

      const calls = Array.from({ length: 20 }, (_, i) =>
        ak.trackUsage(k.key, { costCents: 1, metadata: i === 9 ? { fail: 'yes' } : { i } }),
      );
      const settled = await Promise.allSettled(calls);
      for (const [i, s] of settled.entries()) {
        expect(s.status, `call ${i}`).toBe('rejected');
        const err = (s as PromiseRejectedResult).reason;
        expect(err, `call ${i}`).toBeInstanceOf(AgentKeyError);
        expect((err as AgentKeyError).code, `call ${i}`).toBe('storage_error');
      }
      expect(await ak.getKey(k.id)).toMatchObject({ spentCents: 0, heldCents: 0 });
      expect(await ledgerOf(db, t, account)).toEqual([]);
      expect(await ak.audit()).toMatchObject({ ok: true });

      // The next calls go through; a marked call alone fails alone.
      const after = await Promise.all([1, 2, 3].map((i) => ak.trackUsage(k.key, { costCents: 1, metadata: { i } })));
      expect(after.map((r) => r.success)).toEqual([true, true, true]);
      expect(await agentKeyErrorOf(ak.trackUsage(k.key, { costCents: 1, metadata: { fail: 'yes' } }))).toMatchObject({ code: 'storage_error' });
      expect(await ak.trackUsage(k.key, { costCents: 1 })).toEqual({ success: true, budgetUsedCents: 4, budgetRemainingCents: 96 });
      expect((await ledgerOf(db, t, account)).map((r) => r.amount_micros)).toEqual([10_000, 10_000, 10_000, 10_000]);
      expect(await ak.audit()).toMatchObject({ ok: true });
    });

    it('error: a fault on a hold in a mixed batch over a tree and an account ceiling leaves no charge, no hold and no counter changed', async () => {
      const db = getDb();
      const ak = await db.agentKey({ batching: { lanes: 1 } });
      const t = tableNames(ak.tableName);
      const account = newAccount();
      await ak.setAccountBudget(account, { budgetCents: 500 });
      const root = await ak.create({ accountId: account, budgetCents: 300 });
      const child = await ak.create({ accountId: account, budgetCents: 100, parentId: root.id });
      const sibling = await ak.create({ accountId: account });
      await failMarkedRows(db, t);

      const keys = [root.key, child.key, sibling.key];
      const calls = Array.from({ length: 24 }, (_, i) => {
        const key = keys[i % 3]!;
        const metadata = i === 13 ? { fail: 'yes' } : { i };
        return i % 2 === 0 ? ak.trackUsage(key, { costCents: 2, metadata }) : ak.reserve(key, { costCents: 3, metadata });
      });
      const settled = await Promise.allSettled(calls);
      expect(settled.map((s) => (s.status === 'rejected' ? (s.reason as AgentKeyError).code : s.status))).toEqual(calls.map(() => 'storage_error'));

      for (const id of [root.id, child.id, sibling.id]) expect(await ak.getKey(id)).toMatchObject({ spentCents: 0, heldCents: 0 });
      expect(await ak.getAccountBudget(account)).toMatchObject({ spentCents: 0, heldCents: 0 });
      expect(await ledgerOf(db, t, account)).toEqual([]);
      expect(await db.query(`SELECT id FROM ${t.holds}`)).toEqual([]);
      expect(await ak.audit()).toMatchObject({ ok: true });

      const hold = await ak.reserve(child.key, { costCents: 3 });
      expect(hold).toMatchObject({ success: true });
      expect(await ak.trackUsage(child.key, { costCents: 2 })).toMatchObject({ success: true, budgetUsedCents: 2, budgetRemainingCents: 95 });
      expect(await ak.audit()).toMatchObject({ ok: true });
    });
    it('error: a call the database refuses (metadata or idempotency key with a NUL character) fails alone: the unrelated calls coalesced with it get the outcomes they get without batching', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const reference = await db.agentKey({ batching: false });
      // Each innocent call has a key of its own, so its outcome does not depend on the order calls run in.
      const run = async (agent: AgentKey) => {
        const [a1, a2, a3, b] = [
          await agent.create({ accountId: newAccount(), budgetCents: 100 }),
          await agent.create({ accountId: newAccount(), budgetCents: 100 }),
          await agent.create({ accountId: newAccount(), budgetCents: 2 }),
          await agent.create({ accountId: newAccount(), budgetCents: 100 }),
        ];
        const settled = await Promise.allSettled([
          agent.trackUsage(a1.key, { costCents: 1 }),
          agent.trackUsage(b.key, { costCents: 1, metadata: { note: 'a\u0000b' } }),
          agent.reserve(a2.key, { costCents: 2 }),
          agent.trackUsage(b.key, { costCents: 1, idempotencyKey: 'x\u0000y' }),
          agent.trackUsage(a3.key, { costCents: 3 }),
        ]);
        const outcomes = settled.map((s) => (s.status === 'rejected' ? { error: (s.reason as AgentKeyError).code } : strip(s.value)));
        const spent = await Promise.all([a1, a2, a3, b].map(async (k) => Number((await agent.getKey(k.id))!.spentCents) + Number((await agent.getKey(k.id))!.heldCents)));
        return { outcomes, spent, audit: (await agent.audit()).ok };
      };
      const expected = await run(reference);
      expect(expected).toEqual({
        outcomes: [
          { success: true, budgetUsedCents: 1, budgetRemainingCents: 99 },
          { error: 'invalid_argument' },
          { success: true, budgetRemainingCents: 98 },
          { error: 'invalid_argument' },
          { success: false, reason: 'budget_exceeded', limitedBy: { kind: 'key', window: 'lifetime' }, budgetUsedCents: 0, budgetRemainingCents: 2 },
        ],
        spent: [1, 2, 0, 0],
        audit: true,
      });
      expect(await run(ak)).toEqual(expected);
    });
  });

  describe('the validation cache', () => {
    it('happy: the cache evicts past its bound, least recently used first', async () => {
      const db = getDb();
      const ak = await db.agentKey({ cache: { maxKeys: 3, ttlMs: 600_000 } });
      const account = newAccount();
      const k: string[] = [];
      for (let i = 0; i < 5; i++) k.push((await ak.create({ accountId: account, name: `k${i}` })).key);
      await untilListening(ak, k[0]!);
      const base = ak.cacheStats()!;
      const delta = () => {
        const s = ak.cacheStats()!;
        return { size: s.size, hits: s.hits - base.hits, misses: s.misses - base.misses, evictions: s.evictions - base.evictions };
      };
      const check = async (i: number, expected: 'hit' | 'miss') => {
        const before = delta();
        expect(await ak.validate(k[i]!)).toMatchObject({ valid: true, name: `k${i}` });
        const now = delta();
        expect([now.hits - before.hits, now.misses - before.misses], `k${i} should be a ${expected}`).toEqual(expected === 'hit' ? [1, 0] : [0, 1]);
      };

      await ak.validate(k[0]!); // cached now, whether or not it was before
      await check(1, 'miss');
      await check(2, 'miss');
      expect(delta()).toMatchObject({ size: 3, evictions: 0 });
      await check(0, 'hit'); // k0 is the most recently used now; k1 the least
      await check(3, 'miss'); // evicts k1
      await check(4, 'miss'); // evicts k2
      expect(delta()).toMatchObject({ size: 3, evictions: 2 });
      expect(ak.cacheStats()).toMatchObject({ size: 3, maxKeys: 3, listening: true });

      await check(0, 'hit'); // kept although it was cached first
      await check(4, 'hit');
      await check(3, 'hit');
      await check(1, 'miss'); // gone; re-reading it evicts k0, the least recently used now
      expect(delta()).toMatchObject({ size: 3, evictions: 3 });
      await check(0, 'miss');
    });

    it('happy: an entry is read again from the database once its ttl has passed', async () => {
      const db = getDb();
      const short = await db.agentKey({ cache: { ttlMs: 200 } });
      const long = new AgentKey({ pool: db.pool, tableName: short.tableName, cache: { ttlMs: 600_000 } });
      const spender = new AgentKey({ pool: db.pool, tableName: short.tableName, cache: false });
      const k = await short.create({ accountId: newAccount(), budgetCents: 10 });
      await untilListening(short, k.key);
      await untilListening(long, k.key);
      expect(await short.validate(k.key)).toMatchObject({ budgetUsedCents: 0 });
      expect(await long.validate(k.key)).toMatchObject({ budgetUsedCents: 0 });
      const longBefore = long.cacheStats()!;
      const shortBefore = short.cacheStats()!;

      // Spend counters announce nothing: another instance's charge reaches a cache only by its ttl.
      expect(await spender.trackUsage(k.key, { costCents: 4 })).toMatchObject({ success: true });
      await until(async () => {
        const r = await short.validate(k.key);
        return r.valid && r.budgetUsedCents === 4;
      }, 'the short-lived entry to be read again');
      expect(short.cacheStats()!.misses).toBeGreaterThan(shortBefore.misses);
      // The ten-minute entry was served from memory all along.
      expect(await long.validate(k.key)).toMatchObject({ budgetUsedCents: 0 });
      expect(long.cacheStats()!.misses).toBe(longBefore.misses);
      expect(long.cacheStats()!.hits).toBeGreaterThan(longBefore.hits);
      // A charge made here refreshes this instance's cached figures.
      expect(await long.trackUsage(k.key, { costCents: 1 })).toMatchObject({ success: true, budgetUsedCents: 5 });
      expect(await long.validate(k.key)).toMatchObject({ budgetUsedCents: 5, budgetRemainingCents: 5 });
    });

    it('security: a revoke in this process is seen at once, for the key and for cached keys under it', async () => {
      const db = getDb();
      const ak = await db.agentKey({ cache: { ttlMs: 600_000 } });
      const account = newAccount();
      const root = await ak.create({ accountId: account, budgetCents: 100 });
      const child = await ak.create({ accountId: account, parentId: root.id });
      const grandchild = await ak.create({ accountId: account, parentId: child.id });
      const other = await ak.create({ accountId: account });
      await untilListening(ak, root.key);
      for (const key of [root, child, grandchild, other]) await ak.validate(key.key);
      const hits = ak.cacheStats()!.hits;
      for (const key of [root, child, grandchild, other]) expect(await ak.validate(key.key)).toMatchObject({ valid: true });
      expect(ak.cacheStats()!.hits).toBe(hits + 4);

      // No waiting: the very next validation after revoke() resolves says revoked.
      expect(await ak.revoke(grandchild.id)).toBe(true);
      expect(await ak.validate(grandchild.key)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.validate(child.key)).toMatchObject({ valid: true });

      expect(await ak.revoke(root.id)).toBe(true);
      expect(await ak.validate(child.key)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.validate(root.key)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.validate(other.key)).toMatchObject({ valid: true });
      expect(await ak.trackUsage(child.key, { costCents: 1 })).toEqual({ success: false, reason: 'revoked' });
      expect(await ak.reserve(root.key, { costCents: 1 })).toEqual({ success: false, reason: 'revoked' });
      // Revoked results stay revoked, cached or not.
      for (let i = 0; i < 3; i++) expect(await ak.validate(child.key)).toEqual({ valid: false, reason: 'revoked' });
    });

    it('security: changes made with plain SQL on another connection reach a ten-minute cache through notifications: revoked, scopes, expiry, budget, and a parent revoked above a cached child', async () => {
      const db = getDb();
      const ak = await db.agentKey({ cache: { ttlMs: 600_000 } });
      const t = tableNames(ak.tableName);
      const account = newAccount();
      const [a, b, c, d] = [
        await ak.create({ accountId: account, scopes: ['chat'] }),
        await ak.create({ accountId: account, scopes: ['chat', 'tools'] }),
        await ak.create({ accountId: account, expiresIn: '7d' }),
        await ak.create({ accountId: account, budgetCents: 10 }),
      ];
      const parent = await ak.create({ accountId: account });
      const child = await ak.create({ accountId: account, parentId: parent.id });
      await untilListening(ak, a.key);
      const cached = async (key: string) => {
        await ak.validate(key);
        const hits = ak.cacheStats()!.hits;
        const result = await ak.validate(key);
        expect(ak.cacheStats()!.hits, 'served from the cache').toBe(hits + 1);
        return result;
      };
      for (const key of [a, b, c, d, child]) expect(await cached(key.key)).toMatchObject({ valid: true });

      const sql = await otherConnection(db);
      try {
        await sql.query(`UPDATE ${t.table} SET revoked_at = now() WHERE id = $1`, [a.id]);
        await sql.query(`UPDATE ${t.table} SET scopes = ARRAY['chat'] WHERE id = $1`, [b.id]);
        await sql.query(`UPDATE ${t.table} SET expires_at = now() - interval '1 second' WHERE id = $1`, [c.id]);
        await sql.query(`UPDATE ${t.table} SET budget_micros = 250000, budget_cents = 25 WHERE id = $1`, [d.id]);
        await sql.query(`UPDATE ${t.table} SET revoked_at = now() WHERE id = $1`, [parent.id]);
      } finally {
        await sql.close();
      }
      await until(async () => (await ak.validate(a.key)).valid === false, 'the revoke to reach the cache');
      expect(await ak.validate(a.key)).toEqual({ valid: false, reason: 'revoked' });
      await until(async () => JSON.stringify((await ak.validate(b.key) as { scopes?: unknown }).scopes) === '["chat"]', 'the new scopes to reach the cache');
      expect(ak.hasScope(await ak.validate(b.key), 'tools')).toBe(false);
      await until(async () => (await ak.validate(c.key)).valid === false, 'the expiry to reach the cache');
      expect(await ak.validate(c.key)).toEqual({ valid: false, reason: 'expired' });
      await until(async () => (await ak.validate(d.key) as { budgetCents?: number }).budgetCents === 25, 'the new budget to reach the cache');
      await until(async () => (await ak.validate(child.key)).valid === false, "the parent's revoke to reach the cached child");
      expect(await ak.validate(child.key)).toEqual({ valid: false, reason: 'revoked' });
      expect(ak.cacheStats()!.invalidations).toBeGreaterThanOrEqual(5);
    });

    it('happy: a cached valid never lets money through: charges decide on the database, not on cached figures', async () => {
      const db = getDb();
      const first = await db.agentKey({ cache: { ttlMs: 600_000 } });
      const second = new AgentKey({ pool: db.pool, tableName: first.tableName });
      const account = newAccount();
      const k = await first.create({ accountId: account, budgetCents: 10 });
      await untilListening(first, k.key);
      await first.validate(k.key);
      expect(await first.validate(k.key)).toMatchObject({ valid: true, budgetRemainingCents: 10 });

      // Another instance spends the whole budget; the first one's cache is not told (spend announces nothing).
      expect(await second.trackUsage(k.key, { costCents: 6 })).toMatchObject({ success: true });
      expect(await second.reserve(k.key, { costCents: 4 })).toMatchObject({ success: true });
      expect(await first.validate(k.key)).toMatchObject({ valid: true });

      expect(await first.trackUsage(k.key, { costCents: 1 })).toEqual({
        success: false, reason: 'budget_exceeded', limitedBy: { kind: 'key', keyId: k.id, window: 'lifetime' }, budgetUsedCents: 6, budgetRemainingCents: 0,
      });
      expect(await first.reserve(k.key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      const many = await Promise.all(Array.from({ length: 20 }, () => first.trackUsage(k.key, { costCents: 0.5 })));
      expect(many.every((r) => !r.success && r.reason === 'budget_exceeded')).toBe(true);
      expect(await first.getKey(k.id)).toMatchObject({ spentCents: 6, heldCents: 4, remainingCents: 0 });
      expect(await first.audit()).toMatchObject({ ok: true });
    });

    it('happy: last_used_at is written in batches: 50 validations make at most one write, which flush() makes at once', async () => {
      const db = getDb();
      const ak = await db.agentKey({ cache: { ttlMs: 600_000 } });
      const t = tableNames(ak.tableName);
      const account = newAccount();
      const k = await ak.create({ accountId: account });
      const other = await ak.create({ accountId: account });
      // Counts every write of last_used_at (a trigger made by the test, on the real table).
      await db.query(`CREATE TABLE ${t.schema}"${t.indexBase}_touch_log" (key_id BIGINT, at TIMESTAMPTZ)`);
      await db.query(`CREATE FUNCTION ${t.schema}"${t.indexBase}_log_touch"() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
          INSERT INTO ${t.schema}"${t.indexBase}_touch_log" VALUES (NEW.id, NEW.last_used_at);
          RETURN NULL;
        END $fn$`);
      await db.query(`CREATE TRIGGER test_log_touch AFTER UPDATE ON ${t.table} FOR EACH ROW
        WHEN (OLD.last_used_at IS DISTINCT FROM NEW.last_used_at) EXECUTE FUNCTION ${t.schema}"${t.indexBase}_log_touch"()`);
      const writes = async (id: number) =>
        Number((await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${t.schema}"${t.indexBase}_touch_log" WHERE key_id = $1`, [id]))[0]!.n);
      const lastUsed = async (id: number) =>
        (await db.query<{ last_used_at: Date | null }>(`SELECT last_used_at FROM ${t.table} WHERE id = $1`, [id]))[0]!.last_used_at;

      expect(await lastUsed(k.id)).toBeNull();
      const started = Date.now();
      const results = await Promise.all(Array.from({ length: 50 }, () => ak.validate(k.key)));
      expect(results.every((r) => r.valid)).toBe(true);
      // Not one write per validation: none yet, or one if the once-a-second writer already ran.
      expect(await writes(k.id)).toBeLessThanOrEqual(1);
      await ak.flush();
      expect(await writes(k.id)).toBe(1);
      const stamped = await lastUsed(k.id);
      expect(stamped).not.toBeNull();
      expect(new Date(stamped!).getTime()).toBeGreaterThanOrEqual(started - 1_000);

      // getKey() writes what is pending first, so it shows this process's own uses.
      for (let i = 0; i < 50; i++) expect(await ak.validate(other.key)).toMatchObject({ valid: true });
      expect(await writes(other.id)).toBeLessThanOrEqual(1);
      expect((await ak.getKey(other.id))!.lastUsedAt).not.toBeNull();
      expect(await writes(other.id)).toBe(1);
      expect((await ak.listKeys({ accountId: account })).every((info) => info.lastUsedAt !== null)).toBe(true);
      // Nothing was pending any more: no extra writes.
      await ak.flush();
      expect([await writes(k.id), await writes(other.id)]).toEqual([1, 1]);
    });
  });

  describe('options and close()', () => {
    /** The same small story on any AgentKey: results that must not depend on caching or batching. */
    async function story(ak: AgentKey) {
      const k = await ak.create({ accountId: newAccount(), budgetCents: 10, scopes: ['chat'] });
      const out: unknown[] = [];
      out.push(await ak.validate(k.key));
      const charges = await Promise.all([4, 4, 4].map((c) => ak.trackUsage(k.key, { costCents: c })));
      out.push(charges.map((r) => r.success).sort());
      out.push(charges.filter((r) => !r.success));
      const hold = await ak.reserve(k.key, { costCents: 2 });
      out.push(hold.success);
      out.push(await ak.reserve(k.key, { costCents: 0.0001 }));
      out.push(await ak.validate(k.key));
      out.push(await ak.trackUsage(k.key, { costCents: 1, idempotencyKey: 'x' }));
      if (hold.success) out.push(await ak.release(hold.reservationId));
      out.push(await ak.trackUsage(k.key, { costCents: 1, idempotencyKey: 'x' }));
      out.push(await ak.trackUsage(k.key, { costCents: 1, idempotencyKey: 'x' }));
      out.push(await ak.trackUsage(k.key, { costCents: 2, idempotencyKey: 'x' }));
      out.push(await ak.validate(k.key));
      out.push(await ak.revoke(k.id));
      out.push(await ak.validate(k.key));
      out.push(await ak.trackUsage(k.key, { costCents: 1 }));
      out.push((await ak.audit({ keyId: k.id })).ok);
      return strip(out);
    }

    it('happy: with cache: false and batching: false everything still works, with the same results', async () => {
      const db = getDb();
      const plain = await db.agentKey();
      const uncached = await db.agentKey({ cache: false });
      const unbatched = await db.agentKey({ batching: false });
      const neither = await db.agentKey({ cache: false, batching: false });
      const expected = await story(plain);
      expect(expected[0]).toMatchObject({ valid: true, scopes: ['chat'], budgetRemainingCents: 10 });
      expect(expected[1]).toEqual([false, true, true]);
      expect(expected[expected.length - 1]).toBe(true);
      expect(await story(uncached)).toEqual(expected);
      expect(await story(unbatched)).toEqual(expected);
      expect(await story(neither)).toEqual(expected);
      expect(uncached.cacheStats()).toBeNull();
      expect(neither.cacheStats()).toBeNull();
      expect(unbatched.cacheStats()).toMatchObject({ maxKeys: 10_000, ttlMs: 5_000 });
    });

    it('error: invalid cache and batching options throw invalid_argument', () => {
      const pool = getDb().pool;
      const bad: unknown[] = [
        { cache: { maxKeys: 0 } },
        { cache: { maxKeys: 1.5 } },
        { cache: { maxKeys: -1 } },
        { cache: { maxKeys: 10_000_001 } },
        { cache: { maxKeys: '10' } },
        { cache: { ttlMs: 0 } },
        { cache: { ttlMs: 3_600_001 } },
        { cache: { ttlMs: Number.NaN } },
        { cache: { ttl: 100 } },
        { cache: true },
        { cache: 'on' },
        { cache: [] },
        { batching: { maxBatch: 0 } },
        { batching: { maxBatch: 1_001 } },
        { batching: { maxBatch: 2.5 } },
        { batching: { lanes: 0 } },
        { batching: { lanes: 65 } },
        { batching: { lanes: '2' } },
        { batching: { size: 10 } },
        { batching: true },
        { batching: 3 },
      ];
      for (const options of bad) {
        let thrown: unknown;
        try {
          new AgentKey({ pool, tableName: 'unused_options_table', ...(options as object) });
        } catch (err) {
          thrown = err;
        }
        expect(thrown, JSON.stringify(options)).toBeInstanceOf(AgentKeyError);
        expect((thrown as AgentKeyError).code, JSON.stringify(options)).toBe('invalid_argument');
      }
      // The bounds themselves are allowed, and so are the defaults.
      for (const options of [
        { cache: { maxKeys: 1, ttlMs: 1 } },
        { cache: { maxKeys: 10_000_000, ttlMs: 3_600_000 } },
        { batching: { maxBatch: 1, lanes: 1 } },
        { batching: { maxBatch: 1_000, lanes: 64 } },
        { cache: {}, batching: {} },
        {},
      ]) {
        expect(() => new AgentKey({ pool, tableName: 'unused_options_table', ...options }), JSON.stringify(options)).not.toThrow();
      }
      expect(new AgentKey({ pool, tableName: 'unused_options_table' }).cacheStats()).toMatchObject({ maxKeys: 10_000, ttlMs: 5_000, size: 0 });
    });

    it('happy: close() finishes in-flight charges, writes last_used_at, stops listening, and the AgentKey still works afterwards', async () => {
      const db = getDb();
      const ak = await db.agentKey({ cache: { ttlMs: 600_000 } });
      const t = tableNames(ak.tableName);
      const account = newAccount();
      const k = await ak.create({ accountId: account, budgetCents: 100 });
      await untilListening(ak, k.key);
      await ak.validate(k.key);
      expect(ak.cacheStats()).toMatchObject({ listening: true, size: 1 });

      let finished = 0;
      const inflight = Array.from({ length: 10 }, () => ak.trackUsage(k.key, { costCents: 1 }).then((r) => (finished++, r)));
      await ak.close();
      expect(finished).toBe(10);
      expect((await Promise.all(inflight)).every((r) => r.success)).toBe(true);
      expect(ak.cacheStats()).toMatchObject({ listening: false, size: 0 });
      const [row] = await db.query<{ last_used_at: Date | null; spent_micros: number }>(`SELECT last_used_at, spent_micros FROM ${t.table} WHERE id = $1`, [k.id]);
      expect(row!.last_used_at).not.toBeNull();
      expect(Number(row!.spent_micros)).toBe(100_000);

      // Still works, uncached: nothing is kept, and a change is seen at once.
      for (let i = 0; i < 3; i++) expect(await ak.validate(k.key)).toMatchObject({ valid: true, budgetUsedCents: 10 });
      expect(ak.cacheStats()).toMatchObject({ listening: false, size: 0 });
      expect(await ak.trackUsage(k.key, { costCents: 5 })).toMatchObject({ success: true, budgetUsedCents: 15 });
      const hold = await ak.reserve(k.key, { costCents: 5 });
      expect(hold.success && (await ak.commit(hold.reservationId, { costCents: 3 }))).toMatchObject({ success: true });
      await db.query(`UPDATE ${t.table} SET scopes = ARRAY['x'] WHERE id = $1`, [k.id]);
      expect(await ak.validate(k.key)).toMatchObject({ valid: true, scopes: ['x'] });
      expect(await ak.revoke(k.id)).toBe(true);
      expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.audit()).toMatchObject({ ok: true });
      await ak.close(); // a second close is harmless
      expect(ak.cacheStats()).toMatchObject({ listening: false });
    });
  });
});

forEachDatabase(
  (getDb) => {
    describe('a revoke racing an older read of the same key', () => {
      it('security: a validation that starts after revoke() resolved never says valid, even while a read of the key that started before it is still in flight', async () => {
        const db = getDb();
        const ak = await db.agentKey({ cache: { ttlMs: 600_000 } });
        const t = tableNames(ak.tableName);
        const account = newAccount();
        const warm = await ak.create({ accountId: account });
        const k = await ak.create({ accountId: account });
        // Makes reading this key slow (tens of milliseconds): 300,000 live holds of nothing on it.
        await db.query(
          `INSERT INTO ${t.holds} (id, key_id, path, account_id, amount_micros, status, expires_at)
           SELECT 'slow' || g, $1, ARRAY[$1::bigint], $2, 0, 'held', now() + interval '1 day' FROM generate_series(1, 300000) g`,
          [k.id, account],
        );
        await untilListening(ak, warm.key);

        const older = ak.validate(k.key); // reads the key as it was before the revoke
        await sleep(20); // its query is running now
        expect(await ak.revoke(k.id)).toBe(true);
        // The revoke has returned: from now on no validation may say valid.
        expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'revoked' });
        await older;
        expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'revoked' });
      }, 60_000);
    });
  },
  ['postgres'],
);
