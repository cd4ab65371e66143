import { AgentKeyError } from '../errors.js';
import { MAX_TOTAL_MICROS, microsToCents } from '../money.js';
import { isDatabaseTimeout } from './db.js';

/**
 * What a storage call was: a 'spend' step (a charge, hold, settle or adjustment), whose
 * amounts are checked before they are sent, so that a number out of range there is a total
 * that would pass BIGINT; or any 'other' call.
 */
export type StorageStep = 'spend' | 'other';

/** SQLSTATEs of a table or function agentkey's migrations have not made yet. */
const MISSING_SCHEMA = new Set(['42P01', '42703', '42883']);
const NUMERIC_OUT_OF_RANGE = '22003';
// 22021/22P05: text the database cannot store (e.g. a NUL character) is the caller's mistake.
const BAD_VALUE = new Set(['22P02', '22003', '22007', '22008', '22009', '22021', '22P05']);

/**
 * A rejection handler for storage calls on `table`: it throws the `AgentKeyError` that the
 * database fault means, with a clear code.
 *
 * @example const row = await store.find({ id }).catch(storageFault(table));
 */
export function storageFault(table: string, step: StorageStep = 'other'): (err: unknown) => never {
  return (err) => {
    throw storageError(err, table, step);
  };
}

/** The `AgentKeyError` a database fault on `table` means (an `AgentKeyError` passes as it is). */
export function storageError(err: unknown, table: string, step: StorageStep = 'other'): AgentKeyError {
  if (err instanceof AgentKeyError) return err;
  const code = sqlState(err);
  if (step === 'spend' && code === NUMERIC_OUT_OF_RANGE) {
    return new AgentKeyError(
      'total_out_of_range',
      `This step would take a total (a key's, an ancestor's or an account's spend, held or overage) past the most the database can count, ${microsToCents(MAX_TOTAL_MICROS)} cents; nothing was changed.`,
      { cause: err },
    );
  }
  const detail = err instanceof Error ? err.message : String(err);
  if (typeof code === 'string' && MISSING_SCHEMA.has(code)) {
    return new AgentKeyError('not_migrated', `The table ${table} is missing agentkey's columns (${detail}); run ak.migrate() first.`, { cause: err });
  }
  if (isDatabaseTimeout(err)) {
    return new AgentKeyError('storage_timeout', `The database gave up waiting within timeoutMs (${detail}); nothing was changed, so try again later.`, { cause: err });
  }
  if (typeof code === 'string' && BAD_VALUE.has(code)) {
    return new AgentKeyError('invalid_argument', `A value does not fit the ${table} table: ${detail}.`, { cause: err });
  }
  return new AgentKeyError('storage_error', `The database call failed: ${detail}.`, { cause: err });
}

/** A data error (SQLSTATE class 22): the database refused a value, and the statement wrote nothing. */
export function isDataError(err: unknown): boolean {
  const code = sqlState(err);
  return typeof code === 'string' && code.startsWith('22');
}

/** A step that could not take the rows it needs within its time: the database left everything as it was. */
export function lockedOut(timeoutMs: number): AgentKeyError {
  return new AgentKeyError(
    'storage_timeout',
    `The key, account or reservation stayed locked by another transaction for timeoutMs (${timeoutMs} ms); nothing was changed, so try again later.`,
  );
}

function sqlState(err: unknown): unknown {
  return (err as { code?: unknown } | null)?.code;
}
