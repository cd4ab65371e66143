import { AgentKeyError } from './errors.js';
import { type CentsInput, centsToMicros, describe, isValidCents, microsToCentsNumber } from './money.js';
import { checkOptions, optionalText } from './options.js';
import type { SpendOutcome } from './store/spend.js';
import { durationMs } from './time.js';
import { remaining } from './views.js';

export interface ChargeOptions {
  /** Cents: a number, or a decimal string (`"0.3"`) read exactly. */
  costCents: CentsInput;
  /** Charges with the same idempotency key (per key) are made once; a retry returns the first result. */
  idempotencyKey?: string;
  /** JSON object stored with the ledger row, e.g. `{ model, inputTokens, outputTokens }`. */
  metadata?: Record<string, unknown>;
}

export interface ReserveOptions extends ChargeOptions {
  /** How long the hold lasts unless committed or released: '30s', '5m', up to '24h'. Default '5m'. */
  ttl?: string;
}

export interface CommitOptions {
  costCents: CentsInput;
  metadata?: Record<string, unknown>;
}

export interface SpendFigures {
  budgetUsedCents: number;
  budgetRemainingCents: number | null;
}

/**
 * Why a key itself cannot spend: 'invalid_key' (no such key, as the package says), or
 * 'expired' / 'revoked' (itself or an ancestor).
 */
export type KeyRefusal = 'invalid_key' | 'expired' | 'revoked';

/**
 * The package's `TrackUsageResult`, as a union that narrows on `success` and `reason`.
 * Every member declares every field, so code written for the package's flat interface
 * (`r.reason`, `r.budgetRemainingCents` without narrowing) compiles unchanged.
 */
export type TrackUsageResult =
  | {
      success: true;
      reason?: undefined;
      /** Absent for a zero-cost charge, which records nothing (as the package did). */
      budgetUsedCents?: number;
      budgetRemainingCents?: number | null;
      limitedBy?: undefined;
      /** Set on a retry with the same idempotency key: the first charge's result, charged once. */
      replayed?: true;
    }
  | ({ success: false; reason: 'budget_exceeded'; limitedBy: LimitedBy; replayed?: undefined } & SpendFigures)
  | {
      success: false;
      reason: 'invalid_cost' | 'idempotency_conflict' | KeyRefusal;
      budgetUsedCents?: undefined;
      budgetRemainingCents?: undefined;
      limitedBy?: undefined;
      replayed?: undefined;
    };

export type ReserveResult =
  | {
      success: true;
      reason?: undefined;
      reservationId: string;
      expiresAt: string;
      budgetRemainingCents: number | null;
      /** Set on a retry with the same idempotency key: the first hold, returned again. */
      replayed?: true;
      /** On a retry, where that first hold stands now: only 'held' still holds money. */
      reservationStatus?: ReservationStatus;
    }
  | ({ success: false; reason: 'budget_exceeded'; limitedBy: LimitedBy } & SpendFigures)
  | { success: false; reason: 'invalid_cost' | 'idempotency_conflict' | KeyRefusal };

export type CommitResult =
  | ({
      success: true;
      reservationId: string;
      /** The real cost, always recorded: chargedCents + overageCents. */
      costCents: number;
      /** The part counted toward the budgets: never more than they leave. */
      chargedCents: number;
      /** The part no budget could take: recorded as overage, never counted toward a cap. 0 normally. */
      overageCents: number;
      heldCents: number;
      /** The part of the hold given back. */
      releasedCents: number;
      /** How far the real cost went past the hold. */
      overHoldCents: number;
      /** The hold had expired before this commit. */
      holdExpired: boolean;
      /** Some of the cost was overage: a budget over the key could not take all of it. */
      overBudget: boolean;
      /** The budget that could not take it, when overBudget. */
      limitedBy?: LimitedBy;
      replayed?: true;
    } & SpendFigures)
  | { success: false; reason: 'invalid_cost' | 'reservation_not_found' | 'already_released' | 'idempotency_conflict' };

export type ReservationStatus = 'held' | 'committed' | 'released' | 'expired';

export type ReleaseResult =
  | { success: true; reservationId: string; releasedCents: number; holdExpired: boolean; replayed?: true }
  | { success: false; reason: 'reservation_not_found' | 'already_committed' };

export type AdjustResult =
  | ({ success: true } & SpendFigures)
  | { success: false; reason: 'invalid_key' | 'refund_exceeds_spend' };

export const CHARGE_OPTIONS = ['costCents', 'idempotencyKey', 'metadata'] as const;
export const RESERVE_OPTIONS = [...CHARGE_OPTIONS, 'ttl'] as const;
const MAX_TTL_MS = 24 * 3_600_000;
const MAX_METADATA_BYTES = 8_192;

/** The cost in micros, or null for a negative, non-finite, non-numeric or missing cost. */
export function costMicros(value: unknown): number | null {
  return isValidCents(value) ? centsToMicros(value) : null;
}

export interface SpendInput {
  micros: number | null;
  idempotencyKey: string | null;
  metadata: string | null;
  ttlMs: number | null;
}

/** Checks charge/reserve options; a bad cost is data (`micros: null`), anything else throws. */
export function spendInput(options: unknown, allowed: readonly string[], what: string): SpendInput {
  if (options === null || typeof options !== 'object') return { micros: null, idempotencyKey: null, metadata: null, ttlMs: null };
  const o = checkOptions<ReserveOptions>(options, allowed, what);
  return {
    micros: costMicros(o.costCents),
    idempotencyKey: optionalText(o.idempotencyKey, 'idempotencyKey'),
    metadata: metadataJson(o.metadata),
    ttlMs: allowed.includes('ttl') ? durationMs(o.ttl ?? '5m', 'ttl', MAX_TTL_MS) : null,
  };
}

export function metadataJson(value: unknown): string | null {
  if (value === undefined || value === null) return null;
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new AgentKeyError('invalid_argument', `metadata must be a JSON object; got ${describe(value)}.`);
  }
  let json: string;
  try {
    json = JSON.stringify(value);
  } catch {
    throw new AgentKeyError('invalid_argument', 'metadata must be serialisable as JSON.');
  }
  // JSON escapes NUL as \u0000, which PostgreSQL's jsonb refuses.
  if (json.includes('\\u0000')) {
    throw new AgentKeyError('invalid_argument', 'metadata must not contain a NUL character (PostgreSQL cannot store one).');
  }
  if (Buffer.byteLength(json) > MAX_METADATA_BYTES) {
    throw new AgentKeyError('invalid_argument', `metadata must be at most ${MAX_METADATA_BYTES} bytes of JSON.`);
  }
  return json;
}

/** Checks an adjustment: a signed cost (refunds negative) and a reason. */
export function adjustInput(options: unknown): { micros: number; metadata: string } {
  const o = checkOptions<{ costCents: CentsInput; reason: string; metadata?: Record<string, unknown> }>(
    options,
    ['costCents', 'reason', 'metadata'],
    'adjust()',
  );
  const cents = o.costCents;
  const micros = isValidCents(cents, true) ? centsToMicros(cents) : 0;
  if (micros === 0) {
    throw new AgentKeyError('invalid_cost', `costCents must be a non-zero number of cents (negative for a refund); got ${describe(cents)}.`);
  }
  const reason = optionalText(o.reason, 'reason', 1_000);
  if (reason === null) throw new AgentKeyError('invalid_argument', 'adjust() needs a reason, such as "refund for a failed call".');
  const extra = metadataJson(o.metadata);
  const metadata = JSON.stringify({ ...(extra ? JSON.parse(extra) : {}), reason });
  return { micros, metadata };
}

export function figures(out: SpendOutcome): SpendFigures {
  const spent = out.spent ?? 0;
  return { budgetUsedCents: microsToCentsNumber(spent), budgetRemainingCents: remaining(out.budget ?? null, spent, out.held ?? 0) };
}

/** Which budget refused a charge or hold: the key's own, an ancestor's, or the account's. */
export type LimitedBy = { kind: 'key' | 'ancestor'; keyId: number } | { kind: 'account'; accountId: string };

export function limitedBy(out: SpendOutcome): LimitedBy | undefined {
  if (out.limit === 'account') return { kind: 'account', accountId: String(out.limit_account_id) };
  if (out.limit === 'key' || out.limit === 'ancestor') return { kind: out.limit, keyId: Number(out.limit_key_id) };
  return undefined;
}

/** Outcomes of the spend function that are the key's own state. */
export function keyStateReason(outcome: string): KeyRefusal | null {
  if (outcome === 'invalid') return 'invalid_key';
  return outcome === 'expired' || outcome === 'revoked' ? outcome : null;
}


const RESERVATION_ID = /^rsv_[0-9A-Za-z]{24}$/;
export function isReservationId(value: unknown): value is string {
  return typeof value === 'string' && RESERVATION_ID.test(value);
}
