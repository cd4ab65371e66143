export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Polls `check` until it holds: a bounded loop (about 15 s), never a timed assertion. */
export async function until(check: () => boolean | Promise<boolean>, what: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (await check()) return;
    await sleep(25);
  }
  throw new Error(`gave up waiting for ${what}`);
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
