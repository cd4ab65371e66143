// The outbox's consumers in the core library: webhook endpoints (checked input, then the
// store), the outbox read as public events, the key.expired sweep, onEvent() handlers, and
// the delivery queue the deliverer of `agentkey/webhooks` works from. Sending and signing
// are not here: they live behind that subpath, with its dependency. One file (about 400
// lines): the outbox's public face, whose parts share the row-to-event mapping.
import { randomBytes } from 'node:crypto';
import { AgentKeyError } from './errors.js';
import { describe, microsToCents, toMicros } from './money.js';
import { accountIdText, checkOptions, checkText, limitOption, optionalText } from './options.js';
import type { PoolLike } from './store/db.js';
import { type ListenHandlers, type Subscription, listen } from './store/listen.js';
import type { DeliveryRow, OutboxRow, WebhookRow, WebhookStore } from './store/webhooks.js';
import type {
  AgentKeyEvent,
  AgentKeyEventType,
  CreateWebhookOptions,
  CreatedWebhook,
  OnEventOptions,
  OutboxEventQuery,
  Webhook,
  WebhookChanges,
  WebhookDelivery,
  WebhookDeliveryQuery,
  WebhookDeliveryStatus,
  WebhookStats,
} from './types.js';
import { iso } from './views.js';

/** Every event type the outbox holds. */
export const EVENT_TYPES: readonly AgentKeyEventType[] = ['budget.threshold', 'key.revoked', 'key.expired', 'hold.expired', 'overage.recorded'];
const STATUSES: readonly WebhookDeliveryStatus[] = ['pending', 'delivered', 'failed'];
const MAX_URL = 2_048;

/** An event's public id (its webhook-id): 'evt_' and the outbox row's id. */
export function eventId(outboxId: number): string {
  return `evt_${outboxId}`;
}

/** An outbox row as the public event: camelCase data, micro-dollars (`*_micros`, text) as exact cents (`*Cents`). */
export function toAgentKeyEvent(row: OutboxRow): AgentKeyEvent {
  return { id: eventId(Number(row.id)), type: row.type as AgentKeyEventType, timestamp: iso(row.created_at) as string, data: eventData(row.data) };
}

function eventData(raw: unknown): Record<string, unknown> {
  if (raw === null || typeof raw !== 'object' || Array.isArray(raw)) return {};
  // fromEntries: a field named __proto__ (SQL can write one) stays a field.
  return Object.fromEntries(
    Object.entries(raw).map(([field, value]) => {
      if (!field.endsWith('_micros')) return [camel(field), value];
      const name = `${camel(field.slice(0, -'_micros'.length))}Cents`;
      try {
        return [name, value === null ? null : microsToCents(toMicros(value))];
      } catch {
        // Not an amount agentkey writes (a row inserted by hand): shown as it is.
        return [name, value];
      }
    }),
  );
}

const camel = (s: string) => s.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());

/** A positive whole id (a number or a string of digits). */
function idNumber(value: unknown, field: string): number {
  const n = typeof value === 'string' && /^[0-9]{1,16}$/.test(value) ? Number(value) : value;
  if (typeof n === 'number' && Number.isSafeInteger(n) && n > 0) return n;
  throw new AgentKeyError('invalid_argument', `${field} must be a positive whole number; got ${describe(value)}.`);
}

/** An event id: 'evt_12', 12 or '12'. */
function eventIdNumber(value: unknown, field: string): number {
  return idNumber(typeof value === 'string' && value.startsWith('evt_') ? value.slice(4) : value, field);
}

function webhookUrl(value: unknown): string {
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_URL) {
    throw new AgentKeyError('invalid_argument', `url must be an http:// or https:// URL of at most ${MAX_URL} characters; got ${describe(value)}.`);
  }
  checkText(value, 'url');
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new AgentKeyError('invalid_argument', `url must be an absolute http:// or https:// URL; got ${describe(value)}.`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw new AgentKeyError('invalid_argument', `url must use http or https; got ${describe(url.protocol.replace(/:$/, ''))}.`);
  }
  if (/\s/.test(value)) throw new AgentKeyError('invalid_argument', 'url must not contain spaces.');
  return value;
}

function eventTypes(value: unknown, field = 'events'): AgentKeyEventType[] | null {
  if (value === null || value === undefined) return null;
  if (!Array.isArray(value) || value.length === 0) {
    throw new AgentKeyError('invalid_argument', `${field} must be a non-empty array of event types (${EVENT_TYPES.join(', ')}), or null for all; got ${describe(value)}.`);
  }
  for (const t of value) eventType(t, field);
  return EVENT_TYPES.filter((t) => value.includes(t));
}

function eventType(value: unknown, field = 'type'): AgentKeyEventType {
  if (typeof value === 'string' && (EVENT_TYPES as readonly string[]).includes(value)) return value as AgentKeyEventType;
  throw new AgentKeyError('invalid_argument', `${field} must be one of ${EVENT_TYPES.join(', ')}; got ${describe(value)}.`);
}

function enabledFlag(value: unknown): boolean {
  if (typeof value !== 'boolean') throw new AgentKeyError('invalid_argument', `enabled must be true or false; got ${describe(value)}.`);
  return value;
}

/** A new signing secret in the Standard Webhooks format: 'whsec_' and 24 random bytes in base64. */
function newSecret(): string {
  return `whsec_${randomBytes(24).toString('base64')}`;
}

function toWebhook(row: WebhookRow): Webhook {
  return {
    id: Number(row.id),
    url: row.url,
    events: row.event_types === null ? null : (row.event_types as AgentKeyEventType[]),
    accountId: row.account_id,
    description: row.description,
    enabled: row.enabled,
    createdAt: iso(row.created_at) as string,
    updatedAt: iso(row.updated_at) as string,
  };
}

function toDelivery(row: DeliveryRow): WebhookDelivery {
  const log = typeof row.attempt_log === 'string' ? (JSON.parse(row.attempt_log) as DeliveryRow['attempt_log']) : row.attempt_log;
  return {
    id: Number(row.id),
    webhookId: Number(row.webhook_id),
    eventId: eventId(Number(row.outbox_id)),
    eventType: (row.event_type as AgentKeyEventType | null) ?? null,
    status: row.status,
    attempts: Number(row.attempts),
    nextAttemptAt: row.status === 'pending' ? iso(row.next_attempt_at) : null,
    lastStatus: row.last_status === null ? null : Number(row.last_status),
    lastError: row.last_error,
    createdAt: iso(row.created_at) as string,
    deliveredAt: iso(row.delivered_at),
    attemptLog: (log ?? []).map((a) => ({
      attempt: Number(a.attempt),
      at: iso(a.started_at) as string,
      status: a.status === null ? null : Number(a.status),
      error: a.error,
      durationMs: Number(a.duration_ms),
    })),
  };
}

/** A delivery a deliverer took: where to post which event, and with what secret. */
export interface ClaimedDelivery {
  id: number;
  webhookId: number;
  /** Which try this is (1 for the first). */
  attempt: number;
  url: string;
  secret: string;
  event: AgentKeyEvent;
}

/** One attempt's outcome, as the deliverer records it. */
export interface AttemptOutcome {
  deliveryId: number;
  webhookId: number;
  attempt: number;
  lease: string;
  startedAt: Date;
  status: number | null;
  error: string | null;
  durationMs: number;
  delivered: boolean;
  /** When to try again if not delivered (ms from now). */
  retryInMs: number;
  /** How long after the delivery was made it may still be tried (ms). */
  retryForMs: number;
}

/**
 * What the deliverer of `agentkey/webhooks` works from (through `ak.deliveryQueue()`): the
 * fan-out of outbox events into deliveries, claims under a lease, the record of each
 * attempt, the key.expired sweep, and a wake-up when the outbox grows.
 */
export interface DeliveryQueue {
  fanOut(limit: number): Promise<number>;
  claim(limit: number, leaseMs: number, lease: string): Promise<ClaimedDelivery[]>;
  record(outcome: AttemptOutcome): Promise<WebhookDeliveryStatus | null>;
  sweepExpiredKeys(limit: number): Promise<number>;
  /** Calls `wake` whenever rows are added to the outbox (and when listening (re)starts); null when this pool cannot listen. */
  onOutbox(wake: () => void): { close(): Promise<void> } | null;
}

/** The events and webhooks part of AgentKey. */
export class Events {
  private readonly subscriptions = new Set<() => Promise<void>>();

  constructor(
    private readonly store: WebhookStore,
    private readonly changesFrom: { pool: PoolLike; channel: string; directUrl?: string | undefined },
    private readonly fault: (err: unknown) => never,
  ) {}

  async createWebhook(options: CreateWebhookOptions): Promise<CreatedWebhook> {
    const o = checkOptions<CreateWebhookOptions>(options, ['url', 'events', 'accountId', 'description', 'enabled'], 'createWebhook()');
    const row = {
      url: webhookUrl(o.url),
      secret: newSecret(),
      eventTypes: eventTypes(o.events),
      accountId: o.accountId === null || o.accountId === undefined ? null : accountIdText(o.accountId),
      description: optionalText(o.description, 'description', 500),
      enabled: o.enabled === undefined ? true : enabledFlag(o.enabled),
    };
    const made = await this.store.create(row).catch(this.fault);
    return { ...toWebhook(made), secret: made.secret };
  }

  async listWebhooks(options: { limit?: number } = {}): Promise<Webhook[]> {
    const o = checkOptions<{ limit?: number }>(options ?? {}, ['limit'], 'listWebhooks()');
    return (await this.store.list(limitOption(o.limit, 1_000, 10_000)).catch(this.fault)).map(toWebhook);
  }

  async getWebhook(id: number | string): Promise<Webhook | null> {
    const row = await this.store.get(idNumber(id, 'webhookId')).catch(this.fault);
    return row ? toWebhook(row) : null;
  }

  async updateWebhook(id: number | string, changes: WebhookChanges): Promise<Webhook & { secret?: string }> {
    const webhookId = idNumber(id, 'webhookId');
    const c = checkOptions<WebhookChanges>(changes, ['url', 'events', 'accountId', 'description', 'enabled', 'rotateSecret'], 'updateWebhook()');
    const set: Parameters<WebhookStore['update']>[1] = {};
    if (c.url !== undefined) set.url = webhookUrl(c.url);
    if (c.events !== undefined) set.event_types = eventTypes(c.events);
    if (c.accountId !== undefined) set.account_id = c.accountId === null ? null : accountIdText(c.accountId);
    if (c.description !== undefined) set.description = optionalText(c.description, 'description', 500);
    if (c.enabled !== undefined) set.enabled = enabledFlag(c.enabled);
    if (c.rotateSecret !== undefined && typeof c.rotateSecret !== 'boolean') {
      throw new AgentKeyError('invalid_argument', `rotateSecret must be true or false; got ${describe(c.rotateSecret)}.`);
    }
    if (c.rotateSecret) set.secret = newSecret();
    const row = await this.store.update(webhookId, set).catch(this.fault);
    if (!row) throw notFound(webhookId);
    return c.rotateSecret ? { ...toWebhook(row), secret: row.secret } : toWebhook(row);
  }

  async deleteWebhook(id: number | string): Promise<boolean> {
    return this.store.remove(idNumber(id, 'webhookId')).catch(this.fault);
  }

  async deliveries(query: WebhookDeliveryQuery = {}): Promise<WebhookDelivery[]> {
    const q = checkOptions<WebhookDeliveryQuery>(query ?? {}, ['webhookId', 'status', 'before', 'limit'], 'webhookDeliveries()');
    if (q.status !== undefined && !STATUSES.includes(q.status)) {
      throw new AgentKeyError('invalid_argument', `status must be one of ${STATUSES.join(', ')}; got ${describe(q.status)}.`);
    }
    const filter = {
      webhookId: q.webhookId === undefined ? null : idNumber(q.webhookId, 'webhookId'),
      status: q.status ?? null,
      before: q.before === undefined ? null : idNumber(q.before, 'before'),
      limit: limitOption(q.limit, 50, 1_000),
    };
    const rows = await this.store.deliveries(filter).catch(this.fault);
    if (rows.length === 0 && filter.webhookId !== null && !(await this.store.get(filter.webhookId).catch(this.fault))) throw notFound(filter.webhookId);
    return rows.map(toDelivery);
  }

  async outboxEvents(query: OutboxEventQuery = {}): Promise<AgentKeyEvent[]> {
    const q = checkOptions<OutboxEventQuery>(query ?? {}, ['accountId', 'type', 'before', 'limit'], 'outboxEvents()');
    const rows = await this.store
      .outbox({
        accountId: q.accountId === undefined ? null : accountIdText(q.accountId),
        type: q.type === undefined ? null : eventType(q.type),
        before: q.before === undefined ? null : eventIdNumber(q.before, 'before'),
        limit: limitOption(q.limit, 100, 1_000),
      })
      .catch(this.fault);
    return rows.map(toAgentKeyEvent);
  }

  async stats(): Promise<WebhookStats> {
    return this.store.stats().catch(this.fault);
  }

  async sweepExpiredKeys(limit: number): Promise<number> {
    if (!Number.isInteger(limit) || limit <= 0 || limit > 100_000) {
      throw new AgentKeyError('invalid_argument', 'limit must be a whole number from 1 to 100000.');
    }
    return this.store.sweepExpired(limit).catch(this.fault);
  }

  /**
   * Calls `handler` with each outbox event written after this resolves, in order, one at
   * a time: woken by LISTEN on the outbox's channel, and polling every `pollMs` besides.
   */
  async onEvent(handler: (event: AgentKeyEvent) => unknown, options: OnEventOptions = {}): Promise<() => Promise<void>> {
    if (typeof handler !== 'function') throw new AgentKeyError('invalid_argument', `onEvent() needs a handler function; got ${describe(handler)}.`);
    const o = checkOptions<OnEventOptions>(options ?? {}, ['types', 'pollMs', 'onError'], 'onEvent()');
    const types = o.types === undefined ? null : eventTypes(o.types, 'types');
    const pollMs = o.pollMs ?? 1_000;
    if (!Number.isInteger(pollMs) || pollMs < 10 || pollMs > 3_600_000) {
      throw new AgentKeyError('invalid_argument', `pollMs must be a whole number of milliseconds from 10 to 3600000; got ${describe(o.pollMs)}.`);
    }
    if (o.onError !== undefined && typeof o.onError !== 'function') {
      throw new AgentKeyError('invalid_argument', `onError must be a function; got ${describe(o.onError)}.`);
    }
    const onError = o.onError;
    let cursor = await this.store.horizon().catch(this.fault);
    let stopped = false;
    let running: Promise<void> | null = null;
    let again = false;
    const PAGE = 200;
    const pump = (): Promise<void> => {
      if (stopped) return Promise.resolve();
      if (running) {
        again = true;
        return running;
      }
      running = (async () => {
        do {
          again = false;
          for (;;) {
            const page = await this.store.after(cursor, types, PAGE);
            for (const row of page.rows) {
              if (stopped) return;
              const event = toAgentKeyEvent(row);
              try {
                await handler(event);
              } catch (err) {
                try {
                  onError?.(err, event);
                } catch {
                  // An onError that throws must not stop the events either.
                }
              }
            }
            cursor = page.cursor;
            if (page.read < PAGE || stopped) break;
          }
        } while (again && !stopped);
      })()
        // A store fault (the database away for a moment): the next poll or notification tries again from the same place.
        .catch(() => {})
        .finally(() => {
          running = null;
        });
      return running;
    };
    // Unheard (a pooler, no directUrl): the poll alone finds new events.
    const handlers: ListenHandlers = { notify: () => void pump(), up: () => void pump(), down: () => {}, unheard: () => {} };
    const subscription: Subscription | null = listen(this.changesFrom.pool, this.changesFrom.channel, handlers, this.changesFrom.directUrl);
    const timer = setInterval(() => void pump(), pollMs);
    timer.unref?.();
    const stop = async () => {
      if (stopped) return;
      stopped = true;
      clearInterval(timer);
      this.subscriptions.delete(stop);
      // `handlers` stays reachable from here until the subscription is closed (the hub holds it weakly).
      await subscription?.close().catch(() => {});
      void handlers;
      await running;
    };
    this.subscriptions.add(stop);
    return stop;
  }

  /** Stops every onEvent() subscription (AgentKey.close()). */
  async close(): Promise<void> {
    await Promise.all([...this.subscriptions].map((stop) => stop()));
  }

  queue(): DeliveryQueue {
    const store = this.store;
    return {
      fanOut: (limit) => store.fanOut(limit).catch(this.fault),
      claim: async (limit, leaseMs, lease) =>
        (await store.claim(limit, leaseMs, lease).catch(this.fault)).map((r) => ({
          id: r.id,
          webhookId: r.webhook_id,
          attempt: r.attempts,
          url: r.url,
          secret: r.secret,
          event: toAgentKeyEvent(r.outbox),
        })),
      record: (outcome) => store.record(outcome).catch(this.fault),
      sweepExpiredKeys: (limit) => this.sweepExpiredKeys(limit),
      onOutbox: (wake) => {
        const handlers: ListenHandlers = { notify: wake, up: wake, down: () => {}, unheard: () => {} };
        const sub = listen(this.changesFrom.pool, this.changesFrom.channel, handlers, this.changesFrom.directUrl);
        if (!sub) return null;
        return {
          close: async () => {
            await sub.close();
            void handlers;
          },
        };
      },
    };
  }
}

function notFound(id: number): AgentKeyError {
  return new AgentKeyError('webhook_not_found', `No webhook endpoint has id ${id}.`);
}
