import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { AgentKey } from '../agentkey.js';
import { type CentsInput, MICROS_PER_CENT, centsToMicros } from '../money.js';
import type { ProxyObserver } from '../proxy/options.js';

/**
 * The service's Prometheus metrics, on a registry of its own (never prom-client's global
 * one, so two services in one process do not collide), with Node's process metrics.
 * Routes are labelled by their pattern ('/v1/keys/:id'), never by the raw path, so the
 * label set stays small. A replay (an idempotent retry) is counted as `replayed`, and
 * never adds cents: money is counted once, as the ledger records it.
 */
export function createMetrics(ak: AgentKey) {
  const registry = new Registry();
  collectDefaultMetrics({ register: registry });
  const counter = <L extends string>(name: string, help: string, labelNames: readonly L[] = []) =>
    new Counter<L>({ name, help, labelNames, registers: [registry] });

  const requests = counter('agentkey_http_requests_total', 'HTTP requests by method, route pattern and status.', ['method', 'route', 'status']);
  const duration = new Histogram({
    name: 'agentkey_http_request_duration_seconds',
    help: 'HTTP request duration by route pattern.',
    labelNames: ['route'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  const verifications = counter('agentkey_verifications_total', 'POST /v1/verify outcomes: valid, invalid, expired, revoked, budget_exceeded, rate_limited, insufficient_scope.', ['outcome']);
  const charges = counter(
    'agentkey_charges_total',
    'Charges and commits by outcome: charged, replayed (an idempotent retry, charged once), or the refusal (budget_exceeded, invalid, ...).',
    ['kind', 'outcome'],
  );
  const cents = counter('agentkey_charged_cents_total', 'Cents charged by charges and commits (counted toward budgets; overage apart; replays never).');
  const overage = counter('agentkey_overage_cents_total', 'Cents of commits that no budget could take: recorded as overage, never counted toward a cap.');
  const overages = counter('agentkey_overage_commits_total', 'Commits with some overage.');
  const holds = counter('agentkey_holds_total', 'Holds (POST /v1/reservations) by outcome: held, replayed, or the refusal (budget_exceeded, invalid, ...).', ['outcome']);
  const heldCents = counter('agentkey_held_cents_total', 'Cents taken by new holds.');
  const releases = counter('agentkey_releases_total', 'Releases by outcome: released, replayed, or the refusal (already_committed, reservation_not_found, ...).', ['outcome']);
  const releasedCents = counter('agentkey_released_cents_total', 'Cents of holds given back: by releases, and the unused part of commits.');

  // Read from the AgentKey when scraped: counters it keeps itself.
  const cacheCounter = (name: string, help: string, field: 'hits' | 'misses' | 'evictions' | 'invalidations') =>
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        this.reset();
        this.inc(ak.cacheStats()?.[field] ?? 0);
      },
    });
  cacheCounter('agentkey_cache_hits_total', 'Validations answered from the in-process cache.', 'hits');
  cacheCounter('agentkey_cache_misses_total', 'Validations that read the database.', 'misses');
  cacheCounter('agentkey_cache_evictions_total', 'Cache entries evicted to stay within maxKeys.', 'evictions');
  cacheCounter('agentkey_cache_invalidations_total', 'Cache entries dropped because their key changed.', 'invalidations');
  // 1 for the mode the cache is in now: 'fallback' means changes cannot be heard (a pooler without AGENTKEY_DIRECT_URL).
  new Gauge({
    name: 'agentkey_cache_mode',
    help: "The key cache's mode: notify (changes heard by LISTEN), fallback (behind a pooler without AGENTKEY_DIRECT_URL: entries live fallbackTtlMs) or off (nothing served from memory now).",
    labelNames: ['mode'],
    registers: [registry],
    collect() {
      const mode = ak.cacheStats()?.mode ?? 'off';
      for (const m of ['notify', 'fallback', 'off'] as const) this.set({ mode: m }, m === mode ? 1 : 0);
    },
  });

  // Webhooks: each attempt's outcome (this process's deliverer), and the deliveries waiting, read from the database when scraped.
  const webhookAttempts = counter(
    'agentkey_webhook_attempts_total',
    "Webhook delivery attempts by outcome: delivered, retrying (failed, tried again later), failed (retryFor ran out), lost (another deliverer's lease).",
    ['outcome'],
  );
  new Gauge({
    name: 'agentkey_webhook_deliveries',
    help: 'Webhook deliveries not delivered, by state: pending (waiting or retrying), failing (pending after a failed attempt), failed (given up).',
    labelNames: ['state'] as const,
    registers: [registry],
    async collect() {
      try {
        const s = await ak.webhookStats();
        this.set({ state: 'pending' }, s.pending);
        this.set({ state: 'failing' }, s.failing);
        this.set({ state: 'failed' }, s.failed);
      } catch {
        // The database away: the figures stay as last read, the rest of /metrics still answers.
      }
    },
  });

  // --- The LLM proxy (issue 18): tokens and cost by model, requests by upstream and outcome, and the proxy's own time. ---
  const llmTokens = counter('agentkey_llm_tokens_total', 'Tokens of LLM calls the proxy committed, by model and kind (input, output, cached_input, cache_write, reasoning; cached_input and cache_write are parts of input, reasoning of output).', ['model', 'kind']);
  const llmCost = counter('agentkey_llm_cost_cents_total', 'Cents the proxy committed for LLM calls, by model (the real cost, overage included).', ['model']);
  const proxyRequests = counter('agentkey_proxy_requests_total', 'Proxy requests by upstream, API and outcome: ok, partial (cut short, usage so far committed), refused, bad_request, upstream_error, upstream_timeout, upstream_unreachable, failed.', ['upstream', 'api', 'outcome']);
  const proxyOverhead = new Histogram({
    name: 'agentkey_proxy_overhead_seconds',
    help: "Time a proxy request spent in the proxy before it went upstream, by upstream and part: 'total' (body, key check, estimate, hold) and 'hold' (the part waiting for the database's hold).",
    labelNames: ['upstream', 'part'] as const,
    buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
    registers: [registry],
  });
  const proxyObserver: ProxyObserver = {
    request: (e) => proxyRequests.inc({ upstream: e.upstream, api: e.api, outcome: e.outcome }),
    overhead: (e) => {
      proxyOverhead.observe({ upstream: e.upstream, part: 'total' }, e.seconds);
      proxyOverhead.observe({ upstream: e.upstream, part: 'hold' }, e.holdSeconds);
    },
    usage: (e) => {
      const u = e.usage;
      const kinds = { input: u.inputTokens, output: u.outputTokens ?? 0, cached_input: u.cachedInputTokens ?? 0, cache_write: u.cacheWriteTokens ?? 0, reasoning: u.reasoningTokens ?? 0 };
      for (const [kind, n] of Object.entries(kinds)) if (n > 0) llmTokens.inc({ model: e.model, kind }, n);
      if (e.costCents > 0) llmCost.inc({ model: e.model }, e.costCents);
    },
  };
  // --- end of the LLM proxy's metrics ---

  const add = (c: Counter, amount: number) => {
    if (amount > 0) c.inc(amount);
  };

  return {
    registry,
    /** What the LLM proxy reports its requests, overhead and committed usage to. */
    proxyObserver,
    request(method: string, route: string, status: number, seconds: number) {
      requests.inc({ method, route, status: String(status) });
      duration.observe({ route }, seconds);
    },
    verified(outcome: string) {
      verifications.inc({ outcome });
    },
    /** A charge that went through: `costCents` as asked (a replay adds none). */
    charged(result: { replayed?: true }, costCents: CentsInput) {
      charges.inc({ kind: 'charge', outcome: result.replayed ? 'replayed' : 'charged' });
      if (!result.replayed) add(cents, recorded(costCents));
    },
    committed(result: { replayed?: true; chargedCents: number; overageCents: number; releasedCents: number }) {
      charges.inc({ kind: 'commit', outcome: result.replayed ? 'replayed' : 'charged' });
      if (result.replayed) return;
      add(cents, result.chargedCents);
      add(releasedCents, result.releasedCents);
      if (result.overageCents > 0) {
        overage.inc(result.overageCents);
        overages.inc();
      }
    },
    held(result: { replayed?: true }, costCents: CentsInput) {
      holds.inc({ outcome: result.replayed ? 'replayed' : 'held' });
      if (!result.replayed) add(heldCents, recorded(costCents));
    },
    released(result: { replayed?: true; releasedCents: number }) {
      releases.inc({ outcome: result.replayed ? 'replayed' : 'released' });
      if (!result.replayed) add(releasedCents, result.releasedCents);
    },
    /** One webhook attempt's outcome (from the deliverer's onAttempt). */
    webhookAttempt(outcome: string) {
      webhookAttempts.inc({ outcome });
    },
    /** A refused charge, commit, hold or release, by its error code ('invalid_key' counts as 'invalid', as verifications say). */
    refused(kind: 'charge' | 'commit' | 'hold' | 'release', code: string) {
      const outcome = KEY_OUTCOME[code] ?? code;
      if (kind === 'hold') holds.inc({ outcome });
      else if (kind === 'release') releases.inc({ outcome });
      else charges.inc({ kind, outcome });
    },
  };
}

export type Metrics = ReturnType<typeof createMetrics>;

/** The refusal codes a key gets, as the outcome labels verifications use too. */
const KEY_OUTCOME: Record<string, string> = { invalid_key: 'invalid', key_expired: 'expired', key_revoked: 'revoked' };

/** Cents as the ledger records them: rounded up to a whole micro-dollar. */
function recorded(cents: CentsInput): number {
  return centsToMicros(cents, 'up') / MICROS_PER_CENT;
}
