import type { AgentKey } from '../agentkey.js';
import { AgentKeyError } from '../errors.js';
import { surfaceOptions } from '../http/options.js';
import { checkAgentKey } from '../http/verify.js';
import { withAdapters } from './adapters.js';
import { type RefusedToken, type SubjectDefaults, type VerifiedToken, subjectIdentities } from './subjects.js';

export type { SubjectDefaults, SubjectValidation } from './subjects.js';

export interface ClerkM2MOptions {
  /** The instance's PEM public key: JWT-format M2M tokens are then verified offline. */
  jwtKey?: string;
  /** The instance's secret key: needed for opaque `mt_` tokens (checked through Clerk's API). */
  secretKey?: string;
  /** Clerk's API URL, for tests or proxies. */
  apiUrl?: string;
  /** Token scopes narrow the machine's scopes ('narrow', the default) or are not looked at ('ignore'). */
  tokenScopes?: 'narrow' | 'ignore';
  /** The budget row a machine gets on first sight. */
  subject: SubjectDefaults;
}

/**
 * Budgets for Clerk machines: `verify(token)` checks a Clerk machine-to-machine token
 * with @clerk/backend (JWT-format tokens offline with `jwtKey`, opaque `mt_` tokens
 * through Clerk's API with `secretKey`), takes the machine id (`mch_...`) as the subject
 * and returns `validateBySubject`'s result. A forged, expired, revoked or non-M2M token is
 * invalid.
 *
 * @example
 * const clerk = clerkM2M(ak, { jwtKey: process.env.CLERK_JWT_KEY, subject: { budgetCents: 1000, budgetPeriod: 'month', scopes: ['proxy.chat'] } });
 * app.post('/api/chat', clerk.express({ scope: 'proxy.chat' }), handler);
 */
export function clerkM2M(ak: AgentKey, options: ClerkM2MOptions) {
  checkAgentKey(ak, 'clerkM2M');
  const o = checkClerkOptions(options);
  let verifier: Promise<typeof import('@clerk/backend/internal').verifyMachineAuthToken> | undefined;

  async function verifyToken(token: string): Promise<VerifiedToken | RefusedToken> {
    if (token.startsWith('mt_') && !o.secretKey) return { refused: 'invalid', detail: 'opaque mt_ tokens need the secretKey option' };
    verifier ??= import('@clerk/backend/internal').then((m) => m.verifyMachineAuthToken).catch((err: unknown) => {
      verifier = undefined;
      throw new AgentKeyError('invalid_argument', 'agentkey/clerk needs the @clerk/backend package; run npm install @clerk/backend.', { cause: err });
    });
    const verify = await verifier;
    let checked: Awaited<ReturnType<typeof verify>>;
    try {
      checked = await verify(token, {
        ...(o.jwtKey ? { jwtKey: o.jwtKey } : {}),
        ...(o.secretKey ? { secretKey: o.secretKey } : {}),
        ...(o.apiUrl ? { apiUrl: o.apiUrl } : {}),
      } as never);
    } catch (err) {
      // @clerk/backend throws (rather than returns an error) for a bearer of no known shape.
      return { refused: 'invalid', detail: err instanceof Error ? err.message : 'it is not a Clerk machine token' };
    }
    const { data, errors, tokenType } = checked;
    if (errors) {
      const message = errors[0]?.message ?? 'it could not be verified';
      return /expired/i.test(message) ? { refused: 'expired', detail: 'the token has expired' } : { refused: 'invalid', detail: message };
    }
    if (tokenType !== 'm2m_token' || !data || !('subject' in data) || typeof data.subject !== 'string' || !data.subject.startsWith('mch_')) {
      return { refused: 'invalid', detail: 'it is not a machine-to-machine token' };
    }
    const m2m = data as { subject: string; scopes?: string[]; claims?: Record<string, unknown> | null; revoked?: boolean; expired?: boolean };
    if (m2m.revoked) return { refused: 'invalid', detail: 'the token has been revoked' };
    if (m2m.expired) return { refused: 'expired', detail: 'the token has expired' };
    return { subject: m2m.subject, scopes: tokenScopesOf(token, m2m.scopes), claims: { ...(m2m.claims ?? {}), sub: m2m.subject } };
  }

  return withAdapters(ak, subjectIdentities(ak, verifyToken, o.subject, o.tokenScopes ?? 'narrow'));
}

/**
 * The scopes a token really carries, or null. @clerk/backend reports [] (or the audience)
 * for a JWT with no `scopes` claim; that must not narrow the machine to nothing.
 */
function tokenScopesOf(token: string, reported: string[] | undefined): string[] | null {
  if (!token.startsWith('mt_')) {
    try {
      const payload = JSON.parse(Buffer.from(token.split('.')[1] ?? '', 'base64url').toString('utf8')) as { scopes?: unknown };
      return typeof payload.scopes === 'string' ? payload.scopes.split(/\s+/).filter(Boolean) : null;
    } catch {
      return null;
    }
  }
  return Array.isArray(reported) && reported.length > 0 ? reported : null;
}

function checkClerkOptions(options: ClerkM2MOptions): ClerkM2MOptions {
  const allowed = ['jwtKey', 'secretKey', 'apiUrl', 'tokenScopes', 'subject'];
  surfaceOptions(options, allowed, 'clerkM2M options', 'clerkM2M needs options: jwtKey and/or secretKey, and subject defaults.');
  if (!options.jwtKey && !options.secretKey) throw new AgentKeyError('invalid_argument', 'clerkM2M needs jwtKey (JWT-format tokens, offline) or secretKey (mt_ tokens), or both.');
  if (options.jwtKey !== undefined && (typeof options.jwtKey !== 'string' || !options.jwtKey.includes('BEGIN PUBLIC KEY'))) {
    throw new AgentKeyError('invalid_argument', "jwtKey must be the instance's PEM public key (-----BEGIN PUBLIC KEY-----...).");
  }
  if (!options.subject || typeof options.subject !== 'object') {
    throw new AgentKeyError('invalid_argument', 'clerkM2M needs subject defaults, e.g. { budgetCents: 1000, budgetPeriod: "month", scopes: ["proxy.chat"] }.');
  }
  return options;
}
