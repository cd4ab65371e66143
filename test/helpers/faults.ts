/**
 * Deliberately broken pools, the only fake databases the tests use: to prove fail-closed
 * behaviour and that some inputs are refused before any query.
 */

/** Every query and connect rejects (with details that must never reach a client); calls are counted. */
export function rejectingPool() {
  const pool = {
    calls: 0,
    query: () => fail(pool),
    connect: () => fail(pool),
  };
  return pool;
}

function fail(pool: { calls: number }): Promise<never> {
  pool.calls++;
  return Promise.reject(Object.assign(new Error('connect ECONNREFUSED 10.9.8.7:5432 (password=hunter2)'), { code: 'ECONNREFUSED' }));
}

/** Every call throws synchronously. */
export function throwingPool() {
  const fail = () => {
    throw new TypeError('Cannot read properties of undefined (reading hunter2)');
  };
  return { query: fail, connect: fail };
}

/** A pool that never answers. */
export function hangingPool() {
  const never = () => new Promise<never>(() => {});
  return { query: never, connect: never };
}
