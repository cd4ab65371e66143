// Code written for @katrinalaszlo/agentkey 0.2 with one change: the import says 'agentkey'.
// It is type-checked against the built package (dist/, as a user's compiler sees it) by
// test/compat/types.test.ts, and never run.
import express, { type Request, type Response } from 'express';
import pg from 'pg';
import {
  AgentKey,
  type AgentKeyOptions,
  type CreateKeyOptions,
  type CreateKeyResult,
  type EnsureSubjectOptions,
  type RouteOptions,
  type TrackUsageResult,
  type ValidateFailure,
  type ValidateResult,
  agentKeyMiddleware,
  createAgentKeyRoutes,
  expiryFromDuration,
} from 'agentkey';

const pool = new pg.Pool({ connectionString: process.env.DATABASE_URL });
const options: AgentKeyOptions = { pool, tableName: 'sdk_api_keys', keyPrefix: 'ak_', validScopes: ['usage.read', 'proxy.chat'] };
export const ak = new AgentKey(options);

export async function quickStart(): Promise<number> {
  await ak.migrate();
  const createOptions: CreateKeyOptions = {
    accountId: 'acct_123',
    userId: 'user_9',
    scopes: ['usage.read', 'proxy.chat'],
    budgetCents: 5000,
    budgetPeriod: 'month',
    expiresIn: '7d',
    delegatedBy: 'user_456',
    name: 'sales-agent',
  };
  const key: CreateKeyResult = await ak.create(createOptions);
  const created: [string, number, string[] | null, number | null, string | null, string | null] = [
    key.key, key.id, key.scopes, key.budgetCents, key.budgetPeriod, key.expiresAt,
  ];

  const result: ValidateResult | ValidateFailure = await ak.validate(key.key);
  if (!result.valid) {
    // The one type change (README, Differences): a fifth reason, 'rate_limited', which only a
    // key or account given a rate limit ever returns.
    const reason: 'invalid' | 'expired' | 'revoked' | 'budget_exceeded' | 'rate_limited' = result.reason;
    return reason === 'budget_exceeded' || reason === 'rate_limited' ? 429 : 401;
  }
  const v: ValidateResult = result;
  const fields: [number, string | number, string | null, string[] | null, number | null, number, number | null] = [
    v.id, v.accountId, v.userId, v.scopes, v.budgetCents, v.budgetUsedCents, v.budgetRemainingCents,
  ];
  const more: [string | null, string | null, string | null, string | null, string] = [v.budgetPeriod, v.budgetResetAt, v.expiresAt, v.delegatedBy, v.name];
  const allowed: boolean = ak.hasScope(v, 'proxy.chat');

  // TrackUsageResult read as the package's flat interface: no narrowing needed.
  const usage: TrackUsageResult = await ak.trackUsage(key.key, { costCents: 15 });
  const success: boolean = usage.success;
  const used: number | undefined = usage.budgetUsedCents;
  const remaining: number | null | undefined = usage.budgetRemainingCents;
  if (usage.reason === 'invalid_key' || usage.reason === 'invalid_cost') return 400;
  if (!usage.success && usage.reason === 'budget_exceeded') return 429;

  const revoked: boolean = await ak.revoke(key.id, 'acct_123');
  const check: { valid: boolean; invalid?: string[] } = ak.validateScopes(['usage.read', 'billing.write']);
  const expiry: Date | null = expiryFromDuration('7d');
  return [created, fields, more, allowed, success, used, remaining, revoked, check, expiry].length;
}

/** What @katrinalaszlo/agentkey-clerk does with a verified machine: first sight, then budget. */
export async function machine(subject: string, defaults: EnsureSubjectOptions): Promise<number> {
  let result = await ak.validateBySubject(subject);
  if (!result.valid && result.reason === 'invalid') {
    await ak.ensureSubject(subject, defaults);
    result = await ak.validateBySubject(subject);
  }
  if (!result.valid) return result.reason === 'budget_exceeded' ? 429 : 401;
  const charged: TrackUsageResult = await ak.trackUsageBySubject(subject, { costCents: 5 });
  return charged.success ? 200 : 402;
}

const routeOptions: RouteOptions = { signupScopes: ['proxy.chat'], signupRateLimit: 5, requireEmailForSignup: true };
export const app = express();
app.use(express.json());
app.use(createAgentKeyRoutes(ak, routeOptions));
app.get('/api/usage', agentKeyMiddleware(ak, { scope: 'usage.read' }), (req: Request, res: Response) => {
  const key: ValidateResult | undefined = req.agentKey;
  res.json({ account: key?.accountId, remaining: key?.budgetRemainingCents });
});
