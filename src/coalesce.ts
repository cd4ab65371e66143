export interface CoalesceOptions {
  /** Most items in one batch. */
  maxBatch: number;
  /** Batches in flight at once. */
  lanes: number;
}

/** What a batch returns for one call that failed on its own: that call rejects with `error`. */
export class ItemFailure {
  constructor(readonly error: unknown) {}
}

interface Waiting<I, O> {
  item: I;
  resolve(out: O): void;
  reject(err: unknown): void;
}

/**
 * Turns calls into batches with no timer: calls made in the same tick go together, and
 * while every lane is busy the calls that arrive wait and leave as the next batch. Under
 * no load a call goes out alone at once; under load batches grow by themselves.
 * A batch fails as a whole: every call in it gets the error.
 */
export class Coalescer<I, O> {
  private queue: Waiting<I, O>[] = [];
  private inFlight = 0;
  private scheduled = false;
  private idle: (() => void)[] = [];

  constructor(
    private readonly run: (items: I[]) => Promise<(O | ItemFailure)[]>,
    private readonly options: CoalesceOptions,
  ) {}

  submit(item: I): Promise<O> {
    return new Promise<O>((resolve, reject) => {
      this.queue.push({ item, resolve, reject });
      if (!this.scheduled) {
        this.scheduled = true;
        queueMicrotask(() => {
          this.scheduled = false;
          this.drain();
        });
      }
    });
  }

  /** Resolves when nothing is queued or in flight. */
  settled(): Promise<void> {
    if (this.inFlight === 0 && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idle.push(resolve));
  }

  private drain(): void {
    while (this.inFlight < this.options.lanes && this.queue.length > 0) {
      const batch = this.queue.splice(0, this.options.maxBatch);
      this.inFlight++;
      this.send(batch).finally(() => {
        this.inFlight--;
        this.drain();
        if (this.inFlight === 0 && this.queue.length === 0) for (const done of this.idle.splice(0)) done();
      });
    }
  }

  private async send(batch: Waiting<I, O>[]): Promise<void> {
    try {
      const outs = await this.run(batch.map((w) => w.item));
      batch.forEach((w, i) => {
        const out = outs[i];
        if (out instanceof ItemFailure) w.reject(out.error);
        else w.resolve(out as O);
      });
    } catch (err) {
      for (const w of batch) w.reject(err);
    }
  }
}
