/** Adding up what tests and worker processes report: amounts in micro-dollars, sums and groups. */

/** Cents to micro-dollars (1 cent = 10,000), exact for the four decimals agentkey keeps; undefined gives NaN. */
export const micros = (cents: number | undefined): number => Math.round((cents ?? NaN) * 10_000);

/** Micro-dollars to cents: 12345 -> 1.2345. */
export const cents = (micros: number): number => micros / 10_000;

export const sum = (values: Iterable<number>): number => [...values].reduce((a, b) => a + b, 0);

/** `items` grouped by `key`, each group in the items' order. */
export function groupBy<T>(items: T[], key: (item: T) => string): Map<string, T[]> {
  const map = new Map<string, T[]>();
  for (const item of items) map.set(key(item), [...(map.get(key(item)) ?? []), item]);
  return map;
}
