import { expect, it } from 'vitest';
import { forEachDatabase } from './helpers/databases.js';

forEachDatabase((getDb) => {
  it('trees and ceilings', async () => {
    const ak = await getDb().agentKey();
    const root = await ak.create({ accountId: 'a', budgetCents: 1000, scopes: ['proxy.*', 'usage.read'] });
    const kids = await Promise.all([1, 2, 3, 4, 5].map(() => ak.create({ accountId: 'a', parentId: root.id, budgetCents: 1000, scopes: ['proxy.chat'] })));
    await expect(ak.create({ accountId: 'a', parentId: root.id, scopes: ['billing.write'] })).rejects.toMatchObject({ code: 'scope_not_allowed' });
    await expect(ak.create({ accountId: 'a', parentId: root.id, budgetCents: 1001 })).rejects.toMatchObject({ code: 'budget_exceeds_parent' });
    const results = await Promise.all(Array.from({ length: 200 }, (_, i) => ak.trackUsage(kids[i % 5]!.key, { costCents: 7 })));
    const ok = results.filter((r) => r.success).length;
    expect(ok).toBe(Math.floor(1000 / 7));
    const refused = results.find((r) => !r.success) as any;
    expect(refused.limitedBy).toEqual({ kind: 'ancestor', keyId: root.id });
    expect((await ak.getKey(root.id))!.spentCents).toBe(ok * 7);
    expect(await ak.audit()).toMatchObject({ ok: true });
    // ceiling
    const acct = await ak.setAccountBudget('b', { budgetCents: 500, budgetPeriod: 'month' });
    expect(acct).toMatchObject({ budgetCents: 500, spentCents: 0 });
    const keys = await Promise.all(Array.from({ length: 10 }, () => ak.create({ accountId: 'b', budgetCents: 100 })));
    const r2 = await Promise.all(Array.from({ length: 300 }, (_, i) => ak.trackUsage(keys[i % 10]!.key, { costCents: 3 })));
    expect(r2.filter((r) => r.success).length).toBe(Math.floor(500 / 3));
    expect((r2.find((r) => !r.success) as any).limitedBy).toEqual({ kind: 'account', accountId: 'b' });
    expect(await ak.getAccountBudget('b')).toMatchObject({ spentCents: 166 * 3 });
    expect(await ak.audit()).toMatchObject({ ok: true });
    // revoke cascade
    const grand = await ak.create({ accountId: 'a', parentId: kids[0]!.id });
    expect(await ak.revoke(root.id)).toBe(true);
    expect(await ak.validate(grand.key)).toEqual({ valid: false, reason: 'revoked' });
    expect((await ak.listKeys({ accountId: 'a', includeRevoked: true })).every((k) => k.status === 'revoked')).toBe(true);
    // depth
    let parent = (await ak.create({ accountId: 'c' })).id;
    for (let d = 1; d <= 5; d++) parent = (await ak.create({ accountId: 'c', parentId: parent })).id;
    await expect(ak.create({ accountId: 'c', parentId: parent })).rejects.toMatchObject({ code: 'depth_exceeded' });
    // reserve in tree + commit
    const p = await ak.create({ accountId: 'd', budgetCents: 100, budgetPeriod: 'month' });
    const c = await ak.create({ accountId: 'd', parentId: p.id, budgetCents: 80, budgetPeriod: 'day' });
    const h = await ak.reserve(c.key, { costCents: 70 });
    expect(h.success).toBe(true);
    expect(await ak.trackUsage(p.key, { costCents: 40 })).toMatchObject({ success: false, reason: 'budget_exceeded', limitedBy: { kind: 'key', keyId: p.id } });
    if (!h.success) throw new Error();
    expect(await ak.commit(h.reservationId, { costCents: 90 })).toMatchObject({ success: true, overBudget: true });
    expect(await ak.audit()).toMatchObject({ ok: true });
  });
});
