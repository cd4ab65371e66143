/** What `withTimeout` rejects with: a wait on the key store that ran out (a 503 `storage_timeout`). */
export const TIMEOUT = Symbol('timeout');

/** Rejects with `TIMEOUT` when `promise` has not settled after `ms`. */
export function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(TIMEOUT), ms);
    timer.unref?.();
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
