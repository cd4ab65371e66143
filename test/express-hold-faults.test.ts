import express from 'express';
import request from 'supertest';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { AgentKey, AgentKeyError, MAX_CENTS, agentKeyMiddleware } from '../src/index.js';
import { forEachDatabase } from './helpers/databases.js';
import { breakablePool } from './helpers/fault-pools.js';
import { bearer, deferred, holdApp, holdsSettled, kinds, listen, money, rawPost } from './helpers/express-hold.js';
import { expectPackageError } from './helpers/http.js';
import { sleep, until } from './helpers/wait.js';

/**
 * agentKeyMiddleware(ak, { reserveCents }) when things go wrong, on PostgreSQL and PGlite:
 * a client that goes away (the hold is released, or a cost reported later is still
 * recorded), a store that fails at the key check, at the hold or at the settlement, and
 * reserveCents functions that answer nonsense or throw. Refusals come in the
 * @katrinalaszlo/agentkey package's shape: `{ error: '<string>', code, message }`.
 */

afterEach(() => {
  vi.restoreAllMocks();
});

forEachDatabase((getDb) => {
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

});
