// How rows and outcomes of the store look to callers: figures in cents, times as ISO strings.
import { type Micros, microsToCents, microsToCentsNumber, roomMicros } from './money.js';
import type { AccountRow } from './store/accounts.js';
import type { KeyRow } from './store/keys.js';
import type { SpendOutcome } from './store/spend.js';
import type { BudgetPeriod } from './time.js';
import type { AccountBudget, KeyInfo, SpendFigures } from './types.js';

export function iso(date: Date | string | null | undefined): string | null {
  return date == null ? null : new Date(date).toISOString();
}

/** What a budget leaves, never below 0: a number (it is at most the budget). */
export function remaining(budget: number | null, spent: Micros, held: Micros): number | null {
  return budget === null ? null : microsToCentsNumber(Math.max(0, roomMicros(budget, spent, held)));
}

/** What a key's budget stands at after a step: spent, and what is left of it (null when it has none). */
export function figures(out: SpendOutcome): SpendFigures {
  const spent = out.spent ?? 0;
  return { budgetUsedCents: microsToCentsNumber(spent), budgetRemainingCents: remaining(out.budget ?? null, spent, out.held ?? 0) };
}

export function toKeyInfo(row: KeyRow): KeyInfo {
  return {
    id: row.id,
    accountId: row.account_id,
    name: row.name,
    prefix: row.key_prefix,
    scopes: row.scopes,
    status: row.status,
    parentId: row.parent_id,
    depth: row.depth,
    budgetCents: row.budget_micros === null ? null : microsToCentsNumber(row.budget_micros),
    spentCents: microsToCents(row.spent_micros),
    heldCents: microsToCents(row.held_micros),
    remainingCents: remaining(row.budget_micros, row.spent_micros, row.held_micros),
    overageCents: microsToCents(row.overage_micros),
    budgetPeriod: row.budget_period as BudgetPeriod | null,
    budgetResetAt: iso(row.budget_reset_at),
    expiresAt: iso(row.expires_at),
    revokedAt: iso(row.revoked_at),
    createdAt: iso(row.created_at),
    lastUsedAt: iso(row.last_used_at),
    delegatedBy: row.delegated_by,
    externalSubject: row.external_subject,
  };
}

export function toAccountBudget(row: AccountRow): AccountBudget {
  return {
    accountId: row.account_id,
    budgetCents: microsToCentsNumber(row.budget_micros),
    budgetPeriod: row.budget_period,
    spentCents: microsToCents(row.spent_micros),
    heldCents: microsToCents(row.held_micros),
    remainingCents: remaining(row.budget_micros, row.spent_micros, row.held_micros) as number,
    periodStartAt: iso(row.period_start_at),
    budgetResetAt: iso(row.budget_reset_at),
  };
}
