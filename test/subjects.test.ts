import { describe, expect, it } from 'vitest';
import { forEachDatabase } from './helpers/databases.js';
import { rejectsWith } from './helpers/errors.js';
import { reserved, valid } from './helpers/results.js';
import { expectAuditOk, keyCount, keyRow, ledgerRows, subjectKeyId, tableState } from './helpers/tables.js';

/**
 * Keys of external subjects (ensureSubject and the *BySubject calls), on PostgreSQL and PGlite:
 * made once, charged and held against exactly, rolled over, refused when expired, revoked or
 * unknown.
 */

forEachDatabase((getDb) => {
  describe('subjects', () => {
    it('happy: ensureSubject is idempotent: a second call with other options changes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      expect(await ak.ensureSubject('mch_1', { budgetCents: 10, scopes: ['proxy.chat'], delegatedBy: 'user_1', name: 'bot' })).toBeUndefined();
      const first = valid(await ak.validateBySubject('mch_1'));
      expect(first).toMatchObject({ accountId: 'mch_1', budgetCents: 10, scopes: ['proxy.chat'], delegatedBy: 'user_1', name: 'bot', expiresAt: null });
      const before = await tableState(db, ak);
      await ak.ensureSubject('mch_1', { budgetCents: 999, scopes: ['admin'], accountId: 'acct_other', expiresIn: '1h', name: 'other' });
      await ak.ensureSubject('mch_1');
      expect(await keyCount(db, ak)).toBe(1);
      expect(valid(await ak.validateBySubject('mch_1'))).toMatchObject({ accountId: 'mch_1', budgetCents: 10, scopes: ['proxy.chat'], name: 'bot' });
      const after = await tableState(db, ak);
      expect(after.replace(/"last_used_at":"[^"]*"/g, '')).toBe(before.replace(/"last_used_at":"[^"]*"/g, ''));
    });

    it('happy: accountId defaults to the subject, or is the one given', async () => {
      const ak = await getDb().agentKey();
      await ak.ensureSubject('mch_a');
      await ak.ensureSubject('mch_b', { accountId: 'acct_9' });
      await ak.ensureSubject('mch_c', { accountId: 9 });
      expect(await ak.validateBySubject('mch_a')).toMatchObject({ valid: true, accountId: 'mch_a', budgetCents: null, scopes: null });
      expect(await ak.validateBySubject('mch_b')).toMatchObject({ valid: true, accountId: 'acct_9' });
      expect(String(valid(await ak.validateBySubject('mch_c')).accountId)).toBe('9');
    });

    it('happy: trackUsageBySubject enforces the budget exactly', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.ensureSubject('mch_1', { budgetCents: 10 });
      const id = await subjectKeyId(db, ak, 'mch_1');
      expect(await ak.trackUsageBySubject('mch_1', { costCents: 6 })).toEqual({ success: true, budgetUsedCents: 6, budgetRemainingCents: 4 });
      expect(await ak.trackUsageBySubject('mch_1', { costCents: 4.0001 })).toEqual({ success: false, reason: 'budget_exceeded', limitedBy: { kind: 'key', keyId: id, window: expect.any(String) }, budgetUsedCents: 6, budgetRemainingCents: 4 });
      expect(await ak.trackUsageBySubject('mch_1', { costCents: 4 })).toEqual({ success: true, budgetUsedCents: 10, budgetRemainingCents: 0 });
      // Spent to the cent: validateBySubject refuses it; getKey shows its figures.
      expect(await ak.validateBySubject('mch_1')).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect(await ak.getKey(id)).toMatchObject({ budgetCents: 10, spentCents: 10, remainingCents: 0 });
      expect((await keyRow(db, ak, id)).spent_micros).toBe('100000');
    });

    it('happy: subject budgets roll over with their period', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.ensureSubject('mch_day', { budgetCents: 10, budgetPeriod: 'day' });
      await ak.trackUsageBySubject('mch_day', { costCents: 10 });
      expect(await ak.trackUsageBySubject('mch_day', { costCents: 1 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      const id = await subjectKeyId(db, ak, 'mch_day');
      await db.query(`UPDATE ${ak.tableName} SET budget_reset_at = now() - interval '1 second' WHERE id = $1`, [id]);
      expect(await ak.validateBySubject('mch_day')).toMatchObject({ valid: true, budgetUsedCents: 0 });
      expect(await ak.trackUsageBySubject('mch_day', { costCents: 1 })).toMatchObject({ success: true, budgetUsedCents: 1 });
    });

    it('error: expired and revoked subjects are refused and charged nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.ensureSubject('mch_exp', { budgetCents: 10, expiresIn: '2s' });
      await ak.ensureSubject('mch_rev', { budgetCents: 10 });
      const expId = await subjectKeyId(db, ak, 'mch_exp');
      const revId = await subjectKeyId(db, ak, 'mch_rev');
      await db.query(`UPDATE ${ak.tableName} SET expires_at = now() - interval '1 second' WHERE id = $1`, [expId]);
      expect(await ak.revoke(revId)).toBe(true);
      expect(await ak.validateBySubject('mch_exp')).toEqual({ valid: false, reason: 'expired' });
      expect(await ak.trackUsageBySubject('mch_exp', { costCents: 1 })).toEqual({ success: false, reason: 'expired' });
      expect(await ak.validateBySubject('mch_rev')).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.trackUsageBySubject('mch_rev', { costCents: 1 })).toEqual({ success: false, reason: 'revoked' });
      expect((await keyRow(db, ak, expId)).spent_micros).toBe('0');
      expect((await keyRow(db, ak, revId)).spent_micros).toBe('0');
      // A revoked subject stays revoked: ensureSubject does not bring it back.
      await ak.ensureSubject('mch_rev', { budgetCents: 10 });
      expect(await ak.validateBySubject('mch_rev')).toEqual({ valid: false, reason: 'revoked' });
    });

    it("error: an unknown subject is 'invalid' ('invalid_key' to charge), and a subject is not a bearer key", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      expect(await ak.validateBySubject('mch_nobody')).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.trackUsageBySubject('mch_nobody', { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
      await ak.ensureSubject('mch_1', { budgetCents: 10 });
      expect(await ak.validateBySubject('MCH_1')).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.validate('mch_1')).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.validate('ak_mch_1')).toEqual({ valid: false, reason: 'invalid' });
      expect(await keyCount(db, ak)).toBe(1);
    });
  });

  describe('subjects (ensureSubject)', () => {
    it('happy: reserveBySubject holds against the subject row; trackUsageBySubject and commit see the hold', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.ensureSubject('mch_1', { budgetCents: 100 });
      const h = reserved(await ak.reserveBySubject('mch_1', { costCents: 40, idempotencyKey: 'sub-h' }));
      expect(h.budgetRemainingCents).toBe(60);
      expect(valid(await ak.validateBySubject('mch_1'))).toMatchObject({ accountId: 'mch_1', budgetHeldCents: 40, budgetRemainingCents: 60 });
      expect(await ak.trackUsageBySubject('mch_1', { costCents: 60.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded', budgetRemainingCents: 60 });
      expect(await ak.trackUsageBySubject('mch_1', { costCents: 60, idempotencyKey: 'sub-c' })).toEqual({ success: true, budgetUsedCents: 60, budgetRemainingCents: 0 });
      expect(await ak.trackUsageBySubject('mch_1', { costCents: 60, idempotencyKey: 'sub-c' })).toMatchObject({ success: true, replayed: true, budgetUsedCents: 60 });
      expect(await ak.reserveBySubject('mch_1', { costCents: 40, idempotencyKey: 'sub-h' })).toMatchObject({ success: true, replayed: true, reservationId: h.reservationId });
      expect(await ak.commit(h.reservationId, { costCents: 30 })).toMatchObject({ success: true, releasedCents: 10, budgetUsedCents: 90, budgetRemainingCents: 10 });
      expect(valid(await ak.validateBySubject('mch_1'))).toMatchObject({ budgetUsedCents: 90, budgetHeldCents: 0, budgetRemainingCents: 10 });

      const subjectId = valid(await ak.validateBySubject('mch_1')).keyId;
      expect((await ledgerRows(db, ak)).map((r) => [r.key_id, r.account_id, r.kind, r.amount])).toEqual([
        [subjectId, 'mch_1', 'hold', 400_000],
        [subjectId, 'mch_1', 'charge', 600_000],
        [subjectId, 'mch_1', 'commit', 300_000],
      ]);
      await expectAuditOk(ak);
    });

    it("error: an unknown subject is 'invalid_key'; a bad subject or bad options throw", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.ensureSubject('mch_2', { budgetCents: 10 });
      const before = await tableState(db, ak);
      expect(await ak.reserveBySubject('mch_unknown', { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
      expect(await ak.reserveBySubject('mch_2', { costCents: -1 })).toEqual({ success: false, reason: 'invalid_cost' });
      await rejectsWith(() => ak.reserveBySubject('', { costCents: 1 }), 'invalid_argument', 'empty subject');
      await rejectsWith(() => ak.reserveBySubject(42 as never, { costCents: 1 }), 'invalid_argument', 'numeric subject');
      await rejectsWith(() => ak.reserveBySubject('mch_2', { costCents: 1, extra: 1 } as never), 'invalid_argument', 'unknown option');
      expect(await tableState(db, ak)).toBe(before);
      // A hold of a subject cannot be taken through a raw key path and vice versa: the subject is not a key.
      expect(await ak.reserve('mch_2', { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
    });
  });
});
