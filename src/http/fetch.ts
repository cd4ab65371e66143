import type { AgentKey, ValidKey } from '../agentkey.js';
import type { HttpErrorBody } from './errors.js';
import { type HeldReservation, type HoldOptions, checkGuardOptions, settleHold, takeHold } from './hold.js';
import { type Authenticate, type VerifyOptions, checkAgentKey, keyAuthenticator, keyFromHeaders, verifyIdentity } from './verify.js';

export type { HeldReservation } from './hold.js';

export type FetchAgentKeyOptions = VerifyOptions & HoldOptions<Request>;

export type GuardResult =
  | {
      ok: true;
      agentKey: ValidKey;
      /** The hold taken with `reserveCents`. */
      reservation?: HeldReservation;
      /**
       * Settles the hold (a no-op without one): commits `costCents` when given, else the
       * whole hold when `succeeded` (default true), else releases it. Also frees the
       * request's concurrency slot: with a concurrency limit, call it when the request
       * ends, however it ends (`withAgentKey` does). Never throws.
       */
      settle(outcome?: { costCents?: number; succeeded?: boolean }): Promise<void>;
    }
  | {
      ok: false;
      status: number;
      body: HttpErrorBody;
      /** The refusal as a JSON Response, ready to return. */
      response: Response;
    };

export interface AgentKeyContext {
  agentKey: ValidKey;
  reservation?: HeldReservation;
  /** Report the real cost: committed instead of the whole hold. */
  reportCost(costCents: number): void;
}

/**
 * A web-standard guard: `(request) => Promise<GuardResult>`, for any fetch runtime
 * (Next.js route handlers, Bun, Deno, workers). Same statuses and JSON errors as the
 * Express middleware.
 *
 * @example
 * const guard = agentKeyGuard(ak, { scope: 'proxy.chat' });
 * export async function POST(request: Request) {
 *   const g = await guard(request);
 *   if (!g.ok) return g.response;
 *   return Response.json({ hello: g.agentKey.name });
 * }
 */
export function agentKeyGuard(ak: AgentKey, options: FetchAgentKeyOptions = {}): (request: Request) => Promise<GuardResult> {
  checkAgentKey(ak, 'agentKeyGuard');
  return fetchGuard(ak, options, keyAuthenticator(ak));
}

/** agentKeyGuard for any kind of bearer, through `authenticate` (used by agentkey/jwt and agentkey/clerk). */
export function fetchGuard(ak: AgentKey, options: FetchAgentKeyOptions, authenticate: Authenticate): (request: Request) => Promise<GuardResult> {
  const { verify: opts, hold } = checkGuardOptions<Request>(options, 'fetch guard options');
  return async function guard(request: Request): Promise<GuardResult> {
    const outcome = await verifyIdentity(ak, keyFromHeaders((name) => request.headers.get(name)), authenticate, opts);
    if (!outcome.ok) return refusal(outcome.error.status, outcome.error.body, outcome.error.headers);
    // settle() also frees the request's concurrency slot (a key with a concurrency limit needs it called).
    if (hold.reserveCents === undefined) return { ok: true, agentKey: outcome.key, settle: async () => outcome.release() };
    const taken = await takeHold((o) => outcome.identity.reserve(o), request, hold, opts.timeoutMs);
    if (!taken.ok) {
      outcome.release();
      return refusal(taken.error.status, taken.error.body, taken.error.headers);
    }
    let settled = false;
    return {
      ok: true,
      agentKey: outcome.key,
      reservation: taken.hold,
      async settle(result = {}) {
        if (settled) return;
        settled = true;
        outcome.release();
        await settleHold(ak, taken.hold, result.costCents, result.succeeded ?? true, hold.onSettleError);
      },
    };
  };
}

/**
 * Wraps a `(request, context) => Response` handler: refusals are answered for it, and a
 * hold taken with `reserveCents` is settled when it returns (committing the cost it
 * reported with `context.reportCost()`, else the whole hold on a status below 400) or
 * released when it fails or throws.
 *
 * @example export const POST = withAgentKey(ak, { scope: 'proxy.chat', reserveCents: 50 }, async (req, { agentKey, reportCost }) => { ... })
 */
export function withAgentKey(
  ak: AgentKey,
  options: FetchAgentKeyOptions,
  handler: (request: Request, context: AgentKeyContext) => Response | Promise<Response>,
): (request: Request) => Promise<Response> {
  if (typeof handler !== 'function') throw new TypeError('withAgentKey needs a handler function as its third argument.');
  const guard = agentKeyGuard(ak, options);
  return wrapHandler(guard, handler);
}

export function wrapHandler(
  guard: (request: Request) => Promise<GuardResult>,
  handler: (request: Request, context: AgentKeyContext) => Response | Promise<Response>,
): (request: Request) => Promise<Response> {
  return async function guarded(request: Request): Promise<Response> {
    const g = await guard(request);
    if (!g.ok) return g.response;
    let reported: number | undefined;
    const context: AgentKeyContext = {
      agentKey: g.agentKey,
      ...(g.reservation ? { reservation: g.reservation } : {}),
      reportCost: (cents) => void (reported = cents),
    };
    let response: Response;
    try {
      response = await handler(request, context);
    } catch (err) {
      await g.settle({ succeeded: false });
      throw err;
    }
    await g.settle({ ...(reported !== undefined ? { costCents: reported } : {}), succeeded: response.status < 400 });
    return response;
  };
}

function refusal(status: number, body: HttpErrorBody, headers?: Record<string, string>): GuardResult {
  return { ok: false, status, body, response: Response.json(body, { status, ...(headers ? { headers } : {}) }) };
}
