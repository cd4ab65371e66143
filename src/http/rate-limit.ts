/**
 * A fixed one-minute window per client address: `limit` hits, then refusals until the
 * window ends. Old windows are dropped as the map grows, so memory stays bounded.
 */
export function minuteLimiter(limit: number, now: () => number = Date.now) {
  const windows = new Map<string, { start: number; count: number }>();
  return function allow(client: string): boolean {
    const t = now();
    let w = windows.get(client);
    if (!w || t - w.start >= 60_000) {
      if (windows.size >= 10_000) {
        for (const [k, v] of windows) if (t - v.start >= 60_000) windows.delete(k);
      }
      w = { start: t, count: 0 };
      windows.set(client, w);
    }
    w.count += 1;
    return w.count <= limit;
  };
}
