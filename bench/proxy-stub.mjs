// A stand-in for the AgentKey, for the proxy benchmark's diagnostic run only: every key is
// valid with the proxy's scope, and holds, commits and releases succeed at once without a
// database. What the proxy costs on top of it is the proxy's own work (HTTP in and out,
// reading the body, the estimate, reading the answer and its usage), apart from the store.
export function stubKeyStore() {
  let holds = 0;
  const valid = { valid: true, id: 1, keyId: 1, accountId: 'acct_stub', userId: null, name: 'stub', scopes: ['proxy.chat'], budgetCents: null, budgetUsedCents: 0, budgetRemainingCents: null, budgetHeldCents: 0, budgetPeriod: null, budgetResetAt: null, expiresAt: null, delegatedBy: null };
  return {
    commits: 0,
    async validate() {
      return { ...valid, release() {} };
    },
    hasScope: (result, scope) => result.valid && result.scopes.includes(scope),
    create() {},
    revoke() {},
    async getKey() {
      return { id: 1, metadata: null };
    },
    async reserve(_key, o) {
      holds++;
      return { success: true, reservationId: `rsv_stub_${holds}`, expiresAt: new Date().toISOString(), budgetRemainingCents: null, heldCents: o.costCents };
    },
    async commit() {
      this.commits++;
      return { success: true, costCents: 0.0008, chargedCents: 0.0008, overageCents: 0, heldCents: 0, releasedCents: 0, overHoldCents: 0, holdExpired: false, overBudget: false, budgetUsedCents: 0, budgetRemainingCents: null };
    },
    async release() {
      return { success: true, releasedCents: 0, holdExpired: false };
    },
  };
}
