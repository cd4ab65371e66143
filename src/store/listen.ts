/**
 * LISTEN/NOTIFY for key caches: one listening connection per pool, shared by every
 * AgentKey on it. Handlers hear `up` once notifications flow, `down` when they may have
 * been missed (the connection dropped; they reconnect by themselves), and each payload.
 * The connection never keeps a process alive.
 *
 * A connection can also go silent with no error at all (its server process stopped, a
 * network path black-holed): TCP would only notice after minutes. So the listening
 * connection is checked with a heartbeat (HEARTBEAT_SQL, every HEARTBEAT_EVERY_MS); one not
 * answered within HEARTBEAT_DEADLINE_MS counts as a lost connection: handlers hear `down`
 * at once (caches stop serving), the socket is destroyed, and a new connection is made
 * with the usual backoff. A silent stall is therefore noticed within about
 * HEARTBEAT_EVERY_MS + HEARTBEAT_DEADLINE_MS (under a second). Opening a connection and its
 * LISTENs is bounded the same way (CONNECT_DEADLINE_MS). PGlite needs none of this.
 *
 * Hubs hold handlers weakly: an AgentKey that is dropped without close() (say, one made per
 * request) is collected, leaves its hub, and the last one to go ends the connection.
 *
 * LISTEN needs a session of its own, which a pooler in transaction mode does not keep: the
 * LISTEN would be lost with its server connection, silently. So the listening connection
 * is made to `directUrl` when one is given (the pool's queries still use the pool), and a
 * connection found to go through a pooler (see pooler.ts) is not listened on: handlers hear
 * `unheard` once, and no retry follows.
 */
import { behindPooler } from './pooler.js';


export interface ListenHandlers {
  notify(payload: string): void;
  up(): void;
  down(): void;
  /** Changes cannot be heard: the listening connection goes through a pooler. Final. */
  unheard(): void;
}

export interface Subscription {
  close(): Promise<void>;
}

interface Hub {
  add(channel: string, h: WeakRef<ListenHandlers>): void;
  remove(channel: string, h: WeakRef<ListenHandlers>): Promise<void>;
}

/** Per pool, per direct URL ('' for the pool's own settings). */
const hubs = new WeakMap<object, Map<string, Hub>>();
const collected = new FinalizationRegistry<{ hub: Hub; channel: string; ref: WeakRef<ListenHandlers> }>(({ hub, channel, ref }) => {
  hub.remove(channel, ref).catch(() => {});
});

/**
 * Subscribes to `channel` on the pool's database (through `directUrl` when given); null
 * when the pool cannot listen.
 */
export function listen(pool: unknown, channel: string, handlers: ListenHandlers, directUrl?: string): Subscription | null {
  if (pool === null || typeof pool !== 'object') return null;
  let byUrl = hubs.get(pool);
  if (!byUrl) hubs.set(pool, (byUrl = new Map()));
  let hub = byUrl.get(directUrl ?? '');
  if (!hub) {
    const made = makeHub(pool, directUrl);
    if (!made) return null;
    hub = made;
    byUrl.set(directUrl ?? '', hub);
  }
  const h = hub;
  const ref = new WeakRef(handlers);
  h.add(channel, ref);
  const token = {};
  collected.register(handlers, { hub: h, channel, ref }, token);
  return {
    close: () => {
      collected.unregister(token);
      return h.remove(channel, ref);
    },
  };
}

function makeHub(pool: object, directUrl: string | undefined): Hub | null {
  const p = pool as { listen?: unknown; transaction?: unknown; connect?: unknown };
  if (typeof p.listen === 'function' && typeof p.transaction === 'function') return new PGliteHub(pool as PGliteListen);
  // A pool without node-postgres' Client and options could only lend one of its own
  // connections forever (and then never end): such pools run uncached.
  const pg = pool as PgPoolListen;
  if (typeof pg.connect === 'function' && typeof pg.Client === 'function' && pg.options && typeof pg.options === 'object') {
    return new PgHub(pg, directUrl);
  }
  return null;
}

interface PGliteListen {
  listen(channel: string, cb: (payload: string) => void): Promise<() => Promise<void>>;
}

/** PGlite delivers notifications in-process; nothing can drop them. */
class PGliteHub implements Hub {
  private readonly unlisten = new Map<WeakRef<ListenHandlers>, Promise<(() => Promise<void>) | null>>();

  constructor(private readonly pg: PGliteListen) {}

  add(channel: string, ref: WeakRef<ListenHandlers>): void {
    const started = this.pg.listen(channel, (payload) => ref.deref()?.notify(payload)).then(
      (stop) => {
        ref.deref()?.up();
        return stop;
      },
      () => null,
    );
    this.unlisten.set(ref, started);
  }

  async remove(_channel: string, ref: WeakRef<ListenHandlers>): Promise<void> {
    const stop = await this.unlisten.get(ref);
    this.unlisten.delete(ref);
    ref.deref()?.down();
    await stop?.().catch(() => {});
  }
}

interface PgListenClient {
  query(text: string): Promise<{ rows: Array<Record<string, unknown>> }>;
  processID?: number | null;
  on(event: 'notification', cb: (m: { channel: string; payload?: string }) => void): void;
  on(event: 'error' | 'end', cb: (err?: Error) => void): void;
  connect?(): Promise<unknown>;
  end?(): Promise<void>;
  release?(err?: Error | boolean): void;
  connection?: { stream?: { unref?(): void; destroy?(): void } };
}

interface PgPoolListen {
  connect(): Promise<PgListenClient>;
  /** node-postgres pools keep their Client class and options: a listener of its own leaves the pool's connections to queries. */
  Client?: new (options: unknown) => PgListenClient;
  options?: unknown;
  /** Set by node-postgres once `end()` was called: the listener goes too. */
  ending?: boolean;
  ended?: boolean;
}

const RETRY_MIN_MS = 50;
const RETRY_MAX_MS = 5_000;
const POOL_CHECK_MS = 250;
/** How long after one heartbeat was answered the next is sent. */
export const HEARTBEAT_EVERY_MS = 400;
/** How long a heartbeat may go unanswered before the connection counts as lost. */
export const HEARTBEAT_DEADLINE_MS = 500;
/** The heartbeat: trivial, and named so that the listener is easy to find in pg_stat_activity. */
export const HEARTBEAT_SQL = 'SELECT 1 AS agentkey_listen_heartbeat';
/** How long connecting and the LISTENs may take before the attempt is dropped and retried. */
export const CONNECT_DEADLINE_MS = 5_000;
/** How long a polite end() may take before the socket is destroyed. */
const END_DEADLINE_MS = 1_000;

/** The listening connection went through a pooler: nothing to retry. */
class Pooled extends Error {}

class PgHub implements Hub {
  private readonly subs = new Map<string, Set<WeakRef<ListenHandlers>>>();
  private client: PgListenClient | null = null;
  private connecting = false;
  private retryMs = RETRY_MIN_MS;
  private retry: ReturnType<typeof setTimeout> | null = null;
  private watch: ReturnType<typeof setInterval> | null = null;
  private heartbeat: ReturnType<typeof setTimeout> | null = null;
  /** Each client's statements, one at a time: a stuck client never holds up the next one's. */
  private readonly queues = new WeakMap<PgListenClient, Promise<unknown>>();
  /** Found to go through a pooler: handlers hear `unheard`, and nothing is tried again. */
  private pooled = false;

  constructor(
    private readonly pool: PgPoolListen,
    /** Where to listen, when not where the pool connects. */
    private readonly directUrl: string | undefined,
  ) {}

  add(channel: string, ref: WeakRef<ListenHandlers>): void {
    if (this.pooled) return ref.deref()?.unheard();
    let set = this.subs.get(channel);
    const fresh = !set;
    if (!set) this.subs.set(channel, (set = new Set()));
    set.add(ref);
    const client = this.client;
    if (client && fresh) {
      this.serial(client, `LISTEN "${channel}"`).then(() => ref.deref()?.up(), () => this.lost(client));
    } else if (client) {
      ref.deref()?.up();
    } else this.connect();
  }

  /** One statement at a time on the listening client (pg deprecates overlapping queries on a client). */
  private serial(client: PgListenClient, text: string): Promise<unknown> {
    const run = (this.queues.get(client) ?? Promise.resolve()).then(() => client.query(text));
    this.queues.set(client, run.catch(() => {}));
    return run;
  }

  async remove(channel: string, ref: WeakRef<ListenHandlers>): Promise<void> {
    const set = this.subs.get(channel);
    set?.delete(ref);
    ref.deref()?.down();
    if (set && set.size === 0) {
      this.subs.delete(channel);
      if (this.client) await this.serial(this.client, `UNLISTEN "${channel}"`).catch(() => {});
    }
    if (this.subs.size === 0) this.shutdown();
  }

  /** Calls `fn` for each live handler of `channel`. */
  private each(channel: string, fn: (h: ListenHandlers) => void): void {
    for (const ref of this.subs.get(channel) ?? []) {
      const h = ref.deref();
      if (h) fn(h);
    }
  }

  private connect(): void {
    if (this.connecting || this.client || this.subs.size === 0) return;
    this.connecting = true;
    let client: PgListenClient;
    try {
      client = this.newClient();
    } catch {
      this.connecting = false;
      this.scheduleRetry();
      return;
    }
    let done = false;
    const giveUp = () => {
      if (done) return;
      done = true;
      clearTimeout(deadline);
      this.connecting = false;
      destroy(client);
      this.scheduleRetry();
    };
    // A server that accepts but never answers would otherwise leave us connecting forever.
    const deadline = setTimeout(giveUp, CONNECT_DEADLINE_MS);
    deadline.unref?.();
    this.start(client).then(() => {
      if (done) return;
      done = true;
      clearTimeout(deadline);
      this.connecting = false;
      if (this.subs.size === 0) return this.close(client);
      this.client = client;
      this.retryMs = RETRY_MIN_MS;
      this.beat(client);
      for (const channel of this.subs.keys()) this.each(channel, (h) => h.up());
    }, (err) => {
      if (!(err instanceof Pooled) || done) return giveUp();
      done = true;
      clearTimeout(deadline);
      this.connecting = false;
      this.pooled = true;
      destroy(client);
      for (const channel of this.subs.keys()) this.each(channel, (h) => h.unheard());
    });
  }

  private newClient(): PgListenClient {
    const Client = this.pool.Client as new (options: unknown) => PgListenClient;
    // A connection string's settings win over the pool's host, port, user and database.
    const options = this.directUrl ? { ...(this.pool.options as object), connectionString: this.directUrl } : this.pool.options;
    const client = new Client(options);
    // A failed connect emits 'error' too; without a listener it would end the process.
    client.on('error', () => {});
    return client;
  }

  /** Connects `client` and LISTENs on every channel. */
  private async start(client: PgListenClient): Promise<void> {
    await client.connect?.();
    client.connection?.stream?.unref?.();
    if ((await behindPooler(client)) === true) throw new Pooled();
    this.watchPool();
    client.on('notification', (m) => this.each(m.channel, (h) => h.notify(m.payload ?? '')));
    client.on('error', () => this.lost(client));
    client.on('end', () => this.lost(client));
    for (const channel of this.subs.keys()) await this.serial(client, `LISTEN "${channel}"`);
  }

  /**
   * Sends the next heartbeat in HEARTBEAT_EVERY_MS. Unanswered within HEARTBEAT_DEADLINE_MS,
   * the connection is lost. A deadline timer that fires late (the event loop was busy) first
   * lets pending I/O run (setImmediate comes after the poll phase), so an answer already
   * received is not mistaken for silence.
   */
  private beat(client: PgListenClient): void {
    this.heartbeat = setTimeout(() => {
      this.heartbeat = null;
      if (this.client !== client) return;
      let answered = false;
      const deadline = setTimeout(() => {
        setImmediate(() => {
          if (!answered) this.lost(client);
        }).unref?.();
      }, HEARTBEAT_DEADLINE_MS);
      deadline.unref?.();
      this.serial(client, HEARTBEAT_SQL).then(
        () => {
          answered = true;
          clearTimeout(deadline);
          if (this.client === client) this.beat(client);
        },
        () => {
          answered = true;
          clearTimeout(deadline);
          this.lost(client);
        },
      );
    }, HEARTBEAT_EVERY_MS);
    this.heartbeat.unref?.();
  }

  /** When the pool is ended, its listener ends too (and its AgentKeys run uncached). */
  private watchPool(): void {
    if (this.watch) return;
    this.watch = setInterval(() => {
      if (!this.pool.ending && !this.pool.ended) return;
      const client = this.client;
      if (client) this.lost(client);
      for (const channel of this.subs.keys()) this.each(channel, (h) => h.down());
      this.subs.clear();
      this.shutdown();
    }, POOL_CHECK_MS);
    this.watch.unref?.();
  }

  /** The connection failed or went silent: handlers hear `down` now, its socket goes, and a new one is tried. */
  private lost(client: PgListenClient): void {
    if (this.client !== client) return;
    this.client = null;
    if (this.heartbeat) clearTimeout(this.heartbeat);
    this.heartbeat = null;
    for (const channel of this.subs.keys()) this.each(channel, (h) => h.down());
    // Not end(): a silent server would never answer its goodbye, and the socket would linger.
    destroy(client);
    this.scheduleRetry();
  }

  private scheduleRetry(): void {
    if (this.retry || this.subs.size === 0) return;
    this.retry = setTimeout(() => {
      this.retry = null;
      this.connect();
    }, this.retryMs);
    this.retry.unref?.();
    this.retryMs = Math.min(this.retryMs * 2, RETRY_MAX_MS);
  }

  private shutdown(): void {
    if (this.retry) clearTimeout(this.retry);
    if (this.watch) clearInterval(this.watch);
    if (this.heartbeat) clearTimeout(this.heartbeat);
    this.retry = null;
    this.watch = null;
    this.heartbeat = null;
    const client = this.client;
    this.client = null;
    if (client) this.close(client);
  }

  /** Ends politely; a server that does not answer within END_DEADLINE_MS has the socket destroyed. */
  private close(client: PgListenClient): void {
    if (client.release) return client.release(true);
    const force = setTimeout(() => destroy(client), END_DEADLINE_MS);
    force.unref?.();
    client.end?.().then(() => clearTimeout(force), () => destroy(client));
  }
}

/** Drops a client's socket at once (pending queries fail; nothing waits for the server). */
function destroy(client: PgListenClient): void {
  if (client.connection?.stream?.destroy) client.connection.stream.destroy();
  else if (client.release) client.release(true);
  else client.end?.().catch(() => {});
}
