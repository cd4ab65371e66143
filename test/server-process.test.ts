import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { type CliProcess, cliEnv, freshDatabase, linesOf, runCli, startCli, stopCliProcesses, tempDir } from './helpers/cli.js';
import { holdRowLock } from './helpers/locks.js';
import { useCliBundle } from './helpers/processes.js';

/**
 * The real `agentkey serve` process (bundled from the current src/) on embedded PGlite and
 * on PostgreSQL: the admin key printed once and reused, the admin and agent APIs over HTTP,
 * graceful shutdown on SIGTERM with requests in flight, restarts that keep every key and
 * cent, the data directory's lock, and one-line startup failures.
 */

const cli = useCliBundle('server-process');
afterEach(stopCliProcesses);

const ADMIN_KEY = /akadmin_[A-Za-z0-9_-]{20,}/g;

interface Listening {
  proc: CliProcess;
  url: string;
  port: number;
  log: Record<string, unknown>;
}

/** Starts `agentkey serve` on 127.0.0.1 and a free port, and waits until it listens. */
async function serve(args: string[], env: Record<string, string | undefined> = {}): Promise<Listening> {
  const proc = startCli(cli(), ['serve', '--port', '0', '--host', '127.0.0.1', ...args], { env: cliEnv(env) });
  const log = await proc.waitForLog(/^agentkey listening on /, 90_000);
  expect(log).toMatchObject({ level: 30, service: 'agentkey', url: expect.any(String), port: expect.any(Number) });
  const port = log.port as number;
  expect(port).toBeGreaterThan(0);
  expect(log.url).toBe(`http://127.0.0.1:${port}`);
  expect(log.msg).toBe(`agentkey listening on ${log.url}`);
  return { proc, url: log.url as string, port, log };
}

/** Sends `signal`, then expects a clean stop (see expectStopped). */
async function stop(server: Listening, signal: NodeJS.Signals = 'SIGTERM'): Promise<void> {
  const stderrBefore = server.proc.stderr();
  server.proc.child.kill(signal);
  await expectStopped(server, signal, stderrBefore);
}

/** Exit code 0, 'shutting down' (naming the signal) then 'stopped' as the last line, nothing more on stderr. */
async function expectStopped(server: Listening, signal: NodeJS.Signals, stderrBefore: string): Promise<void> {
  const result = await server.proc.exited;
  expect({ code: result.code, signal: result.signal }, result.stderr).toEqual({ code: 0, signal: null });
  const msgs = server.proc.lines.map((l) => l.msg);
  const shutting = server.proc.lines.findIndex((l) => typeof l.msg === 'string' && l.msg.startsWith('shutting down'));
  expect(shutting, `no 'shutting down' line in ${JSON.stringify(msgs)}`).toBeGreaterThanOrEqual(0);
  expect(server.proc.lines[shutting]).toMatchObject({ signal });
  expect(msgs.at(-1)).toBe('stopped');
  expect(result.stderr).toBe(stderrBefore);
}

interface Reply {
  status: number;
  body: any;
}

async function call(base: string, method: string, route: string, body?: unknown, bearer?: string): Promise<Reply> {
  const res = await fetch(`${base}${route}`, {
    method,
    headers: { ...(body !== undefined ? { 'content-type': 'application/json' } : {}), ...(bearer ? { authorization: `Bearer ${bearer}` } : {}) },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.text();
  return { status: res.status, body: text === '' ? undefined : JSON.parse(text) };
}

/** A key created, verified, charged 125 and a 200 hold committed at 150: spent 275 over two ledger rows. */
async function exerciseApi(base: string, adminKey: string, accountId: string) {
  expect(await call(base, 'GET', '/v1/keys')).toMatchObject({ status: 401, body: { error: { code: 'missing_admin_key' } } });
  expect(await call(base, 'GET', '/v1/keys', undefined, 'akadmin_not-the-admin-key-at-all')).toMatchObject({
    status: 401,
    body: { error: { code: 'invalid_admin_key' } },
  });

  const created = await call(base, 'POST', '/v1/keys', { accountId, name: 'agent', budgetCents: 10_000, scopes: ['proxy.chat'] }, adminKey);
  expect(created).toMatchObject({ status: 201, body: { key: expect.stringMatching(/^ak_/), id: expect.any(Number), accountId, spentCents: 0 } });
  const key = created.body.key as string;
  const id = created.body.id as number;
  // An agent key is not the admin key.
  expect((await call(base, 'GET', '/v1/keys', undefined, key)).status).toBe(401);

  expect(await call(base, 'POST', '/v1/verify', { key, scope: 'proxy.chat' })).toEqual({
    status: 200,
    body: expect.objectContaining({ valid: true, keyId: id, accountId, budgetCents: 10_000, budgetUsedCents: 0 }),
  });
  expect(await call(base, 'POST', '/v1/verify', { key, scope: 'admin.delete' })).toMatchObject({
    status: 200,
    body: { valid: false, reason: 'insufficient_scope' },
  });
  expect(await call(base, 'POST', '/v1/verify', { key: `${key}x` })).toMatchObject({ status: 200, body: { valid: false, reason: 'invalid' } });

  expect(await call(base, 'POST', '/v1/charge', { key, costCents: 125 })).toEqual({
    status: 200,
    body: { success: true, budgetUsedCents: 125, budgetRemainingCents: 9875 },
  });
  const held = await call(base, 'POST', '/v1/reservations', { key, costCents: 200 });
  expect(held).toMatchObject({ status: 201, body: { success: true, reservationId: expect.stringMatching(/^rsv_/), budgetRemainingCents: 9675 } });
  const committed = await call(base, 'POST', `/v1/reservations/${held.body.reservationId}/commit`, { key, costCents: 150 });
  expect(committed).toMatchObject({
    status: 200,
    body: { success: true, costCents: 150, heldCents: 200, releasedCents: 50, budgetUsedCents: 275, budgetRemainingCents: 9725 },
  });

  expect(await call(base, 'GET', `/v1/keys/${id}`, undefined, adminKey)).toMatchObject({
    status: 200,
    body: { id, accountId, spentCents: 275, heldCents: 0, remainingCents: 9725, status: 'active' },
  });
  expect(await call(base, 'GET', `/v1/usage?keyId=${id}`, undefined, adminKey)).toMatchObject({ status: 200, body: { totalCents: 275, count: 2 } });
  return { key, id };
}

/** What a restart must keep: the key's row (its figures) and its ledger. */
async function snapshot(base: string, adminKey: string, id: number) {
  const key = await call(base, 'GET', `/v1/keys/${id}`, undefined, adminKey);
  const usage = await call(base, 'GET', `/v1/usage?keyId=${id}&bucket=day&since=2000-01-01T00:00:00Z`, undefined, adminKey);
  expect(key.status).toBe(200);
  expect(usage.status).toBe(200);
  const { lastUsedAt: _ignored, ...info } = key.body;
  return { info, usage: usage.body };
}

function adminKeysIn(stderr: string): string[] {
  return stderr.match(ADMIN_KEY) ?? [];
}

function expectOneLineFailure(result: { code: number | null; stdout: string; stderr: string }, message: RegExp): void {
  expect(result.code, result.stderr).toBe(1);
  expect(result.stdout).toBe('');
  expect(linesOf(result.stderr)).toEqual([expect.stringMatching(/^agentkey: /)]);
  expect(result.stderr).toMatch(message);
  expect(result.stderr).not.toMatch(/\n\s+at |node_modules|unexpected; please report/);
}

/** A charge sent over a connection of its own whose body is only half written until finish(). */
function halfSentCharge(port: number, key: string, costCents: number) {
  const body = JSON.stringify({ key, costCents });
  const req = http.request({
    host: '127.0.0.1',
    port,
    method: 'POST',
    path: '/v1/charge',
    agent: false,
    headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) },
  });
  const connected = new Promise<void>((resolve, reject) => {
    req.once('socket', (socket) => socket.once('connect', () => resolve()));
    req.once('error', reject);
  });
  const response = new Promise<{ status: number | undefined; text: string; complete: boolean }>((resolve, reject) => {
    req.once('error', reject);
    req.once('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.once('end', () => resolve({ status: res.statusCode, text, complete: res.complete }));
      res.once('error', reject);
    });
  });
  response.catch(() => {});
  connected.catch(() => {});
  const half = Math.floor(body.length / 2);
  req.write(body.slice(0, half));
  return { connected, response, finish: () => req.end(body.slice(half)) };
}

/** Resolves with the error code of a fresh connection to the port (or 'connected'). */
function tryConnect(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = net.connect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve('connected');
    });
    socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? String(err)));
  });
}

/** A port something else is listening on. */
async function busyPort(): Promise<{ port: number; close(): Promise<void> }> {
  const blocker = net.createServer();
  await new Promise<void>((resolve) => blocker.listen(0, '0.0.0.0', resolve));
  return {
    port: (blocker.address() as net.AddressInfo).port,
    close: () => new Promise<void>((resolve) => blocker.close(() => resolve())),
  };
}

describe('serve on PGlite (a data directory)', () => {
  let dataDir: string;
  let lockFile: string;
  // What the first start leaves for the restart to find.
  let first: { adminKey: string; key: string; id: number; spent: number; count: number } | undefined;

  beforeAll(() => {
    dataDir = tempDir('agentkey-serve');
    lockFile = path.join(dataDir, 'agentkey.lock');
  });
  afterAll(async () => {
    await stopCliProcesses();
    fs.rmSync(dataDir, { recursive: true, force: true });
  });

  it('first start: prints a new admin key once, serves keys, charges and holds, refuses a second process on the directory, and on SIGTERM finishes the requests in flight', async () => {
    const server = await serve(['--data-dir', dataDir]);
    expect(server.log).toMatchObject({ database: 'pglite', adminKey: 'created' });
    const printed = adminKeysIn(server.proc.stderr());
    expect(printed, server.proc.stderr()).toHaveLength(1);
    const adminKey = printed[0] as string;
    expect(server.proc.stderr()).toContain('shown this once');
    // The banner names every admin route and the dashboard, where the key is used.
    for (const place of ['/v1/keys', '/v1/accounts', '/v1/usage', '/v1/ledger', '/dashboard', 'agentkey admin-key rotate']) expect(server.proc.stderr()).toContain(place);
    expect(server.proc.stdout()).not.toContain(adminKey);
    expect(fs.readFileSync(lockFile, 'utf8')).toBe(String(server.proc.pid));
    expect(await call(server.url, 'GET', '/healthz')).toEqual({ status: 200, body: { status: 'ok', database: 'pglite' } });

    const { key, id } = await exerciseApi(server.url, adminKey, 'acct_pglite');

    // A second service, or any CLI command, on the same directory is refused in one line, and leaves the lock alone.
    const second = await runCli(cli(), ['serve', '--port', '0', '--host', '127.0.0.1', '--data-dir', dataDir], { env: cliEnv() });
    expectOneLineFailure(second, /in use by another agentkey process/);
    expect(second.stderr).toContain(dataDir);
    expect(second.stderr).toContain(`pid ${server.proc.pid}`);
    const listing = await runCli(cli(), ['keys', 'list', '--json'], { env: cliEnv({ AGENTKEY_DATA_DIR: dataDir }) });
    expectOneLineFailure(listing, /in use by another agentkey process/);
    expect(fs.readFileSync(lockFile, 'utf8')).toBe(String(server.proc.pid));
    expect(await call(server.url, 'POST', '/v1/verify', { key })).toMatchObject({ status: 200, body: { valid: true } });

    // SIGTERM with requests in flight. Four charges are certainly in flight: their connections
    // are served (a full round trip on another connection came back after them) and half of
    // each body is sent. Twenty more race the signal, each on a new connection: the signal goes
    // once the first of them is answered, so some are being handled and some are refused.
    const halfSent = Array.from({ length: 4 }, () => halfSentCharge(server.port, key, 10));
    await Promise.all(halfSent.map((c) => c.connected));
    expect((await call(server.url, 'GET', '/healthz')).status).toBe(200);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const racing = Array.from({ length: 20 }, () => {
      const charge = halfSentCharge(server.port, key, 1);
      charge.finish();
      return charge.response;
    });
    await Promise.any(racing);
    const stderrBefore = server.proc.stderr();
    server.proc.child.kill('SIGTERM');
    await server.proc.waitForLog(/^shutting down/, 10_000);
    expect(await tryConnect(server.port)).toBe('ECONNREFUSED');
    expect(server.proc.lines.map((l) => l.msg)).not.toContain('stopped');

    for (const c of halfSent) c.finish();
    for (const answered of await Promise.all(halfSent.map((c) => c.response))) {
      expect(answered.complete).toBe(true);
      expect({ status: answered.status, body: JSON.parse(answered.text) }).toEqual({
        status: 200,
        body: { success: true, budgetUsedCents: expect.any(Number), budgetRemainingCents: expect.any(Number) },
      });
    }
    const outcomes = await Promise.allSettled(racing);
    const ok = outcomes.flatMap((o) => (o.status === 'fulfilled' ? [o.value] : []));
    const refused = outcomes.flatMap((o) => (o.status === 'rejected' ? [(o.reason as NodeJS.ErrnoException).code] : []));
    expect(ok.length).toBeGreaterThanOrEqual(1);
    for (const answer of ok) {
      // Every request that got an answer got all of it.
      expect(answer.complete).toBe(true);
      expect(answer.status, answer.text).toBe(200);
      expect(JSON.parse(answer.text)).toMatchObject({ success: true, budgetUsedCents: expect.any(Number) });
    }
    for (const code of refused) expect(['ECONNREFUSED', 'ECONNRESET', 'EPIPE']).toContain(code);
    await expectStopped(server, 'SIGTERM', stderrBefore);
    const requestLogs = server.proc.lines.filter((l) => l.msg === 'request' && l.route === '/v1/charge');
    expect(requestLogs.filter((l) => l.status === 200)).toHaveLength(1 + halfSent.length + ok.length);
    expect(fs.existsSync(lockFile)).toBe(false);

    // Each answered charge is kept; nothing that went unanswered was charged.
    first = { adminKey, key, id, spent: 275 + 10 * halfSent.length + ok.length, count: 2 + halfSent.length + ok.length };
  }, 150_000);

  it('restart on the same directory (over a stale lock): the stored admin key works, no new one is printed, and the key, its spend and its usage are kept', async () => {
    expect(first, 'the first start did not finish').toBeDefined();
    const { adminKey, key, id, spent, count } = first!;
    // A lock left by a process that is gone (say, one killed with SIGKILL) is taken over.
    const gonePid = execFileSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    fs.writeFileSync(lockFile, gonePid);
    const server = await serve(['--data-dir', dataDir]);
    expect(fs.readFileSync(lockFile, 'utf8')).toBe(String(server.proc.pid));
    expect(server.log).toMatchObject({ database: 'pglite', adminKey: 'stored' });
    expect(server.proc.stderr()).toBe('');

    const now = await snapshot(server.url, adminKey, id);
    expect(now.info).toMatchObject({ id, accountId: 'acct_pglite', status: 'active', spentCents: spent, heldCents: 0, remainingCents: 10_000 - spent });
    expect(now.usage).toMatchObject({ totalCents: spent, count });
    expect(now.usage.buckets.reduce((sum: number, b: { costCents: number }) => sum + b.costCents, 0)).toBeCloseTo(spent, 6);
    expect(await call(server.url, 'POST', '/v1/verify', { key })).toMatchObject({
      status: 200,
      body: { valid: true, keyId: id, budgetUsedCents: spent },
    });
    // Still spendable, from where it was.
    expect(await call(server.url, 'POST', '/v1/charge', { key, costCents: 5 })).toMatchObject({
      status: 200,
      body: { success: true, budgetUsedCents: spent + 5 },
    });
    await stop(server, 'SIGINT');
    expect(fs.existsSync(lockFile)).toBe(false);
  }, 120_000);

  it('--port already in use: exit 1 with one line, and the data directory is unlocked again', async () => {
    const blocker = await busyPort();
    try {
      const result = await runCli(cli(), ['serve', '--port', String(blocker.port), '--data-dir', dataDir], { env: cliEnv() });
      expectOneLineFailure(result, new RegExp(`Port ${blocker.port} is in use`));
      expect(fs.existsSync(lockFile)).toBe(false);
    } finally {
      await blocker.close();
    }
  }, 90_000);
});

describe('serve: settings are checked before the database is touched', () => {
  let parent: string;
  beforeAll(() => {
    parent = tempDir('agentkey-serve-settings');
  });
  afterAll(() => fs.rmSync(parent, { recursive: true, force: true }));

  it('a busy port, a --host that is no address of this machine, a bad admin key or table: exit 1 with one clear line, no data directory, no admin key', async () => {
    const blocker = await busyPort();
    try {
      const dir = (name: string) => path.join(parent, name);
      const cases: [string, string[], Record<string, string>, RegExp][] = [
        ['busy', ['--port', String(blocker.port)], {}, new RegExp(`^agentkey: Port ${blocker.port} is in use; pick another with --port or PORT\\.\n$`)],
        ['bad-ip', ['--port', '0', '--host', '999.1.1.1'], {}, /^agentkey: --host 999\.1\.1\.1 is not an address this machine can listen on; /],
        ['no-name', ['--port', '0', '--host', 'no-such-host.invalid'], {}, /^agentkey: --host no-such-host\.invalid is not an address this machine can listen on; /],
        ['foreign', ['--port', '0', '--host', '192.0.2.1'], {}, /^agentkey: --host 192\.0\.2\.1 is not an address this machine can listen on; /],
        ['admin-key', ['--port', '0', '--host', '127.0.0.1'], { AGENTKEY_ADMIN_KEY: 'tooShort123' }, /^agentkey: AGENTKEY_ADMIN_KEY must be at least 16 characters/],
        ['table', ['--port', '0', '--host', '127.0.0.1', '--table', 'bad name'], {}, /^agentkey: tableName must be an SQL identifier/],
        ['scopes', ['--port', '0', '--host', '127.0.0.1', '--self-serve', '--signup-scopes', 'a b'], {}, /^agentkey: Invalid scopes: a b/],
        ['timeout', ['--port', '0', '--host', '127.0.0.1', '--timeout-ms', '0'], {}, /^agentkey: .*timeout.*1.*3600000/i],
        ['timeout-env', ['--port', '0', '--host', '127.0.0.1'], { AGENTKEY_TIMEOUT_MS: 'soon' }, /^agentkey: .*timeout.*1.*3600000/i],
      ];
      const results = await Promise.all(
        cases.map(([name, args, env]) => runCli(cli(), ['serve', ...args, '--data-dir', dir(name)], { env: cliEnv(env) })),
      );
      cases.forEach(([name, , , message], i) => {
        const result = results[i] as Awaited<ReturnType<typeof runCli>>;
        expectOneLineFailure(result, message);
        expect(fs.existsSync(dir(name)), `${name}: a data directory was created`).toBe(false);
        expect(adminKeysIn(result.stderr), name).toEqual([]);
      });
    } finally {
      await blocker.close();
    }
  }, 120_000);

  it('serve --help lists the options serve takes (no --json: it prints no result) and the admin key; serve --json is an unknown option', async () => {
    const [help, json] = await Promise.all([runCli(cli(), ['serve', '--help'], { env: cliEnv() }), runCli(cli(), ['serve', '--json'], { env: cliEnv() })]);
    expect(help.code, help.stderr).toBe(0);
    for (const option of ['--data-dir', '--database-url', '--table', '--port', '--host', '--self-serve', '--signup-scopes', '--signup-without-email', '--body-limit', '--timeout-ms', '--log-level']) {
      expect(help.stdout).toContain(option);
    }
    expect(help.stdout).not.toContain('--json');
    expect(help.stdout).toContain('AGENTKEY_ADMIN_KEY');
    expect(help.stdout).toContain('/dashboard');
    expectOneLineFailure(json, /unknown option '--json'/);
  }, 60_000);

  it('on PostgreSQL, a busy port or a bad --host creates no table and no admin key', async () => {
    const db = await freshDatabase('agentkey_serve_settings');
    const blocker = await busyPort();
    try {
      const [busy, badHost] = await Promise.all([
        runCli(cli(), ['serve', '--port', String(blocker.port)], { env: cliEnv({ DATABASE_URL: db.url }) }),
        runCli(cli(), ['serve', '--port', '0', '--host', '999.1.1.1'], { env: cliEnv({ DATABASE_URL: db.url }) }),
      ]);
      expectOneLineFailure(busy, /Port \d+ is in use/);
      expectOneLineFailure(badHost, /--host 999\.1\.1\.1 is not an address/);
      for (const r of [busy, badHost]) expect(adminKeysIn(r.stderr)).toEqual([]);
      const client = new pg.Client({ connectionString: db.url });
      await client.connect();
      try {
        expect((await client.query(`SELECT tablename FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')`)).rows).toEqual([]);
      } finally {
        await client.end();
      }
    } finally {
      await blocker.close();
      await db.drop().catch(() => {});
    }
  }, 120_000);
});

describe('serve on PostgreSQL (DATABASE_URL)', () => {
  let db: Awaited<ReturnType<typeof freshDatabase>>;

  beforeAll(async () => {
    db = await freshDatabase('agentkey_serve');
  });
  afterAll(async () => {
    await stopCliProcesses();
    await db?.drop().catch(() => {});
  });

  it('--timeout-ms bounds how long a call waits on the database: a charge on a key row held elsewhere is a 503 storage_timeout after it, and charges nothing', async () => {
    const adminKey = `timeout-admin-${'t'.repeat(20)}`;
    const server = await serve(['--timeout-ms', '300'], { DATABASE_URL: db.url, AGENTKEY_ADMIN_KEY: adminKey });
    const created = await call(server.url, 'POST', '/v1/keys', { accountId: 'acct_timeout', budgetCents: 100 }, adminKey);
    expect(created.status).toBe(201);
    const other = await call(server.url, 'POST', '/v1/keys', { accountId: 'acct_timeout_2' }, adminKey);
    const lock = await holdRowLock(db.url, 'sdk_api_keys', 'id = $1', [created.body.id]);
    try {
      const started = Date.now();
      const res = await call(server.url, 'POST', '/v1/charge', { key: created.body.key, costCents: 5, idempotencyKey: 'held-1' });
      const took = Date.now() - started;
      expect(res).toMatchObject({ status: 503, body: { error: { code: 'storage_timeout' } } });
      // Bounded by the flag (300 ms), not the default 5 s; the slack is for a loaded machine.
      expect(took).toBeLessThan(3_000);
      // Another key's charge is not held up meanwhile.
      expect(await call(server.url, 'POST', '/v1/charge', { key: other.body.key, costCents: 1 })).toMatchObject({ status: 200 });
    } finally {
      await lock.release();
    }
    // Nothing was charged; the retry with the same idempotency key charges once.
    expect(await call(server.url, 'POST', '/v1/charge', { key: created.body.key, costCents: 5, idempotencyKey: 'held-1' })).toMatchObject({
      status: 200,
      body: { success: true, budgetUsedCents: 5 },
    });
    await stop(server);
  }, 120_000);

  it('restart keeps the stored admin key, the key, its spend and its usage; AGENTKEY_ADMIN_KEY overrides the stored key', async () => {
    const firstStart = await serve([], { DATABASE_URL: db.url });
    expect(firstStart.log).toMatchObject({ database: 'postgres', adminKey: 'created' });
    const printed = adminKeysIn(firstStart.proc.stderr());
    expect(printed, firstStart.proc.stderr()).toHaveLength(1);
    const adminKey = printed[0] as string;
    expect(await call(firstStart.url, 'GET', '/healthz')).toEqual({ status: 200, body: { status: 'ok', database: 'postgres', pooled: false, cache: 'notify' } });
    const { key, id } = await exerciseApi(firstStart.url, adminKey, 'acct_pg');
    const before = await snapshot(firstStart.url, adminKey, id);
    expect(before.usage).toMatchObject({ totalCents: 275, count: 2 });
    await stop(firstStart);

    const restarted = await serve([], { DATABASE_URL: db.url });
    expect(restarted.log).toMatchObject({ database: 'postgres', adminKey: 'stored' });
    expect(restarted.proc.stderr()).toBe('');
    expect(await snapshot(restarted.url, adminKey, id)).toEqual(before);
    expect(await call(restarted.url, 'POST', '/v1/verify', { key })).toMatchObject({ status: 200, body: { valid: true, keyId: id, budgetUsedCents: 275 } });
    await stop(restarted, 'SIGINT');

    // The admin key from the environment: used as is, never printed, and the stored one stops working.
    const envKey = `env-admin-${'k'.repeat(24)}`;
    const withEnv = await serve([], { DATABASE_URL: db.url, AGENTKEY_ADMIN_KEY: envKey });
    expect(withEnv.log).toMatchObject({ database: 'postgres', adminKey: 'env' });
    expect(withEnv.proc.stderr()).toBe('');
    expect(withEnv.proc.stdout()).not.toContain(envKey);
    expect(await snapshot(withEnv.url, envKey, id)).toEqual(before);
    expect(await call(withEnv.url, 'GET', `/v1/keys/${id}`, undefined, adminKey)).toMatchObject({ status: 401, body: { error: { code: 'invalid_admin_key' } } });
    await stop(withEnv);

    // Without it again, the stored key is back.
    const again = await serve([], { DATABASE_URL: db.url });
    expect(again.log).toMatchObject({ adminKey: 'stored' });
    expect(again.proc.stderr()).toBe('');
    expect((await call(again.url, 'GET', `/v1/keys/${id}`, undefined, adminKey)).status).toBe(200);
    expect((await call(again.url, 'GET', `/v1/keys/${id}`, undefined, envKey)).status).toBe(401);
    await stop(again);
  }, 120_000);

  it('a second Ctrl-C (SIGINT again) while a request keeps the shutdown waiting: exits 1 at once, with a warning', async () => {
    const server = await serve([], { DATABASE_URL: db.url });
    const pending = halfSentCharge(server.port, 'ak_never_finished', 1);
    await pending.connected;
    expect((await call(server.url, 'GET', '/healthz')).status).toBe(200);
    await new Promise((resolve) => setTimeout(resolve, 200));
    server.proc.child.kill('SIGINT');
    await server.proc.waitForLog(/^shutting down/, 10_000);
    server.proc.child.kill('SIGINT');
    const result = await server.proc.exited;
    expect({ code: result.code, signal: result.signal }).toEqual({ code: 1, signal: null });
    expect(server.proc.lines.at(-1)).toMatchObject({ level: 40, signal: 'SIGINT', msg: 'second signal: exiting without waiting' });
  }, 60_000);

  it('a too-short, spaced or otherwise non-token AGENTKEY_ADMIN_KEY: exit 1 with one line that does not echo it', async () => {
    const keys = ['tooShort123', 'long enough but spaced', 'long-enough-but-"quoted"'];
    const results = await Promise.all(
      keys.map((key) => runCli(cli(), ['serve', '--port', '0', '--host', '127.0.0.1'], { env: cliEnv({ DATABASE_URL: db.url, AGENTKEY_ADMIN_KEY: key }) })),
    );
    results.forEach((result, i) => {
      expectOneLineFailure(result, /AGENTKEY_ADMIN_KEY must be at least 16 characters/);
      expect(result.stderr).not.toContain(keys[i]);
    });
  }, 60_000);

  it('AGENTKEY_SELF_SERVE: true mounts the self-serve routes, false (or unset) does not, anything else exits 1', async () => {
    const signup = async (url: string) =>
      (await fetch(`${url}/signup`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"email":"a@example.com"}' })).status;
    const on = await serve([], { DATABASE_URL: db.url, AGENTKEY_SELF_SERVE: 'true' });
    expect(await signup(on.url)).toBe(201);
    await stop(on);
    const off = await serve([], { DATABASE_URL: db.url, AGENTKEY_SELF_SERVE: 'false' });
    expect(await signup(off.url)).toBe(404);
    await stop(off);
    const bad = await runCli(cli(), ['serve', '--port', '0', '--host', '127.0.0.1'], { env: cliEnv({ DATABASE_URL: db.url, AGENTKEY_SELF_SERVE: 'maybe' }) });
    expectOneLineFailure(bad, /AGENTKEY_SELF_SERVE must be true or false/);
  }, 90_000);

  it('DATABASE_URL pointing at a closed port: exit 1 with one line, without the password', async () => {
    const closed = await busyPort();
    await closed.close();
    const url = `postgres://agent:S3cretPassw0rd@127.0.0.1:${closed.port}/agentkey`;
    const result = await runCli(cli(), ['serve', '--port', '0', '--host', '127.0.0.1'], { env: cliEnv({ DATABASE_URL: url }) });
    expectOneLineFailure(result, /Could not connect to PostgreSQL/);
    expect(result.stderr).toContain(`127.0.0.1:${closed.port}`);
    expect(result.stderr).not.toContain('S3cretPassw0rd');
  }, 60_000);
});
