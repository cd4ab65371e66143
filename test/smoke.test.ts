import { expect, it } from 'vitest';
import { forEachDatabase } from './helpers/databases.js';

forEachDatabase((getDb) => {
  it('creates, validates, charges and revokes', async () => {
    const ak = await getDb().agentKey();
    const key = await ak.create({ accountId: 'acct_123', scopes: ['usage.read', 'proxy.chat'], budgetCents: 5000, budgetPeriod: 'month', expiresIn: '7d', delegatedBy: 'user_456', name: 'sales-agent' });
    expect(key.key).toMatch(/^ak_/);
    expect(typeof key.id).toBe('number');
    const v = await ak.validate(key.key);
    expect(v).toMatchObject({ valid: true, scopes: ['usage.read', 'proxy.chat'], budgetCents: 5000, budgetUsedCents: 0, budgetRemainingCents: 5000, delegatedBy: 'user_456', accountId: 'acct_123' });
    expect(await ak.trackUsage(key.key, { costCents: 0.03 })).toMatchObject({ success: true, budgetUsedCents: 0.03 });
    expect(await ak.trackUsage(key.key, { costCents: 5000 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
    expect(await ak.revoke(key.id)).toBe(true);
    expect(await ak.validate(key.key)).toEqual({ valid: false, reason: 'revoked' });
    await ak.ensureSubject('mch_1', { budgetCents: 10 });
    await ak.ensureSubject('mch_1', { budgetCents: 10 });
    expect(await ak.trackUsageBySubject('mch_1', { costCents: 9 })).toMatchObject({ success: true });
    expect(await ak.validateBySubject('mch_1')).toMatchObject({ valid: true, budgetRemainingCents: 1, accountId: 'mch_1' });
    expect(await ak.trackUsageBySubject('mch_1', { costCents: 1 })).toMatchObject({ success: true, budgetRemainingCents: 0 });
    // Nothing left: refused, as the package refuses a spent key.
    expect(await ak.validateBySubject('mch_1')).toEqual({ valid: false, reason: 'budget_exceeded' });
  });
});
