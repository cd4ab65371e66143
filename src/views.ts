import { type Cents, type Micros, microsToCents, microsToCentsNumber, roomMicros } from './money.js';
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
  /** Totals are `Cents`: numbers up to MAX_CENTS, exact decimal strings past it (an unlimited key's). */
  spentCents: Cents;
  heldCents: Cents;
  remainingCents: number | null;
  /** Real cost no budget could take, over the key's life: recorded, never counted in spentCents. */
  overageCents: Cents;
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
  spentCents: Cents;
  heldCents: Cents;
  remainingCents: number;
  periodStartAt: string | null;
  budgetResetAt: string | null;
}

export function iso(date: Date | string | null | undefined): string | null {
  return date == null ? null : new Date(date).toISOString();
}

/** What a budget leaves, never below 0: a number (it is at most the budget). */
export function remaining(budget: number | null, spent: Micros, held: Micros): number | null {
  return budget === null ? null : microsToCentsNumber(Math.max(0, roomMicros(budget, spent, held)));
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
