/**
 * The workloads run twice, through agentkey and through the baseline (baseline.ts), on the same
 * keys and the same seeded costs: validations of one hot key and of many, charges on one hot
 * key, on many keys and under an account ceiling, and reserve + commit pairs. After each, both
 * sides are checked: nothing overspent, every accepted charge in the ledger, counters equal to
 * the ledger. agentkey's side is read through the library (usage(), listKeys(), audit()).
 */
import type pg from 'pg';
import type { AgentKey } from '../../src/index.js';
import { Plain } from '../baseline.js';
import { CHARGES, PAIRS, SECONDS, type Row, costs, createKeys, drive, freshAgentKey, newRow, picks, record } from '../harness.js';

interface Accepted {
  count: number;
  micros: number;
}

const micros = (cents: number) => Math.round(cents * 10_000);

/** The same keys on both sides: made through create() for agentkey, inserted as the baseline stores them. */
async function keysForBoth(ak: AgentKey, plain: Plain, accountId: string, budgets: (number | null)[]) {
  const made = await createKeys(ak, accountId, budgets);
  await plain.addKeys(made.raws, accountId, budgets);
  return made;
}

/** Overspent keys and accounts, the accepted spend in the ledger, and the audit, for one account of agentkey's. */
async function checkAgentKey(ak: AgentKey, accountId: string) {
  const keys = await ak.listKeys({ accountId, limit: 10_000 });
  const overspent = keys.filter((k) => k.budgetCents !== null && Number(k.spentCents) > k.budgetCents).length;
  const account = await ak.getAccountBudget(accountId);
  const usage = await ak.usage({ accountId });
  const audit = await ak.audit();
  return {
    overspent,
    accountOver: account !== null && Number(account.spentCents) > account.budgetCents ? 1 : 0,
    rows: usage.count,
    sum: micros(Number(usage.totalCents)),
    auditOk: audit.ok,
  };
}

async function spendChecks(row: Row, ak: AgentKey, accountId: string, plain: Plain, ours: Accepted, theirs: Accepted, budgetNote: string) {
  const a = await checkAgentKey(ak, accountId);
  record(row, 'agentkey', a.overspent === 0 && a.accountOver === 0, `nothing overspent (${budgetNote})`);
  record(row, 'agentkey', a.rows === ours.count && a.sum === ours.micros, `ledger has every accepted charge (${a.rows} rows = ${ours.count})`);
  record(row, 'agentkey', a.auditOk, 'counters equal the ledger (audit)');
  const p = await plain.check();
  record(row, 'plain', p.overspent === 0 && p.accountOver === 0, `nothing overspent (${budgetNote})`);
  record(row, 'plain', p.rows === theirs.count && p.sum === theirs.micros, `ledger has every accepted charge (${p.rows} rows = ${theirs.count})`);
  record(row, 'plain', p.mismatched === 0, 'counters equal the ledger');
}

export async function validateHot(pool: pg.Pool) {
  const row = newRow('validate, 1 hot key', 30);
  const ak = await freshAgentKey(pool);
  const plain = new Plain(pool, `plain_${process.pid}_v1`);
  await plain.setup();
  const { raws, ids } = await keysForBoth(ak, plain, 'acct_v1', [null]);
  const key = raws[0] as string;
  let bad = 0;
  row.runs.plain = await drive({ seconds: SECONDS }, async () => {
    if (!(await plain.validate(key))) bad++;
  });
  record(row, 'plain', bad === 0, 'every validation valid');
  bad = 0;
  row.runs.agentkey = await drive({ seconds: SECONDS }, async () => {
    if (!(await ak.validate(key)).valid) bad++;
  });
  record(row, 'agentkey', bad === 0, 'every validation valid');
  const stats = ak.cacheStats();
  record(row, 'agentkey', true, `cache hits ${stats?.hits}, misses ${stats?.misses}`);
  await ak.flush();
  const used = await ak.getKey(ids[0] as number);
  record(row, 'agentkey', (used?.lastUsedAt ?? null) !== null, 'last_used_at written (batched)');
  await ak.close();
}

export async function validateMany(pool: pg.Pool) {
  const n = 10_000;
  const row = newRow('validate, 10,000 keys', null);
  const ak = await freshAgentKey(pool);
  const plain = new Plain(pool, `plain_${process.pid}_v2`);
  await plain.setup();
  const { raws } = await keysForBoth(ak, plain, 'acct_v2', Array(n).fill(null));
  const order = picks(1_000_000, n, 7);
  let bad = 0;
  row.runs.plain = await drive({ seconds: SECONDS }, async (i) => {
    if (!(await plain.validate(raws[order[i % order.length] as number] as string))) bad++;
  });
  record(row, 'plain', bad === 0, 'every validation valid');
  bad = 0;
  row.runs.agentkey = await drive({ seconds: SECONDS }, async (i) => {
    if (!(await ak.validate(raws[order[i % order.length] as number] as string)).valid) bad++;
  });
  record(row, 'agentkey', bad === 0, 'every validation valid');
  const stats = ak.cacheStats();
  record(row, 'agentkey', true, `cache hits ${stats?.hits}, misses ${stats?.misses} (cold start included)`);
  await ak.close();
}

export async function chargeHot(pool: pg.Pool) {
  const row = newRow('charge, 1 hot key', 5);
  const ak = await freshAgentKey(pool);
  const plain = new Plain(pool, `plain_${process.pid}_c1`);
  await plain.setup();
  const amounts = costs(CHARGES, 11);
  const budget = Math.floor(amounts.reduce((s, c) => s + c, 0) * 0.75);
  const key = (await keysForBoth(ak, plain, 'acct_c1', [budget])).raws[0] as string;
  const theirs = { count: 0, micros: 0 };
  row.runs.plain = await drive({ ops: CHARGES }, async (i) => {
    const c = amounts[i] as number;
    if (await plain.charge(key, c)) (theirs.count++, (theirs.micros += c));
  });
  const ours = { count: 0, micros: 0 };
  row.runs.agentkey = await drive({ ops: CHARGES }, async (i) => {
    const c = amounts[i] as number;
    if ((await ak.trackUsage(key, { costCents: c / 10_000 })).success) (ours.count++, (ours.micros += c));
  });
  await spendChecks(row, ak, 'acct_c1', plain, ours, theirs, `budget ${budget / 10_000} cents, 75% of the demand`);
  record(row, 'agentkey', ours.micros <= budget, `accepted ${ours.micros / 10_000} of ${budget / 10_000} cents`);
  await ak.close();
}

export async function chargeMany(pool: pg.Pool) {
  const n = 1_000;
  const row = newRow('charge, 1,000 keys', 1.5);
  const ak = await freshAgentKey(pool);
  const plain = new Plain(pool, `plain_${process.pid}_c2`);
  await plain.setup();
  const amounts = costs(CHARGES, 13);
  const which = picks(CHARGES, n, 17);
  const demand = Array(n).fill(0) as number[];
  which.forEach((k, i) => (demand[k] = (demand[k] as number) + (amounts[i] as number)));
  const budgets = demand.map((d) => Math.floor(d * 0.75));
  const { raws } = await keysForBoth(ak, plain, 'acct_c2', budgets);
  const theirs = { count: 0, micros: 0 };
  row.runs.plain = await drive({ ops: CHARGES }, async (i) => {
    const c = amounts[i] as number;
    if (await plain.charge(raws[which[i] as number] as string, c)) (theirs.count++, (theirs.micros += c));
  });
  const ours = { count: 0, micros: 0 };
  row.runs.agentkey = await drive({ ops: CHARGES }, async (i) => {
    const c = amounts[i] as number;
    if ((await ak.trackUsage(raws[which[i] as number] as string, { costCents: c / 10_000 })).success) (ours.count++, (ours.micros += c));
  });
  await spendChecks(row, ak, 'acct_c2', plain, ours, theirs, 'each key budgeted at 75% of its demand');
  await ak.close();
}

export async function chargeUnderAccount(pool: pg.Pool) {
  const n = 1_000;
  const row = newRow('charge, 1,000 keys under 1 account ceiling', 3);
  const ak = await freshAgentKey(pool);
  const plain = new Plain(pool, `plain_${process.pid}_c3`);
  await plain.setup();
  const amounts = costs(CHARGES, 19);
  const which = picks(CHARGES, n, 23);
  const ceiling = Math.floor(amounts.reduce((s, c) => s + c, 0) * 0.75);
  const { raws } = await keysForBoth(ak, plain, 'acct_c3', Array(n).fill(null));
  await ak.setAccountBudget('acct_c3', { budgetCents: ceiling / 10_000 });
  await plain.setAccountBudget('acct_c3', ceiling);
  const theirs = { count: 0, micros: 0 };
  row.runs.plain = await drive({ ops: CHARGES }, async (i) => {
    const c = amounts[i] as number;
    if (await plain.chargeUnderAccount(raws[which[i] as number] as string, c)) (theirs.count++, (theirs.micros += c));
  });
  const ours = { count: 0, micros: 0 };
  row.runs.agentkey = await drive({ ops: CHARGES }, async (i) => {
    const c = amounts[i] as number;
    if ((await ak.trackUsage(raws[which[i] as number] as string, { costCents: c / 10_000 })).success) (ours.count++, (ours.micros += c));
  });
  await spendChecks(row, ak, 'acct_c3', plain, ours, theirs, `ceiling ${ceiling / 10_000} cents, 75% of the demand`);
  const account = await ak.getAccountBudget('acct_c3');
  record(row, 'agentkey', Number(account?.spentCents ?? Infinity) <= ceiling / 10_000, `account spent ${account?.spentCents} of ${ceiling / 10_000} cents`);
  await ak.close();
}

export async function reserveCommit(pool: pg.Pool) {
  const row = newRow('reserve + commit pairs, 1 key', null);
  const ak = await freshAgentKey(pool);
  const plain = new Plain(pool, `plain_${process.pid}_r1`);
  await plain.setup();
  const amounts = costs(PAIRS, 29);
  const budget = 100_000 * 10_000;
  const key = (await keysForBoth(ak, plain, 'acct_r1', [budget])).raws[0] as string;
  const theirs = { count: 0, micros: 0 };
  row.runs.plain = await drive({ ops: PAIRS }, async (i) => {
    const c = amounts[i] as number;
    const id = await plain.reserve(key, 10_000);
    if (id && (await plain.commit(id, c))) (theirs.count++, (theirs.micros += c));
  });
  const ours = { count: 0, micros: 0 };
  row.runs.agentkey = await drive({ ops: PAIRS }, async (i) => {
    const c = amounts[i] as number;
    const hold = await ak.reserve(key, { costCents: 1 });
    if (hold.success && (await ak.commit(hold.reservationId, { costCents: c / 10_000 })).success) (ours.count++, (ours.micros += c));
  });
  await spendChecks(row, ak, 'acct_r1', plain, ours, theirs, 'every pair committed');
  record(row, 'agentkey', ours.count === PAIRS && theirs.count === PAIRS, `all ${PAIRS} pairs committed on both`);
  await ak.close();
}
