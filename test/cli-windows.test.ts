import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentKey } from '../src/index.js';
import { type Storage, openStorage } from '../src/server/storage.js';
import { type CliResult, type CliStore, badArgumentTests, forEachCliStore, expectFailure, expectJson, expectOneLine, expectSuccess, linesOf, stopCliProcesses, useCliRunner } from './helpers/cli.js';

/**
 * Budget windows and alert percents through `agentkey` as a real process, on a temp PGlite
 * data directory and on PostgreSQL: `keys create|update --budgets day:1000,month:10000
 * --alerts 80` (cents, as --budget-cents), `accounts budget --budgets/--alerts`, `alerts
 * show|set|clear`; every window shown (period, cap, spent, left, resets), escaped; bad input
 * is one line, exit 1, and changes nothing.
 */

const { cwd, run } = useCliRunner('cli-windows');

/** No control character but the line breaks, no bidi mark, override or isolate. */
const RAW = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/;
const DAY_RESET = () => `${new Date(Date.UTC(new Date().getUTCFullYear(), new Date().getUTCMonth(), new Date().getUTCDate() + 1)).toISOString().slice(0, 10)} 00:00:00Z`;

// Mistakes refused before any database is opened.
const BAD: [string, string[], RegExp][] = [
  ['--budgets with an unknown period', ['keys', 'create', '--account', 'a', '--budgets', 'hour:100'], /--budgets <windows>.*'hour:100' is invalid.*period:cents, such as 'day:1000,month:10000'/],
  ['--budgets without cents', ['keys', 'create', '--account', 'a', '--budgets', 'day:'], /'day:' is invalid.*day window's cap must be a number of cents/],
  ['--budgets with negative cents', ['keys', 'update', '1', '--budgets', 'day:100,month:-1'], /'day:100,month:-1' is invalid.*month window's cap must be a number of cents of at least 0/],
  ['--budgets in dollars', ['keys', 'create', '--account', 'a', '--budgets', 'day:$10'], /'day:\$10' is invalid.*cents/],
  ['--budgets empty', ['keys', 'create', '--account', 'a', '--budgets', ''], /--budgets <windows>.*is invalid/],
  ['--budgets with --budget-cents', ['keys', 'create', '--account', 'a', '--budgets', 'day:100', '--budget-cents', '5'], /^agentkey: Use --budgets or --budget-cents, not both: --budgets lists every window, the first included\.$/],
  ['--budgets with --period', ['keys', 'update', '1', '--budgets', 'day:100', '--period', 'month'], /^agentkey: Use --budgets or --period, not both/],
  ['--budgets with --no-budget-cap', ['keys', 'update', '1', '--budgets', 'day:100', '--no-budget-cap'], /^agentkey: Use --budgets or --no-budget-cap, not both/],
  ['--alerts 0', ['keys', 'update', '1', '--alerts', '0'], /--alerts <percents>.*'0' is invalid.*whole percents from 1 to 100/],
  ['--alerts 101', ['keys', 'create', '--account', 'a', '--alerts', '50,101'], /'50,101' is invalid.*from 1 to 100/],
  ['--alerts not numbers', ['keys', 'update', '1', '--alerts', '50%'], /'50%' is invalid.*'none' \(no alerts\) or 'default'/],
  ['--alerts eleven', ['keys', 'update', '1', '--alerts', '1,2,3,4,5,6,7,8,9,10,11'], /is invalid.*at most 10/],
  ['--alerts with --no-alerts', ['keys', 'update', '1', '--alerts', '50', '--no-alerts'], /^agentkey: Use --alerts or --no-alerts, not both\.$/],
  ['accounts budget --alerts alone', ['accounts', 'budget', 'a', '--alerts', '50'], /^agentkey: --alerts and --no-alerts go with --set-cents or --budgets\.$/],
  ['accounts budget --budgets with --clear', ['accounts', 'budget', 'a', '--budgets', 'day:5', '--clear'], /^agentkey: Use --budgets or --clear, not both/],
  ['accounts budget --budgets with --set-cents', ['accounts', 'budget', 'a', '--budgets', 'day:5', '--set-cents', '5'], /^agentkey: Use --budgets or --set-cents, not both/],
  ['alerts set without percents', ['alerts', 'set'], /missing required argument 'percents'/],
  ['alerts set 0', ['alerts', 'set', '0'], /'0' is invalid.*whole percents from 1 to 100/],
  ['alerts set none', ['alerts', 'set', 'none'], /'none' is invalid.*such as '50,80,100'/],
  ['alerts with an unknown command', ['alerts', 'remove'], /unknown command 'remove'/],
];

describe('no database needed', () => {
  badArgumentTests(BAD, run, cwd);

  it('--help says the unit (cents), the form, and how to go back to the table\'s alerts', async () => {
    const [create, account, alerts] = await Promise.all([run(['keys', 'create', '--help']), run(['accounts', 'budget', '--help']), run(['alerts', '--help'])]);
    const flat = (r: CliResult) => expectSuccess(r).replace(/\s+/g, ' ');
    expect(flat(create)).toContain("--budgets <windows> budget windows in cents, as period:cents joined by commas, e.g. 'day:1000,month:10000' ($10 a day and $100 a month)");
    expect(flat(create)).toContain("'none' for no alerts, 'default' for the table's");
    expect(flat(create)).toContain('--no-alerts');
    expect(flat(account)).toContain('the first is the ceiling');
    expect(flat(alerts)).toMatch(/show .*set .*<percents>.*clear/);
  }, 60_000);
});

function suite(name: string, setup: CliStore) {
  describe(name, () => {
    beforeAll(setup.before, 60_000);
    afterAll(async () => {
      await stopCliProcesses();
      await setup.after();
    });
    const cmd = (args: string[]) => run(args, setup.env());

    async function library<T>(fn: (ak: AgentKey, storage: Storage) => Promise<T>): Promise<T> {
      const storage = await openStorage({ ...setup.options(), create: false });
      const ak = new AgentKey({ pool: storage.pool });
      try {
        return await fn(ak, storage);
      } finally {
        await ak.close();
        await storage.close();
      }
    }

    let id: number;
    it('keys create --budgets --alerts: "$10 a day, $100 a month, warn at 80%" in one command; show and list show every window', async () => {
      const made = expectJson(await cmd(['keys', 'create', '--account', 'acct_w', '--name', 'w', '--budgets', 'day:1000,month:10000', '--alerts', '80', '--json']));
      id = made.id;
      expect(made).toMatchObject({ key: expect.stringMatching(/^ak_/), budgetCents: 1000, budgetPeriod: 'day', alerts: [80] });
      expect(made.budgets.map((w: { period: string; cents: number }) => [w.period, w.cents])).toEqual([['day', 1000], ['month', 10000]]);
      await library(async (ak) => {
        expect(await ak.trackUsage(made.key, { costCents: 900 })).toMatchObject({ success: true });
        expect(await ak.trackUsage(made.key, { costCents: 200 })).toMatchObject({ success: false, limitedBy: { kind: 'key', keyId: id, window: 'day' } });
      });

      // One at a time: the embedded database takes one process.
      const shown = expectSuccess(await cmd(['keys', 'show', String(id)]));
      expect(shown).toMatch(/│ budget\s+│ \$10\.00\/day, \$100\.00\/month\s+│/);
      expect(shown).toMatch(new RegExp(`│ day window\\s+│ \\$10\\.00 cap, \\$9\\.00 spent, \\$1\\.00 left, resets ${DAY_RESET()}\\s+│`));
      expect(shown).toMatch(/│ month window\s+│ \$100\.00 cap, \$9\.00 spent, \$91\.00 left, resets \d{4}-\d\d-01 00:00:00Z\s+│/);
      expect(shown).toMatch(/│ alerts\s+│ 80%\s+│/);
      const listed = expectSuccess(await cmd(['keys', 'list', '--account', 'acct_w']));
      expect(listed).toMatch(/│ \$10\.00\/day, \$100\.00\/month\s+│ \$9\.00\s+│ \$0\.00\s+│ \$1\.00\s+│ day\s+│/);
      expect(listed).toContain('Budget windows (a charge must fit every one):');
      expect(listed).toMatch(/│ of\s+│ window\s+│ cap\s+│ spent\s+│ left\s+│ resets\s+│/);
      expect(listed).toMatch(new RegExp(`│ key ${id}\\s+│ day\\s+│ \\$10\\.00\\s+│ \\$9\\.00\\s+│ \\$1\\.00\\s+│ ${DAY_RESET()}\\s+│`));
      expect(listed).toMatch(new RegExp(`│ key ${id}\\s+│ month\\s+│ \\$100\\.00\\s+│ \\$9\\.00\\s+│ \\$91\\.00\\s+│`));
    }, 120_000);

    it('keys update --budgets replaces every window; --no-alerts turns alerts off, --alerts default goes back to the table\'s', async () => {
      const changed = expectJson(await cmd(['keys', 'update', String(id), '--budgets', 'week:500,lifetime:2000', '--no-alerts', '--json']));
      // A key's first window is the first day, month or lifetime one: here lifetime; the week is a window beside it.
      expect(changed).toMatchObject({ budgetCents: 2000, budgetPeriod: null, alerts: [], remainingCents: 0 });
      expect(changed.budgets.map((w: { period: string; cents: number }) => [w.period, w.cents])).toEqual([['lifetime', 2000], ['week', 500]]);
      // The new week window starts at this week's spend in the ledger: full.
      expect(changed.budgets[1]).toMatchObject({ spentCents: 900, remainingCents: 0, resetAt: expect.stringMatching(/T00:00:00\.000Z$/) });
      const back = expectSuccess(await cmd(['keys', 'update', String(id), '--alerts', 'default']));
      expect(back).toMatch(/│ alerts\s+│ the table's \(agentkey alerts show\)\s+│/);
      expect(back).toMatch(/│ lifetime window\s+│ \$20\.00 cap, \$[\d.]+ spent, \$[\d.]+ left, never resets\s+│/);
      expect(back).toMatch(/│ week window\s+│ \$5\.00 cap, \$9\.00 spent, \$0\.00 left, resets \d{4}-\d\d-\d\d 00:00:00Z\s+│/);
      await library(async (ak) => expect(await ak.getKey(id)).toMatchObject({ alerts: null, budgetCents: 2000 }));
    }, 120_000);

    it('accounts budget --budgets --alerts: one row per window and its alerts; --set-cents --period week --no-alerts', async () => {
      const set = expectJson(await cmd(['accounts', 'budget', 'acct_w', '--budgets', 'week:2000,lifetime:50000', '--alerts', '50,100', '--json']));
      expect(set).toMatchObject({ accountId: 'acct_w', budgetCents: 2000, budgetPeriod: 'week', spentCents: 900, alerts: [50, 100] });
      const human = expectSuccess(await cmd(['accounts', 'budget', 'acct_w']));
      expect(human).toMatch(/│ acct_w\s+│ \$20\.00\s+│ week\s+│ \$9\.00\s+│ \$0\.00\s+│ \$11\.00\s+│ \d{4}-\d\d-\d\d 00:00:00Z\s+│/);
      expect(human).toMatch(/│ acct_w\s+│ \$500\.00\s+│ lifetime\s+│ \$9\.00\s+│ \$0\.00\s+│ \$491\.00\s+│ -\s+│/);
      expect(linesOf(human).at(-1)).toBe('Alerts: 50%, 100%');
      await library(async (ak) => expect(await ak.getAccountBudget('acct_w')).toEqual(set));

      const single = expectSuccess(await cmd(['accounts', 'budget', 'acct_single', '--set-cents', '300', '--period', 'week', '--no-alerts']));
      expect(single).not.toMatch(RAW);
      expect(single).toMatch(/│ acct_single\s+│ \$3\.00\s+│ week\s+│ \$0\.00\s+│/);
      expect(linesOf(single).at(-1)).toBe('Alerts: none');
    }, 120_000);

    it("alerts show|set|clear: the table's percents, sorted, as the library reads them", async () => {
      expect(expectSuccess(await cmd(['alerts', 'show']))).toMatch(/^No alert percents for the table: windows with none of their own write no alert events/);
      expect(expectSuccess(await cmd(['alerts', 'set', '100,50,80']))).toBe('Alert percents for every window with none of its own: 50%, 80%, 100%.\n');
      expect(expectJson(await cmd(['alerts', 'show', '--json']))).toEqual({ percents: [50, 80, 100] });
      expect(await library((ak) => ak.getAlerts())).toEqual([50, 80, 100]);
      expect(expectJson(await cmd(['alerts', 'clear', '--json']))).toEqual({ percents: null });
      expect(await library((ak) => ak.getAlerts())).toBeNull();
      expectSuccess(await cmd(['alerts', 'set', '90']));
    }, 120_000);

    it('bad input on a real database: the library refuses (two day windows, five windows), one line each, and nothing changes', async () => {
      const before = await library(async (ak) => ({
        keys: await ak.listKeys({ includeRevoked: true, limit: 1000 }),
        events: await ak.keyEvents({ limit: 1000 }),
        ceiling: await ak.getAccountBudget('acct_w'),
        alerts: await ak.getAlerts(),
      }));
      const cases: [string[], RegExp][] = [
        [['keys', 'update', String(id), '--budgets', 'day:1,day:2'], /^agentkey: budgets has two day windows; give each period at most once\.$/],
        [['keys', 'create', '--account', 'acct_w', '--budgets', 'day:1,week:2,month:3,lifetime:4,day:5'], /^agentkey: budgets must be a list of at most 4 windows/],
        [['accounts', 'budget', 'acct_w', '--budgets', 'month:1,month:2', '--alerts', '10'], /^agentkey: budgets has two month windows/],
        [['keys', 'update', '999999', '--budgets', 'day:1'], /^agentkey: No key has id 999999/],
      ];
      for (const [args, message] of cases) {
        const r = await cmd(args);
        expectFailure(r, message);
        expectOneLine(r);
      }
      const after = await library(async (ak) => ({
        keys: await ak.listKeys({ includeRevoked: true, limit: 1000 }),
        events: await ak.keyEvents({ limit: 1000 }),
        ceiling: await ak.getAccountBudget('acct_w'),
        alerts: await ak.getAlerts(),
      }));
      expect(after).toEqual(before);
      expect(after.alerts).toEqual([90]);
    }, 180_000);
  });
}

forEachCliStore('cli-windows', run, suite);
