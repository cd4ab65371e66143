/**
 * `last_used_at` written in batches: validations note the key and the time, and one
 * statement a second (or on `flush()`) stamps them all. A failed write is kept and goes
 * out with the next one.
 */
export class Touches {
  private pending = new Map<number, number>();
  private timer: ReturnType<typeof setTimeout> | null = null;
  private writing: Promise<void> = Promise.resolve();

  constructor(
    /** Returns the ids it could not stamp now (their rows held elsewhere), kept for the next write. */
    private readonly write: (ids: number[], at: Date[]) => Promise<readonly number[] | void>,
    private readonly intervalMs: number,
    private readonly maxPending = 5_000,
  ) {}

  touch(id: number, at: number = Date.now()): void {
    this.pending.set(id, Math.max(at, this.pending.get(id) ?? 0));
    // In the background a failed write is kept for the next one; flush() callers see the error.
    if (this.pending.size >= this.maxPending) this.flush().catch(() => {});
    else if (!this.timer) {
      this.timer = setTimeout(() => {
        this.timer = null;
        this.flush().catch(() => {});
      }, this.intervalMs);
      this.timer.unref?.();
    }
  }

  /** Writes every noted use now. Rejects if the write fails (the uses are kept for the next one). */
  flush(): Promise<void> {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
    const next = this.writing.catch(() => {}).then(() => this.writeNow());
    this.writing = next;
    return next;
  }

  stop(): void {
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private async writeNow(): Promise<void> {
    if (this.pending.size === 0) return;
    const batch = this.pending;
    this.pending = new Map();
    // Ascending ids: the order every writer locks keys in.
    const ids = [...batch.keys()].sort((a, b) => a - b);
    try {
      const skipped = await this.write(ids, ids.map((id) => new Date(batch.get(id) as number)));
      for (const id of skipped ?? []) this.touch(id, batch.get(id) as number);
    } catch (err) {
      for (const [id, at] of batch) if (!this.pending.has(id)) this.pending.set(id, at);
      throw err;
    }
  }
}
