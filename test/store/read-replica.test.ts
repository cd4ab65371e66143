import pg from 'pg';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { AgentKey } from '../../src/index.js';
import { type TestDb, forEachDatabase, uniqueName, withDatabase } from '../helpers/databases.js';
import { sleep } from '../helpers/wait.js';

/**
 * `readPool`: validations the cache cannot answer read a replica. Here the "replica" is a
 * second database with the same tables, whose rows the test copies from the primary when
 * it wants a replay: so the lag is whatever the test makes it, and each staleness rule is
 * seen exactly. Charges and every write go to the primary.
 */
forEachDatabase(
  (getDb) => {
    let replica: pg.Pool;
    const opened: AgentKey[] = [];
    const table = `replica_${process.pid}`;
    let primary: AgentKey;

    beforeAll(async () => {
      const db = getDb();
      const name = `agentkey_replica_${process.pid}_${Date.now() % 100000}`;
      await db.query(`CREATE DATABASE ${name}`);
      replica = new pg.Pool({ connectionString: withDatabase(db.url as string, name), max: 4 });
      primary = new AgentKey({ pool: db.pool, tableName: table });
      opened.push(primary);
      await primary.migrate();
      const onReplica = new AgentKey({ pool: replica, tableName: table });
      await onReplica.migrate();
      await onReplica.close();
    });

    afterAll(async () => {
      for (const ak of opened) await ak.close().catch(() => {});
      await replica?.end();
    });

    /** The replica catches up: its keys become the primary's. */
    async function replay(db: TestDb): Promise<void> {
      const rows = await db.query(`SELECT * FROM ${table}`);
      await replica.query(`DELETE FROM ${table}`);
      await replica.query(`INSERT INTO ${table} SELECT * FROM json_populate_recordset(NULL::${table}, $1::json)`, [JSON.stringify(rows)]);
    }

    function reader(options: { fallbackTtlMs?: number; readPool?: pg.Pool } = {}): AgentKey {
      const db = getDb();
      const ak = new AgentKey({
        pool: db.pool,
        tableName: table,
        readPool: options.readPool ?? replica,
        cache: { ttlMs: 60_000, fallbackTtlMs: options.fallbackTtlMs ?? 300 },
        ...(db.directUrl ? { directUrl: db.directUrl } : {}),
      });
      opened.push(ak);
      return ak;
    }

    it('happy: a validation the cache cannot answer reads the replica; a key the replica does not have yet is read from the primary', async () => {
      const db = getDb();
      const ak = reader();
      const old = await primary.create({ accountId: uniqueName('acct_rr'), name: 'before' });
      await replay(db);
      // Renamed on the primary only: the replica's row (the old name) is the one served.
      await primary.update(old.id, { name: 'after' });
      expect(await ak.validate(old.key)).toMatchObject({ valid: true, name: 'before' });
      // Made since the last replay: not on the replica, so read from the primary.
      const fresh = await primary.create({ accountId: uniqueName('acct_rr') });
      expect(await ak.validate(fresh.key)).toMatchObject({ valid: true, id: fresh.id });
      expect(await ak.validate(`ak_${'b'.repeat(32)}`)).toEqual({ valid: false, reason: 'invalid' });
    });

    it('security: a revocation the replica has not replayed shows in validate once it has, plus at most fallbackTtlMs; charges decide on the primary meanwhile', async () => {
      const db = getDb();
      const ak = reader({ fallbackTtlMs: 300 });
      const k = await primary.create({ accountId: uniqueName('acct_rr'), budgetCents: 1_000 });
      await replay(db);
      expect(await ak.validate(k.key)).toMatchObject({ valid: true });
      await primary.revoke(k.id);
      // The replica lags: validate may still say valid...
      expect(await ak.validate(k.key)).toMatchObject({ valid: true });
      // ...but a charge goes to the primary, which refuses it and records nothing.
      expect(await ak.trackUsage(k.key, { costCents: 5 })).toMatchObject({ success: false, reason: 'revoked' });
      expect(await db.query(`SELECT 1 FROM ${table}_ledger WHERE key_id = $1 AND kind = 'charge'`, [k.id])).toEqual([]);
      expect(await replica.query(`SELECT 1 FROM ${table}_ledger`).then((r) => r.rows)).toEqual([]);
      await replay(db);
      // An entry read from the replica lives no longer than fallbackTtlMs, though ttlMs is a minute.
      await sleep(350);
      expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'revoked' });
    });

    it('happy: a replica that cannot be reached leaves validations to the primary', async () => {
      const db = getDb();
      const dead = new pg.Pool({ connectionString: withDatabase(db.url as string, 'no_such_database_here'), max: 1, connectionTimeoutMillis: 2_000 });
      dead.on('error', () => {});
      try {
        const ak = reader({ readPool: dead });
        const k = await primary.create({ accountId: uniqueName('acct_rr') });
        expect(await ak.validate(k.key)).toMatchObject({ valid: true, id: k.id });
        await primary.revoke(k.id);
        await sleep(350);
        expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'revoked' });
      } finally {
        await dead.end();
      }
    });
  },
  ['postgres'],
);
