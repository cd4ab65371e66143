import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';
import { runFile } from './sql/render.js';
import ledgerKinds from './sql/migrations/006_ledger_kinds.sql';
import overage from './sql/migrations/006_overage.sql';
import opening from './sql/migrations/opening_balances.sql';

/** Ledger kinds that change a key's spend; the others (hold, release, expire) change what is held. */
export const SPEND_KINDS = ['charge', 'commit', 'adjust', 'reset'] as const;

/**
 * Every kind of ledger row (the check in sql/migrations/002_ledger.sql and 006_ledger_kinds.sql
 * admits these). 'overage' is the part of a commit's real cost that no budget over the key
 * could take: recorded, never counted toward a cap.
 */
export const LEDGER_KINDS = ['charge', 'hold', 'commit', 'release', 'expire', 'reset', 'adjust', 'overage'] as const;
export type LedgerKind = (typeof LEDGER_KINDS)[number];

/** Whether the ledger's kind check admits every kind (a ledger made before version 6 lacks 'overage'). */
export function ledgerKindsCurrent(checks: readonly string[]): boolean {
  const kind = checks.filter((c) => /\bkind\b/.test(c));
  return kind.length > 0 && kind.every((c) => LEDGER_KINDS.every((k) => c.includes(`'${k}'`)));
}

/**
 * Version 6: overage. The new columns, then the ledger's kind check made again: the old one
 * (unnamed before version 6) is found in the catalog and dropped by its name.
 */
export async function createOverage(tx: Db, t: TableNames): Promise<void> {
  await runFile(tx, t, overage);
  const old = await tx.query<{ conname: string }>(
    `SELECT conname FROM pg_constraint WHERE conrelid = to_regclass($1) AND contype = 'c' AND pg_get_constraintdef(oid) ~ '\\mkind\\M'`,
    [t.ledger],
  );
  for (const c of old) await tx.query(`ALTER TABLE ${t.ledger} DROP CONSTRAINT "${c.conname.replace(/"/g, '""')}"`);
  await runFile(tx, t, ledgerKinds);
}

/** Spend a key already had that the ledger does not explain becomes one opening row (see the file). */
export async function openingBalances(tx: Db, t: TableNames): Promise<void> {
  await runFile(tx, t, opening);
}
