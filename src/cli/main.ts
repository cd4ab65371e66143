// The program: the command tree as commander declares it, in the order `agentkey --help`
// lists it, so each command's options sit beside its action; the keys commands are in
// keys.ts, what every command shares in common.ts.
import { createRequire } from 'node:module';
import { Command, Option } from 'commander';
import { pino } from 'pino';
import { AgentKey } from '../agentkey.js';
import { AgentKeyError } from '../errors.js';
import { rotateAdminKey } from '../server/admin-key.js';
import { startServer } from '../server/serve.js';
import { type Upstream, describeUpstreams, upstreamsFromEnv } from '../proxy/index.js';
import { StartupError, openStorage } from '../server/storage.js';
import {
  type Common,
  UserError,
  cents,
  json,
  list,
  out,
  progress,
  storageOptions,
  tableOption,
  wholeNumber,
  withAgentKey,
  withCommon,
  withStorage,
} from './common.js';
import { accountDetails, printable } from './format.js';
import { concurrencyOrNone, noneAsNull, rateLimitOrNone } from './common.js';
import { rateLimitText } from './format.js';

import { addWebhookCommands } from './webhooks.js';
import { addReportCommands } from './reports.js';
import { addKeysCommands, bothAlerts } from './keys.js';
import { type AlertsFlag, ALERTS_HELP, BUDGETS_HELP, addAlertsCommands, alertPercents, alertsOption, budgetWindows, budgetsAlone } from './windows.js';
import type { BudgetWindowInput } from '../types.js';

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
    .addOption(
      new Option('--direct-url <url>', "a direct (not pooled) URL of the database, where the key cache listens for changes when DATABASE_URL goes through a pooler such as PgBouncer").env(
        'AGENTKEY_DIRECT_URL',
      ),
    )
    .addOption(new Option('--read-url <url>', 'a read replica of the database, for validations the key cache cannot answer').env('AGENTKEY_READ_URL'))
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
    .option('--no-webhooks', 'do not run the webhook deliverer here (another process delivers; env AGENTKEY_WEBHOOKS=off)')
    .addOption(
      new Option('--webhook-retry-for <duration>', "how long a webhook delivery is retried before it is marked failed, e.g. '24h'")
        .env('AGENTKEY_WEBHOOK_RETRY_FOR')
        .default('24h'),
    )
    .addOption(
      new Option('--webhook-timeout-ms <ms>', 'the bound of one webhook request')
        .env('AGENTKEY_WEBHOOK_TIMEOUT_MS')
        .default(10_000)
        .argParser(wholeNumber('webhook timeout', 1, 300_000)),
    )
    // --- The LLM proxy (issue 18): mounted when an upstream's key is in the environment (never on the command line). ---
    .addOption(new Option('--openai-base-url <url>', 'base URL of the proxy\'s "openai" upstream (its key: AGENTKEY_OPENAI_API_KEY or OPENAI_API_KEY)').env('AGENTKEY_OPENAI_BASE_URL'))
    .addOption(new Option('--anthropic-base-url <url>', 'base URL of the proxy\'s "anthropic" upstream (its key: AGENTKEY_ANTHROPIC_API_KEY or ANTHROPIC_API_KEY)').env('AGENTKEY_ANTHROPIC_BASE_URL'))
    .option('--no-proxy', 'do not mount the LLM proxy even when an upstream key is set (env AGENTKEY_PROXY=off)')
    .addOption(new Option('--proxy-scope <scope>', 'the scope a key needs to call the LLM proxy').env('AGENTKEY_PROXY_SCOPE').default('proxy.chat'))
    .addOption(new Option('--proxy-hold-ttl <duration>', "how long a proxy call's hold lives if the service stops mid-call").env('AGENTKEY_PROXY_HOLD_TTL').default('15m'))
    .addOption(
      new Option('--proxy-timeout-ms <ms>', 'the longest the proxy waits for an upstream to answer, and then between two chunks of its answer')
        .env('AGENTKEY_PROXY_TIMEOUT_MS')
        .default(600_000)
        .argParser(wholeNumber('proxy timeout', 1, 3_600_000)),
    )
    // --- end of the LLM proxy's options ---
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
        'only its hash; `agentkey admin-key rotate` replaces it.\n\n' +
        'The LLM proxy (/proxy/<upstream>/v1/...) is mounted for each upstream whose key is set:\n' +
        'AGENTKEY_OPENAI_API_KEY (or OPENAI_API_KEY), AGENTKEY_ANTHROPIC_API_KEY (or ANTHROPIC_API_KEY),\n' +
        'and AGENTKEY_UPSTREAMS, JSON of more by name, e.g.\n' +
        '{"groq":{"flavor":"openai","baseUrl":"https://api.groq.com/openai","apiKeyEnv":"GROQ_API_KEY"}}.',
    )
    .action(async (o: Common & { port: number; host: string; directUrl?: string; readUrl?: string; selfServe?: boolean; signupScopes?: string[]; signupWithoutEmail?: boolean; bodyLimit: number; timeoutMs: number; logLevel: string; webhooks: boolean; webhookRetryFor: string; webhookTimeoutMs: number } & ProxyFlags) => {
      // Synchronous writes: the last lines before process.exit() ('stopped') must not be lost.
      const selfServe = o.selfServe === true || envFlag('AGENTKEY_SELF_SERVE');
      const withoutEmail = o.signupWithoutEmail === true || envFlag('AGENTKEY_SIGNUP_WITHOUT_EMAIL');
      const logger = pino({ level: o.logLevel, base: { service: 'agentkey' } }, pino.destination({ dest: 1, sync: true }));
      const upstreams = proxyUpstreams(o);
      const server = await progress(o.databaseUrl ? 'Connecting to PostgreSQL…' : `Opening ${o.dataDir}…`, () =>
        startServer({
          ...storageOptions(o),
          ...(o.directUrl ? { directUrl: o.directUrl } : {}),
          ...(o.readUrl ? { readUrl: o.readUrl } : {}),
          port: o.port,
          host: o.host,
          adminKey: process.env.AGENTKEY_ADMIN_KEY,
          selfServe: selfServe
            ? { ...(o.signupScopes ? { signupScopes: o.signupScopes } : {}), ...(withoutEmail ? { requireEmailForSignup: false } : {}) }
            : false,
          bodyLimitBytes: o.bodyLimit,
          timeoutMs: o.timeoutMs,
          logger,
          proxy: upstreams ? { upstreams, scope: o.proxyScope, holdTtl: o.proxyHoldTtl, timeoutMs: o.proxyTimeoutMs } : false,
          webhooks:
            o.webhooks === false || /^(off|false|0|no)$/i.test(process.env.AGENTKEY_WEBHOOKS ?? '')
              ? false
              : { retryFor: o.webhookRetryFor, timeoutMs: o.webhookTimeoutMs },
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
      if (server.connection) {
        // Which mode the cache runs in, and why: a warning when another instance's changes can only show late.
        const { summary, ...connection } = server.connection;
        logger[connection.pooled && !connection.directUrl ? 'warn' : 'info']({ connection }, summary);
      }
      if (upstreams) {
        // Which upstreams, where: never their keys.
        const mounted = describeUpstreams(upstreams);
        logger.info({ proxy: mounted }, `LLM proxy at ${server.url}/proxy/<upstream>: ${mounted.map((u) => `${u.name} (${u.flavor}, ${u.baseUrl})`).join(', ')}`);
      }
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
        const ak = new AgentKey({ pool: storage.pool, actor: 'cli', ...table });
        const applied = await progress('Migrating…', () => ak.migrate());
        await ak.close();
        if (o.json) json({ applied });
        else out(applied.length ? `Applied migrations ${applied.join(', ')} on ${storage.where}.` : `Already up to date on ${storage.where}.`);
      } finally {
        await storage.close();
      }
    });

  addKeysCommands(program);
  // Webhooks and the outbox.
  addWebhookCommands(program);

  const accounts = program.command('accounts').description("accounts' ceilings and rate limits");
  withCommon(accounts.command('budget'))
    .description("show an account's ceiling and its windows, set it with --set-cents or --budgets, or remove it with --clear")
    .argument('<accountId>', 'account id')
    .option('--set-cents <cents>', 'set the ceiling, in cents', cents)
    .addOption(new Option('--period <period>', "reset interval for --set-cents (default: 'lifetime')").choices(['day', 'week', 'month', 'lifetime']))
    .option('--budgets <windows>', `${BUDGETS_HELP}; the first is the ceiling`, budgetWindows)
    .option('--alerts <percents>', `${ALERTS_HELP}; with --set-cents or --budgets`, alertPercents)
    .option('--no-alerts', 'write no alert events for this account (as --alerts none)')
    .option('--clear', 'remove the ceiling and its windows')
    .action(async (accountId: string, o: Common & { setCents?: number; period?: 'day' | 'week' | 'month' | 'lifetime'; clear?: boolean; budgets?: BudgetWindowInput[]; alerts?: AlertsFlag | false }, cmd: Command) => {
      budgetsAlone(o, [['--set-cents', o.setCents !== undefined], ['--period', o.period !== undefined], ['--clear', o.clear === true]]);
      bothAlerts(cmd);
      const setting = o.setCents !== undefined || o.budgets !== undefined;
      if (o.clear && o.setCents !== undefined) throw new UserError('Use --set-cents or --clear, not both.');
      if (o.period !== undefined && o.setCents === undefined) throw new UserError('--period goes with --set-cents.');
      if (o.alerts !== undefined && !setting) throw new UserError('--alerts and --no-alerts go with --set-cents or --budgets.');
      await withAgentKey(o, setting ? 'create' : o.clear ? 'change' : 'read', async (ak) => {
        if (o.clear) {
          const removed = await ak.clearAccountBudget(accountId);
          if (o.json) return json({ accountId, removed });
          return out(removed ? `Removed the ceiling of ${accountId}.` : `${accountId} had no ceiling.`);
        }
        const budget =
          o.budgets !== undefined
            ? await ak.setAccountBudget(accountId, { budgets: o.budgets, ...alertsOption(o.alerts) })
            : o.setCents !== undefined
              ? await ak.setAccountBudget(accountId, {
                  budgetCents: o.setCents,
                  budgetPeriod: o.period === 'lifetime' || o.period === undefined ? null : o.period,
                  ...alertsOption(o.alerts),
                })
              : await ak.getAccountBudget(accountId);
        if (o.json) return json(budget);
        out(budget ? accountDetails(budget) : `${accountId} has no ceiling; set one with --set-cents.`);
      });
    });

  // Rate limits of an account.
  withCommon(accounts.command('rate-limit'))
    .description("show an account's rate and concurrency limits (over all its keys), set them with --set / --concurrency, or remove them with --clear")
    .argument('<accountId>', 'account id')
    .option('--set <requests/window>', "at most this many requests per window, e.g. '600/1m'; 'none' removes it", rateLimitOrNone)
    .option('--concurrency <n>', "at most this many requests in flight; 'none' removes it", concurrencyOrNone)
    .option('--clear', 'remove both limits')
    .action(async (accountId: string, o: Common & { set?: { requests: number; per: string } | 'none'; concurrency?: number | 'none'; clear?: boolean }) => {
      const setting = o.set !== undefined || o.concurrency !== undefined;
      if (o.clear && setting) throw new UserError('Use --set/--concurrency or --clear, not both.');
      await withAgentKey(o, setting || o.clear ? 'change' : 'read', async (ak) => {
        if (o.clear) {
          const removed = await ak.clearAccountRateLimit(accountId);
          if (o.json) return json({ accountId, removed });
          return out(removed ? `Removed the rate limits of ${accountId}.` : `${accountId} had no rate limits.`);
        }
        const limits = setting
          ? await ak.setAccountRateLimit(accountId, {
              ...(o.set !== undefined ? { rateLimit: noneAsNull(o.set) } : {}),
              ...(o.concurrency !== undefined ? { concurrency: noneAsNull(o.concurrency) } : {}),
            })
          : await ak.getAccountRateLimit(accountId);
        if (o.json) return json(limits);
        if (!limits) return out(`${accountId} has no rate limits; set one with --set or --concurrency.`);
        out(`rate limit   ${rateLimitText(limits.rateLimit)}\nconcurrency  ${limits.concurrency === null ? '-' : `${limits.concurrency} in flight`}`);
      });
    });
  addAlertsCommands(program);

  // usage and ledger: reports.ts.
  addReportCommands(program);

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
/** The serve command's LLM proxy flags. */
type ProxyFlags = { proxy: boolean; openaiBaseUrl?: string; anthropicBaseUrl?: string; proxyScope: string; proxyHoldTtl: string; proxyTimeoutMs: number };

/** The proxy's upstreams from the environment and the flags, or null when it is not to be mounted. */
function proxyUpstreams(o: ProxyFlags): Record<string, Upstream> | null {
  if (o.proxy === false || /^(off|false|0|no)$/i.test(process.env.AGENTKEY_PROXY ?? '')) return null;
  const upstreams = upstreamsFromEnv(process.env, {
    ...(o.openaiBaseUrl ? { openai: o.openaiBaseUrl } : {}),
    ...(o.anthropicBaseUrl ? { anthropic: o.anthropicBaseUrl } : {}),
  });
  return Object.keys(upstreams).length > 0 ? upstreams : null;
}

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

