import { Coalescer, ItemFailure } from './coalesce.js';
import { isDatabaseTimeout } from './store/db.js';
import { isDataError, lockedOut } from './store/errors.js';
import { type BatchItem, type SpendOutcome, type SpendStore, refName } from './store/spend.js';
import type { BatchingOptions } from './types.js';

/**
 * How long a batch waits for a row another transaction holds before it goes again without
 * waiting, leaving the items that need a held row to the retry lane: well past what another
 * batch holds its rows for, so calls on a key merely shared with a concurrent batch keep
 * their one round trip.
 */
const BATCH_WAIT_MS = 50;
/** How long one retry statement waits for a held row before its round goes again without waiting (so the rest of it goes on). */
const RETRY_WAIT_MS = 250;
/** Less time left than this, an item is not sent again. */
const MIN_RETRY_WAIT_MS = 5;
const BUSY: SpendOutcome = Object.freeze({ outcome: 'busy' });

interface Retry {
  item: BatchItem;
  /** When its call began plus timeoutMs (ms since the epoch). */
  deadline: number;
}

/**
 * Concurrent charges, holds and settles, coalesced into one statement per batch
 * (`SpendStore.spendMany`), each with the outcome it would have had one after another.
 *
 * An item that needs a key, account or hold another transaction holds comes back 'busy',
 * untouched, and goes again through the retry lane (one statement at a time, each waiting a
 * little in the database for the rows), until it is decided or `timeoutMs` has passed since
 * its call began: then it throws storage_timeout, having changed nothing. While a ref's rows
 * stay held past a retry's wait (see `locked`), its later calls go to the retry lane
 * directly, so a locked key holds up only its own calls, never the batches of other keys.
 */
export class SpendBatches {
  private readonly batches: Coalescer<BatchItem, SpendOutcome>;
  /** Items whose key, account or hold was held by another transaction: tried again, one statement at a time. */
  private readonly retries: Coalescer<Retry, SpendOutcome>;
  /**
   * Refs (by refName) whose items found their rows still held after a retry statement's
   * wait too, with how many such items are still trying: a lock that lasts. Their later
   * calls go straight to `retries`, so batches of other keys never wait for it.
   */
  private readonly locked = new Map<string, number>();

  constructor(
    private readonly store: SpendStore,
    options: Required<BatchingOptions>,
    private readonly timeoutMs: number,
  ) {
    this.batches = new Coalescer((items) => this.runBatch(items), options);
    this.retries = new Coalescer((entries) => this.runRetries(entries), { maxBatch: options.maxBatch, lanes: 1 });
  }

  /** One step, decided in a batch with whatever else is in flight. */
  async decide(item: BatchItem): Promise<SpendOutcome> {
    const deadline = Date.now() + this.timeoutMs;
    const ref = refName(item.ref);
    let out = this.locked.has(ref) ? BUSY : await this.batches.submit(item);
    let marked = false;
    try {
      while (out.outcome === 'busy') {
        if (deadline - Date.now() < MIN_RETRY_WAIT_MS) throw lockedOut(this.timeoutMs);
        out = await this.retries.submit({ item, deadline });
        if (out.outcome === 'busy' && !marked) {
          marked = true;
          this.locked.set(ref, (this.locked.get(ref) ?? 0) + 1);
        }
      }
      return out;
    } finally {
      if (marked) {
        const left = (this.locked.get(ref) as number) - 1;
        if (left > 0) this.locked.set(ref, left);
        else this.locked.delete(ref);
      }
    }
  }

  /** Resolves when no batch is queued or in flight. */
  async settled(): Promise<void> {
    await this.batches.settled();
    await this.retries.settled();
  }

  private runBatch(items: BatchItem[]): Promise<(SpendOutcome | ItemFailure)[]> {
    return this.sendBatch(items, Math.min(BATCH_WAIT_MS, this.timeoutMs));
  }

  /** One retry statement: it waits for held rows up to RETRY_WAIT_MS, or less as the first deadline nears. */
  private async runRetries(entries: Retry[]): Promise<(SpendOutcome | ItemFailure)[]> {
    const now = Date.now();
    const live = (e: Retry) => e.deadline - now >= MIN_RETRY_WAIT_MS;
    const sent = entries.filter(live);
    if (sent.length === 0) return entries.map(() => BUSY);
    const waitMs = Math.min(RETRY_WAIT_MS, Math.min(...sent.map((e) => e.deadline)) - now);
    const outs = await this.sendBatch(sent.map((e) => e.item), waitMs);
    let at = 0;
    return entries.map((e) => (live(e) ? (outs[at++] as SpendOutcome | ItemFailure) : BUSY));
  }

  /**
   * One batch in one statement. If the database refuses a value of one item (a data error,
   * class 22), nothing was written: the items run again one by one, so only that call fails.
   * If a row it needs stays held elsewhere past `waitMs`, nothing was written either: it goes
   * again without waiting, and the items that need a held row come back 'busy'.
   */
  private async sendBatch(items: BatchItem[], waitMs: number): Promise<(SpendOutcome | ItemFailure)[]> {
    try {
      return await this.store.spendMany(items, waitMs);
    } catch (err) {
      if (waitMs > 0 && isDatabaseTimeout(err)) return this.sendBatch(items, 0);
      if (items.length === 1 || !isDataError(err)) throw err;
      const outs: (SpendOutcome | ItemFailure)[] = [];
      for (const item of items) {
        try {
          outs.push((await this.store.spendMany([item], waitMs))[0] as SpendOutcome);
        } catch (itemErr) {
          outs.push(new ItemFailure(itemErr));
        }
      }
      return outs;
    }
  }
}
