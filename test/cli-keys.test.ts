import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentKey } from '../src/index.js';
import { type Storage, openStorage } from '../src/server/storage.js';
import { type CliResult, type CliStore, badArgumentTests, forEachCliStore, expectFailure, expectJson, expectOneLine, expectSuccess, linesOf, stopCliProcesses, useCliRunner } from './helpers/cli.js';

/**
 * `agentkey keys rotate` and `agentkey keys events` as a real process, on a temp PGlite
 * data directory and on PostgreSQL through DATABASE_URL: a rotated key's new secret works
 * through the library and the old one only for --grace; the event log of changes made
 * through the CLI says 'cli', is escaped on a terminal and pages with --before/--limit;
 * bad input is one line, exit 1, and changes nothing.
 */

const { cwd, run } = useCliRunner('cli-keys');

const ISO = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
/** No control character but the line breaks, no bidi mark, override or isolate. */
const RAW = /[\u0000-\u0009\u000b-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/;

// Mistakes in the new commands' arguments, refused before any database is opened.
const BAD: [string, string[], RegExp][] = [
  ['keys rotate without an id', ['keys', 'rotate'], /missing required argument 'id'/],
  ['keys rotate abc', ['keys', 'rotate', 'abc'], /'abc' is invalid.*id must be a whole number/],
  ['keys rotate 0', ['keys', 'rotate', '0'], /'0' is invalid.*id must be a whole number from 1/],
  ['keys rotate --grace 8d', ['keys', 'rotate', '1', '--grace', '8d'], /--grace <duration>.*'8d' is invalid.*at most 7 days/],
  ['keys rotate --grace 169h', ['keys', 'rotate', '1', '--grace', '169h'], /'169h' is invalid.*at most 7 days/],
  ['keys rotate --grace 1mo', ['keys', 'rotate', '1', '--grace', '1mo'], /'1mo' is invalid.*at most 7 days/],
  ['keys rotate --grace soon', ['keys', 'rotate', '1', '--grace', 'soon'], /'soon' is invalid.*such as '30s', '15m', '1h' or '7d'/],
  ['keys rotate --grace -1h', ['keys', 'rotate', '1', '--grace', '-1h'], /'-1h' is invalid/],
  ['keys rotate --account without a value', ['keys', 'rotate', '1', '--account'], /option '--account <id>' argument missing/],
  ['keys events abc', ['keys', 'events', 'abc'], /'abc' is invalid.*id must be a whole number/],
  ['keys events --before 0', ['keys', 'events', '--before', '0'], /--before <event id>.*'0' is invalid.*before must be a whole number from 1/],
  ['keys events --before x', ['keys', 'events', '--before', 'x'], /'x' is invalid.*before must be a whole number/],
  ['keys events --limit 0', ['keys', 'events', '--limit', '0'], /limit must be a whole number from 1 to 1000/],
  ['keys events --limit 1001', ['keys', 'events', '--limit', '1001'], /limit must be a whole number from 1 to 1000/],
  ['keys events with two ids', ['keys', 'events', '1', '2'], /too many arguments/],
  ['keys rotate --grace with an escape sequence', ['keys', 'rotate', '1', '--grace', '1h\u001b[2J'], /^agentkey: .*'1h\\x1b\[2J' is invalid/],
];

describe('no database needed', () => {
  badArgumentTests(BAD, run, cwd);
});

/** The same tests on each database: `where()` is the CLI's env, `open()` the library's storage on it. */
function suite(name: string, setup: CliStore) {
  describe(name, () => {
    beforeAll(setup.before, 60_000);
    afterAll(async () => {
      await stopCliProcesses();
      await setup.after();
    });
    const cmd = (args: string[]) => run(args, setup.env());

    /** The library on the same database (with no CLI running: PGlite is one process at a time). */
    async function library<T>(fn: (ak: AgentKey, storage: Storage) => Promise<T>): Promise<T> {
      const storage = await openStorage({ ...setup.options(), create: false });
      const ak = new AgentKey({ pool: storage.pool });
      try {
        return await fn(ak, storage);
      } finally {
        await ak.close();
        await storage.close();
      }
    }

    const secretOf = (text: string) => /^ {2}(ak_\S+)$/m.exec(text)?.[1] as string;
    let rot: { id: number; secret: string };

    it('keys rotate: a new secret, printed once; it works through the library and the old one stops at once', async () => {
      const created = expectJson(await cmd(['keys', 'create', '--account', 'acct_r', '--name', 'rot', '--budget-cents', '500', '--json']));
      const human = expectSuccess(await cmd(['keys', 'rotate', String(created.id)]));
      const secret = secretOf(human);
      expect(secret, human).toMatch(/^ak_[A-Za-z0-9]{20,}$/);
      expect(secret).not.toBe(created.key);
      expect(human).toBe(`Rotated key ${created.id}. Its new raw value is shown this once; store it now:\n\n  ${secret}\n\nThe previous secret stopped working at once.\n`);
      await library(async (ak) => {
        expect(await ak.validate(secret)).toMatchObject({ valid: true, keyId: created.id, accountId: 'acct_r', budgetCents: 500 });
        expect(await ak.validate(created.key)).toEqual({ valid: false, reason: 'invalid' });
        expect(await ak.getKey(created.id)).toMatchObject({ id: created.id, name: 'rot', status: 'active', prefix: secret.slice(0, (created.prefix as string).length) });
      });
      rot = { id: created.id, secret };
    }, 60_000);

    it('keys rotate --grace: the old secret works until previousKeyValidUntil; --json is the RotateResult', async () => {
      const started = Date.now();
      const r = expectJson(await cmd(['keys', 'rotate', String(rot.id), '--grace', '1h', '--account', 'acct_r', '--json']));
      expect(Object.keys(r).sort()).toEqual(['id', 'key', 'prefix', 'previousKeyValidUntil']);
      expect(r).toEqual({ key: expect.stringMatching(/^ak_/), id: rot.id, prefix: expect.any(String), previousKeyValidUntil: expect.stringMatching(ISO) });
      expect(r.key.startsWith(r.prefix)).toBe(true);
      const until = Date.parse(r.previousKeyValidUntil);
      expect(until - started).toBeGreaterThan(3_600_000 - 60_000);
      expect(until - Date.now()).toBeLessThanOrEqual(3_600_000);
      await library(async (ak) => {
        expect(await ak.validate(r.key)).toMatchObject({ valid: true, keyId: rot.id });
        expect(await ak.validate(rot.secret)).toMatchObject({ valid: true, keyId: rot.id });
      });

      // The human form says until when; a rotation ends any older secret at once.
      const human = expectSuccess(await cmd(['keys', 'rotate', String(rot.id), '--grace', '30m']));
      const secret = secretOf(human);
      expect(human).toMatch(/\n\nThe previous secret works until \d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ\.\n$/);
      const shown = Date.parse(/until (\S+ \S+)\.\n$/.exec(human)?.[1]?.replace(' ', 'T') as string);
      expect(Math.abs(shown - (Date.now() + 30 * 60_000))).toBeLessThan(60_000);
      await library(async (ak) => {
        expect(await ak.validate(secret)).toMatchObject({ valid: true, keyId: rot.id });
        expect(await ak.validate(r.key)).toMatchObject({ valid: true, keyId: rot.id });
        expect(await ak.validate(rot.secret)).toEqual({ valid: false, reason: 'invalid' });
      });
      // --grace 0 is accepted: no grace.
      const none = expectJson(await cmd(['keys', 'rotate', String(rot.id), '--grace', '0', '--json']));
      expect(none.previousKeyValidUntil).toBeNull();
      rot = { id: rot.id, secret: none.key };
    }, 90_000);

    it('keys rotate refusals: an unknown key, another account, a revoked key; each one line, and nothing changes', async () => {
      const before = await library((ak) => ak.keyEvents({ limit: 1000 }));
      const other = expectJson(await cmd(['keys', 'create', '--account', 'acct_r', '--name', 'gone', '--json']));
      expectSuccess(await cmd(['keys', 'revoke', String(other.id)]));
      const logged = await library((ak) => ak.keyEvents({ limit: 1000 }));
      expect(logged.length).toBe(before.length + 2);

      const unknown = await cmd(['keys', 'rotate', '999999']);
      expectFailure(unknown, /^agentkey: No key has id 999999\.$/);
      const elsewhere = await cmd(['keys', 'rotate', String(rot.id), '--account', 'acct_elsewhere']);
      expectFailure(elsewhere, new RegExp(`^agentkey: No key has id ${rot.id} in account acct_elsewhere\\.$`));
      const revoked = await cmd(['keys', 'rotate', String(other.id), '--grace', '1h']);
      expectFailure(revoked, new RegExp(`^agentkey: Key ${other.id} is revoked; a revoked key cannot be rotated\\.$`));
      for (const r of [unknown, elsewhere, revoked]) expectOneLine(r);

      await library(async (ak) => {
        expect(await ak.keyEvents({ limit: 1000 })).toEqual(logged);
        expect(await ak.validate(rot.secret)).toMatchObject({ valid: true, keyId: rot.id });
      });
    }, 90_000);

    it('bad input on a real database: each mistake is one line and changes nothing', async () => {
      const logged = await library((ak) => ak.keyEvents({ limit: 1000 }));
      // All at once: none of them opens the database.
      const results = await Promise.all(BAD.map(([, args]) => cmd(args)));
      BAD.forEach(([label, , message], i) => {
        expectFailure(results[i] as CliResult, message);
        expect(linesOf((results[i] as CliResult).stderr), label).toHaveLength(1);
      });
      await library(async (ak) => {
        expect(await ak.keyEvents({ limit: 1000 })).toEqual(logged);
        expect(await ak.validate(rot.secret)).toMatchObject({ valid: true, keyId: rot.id });
      });
    }, 120_000);

    let seq: number;
    it('keys events: create, update, rotate and revoke through the CLI, newest first, each by cli; --json is the array', async () => {
      const markup = '<b>bold</b> "q", budgetCents: 1 → 2 \\x1b';
      const created = expectJson(await cmd(['keys', 'create', '--account', 'acct_e', '--name', markup, '--budget-cents', '300', '--json']));
      seq = created.id;
      expectSuccess(await cmd(['keys', 'update', String(seq), '--name', 'renamed', '--budget-cents', '250']));
      const rotated = expectJson(await cmd(['keys', 'rotate', String(seq), '--grace', '1h', '--json']));
      expectSuccess(await cmd(['keys', 'revoke', String(seq)]));

      const events = expectJson(await cmd(['keys', 'events', String(seq), '--json']));
      expect(events.map((e: { kind: string }) => e.kind)).toEqual(['revoked', 'rotated', 'updated', 'created']);
      for (const e of events) expect(e).toMatchObject({ keyId: seq, accountId: 'acct_e', actor: 'cli', actorKeyId: null, at: expect.stringMatching(ISO) });
      expect(events[0].changes).toEqual({ revokedAt: { before: null, after: expect.stringMatching(ISO) } });
      expect(events[1].changes).toEqual({ previousKeyValidUntil: expect.objectContaining({ after: rotated.previousKeyValidUntil }) });
      expect(events[2].changes).toEqual({ name: { before: markup, after: 'renamed' }, budgetCents: { before: 300, after: 250 } });
      expect(events[3].changes).toMatchObject({ name: { after: markup }, budgetCents: { after: 300 } });
      // The same as the library reads.
      expect(await library((ak) => ak.keyEvents({ keyId: seq }))).toEqual(events);

      const human = expectSuccess(await cmd(['keys', 'events', String(seq)]));
      const lines = linesOf(human);
      expect(lines).toHaveLength(4);
      const line = (e: { id: number; kind: string }) => new RegExp(`^${e.id}\\s+\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\dZ  ${e.kind}\\s+key ${seq}  by cli  `);
      lines.forEach((l, i) => expect(l).toMatch(line(events[i])));
      expect(lines[0]).toMatch(/  revokedAt: null → "\d{4}-\d\d-\d\dT[\d:.]+Z"$/);
      expect(lines[1]).toMatch(/  previousKeyValidUntil: (null → )?"\d{4}-\d\d-\d\dT[\d:.]+Z"$/);
      // A name is quoted, its quotes and backslashes escaped: it cannot pose as another field.
      expect(lines[2]).toMatch(/  name: "<b>bold<\/b> \\"q\\", budgetCents: 1 → 2 \\\\x1b" → "renamed", budgetCents: 300 → 250$/);
      expect(lines[3]).toContain('name: "<b>bold</b> \\"q\\", budgetCents: 1 → 2 \\\\x1b"');
      expect(lines[3]).toContain('budgetCents: 300');
    }, 120_000);

    it("keys events: who made a change (library, a key through by, SQL), and SQL's control characters escaped, never raw", async () => {
      const evil = 'x\u001b[31mred\u0007\u202eevil\nz';
      const ids = await library(async (ak, storage) => {
        const parent = await ak.create({ accountId: 'acct_w', name: 'parent' });
        const child = await ak.create({ accountId: 'acct_w', parentId: parent.id, name: 'child', budgetCents: 100 });
        await ak.update(child.id, { budgetCents: 90 }, { by: parent.id });
        await storage.query('UPDATE sdk_api_keys SET name = $1 WHERE id = $2', [evil, child.id]);
        return { parent: parent.id, child: child.id };
      });
      const [json, human] = [expectJson(await cmd(['keys', 'events', String(ids.child), '--json'])), expectSuccess(await cmd(['keys', 'events', '--account', 'acct_w']))];
      expect(json.map((e: { kind: string; actor: string; actorKeyId: number | null }) => [e.kind, e.actor, e.actorKeyId])).toEqual([
        ['updated', 'sql', null],
        ['updated', 'key', ids.parent],
        ['created', 'library', null],
      ]);
      expect(json[0].changes).toEqual({ name: { before: 'child', after: evil } });
      const lines = linesOf(human);
      expect(lines).toHaveLength(4);
      expect(human).not.toMatch(RAW);
      expect(lines[0]).toMatch(new RegExp(`  updated\\s+key ${ids.child}\\s+by sql\\s+name: "child" → "x\\\\x1b\\[31mred\\\\x07\\\\u202eevil\\\\nz"$`));
      expect(lines[1]).toMatch(new RegExp(`  updated\\s+key ${ids.child}\\s+by key ${ids.parent}\\s+budgetCents: 100 → 90$`));
      expect(lines[2]).toMatch(new RegExp(`  created\\s+key ${ids.child}\\s+by library\\s+name: "child", `));
      expect(lines[3]).toMatch(new RegExp(`  created\\s+key ${ids.parent}\\s+by library\\s+name: "parent"`));
      // --json escapes them too and parses back to the stored text.
      const raw = (await cmd(['keys', 'events', String(ids.child), '--json'])).stdout;
      expect(raw).not.toMatch(RAW);
      expect(JSON.parse(raw)[0].changes.name.after).toBe(evil);
    }, 90_000);

    it('keys events: --limit and --before page through the log, newest first, each event once; --account filters', async () => {
      const all = expectJson(await cmd(['keys', 'events', '--json', '--limit', '1000']));
      expect(all.length).toBeGreaterThanOrEqual(10);
      const ids = all.map((e: { id: number }) => e.id);
      expect(ids).toEqual([...ids].sort((a, b) => b - a));

      const paged: number[] = [];
      let before: number | undefined;
      for (let page = 0; page < 20; page++) {
        const got = expectJson(await cmd(['keys', 'events', '--json', '--limit', '6', ...(before === undefined ? [] : ['--before', String(before)])]));
        expect(got.length).toBeLessThanOrEqual(6);
        if (got.length === 0) break;
        paged.push(...got.map((e: { id: number }) => e.id));
        before = got.at(-1).id;
      }
      expect(paged).toEqual(ids);

      // The human form says how to go on when the page is full.
      const first = linesOf(expectSuccess(await cmd(['keys', 'events', '--limit', '2'])));
      expect(first).toHaveLength(3);
      expect(first[0]).toMatch(new RegExp(`^${ids[0]}\\s`));
      expect(first[1]).toMatch(new RegExp(`^${ids[1]}\\s`));
      expect(first[2]).toBe(`(older events: --before ${ids[1]})`);
      const next = linesOf(expectSuccess(await cmd(['keys', 'events', '--limit', '2', '--before', String(ids[1])])));
      expect(next[0]).toMatch(new RegExp(`^${ids[2]}\\s`));
      expect(expectSuccess(await cmd(['keys', 'events', '--before', String(ids.at(-1))]))).toBe('No events.\n');

      const inAccount = expectJson(await cmd(['keys', 'events', '--account', 'acct_e', '--json']));
      expect(inAccount.map((e: { id: number }) => e.id)).toEqual(all.filter((e: { accountId: string }) => e.accountId === 'acct_e').map((e: { id: number }) => e.id));
      expect(inAccount).toHaveLength(4);
      expect(expectJson(await cmd(['keys', 'events', String(seq), '--account', 'acct_r', '--json']))).toEqual([]);
    }, 180_000);
  });
}

forEachCliStore('cli-keys', run, suite);
