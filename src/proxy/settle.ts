import type { AgentKey, CommitResult } from '../agentkey.js';
import { AgentKeyError } from '../errors.js';
import type { PriceCatalog, TokenUsage } from '../llm/index.js';
import { loadLlm } from './llm.js';
import type { ProxyLogger, ProxyObserver } from './options.js';

/** What a settlement needs to know about its request. */
export interface SettleContext {
  ak: AgentKey;
  reservationId: string;
  /** The hold's amount: committed whole if the usage cannot be priced (never 0 silently). */
  heldCents: number;
  upstream: string;
  /** The model as the request named it. */
  model: string;
  /** The catalog's id of it (what metrics are labelled with: a bounded set). */
  catalogModel: string;
  provider: string | undefined;
  /**
   * The proxy's own catalog when it is not the AgentKey's: the cost is then priced here and
   * committed in cents (the AgentKey's catalog may not know the model). Undefined: commits
   * give the usage, priced by the AgentKey, and the ledger keeps the model and tokens.
   */
  ownPrices: PriceCatalog | undefined;
  logger: ProxyLogger | undefined;
  observer: ProxyObserver;
  requestId: string;
}

/**
 * The end of one request's hold: a commit of the usage, or a release, made exactly once
 * however many times and from however many places the request's end is reported (the
 * stream's end, the client's cancel, an error). A call to the key store that fails is tried
 * once more (a commit that may have landed replays, never charges twice); after that the
 * hold ends by itself at its ttl, and the failure is logged. Settlements in flight are kept
 * in `pending`, so a shutdown can wait for them.
 */
export class Settlement {
  private settled = false;

  constructor(
    private readonly ctx: SettleContext,
    private readonly pending: Set<Promise<void>>,
  ) {}

  /** Commits the cost of `usage`; `partial` when the call was cut short and the usage is what was counted. */
  commit(usage: TokenUsage, partial: boolean): Promise<void> {
    return this.once(async () => {
      const { ctx } = this;
      const note = { upstream: ctx.upstream, ...(partial ? { partial: true } : {}) };
      let result: CommitResult;
      try {
        result = await retried(() => this.commitUsage(usage, note));
      } catch (err) {
        if (!(err instanceof AgentKeyError) || (err.code !== 'unknown_model' && err.code !== 'invalid_usage')) throw err;
        // The model priced the hold, so the catalog refuses this usage: keep the whole hold rather than charge 0.
        ctx.logger?.error({ requestId: ctx.requestId, upstream: ctx.upstream, model: ctx.model, err: err.message }, 'proxy: the usage could not be priced; the whole hold is committed');
        result = await retried(() => ctx.ak.commit(ctx.reservationId, { costCents: ctx.heldCents, metadata: { ...note, model: ctx.model, ...usage, unpriced: true } }));
      }
      if (!result.success) throw new Error(`the commit was refused (${result.reason})`);
      try {
        ctx.observer.usage?.({ upstream: ctx.upstream, model: ctx.catalogModel, usage, costCents: result.costCents, partial });
      } catch {
        /* an observer's fault is not the request's */
      }
    });
  }

  /** Gives the whole hold back: nothing was used (an upstream error, a refusal after the hold). */
  release(): Promise<void> {
    return this.once(async () => {
      const result = await retried(() => this.ctx.ak.release(this.ctx.reservationId));
      if (!result.success) throw new Error(`the release was refused (${result.reason})`);
    });
  }

  private async commitUsage(usage: TokenUsage, note: Record<string, unknown>): Promise<CommitResult> {
    const { ctx } = this;
    const provider = ctx.provider ? { provider: ctx.provider } : {};
    if (ctx.ownPrices === undefined) return ctx.ak.commit(ctx.reservationId, { model: ctx.model, ...provider, usage, metadata: note });
    const { costFromUsage } = await loadLlm();
    const { costCents } = costFromUsage({ model: ctx.model, ...provider, usage }, { prices: ctx.ownPrices });
    return ctx.ak.commit(ctx.reservationId, { costCents, metadata: { ...note, model: ctx.model, ...provider, ...usage } });
  }

  private once(settle: () => Promise<unknown>): Promise<void> {
    if (this.settled) return Promise.resolve();
    this.settled = true;
    const { ctx } = this;
    // Begun once the answer is on its way: the commit's work never holds the answer up.
    const p = new Promise<void>((resolve) => setImmediate(resolve)).then(settle).then(
      () => {},
      (err: unknown) => {
        ctx.logger?.error({ requestId: ctx.requestId, reservationId: ctx.reservationId, err: err instanceof Error ? err.message : String(err) }, 'proxy: settling a hold failed; it ends at its ttl');
      },
    );
    this.pending.add(p);
    void p.finally(() => this.pending.delete(p));
    return p;
  }
}

/** Tries `call` once more after a fault of the key store; a caller's mistake (an AgentKeyError of another code) is not retried. */
async function retried<T>(call: () => Promise<T>): Promise<T> {
  try {
    return await call();
  } catch (err) {
    if (err instanceof AgentKeyError && err.code !== 'storage_error' && err.code !== 'storage_timeout') throw err;
    await new Promise((resolve) => setTimeout(resolve, 100));
    return call();
  }
}
