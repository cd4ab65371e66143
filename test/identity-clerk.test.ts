import express from 'express';
import { exportPKCS8 } from 'jose';
import request from 'supertest';
import { describe, expect, it } from 'vitest';
import type { AgentKey } from '../src/agentkey.js';
import { clerkM2M } from '../src/identity/clerk.js';
import type { SubjectDefaults } from '../src/identity/subjects.js';
import { forEachDatabase } from './helpers/databases.js';
import { CLERK_SESSION_CATEGORY, nowSeconds, tamperPayload } from './helpers/tokens.js';
import { attacker, clerk, CLERK_SECRET, clerkApi, clerkPem, clerkToken, ec, expectError, expectInvalidArgument, messageOf, mount, subjectTools, useIdentityWorld } from './helpers/identity.js';

/**
 * clerkM2M: Clerk machine-to-machine tokens as budgeted subjects, on PostgreSQL and
 * PGlite: JWT-format tokens verified offline with jwtKey, opaque mt_ tokens through a
 * local stand-in for Clerk's API (helpers/identity.ts).
 */

useIdentityWorld();

forEachDatabase((getDb) => {
  const { freshAk, rowsFor, totalRows } = subjectTools(getDb);

  describe('clerkM2M: JWT-format machine tokens, offline with jwtKey', () => {
    const CLERK_DEFAULTS: SubjectDefaults = { budgetCents: 1000, budgetPeriod: 'month', scopes: ['proxy.chat', 'usage.read'] };
    const clerkIds = (ak: AgentKey, over: Record<string, unknown> = {}) =>
      clerkM2M(ak, { jwtKey: clerkPem, subject: { ...CLERK_DEFAULTS, scopes: ['proxy.chat', 'usage.read'] }, ...over });

    it("happy: a valid M2M token's subject is the machine id; the result is validateBySubject's plus subject and claims", async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak);
      const token = await clerkToken({ sub: 'mch_2abc', scopes: 'proxy.chat', org_id: 'org_1' });
      const res = await ids.verify(token);
      expect(res).toMatchObject({ valid: true, subject: 'mch_2abc', accountId: 'mch_2abc', budgetCents: 1000, budgetPeriod: 'month' });
      const base = await ak.validateBySubject('mch_2abc');
      expect(base.valid).toBe(true);
      expect(res).toEqual({ ...base, scopes: ['proxy.chat'], subject: 'mch_2abc', claims: { sub: 'mch_2abc', scopes: 'proxy.chat', org_id: 'org_1' } });
      expect(await rowsFor(ak, 'mch_2abc')).toBe(1);
      // Without the category header, with typ JWT, and from a second token: the same machine row.
      expect(await ids.verify(await clerkToken({ sub: 'mch_2abc' }, { header: { cat: undefined, typ: 'JWT' } }))).toMatchObject({ valid: true, subject: 'mch_2abc' });
      expect(await rowsFor(ak, 'mch_2abc')).toBe(1);
    });

    it('happy: first sight from the defaults, once under 20 concurrent tokens, with accountId from the claims', async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak, { subject: { budgetCents: 250, scopes: ['proxy.chat'], accountId: (c: Record<string, unknown>) => String(c.org_id ?? 'no_org') } });
      const tokens = await Promise.all(Array.from({ length: 20 }, () => clerkToken({ sub: 'mch_burst', org_id: 'org_clerk' })));
      const results = await Promise.all(tokens.map((t) => ids.verify(t)));
      for (const r of results) expect(r).toMatchObject({ valid: true, subject: 'mch_burst', accountId: 'org_clerk', budgetCents: 250 });
      expect(await rowsFor(ak, 'mch_burst')).toBe(1);
      expect(await totalRows(ak)).toBe(1);
    });

    it('unhappy: forged (another key), tampered, HS256 and ES256 tokens are invalid and make no row', async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak);
      const forged = await clerkToken({ sub: 'mch_forged' }, { key: attacker.privateKey });
      expect(await ids.verify(forged)).toMatchObject({ valid: false, reason: 'invalid' });
      const now = nowSeconds();
      const tampered = tamperPayload(await clerkToken({ sub: 'mch_genuine' }), { sub: 'mch_victim', iat: now, exp: now + 600, scopes: 'proxy.chat' });
      expect(await ids.verify(tampered)).toMatchObject({ valid: false, reason: 'invalid' });
      const hs = await clerkToken({ sub: 'mch_hs' }, { key: new TextEncoder().encode(clerkPem), header: { alg: 'HS256' } });
      expect(await ids.verify(hs)).toMatchObject({ valid: false, reason: 'invalid' });
      const es = await clerkToken({ sub: 'mch_es' }, { key: ec.privateKey, header: { alg: 'ES256' } });
      expect(await ids.verify(es)).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await totalRows(ak)).toBe(0);
    });

    it('unhappy: an expired token is "expired"; nbf in the future and a missing exp are invalid', async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak);
      const now = nowSeconds();
      expect(await ids.verify(await clerkToken({ sub: 'mch_old', iat: now - 7200, exp: now - 3600 }))).toEqual({
        valid: false,
        reason: 'expired',
        detail: 'the token has expired',
      });
      expect(await ids.verify(await clerkToken({ sub: 'mch_early', nbf: now + 600 }))).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await ids.verify(await clerkToken({ sub: 'mch_noexp', exp: undefined }))).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await ids.verify(await clerkToken({ sub: 'mch_future', iat: now + 3600 }))).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await totalRows(ak)).toBe(0);
    });

    it('unhappy: session-style tokens (sub user_...), OAuth access tokens and a wrong category are not machine tokens', async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak);
      const session = await clerkToken({ sub: 'user_2abc', sid: 'sess_1' }, { header: { cat: CLERK_SESSION_CATEGORY } });
      expect(await ids.verify(session)).toMatchObject({ valid: false, reason: 'invalid' });
      const sessionNoCat = await clerkToken({ sub: 'user_2abc' }, { header: { cat: undefined } });
      expect(await ids.verify(sessionNoCat)).toMatchObject({ valid: false, reason: 'invalid' });
      // A machine subject under the session category: wrong token category.
      const wrongCat = await clerkToken({ sub: 'mch_wrongcat' }, { header: { cat: CLERK_SESSION_CATEGORY } });
      const wc = await ids.verify(wrongCat);
      expect(wc).toMatchObject({ valid: false, reason: 'invalid' });
      expect(!wc.valid && wc.detail).toMatch(/category/i);
      expect(await ids.verify(await clerkToken({ sub: 'mch_wrongcat' }, { header: { cat: 'cl_other' } }))).toMatchObject({ valid: false, reason: 'invalid' });
      // A correctly signed OAuth access token (typ at+jwt) verifies with Clerk but is not M2M.
      const oauth = await clerkToken({ sub: 'user_2abc', client_id: 'oauth_app', scope: 'proxy.chat' }, { header: { typ: 'at+jwt', cat: undefined } });
      const o = await ids.verify(oauth);
      expect(o).toMatchObject({ valid: false, reason: 'invalid' });
      expect(!o.valid && o.detail).toMatch(/machine-to-machine/);
      expect(await totalRows(ak)).toBe(0);
    });

    it('unhappy: an opaque mt_ token without secretKey is invalid with a clear reason, and no request is made', async () => {
      const ak = await freshAk();
      const before = clerkApi.hits();
      const ids = clerkIds(ak, { apiUrl: clerkApi.url });
      expect(await ids.verify('mt_valid')).toEqual({ valid: false, reason: 'invalid', detail: 'opaque mt_ tokens need the secretKey option' });
      const { call } = mount('express', ids, {});
      const res = await call('mt_valid');
      expectError(res, 401, 'invalid_token');
      expect(messageOf(res)).toMatch(/secretKey/);
      expect(clerkApi.hits()).toBe(before);
      expect(await totalRows(ak)).toBe(0);
    });

    it("happy: opaque mt_ tokens with secretKey are checked through Clerk's API (a local stand-in): valid, revoked, expired, unknown", async () => {
      const ak = await freshAk();
      const ids = clerkM2M(ak, { secretKey: CLERK_SECRET, apiUrl: clerkApi.url, subject: { budgetCents: 100, scopes: ['proxy.chat', 'usage.read'] } });
      expect(await ids.verify('mt_valid')).toMatchObject({ valid: true, subject: 'mch_api', scopes: ['proxy.chat'], claims: { org_id: 'org_api', sub: 'mch_api' } });
      expect(await ids.verify('mt_revoked')).toEqual({ valid: false, reason: 'invalid', detail: 'the token has been revoked' });
      expect(await ids.verify('mt_expired')).toMatchObject({ valid: false, reason: 'expired' });
      expect(await ids.verify('mt_unknown')).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await ids.verify('mt_user')).toMatchObject({ valid: false, reason: 'invalid', detail: 'it is not a machine-to-machine token' });
      const wrongSecret = clerkM2M(ak, { secretKey: 'sk_test_wrong', apiUrl: clerkApi.url, subject: { budgetCents: 100 } });
      expect(await wrongSecret.verify('mt_valid')).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await totalRows(ak)).toBe(1);
      // Both kinds at once: a JWT offline, an mt_ token through the API.
      const both = clerkM2M(ak, { jwtKey: clerkPem, secretKey: CLERK_SECRET, apiUrl: clerkApi.url, subject: { budgetCents: 100 } });
      expect(await both.verify(await clerkToken({ sub: 'mch_jwt' }))).toMatchObject({ valid: true, subject: 'mch_jwt' });
      expect(await both.verify('mt_valid')).toMatchObject({ valid: true, subject: 'mch_api' });
    });

    it("happy: token scopes narrow and never widen the machine's; tokenScopes 'ignore' keeps the row's", async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak);
      expect(await ids.verify(await clerkToken({ sub: 'mch_scopes', scopes: 'usage.read admin * billing.write' }))).toMatchObject({
        valid: true,
        scopes: ['usage.read'],
      });
      const ignore = clerkIds(ak, { tokenScopes: 'ignore' });
      expect(await ignore.verify(await clerkToken({ sub: 'mch_scopes', scopes: 'admin' }))).toMatchObject({ valid: true, scopes: ['proxy.chat', 'usage.read'] });
    });

    // A token that is neither JWT-shaped nor mt_/oat_/ak_ makes @clerk/backend throw
    // "Unknown machine token type": it must be an invalid token, never a 500.
    it('error: a garbage bearer is invalid for verify() (not a throw of "Unknown machine token type")', async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak);
      expect(await ids.verify('garbage')).toMatchObject({ valid: false, reason: 'invalid' });
    });
    it('error: a garbage bearer is 401 invalid_token in the middleware (never a 500)', async () => {
      const ak = await freshAk();
      const { call } = mount('express', clerkIds(ak), {});
      expectError(await call('not-a-clerk-token'), 401, 'invalid_token');
    });

    // @clerk/backend reports scopes: [] (or the audience) for a JWT with no scopes claim; that must not narrow.
    it("happy: an M2M token without a scopes claim leaves the machine's scopes as they are (never narrowed to [])", async () => {
      const ak = await freshAk();
      const ids = clerkIds(ak);
      expect(await ids.verify(await clerkToken({ sub: 'mch_noscopes', scopes: undefined }))).toMatchObject({
        valid: true,
        scopes: ['proxy.chat', 'usage.read'],
      });
    });

    it('unhappy: bad options throw at construction', async () => {
      const ak = await freshAk();
      const subject = { budgetCents: 100 };
      expectInvalidArgument(() => clerkM2M(ak, { subject }), /jwtKey .* or secretKey/);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: '', subject }), /jwtKey .* or secretKey/);
      const privatePem = await exportPKCS8(clerk.privateKey);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: privatePem, subject }), /PEM public key/);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: 'not-a-pem', subject }), /PEM public key/);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: 42 as never, subject }), /PEM public key/);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: clerkPem, subject, publishableKey: 'pk_test' } as never), /unknown option "publishableKey"/);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: clerkPem } as never), /subject defaults/);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: clerkPem, subject: 5 } as never), /subject defaults/);
      expectInvalidArgument(() => clerkM2M(ak, null as never), /needs options/);
      expectInvalidArgument(() => clerkM2M(ak, { jwtKey: clerkPem, subject, tokenScopes: 'all' as never }), /tokenScopes/);
      expectInvalidArgument(() => clerkM2M({ validate: () => null } as never, { jwtKey: clerkPem, subject }), /AgentKey instance/);
      expect(() => clerkM2M(ak, { jwtKey: clerkPem, subject })).not.toThrow();
      expect(() => clerkM2M(ak, { secretKey: CLERK_SECRET, subject })).not.toThrow();
    });
  });
});
