// The `keys` commands, in the order `agentkey keys --help` lists them: create, list, show,
// update, rotate, revoke, events.
import { type Command, InvalidArgumentError, Option } from 'commander';
import { durationMs } from '../time.js';
import { type Common, UserError, anId, cents, json, list, out, wholeNumber, withAgentKey, withCommon } from './common.js';
import { concurrencyArg, concurrencyOrNone, noneAsNull, rateLimitArg, rateLimitOrNone } from './common.js';
import { eventLines, keyDetails, keysList, when } from './format.js';
import { type AlertsFlag, ALERTS_HELP, BUDGETS_HELP, alertPercents, alertsOption, budgetWindows, budgetsAlone } from './windows.js';
import type { BudgetWindowInput } from '../types.js';

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
  metadata?: Record<string, unknown> | false;
  cascade?: boolean;
  rateLimit?: { requests: number; per: string } | 'none';
  concurrency?: number | 'none';
  budgets?: BudgetWindowInput[];
  alerts?: AlertsFlag | false;
}

/** --metadata: a JSON object (the library checks its size and content). */
function metadataObject(value: string): Record<string, unknown> {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value);
  } catch {
    throw new InvalidArgumentError('expected a JSON object, such as \'{"team":"search"}\'.');
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new InvalidArgumentError('expected a JSON object, such as \'{"team":"search"}\'.');
  }
  return parsed as Record<string, unknown>;
}

/** The words the program was given (commander keeps them on the root command). */
function rawArgs(cmd: Command): string[] {
  let root = cmd;
  while (root.parent) root = root.parent;
  return (root as unknown as { rawArgs: string[] }).rawArgs ?? [];
}

/** --alerts and --no-alerts together: commander would keep the last; say it instead. */
export function bothAlerts(cmd: Command): void {
  const args = rawArgs(cmd);
  if (args.includes('--no-alerts') && args.some((a) => a === '--alerts' || a.startsWith('--alerts='))) {
    throw new UserError('Use --alerts or --no-alerts, not both.');
  }
}

/** The longest --grace: the library's limit, checked before the database opens. */
const MAX_GRACE_MS = 7 * 86_400_000;

/** --grace: 0 (or '0s', '0m'...) for none, else a duration of at most 7 days, passed on as given. */
function grace(value: string): string | 0 {
  if (/^\s*0(s|m|h|d|w|mo)?\s*$/.test(value)) return 0;
  try {
    durationMs(value, '--grace', MAX_GRACE_MS);
  } catch {
    throw new InvalidArgumentError("expected 0 or a duration of at most 7 days, such as '30s', '15m', '1h' or '7d'.");
  }
  return value.trim();
}

export function addKeysCommands(program: Command): void {
  const keys = program.command('keys').description('create, list, show, update, rotate and revoke keys, and their event log');
  withCommon(keys.command('create'))
    .description('create a key; its raw value is printed once')
    .requiredOption('--account <id>', 'account the key belongs to')
    .option('--name <name>', 'label')
    .option('--scopes <scopes>', "comma-separated scopes, e.g. 'proxy.chat,usage.read' (default: unlimited)", list)
    .option('--budget-cents <cents>', 'spending cap in cents (5000 is $50)', cents)
    .addOption(new Option('--period <period>', 'budget reset interval').choices(['day', 'month']))
    .option('--expires-in <duration>', "'30m', '1h', '7d', '1mo'")
    .option('--delegated-by <user>', 'the human who authorized this key')
    .option('--parent <id>', 'make it a child of this key', anId('parent'))
    .option('--metadata <json>', 'a JSON object kept with the key, e.g. \'{"team":"search"}\'', metadataObject)
    .option('--rate-limit <requests/window>', "at most this many requests per window, e.g. '60/1m' (window '1s' to '1d')", rateLimitArg)
    .option('--concurrency <n>', 'at most this many requests in flight through the middleware', concurrencyArg)
    .option('--budgets <windows>', BUDGETS_HELP, budgetWindows)
    .option('--alerts <percents>', ALERTS_HELP, alertPercents)
    .option('--no-alerts', 'write no alert events for this key (as --alerts none)')
    .action(async (o: Common & { account: string; name?: string; scopes?: string[]; budgetCents?: number; period?: 'day' | 'month'; expiresIn?: string; delegatedBy?: string; parent?: number; metadata?: Record<string, unknown>; rateLimit?: { requests: number; per: string }; concurrency?: number; budgets?: BudgetWindowInput[]; alerts?: AlertsFlag | false }, cmd: Command) => {
      budgetsAlone(o, [['--budget-cents', o.budgetCents !== undefined], ['--period', o.period !== undefined]]);
      bothAlerts(cmd);
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
          ...(o.metadata !== undefined ? { metadata: o.metadata } : {}),
          ...(o.rateLimit !== undefined ? { rateLimit: o.rateLimit } : {}),
          ...(o.concurrency !== undefined ? { concurrency: o.concurrency } : {}),
          ...(o.budgets !== undefined ? { budgets: o.budgets } : {}),
          ...alertsOption(o.alerts),
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
    .option('--parent <id>', 'only children of this key', anId('parent'))
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
        else out(keysList(list));
      });
    });

  withCommon(keys.command('show'))
    .description('one key, without its secret')
    .argument('<id>', 'key id', anId('id'))
    .action(async (id: number, o: Common) => {
      await withAgentKey(o, 'read', async (ak) => {
        const info = await ak.getKey(id);
        if (!info) throw new UserError(`No key has id ${id}.`);
        if (o.json) json(info);
        else out(keyDetails(info));
      });
    });

  withCommon(keys.command('update'))
    .description("change a key's budget, windows, alerts, period, scopes, expiry, name, delegated-by or rate limits (children are never widened past it)")
    .argument('<id>', 'key id', anId('id'))
    .option('--name <name>', 'label')
    .option('--scopes <scopes>', "comma-separated scopes, e.g. 'proxy.chat,usage.read'", list)
    .option('--unlimited-scopes', 'remove the scope list (the key may do anything its parent may)')
    .option('--budget-cents <cents>', 'spending cap in cents; below what was spent leaves nothing to spend', cents)
    .option('--no-budget-cap', 'remove the spending cap')
    .addOption(new Option('--period <period>', "budget reset interval; a new one starts now ('none' removes it)").choices(['day', 'month', 'none']))
    .option('--expires-in <duration>', "'30m', '1h', '7d', '1mo' from now")
    .option('--no-expiry', 'remove the expiry')
    .option('--delegated-by <user>', 'the human who authorized this key')
    .option('--metadata <json>', "replace the key's metadata with this JSON object", metadataObject)
    .option('--no-metadata', "remove the key's metadata")
    .option('--rate-limit <requests/window>', "at most this many requests per window, e.g. '60/1m'; 'none' removes it", rateLimitOrNone)
    .option('--concurrency <n>', "at most this many requests in flight; 'none' removes it", concurrencyOrNone)
    .option('--budgets <windows>', `${BUDGETS_HELP}; replaces every window`, budgetWindows)
    .option('--alerts <percents>', ALERTS_HELP, alertPercents)
    .option('--no-alerts', 'write no alert events for this key (as --alerts none)')
    .option('--cascade', 'narrow the keys under it too, where the change would leave one wider than its parent')
    .action(async (id: number, o: Common & UpdateFlags, cmd: Command) => {
      budgetsAlone(o, [['--budget-cents', o.budgetCents !== undefined], ['--no-budget-cap', o.budgetCap === false], ['--period', o.period !== undefined]]);
      bothAlerts(cmd);
      if (o.scopes !== undefined && o.unlimitedScopes) throw new UserError('Use --scopes or --unlimited-scopes, not both.');
      if (o.budgetCents !== undefined && o.budgetCap === false) throw new UserError('Use --budget-cents or --no-budget-cap, not both.');
      if (o.expiresIn !== undefined && o.expiry === false) throw new UserError('Use --expires-in or --no-expiry, not both.');
      const args = rawArgs(cmd);
      if (args.includes('--no-metadata') && args.some((a) => a === '--metadata' || a.startsWith('--metadata='))) {
        throw new UserError('Use --metadata or --no-metadata, not both.');
      }
      const changes = {
        ...(o.name !== undefined ? { name: o.name } : {}),
        ...(o.scopes !== undefined ? { scopes: o.scopes } : o.unlimitedScopes ? { scopes: null } : {}),
        ...(o.budgetCents !== undefined ? { budgetCents: o.budgetCents } : o.budgetCap === false ? { budgetCents: null } : {}),
        ...(o.period !== undefined ? { budgetPeriod: o.period === 'none' ? null : o.period } : {}),
        ...(o.expiresIn !== undefined ? { expiresIn: o.expiresIn } : o.expiry === false ? { expiresIn: null } : {}),
        ...(o.delegatedBy !== undefined ? { delegatedBy: o.delegatedBy } : {}),
        ...(o.metadata === false ? { metadata: null } : o.metadata !== undefined ? { metadata: o.metadata } : {}),
        ...(o.rateLimit !== undefined ? { rateLimit: noneAsNull(o.rateLimit) } : {}),
        ...(o.concurrency !== undefined ? { concurrency: noneAsNull(o.concurrency) } : {}),
        ...(o.budgets !== undefined ? { budgets: o.budgets } : {}),
        ...alertsOption(o.alerts),
      };
      if (Object.keys(changes).length === 0) throw new UserError('Nothing to change: give at least one of the options (see --help).');
      await withAgentKey(o, 'change', async (ak) => {
        const info = await ak.update(id, changes, o.cascade ? { cascade: true } : {});
        if (o.json) return json(info);
        out(`Updated key ${id}.`);
        out(keyDetails(info));
      });
    });

  withCommon(keys.command('rotate'))
    .description('give a key a new secret, printed once (same id, budget, spend and children); the old one works for --grace more')
    .argument('<id>', 'key id', anId('id'))
    .option('--grace <duration>', "how long the old secret keeps working: '30s', '15m', '1h', up to '7d' (default: 0, it stops at once)", grace)
    .option('--account <id>', 'rotate it only if it belongs to this account')
    .action(async (id: number, o: Common & { grace?: string | 0; account?: string }) => {
      await withAgentKey(o, 'change', async (ak) => {
        const rotated = await ak.rotate(id, { gracePeriod: o.grace ?? 0, ...(o.account !== undefined ? { accountId: o.account } : {}) });
        if (o.json) return json(rotated);
        const previous =
          rotated.previousKeyValidUntil === null
            ? 'The previous secret stopped working at once.'
            : `The previous secret works until ${when(rotated.previousKeyValidUntil)}.`;
        out(`Rotated key ${id}. Its new raw value is shown this once; store it now:\n\n  ${rotated.key}\n\n${previous}`);
      });
    });

  withCommon(keys.command('revoke'))
    .description('revoke a key and every key under it')
    .argument('<id>', 'key id', anId('id'))
    .action(async (id: number, o: Common) => {
      await withAgentKey(o, 'change', async (ak) => {
        if (!(await ak.getKey(id))) throw new UserError(`No key has id ${id}.`);
        const revoked = await ak.revoke(id);
        const info = await ak.getKey(id);
        if (o.json) return json({ id, revoked, key: info });
        out(revoked ? `Revoked key ${id} and every key under it.` : `Key ${id} was already revoked.`);
      });
    });

  withCommon(keys.command('events'))
    .description("the event log, newest first: each key created, updated, rotated or revoked, each ceiling set and each adjustment, and who made it")
    .argument('[id]', 'only this key', anId('id'))
    .option('--account <id>', 'only this account')
    .option('--before <event id>', 'only events older than this one (to page on: the last id shown)', anId('before'))
    .option('--limit <n>', 'at most this many', wholeNumber('limit', 1, 1000), 100)
    .action(async (id: number | undefined, o: Common & { account?: string; before?: number; limit: number }) => {
      await withAgentKey(o, 'read', async (ak) => {
        const events = await ak.keyEvents({
          ...(id !== undefined ? { keyId: id } : {}),
          ...(o.account !== undefined ? { accountId: o.account } : {}),
          ...(o.before !== undefined ? { before: o.before } : {}),
          limit: o.limit,
        });
        if (o.json) return json(events);
        out(eventLines(events));
        const last = events.at(-1);
        if (events.length === o.limit && last) out(`(older events: --before ${last.id})`);
      });
    });
}
