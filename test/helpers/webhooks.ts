import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { Webhook } from 'standardwebhooks';
import type { TestDb } from './databases.js';

/**
 * A local webhook receiver for the tests: an HTTP server that verifies every request with
 * standardwebhooks' `Webhook.verify` (per endpoint path, each with its secret), answers as
 * `respond` says (a status, 'hang' to never answer, 'drop' to cut the connection), and
 * counts requests in flight per (webhook-id, path), so overlapping sends of one event to
 * one endpoint show as `maxInFlight > 1`.
 */

export interface Received {
  path: string;
  id: string;
  timestamp: string;
  body: { type: string; timestamp: string; data: Record<string, unknown> };
  verified: boolean;
  answered: number | 'hang' | 'drop';
}

export type Respond = (r: Received, nth: number) => number | 'hang' | 'drop' | Promise<number | 'hang' | 'drop'>;

export interface Receiver {
  url: string;
  port: number;
  /** Every request, in arrival order. */
  received: Received[];
  /** The secret to verify requests to `path` with. */
  secrets: Map<string, string>;
  maxInFlight: number;
  respond: Respond;
  close(): Promise<void>;
}

export async function startReceiver(respond: Respond = () => 200, port = 0): Promise<Receiver> {
  const inFlight = new Map<string, number>();
  const sockets = new Set<import('node:net').Socket>();
  const r: Receiver = {
    url: '',
    port: 0,
    received: [],
    secrets: new Map(),
    maxInFlight: 0,
    respond,
    close: () =>
      new Promise((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  const server = http.createServer((req, res) => {
    let raw = '';
    req.on('data', (c: Buffer) => (raw += c.toString()));
    req.on('end', async () => {
      const path = req.url ?? '/';
      const id = String(req.headers['webhook-id']);
      const slot = `${id} ${path}`;
      inFlight.set(slot, (inFlight.get(slot) ?? 0) + 1);
      r.maxInFlight = Math.max(r.maxInFlight, inFlight.get(slot) as number);
      let verified = false;
      try {
        new Webhook(r.secrets.get(path) ?? 'whsec_AAAA').verify(raw, req.headers as Record<string, string>);
        verified = true;
      } catch {
        verified = false;
      }
      let body: Received['body'];
      try {
        body = JSON.parse(raw) as Received['body'];
      } catch {
        body = { type: '?', timestamp: '?', data: {} };
      }
      const entry: Received = { path, id, timestamp: String(req.headers['webhook-timestamp']), body, verified, answered: 200 };
      const nth = r.received.filter((x) => x.id === id && x.path === path).length;
      r.received.push(entry);
      const answer = await r.respond(entry, nth);
      entry.answered = answer;
      const done = () => inFlight.set(slot, (inFlight.get(slot) as number) - 1);
      if (answer === 'hang') {
        req.socket.once('close', done);
        return;
      }
      done();
      if (answer === 'drop') {
        req.socket.destroy();
        return;
      }
      res.writeHead(answer, { 'content-type': 'text/plain' });
      res.end('ok');
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  r.port = (server.address() as AddressInfo).port;
  r.url = `http://127.0.0.1:${r.port}`;
  return r;
}

/** A port nothing listens on now (listened on for a moment, then closed). */
export async function freePort(): Promise<number> {
  const s = http.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return port;
}

/** The outbox side table of keys table `table`. */
export const outboxOf = (table: string) => `"${table}_outbox"`;

/**
 * Writes outbox rows directly, as the writers in SQL do (that is the table's contract): one
 * statement each, in order. Returns their ids.
 */
export async function writeOutbox(
  db: TestDb,
  table: string,
  events: { type: string; accountId?: string; keyId?: number | null; data?: Record<string, unknown>; dedupe?: string }[],
): Promise<number[]> {
  const ids: number[] = [];
  for (const e of events) {
    const [row] = await db.query<{ id: number }>(
      `INSERT INTO ${outboxOf(table)} (type, account_id, key_id, data, dedupe) VALUES ($1, $2, $3, $4, $5) RETURNING id`,
      [e.type, e.accountId ?? 'acct_1', e.keyId ?? null, JSON.stringify(e.data ?? {}), e.dedupe ?? null],
    );
    ids.push(Number(row!.id));
  }
  return ids;
}

/** One event of each type, with data as the writers make it (micro-dollars as text). */
export function oneOfEach(accountId = 'acct_1'): { type: string; accountId: string; keyId: number | null; data: Record<string, unknown> }[] {
  return [
    {
      type: 'budget.threshold',
      accountId,
      keyId: 7,
      data: { key_id: 7, account_id: accountId, window: 'day', percent: 80, budget_micros: '10000000', spent_micros: '8000300', period_start_at: '2026-12-01T00:00:00.000Z', reset_at: '2026-12-02T00:00:00.000Z' },
    },
    { type: 'key.revoked', accountId, keyId: 7, data: { key_id: 7, account_id: accountId, revoked_at: '2026-12-01T10:00:00.000Z' } },
    { type: 'key.expired', accountId, keyId: 8, data: { key_id: 8, account_id: accountId, expires_at: '2026-12-01T11:00:00.000Z' } },
    { type: 'hold.expired', accountId, keyId: 7, data: { hold_id: 'rsv_1', key_id: 7, account_id: accountId, amount_micros: '1' } },
    { type: 'overage.recorded', accountId, keyId: 7, data: { key_id: 7, account_id: accountId, hold_id: null, overage_micros: '92233720368547758' } },
  ];
}
