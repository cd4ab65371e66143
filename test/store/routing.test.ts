/**
 * The per-account path of the spend store (what a database sharded by account gets): a
 * batch of several accounts' steps is one call per account, each step's account found by
 * lookup and remembered; a remembered account that no longer holds a subject is looked up
 * again; a ref that is nowhere is answered as the spend function answers it.
 */
import { describe, expect, it } from 'vitest';
import { lookupHash } from '../../src/keys.js';
import { toDb } from '../../src/store/db.js';
import { tableNames } from '../../src/store/identifiers.js';
import { groupByAccount } from '../../src/store/routing.js';
import { type SpendRequest, SpendStore } from '../../src/store/spend.js';
import { forEachDatabase, uniqueName } from '../helpers/databases.js';
import { expectAuditOk, ledgerRows } from '../helpers/tables.js';

const charge = (micros: number): SpendRequest => ({ op: 'charge', micros, idempotencyKey: null, metadata: null, holdId: null, ttlMs: null });

describe('groupByAccount', () => {
  it('happy: groups in account order keep their items in order; refs of no account join the first group', () => {
    expect(groupByAccount(['b', 'a', null, 'b', 'a'])).toEqual([
      { account: 'a', at: [1, 2, 4] },
      { account: 'b', at: [0, 3] },
    ]);
    expect(groupByAccount([null, null])).toEqual([{ account: null, at: [0, 1] }]);
    expect(groupByAccount([])).toEqual([]);
  });
});

forEachDatabase((getDb) => {
  describe('the spend store, one call per account', () => {
    it('happy: one batch over three accounts by hash, subject and id charges each key in its own account; an unknown key is invalid', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const t = tableNames(ak.tableName);
      const store = new SpendStore(toDb(db.pool), t, true);
      const [a, b] = [uniqueName('acct_a'), uniqueName('acct_b')];
      const ka = await ak.create({ accountId: a, budgetCents: 10 });
      const kb = await ak.create({ accountId: b, budgetCents: 10 });
      const subject = uniqueName('subj');
      await ak.ensureSubject(subject, { accountId: uniqueName('acct_c'), budgetCents: 10 });
      const outs = await store.spendMany([
        { ref: { hash: lookupHash(kb.key, ak.keyPrefix)! }, request: charge(40_000) },
        { ref: { subject }, request: charge(30_000) },
        { ref: { hash: 'f'.repeat(64) }, request: charge(10_000) },
        { ref: { id: ka.id }, request: charge(60_000) },
        { ref: { id: ka.id }, request: charge(60_000) },
      ]);
      expect(outs.map((o) => o.outcome)).toEqual(['ok', 'ok', 'invalid', 'ok', 'budget_exceeded']);
      expect((await ledgerRows(db, ak, ka.id)).map((l) => l.account_id)).toEqual([a]);
      expect((await ledgerRows(db, ak, kb.id)).map((l) => l.account_id)).toEqual([b]);
      await expectAuditOk(ak);
      await ak.close();
    });

    it("happy: a subject that moved to a key of another account is charged there, though its old account was remembered", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const t = tableNames(ak.tableName);
      const store = new SpendStore(toDb(db.pool), t, true);
      const subject = uniqueName('moving');
      await ak.ensureSubject(subject, { accountId: uniqueName('acct_old'), budgetCents: 10 });
      expect((await store.spend({ subject }, charge(10_000))).outcome).toBe('ok');
      // The subject leaves its key (plain SQL), and a key of another account takes it.
      const oldId = Number((await db.query<{ id: number }>(`SELECT id FROM ${t.table} WHERE external_subject = $1`, [subject]))[0]!.id);
      await db.query(`UPDATE ${t.table} SET external_subject = NULL WHERE id = $1`, [oldId]);
      const next = await ak.create({ accountId: uniqueName('acct_new'), budgetCents: 10 });
      await db.query(`UPDATE ${t.table} SET external_subject = $1 WHERE id = $2`, [subject, next.id]);
      const out = await store.spend({ subject }, charge(20_000));
      expect(out).toMatchObject({ outcome: 'ok', key_id: next.id });
      expect(await ak.getKey(next.id)).toMatchObject({ spentCents: 2 });
      expect(await ak.getKey(oldId)).toMatchObject({ spentCents: 1 });
      await ak.close();
    });

    it('happy: a hold taken by one store is committed by another that never saw it (its account looked up by hold id)', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const t = tableNames(ak.tableName);
      const k = await ak.create({ accountId: uniqueName('acct_h'), budgetCents: 10 });
      const held = await new SpendStore(toDb(db.pool), t, true).spend({ id: k.id }, { ...charge(50_000), op: 'hold', holdId: 'rsv_' + 'r'.repeat(24), ttlMs: 60_000 });
      expect(held.outcome).toBe('ok');
      const other = new SpendStore(toDb(db.pool), t, true);
      expect(await other.settle('rsv_' + 'r'.repeat(24), 'commit', 30_000, null)).toMatchObject({ outcome: 'ok', committed: 30_000 });
      expect(await other.settle('rsv_' + 'x'.repeat(24), 'release', 0, null)).toMatchObject({ outcome: 'not_found' });
      expect(await ak.getKey(k.id)).toMatchObject({ spentCents: 3 });
      await ak.close();
    });
  });
});
