import { createRoute, type z } from '@hono/zod-openapi';
import type { Context } from 'hono';
import type { AgentKey } from '../../agentkey.js';
import { keyFromHeaders } from '../../http/verify.js';
import { RefusalError, refusalOf, refuse } from '../../http/errors.js';
import type { Metrics } from '../metrics.js';
import { bodyErrors, router } from '../openapi.js';
import * as S from '../schemas.js';

/**
 * Holds: take one before a costly call, then commit the real cost or release it. Only the
 * key that took a hold may settle it.
 */
export function reservationRoutes(ak: AgentKey, metrics: Metrics) {
  const app = router();

  app.openapi(
    createRoute({
      method: 'post', path: '/v1/reservations', tags: ['agent'], operationId: 'reserve',
      summary: 'Hold an amount (costCents, or a model and usage to price) before a costly call; settle it with commit or release.',
      request: { body: { required: true, content: { 'application/json': { schema: S.ReserveBody } } } },
      responses: { 201: { description: 'Held', content: { 'application/json': { schema: S.Reserved } } }, ...bodyErrors(401, 409, 429) },
    }),
    async (c) => {
      const { key, ...body } = c.req.valid('json');
      const hold = S.costOf(body);
      const result = await ak.reserve(key, hold);
      if (!result.success) {
        const refusal = refusalOf(result);
        metrics.refused('hold', refusal.body.error.code);
        throw new RefusalError(refusal);
      }
      // A hold priced from usage is in the result (heldCents), one given in cents in the request.
      metrics.held(result, 'costCents' in hold ? hold.costCents : (result.success ? (result.heldCents ?? 0) : 0));
      return c.json(result, 201);
    },
  );

  app.openapi(
    createRoute({
      method: 'post', path: '/v1/reservations/{id}/commit', tags: ['agent'], operationId: 'commitReservation',
      summary: "Settle a hold with the real cost (costCents, or the call's model and usage); the rest is given back.",
      request: { params: S.ReservationIdParam, body: { required: true, content: { 'application/json': { schema: S.CommitBody } } } },
      responses: { 200: { description: 'Committed', content: { 'application/json': { schema: S.Committed } } }, ...bodyErrors(401, 404, 409) },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      const { key, ...body } = c.req.valid('json');
      const cost = S.costOf(body);
      const result = await counting(metrics, 'commit', async () => {
        await ownHold(ak, id, key ?? bearer(c));
        const settled = await ak.commit(id, cost);
        if (!settled.success) throw new RefusalError(refusalOf(settled));
        return settled;
      });
      metrics.committed(result);
      return c.json(result, 200);
    },
  );

  app.openapi(
    createRoute({
      method: 'post', path: '/v1/reservations/{id}/release', tags: ['agent'], operationId: 'releaseReservation',
      summary: 'Give a whole hold back.',
      request: { params: S.ReservationIdParam, body: { required: false, content: { 'application/json': { schema: S.ReleaseBody } } } },
      responses: { 200: { description: 'Released', content: { 'application/json': { schema: S.Released } } }, ...bodyErrors(401, 404, 409) },
    }),
    async (c) => {
      const { id } = c.req.valid('param');
      const body = (c.req.valid('json') as z.infer<typeof S.ReleaseBody> | undefined) ?? {};
      const result = await counting(metrics, 'release', async () => {
        await ownHold(ak, id, body.key ?? bearer(c));
        const settled = await ak.release(id);
        if (!settled.success) throw new RefusalError(refusalOf(settled));
        return settled;
      });
      metrics.released(result);
      return c.json(result, 200);
    },
  );

  return app;
}

/** Runs `settle`, counting a refusal it throws as an outcome of `kind`. */
async function counting<T>(metrics: Metrics, kind: 'commit' | 'release', settle: () => Promise<T>): Promise<T> {
  try {
    return await settle();
  } catch (err) {
    if (err instanceof RefusalError) metrics.refused(kind, err.refusal.body.error.code);
    throw err;
  }
}

function bearer(c: Context): string | undefined {
  return keyFromHeaders((name) => c.req.header(name)) ?? undefined;
}

/** The key settling a hold must be the key that took it (whatever its status now). */
async function ownHold(ak: AgentKey, reservationId: string, rawKey: string | undefined): Promise<void> {
  if (!rawKey) throw new RefusalError(refuse('missing_hold_key'));
  const [keyId, hold] = await Promise.all([ak.identify(rawKey), ak.getReservation(reservationId)]);
  if (keyId === null) throw new RefusalError(refuse('invalid_key'));
  // Another key's hold reads as missing: ids are not confirmed to a key that does not own them.
  if (!hold || hold.keyId !== keyId) throw new RefusalError(refuse('reservation_not_found'));
}
