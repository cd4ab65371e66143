/**
 * The exact mode's rate function, sent once for a batch of any accounts (one PostgreSQL) or
 * once per account (a database sharded by account): the same batches give the same answers
 * and the same counters either way, each counter row carries its request's account, and a
 * call given an account touches no other account's counters.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { toDb } from '../../src/store/db.js';
import { tableNames } from '../../src/store/identifiers.js';
import { type RateItem, RateLimitStore } from '../../src/store/rate-limits.js';
import { forEachDatabase } from '../helpers/databases.js';

const ACCOUNTS = ['acct_a', 'acct_b', 'acct:c'];

/** A batch of requests, each with its key's limit and, sometimes, its account's (a key's scope names one key, so one account). */
const batchArb = fc.array(
  fc.record({ account: fc.constantFrom(...ACCOUNTS), key: fc.integer({ min: 1, max: 4 }), withAccount: fc.boolean() }),
  { minLength: 1, maxLength: 25 },
);

function itemsOf(batch: { account: string; key: number; withAccount: boolean }[], run: number): RateItem[] {
  return batch.flatMap((r, req) => [
    { req, scope: `k:60:${run}_${r.key}_${ACCOUNTS.indexOf(r.account)}`, perSeconds: 60, limit: 3, accountId: r.account },
    ...(r.withAccount ? [{ req, scope: `a:60:${r.account}#${run}`, perSeconds: 60, limit: 5, accountId: r.account }] : []),
  ]);
}

forEachDatabase((getDb) => {
  describe('the rate function, per account or across accounts', () => {
    it('property: a batch sent once per account answers and counts exactly as the same batch sent once', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const t = tableNames(ak.tableName);
      const across = new RateLimitStore(toDb(db.pool), t, false);
      const apart = new RateLimitStore(toDb(db.pool), t, true);
      let run = 0;
      await fc.assert(
        fc.asyncProperty(batchArb, fc.integer({ min: 1, max: 3 }), async (batch, rounds) => {
          run++;
          const answers: Record<string, unknown[]> = { across: [], apart: [] };
          for (const [name, store] of [['across', across], ['apart', apart]] as const) {
            // Each side counts in scopes of its own (the suffix), so the two never share a counter.
            for (let r = 0; r < rounds; r++) {
              const items = itemsOf(batch, run).map((i) => ({ ...i, scope: `${i.scope}:${name}` }));
              const rows = await store.take(items);
              answers[name]!.push(rows.map((x) => [Number(x.req), x.refused_scope?.replace(/:(across|apart)$/, '') ?? null]).sort((a, b) => Number(a[0]) - Number(b[0])));
            }
          }
          expect(answers.apart).toEqual(answers.across);
          const counters = await db.query<{ account_id: string; scope: string; count: number }>(
            `SELECT account_id, scope, count FROM ${t.rateWindows} WHERE scope LIKE $1 ORDER BY scope`,
            [`%`],
          );
          const side = (name: string) =>
            counters.filter((c) => c.scope.endsWith(`:${name}`) && (c.scope.startsWith(`k:60:${run}_`) || c.scope.includes(`#${run}:`)))
              .map((c) => [c.scope.replace(/:(across|apart)$/, ''), c.account_id, Number(c.count)]);
          expect(side('apart')).toEqual(side('across'));
          // Every counter row is of its request's account.
          for (const [scope, account] of side('apart') as [string, string][]) {
            if (scope.startsWith('a:60:')) expect(scope).toContain(account);
            else expect(ACCOUNTS).toContain(account);
          }
        }),
        { numRuns: 25 },
      );
      await ak.close();
    });

    it("happy: a call given an account reads and counts that account's counters only; an item of another account is an error", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const t = tableNames(ak.tableName);
      const fn = t.rateTakeFn;
      const take = (account: string | null, scope: string, acct: string) =>
        db.query<{ refused_scope: string | null }>(`SELECT refused_scope FROM ${fn}($1::text, $2::int[], $3::text[], $4::text[], $5::int[], $6::int[])`, [
          account, [0], [scope], [acct], [60], [1],
        ]);
      expect(await take('acct_a', 'k:60:shared', 'acct_a')).toEqual([{ refused_scope: null }]);
      // An item of another account than the call's is refused, and nothing counted.
      await expect(take('acct_b', 'k:60:shared', 'acct_a')).rejects.toThrow(/must be of that account/);
      const rows = await db.query<{ account_id: string; count: number }>(`SELECT account_id, count FROM ${t.rateWindows} WHERE scope = 'k:60:shared' ORDER BY account_id`);
      expect(rows.map((r) => [r.account_id, Number(r.count)])).toEqual([['acct_a', 1]]);
      // Its own account's call sees its counter full; a call across accounts sees the same row.
      expect(await take('acct_a', 'k:60:shared', 'acct_a')).toEqual([{ refused_scope: 'k:60:shared' }]);
      expect(await take(null, 'k:60:shared', 'acct_a')).toEqual([{ refused_scope: 'k:60:shared' }]);
      await ak.close();
    });
  });
});
