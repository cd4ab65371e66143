import { AgentKeyError } from './errors.js';
import { microsToCents } from './money.js';
import { intersectScopes, isAttenuation } from './scopes.js';
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

/**
 * Whether the key `actor` may change `target` (`update()` with `by`): only a key under it.
 * Not itself (it could raise its own budget), and, unlike revoking, a root key does not
 * reach the other trees of its account.
 */
export function mayChange(actor: number, target: KeyRow): boolean {
  return target.ancestor_ids.map(Number).includes(actor);
}

/** What `update()` changes of a key's limits, checked; a field left out is not changed. */
export interface LimitChanges {
  budgetMicros?: number | null;
  scopes?: string[] | null;
  expiresAt?: Date | null;
}

/** The limits of one key that must change, by id. */
export interface LimitChange extends LimitChanges {
  id: number;
}

/**
 * The tree rules of `update()`, or a throw that changes nothing. The key is never widened
 * past its parent (the same three rules as a new child). Its descendants must still fit
 * under it, each under its own parent: a change that would leave one wider is refused
 * (`narrows_children`, naming it), or with `cascade` narrows it, level by level (a budget
 * to its parent's, scopes to the intersection, an expiry to its parent's). Only the kinds of
 * limit the update changes are compared, and revoked descendants are left as they are.
 * Returns the key's own change and those of the descendants that must change.
 */
export function fitUpdate(
  key: KeyRow,
  parent: KeyRow | null,
  descendants: readonly KeyRow[],
  changes: LimitChanges,
  cascade: boolean,
): LimitChange[] {
  const given = { budget: 'budgetMicros' in changes, scopes: 'scopes' in changes, expiry: 'expiresAt' in changes };
  const limits = new Map<number, Limits>([[Number(key.id), { ...limitsOf(key), ...changes }]]);
  const own = limits.get(Number(key.id)) as Limits;
  if (parent) {
    const p = limitsOf(parent);
    if (given.budget && p.budgetMicros !== null && own.budgetMicros !== null && own.budgetMicros > p.budgetMicros) {
      throw new AgentKeyError('budget_exceeds_parent', `A child key's budget may not exceed its parent's budget of ${microsToCents(p.budgetMicros)} cents.`);
    }
    if (given.scopes && !isAttenuation(p.scopes, own.scopes)) {
      throw new AgentKeyError('scope_not_allowed', `A child key can only have scopes its parent (key ${parent.id}) grants.`);
    }
    if (given.expiry && p.expiresAt !== null && (own.expiresAt === null || own.expiresAt > p.expiresAt)) {
      throw new AgentKeyError('expiry_exceeds_parent', `A child key must expire no later than its parent (${p.expiresAt.toISOString()}).`);
    }
  }
  const out: LimitChange[] = [{ id: Number(key.id), ...changes }];
  // Parents before their children: each is compared with its parent's limits as they end up.
  for (const d of [...descendants].sort((a, b) => a.depth - b.depth || Number(a.id) - Number(b.id))) {
    const above = limits.get(Number(d.parent_id));
    if (d.status === 'revoked' || above === undefined) continue;
    const mine = limitsOf(d);
    const change: LimitChanges = {};
    if (given.budget && above.budgetMicros !== null && mine.budgetMicros !== null && mine.budgetMicros > above.budgetMicros) {
      change.budgetMicros = above.budgetMicros;
    }
    if (given.scopes && !isAttenuation(above.scopes, mine.scopes)) change.scopes = intersectScopes(above.scopes, mine.scopes);
    if (given.expiry && above.expiresAt !== null && (mine.expiresAt === null || mine.expiresAt > above.expiresAt)) {
      change.expiresAt = above.expiresAt;
    }
    const wider = Object.keys(change);
    if (wider.length > 0 && !cascade) {
      const what = wider.map((k) => ({ budgetMicros: 'budget', scopes: 'scopes', expiresAt: 'expiry' })[k as keyof LimitChanges]);
      throw new AgentKeyError(
        'narrows_children',
        `Key ${d.id}, a descendant of key ${key.id}, would be wider than its parent (${what.join(', ')}); pass cascade: true to narrow it too.`,
      );
    }
    limits.set(Number(d.id), { ...mine, ...change });
    if (wider.length > 0) out.push({ id: Number(d.id), ...change });
  }
  return out;
}

interface Limits {
  budgetMicros: number | null;
  scopes: string[] | null;
  expiresAt: Date | null;
}

function limitsOf(row: KeyRow): Limits {
  return {
    budgetMicros: row.budget_micros === null ? null : Number(row.budget_micros),
    scopes: row.scopes,
    expiresAt: row.expires_at === null ? null : new Date(row.expires_at),
  };
}
