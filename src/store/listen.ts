/**
 * LISTEN/NOTIFY for key caches: one listening connection per pool, shared by every
 * AgentKey on it. Handlers hear `up` once notifications flow, `down` when they may have
 * been missed (the connection dropped; they reconnect by themselves), and each payload.
 * The connection never keeps a process alive.
 *
 * Hubs hold handlers weakly: an AgentKey that is dropped without close() (say, one made per
 * request) is collected, leaves its hub, and the last one to go ends the connection.
 */

export interface ListenHandlers {
  notify(payload: string): void;
  up(): void;
  down(): void;
}

export interface Subscription {
  close(): Promise<void>;
}

interface Hub {
  add(channel: string, h: WeakRef<ListenHandlers>): void;
  remove(channel: string, h: WeakRef<ListenHandlers>): Promise<void>;
}

const hubs = new WeakMap<object, Hub>();
const collected = new FinalizationRegistry<{ hub: Hub; channel: string; ref: WeakRef<ListenHandlers> }>(({ hub, channel, ref }) => {
  hub.remove(channel, ref).catch(() => {});
});

/** Subscribes to `channel` on the pool's database; null when the pool cannot listen. */
export function listen(pool: unknown, channel: string, handlers: ListenHandlers): Subscription | null {
  if (pool === null || typeof pool !== 'object') return null;
  let hub = hubs.get(pool);
  if (!hub) {
    const made = makeHub(pool);
    if (!made) return null;
    hub = made;
    hubs.set(pool, hub);
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

function makeHub(pool: object): Hub | null {
  const p = pool as { listen?: unknown; transaction?: unknown; connect?: unknown };
  if (typeof p.listen === 'function' && typeof p.transaction === 'function') return new PGliteHub(pool as PGliteListen);
  // A pool without node-postgres' Client and options could only lend one of its own
  // connections forever (and then never end): such pools run uncached.
  const pg = pool as PgPoolListen;
  if (typeof pg.connect === 'function' && typeof pg.Client === 'function' && pg.options && typeof pg.options === 'object') {
    return new PgHub(pg);
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
  query(text: string): Promise<unknown>;
  on(event: 'notification', cb: (m: { channel: string; payload?: string }) => void): void;
  on(event: 'error' | 'end', cb: (err?: Error) => void): void;
  connect?(): Promise<unknown>;
  end?(): Promise<void>;
  release?(err?: Error | boolean): void;
  connection?: { stream?: { unref?(): void } };
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

class PgHub implements Hub {
  private readonly subs = new Map<string, Set<WeakRef<ListenHandlers>>>();
  private client: PgListenClient | null = null;
  private connecting = false;
  private retryMs = RETRY_MIN_MS;
  private retry: ReturnType<typeof setTimeout> | null = null;
  private watch: ReturnType<typeof setInterval> | null = null;

  constructor(private readonly pool: PgPoolListen) {}

  add(channel: string, ref: WeakRef<ListenHandlers>): void {
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

  private queue: Promise<unknown> = Promise.resolve();

  /** One statement at a time on the listening client (pg deprecates overlapping queries on a client). */
  private serial(client: { query(text: string): Promise<unknown> }, text: string): Promise<unknown> {
    const run = this.queue.then(() => client.query(text));
    this.queue = run.catch(() => {});
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
    this.open().then(
      async (client) => {
        client.on('notification', (m) => this.each(m.channel, (h) => h.notify(m.payload ?? '')));
        client.on('error', () => this.lost(client));
        client.on('end', () => this.lost(client));
        try {
          for (const channel of this.subs.keys()) await this.serial(client, `LISTEN "${channel}"`);
        } catch {
          this.connecting = false;
          this.close(client);
          this.scheduleRetry();
          return;
        }
        this.connecting = false;
        if (this.subs.size === 0) return this.close(client);
        this.client = client;
        this.retryMs = RETRY_MIN_MS;
        for (const channel of this.subs.keys()) this.each(channel, (h) => h.up());
      },
      () => {
        this.connecting = false;
        this.scheduleRetry();
      },
    );
  }

  private async open(): Promise<PgListenClient> {
    const Client = this.pool.Client as new (options: unknown) => PgListenClient;
    const client = new Client(this.pool.options);
    // A failed connect emits 'error' too; without a listener it would end the process.
    client.on('error', () => {});
    await client.connect?.();
    client.connection?.stream?.unref?.();
    this.watchPool();
    return client;
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

  private lost(client: PgListenClient): void {
    if (this.client !== client) return;
    this.client = null;
    for (const channel of this.subs.keys()) this.each(channel, (h) => h.down());
    this.close(client);
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
    this.retry = null;
    this.watch = null;
    const client = this.client;
    this.client = null;
    if (client) this.close(client);
  }

  private close(client: PgListenClient): void {
    if (client.release) client.release(true);
    else client.end?.().catch(() => {});
  }
}
