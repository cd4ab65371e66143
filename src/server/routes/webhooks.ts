import { type RouteConfig, createRoute } from '@hono/zod-openapi';
import type { MiddlewareHandler } from 'hono';
import type { AgentKey } from '../../agentkey.js';
import type { Env } from '../context.js';
import { RefusalError, refuse } from '../../http/errors.js';
import { bodyErrors, router, storeErrors } from '../openapi.js';
import * as S from '../schemas.js';

/**
 * The admin API of the outbox's consumers: webhook endpoints (the secret shown once, on
 * creation or rotation), their deliveries with every attempt, and the outbox itself (the
 * dashboard's recent events). Behind the admin key, as every admin route.
 */
export function webhookRoutes(ak: AgentKey, requireAdmin: MiddlewareHandler<Env>) {
  const app = router();
  app.openAPIRegistry.registerComponent('securitySchemes', 'adminKey', { type: 'http', scheme: 'bearer', description: 'The admin key.' });
  const adminRoute = <R extends Omit<RouteConfig, 'security' | 'tags' | 'middleware'>>(route: R) =>
    createRoute({ ...route, tags: ['webhooks'], security: [{ adminKey: [] }], middleware: [requireAdmin] as const });

  app.openapi(
    adminRoute({
      method: 'post', path: '/v1/webhooks', operationId: 'createWebhook', summary: 'Add a webhook endpoint (its signing secret is returned once).',
      request: { body: { required: true, content: { 'application/json': { schema: S.CreateWebhookBody } } } },
      responses: { 201: { description: 'Created', content: { 'application/json': { schema: S.CreatedWebhook } } }, ...bodyErrors(401) },
    }),
    async (c) => c.json(await ak.createWebhook(c.req.valid('json')), 201),
  );

  app.openapi(
    adminRoute({
      method: 'get', path: '/v1/webhooks', operationId: 'listWebhooks', summary: 'Every webhook endpoint, without secrets.',
      responses: { 200: { description: 'The endpoints', content: { 'application/json': { schema: S.WebhookList } } }, ...storeErrors(401) },
    }),
    async (c) => c.json({ webhooks: await ak.listWebhooks() }, 200),
  );

  app.openapi(
    adminRoute({
      method: 'get', path: '/v1/webhooks/{id}', operationId: 'getWebhook', summary: 'One webhook endpoint, without its secret.',
      request: { params: S.WebhookIdParam },
      responses: { 200: { description: 'The endpoint', content: { 'application/json': { schema: S.Webhook } } }, ...storeErrors(400, 401, 404) },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      const hook = await ak.getWebhook(id);
      if (!hook) throw new RefusalError(refuse('webhook_not_found', `No webhook endpoint has id ${id}.`));
      return c.json(hook, 200);
    },
  );

  app.openapi(
    adminRoute({
      method: 'patch', path: '/v1/webhooks/{id}', operationId: 'updateWebhook',
      summary: "Change an endpoint's url, events, account, description or enabled flag; rotateSecret: true returns a new secret once.",
      request: { params: S.WebhookIdParam, body: { required: true, content: { 'application/json': { schema: S.UpdateWebhookBody } } } },
      responses: { 200: { description: 'The endpoint as changed', content: { 'application/json': { schema: S.UpdatedWebhook } } }, ...bodyErrors(401, 404) },
    }),
    async (c) => c.json(await ak.updateWebhook(c.req.valid('param').id, c.req.valid('json')), 200),
  );

  app.openapi(
    adminRoute({
      method: 'delete', path: '/v1/webhooks/{id}', operationId: 'deleteWebhook', summary: 'Remove an endpoint with its deliveries.',
      request: { params: S.WebhookIdParam },
      responses: { 200: { description: 'Removed', content: { 'application/json': { schema: S.WebhookRemoved } } }, ...storeErrors(400, 401, 404) },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      if (!(await ak.deleteWebhook(id))) throw new RefusalError(refuse('webhook_not_found', `No webhook endpoint has id ${id}.`));
      return c.json({ id: Number(id), removed: true as const }, 200);
    },
  );

  app.openapi(
    adminRoute({
      method: 'get', path: '/v1/webhooks/{id}/deliveries', operationId: 'listWebhookDeliveries',
      summary: "An endpoint's deliveries, newest first, each with every attempt (page with before=<last id>).",
      request: { params: S.WebhookIdParam, query: S.DeliveryQuery },
      responses: { 200: { description: 'The deliveries', content: { 'application/json': { schema: S.DeliveryList } } }, ...storeErrors(400, 401, 404) },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      const q = c.req.valid('query');
      const deliveries = await ak.webhookDeliveries({
        webhookId: id,
        ...(q.status !== undefined ? { status: q.status } : {}),
        ...(q.before !== undefined ? { before: q.before } : {}),
        ...(q.limit !== undefined ? { limit: Number(q.limit) } : {}),
      });
      if (deliveries.length === 0 && !(await ak.getWebhook(id))) throw new RefusalError(refuse('webhook_not_found', `No webhook endpoint has id ${id}.`));
      return c.json({ deliveries }, 200);
    },
  );

  app.openapi(
    adminRoute({
      method: 'get', path: '/v1/outbox', operationId: 'listOutboxEvents',
      summary: 'The outbox, newest first: every event written (budget.threshold, key.revoked, key.expired, hold.expired, overage.recorded); page with before=<event id>.',
      request: { query: S.OutboxQuery },
      responses: { 200: { description: 'The events', content: { 'application/json': { schema: S.OutboxList } } }, ...storeErrors(400, 401) },
    }),
    async (c) => {
      const q = c.req.valid('query');
      const events = await ak.outboxEvents({
        ...(q.accountId !== undefined ? { accountId: q.accountId } : {}),
        ...(q.type !== undefined ? { type: q.type } : {}),
        ...(q.before !== undefined ? { before: q.before } : {}),
        ...(q.limit !== undefined ? { limit: Number(q.limit) } : {}),
      });
      return c.json({ events }, 200);
    },
  );

  return app;
}
