import { randomUUID } from 'node:crypto';
import type { MiddlewareHandler } from 'hono';
import { matchedRoutes } from 'hono/route';
import type { Env } from '../context.js';
import type { Metrics } from '../metrics.js';
import type { Logger } from '../options.js';

/**
 * Gives each request an id (the client's `x-request-id`, up to 128 characters, or a new
 * one), answers with it, and when the request is done counts it and logs one line: info
 * for 2xx/3xx, warn for 4xx, error for 5xx; an error's line carries its code.
 */
export function requestLog(metrics: Metrics, log: Logger | undefined): MiddlewareHandler<Env> {
  return async function requestLog(c, next) {
    const started = performance.now();
    const requestId = c.req.header('x-request-id')?.slice(0, 128) || randomUUID();
    c.set('requestId', requestId);
    c.header('x-request-id', requestId);
    try {
      await next();
    } finally {
      const seconds = (performance.now() - started) / 1000;
      const status = c.res.status;
      // The route's pattern ('/v1/keys/:id'), even when a middleware answered before it ran.
      const route = matchedRoutes(c).filter((r) => r.method !== 'ALL').at(-1)?.path ?? 'unmatched';
      metrics.request(c.req.method, route, status, seconds);
      if (log) {
        const line = { requestId, method: c.req.method, route, path: c.req.path, status, ms: Math.round(seconds * 10_000) / 10 };
        if (status >= 500) log.error({ ...line, code: c.get('errorCode') }, 'request');
        else if (status >= 400) log.warn({ ...line, code: c.get('errorCode') }, 'request');
        else log.info(line, 'request');
      }
    }
  };
}
