import type { Context } from 'hono';
import { AgentKeyError } from '../errors.js';
import { type AgentKeyRoutesOptions, checkRoutesOptions } from '../http/self-serve.js';
import type { ProxyOptions } from '../proxy/options.js';

/** What the service logs through: pino, or anything with the same three methods. */
export interface Logger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface AppOptions {
  /** The admin bearer key, or its SHA-256 hash in hex (`{ sha256 }`) as the service stores it. */
  adminKey: string | { sha256: string };
  /** Mount the self-serve routes of the @katrinalaszlo/agentkey package (/signup, /sdk-keys...). Off by default. */
  selfServe?: AgentKeyRoutesOptions | false;
  /** Largest request body accepted, in bytes (413 past it). Default 64 KiB. */
  bodyLimitBytes?: number;
  /** How long a request may wait for the database before a 503. Default 10 s. */
  timeoutMs?: number;
  /** Where request logs go. Default: nowhere. */
  logger?: Logger;
  /** Checks the database for /healthz; throws when it is down. */
  health?: () => Promise<void>;
  /** Which database the service runs on, as /healthz reports it. */
  database?: 'pglite' | 'postgres';
  /**
   * How PostgreSQL is reached, as found at start, for /healthz (and the dashboard's notice):
   * through a pooler or not, and whether the key cache hears changes (`notify`) or runs its
   * fallback (a pooler and no AGENTKEY_DIRECT_URL).
   */
  connection?: { pooled: boolean; cache: 'notify' | 'fallback' };
  /** Serve the web dashboard at /dashboard. Default true. */
  dashboard?: boolean;
  /** The client's address, for the signup rate limit. Default: the X-Forwarded-For header is NOT trusted; 'unknown'. */
  clientAddress?: (c: Context) => string;
  /**
   * The LLM proxy (agentkey/proxy, issue 18) at /proxy/<upstream>/v1/...: its upstreams and
   * settings. It logs through `logger` and reports to /metrics. Default: not mounted.
   */
  proxy?: ProxyAppOptions | false;
}

/** The proxy's options as the service takes them: its logger and metrics are the service's. */
export type ProxyAppOptions = Omit<ProxyOptions, 'logger' | 'observer'>;

/** Checks the options that need no AgentKey: createApp() calls it, and startServer() before it opens the database. */
export function checkAppOptions(options: Pick<AppOptions, 'bodyLimitBytes' | 'timeoutMs' | 'selfServe'>) {
  const limit = options.bodyLimitBytes ?? 64 * 1024;
  if (!Number.isInteger(limit) || limit < 1024) throw new AgentKeyError('invalid_argument', 'bodyLimitBytes must be a whole number of at least 1024.');
  const timeoutMs = options.timeoutMs ?? 10_000;
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0) throw new AgentKeyError('invalid_argument', 'timeoutMs must be a positive whole number of milliseconds.');
  const selfServe = options.selfServe ? checkRoutesOptions({ timeoutMs, ...options.selfServe }) : null;
  return { limit, timeoutMs, selfServe };
}
