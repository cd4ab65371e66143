import { createHash, randomBytes } from 'node:crypto';

/**
 * The @katrinalaszlo/agentkey package's world, for the compatibility tests: its keys
 * table as its users have it, its own migration SQL, and keys as it minted them.
 */

/** The keys table as the package's own tests create it (before its migration). */
export function packageTableSql(table: string): string {
  return `CREATE TABLE ${table} (
    id SERIAL PRIMARY KEY,
    account_id TEXT,
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    name TEXT NOT NULL DEFAULT 'default',
    created_at TIMESTAMPTZ DEFAULT NOW(),
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ)`;
}

/**
 * The keys table in the barest shape a user of the package may have, before the package's
 * own ALTER TABLE: no defaults, no unique hash, `account_id` of any type.
 */
export function bareTableSql(table: string, accountType = 'TEXT'): string {
  return `CREATE TABLE ${table} (
    id SERIAL PRIMARY KEY,
    account_id ${accountType} NOT NULL,
    key_hash TEXT NOT NULL,
    key_prefix TEXT,
    name TEXT,
    created_at TIMESTAMPTZ DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ)`;
}

/** The package's migration: the columns it adds, in its types (ak.migrate() of the package ran exactly this). */
export function packageMigrationSql(table: string): string {
  return `ALTER TABLE ${table}
    ADD COLUMN IF NOT EXISTS user_id TEXT,
    ADD COLUMN IF NOT EXISTS scopes TEXT[],
    ADD COLUMN IF NOT EXISTS budget_cents INTEGER,
    ADD COLUMN IF NOT EXISTS budget_used_cents INTEGER DEFAULT 0,
    ADD COLUMN IF NOT EXISTS budget_period TEXT,
    ADD COLUMN IF NOT EXISTS budget_reset_at TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS expires_at TIMESTAMPTZ,
    ADD COLUMN IF NOT EXISTS delegated_by TEXT,
    ADD COLUMN IF NOT EXISTS external_subject TEXT`;
}

/** The SHA-256 hex of a text: how the package stored a key. */
export const sha256Hex = (text: string): string => createHash('sha256').update(text).digest('hex');

/** A key as the package minted it: prefix + lowercase hex, stored as its SHA-256 hex. */
export function packageKey(hexChars: 48 | 64 = 48, prefix = 'ak_'): { raw: string; hash: string; prefix: string } {
  const raw = prefix + randomBytes(hexChars / 2).toString('hex');
  return { raw, hash: sha256Hex(raw), prefix: raw.slice(0, prefix.length + 8) };
}
