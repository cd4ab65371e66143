import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { build } from 'tsup';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FakeLlm, FAKE_TEXT, startFakeLlm } from '../helpers/fake-llm.js';
import { ROOT } from '../helpers/processes.js';

/**
 * The examples (examples/proxy-*.ts) run as they are, against the fake upstream in place of
 * OpenAI and Anthropic: each is bundled from the current src/ ('agentkey' and
 * 'agentkey/proxy' resolved to it) and run as a process, and what it prints is checked.
 */

const dir = path.join(ROOT, 'node_modules/.cache', `agentkey-proxy-examples-${process.pid}`);
const EXAMPLES = ['proxy-openai', 'proxy-anthropic'];

beforeAll(async () => {
  await build({
    entry: Object.fromEntries(EXAMPLES.map((name) => [name, path.join(ROOT, `examples/${name}.ts`)])),
    outDir: dir,
    format: ['esm'],
    platform: 'node',
    target: 'node20',
    config: false,
    dts: false,
    sourcemap: false,
    clean: true,
    silent: true,
    loader: { '.sql': 'text' },
    external: ['@electric-sql/pglite', 'openai', '@anthropic-ai/sdk', '@hono/node-server'],
    esbuildPlugins: [
      {
        name: 'agentkey-from-src',
        setup(b) {
          b.onResolve({ filter: /^agentkey(\/proxy)?$/ }, (args) => ({ path: path.join(ROOT, args.path === 'agentkey' ? 'src/index.ts' : 'src/proxy/index.ts') }));
        },
      },
    ],
  });
}, 120_000);
afterAll(() => fs.rmSync(dir, { recursive: true, force: true }));

function run(name: string, env: Record<string, string>): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [path.join(dir, `${name}.js`)], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c));
    child.stderr.on('data', (c: Buffer) => (stderr += c));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

describe('the examples', () => {
  let fake: FakeLlm;
  beforeAll(async () => {
    fake = await startFakeLlm();
  });
  afterAll(async () => {
    await fake.close();
  });

  it('happy: proxy-openai.ts: a reply, a stream, a model refused, and the calls in the ledger', async () => {
    const out = await run('proxy-openai', { OPENAI_API_KEY: fake.apiKey, OPENAI_BASE_URL: fake.url });
    expect(out.stderr).toBe('');
    expect(out.code).toBe(0);
    expect(out.stdout).toContain(`reply: ${FAKE_TEXT}`);
    expect(out.stdout).toContain(`stream: ${FAKE_TEXT}`);
    expect(out.stdout).toContain('refused: 403 model_not_allowed');
    expect(out.stdout).toMatch(/spent: 0\.\d+ of 50 cents/);
    expect(out.stdout.match(/^commit: .* gpt-4o-mini 21 in, 9 out$/gm)).toHaveLength(2);
    expect(out.stdout).not.toContain(fake.apiKey);
  }, 60_000);

  it('happy: proxy-anthropic.ts: a reply, a stream, and a request past the day\'s budget refused with Retry-After', async () => {
    const out = await run('proxy-anthropic', { ANTHROPIC_API_KEY: fake.apiKey, ANTHROPIC_BASE_URL: fake.url });
    expect(out.stderr).toBe('');
    expect(out.code).toBe(0);
    expect(out.stdout).toContain(`reply: ${FAKE_TEXT}`);
    expect(out.stdout).toContain('stream: 9 output tokens');
    expect(out.stdout).toMatch(/refused: 429 budget_exceeded retry after \d+ s/);
    expect(out.stdout).toMatch(/spent: 0\.\d+ cents today/);
  }, 60_000);
});
