import type { AgentKey, ValidKey } from '../agentkey.js';

/**
 * A key's model allow-list: its metadata's `models`, a list of model names where `*` matches
 * any run of characters (`["gpt-4o-mini", "claude-*"]`), compared without regard to case.
 * A key without `models` may use every model; a key whose `models` is not a list of names
 * may use none (a mistake in it must not open every model).
 *
 * The validation result does not carry a key's metadata, so it is read with getKey() and
 * kept for `ttlMs` per key: a change to a key's `models` takes up to that long to apply here.
 */
export type AllowList = { kind: 'all' } | { kind: 'some'; patterns: RegExp[]; names: string[] } | { kind: 'broken' };

const MAX_KEYS = 10_000;

export class ModelRules {
  private readonly cache = new Map<number, { until: number; rules: AllowList }>();

  constructor(
    private readonly ak: AgentKey,
    private readonly ttlMs: number,
  ) {}

  /** The allow-list of a validated key. */
  async of(key: ValidKey): Promise<AllowList> {
    // A validation result that carries the metadata (a later agentkey) needs no read.
    const carried = (key as { metadata?: unknown }).metadata;
    if (carried !== undefined) return allowList(carried);
    const now = Date.now();
    const hit = this.cache.get(key.keyId);
    if (hit && hit.until > now) return hit.rules;
    const info = await this.ak.getKey(key.keyId);
    const rules = allowList(info?.metadata ?? null);
    if (this.ttlMs > 0) {
      if (this.cache.size >= MAX_KEYS) this.cache.clear();
      this.cache.set(key.keyId, { until: now + this.ttlMs, rules });
    }
    return rules;
  }
}

/** The allow-list a key's metadata says. */
export function allowList(metadata: unknown): AllowList {
  if (metadata === null || typeof metadata !== 'object' || Array.isArray(metadata)) return { kind: 'all' };
  const models = (metadata as Record<string, unknown>).models;
  if (models === undefined || models === null) return { kind: 'all' };
  if (!Array.isArray(models) || !models.every((m) => typeof m === 'string' && m.length > 0 && m.length <= 200)) return { kind: 'broken' };
  return { kind: 'some', names: models as string[], patterns: (models as string[]).map(glob) };
}

/** Whether the allow-list lets `model` through. */
export function allows(rules: AllowList, model: string): boolean {
  if (rules.kind === 'all') return true;
  if (rules.kind === 'broken') return false;
  return rules.patterns.some((p) => p.test(model));
}

function glob(pattern: string): RegExp {
  const body = pattern
    .split('*')
    .map((part) => part.replace(/[.*+?^${}()|[\]\\]/g, '\\$&'))
    .join('.*');
  return new RegExp(`^${body}$`, 'i');
}
