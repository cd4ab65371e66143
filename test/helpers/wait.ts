export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Polls `check` until it holds: a bounded loop, never a timed assertion. Gives up after
 * `timeoutMs` (about 15 s by default), asking every `everyMs`. With `retryErrors`, a check
 * that throws (the database is down for a moment) counts as not yet.
 */
export async function until(
  check: () => boolean | Promise<boolean>,
  what: string,
  { timeoutMs = 15_000, everyMs = 25, retryErrors = false }: { timeoutMs?: number; everyMs?: number; retryErrors?: boolean } = {},
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await check()) return;
    } catch (err) {
      if (!retryErrors) throw err;
    }
    if (Date.now() > deadline) throw new Error(`gave up waiting for ${what} (${timeoutMs} ms)`);
    await sleep(everyMs);
  }
}

/**
 * Reads `read()` until it matches `expected` (toMatchObject), within about 3 s, then asserts
 * it: for what reaches another connection's cache through LISTEN/NOTIFY, which takes a few ms.
 */
export async function soon<T>(read: () => Promise<T>, expected: Partial<T> | Record<string, unknown>): Promise<T> {
  const { expect } = await import('vitest');
  let value = await read();
  for (let i = 0; i < 120; i++) {
    try {
      expect(value).toMatchObject(expected as object);
      return value;
    } catch {
      await sleep(25);
      value = await read();
    }
  }
  expect(value).toMatchObject(expected as object);
  return value;
}
