import type { AgentKey, LimitedBy, ReserveResult, ValidKey } from '../agentkey.js';
import { type HttpError, errorToHttp, refusalOf } from '../http/errors.js';
import { keyAuthenticator, keyFromHeaders, verifyIdentity, withTimeout } from '../http/verify.js';
import { NO_RETRY, type ProxyError } from './errors.js';

/**
 * The key check and the hold, answered as every agentkey surface answers them (the refusal
 * table, src/http/refusals.ts) and then put in the upstream's shape by the caller. A budget
 * refusal says when the budget that refused frees (`Retry-After`), when that is known; a
 * rate limit always does.
 */

export type KeyOutcome =
  | { ok: true; key: ValidKey; token: string; reserve: (costCents: number, ttl: string, metadata: Record<string, unknown>) => Promise<ReserveResult>; release: () => void }
  | { ok: false; error: ProxyError };

/**
 * Checks the agent's key (`Authorization: Bearer`, or `x-api-key` as the Anthropic SDK sends
 * it) and its scope, taking a concurrency slot that `release()` frees when the request ends.
 */
export async function checkKey(ak: AgentKey, headers: Headers, scope: string | null, timeoutMs: number): Promise<KeyOutcome> {
  const token = keyFromHeaders((name) => headers.get(name));
  const outcome = await verifyIdentity(ak, token, keyAuthenticator(ak), { timeoutMs, ...(scope === null ? {} : { scope }) });
  if (!outcome.ok) {
    const error = fromHttp(outcome.error);
    if (outcome.error.body.error.code === 'budget_exceeded' && token) await withRetryAfter(error, () => ownReset(ak, token), timeoutMs);
    return { ok: false, error };
  }
  return {
    ok: true,
    key: outcome.key,
    token: token as string,
    reserve: async (costCents, ttl, metadata) => {
      const pending = outcome.identity.reserve({ costCents, ttl, metadata });
      try {
        return await withTimeout(pending, timeoutMs);
      } catch (err) {
        // Given up on: a hold that still lands later is given back at once, not left to its ttl.
        pending.then((late) => (late.success ? ak.release(late.reservationId) : null)).catch(() => {});
        throw err;
      }
    },
    release: outcome.release,
  };
}

/** A hold refused: 429 for a budget (with when it frees), 401 for a key that can no longer spend. */
export async function holdRefusal(ak: AgentKey, result: Exclude<ReserveResult, { success: true }>, timeoutMs: number): Promise<ProxyError> {
  const error = fromHttp(refusalOf(result));
  if (result.reason === 'budget_exceeded') await withRetryAfter(error, () => windowReset(ak, result.limitedBy), timeoutMs);
  return error;
}

/** Anything thrown on the way (a store fault, a wait that ran out), as the refusal table answers it. */
export function faultOf(err: unknown): ProxyError {
  return fromHttp(errorToHttp(err));
}

function fromHttp(e: HttpError): ProxyError {
  const headers = { ...e.headers };
  // A spent budget does not come back in the seconds an SDK's automatic retries wait.
  if (e.body.error.code === 'budget_exceeded') Object.assign(headers, NO_RETRY);
  return { status: e.status, code: e.body.error.code, message: e.body.error.message, headers };
}

/** Adds `Retry-After` (seconds, rounded up) when `resetAt` finds when the refusing budget frees; never fails the refusal. */
async function withRetryAfter(error: ProxyError, resetAt: () => Promise<string | null>, timeoutMs: number): Promise<void> {
  try {
    const at = await withTimeout(resetAt(), timeoutMs);
    if (at === null) return;
    const seconds = Math.max(1, Math.ceil((new Date(at).getTime() - Date.now()) / 1000));
    error.headers = { ...error.headers, 'Retry-After': String(seconds) };
  } catch {
    /* the refusal stands without it */
  }
}

/** When the window that refused a hold starts again: the key's, an ancestor's or the account's. Null for a lifetime budget. */
async function windowReset(ak: AgentKey, by: LimitedBy): Promise<string | null> {
  if (by.window === 'lifetime') return null;
  const windows = by.kind === 'account' ? (await ak.getAccountBudget(by.accountId))?.budgets : (await ak.getKey(by.keyId))?.budgets;
  return windows?.find((w) => w.period === by.window)?.resetAt ?? null;
}

/**
 * When a key that validate() found spent gets room again: the latest reset among its own
 * spent windows. Null when none of its own is spent (an ancestor's or the account's budget
 * is; validate() does not say which).
 */
async function ownReset(ak: AgentKey, token: string): Promise<string | null> {
  const id = await ak.identify(token);
  const info = id === null ? null : await ak.getKey(id);
  const spent = (info?.budgets ?? []).filter((w) => w.remainingCents <= 0);
  if (spent.length === 0 || spent.some((w) => w.resetAt === null)) return null;
  return spent.map((w) => w.resetAt as string).sort().at(-1) ?? null;
}
