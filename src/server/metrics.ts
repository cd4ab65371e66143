import { Counter, Histogram, Registry } from 'prom-client';
import type { AgentKey } from '../agentkey.js';
import { type CentsInput, MICROS_PER_CENT, centsToMicros } from '../money.js';

/** The refusal codes a key gets, as the outcome labels verifications use too. */
const KEY_OUTCOME: Record<string, string> = { invalid_key: 'invalid', key_expired: 'expired', key_revoked: 'revoked' };

/** Cents as the ledger records them: rounded up to a whole micro-dollar. */
export function recorded(cents: CentsInput): number {
  return centsToMicros(cents, 'up') / MICROS_PER_CENT;
}

/**
 * The service's Prometheus metrics, on a registry of its own (never prom-client's global
 * one, so two services in one process do not collide). Routes are labelled by their
 * pattern ('/v1/keys/:id'), never by the raw path, so the label set stays small.
 */
export function createMetrics(ak: AgentKey) {
  const registry = new Registry();
  const requests = new Counter({
    name: 'agentkey_http_requests_total',
    help: 'HTTP requests by method, route pattern and status.',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [registry],
  });
  const duration = new Histogram({
    name: 'agentkey_http_request_duration_seconds',
    help: 'HTTP request duration by route pattern.',
    labelNames: ['route'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [registry],
  });
  const verifications = new Counter({
    name: 'agentkey_verifications_total',
    help: 'POST /v1/verify outcomes: valid, invalid, expired, revoked, insufficient_scope.',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  const charges = new Counter({
    name: 'agentkey_charges_total',
    help: 'Charges and commits by outcome (charged, budget_exceeded, ...).',
    labelNames: ['kind', 'outcome'] as const,
    registers: [registry],
  });
  const cents = new Counter({
    name: 'agentkey_charged_cents_total',
    help: 'Cents charged by charges and commits (counted toward budgets; overage apart).',
    registers: [registry],
  });
  const overage = new Counter({
    name: 'agentkey_overage_cents_total',
    help: 'Cents of commits that no budget could take: recorded as overage, never counted toward a cap.',
    registers: [registry],
  });
  const overages = new Counter({
    name: 'agentkey_overage_commits_total',
    help: 'Commits with some overage.',
    registers: [registry],
  });
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

  const add = (c: Counter, amount: number) => {
    if (amount > 0) c.inc(amount);
  };

  return {
    registry,
    request(method: string, route: string, status: number, seconds: number) {
      requests.inc({ method, route, status: String(status) });
      duration.observe({ route }, seconds);
    },
    verified(outcome: string) {
      verifications.inc({ outcome });
    },
    /** A charge that went through: `costCents` as asked (a replay adds none). */
    charged(result: { replayed?: true }, costCents: CentsInput) {
      charges.inc({ kind: 'charge', outcome: 'charged' });
      if (!result.replayed) add(cents, recorded(costCents));
    },
    committed(result: { replayed?: true; chargedCents: number; overageCents: number }) {
      charges.inc({ kind: 'commit', outcome: 'charged' });
      if (result.replayed) return;
      add(cents, result.chargedCents);
      if (result.overageCents > 0) {
        overage.inc(result.overageCents);
        overages.inc();
      }
    },
    held(_result: { replayed?: true }, _costCents: CentsInput) {},
    released(_result: { replayed?: true; releasedCents: number }) {},
    /** A refused charge, by its error code ('invalid_key' counts as 'invalid', as verifications say). */
    refused(kind: 'charge' | 'commit' | 'hold' | 'release', code: string) {
      if (kind === 'charge') charges.inc({ kind, outcome: KEY_OUTCOME[code] ?? code });
    },
  };
}

export type Metrics = ReturnType<typeof createMetrics>;
