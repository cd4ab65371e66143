import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import fc from 'fast-check';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError, MAX_CENTS, type ValidKey, type ValidationResult } from '../src/index.js';
import { mintKey } from '../src/keys.js';
import { type TestDb, forEachDatabase } from './helpers/databases.js';
import { rejectingPool } from './helpers/faults.js';

const run = promisify(execFile);
const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

// ---------------------------------------------------------------------------------------
// Helpers

function checkError(err: unknown, code: string, label: string): void {
  expect(err, `${label}: expected AgentKeyError ${code}`).toBeInstanceOf(AgentKeyError);
  expect((err as AgentKeyError).code, label).toBe(code);
  expect((err as AgentKeyError).name).toBe('AgentKeyError');
  // One sentence: says what was wrong, ends with a full stop, no stack of lines.
  expect((err as Error).message, label).toMatch(/\.$/);
  expect((err as Error).message, label).not.toContain('\n');
}

/** Calls an async method: it must return a rejected promise (not throw synchronously) with `code`. */
async function rejectsWith(call: () => Promise<unknown>, code: string, label = code): Promise<AgentKeyError> {
  let promise: Promise<unknown> | undefined;
  expect(() => {
    promise = call();
  }, `${label}: threw synchronously instead of rejecting`).not.toThrow();
  const err = await (promise as Promise<unknown>).then(
    (value) => ({ resolved: value }),
    (e: unknown) => e,
  );
  checkError(err, code, label);
  return err as AgentKeyError;
}

function throwsWith(call: () => unknown, code: string, label = code): AgentKeyError {
  let err: unknown;
  try {
    call();
  } catch (e) {
    err = e;
  }
  checkError(err, code, label);
  return err as AgentKeyError;
}

async function count(db: TestDb, ak: AgentKey): Promise<number> {
  const rows = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${ak.tableName}`);
  return Number(rows[0]!.n);
}

interface RawRow {
  spent_micros: string;
  budget_micros: string | null;
  budget_cents: string | null;
  budget_used_cents: string | null;
  budget_reset_at: Date | null;
  expires_at: Date | null;
  revoked_at: Date | null;
  last_used_at: Date | null;
  account_id: string;
}

async function rawRow(db: TestDb, ak: AgentKey, id: number): Promise<RawRow> {
  const rows = await db.query<RawRow>(
    `SELECT spent_micros::text AS spent_micros, budget_micros::text AS budget_micros,
            budget_cents::text AS budget_cents, budget_used_cents::text AS budget_used_cents,
            budget_reset_at, expires_at, revoked_at, last_used_at, account_id
       FROM ${ak.tableName} WHERE id = $1`,
    [id],
  );
  expect(rows).toHaveLength(1);
  return rows[0]!;
}

/** A snapshot of the whole table, to prove a failed call changed nothing. */
async function snapshot(db: TestDb, ak: AgentKey): Promise<string> {
  const rows = await db.query<{ j: string }>(`SELECT row_to_json(t)::text AS j FROM ${ak.tableName} t ORDER BY id`);
  return rows.map((r) => r.j).join('\n');
}

async function subjectId(db: TestDb, ak: AgentKey, subject: string): Promise<number> {
  const rows = await db.query<{ id: number }>(`SELECT id::int AS id FROM ${ak.tableName} WHERE external_subject = $1`, [subject]);
  expect(rows).toHaveLength(1);
  return Number(rows[0]!.id);
}

function valid(result: ValidationResult): ValidKey {
  expect(result.valid).toBe(true);
  return result as ValidKey;
}

/** The first UTC midnight strictly after `t`. */
function nextUtcMidnight(t: number): string {
  const d = new Date(t);
  return new Date(Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + 1)).toISOString();
}

/** `from` plus `months` calendar months in UTC, clamped to the end of shorter months. */
function plusUtcMonths(from: Date, months: number): Date {
  const y = from.getUTCFullYear();
  const m = from.getUTCMonth() + months;
  const last = new Date(Date.UTC(y, m + 1, 0)).getUTCDate();
  return new Date(
    Date.UTC(y, m, Math.min(from.getUTCDate(), last), from.getUTCHours(), from.getUTCMinutes(), from.getUTCSeconds(), from.getUTCMilliseconds()),
  );
}

/** Reference for a monthly reset: the first anchor-day UTC midnight (clamped) after `at`. */
function nextMonthlyReset(anchor: Date, at: Date): string {
  const start = new Date(Date.UTC(anchor.getUTCFullYear(), anchor.getUTCMonth(), anchor.getUTCDate()));
  for (let k = 1; ; k++) {
    const candidate = plusUtcMonths(start, k);
    if (candidate.getTime() > at.getTime()) return candidate.toISOString();
  }
}

/** Runs `fn` on one database session with its TimeZone set, then puts it back. */
async function inTimeZone<T>(db: TestDb, zone: string, fn: (q: TestDb['query']) => Promise<T>): Promise<T> {
  if (db.name === 'postgres') {
    const client = await (db.pool as pg.Pool).connect();
    try {
      await client.query(`SET TIME ZONE '${zone}'`);
      return await fn(async (text, params) => (await client.query(text, params)).rows);
    } finally {
      await client.query('RESET TIME ZONE');
      client.release();
    }
  }
  await db.query(`SET TIME ZONE '${zone}'`);
  try {
    return await fn(db.query);
  } finally {
    await db.query('RESET TIME ZONE');
  }
}

const PAGE_EXAMPLE = {
  accountId: 'acct_123',
  scopes: ['usage.read', 'proxy.chat'],
  budgetCents: 5000,
  budgetPeriod: 'month' as const,
  expiresIn: '7d',
  delegatedBy: 'user_456',
  name: 'sales-agent',
};

// ---------------------------------------------------------------------------------------
// Checks that need no database

describe('new AgentKey() (no database)', () => {
  it('happy: the constructor runs no SQL', () => {
    const pool = rejectingPool();
    const ak = new AgentKey({ pool, tableName: 'billing.sdk_api_keys', keyPrefix: 'sk_' });
    expect(ak.tableName).toBe('billing.sdk_api_keys');
    expect(ak.keyPrefix).toBe('sk_');
    expect(new AgentKey({ pool }).tableName).toBe('sdk_api_keys');
    expect(new AgentKey({ pool }).keyPrefix).toBe('ak_');
    expect(pool.calls).toBe(0);
  });

  it('security: an injected or malformed tableName is refused before any SQL runs', () => {
    const pool = rejectingPool();
    const names: unknown[] = [
      'keys; drop table x',
      'a.b.c',
      '',
      '.keys',
      'keys.',
      'public..keys',
      ' keys',
      'keys ',
      'ke-ys',
      'keys--',
      '"keys"',
      'keys"; DROP TABLE users; --',
      "keys' OR '1'='1",
      '1keys',
      'a'.repeat(64),
      'sch.' + 'a'.repeat(64),
      'ключи',
      'keys\u0000',
      5,
      {},
      ['keys'],
    ];
    for (const tableName of names) {
      throwsWith(() => new AgentKey({ pool, tableName: tableName as string }), 'invalid_table_name', JSON.stringify(tableName));
    }
    expect(pool.calls).toBe(0);
  });

  it('error: bad constructor options throw the right code', () => {
    const pool = rejectingPool();
    for (const options of [undefined, null, 'pool', 42, [], [pool]]) {
      throwsWith(() => new AgentKey(options as never), 'invalid_argument', String(options));
    }
    throwsWith(() => new AgentKey({ pool, table: 'keys' } as never), 'invalid_argument', 'unknown option');
    throwsWith(() => new AgentKey({ pool, tablename: 'keys' } as never), 'invalid_argument', 'misspelt option');
    for (const bad of [undefined, null, {}, 'postgres://x', { query: 1 }, { query() {} }]) {
      throwsWith(() => new AgentKey({ pool: bad } as never), 'invalid_pool', JSON.stringify(bad));
    }
    for (const keyPrefix of ['', 'a b', 'x'.repeat(17), 'ak$', 5]) {
      throwsWith(() => new AgentKey({ pool, keyPrefix: keyPrefix as string }), 'invalid_argument', `keyPrefix ${keyPrefix}`);
    }
    for (const validScopes of ['usage.read', [1], ['has space'], [''], {}]) {
      throwsWith(() => new AgentKey({ pool, validScopes: validScopes as string[] }), 'invalid_scope', JSON.stringify(validScopes));
    }
    expect(pool.calls).toBe(0);
  });

  it('security: a mistyped or truncated key is refused without any database query', async () => {
    const pool = rejectingPool();
    const ak = new AgentKey({ pool });
    // A well-formed key reaches the (broken) database: proof that the refusals below never did.
    const key = mintKey('ak_').raw;
    await rejectsWith(() => ak.validate(key), 'storage_error', 'well-formed key');
    const callsBefore = pool.calls;
    expect(callsBefore).toBeGreaterThan(0);

    const bump = (c: string) => (c === 'z' ? 'a' : c === '9' ? 'A' : String.fromCharCode(c.charCodeAt(0) + 1));
    const variants = [
      key.slice(0, -1),
      key.slice(0, -6),
      key.slice(0, 10),
      'ak_',
      '',
      key + 'a',
      'sk_' + key.slice(3),
      key.toUpperCase() === key ? key.toLowerCase() : key.toUpperCase(),
      ...Array.from({ length: key.length - 3 }, (_, i) => key.slice(0, 3 + i) + bump(key[3 + i]!) + key.slice(4 + i)),
    ];
    for (const v of variants) {
      expect(await ak.validate(v), v).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.trackUsage(v, { costCents: 1 }), v).toEqual({ success: false, reason: 'invalid_key' });
    }
    expect(pool.calls).toBe(callsBefore);
  });

  it('error: a pool that is down makes every storage call reject with storage_error', async () => {
    const pool = rejectingPool();
    const ak = new AgentKey({ pool });
    const key = mintKey('ak_').raw;
    const err = await rejectsWith(() => ak.create({ accountId: 'a' }), 'storage_error', 'create');
    expect((err.cause as Error).message).toMatch(/ECONNREFUSED/);
    await rejectsWith(() => ak.validate(key), 'storage_error', 'validate');
    await rejectsWith(() => ak.trackUsage(key, { costCents: 1 }), 'storage_error', 'trackUsage');
    await rejectsWith(() => ak.revoke(1), 'storage_error', 'revoke');
    await rejectsWith(() => ak.migrate(), 'storage_error', 'migrate');
    await rejectsWith(() => ak.ensureSubject('mch_1'), 'storage_error', 'ensureSubject');
    await rejectsWith(() => ak.validateBySubject('mch_1'), 'storage_error', 'validateBySubject');
    await rejectsWith(() => ak.trackUsageBySubject('mch_1', { costCents: 1 }), 'storage_error', 'trackUsageBySubject');
  });

  it('error: argument errors are reported before the (broken) database is touched', async () => {
    const pool = rejectingPool();
    const ak = new AgentKey({ pool });
    await rejectsWith(() => ak.create({ accountId: '' }), 'invalid_argument');
    await rejectsWith(() => ak.create({ accountId: 'a', expiresIn: '7x' }), 'invalid_duration');
    await rejectsWith(() => ak.revoke('abc'), 'invalid_argument');
    await rejectsWith(() => ak.ensureSubject(''), 'invalid_argument');
    await rejectsWith(() => ak.validateBySubject(''), 'invalid_argument');
    expect(await ak.trackUsage('ak_whatever', { costCents: -1 })).toEqual({ success: false, reason: 'invalid_cost' });
    expect(pool.calls).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------
// The built package, in a separate Node process

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

// ---------------------------------------------------------------------------------------
// Integration: every test below runs on a real PostgreSQL and on PGlite

forEachDatabase((getDb) => {
  describe('the page API', () => {
    it('happy: create returns exactly { key, id, scopes, budgetCents, budgetPeriod, expiresAt }', async () => {
      const ak = await getDb().agentKey();
      const before = Date.now();
      const created = await ak.create(PAGE_EXAMPLE);
      const after = Date.now();
      expect(Object.keys(created).sort()).toEqual(['budgetCents', 'budgetPeriod', 'expiresAt', 'id', 'key', 'scopes']);
      expect(created).toMatchObject({ scopes: ['usage.read', 'proxy.chat'], budgetCents: 5000, budgetPeriod: 'month' });
      expect(created.key.startsWith('ak_')).toBe(true);
      expect(typeof created.id).toBe('number');
      expect(Number.isSafeInteger(created.id) && created.id > 0).toBe(true);
      expect(created.expiresAt).toMatch(ISO);
      const week = 7 * 86_400_000;
      expect(Date.parse(created.expiresAt!)).toBeGreaterThanOrEqual(before + week);
      expect(Date.parse(created.expiresAt!)).toBeLessThanOrEqual(after + week);

      const unbounded = await ak.create({ accountId: 'acct_123' });
      expect(unbounded).toMatchObject({ scopes: null, budgetCents: null, budgetPeriod: null, expiresAt: null });
      expect(unbounded.id).toBeGreaterThan(created.id);
      expect(unbounded.key).not.toBe(created.key);
    });

    it("happy: validate returns the page's fields (and a few more) for a valid key", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const created = await ak.create(PAGE_EXAMPLE);
      const result = await ak.validate(created.key);
      expect(result).toEqual({
        valid: true,
        id: created.id,
        keyId: created.id,
        accountId: 'acct_123',
        userId: null,
        name: 'sales-agent',
        scopes: ['usage.read', 'proxy.chat'],
        budgetCents: 5000,
        budgetUsedCents: 0,
        budgetRemainingCents: 5000,
        budgetHeldCents: 0,
        budgetPeriod: 'month',
        budgetResetAt: expect.stringMatching(ISO),
        expiresAt: created.expiresAt,
        delegatedBy: 'user_456',
      });
      // last_used_at is written in batches (every second, or on flush()), not by each validation.
      expect((await rawRow(db, ak, created.id)).last_used_at).toBeNull();
      await ak.flush();
      expect((await rawRow(db, ak, created.id)).last_used_at).not.toBeNull();

      // The page's example: 1200 of 5000 spent.
      expect(await ak.trackUsage(created.key, { costCents: 1200 })).toEqual({
        success: true,
        budgetUsedCents: 1200,
        budgetRemainingCents: 3800,
      });
      expect(await ak.validate(created.key)).toMatchObject({ valid: true, budgetCents: 5000, budgetUsedCents: 1200, budgetRemainingCents: 3800, budgetHeldCents: 0 });
    });

    it('happy: a key without budget, scopes or expiry is unlimited', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 42 });
      const v = valid(await ak.validate(key));
      expect(String(v.accountId)).toBe('42'); // stored in the TEXT account_id column
      // A key without a name is 'default' to validate(); getKey() shows the row's null.
      expect(v).toMatchObject({ scopes: null, budgetCents: null, budgetUsedCents: 0, budgetRemainingCents: null, budgetPeriod: null, budgetResetAt: null, expiresAt: null, delegatedBy: null, name: 'default', userId: null });
      expect(await ak.getKey(v.id)).toMatchObject({ name: null, budgetCents: null });
      expect(await ak.trackUsage(key, { costCents: MAX_CENTS })).toEqual({ success: true, budgetUsedCents: MAX_CENTS, budgetRemainingCents: null });
      expect(ak.hasScope(v, 'anything.at.all')).toBe(true);
    });

    it("happy: trackUsage charges and refuses with 'budget_exceeded' at the cap, changing nothing", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      expect(await ak.trackUsage(key, { costCents: 15 })).toEqual({ success: true, budgetUsedCents: 15, budgetRemainingCents: 85 });
      const before = await snapshot(db, ak);
      expect(await ak.trackUsage(key, { costCents: 85.0001 })).toEqual({
        success: false,
        reason: 'budget_exceeded',
        limitedBy: { kind: 'key', keyId: id },
        budgetUsedCents: 15,
        budgetRemainingCents: 85,
      });
      expect(await snapshot(db, ak)).toBe(before);
      expect(await ak.trackUsage(key, { costCents: 85 })).toEqual({ success: true, budgetUsedCents: 100, budgetRemainingCents: 0 });
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      // A free call succeeds without figures and records nothing.
      const atCap = await snapshot(db, ak);
      const entries = (await ak.ledger({ keyId: id })).length;
      expect(await ak.trackUsage(key, { costCents: 0 })).toEqual({ success: true });
      expect(await snapshot(db, ak)).toBe(atCap);
      expect(await ak.ledger({ keyId: id })).toHaveLength(entries);
      expect((await rawRow(db, ak, id)).spent_micros).toBe('1000000');
      expect(await ak.getKey(id)).toMatchObject({ spentCents: 100, remainingCents: 0 });
      // A budget of zero allows free calls only.
      const free = await ak.create({ accountId: 'a', budgetCents: 0 });
      expect(await ak.trackUsage(free.key, { costCents: 0 })).toEqual({ success: true });
      expect(await ak.trackUsage(free.key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
    });

    it("error: invalid, expired and revoked keys: validate gives the reason, trackUsage charges nothing", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const other = await db.agentKey();
      const stranger = await other.create({ accountId: 'a' }); // well-formed, but not in ak's table
      expect(await ak.validate(stranger.key)).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.trackUsage(stranger.key, { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });

      const expiring = await ak.create({ accountId: 'a', budgetCents: 100, expiresIn: '2s' });
      await db.query(`UPDATE ${ak.tableName} SET expires_at = now() - interval '1 second' WHERE id = $1`, [expiring.id]);
      expect(await ak.validate(expiring.key)).toEqual({ valid: false, reason: 'expired' });
      expect(await ak.trackUsage(expiring.key, { costCents: 1 })).toEqual({ success: false, reason: 'expired' });
      expect((await rawRow(db, ak, expiring.id)).spent_micros).toBe('0');

      const revoked = await ak.create({ accountId: 'a', budgetCents: 100 });
      expect(await ak.revoke(revoked.id)).toBe(true);
      expect(await ak.validate(revoked.key)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.trackUsage(revoked.key, { costCents: 1 })).toEqual({ success: false, reason: 'revoked' });
      expect((await rawRow(db, ak, revoked.id)).spent_micros).toBe('0');
      expect((await rawRow(db, ak, revoked.id)).revoked_at).toBeInstanceOf(Date);
    });

    it("error: trackUsage refuses negative, NaN, infinite, non-numeric and missing costs with 'invalid_cost'", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const before = await snapshot(db, ak);
      const costs: unknown[] = [-1, -0.0001, NaN, Infinity, -Infinity, '5e0', ' 0', '-5', null, undefined, 10n, {}, [], true, MAX_CENTS + 1];
      for (const costCents of costs) {
        expect(await ak.trackUsage(key, { costCents } as never), String(costCents)).toEqual({ success: false, reason: 'invalid_cost' });
      }
      for (const usage of [undefined, null, 5, 'cost', {}]) {
        expect(await ak.trackUsage(key, usage as never), JSON.stringify(usage)).toEqual({ success: false, reason: 'invalid_cost' });
      }
      expect(await snapshot(db, ak)).toBe(before);
      expect(await ak.validate(key)).toMatchObject({ budgetUsedCents: 0 });
    });

    it('happy: hasScope with unlimited, admin, listed and unlisted scopes', async () => {
      const ak = await getDb().agentKey();
      const unlimited = valid(await ak.validate((await ak.create({ accountId: 'a', scopes: null })).key));
      const admin = valid(await ak.validate((await ak.create({ accountId: 'a', scopes: ['admin'] })).key));
      const listed = valid(await ak.validate((await ak.create({ accountId: 'a', scopes: ['usage.read', 'proxy.chat'] })).key));
      const none = valid(await ak.validate((await ak.create({ accountId: 'a', scopes: [] })).key));
      expect(ak.hasScope(unlimited, 'billing.write')).toBe(true);
      expect(ak.hasScope(admin, 'billing.write')).toBe(true);
      expect(ak.hasScope(listed, 'proxy.chat')).toBe(true);
      expect(ak.hasScope(listed, 'usage.read')).toBe(true);
      expect(ak.hasScope(listed, 'billing.write')).toBe(false);
      expect(ak.hasScope(listed, 'proxy')).toBe(false);
      expect(ak.hasScope(listed, 'proxy.chat.extra')).toBe(false);
      expect(ak.hasScope(listed, 'PROXY.CHAT')).toBe(false);
      expect(ak.hasScope(none, 'proxy.chat')).toBe(false);
    });

    it('security: hasScope is false for an invalid result or a non-string scope', async () => {
      const ak = await getDb().agentKey();
      const revoked = await ak.create({ accountId: 'a', scopes: null });
      await ak.revoke(revoked.id);
      const result = await ak.validate(revoked.key);
      expect(result).toEqual({ valid: false, reason: 'revoked' });
      expect(ak.hasScope(result, 'proxy.chat')).toBe(false);
      expect(ak.hasScope({ valid: false, reason: 'invalid' }, 'admin')).toBe(false);
      expect(ak.hasScope(null, 'proxy.chat')).toBe(false);
      expect(ak.hasScope(undefined, 'proxy.chat')).toBe(false);
      expect(ak.hasScope({ valid: 'true', scopes: null } as never, 'proxy.chat')).toBe(false);
      const unlimited = await ak.validate((await ak.create({ accountId: 'a' })).key);
      expect(ak.hasScope(unlimited, 123 as never)).toBe(false);
      expect(ak.hasScope(unlimited, undefined as never)).toBe(false);
    });

    it('happy: revoke returns true once, then false; unknown ids are false', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const a = await ak.create({ accountId: 'acct_1' });
      const b = await ak.create({ accountId: 'acct_1' });
      expect(await ak.revoke(a.id)).toBe(true);
      expect(await ak.revoke(a.id)).toBe(false);
      expect(await ak.revoke(String(b.id))).toBe(true); // an id from a URL
      expect(await ak.revoke(b.id + 1000)).toBe(false);
      expect(await ak.revoke(Number.MAX_SAFE_INTEGER)).toBe(false);
      expect(await count(db, ak)).toBe(2); // soft revoke: the rows stay
    });

    it("security: revoke with another account's id does nothing and the key stays valid", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const mine = await ak.create({ accountId: 'acct_1' });
      const numeric = await ak.create({ accountId: 7 });
      const before = await snapshot(db, ak);
      expect(await ak.revoke(mine.id, 'acct_2')).toBe(false);
      expect(await ak.revoke(mine.id, 'ACCT_1')).toBe(false);
      expect(await ak.revoke(numeric.id, 8)).toBe(false);
      expect(await snapshot(db, ak)).toBe(before);
      expect(await ak.validate(mine.key)).toMatchObject({ valid: true });
      expect(await ak.revoke(mine.id, 'acct_1')).toBe(true);
      expect(await ak.revoke(numeric.id, 7)).toBe(true);
      expect(await ak.validate(mine.key)).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.validate(numeric.key)).toEqual({ valid: false, reason: 'revoked' });
    });

    it('happy: a custom keyPrefix is used for minting and required for validation', async () => {
      const db = getDb();
      const ak = await db.agentKey({ keyPrefix: 'sk_live_' });
      const { key } = await ak.create({ accountId: 'a' });
      expect(key).toMatch(/^sk_live_[0-9A-Za-z]+$/);
      expect(await ak.validate(key)).toMatchObject({ valid: true });
      const sameTable = new AgentKey({ pool: db.pool, tableName: ak.tableName });
      expect(await sameTable.validate(key)).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.validate('ak_' + key.slice('sk_live_'.length))).toEqual({ valid: false, reason: 'invalid' });
    });

    it('happy: the default table is sdk_api_keys; custom and schema-qualified tables work', async () => {
      const db = getDb();
      const byDefault = new AgentKey({ pool: db.pool });
      await byDefault.migrate();
      const k1 = await byDefault.create({ accountId: 'a' });
      expect(await db.query(`SELECT id FROM sdk_api_keys WHERE id = $1`, [k1.id])).toHaveLength(1);

      const custom = new AgentKey({ pool: db.pool, tableName: 'my_agent_keys' });
      await custom.migrate();
      const k2 = await custom.create({ accountId: 'a' });
      expect(await db.query(`SELECT id FROM my_agent_keys WHERE id = $1`, [k2.id])).toHaveLength(1);
      expect(await custom.validate(k1.key)).toEqual({ valid: false, reason: 'invalid' }); // tables are separate

      await db.query('CREATE SCHEMA IF NOT EXISTS billing');
      const qualified = new AgentKey({ pool: db.pool, tableName: 'billing.agent_keys' });
      await qualified.migrate();
      const k3 = await qualified.create({ accountId: 'a', budgetCents: 10, budgetPeriod: 'day' });
      expect(await db.query(`SELECT id FROM billing.agent_keys WHERE id = $1`, [k3.id])).toHaveLength(1);
      expect(await qualified.validate(k3.key)).toMatchObject({ valid: true, budgetCents: 10 });
      const fn = await db.query<{ n: number }>(
        `SELECT count(*)::int AS n FROM pg_proc p JOIN pg_namespace s ON s.oid = p.pronamespace
          WHERE p.proname = 'agentkey_next_reset' AND s.nspname = 'billing'`,
      );
      expect(Number(fn[0]!.n)).toBe(1);
    });

    it('security: validScopes refuses any scope not listed, and writes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey({ validScopes: ['usage.read', 'proxy.chat'] });
      const { key } = await ak.create({ accountId: 'a', scopes: ['usage.read'] });
      expect(await ak.validate(key)).toMatchObject({ valid: true, scopes: ['usage.read'] });
      const before = await snapshot(db, ak);
      const refused: [string[], string][] = [
        [['billing.write'], 'billing.write'],
        [['usage.read', 'billing.write'], 'billing.write'],
        [['admin', 'billing.write', 'x.y'], 'billing.write, x.y'],
        [['usage.*'], 'usage.*'],
        [['USAGE.READ'], 'USAGE.READ'],
      ];
      for (const [scopes, listed] of refused) {
        const err = await rejectsWith(() => ak.create({ accountId: 'a', scopes }), 'invalid_scope', JSON.stringify(scopes));
        expect(err.message.startsWith(`Invalid scopes: ${listed} (`), err.message).toBe(true);
        await rejectsWith(() => ak.ensureSubject('mch_x', { scopes }), 'invalid_scope', JSON.stringify(scopes));
      }
      expect(await snapshot(db, ak)).toBe(before);
      // 'admin' is always accepted, as in the package.
      const admin = await ak.create({ accountId: 'a', scopes: ['admin'] });
      expect(await ak.validate(admin.key)).toMatchObject({ valid: true, scopes: ['admin'] });
    });
  });

  describe('keys', () => {
    it('security: only the SHA-256 hash and a short non-secret prefix are stored', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const created = await ak.create({ accountId: 'a', name: 'n' });
      const rows = await db.query<{ j: string; key_hash: string; key_prefix: string }>(
        `SELECT row_to_json(t)::text AS j, key_hash, key_prefix FROM ${ak.tableName} t WHERE id = $1`,
        [created.id],
      );
      const row = rows[0]!;
      expect(row.key_hash).toBe(sha256(created.key));
      expect(row.j).not.toContain(created.key);
      const secret = created.key.slice(row.key_prefix.length);
      expect(secret.length).toBeGreaterThanOrEqual(40);
      expect(created.key.startsWith(row.key_prefix)).toBe(true);
      for (let i = 0; i + 12 <= secret.length; i++) expect(row.j).not.toContain(secret.slice(i, i + 12));
    });

    it('security: the stored hash, or a key from another table, does not authenticate', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const created = await ak.create({ accountId: 'a' });
      const hash = sha256(created.key);
      expect(await ak.validate(hash)).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.validate('ak_' + hash)).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.validateBySubject(hash)).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.validateBySubject(created.key)).toEqual({ valid: false, reason: 'invalid' });
    });

    it('security: every one-character typo of a real key is refused', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'a' });
      const next = (c: string) => (c === 'z' ? '0' : c === '9' ? 'A' : c === 'Z' ? 'a' : String.fromCharCode(c.charCodeAt(0) + 1));
      for (let i = 3; i < key.length; i++) {
        const typo = key.slice(0, i) + next(key[i]!) + key.slice(i + 1);
        expect(await ak.validate(typo), typo).toEqual({ valid: false, reason: 'invalid' });
      }
      expect(await ak.validate(key.slice(0, -1))).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.validate(key)).toMatchObject({ valid: true });
    });

    it("happy: a key minted by the seed package (prefix + hex, stored as its SHA-256) validates", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const legacy = 'ak_' + '7f3a9c'.repeat(8);
      await db.query(`INSERT INTO ${ak.tableName} (account_id, key_hash, key_prefix, budget_micros, budget_cents) VALUES ('acct_old', $1, 'ak_7f3a9c', 500000, 50)`, [
        sha256(legacy),
      ]);
      expect(await ak.validate(legacy)).toMatchObject({ valid: true, accountId: 'acct_old', budgetCents: 50 });
      expect(await ak.trackUsage(legacy, { costCents: 0.03 })).toMatchObject({ success: true, budgetUsedCents: 0.03 });
    });

    it('security: minted keys are long, unique and carry the prefix', async () => {
      const ak = await getDb().agentKey();
      const keys = await Promise.all(Array.from({ length: 50 }, () => ak.create({ accountId: 'a' })));
      expect(new Set(keys.map((k) => k.key)).size).toBe(50);
      for (const { key } of keys) {
        // At least 192 random bits: 43 base62 characters of randomness plus a 6-character checksum.
        expect(key).toMatch(/^ak_[0-9A-Za-z]{49}$/);
      }
    });
  });

  describe('money', () => {
    it('happy: 2000 charges of 0.03 cents add up to exactly 60 cents', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 60 });
      let floatSum = 0;
      for (let i = 0; i < 2000; i++) {
        const r = await ak.trackUsage(key, { costCents: 0.03 });
        expect(r.success).toBe(true);
        floatSum += 0.03;
      }
      expect(floatSum).not.toBe(60); // what summing floats would have stored
      // Nothing left: validate refuses the key; getKey shows its figures.
      expect(await ak.validate(key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect(await ak.getKey(id)).toMatchObject({ spentCents: 60, remainingCents: 0 });
      const row = await rawRow(db, ak, id);
      expect(row.spent_micros).toBe('600000');
      expect(row.budget_used_cents).toBe('60');
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded', budgetUsedCents: 60 });
      // 2000 calls one after another: about 15 s on PGlite on a loaded 2-core machine; a correctness test, so room to finish.
    }, 180_000);

    it('happy: a $0.0003 call costs 0.03 cents, not a whole cent', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 1 });
      expect(await ak.trackUsage(key, { costCents: 0.03 })).toEqual({ success: true, budgetUsedCents: 0.03, budgetRemainingCents: 0.97 });
      const row = await rawRow(db, ak, id);
      expect(row.spent_micros).toBe('300');
      // The page's INTEGER column shows whole cents, spend rounded up.
      expect(row.budget_used_cents).toBe('1');
      // 0.1 + 0.2 is exactly 0.3 here.
      await ak.trackUsage(key, { costCents: 0.1 });
      await ak.trackUsage(key, { costCents: 0.2 });
      expect(valid(await ak.validate(key)).budgetUsedCents).toBe(0.33);
      // 0.07 * 10000 is 700.0000000000001 in floating point; the charge is still 700 micros.
      expect(await ak.trackUsage(key, { costCents: 0.07 })).toEqual({ success: true, budgetUsedCents: 0.4, budgetRemainingCents: 0.6 });
      expect(await rawRow(db, ak, id)).toMatchObject({ spent_micros: '4000', budget_cents: '1', budget_used_cents: '1' });
    });

    it('happy: a $1 billion budget charges exactly to the cent, then refuses 0.0001 cent more', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 1e11 });
      expect(valid(await ak.validate(key))).toMatchObject({ budgetCents: 1e11, budgetRemainingCents: 1e11 });
      expect(await ak.trackUsage(key, { costCents: 99_999_999_999.9999 })).toEqual({
        success: true,
        budgetUsedCents: 99_999_999_999.9999,
        budgetRemainingCents: 0.0001,
      });
      expect(await ak.trackUsage(key, { costCents: 0.0002 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toEqual({ success: true, budgetUsedCents: 1e11, budgetRemainingCents: 0 });
      expect(await ak.trackUsage(key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded', budgetUsedCents: 1e11 });
      const row = await rawRow(db, ak, id);
      expect(row.spent_micros).toBe('1000000000000000');
      expect(row.budget_micros).toBe('1000000000000000');
      // The page's INTEGER columns are capped at 2147483647 cents; the micros columns hold the figures.
      expect(row.budget_cents).toBe('2147483647');
      expect(row.budget_used_cents).toBe('2147483647');

      const max = await ak.create({ accountId: 'a', budgetCents: MAX_CENTS });
      expect(await ak.trackUsage(max.key, { costCents: MAX_CENTS })).toMatchObject({ success: true, budgetRemainingCents: 0 });
      await rejectsWith(() => ak.create({ accountId: 'a', budgetCents: MAX_CENTS + 1 }), 'invalid_budget');
    });

    it("happy: the page's budget_cents and budget_used_cents columns stay INTEGER whole cents (budget down, spend up); micros are exact", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 1234.5678 });
      await ak.trackUsage(key, { costCents: 0.0003 });
      await ak.trackUsage(key, { costCents: 12.5 });
      const row = await rawRow(db, ak, id);
      expect(row.budget_cents).toBe('1234');
      expect(row.budget_used_cents).toBe('13');
      expect(row.budget_micros).toBe('12345678');
      expect(row.spent_micros).toBe('125003');
      const types = await db.query<{ column_name: string; data_type: string }>(
        `SELECT column_name, data_type FROM information_schema.columns
          WHERE table_name = $1 AND column_name IN ('budget_cents', 'budget_used_cents', 'budget_micros', 'spent_micros')
          ORDER BY column_name`,
        [ak.tableName],
      );
      expect(Object.fromEntries(types.map((t) => [t.column_name, t.data_type]))).toEqual({
        budget_cents: 'integer',
        budget_used_cents: 'integer',
        budget_micros: 'bigint',
        spent_micros: 'bigint',
      });
    });

    it('security: budgets finer than a micro-dollar round down and costs round up', async () => {
      const ak = await getDb().agentKey();
      const half = await ak.create({ accountId: 'a', budgetCents: 0.00005 });
      expect(half.budgetCents).toBe(0);
      expect(await ak.getKey(half.id)).toMatchObject({ budgetCents: 0 });
      // A $0 budget leaves nothing to spend: validate refuses it.
      expect(await ak.validate(half.key)).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsage(half.key, { costCents: 0.0001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      const k = await ak.create({ accountId: 'a', budgetCents: 0.00015 });
      expect(await ak.trackUsage(k.key, { costCents: 0.00001 })).toEqual({ success: true, budgetUsedCents: 0.0001, budgetRemainingCents: 0 });
      expect(await ak.trackUsage(k.key, { costCents: 0.00001 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
    });
  });

  describe('concurrency', () => {
    it('security: 500 concurrent charges through a 10-connection pool never pass the budget', async () => {
      const db = getDb();
      if (db.name === 'postgres') expect((db.pool as pg.Pool).options.max).toBe(10);
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const results = await Promise.all(Array.from({ length: 500 }, () => ak.trackUsage(key, { costCents: 0.3 })));
      const accepted = results.filter((r) => r.success).length;
      expect(accepted).toBe(Math.floor(100 / 0.3)); // 333
      for (const r of results) if (!r.success) expect(r.reason).toBe('budget_exceeded');
      expect((await rawRow(db, ak, id)).spent_micros).toBe(String(accepted * 3000));
      expect(valid(await ak.validate(key))).toMatchObject({ budgetUsedCents: 99.9, budgetRemainingCents: 0.1 });
    });

    it('security: 500 concurrent charges of mixed sizes: spend equals the accepted sum and never passes the budget', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 250 });
      const micros = Array.from({ length: 500 }, (_, i) => 1 + ((i * 7919) % 20_000)); // 0.0001 to 2 cents
      const results = await Promise.all(micros.map((m) => ak.trackUsage(key, { costCents: m / 10_000 })));
      let acceptedMicros = 0;
      let minRefused = Infinity;
      results.forEach((r, i) => {
        if (r.success) acceptedMicros += micros[i]!;
        else {
          expect(r.reason).toBe('budget_exceeded');
          minRefused = Math.min(minRefused, micros[i]!);
        }
      });
      expect(acceptedMicros).toBeLessThanOrEqual(2_500_000);
      expect(Number((await rawRow(db, ak, id)).spent_micros)).toBe(acceptedMicros);
      // A charge is only refused when it does not fit: every refused cost exceeds what is left at the end.
      expect(minRefused).toBeGreaterThan(2_500_000 - acceptedMicros);
    });

    it('security: concurrent charges at a period rollover reset the spend exactly once', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100, budgetPeriod: 'day' });
      expect(await ak.trackUsage(key, { costCents: 90 })).toMatchObject({ success: true });
      await db.query(`UPDATE ${ak.tableName} SET budget_reset_at = now() - interval '1 minute' WHERE id = $1`, [id]);
      const results = await Promise.all(Array.from({ length: 200 }, () => ak.trackUsage(key, { costCents: 1 })));
      expect(results.filter((r) => r.success)).toHaveLength(100);
      const row = await rawRow(db, ak, id);
      expect(row.spent_micros).toBe('1000000');
      expect(row.budget_reset_at!.getTime()).toBeGreaterThan(Date.now());
    });

    it('happy: concurrent ensureSubject of one subject makes one row', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const calls = await Promise.allSettled(
        Array.from({ length: 50 }, (_, i) => ak.ensureSubject('mch_race', { budgetCents: 100 + i })),
      );
      expect(calls.filter((c) => c.status === 'rejected')).toEqual([]);
      expect(await count(db, ak)).toBe(1);
      expect(await ak.validateBySubject('mch_race')).toMatchObject({ valid: true, accountId: 'mch_race' });
    });
  });

  describe('time', () => {
    it('happy: expiresIn accepts s, m (minutes), h, d, w and mo', async () => {
      const ak = await getDb().agentKey();
      const cases: [string, (t: number) => number][] = [
        ['45s', (t) => t + 45_000],
        ['30m', (t) => t + 30 * 60_000],
        ['2h', (t) => t + 2 * 3_600_000],
        ['7d', (t) => t + 7 * 86_400_000],
        ['2w', (t) => t + 14 * 86_400_000],
        ['1mo', (t) => plusUtcMonths(new Date(t), 1).getTime()],
      ];
      for (const [expiresIn, expected] of cases) {
        const before = Date.now();
        const { expiresAt, key } = await ak.create({ accountId: 'a', expiresIn });
        const after = Date.now();
        const at = Date.parse(expiresAt!);
        expect(at, expiresIn).toBeGreaterThanOrEqual(expected(before));
        expect(at, expiresIn).toBeLessThanOrEqual(expected(after));
        expect(valid(await ak.validate(key)).expiresAt).toBe(expiresAt);
      }
      const at = new Date(Date.now() + 3_600_000);
      expect((await ak.create({ accountId: 'a', expiresAt: at })).expiresAt).toBe(at.toISOString());
      expect((await ak.create({ accountId: 'a', expiresAt: at.toISOString() })).expiresAt).toBe(at.toISOString());
    });

    it('error: a malformed duration throws invalid_duration and writes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const bad: unknown[] = ['7x', '', '1.5h', -1, '999999999d', 'm', '7', 'd7', '7 d', '1y', '-7d', 7, {}, '40000d'];
      for (const expiresIn of bad) {
        await rejectsWith(() => ak.create({ accountId: 'a', expiresIn: expiresIn as string }), 'invalid_duration', JSON.stringify(expiresIn));
        const err = await rejectsWith(() => ak.ensureSubject('mch_t', { expiresIn: expiresIn as string }), 'invalid_duration', JSON.stringify(expiresIn));
        if (typeof expiresIn === 'string') expect(err.message.startsWith(`Invalid duration: ${expiresIn} (`), err.message).toBe(true);
      }
      expect(await count(db, ak)).toBe(0);
    });

    it("happy: a zero expiresIn ('0h', '0d') makes a key that is expired at once", async () => {
      const ak = await getDb().agentKey();
      for (const expiresIn of ['0s', '0h', '0d']) {
        const before = Date.now();
        const created = await ak.create({ accountId: 'a', expiresIn });
        expect(Date.parse(created.expiresAt!), expiresIn).toBeGreaterThanOrEqual(before);
        expect(Date.parse(created.expiresAt!), expiresIn).toBeLessThanOrEqual(Date.now());
        expect(await ak.validate(created.key), expiresIn).toEqual({ valid: false, reason: 'expired' });
      }
      await ak.ensureSubject('mch_zero', { expiresIn: '0d' });
      expect(await ak.validateBySubject('mch_zero')).toEqual({ valid: false, reason: 'expired' });
    });

    it('error: an unknown budget period throws invalid_period and writes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      for (const budgetPeriod of ['week', 'year', 'Day', 'monthly', '', 1, {}]) {
        await rejectsWith(() => ak.create({ accountId: 'a', budgetCents: 5, budgetPeriod: budgetPeriod as 'day' }), 'invalid_period', JSON.stringify(budgetPeriod));
        await rejectsWith(() => ak.ensureSubject('mch_p', { budgetPeriod: budgetPeriod as 'day' }), 'invalid_period', JSON.stringify(budgetPeriod));
      }
      expect(await count(db, ak)).toBe(0);
    });

    it('happy: agentkey_next_reset gives UTC midnights and clamps month-ends, whatever the session time zone', async () => {
      const db = getDb();
      await db.agentKey(); // migrate creates the function in the search-path schema
      const cases: [string, string, string, string][] = [
        // period, anchor, at, expected
        ['day', '2024-03-01T00:00:00Z', '2024-03-10T23:59:59.999Z', '2024-03-11T00:00:00.000Z'],
        ['day', '2024-03-01T00:00:00Z', '2024-03-10T00:00:00Z', '2024-03-11T00:00:00.000Z'],
        ['day', '2024-03-01T00:00:00Z', '2024-03-10T11:00:00Z', '2024-03-11T00:00:00.000Z'], // already Mar 11 in Kiritimati
        ['day', '2024-03-01T00:00:00Z', '2024-02-28T12:00:00Z', '2024-02-29T00:00:00.000Z'],
        ['day', '2024-03-01T00:00:00Z', '2024-12-31T22:00:00Z', '2025-01-01T00:00:00.000Z'],
        ['month', '2023-01-31T00:00:00Z', '2023-02-01T00:00:00Z', '2023-02-28T00:00:00.000Z'],
        ['month', '2023-01-31T00:00:00Z', '2023-02-28T00:00:00Z', '2023-03-31T00:00:00.000Z'],
        ['month', '2023-01-31T00:00:00Z', '2023-03-31T00:00:00Z', '2023-04-30T00:00:00.000Z'],
        ['month', '2023-01-31T00:00:00Z', '2023-04-30T00:00:00Z', '2023-05-31T00:00:00.000Z'],
        ['month', '2023-01-31T15:00:00Z', '2023-01-31T16:00:00Z', '2023-02-28T00:00:00.000Z'],
        ['month', '2024-01-31T00:00:00Z', '2024-02-10T00:00:00Z', '2024-02-29T00:00:00.000Z'],
        ['month', '2024-01-31T00:00:00Z', '2024-02-29T00:00:00Z', '2024-03-31T00:00:00.000Z'],
        ['month', '2024-01-31T20:00:00Z', '2024-02-05T00:00:00Z', '2024-02-29T00:00:00.000Z'], // Feb 1 in Kiritimati
        ['month', '2023-12-31T00:00:00Z', '2024-01-15T00:00:00Z', '2024-01-31T00:00:00.000Z'],
        ['month', '2023-12-31T00:00:00Z', '2024-02-01T00:00:00Z', '2024-02-29T00:00:00.000Z'],
        ['month', '2024-01-15T09:00:00Z', '2024-01-20T00:00:00Z', '2024-02-15T00:00:00.000Z'],
        ['month', '2024-01-15T09:00:00Z', '2024-02-15T00:00:00Z', '2024-03-15T00:00:00.000Z'],
        ['month', '2020-01-31T00:00:00Z', '2026-11-27T12:00:00Z', '2026-11-30T00:00:00.000Z'],
      ];
      const sql = `SELECT agentkey_next_reset($1::text, $2::timestamptz, $3::timestamptz) AS r`;
      const compute = async (q: TestDb['query']) => {
        const out: string[] = [];
        for (const [period, anchor, at] of cases) out.push((await q<{ r: Date }>(sql, [period, anchor, at]))[0]!.r.toISOString());
        return out;
      };
      const utc = await inTimeZone(db, 'UTC', compute);
      const kiritimati = await inTimeZone(db, 'Pacific/Kiritimati', compute);
      const shown = await inTimeZone(db, 'Pacific/Kiritimati', async (q) => (await q<{ tz: string }>('SHOW TimeZone'))[0]);
      expect(Object.values(shown!)).toEqual(['Pacific/Kiritimati']);
      expect(utc).toEqual(cases.map((c) => c[3]));
      expect(kiritimati).toEqual(utc);
      expect((await db.query<{ r: Date | null }>(sql, ['week', '2024-01-01T00:00:00Z', '2024-01-02T00:00:00Z']))[0]!.r).toBeNull();
    });

    it('happy: agentkey_next_reset matches a UTC calendar reference for random anchors (property)', async () => {
      const db = getDb();
      await db.agentKey();
      const lo = Date.UTC(2000, 0, 1);
      const samples = fc.sample(
        fc.tuple(fc.integer({ min: lo, max: Date.UTC(2090, 0, 1) }), fc.integer({ min: 0, max: 10 * 366 * 86_400_000 })),
        { numRuns: 300, seed: 42 },
      );
      const anchors = samples.map(([a]) => new Date(a).toISOString());
      const ats = samples.map(([a, d]) => new Date(a + d).toISOString());
      const sql = `SELECT agentkey_next_reset('month', a, t) AS m, agentkey_next_reset('day', a, t) AS d
                     FROM unnest($1::timestamptz[], $2::timestamptz[]) WITH ORDINALITY AS u(a, t, i) ORDER BY i`;
      for (const zone of ['UTC', 'Pacific/Kiritimati', 'America/Adak']) {
        const rows = await inTimeZone(db, zone, (q) => q<{ m: Date; d: Date }>(sql, [anchors, ats]));
        rows.forEach((row, i) => {
          const anchor = new Date(anchors[i]!);
          const at = new Date(ats[i]!);
          expect(row.m.toISOString(), `${zone} month ${anchors[i]} ${ats[i]}`).toBe(nextMonthlyReset(anchor, at));
          expect(row.d.toISOString(), `${zone} day ${ats[i]}`).toBe(nextUtcMidnight(at.getTime()));
        });
      }
    });

    it('happy: a day key created by a session in Pacific/Kiritimati resets at the next UTC midnight', async () => {
      const db = getDb();
      const check = async (ak: AgentKey) => {
        const before = Date.now();
        const { key } = await ak.create({ accountId: 'a', budgetCents: 10, budgetPeriod: 'day' });
        const after = Date.now();
        const v = valid(await ak.validate(key));
        expect([nextUtcMidnight(before), nextUtcMidnight(after)]).toContain(v.budgetResetAt);
      };
      if (db.name === 'postgres') {
        const pool = new pg.Pool({ connectionString: db.url, max: 2, options: '-c TimeZone=Pacific/Kiritimati' });
        try {
          expect((await pool.query('SHOW TimeZone')).rows[0].TimeZone).toBe('Pacific/Kiritimati');
          const ak = new AgentKey({ pool, tableName: db.freshTable() });
          await ak.migrate();
          await check(ak);
        } finally {
          await pool.end();
        }
      } else {
        const ak = await db.agentKey();
        await inTimeZone(db, 'Pacific/Kiritimati', () => check(ak));
      }
    });

    it('happy: a key whose period ended shows no spend, and its next charge starts a new period', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100, budgetPeriod: 'day' });
      expect(await ak.trackUsage(key, { costCents: 30 })).toMatchObject({ success: true, budgetUsedCents: 30 });
      await db.query(`UPDATE ${ak.tableName} SET budget_reset_at = now() - interval '1 hour' WHERE id = $1`, [id]);

      const before = Date.now();
      const v = valid(await ak.validate(key));
      expect(v).toMatchObject({ budgetUsedCents: 0, budgetRemainingCents: 100 });
      expect([nextUtcMidnight(before), nextUtcMidnight(Date.now())]).toContain(v.budgetResetAt);

      expect(await ak.trackUsage(key, { costCents: 5 })).toEqual({ success: true, budgetUsedCents: 5, budgetRemainingCents: 95 });
      const row = await rawRow(db, ak, id);
      expect(row.spent_micros).toBe('50000');
      expect(Number(row.budget_used_cents)).toBe(5);
      expect(row.budget_reset_at!.getTime()).toBeGreaterThan(Date.now());
      expect(row.budget_reset_at!.toISOString()).toMatch(/T00:00:00\.000Z$/);
      expect(await ak.trackUsage(key, { costCents: 5 })).toMatchObject({ success: true, budgetUsedCents: 10 }); // same period now
    });

    it('happy: a monthly key anchored on the 31st resets on the last day of shorter months', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'a', budgetCents: 100, budgetPeriod: 'month' });
      await ak.trackUsage(key, { costCents: 40 });
      await db.query(
        `UPDATE ${ak.tableName} SET budget_anchor_at = '2023-01-31T12:00:00Z', created_at = '2023-01-31T12:00:00Z',
           budget_reset_at = now() - interval '1 second' WHERE id = $1`,
        [id],
      );
      const before = new Date();
      const v = valid(await ak.validate(key));
      const anchor = new Date('2023-01-31T12:00:00Z');
      expect([nextMonthlyReset(anchor, before), nextMonthlyReset(anchor, new Date())]).toContain(v.budgetResetAt);
      expect(v.budgetUsedCents).toBe(0);
      expect(await ak.trackUsage(key, { costCents: 1 })).toMatchObject({ success: true, budgetUsedCents: 1 });
      const row = await rawRow(db, ak, id);
      expect([nextMonthlyReset(anchor, before), nextMonthlyReset(anchor, new Date())]).toContain(row.budget_reset_at!.toISOString());
    });

    it('error: an expiry in the past, or both expiresIn and expiresAt, is refused', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await rejectsWith(() => ak.create({ accountId: 'a', expiresAt: new Date(Date.now() - 1000) }), 'invalid_argument', 'past');
      await rejectsWith(() => ak.create({ accountId: 'a', expiresAt: '2001-01-01T00:00:00Z' }), 'invalid_argument', 'past string');
      await rejectsWith(() => ak.create({ accountId: 'a', expiresIn: '1h', expiresAt: new Date(Date.now() + 7_200_000) }), 'invalid_argument', 'both');
      await rejectsWith(() => ak.create({ accountId: 'a', expiresAt: 'soon' }), 'invalid_argument', 'not a date');
      await rejectsWith(() => ak.create({ accountId: 'a', expiresAt: 12345 as never }), 'invalid_argument', 'number');
      expect(await count(db, ak)).toBe(0);
    });
  });

  describe('bad input', () => {
    it('error: create with wrong types, empty or long strings, unknown options: right code, nothing written', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.create({ accountId: 'existing' });
      const before = await snapshot(db, ak);
      const long = 'x'.repeat(257);
      const cases: [unknown, string][] = [
        [undefined, 'invalid_argument'],
        [null, 'invalid_argument'],
        ['acct_1', 'invalid_argument'],
        [42, 'invalid_argument'],
        [[], 'invalid_argument'],
        [{}, 'invalid_argument'],
        [{ accountId: '' }, 'invalid_argument'],
        [{ accountId: long }, 'invalid_argument'],
        [{ accountId: 1.5 }, 'invalid_argument'],
        [{ accountId: NaN }, 'invalid_argument'],
        [{ accountId: null }, 'invalid_argument'],
        [{ accountId: true }, 'invalid_argument'],
        [{ accountId: {} }, 'invalid_argument'],
        [{ accountId: ['a'] }, 'invalid_argument'],
        [{ accountId: 'a', budget: 5 }, 'invalid_argument'],
        [{ accountId: 'a', budget_cents: 5 }, 'invalid_argument'],
        [{ accountId: 'a', expires_in: '7d' }, 'invalid_argument'],
        [{ accountId: 'a', scope: 'proxy.chat' }, 'invalid_argument'],
        [{ accountId: 'a', name: '' }, 'invalid_argument'],
        [{ accountId: 'a', name: long }, 'invalid_argument'],
        [{ accountId: 'a', name: 5 }, 'invalid_argument'],
        [{ accountId: 'a', delegatedBy: '' }, 'invalid_argument'],
        [{ accountId: 'a', delegatedBy: long }, 'invalid_argument'],
        [{ accountId: 'a', delegatedBy: { id: 1 } }, 'invalid_argument'],
        [{ accountId: 'a', userId: '' }, 'invalid_argument'],
        [{ accountId: 'a', scopes: 'proxy.chat' }, 'invalid_scope'],
        [{ accountId: 'a', scopes: [1] }, 'invalid_scope'],
        [{ accountId: 'a', scopes: [''] }, 'invalid_scope'],
        [{ accountId: 'a', scopes: ['has space'] }, 'invalid_scope'],
        [{ accountId: 'a', scopes: ["x'); DROP TABLE y; --"] }, 'invalid_scope'],
        [{ accountId: 'a', scopes: ['x'.repeat(129)] }, 'invalid_scope'],
        [{ accountId: 'a', scopes: Array.from({ length: 101 }, (_, i) => `s${i}`) }, 'invalid_scope'],
        [{ accountId: 'a', scopes: [null] }, 'invalid_scope'],
        [{ accountId: 'a', scopes: {} }, 'invalid_scope'],
        [{ accountId: 'a', budgetCents: -1 }, 'invalid_budget'],
        [{ accountId: 'a', budgetCents: NaN }, 'invalid_budget'],
        [{ accountId: 'a', budgetCents: Infinity }, 'invalid_budget'],
        [{ accountId: 'a', budgetCents: '5e3' }, 'invalid_budget'],
        [{ accountId: 'a', budgetCents: ' 5000' }, 'invalid_budget'],
        [{ accountId: 'a', budgetCents: MAX_CENTS + 1 }, 'invalid_budget'],
        [{ accountId: 'a', budgetCents: true }, 'invalid_budget'],
        [{ accountId: 'a', budgetPeriod: 'week' }, 'invalid_period'],
        [{ accountId: 'a', expiresIn: '7x' }, 'invalid_duration'],
        [{ accountId: 'a', expiresIn: 3600 }, 'invalid_duration'],
      ];
      for (const [options, code] of cases) {
        await rejectsWith(() => ak.create(options as never), code, JSON.stringify(options)?.slice(0, 80) ?? String(options));
      }
      expect(await snapshot(db, ak)).toBe(before);
    });

    it('error: text the database cannot store (a NUL character) is invalid_argument, and nothing is written', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.ensureSubject('mch_ok');
      const before = await snapshot(db, ak);
      await rejectsWith(() => ak.create({ accountId: 'a', name: 'bad\u0000name' }), 'invalid_argument', 'name');
      await rejectsWith(() => ak.create({ accountId: 'acct\u0000' }), 'invalid_argument', 'accountId');
      await rejectsWith(() => ak.create({ accountId: 'a', delegatedBy: '\u0000' }), 'invalid_argument', 'delegatedBy');
      await rejectsWith(() => ak.ensureSubject('mch\u0000x'), 'invalid_argument', 'ensureSubject');
      expect(await snapshot(db, ak)).toBe(before);
    });

    it('security: control and bidi characters in any text are invalid_argument naming the field, and nothing is written', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_ok', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 1 });
      await ak.ensureSubject('mch_ok');
      const state = async () => [await snapshot(db, ak), JSON.stringify(await ak.ledger({ limit: 1000 })), JSON.stringify(await ak.listAccounts())];
      const before = await state();
      // ESC (an ANSI colour), BEL, NUL, DEL, C1 CSI, a right-to-left override, an isolate, marks.
      const bad = ['\u001b[31m', '\u0007', '\u0000', '\u007f', '\u009b', '\u202e', '\u2066', '\u200f', '\u061c', '\n', '\t'];
      const calls: [string, (text: string) => Promise<unknown>][] = [
        ['name', (t) => ak.create({ accountId: 'a', name: t })],
        ['accountId', (t) => ak.create({ accountId: t })],
        ['delegatedBy', (t) => ak.create({ accountId: 'a', delegatedBy: t })],
        ['userId', (t) => ak.create({ accountId: 'a', userId: t })],
        ['name', (t) => ak.create({ accountId: 'acct_ok', parentId: id, name: t })],
        ['subject', (t) => ak.ensureSubject(t)],
        ['name', (t) => ak.ensureSubject('mch_new', { name: t })],
        ['accountId', (t) => ak.ensureSubject('mch_new', { accountId: t })],
        ['accountId', (t) => ak.setAccountBudget(t, { budgetCents: 5 })],
        ['idempotencyKey', (t) => ak.trackUsage(key, { costCents: 1, idempotencyKey: t })],
        ['idempotencyKey', (t) => ak.reserve(key, { costCents: 1, idempotencyKey: t })],
        ['subject', (t) => ak.trackUsageBySubject(t, { costCents: 1 })],
        ['reason', (t) => ak.adjust(id, { costCents: 1, reason: t })],
        ['accountId', (t) => ak.listKeys({ accountId: t })],
      ];
      for (const [field, call] of calls) {
        for (const c of bad) {
          const label = `${field} with U+${c.codePointAt(0)!.toString(16).padStart(4, '0')}`;
          const err = await rejectsWith(() => call(`ok${c}ok`), 'invalid_argument', label);
          expect(err.message, label).toMatch(new RegExp(`^${field} must not contain control characters`));
          expect(err.message, label).toContain(`U+${c.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')} at index 2`);
          // Never the database's wording, never the text itself.
          expect(err.message, label).not.toMatch(/invalid byte sequence|0x00|does not fit/);
          expect(err.message, label).not.toContain(c);
        }
      }
      expect(await state()).toEqual(before);
      // Other text is as welcome as ever: accents, scripts that run right to left, emoji with joiners.
      const fine = await ak.create({ accountId: 'compte_é', name: 'Café ☕ שלום مرحبا 👩‍👩‍👧', delegatedBy: 'Zoë', userId: 'ünï@example.com' });
      expect(await ak.getKey(fine.id)).toMatchObject({ accountId: 'compte_é', name: 'Café ☕ שלום مرحبا 👩‍👩‍👧', delegatedBy: 'Zoë' });
    });

    it('error: validate of a non-string, empty or huge key is { valid: false, reason: invalid }', async () => {
      const ak = await getDb().agentKey();
      for (const raw of [undefined, null, 42, {}, [], '', ' ', 'ak_', 'ak_' + 'x'.repeat(1_000_000), 'Bearer ak_abc']) {
        expect(await ak.validate(raw as never), typeof raw).toEqual({ valid: false, reason: 'invalid' });
      }
    });

    it('error: trackUsage with a bad key or bad options changes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key } = await ak.create({ accountId: 'a', budgetCents: 100 });
      const before = await snapshot(db, ak);
      for (const raw of [undefined, null, 42, '', 'ak_' + 'x'.repeat(100_000)]) {
        expect(await ak.trackUsage(raw as never, { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
      }
      await rejectsWith(() => ak.trackUsage(key, { costCents: 1, cost: 1 } as never), 'invalid_argument', 'unknown option');
      await rejectsWith(() => ak.trackUsage(key, { cost: 1 } as never), 'invalid_argument', 'misspelt option');
      await rejectsWith(() => ak.trackUsage(key, [1] as never), 'invalid_argument', 'array');
      expect(await snapshot(db, ak)).toBe(before);
    });

    it('error: revoke with a malformed id or account throws invalid_argument and revokes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { id, key } = await ak.create({ accountId: 'a' });
      const before = await snapshot(db, ak);
      for (const bad of ['abc', '', ' 1', '1e3', '0x10', '-1', '1.0', 0, -1, 1.5, NaN, Infinity, 2 ** 53, null, undefined, {}, [id], true]) {
        await rejectsWith(() => ak.revoke(bad as never), 'invalid_argument', `keyId ${String(bad)}`);
      }
      for (const account of ['', 'x'.repeat(257), 1.5, {}, [], true]) {
        await rejectsWith(() => ak.revoke(id, account as never), 'invalid_argument', `accountId ${String(account)}`);
      }
      expect(await snapshot(db, ak)).toBe(before);
      expect(await ak.validate(key)).toMatchObject({ valid: true });
    });

    it('error: subject methods with bad subjects or options: right code, nothing written', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.ensureSubject('mch_ok', { budgetCents: 10 });
      const before = await snapshot(db, ak);
      const long = 'x'.repeat(257);
      for (const subject of ['', long, 5, null, undefined, {}, ['mch_ok']]) {
        await rejectsWith(() => ak.ensureSubject(subject as never), 'invalid_argument', `ensureSubject ${String(subject)}`);
        await rejectsWith(() => ak.validateBySubject(subject as never), 'invalid_argument', `validateBySubject ${String(subject)}`);
        await rejectsWith(() => ak.trackUsageBySubject(subject as never, { costCents: 1 }), 'invalid_argument', `trackUsageBySubject ${String(subject)}`);
      }
      const cases: [unknown, string][] = [
        [null, 'invalid_argument'],
        ['opts', 'invalid_argument'],
        [[], 'invalid_argument'],
        [{ expiresAt: new Date(Date.now() + 60_000) }, 'invalid_argument'],
        [{ budget: 5 }, 'invalid_argument'],
        [{ accountId: '' }, 'invalid_argument'],
        [{ accountId: long }, 'invalid_argument'],
        [{ name: '' }, 'invalid_argument'],
        [{ budgetCents: -5 }, 'invalid_budget'],
        [{ budgetCents: 'lots' }, 'invalid_budget'],
        [{ scopes: 'admin' }, 'invalid_scope'],
        [{ budgetPeriod: 'year' }, 'invalid_period'],
        [{ expiresIn: '-1d' }, 'invalid_duration'],
        [{ expiresIn: '1.5d' }, 'invalid_duration'],
      ];
      for (const [options, code] of cases) {
        await rejectsWith(() => ak.ensureSubject('mch_new', options as never), code, JSON.stringify(options));
      }
      expect(await ak.trackUsageBySubject('mch_ok', { costCents: -1 })).toEqual({ success: false, reason: 'invalid_cost' });
      expect(await ak.trackUsageBySubject('mch_ok', { costCents: NaN })).toEqual({ success: false, reason: 'invalid_cost' });
      await rejectsWith(() => ak.trackUsageBySubject('mch_ok', { costCents: 1, extra: 1 } as never), 'invalid_argument');
      expect(await snapshot(db, ak)).toBe(before);
    });
  });

  describe('faults', () => {
    it('error: an AgentKey on an unmigrated table rejects with not_migrated', async () => {
      const db = getDb();
      const ak = new AgentKey({ pool: db.pool, tableName: db.freshTable() });
      const key = (await (await db.agentKey()).create({ accountId: 'a' })).key;
      await rejectsWith(() => ak.create({ accountId: 'a' }), 'not_migrated', 'create');
      await rejectsWith(() => ak.validate(key), 'not_migrated', 'validate');
      await rejectsWith(() => ak.trackUsage(key, { costCents: 1 }), 'not_migrated', 'trackUsage');
      await rejectsWith(() => ak.revoke(1), 'not_migrated', 'revoke');
      await rejectsWith(() => ak.ensureSubject('mch_1'), 'not_migrated', 'ensureSubject');
      await rejectsWith(() => ak.validateBySubject('mch_1'), 'not_migrated', 'validateBySubject');
      const err = await rejectsWith(() => ak.trackUsageBySubject('mch_1', { costCents: 1 }), 'not_migrated', 'trackUsageBySubject');
      expect(err.message).toContain('migrate()');
    });

    it("error: a table of the page's shape that was never migrated rejects with not_migrated and is left as it was", async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(`CREATE TABLE ${table} (id BIGSERIAL PRIMARY KEY, account_id TEXT NOT NULL, key_hash TEXT NOT NULL,
        key_prefix TEXT NOT NULL, name TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), last_used_at TIMESTAMPTZ, revoked_at TIMESTAMPTZ)`);
      const legacy = 'ak_' + 'ab12'.repeat(12);
      await db.query(`INSERT INTO ${table} (account_id, key_hash, key_prefix) VALUES ('acct_1', $1, 'ak_ab12')`, [sha256(legacy)]);
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      const before = await snapshot(db, ak);
      await rejectsWith(() => ak.create({ accountId: 'a' }), 'not_migrated', 'create');
      await rejectsWith(() => ak.validate(legacy), 'not_migrated', 'validate');
      await rejectsWith(() => ak.trackUsage(legacy, { costCents: 1 }), 'not_migrated', 'trackUsage');
      expect(await snapshot(db, ak)).toBe(before);
    });
  });

  describe('subjects', () => {
    it('happy: ensureSubject is idempotent: a second call with other options changes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      expect(await ak.ensureSubject('mch_1', { budgetCents: 10, scopes: ['proxy.chat'], delegatedBy: 'user_1', name: 'bot' })).toBeUndefined();
      const first = valid(await ak.validateBySubject('mch_1'));
      expect(first).toMatchObject({ accountId: 'mch_1', budgetCents: 10, scopes: ['proxy.chat'], delegatedBy: 'user_1', name: 'bot', expiresAt: null });
      const before = await snapshot(db, ak);
      await ak.ensureSubject('mch_1', { budgetCents: 999, scopes: ['admin'], accountId: 'acct_other', expiresIn: '1h', name: 'other' });
      await ak.ensureSubject('mch_1');
      expect(await count(db, ak)).toBe(1);
      expect(valid(await ak.validateBySubject('mch_1'))).toMatchObject({ accountId: 'mch_1', budgetCents: 10, scopes: ['proxy.chat'], name: 'bot' });
      const after = await snapshot(db, ak);
      expect(after.replace(/"last_used_at":"[^"]*"/g, '')).toBe(before.replace(/"last_used_at":"[^"]*"/g, ''));
    });

    it('happy: accountId defaults to the subject, or is the one given', async () => {
      const ak = await getDb().agentKey();
      await ak.ensureSubject('mch_a');
      await ak.ensureSubject('mch_b', { accountId: 'acct_9' });
      await ak.ensureSubject('mch_c', { accountId: 9 });
      expect(await ak.validateBySubject('mch_a')).toMatchObject({ valid: true, accountId: 'mch_a', budgetCents: null, scopes: null });
      expect(await ak.validateBySubject('mch_b')).toMatchObject({ valid: true, accountId: 'acct_9' });
      expect(String(valid(await ak.validateBySubject('mch_c')).accountId)).toBe('9');
    });

    it('happy: trackUsageBySubject enforces the budget exactly', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.ensureSubject('mch_1', { budgetCents: 10 });
      const id = await subjectId(db, ak, 'mch_1');
      expect(await ak.trackUsageBySubject('mch_1', { costCents: 6 })).toEqual({ success: true, budgetUsedCents: 6, budgetRemainingCents: 4 });
      expect(await ak.trackUsageBySubject('mch_1', { costCents: 4.0001 })).toEqual({ success: false, reason: 'budget_exceeded', limitedBy: { kind: 'key', keyId: id }, budgetUsedCents: 6, budgetRemainingCents: 4 });
      expect(await ak.trackUsageBySubject('mch_1', { costCents: 4 })).toEqual({ success: true, budgetUsedCents: 10, budgetRemainingCents: 0 });
      // Spent to the cent: validateBySubject refuses it; getKey shows its figures.
      expect(await ak.validateBySubject('mch_1')).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect(await ak.getKey(id)).toMatchObject({ budgetCents: 10, spentCents: 10, remainingCents: 0 });
      expect((await rawRow(db, ak, id)).spent_micros).toBe('100000');
    });

    it('happy: subject budgets roll over with their period', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.ensureSubject('mch_day', { budgetCents: 10, budgetPeriod: 'day' });
      await ak.trackUsageBySubject('mch_day', { costCents: 10 });
      expect(await ak.trackUsageBySubject('mch_day', { costCents: 1 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      const id = await subjectId(db, ak, 'mch_day');
      await db.query(`UPDATE ${ak.tableName} SET budget_reset_at = now() - interval '1 second' WHERE id = $1`, [id]);
      expect(await ak.validateBySubject('mch_day')).toMatchObject({ valid: true, budgetUsedCents: 0 });
      expect(await ak.trackUsageBySubject('mch_day', { costCents: 1 })).toMatchObject({ success: true, budgetUsedCents: 1 });
    });

    it('error: expired and revoked subjects are refused and charged nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.ensureSubject('mch_exp', { budgetCents: 10, expiresIn: '2s' });
      await ak.ensureSubject('mch_rev', { budgetCents: 10 });
      const expId = await subjectId(db, ak, 'mch_exp');
      const revId = await subjectId(db, ak, 'mch_rev');
      await db.query(`UPDATE ${ak.tableName} SET expires_at = now() - interval '1 second' WHERE id = $1`, [expId]);
      expect(await ak.revoke(revId)).toBe(true);
      expect(await ak.validateBySubject('mch_exp')).toEqual({ valid: false, reason: 'expired' });
      expect(await ak.trackUsageBySubject('mch_exp', { costCents: 1 })).toEqual({ success: false, reason: 'expired' });
      expect(await ak.validateBySubject('mch_rev')).toEqual({ valid: false, reason: 'revoked' });
      expect(await ak.trackUsageBySubject('mch_rev', { costCents: 1 })).toEqual({ success: false, reason: 'revoked' });
      expect((await rawRow(db, ak, expId)).spent_micros).toBe('0');
      expect((await rawRow(db, ak, revId)).spent_micros).toBe('0');
      // A revoked subject stays revoked: ensureSubject does not bring it back.
      await ak.ensureSubject('mch_rev', { budgetCents: 10 });
      expect(await ak.validateBySubject('mch_rev')).toEqual({ valid: false, reason: 'revoked' });
    });

    it("error: an unknown subject is 'invalid' ('invalid_key' to charge), and a subject is not a bearer key", async () => {
      const db = getDb();
      const ak = await db.agentKey();
      expect(await ak.validateBySubject('mch_nobody')).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.trackUsageBySubject('mch_nobody', { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
      await ak.ensureSubject('mch_1', { budgetCents: 10 });
      expect(await ak.validateBySubject('MCH_1')).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.validate('mch_1')).toEqual({ valid: false, reason: 'invalid' });
      expect(await ak.validate('ak_mch_1')).toEqual({ valid: false, reason: 'invalid' });
      expect(await count(db, ak)).toBe(1);
    });
  });
});
