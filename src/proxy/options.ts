import { AgentKeyError } from '../errors.js';
import type { LlmApi, PriceCatalog, TokenUsage } from '../llm/index.js';
import { describe } from '../money.js';
import { checkOptions } from '../options.js';
import { durationMs } from '../time.js';

/** Which API an upstream speaks: OpenAI's (chat completions, responses, embeddings) or Anthropic's (messages). */
export type Flavor = 'openai' | 'anthropic';

/** One model API the proxy forwards to, with the operator's own credentials. */
export interface Upstream {
  /** Default: the upstream's name when it is 'openai' or 'anthropic'. */
  flavor?: Flavor;
  /**
   * Where its `/v1/...` paths live: 'https://api.openai.com' (the default for 'openai'),
   * 'https://api.anthropic.com' (for 'anthropic'), or an OpenAI-compatible server's base;
   * a trailing '/v1' is allowed and not doubled.
   */
  baseUrl?: string;
  /** The operator's provider key: sent upstream, never shown anywhere. */
  apiKey: string;
  /** Headers sent upstream with every request (say `OpenAI-Organization`); they win over the client's. */
  headers?: Record<string, string>;
  /** The price catalog's provider id for this upstream's models; default the flavor. null: the catalog matches by model alone. */
  provider?: string | null;
}

/** How one proxied request ended, as the metrics count it. */
export type ProxyOutcome =
  /** The upstream answered and its usage was committed. */
  | 'ok'
  /** The client went away, or the stream broke: the usage so far was committed. */
  | 'partial'
  /** Refused before any upstream call: key, scope, model, budget or rate limit. */
  | 'refused'
  /** A request the proxy could not read (bad JSON, no model, a model with no price...). */
  | 'bad_request'
  /** The upstream answered an error: nothing committed, the hold released. */
  | 'upstream_error'
  | 'upstream_timeout'
  | 'upstream_unreachable'
  /** The proxy failed (its key store, say): the hold, if any, released. */
  | 'failed';

/** What the proxy reports as it works: the service's /metrics listens here. Each method is optional and must not throw. */
export interface ProxyObserver {
  /** One request, once it ended. `model` is null when the body named none; `upstream` is '(unknown)' for a name the proxy does not have. */
  request?(e: { upstream: string; api: LlmApi; outcome: ProxyOutcome; model: string | null }): void;
  /**
   * Time spent in the proxy before the request went upstream (reading, key check, estimate,
   * hold), in seconds; `holdSeconds` is the part of it spent waiting for the hold (the database).
   */
  overhead?(e: { upstream: string; api: LlmApi; seconds: number; holdSeconds: number }): void;
  /** A committed usage and its cost; `model` is the price catalog's id of the model. */
  usage?(e: { upstream: string; model: string; usage: TokenUsage; costCents: number; partial: boolean }): void;
}

/** What the proxy logs through: pino, or anything with these three methods. */
export interface ProxyLogger {
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

export interface ProxyOptions {
  /** Upstreams by name, as the path names them (`/proxy/<name>/v1/...`). */
  upstreams: Record<string, Upstream>;
  /** The scope a key needs; null for none. Default 'proxy.chat'. */
  scope?: string | null;
  /** How long a hold lives if this process dies before settling it: '30s' to '24h'. Default '15m'. */
  holdTtl?: string;
  /** How long the upstream may take to answer, and then between two chunks of its body, in ms. Default 600000 (10 min). */
  timeoutMs?: number;
  /** How long a wait on the key store may take before a 503, in ms. Default 10000. */
  storeTimeoutMs?: number;
  /** Largest request body accepted, in bytes (413 past it). Default 32 MiB. */
  bodyLimitBytes?: number;
  /** How long a key's model allow-list (its metadata's `models`) is kept in memory, in ms; 0 reads it on every request. Default 5000. */
  modelsTtlMs?: number;
  /**
   * The price catalog for holds and costs. Default: the AgentKey's (`new AgentKey({ prices })`), which
   * also prices the commits, so the ledger keeps each call's model and tokens. One given here that
   * is not the AgentKey's prices the commits too, in cents (with the model and tokens in metadata).
   */
  prices?: PriceCatalog;
  logger?: ProxyLogger;
  observer?: ProxyObserver;
}

/** An upstream as the proxy uses it: every default filled in. */
export interface ResolvedUpstream {
  name: string;
  flavor: Flavor;
  /** The base the `/v1/...` paths are appended to, without a trailing slash or '/v1'. */
  base: string;
  apiKey: string;
  headers: Record<string, string>;
  provider: string | undefined;
}

export interface ResolvedOptions {
  upstreams: Map<string, ResolvedUpstream>;
  scope: string | null;
  holdTtl: string;
  timeoutMs: number;
  storeTimeoutMs: number;
  bodyLimitBytes: number;
  modelsTtlMs: number;
  prices: PriceCatalog | undefined;
  logger: ProxyLogger | undefined;
  observer: ProxyObserver;
}

export const DEFAULT_BASE_URLS: Record<Flavor, string> = { openai: 'https://api.openai.com', anthropic: 'https://api.anthropic.com' };

const OPTIONS = ['upstreams', 'scope', 'holdTtl', 'timeoutMs', 'storeTimeoutMs', 'bodyLimitBytes', 'modelsTtlMs', 'prices', 'logger', 'observer'];
const UPSTREAM = ['flavor', 'baseUrl', 'apiKey', 'headers', 'provider'];
const NAME = /^[a-z0-9][a-z0-9_-]{0,62}$/;

/** Checks createProxy()'s options once, when it is built; a mistake is an AgentKeyError that names the option (never a key). */
export function checkProxyOptions(options: unknown): ResolvedOptions {
  const o = checkOptions<ProxyOptions>(options, OPTIONS, 'createProxy() options');
  if (o.upstreams === null || typeof o.upstreams !== 'object' || Array.isArray(o.upstreams) || Object.keys(o.upstreams).length === 0) {
    throw new AgentKeyError('invalid_argument', 'createProxy() needs upstreams: at least one, such as { openai: { apiKey } }.');
  }
  const upstreams = new Map<string, ResolvedUpstream>();
  for (const [name, u] of Object.entries(o.upstreams)) upstreams.set(name, checkUpstream(name, u));
  if (o.scope !== undefined && o.scope !== null && (typeof o.scope !== 'string' || o.scope.length === 0)) {
    throw new AgentKeyError('invalid_argument', `scope must be a non-empty string or null; got ${describe(o.scope)}.`);
  }
  const holdTtl = o.holdTtl ?? '15m';
  durationMs(holdTtl, 'holdTtl', 24 * 3_600_000);
  if (o.prices !== undefined && (o.prices === null || typeof (o.prices as { price?: unknown }).price !== 'function')) {
    throw new AgentKeyError('invalid_argument', 'prices must be a PriceCatalog (createPriceCatalog() of agentkey/llm).');
  }
  for (const [field, value] of [['logger', o.logger], ['observer', o.observer]] as const) {
    if (value !== undefined && (value === null || typeof value !== 'object')) throw new AgentKeyError('invalid_argument', `${field} must be an object; got ${describe(value)}.`);
  }
  return {
    upstreams,
    scope: o.scope === undefined ? 'proxy.chat' : o.scope,
    holdTtl,
    timeoutMs: whole(o.timeoutMs, 'timeoutMs', 600_000, 1),
    storeTimeoutMs: whole(o.storeTimeoutMs, 'storeTimeoutMs', 10_000, 1),
    bodyLimitBytes: whole(o.bodyLimitBytes, 'bodyLimitBytes', 32 * 1024 * 1024, 1024),
    modelsTtlMs: whole(o.modelsTtlMs, 'modelsTtlMs', 5_000, 0),
    prices: o.prices,
    logger: o.logger,
    observer: o.observer ?? {},
  };
}

function checkUpstream(name: string, value: unknown): ResolvedUpstream {
  if (!NAME.test(name)) throw new AgentKeyError('invalid_argument', `Upstream name ${describe(name)} must be 1 to 63 lowercase letters, digits, _ or -.`);
  const u = checkOptions<Upstream>(value, UPSTREAM, `Upstream "${name}"`);
  const flavor = u.flavor ?? (name === 'openai' || name === 'anthropic' ? name : undefined);
  if (flavor !== 'openai' && flavor !== 'anthropic') {
    throw new AgentKeyError('invalid_argument', `Upstream "${name}" needs flavor 'openai' or 'anthropic'; got ${describe(u.flavor)}.`);
  }
  // Never echo the key itself, only what is wrong with it.
  if (typeof u.apiKey !== 'string' || u.apiKey.trim() === '' || /[\s\u0000-\u001f]/.test(u.apiKey)) {
    throw new AgentKeyError('invalid_argument', `Upstream "${name}" needs apiKey: the provider key, a non-empty string without spaces.`);
  }
  const baseUrl = u.baseUrl ?? DEFAULT_BASE_URLS[flavor];
  let url: URL;
  try {
    url = new URL(baseUrl);
  } catch {
    throw new AgentKeyError('invalid_argument', `Upstream "${name}" baseUrl must be an http(s) URL; got ${describe(baseUrl)}.`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new AgentKeyError('invalid_argument', `Upstream "${name}" baseUrl must be an http(s) URL; got ${describe(baseUrl)}.`);
  if (url.username || url.password || url.search || url.hash) {
    throw new AgentKeyError('invalid_argument', `Upstream "${name}" baseUrl must have no credentials, query or fragment; put the key in apiKey.`);
  }
  const headers: Record<string, string> = {};
  if (u.headers !== undefined) {
    if (u.headers === null || typeof u.headers !== 'object' || Array.isArray(u.headers)) throw new AgentKeyError('invalid_argument', `Upstream "${name}" headers must be an object of strings.`);
    for (const [k, v] of Object.entries(u.headers)) {
      if (typeof v !== 'string' || !/^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(k)) throw new AgentKeyError('invalid_argument', `Upstream "${name}" header ${describe(k)} must be a header name with a string value.`);
      headers[k.toLowerCase()] = v;
    }
  }
  if (u.provider !== undefined && u.provider !== null && (typeof u.provider !== 'string' || !/^[\w.-]{1,64}$/.test(u.provider))) {
    throw new AgentKeyError('invalid_argument', `Upstream "${name}" provider must be a price catalog provider id such as 'openai', or null; got ${describe(u.provider)}.`);
  }
  const base = url.toString().replace(/\/+$/, '').replace(/\/v1$/, '');
  return { name, flavor, base, apiKey: u.apiKey, headers, provider: u.provider === null ? undefined : (u.provider ?? flavor) };
}

function whole(value: unknown, field: string, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isSafeInteger(value) || value < min) {
    throw new AgentKeyError('invalid_argument', `${field} must be a whole number of at least ${min}; got ${describe(value)}.`);
  }
  return value;
}
