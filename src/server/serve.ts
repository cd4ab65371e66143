import net, { type AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import { getConnInfo } from '@hono/node-server/conninfo';
import { AgentKey, timeoutOption } from '../agentkey.js';
import type { AgentKeyRoutesOptions } from '../http/self-serve.js';
import { tableNames } from '../store/identifiers.js';
import { type AdminKey, checkAdminKey, resolveAdminKey } from './admin-key.js';
import { createApp } from './app.js';
import { type Logger, type ProxyAppOptions, checkAppOptions } from './options.js';
import { checkProxyOptions } from '../proxy/options.js';
import { StartupError, type StorageOptions, openStorage } from './storage.js';
import { type Deliverer, type DelivererOptions, delivererSettings, startDeliverer } from '../webhooks/deliverer.js';

export interface ServeOptions extends StorageOptions {
  /** Default 8787; 0 picks a free port. */
  port?: number;
  /** Default '0.0.0.0'. */
  host?: string;
  /** The admin key (AGENTKEY_ADMIN_KEY); without it one is created on the first start. */
  adminKey?: string | undefined;
  /** Mount the self-serve routes (/signup, /sdk-keys...). */
  selfServe?: AgentKeyRoutesOptions | false;
  /** The keys table. Default 'sdk_api_keys'. */
  tableName?: string;
  bodyLimitBytes?: number;
  /**
   * The longest a call waits on the database (the AgentKey's `timeoutMs`). Default 5000.
   * A request may take up to about twice that (a call queued behind a stalled one), so the
   * service's own request bound is the larger of 10 s and twice this.
   */
  timeoutMs?: number;
  logger?: Logger;
  /** Called once with a newly created admin key: the only time it exists in the clear. */
  onAdminKeyCreated?: (key: string) => void;
  /** How long close() lets in-flight requests finish before cutting them. Default 10 s. */
  shutdownGraceMs?: number;
  /**
   * The webhook deliverer this service runs (agentkey/webhooks' options; it also writes
   * key.expired events), or false for none (another process delivers). Default: on, with
   * the deliverer's defaults.
   */
  webhooks?: DelivererOptions | false;
  /** The LLM proxy (issue 18) at /proxy/<upstream>/v1/..., or false (default) for none; see `upstreamsFromEnv()`. */
  proxy?: ProxyAppOptions | false;
}

export interface RunningServer {
  url: string;
  port: number;
  adminKey: AdminKey;
  ak: AgentKey;
  /** How PostgreSQL is reached (a pooler? listening where?), with the sentence the start-up log prints; null for PGlite. */
  connection: { pooled: boolean | null; directUrl: boolean; readReplica: boolean; summary: string } | null;
  /** Stops accepting, lets in-flight requests finish, flushes batched writes, closes the database. */
  close(): Promise<void>;
}

/**
 * Runs the agentkey HTTP service on Node: checks every setting it can without the
 * database (the address can be listened on, the admin key, the table name, the options),
 * then opens the storage, migrates, resolves the admin key and listens. A mistake is a
 * StartupError (or AgentKeyError) before any data directory, table or admin key is made.
 *
 * @example const server = await startServer({ port: 8787, dataDir: './.agentkey' });
 */
export async function startServer(options: ServeOptions = {}): Promise<RunningServer> {
  const port = options.port ?? 8787;
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new StartupError(`The port must be a whole number from 0 to 65535; got ${port}.`);
  const host = options.host ?? '0.0.0.0';
  checkAdminKey(options.adminKey);
  tableNames(options.tableName ?? 'sdk_api_keys');
  checkAppOptions({ selfServe: options.selfServe ?? false, ...(options.bodyLimitBytes !== undefined ? { bodyLimitBytes: options.bodyLimitBytes } : {}) });
  if (options.timeoutMs !== undefined) timeoutOption(options.timeoutMs);
  if (options.webhooks) delivererSettings(options.webhooks);
  if (options.proxy) checkProxyOptions(options.proxy);
  await canListen(port, host);
  const storage = await openStorage(options);
  let ak: AgentKey | undefined;
  let deliverer: Deliverer | undefined;
  try {
    ak = new AgentKey({
      pool: storage.pool,
      ...(storage.connection?.directUrl ? { directUrl: storage.connection.directUrl } : {}),
      ...(storage.connection?.readPool ? { readPool: storage.connection.readPool } : {}),
      // Changes made through the service are the admin's (self-serve ones, the acting key's).
      actor: 'admin',
      ...(options.tableName ? { tableName: options.tableName } : {}),
      ...(options.timeoutMs !== undefined ? { timeoutMs: options.timeoutMs } : {}),
    });
    await ak.migrate();
    const adminKey = await resolveAdminKey(storage, options.adminKey);
    if (adminKey.created) options.onAdminKeyCreated?.(adminKey.created);
    const { app, metrics, proxy } = createApp(ak, {
      adminKey: { sha256: adminKey.sha256 },
      selfServe: options.selfServe ?? false,
      ...(options.bodyLimitBytes !== undefined ? { bodyLimitBytes: options.bodyLimitBytes } : {}),
      ...(options.timeoutMs !== undefined ? { timeoutMs: Math.max(10_000, 2 * options.timeoutMs) } : {}),
      ...(options.logger ? { logger: options.logger } : {}),
      ...(options.proxy ? { proxy: options.proxy } : {}),
      health: storage.ping,
      database: storage.kind,
      ...(storage.connection
        ? { connection: { pooled: storage.connection.pooled === true, cache: storage.connection.pooled && !storage.connection.directUrl ? ('fallback' as const) : ('notify' as const) } }
        : {}),
      clientAddress: (c) => {
        try {
          return getConnInfo(c).remote.address ?? 'unknown';
        } catch {
          return 'unknown';
        }
      },
    });
    if (options.webhooks !== false) {
      const log = options.logger;
      const given = options.webhooks ?? {};
      deliverer = startDeliverer(ak, {
        ...given,
        onAttempt: (a) => {
          metrics.webhookAttempt(a.outcome);
          given.onAttempt?.(a);
        },
        onError: (err) => {
          log?.error({ err: String(err) }, 'webhook deliverer: a round failed; retrying');
          given.onError?.(err);
        },
      });
    }
    const server = await listen(app.fetch, port, host);
    const bound = (server.address() as AddressInfo).port;
    const shownHost = options.host && options.host !== '0.0.0.0' && options.host !== '::' ? options.host : 'localhost';
    const running = ak;
    let closing: Promise<void> | undefined;
    return {
      url: `http://${shownHost}:${bound}`,
      port: bound,
      adminKey,
      ak: running,
      connection: storage.connection && {
        pooled: storage.connection.pooled,
        directUrl: !!storage.connection.directUrl,
        readReplica: !!storage.connection.readPool,
        summary: storage.connection.summary,
      },
      close: () =>
        (closing ??= (async () => {
          await stopListening(server, options.shutdownGraceMs ?? 10_000);
          // The proxy's last commits and releases, before the database closes.
          await proxy?.settled();
          await deliverer?.stop();
          try {
            await running.close();
          } finally {
            await storage.close();
          }
        })()),
    };
  } catch (err) {
    await deliverer?.stop().catch(() => {});
    await ak?.close().catch(() => {});
    await storage.close().catch(() => {});
    throw err;
  }
}

type NodeServer = ReturnType<typeof serve> & {
  address(): AddressInfo | string | null;
  closeIdleConnections?(): void;
  closeAllConnections?(): void;
};

function listen(fetch: (req: Request) => Response | Promise<Response>, port: number, hostname: string): Promise<NodeServer> {
  return new Promise((resolve, reject) => {
    const server = serve({ fetch, port, hostname }) as NodeServer;
    server.once('error', (err: NodeJS.ErrnoException) => reject(listenError(err, port, hostname)));
    server.once('listening', () => resolve(server));
  });
}

/**
 * Listens on `host:port` for a moment and closes again: a busy port, a name that does not
 * resolve or an address of another machine is found before the database is opened. (The
 * port may still be taken in between; the real listen then fails with the same message.)
 */
function canListen(port: number, host: string): Promise<void> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', (err: NodeJS.ErrnoException) => reject(listenError(err, port, host)));
    probe.listen(port, host, () => probe.close(() => resolve()));
  });
}

const NOT_AN_ADDRESS = new Set(['ENOTFOUND', 'EAI_NONAME', 'EAI_FAIL', 'EAI_NODATA', 'EADDRNOTAVAIL', 'EAFNOSUPPORT', 'EINVAL']);

/** Why the service cannot listen, in one sentence that says what to change. */
function listenError(err: NodeJS.ErrnoException, port: number, host: string): Error {
  if (err.code === 'EADDRINUSE') return new StartupError(`Port ${port} is in use; pick another with --port or PORT.`);
  if (err.code === 'EACCES') return new StartupError(`Port ${port} needs privileges this process lacks (ports below 1024 usually do); pick another with --port or PORT.`);
  if (err.code && NOT_AN_ADDRESS.has(err.code)) {
    return new StartupError(`--host ${host} is not an address this machine can listen on; use one of its addresses, 0.0.0.0 (all) or 127.0.0.1 (this machine only).`);
  }
  if (err.code === 'EAI_AGAIN') return new StartupError(`--host ${host} could not be resolved now (${err.code}); give an IP address, or try again.`);
  return new StartupError(`Could not listen on ${host} port ${port}: ${err.message}.`);
}

/** Stops accepting; keep-alive connections close once idle; in-flight requests get `graceMs`. */
function stopListening(server: NodeServer, graceMs: number): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => server.closeAllConnections?.(), graceMs);
    timer.unref();
    server.close(() => {
      clearTimeout(timer);
      resolve();
    });
    server.closeIdleConnections?.();
  });
}
