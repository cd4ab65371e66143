import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { afterAll, afterEach, beforeAll, expect, inject, it } from 'vitest';
import { withDatabase } from './databases.js';
import { useCliBundle } from './processes.js';

/**
 * Runs the `agentkey` command (the bundle from useCliBundle) as a real process: one-shot
 * commands with runCli(), long-running ones (serve) with startCli(). Every process started
 * here is remembered until it exits, and stopCliProcesses() kills the ones still running
 * (each by its own process id): call it in afterEach/afterAll.
 */

const running = new Set<ChildProcess>();

/** Variables the CLI reads; never inherited from the developer's shell or CI. */
const CLI_VARIABLES = [
  'DATABASE_URL',
  'AGENTKEY_DATA_DIR',
  'AGENTKEY_ADMIN_KEY',
  'AGENTKEY_TABLE',
  'AGENTKEY_SELF_SERVE',
  'AGENTKEY_SIGNUP_SCOPES',
  'PORT',
  'HOST',
  'LOG_LEVEL',
  'AGENTKEY_DIRECT_URL',
  'AGENTKEY_READ_URL',
  // A developer's shell must not mount the LLM proxy in tests that do not ask for it.
  'OPENAI_API_KEY',
  'ANTHROPIC_API_KEY',
  'AGENTKEY_OPENAI_API_KEY',
  'AGENTKEY_ANTHROPIC_API_KEY',
  'AGENTKEY_UPSTREAMS',
];

/** The test runner's environment without the CLI's own variables, plus `extra` (undefined removes one). */
export function cliEnv(extra: Record<string, string | undefined> = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = { ...process.env, NODE_OPTIONS: '' };
  for (const name of CLI_VARIABLES) delete env[name];
  for (const [name, value] of Object.entries(extra)) {
    if (value === undefined) delete env[name];
    else env[name] = value;
  }
  return env;
}

export interface CliOptions {
  env?: NodeJS.ProcessEnv;
  cwd?: string;
}

export interface CliResult {
  /** The exit code; null when the process was killed (see `signal`). */
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

export interface CliProcess {
  child: ChildProcess;
  pid: number;
  stdout(): string;
  stderr(): string;
  /** Every stdout line that parses as a JSON object so far (pino's log lines). */
  lines: Record<string, unknown>[];
  /** Resolves once the process has exited and its output has been read to the end. */
  exited: Promise<CliResult>;
  /** Waits until `check()` is truthy; rejects if the process exits first or after `timeoutMs`. */
  waitFor<T>(what: string, check: () => T | undefined | null | false, timeoutMs?: number): Promise<T>;
  /** Waits for the first JSON log line whose msg matches. */
  waitForLog(msg: RegExp, timeoutMs?: number): Promise<Record<string, unknown>>;
}

/** Starts `node <bundle> ...args`, collecting its output. */
export function startCli(bundle: string, args: string[], options: CliOptions = {}): CliProcess {
  const child = spawn(process.execPath, [bundle, ...args], {
    cwd: options.cwd ?? os.tmpdir(),
    env: options.env ?? cliEnv(),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let stdout = '';
  let stderr = '';
  let partial = '';
  const lines: Record<string, unknown>[] = [];
  const parseLine = (line: string) => {
    try {
      const value: unknown = JSON.parse(line);
      if (value !== null && typeof value === 'object') lines.push(value as Record<string, unknown>);
    } catch {
      /* not a log line */
    }
  };
  child.stdout?.on('data', (chunk: Buffer) => {
    const text = chunk.toString();
    stdout += text;
    const parts = (partial + text).split('\n');
    partial = parts.pop() ?? '';
    parts.forEach(parseLine);
  });
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  let done: CliResult | undefined;
  const exited = new Promise<CliResult>((resolve) => {
    const finish = (code: number | null, signal: NodeJS.Signals | null) => {
      if (done) return;
      parseLine(partial);
      partial = '';
      running.delete(child);
      done = { code, signal, stdout, stderr };
      resolve(done);
    };
    // 'close' comes after the stdio streams have ended, so all the output has been read.
    child.once('close', finish);
    child.once('error', (err) => {
      stderr += String(err);
      finish(null, null);
    });
  });
  const waitFor = <T>(what: string, check: () => T | undefined | null | false, timeoutMs = 60_000): Promise<T> =>
    new Promise<T>((resolve, reject) => {
      const started = Date.now();
      const poll = () => {
        const value = check();
        if (value) return resolve(value);
        if (done) return reject(new Error(`agentkey exited (${done.code ?? done.signal}) before ${what}.\nstdout:\n${stdout}\nstderr:\n${stderr}`));
        if (Date.now() - started > timeoutMs) return reject(new Error(`timed out waiting for ${what}.\nstdout:\n${stdout}\nstderr:\n${stderr}`));
        setTimeout(poll, 20);
      };
      poll();
    });
  return {
    child,
    pid: child.pid as number,
    stdout: () => stdout,
    stderr: () => stderr,
    lines,
    exited,
    waitFor,
    waitForLog: (msg, timeoutMs) => waitFor(`a log line matching ${msg}`, () => lines.find((l) => typeof l.msg === 'string' && msg.test(l.msg)), timeoutMs),
  };
}

/** Runs `node <bundle> ...args` to the end (killed after `timeoutMs`). */
export async function runCli(bundle: string, args: string[], options: CliOptions & { timeoutMs?: number } = {}): Promise<CliResult> {
  const proc = startCli(bundle, args, options);
  const timer = setTimeout(() => proc.child.kill('SIGKILL'), options.timeoutMs ?? 45_000);
  try {
    return await proc.exited;
  } finally {
    clearTimeout(timer);
  }
}

/** Kills every process started here that is still running, and waits until they are gone. */
export async function stopCliProcesses(): Promise<void> {
  const left = [...running];
  await Promise.all(
    left.map(
      (child) =>
        new Promise<void>((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) return resolve();
          child.once('close', () => resolve());
          child.kill('SIGKILL');
        }),
    ),
  );
  for (const child of left) running.delete(child);
}

/** A new empty directory under the OS temp dir. */
export function tempDir(prefix: string): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), `${prefix}-`));
}

let databases = 0;

/** A new, empty database on the test PostgreSQL; returns its URL and a function that drops it. */
export async function freshDatabase(prefix: string): Promise<{ url: string; drop(): Promise<void> }> {
  const adminUrl = inject('pgUrl');
  const name = `${prefix}_${process.pid}_${++databases}_${Date.now() % 100000}`;
  const admin = new pg.Client({ connectionString: adminUrl });
  await admin.connect();
  try {
    await admin.query(`CREATE DATABASE ${name}`);
  } finally {
    await admin.end();
  }
  return {
    url: withDatabase(adminUrl, name),
    async drop() {
      const client = new pg.Client({ connectionString: adminUrl });
      await client.connect();
      try {
        await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      } finally {
        await client.end();
      }
    },
  };
}

/** The lines of a text, without the empty last one. */
export function linesOf(text: string): string[] {
  return text.split('\n').filter((line, i, all) => !(line === '' && i === all.length - 1));
}

/** Exit code 0 and nothing on stderr; returns stdout. */
export function expectSuccess(result: CliResult): string {
  expect({ code: result.code, stderr: result.stderr }).toEqual({ code: 0, stderr: '' });
  return result.stdout;
}

/** expectSuccess(), with stdout parsed as JSON. */
export function expectJson(result: CliResult): any {
  return JSON.parse(expectSuccess(result));
}

/** Exit code 1, nothing on stdout, and a first stderr line `agentkey: <message>` without a stack trace. */
export function expectFailure(result: CliResult, message: RegExp): void {
  expect({ code: result.code, stdout: result.stdout }, result.stderr).toEqual({ code: 1, stdout: '' });
  expect(linesOf(result.stderr)[0]).toMatch(/^agentkey: \S/);
  expect(linesOf(result.stderr)[0]).toMatch(message);
  expect(result.stderr).not.toMatch(/\n\s+at |node_modules|\.ts:\d+|unexpected; please report/);
}

/** The whole of stderr is the one `agentkey: ...` line. */
export function expectOneLine(result: CliResult): void {
  expect(linesOf(result.stderr), `stderr of a failed run:\n${result.stderr}`).toEqual([expect.stringMatching(/^agentkey: \S/)]);
}

/**
 * The CLI bundled as `name`, run in an empty temp directory of its own (so a default
 * ./.agentkey never lands in the repo), its processes stopped after each test and the
 * directory removed after the file. Call at the top of a test file.
 */
export function useCliRunner(name: string) {
  const cli = useCliBundle(name);
  let dir = '';
  afterEach(stopCliProcesses);
  beforeAll(() => {
    dir = tempDir(`agentkey-${name}-cwd`);
  });
  afterAll(async () => {
    await stopCliProcesses();
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return {
    cli,
    cwd: () => dir,
    run: (args: string[], env: Record<string, string | undefined> = {}): Promise<CliResult> => runCli(cli(), args, { cwd: dir, env: cliEnv(env) }),
  };
}

/** One store the CLI runs against in a test file: made before its tests, removed after, and how a run names it. */
export interface CliStore {
  before(): Promise<void>;
  after(): Promise<void>;
  env(): Record<string, string>;
  options(): { databaseUrl?: string; dataDir?: string };
}

/**
 * Calls `suite` once on PGlite (a temp data directory) and once on PostgreSQL (a fresh
 * database, migrated through the CLI with `run`): the two stores every CLI test file covers.
 */
export function forEachCliStore(
  name: string,
  run: (args: string[], env: Record<string, string | undefined>) => Promise<CliResult>,
  suite: (label: string, store: CliStore) => void,
): void {
  let dataDir = '';
  suite('on PGlite (a temp data directory)', {
    async before() {
      dataDir = tempDir(`agentkey-${name}-data`);
    },
    async after() {
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
    env: () => ({ AGENTKEY_DATA_DIR: dataDir }),
    options: () => ({ dataDir }),
  });
  let db: Awaited<ReturnType<typeof freshDatabase>> | undefined;
  suite('on PostgreSQL (DATABASE_URL)', {
    async before() {
      db = await freshDatabase(`agentkey_${name.replace(/-/g, '_')}`);
      expectSuccess(await run(['migrate'], { DATABASE_URL: db.url }));
    },
    async after() {
      await db?.drop().catch(() => {});
    },
    env: () => ({ DATABASE_URL: (db as { url: string }).url }),
    options: () => ({ databaseUrl: (db as { url: string }).url }),
  });
}

/**
 * The checks every CLI test file makes of its bad arguments, inside its describe: each
 * exits 1 with one line on stderr and nothing on stdout, before any database is opened
 * (none is created in `cwd()`, and none is asked for).
 */
export function badArgumentTests(bad: [string, string[], RegExp][], run: (args: string[]) => Promise<CliResult>, cwd: () => string): void {
  const results = new Map<string, CliResult>();
  beforeAll(async () => {
    const all = await Promise.all(bad.map(([, args]) => run(args)));
    bad.forEach(([label], i) => results.set(label, all[i] as CliResult));
  }, 120_000);

  it.each(bad)('%s: exit 1, one line, nothing on stdout, before any database is opened', (label, _args, message) => {
    const result = results.get(label) as CliResult;
    expectFailure(result, message);
    expectOneLine(result);
    expect(result.stderr).not.toMatch(/No agentkey database/);
  });

  it('no mistake opened or created a database', () => {
    expect(fs.readdirSync(cwd())).toEqual([]);
  });
}
