import express from 'express';
import { UnsecuredJWT, exportSPKI } from 'jose';
import { describe, expect, it } from 'vitest';
import type { AgentKey } from '../src/agentkey.js';
import { jwtSubjects } from '../src/identity/jwt.js';
import { forEachDatabase } from './helpers/databases.js';
import { localServer, nowSeconds, tamperPayload } from './helpers/tokens.js';
import { attacker, AUDIENCE, ec, expectError, expectInvalidArgument, ISSUER, issuer, jwks, jwksServer, jwtIds, jwtToken, mount, rotated, scopesOf, subjectTools, useIdentityWorld } from './helpers/identity.js';

/**
 * jwtSubjects: any OIDC/JWT issuer's identities as budgeted subjects, on PostgreSQL and
 * PGlite. verify() and a subject's row made on first sight, options refused at
 * construction, and token scopes that narrow (never widen) the subject's. Every token is
 * minted here with locally generated keys; the JWKS URL is a local server (helpers/identity.ts).
 */

useIdentityWorld();

forEachDatabase((getDb) => {
  const { freshAk, rowsFor, totalRows } = subjectTools(getDb);

  describe('jwtSubjects: verify() and first sight', () => {
    it('happy: a valid token is valid, names its subject and claims, and its row is made from the defaults', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak);
      const token = await jwtToken({ sub: 'agent_happy', scope: 'proxy.chat usage.read', org_id: 'org_9' });
      const res = await ids.verify(token);
      expect(res.valid).toBe(true);
      if (!res.valid) return;
      expect(res.subject).toBe('agent_happy');
      expect(res.claims).toMatchObject({ iss: ISSUER, aud: AUDIENCE, sub: 'agent_happy', scope: 'proxy.chat usage.read', org_id: 'org_9' });
      // Exactly validateBySubject's result, with the token's (narrowing) scopes, the subject and the claims.
      const base = await ak.validateBySubject('agent_happy');
      expect(res).toEqual({ ...base, scopes: ['proxy.chat', 'usage.read'], subject: 'agent_happy', claims: res.claims });
      expect(res).toMatchObject({ accountId: 'acct_jwt', budgetCents: 500, budgetUsedCents: 0, budgetRemainingCents: 500, budgetPeriod: 'day' });
      expect(res.budgetResetAt).not.toBeNull();
      const row = await ak.getKey(res.keyId);
      expect(row).toMatchObject({
        accountId: 'acct_jwt',
        externalSubject: 'agent_happy',
        scopes: ['proxy.chat', 'usage.read', 'tools.*'],
        budgetCents: 500,
        budgetPeriod: 'day',
        status: 'active',
        spentCents: 0,
      });
      expect(await rowsFor(ak, 'agent_happy')).toBe(1);
    });

    it('happy: accountId may be a function of the verified claims; without one the account is the subject', async () => {
      const ak = await freshAk();
      const seenClaims: Record<string, unknown>[] = [];
      const ids = jwtIds(ak, {
        subject: {
          budgetCents: 100,
          scopes: ['proxy.chat'],
          accountId: (claims) => {
            seenClaims.push(claims);
            return `acct_${String(claims.org_id)}`;
          },
        },
      });
      const a = await ids.verify(await jwtToken({ sub: 'agent_a', org_id: 'org_7' }));
      const b = await ids.verify(await jwtToken({ sub: 'agent_b', org_id: 'org_7' }));
      expect(a).toMatchObject({ valid: true, subject: 'agent_a', accountId: 'acct_org_7' });
      expect(b).toMatchObject({ valid: true, subject: 'agent_b', accountId: 'acct_org_7' });
      expect(seenClaims[0]).toMatchObject({ sub: 'agent_a', org_id: 'org_7', iss: ISSUER });
      expect(await ak.listKeys({ accountId: 'acct_org_7' })).toHaveLength(2);

      const plain = jwtIds(ak, { subject: { budgetCents: 100 } });
      expect(await plain.verify(await jwtToken({ sub: 'agent_c' }))).toMatchObject({ valid: true, accountId: 'agent_c', scopes: null, budgetPeriod: null });
    });

    it('happy: 20 concurrent first requests for one subject make exactly one row; later defaults never rewrite it', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak);
      const tokens = await Promise.all(Array.from({ length: 20 }, () => jwtToken({ sub: 'agent_burst' })));
      const results = await Promise.all(tokens.map((t) => ids.verify(t)));
      expect(results.every((r) => r.valid)).toBe(true);
      const keyIds = new Set(results.map((r) => (r.valid ? r.keyId : null)));
      expect(keyIds.size).toBe(1);
      expect(await rowsFor(ak, 'agent_burst')).toBe(1);
      expect(await totalRows(ak)).toBe(1);

      // Spend, then a second verifier (another process, other defaults) sees the same row: first sight only.
      expect(await ak.trackUsageBySubject('agent_burst', { costCents: 30 })).toMatchObject({ success: true });
      const other = jwtIds(ak, { subject: { budgetCents: 9_999, budgetPeriod: 'month', scopes: ['admin'], accountId: 'acct_other' } });
      const again = await Promise.all(Array.from({ length: 20 }, async () => other.verify(await jwtToken({ sub: 'agent_burst' }))));
      for (const r of again) expect(r).toMatchObject({ valid: true, accountId: 'acct_jwt', budgetCents: 500, budgetUsedCents: 30, budgetPeriod: 'day' });
      expect(await rowsFor(ak, 'agent_burst')).toBe(1);
      expect((await ak.getKey([...keyIds][0] as number))?.scopes).toEqual(['proxy.chat', 'usage.read', 'tools.*']);
    });

    it('happy: 20 concurrent first requests through two verifiers and the middleware still make one row', async () => {
      const ak = await freshAk();
      const one = jwtIds(ak);
      const two = jwtIds(ak);
      const { call } = mount('hono', two, { scope: 'proxy.chat' });
      const outcomes = await Promise.all(
        Array.from({ length: 20 }, async (_, i) => {
          const token = await jwtToken({ sub: 'agent_mixed' });
          if (i % 2 === 0) return (await one.verify(token)).valid;
          return (await call(token)).status === 200;
        }),
      );
      expect(outcomes.every(Boolean)).toBe(true);
      expect(await rowsFor(ak, 'agent_mixed')).toBe(1);
    });

    it('unhappy: a forged signature (another key, same kid) or a tampered payload is invalid and makes no row', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak);
      const forged = await jwtToken({ sub: 'agent_forged' }, { key: attacker.privateKey });
      expect(await ids.verify(forged)).toEqual({ valid: false, reason: 'invalid', detail: 'its signature does not match' });
      const genuine = await jwtToken({ sub: 'agent_genuine' });
      const now = nowSeconds();
      const tampered = tamperPayload(genuine, { iss: ISSUER, aud: AUDIENCE, sub: 'agent_victim', iat: now, exp: now + 600 });
      expect(await ids.verify(tampered)).toEqual({ valid: false, reason: 'invalid', detail: 'its signature does not match' });
      // A signature of another token, moved onto this one.
      const [h, p] = (await jwtToken({ sub: 'agent_x' })).split('.');
      const otherSig = (await jwtToken({ sub: 'agent_y' })).split('.')[2];
      expect(await ids.verify(`${h}.${p}.${otherSig}`)).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await totalRows(ak)).toBe(0);
    });

    it('unhappy: an expired token is "expired"; clockTolerance accepts a token just past its exp, and 0 does not', async () => {
      const ak = await freshAk();
      const now = nowSeconds();
      const longGone = await jwtToken({ sub: 'agent_old', iat: now - 7200, exp: now - 3600 });
      expect(await jwtIds(ak).verify(longGone)).toEqual({ valid: false, reason: 'expired', detail: 'the token has expired' });
      const justGone = await jwtToken({ sub: 'agent_recent', iat: now - 600, exp: now - 60 });
      expect(await jwtIds(ak).verify(justGone)).toMatchObject({ valid: false, reason: 'expired' });
      expect(await jwtIds(ak, { clockTolerance: '2m' }).verify(justGone)).toMatchObject({ valid: true, subject: 'agent_recent' });
      expect(await jwtIds(ak, { clockTolerance: 300 }).verify(justGone)).toMatchObject({ valid: true, subject: 'agent_recent' });
      expect(await jwtIds(ak, { clockTolerance: 0 }).verify(justGone)).toMatchObject({ valid: false, reason: 'expired' });
      expect(await rowsFor(ak, 'agent_old')).toBe(0);
    });

    it('unhappy: a token not yet valid (nbf in the future) is invalid, unless within clockTolerance', async () => {
      const ak = await freshAk();
      const now = nowSeconds();
      const early = await jwtToken({ sub: 'agent_early', nbf: now + 600 });
      const res = await jwtIds(ak).verify(early);
      expect(res).toMatchObject({ valid: false, reason: 'invalid' });
      expect(!res.valid && res.detail).toMatch(/"nbf"/);
      expect(await rowsFor(ak, 'agent_early')).toBe(0);
      expect(await jwtIds(ak, { clockTolerance: '15m' }).verify(early)).toMatchObject({ valid: true, subject: 'agent_early' });
    });

    it('unhappy: a wrong or missing issuer is invalid; a list of issuers accepts any of them', async () => {
      const ak = await freshAk();
      const wrong = await jwtIds(ak).verify(await jwtToken({ sub: 'agent_iss', iss: 'https://evil.test/' }));
      expect(wrong).toMatchObject({ valid: false, reason: 'invalid' });
      expect(!wrong.valid && wrong.detail).toMatch(/"iss" claim is not accepted/);
      expect(await jwtIds(ak).verify(await jwtToken({ sub: 'agent_iss', iss: undefined }))).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await rowsFor(ak, 'agent_iss')).toBe(0);
      const both = jwtIds(ak, { issuer: ['https://other.test/', ISSUER] });
      expect(await both.verify(await jwtToken({ sub: 'agent_iss' }))).toMatchObject({ valid: true });
    });

    it('unhappy: a wrong or missing audience is invalid; an aud array that includes ours is valid', async () => {
      const ak = await freshAk();
      const wrong = await jwtIds(ak).verify(await jwtToken({ sub: 'agent_aud', aud: 'another-api' }));
      expect(wrong).toMatchObject({ valid: false, reason: 'invalid' });
      expect(!wrong.valid && wrong.detail).toMatch(/"aud" claim is not accepted/);
      expect(await jwtIds(ak).verify(await jwtToken({ sub: 'agent_aud', aud: undefined }))).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await rowsFor(ak, 'agent_aud')).toBe(0);
      expect(await jwtIds(ak).verify(await jwtToken({ sub: 'agent_aud', aud: ['another-api', AUDIENCE] }))).toMatchObject({ valid: true });
    });

    it("unhappy: alg 'none' and algorithms outside `algorithms` are refused", async () => {
      const ak = await freshAk();
      const now = nowSeconds();
      const unsecured = new UnsecuredJWT({ iss: ISSUER, aud: AUDIENCE, sub: 'agent_none', iat: now, exp: now + 600 }).encode();
      expect(await jwtIds(ak).verify(unsecured)).toEqual({ valid: false, reason: 'invalid', detail: 'its algorithm is not allowed' });
      // A hand-made 'none' token with a signature part, and one with alg "NONE".
      const [, payload] = unsecured.split('.');
      const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
      expect(await jwtIds(ak).verify(`${b64({ alg: 'none', typ: 'JWT' })}.${payload}.c2ln`)).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await jwtIds(ak).verify(`${b64({ alg: 'NONE' })}.${payload}.`)).toMatchObject({ valid: false, reason: 'invalid' });

      // ES256 is in the default list (and k2 is in the set) but not in ['RS256'].
      const es = await jwtToken({ sub: 'agent_es' }, { key: ec.privateKey, header: { alg: 'ES256', kid: 'k2' } });
      expect(await jwtIds(ak).verify(es)).toMatchObject({ valid: true, subject: 'agent_es' });
      expect(await jwtIds(ak, { algorithms: ['RS256'] }).verify(es)).toEqual({ valid: false, reason: 'invalid', detail: 'its algorithm is not allowed' });
      expect(await rowsFor(ak, 'agent_none')).toBe(0);
    });

    it('unhappy: an HS256 token is refused against an RSA key set, even when HS256 is allowed (no key confusion)', async () => {
      const ak = await freshAk();
      const secret = new TextEncoder().encode('a-shared-secret-of-at-least-32-bytes!!');
      const hs = await jwtToken({ sub: 'agent_hs' }, { key: secret, header: { alg: 'HS256', kid: 'k1' } });
      expect(await jwtIds(ak).verify(hs)).toEqual({ valid: false, reason: 'invalid', detail: 'its algorithm is not allowed' });
      const loose = jwtIds(ak, { algorithms: ['RS256', 'HS256'] });
      expect(await loose.verify(hs)).toMatchObject({ valid: false, reason: 'invalid' });
      // The classic confusion: HMAC keyed with the issuer's public key PEM, against that public key.
      const pem = new TextEncoder().encode(await exportSPKI(issuer.publicKey));
      const confused = await jwtToken({ sub: 'agent_hs' }, { key: pem, header: { alg: 'HS256', kid: 'k1' } });
      expect(await loose.verify(confused)).toMatchObject({ valid: false, reason: 'invalid' });
      const byKey = jwtIds(ak, { jwks: undefined, key: issuer.publicKey, algorithms: ['RS256', 'HS256'] });
      expect(await byKey.verify(confused)).toMatchObject({ valid: false, reason: 'invalid' });
      expect(await totalRows(ak)).toBe(0);
    });

    it('unhappy: a token without a usable subject claim is invalid (missing, empty, not a string, too long)', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak);
      expect(await ids.verify(await jwtToken({ sub: undefined }))).toEqual({
        valid: false,
        reason: 'invalid',
        detail: 'the token has no "sub" claim to name its subject',
      });
      for (const sub of ['', 42, ['agent_1'], { id: 'agent_1' }, 'x'.repeat(257)]) {
        expect(await ids.verify(await jwtToken({ sub }))).toMatchObject({ valid: false, reason: 'invalid' });
      }
      expect(await ids.verify(await jwtToken({ sub: 'y'.repeat(256) }))).toMatchObject({ valid: true, subject: 'y'.repeat(256) });
      expect(await totalRows(ak)).toBe(1);
    });

    it('happy: subjectClaim names the subject from another claim; a token without that claim is invalid', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak, { subjectClaim: 'client_id' });
      const res = await ids.verify(await jwtToken({ sub: 'user_42', client_id: 'client_abc' }));
      expect(res).toMatchObject({ valid: true, subject: 'client_abc' });
      expect(await rowsFor(ak, 'client_abc')).toBe(1);
      expect(await rowsFor(ak, 'user_42')).toBe(0);
      expect(await ids.verify(await jwtToken({ sub: 'user_42' }))).toEqual({
        valid: false,
        reason: 'invalid',
        detail: 'the token has no "client_id" claim to name its subject',
      });
    });

    it('unhappy: garbage is invalid, never a throw', async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak);
      const garbage = ['', 'garbage', 'a.b.c', '...', 'eyJ.eyJ.', 'Bearer x', 'mt_123', '\u0000\u0001', 'a'.repeat(20_000), `${'e'.repeat(50)}.${'f'.repeat(50)}.${'g'.repeat(50)}`];
      for (const g of garbage) expect(await ids.verify(g)).toMatchObject({ valid: false, reason: 'invalid' });
      for (const g of [undefined, null, 42, {}]) expect(await ids.verify(g as never)).toEqual({ valid: false, reason: 'invalid', detail: 'no token' });
      expect(await totalRows(ak)).toBe(0);
    });

    it('happy: key sources: a local jwks with several keys, one `key`, an HS256 secret, and a jwksUrl on 127.0.0.1', async () => {
      const ak = await freshAk();
      // jwks: both RSA keys of the set verify (rotation); a kid outside it does not.
      const ids = jwtIds(ak);
      expect(await ids.verify(await jwtToken({ sub: 'agent_k1' }))).toMatchObject({ valid: true, subject: 'agent_k1' });
      expect(await ids.verify(await jwtToken({ sub: 'agent_k3' }, { key: rotated.privateKey, header: { kid: 'k3' } }))).toMatchObject({ valid: true });
      expect(await ids.verify(await jwtToken({ sub: 'agent_k9' }, { key: attacker.privateKey, header: { kid: 'k9' } }))).toEqual({
        valid: false,
        reason: 'invalid',
        detail: 'no key of the issuer matches it',
      });

      // key: one public key; another key's token fails.
      const byKey = jwtIds(ak, { jwks: undefined, key: issuer.publicKey });
      expect(await byKey.verify(await jwtToken({ sub: 'agent_key' }))).toMatchObject({ valid: true, subject: 'agent_key' });
      expect(await byKey.verify(await jwtToken({ sub: 'agent_key' }, { key: rotated.privateKey }))).toMatchObject({ valid: false, reason: 'invalid' });

      // key: an HS256 secret, with HS256 allowed.
      const secret = new TextEncoder().encode('0123456789abcdef0123456789abcdef');
      const hs = jwtIds(ak, { jwks: undefined, key: secret, algorithms: ['HS256'] });
      expect(await hs.verify(await jwtToken({ sub: 'agent_hs' }, { key: secret, header: { alg: 'HS256' } }))).toMatchObject({ valid: true, subject: 'agent_hs' });
      const otherSecret = new TextEncoder().encode('fedcba9876543210fedcba9876543210');
      expect(await hs.verify(await jwtToken({ sub: 'agent_hs' }, { key: otherSecret, header: { alg: 'HS256' } }))).toMatchObject({ valid: false, reason: 'invalid' });
      // An RS256 token against the HS256-only verifier.
      expect(await hs.verify(await jwtToken({ sub: 'agent_hs' }))).toMatchObject({ valid: false, reason: 'invalid' });

      // jwksUrl: fetched from the local server.
      const before = jwksServer.hits();
      const remote = jwtIds(ak, { jwks: undefined, jwksUrl: `${jwksServer.url}/.well-known/jwks.json` });
      expect(await remote.verify(await jwtToken({ sub: 'agent_remote' }))).toMatchObject({ valid: true, subject: 'agent_remote' });
      expect(jwksServer.hits()).toBeGreaterThan(before);
      expect(await remote.verify(await jwtToken({ sub: 'agent_remote' }, { key: rotated.privateKey, header: { kid: 'k3' } }))).toMatchObject({ valid: true });
      expect(await remote.verify(await jwtToken({ sub: 'agent_remote_forged' }, { key: attacker.privateKey }))).toEqual({
        valid: false,
        reason: 'invalid',
        detail: 'its signature does not match',
      });
      // A URL object works as well.
      const asUrl = jwtIds(ak, { jwks: undefined, jwksUrl: new URL(`${jwksServer.url}/.well-known/jwks.json`) });
      expect(await asUrl.verify(await jwtToken({ sub: 'agent_remote' }))).toMatchObject({ valid: true, subject: 'agent_remote' });
      expect(await rowsFor(ak, 'agent_remote_forged')).toBe(0);
    });

    it('unhappy: an unreachable or broken jwksUrl fails closed (invalid, no row), never a throw', async () => {
      const ak = await freshAk();
      const notFound = jwtIds(ak, { jwks: undefined, jwksUrl: `${jwksServer.url}/missing.json` });
      expect(await notFound.verify(await jwtToken({ sub: 'agent_nokeys' }))).toMatchObject({ valid: false, reason: 'invalid' });
      const down = await localServer(() => ({ body: {} }));
      const url = `${down.url}/.well-known/jwks.json`;
      await down.close();
      const unreachable = jwtIds(ak, { jwks: undefined, jwksUrl: url });
      expect(await unreachable.verify(await jwtToken({ sub: 'agent_nokeys' }))).toMatchObject({
        valid: false,
        reason: 'invalid',
        detail: "the issuer's key set could not be fetched",
      });
      expect(await rowsFor(ak, 'agent_nokeys')).toBe(0);
      // In the middleware it fails closed as the issuer's fault (503), not the client's token (401).
      for (const ids of [notFound, unreachable]) {
        const { call, state } = mount('hono', ids, {});
        expectError(await call(await jwtToken({ sub: 'agent_nokeys' })), 503, 'issuer_unavailable');
        expect(state.reached).toBe(0);
      }
      expect(await rowsFor(ak, 'agent_nokeys')).toBe(0);
    });

    it('unhappy: a revoked subject stays revoked for every new token and every new verifier', async () => {
      const ak = await freshAk();
      const first = await jwtIds(ak).verify(await jwtToken({ sub: 'agent_revoked' }));
      expect(first.valid).toBe(true);
      if (!first.valid) return;
      expect(await ak.revoke(first.keyId)).toBe(true);
      expect(await jwtIds(ak).verify(await jwtToken({ sub: 'agent_revoked' }))).toEqual({ valid: false, reason: 'revoked' });
      const { call } = mount('hono', jwtIds(ak), {});
      expectError(await call(await jwtToken({ sub: 'agent_revoked' })), 401, 'key_revoked');
      expect(await rowsFor(ak, 'agent_revoked')).toBe(1);
    });
  });

  describe('jwtSubjects: bad options throw at construction', () => {
    it('unhappy: no key source, two sources, a non-local http jwksUrl, a malformed URL', async () => {
      const ak = await freshAk();
      const subject = { budgetCents: 100 };
      expectInvalidArgument(() => jwtSubjects(ak, { subject }), /exactly one key source/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, key: issuer.publicKey, subject }), /exactly one key source/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, jwksUrl: 'https://issuer.test/jwks.json', subject }), /exactly one key source/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwksUrl: 'http://issuer.example.com/.well-known/jwks.json', subject }), /https/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwksUrl: 'http://localhost.evil.test/jwks.json', subject }), /https/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwksUrl: 'http://127.0.0.2/jwks.json', subject }), /https/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwksUrl: 'not a url', subject }), /https/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwksUrl: 'ftp://issuer.test/jwks.json', subject }), /https/);
      // https anywhere, http only for localhost / 127.0.0.1: no throw.
      expect(() => jwtSubjects(ak, { jwksUrl: 'https://issuer.test/.well-known/jwks.json', subject })).not.toThrow();
      expect(() => jwtSubjects(ak, { jwksUrl: 'http://localhost:8080/jwks.json', subject })).not.toThrow();
      expect(() => jwtSubjects(ak, { jwksUrl: 'http://127.0.0.1:8080/jwks.json', subject })).not.toThrow();
    });

    it("unhappy: algorithms 'none' (any case), empty, or not a list; unknown options; no subject defaults; a bad tokenScopes", async () => {
      const ak = await freshAk();
      const subject = { budgetCents: 100 };
      for (const algorithms of [['none'], ['NONE'], ['RS256', 'None'], [], 'RS256', [42]]) {
        expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject, algorithms: algorithms as never }), /never 'none'/);
      }
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject, issuers: ISSUER } as never), /unknown option "issuers"/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject, scope: 'proxy.chat' } as never), /unknown option "scope"/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks } as never), /subject defaults/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject: null } as never), /subject defaults/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject: 'budget' } as never), /subject defaults/);
      // Text defaults follow the library's rule for text, checked when the adapter is built.
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject: { name: 'agent\u001b[2J' } }), /^subject\.name must not contain control characters/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject: { delegatedBy: '\u202eevil' } }), /^subject\.delegatedBy must not contain control characters/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject: { accountId: 'acct\u0000' } }), /^subject\.accountId must not contain control characters/);
      expectInvalidArgument(() => jwtSubjects(ak, undefined as never), /needs options/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject, tokenScopes: 'widen' as never }), /tokenScopes/);
      expectInvalidArgument(() => jwtSubjects({} as never, { jwks, subject }), /AgentKey instance/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject }).express({ scopes: 'proxy.chat' } as never), /unknown option "scopes"/);
      expectInvalidArgument(() => jwtSubjects(ak, { jwks, subject }).hono({ reserveCents: -1 }), /reserveCents/);
    });
  });

  describe('token scopes narrow, never widen', () => {
    it("happy: 'scope' (space-separated), 'scp' (array) and a custom scopesClaim narrow the subject's scopes", async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak);
      expect(await ids.verify(await jwtToken({ sub: 'agent_s', scope: 'proxy.chat' }))).toMatchObject({ valid: true, scopes: ['proxy.chat'] });
      expect(await ids.verify(await jwtToken({ sub: 'agent_s', scope: '  usage.read   proxy.chat ' }))).toMatchObject({ scopes: ['usage.read', 'proxy.chat'] });
      // tools.* on the row allows tools.search and tools.* in a token.
      expect(await ids.verify(await jwtToken({ sub: 'agent_s', scp: ['usage.read', 'tools.search', 'tools.*'] }))).toMatchObject({
        scopes: ['usage.read', 'tools.search', 'tools.*'],
      });
      // 'scope' wins over 'scp' when both are there.
      expect(await ids.verify(await jwtToken({ sub: 'agent_s', scope: 'usage.read', scp: ['proxy.chat'] }))).toMatchObject({ scopes: ['usage.read'] });
      // No scope claim at all: the row's scopes.
      expect(await ids.verify(await jwtToken({ sub: 'agent_s' }))).toMatchObject({ scopes: ['proxy.chat', 'usage.read', 'tools.*'] });
      // An empty or non-list scope claim narrows to nothing.
      expect(await ids.verify(await jwtToken({ sub: 'agent_s', scope: '' }))).toMatchObject({ valid: true, scopes: [] });
      expect(await ids.verify(await jwtToken({ sub: 'agent_s', scope: 42 }))).toMatchObject({ valid: true, scopes: [] });

      const custom = jwtIds(ak, { scopesClaim: 'permissions' });
      expect(await custom.verify(await jwtToken({ sub: 'agent_s', permissions: ['proxy.chat', 'billing.write'], scope: 'usage.read' }))).toMatchObject({
        scopes: ['proxy.chat'],
      });
      expect(await custom.verify(await jwtToken({ sub: 'agent_s', scope: 'usage.read' }))).toMatchObject({ scopes: ['proxy.chat', 'usage.read', 'tools.*'] });
      expect(await rowsFor(ak, 'agent_s')).toBe(1);
      expect(await ak.validateBySubject('agent_s')).toMatchObject({ scopes: ['proxy.chat', 'usage.read', 'tools.*'] });
    });

    it("unhappy: a token claiming 'admin', '*', a wider wildcard or a scope the row lacks does not get it", async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak);
      const res = await ids.verify(await jwtToken({ sub: 'agent_w', scope: 'proxy.chat admin * billing.write proxy.* tools.search.deep *.x' }));
      expect(res).toMatchObject({ valid: true, scopes: ['proxy.chat', 'tools.search.deep'] });
      expect(ak.hasScope(res as never, 'billing.write')).toBe(false);
      expect(ak.hasScope(res as never, 'anything.at.all')).toBe(false);
      expect(ak.hasScope(res as never, 'proxy.chat')).toBe(true);
      const only = await ids.verify(await jwtToken({ sub: 'agent_w', scp: ['admin', '*'] }));
      expect(only).toMatchObject({ valid: true, scopes: [] });
      expect(ak.hasScope(only as never, 'proxy.chat')).toBe(false);
      // The row is never widened.
      expect((await ak.listKeys({ accountId: 'acct_jwt' }))[0]?.scopes).toEqual(['proxy.chat', 'usage.read', 'tools.*']);

      // An unlimited (null-scoped) subject is narrowed to what its token names.
      const open = jwtIds(ak, { subject: { budgetCents: 100 } });
      expect(await open.verify(await jwtToken({ sub: 'agent_open', scope: 'proxy.chat' }))).toMatchObject({ valid: true, scopes: ['proxy.chat'] });
      expect(await open.verify(await jwtToken({ sub: 'agent_open' }))).toMatchObject({ valid: true, scopes: null });
    });

    it("happy: tokenScopes 'ignore' gives the row's scopes, whatever the token claims", async () => {
      const ak = await freshAk();
      const ids = jwtIds(ak, { tokenScopes: 'ignore' });
      expect(await ids.verify(await jwtToken({ sub: 'agent_i', scope: 'usage.read' }))).toMatchObject({ scopes: ['proxy.chat', 'usage.read', 'tools.*'] });
      expect(await ids.verify(await jwtToken({ sub: 'agent_i', scope: 'admin *' }))).toMatchObject({ scopes: ['proxy.chat', 'usage.read', 'tools.*'] });
      const { call } = mount('express', ids, { scope: 'billing.write' });
      expectError(await call(await jwtToken({ sub: 'agent_i', scope: 'admin billing.write' })), 403, 'insufficient_scope');
    });

    it('unhappy: in the middleware, a token narrowed below the route scope is 403 even though the row has it', async () => {
      const ak = await freshAk();
      const { call, state } = mount('express', jwtIds(ak), { scope: 'proxy.chat' });
      const res = await call(await jwtToken({ sub: 'agent_m', scope: 'usage.read' }));
      expectError(res, 403, 'insufficient_scope');
      expect(scopesOf(res)).toEqual({ required: 'proxy.chat', available: ['usage.read'] });
      const admin = await call(await jwtToken({ sub: 'agent_m', scope: 'admin' }));
      expectError(admin, 403, 'insufficient_scope');
      expect(scopesOf(admin)).toEqual({ required: 'proxy.chat', available: [] });
      expect(state.reached).toBe(0);
      const ok = await call(await jwtToken({ sub: 'agent_m', scope: 'proxy.chat' }));
      expect(ok.status).toBe(200);
      expect(ok.body.agentKey).toMatchObject({ subject: 'agent_m', scopes: ['proxy.chat'] });
    });
  });
});
