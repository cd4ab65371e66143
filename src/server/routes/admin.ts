import { type RouteConfig, createRoute } from '@hono/zod-openapi';
import type { MiddlewareHandler } from 'hono';
import type { AgentKey } from '../../agentkey.js';
import type { Env } from '../context.js';
import { RefusalError, refuse } from '../../http/errors.js';
import { bodyErrors, router, storeErrors } from '../openapi.js';
import * as S from '../schemas.js';

/**
 * The admin API: keys, account ceilings, alert percents, usage, accounts and the ledger. A sub-app every
 * route of which is made by `adminRoute()`, so none is outside `requireAdmin` (Hono's
 * bearer-auth, see middleware/admin-auth.ts), which runs before the route's validators.
 */
export function adminRoutes(ak: AgentKey, requireAdmin: MiddlewareHandler<Env>) {
  const app = router();
  app.openAPIRegistry.registerComponent('securitySchemes', 'adminKey', { type: 'http', scheme: 'bearer', description: 'The admin key.' });
  const adminRoute = <R extends Omit<RouteConfig, 'security' | 'tags' | 'middleware'>>(route: R) =>
    createRoute({ ...route, tags: ['admin'], security: [{ adminKey: [] }], middleware: [requireAdmin] as const });

  app.openapi(
    adminRoute({
      method: 'post', path: '/v1/keys', operationId: 'createKey', summary: 'Create a key (the raw key is returned once).',
      request: { body: { required: true, content: { 'application/json': { schema: S.CreateKeyBody } } } },
      responses: { 201: { description: 'Created', content: { 'application/json': { schema: S.CreatedKey } } }, ...bodyErrors(401, 403, 404) },
    }),
    async (c) => {
      const created = await ak.create(c.req.valid('json'));
      const info = await ak.getKey(created.id);
      // A fault, not a refusal: logged with its detail, answered 500 internal_error.
      if (!info) throw new Error('The new key could not be read back.');
      return c.json({ key: created.key, ...info }, 201);
    },
  );

  app.openapi(
    adminRoute({
      method: 'get', path: '/v1/keys', operationId: 'listKeys', summary: "List keys (an account's, or all), without secrets.",
      request: { query: S.KeyListQuery },
      responses: { 200: { description: 'The keys', content: { 'application/json': { schema: S.KeyList } } }, ...storeErrors(400, 401) },
    }),
    async (c) => {
      const q = c.req.valid('query');
      const keys = await ak.listKeys({
        ...(q.accountId !== undefined ? { accountId: q.accountId } : {}),
        ...(q.parentId !== undefined ? { parentId: q.parentId } : {}),
        includeRevoked: q.includeRevoked === 'true',
        ...(q.limit !== undefined ? { limit: Number(q.limit) } : {}),
      });
      return c.json({ keys }, 200);
    },
  );

  app.openapi(
    adminRoute({
      method: 'get', path: '/v1/keys/{id}', operationId: 'getKey', summary: 'One key, without its secret.',
      request: { params: S.KeyIdParam },
      responses: { 200: { description: 'The key', content: { 'application/json': { schema: S.KeyInfo } } }, ...storeErrors(400, 401, 404) },
    }),
    async (c) => c.json(await findKey(ak, c.req.valid('param').id), 200),
  );

  app.openapi(
    adminRoute({
      method: 'patch', path: '/v1/keys/{id}', operationId: 'updateKey',
      summary: "Change a key's budget, period, scopes, expiry, name or delegatedBy, within its tree (cascade narrows its descendants).",
      request: { params: S.KeyIdParam, body: { required: true, content: { 'application/json': { schema: S.UpdateKeyBody } } } },
      responses: { 200: { description: 'The key as changed', content: { 'application/json': { schema: S.KeyInfo } } }, ...bodyErrors(401, 403, 404, 409) },
    }),
    async (c) => {
      const { cascade, ...changes } = c.req.valid('json');
      return c.json(await ak.update(c.req.valid('param').id, changes, cascade === undefined ? {} : { cascade }), 200);
    },
  );

  app.openapi(
    adminRoute({
      method: 'post', path: '/v1/keys/{id}/revoke', operationId: 'revokeKey', summary: 'Revoke a key and its whole subtree.',
      request: { params: S.KeyIdParam },
      // No body is read, but one that is sent is still held to the limit and to JSON.
      responses: { 200: { description: 'Revoked', content: { 'application/json': { schema: S.Revoked } } }, ...storeErrors(400, 401, 404, 413, 415) },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      await findKey(ak, id);
      const revoked = await ak.revoke(id);
      return c.json({ id: Number(id), revoked, key: await findKey(ak, id) }, 200);
    },
  );

  app.openapi(
    adminRoute({
      method: 'post', path: '/v1/keys/{id}/rotate', operationId: 'rotateKey',
      summary: 'Give a key a new secret (returned once); the previous one works for the grace period, then is refused.',
      request: { params: S.KeyIdParam, body: { required: false, content: { 'application/json': { schema: S.RotateKeyBody } } } },
      responses: {
        200: { description: 'The new secret', content: { 'application/json': { schema: S.RotatedKey } } },
        ...bodyErrors(401, 404, 409),
      },
    }),
    async (c) => {
      const { gracePeriod } = c.req.valid('json') ?? {};
      return c.json(await ak.rotate(c.req.valid('param').id, gracePeriod === undefined ? {} : { gracePeriod }), 200);
    },
  );

  app.openapi(
    adminRoute({
      method: 'get', path: '/v1/keys/{id}/events', operationId: 'listKeyEvents',
      summary: "A key's history, newest first: made, updated, rotated, revoked, adjusted, and who did it (page with before=<last id>).",
      request: { params: S.KeyIdParam, query: S.KeyEventQuery },
      responses: { 200: { description: 'The events', content: { 'application/json': { schema: S.EventList } } }, ...storeErrors(400, 401, 404) },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      const q = c.req.valid('query');
      const events = await ak.keyEvents({
        keyId: id,
        ...(q.before !== undefined ? { before: q.before } : {}),
        ...(q.limit !== undefined ? { limit: Number(q.limit) } : {}),
      });
      // A key deleted in SQL keeps its history; an id that never had one is unknown.
      if (events.length === 0 && q.before === undefined) await findKey(ak, id);
      return c.json({ events }, 200);
    },
  );

  app.openapi(
    adminRoute({
      method: 'get', path: '/v1/events', operationId: 'listEvents',
      summary: "The event log, newest first: every key's and ceiling's changes and who made them (page with before=<last id>).",
      request: { query: S.EventQuery },
      responses: { 200: { description: 'The events', content: { 'application/json': { schema: S.EventList } } }, ...storeErrors(400, 401) },
    }),
    async (c) => {
      const q = c.req.valid('query');
      const events = await ak.keyEvents({
        ...(q.keyId !== undefined ? { keyId: q.keyId } : {}),
        ...(q.accountId !== undefined ? { accountId: q.accountId } : {}),
        ...(q.before !== undefined ? { before: q.before } : {}),
        ...(q.limit !== undefined ? { limit: Number(q.limit) } : {}),
      });
      return c.json({ events }, 200);
    },
  );

  app.openapi(
    adminRoute({
      method: 'put', path: '/v1/accounts/{id}/budget', operationId: 'setAccountBudget', summary: "Set an account's ceiling.",
      request: { params: S.AccountIdParam, body: { required: true, content: { 'application/json': { schema: S.AccountBudgetBody } } } },
      responses: { 200: { description: 'The ceiling', content: { 'application/json': { schema: S.AccountBudget } } }, ...bodyErrors(401) },
    }),
    async (c) => c.json(await ak.setAccountBudget(c.req.valid('param').id, c.req.valid('json')), 200),
  );

  app.openapi(
    adminRoute({
      method: 'get', path: '/v1/accounts/{id}/budget', operationId: 'getAccountBudget', summary: "An account's ceiling and spend this period.",
      request: { params: S.AccountIdParam },
      responses: { 200: { description: 'The ceiling', content: { 'application/json': { schema: S.AccountBudget } } }, ...storeErrors(400, 401, 404) },
    }),
    async (c) => {
      const budget = await ak.getAccountBudget(c.req.valid('param').id);
      if (!budget) throw new RefusalError(refuse('account_budget_not_found'));
      return c.json(budget, 200);
    },
  );

  app.openapi(
    adminRoute({
      method: 'delete', path: '/v1/accounts/{id}/budget', operationId: 'clearAccountBudget', summary: "Remove an account's ceiling.",
      request: { params: S.AccountIdParam },
      responses: { 200: { description: 'Removed', content: { 'application/json': { schema: S.Removed } } }, ...storeErrors(400, 401, 404) },
    }),
    async (c) => {
      const accountId = c.req.valid('param').id;
      if (!(await ak.clearAccountBudget(accountId))) throw new RefusalError(refuse('account_budget_not_found'));
      return c.json({ accountId, removed: true as const }, 200);
    },
  );

  // Rate limits of an account (over all its keys together).
  app.openapi(
    adminRoute({
      method: 'put', path: '/v1/accounts/{id}/rate-limit', operationId: 'setAccountRateLimit',
      summary: "Set an account's rate limit and/or concurrency limit (a field left out is kept, null removes it).",
      request: { params: S.AccountIdParam, body: { required: true, content: { 'application/json': { schema: S.AccountRateLimitBody } } } },
      responses: {
        200: { description: 'The limits', content: { 'application/json': { schema: S.AccountRateLimit } } },
        ...bodyErrors(401, 404),
      },
    }),
    async (c) => {
      const limits = await ak.setAccountRateLimit(c.req.valid('param').id, c.req.valid('json'));
      // Both removed: the account has none left.
      if (!limits) throw new RefusalError(refuse('account_rate_limit_not_found'));
      return c.json(limits, 200);
    },
  );

  // ---- Alert percents (budget windows): the table's, for every window that sets none of its own ----

  app.openapi(
    adminRoute({
      method: 'get', path: '/v1/alerts', operationId: 'getAlerts',
      summary: "The table's alert percents: every budget window whose key or account sets none of its own writes a budget.threshold event at each.",
      responses: { 200: { description: 'The percents', content: { 'application/json': { schema: S.Alerts } } }, ...storeErrors(401) },
    }),
    async (c) => c.json({ percents: await ak.getAlerts() }, 200),
  );

  app.openapi(
    adminRoute({
      method: 'get', path: '/v1/accounts/{id}/rate-limit', operationId: 'getAccountRateLimit', summary: "An account's rate and concurrency limits.",
      request: { params: S.AccountIdParam },
      responses: { 200: { description: 'The limits', content: { 'application/json': { schema: S.AccountRateLimit } } }, ...storeErrors(400, 401, 404) },
    }),
    async (c) => {
      const limits = await ak.getAccountRateLimit(c.req.valid('param').id);
      if (!limits) throw new RefusalError(refuse('account_rate_limit_not_found'));
      return c.json(limits, 200);
    },
  );

  app.openapi(
    adminRoute({
      method: 'delete', path: '/v1/accounts/{id}/rate-limit', operationId: 'clearAccountRateLimit', summary: "Remove an account's rate and concurrency limits.",
      request: { params: S.AccountIdParam },
      responses: { 200: { description: 'Removed', content: { 'application/json': { schema: S.Removed } } }, ...storeErrors(400, 401, 404) },
    }),
    async (c) => {
      const accountId = c.req.valid('param').id;
      if (!(await ak.clearAccountRateLimit(accountId))) throw new RefusalError(refuse('account_rate_limit_not_found'));
      return c.json({ accountId, removed: true as const }, 200);
    },
  );

  app.openapi(
    adminRoute({
      method: 'put', path: '/v1/alerts', operationId: 'setAlerts', summary: "Set the table's alert percents (null or [] for none).",
      request: { body: { required: true, content: { 'application/json': { schema: S.AlertsBody } } } },
      responses: { 200: { description: 'The percents as kept', content: { 'application/json': { schema: S.Alerts } } }, ...bodyErrors(401) },
    }),
    async (c) => c.json({ percents: await ak.setAlerts(c.req.valid('json').percents) }, 200),
  );

  app.openapi(
    adminRoute({
      method: 'get', path: '/v1/usage', operationId: 'getUsage', summary: 'Spend from the ledger, with hourly or daily buckets, and by LLM model with byModel=true.',
      request: { query: S.UsageQuery },
      responses: { 200: { description: 'Usage', content: { 'application/json': { schema: S.UsageReport } } }, ...storeErrors(400, 401) },
    }),
    async (c) => {
      const { windows, byModel, ...q } = c.req.valid('query');
      return c.json(
        await ak.usage({
          ...q,
          ...(windows === undefined ? {} : { windows: windows === 'true' }),
          ...(byModel === undefined ? {} : { byModel: byModel === 'true' }),
        }),
        200,
      );
    },
  );

  app.openapi(
    adminRoute({
      method: 'get', path: '/v1/accounts', operationId: 'listAccounts', summary: 'Every account with keys or a ceiling: key counts, lifetime spend, ceiling.',
      request: { query: S.AccountListQuery },
      responses: { 200: { description: 'The accounts', content: { 'application/json': { schema: S.AccountList } } }, ...storeErrors(400, 401) },
    }),
    async (c) => {
      const { limit } = c.req.valid('query');
      return c.json({ accounts: await ak.listAccounts(limit === undefined ? {} : { limit: Number(limit) }) }, 200);
    },
  );

  app.openapi(
    adminRoute({
      method: 'get', path: '/v1/ledger', operationId: 'listLedger', summary: "Ledger rows, newest first, an LLM call's with its model and token counts (page with before=<last id>).",
      request: { query: S.LedgerQuery },
      responses: { 200: { description: 'Ledger rows', content: { 'application/json': { schema: S.LedgerList } } }, ...storeErrors(400, 401) },
    }),
    async (c) => {
      const q = c.req.valid('query');
      const entries = await ak.ledger({
        ...(q.keyId !== undefined ? { keyId: q.keyId } : {}),
        ...(q.accountId !== undefined ? { accountId: q.accountId } : {}),
        ...(q.before !== undefined ? { before: Number(q.before) } : {}),
        ...(q.limit !== undefined ? { limit: Number(q.limit) } : {}),
      });
      return c.json({ entries }, 200);
    },
  );

  return app;
}

async function findKey(ak: AgentKey, id: string) {
  const key = await ak.getKey(id);
  if (!key) throw new RefusalError(refuse('key_not_found', `No key has id ${id}.`));
  return key;
}
