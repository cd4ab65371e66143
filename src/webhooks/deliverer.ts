import { randomUUID } from 'node:crypto';
import { Webhook } from 'standardwebhooks';
import type { AgentKey } from '../agentkey.js';
import { AgentKeyError } from '../errors.js';
import type { AttemptOutcome, ClaimedDelivery, DeliveryQueue } from '../events.js';
import { describe } from '../money.js';
import { durationMs } from '../time.js';

/** How a deliverer runs; every field has a default. */
export interface DelivererOptions {
  /** How long a delivery is retried after its event was fanned out, then marked failed. Default '24h' (at most '30d'). */
  retryFor?: string;
  /** The bound of one request, connection to response headers (ms). Default 10000. */
  timeoutMs?: number;
  /** Deliveries claimed per tick (and outbox rows fanned out per step). Default 50. */
  batchSize?: number;
  /** Requests in flight at once. Default 10. */
  concurrency?: number;
  /** How often the queue is read when no notification came (ms). Default 1000. */
  pollMs?: number;
  /** The first retry's delay (ms); each next one doubles, up to maxBackoffMs, with jitter (half to all of it). Default 1000. */
  minBackoffMs?: number;
  /** Default 3600000 (an hour). */
  maxBackoffMs?: number;
  /** Run `ak.sweepExpiredKeys()` on each tick, so `key.expired` events are written. Default true. */
  sweepExpiredKeys?: boolean;
  /**
   * Run `ak.sweepExpiredHolds()` on each tick (up to batchSize holds), so holds past their
   * ttl are marked expired, with their 'expire' ledger rows and `hold.expired` events, even
   * on keys that spend no more. Several deliverers sweeping at once expire each hold once
   * (the sweep skips holds another has locked). Default true.
   */
  sweepExpiredHolds?: boolean;
  /** Hears each attempt's outcome (for metrics and logs). */
  onAttempt?: (attempt: AttemptReport) => void;
  /** Hears a tick that failed (the database away, say); the deliverer tries again next tick. */
  onError?: (err: unknown) => void;
  /** The fetch to send with (default: the global one). */
  fetch?: typeof fetch;
}

/** One attempt, as `onAttempt` hears it. */
export interface AttemptReport {
  deliveryId: number;
  webhookId: number;
  eventId: string;
  eventType: string;
  attempt: number;
  /** delivered; retrying (pending again); failed (retryFor ran out); lost (its lease had passed to another deliverer). */
  outcome: 'delivered' | 'retrying' | 'failed' | 'lost';
  status: number | null;
  error: string | null;
  durationMs: number;
}

export interface Deliverer {
  /** One round: sweep expired keys and holds, fan out new events, claim and send due deliveries. Resolves with how many were sent. */
  tick(): Promise<number>;
  /** Stops: no new round starts; waits for the sends in flight and records them. */
  stop(): Promise<void>;
}

/** Time past a request's bound that its lease lasts, so the attempt is recorded before another deliverer may take it. */
const LEASE_MARGIN_MS = 30_000;

/**
 * Starts a webhook deliverer on `ak`'s tables: it fans outbox events out to the endpoints
 * that want them, and posts each (`{ type, timestamp, data }`) signed per Standard Webhooks
 * (`webhook-id` is the event's id, the same on every retry and for every endpoint;
 * `webhook-timestamp`; `webhook-signature` by the `standardwebhooks` package). A 2xx is
 * delivered; anything else is retried with exponential backoff and jitter until `retryFor`
 * has passed, then failed. Every attempt is recorded. Several deliverers (in several
 * processes) share one database: a delivery is claimed with `FOR UPDATE SKIP LOCKED` and a
 * lease, so two never send one event to one endpoint at the same time. At least once: a
 * receiver de-duplicates by `webhook-id`. Each tick also sweeps expired keys (`key.expired`
 * events) and expired holds (`sweepExpiredHolds`), once each however many deliverers run.
 *
 * @example
 * const deliverer = startDeliverer(ak, { retryFor: '6h' });
 * process.on('SIGTERM', () => deliverer.stop());
 */
export function startDeliverer(ak: AgentKey, options: DelivererOptions = {}): Deliverer {
  const o = delivererSettings(options);
  const queue: DeliveryQueue = ak.deliveryQueue();
  const lease = randomUUID();
  const leaseMs = o.timeoutMs + LEASE_MARGIN_MS;
  let stopped = false;
  let current: Promise<number> | null = null;
  let timer: ReturnType<typeof setTimeout> | null = null;
  let again = false;

  const send = async (d: ClaimedDelivery): Promise<void> => {
    const started = new Date();
    const t0 = performance.now();
    let status: number | null = null;
    let error: string | null = null;
    const body = JSON.stringify({ type: d.event.type, timestamp: d.event.timestamp, data: d.event.data });
    const abort = new AbortController();
    const bound = setTimeout(() => abort.abort(), o.timeoutMs);
    try {
      const signature = new Webhook(d.secret).sign(d.event.id, started, body);
      const res = await o.fetch(d.url, {
        method: 'POST',
        headers: {
          'content-type': 'application/json',
          'user-agent': 'agentkey-webhooks',
          'webhook-id': d.event.id,
          'webhook-timestamp': String(Math.floor(started.getTime() / 1000)),
          'webhook-signature': signature,
        },
        body,
        redirect: 'manual',
        signal: abort.signal,
      });
      status = res.status;
      // The answer's body is not needed: dropped, so the connection is freed.
      await res.body?.cancel().catch(() => {});
      if (status < 200 || status > 299) error = `HTTP ${status}`;
    } catch (err) {
      error = abort.signal.aborted ? `timeout after ${o.timeoutMs} ms` : sendError(err);
    } finally {
      clearTimeout(bound);
    }
    const durationMs = performance.now() - t0;
    const delivered = error === null;
    const outcome: AttemptOutcome = {
      deliveryId: d.id,
      webhookId: d.webhookId,
      attempt: d.attempt,
      lease,
      startedAt: started,
      status,
      error,
      durationMs,
      delivered,
      retryInMs: backoff(d.attempt, o.minBackoffMs, o.maxBackoffMs),
      retryForMs: o.retryForMs,
    };
    const settled = await queue.record(outcome);
    o.onAttempt?.({
      deliveryId: d.id,
      webhookId: d.webhookId,
      eventId: d.event.id,
      eventType: d.event.type,
      attempt: d.attempt,
      outcome: settled === null ? 'lost' : settled === 'pending' ? 'retrying' : settled,
      status,
      error,
      durationMs,
    });
  };

  const round = async (): Promise<number> => {
    const keysSwept = o.sweepExpiredKeys ? await queue.sweepExpiredKeys(o.batchSize) : 0;
    // Before the fan-out, so the hold.expired events it writes go out in this round.
    const holdsSwept = o.sweepExpiredHolds ? await ak.sweepExpiredHolds(o.batchSize) : 0;
    const fanned = await queue.fanOut(o.batchSize);
    // No more than are sent at once: each starts as soon as it is claimed, so none is sent
    // after its lease (timeoutMs + 30 s) ran out and another deliverer may have it.
    const claimed = stopped ? [] : await queue.claim(o.concurrency, leaseMs, lease);
    let next = 0;
    const worker = async () => {
      while (next < claimed.length) {
        const d = claimed[next++] as ClaimedDelivery;
        await send(d).catch((err: unknown) => o.onError?.(err));
      }
    };
    await Promise.all(Array.from({ length: Math.min(o.concurrency, claimed.length) }, worker));
    // A full page means more may be waiting: go again at once.
    if (fanned >= o.batchSize || claimed.length >= o.concurrency || keysSwept >= o.batchSize || holdsSwept >= o.batchSize) again = true;
    return claimed.length;
  };

  const tick = (): Promise<number> => {
    if (current) {
      again = true;
      return current;
    }
    const run = round()
      .catch((err: unknown) => {
        o.onError?.(err);
        return 0;
      })
      .finally(() => {
        current = null;
        if (!stopped) schedule(again ? 0 : o.pollMs);
        again = false;
      });
    current = run;
    return run;
  };

  const schedule = (ms: number) => {
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      void tick();
    }, ms);
    timer.unref?.();
  };

  const subscription = queue.onOutbox(() => {
    if (!stopped) void tick();
  });
  schedule(0);

  return {
    tick,
    async stop() {
      if (stopped) return;
      stopped = true;
      if (timer) clearTimeout(timer);
      timer = null;
      await subscription?.close().catch(() => {});
      await current;
    },
  };
}

/** The delay before retry number `attempt` + 1: doubling from `min`, at most `max`, jittered to half to all of it. */
export function backoff(attempt: number, min: number, max: number): number {
  const full = Math.min(max, min * 2 ** Math.min(attempt - 1, 40));
  return Math.round(full / 2 + Math.random() * (full / 2));
}

/** Why a request did not get an answer, in a few words (never a stack). */
function sendError(err: unknown): string {
  const cause = (err as { cause?: { code?: unknown; message?: unknown } } | null)?.cause;
  const code = typeof cause?.code === 'string' ? cause.code : undefined;
  if (code === 'ECONNREFUSED') return 'connection refused';
  if (code === 'ECONNRESET' || code === 'UND_ERR_SOCKET') return 'connection reset';
  if (code === 'ENOTFOUND' || code === 'EAI_AGAIN') return 'host not found';
  if (code) return `network error (${code})`;
  const message = err instanceof Error ? err.message : String(err);
  return message.slice(0, 200);
}

interface Settings {
  retryForMs: number;
  timeoutMs: number;
  batchSize: number;
  concurrency: number;
  pollMs: number;
  minBackoffMs: number;
  maxBackoffMs: number;
  sweepExpiredKeys: boolean;
  sweepExpiredHolds: boolean;
  onAttempt: DelivererOptions['onAttempt'];
  onError: DelivererOptions['onError'];
  fetch: typeof fetch;
}

const OPTIONS = ['retryFor', 'timeoutMs', 'batchSize', 'concurrency', 'pollMs', 'minBackoffMs', 'maxBackoffMs', 'sweepExpiredKeys', 'sweepExpiredHolds', 'onAttempt', 'onError', 'fetch'];

/** Checks a deliverer's options, all before it starts; a bad one throws `invalid_argument` (or `invalid_duration`). */
export function delivererSettings(options: unknown): Settings {
  if (options === null || typeof options !== 'object' || Array.isArray(options)) {
    throw new AgentKeyError('invalid_argument', `The deliverer's options must be an object; got ${describe(options)}.`);
  }
  const o = options as DelivererOptions;
  const unknown = Object.keys(o).filter((k) => !OPTIONS.includes(k));
  if (unknown.length > 0) throw new AgentKeyError('invalid_argument', `Unknown deliverer option ${JSON.stringify(unknown[0])}; allowed: ${OPTIONS.join(', ')}.`);
  const whole = (value: unknown, field: string, fallback: number, min: number, max: number): number => {
    const v = value ?? fallback;
    if (!Number.isInteger(v) || (v as number) < min || (v as number) > max) {
      throw new AgentKeyError('invalid_argument', `${field} must be a whole number from ${min} to ${max}; got ${describe(value)}.`);
    }
    return v as number;
  };
  const fn = <F>(value: unknown, field: string): F | undefined => {
    if (value !== undefined && typeof value !== 'function') throw new AgentKeyError('invalid_argument', `${field} must be a function; got ${describe(value)}.`);
    return value as F | undefined;
  };
  const minBackoffMs = whole(o.minBackoffMs, 'minBackoffMs', 1_000, 1, 86_400_000);
  const maxBackoffMs = whole(o.maxBackoffMs, 'maxBackoffMs', Math.max(3_600_000, minBackoffMs), minBackoffMs, 86_400_000);
  if (o.sweepExpiredKeys !== undefined && typeof o.sweepExpiredKeys !== 'boolean') {
    throw new AgentKeyError('invalid_argument', `sweepExpiredKeys must be true or false; got ${describe(o.sweepExpiredKeys)}.`);
  }
  if (o.sweepExpiredHolds !== undefined && typeof o.sweepExpiredHolds !== 'boolean') {
    throw new AgentKeyError('invalid_argument', `sweepExpiredHolds must be true or false; got ${describe(o.sweepExpiredHolds)}.`);
  }
  const fetchFn = fn<typeof fetch>(o.fetch, 'fetch') ?? globalThis.fetch;
  return {
    retryForMs: durationMs(o.retryFor ?? '24h', 'retryFor', 30 * 86_400_000),
    timeoutMs: whole(o.timeoutMs, 'timeoutMs', 10_000, 1, 300_000),
    batchSize: whole(o.batchSize, 'batchSize', 50, 1, 1_000),
    concurrency: whole(o.concurrency, 'concurrency', 10, 1, 100),
    pollMs: whole(o.pollMs, 'pollMs', 1_000, 10, 3_600_000),
    minBackoffMs,
    maxBackoffMs,
    sweepExpiredKeys: o.sweepExpiredKeys ?? true,
    sweepExpiredHolds: o.sweepExpiredHolds ?? true,
    onAttempt: fn(o.onAttempt, 'onAttempt'),
    onError: fn(o.onError, 'onError'),
    fetch: fetchFn,
  };
}
