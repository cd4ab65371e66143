import { createHash } from 'node:crypto';
import fs from 'node:fs';
import { PGlite } from '@electric-sql/pglite';
import path from 'node:path';
import type { Command } from 'commander';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildProgram } from '../src/cli/main.js';
import { AgentKey } from '../src/index.js';
import { type CliResult, cliEnv, expectFailure, expectJson, expectOneLine, expectSuccess, freshDatabase, linesOf, runCli, stopCliProcesses, tempDir, useCliRunner } from './helpers/cli.js';
import { ROOT } from './helpers/processes.js';

/**
 * The `agentkey` operator CLI as a real process (bundled from the current src/): keys,
 * accounts' ceilings, usage, migrate and admin-key rotate on a temp PGlite data directory
 * and on PostgreSQL through DATABASE_URL; --help and --version; and bad input, which must
 * end with exit code 1, one `agentkey: ...` line on stderr and nothing on stdout.
 */

/** Every run happens in an empty directory, so the default ./.agentkey never lands in the repo. */
const { cli, cwd, run } = useCliRunner('cli');

/** Every command of the program (from the same source the binary is built from), with its full name. */
function allCommands(): { name: string[]; cmd: Command }[] {
  const found: { name: string[]; cmd: Command }[] = [];
  const walk = (cmd: Command, name: string[]) => {
    found.push({ name, cmd });
    for (const sub of cmd.commands) walk(sub, [...name, sub.name()]);
  };
  walk(buildProgram(), []);
  return found;
}

describe('no database needed', () => {
  it('--help on every command exits 0 and lists its usage, options and subcommands', async () => {
    const commands = allCommands();
    expect(commands.map((c) => c.name.join(' '))).toEqual(
      expect.arrayContaining(['', 'serve', 'migrate', 'keys', 'keys create', 'keys list', 'keys show', 'keys update', 'keys rotate', 'keys revoke', 'keys events', 'accounts', 'accounts budget', 'usage', 'admin-key', 'admin-key rotate']),
    );
    const results = await Promise.all(commands.map(({ name }) => run([...name, '--help'])));
    commands.forEach(({ name, cmd }, i) => {
      const result = results[i] as CliResult;
      const label = `agentkey ${name.join(' ')} --help`;
      expect({ code: result.code, stderr: result.stderr }, label).toEqual({ code: 0, stderr: '' });
      expect(result.stdout, label).toMatch(new RegExp(`^Usage: agentkey${name.map((n) => ` ${n}`).join('')} `));
      expect(result.stdout.replace(/\s+/g, ' '), label).toContain(cmd.description());
      for (const option of cmd.options) expect(result.stdout, `${label}: option ${option.flags}`).toContain(option.flags);
      expect(result.stdout, label).toContain('--help');
      for (const sub of cmd.commands) expect(result.stdout, `${label}: subcommand ${sub.name()}`).toMatch(new RegExp(`^  ${sub.name()}\\b`, 'm'));
    });
    // The data commands say where the data goes.
    const keysCreate = results[commands.findIndex((c) => c.name.join(' ') === 'keys create')] as CliResult;
    const flat = keysCreate.stdout.replace(/\s+/g, ' ');
    expect(flat).toMatch(/--data-dir <dir> .*\(default: "\.\/\.agentkey", env: AGENTKEY_DATA_DIR\)/);
    expect(flat).toMatch(/--database-url <url> .*\(env: DATABASE_URL\)/);
    expect(fs.readdirSync(cwd())).toEqual([]);
  }, 60_000);

  it('--version and -v print the version of package.json', async () => {
    // version() reads ../package.json next to the built file, as in the published package
    // (dist/cli.js beside package.json): lay the bundle out the same way.
    const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { version: string };
    const dir = path.join(ROOT, 'node_modules/.cache', `agentkey-cli-version-${process.pid}`);
    try {
      fs.mkdirSync(path.join(dir, 'dist'), { recursive: true });
      fs.copyFileSync(path.join(ROOT, 'package.json'), path.join(dir, 'package.json'));
      for (const file of fs.readdirSync(path.dirname(cli()))) fs.copyFileSync(path.join(path.dirname(cli()), file), path.join(dir, 'dist', file === 'index.js' ? 'cli.js' : file));
      const bin = path.join(dir, 'dist', 'cli.js');
      for (const flag of ['--version', '-v']) {
        const result = await runCli(bin, [flag], { cwd: cwd(), env: cliEnv() });
        expect({ code: result.code, stdout: result.stdout, stderr: result.stderr }).toEqual({ code: 0, stdout: `${pkg.version}\n`, stderr: '' });
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  // Mistakes caught before any database is opened.
  const BAD: [string, string[], RegExp][] = [
    ['an unknown command', ['nope'], /unknown command 'nope'/],
    ['an unknown option', ['keys', 'list', '--bogus'], /unknown option '--bogus'/],
    ['keys create without --account', ['keys', 'create'], /required option '--account <id>' not specified/],
    ['--budget-cents abc', ['keys', 'create', '--account', 'a', '--budget-cents', 'abc'], /--budget-cents <cents>.*'abc' is invalid.*cents/],
    ['--period year', ['keys', 'create', '--account', 'a', '--period', 'year'], /'year' is invalid.*day, month/],
    ['keys show abc', ['keys', 'show', 'abc'], /'abc' is invalid.*id must be a whole number/],
    ['keys show without an id', ['keys', 'show'], /missing required argument 'id'/],
    ['keys list --limit 0', ['keys', 'list', '--limit', '0'], /limit must be a whole number from 1 to 10000/],
    ['serve --port 99999', ['serve', '--port', '99999'], /port must be a whole number from 0 to 65535/],
    ['usage --since yesterday', ['usage', '--since', 'yesterday'], /expected a time like '7d'/],
    ['usage --since after --until', ['usage', '--since', '1d', '--until', '2d'], /^agentkey: --since must be before --until\.$/],
    ['accounts budget --set-cents with --clear', ['accounts', 'budget', 'a', '--set-cents', '5', '--clear'], /^agentkey: Use --set-cents or --clear, not both\.$/],
    ['accounts budget --period alone', ['accounts', 'budget', 'a', '--period', 'day'], /^agentkey: --period goes with --set-cents\.$/],
    ['keys update with nothing to change', ['keys', 'update', '1'], /^agentkey: Nothing to change: give at least one of the options \(see --help\)\.$/],
    ['keys update --budget-cents with --no-budget-cap', ['keys', 'update', '1', '--budget-cents', '5', '--no-budget-cap'], /^agentkey: Use --budget-cents or --no-budget-cap, not both\.$/],
    ['keys update --expires-in with --no-expiry', ['keys', 'update', '1', '--expires-in', '1d', '--no-expiry'], /^agentkey: Use --expires-in or --no-expiry, not both\.$/],
    ['keys update --period week', ['keys', 'update', '1', '--period', 'week'], /'week' is invalid.*day, month, none/],
    ['keys update --metadata not JSON', ['keys', 'update', '1', '--metadata', '{team'], /--metadata.*expected a JSON object/],
    ['keys update --metadata an array', ['keys', 'update', '1', '--metadata', '[1,2]'], /--metadata.*expected a JSON object/],
    ['keys update --metadata with --no-metadata', ['keys', 'update', '1', '--metadata', '{}', '--no-metadata'], /^agentkey: Use --metadata or --no-metadata, not both\.$/],
    ['keys create --metadata a string', ['keys', 'create', '--account', 'a', '--metadata', '"x"'], /--metadata.*expected a JSON object/],
    // What the terminal is given back of an argument is escaped, never replayed.
    ['keys show with an escape sequence', ['keys', 'show', '1\u001b[2J\u202e'], /^agentkey: .*'1\\x1b\[2J\\u202e' is invalid/],
  ];
  const results = new Map<string, CliResult>();
  beforeAll(async () => {
    const all = await Promise.all(BAD.map(([, args]) => run(args)));
    BAD.forEach(([label], i) => results.set(label, all[i] as CliResult));
  }, 60_000);

  it.each(BAD)('%s: exit 1, nothing on stdout, agentkey: and the reason on stderr', (label, _args, message) => {
    expectFailure(results.get(label) as CliResult, message);
  });

  it('each of those mistakes is exactly one line on stderr', () => {
    const extra = BAD.filter(([label]) => linesOf((results.get(label) as CliResult).stderr).length !== 1).map(([label]) => label);
    expect(extra, `these printed more than one line, e.g.:\n${(results.get(extra[0] ?? '') as CliResult | undefined)?.stderr}`).toEqual([]);
  });

  it('read-only commands where there is no database (the default ./.agentkey, or --data-dir): one line, exit 1, and no directory is created', async () => {
    const missing = path.join(cwd(), 'no-such-dir');
    const reads = [['keys', 'list'], ['keys', 'show', '1'], ['usage'], ['accounts', 'budget', 'acct_1'], ['keys', 'revoke', '1']];
    const results = await Promise.all([
      ...reads.map((args) => run(args)),
      ...reads.map((args) => run([...args, '--data-dir', missing])),
    ]);
    results.forEach((result, i) => {
      const where = i < reads.length ? path.join(cwd(), '.agentkey') : missing;
      expect(linesOf(result.stderr)[0]).toBe(`agentkey: No agentkey database in ${where}; check --data-dir (or AGENTKEY_DATA_DIR), or create one with \`agentkey migrate\`.`);
      expectFailure(result, /No agentkey database/);
      expectOneLine(result);
    });
    expect(fs.existsSync(missing)).toBe(false);
  }, 120_000);

  it('no mistake opened or created a database', () => {
    expect(fs.readdirSync(cwd())).toEqual([]);
  });
});

describe('on PGlite (a temp data directory)', () => {
  let dataDir: string;
  const env = () => ({ AGENTKEY_DATA_DIR: dataDir });
  let first: { key: string; prefix: string };

  beforeAll(() => {
    dataDir = tempDir('agentkey-cli-data');
  });
  afterAll(async () => {
    await stopCliProcesses();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('keys create: the human form shows the raw key once and the key; --json gives {key, id, ...}', async () => {
    const human = expectSuccess(await run(['keys', 'create', '--account', 'acct_1', '--name', 'first', '--budget-cents', '500', '--period', 'month', '--scopes', 'proxy.chat, usage.read'], env()));
    const raw = /^ {2}(ak_\S+)$/m.exec(human)?.[1] as string;
    expect(raw, human).toMatch(/^ak_[A-Za-z0-9]{20,}$/);
    expect(human).toMatch(/^Created key 1\. Its raw value is shown this once; store it now:\n/);
    expect(human.split(raw)).toHaveLength(2);
    for (const cell of [/│ id\s+│ 1\s+│/, /│ name\s+│ first\s+│/, /│ account\s+│ acct_1\s+│/, /│ budget\s+│ \$5\.00 per month\s+│/, /│ scopes\s+│ proxy\.chat, usage\.read\s+│/, /│ status\s+│ active\s+│/, /│ parent\s+│ -\s+│/]) {
      expect(human).toMatch(cell);
    }
    first = { key: raw, prefix: /│ prefix\s+│ (\S+)/.exec(human)?.[1] as string };
    expect(raw.startsWith(first.prefix)).toBe(true);

    const child = expectJson(await run(['keys', 'create', '--account', 'acct_1', '--parent', '1', '--name', 'child', '--budget-cents', '100', '--json'], env()));
    expect(child).toMatchObject({ key: expect.stringMatching(/^ak_/), id: 2, accountId: 'acct_1', name: 'child', parentId: 1, depth: 1, budgetCents: 100, spentCents: 0, status: 'active' });
    expect(String(child.key).startsWith(String(child.prefix))).toBe(true);

    const other = expectJson(await run(['keys', 'create', '--account', 'acct_2', '--name', 'other', '--expires-in', '7d', '--delegated-by', 'alice', '--json'], env()));
    expect(other).toMatchObject({ id: 3, accountId: 'acct_2', name: 'other', delegatedBy: 'alice', budgetCents: null, scopes: null, parentId: null });
    expect(Date.parse(other.expiresAt) - Date.now()).toBeGreaterThan(6.9 * 86_400_000);
    expect(Date.parse(other.expiresAt) - Date.now()).toBeLessThan(7.1 * 86_400_000);
  }, 90_000);

  it('keys list: a table of the keys without secrets; --json and --account', async () => {
    const table = expectSuccess(await run(['keys', 'list'], env()));
    expect(table).toMatch(/│ id\s+│ name\s+│ account\s+│ prefix\s+│ status\s+│ scopes\s+│ budget\s+│ spent\s+│ held\s+│ remaining\s+│ period\s+│ expires\s+│/);
    expect(table).toMatch(new RegExp(`│ 1\\s+│ first\\s+│ acct_1\\s+│ ${first.prefix}\\s+│ active\\s+│ proxy\\.chat, usage\\.read\\s+│ \\$5\\.00\\s+│ \\$0\\.00\\s+│ \\$0\\.00\\s+│ \\$5\\.00\\s+│ month\\s+│ -\\s+│`));
    expect(table).toMatch(/│ 2\s+│ child\s+│ acct_1\s+│/);
    expect(table).toMatch(/│ 3\s+│ other\s+│ acct_2\s+│.*│ unlimited\s+│/);
    expect(table).not.toContain(first.key);

    const listed = await run(['keys', 'list', '--json', '--account', 'acct_2'], env());
    const { keys } = expectJson(listed);
    expect(keys.map((k: { id: number }) => k.id)).toEqual([3]);
    expect(keys[0]).not.toHaveProperty('key');
    expect(listed.stdout).not.toMatch(/ak_[A-Za-z0-9]{30,}/);
  }, 60_000);

  it('keys update: changes what the flags name and prints the key; --json; a child widened or a parent narrowed below it is refused, --cascade narrows it', async () => {
    const human = expectSuccess(await run(['keys', 'update', '3', '--name', 'renamed', '--budget-cents', '250', '--no-expiry'], env()));
    expect(human).toMatch(/^Updated key 3\.\n/);
    expect(human).toMatch(/│ name\s+│ renamed\s+│/);
    expect(human).toMatch(/│ budget\s+│ \$2\.50\s+│/);
    const changed = expectJson(await run(['keys', 'update', '3', '--period', 'day', '--scopes', 'usage.read', '--json'], env()));
    expect(changed).toMatchObject({ id: 3, name: 'renamed', budgetCents: 250, budgetPeriod: 'day', scopes: ['usage.read'], expiresAt: null });
    expectFailure(await run(['keys', 'update', '2', '--budget-cents', '600'], env()), /^agentkey: A child key's budget may not exceed its parent's budget of 500 cents\.$/);
    expectFailure(await run(['keys', 'update', '1', '--budget-cents', '50'], env()), /^agentkey: Key 2, a descendant of key 1, would be wider than its parent \(budget\); pass cascade: true to narrow it too\.$/);
    expect(expectJson(await run(['keys', 'show', '2', '--json'], env()))).toMatchObject({ budgetCents: 100 });
    expect(expectJson(await run(['keys', 'update', '1', '--budget-cents', '50', '--cascade', '--json'], env()))).toMatchObject({ id: 1, budgetCents: 50 });
    expect(expectJson(await run(['keys', 'show', '2', '--json'], env()))).toMatchObject({ budgetCents: 50 });
    expectFailure(await run(['keys', 'update', '99', '--name', 'x'], env()), /^agentkey: No key has id 99\.$/);
    // Metadata: a JSON object replaces the key's; --no-metadata removes it.
    expect(expectJson(await run(['keys', 'update', '3', '--metadata', '{"team":"search","n":2}', '--json'], env()))).toMatchObject({ metadata: { team: 'search', n: 2 } });
    expect(expectJson(await run(['keys', 'update', '3', '--no-metadata', '--json'], env()))).toMatchObject({ metadata: null });
  }, 90_000);

  it('keys revoke: the key and its children are revoked', async () => {
    expect(expectSuccess(await run(['keys', 'revoke', '1'], env()))).toBe('Revoked key 1 and every key under it.\n');
    const all = expectJson(await run(['keys', 'list', '--json', '--include-revoked'], env()));
    expect(all.keys.map((k: { id: number; status: string }) => [k.id, k.status])).toEqual([
      [1, 'revoked'],
      [2, 'revoked'],
      [3, 'active'],
    ]);
  }, 60_000);
});

describe('on PGlite: a mistyped --table', () => {
  let dataDir: string;
  beforeAll(() => {
    dataDir = tempDir('agentkey-cli-table');
  });
  afterAll(() => fs.rmSync(dataDir, { recursive: true, force: true }));

  /** Every table in the data directory's database (no CLI may hold it meanwhile). */
  async function tables(): Promise<string[]> {
    const db = await PGlite.create({ dataDir: path.join(dataDir, 'pgdata') });
    try {
      const rows = await db.query<{ name: string }>(
        `SELECT table_schema || '.' || table_name AS name FROM information_schema.tables
         WHERE table_schema NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`,
      );
      return rows.rows.map((r) => r.name);
    } finally {
      await db.close();
    }
  }

  it('read-only commands, revoke and --clear: one line naming the table, exit 1, and no table is created', async () => {
    expectSuccess(await run(['keys', 'create', '--account', 'acct_1', '--name', 'first'], { AGENTKEY_DATA_DIR: dataDir }));
    const before = await tables();
    expect(before).toContain('public.sdk_api_keys');
    const commands = [['keys', 'list'], ['usage'], ['accounts', 'budget', 'acct_1'], ['keys', 'revoke', '1']];
    // One at a time: one process at a time opens a data directory.
    for (const args of commands) {
      const result = await run([...args, '--table', 'sdk_api_keyz'], { AGENTKEY_DATA_DIR: dataDir });
      expectFailure(result, /^agentkey: No agentkey table "sdk_api_keyz" in \S+; run `agentkey migrate` first, or check --table\.$/);
      expectOneLine(result);
    }
    expect(await tables()).toEqual(before);
    // The real table is as it was: its key is still active.
    expect(expectJson(await run(['keys', 'show', '1', '--json'], { AGENTKEY_DATA_DIR: dataDir }))).toMatchObject({ id: 1, name: 'first', status: 'active' });
  }, 240_000);
});

describe('on PostgreSQL (DATABASE_URL)', () => {
  let db: Awaited<ReturnType<typeof freshDatabase>>;
  let pool: pg.Pool;
  const env = () => ({ DATABASE_URL: db.url });

  beforeAll(async () => {
    db = await freshDatabase('agentkey_cli');
    pool = new pg.Pool({ connectionString: db.url, max: 3 });
  });
  afterAll(async () => {
    await stopCliProcesses();
    await pool?.end();
    await db?.drop().catch(() => {});
  });

  let unmigrated: Promise<CliResult[]> | undefined;
  const beforeMigrating = () =>
    (unmigrated ??= Promise.all([run(['keys', 'list'], env()), run(['usage', '--json'], env()), run(['accounts', 'budget', 'acct'], env())]));

  it('before migrate: commands fail in one line that says to migrate, and change nothing', async () => {
    for (const result of await beforeMigrating()) {
      expectFailure(result, /migrate/);
      expectOneLine(result);
    }
    const tables = await pool.query(`SELECT tablename FROM pg_tables WHERE schemaname = 'public'`);
    expect(tables.rows).toEqual([]);
  });

  it('before migrate: the message names the command to run, `agentkey migrate`', async () => {
    for (const result of await beforeMigrating()) expect(result.stderr).toMatch(/run `agentkey migrate` first/);
  });

  it('migrate applies the migrations once, then is up to date; the URL is shown without its password', async () => {
    const applied = expectSuccess(await run(['migrate'], env()));
    expect(applied).toMatch(/^Applied migrations 1(, \d+)* on postgres:\/\/postgres:\*\*\*@127\.0\.0\.1:\d+\/agentkey_cli_\w+\.\n$/);
    const [again, againHuman, none] = await Promise.all([run(['migrate', '--json'], env()), run(['migrate'], env()), run(['keys', 'list'], env())]);
    expect(expectJson(again)).toEqual({ applied: [] });
    expect(expectSuccess(againHuman)).toMatch(/^Already up to date on postgres:\/\/postgres:\*\*\*@/);
    expect(expectSuccess(none)).toBe('No keys.\n');
  });

  it('read-only commands on a mistyped --table (or schema): one line naming it, exit 1, and no table is created', async () => {
    const tables = async () =>
      (await pool.query<{ name: string }>(`SELECT schemaname || '.' || tablename AS name FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1`)).rows.map((r) => r.name);
    const before = await tables();
    expect(before).toContain('public.sdk_api_keys');
    const commands = [['keys', 'list'], ['keys', 'show', '1'], ['usage', '--json'], ['accounts', 'budget', 'acct_t'], ['keys', 'revoke', '1']];
    const results = await Promise.all([
      ...commands.map((args) => ({ table: 'sdk_api_keyz', args })),
      { table: 'nosuch.sdk_api_keys', args: ['keys', 'list'] },
    ].map(({ table, args }) => run([...args, '--table', table], env()).then((r) => ({ table, r }))));
    for (const { table, r } of results) {
      expectFailure(r, new RegExp(`^agentkey: No agentkey table "${table.replace('.', '\\.')}" in postgres://postgres:\\*\\*\\*@\\S+; run \`agentkey migrate\` first, or check --table\\.$`));
      expectOneLine(r);
    }
    expect(await tables()).toEqual(before);
  }, 120_000);

  it('keys create, show (--json, and unknown ids), list --parent and revoke of a subtree', async () => {
    const human = expectSuccess(await run(['keys', 'create', '--account', 'acct_t', '--name', 'parent', '--budget-cents', '1000', '--period', 'day', '--delegated-by', 'alice'], env()));
    const raw = /^ {2}(ak_\S+)$/m.exec(human)?.[1] as string;
    expect(human.split(raw)).toHaveLength(2);
    const ak = new AgentKey({ pool });
    try {
      expect(await ak.validate(raw)).toMatchObject({ valid: true, keyId: 1, accountId: 'acct_t', budgetCents: 1000, budgetPeriod: 'day' });
    } finally {
      await ak.close();
    }
    const [c, s] = (await Promise.all([
      run(['keys', 'create', '--account', 'acct_t', '--parent', '1', '--name', 'c', '--json'], env()),
      run(['keys', 'create', '--account', 'acct_t', '--name', 's', '--json'], env()),
    ])).map(expectJson);
    const g = expectJson(await run(['keys', 'create', '--account', 'acct_t', '--parent', String(c.id), '--name', 'g', '--json'], env()));
    expect([c.parentId, g.parentId, s.parentId]).toEqual([1, c.id, null]);
    expect([c.depth, g.depth, s.depth]).toEqual([1, 2, 0]);

    const [details, top, gJson, missing, missingRevoke, badParent, otherAccount] = await Promise.all([
      run(['keys', 'show', String(g.id)], env()).then(expectSuccess),
      run(['keys', 'show', '1'], env()).then(expectSuccess),
      run(['keys', 'show', String(g.id), '--json'], env()).then(expectJson),
      run(['keys', 'show', '999999'], env()),
      run(['keys', 'revoke', '999999'], env()),
      run(['keys', 'create', '--account', 'acct_t', '--parent', '999999'], env()),
      run(['keys', 'create', '--account', 'acct_other', '--parent', '1'], env()),
    ]);
    // show --json is the key as created, without its secret.
    const { key: _secret, ...gInfo } = g;
    expect(gJson).toEqual(gInfo);
    expectFailure(missing, /^agentkey: No key has id 999999\.$/);
    expectFailure(missingRevoke, /^agentkey: No key has id 999999\.$/);
    expectFailure(badParent, /No key has id 999999/);
    expectFailure(otherAccount, /parent's account/);
    for (const r of [missing, missingRevoke, badParent, otherAccount]) expectOneLine(r);
    expect(details).toMatch(new RegExp(`│ parent\\s+│ ${c.id}\\s+│`));
    expect(details).toMatch(/│ name\s+│ g\s+│/);
    expect(top).toMatch(/│ budget\s+│ \$10\.00 per day\s+│[\s\S]*│ delegated by\s+│ alice\s+│/);

    expect(expectSuccess(await run(['keys', 'revoke', String(c.id)], env()))).toBe(`Revoked key ${c.id} and every key under it.\n`);
    const statuses = async (args: string[]) =>
      (expectJson(await run(['keys', 'list', '--json', '--include-revoked', ...args], env())).keys as { id: number; status: string }[]).map((k) => [k.id, k.status]);
    const [inAccount, underParent, again, againJson] = await Promise.all([
      statuses(['--account', 'acct_t']),
      statuses(['--parent', '1']),
      run(['keys', 'revoke', String(c.id)], env()),
      run(['keys', 'revoke', String(c.id), '--json'], env()),
    ]);
    expect(inAccount).toEqual(
      [
        [1, 'active'],
        [c.id, 'revoked'],
        [g.id, 'revoked'],
        [s.id, 'active'],
      ].sort((x, y) => (x[0] as number) - (y[0] as number)),
    );
    expect(underParent).toEqual([[c.id, 'revoked']]);
    expect(expectSuccess(again)).toBe(`Key ${c.id} was already revoked.\n`);
    expect(expectJson(againJson)).toMatchObject({ id: c.id, revoked: false, key: { id: c.id, status: 'revoked' } });
  }, 60_000);

  it('accounts budget: shows, sets (per period or lifetime) and clears a ceiling', async () => {
    const [none, noneJson] = await Promise.all([run(['accounts', 'budget', 'acct_b'], env()), run(['accounts', 'budget', 'acct_b', '--json'], env())]);
    expect(expectSuccess(none)).toBe('acct_b has no ceiling; set one with --set-cents.\n');
    expect(expectJson(noneJson)).toBeNull();
    const set = expectSuccess(await run(['accounts', 'budget', 'acct_b', '--set-cents', '2500', '--period', 'month'], env()));
    expect(set).toMatch(/│ account\s+│ ceiling\s+│ period\s+│ spent\s+│ held\s+│ remaining\s+│ next reset\s+│/);
    expect(set).toMatch(/│ acct_b\s+│ \$25\.00\s+│ month\s+│ \$0\.00\s+│ \$0\.00\s+│ \$25\.00\s+│ \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\s+│/);
    expect(expectJson(await run(['accounts', 'budget', 'acct_b', '--json'], env()))).toMatchObject({
      accountId: 'acct_b',
      budgetCents: 2500,
      budgetPeriod: 'month',
      spentCents: 0,
      heldCents: 0,
      remainingCents: 2500,
    });
    expect(expectSuccess(await run(['accounts', 'budget', 'acct_b', '--set-cents', '12.5', '--period', 'lifetime'], env()))).toMatch(/│ acct_b\s+│ \$0\.125\s+│ lifetime\s+│ \$0\.00\s+│ \$0\.00\s+│ \$0\.125\s+│ -\s+│/);
    expect(expectSuccess(await run(['accounts', 'budget', 'acct_b', '--clear'], env()))).toBe('Removed the ceiling of acct_b.\n');
    const [cleared, clearedJson, gone] = await Promise.all([
      run(['accounts', 'budget', 'acct_b', '--clear'], env()),
      run(['accounts', 'budget', 'acct_b', '--clear', '--json'], env()),
      run(['accounts', 'budget', 'acct_b'], env()),
    ]);
    expect(expectSuccess(cleared)).toBe('acct_b had no ceiling.\n');
    expect(expectJson(clearedJson)).toEqual({ accountId: 'acct_b', removed: false });
    expect(expectSuccess(gone)).toBe('acct_b has no ceiling; set one with --set-cents.\n');
  }, 60_000);

  it('usage: --json and a table with a chart of the spend charged through the library', async () => {
    expect(expectSuccess(await run(['usage', '--account', 'acct_u'], env()))).toMatch(/^No spend between \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ and \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\.\n$/);

    const ak = new AgentKey({ pool });
    let a: { id: number; key: string };
    let b: { id: number; key: string };
    try {
      a = await ak.create({ accountId: 'acct_u', budgetCents: 1000 });
      b = await ak.create({ accountId: 'acct_u' });
      expect(await ak.trackUsage(a.key, { costCents: 125 })).toMatchObject({ success: true });
      expect(await ak.trackUsage(b.key, { costCents: 200 })).toMatchObject({ success: true });
      expect(await ak.trackUsage(b.key, { costCents: 0.15 })).toMatchObject({ success: true });
    } finally {
      await ak.close();
    }

    // Buckets are UTC days and hours whatever the session's time zone.
    const kolkata = `${db.url}?options=${encodeURIComponent('-c TimeZone=Asia/Kolkata')}`;
    const [reportRun, kolkataRun, dailyRun, hourlyRun, oldRun, listRun] = await Promise.all([
      run(['usage', '--account', 'acct_u', '--json'], env()),
      run(['usage', '--account', 'acct_u', '--json'], { DATABASE_URL: kolkata }),
      run(['usage', '--key', String(a.id)], env()),
      run(['usage', '--key', String(b.id), '--bucket', 'hour', '--since', '6h'], env()),
      run(['usage', '--key', String(a.id), '--until', '2020-01-01', '--since', '2019-12-01', '--json'], env()),
      run(['keys', 'list', '--account', 'acct_u'], env()),
    ]);
    const report = expectJson(reportRun);
    expect(report).toMatchObject({ bucket: 'day', totalCents: 325.15, count: 3 });
    expect(Date.parse(report.until) - Date.parse(report.since)).toBe(30 * 86_400_000);
    expect(report.buckets.reduce((sum: number, x: { costCents: number }) => sum + x.costCents, 0)).toBeCloseTo(325.15, 6);
    expect(report.buckets.reduce((sum: number, x: { count: number }) => sum + x.count, 0)).toBe(3);
    for (const bucket of report.buckets) expect(bucket.start).toMatch(/T00:00:00\.000Z$/);
    expect(expectJson(kolkataRun)).toMatchObject({ totalCents: 325.15, count: 3, buckets: report.buckets });

    const daily = expectSuccess(dailyRun);
    expect(daily).toMatch(/│ day \(UTC\)\s+│ spend\s+│ calls\s+│/);
    expect(daily).toMatch(/│ \d{4}-\d\d-\d\d\s+│ \$1\.25\s+│ 1\s+│/);
    expect(daily).toContain('Total: $1.25 over 1 call.');
    expect(daily).toMatch(/Spend per day, in dollars \((30|31) days to \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\):/);
    expect(daily).toMatch(/\$1\.25 [┼┤]/);
    expect(daily).toMatch(/\$0\.00 [┼┤]/);

    const hourly = expectSuccess(hourlyRun);
    expect(hourly).toMatch(/│ hour \(UTC\)\s+│ spend\s+│ calls\s+│/);
    expect(hourly).toMatch(/│ \d{4}-\d\d-\d\d \d\d:00\s+│ \$\d/);
    expect(hourly).toContain('Total: $2.0015 over 2 calls.');
    expect(hourly).toMatch(/Spend per hour, in dollars \((6|7) hours to \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\):/);

    expect(expectJson(oldRun)).toMatchObject({
      totalCents: 0,
      count: 0,
      buckets: [],
    });
    const listed = expectSuccess(listRun);
    expect(listed).toMatch(new RegExp(`│ ${a.id}\\s+│.*│ \\$10\\.00\\s+│ \\$1\\.25\\s+│ \\$0\\.00\\s+│ \\$8\\.75\\s+│`));
    expect(listed).toMatch(new RegExp(`│ ${b.id}\\s+│.*│ unlimited\\s+│ \\$2\\.0015\\s+│ \\$0\\.00\\s+│ unlimited\\s+│`));
  }, 60_000);

  it('security: names, ids and labels that SQL gave escape sequences, BEL or bidi overrides are shown escaped, never raw; --json gives them back exactly', async () => {
    const evil = { name: 'x\u001b[31mred\u0007\u202eevil\u009b', accountId: 'acct\u2066evil\nz', delegatedBy: 'bob\u200f\u001b]0;title\u0007' };
    const ak = new AgentKey({ pool });
    let id: number;
    try {
      await ak.migrate();
      id = (await ak.create({ accountId: 'acct_sql', name: 'plain' })).id;
    } finally {
      await ak.close();
    }
    // Written by SQL, past the library's checks, as anyone with access to the table can.
    await pool.query('UPDATE sdk_api_keys SET name = $1, account_id = $2, delegated_by = $3 WHERE id = $4', [evil.name, evil.accountId, evil.delegatedBy, id]);
    const [list, show, listJson, showJson] = await Promise.all([
      run(['keys', 'list'], env()).then(expectSuccess),
      run(['keys', 'show', String(id)], env()).then(expectSuccess),
      run(['keys', 'list', '--json'], env()).then(expectSuccess),
      run(['keys', 'show', String(id), '--json'], env()).then(expectSuccess),
    ]);
    // No control character but the line breaks, no bidi mark, override or isolate.
    const RAW = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/;
    for (const text of [list, show, listJson, showJson]) expect(text).not.toMatch(RAW);
    expect(show).toMatch(/│ name\s+│ x\\x1b\[31mred\\x07\\u202eevil\\x9b\s+│/);
    expect(show).toMatch(/│ account\s+│ acct\\u2066evil\\nz\s+│/);
    expect(show).toMatch(/│ delegated by\s+│ bob\\u200f\\x1b\]0;title\\x07\s+│/);
    expect(list).toMatch(new RegExp(`│ ${id}\\s+│ x\\\\x1b\\[31mred\\\\x07\\\\u202eevil\\\\x9b\\s+│ acct\\\\u2066evil\\\\nz\\s+│`));
    // JSON escapes them too, and parses back to the very text stored.
    expect(JSON.parse(showJson)).toMatchObject({ id, ...evil });
    expect((JSON.parse(listJson).keys as { id: number }[]).find((k) => k.id === id)).toMatchObject(evil);
  });

  it('admin-key rotate: prints a new key once and stores only its hash', async () => {
    const stored = async () => (await pool.query<{ sha256: string }>('SELECT sha256 FROM agentkey_admin_key')).rows.map((r) => r.sha256);
    const { adminKey } = expectJson(await run(['admin-key', 'rotate', '--json'], env()));
    expect(adminKey).toMatch(/^akadmin_[A-Za-z0-9_-]{40,}$/);
    expect(await stored()).toEqual([createHash('sha256').update(adminKey).digest('hex')]);

    const human = expectSuccess(await run(['admin-key', 'rotate'], env()));
    const next = /^ {2}(akadmin_\S+)$/m.exec(human)?.[1] as string;
    expect(human).toMatch(/^New admin key \(shown this once; the old one no longer works\):\n/);
    expect(next).not.toBe(adminKey);
    expect(await stored()).toEqual([createHash('sha256').update(next).digest('hex')]);
  });
});
