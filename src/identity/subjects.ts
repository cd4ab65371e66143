import type { AgentKey, RateLimited, SubjectOptions, ValidationResult } from '../agentkey.js';
import { AgentKeyError } from '../errors.js';
import type { Authenticate, Denial, Identity } from '../http/verify.js';
import { budgetToMicros } from '../money.js';
import { surfaceOptions } from '../http/options.js';
import { accountIdText, optionalText } from '../options.js';
import { isAttenuation, parseScopes } from '../scopes.js';
import { keepRelease } from '../rate-limits.js';
import { concurrencyOption, rateLimitOption } from '../options.js';
import { parseDuration, parsePeriod } from '../time.js';

/** The budget row an external identity gets on first sight; `accountId` may come from its claims. */
export type SubjectDefaults = Omit<SubjectOptions, 'accountId'> & {
  accountId?: string | number | ((claims: Record<string, unknown>) => string | number);
};

/** What a verifier learned from a token it accepted. */
export interface VerifiedToken {
  subject: string;
  /** Scopes the token carries, or null when it carries none. */
  scopes: string[] | null;
  claims: Record<string, unknown>;
}

/**
 * A token refused: 'expired' for a token past its time, 'unavailable' when the issuer's
 * keys could not be fetched (the token may be fine), 'invalid' for anything else.
 */
export interface RefusedToken {
  refused: 'expired' | 'invalid' | 'unavailable';
  detail: string;
}

/** `validateBySubject`'s shape, plus the subject and the token's claims when valid. */
export type SubjectValidation =
  | (Extract<ValidationResult, { valid: true }> & { subject: string; claims: Record<string, unknown> })
  | { valid: false; reason: 'invalid' | 'expired' | 'revoked' | 'budget_exceeded'; detail?: string }
  | (RateLimited & { detail?: undefined });

/**
 * Turns verified tokens into budgeted subjects: the subject's row is made on first sight
 * from `defaults`, then validated (scope, budget, expiry, revocation) as a key is, with
 * the token's scopes narrowing (never widening) the row's.
 */
export function subjectIdentities(
  ak: AgentKey,
  verifyToken: (token: string) => Promise<VerifiedToken | RefusedToken>,
  defaults: SubjectDefaults,
  tokenScopes: 'narrow' | 'ignore' = 'narrow',
) {
  if (tokenScopes !== 'narrow' && tokenScopes !== 'ignore') throw new AgentKeyError('invalid_argument', "tokenScopes must be 'narrow' or 'ignore'.");
  checkDefaults(defaults);
  const seen = new Set<string>();

  async function ensure(token: VerifiedToken): Promise<void> {
    if (seen.has(token.subject)) return;
    const { accountId, ...rest } = defaults;
    const account = typeof accountId === 'function' ? accountId(token.claims) : accountId;
    await ak.ensureSubject(token.subject, { ...rest, ...(account !== undefined ? { accountId: account } : {}) });
    // Bounded: forgetting a subject costs one idempotent ensureSubject, never correctness.
    if (seen.size >= 10_000) seen.clear();
    seen.add(token.subject);
  }

  /** The subject's validation (its row made on first sight), with the token's scopes narrowing it. */
  async function validate(token: VerifiedToken, acquire = false): Promise<ValidationResult> {
    await ensure(token);
    const result = await ak.validateBySubject(token.subject, acquire ? { acquire } : undefined);
    if (!result.valid || tokenScopes !== 'narrow' || token.scopes === null) return result;
    return keepRelease(result, { ...result, scopes: narrow(result.scopes, token.scopes) });
  }

  async function verify(raw: string): Promise<SubjectValidation> {
    if (typeof raw !== 'string' || raw.length === 0) return { valid: false, reason: 'invalid', detail: 'no token' };
    const token = await verifyToken(raw);
    if ('refused' in token) return { valid: false, reason: token.refused === 'expired' ? 'expired' : 'invalid', detail: token.detail };
    const result = await validate(token);
    return result.valid ? { ...result, subject: token.subject, claims: token.claims } : result;
  }

  // A refused token is a denial, as data: the surface that asked answers it from its refusal table.
  const authenticate: Authenticate = async (raw) => {
    const token = await verifyToken(raw);
    if ('refused' in token) return { denied: DENIED[token.refused], detail: token.detail };
    // A request through a surface: its concurrency slot is freed when the response ends.
    const result = await validate(token, true);
    const identity: Identity = {
      result: result.valid ? keepRelease(result, Object.assign({}, result, { subject: token.subject })) : result,
      reserve: (o) => ak.reserveBySubject(token.subject, o),
    };
    return identity;
  };

  return { verify, authenticate };
}

/** What each kind of refused token is, for the surfaces. */
const DENIED: Record<RefusedToken['refused'], Denial['denied']> = {
  expired: 'token_expired',
  // The client's token may be fine: the issuer's keys could not be fetched.
  unavailable: 'issuer_unavailable',
  invalid: 'invalid_token',
};

/** Defaults are checked when the adapter is built, not on some client's first request. */
function checkDefaults(d: SubjectDefaults): void {
  const allowed = ['scopes', 'budgetCents', 'budgetPeriod', 'expiresIn', 'delegatedBy', 'name', 'userId', 'accountId', 'rateLimit', 'concurrency'];
  surfaceOptions(d, allowed, 'subject defaults', 'subject defaults must be an object (budgetCents, budgetPeriod, scopes, ...).');
  parseScopes(d.scopes, null, 'subject.scopes');
  budgetToMicros(d.budgetCents, 'subject.budgetCents');
  parsePeriod(d.budgetPeriod, 'subject.budgetPeriod');
  if (d.expiresIn !== undefined && d.expiresIn !== null) parseDuration(d.expiresIn, 'subject.expiresIn');
  if (d.accountId !== undefined && typeof d.accountId !== 'function') accountIdText(d.accountId, 'subject.accountId');
  for (const field of ['name', 'delegatedBy', 'userId'] as const) optionalText(d[field], `subject.${field}`);
  rateLimitOption(d.rateLimit, 'subject.rateLimit');
  concurrencyOption(d.concurrency, 'subject.concurrency');
}

/** The token's scopes that the row's scopes allow: a token may narrow, never widen. */
export function narrow(rowScopes: string[] | null, tokenScopes: string[]): string[] {
  return tokenScopes.filter((s) => isAttenuation(rowScopes, [s]));
}
