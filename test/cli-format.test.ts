import { describe, expect, it } from 'vitest';
import { eventLines, keyDetails } from '../src/cli/format.js';
import type { KeyEvent, KeyInfo } from '../src/index.js';

/**
 * The CLI's event lines as an operator reads them: each change as `field: before → after`;
 * string values quoted and escaped, and a field name that is not a plain word (a row written
 * by SQL can hold any) quoted too, so nothing can pose as another change or another line.
 */

const event = (changes: KeyEvent['changes']): KeyEvent => ({
  id: 7,
  keyId: 3,
  accountId: 'acct',
  kind: 'updated',
  actor: 'sql',
  actorKeyId: null,
  changes,
  at: '2026-12-01T10:00:00.000Z',
});

describe('keys events lines', () => {
  it('happy: plain fields read as field: before → after, strings quoted', () => {
    const line = eventLines([event({ name: { before: 'a', after: 'b' }, budgetCents: { before: 500, after: 250 } })]);
    expect(line).toContain('name: "a" → "b", budgetCents: 500 → 250');
    expect(line).toContain('by sql');
  });

  it('security: a field name with separators, arrows or control characters is quoted, so it cannot pose as changes', () => {
    const line = eventLines([event({ 'name: "a" → "b", budgetCents': { before: 1, after: 2 }, 'x\u001b[31m\ny': { after: 'z' } })]);
    expect(line).toContain('"name: \\"a\\" → \\"b\\", budgetCents": 1 → 2');
    expect(line.split('\n')).toHaveLength(1);
    expect(line).not.toContain('\u001b');
    expect(line).toMatch(/"x\\(x1b|e|u001b)\[31m\\ny": "z"/);
  });
});

describe('keys show', () => {
  it("happy: a key's metadata is shown as JSON, its control characters escaped", () => {
    const key = { id: 1, name: 'k', accountId: 'a', prefix: 'ak_x', status: 'active', scopes: null, parentId: null, depth: 0, budgetCents: null,
      spentCents: 0, heldCents: 0, remainingCents: null, overageCents: 0, budgetPeriod: null, budgetResetAt: null, expiresAt: null, revokedAt: null,
      createdAt: null, lastUsedAt: null, delegatedBy: null, externalSubject: null, metadata: { team: 'x\u001b[2J' }, budgets: [], alerts: null, rateLimit: null,
      concurrency: null } satisfies KeyInfo;
    const text = keyDetails(key);
    expect(text).toMatch(/metadata\s+│ \{"team":"x\\u001b\[2J"\}/);
    expect(text).not.toContain('\u001b');
    expect(keyDetails({ ...key, metadata: null })).toMatch(/metadata\s+│ -/);
  });
});
