import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentKey } from '../src/index.js';
import { type Storage, openStorage } from '../src/server/storage.js';
import { type CliStore, badArgumentTests, forEachCliStore, expectFailure, expectJson, expectOneLine, expectSuccess, stopCliProcesses, useCliRunner } from './helpers/cli.js';

/**
 * `agentkey webhooks add|list|show|update|remove|deliveries` and `agentkey outbox` as a real
 * process, on a temp PGlite data directory and on PostgreSQL: the secret printed once, what
 * the database holds shown escaped, bad input one line with exit 1 and nothing changed.
 */

const { cwd, run } = useCliRunner('cli-webhooks');

const BAD: [string, string[], RegExp][] = [
  ['webhooks add without --url', ['webhooks', 'add'], /required option '--url <url>' not specified/],
  ['webhooks add --events nope', ['webhooks', 'add', '--url', 'https://e.com', '--events', 'nope'], /--events must be a comma-separated list of budget.threshold/],
  ['webhooks update without changes', ['webhooks', 'update', '1'], /Nothing to change/],
  ['webhooks update --enable --disable', ['webhooks', 'update', '1', '--enable', '--disable'], /cannot be used with option '--disable'/],
  ['webhooks update --events and --all-events', ['webhooks', 'update', '1', '--events', 'key.expired', '--all-events'], /--events or --all-events, not both/],
  ['webhooks show x', ['webhooks', 'show', 'x'], /'x' is invalid.*id must be a whole number/],
  ['webhooks deliveries --status lost', ['webhooks', 'deliveries', '1', '--status', 'lost'], /'lost' is invalid.*Allowed choices are pending, delivered, failed/],
  ['outbox --type x', ['outbox', '--type', 'x'], /'x' is invalid/],
  ['outbox --limit 0', ['outbox', '--limit', '0'], /limit must be a whole number from 1 to 1000/],
];

describe('no database needed', () => {
  badArgumentTests(BAD, run, cwd);
});

function suite(name: string, setup: CliStore) {
  describe(name, () => {
    beforeAll(setup.before, 60_000);
    afterAll(async () => {
      await stopCliProcesses();
      await setup.after();
    });
    const cmd = (args: string[]) => run(args, setup.env());

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

    it('happy: add prints the secret once; list, show, update (disable, rotate), deliveries, outbox and remove', async () => {
      const human = expectSuccess(await cmd(['webhooks', 'add', '--url', 'https://example.com/h', '--events', 'key.expired,hold.expired', '--description', 'ops']));
      const secret = /^ {2}(whsec_\S+)$/m.exec(human)?.[1] as string;
      expect(secret).toMatch(/^whsec_[A-Za-z0-9+/]{32}$/);
      expect(human).toContain('events       key.expired, hold.expired');
      const id = Number(/Added webhook (\d+)/.exec(human)?.[1]);
      const list = expectJson(await cmd(['webhooks', 'list', '--json']));
      expect(list.webhooks).toEqual([expect.objectContaining({ id, url: 'https://example.com/h', events: ['key.expired', 'hold.expired'], enabled: true })]);
      expect(JSON.stringify(list)).not.toContain('whsec_');
      expect(expectSuccess(await cmd(['webhooks', 'show', String(id)]))).toMatch(/enabled\s+yes/);
      const updated = expectSuccess(await cmd(['webhooks', 'update', String(id), '--disable', '--rotate-secret', '--all-events']));
      const rotated = /^ {2}(whsec_\S+)$/m.exec(updated)?.[1];
      expect(rotated).toMatch(/^whsec_/);
      expect(rotated).not.toBe(secret);
      expect(updated).toMatch(/enabled\s+no/);
      expect(updated).toMatch(/events\s+all/);

      // An event and a delivery that failed, written as the deliverer would have.
      await library(async (ak, storage) => {
        const q = (text: string, params: unknown[] = []) => (storage.pool as { query(t: string, p: unknown[]): Promise<{ rows: Record<string, unknown>[] }> }).query(text, params);
        const { rows } = await q(`INSERT INTO "sdk_api_keys_outbox" (type, account_id, key_id, data) VALUES ('key.expired', 'acct_\u001b[2J', 4, '{"key_id": 4, "account_id": "acct_\\u001b[2J"}') RETURNING id`);
        const outboxId = Number(rows[0]!.id);
        await q(`INSERT INTO "sdk_api_keys_webhook_deliveries" (webhook_id, outbox_id, attempts, last_status, last_error) VALUES ($1, $2, 1, 500, 'HTTP 500')`, [id, outboxId]);
        expect(await ak.webhookStats()).toEqual({ pending: 1, failing: 1, failed: 0 });
      });
      const deliveries = expectSuccess(await cmd(['webhooks', 'deliveries', String(id)]));
      expect(deliveries).toMatch(/key\.expired.*pending.*HTTP 500/);
      expect(expectJson(await cmd(['webhooks', 'deliveries', String(id), '--status', 'failed', '--json']))).toEqual({ deliveries: [] });
      const outbox = expectJson(await cmd(['outbox', '--json']));
      expect(outbox.events).toEqual([expect.objectContaining({ type: 'key.expired', data: { keyId: 4, accountId: 'acct_\u001b[2J' } })]);
      expect(expectSuccess(await cmd(['outbox', '--type', 'key.expired']))).toContain('keyId');
      // The account id SQL wrote, with an escape sequence, is shown escaped.
      const shown = expectSuccess(await cmd(['outbox']));
      expect(shown).toContain('\\u001b[2J');
      expect(shown).not.toContain('\u001b');
      expect(expectSuccess(await cmd(['webhooks', 'deliveries', String(id)]))).not.toContain('\u001b');

      expect(expectSuccess(await cmd(['webhooks', 'remove', String(id)]))).toBe(`Removed webhook ${id} and its deliveries.\n`);
      expect(expectJson(await cmd(['webhooks', 'list', '--json']))).toEqual({ webhooks: [] });
    }, 300_000);

    it('error: a bad URL, an unknown id: one line, exit 1, nothing changed', async () => {
      const bad = await cmd(['webhooks', 'add', '--url', 'ftp://example.com/h']);
      expectFailure(bad, /url must use http or https/);
      expectOneLine(bad);
      expectFailure(await cmd(['webhooks', 'remove', '424242']), /No webhook endpoint has id 424242/);
      expectFailure(await cmd(['webhooks', 'update', '424242', '--enable']), /No webhook endpoint has id 424242/);
      expectFailure(await cmd(['webhooks', 'show', '424242']), /No webhook endpoint has id 424242/);
      expect(expectJson(await cmd(['webhooks', 'list', '--json']))).toEqual({ webhooks: [] });
    }, 300_000);
  });
}

forEachCliStore('cli-webhooks', run, suite);
