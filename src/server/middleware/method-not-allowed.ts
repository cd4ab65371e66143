import type { Hono, MiddlewareHandler } from 'hono';
import { methodNotAllowed } from 'hono/method-not-allowed';
import type { Env } from '../context.js';
import { errorBody } from '../errors.js';

/**
 * Hono's method-not-allowed: a known path asked with a method it does not take is a 405
 * method_not_allowed with an `Allow` header, not a 404; an unknown path stays 404.
 */
export function wrongMethod(app: Hono<Env>): MiddlewareHandler<Env> {
  return methodNotAllowed({
    app,
    onMethodNotAllowed: (c, methods) => {
      const allow = methods.join(', ');
      c.set('errorCode', 'method_not_allowed');
      return c.json(errorBody('method_not_allowed', `${c.req.method} is not a method of ${c.req.path}; it takes ${allow}.`), 405, { Allow: allow });
    },
  }) as MiddlewareHandler<Env>;
}
