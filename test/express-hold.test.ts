import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { PGlite } from '@electric-sql/pglite';
import express, { type NextFunction, type Request, type Response } from 'express';
import type pg from 'pg';
import request from 'supertest';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentKey, AgentKeyError, MAX_CENTS, agentKeyMiddleware } from '../src/index.js';
import type { HeldReservation } from '../src/http/express.js';
import { type TestDb, forEachDatabase } from './helpers/databases.js';
import { sleep, until } from './helpers/wait.js';
import { expectPackageError } from './helpers/http.js';

/**
 * agentKeyMiddleware(ak, { reserveCents }) on real Express 5 apps, on PostgreSQL and PGlite:
 * the hold is taken before the handler, committed with the cost the handler reports when
 * the response finishes, released when the handler fails or the client goes away, and a
 * hold that does not fit is a 429. Refusals come in the @katrinalaszlo/agentkey package's
 * shape: `{ error: '<string>', code, message }`. Settling runs after the response, so every check of
 * what a request settled waits (in a bounded loop) for the key's hold to reach zero.
 * The middleware without reserveCents is covered in express.test.ts.
 */

type HoldRequest = Request & { agentKeyReservation?: HeldReservation; agentKey?: { keyId: number } };

const bearer = (key: string) => `Bearer ${key}`;

function deferred<T = void>() {
  let resolve!: (value: T) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}


/**
 * What the key's validation says, in cents. validate() refuses a key with nothing left to
 * spend ('budget_exceeded', as the package does), so for such a key the same figures are
 * read from getKey().
 */
async function money(ak: AgentKey, key: string) {
  const v = await ak.validate(key);
  if (v.valid) return { held: v.budgetHeldCents, spent: v.budgetUsedCents, remaining: v.budgetRemainingCents };
  if (v.reason !== 'budget_exceeded') throw new Error(`key is ${v.reason}`);
  const info = await ak.getKey((await ak.identify(key)) as number);
  if (!info) throw new Error('key not found');
  return { held: info.heldCents, spent: info.spentCents, remaining: info.remainingCents };
}

/** Waits until no hold of the key counts any more (the request's hold was settled). */
async function holdsSettled(ak: AgentKey, key: string): Promise<void> {
  await until(async () => (await money(ak, key)).held === 0, 'the hold to be settled');
}

/** The key's ledger rows in order: kind, amount in cents, reservation id. */
async function ledger(db: TestDb, ak: AgentKey, keyId: number) {
  const rows = await db.query<{ kind: string; amount_micros: string | number; reservation_id: string | null }>(
    `SELECT kind, amount_micros, reservation_id FROM "${ak.tableName}_ledger" WHERE key_id = $1 ORDER BY id`,
    [keyId],
  );
  return rows.map((r) => ({ kind: r.kind, cents: Number(r.amount_micros) / 10_000, reservationId: r.reservation_id }));
}

const kinds = async (db: TestDb, ak: AgentKey, keyId: number) => (await ledger(db, ak, keyId)).map((r) => r.kind);

type Handler = (req: HoldRequest, res: Response) => unknown;

/**
 * An app with one protected POST route behind express.json(); `reached` counts the
 * requests the handler saw and `reservations` what req.agentKeyReservation held.
 */
function holdApp(ak: AgentKey, options: Parameters<typeof agentKeyMiddleware>[1], handler?: Handler) {
  const app = express();
  app.use(express.json());
  const state = { reached: 0, reservations: [] as (HeldReservation | undefined)[] };
  // Not an async function: a handler that throws synchronously must throw to Express as such.
  app.post('/api/chat', agentKeyMiddleware(ak, options), (req: Request, res: Response) => {
    state.reached += 1;
    state.reservations.push((req as HoldRequest).agentKeyReservation);
    if (handler) return handler(req as HoldRequest, res);
    res.json({ ok: true });
  });
  return { app, state };
}

/** A real server on an ephemeral port, for clients that disconnect. */
async function listen(app: express.Express) {
  const server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    server,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Sends a POST that the test can abort; resolves nothing, errors are expected. */
function rawPost(port: number, key: string, body: unknown = {}) {
  const req = http.request({
    host: '127.0.0.1',
    port,
    method: 'POST',
    path: '/api/chat',
    headers: { authorization: bearer(key), 'content-type': 'application/json' },
  });
  req.on('error', () => {});
  const firstChunk = deferred<string>();
  req.on('response', (res) => {
    res.on('error', () => {});
    res.once('data', (chunk: Buffer) => firstChunk.resolve(chunk.toString()));
  });
  req.end(JSON.stringify(body));
  return { req, firstChunk: firstChunk.promise };
}

/**
 * A pool over the test database that fails while `ctl.broken` is set, or for the next
 * `ctl.failNext` calls, with a driver-like error; otherwise it delegates to the real pool.
 */
function breakablePool(db: TestDb) {
  const ctl = { broken: false, failNext: 0 };
  const failing = () => {
    if (ctl.broken) return true;
    if (ctl.failNext > 0) {
      ctl.failNext -= 1;
      return true;
    }
    return false;
  };
  const refuse = () => Promise.reject(Object.assign(new Error('connect ECONNREFUSED 10.9.8.7:5432 (password=hunter2)'), { code: 'ECONNREFUSED' }));
  if (db.name === 'postgres') {
    const real = db.pool as pg.Pool;
    const pool = {
      query: (text: string, values?: unknown[]) => (failing() ? refuse() : real.query(text, values)),
      connect: () => (failing() ? refuse() : real.connect()),
    };
    return { ctl, pool };
  }
  const real = db.pool as PGlite;
  const pool = {
    query: (text: string, params?: unknown[]) => (failing() ? refuse() : real.query(text, params)),
    transaction: (fn: Parameters<PGlite['transaction']>[0]) => (failing() ? refuse() : real.transaction(fn)),
  };
  return { ctl, pool };
}

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

  describe('agentKeyMiddleware reserveCents: the client goes away', () => {
    it('error: the client disconnects while the handler waits -> the hold is released once the response closes', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const entered = deferred();
      const gate = deferred();
      const done = deferred();
      const { app } = holdApp(ak, { reserveCents: 50 }, async (_req, res) => {
        entered.resolve();
        await gate.promise;
        res.json({ late: true });
        done.resolve();
      });
      const server = await listen(app);
      try {
        const { req } = rawPost(server.port, key);
        await entered.promise;
        expect(await money(ak, key)).toEqual({ held: 50, spent: 0, remaining: 50 });
        req.destroy();
        await holdsSettled(ak, key);
        expect(await money(ak, key)).toEqual({ held: 0, spent: 0, remaining: 100 });
        // The handler finishing later (to a closed socket) settles nothing more.
        gate.resolve();
        await done.promise;
        await sleep(50);
        expect(await money(ak, key)).toEqual({ held: 0, spent: 0, remaining: 100 });
        expect(await kinds(db, ak, id)).toEqual(['hold', 'release']);
        expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true });
      } finally {
        gate.resolve();
        await server.close();
      }
    });

    it('happy: a cost the handler reports after the client left is still recorded (as an adjustment)', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const entered = deferred();
      const gate = deferred();
      const done = deferred();
      const { app } = holdApp(ak, { reserveCents: 50 }, async (_req, res) => {
        entered.resolve();
        await gate.promise;
        res.locals.costCents = 7; // the upstream call finished and cost money
        res.json({ late: true });
        done.resolve();
      });
      const server = await listen(app);
      try {
        const { req } = rawPost(server.port, key);
        await entered.promise;
        req.destroy();
        await holdsSettled(ak, key);
        gate.resolve();
        await done.promise;
        await until(async () => (await kinds(db, ak, id)).includes('adjust'), 'the late cost');
        expect(await money(ak, key)).toEqual({ held: 0, spent: 7, remaining: 93 });
        expect(await kinds(db, ak, id)).toEqual(['hold', 'release', 'adjust']);
        expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true });
      } finally {
        gate.resolve();
        await server.close();
      }
    });

    it('error: the client disconnects with supertest .timeout() -> the hold is released', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const gate = deferred();
      const { app } = holdApp(ak, { reserveCents: 40 }, async (_req, res) => {
        await gate.promise;
        res.json({});
      });
      const server = await listen(app);
      try {
        // The client gives up; how soon is not what is tested, only what follows.
        await expect(request(server.server).post('/api/chat').set('Authorization', bearer(key)).timeout(300)).rejects.toThrow(/timeout/i);
        await until(async () => (await kinds(db, ak, id)).includes('release'), 'the release');
        expect(await money(ak, key)).toEqual({ held: 0, spent: 0, remaining: 100 });
      } finally {
        gate.resolve();
        await server.close();
      }
    });

    it('happy: a streamed response whose cost was reported before the client left -> that cost is committed', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const gate = deferred();
      const { app } = holdApp(ak, { reserveCents: 50 }, async (_req, res) => {
        res.locals.costCents = 9;
        res.write('partial answer');
        await gate.promise;
        res.end();
      });
      const server = await listen(app);
      try {
        const { req, firstChunk } = rawPost(server.port, key);
        expect(await firstChunk).toBe('partial answer');
        req.destroy();
        await holdsSettled(ak, key);
        expect(await money(ak, key)).toEqual({ held: 0, spent: 9, remaining: 91 });
        expect(await kinds(db, ak, id)).toEqual(['hold', 'commit']);
      } finally {
        gate.resolve();
        await server.close();
      }
    });

    it('error: the client disconnects while the hold is being taken -> the hold is released and the handler never runs', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const asked = deferred();
      const amount = deferred<number>();
      const serverSawClose = deferred();
      const app = express();
      app.use((_req, res, next) => {
        res.once('close', () => serverSawClose.resolve());
        next();
      });
      let reached = 0;
      app.post(
        '/api/chat',
        agentKeyMiddleware(ak, {
          reserveCents: async () => {
            asked.resolve();
            return amount.promise;
          },
        }),
        (_req, res) => {
          reached += 1;
          res.json({});
        },
      );
      const server = await listen(app);
      try {
        const { req } = rawPost(server.port, key);
        await asked.promise;
        req.destroy();
        await serverSawClose.promise;
        amount.resolve(50);
        // The hold is taken after the client left; it must not wait for its ttl (5 minutes).
        await until(async () => (await kinds(db, ak, id)).includes('hold'), 'the hold');
        await holdsSettled(ak, key);
        expect(await money(ak, key)).toEqual({ held: 0, spent: 0, remaining: 100 });
        expect(await kinds(db, ak, id)).toEqual(['hold', 'release']);
        expect(reached).toBe(0);
      } finally {
        amount.resolve(50);
        await server.close();
      }
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

  describe('agentKeyMiddleware reserveCents: faults', () => {
    it('security: a store that fails at the key check -> 500 JSON, no driver detail, handler never runs', async () => {
      const db = getDb();
      const real = await db.agentKey();
      const { key } = await real.create({ accountId: 'acct_1', budgetCents: 100 });
      const { ctl, pool } = breakablePool(db);
      const ak = new AgentKey({ pool: pool as never, tableName: real.tableName });
      ctl.broken = true;
      const { app, state } = holdApp(ak, { reserveCents: 10 });
      const res = await request(app).post('/api/chat').set('Authorization', bearer(key));
      expectPackageError(res, 500, 'auth_unavailable', 'storage_error');
      expect(res.text).not.toMatch(/hunter2|ECONNREFUSED|10\.9\.8\.7/);
      expect(state.reached).toBe(0);
      ctl.broken = false;
      expect(await money(real, key)).toEqual({ held: 0, spent: 0, remaining: 100 });
    });

    it('security: a store that fails when the hold is taken -> 500 JSON, handler never runs, nothing held', async () => {
      const db = getDb();
      // Uncached: it must see at once what the other AgentKey on the broken pool did.
      const real = await db.agentKey({ cache: false });
      const { key, id } = await real.create({ accountId: 'acct_1', budgetCents: 100 });
      const { ctl, pool } = breakablePool(db);
      const ak = new AgentKey({ pool: pool as never, tableName: real.tableName });
      const { app, state } = holdApp(ak, {
        reserveCents: () => {
          ctl.broken = true; // the key check passed; the store goes down before the hold
          return 10;
        },
      });
      const res = await request(app).post('/api/chat').set('Authorization', bearer(key));
      expectPackageError(res, 500, 'auth_unavailable', 'storage_error');
      expect(res.text).not.toMatch(/hunter2|ECONNREFUSED|10\.9\.8\.7/);
      expect(state.reached).toBe(0);
      ctl.broken = false;
      expect(await money(real, key)).toEqual({ held: 0, spent: 0, remaining: 100 });
      expect(await kinds(db, real, id)).toEqual([]);
    });

    it('error: reserveCents returning NaN, a negative, a string, Infinity or too much -> 500 invalid_reserve, nothing held', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      for (const bad of [Number.NaN, -1, -0.0001, '5', Number.POSITIVE_INFINITY, MAX_CENTS + 1, undefined, null, {}]) {
        const { app, state } = holdApp(ak, { reserveCents: () => bad as number });
        const res = await request(app).post('/api/chat').set('Authorization', bearer(key)).timeout(10_000);
        expectPackageError(res, 500, 'auth_unavailable', 'invalid_reserve');
        expect(state.reached, String(bad)).toBe(0);
        const { app: asyncApp } = holdApp(ak, { reserveCents: async () => bad as number });
        expectPackageError(await request(asyncApp).post('/api/chat').set('Authorization', bearer(key)).timeout(10_000), 500, 'auth_unavailable', 'invalid_reserve');
      }
      expect(await money(ak, key)).toEqual({ held: 0, spent: 0, remaining: 100 });
      expect(await kinds(db, ak, id)).toEqual([]);
    });

    it('error: a reserveCents function that throws or rejects -> 500 JSON internal_error without its message, nothing held', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const throwing = holdApp(ak, {
        reserveCents: (req) => (req.body as { maxTokens: number }).maxTokens * 0.001, // no body: TypeError
      });
      const res = await request(throwing.app).post('/api/chat').set('Authorization', bearer(key));
      expectPackageError(res, 500, 'auth_unavailable', 'internal_error');
      const rejecting = holdApp(ak, {
        reserveCents: async () => {
          throw new Error('pricing table secret-xyz unavailable');
        },
      });
      const res2 = await request(rejecting.app).post('/api/chat').set('Authorization', bearer(key));
      expectPackageError(res2, 500, 'auth_unavailable', 'internal_error');
      expect(res2.text).not.toContain('secret-xyz');
      expect(throwing.state.reached + rejecting.state.reached).toBe(0);
      expect(await kinds(db, ak, id)).toEqual([]);
    });

    it('error: the commit fails -> onSettleError is told, the request still completed, and the hold ends at its ttl', async () => {
      const db = getDb();
      // Uncached: it must see at once what the other AgentKey on the broken pool did.
      const real = await db.agentKey({ cache: false });
      const { key, id } = await real.create({ accountId: 'acct_1', budgetCents: 100 });
      const { ctl, pool } = breakablePool(db);
      const ak = new AgentKey({ pool: pool as never, tableName: real.tableName });
      const errors: unknown[] = [];
      const told = deferred();
      const { app } = holdApp(
        ak,
        {
          reserveCents: 50,
          holdTtl: '1s',
          onSettleError: (err) => {
            errors.push(err);
            told.resolve();
          },
        },
        (_req, res) => {
          res.locals.costCents = 12;
          ctl.broken = true; // the store goes down after the hold and before the commit
          res.json({ answer: 42 });
        },
      );
      const res = await request(app).post('/api/chat').set('Authorization', bearer(key));
      expect(res.status).toBe(200);
      expect(res.body).toEqual({ answer: 42 });
      await told.promise;
      expect(errors).toHaveLength(1);
      expect(errors[0]).toBeInstanceOf(AgentKeyError);
      expect((errors[0] as AgentKeyError).code).toBe('storage_error');
      ctl.broken = false;
      // Not settled: the hold is still on record until it expires by itself.
      const [hold] = await db.query<{ status: string }>(`SELECT status FROM "${real.tableName}_holds"`);
      expect(hold?.status).toBe('held');
      await holdsSettled(real, key);
      expect(await money(real, key)).toEqual({ held: 0, spent: 0, remaining: 100 });
      expect(await real.reserve(key, { costCents: 100 })).toMatchObject({ success: true });
      expect(await kinds(db, real, id)).toEqual(['hold', 'expire', 'hold']);
      expect(await real.audit({ keyId: id })).toMatchObject({ ok: true });
    });

    it('happy: a commit that fails once is retried and lands; onSettleError is not called', async () => {
      const db = getDb();
      // Uncached: it must see at once what the other AgentKey on the broken pool did.
      const real = await db.agentKey({ cache: false });
      const { key, id } = await real.create({ accountId: 'acct_1', budgetCents: 100 });
      const { ctl, pool } = breakablePool(db);
      const ak = new AgentKey({ pool: pool as never, tableName: real.tableName });
      const onSettleError = vi.fn();
      const { app } = holdApp(ak, { reserveCents: 50, onSettleError }, (_req, res) => {
        res.locals.costCents = 12;
        ctl.failNext = 1;
        res.json({});
      });
      expect((await request(app).post('/api/chat').set('Authorization', bearer(key))).status).toBe(200);
      await holdsSettled(real, key);
      expect(await money(real, key)).toEqual({ held: 0, spent: 12, remaining: 88 });
      expect(await kinds(db, real, id)).toEqual(['hold', 'commit']);
      expect(onSettleError).not.toHaveBeenCalled();
      expect(ctl.failNext).toBe(0);
    });

    it('error: without onSettleError a failed settlement is logged with console.error', async () => {
      const db = getDb();
      const real = await db.agentKey();
      const { key } = await real.create({ accountId: 'acct_1', budgetCents: 100 });
      const { ctl, pool } = breakablePool(db);
      const ak = new AgentKey({ pool: pool as never, tableName: real.tableName });
      const logged = vi.spyOn(console, 'error').mockImplementation(() => {});
      const { app } = holdApp(ak, { reserveCents: 50, holdTtl: '1s' }, (_req, res) => {
        ctl.broken = true;
        res.status(502).json({});
      });
      expect((await request(app).post('/api/chat').set('Authorization', bearer(key))).status).toBe(502);
      await until(() => logged.mock.calls.length > 0, 'the log line');
      expect(String(logged.mock.calls[0]?.[0])).toMatch(/settling a hold failed/);
      ctl.broken = false;
      await holdsSettled(real, key);
    });

    it('error: an onSettleError that throws does not become an unhandled rejection', async () => {
      const db = getDb();
      const real = await db.agentKey();
      const { key } = await real.create({ accountId: 'acct_1', budgetCents: 100 });
      const { ctl, pool } = breakablePool(db);
      const ak = new AgentKey({ pool: pool as never, tableName: real.tableName });
      const unhandled: unknown[] = [];
      const onUnhandled = (reason: unknown) => unhandled.push(reason);
      process.on('unhandledRejection', onUnhandled);
      try {
        let calls = 0;
        const { app } = holdApp(
          ak,
          {
            reserveCents: 50,
            holdTtl: '1s',
            onSettleError: () => {
              calls += 1;
              throw new Error('logger is down');
            },
          },
          (_req, res) => {
            ctl.broken = true;
            res.json({});
          },
        );
        expect((await request(app).post('/api/chat').set('Authorization', bearer(key))).status).toBe(200);
        await until(() => calls === 1, 'onSettleError');
        // Let any rejection surface: Node reports unhandled rejections after the microtask queue drains.
        for (let i = 0; i < 5; i++) await new Promise((resolve) => setImmediate(resolve));
        expect(unhandled).toEqual([]);
        ctl.broken = false;
        await holdsSettled(real, key);
      } finally {
        process.off('unhandledRejection', onUnhandled);
      }
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
