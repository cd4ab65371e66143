import asciichart from 'asciichart';
import Table from 'cli-table3';
import type { AccountBudget, KeyEvent, KeyInfo, UsageReport } from '../agentkey.js';
import type { BudgetWindow, LedgerEntry } from '../types.js';
import { type Cents, centsToMicros } from '../money.js';

/**
 * Cents as dollars: 250 -> '$2.50'; sub-cent amounts keep their digits: 0.15 -> '$0.0015'.
 * Exact for a total past MAX_CENTS too, which comes as a decimal string.
 */
export function dollars(cents: Cents | null): string {
  if (cents === null) return 'unlimited';
  const micros = typeof cents === 'number' ? BigInt(centsToMicros(cents)) : exactMicros(cents);
  const abs = micros < 0n ? -micros : micros;
  const fraction = (abs % 1_000_000n).toString().padStart(6, '0').replace(/0+$/, '');
  return `${micros < 0n ? '-' : ''}$${(abs / 1_000_000n).toLocaleString('en-US')}.${fraction.padEnd(2, '0')}`;
}

/** A decimal string of cents (at most 4 decimals, as totals come) in micro-dollars. */
function exactMicros(cents: string): bigint {
  const [whole = '0', fraction = ''] = cents.replace(/^-/, '').split('.');
  const micros = BigInt(whole + fraction.padEnd(4, '0').slice(0, 4));
  return cents.startsWith('-') ? -micros : micros;
}

/** Whether a figure is above zero, a number or a decimal string. */
function positive(cents: Cents): boolean {
  return typeof cents === 'number' ? cents > 0 : /^\d*[1-9]/.test(cents.replace('.', ''));
}

/**
 * What must never reach a terminal as is: control characters (C0, DEL, C1: escape
 * sequences, BEL...), format characters (bidi overrides and isolates, zero-width spaces;
 * not the zero-width joiner inside emoji), line and paragraph separators, lone surrogates.
 */
const UNPRINTABLE = /[\p{Cc}\p{Zl}\p{Zp}]|(?!\u200d)\p{Cf}|\p{Cs}/gu;

const hex = (n: number, width: number) => n.toString(16).padStart(width, '0');

const SHORT: Record<string, string> = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };

/**
 * Text as it can be shown on a terminal: every unprintable character as an escape, \n,
 * \x1b, \u202e or \u{e0001}. Rows written by SQL may hold anything, so everything the CLI
 * shows of the database goes through here.
 */
export function printable(text: string): string {
  return text.replace(UNPRINTABLE, (c) => {
    const code = c.codePointAt(0) as number;
    return SHORT[c] ?? (code <= 0xff ? `\\x${hex(code, 2)}` : code <= 0xffff ? `\\u${hex(code, 4)}` : `\\u{${hex(code, 0)}}`);
  });
}

/** printable() for text of several lines: its line breaks are kept. */
export function printableLines(text: string): string {
  return text.split('\n').map(printable).join('\n');
}

/**
 * JSON for a terminal: JSON.stringify (which escapes C0 controls), with every other
 * unprintable character escaped as \uXXXX too, so it parses to the same value.
 */
export function printableJson(value: unknown): string {
  return JSON.stringify(value, null, 2).replace(UNPRINTABLE, (c) =>
    c === '\n' ? c : Array.from({ length: c.length }, (_, i) => `\\u${hex(c.charCodeAt(i), 4)}`).join(''),
  );
}

export function table(head: string[], rows: (string | number)[][]): string {
  // No colours: output goes to pipes and logs as often as to a terminal.
  const t = new Table({ head, style: { head: [], border: [] } });
  t.push(...rows.map((r) => r.map((cell) => printable(String(cell)))));
  return t.toString();
}

/** An ISO time as '2026-12-01 18:20:00Z'; '-' for none. */
export function when(iso: string | null): string {
  return iso === null ? '-' : iso.replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

export function keysTable(keys: KeyInfo[]): string {
  if (keys.length === 0) return 'No keys.';
  return table(
    ['id', 'name', 'account', 'prefix', 'status', 'scopes', 'budget', 'spent', 'held', 'remaining', 'period', 'expires'],
    keys.map((k) => [
      k.id,
      k.name ?? '',
      String(k.accountId),
      k.prefix ?? '',
      k.status,
      k.scopes === null ? '(all)' : k.scopes.join(', ') || '(none)',
      budgetCell(k),
      dollars(k.spentCents),
      dollars(k.heldCents),
      dollars(k.remainingCents),
      k.budgetPeriod ?? '-',
      when(k.expiresAt),
    ]),
  );
}

/** `keys list`: the keys table, and below it every window of the keys whose columns cannot show them all. */
export function keysList(keys: KeyInfo[]): string {
  const windowed = keys.filter(hasWindows);
  if (windowed.length === 0) return keysTable(keys);
  return `${keysTable(keys)}\n\nBudget windows (a charge must fit every one):\n${windowsTable(windowed.flatMap((k) => k.budgets.map((w) => [`key ${k.id}`, w] as const)))}`;
}

export function keyDetails(k: KeyInfo): string {
  const rows: [string, string][] = [
    ['id', String(k.id)],
    ['name', k.name ?? '-'],
    ['account', String(k.accountId)],
    ['prefix', k.prefix ?? '-'],
    ['status', k.status],
    ['scopes', k.scopes === null ? '(all)' : k.scopes.join(', ') || '(none)'],
    ['parent', k.parentId === null ? '-' : String(k.parentId)],
    ['budget', hasWindows(k) ? budgetCell(k) : `${dollars(k.budgetCents)}${k.budgetPeriod ? ` per ${k.budgetPeriod}` : ''}`],
    ['spent', dollars(k.spentCents)],
    ['held', dollars(k.heldCents)],
    ['remaining', dollars(k.remainingCents)],
    ...(hasWindows(k) ? k.budgets.map((w): [string, string] => [`${w.period} window`, windowLine(w)]) : []),
    ['alerts', alertsText(k.alerts)],
    ['overage', positive(k.overageCents) ? `${dollars(k.overageCents)} (recorded, not counted toward the budget)` : dollars(0)],
    ['next reset', when(k.budgetResetAt)],
    ['expires', when(k.expiresAt)],
    ['revoked', when(k.revokedAt)],
    ['created', when(k.createdAt)],
    ['last used', when(k.lastUsedAt)],
    ['delegated by', k.delegatedBy ?? '-'],
    ['metadata', k.metadata ? JSON.stringify(k.metadata) : '-'],
    ['rate limit', rateLimitText(k.rateLimit)],
    ['concurrency', k.concurrency === null ? '-' : `${k.concurrency} in flight`],
  ];
  const t = new Table({ style: { head: [], border: [] }, chars: { mid: '', 'left-mid': '', 'mid-mid': '', 'right-mid': '' } });
  t.push(...rows.map(([name, value]) => ({ [name]: printable(value) })));
  return t.toString();
}

/**
 * The event log, one line per event: id (for --before), time, kind, the key (or the
 * account, for a ceiling), who made it, and what changed as `field: before → after`.
 */
export function eventLines(events: KeyEvent[]): string {
  if (events.length === 0) return 'No events.';
  const rows = events.map((e) => [
    String(e.id),
    when(e.at),
    e.kind,
    e.keyId === null ? `account ${shownValue(e.accountId)}` : `key ${e.keyId}`,
    `by ${e.actor === 'key' ? `key ${e.actorKeyId ?? '?'}` : e.actor}`,
    changeList(e.changes),
  ]);
  const widths = (rows[0] as string[]).slice(0, -1).map((_, i) => Math.max(...rows.map((r) => (r[i] as string).length)));
  return rows.map((r) => r.map((cell, i) => (i < widths.length ? cell.padEnd(widths[i] as number) : cell)).join('  ').trimEnd()).join('\n');
}

/** `name: "a" → "b", budgetCents: 500 → 250`; a field with only an after value (a new key): `name: "a"`. */
function changeList(changes: KeyEvent['changes']): string {
  return Object.entries(changes)
    // A field name that is not a plain word (SQL can write any) is quoted, so it cannot pose as more changes.
    .map(([field, c]) => `${/^[A-Za-z_]\w*$/.test(field) ? field : shownValue(field)}: ${'before' in c ? `${shownValue(c.before)} → ` : ''}${'after' in c ? shownValue(c.after) : '(none)'}`)
    .join(', ');
}

/**
 * A value as one unambiguous line: a string quoted, its quotes and backslashes escaped
 * (a name cannot pose as another field) and its unprintable characters too.
 */
function shownValue(value: unknown): string {
  if (typeof value === 'string') return `"${printable(value.replace(/[\\"]/g, '\\$&'))}"`;
  if (Array.isArray(value)) return `[${value.map(shownValue).join(', ')}]`;
  if (value === null || value === undefined) return 'null';
  if (typeof value === 'object') return printable(JSON.stringify(value));
  return printable(String(value));
}

export function accountDetails(a: AccountBudget): string {
  // One row per window (the ceiling's first); holds count against every window alike.
  const windows = a.budgets.length > 0 ? a.budgets : [{ period: a.budgetPeriod ?? 'lifetime', cents: a.budgetCents, spentCents: a.spentCents, remainingCents: a.remainingCents, resetAt: a.budgetResetAt }];
  return `${table(
    ['account', 'ceiling', 'period', 'spent', 'held', 'remaining', 'next reset'],
    windows.map((w) => [a.accountId, dollars(w.cents), w.period, dollars(w.spentCents), dollars(a.heldCents), dollars(w.remainingCents), when(w.resetAt)]),
  )}\nAlerts: ${alertsText(a.alerts)}`;
}

// ---- Budget windows and alert percents (issue 17) ----

/** Whether a key has windows its package columns (budget, period) cannot show: more than one, or a week. */
function hasWindows(k: KeyInfo): boolean {
  return k.budgets.length > 1 || (k.budgets.length === 1 && k.budgetCents === null);
}

/** The budget column of `keys list`: the one budget, or every window's cap. */
function budgetCell(k: KeyInfo): string {
  if (!hasWindows(k)) return dollars(k.budgetCents);
  return k.budgets.map((w) => `${dollars(w.cents)}/${w.period}`).join(', ');
}

/** One window as a line: `$10.00 cap, $9.00 spent, $1.00 left, resets 2026-12-02 00:00:00Z`. */
export function windowLine(w: BudgetWindow): string {
  return `${dollars(w.cents)} cap, ${dollars(w.spentCents)} spent, ${dollars(w.remainingCents)} left, ${w.resetAt === null ? 'never resets' : `resets ${when(w.resetAt)}`}`;
}

/** Windows of several owners as a table: owner, window, cap, spent, left, resets. */
export function windowsTable(rows: (readonly [string, BudgetWindow])[]): string {
  return table(
    ['of', 'window', 'cap', 'spent', 'left', 'resets'],
    rows.map(([owner, w]) => [owner, w.period, dollars(w.cents), dollars(w.spentCents), dollars(w.remainingCents), w.resetAt === null ? 'never' : when(w.resetAt)]),
  );
}

/** Alert percents as said to an operator: its own, none, or the table's. */
export function alertsText(alerts: number[] | null): string {
  if (alerts === null) return "the table's (agentkey alerts show)";
  if (alerts.length === 0) return 'none';
  return alerts.map((p) => `${p}%`).join(', ');
}

/** The usage table, its total, and a small chart of spend per bucket (empty buckets as zero). */
export function usageReport(report: UsageReport, bucket: 'hour' | 'day', since: Date, until: Date): string {
  if (report.count === 0) return `No spend between ${when(since.toISOString())} and ${when(until.toISOString())}.`;
  const lines = [
    table(
      [bucket === 'hour' ? 'hour (UTC)' : 'day (UTC)', 'spend', 'calls'],
      report.buckets.map((b) => [bucket === 'day' ? b.start.slice(0, 10) : when(b.start).slice(0, 16), dollars(b.costCents), b.count]),
    ),
    `Total: ${dollars(report.totalCents)} over ${report.count} call${report.count === 1 ? '' : 's'}.` +
      (positive(report.overageCents) ? ` Overage (real cost no budget could take, not counted): ${dollars(report.overageCents)}.` : ''),
  ];
  const series = filled(report, bucket, since, until);
  if (series.length >= 2) {
    lines.push('', `Spend per ${bucket}, in dollars (${series.length} ${bucket}s to ${when(until.toISOString())}):`);
    lines.push(asciichart.plot(series.map((c) => c / 100), { height: 8, format: (x: number) => `$${x.toFixed(2)}`.padStart(10) }));
  }
  return lines.join('\n');
}

const MAX_POINTS = 90;

function filled(report: UsageReport, bucket: 'hour' | 'day', since: Date, until: Date): number[] {
  const step = bucket === 'hour' ? 3_600_000 : 86_400_000;
  const first = Math.floor(since.getTime() / step) * step;
  const byStart = new Map(report.buckets.map((b) => [Date.parse(b.start), Number(b.costCents)]));
  const points: number[] = [];
  for (let t = first; t < until.getTime(); t += step) points.push(byStart.get(t) ?? 0);
  return points.slice(-MAX_POINTS);
}

/** A rate limit as one phrase: '60 requests per 1m', or '-'. */
export function rateLimitText(limit: { requests: number; per: string } | null | undefined): string {
  return limit ? `${limit.requests} requests per ${limit.per}` : '-';
}

// ---- Spend by LLM model and the ledger's rows (issue 18) ----

/** A count of tokens as read: 1,234,567. */
const count = (n: number) => n.toLocaleString('en-US');

/** `usage --by-model`: one row per model (dearest first), the tokens of each kind, and the total. */
export function modelsReport(report: UsageReport, since: Date, until: Date): string {
  const span = `between ${when(since.toISOString())} and ${when(until.toISOString())}`;
  const models = report.models ?? [];
  const calls = (n: number) => `${n} call${n === 1 ? '' : 's'}`;
  const total = `Total: ${dollars(report.totalCents)} over ${calls(report.count)}`;
  if (models.length === 0) {
    return report.count === 0 ? `No spend ${span}.` : `No LLM calls charged by model ${span}. ${total}, charged in cents.`;
  }
  const byModel = models.reduce((n, m) => n + m.count, 0);
  return [
    table(
      ['model', 'provider', 'spend', 'calls', 'input tokens', 'cached input', 'cache writes', 'output tokens', 'reasoning', 'overage'],
      models.map((m) => [
        m.model,
        m.provider ?? '-',
        dollars(m.costCents),
        m.count,
        count(m.inputTokens),
        count(m.cachedInputTokens),
        count(m.cacheWriteTokens),
        count(m.outputTokens),
        count(m.reasoningTokens),
        positive(m.overageCents) ? dollars(m.overageCents) : '-',
      ]),
    ),
    `${total} ${span}; ${calls(byModel)} by model, ${calls(report.count - byModel)} charged in cents.` +
      (positive(report.overageCents) ? ` Overage (real cost no budget could take, not counted): ${dollars(report.overageCents)}.` : ''),
  ].join('\n');
}

/** An LLM call's token counts in one cell: `1,200 in (200 cached) / 300 out (100 reasoning)`. */
function tokensCell(u: NonNullable<LedgerEntry['usage']>): string {
  const parts = (list: [number, string][]) => list.filter(([n]) => n > 0).map(([n, what]) => `${count(n)} ${what}`).join(', ');
  const input = parts([[u.cachedInputTokens, 'cached'], [u.cacheWriteTokens, 'cache write']]);
  const reasoning = parts([[u.reasoningTokens, 'reasoning']]);
  return `${count(u.inputTokens)} in${input ? ` (${input})` : ''} / ${count(u.outputTokens)} out${reasoning ? ` (${reasoning})` : ''}`;
}

/** `agentkey ledger`: its rows, newest first; an LLM call's with its model and tokens. */
export function ledgerTable(entries: LedgerEntry[]): string {
  return table(
    ['id', 'when (UTC)', 'key', 'account', 'kind', 'amount', 'model', 'tokens', 'reservation'],
    entries.map((e) => [
      e.id,
      when(e.createdAt),
      e.keyId,
      e.accountId,
      e.kind,
      dollars(e.amountCents),
      e.model ?? '-',
      e.usage ? tokensCell(e.usage) : '-',
      e.reservationId ?? '-',
    ]),
  );
}
