import { type OpenAPIHono, z } from '@hono/zod-openapi';
import type { ApiSpec } from './apis.js';

/**
 * The proxy's routes in the service's OpenAPI document. The bodies are the upstream APIs'
 * own (OpenAI's and Anthropic's documents describe them); what is documented here is what
 * the proxy adds: the agent key, the refusals and the upstream failures, in each API's
 * error shape.
 */

const OpenAIError = z
  .object({
    error: z.object({
      message: z.string(),
      type: z.string().openapi({ example: 'rate_limit_error' }),
      param: z.null(),
      code: z.string().nullable().openapi({ example: 'budget_exceeded' }),
    }),
  })
  .openapi('ProxyOpenAIError');

const AnthropicError = z
  .object({
    type: z.literal('error'),
    error: z.object({
      type: z.string().openapi({ example: 'rate_limit_error' }),
      message: z.string(),
      details: z.object({ error_code: z.string().openapi({ example: 'budget_exceeded' }) }).optional(),
    }),
  })
  .openapi('ProxyAnthropicError');

const Body = z.object({ model: z.string().openapi({ example: 'gpt-4o-mini' }) }).passthrough().openapi({ description: "The upstream API's request body, as its SDK sends it." });

const ANSWERS: Record<number, string> = {
  400: "Not valid JSON (invalid_json), no model (invalid_request), a model with no price (unknown_model), a body the estimate cannot read (invalid_llm_request), or the upstream's own 4xx passed through.",
  401: 'A missing, unknown, expired or revoked agent key (missing_key, invalid_key, key_expired, key_revoked).',
  403: "The key lacks the proxy's scope (insufficient_scope), or its metadata's models do not allow the model (model_not_allowed).",
  404: 'No upstream of this name serves this API (upstream_not_found).',
  413: 'The body is over the proxy\'s limit (body_too_large).',
  429: "A budget cannot cover the request's worst case (budget_exceeded; Retry-After when its window's reset is known), or a rate or concurrency limit (rate_limited, with Retry-After).",
  502: "The upstream failed (upstream_error), refused the operator's credentials (upstream_auth_failed), or could not be reached (upstream_unreachable). Nothing is charged.",
  503: 'The key store did not answer in time (storage_timeout).',
  504: 'The upstream did not answer in time (upstream_timeout). Nothing is charged.',
};

const retryAfter = { 'Retry-After': { description: 'Seconds until a retry can pass (rounded up).', schema: { type: 'string' as const, example: '30' } } };

/** Declares `spec`'s route (`/proxy/{upstream}<path>`) in `app`'s document. */
export function documentRoute(app: Pick<OpenAPIHono, 'openAPIRegistry'>, spec: ApiSpec): void {
  app.openAPIRegistry.registerComponent('securitySchemes', 'agentKey', { type: 'http', scheme: 'bearer', description: 'An agentkey key (ak_...).' });
  app.openAPIRegistry.registerComponent('securitySchemes', 'agentKeyHeader', { type: 'apiKey', in: 'header', name: 'x-api-key', description: 'An agentkey key, as the Anthropic SDK sends it.' });
  const error = spec.flavor === 'anthropic' ? AnthropicError : OpenAIError;
  const errors = Object.fromEntries(
    Object.entries(ANSWERS).map(([status, description]) => [
      status,
      { description, content: { 'application/json': { schema: error } }, ...(status === '429' ? { headers: retryAfter } : {}) },
    ]),
  );
  app.openAPIRegistry.registerPath({
    method: 'post',
    path: `/proxy/{upstream}${spec.path}`,
    tags: ['proxy'],
    operationId: `proxy.${spec.api}`,
    summary: `${spec.flavor === 'anthropic' ? 'Anthropic' : 'OpenAI'}-compatible ${spec.path}, metered on the agent key's budget: the worst case is held, the reported usage committed.`,
    security: [{ agentKey: [] }, { agentKeyHeader: [] }],
    request: {
      params: z.object({ upstream: z.string().openapi({ example: spec.flavor, description: "The upstream's name in the proxy's configuration." }) }),
      body: { required: true, content: { 'application/json': { schema: Body } } },
    },
    responses: {
      200: {
        description: "The upstream's answer, passed through: JSON, or server-sent events for a stream.",
        content: { 'application/json': { schema: z.object({}).passthrough() }, 'text/event-stream': { schema: z.string() } },
      },
      ...errors,
    },
  });
}
