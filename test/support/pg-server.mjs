// Runs a throwaway PostgreSQL in its own process (see embedded-postgres.mjs) for the whole test
// run, or for the benchmark, and prints its URL as one JSON line. Stops the server and exits
// when its standard input closes or on SIGTERM/SIGINT.
import { startEmbeddedPostgres } from './embedded-postgres.mjs';

const { url, stop } = await startEmbeddedPostgres({
  prefix: 'agentkey-pg',
  // The tests skip fsync for speed; the benchmark keeps it (AGENTKEY_PG_DURABLE=1), as production does.
  flags: ['-c', 'max_connections=300', ...(process.env.AGENTKEY_PG_DURABLE === '1' ? [] : ['-c', 'fsync=off'])],
});
process.stdout.write(JSON.stringify({ url }) + '\n');
process.stdin.on('end', () => stop(0));
process.stdin.on('close', () => stop(0));
process.stdin.resume();
