export {
  AgentKey,
  type AgentKeyOptions,
  type CreateKeyOptions,
  type CreatedKey,
  type InvalidKey,
  type InvalidReason,
  type SubjectOptions,
  type TrackUsageResult,
  type UsageOptions,
  type ValidKey,
  type ValidationResult,
} from './agentkey.js';
export { AgentKeyError, type AgentKeyErrorCode, isAgentKeyError } from './errors.js';
export { agentKeyMiddleware, createAgentKeyRoutes, type AgentKeyMiddlewareOptions, type AgentKeyRoutesOptions } from './http/express.js';
export { MAX_CENTS, MICROS_PER_CENT } from './money.js';
export type { BudgetPeriod } from './time.js';
export type { PoolLike } from './store/db.js';
