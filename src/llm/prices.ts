import { type ModelInfo, type Provider, calcPrice, findProvider, updatePrices } from '@pydantic/genai-prices';
import { AgentKeyError } from '../errors.js';
import { MICROS_PER_CENT, describe } from '../money.js';
import { checkText } from '../text.js';
import { type TokenUsage, type Tokens, checkModel, checkUsage } from './usage.js';

/**
 * Prices of LLM calls, from the maintained `@pydantic/genai-prices` catalog (its bundled
 * data works offline), with custom prices that win over it for private deployments and
 * negotiated rates. Costs are exact to the micro-dollar (0.0001 cent): the catalog's float
 * result is put back on the decimal it came from, and a genuine remainder finer than a
 * micro-dollar is rounded up, so a call is never under-charged.
 */

/** A price of one model, in dollars per million tokens, as a provider's price sheet says. */
export interface CustomPrice {
  /** The provider's id ('openai', 'anthropic', or your own); any provider when left out. */
  provider?: string;
  /** The model's name as requests name it; a trailing '*' matches every name it starts. */
  model: string;
  inputPerMTok: number;
  outputPerMTok?: number;
  /** Cache reads; the input price when left out. */
  cachedInputPerMTok?: number;
  /** Cache writes; the input price when left out. */
  cacheWritePerMTok?: number;
  /** The model's context window in tokens: bounds a hold when a request sets no max_tokens. */
  contextWindow?: number;
  /** The most output tokens one call can produce. */
  maxOutputTokens?: number;
}

export interface PriceCatalogOptions {
  /** Prices that win over the catalog's. */
  custom?: CustomPrice[];
  /**
   * Fetch newer catalog data at run time (opt-in): `true` for the catalog's own URL, or a
   * URL and how often to fetch again (default 6 hours). A failed fetch keeps the prices in
   * use (the bundled ones at first) and never fails a charge. The fetched data is shared by
   * every catalog in the process, as the package keeps one copy.
   */
  remote?: boolean | { url?: string; refreshMs?: number; timeoutMs?: number };
}

/** What a model's price resolved to: its catalog ids, limits, and how it prices a usage. */
export interface ModelPrice {
  provider: string;
  model: string;
  contextWindow: number | null;
  maxOutputTokens: number | null;
  /** Micro-dollars for these token counts, rounded up to a whole micro. */
  micros(tokens: Tokens & { cacheWrite1hTokens?: number }): number;
}

/** Resolves model names to prices: custom prices first, then the catalog's. */
export class PriceCatalog {
  private readonly custom: { price: CustomPrice; provider: Provider }[];
  readonly remote: RemoteStatus | null;
  /** Resolved models by name and provider, for the catalog data they were resolved from (see dataVersion). */
  private readonly resolved = new Map<string, { version: number; price: ModelPrice | null }>();

  constructor(options: PriceCatalogOptions = {}) {
    if (options === null || typeof options !== 'object') throw new AgentKeyError('invalid_argument', `price catalog options must be an object, not ${describe(options)}.`);
    const custom = options.custom ?? [];
    if (!Array.isArray(custom)) throw new AgentKeyError('invalid_argument', `custom prices must be an array, not ${describe(custom)}.`);
    this.custom = custom.map((p, i) => ({ price: checkCustomPrice(p, `custom[${i}]`), provider: customProvider(p) }));
    this.remote = options.remote ? startRemote(options.remote) : null;
  }

  /**
   * The price of a model, or null when neither custom prices nor the catalog know it.
   * `hint`: the provider to try when none is given and the catalog cannot tell one from the
   * model's name (the proxy's upstream flavor: 'openai' for text-embedding-3-small).
   */
  find(model: string, provider?: string, hint?: string): ModelPrice | null {
    checkModel(model);
    const memo = `${provider ?? ''}\u0000${hint ?? ''}\u0000${model}`;
    const known = this.resolved.get(memo);
    if (known !== undefined && known.version === dataVersion) return known.price;
    const price = this.resolve(model.trim(), provider, hint);
    if (this.resolved.size >= 1_000) this.resolved.clear();
    this.resolved.set(memo, { version: dataVersion, price });
    return price;
  }

  private resolve(name: string, provider?: string, hint?: string): ModelPrice | null {
    for (const { price, provider: p } of this.custom) {
      if (provider !== undefined && price.provider !== undefined && price.provider !== provider) continue;
      if (!matches(price.model, name)) continue;
      // A prefix price records the model as it was named.
      const id = price.model.endsWith('*') ? name : price.model;
      return resolved(p, name, price.provider ?? provider ?? 'custom', id, price.contextWindow ?? null, price.maxOutputTokens ?? null);
    }
    let probe = catalogPrice(name, provider);
    if (probe === null && provider === undefined && hint !== undefined) probe = catalogPrice(name, hint);
    if (probe === null) return null;
    // The provider with only this model: pricing then skips finding them again on every call.
    const only: Provider = { ...probe.provider, models: [probe.model] };
    return resolved(only, name, probe.provider.id, probe.model.id, probe.model.context_window ?? null, null);
  }

  /** The price of a model; throws `unknown_model` when there is none (agentkey never charges 0 for an unknown model). */
  price(model: string, provider?: string, hint?: string): ModelPrice {
    const found = this.find(model, provider, hint);
    if (found === null) {
      throw new AgentKeyError(
        'unknown_model',
        `No price is known for model ${JSON.stringify(model)}${provider ? ` of provider ${JSON.stringify(provider)}` : ''}; name its provider if the catalog has it under one, or add it with custom prices (createPriceCatalog({ custom: [{ model, inputPerMTok, outputPerMTok }] })).`,
      );
    }
    return found;
  }
}

/** A catalog: the bundled prices, custom ones that win, and opt-in fetching of newer data. */
export function createPriceCatalog(options?: PriceCatalogOptions): PriceCatalog {
  return new PriceCatalog(options);
}

let shared: PriceCatalog | null = null;

/** Moves when fetched catalog data replaces the data in use: resolutions made before are made again. */
let dataVersion = 0;

/** The catalog used when none is given: the bundled prices only. */
export function defaultCatalog(): PriceCatalog {
  shared ??= new PriceCatalog();
  return shared;
}

/** What one LLM call costs. */
export interface LlmCost {
  /** Exact cents, to the micro-dollar (4 decimals). */
  costCents: number;
  /** The catalog's ids of the provider and model that priced it. */
  provider: string;
  model: string;
}

/**
 * The exact cost of one call from its token counts. Throws `unknown_model` for a model
 * with no price, `invalid_usage` for counts that are not whole numbers or whose parts pass
 * their whole.
 *
 * @example costFromUsage({ model: 'gpt-4o-mini', usage: { inputTokens: 1200, outputTokens: 300 } }) // { costCents: 0.036, ... }
 */
export function costFromUsage(input: { provider?: string; model: string; usage: TokenUsage }, options: { prices?: PriceCatalog } = {}): LlmCost {
  const { micros, provider, model } = priceUsage(input, options.prices);
  return { costCents: micros / MICROS_PER_CENT, provider, model };
}

/** costFromUsage() in micro-dollars, with the checked counts: for the ledger. */
export function priceUsage(input: { provider?: string; model: string; usage: TokenUsage }, prices: PriceCatalog = defaultCatalog()) {
  if (input === null || typeof input !== 'object') throw new AgentKeyError('invalid_usage', `costFromUsage() takes { model, usage }, not ${describe(input)}.`);
  const provider = input.provider === undefined ? undefined : checkProvider(input.provider);
  const price = prices.price(checkModel(input.model), provider);
  const tokens = checkUsage(input.usage);
  return { micros: price.micros(tokens), provider: price.provider, model: price.model, tokens };
}

function checkProvider(provider: unknown): string {
  if (typeof provider !== 'string' || !/^[\w.-]{1,64}$/.test(provider)) {
    throw new AgentKeyError('unknown_model', `provider must be a provider id such as 'openai' or 'anthropic', not ${describe(provider)}.`);
  }
  return provider;
}

/** Whether a custom price's name matches a model name: exactly, or by prefix with a trailing '*'. */
function matches(pattern: string, name: string): boolean {
  const p = pattern.toLowerCase();
  const n = name.toLowerCase();
  return p.endsWith('*') ? n.startsWith(p.slice(0, -1)) : p === n;
}

function catalogPrice(model: string, provider: string | undefined) {
  try {
    // Any usage that prices: the probe finds the model and its provider.
    return calcPrice({ input_tokens: 0 }, model, provider ? { providerId: provider } : {});
  } catch {
    return null;
  }
}

/** A model price that prices usages through the catalog's calculation (tiers, cache rates, dated prices). */
function resolved(
  only: Provider,
  name: string,
  provider: string,
  model: string,
  contextWindow: number | null,
  maxOutputTokens: number | null,
): ModelPrice {
  return {
    provider,
    model,
    contextWindow,
    maxOutputTokens,
    micros(tokens) {
      const usage: Record<string, number> = { input_tokens: tokens.inputTokens, output_tokens: tokens.outputTokens };
      if (tokens.cachedInputTokens > 0) usage.cache_read_tokens = tokens.cachedInputTokens;
      if (tokens.cacheWriteTokens > 0) usage.cache_write_tokens = tokens.cacheWriteTokens;
      if ((tokens.cacheWrite1hTokens ?? 0) > 0) usage.cache_write_1h_tokens = tokens.cacheWrite1hTokens as number;
      let result;
      try {
        result = calcPrice(usage, name, { provider: only });
      } catch (err) {
        throw new AgentKeyError('invalid_usage', `The catalog could not price this usage of ${model}: ${(err as Error).message}.`);
      }
      if (result === null) throw new AgentKeyError('unknown_model', `No price is known for model ${JSON.stringify(name)}.`);
      return dollarsToMicros(result.total_price);
    },
  };
}

/**
 * Dollars as the catalog computes them (a double) to whole micro-dollars: a value within
 * float noise of a whole micro is that micro; a genuine remainder is rounded up.
 */
export function dollarsToMicros(dollars: number): number {
  const micros = dollars * 1_000_000;
  const nearest = Math.round(micros);
  if (Math.abs(micros - nearest) <= Number.EPSILON * 64 * Math.max(1, Math.abs(micros))) return nearest;
  return Math.ceil(micros);
}

function checkCustomPrice(p: unknown, what: string): CustomPrice {
  if (p === null || typeof p !== 'object' || Array.isArray(p)) throw new AgentKeyError('invalid_argument', `${what} must be { model, inputPerMTok, outputPerMTok }, not ${describe(p)}.`);
  const c = p as Record<string, unknown>;
  const allowed = ['provider', 'model', 'inputPerMTok', 'outputPerMTok', 'cachedInputPerMTok', 'cacheWritePerMTok', 'contextWindow', 'maxOutputTokens'];
  const unknown = Object.keys(c).filter((k) => !allowed.includes(k));
  if (unknown.length > 0) throw new AgentKeyError('invalid_argument', `${what} has an unknown field ${JSON.stringify(unknown[0])}; allowed: ${allowed.join(', ')}.`);
  if (typeof c.model !== 'string' || c.model.trim() === '' || c.model.length > 200) throw new AgentKeyError('invalid_argument', `${what}.model must be a model name, not ${describe(c.model)}.`);
  checkText(c.model, `${what}.model`);
  if (c.provider !== undefined) checkProvider(c.provider);
  for (const field of ['inputPerMTok', 'outputPerMTok', 'cachedInputPerMTok', 'cacheWritePerMTok']) {
    const v = c[field];
    if (v === undefined && field !== 'inputPerMTok') continue;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > 1_000_000) {
      throw new AgentKeyError('invalid_argument', `${what}.${field} must be dollars per million tokens (a number from 0 to 1000000), not ${describe(v)}.`);
    }
  }
  for (const field of ['contextWindow', 'maxOutputTokens']) {
    const v = c[field];
    if (v !== undefined && (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 1)) {
      throw new AgentKeyError('invalid_argument', `${what}.${field} must be a whole number of tokens of at least 1, not ${describe(v)}.`);
    }
  }
  return c as unknown as CustomPrice;
}

/** A custom price as the catalog's own shape, so one calculation prices both. */
function customProvider(p: CustomPrice): Provider {
  const prices: Record<string, number> = { input_mtok: p.inputPerMTok, output_mtok: p.outputPerMTok ?? 0 };
  prices.cache_read_mtok = p.cachedInputPerMTok ?? p.inputPerMTok;
  prices.cache_write_mtok = p.cacheWritePerMTok ?? p.inputPerMTok;
  const model: ModelInfo = { id: p.model, match: { regex: '.*' }, prices, ...(p.contextWindow ? { context_window: p.contextWindow } : {}) };
  return { id: p.provider ?? 'custom', name: p.provider ?? 'custom', api_pattern: '.*', models: [model] };
}

// Fetching newer data (opt-in).

/** How fetching newer prices went: when it last worked, and the last failure. */
export interface RemoteStatus {
  url: string;
  lastSuccessAt: Date | null;
  lastError: string | null;
  /** Resolves after the first fetch, whether it worked or not. */
  ready: Promise<void>;
  stop(): void;
}

const DEFAULT_REMOTE = 'https://raw.githubusercontent.com/pydantic/genai-prices/main/prices/new_data/v2/data.json';

function startRemote(remote: true | { url?: string; refreshMs?: number; timeoutMs?: number }): RemoteStatus {
  const o = remote === true ? {} : remote;
  const url = o.url ?? DEFAULT_REMOTE;
  const refreshMs = o.refreshMs ?? 6 * 3_600_000;
  const timeoutMs = o.timeoutMs ?? 10_000;
  if (!/^https?:\/\//.test(url)) throw new AgentKeyError('invalid_argument', `remote.url must be an http(s) URL, not ${describe(url)}.`);
  if (!Number.isSafeInteger(refreshMs) || refreshMs < 1_000) throw new AgentKeyError('invalid_argument', `remote.refreshMs must be at least 1000, not ${describe(refreshMs)}.`);
  let timer: NodeJS.Timeout | undefined;
  let stopped = false;
  let readyDone!: () => void;
  const status: RemoteStatus = {
    url,
    lastSuccessAt: null,
    lastError: null,
    ready: new Promise<void>((resolve) => {
      readyDone = resolve;
    }),
    stop() {
      stopped = true;
      clearTimeout(timer);
    },
  };
  const fetchOnce = async () => {
    try {
      const res = await fetch(url, { signal: AbortSignal.timeout(timeoutMs) });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const data = (await res.json()) as unknown;
      if (!Array.isArray(data) || data.length === 0 || !data.every((p) => p && typeof p === 'object' && typeof p.id === 'string' && Array.isArray(p.models))) {
        throw new Error('the data is not a list of providers with models');
      }
      updatePrices(({ setProviderData }) => setProviderData(data as Provider[]));
      dataVersion++;
      status.lastSuccessAt = new Date();
      status.lastError = null;
    } catch (err) {
      // The prices in use stay: a failed fetch never breaks charging.
      status.lastError = err instanceof Error ? err.message : String(err);
    } finally {
      readyDone();
      if (!stopped) {
        timer = setTimeout(fetchOnce, refreshMs);
        timer.unref();
      }
    }
  };
  void fetchOnce();
  return status;
}

/** Whether the catalog knows a provider id (for checking configuration). */
export function knownProvider(id: string): boolean {
  return findProvider({ providerId: id }) !== undefined;
}
