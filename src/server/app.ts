import { OpenAPIHono } from '@hono/zod-openapi';
import { HTTPException } from 'hono/http-exception';
import type { Context } from 'hono';
import type { AgentKey } from '../agentkey.js';
import { checkAgentKey } from '../http/verify.js';
import type { Env } from './context.js';
import { type HttpError, refuse } from '../http/errors.js';
import { errorDetail, sendError, toHttp } from './errors.js';
import { createProxy } from '../proxy/proxy.js';
import { createMetrics } from './metrics.js';
import { adminAuth } from './middleware/admin-auth.js';
import { jsonOnly } from './middleware/json-only.js';
import { bodyLimitOf, requestTimeout } from './middleware/limits.js';
import { wrongMethod } from './middleware/method-not-allowed.js';
import { requestLog } from './middleware/request-log.js';
import { type AppOptions, checkAppOptions } from './options.js';
import { adminRoutes } from './routes/admin.js';
import { agentRoutes } from './routes/agent.js';
import { dashboardRoutes } from './routes/dashboard.js';
import { opsRoutes } from './routes/ops.js';
import { reservationRoutes } from './routes/reservations.js';
import { webhookRoutes } from './routes/webhooks.js';
import { inPackageShape, isSelfServePath, selfServeRoutes } from './routes/self-serve.js';

export { type AppOptions, type Logger, type ProxyAppOptions, checkAppOptions } from './options.js';

/**
 * The agentkey HTTP service as a Hono app: the admin API, the agent API, /openapi.json,
 * /healthz and /metrics, with one JSON error shape (and, with `proxy`, the LLM proxy, in the
 * upstream APIs' shapes). Every refusal is a row of the
 * refusal table (src/http/refusals.ts), as on every agentkey HTTP surface. It runs on
 * any fetch runtime; `startServer()` runs it on Node with storage and graceful shutdown.
 *
 * @example
 * const { app } = createApp(ak, { adminKey: process.env.AGENTKEY_ADMIN_KEY });
 * const res = await app.request('/v1/verify', { method: 'POST', body: JSON.stringify({ key }), headers: { 'content-type': 'application/json' } });
 */
export function createApp(ak: AgentKey, options: AppOptions) {
  checkAgentKey(ak, 'createApp');
  const requireAdmin = adminAuth(options.adminKey);
  const { limit, timeoutMs, selfServe } = checkAppOptions(options);
  const log = options.logger;
  const metrics = createMetrics(ak);
  const app = new OpenAPIHono<Env>();
  // The self-serve routes answer in the @katrinalaszlo/agentkey package's shape even when the service refused the request first (404, 405, 413, 415).
  const answer = (c: Context<Env>, error: HttpError): Response => {
    if (!selfServe || !isSelfServePath(c.req.path)) return sendError(c, error);
    const { status, body } = inPackageShape(error);
    c.set('errorCode', error.body.error.code);
    return c.json(body as object, status as 400);
  };

  // Outermost first: the log sees the final answer, the 405 replaces a 404, then the limits.
  app.use('*', requestLog(metrics, log));
  // The LLM proxy (issue 18), before the /v1 API's middleware: it reads its own bodies (its own
  // limit, any JSON type) and answers in the upstream APIs' error shapes, not the service's.
  const proxy = options.proxy ? createProxy(ak, { ...options.proxy, ...(log ? { logger: log } : {}), observer: metrics.proxyObserver }) : undefined;
  if (proxy) app.route('/', proxy);
  app.use('*', wrongMethod(app, answer));
  app.use('*', jsonOnly);
  app.use('*', bodyLimitOf(limit));
  app.use('/v1/*', requestTimeout(timeoutMs));

  app.route('/', adminRoutes(ak, requireAdmin));
  // Webhooks and the outbox (admin).
  app.route('/', webhookRoutes(ak, requireAdmin));
  app.route('/', agentRoutes(ak, metrics));
  app.route('/', reservationRoutes(ak, metrics));
  app.route('/', opsRoutes({ health: options.health, database: options.database ?? 'postgres', connection: options.connection, timeoutMs, metrics, log }));
  if (options.dashboard !== false) app.route('/', dashboardRoutes());
  if (selfServe) app.route('/', selfServeRoutes(ak, selfServe, options.clientAddress ?? (() => 'unknown')));

  app.doc31('/openapi.json', {
    openapi: '3.1.0',
    info: {
      title: 'agentkey',
      version: '1',
      description:
        'Scoped, budgeted, time-bounded API keys for AI agents. Admin routes need the admin key as a bearer; agent routes need the agent key. ' +
        'Every error is { "error": { "code", "message" } }; a known path asked with another method is a 405 with an Allow header.',
    },
  });

  app.notFound((c) => answer(c, refuse('route_not_found', `${c.req.method} ${c.req.path}`)));
  app.onError((err, c) => {
    // Hono's bearer-auth has already made its answer (see middleware/admin-auth.ts).
    if (err instanceof HTTPException && err.res) return err.getResponse();
    const error = toHttp(err);
    if (error.status >= 500) log?.error({ requestId: c.get('requestId'), err: errorDetail(err) }, 'request failed');
    return answer(c, error);
  });

  return { app, metrics, proxy };
}
