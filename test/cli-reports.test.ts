import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentKey } from '../src/index.js';
import { openStorage } from '../src/server/storage.js';
import { type CliResult, type CliStore, badArgumentTests, expectJson, expectSuccess, forEachCliStore, linesOf, stopCliProcesses, useCliRunner } from './helpers/cli.js';
import { priced } from './helpers/metered.js';

/**
 * Spend by LLM model and the ledger through `agentkey` as a real process, on a temp PGlite
 * data directory and on PostgreSQL: `usage --by-model` (one row per model, dearest first,
 * with its spend, calls and tokens of each kind), `ledger` (its rows with an LLM call's model
 * and tokens, paged with --before); every model name escaped; bad input is one line, exit 1.
 */

const { cwd, run } = useCliRunner('cli-reports');

/** No control character but the line breaks, no bidi mark, override or isolate. */
const RAW = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/;
/** A model name as an operator's custom price may spell it: an escape sequence and a bidi override. */
const EVIL = 'evil\u001b[31m\u202eledom';

const BAD: [string, string[], RegExp][] = [
  ['usage --by-model with --bucket', ['usage', '--by-model', '--bucket', 'hour'], /^agentkey: Use --by-model or --bucket, not both/],
  ['ledger --limit 0', ['ledger', '--limit', '0'], /--limit <n>.*'0' is invalid.*limit must be a whole number from 1 to 1000/],
  ['ledger --limit past 1000', ['ledger', '--limit', '1001'], /from 1 to 1000/],
  ['ledger --before not an id', ['ledger', '--before', 'abc'], /--before <id>.*'abc' is invalid/],
  ['ledger --key 0', ['ledger', '--key', '0'], /--key <id>.*'0' is invalid/],
  ['ledger with an argument', ['ledger', 'acct_1'], /too many arguments/],
];

describe('no database needed', () => {
  badArgumentTests(BAD, run, cwd);

  it('--help says what --by-model shows and how the ledger pages', async () => {
    const [usage, ledger] = await Promise.all([run(['usage', '--help']), run(['ledger', '--help'])]);
    const flat = (r: CliResult) => expectSuccess(r).replace(/\s+/g, ' ');
    expect(flat(usage)).toContain('--by-model spend, calls and tokens of each LLM model');
    expect(flat(ledger)).toContain("ledger rows, newest first: kind, amount, and an LLM call's model and tokens (page with --before)");
    expect(flat(ledger)).toMatch(/--before <id> only rows older than this row id/);
  });
});

function suite(name: string, setup: CliStore) {
  describe(name, () => {
    beforeAll(setup.before, 60_000);
    afterAll(async () => {
      await stopCliProcesses();
      await setup.after();
    });
    const cmd = (args: string[]) => run(args, setup.env());

    /** The library on the same store, closed before the CLI runs (the embedded database takes one process). */
    async function library<T>(fn: (ak: AgentKey, sql: (text: string, params: unknown[]) => Promise<unknown>) => Promise<T>): Promise<T> {
      const storage = await openStorage({ ...setup.options(), create: false });
      const ak = new AgentKey({ pool: storage.pool });
      const pool = storage.pool as unknown as { query(text: string, params: unknown[]): Promise<unknown> };
      try {
        return await fn(ak, (text, params) => pool.query(text, params));
      } finally {
        await ak.close();
        await storage.close();
      }
    }

    const mini1 = { inputTokens: 1200, outputTokens: 300, cachedInputTokens: 200, reasoningTokens: 100 };
    const mini2 = { inputTokens: 800, outputTokens: 50 };
    const haiku = { inputTokens: 30_000, outputTokens: 7000, cacheWriteTokens: 10_000 };
    let a: { id: number; key: string };
    let c: { id: number; key: string };

    it('usage --by-model: one row per model, dearest first, with its spend, calls and tokens; the total says what was charged in cents', async () => {
      expectSuccess(await cmd(['migrate']));
      await library(async (ak, sql) => {
        a = await ak.create({ accountId: 'acct_r', budgetCents: 10_000 });
        const b = await ak.create({ accountId: 'acct_r' });
        c = await ak.create({ accountId: 'acct_s' });
        await ak.create({ accountId: 'acct_cents' }).then((k) => ak.trackUsage(k.key, { costCents: 4 }));
        for (const [key, spend] of [
          [a.key, { model: 'gpt-4o-mini', usage: mini1 }],
          [b.key, { model: 'gpt-4o-mini', usage: mini2 }],
          [a.key, { provider: 'anthropic', model: 'claude-haiku-4-5', usage: haiku }],
          [a.key, { costCents: 3 }],
        ] as const) {
          expect(await ak.trackUsage(key, spend)).toMatchObject({ success: true });
        }
        // The library refuses such a model name; a row written by SQL (an import, an older tool) may still carry one.
        await sql(
          `INSERT INTO "${ak.tableName}_ledger" (key_id, account_id, kind, amount_micros, model, usage) VALUES ($1, 'acct_s', 'charge', 1002000, $2, $3)`,
          [c.id, EVIL, JSON.stringify({ provider: 'custom', inputTokens: 1_000_000, outputTokens: 1000, cachedInputTokens: 0, cacheWriteTokens: 0, reasoningTokens: 0 })],
        );
        // A hold for a worst case in tokens, committed with the real usage.
        const hold = await ak.reserve(a.key, { model: 'gpt-4o-mini', usage: { inputTokens: 5000, outputTokens: 5000 } });
        if (!hold.success) throw new Error(hold.reason);
        expect(await ak.commit(hold.reservationId, { model: 'gpt-4o-mini', usage: mini2 })).toMatchObject({ success: true });
      });
      const miniCost = priced('gpt-4o-mini', mini1) + 2 * priced('gpt-4o-mini', mini2);
      const haikuCost = priced('claude-haiku-4-5', haiku, 'anthropic');
      expect(haikuCost).toBeGreaterThan(miniCost);

      const shown = expectSuccess(await cmd(['usage', '--by-model', '--account', 'acct_r']));
      expect(shown).not.toMatch(RAW);
      const lines = linesOf(shown);
      expect(lines[1]).toMatch(/│ model\s+│ provider\s+│ spend\s+│ calls\s+│ input tokens\s+│ cached input\s+│ cache writes\s+│ output tokens\s+│ reasoning\s+│ overage\s+│/);
      const rows = lines.filter((l) => /^│ (claude|gpt)/.test(l));
      expect(rows).toHaveLength(2);
      expect(rows[0]).toMatch(new RegExp(`^│ claude-haiku-4-5\\s+│ anthropic\\s+│ ${dollarsRe(haikuCost)}\\s+│ 1\\s+│ 30,000\\s+│ 0\\s+│ 10,000\\s+│ 7,000\\s+│ 0\\s+│ -\\s+│$`));
      expect(rows[1]).toMatch(new RegExp(`^│ gpt-4o-mini\\s+│ openai\\s+│ ${dollarsRe(miniCost)}\\s+│ 3\\s+│ 2,800\\s+│ 200\\s+│ 0\\s+│ 400\\s+│ 100\\s+│ -\\s+│$`));
      expect(lines.at(-1)).toMatch(/^Total: \$[\d.]+ over 5 calls between \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ and \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ; 4 calls by model, 1 call charged in cents\.$/);

      // --json: the library's report, models included.
      const report = expectJson(await cmd(['usage', '--by-model', '--account', 'acct_r', '--json']));
      expect(report).not.toHaveProperty('bucket');
      expect(report).toMatchObject({ count: 5, buckets: [] });
      expect(report.models.map((m: { model: string; count: number; inputTokens: number }) => [m.model, m.count, m.inputTokens])).toEqual([
        ['claude-haiku-4-5', 1, 30_000],
        ['gpt-4o-mini', 3, 2800],
      ]);
      expect(report.models[1].costCents).toBeCloseTo(miniCost, 4);
      // Per key; nothing by model where there is none.
      expect(expectJson(await cmd(['usage', '--by-model', '--key', String(a.id), '--json'])).models.map((m: { count: number }) => m.count)).toEqual([1, 2]);
      expect(expectSuccess(await cmd(['usage', '--by-model', '--account', 'acct_none']))).toMatch(/^No spend between .*Z\.\n$/);
      expect(expectSuccess(await cmd(['usage', '--by-model', '--account', 'acct_cents']))).toMatch(/^No LLM calls charged by model between .*Z\. Total: \$0\.04 over 1 call, charged in cents\.\n$/);
      // Without --by-model: the buckets, as before.
      expect(expectSuccess(await cmd(['usage', '--account', 'acct_r']))).toMatch(/│ day \(UTC\)\s+│ spend\s+│ calls\s+│/);
    }, 180_000);

    it('ledger: rows newest first with the model and the tokens of each LLM call, "-" for rows in cents; --json is the library\'s', async () => {
      const shown = expectSuccess(await cmd(['ledger', '--account', 'acct_r']));
      expect(shown).not.toMatch(RAW);
      expect(linesOf(shown)[1]).toMatch(/│ id\s+│ when \(UTC\)\s+│ key\s+│ account\s+│ kind\s+│ amount\s+│ model\s+│ tokens\s+│ reservation\s+│/);
      const rows = linesOf(shown).filter((l) => /^│ \d+ /.test(l));
      expect(rows.map((r) => r.split('│').map((x) => x.trim())[5])).toEqual(['commit', 'hold', 'charge', 'charge', 'charge', 'charge']);
      expect(rows[0]).toMatch(new RegExp(`│ ${a.id}\\s+│ acct_r\\s+│ commit\\s+│ ${dollarsRe(priced('gpt-4o-mini', mini2))}\\s+│ gpt-4o-mini\\s+│ 800 in / 50 out\\s+│ rsv_\\w+\\s+│$`));
      expect(rows[1]).toMatch(/│ hold\s+│ \$[\d.]+\s+│ gpt-4o-mini\s+│ 5,000 in \/ 5,000 out\s+│ rsv_\w+\s+│$/);
      expect(rows[2]).toMatch(/│ charge\s+│ \$0\.03\s+│ -\s+│ -\s+│ -\s+│$/);
      expect(rows[3]).toMatch(/│ charge\s+│ \$[\d.]+\s+│ claude-haiku-4-5\s+│ 30,000 in \(10,000 cache write\) \/ 7,000 out\s+│ -\s+│$/);
      expect(rows[5]).toMatch(/│ charge\s+│ \$[\d.]+\s+│ gpt-4o-mini\s+│ 1,200 in \(200 cached\) \/ 300 out \(100 reasoning\)\s+│ -\s+│$/);
      expect(rows[0]).toMatch(/^│ \d{1,5}\s+│ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?Z\s+│/);

      const listed = expectJson(await cmd(['ledger', '--account', 'acct_r', '--json']));
      expect(listed).toEqual({ entries: await library((ak) => ak.ledger({ accountId: 'acct_r', limit: 50 })) });
      expect(listed.entries[3]).toMatchObject({ model: 'claude-haiku-4-5', usage: { provider: 'anthropic', inputTokens: 30_000, cacheWriteTokens: 10_000 } });
      expect(listed.entries[2]).not.toHaveProperty('model');
    }, 180_000);

    it('ledger pages with --limit and --before, and filters by --key', async () => {
      const all = expectJson(await cmd(['ledger', '--key', String(a.id), '--json'])).entries as { id: number; keyId: number }[];
      expect(all).toHaveLength(5);
      expect(new Set(all.map((e) => e.keyId))).toEqual(new Set([a.id]));
      const first = expectSuccess(await cmd(['ledger', '--key', String(a.id), '--limit', '2']));
      expect(linesOf(first).filter((l) => /^│ \d+ /.test(l)).map((l) => Number(l.split('│')[1]))).toEqual([all[0]?.id, all[1]?.id]);
      expect(linesOf(first).at(-1)).toBe(`Older rows: run it again with --before ${all[1]?.id}.`);
      const rest = expectSuccess(await cmd(['ledger', '--key', String(a.id), '--before', String(all[1]?.id)]));
      expect(linesOf(rest).filter((l) => /^│ \d+ /.test(l)).map((l) => Number(l.split('│')[1]))).toEqual(all.slice(2).map((e) => e.id));
      expect(rest).not.toContain('Older rows');
      expect(expectSuccess(await cmd(['ledger', '--key', String(a.id), '--before', String(all.at(-1)?.id)]))).toBe(`No ledger rows before ${all.at(-1)?.id}.\n`);
      expect(expectSuccess(await cmd(['ledger', '--account', 'acct_none']))).toBe('No ledger rows.\n');
    }, 180_000);

    it('security: a model name with an escape sequence and a bidi override is shown escaped, in usage --by-model and in the ledger; --json keeps it exact', async () => {
      const usage = expectSuccess(await cmd(['usage', '--by-model', '--key', String(c.id)]));
      const ledger = expectSuccess(await cmd(['ledger', '--key', String(c.id)]));
      for (const text of [usage, ledger]) {
        expect(text).not.toMatch(RAW);
        expect(text).toContain('evil\\x1b[31m\\u202eledom');
      }
      expect(usage).toMatch(/│ evil\\x1b\[31m\\u202eledom\s+│ custom\s+│ \$1\.002\s+│ 1\s+│ 1,000,000\s+│/);
      expect(expectJson(await cmd(['ledger', '--key', String(c.id), '--json'])).entries[0].model).toBe(EVIL);
    }, 120_000);
  });
}

/** A cost in cents as the CLI shows it in dollars, as a regular expression. */
function dollarsRe(cents: number): string {
  const [whole = '0', fraction = ''] = (cents / 100).toFixed(6).replace(/0+$/, '').split('.');
  return `\\$${Number(whole).toLocaleString('en-US')}\\.${fraction.padEnd(2, '0')}`;
}

forEachCliStore('cli-reports', run, suite);
