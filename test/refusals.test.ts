import fs from 'node:fs';
import path from 'node:path';
import express from 'express';
import request from 'supertest';
import { afterEach, describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError, type AgentKeyErrorCode, agentKeyMiddleware, createAgentKeyRoutes } from '../src/index.js';
import { type HttpError, errorToHttp, packageBody } from '../src/http/errors.js';
import { agentKeyPreHandler } from '../src/http/fastify.js';
import { agentKeyGuard } from '../src/http/fetch.js';
import { agentKey } from '../src/http/hono.js';
import { type LibraryReason, REFUSALS, REFUSAL_GROUPS, type Refusal, refuse } from '../src/http/refusals.js';
import { TIMEOUT } from '../src/http/timeout.js';
import { clerkM2M } from '../src/identity/clerk.js';
import { jwtSubjects } from '../src/identity/jwt.js';
import { subjectIdentities } from '../src/identity/subjects.js';
import { createApp } from '../src/server/index.js';
import { tableNames } from '../src/store/identifiers.js';
import { ALL_SURFACES, closeApps, kinds, money, refusalView } from './helpers/adapters.js';
import { forEachDatabase } from './helpers/databases.js';
import { expectPackageError, expectOneSentence } from './helpers/http.js';
import { hangingPool } from './helpers/faults.js';
import { holdRowLock } from './helpers/locks.js';
import { ROOT } from './helpers/processes.js';
import { type Reply, UNKNOWN_KEY, service } from './helpers/service.js';

/**
 * One refusal vocabulary: the table in src/http/refusals.ts is complete (every library
 * reason, every AgentKeyErrorCode), its rows are well formed, the README shows it as it
 * is, and every HTTP surface answers the same refusal the same way. Each deliberate
 * decision has its own case: a store that does not answer in time is 503 everywhere; a
 * missing scope is 403 from the adapters and 200 `valid: false` from /v1/verify;
 * budget_exceeded has one message; identities deny with data.
 */

afterEach(closeApps);

// Written out so that the compiler checks them complete: a new code or reason that is
// missing here fails the typecheck, and one missing from the table fails below.
const ERROR_CODES: Record<AgentKeyErrorCode, true> = {
  invalid_argument: true,
  invalid_cost: true,
  invalid_budget: true,
  invalid_duration: true,
  invalid_period: true,
  invalid_scope: true,
  invalid_table_name: true,
  invalid_pool: true,
  scope_not_allowed: true,
  budget_exceeds_parent: true,
  expiry_exceeds_parent: true,
  parent_not_found: true,
  parent_inactive: true,
  depth_exceeded: true,
  key_outside_tree: true,
  key_not_found: true,
  key_inactive: true,
  narrows_children: true,
  not_migrated: true,
  storage_error: true,
  storage_timeout: true,
  total_out_of_range: true,
  webhook_not_found: true,
  invalid_rate_limit: true,
  unknown_model: true,
  invalid_usage: true,
  invalid_llm_request: true,
};
const LIBRARY_REASONS: Record<LibraryReason, true> = {
  invalid: true,
  invalid_key: true,
  expired: true,
  revoked: true,
  budget_exceeded: true,
  rate_limited: true,
  invalid_cost: true,
  idempotency_conflict: true,
  reservation_not_found: true,
  already_released: true,
  already_committed: true,
  refund_exceeds_spend: true,
};

describe('the refusal table', () => {
  it('happy: every AgentKeyErrorCode has a row, and errorToHttp answers each from it; a 5xx never shows the error message', () => {
    for (const code of Object.keys(ERROR_CODES) as AgentKeyErrorCode[]) {
      const row = REFUSALS[code];
      expect(row, code).toBeDefined();
      const e = errorToHttp(new AgentKeyError(code, 'hunter2 is not a valid value.'));
      expect({ status: e.status, code: e.body.error.code }, code).toEqual({ status: row.status, code: row.code });
      if (row.status >= 500) expect(e.body.error.message, code).toBe(row.message);
      else expect(e.body.error.message, code).toBe('hunter2 is not a valid value.');
    }
    expect(errorToHttp(TIMEOUT)).toEqual(refuse('storage_timeout'));
    expect(errorToHttp(new TypeError('secret'))).toEqual(refuse('internal_error'));
  });

  it('happy: every reason a library result carries has a row', () => {
    for (const reason of Object.keys(LIBRARY_REASONS)) expect(REFUSALS[reason as LibraryReason], reason).toBeDefined();
  });

  it('happy: every row has an error status, a snake_case code and a one-sentence message, with or without a detail', () => {
    for (const [reason, row] of Object.entries(REFUSALS) as [string, Refusal][]) {
      expect(row.status, reason).toBeGreaterThanOrEqual(400);
      expect(row.status, reason).toBeLessThan(600);
      expect(row.code, reason).toMatch(/^[a-z_]+$/);
      expectOneSentence(row.message);
      // A detail that is the whole sentence (an AgentKeyError's message) is one already.
      if (row.named) {
        const named = row.named('x');
        expectOneSentence(named === 'x' ? row.named('The field is wrong.') : named);
      }
    }
  });

  it('happy: one code, one status, except where the package set another (a signup refusing scopes is 400, as it was)', () => {
    const statuses = new Map<string, Set<number>>();
    for (const row of Object.values(REFUSALS) as Refusal[]) statuses.set(row.code, (statuses.get(row.code) ?? new Set()).add(row.status));
    const split = [...statuses].filter(([, s]) => s.size > 1).map(([code, s]) => [code, [...s].sort()]);
    expect(split).toEqual([['scope_not_allowed', [400, 403]]]);
  });

  it("happy: fixed rows cannot be worded differently; a named row's detail shows, and the package's strings stay", () => {
    expect(refuse('budget_exceeded', 'something else').body.error.message).toBe(REFUSALS.budget_exceeded.message);
    expect(refuse('storage_error', 'ECONNREFUSED 10.9.8.7').body.error.message).toBe(REFUSALS.storage_error.message);
    expect(refuse('insufficient_scope', 'proxy.chat').body.error.message).toBe('This key lacks the scope "proxy.chat".');
    expect(packageBody(refuse('invalid'))).toMatchObject({ error: 'invalid', code: 'invalid_key' });
    expect(packageBody(refuse('signup_scope_not_allowed', 'admin'))).toMatchObject({ error: 'Scopes not allowed on signup: admin', code: 'scope_not_allowed' });
    expect(packageBody(refuse('storage_timeout'))).toMatchObject({ error: 'auth_unavailable', code: 'storage_timeout' });
  });

  it("happy: the README's Refusals tables are the table, as rendered here", () => {
    const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
    const shown = /<!-- refusals:start -->\n([\s\S]*?)<!-- refusals:end -->/.exec(readme)?.[1];
    expect(shown, 'the README has the refusals markers').toBeDefined();
    expect(shown).toBe(renderRefusals());
  });
});

describe('identities deny with data, and the surfaces answer it from the table', () => {
  it('happy: a refused token is { denied, detail }, never an HTTP status; each denial has its row', async () => {
    const ak = new AgentKey({ pool: hangingPool() as never });
    const ids = subjectIdentities(ak, async (t) => ({ refused: t as 'expired' | 'invalid' | 'unavailable', detail: 'the reason' }), { budgetCents: 5 });
    const denials = { expired: 'token_expired', invalid: 'invalid_token', unavailable: 'issuer_unavailable' } as const;
    for (const [refused, denied] of Object.entries(denials)) {
      expect(await ids.authenticate(refused)).toEqual({ denied, detail: 'the reason' });
      expect(REFUSALS[denied].status).toBe(denied === 'issuer_unavailable' ? 503 : 401);
    }
  });
});

describe('options are checked the same way by every surface', () => {
  const ak = new AgentKey({ pool: hangingPool() as never });
  const subject = { budgetCents: 5 };
  const builders: [string, (options: unknown) => unknown][] = [
    ['agentKeyMiddleware', (o) => agentKeyMiddleware(ak, o as never)],
    ['createAgentKeyRoutes', (o) => createAgentKeyRoutes(ak, o as never)],
    ['agentKey (hono)', (o) => agentKey(ak, o as never)],
    ['agentKeyGuard', (o) => agentKeyGuard(ak, o as never)],
    ['agentKeyPreHandler', (o) => agentKeyPreHandler(ak, o as never)],
    ['jwtSubjects', (o) => jwtSubjects(ak, { key: new Uint8Array(32), subject, ...(o as object) })],
    ['clerkM2M', (o) => clerkM2M(ak, { secretKey: 'sk_test', subject, ...(o as object) })],
  ];

  it('security: a misspelt option throws invalid_argument naming it and the allowed ones, in the same words', () => {
    for (const [name, build] of builders) {
      let thrown: unknown;
      try {
        build({ scopes: 'admin' });
      } catch (err) {
        thrown = err;
      }
      expect(thrown, name).toBeInstanceOf(AgentKeyError);
      expect((thrown as AgentKeyError).code, name).toBe('invalid_argument');
      expect((thrown as AgentKeyError).message, name).toMatch(/ got unknown option "scopes"; allowed: [a-zA-Z, ]+\.$/);
    }
  });

  it('happy: no options (undefined or null) are no options for the adapters and the routes', () => {
    for (const [name, build] of builders.slice(0, 5)) {
      expect(() => build(undefined), name).not.toThrow();
      expect(() => build(null), name).not.toThrow();
    }
  });
});

forEachDatabase((getDb) => {
  describe('every surface answers the same refusal the same way', () => {
    for (const h of ALL_SURFACES) {
      it(`happy (${h.name}): budget_exceeded has one message, at the key check and at the hold; the hold's names the budget`, async () => {
        const ak = await getDb().agentKey();
        const { key, id } = await ak.create({ accountId: 'acct_r', budgetCents: 30 });
        const { send, state } = await h.build(ak, { reserveCents: 50 });
        const atHold = refusalView(await send({ key }));
        expect(atHold).toMatchObject({ status: 429, code: 'budget_exceeded', message: REFUSALS.budget_exceeded.message });
        expect(atHold.fields).toMatchObject({ limitedBy: { kind: 'key', keyId: id }, budgetRemainingCents: 30 });
        expect(await ak.trackUsage(key, { costCents: 30 })).toMatchObject({ success: true });
        const atCheck = refusalView(await send({ key }));
        expect(atCheck).toMatchObject({ status: 429, code: 'budget_exceeded', message: REFUSALS.budget_exceeded.message });
        expect(state.reached).toBe(0);
      });

      it(`happy (${h.name}): a key revoked between the key check and the hold gets the key check's own refusal`, async () => {
        const ak = await getDb().agentKey();
        const { key, id } = await ak.create({ accountId: 'acct_r', budgetCents: 30 });
        const { send, state } = await h.build(ak, { reserveCents: async () => (await ak.revoke(id), 10) });
        const atHold = refusalView(await send({ key }));
        const atCheck = refusalView(await send({ key }));
        expect(atHold).toEqual({ status: 401, code: 'key_revoked', message: REFUSALS.revoked.message, fields: atHold.fields });
        expect({ ...atCheck, fields: undefined }).toEqual({ ...atHold, fields: undefined });
        expect(state.reached).toBe(0);
      });
    }

    it('happy: a missing scope is 403 from every adapter, and 200 valid: false from /v1/verify, whose job is to report', async () => {
      const ak = await getDb().agentKey();
      const { key } = await ak.create({ accountId: 'acct_r', scopes: ['usage.read'] });
      for (const h of ALL_SURFACES) {
        const refused = refusalView(await (await h.build(ak, { scope: 'proxy.chat' })).send({ key }));
        expect(refused, h.name).toMatchObject({ status: 403, code: 'insufficient_scope', message: 'This key lacks the scope "proxy.chat".' });
      }
      const { app } = createApp(ak, { adminKey: 'akadmin_refusals_test_0123456789' });
      const res = await app.request('/v1/verify', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ key, scope: 'proxy.chat' }) });
      expect(res.status).toBe(200);
      expect(await res.json()).toEqual({ valid: false, reason: 'insufficient_scope', requiredScope: 'proxy.chat' });
    });

    it('happy: the service answers each of its refusals from the table: the same status, code and message as every other surface', async () => {
      const ak = await getDb().agentKey();
      const svc = service(ak, { bodyLimitBytes: 1024 });
      const { key, id } = await ak.create({ accountId: 'acct_r', budgetCents: 5 });
      const other = await ak.create({ accountId: 'acct_r' });
      const revoked = await ak.create({ accountId: 'acct_r' });
      await ak.revoke(revoked.id);
      const is = (reply: Reply, e: HttpError, what: string) => expect({ status: reply.status, body: reply.body }, what).toEqual({ status: e.status, body: e.body });

      // The library's results, at a charge, a hold, a commit and a release.
      const overBudget = await svc.post('/v1/charge', { key, costCents: 6 });
      expect(overBudget.body.error, 'charge over budget').toMatchObject({ ...refuse('budget_exceeded').body.error, limitedBy: { kind: 'key', keyId: id }, budgetRemainingCents: 5 });
      expect(overBudget.status).toBe(429);
      const heldOver = await svc.post('/v1/reservations', { key, costCents: 6 });
      expect({ status: heldOver.status, ...heldOver.body.error }, 'hold over budget').toMatchObject({ status: 429, ...refuse('budget_exceeded').body.error, limitedBy: { kind: 'key', keyId: id } });
      expect((await svc.post('/v1/charge', { key, costCents: 1, idempotencyKey: 'once' })).status).toBe(200);
      is(await svc.post('/v1/charge', { key, costCents: 2, idempotencyKey: 'once' }), refuse('idempotency_conflict'), 'charge replayed with another cost');
      is(await svc.post('/v1/charge', { key: revoked.key, costCents: 1 }), refuse('revoked'), 'charge by a revoked key');
      const released = (await svc.post('/v1/reservations', { key, costCents: 1 })).body.reservationId as string;
      expect((await svc.post(`/v1/reservations/${released}/release`, { key })).status).toBe(200);
      is(await svc.post(`/v1/reservations/${released}/commit`, { key, costCents: 1 }), refuse('already_released'), 'commit after release');
      const committed = (await svc.post('/v1/reservations', { key, costCents: 1 })).body.reservationId as string;
      expect((await svc.post(`/v1/reservations/${committed}/commit`, { key, costCents: 1 })).status).toBe(200);
      is(await svc.post(`/v1/reservations/${committed}/commit`, { key, costCents: 2 }), refuse('idempotency_conflict'), 'commit repeated with another cost');
      is(await svc.post(`/v1/reservations/${committed}/release`, { key }), refuse('already_committed'), 'release after commit');
      is(await svc.post(`/v1/reservations/${committed}/release`, {}), refuse('missing_hold_key'), 'release without a key');
      is(await svc.post(`/v1/reservations/${committed}/release`, { key: UNKNOWN_KEY }), refuse('invalid_key'), 'release with an unknown key');
      is(await svc.post(`/v1/reservations/${committed}/release`, { key: other.key }), refuse('reservation_not_found'), "release of another key's hold");

      // The service's own.
      is(await svc.send('GET', '/v1/keys'), refuse('missing_admin_key'), 'admin route without a bearer');
      is(await svc.send('GET', '/v1/keys', { bearer: key }), refuse('invalid_admin_key'), 'admin route with an agent key');
      is(await svc.admin('GET', '/v1/keys/999999'), refuse('key_not_found', 'No key has id 999999.'), 'unknown key id');
      is(await svc.admin('GET', '/v1/accounts/acct_none/budget'), refuse('account_budget_not_found'), 'account without a ceiling');
      is(await svc.send('GET', '/nope'), refuse('route_not_found', 'GET /nope'), 'unknown path');
      const wrongMethod = await svc.send('GET', '/v1/charge');
      is(wrongMethod, refuse('method_not_allowed', wrongMethod.headers.allow), 'wrong method');
      is(await svc.send('POST', '/v1/charge', { raw: '{"key":' }), refuse('invalid_json'), 'malformed JSON');
      is(await svc.send('POST', '/v1/charge', { raw: 'key=x', type: 'text/plain' }), refuse('unsupported_media_type'), 'not JSON');
      is(await svc.post('/v1/charge', { key, costCents: 1, metadata: { pad: 'x'.repeat(2000) } }), refuse('body_too_large', '1024 bytes'), 'too large');
      const invalid = await svc.post('/v1/charge', { key, costCents: 'lots' });
      is(invalid, refuse('invalid_request', invalid.body.error.message), 'a field of the wrong type');
    });
  });
});

forEachDatabase(
  (getDb) => {
    describe('a store that does not answer in time is 503 storage_timeout on every surface', () => {
      // A real fault: another connection holds the key's row, and the library's own timeoutMs runs out.
      for (const h of ALL_SURFACES) {
        it(`error (${h.name}): a hold on a key whose row is locked elsewhere -> 503 storage_timeout; nothing held, the handler never runs`, async () => {
          const db = getDb();
          const ak = await db.agentKey({ timeoutMs: 500 });
          const { key, id } = await ak.create({ accountId: 'acct_r', budgetCents: 100 });
          const { send, state } = await h.build(ak, { reserveCents: 10 });
          const lock = await holdRowLock(db.url!, tableNames(ak.tableName).table, 'id = $1', [id]);
          let reply;
          try {
            reply = await send({ key });
          } finally {
            await lock.release();
          }
          expect(refusalView(reply)).toMatchObject({ status: 503, code: 'storage_timeout', message: REFUSALS.storage_timeout.message });
          if (h.name === 'express') expect(reply.body.error).toBe('auth_unavailable');
          expect(state.reached).toBe(0);
          expect(await money(ak, id)).toMatchObject({ held: 0, spent: 0 });
          expect(await kinds(ak, id)).toEqual([]);
        });
      }

      it("error (self-serve routes): revoking a key whose row is locked elsewhere -> 503 storage_timeout, 'Failed to revoke key'; nothing revoked", async () => {
        const db = getDb();
        const ak = await db.agentKey({ timeoutMs: 500 });
        const caller = await ak.create({ accountId: 'acct_r' });
        const target = await ak.create({ accountId: 'acct_r' });
        const app = express().use(createAgentKeyRoutes(ak));
        const lock = await holdRowLock(db.url!, tableNames(ak.tableName).table, 'id = $1', [target.id]);
        let res;
        try {
          res = await request(app).delete(`/sdk-keys/${target.id}`).set('Authorization', `Bearer ${caller.key}`);
        } finally {
          await lock.release();
        }
        expectPackageError(res, 503, 'Failed to revoke key', 'storage_timeout');
        expect(await ak.validate(target.key)).toMatchObject({ valid: true });
      });
    });
  },
  ['postgres'],
);

/** The README's Refusals tables, rendered from the table: rows that answer alike share a line. */
function renderRefusals(): string {
  const titles = { library: 'Library results', errors: 'Thrown `AgentKeyError`s', surfaces: "The surfaces' own" } as const;
  const text = (s: string) => s.replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/\|/g, '\\|');
  const packageText = (r: Refusal) =>
    r.packageError === undefined ? '' : `\`'${typeof r.packageError === 'function' ? r.packageError('…') : r.packageError}'\``;
  let out = '';
  for (const [group, rows] of Object.entries(REFUSAL_GROUPS) as [keyof typeof titles, Record<string, Refusal>][]) {
    const lines: { reasons: string[]; row: Refusal }[] = [];
    for (const [reason, row] of Object.entries(rows)) {
      const same = lines.find((l) => l.row.status === row.status && l.row.code === row.code && l.row.message === row.message && !!l.row.named === !!row.named && packageText(l.row) === packageText(row));
      if (same) same.reasons.push(reason);
      else lines.push({ reasons: [reason], row });
    }
    out += `**${titles[group]}**\n\n| reason | status | code | message | Express \`error\` |\n|---|---|---|---|---|\n`;
    for (const { reasons, row } of lines) {
      const named = row.named ? ' ✱' : '';
      out += `| ${reasons.map((r) => `\`${r}\``).join(', ')}${named} | ${row.status} | \`${row.code}\` | ${text(row.message)} | ${packageText(row)} |\n`;
    }
    out += '\n';
  }
  return out;
}
