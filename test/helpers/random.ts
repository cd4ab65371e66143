import { between, rng } from '../fixtures/random.mjs';

/** The seeded generator of test/fixtures/random.mjs (its one home, shared with the worker processes). */
export const seededRandom: (seed: number) => () => number = rng;
export { between };

/**
 * This run's seed: AGENTKEY_TEST_SEED=<seed> replays a run, otherwise a new one each run.
 * A test that draws from it names it in its failure messages.
 */
export const SEED = Number(process.env.AGENTKEY_TEST_SEED ?? Math.floor(Math.random() * 1_000_000));
