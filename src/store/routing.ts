// Which account each step of a batch belongs to. The spend function works inside one
// account (sql/functions/spend_many.sql takes it first, and every statement in it names
// it), so a batch is sent as one call per account. An account is found once per key or
// hold and remembered: a key's account never changes, nor a hold's.
import type { Db } from './db.js';
import type { TableNames } from './identifiers.js';

/** What a step names: a key (by hash, subject or id) or a hold. */
export type StepRef = { hash: string } | { subject: string } | { id: number } | { hold: string };

/** How many refs' accounts are remembered; past this the oldest are forgotten. */
const REMEMBERED = 50_000;

export interface RefAccount {
  /** The account ('' for a key without one), or null when no key or hold answers to the ref. */
  account: string | null;
  /** Whether it came from memory (a subject may since name a key of another account). */
  remembered: boolean;
}

export class AccountRouting {
  private readonly known = new Map<string, string>();

  constructor(private readonly t: TableNames) {}

  /**
   * The account of each ref: remembered, else read in one statement for all the others. A
   * plain read with no lock: the spend function finds each ref again inside the account.
   */
  async accountsOf(refs: readonly StepRef[], db: Db): Promise<RefAccount[]> {
    const out: (RefAccount | null)[] = refs.map((ref) => {
      const account = this.known.get(refName(ref));
      return account === undefined ? null : { account, remembered: true };
    });
    const unknown = new Map<string, StepRef>();
    refs.forEach((ref, i) => {
      if (out[i] === null) unknown.set(refName(ref), ref);
    });
    if (unknown.size > 0) {
      const asked = [...unknown.values()];
      const rows = await db.query<{ ord: number | string; account_id: string | null }>(
        `SELECT u.ord, a.account_id FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[]) WITH ORDINALITY AS u(h, s, kid, hid, ord)
         LEFT JOIN LATERAL (
           SELECT COALESCE(account_id::text, '') AS account_id FROM ${this.t.table} WHERE key_hash = u.h
           UNION ALL SELECT COALESCE(account_id::text, '') FROM ${this.t.table} WHERE external_subject = u.s
           UNION ALL SELECT COALESCE(account_id::text, '') FROM ${this.t.table} WHERE id = u.kid
           UNION ALL SELECT account_id FROM ${this.t.holds} WHERE id = u.hid
           UNION ALL SELECT COALESCE(account_id::text, '') FROM ${this.t.table}
             WHERE previous_key_hash = u.h AND previous_key_valid_until > clock_timestamp()
           LIMIT 1) a ON true`,
        [
          asked.map((r) => ('hash' in r ? r.hash : null)),
          asked.map((r) => ('subject' in r ? r.subject : null)),
          asked.map((r) => ('id' in r ? r.id : null)),
          asked.map((r) => ('hold' in r ? r.hold : null)),
        ],
      );
      const found = new Map<string, string | null>();
      for (const row of rows) {
        const ref = asked[Number(row.ord) - 1] as StepRef;
        found.set(refName(ref), row.account_id);
        if (row.account_id !== null) this.learn(ref, row.account_id);
      }
      refs.forEach((ref, i) => {
        if (out[i] === null) out[i] = { account: found.get(refName(ref)) ?? null, remembered: false };
      });
    }
    return out as RefAccount[];
  }

  /** Remembers a ref's account (from a lookup, or from what the spend function answered). */
  learn(ref: StepRef, account: string): void {
    const name = refName(ref);
    if (this.known.get(name) === account) return;
    this.known.delete(name);
    this.known.set(name, account);
    if (this.known.size > REMEMBERED) this.known.delete(this.known.keys().next().value as string);
  }

  /** Forgets a ref whose remembered account no longer holds it. */
  forget(ref: StepRef): void {
    this.known.delete(refName(ref));
  }
}

/**
 * The positions of a batch's items grouped by account, groups in account order (the one
 * order in which a transaction of several takes their locks). Items of no account join the
 * first group: the spend function answers them (invalid, not_found) as it would anyway.
 */
export function groupByAccount(accounts: readonly (string | null)[]): { account: string | null; at: number[] }[] {
  const groups = new Map<string, number[]>();
  const none: number[] = [];
  accounts.forEach((a, i) => {
    if (a === null) none.push(i);
    else {
      const at = groups.get(a);
      if (at) at.push(i);
      else groups.set(a, [i]);
    }
  });
  const sorted = [...groups.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([account, at]) => ({ account: account as string | null, at }));
  if (none.length === 0) return sorted;
  const first = sorted[0];
  if (!first) return [{ account: null, at: none }];
  first.at = [...first.at, ...none].sort((a, b) => a - b);
  return sorted;
}

/** A ref as one string: the same ref, the same name. */
export function refName(ref: StepRef): string {
  return 'hash' in ref ? `h${ref.hash}` : 'subject' in ref ? `s${ref.subject}` : 'hold' in ref ? `r${ref.hold}` : `i${ref.id}`;
}
