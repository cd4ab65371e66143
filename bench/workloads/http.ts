import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { serve } from '@hono/node-server';
import type pg from 'pg';
import { createApp } from '../../src/server/index.js';
import { CALLERS, CHARGES, SECONDS, type Run, costs, drive, fmt, freshAgentKey } from '../harness.js';

/**
 * The HTTP service on the same database: POST /v1/verify and POST /v1/charge from
 * CALLERS concurrent fetch clients (keep-alive), against the library called in-process.
 * Client, service and PostgreSQL share this machine's cores.
 */
export async function httpService(pool: pg.Pool): Promise<string[]> {
  const ak = await freshAgentKey(pool);
  const admin = `akadmin_bench_${randomUUID()}`;
  const { app } = createApp(ak, { adminKey: admin, dashboard: false });
  const server = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' });
  await new Promise((resolve) => server.once('listening', resolve));
  const port = (server.address() as AddressInfo).port;
  // node:http with a keep-alive agent: a lighter client than fetch, so the service is what is measured.
  const agent = new http.Agent({ keepAlive: true, maxSockets: CALLERS });
  const post = (path: string, body: unknown) => request(port, agent, 'POST', path, JSON.stringify(body));
  const lines = [`HTTP service (node:http keep-alive client, ${CALLERS} concurrent callers, in the same process as the service):`];
  const show = (what: string, r: Run, note: string) =>
    lines.push(`  ${what.padEnd(30)} ${fmt(r.ops / r.seconds).padStart(7)} req/s  p50 ${r.p50.toFixed(2).padStart(6)} ms  p99 ${r.p99.toFixed(2).padStart(6)} ms  ${note}`);

  // The ceiling: a bare node:http server answering a constant, driven the same way.
  const bare = http.createServer((_, res) => res.end('{"ok":true}'));
  await new Promise<void>((resolve) => bare.listen(0, '127.0.0.1', resolve));
  const bareRun = await drive({ seconds: SECONDS }, async () => void (await request((bare.address() as AddressInfo).port, agent, 'GET', '/')));
  show('bare node:http, constant body', bareRun, '(the ceiling on this machine)');
  await new Promise((resolve) => bare.close(resolve));

  const { key } = await ak.create({ accountId: 'acct_http' });
  let bad = 0;
  const inProcess = await drive({ seconds: SECONDS }, async () => {
    if (!(await ak.validate(key)).valid) bad++;
  });
  show('validate, in-process', inProcess, bad === 0 ? '' : `FAILED: ${bad} invalid`);
  bad = 0;
  const verify = await drive({ seconds: SECONDS }, async () => {
    const r = await post('/v1/verify', { key });
    if (r.status !== 200 || r.body.valid !== true) bad++;
  });
  show('POST /v1/verify', verify, bad === 0 ? 'every answer valid' : `FAILED: ${bad} not valid`);

  const amounts = costs(CHARGES, 21);
  const budget = Math.floor(amounts.reduce((s, c) => s + c, 0) * 0.75);
  const hot = await ak.create({ accountId: 'acct_http', budgetCents: budget / 10_000 });
  let accepted = 0;
  let acceptedMicros = 0;
  let unexpected = 0;
  const charge = await drive({ ops: CHARGES }, async (i) => {
    const c = amounts[i] as number;
    const r = await post('/v1/charge', { key: hot.key, costCents: c / 10_000 });
    if (r.status === 200) (accepted++, (acceptedMicros += c));
    else if (r.status !== 429) unexpected++;
  });
  const audit = await ak.audit();
  const spent = Number((await ak.getKey(hot.id))?.spentCents ?? -1);
  const ok = unexpected === 0 && audit.ok && Math.round(spent * 10_000) === acceptedMicros && acceptedMicros <= budget;
  show('POST /v1/charge, 1 hot key', charge, ok ? `ok: ${accepted} accepted = ledger, nothing overspent` : `FAILED: spent ${spent}, accepted ${acceptedMicros / 10_000}, unexpected ${unexpected}`);
  await new Promise((resolve) => server.close(resolve));
  await ak.close();
  if (!ok || bad > 0) lines.push('FAILED: HTTP service checks');
  return lines;
}

function request(port: number, agent: http.Agent, method: string, path: string, body?: string): Promise<{ status: number; body: Record<string, unknown> }> {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
    const req = http.request({ host: '127.0.0.1', port, method, path, agent, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: JSON.parse(text) as Record<string, unknown> }));
    });
    req.on('error', reject);
    req.end(body);
  });
}
