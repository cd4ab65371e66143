import express from 'express';
import { Hono } from 'hono';
import { describe, expect, it } from 'vitest';
import type { AgentKey } from '../src/agentkey.js';
import { clerkM2M } from '../src/identity/clerk.js';
import { jwtSubjects } from '../src/identity/jwt.js';
import { forEachDatabase } from './helpers/databases.js';
import { nowSeconds } from './helpers/tokens.js';
import { ADAPTERS, attacker, clerk, clerkPem, clerkToken, expectError, jwtIds, jwtToken, messageOf, mount, scopesOf, subjectTools, useIdentityWorld } from './helpers/identity.js';

/**
 * Identities behind the adapters, on PostgreSQL and PGlite: one budget shared by every
 * token of the same subject, and the Express, Hono and fetch guards of jwtSubjects and
 * clerkM2M (401 for a missing, bad or expired token, 403 for a missing scope, 429 for a
 * spent budget), each answered from the refusal table.
 */

useIdentityWorld();

forEachDatabase((getDb) => {
  const { freshAk, rowsFor, totalRows, settledFigures } = subjectTools(getDb);

  describe('one budget across many tokens of the same machine', () => {
    it('happy: 30 distinct tokens charging concurrently through trackUsageBySubject never pass the budget; audit is ok', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak, { subject: { budgetCents: 100, scopes: ['proxy.chat'] } });
      const tokens = await Promise.all(Array.from({ length: 30 }, () => jwtToken({ sub: 'agent_budget', scope: 'proxy.chat' })));
      expect(new Set(tokens).size).toBe(30);
      const outcomes = await Promise.all(
        tokens.map(async (token) => {
          const v = await ids.verify(token);
          if (!v.valid) throw new Error(`token refused: ${v.reason}`);
          return ak.trackUsageBySubject(v.subject, { costCents: 7 });
        }),
      );
      const ok = outcomes.filter((o) => o.success);
      const refused = outcomes.filter((o) => !o.success);
      expect(ok).toHaveLength(14);
      for (const r of refused) expect(r).toMatchObject({ success: false, reason: 'budget_exceeded' });
      const after = await ids.verify(await jwtToken({ sub: 'agent_budget' }));
      expect(after).toMatchObject({ valid: true, budgetUsedCents: 98, budgetRemainingCents: 2 });
      expect(await ak.trackUsageBySubject('agent_budget', { costCents: 3 })).toMatchObject({ success: false, reason: 'budget_exceeded' });
      expect(await ak.trackUsageBySubject('agent_budget', { costCents: 2 })).toMatchObject({ success: true });
      // Nothing left to spend: validateBySubject refuses the subject; its row holds the whole budget as spent.
      expect(await ak.validateBySubject('agent_budget')).toEqual({ valid: false, reason: 'budget_exceeded' });
      expect(await ak.getKey(after.valid ? after.keyId : -1)).toMatchObject({ budgetCents: 100, spentCents: 100, heldCents: 0 });
      const audit = await ak.audit();
      expect(audit).toMatchObject({ ok: true, mismatches: [], accountMismatches: [], overageMismatches: [], overageCents: 0 });
      expect(await rowsFor(ak, 'agent_budget')).toBe(1);
      // And a fresh token of the spent machine is refused with 429 by the middleware.
      const { call } = mount('hono', ids, { scope: 'proxy.chat' });
      expectError(await call(await jwtToken({ sub: 'agent_budget', scope: 'proxy.chat' })), 429, 'budget_exceeded');
    });

    it('happy: 25 concurrent requests with distinct tokens and reserveCents hold and commit exactly the budget (hono)', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak, { subject: { budgetCents: 100, scopes: ['proxy.chat'] } });
      const { call, state } = mount('hono', ids, { scope: 'proxy.chat', reserveCents: 10 });
      const tokens = await Promise.all(Array.from({ length: 25 }, () => jwtToken({ sub: 'agent_holds' })));
      const replies = await Promise.all(tokens.map((t) => call(t)));
      const ok = replies.filter((r) => r.status === 200);
      expect(ok).toHaveLength(10);
      for (const r of replies.filter((x) => x.status !== 200)) expectError(r, 429, 'budget_exceeded');
      expect(state.reached).toBe(10);
      for (const r of ok) expect(r.body.reservation).toMatchObject({ heldCents: 10, reservationId: expect.any(String) });
      const keyId = ok[0]?.body.agentKey.keyId as number;
      expect(await settledFigures(ak, keyId)).toEqual({ spent: 100, held: 0 });
      expect(await ak.audit()).toMatchObject({ ok: true });
    });

    it('happy: concurrent express requests with reserveCents and a smaller reported cost never pass the budget', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak, { subject: { budgetCents: 100, scopes: ['proxy.chat'] } });
      const { call } = mount('express', ids, { scope: 'proxy.chat', reserveCents: 10 }, { costCents: 4 });
      const tokens = await Promise.all(Array.from({ length: 40 }, () => jwtToken({ sub: 'agent_express_holds' })));
      const replies = await Promise.all(tokens.map((t) => call(t)));
      const ok = replies.filter((r) => r.status === 200);
      for (const r of replies.filter((x) => x.status !== 200)) expectError(r, 429, 'budget_exceeded');
      expect(ok.length).toBeGreaterThanOrEqual(10);
      const keyId = ok[0]?.body.agentKey.keyId as number;
      const figures = await settledFigures(ak, keyId);
      expect(figures).toEqual({ spent: 4 * ok.length, held: 0 });
      expect(figures.spent).toBeLessThanOrEqual(100);
      expect(await ak.audit()).toMatchObject({ ok: true });
    });
  });

  describe('middleware: express, hono and fetch guards of jwtSubjects and clerkM2M', () => {
    const MW_DEFAULTS = { budgetCents: 100, budgetPeriod: 'month' as const, scopes: ['proxy.chat', 'usage.read'] };
    const identities = {
      jwt: {
        make: (ak: AgentKey) => jwtIds(ak, { subject: { ...MW_DEFAULTS, scopes: [...MW_DEFAULTS.scopes] } }),
        mint: (o: { sub: string; scopes?: string; expired?: boolean; forged?: boolean }) => {
          const now = nowSeconds();
          return jwtToken(
            { sub: o.sub, scope: o.scopes, ...(o.expired ? { iat: now - 7200, exp: now - 3600 } : {}) },
            o.forged ? { key: attacker.privateKey } : {},
          );
        },
      },
      clerk: {
        make: (ak: AgentKey) => clerkM2M(ak, { jwtKey: clerkPem, subject: { ...MW_DEFAULTS, scopes: [...MW_DEFAULTS.scopes] } }),
        mint: (o: { sub: string; scopes?: string; expired?: boolean; forged?: boolean }) => {
          const now = nowSeconds();
          return clerkToken(
            { sub: o.sub, scopes: o.scopes, ...(o.expired ? { iat: now - 7200, exp: now - 3600 } : {}) },
            o.forged ? { key: attacker.privateKey } : {},
          );
        },
      },
    };

    for (const kind of ['jwt', 'clerk'] as const) {
      for (const adapter of ADAPTERS) {
        const id = identities[kind];
        const sub = `mch_${kind}_${adapter}`;

        it(`happy (${kind}, ${adapter}): a valid token passes; the result carries the subject and the narrowed scopes`, async () => {
          const ak = await freshAk();
          const { call, state } = mount(adapter, id.make(ak), { scope: 'proxy.chat' });
          const res = await call(await id.mint({ sub, scopes: 'proxy.chat' }));
          expect(res.status).toBe(200);
          expect(state.reached).toBe(1);
          expect(res.body.agentKey).toMatchObject({
            valid: true,
            subject: sub,
            accountId: sub,
            scopes: ['proxy.chat'],
            budgetCents: 100,
            budgetUsedCents: 0,
            budgetRemainingCents: 100,
            budgetPeriod: 'month',
            keyId: expect.any(Number),
          });
          if (adapter === 'express') expect(res.body.locals).toEqual(res.body.agentKey);
          // X-API-Key carries a token too.
          const viaHeader = await call(null, { 'x-api-key': await id.mint({ sub, scopes: 'proxy.chat' }) });
          expect(viaHeader.status).toBe(200);
          expect(await rowsFor(ak, sub)).toBe(1);
        });

        it(`unhappy (${kind}, ${adapter}): 401 missing_key / invalid_token / token_expired, 403 insufficient_scope; the handler never runs`, async () => {
          const ak = await freshAk();
          const { call, state } = mount(adapter, id.make(ak), { scope: 'proxy.chat' });
          expectError(await call(null), 401, 'missing_key');
          expectError(await call(null, { authorization: 'Basic dXNlcjpwYXNz' }), 401, 'missing_key');
          const forged = await call(await id.mint({ sub, scopes: 'proxy.chat', forged: true }));
          expectError(forged, 401, 'invalid_token');
          expect(messageOf(forged)).toMatch(/^The bearer token is not valid: /);
          expectError(await call('a.b.c'), 401, 'invalid_token');
          expectError(await call(await id.mint({ sub, scopes: 'proxy.chat', expired: true })), 401, 'token_expired');
          expect(await totalRows(ak)).toBe(0);
          const narrowed = await call(await id.mint({ sub, scopes: 'usage.read' }));
          expectError(narrowed, 403, 'insufficient_scope');
          expect(scopesOf(narrowed)).toEqual({ required: 'proxy.chat', available: ['usage.read'] });
          expectError(await call(await id.mint({ sub, scopes: 'admin *' })), 403, 'insufficient_scope');
          expect(state.reached).toBe(0);
        });

        it(`unhappy (${kind}, ${adapter}): 429 once the subject's budget is spent, 401 key_revoked once it is revoked`, async () => {
          const ak = await freshAk();
          const { call, state } = mount(adapter, id.make(ak), { scope: 'proxy.chat' });
          const first = await call(await id.mint({ sub, scopes: 'proxy.chat' }));
          expect(first.status).toBe(200);
          expect(await ak.trackUsageBySubject(sub, { costCents: 100 })).toMatchObject({ success: true });
          expectError(await call(await id.mint({ sub, scopes: 'proxy.chat' })), 429, 'budget_exceeded');
          expect(await ak.revoke(first.body.agentKey.keyId)).toBe(true);
          expectError(await call(await id.mint({ sub, scopes: 'proxy.chat' })), 401, 'key_revoked');
          expect(state.reached).toBe(1);
        });

        it(`happy (${kind}, ${adapter}): reserveCents holds through the subject, commits the reported cost, releases on failure, 429 when it cannot fit`, async () => {
          const ak = await freshAk();
          const ids = id.make(ak);
          const { call } = mount(adapter, ids, { scope: 'proxy.chat', reserveCents: 30 }, { costCents: 12 });
          const res = await call(await id.mint({ sub, scopes: 'proxy.chat' }));
          expect(res.status).toBe(200);
          expect(res.body.agentKey).toMatchObject({ subject: sub });
          expect(res.body.reservation).toMatchObject({ heldCents: 30, reservationId: expect.any(String) });
          const keyId = res.body.agentKey.keyId as number;
          expect(await settledFigures(ak, keyId)).toEqual({ spent: 12, held: 0 });

          // A failing handler: the hold is given back.
          const failing = mount(adapter, ids, { scope: 'proxy.chat', reserveCents: 30 }, { status: 502 });
          expect((await failing.call(await id.mint({ sub, scopes: 'proxy.chat' }))).status).toBe(502);
          expect(await settledFigures(ak, keyId)).toEqual({ spent: 12, held: 0 });

          // No reported cost on a success: the whole hold is committed.
          const whole = mount(adapter, ids, { scope: 'proxy.chat', reserveCents: 30 });
          expect((await whole.call(await id.mint({ sub, scopes: 'proxy.chat' }))).status).toBe(200);
          expect(await settledFigures(ak, keyId)).toEqual({ spent: 42, held: 0 });

          // 58 left: spend 40 more, then a 30-cent hold does not fit.
          expect(await ak.trackUsageBySubject(sub, { costCents: 40 })).toMatchObject({ success: true });
          const tooBig = await call(await id.mint({ sub, scopes: 'proxy.chat' }));
          expectError(tooBig, 429, 'budget_exceeded');
          expect(await settledFigures(ak, keyId)).toEqual({ spent: 82, held: 0 });
          expect(await ak.audit()).toMatchObject({ ok: true });
        });
      }
    }
  });
});
