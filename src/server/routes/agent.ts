import { createRoute } from '@hono/zod-openapi';
import type { AgentKey } from '../../agentkey.js';
import { RefusalError, refusalOf } from '../../http/errors.js';
import type { Metrics } from '../metrics.js';
import { bodyErrors, router } from '../openapi.js';
import * as S from '../schemas.js';

/** The agent API: checking a key and charging it. The agent's own key, never the admin key. */
export function agentRoutes(ak: AgentKey, metrics: Metrics) {
  const app = router();

  app.openapi(
    createRoute({
      method: 'post', path: '/v1/verify', tags: ['agent'], operationId: 'verifyKey',
      summary: 'Validate a key (and a scope): 200 with valid true, or false and a reason.',
      request: { body: { required: true, content: { 'application/json': { schema: S.VerifyBody } } } },
      responses: {
        200: { description: 'The validation result', content: { 'application/json': { schema: S.Verification } } },
        ...bodyErrors(),
        429: {
          description: "rate_limited: the key's or its account's rate limit has no room left (limit, limitedBy, retryAfterMs, resetAt); the Retry-After header says when to retry, in seconds.",
          content: { 'application/json': { schema: S.ErrorBody } },
          headers: { 'Retry-After': { description: 'Seconds until a retry can pass (rounded up).', schema: { type: 'string' as const, example: '12' } } },
        },
      },
    }),
    async (c) => {
      const { key, scope } = c.req.valid('json');
      const result = await ak.validate(key);
      // A rate limit is the one refusal /v1/verify answers as an error: the caller must wait.
      if (!result.valid && result.reason === 'rate_limited') {
        metrics.verified('rate_limited');
        throw new RefusalError(refusalOf(result));
      }
      if (result.valid && scope !== undefined && !ak.hasScope(result, scope)) {
        metrics.verified('insufficient_scope');
        return c.json({ valid: false, reason: 'insufficient_scope' as const, requiredScope: scope }, 200);
      }
      metrics.verified(result.valid ? 'valid' : result.reason);
      return c.json(result, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post', path: '/v1/charge', tags: ['agent'], operationId: 'charge',
      summary: "Charge a cost to the key's budget (and its ancestors' and account's): costCents, or an LLM call's model and usage, priced by the service.",
      request: { body: { required: true, content: { 'application/json': { schema: S.ChargeBody } } } },
      responses: { 200: { description: 'Charged', content: { 'application/json': { schema: S.Charged } } }, ...bodyErrors(401, 409, 429) },
    }),
    async (c) => {
      const { key, ...body } = c.req.valid('json');
      const spend = S.costOf(body);
      const result = await ak.trackUsage(key, spend);
      if (!result.success) {
        const refusal = refusalOf(result);
        metrics.refused('charge', refusal.body.error.code);
        throw new RefusalError(refusal);
      }
      // A cost priced from usage is in the result (costCents), one given in cents in the request.
      metrics.charged(result, 'costCents' in spend ? spend.costCents : (result.costCents ?? 0));
      return c.json(result, 200);
    },
  );

  return app;
}
