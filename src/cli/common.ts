// What every command shares: where the data is (options, opening it), how a result is
// printed, the one-line user error, and the argument parsers. Imports no command.
import { Command, InvalidArgumentError, Option } from 'commander';
import yoctoSpinner from 'yocto-spinner';
import { AgentKey } from '../agentkey.js';
import { type Storage, openStorage } from '../server/storage.js';
import { toDb } from '../store/db.js';
import { keysTableExists } from '../store/catalog.js';
import { tableNames } from '../store/identifiers.js';
import { parseInstant } from '../time.js';
import { MAX_CONCURRENCY, concurrencyOption, rateLimitOption } from '../options.js';
import { printableJson, printableLines } from './format.js';

export interface Common {
  dataDir: string;
  databaseUrl?: string;
  table?: string;
  json?: boolean;
}

/** A mistake the user can fix: shown as one line, exit code 1. */
export class UserError extends Error {}

// Whatever is shown may hold text from the database (names, ids...): unprintable characters are escaped.
export const out = (text: string) => process.stdout.write(`${printableLines(text.endsWith('\n') ? text.slice(0, -1) : text)}\n`);
export const json = (value: unknown) => process.stdout.write(`${printableJson(value)}\n`);

/** Shows a spinner on a terminal while `work` runs (nothing when stderr is piped). */
export async function progress<T>(text: string, work: () => Promise<T>): Promise<T> {
  if (!process.stderr.isTTY) return work();
  const spinner = yoctoSpinner({ text, stream: process.stderr }).start();
  try {
    return await work();
  } finally {
    spinner.stop();
    spinner.clear();
  }
}

export function storageOptions(o: Common, create = true) {
  return { databaseUrl: o.databaseUrl || undefined, dataDir: o.dataDir, create };
}

/** The --table option, checked before any database is opened. */
export function tableOption(o: Common): { tableName?: string } {
  if (o.table === undefined) return {};
  tableNames(o.table);
  return { tableName: o.table };
}

/**
 * What a command does to the tables: 'read' needs them and never creates anything (no
 * data directory, no table); 'change' needs them too; 'create' may be the first write.
 */
export type Access = 'read' | 'change' | 'create';

/**
 * Opens the storage and an AgentKey on it, runs `fn`, and always closes both. The
 * AgentKey's changes are recorded as the CLI's in the event log.
 */
export async function withAgentKey<T>(o: Common, access: Access, fn: (ak: AgentKey, storage: Storage) => Promise<T>): Promise<T> {
  const table = tableOption(o);
  const storage = await progress(o.databaseUrl ? 'Connecting to PostgreSQL…' : `Opening ${o.dataDir}…`, () =>
    openStorage(storageOptions(o, access === 'create')),
  );
  const ak = new AgentKey({ pool: storage.pool, actor: 'cli', ...table });
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

export function wholeNumber(name: string, min: number, max: number) {
  return (value: string) => {
    if (!/^-?\d+$/.test(value) || Number(value) < min || Number(value) > max) {
      throw new InvalidArgumentError(`${name} must be a whole number from ${min} to ${max}.`);
    }
    return Number(value);
  };
}

/** A key id (or an event id): a whole number from 1. */
export const anId = (name: string) => wholeNumber(name, 1, Number.MAX_SAFE_INTEGER);

export function cents(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0) throw new InvalidArgumentError('expected a number of cents of at least 0 (5000 is $50).');
  return n;
}

export function list(value: string): string[] {
  return value.split(',').map((s) => s.trim()).filter((s) => s !== '');
}

/** '7d', '12h', '2w' (before now), or an ISO date or time. */
export function instant(value: string): Date {
  const rel = /^(\d+)([hdw])$/.exec(value);
  if (rel) return new Date(Date.now() - Number(rel[1]) * { h: 3_600_000, d: 86_400_000, w: 604_800_000 }[rel[2] as 'h' | 'd' | 'w']);
  try {
    return parseInstant(value, 'the time');
  } catch {
    throw new InvalidArgumentError("expected a time like '7d', '24h', '2w' or an ISO date such as 2026-11-01.");
  }
}

/** Where the data is: every command's options. */
export function withStorage(cmd: Command): Command {
  return cmd
    .addOption(new Option('--data-dir <dir>', 'embedded database directory').env('AGENTKEY_DATA_DIR').default('./.agentkey'))
    .addOption(new Option('--database-url <url>', 'use PostgreSQL at this URL instead of the embedded database').env('DATABASE_URL'))
    .addOption(new Option('--table <name>', "the keys table (default 'sdk_api_keys')").env('AGENTKEY_TABLE'));
}

/** The options of the commands that print a result: --json beside where the data is. */
export function withCommon(cmd: Command): Command {
  return withStorage(cmd).option('--json', 'print JSON for scripts instead of tables');
}

// Rate limits: --rate-limit <requests>/<per> and --concurrency <n>, checked by the library's
// own rules before the database opens; 'none' (where removing one makes sense) is null.

/** --rate-limit: '60/1m' as { requests: 60, per: '1m' }. */
export function rateLimitArg(value: string): { requests: number; per: string } {
  const m = /^\s*([0-9]{1,10})\s*\/\s*(\S+)\s*$/.exec(value);
  const parsed = m ? { requests: Number(m[1]), per: m[2] as string } : null;
  try {
    if (!parsed) throw new Error();
    rateLimitOption(parsed, '--rate-limit');
  } catch {
    throw new InvalidArgumentError("expected <requests>/<window>, such as '60/1m' (1 to 1000000000 requests per '1s' to '1d').");
  }
  return parsed;
}

/** --rate-limit on update: 'none' removes the limit (kept as 'none': commander turns a null into ''; see noneAsNull). */
export function rateLimitOrNone(value: string): { requests: number; per: string } | 'none' {
  return value.trim() === 'none' ? 'none' : rateLimitArg(value);
}

/** --concurrency: a whole number of requests in flight. */
export function concurrencyArg(value: string): number {
  const n = /^\s*[0-9]{1,7}\s*$/.test(value) ? Number(value) : NaN;
  try {
    concurrencyOption(n, '--concurrency');
  } catch {
    throw new InvalidArgumentError(`expected a whole number of requests in flight from 1 to ${MAX_CONCURRENCY}.`);
  }
  return n;
}

/** --concurrency on update: 'none' removes the limit. */
export function concurrencyOrNone(value: string): number | 'none' {
  return value.trim() === 'none' ? 'none' : concurrencyArg(value);
}

/** A parsed option value with 'none' as null (what the library takes to remove a limit). */
export function noneAsNull<T>(value: T | 'none'): T | null {
  return value === 'none' ? null : value;
}
