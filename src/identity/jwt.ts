import { type JSONWebKeySet, type JWTPayload, createLocalJWKSet, createRemoteJWKSet, errors, jwtVerify } from 'jose';
import type { AgentKey } from '../agentkey.js';
import { AgentKeyError } from '../errors.js';
import { surfaceOptions } from '../http/options.js';
import { checkAgentKey } from '../http/verify.js';
import { withAdapters } from './adapters.js';
import { type RefusedToken, type SubjectDefaults, type VerifiedToken, subjectIdentities } from './subjects.js';

export type { SubjectDefaults, SubjectValidation } from './subjects.js';

export interface JwtSubjectsOptions {
  /** The issuer's JWKS URL (fetched and cached by jose), e.g. https://issuer/.well-known/jwks.json. */
  jwksUrl?: string | URL;
  /** Or a local key set. */
  jwks?: JSONWebKeySet;
  /** Or one verification key (a CryptoKey, KeyObject, or a secret for HS algorithms). */
  key?: Parameters<typeof jwtVerify>[1] & object;
  /** Required issuer(s) (`iss`). */
  issuer?: string | string[];
  /** Required audience(s) (`aud`). */
  audience?: string | string[];
  /** Allowed algorithms. Default: RS256, RS384, RS512, PS256, ES256, ES384, EdDSA (never 'none'). */
  algorithms?: string[];
  /** Clock skew allowed for exp/nbf: seconds or a duration like '30s'. Default 5 s. */
  clockTolerance?: number | string;
  /** The claim that names the subject. Default 'sub'. */
  subjectClaim?: string;
  /** The claim with the token's scopes (a space-separated string or an array). Default 'scope', then 'scp', then 'scopes'. */
  scopesClaim?: string;
  /** Token scopes narrow the subject's scopes ('narrow', the default) or are not looked at ('ignore'). */
  tokenScopes?: 'narrow' | 'ignore';
  /** The budget row a subject gets on first sight. */
  subject: SubjectDefaults;
}

const DEFAULT_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'ES256', 'ES384', 'EdDSA'];

/**
 * Budgets for any OIDC/JWT issuer's identities: the issuer says who is calling, agentkey
 * says how much it may spend. A verified token's `sub` (or `subjectClaim`) becomes a
 * subject whose budget row is made on first sight from `subject`, then enforced like a key.
 *
 * @example
 * const jwt = jwtSubjects(ak, { jwksUrl: 'https://issuer/.well-known/jwks.json', issuer: 'https://issuer/', audience: 'my-api',
 *   subject: { budgetCents: 500, budgetPeriod: 'day', scopes: ['proxy.chat'] } });
 * app.post('/api/chat', jwt.express({ scope: 'proxy.chat', reserveCents: 20 }), handler);
 */
export function jwtSubjects(ak: AgentKey, options: JwtSubjectsOptions) {
  checkAgentKey(ak, 'jwtSubjects');
  const o = checkJwtOptions(options);
  const keySet = o.jwksUrl !== undefined ? createRemoteJWKSet(new URL(o.jwksUrl)) : o.jwks !== undefined ? createLocalJWKSet(o.jwks) : undefined;
  const verifyOptions = {
    algorithms: o.algorithms ?? DEFAULT_ALGORITHMS,
    clockTolerance: o.clockTolerance ?? 5,
    ...(o.issuer !== undefined ? { issuer: o.issuer } : {}),
    ...(o.audience !== undefined ? { audience: o.audience } : {}),
  };
  const subjectClaim = o.subjectClaim ?? 'sub';

  async function verifyToken(token: string): Promise<VerifiedToken | RefusedToken> {
    let payload: JWTPayload;
    try {
      payload = keySet ? (await jwtVerify(token, keySet, verifyOptions)).payload : (await jwtVerify(token, o.key as never, verifyOptions)).payload;
    } catch (err) {
      if (err instanceof errors.JWTExpired) return { refused: 'expired', detail: 'the token has expired' };
      if (o.jwksUrl !== undefined && keySetUnavailable(err)) return { refused: 'unavailable', detail: "the issuer's key set could not be fetched" };
      return { refused: 'invalid', detail: joseDetail(err) };
    }
    const subject = payload[subjectClaim];
    if (typeof subject !== 'string' || subject.length === 0 || subject.length > 256) {
      return { refused: 'invalid', detail: `the token has no "${subjectClaim}" claim to name its subject` };
    }
    return { subject, scopes: scopesOf(payload, o.scopesClaim), claims: payload as Record<string, unknown> };
  }

  return withAdapters(ak, subjectIdentities(ak, verifyToken, o.subject, o.tokenScopes ?? 'narrow'));
}

function scopesOf(payload: JWTPayload, claim: string | undefined): string[] | null {
  const value = claim !== undefined ? payload[claim] : (payload.scope ?? payload.scp ?? payload.scopes);
  if (value === undefined || value === null) return null;
  if (typeof value === 'string') return value.split(/\s+/).filter(Boolean);
  if (Array.isArray(value)) return value.filter((s): s is string => typeof s === 'string' && s.length > 0);
  return [];
}

/** A remote key set that timed out, answered with something other than a key set, or could not be reached. */
function keySetUnavailable(err: unknown): boolean {
  if (!(err instanceof errors.JOSEError)) return true;
  return err instanceof errors.JWKSTimeout || err instanceof errors.JWKSInvalid || err.code === 'ERR_JOSE_GENERIC';
}

function joseDetail(err: unknown): string {
  if (err instanceof errors.JWSSignatureVerificationFailed) return 'its signature does not match';
  if (err instanceof errors.JWTClaimValidationFailed) return `its "${err.claim}" claim is not accepted (${err.reason})`;
  if (err instanceof errors.JOSEAlgNotAllowed) return 'its algorithm is not allowed';
  if (err instanceof errors.JWKSNoMatchingKey) return 'no key of the issuer matches it';
  if (err instanceof errors.JWTInvalid || err instanceof errors.JWSInvalid) return 'it is not a well-formed JWT';
  if (err instanceof errors.JWKSTimeout) return "the issuer's key set did not answer in time";
  return 'it could not be verified';
}

function checkJwtOptions(options: JwtSubjectsOptions): JwtSubjectsOptions {
  const allowed = ['jwksUrl', 'jwks', 'key', 'issuer', 'audience', 'algorithms', 'clockTolerance', 'subjectClaim', 'scopesClaim', 'tokenScopes', 'subject'];
  surfaceOptions(options, allowed, 'jwtSubjects options', 'jwtSubjects needs options: a key source (jwksUrl, jwks or key) and subject defaults.');
  const sources = [options.jwksUrl, options.jwks, options.key].filter((s) => s !== undefined).length;
  if (sources !== 1) throw new AgentKeyError('invalid_argument', 'jwtSubjects needs exactly one key source: jwksUrl, jwks or key.');
  if (options.jwksUrl !== undefined) {
    try {
      const url = new URL(options.jwksUrl);
      if (url.protocol !== 'https:' && url.hostname !== 'localhost' && url.hostname !== '127.0.0.1') throw new Error('not https');
    } catch {
      throw new AgentKeyError('invalid_argument', 'jwksUrl must be an https URL (http only for localhost).');
    }
  }
  if (options.algorithms !== undefined && (!Array.isArray(options.algorithms) || options.algorithms.length === 0 || options.algorithms.some((a) => typeof a !== 'string' || a.toLowerCase() === 'none'))) {
    throw new AgentKeyError('invalid_argument', "algorithms must be a non-empty list of JWS algorithm names, never 'none'.");
  }
  if (!options.subject || typeof options.subject !== 'object') {
    throw new AgentKeyError('invalid_argument', 'jwtSubjects needs subject defaults, e.g. { budgetCents: 500, budgetPeriod: "day", scopes: ["proxy.chat"] }.');
  }
  return options;
}
