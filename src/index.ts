export {
  AgentKey,
  type AccountBudget,
  type AccountSummary,
  type AdjustResult,
  type AgentKeyOptions,
  type AuditResult,
  type BatchingOptions,
  type CacheOptions,
  type CacheStats,
  type ChargeOptions,
  type CommitOptions,
  type CommitResult,
  type CreateKeyOptions,
  type CreatedKey,
  type InvalidKey,
  type InvalidReason,
  type KeyInfo,
  type LedgerEntry,
  type LimitedBy,
  type ReleaseResult,
  type ReservationInfo,
  type ReservationStatus,
  type ReserveOptions,
  type ReserveResult,
  type SubjectOptions,
  type TrackUsageResult,
  type UsageOptions,
  type UsageQuery,
  type UsageReport,
  type ValidKey,
  type ValidationResult,
} from './agentkey.js';
export { AgentKeyError, type AgentKeyErrorCode, isAgentKeyError } from './errors.js';
export {
  agentKeyMiddleware,
  createAgentKeyRoutes,
  type AgentKeyMiddlewareOptions,
  type AgentKeyRoutesOptions,
  type HeldReservation,
} from './http/express.js';
export { MAX_CENTS, MICROS_PER_CENT } from './money.js';
export type { BudgetPeriod } from './time.js';
export type { PoolLike } from './store/db.js';
