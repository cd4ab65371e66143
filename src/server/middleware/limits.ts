import type { MiddlewareHandler } from 'hono';
import { bodyLimit } from 'hono/body-limit';
import { HTTPException } from 'hono/http-exception';
import { timeout } from 'hono/timeout';
import { RefusalError, refuse } from '../../http/errors.js';

/** Hono's body limit, answering 413 body_too_large past `maxBytes`. */
export function bodyLimitOf(maxBytes: number): MiddlewareHandler {
  return bodyLimit({
    maxSize: maxBytes,
    onError: () => {
      throw new RefusalError(refuse('body_too_large', `${maxBytes} bytes`));
    },
  });
}

/** Hono's timeout: a request still waiting on the database after `ms` is answered 503 storage_timeout (see toHttp in ../errors.ts). */
export function requestTimeout(ms: number): MiddlewareHandler {
  return timeout(ms, () => new HTTPException(503, { message: 'timeout' }));
}
