import type { Context, MiddlewareHandler } from 'hono';
import type { AgentKey, ValidKey } from '../agentkey.js';
import { type HeldReservation, type HoldOptions, checkGuardOptions, settleHold, takeHold } from './hold.js';
import { type Authenticate, type VerifyOptions, checkAgentKey, keyAuthenticator, keyFromHeaders, verifyIdentity } from './verify.js';

export type { HeldReservation } from './hold.js';

/** What the middleware puts in the context: `c.get('agentKey')`, typed. */
export type AgentKeyVariables = {
  agentKey: ValidKey;
  /** The hold taken with `reserveCents`. */
  agentKeyReservation: HeldReservation | undefined;
  /** Set it in the handler to commit the real cost instead of the whole hold. */
  costCents: number | undefined;
};
export type AgentKeyEnv = { Variables: AgentKeyVariables };

export type HonoAgentKeyOptions = VerifyOptions & HoldOptions<Context>;

/**
 * Hono middleware: the same statuses and JSON errors as the Express one, from the
 * refusal table (401, 403 with the required scope, 429, 500 or 503 fail-closed). The validation result is `c.get('agentKey')`.
 * With `reserveCents` it holds that much before the handler and settles the hold after
 * it: `c.set('costCents', n)` commits n, else the whole hold on success (status < 400)
 * and a release on failure.
 *
 * @example app.post('/api/chat', agentKey(ak, { scope: 'proxy.chat', reserveCents: 50 }), (c) => c.json(c.get('agentKey')))
 */
export function agentKey(ak: AgentKey, options: HonoAgentKeyOptions = {}): MiddlewareHandler<AgentKeyEnv> {
  checkAgentKey(ak, 'agentKey (hono)');
  return honoGuard(ak, options, keyAuthenticator(ak));
}

/** The Hono middleware for any kind of bearer, through `authenticate` (used by agentkey/jwt and agentkey/clerk). */
export function honoGuard(ak: AgentKey, options: HonoAgentKeyOptions, authenticate: Authenticate): MiddlewareHandler<AgentKeyEnv> {
  const { verify: opts, hold } = checkGuardOptions<Context>(options, 'Hono middleware options');
  return async function agentKeyMiddleware(c, next) {
    const outcome = await verifyIdentity(ak, keyFromHeaders((name) => c.req.header(name) ?? null), authenticate, opts);
    if (!outcome.ok) return c.json(outcome.error.body, outcome.error.status as 401, outcome.error.headers);
    c.set('agentKey', outcome.key);
    // The request's concurrency slot is freed when the handler is done, however it ends.
    try {
      if (hold.reserveCents === undefined) return await next();
      const taken = await takeHold((o) => outcome.identity.reserve(o), c as Context, hold, opts.timeoutMs);
      if (!taken.ok) return c.json(taken.error.body, taken.error.status as 429, taken.error.headers);
      c.set('agentKeyReservation', taken.hold);
      let succeeded = false;
      try {
        await next();
        // Hono catches a handler's throw and sets c.error; that is a failure too.
        succeeded = !c.error && c.res.status < 400;
      } finally {
        // Settled before the response leaves, so the client never sees money still held.
        await settleHold(ak, taken.hold, c.get('costCents'), succeeded, hold.onSettleError);
      }
    } finally {
      outcome.release();
    }
  };
}
