import { microsToCents } from './money.js';
import type { AccountRow } from './store/accounts.js';
import type { KeyRow, KeyStatus } from './store/keys.js';
import type { BudgetPeriod } from './time.js';

/** A key as operators see it: no secret, with budget, spent, held and remaining. */
export interface KeyInfo {
  id: number;
  accountId: string | number;
  name: string | null;
  /** The key's first characters, e.g. 'ak_7f3aBc12', to recognise it without its secret. */
  prefix: string | null;
  scopes: string[] | null;
  status: KeyStatus;
  parentId: number | null;
  depth: number;
  budgetCents: number | null;
  spentCents: number;
  heldCents: number;
  remainingCents: number | null;
  /** Real cost no budget could take, over the key's life: recorded, never counted in spentCents. */
  overageCents: number;
  budgetPeriod: BudgetPeriod | null;
  budgetResetAt: string | null;
  expiresAt: string | null;
  revokedAt: string | null;
  createdAt: string | null;
  lastUsedAt: string | null;
  delegatedBy: string | null;
  externalSubject: string | null;
}

/** An account's ceiling and where it stands in the current period. */
export interface AccountBudget {
  accountId: string;
  budgetCents: number;
  budgetPeriod: BudgetPeriod | null;
  spentCents: number;
  heldCents: number;
  remainingCents: number;
  periodStartAt: string | null;
  budgetResetAt: string | null;
}

export function iso(date: Date | string | null | undefined): string | null {
  return date == null ? null : new Date(date).toISOString();
}

export function remaining(budget: number | null, spent: number, held: number): number | null {
  return budget === null ? null : microsToCents(Math.max(0, budget - spent - held));
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
    budgetCents: row.budget_micros === null ? null : microsToCents(row.budget_micros),
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
    budgetCents: microsToCents(row.budget_micros),
    budgetPeriod: row.budget_period,
    spentCents: microsToCents(row.spent_micros),
    heldCents: microsToCents(row.held_micros),
    remainingCents: remaining(row.budget_micros, row.spent_micros, row.held_micros) as number,
    periodStartAt: iso(row.period_start_at),
    budgetResetAt: iso(row.budget_reset_at),
  };
}
