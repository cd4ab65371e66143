/** Reference instants in UTC, worked out here independently of src/time.ts, to check the library's against. */

/** The first UTC midnight strictly after `t` (ms since the epoch). */
export function nextUtcMidnight(t: number): string {
  const d = new Date(t);
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1)).toISOString();
}

/** `from` plus `months` calendar months in UTC, clamped to the end of shorter months. */
export function plusUtcMonths(from: Date, months: number): Date {
  const y = from.getUTCFullYear();
  const m = from.getUTCMonth() + months;
  const last = new Date(Date.UTC(y, m + 1, 0)).getUTCDate();
  return new Date(
    Date.UTC(y, m, Math.min(from.getUTCDate(), last), from.getUTCHours(), from.getUTCMinutes(), from.getUTCSeconds(), from.getUTCMilliseconds()),
  );
}

/** A monthly reset: the first anchor-day UTC midnight (clamped) after `at`. */
export function nextMonthlyReset(anchor: Date, at: Date): string {
  const start = new Date(Date.UTC(anchor.getUTCFullYear(), anchor.getUTCMonth(), anchor.getUTCDate()));
  for (let k = 1; ; k++) {
    const candidate = plusUtcMonths(start, k);
    if (candidate.getTime() > at.getTime()) return candidate.toISOString();
  }
}

/** The first instant of `d`'s UTC month, `plus` months on. */
export function utcMonthStart(d: Date, plus = 0): string {
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth() + plus, 1)).toISOString();
}

/** The first instant of `d`'s UTC day, `plus` days on. */
export function utcDayStart(d: Date, plus = 0): string {
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + plus)).toISOString();
}
