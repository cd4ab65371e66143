// The cluster benchmark's load generator and CPU meter (bench/cluster.mjs imports both; they
// run in its process).
//
// - drive(): `callers` concurrent loops, each sending one request after another to the
//   service instances in round-robin order (one shared counter: a load balancer's rotation),
//   over node:http keep-alive (one Agent per instance). A warm-up runs first and is not
//   measured; then the measured window; then no new request starts and the ones in flight
//   finish, so every request's outcome is known when drive() resolves.
// - cpuSnapshot()/cpuSpent(): where the machine's CPU went between two snapshots, in cores
//   (1.0 = one core busy the whole time), from /proc (Linux only): this process (the load
//   generator), the service instances (by pid), every process named `postgres`, the rest of
//   the machine's busy time (other work on the VM), and idle.
import fs from 'node:fs';
import http from 'node:http';
import { performance } from 'node:perf_hooks';

/**
 * Runs one phase and resolves with its figures: { ops, seconds, rps, p50, p99, errors,
 * firstError, okTotal, sentTotal, cpu }. `request(i)` gives the i-th request's { path, body }
 * (i counts every request of the phase, warm-up included). `okTotal`/`sentTotal` count every
 * request, warm-up and tail included (the ledger check needs them); the rest is the window's.
 * `pids` are the instances' processes, for the CPU figures of the window.
 */
export async function drive({ ports, pids, callers, warmupMs, measureMs, request }) {
  // FIFO: idle sockets are reused oldest first, so none idles long enough for the server to
  // close it (5 s) just as the client reuses it (an ECONNRESET that is no fault of the service).
  const agents = ports.map(() => new http.Agent({ keepAlive: true, maxSockets: callers, scheduling: 'fifo' }));
  let next = 0;
  let sent = 0;
  let okTotal = 0;
  let errors = 0;
  let firstError = null;
  const latencies = [];
  let phase = 'warmup';
  let windowStart = 0;
  let windowEnd = Infinity;

  const callOnce = (i) =>
    new Promise((resolve) => {
      const at = next++ % ports.length;
      const { path, body } = request(i);
      const payload = JSON.stringify(body);
      const req = http.request(
        {
          host: '127.0.0.1',
          port: ports[at],
          path,
          method: 'POST',
          agent: agents[at],
          headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(payload) },
        },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c) => (text += c));
          res.on('end', () => resolve({ ok: res.statusCode >= 200 && res.statusCode < 300, detail: `${res.statusCode} ${text.slice(0, 300)}` }));
          res.on('error', (err) => resolve({ ok: false, detail: `response error: ${err.message}` }));
        },
      );
      req.on('error', (err) => resolve({ ok: false, detail: `request error: ${err.message}` }));
      req.end(payload);
    });

  const started = performance.now();
  const stopAt = started + warmupMs + measureMs;
  const loop = async () => {
    while (performance.now() < stopAt) {
      const i = sent++;
      const t0 = performance.now();
      const { ok, detail } = await callOnce(i);
      const t1 = performance.now();
      if (ok) okTotal++;
      // A request counts in the window when it ends inside it.
      if (t1 >= windowStart && t1 <= windowEnd && phase !== 'warmup') {
        latencies.push(t1 - t0);
        if (!ok) {
          errors++;
          firstError ??= detail;
        }
      } else if (!ok) firstError ??= `(outside the window) ${detail}`;
    }
  };
  const loops = Array.from({ length: callers }, loop);

  await sleep(warmupMs);
  phase = 'measure';
  const before = cpuSnapshot(pids);
  windowStart = performance.now();
  await sleep(Math.max(0, stopAt - performance.now()));
  windowEnd = performance.now();
  const cpu = cpuSpent(before, cpuSnapshot(pids));
  await Promise.all(loops);
  for (const a of agents) a.destroy();

  const seconds = (windowEnd - windowStart) / 1000;
  latencies.sort((a, b) => a - b);
  const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0;
  return {
    ops: latencies.length,
    seconds,
    rps: latencies.length / seconds,
    p50: at(0.5),
    p99: at(0.99),
    errors,
    firstError,
    okTotal,
    sentTotal: sent,
    cpu,
  };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---- CPU from /proc ------------------------------------------------------------------------

const TICKS = 100; // USER_HZ: `getconf CLK_TCK` is 100 on Linux x86-64 and arm64.

/** utime + stime of a process, in ticks (0 when it is gone). */
function procTicks(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: count after its ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]);
  } catch {
    return 0;
  }
}

/** Ticks of every live process named `postgres` (the server and its backends), by pid. */
function postgresTicks() {
  const ticks = new Map();
  for (const name of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (fs.readFileSync(`/proc/${name}/comm`, 'utf8').trim() === 'postgres') ticks.set(name, procTicks(name));
    } catch {
      // gone meanwhile
    }
  }
  return ticks;
}

/**
 * What the `postgres` processes spent between two snapshots: per pid, so a backend that
 * exits meanwhile (an idle connection closed) does not take its past ticks off the total.
 * Its last moments are lost (a small undercount, which lands in "other").
 */
function postgresDelta(a, b) {
  let total = 0;
  for (const [pid, t] of b) total += t - (a.get(pid) ?? 0);
  return total;
}

/** The machine's busy and idle ticks (all cores) from the first line of /proc/stat. */
function machineTicks() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal (guest is already in user)
  const idle = f[3] + f[4];
  const busy = f[0] + f[1] + f[2] + f[5] + f[6] + f[7];
  return { idle, busy };
}

/** A snapshot of the counters; `pids` are the service instances. */
export function cpuSnapshot(pids = []) {
  const usage = process.cpuUsage();
  return {
    at: performance.now(),
    client: (usage.user + usage.system) / 1e6,
    servers: pids.reduce((s, pid) => s + procTicks(pid), 0) / TICKS,
    postgres: postgresTicks(),
    machine: machineTicks(),
  };
}

/** Cores used between two snapshots: { client, servers, postgres, other, idle, cores }. */
export function cpuSpent(a, b) {
  const seconds = (b.at - a.at) / 1000;
  const per = (x) => x / seconds;
  const busy = (b.machine.busy - a.machine.busy) / TICKS;
  const idle = (b.machine.idle - a.machine.idle) / TICKS;
  const client = b.client - a.client;
  const servers = b.servers - a.servers;
  const postgres = postgresDelta(a.postgres, b.postgres) / TICKS;
  return {
    client: per(client),
    servers: per(servers),
    postgres: per(postgres),
    other: per(Math.max(0, busy - client - servers - postgres)),
    idle: per(idle),
    // The machine's cores as /proc/stat counted them over the window (busy + idle).
    cores: per(busy + idle),
  };
}
