import type { PGlite } from '@electric-sql/pglite';
import type pg from 'pg';
import type { TestDb } from './databases.js';

/**
 * Pools over a real test database that misbehave on the test's word: they delegate to the
 * real pool until told to stall or fail. For faults in the middle of a request (after the
 * key check, at the hold, at the commit); helpers/faults.ts has pools that never work.
 */

/**
 * A pool over the test database that stops answering (its calls never settle) once
 * `ctl.hang` is set; until then it delegates to the real pool.
 */
export function stallablePool(db: TestDb) {
  const ctl = { hang: false };
  const never = () => new Promise<never>(() => {});
  if (db.name === 'postgres') {
    const real = db.pool as pg.Pool;
    return {
      ctl,
      pool: {
        query: (text: string, values?: unknown[]) => (ctl.hang ? never() : real.query(text, values)),
        connect: () => (ctl.hang ? never() : real.connect()),
      },
    };
  }
  const real = db.pool as PGlite;
  return {
    ctl,
    pool: {
      query: (text: string, params?: unknown[]) => (ctl.hang ? never() : real.query(text, params)),
      transaction: (fn: Parameters<PGlite['transaction']>[0]) => (ctl.hang ? never() : real.transaction(fn)),
    },
  };
}

/**
 * A pool over the test database that fails while `ctl.broken` is set, or for the next
 * `ctl.failNext` calls, with a driver-like error; otherwise it delegates to the real pool.
 */
export function breakablePool(db: TestDb) {
  const ctl = { broken: false, failNext: 0 };
  const failing = () => {
    if (ctl.broken) return true;
    if (ctl.failNext > 0) {
      ctl.failNext -= 1;
      return true;
    }
    return false;
  };
  const refuse = () => Promise.reject(Object.assign(new Error('connect ECONNREFUSED 10.9.8.7:5432 (password=hunter2)'), { code: 'ECONNREFUSED' }));
  if (db.name === 'postgres') {
    const real = db.pool as pg.Pool;
    const pool = {
      query: (text: string, values?: unknown[]) => (failing() ? refuse() : real.query(text, values)),
      connect: () => (failing() ? refuse() : real.connect()),
    };
    return { ctl, pool };
  }
  const real = db.pool as PGlite;
  const pool = {
    query: (text: string, params?: unknown[]) => (failing() ? refuse() : real.query(text, params)),
    transaction: (fn: Parameters<PGlite['transaction']>[0]) => (failing() ? refuse() : real.transaction(fn)),
  };
  return { ctl, pool };
}
