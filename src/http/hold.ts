import type { AgentKey } from '../agentkey.js';
import { AgentKeyError } from '../errors.js';
import { describe, isCentsNumber } from '../money.js';
import type { ReserveOptions, ReserveResult } from '../spending.js';
import { durationMs } from '../time.js';
import { type HttpError, errorToHttp } from './errors.js';
import { refusalOf, refuse } from './refusals.js';
import { withTimeout } from './timeout.js';
import { type VerifyOptions, checkVerifyOptions } from './verify.js';

/** A number of cents, or a function of the request that returns one (may be async). */
export type ReserveCents<Req> = number | ((req: Req) => number | Promise<number>);

export interface HoldOptions<Req> {
  /** Hold this much before the handler runs; 429 when the budget cannot cover it. */
  reserveCents?: ReserveCents<Req>;
  /** How long the hold lives if the process dies before settling it. Default '5m'. */
  holdTtl?: string;
  /** Called when settling a hold fails twice (the hold then ends at its ttl). Default: console.error. */
  onSettleError?: (err: unknown) => void;
}

export interface HeldReservation {
  reservationId: string;
  heldCents: number;
}

export type HoldOutcome = { ok: true; hold: HeldReservation } | { ok: false; error: HttpError };

export const HOLD_OPTIONS = ['reserveCents', 'holdTtl', 'onSettleError'] as const;

/**
 * Checks an adapter's options once, when it is built: the key check's (`scope`,
 * `timeoutMs`) and the hold's, the latter even without reserveCents, so a bad holdTtl or
 * onSettleError never passes silently. `what` names the options in errors.
 */
export function checkGuardOptions<Req>(options: unknown, what: string) {
  const verify = checkVerifyOptions(options, HOLD_OPTIONS, what);
  return { verify, hold: checkHoldOptions<Req>(verify as VerifyOptions & HoldOptions<Req>) };
}

function checkHoldOptions<Req>(o: HoldOptions<Req>): HoldOptions<Req> & { holdTtl: string } {
  const r = o.reserveCents;
  if (r !== undefined && typeof r !== 'function' && !(isCentsNumber(r) && r > 0)) {
    throw new AgentKeyError('invalid_argument', `reserveCents must be a number of cents above 0 or a function of the request; got ${describe(r)}.`);
  }
  const holdTtl = o.holdTtl ?? '5m';
  durationMs(holdTtl, 'holdTtl', 24 * 3_600_000);
  if (o.onSettleError !== undefined && typeof o.onSettleError !== 'function') {
    throw new AgentKeyError('invalid_argument', 'onSettleError must be a function.');
  }
  return { ...o, holdTtl };
}

/**
 * Takes the hold a request asked for, answering refusals from the refusal table: 429 when
 * the budget cannot cover it (with which budget refused), 401 for a key that can no
 * longer spend, 503 when the store does not answer within `timeoutMs`.
 */
export async function takeHold<Req>(
  reserve: (options: ReserveOptions) => Promise<ReserveResult>,
  req: Req,
  o: HoldOptions<Req> & { holdTtl: string },
  timeoutMs = 10_000,
): Promise<HoldOutcome> {
  try {
    const r = o.reserveCents as ReserveCents<Req>;
    const cents = typeof r === 'function' ? await r(req) : r;
    if (!isCentsNumber(cents)) return { ok: false, error: refuse('invalid_reserve', describe(cents)) };
    // Bounded like the key check: a store that stalls here must fail closed, not hang.
    const hold = await withTimeout(reserve({ costCents: cents, ttl: o.holdTtl }), timeoutMs);
    if (hold.success) return { ok: true, hold: { reservationId: hold.reservationId, heldCents: cents } };
    return { ok: false, error: refusalOf(hold) };
  } catch (err) {
    return { ok: false, error: errorToHttp(err) };
  }
}

/**
 * Ends a request's hold: commits the cost the handler reported (`costCents`), or, when
 * it reported none, commits the whole hold after a success and releases it after a
 * failure or a client that went away. Retries once; never throws.
 */
export async function settleHold(
  ak: AgentKey,
  hold: HeldReservation,
  reported: unknown,
  succeeded: boolean,
  onError: (err: unknown) => void = defaultOnError,
): Promise<void> {
  const settle = () =>
    isCentsNumber(reported)
      ? ak.commit(hold.reservationId, { costCents: reported })
      : succeeded
        ? ak.commit(hold.reservationId, { costCents: hold.heldCents })
        : ak.release(hold.reservationId);
  try {
    await settle();
  } catch {
    await new Promise((resolve) => setTimeout(resolve, 100));
    await settle().catch((err: unknown) => {
      // settleHold runs detached from the request: a throwing onSettleError must not
      // become an unhandled rejection that takes the process down.
      try {
        onError(err);
      } catch {
        /* ignored */
      }
    });
  }
}

function defaultOnError(err: unknown): void {
  console.error('agentkey: settling a hold failed; it will end at its ttl.', err);
}
