import fs from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { expect, it } from 'vitest';
import { ROOT } from './helpers/processes.js';

/**
 * Every subpath in package.json "exports" loads from the built dist/ (npm install builds it),
 * in ESM and in CommonJS on Node 20, with the names the README documents.
 */
const EXPECTED: Record<string, string[]> = {
  '.': ['AgentKey', 'AgentKeyError', 'agentKeyMiddleware', 'createAgentKeyRoutes'],
  './express': ['agentKeyMiddleware', 'createAgentKeyRoutes'],
  './hono': ['agentKey'],
  './fetch': ['agentKeyGuard', 'withAgentKey'],
  './fastify': ['agentKeyPlugin', 'agentKeyPreHandler'],
  './jwt': ['jwtSubjects'],
  './clerk': ['clerkM2M'],
  './server': ['createApp', 'startServer'],
  './webhooks': ['startDeliverer'],
  './llm': ['costFromUsage', 'estimateMaxCost', 'createPriceCatalog', 'countTokens'],
  './proxy': ['createProxy', 'upstreamsFromEnv', 'describeUpstreams'],
};

it('happy: package.json exports exactly the documented subpaths, and each loads in ESM and CommonJS with its functions', async () => {
  const pkg = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8')) as { exports: Record<string, unknown>; bin: Record<string, string> };
  expect(Object.keys(pkg.exports).filter((k) => k !== './package.json').sort()).toEqual(Object.keys(EXPECTED).sort());
  const require = createRequire(import.meta.url);
  for (const [sub, names] of Object.entries(EXPECTED)) {
    const specifier = sub === '.' ? 'agentkey' : `agentkey${sub.slice(1)}`;
    const esm = (await import(specifier)) as Record<string, unknown>;
    const cjs = require(specifier) as Record<string, unknown>;
    for (const name of names) {
      expect(typeof esm[name], `${specifier} (ESM) ${name}`).toBe('function');
      expect(typeof cjs[name], `${specifier} (CJS) ${name}`).toBe('function');
    }
  }
  expect(fs.existsSync(path.join(ROOT, pkg.bin.agentkey as string))).toBe(true);
});

it('happy: the core entry loads neither the price catalog nor the tokenizer until a cost needs them (CommonJS: the require cache)', async () => {
  const { execFileSync } = await import('node:child_process');
  const script = `require(${JSON.stringify(path.join(ROOT, 'dist/index.cjs'))});
    const heavy = () => Object.keys(require.cache).filter((k) => /genai-prices|gpt-tokenizer/.test(k)).length;
    const before = heavy();
    require(${JSON.stringify(path.join(ROOT, 'dist/llm.cjs'))});
    console.log(JSON.stringify({ before, after: heavy() }));`;
  const out = JSON.parse(execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' })) as { before: number; after: number };
  expect(out.before).toBe(0);
  expect(out.after).toBeGreaterThan(0);
});
