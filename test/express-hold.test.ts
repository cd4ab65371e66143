import express, { type NextFunction, type Request, type Response } from 'express';
import request from 'supertest';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentKey, AgentKeyError, MAX_CENTS, agentKeyMiddleware } from '../src/index.js';
import type { HeldReservation } from '../src/http/express.js';
import { forEachDatabase } from './helpers/databases.js';
import { type Handler, bearer, deferred, holdApp, holdsSettled, kinds, ledger, listen, money } from './helpers/express-hold.js';
import { expectPackageError } from './helpers/http.js';
import { sleep, until } from './helpers/wait.js';

/**
 * agentKeyMiddleware(ak, { reserveCents }) on real Express 5 apps, on PostgreSQL and PGlite:
 * the hold is taken before the handler, committed with the cost the handler reports when
 * the response finishes, released when the handler fails, and a hold that does not fit is
 * a 429. Refusals come in the @katrinalaszlo/agentkey package's shape:
 * `{ error: '<string>', code, message }`. Settling runs after the response, so every check
 * of what a request settled waits (in a bounded loop) for the key's hold to reach zero.
 * Clients that go away and store faults are in express-hold-faults.test.ts; the
 * middleware without reserveCents in express.test.ts.
 */

afterEach(() => {
  vi.restoreAllMocks();
});

forEachDatabase((getDb) => {
  describe('agentKeyMiddleware reserveCents: a hold around the handler', () => {
    it('happy: 50 is held while the handler runs, then the reported 12 is committed and the rest given back', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', scopes: ['proxy.chat'], budgetCents: 100 });
      const entered = deferred<{ reservation?: HeldReservation; locals: unknown; agentKey: unknown }>();
      const gate = deferred();
      const { app, state } = holdApp(ak, { scope: 'proxy.chat', reserveCents: 50 }, async (req, res) => {
        entered.resolve({ reservation: req.agentKeyReservation, locals: res.locals.agentKeyReservation, agentKey: req.agentKey });
        await gate.promise;
        res.locals.costCents = 12;
        res.json({ answer: 42 });
      });
      const pending = request(app).post('/api/chat').set('Authorization', bearer(key)).send({}).then((r) => r);

      const seen = await entered.promise;
      expect(seen.reservation).toEqual({ reservationId: expect.stringMatching(/^rsv_[0-9A-Za-z]{24}$/), heldCents: 50 });
      expect(seen.locals).toBe(seen.reservation);
      expect(seen.agentKey).toMatchObject({ valid: true, keyId: id });
      expect(await money(ak, key)).toEqual({ held: 50, spent: 0, remaining: 50 });

      gate.resolve();
      const res = await pending;
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ answer: 42 });
      await holdsSettled(ak, key);
      expect(await money(ak, key)).toEqual({ held: 0, spent: 12, remaining: 88 });
      const rid = seen.reservation?.reservationId;
      expect(await ledger(db, ak, id)).toEqual([
        { kind: 'hold', cents: 50, reservationId: rid },
        { kind: 'commit', cents: 12, reservationId: rid },
      ]);
      expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true, mismatches: [] });
      // It was committed once: a release now is refused, a second commit replays the first.
      expect(await ak.release(rid as string)).toEqual({ success: false, reason: 'already_committed' });
      expect(await ak.commit(rid as string, { costCents: 12 })).toMatchObject({ success: true, costCents: 12, replayed: true });
      expect(await ak.commit(rid as string, { costCents: 99 })).toEqual({ success: false, reason: 'idempotency_conflict' });
      expect(state.reached).toBe(1);
    });

    it('happy: the hold lives for holdTtl (default 5 minutes)', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const ttlOf = async (options: Parameters<typeof agentKeyMiddleware>[1]) => {
        let rid = '';
        const { app } = holdApp(ak, options, (req, res) => {
          rid = req.agentKeyReservation?.reservationId ?? '';
          res.locals.costCents = 0;
          res.json({});
        });
        expect((await request(app).post('/api/chat').set('Authorization', bearer(key))).status).toBe(200);
        const rows = await db.query<{ s: number }>(
          `SELECT extract(epoch FROM expires_at - created_at)::float8 AS s FROM "${ak.tableName}_holds" WHERE id = $1`,
          [rid],
        );
        return Number(rows[0]?.s);
      };
      expect(await ttlOf({ reserveCents: 5 })).toBe(300);
      expect(await ttlOf({ reserveCents: 5, holdTtl: '90s' })).toBe(90);
      expect(await ttlOf({ reserveCents: 5, holdTtl: '24h' })).toBe(86_400);
      await holdsSettled(ak, key);
      expect((await money(ak, key)).spent).toBe(0);
    });

    it('happy: reserveCents as a function of the request (after express.json) holds what it returns', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const seenKeys: unknown[] = [];
      const { app, state } = holdApp(ak, {
        reserveCents: (req) => {
          seenKeys.push(req.agentKey?.keyId);
          return (req.body as { maxTokens: number }).maxTokens * 0.001;
        },
      });
      const res = await request(app).post('/api/chat').set('Authorization', bearer(key)).send({ maxTokens: 4000 });
      expect(res.status).toBe(200);
      // The function runs after the key check: it can size the hold from req.agentKey.
      expect(seenKeys).toEqual([id]);
      expect(state.reservations).toEqual([{ reservationId: expect.stringMatching(/^rsv_/), heldCents: 4 }]);
      await holdsSettled(ak, key);
      // No reported cost after a success: the whole hold is committed.
      expect(await money(ak, key)).toEqual({ held: 0, spent: 4, remaining: 96 });
      expect((await ledger(db, ak, id)).map((r) => [r.kind, r.cents])).toEqual([['hold', 4], ['commit', 4]]);

      // Fractions of a cent are held exactly.
      const res2 = await request(app).post('/api/chat').set('Authorization', bearer(key)).send({ maxTokens: 33 });
      expect(res2.status).toBe(200);
      expect(state.reservations[1]?.heldCents).toBe(0.033);
      await holdsSettled(ak, key);
      expect((await money(ak, key)).spent).toBe(4.033);
      expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true });
    });

    it('happy: an async reserveCents function is awaited before the hold is taken', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const gate = deferred<number>();
      const asked = deferred();
      const entered = deferred();
      const finish = deferred();
      const { app, state } = holdApp(
        ak,
        {
          reserveCents: async () => {
            asked.resolve();
            return gate.promise;
          },
        },
        async (_req, res) => {
          entered.resolve();
          await finish.promise;
          res.locals.costCents = 20;
          res.json({});
        },
      );
      const pending = request(app).post('/api/chat').set('Authorization', bearer(key)).then((r) => r);
      await asked.promise;
      // Still computing the amount: nothing held, handler not started.
      expect(await money(ak, key)).toEqual({ held: 0, spent: 0, remaining: 100 });
      expect(state.reached).toBe(0);
      gate.resolve(30);
      await entered.promise;
      expect(await money(ak, key)).toEqual({ held: 30, spent: 0, remaining: 70 });
      finish.resolve();
      expect((await pending).status).toBe(200);
      await holdsSettled(ak, key);
      expect(await money(ak, key)).toEqual({ held: 0, spent: 20, remaining: 80 });
      expect(await kinds(db, ak, id)).toEqual(['hold', 'commit']);
    });

    it('happy: a hold that exactly fits passes; an unlimited key always gets its hold', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const exact = await ak.create({ accountId: 'acct_1', budgetCents: 30 });
      const unlimited = await ak.create({ accountId: 'acct_1', budgetCents: null });
      const { app, state } = holdApp(ak, { reserveCents: 30 }, (_req, res) => {
        res.locals.costCents = 25;
        res.json({});
      });
      expect((await request(app).post('/api/chat').set('Authorization', bearer(exact.key))).status).toBe(200);
      expect((await request(app).post('/api/chat').set('Authorization', bearer(unlimited.key))).status).toBe(200);
      expect(state.reached).toBe(2);
      await holdsSettled(ak, exact.key);
      await holdsSettled(ak, unlimited.key);
      expect(await money(ak, exact.key)).toEqual({ held: 0, spent: 25, remaining: 5 });
      expect(await money(ak, unlimited.key)).toEqual({ held: 0, spent: 25, remaining: null });
    });
  });

  describe('agentKeyMiddleware reserveCents: what is settled', () => {
    /** One request on a fresh 100-cent key with a 50-cent hold; returns the status, ledger kinds and money after. */
    async function settleCase(handler: Handler, withErrorHandler = false) {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const { app, state } = holdApp(ak, { reserveCents: 50 }, handler);
      if (withErrorHandler) {
        app.use((err: Error & { status?: number }, _req: Request, res: Response, _next: NextFunction) => {
          res.status(err.status ?? 500).json({ app: err.message });
        });
      }
      const res = await request(app).post('/api/chat').set('Authorization', bearer(key));
      expect(state.reached).toBe(1);
      await holdsSettled(ak, key);
      const after = await money(ak, key);
      expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true });
      return { res, after, ledger: await ledger(db, ak, id) };
    }

    it('happy: no reported cost and a 2xx -> the whole hold is committed', async () => {
      for (const status of [200, 201, 204]) {
        const { res, after, ledger: rows } = await settleCase((_req, res) => {
          res.status(status).end();
        });
        expect(res.status).toBe(status);
        expect(after).toEqual({ held: 0, spent: 50, remaining: 50 });
        expect(rows.map((r) => [r.kind, r.cents])).toEqual([['hold', 50], ['commit', 50]]);
      }
    });

    it('happy: no reported cost and a 4xx or 5xx -> the hold is released, nothing spent', async () => {
      for (const status of [400, 404, 429, 500, 502]) {
        const { res, after, ledger: rows } = await settleCase((_req, res) => {
          res.status(status).json({ error: 'upstream said no' });
        });
        expect(res.status).toBe(status);
        expect(after).toEqual({ held: 0, spent: 0, remaining: 100 });
        expect(rows.map((r) => [r.kind, r.cents])).toEqual([['hold', 50], ['release', -50]]);
      }
    });

    it('happy: a reported cost is committed whatever the status: 500 after spending, a cost past the hold, and 0', async () => {
      const spentThen500 = await settleCase((_req, res) => {
        res.locals.costCents = 12;
        res.status(500).json({ error: 'failed after the upstream call' });
      });
      expect(spentThen500.res.status).toBe(500);
      expect(spentThen500.after).toEqual({ held: 0, spent: 12, remaining: 88 });
      expect(spentThen500.ledger.map((r) => [r.kind, r.cents])).toEqual([['hold', 50], ['commit', 12]]);

      // The real cost is recorded in full even when it passes the hold.
      const overHold = await settleCase((_req, res) => {
        res.locals.costCents = 80;
        res.json({});
      });
      expect(overHold.after).toEqual({ held: 0, spent: 80, remaining: 20 });

      // A cache hit reports 0: the whole hold goes back, and the commit is still on record.
      const free = await settleCase((_req, res) => {
        res.locals.costCents = 0;
        res.json({});
      });
      expect(free.after).toEqual({ held: 0, spent: 0, remaining: 100 });
      expect(free.ledger.map((r) => [r.kind, r.cents])).toEqual([['hold', 50], ['commit', 0]]);
    });

    it('edge: a reported cost that is not a number of cents is ignored: the whole hold on success, a release on failure', async () => {
      for (const bad of [-5, Number.NaN, '12', null, Number.POSITIVE_INFINITY]) {
        const ok = await settleCase((_req, res) => {
          res.locals.costCents = bad;
          res.json({});
        });
        expect(ok.after, String(bad)).toEqual({ held: 0, spent: 50, remaining: 50 });
        const failed = await settleCase((_req, res) => {
          res.locals.costCents = bad;
          res.status(502).json({});
        });
        expect(failed.after, String(bad)).toEqual({ held: 0, spent: 0, remaining: 100 });
      }
    });

    it('error: a handler that throws synchronously -> 500 from Express, and the hold is released', async () => {
      const { res, after, ledger: rows } = await settleCase(() => {
        throw new Error('handler bug');
      });
      expect(res.status).toBe(500);
      expect(after).toEqual({ held: 0, spent: 0, remaining: 100 });
      expect(rows.map((r) => r.kind)).toEqual(['hold', 'release']);
    });

    it('error: a handler whose promise rejects (Express 5) -> 500, and the hold is released', async () => {
      const { res, after, ledger: rows } = await settleCase(async () => {
        await sleep(1);
        throw new Error('upstream timeout');
      });
      expect(res.status).toBe(500);
      expect(after).toEqual({ held: 0, spent: 0, remaining: 100 });
      expect(rows.map((r) => r.kind)).toEqual(['hold', 'release']);
    });

    it("error: a thrown error answered by the app's own error handler keeps its status, and a 4xx releases the hold", async () => {
      const { res, after } = await settleCase(() => {
        throw Object.assign(new Error('bad prompt'), { status: 422 });
      }, true);
      expect(res.status).toBe(422);
      expect(res.body).toEqual({ app: 'bad prompt' });
      expect(after).toEqual({ held: 0, spent: 0, remaining: 100 });
    });

    it('happy: a handler that reported its cost and then threw -> the cost is committed (the money was spent)', async () => {
      const { res, after, ledger: rows } = await settleCase(async (_req, res) => {
        res.locals.costCents = 7.5;
        throw new Error('failed after the upstream call');
      });
      expect(res.status).toBe(500);
      expect(after).toEqual({ held: 0, spent: 7.5, remaining: 92.5 });
      expect(rows.map((r) => [r.kind, r.cents])).toEqual([['hold', 50], ['commit', 7.5]]);
    });
  });


  describe('agentKeyMiddleware reserveCents: refusals', () => {
    it('error: a hold that does not fit -> 429 budget_exceeded, the handler never runs, nothing held', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      expect(await ak.trackUsage(key, { costCents: 70 })).toMatchObject({ success: true, budgetRemainingCents: 30 });
      const { app, state } = holdApp(ak, { reserveCents: 80 });
      expectPackageError(await request(app).post('/api/chat').set('Authorization', bearer(key)), 429, 'budget_exceeded', 'budget_exceeded');
      const { app: justOver } = holdApp(ak, { reserveCents: 30.0001 });
      expectPackageError(await request(justOver).post('/api/chat').set('Authorization', bearer(key)), 429, 'budget_exceeded', 'budget_exceeded');
      expect(state.reached).toBe(0);
      expect(await money(ak, key)).toEqual({ held: 0, spent: 70, remaining: 30 });
      expect(await kinds(db, ak, id)).toEqual(['charge']);
    });

    it('error: a $0 key is refused at the key check (as in the package) -> 429, reserveCents never asked, nothing held', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 0 });
      const reserveCents = vi.fn(() => 0.0001);
      const { app, state } = holdApp(ak, { reserveCents });
      expectPackageError(await request(app).post('/api/chat').set('Authorization', bearer(key)), 429, 'budget_exceeded', 'budget_exceeded');
      expect(reserveCents).not.toHaveBeenCalled();
      expect(state.reached).toBe(0);
      expect(await db.query(`SELECT id FROM "${ak.tableName}_holds"`)).toEqual([]);
      expect(await kinds(db, ak, id)).toEqual([]);
    });

    it('concurrency: 20 parallel requests holding 10 on a 100-cent key -> exactly 10 run, 10 get 429, and exactly 100 is spent', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const gate = deferred();
      let entered = 0;
      const { app } = holdApp(ak, { reserveCents: 10 }, async (_req, res) => {
        entered += 1;
        await gate.promise;
        res.locals.costCents = 10;
        res.json({ ok: true });
      });
      const server = await listen(app);
      try {
        let answered = 0;
        const all = Array.from({ length: 20 }, () =>
          request(server.server)
            .post('/api/chat')
            .set('Authorization', bearer(key))
            .then((r) => {
              answered += 1;
              return r;
            }),
        );
        // Every request is either waiting in the handler or already refused: at the hold, or,
        // once the whole budget is held, already at the key check (validate() refuses a key
        // with nothing left); either way a 429 budget_exceeded.
        await until(() => entered + answered === 20, 'all 20 requests to be admitted or refused');
        expect({ entered, answered }).toEqual({ entered: 10, answered: 10 });
        expect(await money(ak, key)).toEqual({ held: 100, spent: 0, remaining: 0 });
        gate.resolve();
        const responses = await Promise.all(all);
        const statuses = responses.map((r) => r.status).sort();
        expect(statuses).toEqual([...Array(10).fill(200), ...Array(10).fill(429)]);
        for (const r of responses.filter((x) => x.status === 429)) expectPackageError(r, 429, 'budget_exceeded', 'budget_exceeded');
        await holdsSettled(ak, key);
        expect(await money(ak, key)).toEqual({ held: 0, spent: 100, remaining: 0 });
        const rows = await kinds(db, ak, id);
        expect(rows.filter((k) => k === 'hold')).toHaveLength(10);
        expect(rows.filter((k) => k === 'commit')).toHaveLength(10);
        expect(rows).toHaveLength(20);
        expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true, mismatches: [] });
      } finally {
        gate.resolve();
        await server.close();
      }
    });

    it('security: the scope is still checked first -> 403, no hold taken, reserveCents never asked', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', scopes: ['usage.read'], budgetCents: 100 });
      const reserveCents = vi.fn(() => 10);
      const { app, state } = holdApp(ak, { scope: 'proxy.chat', reserveCents });
      const res = await request(app).post('/api/chat').set('Authorization', bearer(key));
      expectPackageError(res, 403, 'insufficient_scope', 'insufficient_scope');
      expect(res.body.required).toBe('proxy.chat');
      expect(res.body.available).toEqual(['usage.read']);
      expect(reserveCents).not.toHaveBeenCalled();
      expect(state.reached).toBe(0);
      expect(await kinds(db, ak, id)).toEqual([]);
    });

    it('error: missing, invalid, revoked and expired keys -> 401 before any hold', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const revoked = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      await ak.revoke(revoked.id);
      const expired = await ak.create({ accountId: 'acct_1', budgetCents: 100, expiresIn: '1h' });
      await db.query(`UPDATE ${ak.tableName} SET expires_at = now() - interval '1 minute' WHERE id = $1`, [expired.id]);
      const reserveCents = vi.fn(() => 10);
      const { app, state } = holdApp(ak, { reserveCents });
      expectPackageError(await request(app).post('/api/chat'), 401, 'Missing API key', 'missing_key');
      expectPackageError(await request(app).post('/api/chat').set('Authorization', 'Bearer ak_garbage'), 401, 'invalid', 'invalid_key');
      expectPackageError(await request(app).post('/api/chat').set('Authorization', bearer(revoked.key)), 401, 'revoked', 'key_revoked');
      expectPackageError(await request(app).post('/api/chat').set('Authorization', bearer(expired.key)), 401, 'expired', 'key_expired');
      expect(reserveCents).not.toHaveBeenCalled();
      expect(state.reached).toBe(0);
      const holds = await db.query(`SELECT id FROM "${ak.tableName}_holds"`);
      expect(holds).toEqual([]);
    });

    it('error: a key revoked or deleted between the key check and the hold -> 401 with the same codes as the key check', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const revokeFirst = holdApp(ak, {
        reserveCents: async () => {
          await ak.revoke(id);
          return 10;
        },
      });
      expectPackageError(await request(revokeFirst.app).post('/api/chat').set('Authorization', bearer(key)), 401, 'revoked', 'key_revoked');
      expect(revokeFirst.state.reached).toBe(0);

      const other = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const deleteFirst = holdApp(ak, {
        reserveCents: async () => {
          await db.query(`DELETE FROM ${ak.tableName} WHERE id = $1`, [other.id]);
          return 10;
        },
      });
      expectPackageError(await request(deleteFirst.app).post('/api/chat').set('Authorization', bearer(other.key)), 401, 'invalid', 'invalid_key');
      expect(deleteFirst.state.reached).toBe(0);
      expect(await db.query(`SELECT id FROM "${ak.tableName}_holds"`)).toEqual([]);
    });
  });


  describe('agentKeyMiddleware without reserveCents: unchanged', () => {
    it('happy: no hold, no reservation on the request, and a reported cost charges nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      for (const options of [{}, { reserveCents: undefined }, { holdTtl: '1m' }]) {
        const { app, state } = holdApp(ak, options, (req, res) => {
          res.locals.costCents = 12;
          res.json({ reservation: req.agentKeyReservation ?? null, locals: res.locals.agentKeyReservation ?? null });
        });
        const res = await request(app).post('/api/chat').set('Authorization', bearer(key));
        expect(res.status).toBe(200);
        expect(res.body).toEqual({ reservation: null, locals: null });
        expect(state.reached).toBe(1);
      }
      await sleep(50);
      expect(await money(ak, key)).toEqual({ held: 0, spent: 0, remaining: 100 });
      expect(await kinds(db, ak, id)).toEqual([]);
    });
  });
});

describe('agentKeyMiddleware reserveCents: options are checked when the middleware is built', () => {
  const hanging = { query: () => new Promise<never>(() => {}), connect: () => new Promise<never>(() => {}) };
  const ak = new AgentKey({ pool: hanging as never });

  it('error: a bad reserveCents throws an AgentKeyError at construction', () => {
    for (const reserveCents of [0, -1, Number.NaN, Number.POSITIVE_INFINITY, MAX_CENTS + 1, '5', {}, [], true, null]) {
      expect(() => agentKeyMiddleware(ak, { reserveCents } as never), String(reserveCents)).toThrow(AgentKeyError);
    }
  });

  it('error: a bad holdTtl throws at construction, with or without reserveCents', () => {
    for (const holdTtl of ['0s', '48h', '25h', 'x', '', '1mo', '1.5m', 5]) {
      expect(() => agentKeyMiddleware(ak, { reserveCents: 5, holdTtl } as never), String(holdTtl)).toThrow(AgentKeyError);
      expect(() => agentKeyMiddleware(ak, { holdTtl } as never), `alone: ${String(holdTtl)}`).toThrow(AgentKeyError);
    }
  });

  it('error: a bad onSettleError throws at construction, with or without reserveCents', () => {
    for (const onSettleError of [5, 'console.error', {}, null]) {
      expect(() => agentKeyMiddleware(ak, { reserveCents: 5, onSettleError } as never), String(onSettleError)).toThrow(AgentKeyError);
      expect(() => agentKeyMiddleware(ak, { onSettleError } as never), `alone: ${String(onSettleError)}`).toThrow(AgentKeyError);
    }
  });

  it('security: misspelt hold options throw instead of silently dropping the hold', () => {
    for (const options of [{ reserve: 5 }, { reserveCent: 5 }, { reserveCents: 5, holdTTL: '1m' }, { costCents: 5 }, { reserveCents: 5, onError: () => {} }]) {
      expect(() => agentKeyMiddleware(ak, options as never), JSON.stringify(options)).toThrow(/unknown option/);
    }
  });

  it('happy: good options build a middleware', () => {
    const good: Parameters<typeof agentKeyMiddleware>[1][] = [
      { reserveCents: 50 },
      { reserveCents: 0.0001 },
      { reserveCents: MAX_CENTS },
      { reserveCents: () => 5 },
      { reserveCents: async () => 5 },
      { scope: 'proxy.chat', timeoutMs: 200, reserveCents: 5, holdTtl: '1s', onSettleError: () => {} },
      { reserveCents: 5, holdTtl: '24h' },
      { reserveCents: undefined },
    ];
    for (const options of good) expect(typeof agentKeyMiddleware(ak, options)).toBe('function');
    // As before reserveCents existed: a null options object builds the plain middleware.
    expect(typeof agentKeyMiddleware(ak, null as never)).toBe('function');
  });
});
