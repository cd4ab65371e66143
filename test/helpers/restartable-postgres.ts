import { type ChildProcess, spawn } from 'node:child_process';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';

/**
 * A PostgreSQL of one test file's own that the file may restart (stop, then start again on
 * the same data directory and port): test/support/pg-server.mjs's server is shared by every
 * file running in parallel, so it is never the one restarted. Runs in a child process
 * (test/support/pg-restartable.mjs), out of the test runner's process.
 */
export interface RestartablePostgres {
  /** URL of its `postgres` database. */
  url: string;
  /** Stops the server (`immediate`: as after a crash; `fast`: rolling back what runs), waits `downMs`, starts it again. */
  restart(options?: { mode?: 'immediate' | 'fast'; downMs?: number }): Promise<{ stoppedAt: number; startedAt: number }>;
  /** The postmaster's process id. */
  pid(): Promise<number>;
  /** Stops the server and removes its files. */
  stop(): Promise<void>;
}

export async function startRestartablePostgres(): Promise<RestartablePostgres> {
  const script = fileURLToPath(new URL('../support/pg-restartable.mjs', import.meta.url));
  const child: ChildProcess = spawn(process.execPath, [script], { stdio: ['pipe', 'pipe', 'inherit'] });
  const answers: Record<string, unknown>[] = [];
  const waiting: ((m: Record<string, unknown>) => void)[] = [];
  let exited = false;
  const gone = new Promise<void>((resolve) =>
    child.once('exit', () => {
      exited = true;
      for (const w of waiting.splice(0)) w({ error: 'the PostgreSQL process exited' });
      resolve();
    }),
  );
  readline.createInterface({ input: child.stdout! }).on('line', (line) => {
    const message = JSON.parse(line) as Record<string, unknown>;
    const w = waiting.shift();
    if (w) w(message);
    else answers.push(message);
  });
  const next = () =>
    new Promise<Record<string, unknown>>((resolve) => {
      if (answers.length > 0) resolve(answers.shift()!);
      else if (exited) resolve({ error: 'the PostgreSQL process exited' });
      else waiting.push(resolve);
    });
  const ask = async (command: Record<string, unknown>) => {
    child.stdin!.write(JSON.stringify(command) + '\n');
    const answer = await next();
    if (answer.error) throw new Error(`the restartable PostgreSQL failed: ${String(answer.error)}`);
    return answer;
  };

  const first = await next();
  if (typeof first.url !== 'string') throw new Error(`the restartable PostgreSQL did not start: ${String(first.error)}`);
  return {
    url: first.url,
    async restart(options = {}) {
      const answer = await ask({ cmd: 'restart', mode: options.mode ?? 'immediate', downMs: options.downMs ?? 0 });
      return { stoppedAt: Number(answer.stoppedAt), startedAt: Number(answer.startedAt) };
    },
    async pid() {
      return Number((await ask({ cmd: 'pid' })).pid);
    },
    async stop() {
      if (!exited) child.stdin!.end();
      await gone;
    },
  };
}
