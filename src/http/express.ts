import { createRequire } from 'node:module';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { AgentKey, ValidKey } from '../agentkey.js';
import { AgentKeyError } from '../errors.js';
import { isCentsNumber } from '../money.js';
import { type HttpError, packageBody, sendJson } from './errors.js';
import { type HeldReservation, type HoldOptions, checkGuardOptions, settleHold, takeHold } from './hold.js';
import { refuse } from './refusals.js';
import { selfServeHandlers, type AgentKeyRoutesOptions, checkRoutesOptions } from './self-serve.js';
import {
  type Authenticate,
  type Identity,
  type VerifyOptions,
  checkAgentKey,
  checkVerifyOptions,
  keyAuthenticator,
  keyFromHeaders,
  verifyIdentity,
} from './verify.js';

export type { AgentKeyRoutesOptions, RouteOptions } from './self-serve.js';
export type { HeldReservation } from './hold.js';

// As the package declared it: handlers behind agentKeyMiddleware read `req.agentKey` typed.
declare global {
  // eslint-disable-next-line @typescript-eslint/no-namespace
  namespace Express {
    interface Request {
      /** The validated key, set by agentKeyMiddleware. */
      agentKey?: ValidKey;
      /** The hold taken for this request, when the middleware has `reserveCents`. */
      agentKeyReservation?: HeldReservation;
    }
  }
}

/** Options of `agentKeyMiddleware`. */
export type AgentKeyMiddlewareOptions = VerifyOptions & HoldOptions<Req>;

type Req = IncomingMessage & {
  agentKey?: ValidKey;
  agentKeyReservation?: HeldReservation;
  body?: unknown;
  ip?: string;
  path?: string;
};
type Res = ServerResponse & { locals?: Record<string, unknown> };
type Next = (err?: unknown) => void;

/** Refusals in the package's shape: `{ error: 'budget_exceeded', code, message }` (with a rate limit's Retry-After). */
function send(res: Res, error: HttpError): void {
  for (const [name, value] of Object.entries(error.headers ?? {})) res.setHeader(name, value);
  sendJson(res, error.status, packageBody(error));
}

/**
 * Express middleware, answering as the package's did: 401 `{ error: 'Missing API key' }`,
 * 401 `{ error: 'invalid' | 'expired' | 'revoked' }`, 429 `{ error: 'budget_exceeded' }`
 * for a key with nothing left to spend, 403 `{ error: 'insufficient_scope', required,
 * available }`, `{ error: 'auth_unavailable' }` when the key store fails (500) or does
 * not answer in time (503); each also with this project's `code` and `message`, from
 * the refusal table. On success the validation result is
 * `req.agentKey` (and `res.locals.agentKey`).
 *
 * With `reserveCents`, it also holds that much of the budget before the handler (429
 * when it does not fit) and settles the hold when the response ends: it commits
 * `res.locals.costCents` if the handler set it, else the whole hold on a success, and
 * releases the hold when the handler failed (status >= 400) or the client went away.
 *
 * @example app.post('/api/proxy', agentKeyMiddleware(ak, { scope: 'proxy.chat', reserveCents: 50 }), handler)
 */
export function agentKeyMiddleware(ak: AgentKey, options: AgentKeyMiddlewareOptions = {}) {
  checkAgentKey(ak, 'agentKeyMiddleware');
  return expressGuard(ak, options, keyAuthenticator(ak));
}

/** agentKeyMiddleware for any kind of bearer (agentkey keys, JWTs, Clerk tokens), through `authenticate`. */
export function expressGuard(ak: AgentKey, options: AgentKeyMiddlewareOptions, authenticate: Authenticate) {
  const { verify: opts, hold } = checkGuardOptions<Req>(options, 'Express middleware options');
  const identities = new WeakMap<Req, Identity>();
  const auth = authMiddleware(ak, opts, authenticate, identities);
  if (hold.reserveCents === undefined) return auth;
  return async function agentKeyAuthAndHold(req: Req, res: Res, next: Next): Promise<void> {
    await auth(req, res, async () => {
      const identity = identities.get(req) as Identity;
      const outcome = await takeHold((o) => identity.reserve(o), req, hold, opts.timeoutMs);
      if (!outcome.ok) return send(res, outcome.error);
      // The client left while the hold was being taken: 'close' has fired already and would
      // never reach the listeners below, so give the hold back now and skip the handler.
      if (res.closed || res.destroyed) {
        void settleHold(ak, outcome.hold, undefined, false, hold.onSettleError);
        return;
      }
      req.agentKeyReservation = outcome.hold;
      if (res.locals) res.locals.agentKeyReservation = outcome.hold;
      let settled = false;
      const settle = () => {
        if (settled) return;
        settled = true;
        // 'finish' means the whole response was sent; 'close' before it, that the client left.
        const succeeded = res.writableFinished && res.statusCode < 400;
        const reported = res.locals?.costCents;
        void settleHold(ak, outcome.hold, reported, succeeded, hold.onSettleError);
        if (!res.writableFinished && res.locals && req.agentKey && !isCentsNumber(reported)) {
          recordLateCost(ak, res.locals, req.agentKey.keyId, outcome.hold.reservationId, hold.onSettleError);
        }
      };
      res.once('finish', settle);
      res.once('close', settle);
      next();
    });
  };
}

function authMiddleware(
  ak: AgentKey,
  opts: ReturnType<typeof checkVerifyOptions>,
  authenticate: Authenticate = keyAuthenticator(ak),
  identities?: WeakMap<Req, Identity>,
) {
  return async function agentKeyAuth(req: Req, res: Res, next: Next): Promise<void> {
    const outcome = await verifyIdentity(ak, keyFromHeaders((name) => req.headers[name]), authenticate, opts);
    if (!outcome.ok) return send(res, outcome.error);
    // The request's concurrency slot is freed when the response ends: sent ('finish'), or the
    // client gone or the handler's error ('close', which follows every end).
    res.once('finish', outcome.release);
    res.once('close', outcome.release);
    if (res.closed || res.destroyed) outcome.release();
    identities?.set(req, outcome.identity);
    req.agentKey = outcome.key;
    if (res.locals) res.locals.agentKey = outcome.key;
    next();
  };
}

/**
 * The client left before the handler reported a cost, so the hold was released; but the
 * upstream call may still finish and cost money. If the handler reports that cost later,
 * it is recorded as an adjustment (budgets cannot refuse money already spent).
 */
function recordLateCost(
  ak: AgentKey,
  locals: Record<string, unknown>,
  keyId: number,
  reservationId: string,
  onError: (err: unknown) => void = (err) => console.error('agentkey: recording a late cost failed.', err),
): void {
  let value: unknown;
  Object.defineProperty(locals, 'costCents', {
    configurable: true,
    enumerable: true,
    get: () => value,
    set: (cost: unknown) => {
      value = cost;
      if (!isCentsNumber(cost) || cost === 0) return;
      const reason = 'cost reported after the client went away';
      ak.adjust(keyId, { costCents: cost, reason, metadata: { reservationId } }).catch((err: unknown) => {
        try {
          onError(err);
        } catch {
          /* a throwing onSettleError must not crash the process */
        }
      });
    },
  });
}

/**
 * The package's self-serve routes as an Express router: POST /signup, GET /sdk-keys/me,
 * POST /sdk-keys and DELETE /sdk-keys/:id. Needs `express` installed (a peer dependency).
 *
 * @example app.use(createAgentKeyRoutes(ak, { signupScopes: ['proxy.chat'] }))
 */
export function createAgentKeyRoutes(ak: AgentKey, options: AgentKeyRoutesOptions = {}) {
  checkAgentKey(ak, 'createAgentKeyRoutes');
  const opts = checkRoutesOptions(options);
  const express = loadExpress();
  const router = express.Router();
  const verifyOpts = checkVerifyOptions({ timeoutMs: opts.timeoutMs });
  const auth = authMiddleware(ak, verifyOpts);
  const parse = express.json({ limit: '16kb' });
  // JSON is parsed per route, and parse errors answered per route, so the router never
  // touches the requests (or the errors) of the rest of the app.
  const json = (req: Req, res: Res, next: Next) =>
    parse(req, res, (err?: unknown) => {
      if (!err) return next();
      const tooLarge = (err as { type?: string }).type === 'entity.too.large';
      send(res, tooLarge ? refuse('body_too_large', '16 KB of JSON') : refuse('invalid_json'));
    });
  const handlers = selfServeHandlers(ak, opts);
  const run = (handler: (input: { body: unknown; key: ValidKey | undefined; ip: string; id?: string }) => Promise<{ status: number; body: unknown }>) =>
    async (req: Req, res: Res) => {
      const out = await handler({
        body: req.body,
        key: req.agentKey,
        ip: req.ip ?? req.socket.remoteAddress ?? 'unknown',
        // The raw last path segment: ids are digits, and a malformed %-escape must be our
        // JSON 400, not a decoding error thrown to the app by the router (as ':id' would).
        id: req.path?.replace(/\/$/, '').split('/').pop(),
      });
      sendJson(res, out.status, out.body);
    };
  router.post('/signup', json, run(handlers.signup));
  router.get('/sdk-keys/me', auth, run(handlers.me));
  router.post('/sdk-keys', auth, json, run(handlers.createChild));
  router.delete(/^\/sdk-keys\/[^/]+\/?$/i, auth, run(handlers.revoke));
  router.patch(/^\/sdk-keys\/[^/]+\/?$/i, auth, json, run(handlers.update));
  return router;
}

interface ExpressLike {
  Router(): {
    get(path: string, ...handlers: unknown[]): void;
    post(path: string, ...handlers: unknown[]): void;
    delete(path: string | RegExp, ...handlers: unknown[]): void;
    patch(path: string | RegExp, ...handlers: unknown[]): void;
  } & ((req: unknown, res: unknown, next: unknown) => void);
  json(options: { limit: string }): (req: unknown, res: unknown, next: (err?: unknown) => void) => void;
}

function loadExpress(): ExpressLike {
  try {
    return createRequire(import.meta.url)('express') as ExpressLike;
  } catch (err) {
    throw new AgentKeyError('invalid_argument', 'createAgentKeyRoutes needs the express package; run npm install express.', { cause: err });
  }
}
