// Budget windows and alert percents on the command line: the parsers of --budgets and
// --alerts (shared by `keys create|update` and `accounts budget`), and `agentkey alerts`.
import { type Command, InvalidArgumentError } from 'commander';
import type { BudgetWindowInput, WindowPeriod } from '../types.js';
import { type Common, UserError, json, out, withAgentKey, withCommon } from './common.js';
import { alertsText } from './format.js';

const PERIODS: readonly WindowPeriod[] = ['day', 'week', 'month', 'lifetime'];

export const BUDGETS_HELP =
  "budget windows in cents, as period:cents joined by commas, e.g. 'day:1000,month:10000' ($10 a day and $100 a month); " +
  'periods: day, week (from Monday), month, lifetime (UTC); a charge must fit every one; instead of --budget-cents/--period';

export const ALERTS_HELP =
  "percents of each window at which a budget.threshold event is written once per period, e.g. '50,80,100'; " +
  "'none' for no alerts, 'default' for the table's (agentkey alerts)";

const BUDGETS_EXAMPLE = "expected windows in cents as period:cents, such as 'day:1000,month:10000' or 'week:500,lifetime:50000' (periods: day, week, month, lifetime).";

/**
 * --budgets: `day:1000,month:10000,lifetime:50000` in cents, as --budget-cents counts. The
 * library checks the rest (at most four, each period once) and says what is wrong.
 */
export function budgetWindows(value: string): BudgetWindowInput[] {
  const parts = value.split(',').map((s) => s.trim());
  return parts.map((part) => {
    const m = /^([a-z]+):(.*)$/.exec(part);
    if (!m || !(PERIODS as readonly string[]).includes(m[1] as string)) throw new InvalidArgumentError(BUDGETS_EXAMPLE);
    const cents = m[2] as string;
    const n = Number(cents);
    if (cents.trim() === '' || !Number.isFinite(n) || n < 0) {
      throw new InvalidArgumentError(`the ${m[1]} window's cap must be a number of cents of at least 0 (1000 is $10); ${BUDGETS_EXAMPLE}`);
    }
    return { cents: n, period: m[1] as WindowPeriod };
  });
}

/**
 * Whole percents joined by commas: `50,80,100`, each from 1 to 100, at most 10 (the library's
 * rule, checked here too so that the mistake is named before any database opens).
 */
function percents(value: string, more: string): number[] {
  const parts = value.split(',').map((s) => s.trim());
  const valid = parts.length <= 10 && parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) >= 1 && Number(p) <= 100);
  if (!valid) throw new InvalidArgumentError(`expected at most 10 whole percents from 1 to 100 joined by commas, such as '50,80,100'${more}.`);
  return parts.map(Number);
}

/** What --alerts gives: percents, [] ('none'), or 'default' (the table's; commander would read a null as no value). */
export type AlertsFlag = number[] | 'default';

/** --alerts: percents, 'none' ([]: no alerts) or 'default' (the table's). */
export function alertPercents(value: string): AlertsFlag {
  const v = value.trim().toLowerCase();
  if (v === 'none') return [];
  if (v === 'default') return 'default';
  return percents(value, ", 'none' (no alerts) or 'default' (the table's)");
}

/** The flags --alerts / --no-alerts give (commander names --no-alerts alerts: false), as the library's alerts. */
export function alertsOption(given: AlertsFlag | false | undefined): { alerts?: number[] | null } {
  if (given === undefined) return {};
  return { alerts: given === false ? [] : given === 'default' ? null : given };
}

/** `agentkey alerts show|set|clear`: the table's percents, for every window with none of its own. */
export function addAlertsCommands(program: Command): void {
  const alerts = program
    .command('alerts')
    .description("the table's alert percents: every budget window whose key or account sets none writes a budget.threshold event at each");
  const shown = (p: number[] | null) =>
    p === null
      ? "No alert percents for the table: windows with none of their own write no alert events (set some with 'agentkey alerts set 80,100')."
      : `Alert percents for every window with none of its own: ${alertsText(p)}.`;

  withCommon(alerts.command('show'))
    .description("show the table's alert percents")
    .action(async (o: Common) => {
      await withAgentKey(o, 'read', async (ak) => {
        const p = await ak.getAlerts();
        if (o.json) return json({ percents: p });
        out(shown(p));
      });
    });

  withCommon(alerts.command('set'))
    .description("set the table's alert percents, e.g. 'agentkey alerts set 50,80,100' (whole percents from 1 to 100, at most 10)")
    .argument('<percents>', "whole percents joined by commas, e.g. '50,80,100'", (v: string) => percents(v, ''))
    .action(async (p: number[], o: Common) => {
      await withAgentKey(o, 'create', async (ak) => {
        const kept = await ak.setAlerts(p);
        if (o.json) return json({ percents: kept });
        out(shown(kept));
      });
    });

  withCommon(alerts.command('clear'))
    .description("remove the table's alert percents (keys and accounts with their own keep them)")
    .action(async (o: Common) => {
      await withAgentKey(o, 'change', async (ak) => {
        const kept = await ak.setAlerts(null);
        if (o.json) return json({ percents: kept });
        out(shown(kept));
      });
    });
}

/** Refuses --budgets beside the single-budget flags it replaces, before any database opens. */
export function budgetsAlone(o: { budgets?: unknown }, others: [string, boolean][]): void {
  if (o.budgets === undefined) return;
  const clash = others.find(([, given]) => given);
  if (clash) throw new UserError(`Use --budgets or ${clash[0]}, not both: --budgets lists every window, the first included.`);
}
