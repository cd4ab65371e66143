import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentKey } from '../src/index.js';
import { openStorage } from '../src/server/storage.js';
import { type CliStore, badArgumentTests, forEachCliStore, expectJson, expectSuccess, stopCliProcesses, useCliRunner } from './helpers/cli.js';

/**
 * Rate limits through the CLI as a real process, on PGlite (a temp data directory) and on
 * PostgreSQL: `keys create/update --rate-limit 60/1m --concurrency 5` ('none' removes one on
 * update), `accounts rate-limit <id> --set/--concurrency/--clear`; the limits hold through
 * the library; bad input is one line, exit 1, before any database is opened.
 */

const { cwd, run } = useCliRunner('cli-rate-limits');

const BAD: [string, string[], RegExp][] = [
  ['--rate-limit without a window', ['keys', 'create', '--account', 'a', '--rate-limit', '60'], /--rate-limit.*'60' is invalid.*such as '60\/1m'/],
  ['--rate-limit over a day', ['keys', 'create', '--account', 'a', '--rate-limit', '60/2d'], /'60\/2d' is invalid/],
  ['--rate-limit of 0', ['keys', 'create', '--account', 'a', '--rate-limit', '0/1m'], /'0\/1m' is invalid/],
  ['--rate-limit none on create', ['keys', 'create', '--account', 'a', '--rate-limit', 'none'], /'none' is invalid/],
  ['--concurrency 0', ['keys', 'create', '--account', 'a', '--concurrency', '0'], /--concurrency.*'0' is invalid.*from 1 to 1000000/],
  ['--concurrency abc on update', ['keys', 'update', '1', '--concurrency', 'abc'], /'abc' is invalid/],
  ['--rate-limit soon on update', ['keys', 'update', '1', '--rate-limit', '5/soon'], /'5\/soon' is invalid/],
  ['accounts rate-limit --set junk', ['accounts', 'rate-limit', 'a', '--set', 'junk'], /'junk' is invalid/],
  ['accounts rate-limit --set and --clear', ['accounts', 'rate-limit', 'a', '--set', '5/1m', '--clear'], /not both/],
];

describe('no database needed', () => {
  badArgumentTests(BAD, run, cwd);
});

function suite(name: string, setup: CliStore) {
  describe(name, () => {
    beforeAll(setup.before, 60_000);
    afterAll(async () => {
      await stopCliProcesses();
      await setup.after();
    });
    const cmd = (args: string[]) => run(args, setup.env());
    async function library<T>(fn: (ak: AgentKey) => Promise<T>): Promise<T> {
      const storage = await openStorage({ ...setup.options(), create: false });
      const ak = new AgentKey({ pool: storage.pool });
      try {
        return await fn(ak);
      } finally {
        await ak.close();
        await storage.close();
      }
    }

    it('keys create/update --rate-limit and --concurrency: shown, held by the library, removed with none', async () => {
      const created = expectJson(await cmd(['keys', 'create', '--account', 'acct_cli_rl', '--rate-limit', '2/1d', '--concurrency', '5', '--json']));
      expect(created).toMatchObject({ rateLimit: { requests: 2, per: '1d' }, concurrency: 5 });
      await library(async (ak) => {
        expect((await ak.validate(created.key)).valid).toBe(true);
        expect((await ak.validate(created.key)).valid).toBe(true);
        expect(await ak.validate(created.key)).toMatchObject({ valid: false, reason: 'rate_limited', limitedBy: { kind: 'key', keyId: created.id } });
      });
      const shown = expectSuccess(await cmd(['keys', 'show', String(created.id)]));
      expect(shown).toMatch(/rate limit\s+│ 2 requests per 1d/);
      expect(shown).toMatch(/concurrency\s+│ 5 in flight/);
      const updated = expectJson(await cmd(['keys', 'update', String(created.id), '--rate-limit', 'none', '--concurrency', 'none', '--json']));
      expect(updated).toMatchObject({ rateLimit: null, concurrency: null });
      await library(async (ak) => expect((await ak.validate(created.key)).valid).toBe(true));
    }, 90_000);

    it('accounts rate-limit: shows, sets field by field, clears', async () => {
      expect(expectSuccess(await cmd(['accounts', 'rate-limit', 'acct_cli_rl']))).toMatch(/has no rate limits/);
      const set = expectJson(await cmd(['accounts', 'rate-limit', 'acct_cli_rl', '--set', '600/1m', '--concurrency', '20', '--json']));
      expect(set).toMatchObject({ accountId: 'acct_cli_rl', rateLimit: { requests: 600, per: '1m' }, concurrency: 20 });
      const human = expectSuccess(await cmd(['accounts', 'rate-limit', 'acct_cli_rl', '--concurrency', 'none']));
      expect(human).toMatch(/rate limit\s+600 requests per 1m\nconcurrency\s+-/);
      await library(async (ak) => expect(await ak.getAccountRateLimit('acct_cli_rl')).toMatchObject({ concurrency: null }));
      expect(expectSuccess(await cmd(['accounts', 'rate-limit', 'acct_cli_rl', '--clear']))).toMatch(/Removed the rate limits of acct_cli_rl/);
      await library(async (ak) => expect(await ak.getAccountRateLimit('acct_cli_rl')).toBeNull());
    }, 90_000);
  });
}

forEachCliStore('cli-rl', run, suite);
