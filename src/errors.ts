/** Every code an `AgentKeyError` can carry. */
export type AgentKeyErrorCode =
  | 'invalid_argument'
  | 'invalid_cost'
  | 'invalid_budget'
  | 'invalid_duration'
  | 'invalid_period'
  | 'invalid_scope'
  | 'invalid_table_name'
  | 'invalid_pool'
  | 'scope_not_allowed'
  | 'budget_exceeds_parent'
  | 'expiry_exceeds_parent'
  | 'parent_not_found'
  | 'parent_inactive'
  | 'depth_exceeded'
  | 'key_outside_tree'
  /** `update()`: no key has this id (in this account). */
  | 'key_not_found'
  /** `update()`: the key is revoked; a revoked key cannot be changed. */
  | 'key_inactive'
  /** `update()`: a descendant would be wider than the narrowed key; `cascade: true` narrows it too. */
  | 'narrows_children'
  | 'not_migrated'
  | 'storage_error'
  | 'storage_timeout'
  /** A step that would take a total past what the database can count (BIGINT micro-dollars). */
  | 'total_out_of_range'
  /** A webhook endpoint id that no endpoint has. */
  | 'webhook_not_found'
  /** A `rateLimit` or `concurrency` that is not a whole number in range, or a `per` that is not 1s to 1d. */
  | 'invalid_rate_limit'
  /** A model with no price in the catalog (bundled, fetched or custom): agentkey never charges 0 for it. */
  | 'unknown_model'
  /** Token counts that are not whole numbers of at least 0, or whose parts pass their whole. */
  | 'invalid_usage'
  /** An LLM request body that `estimateMaxCost()` cannot read (no messages, a bad max_tokens...). */
  | 'invalid_llm_request';

/**
 * The one error class agentkey throws: programmer mistakes (bad arguments) and
 * infrastructure faults. Expected denials (an expired key, a refused charge) are
 * returned as data, never thrown.
 *
 * @example
 * try { await ak.create({ accountId: '' }) }
 * catch (e) { if (e instanceof AgentKeyError) console.log(e.code) } // 'invalid_argument'
 */
export class AgentKeyError extends Error {
  readonly code: AgentKeyErrorCode;

  constructor(code: AgentKeyErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AgentKeyError';
    this.code = code;
  }
}

export function isAgentKeyError(err: unknown): err is AgentKeyError {
  return err instanceof AgentKeyError;
}
