// The spending flow: a charge, hold, commit, release or adjustment is checked here, sent
// to the store (through the batches when batching is on), and its outcome shaped into the
// result callers get; the validation cache hears the figures each step leaves.
import { SpendBatches } from './batches.js';
import type { KeyCache } from './cache.js';
import { AgentKeyError } from './errors.js';
import { randomId } from './keys.js';
import { type CentsInput, centsToMicros, describe, isValidCents, microsToCentsNumber } from './money.js';
import { checkOptions, metadataJson, optionalText } from './options.js';
import type { Actor } from './store/actor.js';
import { storageFault } from './store/errors.js';
import type { PriceCatalog } from './llm/prices.js';
import type { TokenUsage } from './llm/usage.js';
import type { KeyRef } from './store/keys.js';
import type { SpendOutcome, SpendRequest, SpendStore } from './store/spend.js';
import { durationMs } from './time.js';
import type {
  AdjustResult,
  BatchingOptions,
  CommitOptions,
  CommitResult,
  KeyRefusal,
  MeteredCommitOptions,
  LimitedBy,
  ReleaseResult,
  ReservationInfo,
  ReservationStatus,
  ReserveOptions,
  ReserveResult,
  TrackUsageResult,
} from './types.js';
import { figures, iso } from './views.js';
import type { WindowPeriod } from './windows.js';

// The HTTP adapters import these two from here.
export type { ReserveOptions, ReserveResult } from './types.js';

/**
 * Charges, holds and their settling, for the facade. Every step is one guarded statement
 * in the database (`SpendStore`); nothing here reads before it writes.
 */
export class Spending {
  private readonly batches: SpendBatches | null;
  /** Turns a database fault into its AgentKeyError. */
  private readonly fault: (err: unknown) => never;
  /** The same for a step, whose amounts were checked before they were sent (see StorageStep). */
  private readonly spendFault: (err: unknown) => never;

  constructor(
    private readonly store: SpendStore,
    /** The validation cache, or null: it shows the figures of each step taken here at once. */
    private readonly cache: KeyCache | null,
    batching: Required<BatchingOptions> | null,
    timeoutMs: number,
    table: string,
    /** Who adjustments made here are recorded as (the event log). */
    private readonly actor: Actor,
    /** The catalog that prices `{ model, usage }`; null for the bundled one. */
    private readonly prices: PriceCatalog | null = null,
  ) {
    this.batches = batching && new SpendBatches(store, batching, timeoutMs);
    this.fault = storageFault(table);
    this.spendFault = storageFault(table, 'spend');
  }

  /** `trackUsage()`: `ref` is null for a raw key that cannot be one of this table's. */
  async charge(ref: KeyRef | null, usage: unknown, what: string): Promise<TrackUsageResult> {
    const input = spendInput(usage, CHARGE_OPTIONS, what, await this.meter(usage, what));
    if (input.micros === null) return { success: false, reason: 'invalid_cost' };
    if (ref === null) return { success: false, reason: 'invalid_key' };
    // As in the package: a free call records nothing and needs no round trip.
    if (input.micros === 0) return { success: true, ...(input.usage ? { costCents: 0 } : {}) };
    const out = await this.spendCoalesced(ref, { ...input, micros: input.micros, op: 'charge', holdId: null, ttlMs: null });
    const state = keyStateReason(out.outcome);
    if (state) return { success: false, reason: state };
    if (out.outcome === 'idempotency_conflict') return { success: false, reason: 'idempotency_conflict' };
    if (out.outcome === 'budget_exceeded') {
      return { success: false, reason: 'budget_exceeded', limitedBy: limitedBy(out) as LimitedBy, ...figures(out) };
    }
    return {
      success: true,
      ...figures(out),
      ...(out.outcome === 'replayed' ? { replayed: true as const } : {}),
      ...(input.usage ? { costCents: microsToCentsNumber(input.micros) } : {}),
    };
  }

  /** `reserve()`: `ref` is null for a raw key that cannot be one of this table's. */
  async reserve(ref: KeyRef | null, options: unknown, what: string): Promise<ReserveResult> {
    const input = spendInput(options, RESERVE_OPTIONS, what, await this.meter(options, what));
    if (input.micros === null) return { success: false, reason: 'invalid_cost' };
    if (ref === null) return { success: false, reason: 'invalid_key' };
    const out = await this.spendCoalesced(ref, { ...input, micros: input.micros, op: 'hold', holdId: randomId('rsv_') });
    const state = keyStateReason(out.outcome);
    if (state) return { success: false, reason: state };
    if (out.outcome === 'idempotency_conflict') return { success: false, reason: 'idempotency_conflict' };
    if (out.outcome === 'budget_exceeded') {
      return { success: false, reason: 'budget_exceeded', limitedBy: limitedBy(out) as LimitedBy, ...figures(out) };
    }
    return {
      success: true,
      reservationId: out.hold_id as string,
      expiresAt: iso(out.expires_at) as string,
      budgetRemainingCents: figures(out).budgetRemainingCents,
      // A retry of a hold that was settled or expired since says so: it no longer holds money.
      ...(out.outcome === 'replayed' ? { replayed: true as const, reservationStatus: out.status as ReservationStatus } : {}),
      ...(input.usage ? { heldCents: microsToCentsNumber(input.micros) } : {}),
    };
  }

  /** `commit()`: settles a hold with its real cost; what no budget can take is overage. */
  async commit(reservationId: string, options: CommitOptions | MeteredCommitOptions): Promise<CommitResult> {
    if (options === null || typeof options !== 'object') return { success: false, reason: 'invalid_cost' };
    const llm = await this.meter(options, 'commit()');
    const o = checkOptions<CommitOptions>(options, llm ? ['metadata', ...LLM_OPTIONS] : ['costCents', 'metadata'], 'commit()');
    const micros = llm ? llm.micros : costMicros(o.costCents);
    if (micros === null) return { success: false, reason: 'invalid_cost' };
    const metadata = metadataJson(o.metadata);
    if (!isReservationId(reservationId)) return { success: false, reason: 'reservation_not_found' };
    const out = await this.settle(reservationId, 'commit', micros, metadata, llm?.usage ?? null);
    if (out.outcome === 'not_found') return { success: false, reason: 'reservation_not_found' };
    if (out.outcome === 'already_released') return { success: false, reason: 'already_released' };
    if (out.outcome === 'idempotency_conflict') return { success: false, reason: 'idempotency_conflict' };
    const held = out.hold ?? 0;
    const cost = out.committed ?? 0;
    const overage = out.overage ?? 0;
    const spent = figures(out);
    return {
      success: true,
      reservationId,
      // One step's figures never pass MAX_CENTS: numbers, exact.
      costCents: microsToCentsNumber(cost),
      chargedCents: microsToCentsNumber(cost - overage),
      overageCents: microsToCentsNumber(overage),
      heldCents: microsToCentsNumber(held),
      releasedCents: microsToCentsNumber(Math.max(0, held - cost)),
      overHoldCents: microsToCentsNumber(Math.max(0, cost - held)),
      holdExpired: out.expired === true,
      overBudget: overage > 0,
      ...(overage > 0 ? { limitedBy: limitedBy(out) } : {}),
      ...spent,
      ...(out.outcome === 'replayed' ? { replayed: true as const } : {}),
    };
  }

  /** `release()`: gives a whole hold back. */
  async release(reservationId: string): Promise<ReleaseResult> {
    if (!isReservationId(reservationId)) return { success: false, reason: 'reservation_not_found' };
    const out = await this.settle(reservationId, 'release', 0, null);
    if (out.outcome === 'not_found') return { success: false, reason: 'reservation_not_found' };
    if (out.outcome === 'already_committed') return { success: false, reason: 'already_committed' };
    return {
      success: true,
      reservationId,
      releasedCents: microsToCentsNumber(out.released ?? 0),
      holdExpired: out.expired === true,
      ...(out.outcome === 'replayed' ? { replayed: true as const } : {}),
    };
  }

  /** `adjust()`: an operator's correction to key `id`'s spend, never batched. */
  async adjust(id: number, options: unknown): Promise<AdjustResult> {
    const { micros, metadata } = adjustInput(options);
    const request: SpendRequest = { op: 'adjust', micros, idempotencyKey: null, metadata, holdId: null, ttlMs: null };
    const out = await this.store.adjust({ id }, request, this.actor).catch(this.spendFault);
    this.noteFigures(out, out.outcome === 'ok' ? micros : 0);
    if (out.outcome === 'invalid') return { success: false, reason: 'invalid_key' };
    if (out.outcome === 'refund_exceeds_spend') return { success: false, reason: 'refund_exceeds_spend' };
    return { success: true, ...figures(out) };
  }

  /** `getReservation()`: where a hold stands, or null when no hold has this id. */
  async findHold(reservationId: string): Promise<ReservationInfo | null> {
    if (!isReservationId(reservationId)) return null;
    const row = await this.store.findHold(reservationId).catch(this.fault);
    if (!row) return null;
    return {
      reservationId: row.id,
      keyId: row.key_id,
      accountId: row.account_id,
      heldCents: microsToCentsNumber(row.amount_micros),
      costCents: row.committed_micros === null ? null : microsToCentsNumber(row.committed_micros),
      overageCents: row.committed_micros === null ? null : microsToCentsNumber(row.overage_micros ?? 0),
      status: row.lapsed ? 'expired' : row.status,
      expiresAt: iso(row.expires_at) as string,
      createdAt: iso(row.created_at) as string,
      settledAt: iso(row.settled_at),
    };
  }

  /** Marks up to `limit` holds past their ttl as expired; how many it marked. */
  sweep(limit: number): Promise<number> {
    return this.store.sweep(limit).catch(this.fault);
  }

  /** Resolves when no step is queued or in flight. */
  async settled(): Promise<void> {
    await this.batches?.settled();
  }

  /** A charge or hold: coalesced with concurrent ones into one statement when batching is on. */
  private async spendCoalesced(ref: KeyRef, request: SpendRequest): Promise<SpendOutcome> {
    const batches = this.batches;
    if (!batches) return this.spendNow(ref, request);
    const out = await batches.decide({ ref, request }).catch(this.spendFault);
    this.noteFigures(out, out.outcome === 'ok' ? request.micros : 0);
    return out;
  }

  /** A step on its own, in one statement. */
  private async spendNow(ref: KeyRef, request: SpendRequest): Promise<SpendOutcome> {
    const out = await this.store.spend(ref, request).catch(this.spendFault);
    this.noteFigures(out, out.outcome === 'ok' ? request.micros : 0);
    return out;
  }

  /** A commit or release of a hold: batched with concurrent steps when batching is on. */
  private async settle(holdId: string, op: 'commit' | 'release', micros: number, metadata: string | null, usage: string | null = null): Promise<SpendOutcome> {
    const out = await (this.batches
      ? this.batches.decide({ ref: { hold: holdId }, request: { op, micros, metadata, usage } })
      : this.store.settle(holdId, op, micros, metadata, usage)
    ).catch(this.spendFault);
    const held = out.expired ? 0 : (out.hold ?? 0);
    const charged = (out.committed ?? 0) - (out.overage ?? 0);
    this.noteFigures(out, out.outcome !== 'ok' ? 0 : op === 'commit' ? charged - held : -(out.released ?? 0));
    return out;
  }

  /**
   * Options that name a model (`{ model, usage }` instead of `costCents`): the cost from the
   * price catalog, which is loaded on the first such call, and the JSON of the model and
   * token counts for the ledger. Null for options with a cost in cents. An unknown model or
   * bad counts throw (`unknown_model`, `invalid_usage`): a caller's mistake, never a charge of 0.
   */
  private async meter(options: unknown, what: string): Promise<Metered | null> {
    if (options === null || typeof options !== 'object' || !('model' in options || 'usage' in options)) return null;
    const o = options as Record<string, unknown>;
    if (o.costCents !== undefined) throw new AgentKeyError('invalid_argument', `${what} takes costCents or { model, usage }, not both.`);
    if (o.model === undefined) throw new AgentKeyError('unknown_model', `${what} got usage without a model: name the model, e.g. { model: 'gpt-4o-mini', usage }.`);
    const { priceUsage } = await import('./llm/prices.js');
    const priced = priceUsage({ model: o.model as string, provider: o.provider as string | undefined, usage: o.usage as TokenUsage }, this.prices ?? undefined);
    return { micros: priced.micros, usage: JSON.stringify({ model: priced.model, provider: priced.provider, ...priced.tokens }) };
  }

  /**
   * A cached key shows the figures of the latest step taken on it here, and the budgets
   * above it (cached for its siblings too) move by `moved`: what the step added to spent + held.
   */
  private noteFigures(out: SpendOutcome, moved: number): void {
    if (!this.cache || typeof out.key_id !== 'number' || out.spent === undefined) return;
    // Without the step's time the figures cannot be ordered against others: read them afresh.
    if (out.at === undefined) this.cache.invalidate(out.key_id);
    else {
      const above = {
        moved,
        ancestors: (out.path ?? []).filter((id) => id !== out.key_id),
        accountId: out.account_id ?? null,
        windows: out.windows ?? [],
      };
      this.cache.updateFigures(out.key_id, out.budget ?? null, out.spent, out.held ?? 0, out.at, above);
    }
  }
}

// What callers give, checked: a bad cost is data (a refusal), any other mistake throws.

const CHARGE_OPTIONS = ['costCents', 'idempotencyKey', 'metadata'] as const;
/** In place of costCents: an LLM call's model and token counts. */
const LLM_OPTIONS = ['model', 'provider', 'usage'] as const;

/** A cost priced from an LLM call's usage, and what its ledger rows keep of the call. */
interface Metered {
  micros: number;
  usage: string;
}
const RESERVE_OPTIONS = [...CHARGE_OPTIONS, 'ttl'] as const;
const MAX_TTL_MS = 24 * 3_600_000;

/** The cost in micros, or null for a negative, non-finite, non-numeric or missing cost. */
function costMicros(value: unknown): number | null {
  return isValidCents(value) ? centsToMicros(value) : null;
}

interface SpendInput {
  micros: number | null;
  idempotencyKey: string | null;
  metadata: string | null;
  ttlMs: number | null;
  usage: string | null;
}

/** Checks charge/reserve options; a bad cost is data (`micros: null`), anything else throws. */
function spendInput(options: unknown, allowed: readonly string[], what: string, llm: Metered | null): SpendInput {
  if (options === null || typeof options !== 'object') return { micros: null, idempotencyKey: null, metadata: null, ttlMs: null, usage: null };
  const o = checkOptions<ReserveOptions>(options, llm ? [...allowed.filter((k) => k !== 'costCents'), ...LLM_OPTIONS] : allowed, what);
  return {
    usage: llm?.usage ?? null,
    micros: llm ? llm.micros : costMicros(o.costCents),
    idempotencyKey: optionalText(o.idempotencyKey, 'idempotencyKey'),
    metadata: metadataJson(o.metadata),
    ttlMs: allowed.includes('ttl') ? durationMs(o.ttl ?? '5m', 'ttl', MAX_TTL_MS) : null,
  };
}


/** Checks an adjustment: a signed cost (refunds negative) and a reason. */
function adjustInput(options: unknown): { micros: number; metadata: string } {
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

// What the spend functions' outcomes mean to callers.

/** Which budget refused a charge or hold, or could not take all of a commit. */
function limitedBy(out: SpendOutcome): LimitedBy | undefined {
  const window = (out.limit_window ?? 'lifetime') as WindowPeriod;
  if (out.limit === 'account') return { kind: 'account', accountId: String(out.limit_account_id), window };
  if (out.limit === 'key' || out.limit === 'ancestor') return { kind: out.limit, keyId: Number(out.limit_key_id), window };
  return undefined;
}

/** Outcomes of the spend function that are the key's own state. */
function keyStateReason(outcome: string): KeyRefusal | null {
  if (outcome === 'invalid') return 'invalid_key';
  return outcome === 'expired' || outcome === 'revoked' ? outcome : null;
}

const RESERVATION_ID = /^rsv_[0-9A-Za-z]{24}$/;
function isReservationId(value: unknown): value is string {
  return typeof value === 'string' && RESERVATION_ID.test(value);
}
