import type { Db } from './db.js';

/** Which rows of an append-only log (the ledger, the event log) to read, newest first. */
export interface LogPage {
  keyId: number | null;
  accountId: string | null;
  /** Only rows with a smaller id (for paging: the last id a caller got). */
  before: number | null;
  limit: number;
}

/** `columns` of the rows of `table` that `page` names, newest first: the one query both logs are read with. */
export function newestFirst<R>(db: Db, table: string, columns: string, page: LogPage): Promise<R[]> {
  const where: string[] = [];
  const params: unknown[] = [page.limit];
  if (page.keyId !== null) where.push(`key_id = $${params.push(page.keyId)}`);
  if (page.accountId !== null) where.push(`account_id = $${params.push(page.accountId)}`);
  if (page.before !== null) where.push(`id < $${params.push(page.before)}`);
  return db.query<R>(`SELECT ${columns} FROM ${table} ${where.length ? `WHERE ${where.join(' AND ')}` : ''} ORDER BY id DESC LIMIT $1`, params);
}
