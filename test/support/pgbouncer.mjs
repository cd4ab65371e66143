// Runs Debian's PgBouncer (`pgbouncer`, installed by .ci/run) in front of a PostgreSQL, in
// transaction pooling mode: for the suite's pooled run (test/global-setup.ts with
// AGENTKEY_TEST_POOLER=pgbouncer) and for the tests of pooled connections. Any database
// name is passed through to the server (the `*` entry), so a test's fresh database works
// through it as it is. PgBouncer will not run as root: it then drops to `nobody`, and its
// files live in a directory everyone can read.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { freePort } from './ports.mjs';

/** Where the binary is looked for: $PGBOUNCER, then the PATH, then Debian's place. */
export function pgbouncerBinary() {
  const candidates = [process.env.PGBOUNCER, ...(process.env.PATH ?? '').split(':').map((d) => d && path.join(d, 'pgbouncer')), '/usr/sbin/pgbouncer'];
  for (const c of candidates) {
    if (c && fs.existsSync(c)) return c;
  }
  return null;
}

function waitForPort(port, child, deadlineMs) {
  const until = Date.now() + deadlineMs;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      if (child.exitCode !== null) return reject(new Error(`pgbouncer exited early (code ${child.exitCode})`));
      const socket = net.connect(port, '127.0.0.1');
      socket.once('connect', () => {
        socket.destroy();
        resolve();
      });
      socket.once('error', () => {
        socket.destroy();
        if (Date.now() > until) reject(new Error(`pgbouncer did not listen on ${port} within ${deadlineMs} ms`));
        else setTimeout(attempt, 50);
      });
    };
    attempt();
  });
}

/**
 * Starts PgBouncer in transaction mode in front of the server at `serverUrl` (its user and
 * password are the pooler's too). Options: `poolSize` (server connections per database and
 * user; default 20). Resolves with { url(database?): the pooled URL, stop(): Promise }.
 */
export async function startPgBouncer(serverUrl, { poolSize = 20 } = {}) {
  const binary = pgbouncerBinary();
  if (!binary) throw new Error('pgbouncer is not installed: `apt-get install pgbouncer` (.ci/run does this)');
  const server = new URL(serverUrl);
  const user = decodeURIComponent(server.username || 'postgres');
  const password = decodeURIComponent(server.password || '');
  const port = await freePort();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'agentkey-pgbouncer-'));
  fs.chmodSync(dir, 0o755);
  const quote = (s) => `"${s.replace(/"/g, '""')}"`;
  fs.writeFileSync(path.join(dir, 'users.txt'), `${quote(user)} ${quote(password)}\n`, { mode: 0o644 });
  const host = server.hostname === 'localhost' ? '127.0.0.1' : server.hostname;
  const ini = [
    '[databases]',
    `* = host=${host} port=${server.port || 5432}`,
    '[pgbouncer]',
    'listen_addr = 127.0.0.1',
    `listen_port = ${port}`,
    "unix_socket_dir = ''",
    'auth_type = trust',
    `auth_file = ${path.join(dir, 'users.txt')}`,
    'pool_mode = transaction',
    `default_pool_size = ${poolSize}`,
    'max_client_conn = 2000',
    'max_db_connections = 0',
    'server_reset_query =',
    'ignore_startup_parameters = extra_float_digits,options,statement_timeout',
    'log_connections = 0',
    'log_disconnections = 0',
    'admin_users = ' + user,
    '',
  ].join('\n');
  const config = path.join(dir, 'pgbouncer.ini');
  fs.writeFileSync(config, ini, { mode: 0o644 });
  const asRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  const child = spawn(binary, [...(asRoot ? ['-u', 'nobody'] : []), config], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (c) => {
    stderr = (stderr + c.toString()).slice(-4000);
  });
  try {
    await waitForPort(port, child, 10_000);
  } catch (err) {
    child.kill('SIGKILL');
    fs.rmSync(dir, { recursive: true, force: true });
    throw new Error(`${err.message}: ${stderr.trim()}`);
  }
  const url = (database) => {
    const u = new URL(serverUrl);
    u.hostname = '127.0.0.1';
    u.port = String(port);
    if (database) u.pathname = `/${database}`;
    return u.toString();
  };
  const stop = () =>
    new Promise((resolve) => {
      const done = () => {
        fs.rmSync(dir, { recursive: true, force: true });
        resolve();
      };
      if (child.exitCode !== null) return done();
      child.once('exit', done);
      child.kill('SIGINT');
      setTimeout(() => child.kill('SIGKILL'), 3_000).unref();
    });
  return { url, port, child, stop };
}
