// One file (about 465 lines): the whole command tree as commander declares it, in the order
// `agentkey --help` lists it, so each command's options sit beside its action.
import { createRequire } from 'node:module';
import { Command, InvalidArgumentError, Option } from 'commander';
import { pino } from 'pino';
import yoctoSpinner from 'yocto-spinner';
import { AgentKey } from '../agentkey.js';
import { AgentKeyError } from '../errors.js';
import { rotateAdminKey } from '../server/admin-key.js';
import { startServer } from '../server/serve.js';
import { StartupError, type Storage, openStorage } from '../server/storage.js';
import { toDb } from '../store/db.js';
import { keysTableExists } from '../store/catalog.js';
import { tableNames } from '../store/identifiers.js';
import { parseInstant } from '../time.js';
import { accountDetails, keyDetails, keysTable, printable, printableJson, printableLines, usageReport } from './format.js';

/** The flags of `keys update` (commander names a --no-x flag x, false when given). */
interface UpdateFlags {
  name?: string;
  scopes?: string[];
  unlimitedScopes?: boolean;
  budgetCents?: number;
  budgetCap?: boolean;
  period?: 'day' | 'month' | 'none';
  expiresIn?: string;
  expiry?: boolean;
  delegatedBy?: string;
  cascade?: boolean;
}

interface Common {
  dataDir: string;
  databaseUrl?: string;
  table?: string;
  json?: boolean;
}

/** A mistake the user can fix: shown as one line, exit code 1. */
class UserError extends Error {}

// Whatever is shown may hold text from the database (names, ids...): unprintable characters are escaped.
const out = (text: string) => process.stdout.write(`${printableLines(text.endsWith('\n') ? text.slice(0, -1) : text)}\n`);
const json = (value: unknown) => process.stdout.write(`${printableJson(value)}\n`);

/** Shows a spinner on a terminal while `work` runs (nothing when stderr is piped). */
async function progress<T>(text: string, work: () => Promise<T>): Promise<T> {
  if (!process.stderr.isTTY) return work();
  const spinner = yoctoSpinner({ text, stream: process.stderr }).start();
  try {
    return await work();
  } finally {
    spinner.stop();
    spinner.clear();
  }
}

function storageOptions(o: Common, create = true) {
  return { databaseUrl: o.databaseUrl || undefined, dataDir: o.dataDir, create };
}

/** The --table option, checked before any database is opened. */
function tableOption(o: Common): { tableName?: string } {
  if (o.table === undefined) return {};
  tableNames(o.table);
  return { tableName: o.table };
}

/**
 * What a command does to the tables: 'read' needs them and never creates anything (no
 * data directory, no table); 'change' needs them too; 'create' may be the first write.
 */
type Access = 'read' | 'change' | 'create';

/** Opens the storage and an AgentKey on it, runs `fn`, and always closes both. */
async function withAgentKey<T>(o: Common, access: Access, fn: (ak: AgentKey, storage: Storage) => Promise<T>): Promise<T> {
  const table = tableOption(o);
  const storage = await progress(o.databaseUrl ? 'Connecting to PostgreSQL…' : `Opening ${o.dataDir}…`, () =>
    openStorage(storageOptions(o, access === 'create')),
  );
  const ak = new AgentKey({ pool: storage.pool, ...table });
  try {
    if (access !== 'create' && !(await keysTableExists(toDb(storage.pool), tableNames(ak.tableName)))) {
      throw new UserError(`No agentkey table "${ak.tableName}" in ${storage.where}; run \`agentkey migrate\` first, or check --table.`);
    }
    // The embedded database is the service's own: keep it current (reads leave it as it is).
    // A PostgreSQL is the user's: its schema changes only with `agentkey migrate` (or serve).
    if (storage.kind === 'pglite' && access !== 'read') await progress('Migrating…', () => ak.migrate());
    return await fn(ak, storage);
  } finally {
    await ak.close().catch(() => {});
    await storage.close().catch(() => {});
  }
}

function wholeNumber(name: string, min: number, max: number) {
  return (value: string) => {
    if (!/^-?\d+$/.test(value) || Number(value) < min || Number(value) > max) {
      throw new InvalidArgumentError(`${name} must be a whole number from ${min} to ${max}.`);
    }
    return Number(value);
  };
}

function cents(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0) throw new InvalidArgumentError('expected a number of cents of at least 0 (5000 is $50).');
  return n;
}

function list(value: string): string[] {
  return value.split(',').map((s) => s.trim()).filter((s) => s !== '');
}

/** '7d', '12h', '2w' (before now), or an ISO date or time. */
function instant(value: string): Date {
  const rel = /^(\d+)([hdw])$/.exec(value);
  if (rel) return new Date(Date.now() - Number(rel[1]) * { h: 3_600_000, d: 86_400_000, w: 604_800_000 }[rel[2] as 'h' | 'd' | 'w']);
  try {
    return parseInstant(value, 'the time');
  } catch {
    throw new InvalidArgumentError("expected a time like '7d', '24h', '2w' or an ISO date such as 2026-11-01.");
  }
}

/** Where the data is: every command's options. */
function withStorage(cmd: Command): Command {
  return cmd
    .addOption(new Option('--data-dir <dir>', 'embedded database directory').env('AGENTKEY_DATA_DIR').default('./.agentkey'))
    .addOption(new Option('--database-url <url>', 'use PostgreSQL at this URL instead of the embedded database').env('DATABASE_URL'))
    .addOption(new Option('--table <name>', "the keys table (default 'sdk_api_keys')").env('AGENTKEY_TABLE'));
}

/** The options of the commands that print a result: --json beside where the data is. */
function withCommon(cmd: Command): Command {
  return withStorage(cmd).option('--json', 'print JSON for scripts instead of tables');
}

export function buildProgram(): Command {
  const program = new Command('agentkey')
    .description('Scoped, budgeted, time-bounded API keys for AI agents: the service and its operator CLI.')
    .version(version(), '-v, --version')
    // One line: the mistake and where to look.
    .configureOutput({ outputError: (str, write) => write(`agentkey: ${printable(str.replace(/^error: /, '').trim().replace(/\.?$/, ''))} (see --help).\n`) })
    .exitOverride();

  // No --json: the service prints no result, it logs JSON lines.
  withStorage(program.command('serve'))
    .description('run the HTTP service: the admin API, the agent API, /dashboard, /openapi.json, /healthz and /metrics')
    .addOption(new Option('-p, --port <port>', 'port to listen on').env('PORT').default(8787).argParser(wholeNumber('port', 0, 65535)))
    .addOption(new Option('--host <host>', 'address to listen on').env('HOST').default('0.0.0.0'))
    // Not .env(): commander would turn a flag on for any value, AGENTKEY_SELF_SERVE=false included.
    .option('--self-serve', 'mount the self-serve routes: /signup, /sdk-keys/me, /sdk-keys, /sdk-keys/:id (env AGENTKEY_SELF_SERVE=true)')
    .addOption(new Option('--signup-scopes <scopes>', 'comma-separated scopes that POST /signup grants').env('AGENTKEY_SIGNUP_SCOPES').argParser(list))
    .option('--signup-without-email', 'let POST /signup issue keys without an email, which it needs by default (env AGENTKEY_SIGNUP_WITHOUT_EMAIL=true)')
    .addOption(new Option('--body-limit <bytes>', 'largest request body (413 past it)').default(65_536).argParser(wholeNumber('body limit', 1024, 10_485_760)))
    .addOption(
      new Option('--timeout-ms <ms>', 'the longest a call waits on the database (then 503 storage_timeout)')
        .env('AGENTKEY_TIMEOUT_MS')
        .default(5_000)
        .argParser(wholeNumber('timeout', 1, 3_600_000)),
    )
    .addOption(
      new Option('--log-level <level>', 'least level logged: requests are info (2xx/3xx), warn (4xx) or error (5xx), one JSON line each on stdout')
        .env('LOG_LEVEL')
        .default('info')
        .choices(['fatal', 'error', 'warn', 'info', 'debug', 'silent']),
    )
    .addHelpText(
      'after',
      '\nThe admin key is AGENTKEY_ADMIN_KEY (16 or more letters, digits or . _ ~ + / -).\n' +
        'Without it, the first start creates one, prints it once on stderr and stores\n' +
        'only its hash; `agentkey admin-key rotate` replaces it.',
    )
    .action(async (o: Common & { port: number; host: string; selfServe?: boolean; signupScopes?: string[]; signupWithoutEmail?: boolean; bodyLimit: number; timeoutMs: number; logLevel: string }) => {
      // Synchronous writes: the last lines before process.exit() ('stopped') must not be lost.
      const selfServe = o.selfServe === true || envFlag('AGENTKEY_SELF_SERVE');
      const withoutEmail = o.signupWithoutEmail === true || envFlag('AGENTKEY_SIGNUP_WITHOUT_EMAIL');
      const logger = pino({ level: o.logLevel, base: { service: 'agentkey' } }, pino.destination({ dest: 1, sync: true }));
      const server = await progress(o.databaseUrl ? 'Connecting to PostgreSQL…' : `Opening ${o.dataDir}…`, () =>
        startServer({
          ...storageOptions(o),
          port: o.port,
          host: o.host,
          adminKey: process.env.AGENTKEY_ADMIN_KEY,
          selfServe: selfServe
            ? { ...(o.signupScopes ? { signupScopes: o.signupScopes } : {}), ...(withoutEmail ? { requireEmailForSignup: false } : {}) }
            : false,
          bodyLimitBytes: o.bodyLimit,
          timeoutMs: o.timeoutMs,
          logger,
          ...(o.table ? { tableName: o.table } : {}),
          onAdminKeyCreated: (key) =>
            process.stderr.write(
              `\nagentkey: created the admin key. It is shown this once and stored only as a hash; keep it now:\n\n  ${key}\n\n` +
                'Send it as "Authorization: Bearer <admin key>" to the admin routes (/v1/keys, /v1/accounts, /v1/usage,\n' +
                '/v1/ledger), or sign in with it at /dashboard. The routes are described at /openapi.json.\n' +
                'Lost it? Stop the service, run `agentkey admin-key rotate` and start it again, or set AGENTKEY_ADMIN_KEY.\n\n',
            ),
        }),
      );
      logger.info(
        { url: server.url, port: server.port, database: o.databaseUrl ? 'postgres' : 'pglite', adminKey: server.adminKey.source },
        `agentkey listening on ${server.url}`,
      );
      let stopping = false;
      const stop = (signal: string) => {
        if (stopping) {
          logger.warn({ signal }, 'second signal: exiting without waiting');
          process.exit(1);
        }
        stopping = true;
        // close() stops accepting at once (synchronously); only then say so, so that whoever
        // reads this line can count on new connections being refused.
        const closed = server.close();
        logger.info({ signal }, 'shutting down: finishing in-flight requests');
        closed.then(
          () => {
            logger.info({}, 'stopped');
            process.exit(0);
          },
          (err: unknown) => {
            logger.error({ err: String(err) }, 'shutdown failed');
            process.exit(1);
          },
        );
      };
      // `on`, not `once`: a second Ctrl-C must reach stop() too, not Node's default exit.
      process.on('SIGTERM', () => stop('SIGTERM'));
      process.on('SIGINT', () => stop('SIGINT'));
      // Keep the action pending: the service runs until a signal stops it.
      await new Promise<never>(() => {});
    });

  withCommon(program.command('migrate'))
    .description('create or upgrade the tables (serve does this at start)')
    .action(async (o: Common) => {
      const table = tableOption(o);
      const storage = await progress('Opening database…', () => openStorage(storageOptions(o)));
      try {
        const ak = new AgentKey({ pool: storage.pool, ...table });
        const applied = await progress('Migrating…', () => ak.migrate());
        await ak.close();
        if (o.json) json({ applied });
        else out(applied.length ? `Applied migrations ${applied.join(', ')} on ${storage.where}.` : `Already up to date on ${storage.where}.`);
      } finally {
        await storage.close();
      }
    });

  const keys = program.command('keys').description('create, list, show, update and revoke keys');
  withCommon(keys.command('create'))
    .description('create a key; its raw value is printed once')
    .requiredOption('--account <id>', 'account the key belongs to')
    .option('--name <name>', 'label')
    .option('--scopes <scopes>', "comma-separated scopes, e.g. 'proxy.chat,usage.read' (default: unlimited)", list)
    .option('--budget-cents <cents>', 'spending cap in cents (5000 is $50)', cents)
    .addOption(new Option('--period <period>', 'budget reset interval').choices(['day', 'month']))
    .option('--expires-in <duration>', "'30m', '1h', '7d', '1mo'")
    .option('--delegated-by <user>', 'the human who authorized this key')
    .option('--parent <id>', 'make it a child of this key', wholeNumber('parent', 1, Number.MAX_SAFE_INTEGER))
    .action(async (o: Common & { account: string; name?: string; scopes?: string[]; budgetCents?: number; period?: 'day' | 'month'; expiresIn?: string; delegatedBy?: string; parent?: number }) => {
      await withAgentKey(o, 'create', async (ak) => {
        const created = await ak.create({
          accountId: o.account,
          ...(o.name !== undefined ? { name: o.name } : {}),
          ...(o.scopes !== undefined ? { scopes: o.scopes } : {}),
          ...(o.budgetCents !== undefined ? { budgetCents: o.budgetCents } : {}),
          ...(o.period !== undefined ? { budgetPeriod: o.period } : {}),
          ...(o.expiresIn !== undefined ? { expiresIn: o.expiresIn } : {}),
          ...(o.delegatedBy !== undefined ? { delegatedBy: o.delegatedBy } : {}),
          ...(o.parent !== undefined ? { parentId: o.parent } : {}),
        });
        const info = await ak.getKey(created.id);
        if (o.json) return json({ key: created.key, ...info });
        out(`Created key ${created.id}. Its raw value is shown this once; store it now:\n\n  ${created.key}\n`);
        if (info) out(keyDetails(info));
      });
    });

  withCommon(keys.command('list'))
    .description("list keys (an account's, or all) with budget, spent, held and remaining")
    .option('--account <id>', 'only this account')
    .option('--parent <id>', 'only children of this key', wholeNumber('parent', 1, Number.MAX_SAFE_INTEGER))
    .option('--include-revoked', 'include revoked keys')
    .option('--limit <n>', 'at most this many', wholeNumber('limit', 1, 10_000), 1000)
    .action(async (o: Common & { account?: string; parent?: number; includeRevoked?: boolean; limit: number }) => {
      await withAgentKey(o, 'read', async (ak) => {
        const list = await ak.listKeys({
          ...(o.account !== undefined ? { accountId: o.account } : {}),
          ...(o.parent !== undefined ? { parentId: o.parent } : {}),
          includeRevoked: o.includeRevoked === true,
          limit: o.limit,
        });
        if (o.json) json({ keys: list });
        else out(keysTable(list));
      });
    });

  withCommon(keys.command('show'))
    .description('one key, without its secret')
    .argument('<id>', 'key id', wholeNumber('id', 1, Number.MAX_SAFE_INTEGER))
    .action(async (id: number, o: Common) => {
      await withAgentKey(o, 'read', async (ak) => {
        const info = await ak.getKey(id);
        if (!info) throw new UserError(`No key has id ${id}.`);
        if (o.json) json(info);
        else out(keyDetails(info));
      });
    });

  withCommon(keys.command('update'))
    .description("change a key's budget, period, scopes, expiry, name or delegated-by (children are never widened past it)")
    .argument('<id>', 'key id', wholeNumber('id', 1, Number.MAX_SAFE_INTEGER))
    .option('--name <name>', 'label')
    .option('--scopes <scopes>', "comma-separated scopes, e.g. 'proxy.chat,usage.read'", list)
    .option('--unlimited-scopes', 'remove the scope list (the key may do anything its parent may)')
    .option('--budget-cents <cents>', 'spending cap in cents; below what was spent leaves nothing to spend', cents)
    .option('--no-budget-cap', 'remove the spending cap')
    .addOption(new Option('--period <period>', "budget reset interval; a new one starts now ('none' removes it)").choices(['day', 'month', 'none']))
    .option('--expires-in <duration>', "'30m', '1h', '7d', '1mo' from now")
    .option('--no-expiry', 'remove the expiry')
    .option('--delegated-by <user>', 'the human who authorized this key')
    .option('--cascade', 'narrow the keys under it too, where the change would leave one wider than its parent')
    .action(async (id: number, o: Common & UpdateFlags) => {
      if (o.scopes !== undefined && o.unlimitedScopes) throw new UserError('Use --scopes or --unlimited-scopes, not both.');
      if (o.budgetCents !== undefined && o.budgetCap === false) throw new UserError('Use --budget-cents or --no-budget-cap, not both.');
      if (o.expiresIn !== undefined && o.expiry === false) throw new UserError('Use --expires-in or --no-expiry, not both.');
      const changes = {
        ...(o.name !== undefined ? { name: o.name } : {}),
        ...(o.scopes !== undefined ? { scopes: o.scopes } : o.unlimitedScopes ? { scopes: null } : {}),
        ...(o.budgetCents !== undefined ? { budgetCents: o.budgetCents } : o.budgetCap === false ? { budgetCents: null } : {}),
        ...(o.period !== undefined ? { budgetPeriod: o.period === 'none' ? null : o.period } : {}),
        ...(o.expiresIn !== undefined ? { expiresIn: o.expiresIn } : o.expiry === false ? { expiresIn: null } : {}),
        ...(o.delegatedBy !== undefined ? { delegatedBy: o.delegatedBy } : {}),
      };
      if (Object.keys(changes).length === 0) throw new UserError('Nothing to change: give at least one of the options (see --help).');
      await withAgentKey(o, 'change', async (ak) => {
        const info = await ak.update(id, changes, o.cascade ? { cascade: true } : {});
        if (o.json) return json(info);
        out(`Updated key ${id}.`);
        out(keyDetails(info));
      });
    });

  withCommon(keys.command('revoke'))
    .description('revoke a key and every key under it')
    .argument('<id>', 'key id', wholeNumber('id', 1, Number.MAX_SAFE_INTEGER))
    .action(async (id: number, o: Common) => {
      await withAgentKey(o, 'change', async (ak) => {
        if (!(await ak.getKey(id))) throw new UserError(`No key has id ${id}.`);
        const revoked = await ak.revoke(id);
        const info = await ak.getKey(id);
        if (o.json) return json({ id, revoked, key: info });
        out(revoked ? `Revoked key ${id} and every key under it.` : `Key ${id} was already revoked.`);
      });
    });

  const accounts = program.command('accounts').description("accounts' ceilings");
  withCommon(accounts.command('budget'))
    .description("show an account's ceiling, or set it with --set-cents, or remove it with --clear")
    .argument('<accountId>', 'account id')
    .option('--set-cents <cents>', 'set the ceiling, in cents', cents)
    .addOption(new Option('--period <period>', "reset interval for --set-cents (default: 'lifetime')").choices(['day', 'month', 'lifetime']))
    .option('--clear', 'remove the ceiling')
    .action(async (accountId: string, o: Common & { setCents?: number; period?: 'day' | 'month' | 'lifetime'; clear?: boolean }) => {
      if (o.clear && o.setCents !== undefined) throw new UserError('Use --set-cents or --clear, not both.');
      if (o.period !== undefined && o.setCents === undefined) throw new UserError('--period goes with --set-cents.');
      await withAgentKey(o, o.setCents !== undefined ? 'create' : o.clear ? 'change' : 'read', async (ak) => {
        if (o.clear) {
          const removed = await ak.clearAccountBudget(accountId);
          if (o.json) return json({ accountId, removed });
          return out(removed ? `Removed the ceiling of ${accountId}.` : `${accountId} had no ceiling.`);
        }
        const budget =
          o.setCents !== undefined
            ? await ak.setAccountBudget(accountId, { budgetCents: o.setCents, budgetPeriod: o.period === 'lifetime' || o.period === undefined ? null : o.period })
            : await ak.getAccountBudget(accountId);
        if (o.json) return json(budget);
        out(budget ? accountDetails(budget) : `${accountId} has no ceiling; set one with --set-cents.`);
      });
    });

  withCommon(program.command('usage'))
    .description('spend from the ledger: a table per hour or day, and a chart')
    .option('--key <id>', 'only this key', wholeNumber('key', 1, Number.MAX_SAFE_INTEGER))
    .option('--account <id>', 'only this account')
    .option('--since <when>', "start: '7d', '24h', '2w' ago or an ISO date", instant)
    .option('--until <when>', 'end (default: now)', instant)
    .addOption(new Option('--bucket <size>', 'bucket size').choices(['hour', 'day']).default('day'))
    .action(async (o: Common & { key?: number; account?: string; since?: Date; until?: Date; bucket: 'hour' | 'day' }) => {
      const until = o.until ?? new Date();
      const since = o.since ?? new Date(until.getTime() - (o.bucket === 'hour' ? 86_400_000 : 30 * 86_400_000));
      if (since >= until) throw new UserError('--since must be before --until.');
      await withAgentKey(o, 'read', async (ak) => {
        const report = await ak.usage({
          ...(o.key !== undefined ? { keyId: o.key } : {}),
          ...(o.account !== undefined ? { accountId: o.account } : {}),
          since,
          until,
          bucket: o.bucket,
        });
        if (o.json) return json({ since: since.toISOString(), until: until.toISOString(), bucket: o.bucket, ...report });
        out(usageReport(report, o.bucket, since, until));
      });
    });

  const admin = program.command('admin-key').description("the service's admin key");
  withCommon(admin.command('rotate'))
    .description('replace the stored admin key with a new one, printed once (stop the service first on the embedded database)')
    .action(async (o: Common) => {
      const storage = await progress('Opening database…', () => openStorage(storageOptions(o)));
      try {
        const key = await rotateAdminKey(storage);
        if (o.json) json({ adminKey: key });
        else out(`New admin key (shown this once; the old one no longer works):\n\n  ${key}\n`);
      } finally {
        await storage.close();
      }
    });

  return program;
}

/** Runs the CLI: exit code 0, or 1 with one line on stderr. */
export async function main(argv: string[]): Promise<void> {
  const program = buildProgram();
  try {
    await program.parseAsync(argv);
  } catch (err) {
    const code = (err as { code?: string; exitCode?: number }).code;
    if (typeof code === 'string' && code.startsWith('commander.')) {
      // Commander has printed its message (or the help, or the version) already.
      process.exitCode = (err as { exitCode: number }).exitCode;
      return;
    }
    process.stderr.write(`agentkey: ${printable(oneLine(err))}\n`);
    process.exitCode = 1;
  }
}

/** A boolean environment variable: true/1/yes or false/0/no (or unset); anything else is a mistake. */
function envFlag(name: string): boolean {
  const value = process.env[name]?.trim().toLowerCase();
  if (value === undefined || value === '' || value === 'false' || value === '0' || value === 'no') return false;
  if (value === 'true' || value === '1' || value === 'yes') return true;
  throw new UserError(`${name} must be true or false; got ${JSON.stringify(process.env[name])}.`);
}

function version(): string {
  try {
    return (createRequire(import.meta.url)('../package.json') as { version: string }).version;
  } catch {
    return 'unknown';
  }
}

function oneLine(err: unknown): string {
  if (err instanceof AgentKeyError && err.code === 'not_migrated') return err.message.replace('run ak.migrate() first', 'run `agentkey migrate` first');
  if (err instanceof UserError || err instanceof StartupError || err instanceof AgentKeyError) return err.message;
  if (err instanceof Error) return `${err.message} (unexpected; please report it)`;
  return String(err);
}

