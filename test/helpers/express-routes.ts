import express, { type Express } from 'express';
import type request from 'supertest';
import { type AgentKey, type AgentKeyRoutesOptions, createAgentKeyRoutes } from '../../src/index.js';
import { PACKAGE_ERRORS, expectPackageError } from './http.js';

/**
 * The routes answer in the package's shape: `{ error: '<string>', code, message }`. `error`
 * is the package's string for the refusals it had, `failure` for a 5xx ('auth_unavailable'
 * when the key check fails, the route's own 'Failed to ...' inside a handler), and the
 * message itself for any other refusal.
 */
export function expectRouteError(res: request.Response, status: number, code?: string, failure?: string): void {
  const seen = code ?? (res.body?.code as string | undefined) ?? '';
  const signupScopes = seen === 'scope_not_allowed' && res.body?.allowed !== undefined;
  const error =
    status >= 500
      ? (failure ?? /^(auth_unavailable|Failed to (create|read|revoke|update) key)$/)
      : signupScopes
        ? /^Scopes not allowed on signup: \S/
        : (PACKAGE_ERRORS[seen] ?? (res.body?.message as string));
  expectPackageError(res, status, error, code);
}

/**
 * createAgentKeyRoutes(ak, opts) mounted with app.use(...) on real Express 5 apps, on
 * PostgreSQL and PGlite: POST /signup, GET /sdk-keys/me, POST /sdk-keys,
 * DELETE /sdk-keys/:id and the page's security model.
 */

/** An app with the self-serve routes mounted, as the page shows. */
export function routesApp(ak: AgentKey, options?: AgentKeyRoutesOptions): Express {
  const app = express();
  app.use(createAgentKeyRoutes(ak, options));
  return app;
}

export const auth = (key: string) => ({ Authorization: `Bearer ${key}` });

export async function countRows(getDb: () => { query: (text: string) => Promise<Record<string, unknown>[]> }, ak: AgentKey): Promise<number> {
  const [row] = await getDb().query(`SELECT count(*)::int AS n FROM ${ak.tableName}`);
  return Number(row?.n);
}
