import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import { expect, it } from 'vitest';
import { ROOT } from '../helpers/processes.js';

/**
 * A TypeScript user of @katrinalaszlo/agentkey changes the import and nothing else:
 * test/compat/user-code.ts is their code, type-checked here against the built package
 * (dist/, through package.json "exports", as their compiler sees it), strict, libraries included.
 */

const run = promisify(execFile);
const TSC = path.join(ROOT, 'node_modules/typescript/bin/tsc');

async function typecheck(project: string): Promise<{ code: number; output: string }> {
  try {
    const { stdout } = await run(process.execPath, [TSC, '-p', project], { cwd: ROOT });
    return { code: 0, output: stdout };
  } catch (err) {
    const e = err as { code?: number; stdout?: string };
    return { code: e.code ?? 1, output: e.stdout ?? String(err) };
  }
}

it("happy: code written for the package's types compiles against agentkey with only the import changed", async () => {
  const { code, output } = await typecheck('test/compat/tsconfig.json');
  expect(output).toBe('');
  expect(code).toBe(0);
}, 120_000);

it('error: the same check fails on code that misuses the types, so it proves something', async () => {
  const dir = path.join(ROOT, 'test/compat/.typecheck-tmp');
  fs.mkdirSync(dir, { recursive: true });
  try {
    fs.writeFileSync(
      path.join(dir, 'misuse.ts'),
      `import { AgentKey, type ValidateResult } from 'agentkey';\n` +
        `declare const ak: AgentKey;\n` +
        `export async function f(): Promise<string> {\n` +
        `  const v = (await ak.validate('k')) as ValidateResult;\n` +
        `  return v.budgetUsedCents;\n` +
        `}\n`,
    );
    fs.writeFileSync(
      path.join(dir, 'tsconfig.json'),
      JSON.stringify({ extends: '../tsconfig.json', files: ['misuse.ts'] }),
    );
    const { code, output } = await typecheck(path.join(dir, 'tsconfig.json'));
    expect(code).not.toBe(0);
    expect(output).toMatch(/misuse\.ts\(5,\d+\): error TS2322: Type 'number' is not assignable to type 'string'/);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}, 120_000);
