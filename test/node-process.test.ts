import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { ROOT } from './helpers/processes.js';
import { nextMonthlyReset, nextUtcMidnight, plusUtcMonths } from './helpers/utc.js';

/**
 * The package bundled from the current src/ and loaded by a separate Node process: in
 * CommonJS on Node 20, and on a server whose time zone is far from UTC.
 */

const run = promisify(execFile);

describe('the package in a separate Node process', () => {
  // The current src, bundled afresh (a stale dist must not pass for it), inside the repo so
  // that the child resolves @electric-sql/pglite from node_modules.
  let outDir = '';
  beforeAll(async () => {
    if (!fs.existsSync(path.join(ROOT, 'dist', 'index.cjs')) || !fs.existsSync(path.join(ROOT, 'dist', 'index.js'))) {
      await run('npx', ['tsup'], { cwd: ROOT, timeout: 120_000 });
    }
    outDir = fs.mkdtempSync(path.join(ROOT, 'node_modules', '.agentkey-test-'));
    const { build } = await import('tsup');
    await build({
      entry: { index: path.join(ROOT, 'src', 'index.ts') },
      outDir,
      format: ['esm', 'cjs'],
      target: 'node20',
      shims: true,
      dts: false,
      sourcemap: false,
      clean: false,
      silent: true,
      config: false,
      loader: { '.sql': 'text' },
    });
  }, 130_000);
  afterAll(() => {
    if (outDir) fs.rmSync(outDir, { recursive: true, force: true });
  });

  it("happy: require('agentkey') works on Node 20 (CommonJS, no top-level await)", async () => {
    const script = `
      const exported = (m) => ({
        AgentKey: typeof m.AgentKey, AgentKeyError: typeof m.AgentKeyError,
        agentKeyMiddleware: typeof m.agentKeyMiddleware, createAgentKeyRoutes: typeof m.createAgentKeyRoutes,
      });
      console.log(JSON.stringify({
        package: exported(require('agentkey')),
        src: exported(require(${JSON.stringify(path.join(outDir, 'index.cjs'))})),
      }));`;
    const { stdout } = await run(process.execPath, ['-e', script], { cwd: ROOT, timeout: 30_000 });
    const expected = { AgentKey: 'function', AgentKeyError: 'function', agentKeyMiddleware: 'function', createAgentKeyRoutes: 'function' };
    expect(JSON.parse(stdout)).toEqual({ package: expected, src: expected });
  }, 60_000);

  it('happy: a server in TZ=Pacific/Kiritimati (UTC+14) computes UTC resets and expiries', async () => {
    const entry = pathToFileURL(path.join(outDir, 'index.js')).href;
    const script = `
      import { PGlite } from '@electric-sql/pglite';
      const { AgentKey } = await import(${JSON.stringify(entry)});
      const db = await PGlite.create();
      await db.query("SET TIME ZONE 'Pacific/Kiritimati'");
      const ak = new AgentKey({ pool: db });
      await ak.migrate();
      const before = Date.now();
      const day = await ak.create({ accountId: 'a', budgetCents: 100, budgetPeriod: 'day', expiresIn: '1mo' });
      const month = await ak.create({ accountId: 'a', budgetCents: 100, budgetPeriod: 'month' });
      const after = Date.now();
      const vDay = await ak.validate(day.key);
      const vMonth = await ak.validate(month.key);
      const zone = (await db.query('SHOW TimeZone')).rows[0];
      console.log(JSON.stringify({
        tz: Intl.DateTimeFormat().resolvedOptions().timeZone,
        offset: new Date().getTimezoneOffset(),
        zone, before, after, expiresAt: day.expiresAt,
        dayReset: vDay.budgetResetAt, monthReset: vMonth.budgetResetAt,
      }));
      await db.close();`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], {
      cwd: ROOT,
      env: { ...process.env, TZ: 'Pacific/Kiritimati' },
      timeout: 60_000,
    });
    const out = JSON.parse(stdout.trim().split('\n').pop()!);
    expect(out.tz).toBe('Pacific/Kiritimati');
    expect(out.offset).toBe(-840);
    expect(Object.values(out.zone)).toEqual(['Pacific/Kiritimati']);
    expect([nextUtcMidnight(out.before), nextUtcMidnight(out.after)]).toContain(out.dayReset);
    expect(out.dayReset).toMatch(/T00:00:00\.000Z$/);
    // A month key created now resets on the same UTC day next month (clamped), at UTC midnight.
    expect([nextMonthlyReset(new Date(out.before), new Date(out.before)), nextMonthlyReset(new Date(out.after), new Date(out.after))]).toContain(
      out.monthReset,
    );
    const expiry = Date.parse(out.expiresAt);
    expect(expiry).toBeGreaterThanOrEqual(plusUtcMonths(new Date(out.before), 1).getTime());
    expect(expiry).toBeLessThanOrEqual(plusUtcMonths(new Date(out.after), 1).getTime());
  }, 90_000);
});
