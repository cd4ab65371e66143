import type { Context, Hono, MiddlewareHandler } from 'hono';
import { methodNotAllowed } from 'hono/method-not-allowed';
import type { Env } from '../context.js';
import { type HttpError, refuse } from '../../http/errors.js';

/**
 * Hono's method-not-allowed: a known path asked with a method it does not take is a 405
 * method_not_allowed with an `Allow` header, not a 404; an unknown path stays 404.
 * `send` answers it as the service answers every error on that path.
 */
export function wrongMethod(app: Hono<Env>, send: (c: Context<Env>, refusal: HttpError) => Response): MiddlewareHandler<Env> {
  return methodNotAllowed({
    app,
    onMethodNotAllowed: (c, methods) => {
      const allow = methods.join(', ');
      const res = send(c, refuse('method_not_allowed', allow));
      res.headers.set('Allow', allow);
      return res;
    },
  }) as MiddlewareHandler<Env>;
}
