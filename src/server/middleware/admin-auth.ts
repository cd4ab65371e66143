import { timingSafeEqual } from 'node:crypto';
import type { Context, MiddlewareHandler } from 'hono';
import { bearerAuth } from 'hono/bearer-auth';
import { AgentKeyError } from '../../errors.js';
import { hashKey } from '../../keys.js';
import type { Env } from '../context.js';
import { refuse } from '../../http/errors.js';
import { sendError } from '../errors.js';

/** What a bearer token may hold (RFC 6750's b64token): what Hono's bearer-auth accepts. */
const TOKEN = /^[A-Za-z0-9._~+/-]+=*$/;

/** True when `key` can be sent as a bearer token: an admin key must be. */
export function isBearerToken(key: string): boolean {
  return TOKEN.test(key);
}

// bearer-auth's answers, from the refusal table (it adds the WWW-Authenticate challenge).
const missing = (c: Context<Env>) => sendError(c, refuse('missing_admin_key'));
const wrong = (c: Context<Env>) => sendError(c, refuse('invalid_admin_key'));

/**
 * Hono's bearer-auth for the admin routes: the bearer must be the admin key, compared as
 * its SHA-256 in constant time (the service stores only the hash). The options are
 * checked here, when the middleware is made. Every refusal is a 401 (a malformed
 * Authorization header too), with a `WWW-Authenticate` challenge.
 *
 * @example app.get('/v1/keys', adminAuth(process.env.AGENTKEY_ADMIN_KEY), listKeys)
 */
export function adminAuth(adminKey: string | { sha256: string }): MiddlewareHandler<Env> {
  if (typeof adminKey === 'string' && (adminKey.length < 16 || !isBearerToken(adminKey))) {
    throw new AgentKeyError('invalid_argument', 'The admin key must be at least 16 characters of letters, digits and . _ ~ + / - (a bearer token).');
  }
  const hex = typeof adminKey === 'string' ? hashKey(adminKey) : adminKey?.sha256;
  if (typeof hex !== 'string' || !/^[0-9a-f]{64}$/.test(hex)) {
    throw new AgentKeyError('invalid_argument', 'adminKey must be the admin key or { sha256: <64 hex digits> }.');
  }
  const expected = Buffer.from(hex, 'hex');
  return bearerAuth({
    verifyToken: (token) => timingSafeEqual(Buffer.from(hashKey(token), 'hex'), expected),
    noAuthenticationHeader: { message: missing },
    invalidAuthenticationHeader: { message: wrong },
    invalidToken: { message: wrong },
  }) as MiddlewareHandler<Env>;
}
