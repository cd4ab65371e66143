import { AgentKeyError } from './errors.js';
import { microsToCents } from './money.js';
import { isAttenuation } from './scopes.js';
import type { KeyRow } from './store/keys.js';

/** The checked fields of a new key, before it is placed in a tree. */
export interface KeyFields {
  accountId: string;
  scopes: string[] | null;
  budgetMicros: number | null;
  expiresAt: Date | null;
}

/** Default depth limit: a root key (depth 0) and five levels of children. */
export const DEFAULT_MAX_DEPTH = 5;

/**
 * Fits a child's fields under its parent, or throws: the child never gets wider scopes,
 * a later expiry or a larger budget than its parent, lives in the parent's account, and
 * stays within the depth limit. Scopes and expiry the caller did not give are inherited.
 */
export function fitUnderParent<F extends KeyFields>(
  parent: KeyRow,
  fields: F,
  given: { scopes: boolean; expiry: boolean },
  maxDepth: number,
): F {
  if (parent.status !== 'active') {
    throw new AgentKeyError('parent_inactive', `Key ${parent.id} is ${parent.status}; it cannot have new children.`);
  }
  if (String(parent.account_id) !== fields.accountId) {
    throw new AgentKeyError('invalid_argument', `A child key must belong to its parent's account (${parent.account_id}).`);
  }
  if (parent.depth + 1 > maxDepth) {
    throw new AgentKeyError('depth_exceeded', `Key ${parent.id} is at depth ${parent.depth}; trees may be at most ${maxDepth} levels deep.`);
  }
  const scopes = given.scopes ? fields.scopes : parent.scopes;
  if (!isAttenuation(parent.scopes, scopes)) {
    throw new AgentKeyError('scope_not_allowed', `A child key can only have scopes its parent (key ${parent.id}) grants.`);
  }
  const expiresAt = given.expiry ? fields.expiresAt : parent.expires_at && new Date(parent.expires_at);
  if (parent.expires_at && (expiresAt === null || expiresAt > new Date(parent.expires_at))) {
    throw new AgentKeyError('expiry_exceeds_parent', `A child key must expire no later than its parent (${new Date(parent.expires_at).toISOString()}).`);
  }
  if (parent.budget_micros !== null && fields.budgetMicros !== null && fields.budgetMicros > parent.budget_micros) {
    throw new AgentKeyError(
      'budget_exceeds_parent',
      `A child key's budget may not exceed its parent's budget of ${microsToCents(parent.budget_micros)} cents.`,
    );
  }
  return { ...fields, scopes, expiresAt };
}

/**
 * The tree as a boundary: whether `actor` may act on `target` (revoke it, and any other
 * step a key takes on a key by id). A key acts on itself and its own descendants; a root
 * key (no parent) also on the other trees of its account, as the package's self-serve
 * routes allowed. A child never acts on an ancestor or a sibling.
 */
export function mayActOn(actor: KeyRow, target: KeyRow): boolean {
  if (String(actor.account_id) !== String(target.account_id)) return false;
  if (target.id === actor.id || target.ancestor_ids.map(Number).includes(Number(actor.id))) return true;
  return actor.parent_id === null;
}
