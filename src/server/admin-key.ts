import { randomBytes } from 'node:crypto';
import { hashKey } from '../keys.js';
import { isBearerToken } from './middleware/admin-auth.js';
import { StartupError, type Storage } from './storage.js';

const TABLE = 'agentkey_admin_key';

export interface AdminKey {
  sha256: string;
  /** Set only when this call created the key: the one time it can be shown. */
  created?: string;
  source: 'env' | 'stored' | 'created';
}

/**
 * The service's admin key: AGENTKEY_ADMIN_KEY when given; else the one stored (as a SHA-256
 * hash only) by the first start; else a new one, stored now and returned once in `created`.
 * Two first starts racing on one PostgreSQL agree on one key: only the winner shows it.
 */
export async function resolveAdminKey(storage: Storage, fromEnv: string | undefined): Promise<AdminKey> {
  if (checkAdminKey(fromEnv)) return { sha256: hashKey(fromEnv as string), source: 'env' };
  await ensureTable(storage);
  const stored = await storage.query<{ sha256: string }>(`SELECT sha256 FROM ${TABLE} WHERE id = 1`);
  if (stored[0]) return { sha256: stored[0].sha256, source: 'stored' };
  const raw = newAdminKey();
  const inserted = await storage.query<{ sha256: string }>(
    `INSERT INTO ${TABLE} (id, sha256) VALUES (1, $1) ON CONFLICT (id) DO NOTHING RETURNING sha256`,
    [hashKey(raw)],
  );
  if (inserted[0]) return { sha256: inserted[0].sha256, created: raw, source: 'created' };
  const winner = await storage.query<{ sha256: string }>(`SELECT sha256 FROM ${TABLE} WHERE id = 1`);
  return { sha256: (winner[0] as { sha256: string }).sha256, source: 'stored' };
}

/**
 * Checks an admin key given in AGENTKEY_ADMIN_KEY, without the database (so that a bad one
 * stops the service before it opens anything): true when one is given, false when not.
 */
export function checkAdminKey(fromEnv: string | undefined): boolean {
  if (fromEnv === undefined || fromEnv === '') return false;
  // A bearer token's characters: the admin routes take the key as "Authorization: Bearer <key>".
  if (fromEnv.length < 16 || !isBearerToken(fromEnv)) {
    throw new StartupError('AGENTKEY_ADMIN_KEY must be at least 16 characters of letters, digits and . _ ~ + / - (no spaces).');
  }
  return true;
}

/** Replaces the stored admin key with a new one and returns it (the only time it is shown). */
export async function rotateAdminKey(storage: Storage): Promise<string> {
  await ensureTable(storage);
  const raw = newAdminKey();
  await storage.query(
    `INSERT INTO ${TABLE} (id, sha256) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET sha256 = EXCLUDED.sha256, created_at = now()`,
    [hashKey(raw)],
  );
  return raw;
}

function newAdminKey(): string {
  return `akadmin_${randomBytes(32).toString('base64url')}`;
}

async function ensureTable(storage: Storage): Promise<void> {
  try {
    await storage.query(`CREATE TABLE IF NOT EXISTS ${TABLE} (
      id SMALLINT PRIMARY KEY CHECK (id = 1),
      sha256 TEXT NOT NULL,
      created_at TIMESTAMPTZ NOT NULL DEFAULT now())`);
  } catch (err) {
    // Two first starts at once: IF NOT EXISTS is not atomic, and the loser sees the winner's type.
    const code = (err as { code?: string }).code;
    if (code !== '23505' && code !== '42P07') throw err;
  }
}
