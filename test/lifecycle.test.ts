import { describe, expect, it } from 'vitest';
import { AgentKey, MAX_CENTS } from '../src/index.js';
import { forEachDatabase } from './helpers/databases.js';
import { rejectsWith } from './helpers/errors.js';
import { sha256Hex } from './helpers/package.js';
import { ISO, valid } from './helpers/results.js';
import { keyCount, keyRow, tableState } from './helpers/tables.js';

/**
 * A key's life through the package's API, on PostgreSQL and PGlite: create, validate,
 * trackUsage, hasScope and revoke as the @katrinalaszlo/agentkey package documents them, and
 * what is stored of a key (its hash and a short prefix, never the key).
 */

const PAGE_EXAMPLE = {
  accountId: 'acct_123',
  scopes: ['usage.read', 'proxy.chat'],
  budgetCents: 5000,
  budgetPeriod: 'month' as const,
  expiresIn: '7d',
  delegatedBy: 'user_456',
  name: 'sales-agent',
};

forEachDatabase((getDb) => {
  describe('the API of the @katrinalaszlo/agentkey package', () => {
    it('happy: create returns exactly { key, id, scopes, budgetCents, budgetPeriod, expiresAt }', async () => {
      const ak = await getDb().agentKey();
      const before = Date.now();
      const created = await ak.create(PAGE_EXAMPLE);
      const after = Date.now();
      expect(Object.keys(created).sort()).toEqual(['budgetCents', 'budgetPeriod', 'expiresAt', 'id', 'key', 'scopes']);
      expect(created).toMatchObject({ scopes: ['usage.read', 'proxy.chat'], budgetCents: 5000, budgetPeriod: 'month' });
      expect(created.key.startsWith('ak_')).toBe(true);
      expect(typeof created.id).toBe('number');
      expect(Number.isSafeInteger(created.id) && created.id > 0).toBe(true);
      expect(created.expiresAt).toMatch(ISO);
      const week = 7 * 86_400_000;
      expect(Date.parse(created.expiresAt!)).toBeGreaterThanOrEqual(before + week);
      expect(Date.parse(created.expiresAt!)).toBeLessThanOrEqual(after + week);

      const unbounded = await ak.create({ accountId: 'acct_123' });
      expect(unbounded).toMatchObject({ scopes: null, budgetCents: null, budgetPeriod: null, expiresAt: null });
      expect(unbounded.id).toBeGreaterThan(created.id);
      expect(unbounded.key).not.toBe(created.key);
    });

    it("happy: validate returns the package's fields (and a few more) for a valid key", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const created = await ak.create(PAGE_EXAMPLE);
      const result = await ak.validate(created.key);
      expect(result).toEqual({
        valid: true,
        id: created.id,
        keyId: created.id,
        accountId: 'acct_123',
        userId: null,
        name: 'sales-agent',
        scopes: ['usage.read', 'proxy.chat'],
        budgetCents: 5000,
        budgetUsedCents: 0,
        budgetRemainingCents: 5000,
        budgetHeldCents: 0,
        budgetPeriod: 'month',
        budgetResetAt: expect.stringMatching(ISO),
        expiresAt: created.expiresAt,
        delegatedBy: 'user_456',
      });
      // last_used_at is written in batches (every second, or on flush()), not by each validation.
      expect((await keyRow(db, ak, created.id)).last_used_at).toBeNull();
      await ak.flush();
      expect((await keyRow(db, ak, created.id)).last_used_at).not.toBeNull();

      // The package README's example: 1200 of 5000 spent.
      expect(await ak.trackUsage(created.key, { costCents: 1200 })).toEqual({
        success: true,
        budgetUsedCents: 1200,
        budgetRemainingCents: 3800,
      });
      expect(await ak.validate(created.key)).toMatchObject({ valid: true, budgetCents: 5000, budgetUsedCents: 1200, budgetRemainingCents: 3800, budgetHeldCents: 0 });
    });

    it('happy: a key without budget, scopes or expiry is unlimited', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 42 });
      const v = valid(await ak.validate(key));
      expect(String(v.accountId)).toBe('42'); // stored in the TEXT account_id column
      // A key without a name is 'default' to validate(); getKey() shows the row's null.
      expect(v).toMatchObject({ scopes: null, budgetCents: null, budgetUsedCents: 0, budgetRemainingCents: null, budgetPeriod: null, budgetResetAt: null, expiresAt: null, delegatedBy: null, name: 'default', userId: null });
      expect(await ak.getKey(v.id)).toMatchObject({ name: null, budgetCents: null });
      expect(await ak.trackUsage(key, { costCents: MAX_CENTS })).toEqual({ success: true, budgetUsedCents: MAX_CENTS, budgetRemainingCents: null });
      expect(ak.hasScope(v, 'anything.at.all')).toBe(true);
    });

    it("happy: trackUsage charges and refuses with 'budget_exceeded' at the cap, changing nothing", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      expect(await ak.trackUsage(key, { costCents: 15 })).toEqual({ success: true, budgetUsedCents: 15, budgetRemainingCents: 85 });
      const before = await tableState(db, ak);
      expect(await ak.trackUsage(key, { costCents: 85.0001 })).toEqual({
        success: false,
        reason: 'budget_exceeded',
        limitedBy: { kind: 'key', keyId: id, window: expect.any(String) },
        budgetUsedCents: 15,
        budgetRemainingCents: 85,
      });
      expect(await tableState(db, ak)).toBe(before);
      expect(await ak.trackUsage(key, { costCents: 85 })).toEqual({ success: true, budgetUsedCents: 100, budgetRemainingCents: 0 });
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      // A free call succeeds without figures and records nothing.
      const atCap = await tableState(db, ak);
      const entries = (await ak.ledger({ keyId: id })).length;
      expect(await ak.trackUsage(key, { costCents: 0 })).toEqual({ success: true });
      expect(await tableState(db, ak)).toBe(atCap);
      expect(await ak.ledger({ keyId: id })).toHaveLength(entries);
      expect((await keyRow(db, ak, id)).spent_micros).toBe('1000000');
      expect(await ak.getKey(id)).toMatchObject({ spentCents: 100, remainingCents: 0 });
      // A budget of zero allows free calls only.
      const free = await ak.create({ accountId: 'a', budgetCents: 0 });
      expect(await ak.trackUsage(free.key, { costCents: 0 })).toEqual({ success: true });
      expect(await ak.trackUsage(free.key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
    });

    it("error: invalid, expired and revoked keys: validate gives the reason, trackUsage charges nothing", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const other = await db.agentKey();
      const stranger = await other.create({ accountId: 'a' }); // well-formed, but not in ak's table
      expect(await ak.validate(stranger.key)).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.trackUsage(stranger.key, { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });

      const expiring = await ak.create({ accountId: 'a', budgetCents: 100, expiresIn: '2s' });
      await db.query(`UPDATE ${ak.tableName} SET expires_at = now() - interval '1 second' WHERE id = $1`, [expiring.id]);
      expect(await ak.validate(expiring.key)).toEqual({ valid: false, reason: 'expired' });
      expect(await ak.trackUsage(expiring.key, { costCents: 1 })).toEqual({ success: false, reason: 'expired' });
      expect((await keyRow(db, ak, expiring.id)).spent_micros).toBe('0');

      const revoked = await ak.create({ accountId: 'a', budgetCents: 100 });
      expect(await ak.revoke(revoked.id)).toBe(true);
      expect(await ak.validate(revoked.key)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.trackUsage(revoked.key, { costCents: 1 })).toEqual({ success: false, reason: 'revoked' });
      expect((await keyRow(db, ak, revoked.id)).spent_micros).toBe('0');
      expect((await keyRow(db, ak, revoked.id)).revoked_at).toBeInstanceOf(Date);
    });

    it("error: trackUsage refuses negative, NaN, infinite, non-numeric and missing costs with 'invalid_cost'", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const before = await tableState(db, ak);
      const costs: unknown[] = [-1, -0.0001, NaN, Infinity, -Infinity, '5e0', ' 0', '-5', null, undefined, 10n, {}, [], true, MAX_CENTS + 1];
      for (const costCents of costs) {
        expect(await ak.trackUsage(key, { costCents } as never), String(costCents)).toEqual({ success: false, reason: 'invalid_cost' });
      }
      for (const usage of [undefined, null, 5, 'cost', {}]) {
        expect(await ak.trackUsage(key, usage as never), JSON.stringify(usage)).toEqual({ success: false, reason: 'invalid_cost' });
      }
      expect(await tableState(db, ak)).toBe(before);
      expect(await ak.validate(key)).toMatchObject({ budgetUsedCents: 0 });
    });

    it('happy: hasScope with unlimited, admin, listed and unlisted scopes', async () => {
      const ak = await getDb().agentKey();
      const unlimited = valid(await ak.validate((await ak.create({ accountId: 'a', scopes: null })).key));
      const admin = valid(await ak.validate((await ak.create({ accountId: 'a', scopes: ['admin'] })).key));
      const listed = valid(await ak.validate((await ak.create({ accountId: 'a', scopes: ['usage.read', 'proxy.chat'] })).key));
      const none = valid(await ak.validate((await ak.create({ accountId: 'a', scopes: [] })).key));
      expect(ak.hasScope(unlimited, 'billing.write')).toBe(true);
      expect(ak.hasScope(admin, 'billing.write')).toBe(true);
      expect(ak.hasScope(listed, 'proxy.chat')).toBe(true);
      expect(ak.hasScope(listed, 'usage.read')).toBe(true);
      expect(ak.hasScope(listed, 'billing.write')).toBe(false);
      expect(ak.hasScope(listed, 'proxy')).toBe(false);
      expect(ak.hasScope(listed, 'proxy.chat.extra')).toBe(false);
      expect(ak.hasScope(listed, 'PROXY.CHAT')).toBe(false);
      expect(ak.hasScope(none, 'proxy.chat')).toBe(false);
    });

    it('security: hasScope is false for an invalid result or a non-string scope', async () => {
      const ak = await getDb().agentKey();
      const revoked = await ak.create({ accountId: 'a', scopes: null });
      await ak.revoke(revoked.id);
      const result = await ak.validate(revoked.key);
      expect(result).toEqual({ valid: false, reason: 'revoked' });
      expect(ak.hasScope(result, 'proxy.chat')).toBe(false);
      expect(ak.hasScope({ valid: false, reason: 'invalid' }, 'admin')).toBe(false);
      expect(ak.hasScope(null, 'proxy.chat')).toBe(false);
      expect(ak.hasScope(undefined, 'proxy.chat')).toBe(false);
      expect(ak.hasScope({ valid: 'true', scopes: null } as never, 'proxy.chat')).toBe(false);
      const unlimited = await ak.validate((await ak.create({ accountId: 'a' })).key);
      expect(ak.hasScope(unlimited, 123 as never)).toBe(false);
      expect(ak.hasScope(unlimited, undefined as never)).toBe(false);
    });

    it('happy: revoke returns true once, then false; unknown ids are false', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const a = await ak.create({ accountId: 'acct_1' });
      const b = await ak.create({ accountId: 'acct_1' });
      expect(await ak.revoke(a.id)).toBe(true);
      expect(await ak.revoke(a.id)).toBe(false);
      expect(await ak.revoke(String(b.id))).toBe(true); // an id from a URL
      expect(await ak.revoke(b.id + 1000)).toBe(false);
      expect(await ak.revoke(Number.MAX_SAFE_INTEGER)).toBe(false);
      expect(await keyCount(db, ak)).toBe(2); // soft revoke: the rows stay
    });

    it("security: revoke with another account's id does nothing and the key stays valid", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const mine = await ak.create({ accountId: 'acct_1' });
      const numeric = await ak.create({ accountId: 7 });
      const before = await tableState(db, ak);
      expect(await ak.revoke(mine.id, 'acct_2')).toBe(false);
      expect(await ak.revoke(mine.id, 'ACCT_1')).toBe(false);
      expect(await ak.revoke(numeric.id, 8)).toBe(false);
      expect(await tableState(db, ak)).toBe(before);
      expect(await ak.validate(mine.key)).toMatchObject({ valid: true });
      expect(await ak.revoke(mine.id, 'acct_1')).toBe(true);
      expect(await ak.revoke(numeric.id, 7)).toBe(true);
      expect(await ak.validate(mine.key)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.validate(numeric.key)).toEqual({ valid: false, reason: 'revoked' });
    });

    it('happy: a custom keyPrefix is used for minting and required for validation', async () => {
      const db = getDb();
      const ak = await db.agentKey({ keyPrefix: 'sk_live_' });
      const { key } = await ak.create({ accountId: 'a' });
      expect(key).toMatch(/^sk_live_[0-9A-Za-z]+$/);
      expect(await ak.validate(key)).toMatchObject({ valid: true });
      const sameTable = new AgentKey({ pool: db.pool, tableName: ak.tableName });
      expect(await sameTable.validate(key)).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.validate('ak_' + key.slice('sk_live_'.length))).toEqual({ valid: false, reason: 'invalid' });
    });

    it('happy: the default table is sdk_api_keys; custom and schema-qualified tables work', async () => {
      const db = getDb();
      const byDefault = new AgentKey({ pool: db.pool });
      await byDefault.migrate();
      const k1 = await byDefault.create({ accountId: 'a' });
      expect(await db.query(`SELECT id FROM sdk_api_keys WHERE id = $1`, [k1.id])).toHaveLength(1);

      const custom = new AgentKey({ pool: db.pool, tableName: 'my_agent_keys' });
      await custom.migrate();
      const k2 = await custom.create({ accountId: 'a' });
      expect(await db.query(`SELECT id FROM my_agent_keys WHERE id = $1`, [k2.id])).toHaveLength(1);
      expect(await custom.validate(k1.key)).toEqual({ valid: false, reason: 'invalid' }); // tables are separate

      await db.query('CREATE SCHEMA IF NOT EXISTS billing');
      const qualified = new AgentKey({ pool: db.pool, tableName: 'billing.agent_keys' });
      await qualified.migrate();
      const k3 = await qualified.create({ accountId: 'a', budgetCents: 10, budgetPeriod: 'day' });
      expect(await db.query(`SELECT id FROM billing.agent_keys WHERE id = $1`, [k3.id])).toHaveLength(1);
      expect(await qualified.validate(k3.key)).toMatchObject({ valid: true, budgetCents: 10 });
      const fn = await db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_proc p JOIN pg_namespace s ON s.oid = p.pronamespace
          WHERE p.proname = 'agentkey_next_reset' AND s.nspname = 'billing'`,
      );
      expect(Number(fn[0]!.n)).toBe(1);
    });

    it('security: validScopes refuses any scope not listed, and writes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey({ validScopes: ['usage.read', 'proxy.chat'] });
      const { key } = await ak.create({ accountId: 'a', scopes: ['usage.read'] });
      expect(await ak.validate(key)).toMatchObject({ valid: true, scopes: ['usage.read'] });
      const before = await tableState(db, ak);
      const refused: [string[], string][] = [
        [['billing.write'], 'billing.write'],
        [['usage.read', 'billing.write'], 'billing.write'],
        [['admin', 'billing.write', 'x.y'], 'billing.write, x.y'],
        [['usage.*'], 'usage.*'],
        [['USAGE.READ'], 'USAGE.READ'],
      ];
      for (const [scopes, listed] of refused) {
        const err = await rejectsWith(() => ak.create({ accountId: 'a', scopes }), 'invalid_scope', JSON.stringify(scopes));
        expect(err.message.startsWith(`Invalid scopes: ${listed} (`), err.message).toBe(true);
        await rejectsWith(() => ak.ensureSubject('mch_x', { scopes }), 'invalid_scope', JSON.stringify(scopes));
      }
      expect(await tableState(db, ak)).toBe(before);
      // 'admin' is always accepted, as in the package.
      const admin = await ak.create({ accountId: 'a', scopes: ['admin'] });
      expect(await ak.validate(admin.key)).toMatchObject({ valid: true, scopes: ['admin'] });
    });
  });

  describe('keys', () => {
    it('security: only the SHA-256 hash and a short non-secret prefix are stored', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const created = await ak.create({ accountId: 'a', name: 'n' });
      const rows = await db.query<{ j: string; key_hash: string; key_prefix: string }>(
        `SELECT row_to_json(t)::text AS j, key_hash, key_prefix FROM ${ak.tableName} t WHERE id = $1`,
        [created.id],
      );
      const row = rows[0]!;
      expect(row.key_hash).toBe(sha256Hex(created.key));
      expect(row.j).not.toContain(created.key);
      const secret = created.key.slice(row.key_prefix.length);
      expect(secret.length).toBeGreaterThanOrEqual(40);
      expect(created.key.startsWith(row.key_prefix)).toBe(true);
      for (let i = 0; i + 12 <= secret.length; i++) expect(row.j).not.toContain(secret.slice(i, i + 12));
    });

    it('security: the stored hash, or a key from another table, does not authenticate', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const created = await ak.create({ accountId: 'a' });
      const hash = sha256Hex(created.key);
      expect(await ak.validate(hash)).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.validate('ak_' + hash)).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.validateBySubject(hash)).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.validateBySubject(created.key)).toEqual({ valid: false, reason: 'invalid' });
    });

    it('security: every one-character typo of a real key is refused', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'a' });
      const next = (c: string) => (c === 'z' ? '0' : c === '9' ? 'A' : c === 'Z' ? 'a' : String.fromCharCode(c.charCodeAt(0) + 1));
      for (let i = 3; i < key.length; i++) {
        const typo = key.slice(0, i) + next(key[i]!) + key.slice(i + 1);
        expect(await ak.validate(typo), typo).toEqual({ valid: false, reason: 'invalid' });
      }
      expect(await ak.validate(key.slice(0, -1))).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.validate(key)).toMatchObject({ valid: true });
    });

    it("happy: a key minted by the @katrinalaszlo/agentkey package (prefix + hex, stored as its SHA-256) validates", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const legacy = 'ak_' + '7f3a9c'.repeat(8);
      await db.query(`INSERT INTO ${ak.tableName} (account_id, key_hash, key_prefix, budget_micros, budget_cents) VALUES ('acct_old', $1, 'ak_7f3a9c', 500000, 50)`, [
        sha256Hex(legacy),
      ]);
      expect(await ak.validate(legacy)).toMatchObject({ valid: true, accountId: 'acct_old', budgetCents: 50 });
      expect(await ak.trackUsage(legacy, { costCents: 0.03 })).toMatchObject({ success: true, budgetUsedCents: 0.03 });
    });

    it('security: minted keys are long, unique and carry the prefix', async () => {
      const ak = await getDb().agentKey();
      const keys = await Promise.all(Array.from({ length: 50 }, () => ak.create({ accountId: 'a' })));
      expect(new Set(keys.map((k) => k.key)).size).toBe(50);
      for (const { key } of keys) {
        // At least 192 random bits: 43 base62 characters of randomness plus a 6-character checksum.
        expect(key).toMatch(/^ak_[0-9A-Za-z]{49}$/);
      }
    });
  });
});
