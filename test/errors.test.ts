import { describe, expect, it } from 'vitest';
import { AgentKey, MAX_CENTS } from '../src/index.js';
import { mintKey } from '../src/keys.js';
import { forEachDatabase } from './helpers/databases.js';
import { rejectsWith, throwsWith } from './helpers/errors.js';
import { rejectingPool } from './helpers/faults.js';
import { sha256Hex } from './helpers/package.js';
import { unknownReservationId } from './helpers/results.js';
import { tableState } from './helpers/tables.js';

/**
 * Input checked at the edge and storage that fails: bad constructor options and arguments are
 * refused with the right code before any SQL (and write nothing), a pool that is down gives
 * storage_error, and a table never migrated gives not_migrated. On PostgreSQL and PGlite where
 * a database is needed.
 */

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

describe('storage failures', () => {
  it('error: a pool that is down makes reserve, commit, release and the ledger calls reject with storage_error', async () => {
    const pool = rejectingPool();
    const ak = new AgentKey({ pool });
    const key = mintKey('ak_').raw;
    const rid = unknownReservationId();
    const calls: [string, () => Promise<unknown>][] = [
      ['reserve', () => ak.reserve(key, { costCents: 1 })],
      ['reserve with idempotencyKey', () => ak.reserve(key, { costCents: 1, idempotencyKey: 'k', ttl: '2s' })],
      ['reserveBySubject', () => ak.reserveBySubject('mch_1', { costCents: 1 })],
      ['commit', () => ak.commit(rid, { costCents: 1 })],
      ['release', () => ak.release(rid)],
      ['trackUsage with idempotencyKey', () => ak.trackUsage(key, { costCents: 1, idempotencyKey: 'k' })],
      ['adjust', () => ak.adjust(1, { costCents: -1, reason: 'refund' })],
      ['usage', () => ak.usage({ bucket: 'day' })],
      ['audit', () => ak.audit()],
      ['sweepExpiredHolds', () => ak.sweepExpiredHolds()],
    ];
    for (const [label, call] of calls) {
      const before = pool.calls;
      const err = await rejectsWith(call, 'storage_error', label);
      expect(err.message, label).toMatch(/ECONNREFUSED/);
      expect(pool.calls, label).toBeGreaterThan(before);
    }
  });

  it('security: input refused before the database costs no query', async () => {
    const pool = rejectingPool();
    const ak = new AgentKey({ pool });
    const key = mintKey('ak_').raw;
    expect(await ak.commit('abc', { costCents: 1 })).toEqual({ success: false, reason: 'reservation_not_found' });
    expect(await ak.release(42 as never)).toEqual({ success: false, reason: 'reservation_not_found' });
    expect(await ak.commit(unknownReservationId(), { costCents: -1 })).toEqual({ success: false, reason: 'invalid_cost' });
    expect(await ak.reserve(key, { costCents: NaN })).toEqual({ success: false, reason: 'invalid_cost' });
    expect(await ak.reserve('not-a-key', { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
    // A free charge needs no database call either.
    expect(await ak.trackUsage(key, { costCents: 0 })).toEqual({ success: true });
    await rejectsWith(() => ak.reserve(key, { costCents: 1, ttl: '0s' }), 'invalid_duration');
    await rejectsWith(() => ak.usage({ bucket: 'week' as never }), 'invalid_argument');
    await rejectsWith(() => ak.adjust(1, { costCents: 0, reason: 'x' }), 'invalid_cost');
    expect(pool.calls).toBe(0);
  });
});

forEachDatabase((getDb) => {
  describe('bad input', () => {
    it('error: create with wrong types, empty or long strings, unknown options: right code, nothing written', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.create({ accountId: 'existing' });
      const before = await tableState(db, ak);
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
      expect(await tableState(db, ak)).toBe(before);
    });

    it('error: text the database cannot store (a NUL character) is invalid_argument, and nothing is written', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.ensureSubject('mch_ok');
      const before = await tableState(db, ak);
      await rejectsWith(() => ak.create({ accountId: 'a', name: 'bad\u0000name' }), 'invalid_argument', 'name');
      await rejectsWith(() => ak.create({ accountId: 'acct\u0000' }), 'invalid_argument', 'accountId');
      await rejectsWith(() => ak.create({ accountId: 'a', delegatedBy: '\u0000' }), 'invalid_argument', 'delegatedBy');
      await rejectsWith(() => ak.ensureSubject('mch\u0000x'), 'invalid_argument', 'ensureSubject');
      expect(await tableState(db, ak)).toBe(before);
    });

    it('security: control and bidi characters in any text are invalid_argument naming the field, and nothing is written', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_ok', budgetCents: 100 });
      await ak.trackUsage(key, { costCents: 1 });
      await ak.ensureSubject('mch_ok');
      const state = async () => [await tableState(db, ak), JSON.stringify(await ak.ledger({ limit: 1000 })), JSON.stringify(await ak.listAccounts())];
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
      const before = await tableState(db, ak);
      for (const raw of [undefined, null, 42, '', 'ak_' + 'x'.repeat(100_000)]) {
        expect(await ak.trackUsage(raw as never, { costCents: 1 })).toEqual({ success: false, reason: 'invalid_key' });
      }
      await rejectsWith(() => ak.trackUsage(key, { costCents: 1, cost: 1 } as never), 'invalid_argument', 'unknown option');
      await rejectsWith(() => ak.trackUsage(key, { cost: 1 } as never), 'invalid_argument', 'misspelt option');
      await rejectsWith(() => ak.trackUsage(key, [1] as never), 'invalid_argument', 'array');
      expect(await tableState(db, ak)).toBe(before);
    });

    it('error: revoke with a malformed id or account throws invalid_argument and revokes nothing', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      const { id, key } = await ak.create({ accountId: 'a' });
      const before = await tableState(db, ak);
      for (const bad of ['abc', '', ' 1', '1e3', '0x10', '-1', '1.0', 0, -1, 1.5, NaN, Infinity, 2 ** 53, null, undefined, {}, [id], true]) {
        await rejectsWith(() => ak.revoke(bad as never), 'invalid_argument', `keyId ${String(bad)}`);
      }
      for (const account of ['', 'x'.repeat(257), 1.5, {}, [], true]) {
        await rejectsWith(() => ak.revoke(id, account as never), 'invalid_argument', `accountId ${String(account)}`);
      }
      expect(await tableState(db, ak)).toBe(before);
      expect(await ak.validate(key)).toMatchObject({ valid: true });
    });

    it('error: subject methods with bad subjects or options: right code, nothing written', async () => {
      const db = getDb();
      const ak = await db.agentKey();
      await ak.ensureSubject('mch_ok', { budgetCents: 10 });
      const before = await tableState(db, ak);
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
      expect(await tableState(db, ak)).toBe(before);
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

    it("error: a table of the package's shape that was never migrated rejects with not_migrated and is left as it was", async () => {
      const db = getDb();
      const table = db.freshTable();
      await db.query(`CREATE TABLE ${table} (id BIGSERIAL PRIMARY KEY, account_id TEXT NOT NULL, key_hash TEXT NOT NULL,
        key_prefix TEXT NOT NULL, name TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), last_used_at TIMESTAMPTZ, revoked_at TIMESTAMPTZ)`);
      const legacy = 'ak_' + 'ab12'.repeat(12);
      await db.query(`INSERT INTO ${table} (account_id, key_hash, key_prefix) VALUES ('acct_1', $1, 'ak_ab12')`, [sha256Hex(legacy)]);
      const ak = new AgentKey({ pool: db.pool, tableName: table });
      const before = await tableState(db, ak);
      await rejectsWith(() => ak.create({ accountId: 'a' }), 'not_migrated', 'create');
      await rejectsWith(() => ak.validate(legacy), 'not_migrated', 'validate');
      await rejectsWith(() => ak.trackUsage(legacy, { costCents: 1 }), 'not_migrated', 'trackUsage');
      expect(await tableState(db, ak)).toBe(before);
    });
  });
});
