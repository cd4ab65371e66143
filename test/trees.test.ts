import express from 'express';
import request from 'supertest';
import { describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError, createAgentKeyRoutes } from '../src/index.js';
import { forEachDatabase } from './helpers/databases.js';
import { codeOf } from './helpers/errors.js';
import { rejectingPool } from './helpers/faults.js';
import { spentOf } from './helpers/results.js';
import { expectAuditOk, expectRefused } from './helpers/tables.js';
import { soon } from './helpers/wait.js';

/**
 * Delegation trees, on PostgreSQL and PGlite: create({ parentId }) and its attenuation rules
 * (a child never gets more than its parent), cascading revocation, listKeys and getKey, tables
 * of the @katrinalaszlo/agentkey package's shape, and POST /sdk-keys making children of the
 * caller. What a charge does up the tree is in tree-budgets.test.ts.
 */

describe('options checked without a database', () => {
  it('error: maxDepth must be a whole number from 0 to 100', () => {
    for (const maxDepth of [-1, 1.5, 101, '5', NaN, Infinity, true]) {
      expect(() => new AgentKey({ pool: rejectingPool() as never, maxDepth: maxDepth as never }), String(maxDepth)).toThrow(AgentKeyError);
    }
    expect(() => new AgentKey({ pool: rejectingPool() as never, maxDepth: 0 })).not.toThrow();
    expect(() => new AgentKey({ pool: rejectingPool() as never, maxDepth: 100 })).not.toThrow();
  });

  it('error: a broken pool fails listKeys, getKey and the account calls with storage_error', async () => {
    const ak = new AgentKey({ pool: rejectingPool() as never });
    expect(await codeOf(ak.listKeys({ accountId: 'a' }))).toBe('storage_error');
    expect(await codeOf(ak.getKey(1))).toBe('storage_error');
    expect(await codeOf(ak.setAccountBudget('a', { budgetCents: 5 }))).toBe('storage_error');
    expect(await codeOf(ak.getAccountBudget('a'))).toBe('storage_error');
    expect(await codeOf(ak.clearAccountBudget('a'))).toBe('storage_error');
    expect(await codeOf(ak.create({ accountId: 'a', parentId: 1 }))).toBe('storage_error');
  });
});

forEachDatabase((getDb) => {
  describe('create({ parentId })', () => {
    it('happy: a child inherits scopes and expiry when not given, not the budget; depth and parentId are recorded', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc', scopes: ['proxy.*', 'usage.read'], expiresIn: '2h', budgetCents: 500, budgetPeriod: 'month' });
      const child = await ak.create({ accountId: 'acc', parentId: root.id });
      expect(child.expiresAt).toBe(root.expiresAt);
      const info = await ak.getKey(child.id);
      expect(info).toMatchObject({
        id: child.id,
        accountId: 'acc',
        parentId: root.id,
        depth: 1,
        scopes: ['proxy.*', 'usage.read'],
        expiresAt: root.expiresAt,
        budgetCents: null,
        budgetPeriod: null,
        status: 'active',
      });
      expect(await ak.getKey(root.id)).toMatchObject({ parentId: null, depth: 0 });
      // Narrower choices are kept as given; a grandchild goes one level deeper.
      const narrow = await ak.create({ accountId: 'acc', parentId: String(child.id), scopes: ['proxy.chat'], expiresIn: '1h', budgetCents: 500 });
      const n = await ak.getKey(narrow.id);
      expect(n).toMatchObject({ parentId: child.id, depth: 2, scopes: ['proxy.chat'], budgetCents: 500 });
      expect(new Date(n!.expiresAt!).getTime()).toBeLessThan(new Date(root.expiresAt!).getTime());
      const v = await ak.validate(narrow.key);
      expect(v).toMatchObject({ valid: true, keyId: narrow.id, scopes: ['proxy.chat'] });
      expect(ak.hasScope(v, 'proxy.chat')).toBe(true);
      expect(ak.hasScope(v, 'proxy.embed')).toBe(false);
      // A numeric account id matches its text form.
      const numeric = await ak.create({ accountId: 42, budgetCents: 10 });
      const numChild = await ak.create({ accountId: '42', parentId: numeric.id });
      expect(await ak.getKey(numChild.id)).toMatchObject({ parentId: numeric.id, accountId: '42' });
      expect((await ak.create({ accountId: 42, parentId: numChild.id })).id).toBeGreaterThan(numChild.id);
      // A root without expiry lets children choose any expiry, or none.
      const open = await ak.create({ accountId: 'acc' });
      expect((await ak.create({ accountId: 'acc', parentId: open.id, expiresIn: '400d' })).expiresAt).not.toBeNull();
      expect((await ak.create({ accountId: 'acc', parentId: open.id })).expiresAt).toBeNull();
      await expectAuditOk(ak);
    });

    it('security: scopes never widen (admin, *, wildcards), and refusals write nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const wild = await ak.create({ accountId: 'acc', scopes: ['proxy.*'] });
      for (const scopes of [['proxy'], ['billing.read'], ['*'], ['admin'], null, ['proxy.chat', 'billing.read'], ['proxy.*', 'usage.read'], ['prox.*'], ['proxyx.chat']]) {
        await expectRefused(db, ak, () => ak.create({ accountId: 'acc', parentId: wild.id, scopes }), 'scope_not_allowed', JSON.stringify(scopes));
      }
      for (const scopes of [['proxy.chat'], ['proxy.x.*'], ['proxy.*'], ['proxy.chat', 'proxy.embed.v2'], []]) {
        const child = await ak.create({ accountId: 'acc', parentId: wild.id, scopes });
        expect((await ak.getKey(child.id))!.scopes, JSON.stringify(scopes)).toEqual(scopes);
      }
      // A wildcard child's own children are bounded by the child, not the root.
      const sub = await ak.create({ accountId: 'acc', parentId: wild.id, scopes: ['proxy.x.*'] });
      await expectRefused(db, ak, () => ak.create({ accountId: 'acc', parentId: sub.id, scopes: ['proxy.chat'] }), 'scope_not_allowed');
      await expectRefused(db, ak, () => ak.create({ accountId: 'acc', parentId: sub.id, scopes: ['proxy.*'] }), 'scope_not_allowed');
      const subsub = await ak.create({ accountId: 'acc', parentId: sub.id, scopes: ['proxy.x.y'] });
      const v = await ak.validate(subsub.key);
      expect(ak.hasScope(v, 'proxy.x.y')).toBe(true);
      expect(ak.hasScope(v, 'proxy.x.z')).toBe(false);
      // A plain-scope parent grants only what it holds.
      const plain = await ak.create({ accountId: 'acc', scopes: ['proxy.chat'] });
      for (const scopes of [['proxy.*'], ['proxy.chat.*'], ['*'], ['admin'], null]) {
        await expectRefused(db, ak, () => ak.create({ accountId: 'acc', parentId: plain.id, scopes }), 'scope_not_allowed', JSON.stringify(scopes));
      }
      // 'admin', '*' and unlimited (null) parents may mint anything, including admin and null.
      for (const parentScopes of [['admin'], ['*'], null, ['usage.read', '*']]) {
        const p = await ak.create({ accountId: 'acc', scopes: parentScopes });
        for (const scopes of [['admin'], ['*'], null, ['billing.write'], ['x.*']]) {
          const c = await ak.create({ accountId: 'acc', parentId: p.id, scopes });
          expect((await ak.getKey(c.id))!.scopes, `${JSON.stringify(parentScopes)} -> ${JSON.stringify(scopes)}`).toEqual(scopes);
        }
      }
      // A '*' key can do anything; validScopes still applies to children.
      const star = await ak.validate((await ak.create({ accountId: 'acc', scopes: ['*'] })).key);
      expect(ak.hasScope(star, 'billing.write')).toBe(true);
      const strict = await db.agentKey({ validScopes: ['proxy.*', 'proxy.chat'] });
      const sp = await strict.create({ accountId: 'acc', scopes: ['proxy.*'] });
      expect(await codeOf(strict.create({ accountId: 'acc', parentId: sp.id, scopes: ['proxy.embed'] }))).toBe('invalid_scope');
      await strict.create({ accountId: 'acc', parentId: sp.id, scopes: ['proxy.chat'] });
    });

    it('security: expiry may not pass the parent (later, or none under an expiring parent)', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const parent = await ak.create({ accountId: 'acc', expiresIn: '1h' });
      const cases: Record<string, unknown>[] = [
        { expiresIn: '2h' },
        { expiresIn: null },
        { expiresAt: null },
        { expiresAt: new Date(new Date(parent.expiresAt!).getTime() + 1_000) },
        { expiresIn: '1mo' },
      ];
      for (const extra of cases) {
        await expectRefused(db, ak, () => ak.create({ accountId: 'acc', parentId: parent.id, ...extra }), 'expiry_exceeds_parent', JSON.stringify(extra));
      }
      const same = await ak.create({ accountId: 'acc', parentId: parent.id, expiresAt: parent.expiresAt! });
      expect(same.expiresAt).toBe(parent.expiresAt);
      const sooner = await ak.create({ accountId: 'acc', parentId: parent.id, expiresIn: '30m' });
      expect(new Date(sooner.expiresAt!).getTime()).toBeLessThan(new Date(parent.expiresAt!).getTime());
      // The inherited expiry binds the grandchild too.
      await expectRefused(db, ak, () => ak.create({ accountId: 'acc', parentId: sooner.id, expiresIn: '45m' }), 'expiry_exceeds_parent');
    });

    it('security: a budget may not exceed the parent; unlimited and equal budgets are allowed', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const parent = await ak.create({ accountId: 'acc', budgetCents: 1000 });
      await expectRefused(db, ak, () => ak.create({ accountId: 'acc', parentId: parent.id, budgetCents: 1000.01 }), 'budget_exceeds_parent');
      await expectRefused(db, ak, () => ak.create({ accountId: 'acc', parentId: parent.id, budgetCents: 5000, budgetPeriod: 'day' }), 'budget_exceeds_parent');
      const equal = await ak.create({ accountId: 'acc', parentId: parent.id, budgetCents: 1000 });
      const unlimited = await ak.create({ accountId: 'acc', parentId: parent.id, budgetCents: null });
      expect(await ak.getKey(equal.id)).toMatchObject({ budgetCents: 1000 });
      expect(await ak.getKey(unlimited.id)).toMatchObject({ budgetCents: null, remainingCents: null });
      const small = await ak.create({ accountId: 'acc', parentId: equal.id, budgetCents: 10 });
      await expectRefused(db, ak, () => ak.create({ accountId: 'acc', parentId: small.id, budgetCents: 11 }), 'budget_exceeds_parent');
      const free = await ak.create({ accountId: 'acc' });
      expect((await ak.create({ accountId: 'acc', parentId: free.id, budgetCents: 900_000 })).id).toBeGreaterThan(0);
    });

    it('error: other account, unknown parent, revoked or expired parent, and bad parentId types; nothing written', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const parent = await ak.create({ accountId: 'acc' });
      await expectRefused(db, ak, () => ak.create({ accountId: 'other', parentId: parent.id }), 'invalid_argument');
      await expectRefused(db, ak, () => ak.create({ accountId: 'acc', parentId: 99_999_999 }), 'parent_not_found');
      for (const parentId of [0, -1, 1.5, 'abc', '', '1e3', {}, [], true, NaN, Number.MAX_SAFE_INTEGER + 2]) {
        await expectRefused(db, ak, () => ak.create({ accountId: 'acc', parentId: parentId as never }), 'invalid_argument', String(parentId));
      }
      const revoked = await ak.create({ accountId: 'acc' });
      await ak.revoke(revoked.id);
      await expectRefused(db, ak, () => ak.create({ accountId: 'acc', parentId: revoked.id }), 'parent_inactive');
      const expiring = await ak.create({ accountId: 'acc', expiresIn: '1h' });
      const under = await ak.create({ accountId: 'acc', parentId: expiring.id });
      await db.query(`UPDATE ${ak.tableName} SET expires_at = now() - interval '1 second' WHERE id = $1`, [expiring.id]);
      await expectRefused(db, ak, () => ak.create({ accountId: 'acc', parentId: expiring.id }), 'parent_inactive');
      // The child is still unexpired itself, but its expired ancestor makes it inactive.
      await expectRefused(db, ak, () => ak.create({ accountId: 'acc', parentId: under.id, expiresIn: '1m' }), 'parent_inactive');
      // parentId null or undefined makes a root key.
      const root = await ak.create({ accountId: 'acc', parentId: null });
      expect(await ak.getKey(root.id)).toMatchObject({ parentId: null, depth: 0 });
    });

    it('error: trees deeper than maxDepth are refused (default 5; custom 1 and 0)', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      let parent = (await ak.create({ accountId: 'acc' })).id;
      for (let depth = 1; depth <= 5; depth++) {
        parent = (await ak.create({ accountId: 'acc', parentId: parent })).id;
        expect((await ak.getKey(parent))!.depth).toBe(depth);
      }
      await expectRefused(db, ak, () => ak.create({ accountId: 'acc', parentId: parent }), 'depth_exceeded');

      const shallow = await db.agentKey({ maxDepth: 1 });
      const r = await shallow.create({ accountId: 'acc' });
      const c = await shallow.create({ accountId: 'acc', parentId: r.id });
      await expectRefused(db, shallow, () => shallow.create({ accountId: 'acc', parentId: c.id }), 'depth_exceeded');
      expect((await shallow.create({ accountId: 'acc', parentId: r.id })).id).toBeGreaterThan(c.id);

      const flat = await db.agentKey({ maxDepth: 0 });
      const f = await flat.create({ accountId: 'acc' });
      await expectRefused(db, flat, () => flat.create({ accountId: 'acc', parentId: f.id }), 'depth_exceeded');
    });
  });

  describe('revocation cascades', () => {
    it('happy: revoking a key revokes its whole subtree at once; its ancestors and siblings keep working', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc' });
      const a = await ak.create({ accountId: 'acc', parentId: root.id });
      const b = await ak.create({ accountId: 'acc', parentId: root.id });
      const a1 = await ak.create({ accountId: 'acc', parentId: a.id });
      const a2 = await ak.create({ accountId: 'acc', parentId: a.id });
      const a11 = await ak.create({ accountId: 'acc', parentId: a1.id });
      const hold = await ak.reserve(a11.key, { costCents: 5 });
      expect(await ak.revoke(a.id)).toBe(true);
      const all = await ak.listKeys({ accountId: 'acc', includeRevoked: true });
      const byId = new Map(all.map((k) => [k.id, k]));
      const sub = [a, a1, a2, a11];
      for (const k of sub) {
        expect(byId.get(k.id)).toMatchObject({ status: 'revoked', revokedAt: expect.any(String) });
        expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'revoked' });
        expect(await ak.trackUsage(k.key, { costCents: 1 })).toEqual({ success: false, reason: 'revoked' });
        expect(await ak.reserve(k.key, { costCents: 1 })).toEqual({ success: false, reason: 'revoked' });
      }
      // One statement: one revocation time for the whole subtree.
      expect(new Set(sub.map((k) => byId.get(k.id)!.revokedAt)).size).toBe(1);
      for (const k of [root, b]) {
        expect(byId.get(k.id)).toMatchObject({ status: 'active', revokedAt: null });
        expect(await ak.validate(k.key)).toMatchObject({ valid: true });
        expect(await ak.trackUsage(k.key, { costCents: 1 })).toMatchObject({ success: true });
      }
      expect((await ak.listKeys({ accountId: 'acc' })).map((k) => k.id)).toEqual([root.id, b.id]);
      // A hold taken before the revocation can still be released, and revoking again does nothing.
      if (!hold.success) throw new Error('hold failed');
      expect(await ak.release(hold.reservationId)).toMatchObject({ success: true, releasedCents: 5 });
      expect(await ak.revoke(a.id)).toBe(false);
      expect(await ak.revoke(a11.id)).toBe(false);
      expect(await ak.revoke(root.id)).toBe(true);
      expect(await ak.validate(b.key)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.listKeys({ accountId: 'acc' })).toEqual([]);
      await expectAuditOk(ak);
    });

    it("security: revoke(id, account, { by }) keeps a key inside its own subtree; a root key reaches its account's other trees", async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc' });
      const a = await ak.create({ accountId: 'acc', parentId: root.id });
      const b = await ak.create({ accountId: 'acc', parentId: root.id });
      const a1 = await ak.create({ accountId: 'acc', parentId: a.id });
      const other = await ak.create({ accountId: 'acc' });
      const stranger = await ak.create({ accountId: 'elsewhere' });
      // up the tree, sideways, and into another root's tree: refused, nothing revoked
      for (const [by, target] of [[a, root], [a, b], [a1, a], [a1, b], [a, other]] as const) {
        await expect(ak.revoke(target.id, 'acc', { by: by.id })).rejects.toMatchObject({
          code: 'key_outside_tree',
          message: `Key ${by.id} may revoke only itself and its own descendants; key ${target.id} is not one of them.`,
        });
      }
      for (const k of [root, a, b, a1, other]) expect(await ak.validate(k.key)).toMatchObject({ valid: true });
      // another account's key is no match, whoever asks
      expect(await ak.revoke(stranger.id, 'acc', { by: root.id })).toBe(false);
      expect(await ak.validate(stranger.key)).toMatchObject({ valid: true });
      // a root key reaches another root's tree in its account
      expect(await ak.revoke(other.id, 'acc', { by: root.id })).toBe(true);
      // down the tree, and itself
      expect(await ak.revoke(a1.id, 'acc', { by: a.id })).toBe(true);
      expect(await ak.revoke(a.id, 'acc', { by: a.id })).toBe(true);
      expect(await ak.revoke(a.id, 'acc', { by: a.id })).toBe(false);
      expect(await ak.validate(b.key)).toMatchObject({ valid: true });
      // bad input changes nothing
      await expect(ak.revoke(b.id, 'acc', { by: 'x' })).rejects.toMatchObject({ code: 'invalid_argument' });
      await expect(ak.revoke(b.id, 'acc', { by: 999_999 })).rejects.toMatchObject({ code: 'invalid_argument', message: expect.stringMatching(/No key has id 999999/) });
      await expect(ak.revoke(b.id, 'acc', { bye: 1 } as never)).rejects.toMatchObject({ code: 'invalid_argument' });
      expect(await ak.validate(b.key)).toMatchObject({ valid: true });
    });

    it('happy: an ancestor past its expiry makes every descendant expired on the next validate and refuses their charges', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const root = await ak.create({ accountId: 'acc', expiresIn: '1h' });
      const mid = await ak.create({ accountId: 'acc', parentId: root.id });
      const leaf = await ak.create({ accountId: 'acc', parentId: mid.id, expiresIn: '30m' });
      const other = await ak.create({ accountId: 'acc' });
      const hold = await ak.reserve(leaf.key, { costCents: 2 });
      expect(await ak.validate(leaf.key)).toMatchObject({ valid: true });
      await db.query(`UPDATE ${ak.tableName} SET expires_at = now() - interval '1 second' WHERE id = $1`, [mid.id]);
      // The leaf was validated (and may be cached): a plain SQL edit reaches the cache through LISTEN/NOTIFY, a few ms later.
      expect(await soon(() => ak.validate(leaf.key), { valid: false, reason: 'expired' })).toEqual({ valid: false, reason: 'expired' });
      expect(await ak.validate(mid.key)).toEqual({ valid: false, reason: 'expired' });
      expect(await ak.validate(root.key)).toMatchObject({ valid: true });
      expect(await ak.validate(other.key)).toMatchObject({ valid: true });
      expect(await ak.trackUsage(leaf.key, { costCents: 1 })).toEqual({ success: false, reason: 'expired' });
      expect(await ak.reserve(leaf.key, { costCents: 1 })).toEqual({ success: false, reason: 'expired' });
      expect(await ak.getKey(leaf.id)).toMatchObject({ status: 'expired' });
      expect(await ak.trackUsage(root.key, { costCents: 1 })).toMatchObject({ success: true });
      // A revoked ancestor wins over an expired one.
      await ak.revoke(root.id);
      expect(await ak.validate(leaf.key)).toEqual({ valid: false, reason: 'revoked' });
      if (!hold.success) throw new Error('hold failed');
      expect(await ak.release(hold.reservationId)).toMatchObject({ success: true });
      await expectAuditOk(ak);
    });

    it('security: revoke with another account id is false and revokes nothing', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc' });
      const child = await ak.create({ accountId: 'acc', parentId: root.id });
      expect(await ak.revoke(root.id, 'intruder')).toBe(false);
      expect(await ak.revoke(child.id, 'intruder')).toBe(false);
      expect(await ak.revoke(99_999_999, 'acc')).toBe(false);
      expect((await ak.listKeys({ accountId: 'acc', includeRevoked: true })).map((k) => k.status)).toEqual(['active', 'active']);
      expect(await ak.validate(child.key)).toMatchObject({ valid: true });
      expect(await ak.revoke(root.id, 'acc')).toBe(true);
      expect(await ak.validate(child.key)).toEqual({ valid: false, reason: 'revoked' });
      await expectAuditOk(ak);
    });

    it('concurrency: revoking while children charge leaves no child charging afterwards, and no deadlock', async () => {
      const ak = await getDb().agentKey();
      const root = await ak.create({ accountId: 'acc', budgetCents: 100_000 });
      const kids = await Promise.all([0, 1, 2, 3].map(() => ak.create({ accountId: 'acc', parentId: root.id })));
      const grand = await Promise.all(kids.map((k) => ak.create({ accountId: 'acc', parentId: k.id })));
      const keys = [...kids, ...grand];
      const work = Array.from({ length: 80 }, (_, i) => ak.trackUsage(keys[i % keys.length]!.key, { costCents: 1 }));
      const revoked = ak.revoke(root.id);
      const results = await Promise.all(work);
      expect(await revoked).toBe(true);
      for (const r of results) expect(r.success || (r as { reason: string }).reason === 'revoked').toBe(true);
      const ok = results.filter((r) => r.success).length;
      expect(await spentOf(ak, root.id)).toBe(ok);
      for (const k of keys) expect(await ak.trackUsage(k.key, { costCents: 1 })).toEqual({ success: false, reason: 'revoked' });
      await expectAuditOk(ak);
    });
  });

  describe('listKeys and getKey', () => {
    it('happy: no secret or hash; filters accountId, parentId, includeRevoked and limit; spent, held and remaining', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const root = await ak.create({ accountId: 'acc', name: 'root', budgetCents: 100, scopes: ['proxy.*'], delegatedBy: 'alice' });
      const c1 = await ak.create({ accountId: 'acc', parentId: root.id, budgetCents: 50, budgetPeriod: 'day', name: 'c1' });
      const c2 = await ak.create({ accountId: 'acc', parentId: root.id });
      const g = await ak.create({ accountId: 'acc', parentId: c1.id });
      const other = await ak.create({ accountId: 'other' });
      await ak.trackUsage(g.key, { costCents: 10 });
      await ak.trackUsage(c1.key, { costCents: 5 });
      await ak.reserve(c2.key, { costCents: 20 });
      await ak.revoke(c2.id);

      const listed = await ak.listKeys({ accountId: 'acc', includeRevoked: true });
      expect(listed.map((k) => k.id)).toEqual([root.id, c1.id, c2.id, g.id]);
      const hashes = await db.query<{ key_hash: string }>(`SELECT key_hash FROM ${ak.tableName}`);
      const text = JSON.stringify([listed, await ak.getKey(root.id)]);
      for (const secret of [root.key, c1.key, c2.key, g.key, ...hashes.map((h) => h.key_hash)]) expect(text).not.toContain(secret);
      for (const k of listed) {
        expect(Object.keys(k).sort()).toEqual(
          [
            'id', 'accountId', 'name', 'prefix', 'scopes', 'status', 'parentId', 'depth', 'budgetCents', 'spentCents', 'heldCents',
            'remainingCents', 'overageCents', 'budgetPeriod', 'budgetResetAt', 'expiresAt', 'revokedAt', 'createdAt', 'lastUsedAt', 'delegatedBy', 'externalSubject', 'metadata', 'budgets', 'alerts',
            'rateLimit', 'concurrency',
          ].sort(),
        );
        const raw = new Map([root, c1, c2, g].map((c) => [c.id, c.key])).get(k.id)!;
        expect(k.prefix && k.prefix.length >= 4 && raw.startsWith(k.prefix) && k.prefix.length < raw.length).toBe(true);
      }
      expect(listed[0]).toMatchObject({ id: root.id, name: 'root', scopes: ['proxy.*'], status: 'active', parentId: null, depth: 0, budgetCents: 100, spentCents: 15, heldCents: 20, remainingCents: 65, delegatedBy: 'alice' });
      expect(listed[1]).toMatchObject({ id: c1.id, name: 'c1', parentId: root.id, depth: 1, budgetCents: 50, budgetPeriod: 'day', spentCents: 15, heldCents: 0, remainingCents: 35, scopes: ['proxy.*'] });
      expect(listed[2]).toMatchObject({ id: c2.id, status: 'revoked', spentCents: 0, heldCents: 20, remainingCents: null });
      expect(listed[3]).toMatchObject({ id: g.id, parentId: c1.id, depth: 2, spentCents: 10, remainingCents: null, lastUsedAt: expect.any(String) });
      expect(await ak.getKey(g.id)).toEqual(listed[3]);

      expect((await ak.listKeys({ accountId: 'acc' })).map((k) => k.id)).toEqual([root.id, c1.id, g.id]);
      expect((await ak.listKeys({ accountId: 'acc', parentId: root.id })).map((k) => k.id)).toEqual([c1.id]);
      expect((await ak.listKeys({ accountId: 'acc', parentId: String(root.id), includeRevoked: true })).map((k) => k.id)).toEqual([c1.id, c2.id]);
      expect((await ak.listKeys({ accountId: 'acc', parentId: c1.id })).map((k) => k.id)).toEqual([g.id]);
      expect(await ak.listKeys({ accountId: 'acc', parentId: g.id })).toEqual([]);
      expect(await ak.listKeys({ accountId: 'other', parentId: root.id })).toEqual([]);
      expect((await ak.listKeys({ accountId: 'acc', limit: 2, includeRevoked: true })).map((k) => k.id)).toEqual([root.id, c1.id]);
      expect((await ak.listKeys({ accountId: 'other' })).map((k) => k.id)).toEqual([other.id]);
      expect(await ak.listKeys({ accountId: 'nobody' })).toEqual([]);
      expect(await ak.getKey(99_999_999)).toBeNull();
      expect(await ak.getKey(String(root.id))).toMatchObject({ id: root.id });
      await expectAuditOk(ak);
    });

    it('happy: a key created while its parent was being revoked is listed as revoked, not as live', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const root = await ak.create({ accountId: 'acc' });
      const child = await ak.create({ accountId: 'acc', parentId: root.id });
      // As if the child's insert committed just after the cascade: only the parent row is marked.
      await db.query(`UPDATE ${ak.tableName} SET revoked_at = now() WHERE id = $1`, [root.id]);
      expect(await ak.validate(child.key)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.listKeys({ accountId: 'acc' })).toEqual([]);
      expect(await ak.listKeys({ accountId: 'acc', parentId: root.id })).toEqual([]);
      expect((await ak.listKeys({ accountId: 'acc', includeRevoked: true })).map((k) => [k.id, k.status])).toEqual([
        [root.id, 'revoked'],
        [child.id, 'revoked'],
      ]);
      // Revoking the parent again marks the straggler.
      expect(await ak.revoke(root.id)).toBe(true);
      expect((await ak.getKey(child.id))!.revokedAt).not.toBeNull();
    });

    it('error: bad inputs throw invalid_argument', async () => {
      const ak = await getDb().agentKey();
      const bad: unknown[] = [
        undefined,
        null,
        { accountId: '' },
        { accountId: 'acc', includeRevoked: 'yes' },
        { accountId: 'acc', includeRevoked: 1 },
        { accountId: 'acc', limit: 0 },
        { accountId: 'acc', limit: 10_001 },
        { accountId: 'acc', limit: 1.5 },
        { accountId: 'acc', limit: '5' },
        { accountId: 'acc', parentId: 'x' },
        { accountId: 'acc', parentId: 0 },
        { accountId: 'acc', parentId: null },
        { accountId: 'acc', status: 'active' },
      ];
      for (const q of bad) expect(await codeOf(() => ak.listKeys(q as never)), JSON.stringify(q)).toBe('invalid_argument');
      for (const id of [0, -1, 'x', 1.5, null, undefined, {}]) expect(await codeOf(() => ak.getKey(id as never)), String(id)).toBe('invalid_argument');
    });

    it('happy: without accountId, listKeys lists every account\'s keys in id order', async () => {
      const ak = await getDb().agentKey();
      const a = await ak.create({ accountId: 'acc_all_1' });
      const b = await ak.create({ accountId: 'acc_all_2' });
      const c = await ak.create({ accountId: 'acc_all_1', parentId: a.id });
      expect((await ak.listKeys({})).map((k) => [k.id, k.accountId])).toEqual([[a.id, 'acc_all_1'], [b.id, 'acc_all_2'], [c.id, 'acc_all_1']]);
      expect((await ak.listKeys({ parentId: a.id })).map((k) => k.id)).toEqual([c.id]);
    });
  });

  describe('legacy tables', () => {
    it("happy: trees, holds, ceilings and audit work on the package's table with an INTEGER (SERIAL) id", async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(`CREATE TABLE ${table} (id SERIAL PRIMARY KEY, account_id TEXT NOT NULL, key_hash TEXT NOT NULL, key_prefix TEXT,
        name TEXT, created_at TIMESTAMPTZ DEFAULT now(), last_used_at TIMESTAMPTZ, revoked_at TIMESTAMPTZ)`);
      const ak = new AgentKey({ pool: db.pool as never, tableName: table });
      await ak.migrate();
      const root = await ak.create({ accountId: 'acc', budgetCents: 100 });
      const mid = await ak.create({ accountId: 'acc', parentId: root.id });
      const leaf = await ak.create({ accountId: 'acc', parentId: mid.id });
      await ak.setAccountBudget('acc', { budgetCents: 90 });
      expect(await ak.validate(leaf.key)).toMatchObject({ valid: true, keyId: leaf.id });
      const hold = await ak.reserve(leaf.key, { costCents: 50 });
      expect(hold).toMatchObject({ success: true });
      expect(await ak.getKey(root.id)).toMatchObject({ heldCents: 50, remainingCents: 50 });
      expect(await ak.trackUsage(mid.key, { costCents: 41 })).toMatchObject({ success: false, limitedBy: { kind: 'account', accountId: 'acc' } });
      expect(await ak.trackUsage(mid.key, { costCents: 40 })).toMatchObject({ success: true });
      expect((await ak.listKeys({ accountId: 'acc' })).map((k) => [k.id, k.spentCents, k.heldCents])).toEqual([
        [root.id, 40, 50],
        [mid.id, 40, 50],
        [leaf.id, 0, 50],
      ]);
      await expectAuditOk(ak);
    });
  });

  describe('POST /sdk-keys makes children of the caller', () => {
    it('happy: the child counts against the caller, is listed under it, and revoking the caller revokes it', async () => {
      const ak = await getDb().agentKey();
      const app = express();
      app.use(createAgentKeyRoutes(ak));
      const caller = await ak.create({ accountId: 'acc', scopes: ['proxy.*'], budgetCents: 100, budgetPeriod: 'month', expiresIn: '1h' });
      const auth = { Authorization: `Bearer ${caller.key}` };
      // A caller with a budget and an expiry must name both for its child (403 otherwise): nothing is inherited silently.
      expect((await request(app).post('/sdk-keys').set(auth).send({ scopes: ['proxy.chat'], budget_cents: 80, budget_period: 'day' })).status).toBe(403);
      const res = await request(app).post('/sdk-keys').set(auth).send({ scopes: ['proxy.chat'], budget_cents: 80, budget_period: 'day', expires_in: '30m' });
      expect(res.status).toBe(201);
      const child = res.body as { key: string; id: number };
      const childInfo = (await ak.getKey(child.id))!;
      expect(childInfo).toMatchObject({ parentId: caller.id, depth: 1, scopes: ['proxy.chat'], budgetCents: 80, budgetPeriod: 'day' });
      expect(Date.parse(childInfo.expiresAt!)).toBeLessThanOrEqual(Date.parse(caller.expiresAt!));
      expect((await ak.listKeys({ accountId: 'acc', parentId: caller.id })).map((k) => k.id)).toEqual([child.id]);
      // Wider asks keep the package's status codes.
      expect((await request(app).post('/sdk-keys').set(auth).send({ scopes: ['billing.read'], budget_cents: 10, expires_in: '30m' })).status).toBe(403);
      expect((await request(app).post('/sdk-keys').set(auth).send({ budget_cents: 101, expires_in: '30m' })).status).toBe(403);
      expect((await request(app).post('/sdk-keys').set(auth).send({ budget_cents: 10, expires_in: '2h' })).status).toBe(403);

      // A grandchild made by the child through the route counts against both.
      const gres = await request(app).post('/sdk-keys').set({ Authorization: `Bearer ${child.key}` }).send({ budget_cents: 30, expires_in: '20m' });
      expect(gres.status).toBe(201);
      expect(await ak.getKey(gres.body.id)).toMatchObject({ parentId: child.id, depth: 2, scopes: ['proxy.chat'], budgetCents: 30 });
      expect(await ak.trackUsage(gres.body.key, { costCents: 30 })).toMatchObject({ success: true });
      expect(await ak.trackUsage(child.key, { costCents: 50 })).toMatchObject({ success: true, budgetUsedCents: 80 });
      expect(await ak.trackUsage(child.key, { costCents: 1 })).toMatchObject({ success: false, limitedBy: { kind: 'key', keyId: child.id } });
      expect(await ak.getKey(caller.id)).toMatchObject({ spentCents: 80, remainingCents: 20 });
      expect(await ak.trackUsage(caller.key, { costCents: 21 })).toMatchObject({ success: false, limitedBy: { kind: 'key', keyId: caller.id } });
      const sibling = await request(app).post('/sdk-keys').set(auth).send({ budget_cents: 100, expires_in: '30m' });
      expect(sibling.status).toBe(201);
      expect(await ak.getKey(sibling.body.id)).toMatchObject({ parentId: caller.id, budgetCents: 100, scopes: ['proxy.*'] });
      expect(await ak.trackUsage(sibling.body.key, { costCents: 21 })).toMatchObject({ success: false, limitedBy: { kind: 'ancestor', keyId: caller.id } });
      expect(await ak.trackUsage(sibling.body.key, { costCents: 20 })).toMatchObject({ success: true });

      // The caller revokes itself through the route: the children go with it.
      const del = await request(app).delete(`/sdk-keys/${caller.id}`).set(auth);
      expect(del.status).toBe(200);
      expect(await ak.validate(child.key)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.validate(sibling.body.key)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.validate(gres.body.key)).toEqual({ valid: false, reason: 'revoked' });
      expect((await request(app).get('/sdk-keys/me').set({ Authorization: `Bearer ${child.key}` })).status).toBe(401);
      await expectAuditOk(ak);
    });
  });
});
