import { createHash, randomBytes } from 'node:crypto';
import { AgentKeyError } from './errors.js';

const ALPHABET = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
/** 43 base62 characters carry 256 random bits. */
const BODY_LENGTH = 43;
const CHECK_LENGTH = 6;
/** Characters of the body kept in `key_prefix`, to recognise a key without its secret. */
const VISIBLE_LENGTH = 8;
const MAX_KEY_LENGTH = 512;

export interface MintedKey {
  raw: string;
  hash: string;
  visiblePrefix: string;
}

/** Checks a configured key prefix such as 'ak_'. */
export function checkKeyPrefix(prefix: unknown): string {
  if (typeof prefix !== 'string' || !/^[A-Za-z0-9_-]{1,16}$/.test(prefix)) {
    throw new AgentKeyError(
      'invalid_argument',
      'keyPrefix must be 1 to 16 letters, digits, underscores or hyphens, such as "ak_".',
    );
  }
  return prefix;
}

/**
 * Mints a key: prefix + 43 random base62 characters (256 bits) + a 6-character
 * checksum, so a mistyped or truncated key is refused without a database query.
 */
export function mintKey(prefix: string): MintedKey {
  const body = randomBase62(BODY_LENGTH);
  const raw = prefix + body + checksum(body);
  return { raw, hash: hashKey(raw), visiblePrefix: prefix + body.slice(0, VISIBLE_LENGTH) };
}

/** The value stored in `key_hash`: hex SHA-256 of the whole key (the scheme of the `@katrinalaszlo/agentkey` package). */
export function hashKey(raw: string): string {
  return createHash('sha256').update(raw).digest('hex');
}

/**
 * Returns the hash to look up, or null when the key cannot be one of ours: wrong
 * prefix, bad checksum, wrong length. Keys minted by the `@katrinalaszlo/agentkey` package
 * (prefix + hex) have no checksum and are looked up as they are.
 */
export function lookupHash(raw: unknown, prefix: string): string | null {
  if (typeof raw !== 'string' || raw.length > MAX_KEY_LENGTH || !raw.startsWith(prefix)) return null;
  const rest = raw.slice(prefix.length);
  if (rest.length === BODY_LENGTH + CHECK_LENGTH && /^[0-9A-Za-z]+$/.test(rest)) {
    const body = rest.slice(0, BODY_LENGTH);
    if (checksum(body) === rest.slice(BODY_LENGTH)) return hashKey(raw);
  }
  if (/^[0-9a-fA-F]{16,128}$/.test(rest)) return hashKey(raw);
  return null;
}

/** A random, unguessable id such as 'rsv_…' (24 base62 characters, about 143 bits). */
export function randomId(prefix: string, length = 24): string {
  return prefix + randomBase62(length);
}

function checksum(body: string): string {
  const digest = createHash('sha256').update(body).digest();
  let n = digest.readUInt32BE(0) * 65_536 + digest.readUInt16BE(4);
  let out = '';
  for (let i = 0; i < CHECK_LENGTH; i++) {
    out = ALPHABET[n % 62] + out;
    n = Math.floor(n / 62);
  }
  return out;
}

function randomBase62(length: number): string {
  let out = '';
  while (out.length < length) {
    for (const byte of randomBytes(length * 2)) {
      // 248 = 4 * 62: rejecting the top bytes keeps every character equally likely.
      if (byte < 248 && out.length < length) out += ALPHABET[byte % 62];
    }
  }
  return out;
}
