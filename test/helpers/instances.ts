import { type CliProcess, cliEnv, startCli } from './cli.js';

/**
 * Several real `agentkey serve` processes (the bundle from useCliBundle) on one PostgreSQL
 * database and keys table: each on 127.0.0.1 and a port of its own. stopInstances() ends
 * them (SIGTERM, then SIGKILL after a bound), each by its own process id.
 */

export interface Instance {
  name: string;
  url: string;
  proc: CliProcess;
}

export interface Reply {
  status: number;
  body: any;
  headers: Headers;
}

/** Starts one `agentkey serve` on `databaseUrl` and `table` and waits until it listens. */
export async function startInstance(
  bundle: string,
  name: string,
  { databaseUrl, directUrl, table, adminKey, extraArgs = [] }: { databaseUrl: string; directUrl?: string | undefined; table: string; adminKey?: string; extraArgs?: string[] },
): Promise<Instance> {
  // directUrl: the listener's direct URL when databaseUrl goes through a pooler (a pooled test run).
  const args = ['serve', '--port', '0', '--host', '127.0.0.1', '--database-url', databaseUrl, ...(directUrl ? ['--direct-url', directUrl] : []), '--table', table, ...extraArgs];
  const proc = startCli(bundle, args, { env: cliEnv({ AGENTKEY_ADMIN_KEY: adminKey }) });
  const log = await proc.waitForLog(/^agentkey listening on /, 90_000);
  return { name, url: log.url as string, proc };
}

/** Ends each instance: SIGTERM, then SIGKILL if it has not exited within `graceMs`. Resolves with the exit codes. */
export async function stopInstances(instances: Instance[], graceMs = 15_000): Promise<(number | null)[]> {
  return Promise.all(
    instances.map(async ({ proc }) => {
      if (proc.child.exitCode !== null || proc.child.signalCode !== null) return (await proc.exited).code;
      proc.child.kill('SIGTERM');
      const timer = setTimeout(() => proc.child.kill('SIGKILL'), graceMs);
      try {
        return (await proc.exited).code;
      } finally {
        clearTimeout(timer);
      }
    }),
  );
}

/** One JSON request to an instance; `bearer` goes in Authorization. */
export async function call(instance: Instance | string, method: string, route: string, body?: unknown, bearer?: string, headers: Record<string, string> = {}): Promise<Reply> {
  const base = typeof instance === 'string' ? instance : instance.url;
  const res = await fetch(`${base}${route}`, {
    method,
    headers: {
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...(bearer ? { authorization: `Bearer ${bearer}` } : {}),
      ...headers,
    },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  let parsed: unknown = text;
  try {
    parsed = text === '' ? undefined : JSON.parse(text);
  } catch {
    /* not JSON (metrics) */
  }
  return { status: res.status, body: parsed, headers: res.headers };
}

/** The instance number `i` takes in a round-robin over `instances`. */
export const roundRobin = <T>(items: readonly T[], i: number): T => items[i % items.length] as T;

/**
 * Polls `read` until `done(value)`, for at most `boundMs`; resolves with how long it took and
 * the last value, or rejects naming `what` and the last value. A correctness deadline, not a
 * speed measurement.
 */
export async function within<T>(boundMs: number, what: string, read: () => Promise<T>, done: (value: T) => boolean): Promise<{ ms: number; value: T }> {
  const started = Date.now();
  for (;;) {
    const value = await read();
    const ms = Date.now() - started;
    if (done(value)) return { ms, value };
    if (ms > boundMs) throw new Error(`${what}: not within ${boundMs} ms; last seen ${JSON.stringify(value)}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The sum of a Prometheus counter's samples whose line starts with `name` (any labels). */
export function metricSum(text: string, name: string, labelFilter?: RegExp): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (labelFilter && !labelFilter.test(line)) continue;
    sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  }
  return sum;
}
