import { type ChildProcess, fork } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'tsup';
import { afterAll, afterEach, beforeAll } from 'vitest';

/**
 * Worker processes for multi-process tests. Workers import the package bundled from the
 * current src/ (into node_modules/.cache, so they never run a stale dist/), talk to the
 * test over IPC and/or JSON lines on stdout, and are killed if a test leaves one running.
 */

export const ROOT = fileURLToPath(new URL('../..', import.meta.url));

const running = new Set<ChildProcess>();

/**
 * The `agentkey` command bundled from the current src/cli (see useWorkerBundle): run it
 * with `node <path> <args>`.
 */
export function useCliBundle(name: string): () => string {
  return useWorkerBundle(name, 'src/cli/bin.ts');
}

/**
 * Bundles src/index.ts (or `entry`) once for this file (beforeAll), removes it afterwards (afterAll),
 * and kills any worker a test left running (afterEach). Returns the bundle's path.
 */
export function useWorkerBundle(name: string, entry = 'src/index.ts'): () => string {
  const dir = path.join(ROOT, 'node_modules/.cache', `agentkey-${name}-test-${process.pid}`);
  const bundle = path.join(dir, 'index.js');
  let built = false;
  beforeAll(async () => {
    await build({
      entry: { index: path.join(ROOT, entry) },
      outDir: dir,
      format: ['esm'],
      platform: 'node',
      target: 'node20',
      config: false,
      dts: false,
      sourcemap: false,
      clean: true,
      shims: true,
      silent: true,
      loader: { '.sql': 'text' },
    });
    if (!fs.existsSync(bundle)) throw new Error(`tsup did not write ${bundle}`);
    built = true;
  }, 120_000);
  afterEach(stopWorkers);
  afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));
  return () => {
    if (!built) throw new Error('the worker bundle is not built yet');
    return bundle;
  };
}

export interface Worker {
  child: ChildProcess;
  /** Every JSON line the worker printed on stdout so far (a line that is not JSON: `{ unparsed }`). */
  lines: unknown[];
  stderr(): string;
  /** The exit code (null when killed by a signal). */
  exited: Promise<number | null>;
  /** The next IPC message not yet taken; rejects if the worker exits first. */
  nextMessage(): Promise<unknown>;
}

/** Forks `script` (a path under test/fixtures) with `args`, collecting its stdout lines and messages. */
export function startWorker(script: string, args: string[]): Worker {
  const child = fork(path.isAbsolute(script) ? script : path.join(ROOT, script), args, {
    cwd: ROOT,
    execArgv: [],
    env: { ...process.env, NODE_OPTIONS: '' },
    stdio: ['ignore', 'pipe', 'pipe', 'ipc'],
  });
  running.add(child);
  let stderr = '';
  let partial = '';
  const lines: unknown[] = [];
  const parseLine = (line: string) => {
    if (line.trim() === '') return;
    try {
      lines.push(JSON.parse(line));
    } catch {
      lines.push({ unparsed: line });
    }
  };
  child.stderr?.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdout?.on('data', (chunk: Buffer) => {
    const parts = (partial + chunk.toString()).split('\n');
    partial = parts.pop() ?? '';
    parts.forEach(parseLine);
  });
  const messages: unknown[] = [];
  const waiting: { resolve(m: unknown): void; reject(e: Error): void }[] = [];
  let exitCode: number | null | undefined;
  child.on('message', (m) => {
    const w = waiting.shift();
    if (w) w.resolve(m);
    else messages.push(m);
  });
  const exited = new Promise<number | null>((resolve) => {
    // 'close' comes after the stdio streams have ended, so every line has been read.
    child.once('close', (code) => {
      parseLine(partial);
      partial = '';
      exitCode = code;
      running.delete(child);
      for (const w of waiting.splice(0)) w.reject(new Error(`worker exited (${code}) early: ${stderr}`));
      resolve(code);
    });
  });
  return {
    child,
    lines,
    stderr: () => stderr,
    exited,
    nextMessage() {
      if (messages.length > 0) return Promise.resolve(messages.shift());
      if (exitCode !== undefined) return Promise.reject(new Error(`worker exited (${exitCode}) early: ${stderr}`));
      return new Promise((resolve, reject) => waiting.push({ resolve, reject }));
    },
  };
}

/** Kills every worker still running (each by its own process id). */
export function stopWorkers(): void {
  for (const child of running) if (child.exitCode === null && child.signalCode === null) child.kill();
  running.clear();
}

/**
 * Starts `workers`, waits until each has said 'ready' (connected), then tells them all 'go'
 * at once so their work overlaps. Resolves with their exit codes once all have exited.
 */
export async function runTogether(workers: Worker[]): Promise<(number | null)[]> {
  const ready = await Promise.all(workers.map((w) => w.nextMessage()));
  if (!ready.every((m) => m === 'ready')) throw new Error(`workers did not all get ready: ${JSON.stringify(ready)}`);
  for (const w of workers) w.child.send('go');
  return Promise.all(workers.map((w) => w.exited));
}
