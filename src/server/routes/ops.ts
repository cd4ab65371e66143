import { createRoute, z } from '@hono/zod-openapi';
import { TIMEOUT, withTimeout } from '../../http/verify.js';
import { RefusalError, refuse } from '../../http/errors.js';
import { errorDetail } from '../errors.js';
import type { Metrics } from '../metrics.js';
import type { Logger } from '../options.js';
import { errors, router } from '../openapi.js';
import * as S from '../schemas.js';

export interface OpsOptions {
  /** Throws when the database is down. */
  health: (() => Promise<void>) | undefined;
  database: 'pglite' | 'postgres';
  /** How PostgreSQL is reached (a pooler? does the key cache hear changes?), when known. */
  connection: { pooled: boolean; cache: 'notify' | 'fallback' } | undefined;
  timeoutMs: number;
  metrics: Metrics;
  log: Logger | undefined;
}

/** For operators: /healthz and /metrics. No key: expose them to monitoring, not to the internet. */
export function opsRoutes({ health, database, connection, timeoutMs, metrics, log }: OpsOptions) {
  const app = router();

  app.openapi(
    createRoute({
      method: 'get', path: '/healthz', tags: ['operations'], operationId: 'health', summary: 'Liveness and database reachability.',
      responses: {
        200: { description: 'Healthy', content: { 'application/json': { schema: S.Health } } },
        ...errors(503),
      },
    }),
    async (c) => {
      try {
        await withTimeout(Promise.resolve(health?.()), timeoutMs);
      } catch (err) {
        log?.error({ requestId: c.get('requestId'), err: err === TIMEOUT ? 'timed out' : errorDetail(err) }, 'health check failed');
        throw new RefusalError(refuse('unhealthy'));
      }
      return c.json({ status: 'ok' as const, database, ...(connection ? { pooled: connection.pooled, cache: connection.cache } : {}) }, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'get', path: '/metrics', tags: ['operations'], operationId: 'metrics',
      summary: 'Prometheus metrics: requests, verifications, charges, holds, releases, overage, the cache, and Node process metrics.',
      responses: {
        200: { description: 'The Prometheus text format', content: { 'text/plain': { schema: z.string() } } },
        ...errors(),
      },
    }),
    async (c) => {
      c.header('content-type', metrics.registry.contentType);
      return c.body(await metrics.registry.metrics(), 200) as never;
    },
  );

  return app;
}
