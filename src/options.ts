// Every option agentkey is given is checked here: the options of `new AgentKey()`, and the
// shared rules for text, ids and limits that each call's own checks use.
import { AgentKeyError } from './errors.js';
import { checkText } from './text.js';
import type { PriceCatalog } from './llm/prices.js';
import { checkKeyPrefix } from './keys.js';
import { describe } from './money.js';
import { parseScopes } from './scopes.js';
import { DEFAULT_TIMEOUT_MS, type Db, type PoolLike, toDb } from './store/db.js';
import { type TableNames, tableNames } from './store/identifiers.js';
import { DEFAULT_MAX_DEPTH } from './tree.js';
import { ratePerSeconds } from './time.js';
import type { AgentKeyOptions, BatchingOptions, CacheOptions, RateLimitsOptions } from './types.js';

/** Throws unless `value` is a plain object whose keys are all in `allowed`. */
export function checkOptions<T extends object>(value: unknown, allowed: readonly string[], what: string): T {
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new AgentKeyError('invalid_argument', `${what} must be an options object; got ${describe(value)}.`);
  }
  const unknown = Object.keys(value).filter((k) => !allowed.includes(k));
  if (unknown.length > 0) {
    throw new AgentKeyError(
      'invalid_argument',
      `${what} got unknown option ${JSON.stringify(unknown[0])}; allowed: ${allowed.join(', ')}.`,
    );
  }
  return value as T;
}

// The one rule for text (checkText) lives in text.ts, where the price catalog reads it too.
export { checkText } from './text.js';

/** A label-like string option: null/undefined allowed, otherwise 1..max characters under the rule of checkText(). */
export function optionalText(value: unknown, field: string, max = 256): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value !== 'string' || value.length === 0 || value.length > max) {
    throw new AgentKeyError('invalid_argument', `${field} must be a non-empty string of at most ${max} characters; got ${describe(value)}.`);
  }
  return checkText(value, field);
}

/** An account id: a non-empty string (at most 256 characters, under the rule of checkText()) or a safe integer. */
export function accountIdText(value: unknown, field = 'accountId'): string {
  if (typeof value === 'number' && Number.isSafeInteger(value)) return String(value);
  if (typeof value === 'string' && value.length > 0 && value.length <= 256) return checkText(value, field);
  throw new AgentKeyError('invalid_argument', `${field} must be a non-empty string or an integer; got ${describe(value)}.`);
}

/** A key id: a positive safe integer, or a string of digits. */
export function keyIdNumber(value: unknown, field = 'keyId'): number {
  const n = typeof value === 'string' && /^[0-9]{1,16}$/.test(value) ? Number(value) : value;
  if (typeof n === 'number' && Number.isSafeInteger(n) && n > 0) return n;
  throw new AgentKeyError('invalid_argument', `${field} must be a positive integer key id; got ${describe(value)}.`);
}

/** A `limit` option: a whole number from 1 to `max`, `fallback` when not given. */
export function limitOption(value: unknown, fallback: number, max: number): number {
  const limit = value ?? fallback;
  if (!Number.isInteger(limit) || (limit as number) < 1 || (limit as number) > max) {
    throw new AgentKeyError('invalid_argument', `limit must be a whole number from 1 to ${max}.`);
  }
  return limit as number;
}

/** An external subject (see `ensureSubject()`): a non-empty string under the rule of checkText(). */
export function subjectText(subject: unknown): string {
  const s = optionalText(subject, 'subject');
  if (s === null) throw new AgentKeyError('invalid_argument', 'subject must be a non-empty string.');
  return s;
}

/** The options of `new AgentKey()`, checked, with every default filled in. */
export interface Settings {
  /** Who this process's changes are recorded as (the event log). */
  actor: 'library' | 'admin' | 'cli';
  pool: PoolLike;
  names: TableNames;
  keyPrefix: string;
  validScopes: ReadonlySet<string> | null;
  maxDepth: number;
  timeoutMs: number;
  /** The pool in the driver seam, every call bounded by `timeoutMs`. */
  db: Db;
  /** The same pool for reports that read the whole ledger (usage, audit, listAccounts), with a longer bound. */
  reportDb: Db;
  cache: Required<CacheOptions> | null;
  /** Where the cache listens for key changes, when not through `pool` (which may be a pooler). */
  directUrl: string | undefined;
  /** A read replica for validations the cache cannot answer, in the driver seam; null: the pool. */
  readDb: Db | null;
  batching: Required<BatchingOptions> | null;
  /** How request rate limits are counted. */
  rateLimits: Required<RateLimitsOptions>;
  /** The price catalog of costs given as `{ model, usage }`; null: the bundled one. */
  prices: PriceCatalog | null;
}

/** The least bound of a report over the whole ledger: it reads, so it holds nobody up, and a big ledger takes time. */
const REPORT_TIMEOUT_MS = 60_000;

/** Checks the options of `new AgentKey()`, in the order they are documented, and fills in the defaults. */
export function agentKeySettings(options: unknown): Settings {
  const o = checkOptions<AgentKeyOptions>(
    options,
    ['pool', 'tableName', 'keyPrefix', 'validScopes', 'maxDepth', 'cache', 'batching', 'timeoutMs', 'actor', 'rateLimits', 'prices', 'directUrl', 'readPool'],
    'new AgentKey()',
  );
  // A catalog from agentkey/llm's createPriceCatalog(), checked by shape: core does not load the catalog until a cost needs it.
  if (o.prices !== undefined && (o.prices === null || typeof (o.prices as { price?: unknown }).price !== 'function')) {
    throw new AgentKeyError('invalid_argument', `prices must be a catalog made by createPriceCatalog() (agentkey/llm), not ${describe(o.prices)}.`);
  }
  const maxDepth = o.maxDepth ?? DEFAULT_MAX_DEPTH;
  if (!Number.isInteger(maxDepth) || maxDepth < 0 || maxDepth > 100) {
    throw new AgentKeyError('invalid_argument', 'maxDepth must be a whole number from 0 to 100.');
  }
  const names = tableNames(o.tableName ?? 'sdk_api_keys');
  const keyPrefix = checkKeyPrefix(o.keyPrefix ?? 'ak_');
  const valid = o.validScopes === undefined ? null : parseScopes(o.validScopes, null, 'validScopes');
  const timeoutMs = timeoutOption(o.timeoutMs);
  const actor = o.actor ?? 'library';
  if (actor !== 'library' && actor !== 'admin' && actor !== 'cli') {
    throw new AgentKeyError('invalid_argument', `actor must be 'library', 'admin' or 'cli'; got ${describe(actor)}.`);
  }
  return {
    actor,
    pool: o.pool,
    names,
    keyPrefix,
    validScopes: valid ? new Set(valid) : null,
    maxDepth,
    timeoutMs,
    db: toDb(o.pool, timeoutMs),
    reportDb: toDb(o.pool, Math.max(timeoutMs, REPORT_TIMEOUT_MS)),
    cache: cacheOptions(o.cache),
    directUrl: directUrlOption(o.directUrl, o.pool),
    readDb: o.readPool === undefined || o.readPool === null ? null : toDb(readPoolOption(o.readPool, o.pool), timeoutMs),
    batching: batchingOptions(o.batching),
    rateLimits: rateLimitsOptions(o.rateLimits),
    prices: o.prices ?? null,
  };
}

/** The `timeoutMs` option, checked (exported so the service can check it before it opens the database). */
export function timeoutOption(value: unknown): number {
  const ms = value ?? DEFAULT_TIMEOUT_MS;
  if (typeof ms !== 'number' || !Number.isInteger(ms) || ms < 1 || ms > 3_600_000) {
    throw new AgentKeyError('invalid_argument', `timeoutMs must be a whole number of milliseconds from 1 to 3600000; got ${describe(ms)}.`);
  }
  return ms;
}

/** Whether `pool` is a node-postgres Pool (it keeps its Client class and options). */
function isPgPool(pool: unknown): boolean {
  const p = pool as { connect?: unknown; Client?: unknown; options?: unknown; transaction?: unknown } | null;
  return !!p && typeof p.connect === 'function' && typeof p.Client === 'function' && typeof p.options === 'object' && typeof p.transaction !== 'function';
}

/** The `directUrl` option: a postgres:// URL, for a node-postgres Pool only. */
export function directUrlOption(value: unknown, pool: unknown): string | undefined {
  if (value === undefined || value === null || value === '') return undefined;
  let url: URL | null = null;
  try {
    url = typeof value === 'string' ? new URL(value) : null;
  } catch {
    url = null;
  }
  if (!url || (url.protocol !== 'postgres:' && url.protocol !== 'postgresql:')) {
    throw new AgentKeyError('invalid_argument', `directUrl must be a postgres:// URL of a direct (not pooled) connection; got ${describe(typeof value === 'string' ? '(not a postgres:// URL)' : value)}.`);
  }
  if (!isPgPool(pool)) {
    throw new AgentKeyError('invalid_argument', 'directUrl is for a node-postgres Pool (pg); PGlite and other pools need none.');
  }
  return value as string;
}

/** The `readPool` option: a node-postgres Pool of a read replica, beside a node-postgres `pool`. */
function readPoolOption(value: unknown, pool: unknown): PoolLike {
  if (!isPgPool(value)) throw new AgentKeyError('invalid_argument', `readPool must be a node-postgres Pool (pg) of a read replica; got ${describe(value)}.`);
  if (!isPgPool(pool)) throw new AgentKeyError('invalid_argument', 'readPool needs a node-postgres Pool as pool: a replica of PGlite cannot be read.');
  if (value === pool) throw new AgentKeyError('invalid_argument', 'readPool must be a pool of a read replica, not the same pool as pool.');
  return value as PoolLike;
}

function cacheOptions(value: unknown): Required<CacheOptions> | null {
  if (value === false) return null;
  const o = checkOptions<CacheOptions>(value ?? {}, ['maxKeys', 'ttlMs', 'fallbackTtlMs'], 'the cache option');
  const maxKeys = o.maxKeys ?? 10_000;
  const ttlMs = o.ttlMs ?? 5_000;
  const fallbackTtlMs = o.fallbackTtlMs ?? 1_000;
  if (!Number.isInteger(fallbackTtlMs) || fallbackTtlMs < 0 || fallbackTtlMs > 3_600_000) {
    throw new AgentKeyError('invalid_argument', 'cache.fallbackTtlMs must be a whole number of milliseconds from 0 to 3600000.');
  }
  if (!Number.isInteger(maxKeys) || maxKeys < 1 || maxKeys > 10_000_000) {
    throw new AgentKeyError('invalid_argument', 'cache.maxKeys must be a whole number from 1 to 10000000.');
  }
  if (!Number.isInteger(ttlMs) || ttlMs < 1 || ttlMs > 3_600_000) {
    throw new AgentKeyError('invalid_argument', 'cache.ttlMs must be a whole number of milliseconds from 1 to 3600000.');
  }
  return { maxKeys, ttlMs, fallbackTtlMs };
}

function batchingOptions(value: unknown): Required<BatchingOptions> | null {
  if (value === false) return null;
  const o = checkOptions<BatchingOptions>(value ?? {}, ['maxBatch', 'lanes'], 'the batching option');
  const maxBatch = o.maxBatch ?? 128;
  const lanes = o.lanes ?? 2;
  if (!Number.isInteger(maxBatch) || maxBatch < 1 || maxBatch > 1_000) {
    throw new AgentKeyError('invalid_argument', 'batching.maxBatch must be a whole number from 1 to 1000.');
  }
  if (!Number.isInteger(lanes) || lanes < 1 || lanes > 64) {
    throw new AgentKeyError('invalid_argument', 'batching.lanes must be a whole number from 1 to 64.');
  }
  return { maxBatch, lanes };
}

/** Most bytes of JSON a metadata object (of a ledger row or a key) may take. */
const MAX_METADATA_BYTES = 8_192;

/** A metadata option: a JSON object as its text (null when not given), or a clear error. */
export function metadataJson(value: unknown): string | null {
  if (value === undefined || value === null) return null;
  // A plain object only: a Date, a Map or a class instance would be stored as something else.
  const proto = typeof value === 'object' ? Object.getPrototypeOf(value) : undefined;
  if (typeof value !== 'object' || Array.isArray(value) || (proto !== Object.prototype && proto !== null)) {
    throw new AgentKeyError('invalid_argument', `metadata must be a JSON object; got ${describe(value)}.`);
  }
  let json: string;
  try {
    json = JSON.stringify(value);
  } catch {
    throw new AgentKeyError('invalid_argument', 'metadata must be serialisable as JSON.');
  }
  // JSON escapes NUL as \u0000, which PostgreSQL's jsonb refuses.
  if (json.includes('\\u0000')) {
    throw new AgentKeyError('invalid_argument', 'metadata must not contain a NUL character (PostgreSQL cannot store one).');
  }
  if (Buffer.byteLength(json) > MAX_METADATA_BYTES) {
    throw new AgentKeyError('invalid_argument', `metadata must be at most ${MAX_METADATA_BYTES} bytes of JSON.`);
  }
  return json;
}

// Rate limits: the `rateLimits` option of `new AgentKey()`, and a key's or account's limits.

function rateLimitsOptions(value: unknown): Required<RateLimitsOptions> {
  const o = checkOptions<RateLimitsOptions>(value ?? {}, ['mode'], 'the rateLimits option');
  const mode = o.mode ?? 'exact';
  if (mode !== 'local' && mode !== 'exact') {
    throw new AgentKeyError('invalid_argument', `rateLimits.mode must be 'local' or 'exact'; got ${describe(mode)}.`);
  }
  return { mode };
}

/** Most requests a rate limit may admit per window. */
export const MAX_RATE_REQUESTS = 1_000_000_000;
/** Most requests a concurrency limit may let in flight. */
export const MAX_CONCURRENCY = 1_000_000;

/**
 * A `rateLimit` option, checked: `{ requests, per }` as whole requests and whole seconds;
 * null for none (undefined too). Throws `invalid_rate_limit` naming the field.
 */
export function rateLimitOption(value: unknown, field = 'rateLimit'): { requests: number; perSeconds: number } | null {
  if (value === null || value === undefined) return null;
  if (typeof value !== 'object' || Array.isArray(value)) {
    throw new AgentKeyError('invalid_rate_limit', `${field} must be { requests, per } (e.g. { requests: 60, per: '1m' }) or null; got ${describe(value)}.`);
  }
  const unknown = Object.keys(value).filter((k) => k !== 'requests' && k !== 'per');
  if (unknown.length > 0) {
    throw new AgentKeyError('invalid_rate_limit', `${field} got unknown field ${JSON.stringify(unknown[0])}; allowed: requests, per.`);
  }
  const { requests, per } = value as { requests?: unknown; per?: unknown };
  if (typeof requests !== 'number' || !Number.isInteger(requests) || requests < 1 || requests > MAX_RATE_REQUESTS) {
    throw new AgentKeyError('invalid_rate_limit', `${field}.requests must be a whole number from 1 to ${MAX_RATE_REQUESTS}; got ${describe(requests)}.`);
  }
  return { requests, perSeconds: ratePerSeconds(per, `${field}.per`) };
}

/** A `concurrency` option: a whole number of requests in flight, or null for none (undefined too). */
export function concurrencyOption(value: unknown, field = 'concurrency'): number | null {
  if (value === null || value === undefined) return null;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1 || value > MAX_CONCURRENCY) {
    throw new AgentKeyError('invalid_rate_limit', `${field} must be a whole number from 1 to ${MAX_CONCURRENCY} or null; got ${describe(value)}.`);
  }
  return value;
}
