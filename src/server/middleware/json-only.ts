import type { MiddlewareHandler } from 'hono';
import { RefusalError, refuse } from '../../http/errors.js';

// The rule @hono/zod-openapi's validators apply, so a type they refuse is refused here first, clearly.
const JSON_TYPE = /^application\/([a-z-.]+\+)?json(;\s*[a-zA-Z0-9-]+=([^;]+))*$/i;

/** 415 for a body that is not declared as JSON: the validators would otherwise see it as empty. */
export const jsonOnly: MiddlewareHandler = async function jsonOnly(c, next) {
  const method = c.req.method;
  if (method === 'POST' || method === 'PUT' || method === 'PATCH') {
    const length = c.req.header('content-length');
    const hasBody = (length !== undefined && length !== '0') || c.req.header('transfer-encoding') !== undefined;
    const type = c.req.header('content-type') ?? '';
    if (hasBody && !JSON_TYPE.test(type)) {
      throw new RefusalError(refuse('unsupported_media_type'));
    }
  }
  await next();
};
