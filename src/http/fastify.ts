import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { AgentKey, ValidKey } from '../agentkey.js';
import { type HeldReservation, type HoldOptions, checkGuardOptions, settleHold, takeHold } from './hold.js';
import { type Authenticate, type VerifyOptions, checkAgentKey, keyAuthenticator, keyFromHeaders, verifyIdentity } from './verify.js';

export type { HeldReservation } from './hold.js';

declare module 'fastify' {
  interface FastifyRequest {
    /** The validation result, set by the agentkey preHandler. */
    agentKey?: ValidKey;
    /** The hold taken with `reserveCents`. */
    agentKeyReservation?: HeldReservation;
    /** Set it in the handler to commit the real cost instead of the whole hold. */
    costCents?: number;
  }
}

export type FastifyAgentKeyOptions = VerifyOptions & HoldOptions<FastifyRequest>;

/**
 * A Fastify `preHandler`: the same statuses and JSON errors as the Express middleware.
 * On success `request.agentKey` is the validation result. With `reserveCents` it holds
 * that much and settles the hold when the response is sent: `request.costCents` if the
 * handler set it, else the whole hold on a status below 400; released on failure or when
 * the client goes away.
 *
 * @example app.post('/api/chat', { preHandler: agentKeyPreHandler(ak, { scope: 'proxy.chat' }) }, async (req) => req.agentKey)
 */
export function agentKeyPreHandler(ak: AgentKey, options: FastifyAgentKeyOptions = {}) {
  checkAgentKey(ak, 'agentKeyPreHandler');
  return fastifyGuard(ak, options, keyAuthenticator(ak));
}

/** The preHandler for any kind of bearer, through `authenticate` (used by agentkey/jwt and agentkey/clerk). */
export function fastifyGuard(ak: AgentKey, options: FastifyAgentKeyOptions, authenticate: Authenticate) {
  const { verify: opts, hold } = checkGuardOptions<FastifyRequest>(options, 'Fastify preHandler options');
  return async function agentKeyPreHandler(request: FastifyRequest, reply: FastifyReply): Promise<void> {
    const outcome = await verifyIdentity(ak, keyFromHeaders((name) => request.headers[name]), authenticate, opts);
    if (!outcome.ok) {
      await reply.code(outcome.error.status).headers(outcome.error.headers ?? {}).send(outcome.error.body);
      return;
    }
    request.agentKey = outcome.key;
    const raw = reply.raw;
    // The request's concurrency slot is freed when the response ends: sent, or the client gone.
    raw.once('finish', outcome.release);
    raw.once('close', outcome.release);
    if (raw.destroyed) outcome.release();
    if (hold.reserveCents === undefined) return;
    const taken = await takeHold((o) => outcome.identity.reserve(o), request, hold, opts.timeoutMs);
    if (!taken.ok) {
      await reply.code(taken.error.status).headers(taken.error.headers ?? {}).send(taken.error.body);
      return;
    }
    request.agentKeyReservation = taken.hold;
    let settled = false;
    const settle = (sent: boolean) => {
      if (settled) return;
      settled = true;
      void settleHold(ak, taken.hold, request.costCents, sent && reply.statusCode < 400, hold.onSettleError);
    };
    // 'finish': the whole response was sent (writableFinished can still read false then,
    // e.g. under inject); 'close' before any 'finish': the client left.
    raw.once('finish', () => settle(true));
    raw.once('close', () => settle(raw.writableFinished));
    if (raw.destroyed) settle(false);
  };
}

export interface AgentKeyPluginOptions extends FastifyAgentKeyOptions {
  ak: AgentKey;
}

/**
 * A Fastify plugin: `app.register(agentKeyPlugin, { ak, scope })` runs the preHandler
 * on every route of the context it is registered in (register it inside a plugin of
 * your own to guard only that plugin's routes).
 */
export const agentKeyPlugin = Object.assign(
  async function agentKeyPlugin(fastify: FastifyInstance, options: AgentKeyPluginOptions): Promise<void> {
    const { ak, ...rest } = options ?? ({} as AgentKeyPluginOptions);
    // Fastify's own register options may sit beside ours; anything else (say `scopes`) is
    // refused by agentKeyPreHandler, so a misspelt scope never turns the check off.
    const fastifyOwn = ['prefix', 'logLevel', 'logSerializers'];
    const own = Object.fromEntries(Object.entries(rest).filter(([k]) => !fastifyOwn.includes(k)));
    const preHandler = agentKeyPreHandler(ak, own);
    if (!fastify.hasRequestDecorator('agentKey')) fastify.decorateRequest('agentKey', undefined);
    fastify.addHook('preHandler', preHandler);
  },
  // As fastify-plugin does: the hook applies to the context the plugin is registered in.
  { [Symbol.for('skip-override')]: true, [Symbol.for('fastify.display-name')]: 'agentkey' },
);
