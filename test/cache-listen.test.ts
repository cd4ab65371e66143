import net from 'node:net';
import pg from 'pg';
import { expect, it } from 'vitest';
import { AgentKey } from '../src/index.js';
import { CONNECT_DEADLINE_MS, HEARTBEAT_SQL, type ListenHandlers, listen } from '../src/store/listen.js';
import { isLocalPostgres, listenerPids, stopBackend } from './helpers/backends.js';
import { forEachDatabase, uniqueName } from './helpers/databases.js';
import { sleep, soon, until } from './helpers/wait.js';

/**
 * The listening connection of a cache can go silent without any error (its
 * backend stopped, a network path black-holed). Its heartbeat notices within about a
 * second: caching stops at once (validations read the database), the silent connection is
 * destroyed, a new one is made, and caching resumes only once it listens, from an empty
 * cache. The faults are real: the listener's PostgreSQL backend is stopped with SIGSTOP.
 * Times are printed for information; the one timed assertion is the security bound (a
 * key revoked elsewhere is refused within 1.5 s of the revoke).
 */

/** The bound: a revoke made while the listener is silent is seen within this (from the revoke call). */
const REVOKE_BOUND_MS = 1_500;
/** A silent listener is noticed (caching stops) within this of the stop. */
const DETECT_BOUND_MS = 1_200;

interface Event {
  type: 'up' | 'down' | 'unheard';
  at: number;
  /** The AgentKey's cacheStats().listening once every handler heard the event. */
  listening?: boolean;
}

/** A handler on the pool's hub that records when the shared listening connection went down and came back up. */
function recorder(read: () => boolean | undefined): { handlers: ListenHandlers; events: Event[] } {
  const events: Event[] = [];
  const record = (type: Event['type']) => {
    const event: Event = { type, at: Date.now() };
    events.push(event);
    // Every handler of the hub hears it in the same turn: read the cache after them all.
    queueMicrotask(() => (event.listening = read()));
  };
  return { events, handlers: { notify: () => {}, up: () => record('up'), down: () => record('down'), unheard: () => record('unheard') } };
}

const newAccount = () => uniqueName('acct_listen');

forEachDatabase(
  (getDb) => {
    it('security: a listener whose backend is stopped (SIGSTOP) stops caching within a second; a key revoked by another pool meanwhile is refused within 1.5 s; the listener comes back on a new connection and caching works again', async (ctx) => {
      const db = getDb();
      // The other side: revokes through the test's own pool, which never validates (so it does not listen).
      const other = await db.agentKey();
      const account = newAccount();
      const k = await other.create({ accountId: account });
      const bystander = await other.create({ accountId: account });
      expect(await listenerPids(db.query)).toEqual([]);

      // This side: a pool of its own, a cache with a one-minute ttl (only a notification or a lost listener drops an entry).
      const pool = new pg.Pool({ connectionString: db.url, max: 4 });
      const ak = new AgentKey({ pool, tableName: other.tableName, cache: { ttlMs: 60_000 }, ...(db.directUrl ? { directUrl: db.directUrl } : {}) });
      const rec = recorder(() => ak.cacheStats()?.listening);
      const sub = listen(pool, `agentkey_test_recorder_${process.pid}`, rec.handlers, db.directUrl);
      let resume: (() => void) | null = null;
      let stopped = 0;
      try {
        await until(async () => (await ak.validate(k.key)).valid && ak.cacheStats()?.listening === true, 'the cache to listen');
        await ak.validate(k.key);
        const before = ak.cacheStats()!;
        expect(await ak.validate(k.key)).toMatchObject({ valid: true });
        expect(ak.cacheStats()!.hits).toBe(before.hits + 1);

        const [pid, ...more] = await listenerPids(db.query);
        expect(more).toEqual([]);
        if (!isLocalPostgres(pid as number)) return ctx.skip();
        stopped = pid as number;
        const downsBefore = rec.events.filter((e) => e.type === 'down').length;

        const stoppedAt = Date.now();
        resume = stopBackend(pid as number);

        // Revoked elsewhere: the stopped listener cannot pass the notification on.
        const revokeCalledAt = Date.now();
        expect(await other.revoke(k.id)).toBe(true);
        const committedAt = Date.now();
        let refusedAt: number | null = null;
        for (let i = 0; i < 400 && refusedAt === null; i++) {
          const result = await ak.validate(k.key);
          if (!result.valid) {
            expect(result).toEqual({ valid: false, reason: 'revoked' });
            refusedAt = Date.now();
          } else await sleep(10);
        }
        expect(refusedAt, 'the revoked key was still accepted after several seconds').not.toBeNull();
        const refusedAfter = (refusedAt as number) - revokeCalledAt;
        expect(refusedAfter).toBeLessThanOrEqual(REVOKE_BOUND_MS);
        expect(await ak.validate(k.key)).toEqual({ valid: false, reason: 'revoked' });

        // Caching stopped at once when the heartbeat went unanswered.
        const down = rec.events.filter((e) => e.type === 'down')[downsBefore];
        expect(down, 'the listener was never declared lost').toBeDefined();
        expect(down!.listening).toBe(false);
        expect(down!.at - stoppedAt).toBeLessThanOrEqual(DETECT_BOUND_MS);

        // A new connection listens (the stopped backend still shows, with its last statement); caching resumed.
        await until(async () => (await listenerPids(db.query)).some((p) => p !== pid) && ak.cacheStats()?.listening === true, 'a new listener');
        const up = rec.events.find((e) => e.type === 'up' && e.at >= down!.at);
        expect(up?.listening).toBe(true);
        console.info(
          `stopped listener noticed ${down!.at - stoppedAt} ms after SIGSTOP; listening again ${up!.at - down!.at} ms later; ` +
            `revoked key refused ${refusedAfter} ms after the revoke call (${(refusedAt as number) - committedAt} ms after it returned) (for information)`,
        );
        await ak.validate(bystander.key);
        const resumed = ak.cacheStats()!;
        expect(await ak.validate(bystander.key)).toMatchObject({ valid: true });
        expect(ak.cacheStats()).toMatchObject({ hits: resumed.hits + 1, misses: resumed.misses, listening: true });
        // Notifications flow on the new connection: with a one-minute ttl only one can drop the cached bystander.
        expect(await other.revoke(bystander.id)).toBe(true);
        await soon(() => ak.validate(bystander.key), { valid: false, reason: 'revoked' });
      } finally {
        resume?.();
        await sub?.close();
        await ak.close();
      }
      // Running again, the stopped backend finds its socket gone (destroyed when it fell silent) and exits.
      await until(async () => (await db.query(`SELECT 1 FROM pg_stat_activity WHERE pid = $1`, [stopped])).length === 0, 'the stopped backend to exit');
      await pool.end();
      await until(async () => (await listenerPids(db.query)).length === 0, 'every listening backend to end');
    }, 30_000);

    it('happy: a silent server at connect time is given up after the connect deadline and tried again, and its sockets are closed', async () => {
      const sockets: net.Socket[] = [];
      let closed = 0;
      // Accepts connections and never answers, as a stopped server (or a black-holed path) would.
      const server = net.createServer((socket) => {
        sockets.push(socket);
        socket.on('close', () => closed++);
        socket.resume(); // reads (and drops) what the client sends, so its going away is seen
      });
      await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
      const port = (server.address() as net.AddressInfo).port;
      const pool = new pg.Pool({ host: '127.0.0.1', port, user: 'nobody', database: 'nothing', max: 1 });
      const rec = recorder(() => undefined);
      const sub = listen(pool, 'agentkey_test_blackhole', rec.handlers);
      try {
        await until(() => sockets.length >= 1, 'a first connection attempt');
        const firstAt = Date.now();
        // Bounded (about 15 s): the deadline is CONNECT_DEADLINE_MS, then a retry after a short backoff.
        await until(() => sockets.length >= 2 && closed >= 1, 'the silent attempt to be dropped and another made');
        console.info(`silent connect dropped and retried ${Date.now() - firstAt} ms after the first attempt (deadline ${CONNECT_DEADLINE_MS} ms) (for information)`);
        expect(rec.events.filter((e) => e.type === 'up')).toEqual([]);
      } finally {
        await sub?.close();
        for (const s of sockets) s.destroy();
        await new Promise((resolve) => server.close(resolve));
        await pool.end();
      }
    }, 30_000);
  },
  ['postgres'],
);

forEachDatabase((getDb) => {
  it('happy: the heartbeat is harmless: an idle listener stays up, and a cached key stays cached', async () => {
    const db = getDb();
    const ak = await db.agentKey({ cache: { ttlMs: 60_000 } });
    const rec = recorder(() => ak.cacheStats()?.listening);
    const sub = listen(db.pool, `agentkey_test_idle_${process.pid}`, rec.handlers, db.directUrl);
    try {
      const k = await ak.create({ accountId: newAccount() });
      await until(async () => (await ak.validate(k.key)).valid && ak.cacheStats()?.listening === true, 'the cache to listen');
      await ak.validate(k.key);
      const before = ak.cacheStats()!;
      const pidsBefore = db.name === 'postgres' ? await listenerPids(db.query) : [];
      // Several heartbeats' worth of idle time.
      await sleep(2_000);
      expect(await ak.validate(k.key)).toMatchObject({ valid: true });
      expect(ak.cacheStats()).toMatchObject({ hits: before.hits + 1, misses: before.misses, listening: true, size: 1 });
      expect(rec.events.filter((e) => e.type === 'down')).toEqual([]);
      if (db.name === 'postgres') {
        // The same connection all along, and it was sent heartbeats.
        expect(await listenerPids(db.query)).toEqual(pidsBefore);
        const rows = await db.query<{ query: string }>(`SELECT query FROM pg_stat_activity WHERE pid = $1`, [pidsBefore[0]]);
        expect(rows).toEqual([{ query: HEARTBEAT_SQL }]);
      }
    } finally {
      await sub?.close();
      await ak.close();
    }
  });
});
