import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type Request, type Response } from 'express';
import { type AgentKey, agentKeyMiddleware } from '../../src/index.js';
import type { HeldReservation } from '../../src/http/express.js';
import type { TestDb } from './databases.js';
import { until } from './wait.js';

/**
 * The Express hold tests' world: an app with one protected POST route behind
 * agentKeyMiddleware(ak, { reserveCents }), a real server for clients that disconnect,
 * and the key's money and ledger as the tests read them.
 */

export type HoldRequest = Request & { agentKeyReservation?: HeldReservation; agentKey?: { keyId: number } };

export const bearer = (key: string) => `Bearer ${key}`;

export function deferred<T = void>() {
  let resolve!: (value: T) => void;
  let reject!: (err: unknown) => void;
  const promise = new Promise<T>((res, rej) => {
    resolve = res;
    reject = rej;
  });
  return { promise, resolve, reject };
}

/**
 * What the key's validation says, in cents. validate() refuses a key with nothing left to
 * spend ('budget_exceeded', as the package does), so for such a key the same figures are
 * read from getKey().
 */
export async function money(ak: AgentKey, key: string) {
  const v = await ak.validate(key);
  if (v.valid) return { held: v.budgetHeldCents, spent: v.budgetUsedCents, remaining: v.budgetRemainingCents };
  if (v.reason !== 'budget_exceeded') throw new Error(`key is ${v.reason}`);
  const info = await ak.getKey((await ak.identify(key)) as number);
  if (!info) throw new Error('key not found');
  return { held: info.heldCents, spent: info.spentCents, remaining: info.remainingCents };
}

/** Waits until no hold of the key counts any more (the request's hold was settled). */
export async function holdsSettled(ak: AgentKey, key: string): Promise<void> {
  await until(async () => (await money(ak, key)).held === 0, 'the hold to be settled');
}

/** The key's ledger rows in order: kind, amount in cents, reservation id. */
export async function ledger(db: TestDb, ak: AgentKey, keyId: number) {
  const rows = await db.query<{ kind: string; amount_micros: string | number; reservation_id: string | null }>(
    `SELECT kind, amount_micros, reservation_id FROM "${ak.tableName}_ledger" WHERE key_id = $1 ORDER BY id`,
    [keyId],
  );
  return rows.map((r) => ({ kind: r.kind, cents: Number(r.amount_micros) / 10_000, reservationId: r.reservation_id }));
}

export const kinds = async (db: TestDb, ak: AgentKey, keyId: number) => (await ledger(db, ak, keyId)).map((r) => r.kind);

export type Handler = (req: HoldRequest, res: Response) => unknown;

/**
 * An app with one protected POST route behind express.json(); `reached` counts the
 * requests the handler saw and `reservations` what req.agentKeyReservation held.
 */
export function holdApp(ak: AgentKey, options: Parameters<typeof agentKeyMiddleware>[1], handler?: Handler) {
  const app = express();
  app.use(express.json());
  const state = { reached: 0, reservations: [] as (HeldReservation | undefined)[] };
  // Not an async function: a handler that throws synchronously must throw to Express as such.
  app.post('/api/chat', agentKeyMiddleware(ak, options), (req: Request, res: Response) => {
    state.reached += 1;
    state.reservations.push((req as HoldRequest).agentKeyReservation);
    if (handler) return handler(req as HoldRequest, res);
    res.json({ ok: true });
  });
  return { app, state };
}

/** A real server on an ephemeral port, for clients that disconnect. */
export async function listen(app: express.Express) {
  const server = http.createServer(app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    server,
    port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** Sends a POST that the test can abort; resolves nothing, errors are expected. */
export function rawPost(port: number, key: string, body: unknown = {}) {
  const req = http.request({
    host: '127.0.0.1',
    port,
    method: 'POST',
    path: '/api/chat',
    headers: { authorization: bearer(key), 'content-type': 'application/json' },
  });
  req.on('error', () => {});
  const firstChunk = deferred<string>();
  req.on('response', (res) => {
    res.on('error', () => {});
    res.once('data', (chunk: Buffer) => firstChunk.resolve(chunk.toString()));
  });
  req.end(JSON.stringify(body));
  return { req, firstChunk: firstChunk.promise };
}
