/**
 * Head-of-line blocking, agentkey alone: charges on many keys go on while another connection
 * holds one key's row FOR UPDATE (a transaction stuck elsewhere), and calls on that key answer
 * storage_timeout within timeoutMs instead of waiting it out.
 */
import { performance } from 'node:perf_hooks';
import type pg from 'pg';
import { AgentKeyError } from '../../src/index.js';
import { holdRowLock } from '../../test/helpers/locks.js';
import { CALLERS, LOCK_SECONDS, type Run, URL, createKeys, drive, fmt, freshAgentKey, picks, quick } from '../harness.js';

/**
 * Head-of-line blocking: charges on 1,000 keys while another connection holds one more key's
 * row FOR UPDATE for LOCK_SECONDS (a transaction stuck elsewhere), against the same charges
 * with no lock held, before and after, in the same run. 56 callers charge the 1,000 keys;
 * 8 more charge the one key throughout (so in the locked phase they are the calls that wait).
 */
export async function lockedRow(pool: pg.Pool): Promise<string[]> {
  const n = 1_000;
  const seconds = quick ? 2 : LOCK_SECONDS;
  const ak = await freshAgentKey(pool);
  // The 1,000 keys, the one the 8 callers charge, and one nobody charges.
  const { raws, ids } = await createKeys(ak, 'acct_lock', Array(n + 2).fill(null));
  const lockedKey = raws[n] as string;
  const lockedId = ids[n] as number;
  const idleId = ids[n + 1] as number;
  const order = picks(1_000_000, n, 31);
  let accepted = 0;
  let failed = 0;
  const others = (i: number) => async () => {
    try {
      const r = await ak.trackUsage(raws[order[i % order.length] as number] as string, { costCents: 0.01 });
      if (r.success) accepted++;
      else failed++;
    } catch (err) {
      failed++;
      console.error(`charge on another key failed: ${(err as Error).message}`);
    }
  };
  const onLocked = { ok: 0, timeouts: 0, errors: 0, maxTimeoutMs: 0 };
  const lockedCaller = async () => {
    const t0 = performance.now();
    try {
      if ((await ak.trackUsage(lockedKey, { costCents: 0.01 })).success) onLocked.ok++;
    } catch (err) {
      if (err instanceof AgentKeyError && err.code === 'storage_timeout') {
        onLocked.timeouts++;
        onLocked.maxTimeoutMs = Math.max(onLocked.maxTimeoutMs, performance.now() - t0);
      } else onLocked.errors++;
    }
  };
  const phase = async (lockId: number | null): Promise<{ run: Run; locked: typeof onLocked }> => {
    const lock = lockId !== null;
    Object.assign(onLocked, { ok: 0, timeouts: 0, errors: 0, maxTimeoutMs: 0 });
    // Each phase starts from the same state: what an earlier long transaction kept from pruning is
    // gone (VACUUM changes no row).
    await pool.query(`VACUUM "${ak.tableName}"`);
    const holder = lock ? await holdRowLock(URL, `"${ak.tableName}"`, 'id = $1', [lockId]) : null;
    // Released after `seconds` whatever the callers are doing (they may all be waiting for it).
    const released = holder ? new Promise((resolve) => setTimeout(resolve, seconds * 1000)).then(() => holder.release()) : Promise.resolve();
    const lockedRun = drive({ seconds }, lockedCaller, 8);
    const run = await drive({ seconds }, async (i) => others(i)(), CALLERS - 8);
    await released;
    await lockedRun;
    return { run, locked: { ...onLocked } };
  };
  const before = await phase(null);
  // A control: the same long transaction, on a row nobody charges. It holds back the pruning of
  // the rows every batch updates, which costs any implementation; the locked row adds its waits.
  const control = await phase(idleId);
  const held = await phase(lockedId);
  const after = await phase(null);
  const audit = await ak.audit();
  // Charges of the other keys in the ledger, and every spend row of the locked key.
  const lockedRows = (await ak.usage({ keyId: lockedId })).count;
  const ledger = (await ak.usage({ accountId: 'acct_lock' })).count - lockedRows;
  const landed = before.locked.ok + control.locked.ok + held.locked.ok + after.locked.ok;
  await ak.close();
  const rate = (r: Run) => r.ops / r.seconds;
  const normal = (rate(before.run) + rate(after.run)) / 2;
  const ratio = rate(held.run) / normal;
  const show = (what: string, r: Run) =>
    `  ${what.padEnd(38)} ${fmt(rate(r)).padStart(7)} charges/s  p50 ${r.p50.toFixed(2).padStart(6)} ms  p99 ${r.p99.toFixed(2).padStart(7)} ms`;
  const ok = failed === 0 && audit.ok && ledger === accepted && lockedRows === landed && held.locked.errors === 0;
  return [
    `Locked row (${CALLERS - 8} callers charging 1,000 keys; 8 more charging one key, whose row another connection holds FOR UPDATE for ${seconds} s in the third phase):`,
    show('other keys, no lock (before)', before.run),
    show(`other keys, an unused row locked`, control.run),
    show(`other keys, the 8 callers' key locked`, held.run),
    show('other keys, no lock (after)', after.run),
    `  other keys kept ${(ratio * 100).toFixed(0)}% of their rate without the lock (target 50%: ${ratio >= 0.5 ? 'met' : 'NOT MET'}); ${((rate(held.run) / rate(control.run)) * 100).toFixed(0)}% of the control's`,
    `  calls on the locked key while it was held: ${held.locked.timeouts} answered storage_timeout (the slowest after ${fmt(held.locked.maxTimeoutMs)} ms; timeoutMs 5000), ${held.locked.ok} charged (after the release); without the lock: ${fmt(before.locked.ok / before.run.seconds)}/s`,
    ok
      ? `  ok: every other charge accepted and in the ledger (${accepted}); the locked key's ledger has exactly its ${landed} accepted charges; audit ok`
      : `FAILED: locked row checks (failed ${failed}, audit ${audit.ok}, ledger ${ledger} vs ${accepted}, locked key ${lockedRows} vs ${landed}, errors ${held.locked.errors})`,
  ];
}
