import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { AgentKey } from '../../src/index.js';
import { toDb } from '../../src/store/db.js';
import { tableNames } from '../../src/store/identifiers.js';
import { SpendStore } from '../../src/store/spend.js';
import { forEachDatabase, type TestDb } from '../helpers/databases.js';
import { reserved } from '../helpers/results.js';
import { expectAuditOk } from '../helpers/tables.js';

/*
 * The constraints docs/scaling.md gives for Citus, run on plain PostgreSQL: migrate(), then
 * the doc's SQL block as written less what only Citus has (the extension, its settings, the
 * create_distributed_table / create_reference_table / citus_* calls), then migrate() again,
 * then the library's money paths on the changed schema. A statement of the doc that fails
 * here fails the test: the doc is read from the file, so it stays runnable as written.
 * Beside it, on both databases, what sharding needs of agentkey itself (docs/scaling.md, P2 and
 * P4): migrate()'s version 12 (every hold carries its account) and the hold sweep one account
 * at a time.
 */

const TABLE = 'sdk_api_keys';
const t = tableNames(TABLE);
const DOC = new URL('../../docs/scaling.md', import.meta.url);

/** The statements of the doc's Citus block that plain PostgreSQL can run. */
function docStatements(): string[] {
  const doc = fs.readFileSync(DOC, 'utf8');
  const block = /```sql\n(CREATE EXTENSION IF NOT EXISTS citus;[\s\S]*?)```/.exec(doc)?.[1];
  if (!block) throw new Error('docs/scaling.md has no SQL block starting with CREATE EXTENSION IF NOT EXISTS citus');
  const citusOnly = /^(CREATE EXTENSION\b[\s\S]*\bcitus\b|SET citus\.|SELECT (create_distributed_table|create_reference_table|create_distributed_function|citus_)\w*\s*\()/i;
  return block
    .replace(/--[^\n]*/g, '')
    .split(/;\s*(?:\n|$)/)
    .map((s) => s.trim())
    .filter((s) => s !== '' && !citusOnly.test(s));
}

/** Every index on agentkey's tables, as `table: definition`, sorted. */
async function allIndexes(db: TestDb): Promise<string[]> {
  const rows = await db.query<{ d: string }>(
    `SELECT tablename || ': ' || indexdef AS d FROM pg_indexes WHERE schemaname = current_schema() AND tablename LIKE $1 ORDER BY 1`,
    [`${TABLE}%`],
  );
  return rows.map((r) => r.d);
}

/** Unique indexes of account-scoped tables that leave the account out (Citus refuses them). */
async function uniqueWithoutAccount(db: TestDb): Promise<string[]> {
  const rows = await db.query<{ name: string }>(
    `SELECT i.relname AS name FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
     WHERE x.indisunique AND c.relnamespace = current_schema()::regnamespace
       AND c.relname = ANY($1::text[])
       AND NOT EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'account_id' AND a.attnum = ANY(x.indkey))
     ORDER BY 1`,
    [[t.table, t.ledger, t.holds, t.accounts, t.events, t.windows, t.outbox, t.accountLimits].map((n) => n.replace(/"/g, ''))],
  );
  return rows.map((r) => r.name);
}

forEachDatabase((getDb) => {
  describe("docs/scaling.md's Citus constraints on plain PostgreSQL", () => {
    it("happy: the doc's SQL runs after migrate(), migrate() then accepts it as it is, and every money path still works", async () => {
      const db = getDb();
      const ak = new AgentKey({ pool: db.pool, tableName: TABLE });
      await ak.migrate();
      // Nothing of agentkey's references the keys table: the doc may drop its (id) primary key.
      expect(await db.query(`SELECT conname FROM pg_constraint WHERE contype = 'f' AND confrelid = to_regclass($1)`, [t.table])).toEqual([]);
      // Rows from before the change, spent and held, go through it.
      const before = await ak.create({ accountId: 'acct_old', budgetCents: 100 });
      expect(await ak.trackUsage(before.key, { costCents: 10 })).toMatchObject({ success: true });
      const oldHold = reserved(await ak.reserve(before.key, { costCents: 20, ttl: '1h' }));

      const statements = docStatements();
      expect(statements.length).toBeGreaterThan(10);
      for (const s of statements) {
        await db.query(s).catch((err: Error) => {
          throw new Error(`the doc's statement failed on PostgreSQL: ${s}\n${err.message}`);
        });
      }
      expect(await uniqueWithoutAccount(db)).toEqual([]);

      // migrate() again: nothing to apply, and no unique index made again without the account.
      const indexes = await allIndexes(db);
      expect(await new AgentKey({ pool: db.pool, tableName: TABLE }).migrate()).toEqual([]);
      expect(await allIndexes(db)).toEqual(indexes);
      expect(await uniqueWithoutAccount(db)).toEqual([]);

      // Charges to the cap: exactly the cap lands, a cent past it does not.
      const key = await ak.create({ accountId: 'acct_a', budgetCents: 100, alerts: [50] });
      for (let i = 0; i < 3; i++) expect(await ak.trackUsage(key.key, { costCents: 30 })).toMatchObject({ success: true });
      expect(await ak.trackUsage(key.key, { costCents: 30 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsage(key.key, { costCents: 10 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
      expect(await ak.trackUsage(key.key, { costCents: 0.01 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      // The 50% threshold, crossed once, is written once (its dedupe index is now (account_id, dedupe)).
      const thresholds = await ak.outboxEvents({ type: 'budget.threshold' });
      expect(thresholds.map((e) => [e.data.keyId, e.data.percent])).toEqual([[key.id, 50]]);

      // An idempotent charge replays (its index is now (account_id, key_id, idempotency_key)).
      const other = await ak.create({ accountId: 'acct_a', budgetCents: 1000 });
      expect(await ak.trackUsage(other.key, { costCents: 5, idempotencyKey: 'once' })).toMatchObject({ success: true, budgetUsedCents: 5 });
      expect(await ak.trackUsage(other.key, { costCents: 5, idempotencyKey: 'once' })).toMatchObject({ success: true, budgetUsedCents: 5 });
      expect(await ak.trackUsage(other.key, { costCents: 6, idempotencyKey: 'once' })).toMatchObject({ success: false, reason: 'idempotency_conflict' });

      // Holds: a replayed reserve, a commit below the hold, a release.
      const h1 = reserved(await ak.reserve(other.key, { costCents: 50, idempotencyKey: 'r1' }));
      expect(reserved(await ak.reserve(other.key, { costCents: 50, idempotencyKey: 'r1' })).reservationId).toBe(h1.reservationId);
      expect(await ak.commit(h1.reservationId, { costCents: 40 })).toMatchObject({ success: true, costCents: 40 });
      const h2 = reserved(await ak.reserve(other.key, { costCents: 30 }));
      expect(await ak.release(h2.reservationId)).toMatchObject({ success: true, releasedCents: 30 });
      expect(await ak.validate(other.key)).toMatchObject({ valid: true, budgetUsedCents: 45, budgetHeldCents: 0 });

      // The hold sweep: the old hold and a new one, each expired once, each with its account.
      const h3 = reserved(await ak.reserve(other.key, { costCents: 25, ttl: '1h' }));
      await db.query(`UPDATE ${t.holds} SET expires_at = now() - interval '1 second' WHERE id = ANY($1::text[])`, [[oldHold.reservationId, h3.reservationId]]);
      expect(await ak.sweepExpiredHolds()).toBe(2);
      expect(await ak.sweepExpiredHolds()).toBe(0);
      const expires = await db.query<{ account_id: string; reservation_id: string }>(
        `SELECT account_id, reservation_id FROM ${t.ledger} WHERE kind = 'expire' ORDER BY account_id`,
      );
      expect(expires).toEqual([
        { account_id: 'acct_a', reservation_id: h3.reservationId },
        { account_id: 'acct_old', reservation_id: oldHold.reservationId },
      ]);
      expect((await ak.outboxEvents({ type: 'hold.expired' })).map((e) => e.data.holdId).sort()).toEqual([h3.reservationId, oldHold.reservationId].sort());

      // The key expiry sweep writes key.expired once.
      const expiring = await ak.create({ accountId: 'acct_b', expiresIn: '1h' });
      await db.query(`UPDATE ${t.table} SET expires_at = now() - interval '1 second' WHERE id = $1`, [expiring.id]);
      expect(await ak.sweepExpiredKeys()).toBe(1);
      expect(await ak.sweepExpiredKeys()).toBe(0);
      expect((await ak.outboxEvents({ type: 'key.expired' })).map((e) => e.data.keyId)).toEqual([expiring.id]);

      // A child spends from its parent's budget; revoking the parent stops both.
      const parent = await ak.create({ accountId: 'acct_c', budgetCents: 50 });
      const child = await ak.create({ accountId: 'acct_c', parentId: parent.id, budgetCents: 40 });
      expect(await ak.trackUsage(child.key, { costCents: 40 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
      expect(await ak.trackUsage(parent.key, { costCents: 11 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsage(parent.key, { costCents: 10 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
      expect(await ak.revoke(parent.id)).toBe(true);
      expect(await ak.validate(child.key)).toMatchObject({ valid: false, reason: 'revoked' });

      // A subject, unique per account now, still found by itself.
      await ak.ensureSubject('agent:1', { accountId: 'acct_d', budgetCents: 10 });
      expect(await ak.trackUsageBySubject('agent:1', { costCents: 10 })).toMatchObject({ success: true, budgetRemainingCents: 0 });

      await expectAuditOk(ak);
      await ak.close();
    });
  });
}, ['postgres']);

forEachDatabase((getDb) => {
  describe('version 12: every hold carries its account', () => {
    it("happy: a hold without an account gets its key's; one whose key is gone gets ''; the column is then NOT NULL", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { holds, migrations } = tableNames(ak.tableName);
      const k = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const h = reserved(await ak.reserve(k.key, { costCents: 10, ttl: '1h' }));
      // As a hold written before version 3, or by SQL, may be: no account; and one whose key is gone.
      await db.query(`ALTER TABLE ${holds} ALTER COLUMN account_id DROP NOT NULL`);
      await db.query(`UPDATE ${holds} SET account_id = NULL`);
      await db.query(
        `INSERT INTO ${holds} (id, key_id, path, amount_micros, status, expires_at) VALUES ('rsv_orphan', 999999, '{999999}', 5, 'committed', now())`,
      );
      await db.query(`DELETE FROM ${migrations} WHERE table_name = $1 AND version = 12`, [ak.tableName]);

      expect(await new AgentKey({ pool: db.pool, tableName: ak.tableName }).migrate()).toEqual([12]);
      expect(await db.query(`SELECT id, account_id FROM ${holds} ORDER BY id = 'rsv_orphan'`)).toEqual([
        { id: h.reservationId, account_id: 'acct_1' },
        { id: 'rsv_orphan', account_id: '' },
      ]);
      const [col] = await db.query<{ is_nullable: string }>(
        `SELECT is_nullable FROM information_schema.columns WHERE table_name = $1 AND column_name = 'account_id'`,
        [`${ak.tableName}_holds`],
      );
      expect(col!.is_nullable).toBe('NO');
      expect(await ak.commit(h.reservationId, { costCents: 10 })).toMatchObject({ success: true });
      await expectAuditOk(ak);
    });
  });

  describe('version 13: the rate counters carry their account', () => {
    it("happy: a counter gets its account from its scope ('a:') or its key's ('k:'); one of a gone key goes; the column is then NOT NULL", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { rateWindows, migrations } = tableNames(ak.tableName);
      const k = await ak.create({ accountId: 'acct:with:colons' });
      // Counters as a version before 13 wrote them: no account.
      await db.query(`ALTER TABLE ${rateWindows} DROP COLUMN account_id`);
      await db.query(`INSERT INTO ${rateWindows} (scope, window_no, count) VALUES ($1, 7, 3), ('a:60:acct:with:colons', 7, 4), ('k:60:999999', 7, 1), ('k:60:junk', 7, 1)`, [
        `k:60:${k.id}`,
      ]);
      await db.query(`DELETE FROM ${migrations} WHERE table_name = $1 AND version = 13`, [ak.tableName]);

      expect(await new AgentKey({ pool: db.pool, tableName: ak.tableName }).migrate()).toEqual([13]);
      expect(await db.query(`SELECT scope, account_id, count FROM ${rateWindows} ORDER BY scope`)).toEqual([
        { scope: 'a:60:acct:with:colons', account_id: 'acct:with:colons', count: 4 },
        { scope: `k:60:${k.id}`, account_id: 'acct:with:colons', count: 3 },
      ]);
      const [col] = await db.query<{ is_nullable: string }>(
        `SELECT is_nullable FROM information_schema.columns WHERE table_name = $1 AND column_name = 'account_id'`,
        [`${ak.tableName}_rate_windows`],
      );
      expect(col!.is_nullable).toBe('NO');
      await ak.close();
    });
  });

  describe('the hold sweep, one statement or one account at a time', () => {
    for (const byAccount of [false, true]) {
      it(`happy: due holds of several accounts are swept earliest first, at most \`limit\` per call, each once (${byAccount ? 'one account at a time, as sharded' : 'one statement'})`, async () => {
        const db = getDb();
        const ak = await db.agentKey();
        const t = tableNames(ak.tableName);
        const store = new SpendStore(toDb(db.pool), t, byAccount);
        const ids: string[] = [];
        for (const [i, account] of ['a', 'b', 'a', 'c'].entries()) {
          const k = await ak.create({ accountId: account, budgetCents: 100 });
          const h = reserved(await ak.reserve(k.key, { costCents: 10, ttl: '1h' }));
          await db.query(`UPDATE ${t.holds} SET expires_at = now() - $2 * interval '1 minute' WHERE id = $1`, [h.reservationId, 10 - i]);
          ids.push(h.reservationId);
        }
        const live = await ak.create({ accountId: 'a', budgetCents: 100 });
        reserved(await ak.reserve(live.key, { costCents: 10, ttl: '1h' }));
        const expired = async () =>
          (await db.query<{ id: string }>(`SELECT id FROM ${t.holds} WHERE status = 'expired' ORDER BY expires_at`)).map((r) => r.id);

        expect(await store.sweep(1)).toBe(1);
        expect(await expired()).toEqual(ids.slice(0, 1));
        expect(await store.sweep(2)).toBe(2);
        expect(await expired()).toEqual(ids.slice(0, 3));
        expect(await store.sweep(10)).toBe(1);
        expect(await store.sweep(10)).toBe(0);
        expect(await expired()).toEqual(ids);
        expect(await db.query(`SELECT account_id, count(*)::int AS n FROM ${t.ledger} WHERE kind = 'expire' GROUP BY 1 ORDER BY 1`)).toEqual([
          { account_id: 'a', n: 2 },
          { account_id: 'b', n: 1 },
          { account_id: 'c', n: 1 },
        ]);
        await expectAuditOk(ak);
      });
    }
  });
});
