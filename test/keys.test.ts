import { createHash } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { checkKeyPrefix, hashKey, lookupHash, mintKey } from '../src/keys.js';
import { throwsWith } from './helpers/errors.js';

const BASE62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
const sha256 = (s: string) => createHash('sha256').update(s).digest('hex');

/** Every key that differs from `raw` by one substituted character. */
function substitutions(raw: string): string[] {
  const out: string[] = [];
  for (let i = 0; i < raw.length; i++) {
    for (const c of BASE62 + '_-') {
      if (c !== raw[i]) out.push(raw.slice(0, i) + c + raw.slice(i + 1));
    }
  }
  return out;
}

describe('mintKey', () => {
  it('happy: prefix + 43 base62 characters (256 random bits) + a 6-character checksum', () => {
    const k = mintKey('ak_');
    expect(k.raw).toMatch(/^ak_[0-9A-Za-z]{49}$/);
    expect(43 * Math.log2(62)).toBeGreaterThanOrEqual(192);
    expect(k.hash).toBe(sha256(k.raw));
    expect(k.raw.startsWith(k.visiblePrefix)).toBe(true);
    expect(k.visiblePrefix.length).toBeLessThanOrEqual('ak_'.length + 8);
  });

  it('happy: uses the configured prefix', () => {
    expect(mintKey('sk-live_').raw).toMatch(/^sk-live_[0-9A-Za-z]{49}$/);
  });

  it('security: keys never repeat and their random part is uniform over all 62 characters', () => {
    const keys = Array.from({ length: 500 }, () => mintKey('ak_').raw);
    expect(new Set(keys).size).toBe(keys.length);
    const counts = new Map<string, number>();
    for (const key of keys) for (const c of key.slice(3, 3 + 43)) counts.set(c, (counts.get(c) ?? 0) + 1);
    expect(counts.size).toBe(62);
    // Chi-square over 21,500 draws, 61 degrees of freedom: ~61 when uniform; a modulo
    // bias (some characters 25% likelier) lands around 140.
    const expected = (500 * 43) / 62;
    let chi2 = 0;
    for (const n of counts.values()) chi2 += (n - expected) ** 2 / expected;
    expect(chi2).toBeLessThan(125);
  });
});

describe('lookupHash', () => {
  it('happy: a freshly minted key is looked up by its SHA-256 hash', () => {
    const k = mintKey('ak_');
    expect(lookupHash(k.raw, 'ak_')).toBe(k.hash);
  });

  it('security: every one-character typo anywhere in the key is refused before any lookup', () => {
    const k = mintKey('ak_');
    const typos = substitutions(k.raw);
    expect(typos.length).toBeGreaterThan(3000);
    for (const typo of typos) expect(lookupHash(typo, 'ak_'), typo).toBeNull();
  });

  it('security: swapped neighbours, truncations and extensions are refused', () => {
    const k = mintKey('ak_');
    for (let i = 0; i + 1 < k.raw.length; i++) {
      if (k.raw[i] === k.raw[i + 1]) continue;
      const swapped = k.raw.slice(0, i) + k.raw[i + 1] + k.raw[i] + k.raw.slice(i + 2);
      expect(lookupHash(swapped, 'ak_'), swapped).toBeNull();
    }
    for (let n = 0; n < k.raw.length; n++) expect(lookupHash(k.raw.slice(0, n), 'ak_')).toBeNull();
    for (const c of ['0', 'a', 'Z', ' ', '\n']) expect(lookupHash(k.raw + c, 'ak_')).toBeNull();
    expect(lookupHash(` ${k.raw}`, 'ak_')).toBeNull();
  });

  it('security: a key with another prefix, or the stored hash itself, is not a key', () => {
    const k = mintKey('ak_');
    expect(lookupHash(k.raw, 'sk_')).toBeNull();
    expect(lookupHash('sk_' + k.raw.slice(3), 'ak_')).toBeNull();
    expect(lookupHash(k.hash, 'ak_')).toBeNull();
  });

  it('error: non-strings and oversized strings are refused', () => {
    for (const v of [undefined, null, 42, {}, [], Buffer.from('ak_x'), 'ak_' + 'a'.repeat(1_000_000)]) {
      expect(lookupHash(v, 'ak_')).toBeNull();
    }
  });

  it("happy: keys minted by the @katrinalaszlo/agentkey package (prefix + hex, no checksum) are still looked up", () => {
    const legacy = 'ak_' + '7f3a'.repeat(12);
    expect(lookupHash(legacy, 'ak_')).toBe(sha256(legacy));
    expect(lookupHash('ak_' + 'ab'.repeat(7), 'ak_')).toBeNull(); // too short to be one
    expect(lookupHash('ak_' + 'g'.repeat(48), 'ak_')).toBeNull();
  });
});

describe('hashKey', () => {
  it("happy: hex SHA-256, the package's scheme", () => {
    expect(hashKey('abc')).toBe('ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad');
  });
});

describe('checkKeyPrefix', () => {
  it('happy: short identifiers', () => {
    for (const p of ['ak_', 'sk-live_', 'A', 'x'.repeat(16)]) expect(checkKeyPrefix(p)).toBe(p);
  });

  it('error: anything else throws invalid_argument', () => {
    for (const p of ['', 'a b', 'ak$', 'x'.repeat(17), 'ak.', "a'", 5, null, {}]) {
      throwsWith(() => checkKeyPrefix(p), 'invalid_argument', String(p));
    }
  });
});
