// One file (about 670 lines): every request and response schema of the service, since one
// schema object both validates requests and writes /openapi.json, and shared pieces (cents,
// windows, ids) are used across routes; split, the document would be assembled from many files.
import { z } from '@hono/zod-openapi';
import { type CentsInput, MAX_CENTS, isValidCents } from '../money.js';
import { LEDGER_KINDS } from '../store/ledger-schema.js';

/**
 * The request and response schemas of the HTTP service. The same objects validate
 * requests (through @hono/zod-openapi) and generate /openapi.json, so the document can
 * never drift from what the service accepts. Objects are strict: a misspelt field (say
 * `budget_cents` for `budgetCents`) is a 400, never silently an unlimited key.
 */

/** A total in cents: a number up to MAX_CENTS, an exact decimal string past it (the library's `Cents`). */
const total = (description?: string) =>
  z
    .union([z.number(), z.string().regex(/^-?\d+(\.\d{1,4})?$/)])
    .openapi({
      description: `${description ? `${description} ` : ''}A number up to ${MAX_CENTS} cents either way; past that an exact decimal string such as "1000000000000.0001".`,
    });

// Cents as a number, or as a decimal string ("0.3"), which is read exactly.
const cents = (description: string) =>
  z
    .union([
      z.number().min(0).max(MAX_CENTS),
      z
        .string()
        .regex(/^\d{1,16}(\.\d{1,40})?$/, 'must be a number of cents, or a decimal string such as "0.3"')
        .refine((v) => isValidCents(v), `must be at most ${MAX_CENTS} cents`),
    ])
    .openapi({ description: `${description} A number, or a decimal string such as "0.3" (exact).`, example: 15 });
const metadata = z
  .record(z.string(), z.unknown())
  .optional()
  .openapi({ description: 'JSON object stored with the ledger row, e.g. { "requestId": "req_81", "step": "answer" } (an LLM call\'s model and tokens go in model and usage).' });
const rawKey = z.string().min(1).max(512).openapi({ description: "The agent's API key.", example: 'ak_7f3a...' });
const keyId = z.string().regex(/^[1-9][0-9]{0,15}$/, 'must be a key id (a positive whole number)').openapi({ example: '42' });
const accountId = z.string().min(1).max(256).openapi({ example: 'acct_123' });
const period = z.enum(['day', 'month']).nullable().optional().openapi({ description: "Budget reset interval: 'day' or 'month' (UTC), or null." });
const windowPeriod = z.enum(['day', 'week', 'month', 'lifetime']);
/** Budget windows as given: 1 to 4, each period once (the library checks and says which is wrong). */
const budgets = z
  .array(z.object({ cents: cents('The cap of this window in cents.'), period: windowPeriod.nullable().optional() }).strict())
  .optional()
  .openapi({
    description:
      "Several windows instead of budgetCents/budgetPeriod (not beside them): a charge must fit every one. The first day, month or lifetime window fills budgetCents/budgetPeriod. Periods: 'day', 'week' (from Monday), 'month', 'lifetime' (default), UTC.",
    example: [{ cents: 1000, period: 'day' }, { cents: 10000, period: 'month' }],
  });
const alerts = z
  .array(z.number().int())
  .nullable()
  .optional()
  .openapi({ description: "Percents of each window at which a 'budget.threshold' event is written once per period; null: the table's (PUT /v1/alerts); [] none.", example: [50, 80, 100] });
const BudgetWindow = z
  .object({
    period: windowPeriod,
    cents: z.number(),
    spentCents: total(),
    remainingCents: z.number(),
    periodStartAt: z.string().nullable(),
    resetAt: z.string().nullable(),
  })
  .openapi('BudgetWindow');
const instant = z.string().min(1).max(64).openapi({ description: 'An ISO 8601 date or time.', example: '2026-11-01T00:00:00Z' });

// Rate limits: a key's or an account's.
const rateLimit = z
  .object({
    requests: z.number().openapi({ description: 'A whole number from 1 to 1000000000.', example: 60 }),
    per: z.string().max(16).openapi({ description: "The window: '1s' to '1d', e.g. '1m'.", example: '1m' }),
  })
  .strict()
  .openapi('RateLimit');
const rateLimitField = z
  .union([rateLimit, z.null()])
  .optional()
  .openapi({ description: 'At most `requests` per `per` (429 rate_limited past it); null for none (on update: removes it).' });
const concurrencyField = z
  .number()
  .nullable()
  .optional()
  .openapi({ description: 'At most this many requests in flight through the middleware (429 rate_limited past it); null for none.', example: 5 });

export const ErrorBody = z
  .object({
    error: z.object({
      code: z.string().openapi({ example: 'invalid_request' }),
      message: z.string().openapi({ example: 'Field "costCents" in the body is invalid: expected number, received string.' }),
      limitedBy: z
        .unknown()
        .optional()
        .openapi({ description: "With 429 budget_exceeded: which budget refused (the key, an ancestor or the account) and which of its windows ('day', 'week', 'month', 'lifetime')." }),
      budgetUsedCents: z.number().optional().openapi({ description: 'With 429 budget_exceeded: what that budget has used.' }),
      budgetRemainingCents: z.number().nullable().optional().openapi({ description: 'With 429 budget_exceeded: what that budget has left.' }),
      limit: z.enum(['requests', 'concurrency']).optional().openapi({ description: 'With 429 rate_limited: the requests per window, or the requests in flight.' }),
      retryAfterMs: z.number().optional().openapi({ description: 'With 429 rate_limited: how long until a retry can pass (the Retry-After header, in ms).' }),
      resetAt: z.string().nullable().optional().openapi({ description: 'With 429 rate_limited: when the window that refused ends (null for concurrency).' }),
    }),
  })
  .openapi('Error');

export const KeyInfo = z
  .object({
    id: z.number().int(),
    accountId: z.union([z.string(), z.number()]),
    name: z.string().nullable(),
    prefix: z.string().nullable(),
    scopes: z.array(z.string()).nullable(),
    status: z.enum(['active', 'expired', 'revoked']),
    parentId: z.number().int().nullable(),
    depth: z.number().int(),
    budgetCents: z.number().nullable(),
    spentCents: total(),
    heldCents: total(),
    remainingCents: z.number().nullable(),
    overageCents: total("Real cost of the key's commits that no budget could take, over its life; never counted in spentCents."),
    budgetPeriod: z.enum(['day', 'month']).nullable(),
    budgetResetAt: z.string().nullable(),
    expiresAt: z.string().nullable(),
    revokedAt: z.string().nullable(),
    createdAt: z.string().nullable(),
    lastUsedAt: z.string().nullable(),
    delegatedBy: z.string().nullable(),
    externalSubject: z.string().nullable(),
    metadata: z.record(z.string(), z.unknown()).nullable().openapi({ description: "The key's own metadata, a JSON object of yours, or null." }),
    budgets: z.array(BudgetWindow).openapi({ description: 'Every budget window of the key, the first (budgetCents) first; remainingCents is the least they leave.' }),
    alerts: z.array(z.number().int()).nullable().openapi({ description: "The key's own alert percents, or null when the table's apply." }),
    rateLimit: z.union([rateLimit, z.null()]).openapi({ description: "The key's own rate limit, or null." }),
    concurrency: z.number().int().nullable().openapi({ description: "The key's own concurrency limit, or null." }),
  })
  .openapi('KeyInfo');

/** What a key is made with and may be changed to: one definition for create and update. */
const keyLimits = {
  scopes: z.array(z.string().min(1).max(128)).max(100).nullable().optional().openapi({ example: ['proxy.chat'] }),
  budgetCents: cents('Spending cap in cents; null for no cap (changed: below what was spent leaves nothing to spend).').nullable().optional(),
  budgetPeriod: period,
  expiresIn: z.string().max(16).nullable().optional().openapi({ description: "'30m', '1h', '7d', '1mo' from now; null for no expiry.", example: '7d' }),
  expiresAt: instant.nullable().optional(),
  delegatedBy: z.string().max(256).nullable().optional(),
  name: z.string().max(256).nullable().optional(),
  metadata: z
    .record(z.string(), z.unknown())
    .nullable()
    .optional()
    .openapi({ description: 'A JSON object of yours kept with the key (at most 8 KB); on update it replaces the old one, null removes it.' }),
  budgets,
  alerts,
  rateLimit: rateLimitField,
  concurrency: concurrencyField,
};

export const CreateKeyBody = z
  .object({
    accountId: z.union([accountId, z.number().int()]),
    ...keyLimits,
    userId: z.string().max(256).nullable().optional(),
    parentId: z.union([keyId, z.number().int().positive()]).nullable().optional().openapi({ description: 'Make the key a child of this key.' }),
  })
  .strict()
  .openapi('CreateKey');

export const UpdateKeyBody = z
  .object({
    ...keyLimits,
    cascade: z.boolean().optional().openapi({ description: 'Narrow the descendants too, where the change would leave one wider than its parent.' }),
  })
  .strict()
  .openapi('UpdateKey');

export const RotateKeyBody = z
  .object({
    gracePeriod: z
      .union([z.string().max(32), z.literal(0)])
      .optional()
      .openapi({ description: "How long the previous secret keeps working: '30s', '15m', '1h', up to '7d'; 0 or omitted for not at all.", example: '1h' }),
  })
  .strict()
  .openapi('RotateKey');

export const RotatedKey = z
  .object({
    key: z.string().openapi({ description: 'The new raw key: shown once, never stored.' }),
    id: z.number().int(),
    prefix: z.string().openapi({ description: "The new secret's first characters." }),
    previousKeyValidUntil: z.string().nullable().openapi({ description: 'Until when the previous secret works (ISO), or null when it stopped at once.' }),
  })
  .openapi('RotatedKey');

export const KeyEvent = z
  .object({
    id: z.number().int(),
    keyId: z.number().int().nullable().openapi({ description: "null for an account's ceiling ('budget_set')." }),
    accountId: z.string(),
    kind: z.enum(['created', 'updated', 'rotated', 'revoked', 'budget_set', 'adjusted']),
    actor: z.enum(['library', 'admin', 'cli', 'signup', 'key', 'sql']).openapi({
      description: "Who made the change: the library, the admin key, the CLI, the signup route, a key through self-serve (actorKeyId), or 'sql' (an edit of the table).",
    }),
    actorKeyId: z.number().int().nullable(),
    changes: z
      .record(z.string(), z.object({ before: z.unknown().optional(), after: z.unknown().optional() }))
      .openapi({ description: 'Each field that changed, in the names of a key, with its value before and after.' }),
    at: z.string(),
  })
  .openapi('KeyEvent');

export const EventList = z.object({ events: z.array(KeyEvent) }).openapi('EventList');

export const CreatedKey = KeyInfo.extend({
  key: z.string().openapi({ description: 'The raw key: shown once, never stored.' }),
}).openapi('CreatedKey');

export const KeyList = z.object({ keys: z.array(KeyInfo) }).openapi('KeyList');

export const KeyListQuery = z
  .object({
    accountId: accountId.optional(),
    parentId: keyId.optional(),
    includeRevoked: z.enum(['true', 'false']).optional(),
    limit: z.string().regex(/^[0-9]{1,5}$/, 'must be a whole number from 1 to 10000').optional(),
  })
  .strict();

export const KeyIdParam = z.object({ id: keyId.openapi({ param: { name: 'id', in: 'path' } }) });
export const AccountIdParam = z.object({ id: accountId.openapi({ param: { name: 'id', in: 'path' } }) });
export const ReservationIdParam = z.object({
  id: z.string().min(1).max(64).openapi({ param: { name: 'id', in: 'path' }, example: 'rsv_1b2c...' }),
});

export const Revoked = z
  .object({ id: z.number().int(), revoked: z.boolean().openapi({ description: 'False when the key was already revoked.' }), key: KeyInfo })
  .openapi('Revoked');

export const AccountBudgetBody = z
  .object({
    budgetCents: cents("The account's ceiling in cents (or give budgets).").optional(),
    budgetPeriod: z.enum(['day', 'week', 'month']).nullable().optional(),
    budgets,
    alerts,
  })
  .strict()
  .openapi('SetAccountBudget');

export const AlertsBody = z
  .object({ percents: z.array(z.number().int()).nullable().openapi({ description: 'Whole percents from 1 to 100 (at most 10); null or [] for none.', example: [80, 100] }) })
  .strict()
  .openapi('SetAlerts');

export const Alerts = z
  .object({ percents: z.array(z.number().int()).nullable().openapi({ description: 'The percents of every window that sets none of its own, or null.' }) })
  .openapi('Alerts');

export const AccountBudget = z
  .object({
    accountId: z.string(),
    budgetCents: z.number(),
    budgetPeriod: z.enum(['day', 'week', 'month']).nullable(),
    spentCents: total(),
    heldCents: total(),
    remainingCents: z.number(),
    periodStartAt: z.string().nullable(),
    budgetResetAt: z.string().nullable(),
    budgets: z.array(BudgetWindow).openapi({ description: "Every window of the account, the ceiling's first." }),
    alerts: z.array(z.number().int()).nullable(),
  })
  .openapi('AccountBudget');

export const UsageQuery = z
  .object({
    keyId: keyId.optional(),
    accountId: accountId.optional(),
    since: instant.optional(),
    until: instant.optional(),
    bucket: z.enum(['hour', 'day']).optional(),
    windows: z.enum(['true', 'false']).optional().openapi({ description: "With keyId or accountId: also report its budget windows now ('true')." }),
    byModel: z.enum(['true', 'false']).optional().openapi({ description: "Also break spend down by LLM model ('true'): the calls charged with model and usage." }),
  })
  .strict();

const count = (description: string) => z.number().int().openapi({ description });

/** Spend of one model over a report's span. */
export const ModelUsage = z
  .object({
    model: z.string().openapi({ description: "The catalog's model id.", example: 'gpt-4o-mini' }),
    provider: z.string().nullable().openapi({ description: "The catalog's provider id.", example: 'openai' }),
    costCents: total('Counted toward budgets: the charges and commits priced from its usage.'),
    overageCents: total('Real cost of its calls that no budget could take.'),
    count: count('Charges and commits.'),
    inputTokens: count('Input tokens, cached and cache-written ones included.'),
    outputTokens: count('Output tokens, reasoning included.'),
    cachedInputTokens: count('The part of inputTokens read from the prompt cache.'),
    cacheWriteTokens: count('The part of inputTokens written to the prompt cache.'),
    reasoningTokens: count('The part of outputTokens that was reasoning.'),
  })
  .openapi('ModelUsage');

export const UsageReport = z
  .object({
    totalCents: total('Spend counted toward budgets: charges, commits and adjustments.'),
    count: z.number().int(),
    overageCents: total('Real cost no budget could take, recorded beside the spend and never counted toward a cap.'),
    buckets: z.array(z.object({ start: z.string(), costCents: total(), count: z.number().int(), overageCents: total() })),
    windows: z
      .array(BudgetWindow)
      .optional()
      .openapi({ description: "With keyId (or accountId alone): its budget windows now, each with what it spent this period." }),
    models: z
      .array(ModelUsage)
      .optional()
      .openapi({ description: 'With byModel=true: spend by model, dearest first (calls charged in plain cents are not in it).' }),
  })
  .openapi('UsageReport');

export const VerifyBody = z
  .object({ key: rawKey, scope: z.string().min(1).max(128).optional().openapi({ example: 'proxy.chat' }) })
  .strict()
  .openapi('Verify');

export const Verification = z
  .object({
    valid: z.boolean(),
    reason: z.enum(['invalid', 'expired', 'revoked', 'budget_exceeded', 'insufficient_scope']).optional(),
    requiredScope: z.string().optional(),
    id: z.number().int().optional(),
    keyId: z.number().int().optional(),
    accountId: z.union([z.string(), z.number()]).optional(),
    userId: z.string().nullable().optional(),
    name: z.string().optional(),
    scopes: z.array(z.string()).nullable().optional(),
    budgetCents: z.number().nullable().optional(),
    budgetUsedCents: z.number().optional(),
    budgetRemainingCents: z.number().nullable().optional(),
    budgetHeldCents: z.number().optional(),
    budgetPeriod: z.enum(['day', 'month']).nullable().optional(),
    budgetResetAt: z.string().nullable().optional(),
    expiresAt: z.string().nullable().optional(),
    delegatedBy: z.string().nullable().optional(),
  })
  .openapi('Verification');

// ---- What a call cost: costCents, or an LLM call's model and token counts (priced from the catalog) ----

const tokens = (description: string) => z.number().int().min(0).openapi({ description });

export const TokenUsage = z
  .object({
    inputTokens: tokens('Every input token of the call, cached and cache-written ones included.'),
    outputTokens: tokens('Every output token, reasoning included.').optional(),
    cachedInputTokens: tokens('The part of inputTokens read from the prompt cache (priced at its own rate).').optional(),
    cacheWriteTokens: tokens('The part of inputTokens written to the prompt cache (priced at its own rate).').optional(),
    reasoningTokens: tokens('The part of outputTokens that was reasoning: kept for the record, priced as output.').optional(),
  })
  .strict()
  .openapi('TokenUsage', {
    description: "An LLM call's token counts, as its API reported them (OpenAI's prompt_tokens is inputTokens; Anthropic's input_tokens + cache tokens is inputTokens).",
    example: { inputTokens: 1200, outputTokens: 300, cachedInputTokens: 200 },
  });

/** In place of costCents: the model and token counts of an LLM call, which the service prices. */
const metered = {
  model: z
    .string()
    .min(1)
    .max(200)
    .optional()
    .openapi({ description: 'The LLM model, as requests name it, with usage instead of costCents: the cost is priced from the catalog (400 unknown_model when it has no price).', example: 'gpt-4o-mini' }),
  provider: z
    .string()
    .regex(/^[\w.-]{1,64}$/, "must be a provider id such as 'openai' or 'anthropic'")
    .optional()
    .openapi({ description: "The catalog's provider id, when the model's name does not tell it.", example: 'openai' }),
  usage: TokenUsage.optional(),
};

/** A body gives costCents, or model and usage (and maybe provider), never both and never neither. */
function oneCost(body: { costCents?: unknown; model?: unknown; provider?: unknown; usage?: unknown }, ctx: z.RefinementCtx): void {
  const llm = body.model !== undefined || body.usage !== undefined || body.provider !== undefined;
  const say = (message: string, path: string[] = []) => ctx.addIssue({ code: 'custom', message, path });
  if (body.costCents !== undefined && llm) say('give costCents, or model and usage (an LLM call priced by the service), not both');
  else if (!llm && body.costCents === undefined) say('give costCents, or model and usage (an LLM call\'s token counts, priced by the service)');
  else if (llm && body.model === undefined) say("it is required with usage: name the model, such as 'gpt-4o-mini'", ['model']);
  else if (llm && body.usage === undefined) say('it is required with model: the call\'s token counts, such as { "inputTokens": 1200, "outputTokens": 300 }', ['usage']);
}

/** What the document says of oneCost(): exactly one of costCents and model + usage; provider only beside a model. */
const ONE_COST = {
  oneOf: [{ required: ['costCents'] }, { required: ['model', 'usage'] }],
  dependentRequired: { model: ['usage'], usage: ['model'], provider: ['model'] },
} as Record<string, unknown>;

/** The cost a checked body gives: its costCents, or its model, provider and usage for the library to price. */
export function costOf<B extends { costCents?: CentsInput; model?: string; provider?: string; usage?: TokenUsageInput }>(
  body: B,
): Omit<B, 'costCents' | 'model' | 'provider' | 'usage'> & ({ costCents: CentsInput } | { model: string; provider?: string; usage: TokenUsageInput }) {
  const { costCents, model, provider, usage, ...rest } = body;
  if (costCents !== undefined) return { ...rest, costCents };
  // oneCost() has made sure of both; a body that did not pass it never gets here.
  if (model === undefined || usage === undefined) throw new Error('costOf() was given a body its schema did not check.');
  return { ...rest, model, usage, ...(provider === undefined ? {} : { provider }) };
}
type TokenUsageInput = z.infer<typeof TokenUsage>;

const chargeFields = {
  key: rawKey,
  costCents: cents('What the call cost, in cents (fractions down to 0.0001); or give model and usage.').optional(),
  ...metered,
  idempotencyKey: z.string().min(1).max(256).optional().openapi({ description: 'A retry with the same value is charged once.' }),
  metadata,
};

export const ChargeBody = z.object(chargeFields).strict().superRefine(oneCost).openapi('Charge', ONE_COST);

export const Charged = z
  .object({
    success: z.literal(true),
    budgetUsedCents: z.number().optional().openapi({ description: 'Absent for a zero cost, which records nothing.' }),
    budgetRemainingCents: z.number().nullable().optional(),
    replayed: z.literal(true).optional(),
    costCents: z.number().optional().openapi({ description: 'With model and usage: what the call was priced at, and charged.' }),
  })
  .openapi('Charged');

export const ReserveBody = z
  .object({
    ...chargeFields,
    costCents: cents('How much to hold, in cents; or give model and usage (a worst case in tokens).').optional(),
    ttl: z.string().max(16).optional().openapi({ description: "How long the hold lasts unless settled: '30s', '5m', up to '24h'. Default '5m'.", example: '2m' }),
  })
  .strict()
  .superRefine(oneCost)
  .openapi('Reserve', ONE_COST);

export const Reserved = z
  .object({
    success: z.literal(true),
    reservationId: z.string(),
    expiresAt: z.string(),
    budgetRemainingCents: z.number().nullable(),
    replayed: z.literal(true).optional(),
    reservationStatus: z.enum(['held', 'committed', 'released', 'expired']).optional(),
    heldCents: z.number().optional().openapi({ description: 'With model and usage: what the usage was priced at, and held.' }),
  })
  .openapi('Reserved');

const settleKey = rawKey
  .optional()
  .openapi({ description: 'The key that took the hold (or send it as "Authorization: Bearer <key>").' });

export const CommitBody = z
  .object({
    key: settleKey,
    costCents: cents('The real cost: always recorded; charged up to what the budgets leave, the rest is overage. Or give model and usage.').optional(),
    ...metered,
    metadata,
  })
  .strict()
  .superRefine(oneCost)
  .openapi('Commit', ONE_COST);

export const Committed = z
  .object({
    success: z.literal(true),
    reservationId: z.string(),
    costCents: z.number().openapi({ description: 'The real cost: chargedCents + overageCents.' }),
    chargedCents: z.number().openapi({ description: 'The part counted toward the budgets, never more than they leave.' }),
    overageCents: z.number().openapi({ description: 'The part no budget could take: recorded as overage, never counted toward a cap.' }),
    heldCents: z.number(),
    releasedCents: z.number(),
    overHoldCents: z.number(),
    holdExpired: z.boolean(),
    overBudget: z.boolean(),
    limitedBy: z.unknown().optional(),
    budgetUsedCents: z.number(),
    budgetRemainingCents: z.number().nullable(),
    replayed: z.literal(true).optional(),
  })
  .openapi('Committed');

export const ReleaseBody = z.object({ key: settleKey }).strict().openapi('Release');

export const Released = z
  .object({ success: z.literal(true), reservationId: z.string(), releasedCents: z.number(), holdExpired: z.boolean(), replayed: z.literal(true).optional() })
  .openapi('Released');

export const Health = z
  .object({
    status: z.literal('ok'),
    database: z.enum(['pglite', 'postgres']),
    // On PostgreSQL under `agentkey serve`: found at start.
    pooled: z.boolean().optional().openapi({ description: 'DATABASE_URL goes through a connection pooler (PgBouncer, Supavisor...).' }),
    cache: z
      .enum(['notify', 'fallback'])
      .optional()
      .openapi({ description: "notify: the key cache hears changes by LISTEN; fallback: it cannot (a pooler, no AGENTKEY_DIRECT_URL), so another instance's change shows here within 1 s." }),
  })
  .openapi('Health');

export const Removed = z.object({ accountId: z.string(), removed: z.literal(true) }).openapi('Removed');

export const AccountList = z
  .object({
    accounts: z.array(
      z.object({
        accountId: z.string(),
        keys: z.number().int(),
        liveKeys: z.number().int(),
        spentCents: total('Lifetime spend from the ledger.'),
        overageCents: total("Lifetime overage of the account's keys (not in spentCents)."),
        // A union, not .nullable(): on a referenced schema that makes allOf [$ref, nullable], which null fails.
        ceiling: z.union([AccountBudget, z.null()]).openapi({ description: 'The account\'s ceiling, or null when it has none.' }),
        rateLimit: z.union([rateLimit, z.null()]).openapi({ description: "The account's rate limit over all its keys, or null." }),
        concurrency: z.number().int().nullable().openapi({ description: "The account's concurrency limit over all its keys, or null." }),
      }),
    ),
  })
  .openapi('AccountList');

const limitParam = (max: number) => z.string().regex(/^[0-9]{1,5}$/, `must be a whole number from 1 to ${max}`).optional();

export const AccountListQuery = z.object({ limit: limitParam(10_000) }).strict();

export const LedgerQuery = z
  .object({ keyId: keyId.optional(), accountId: accountId.optional(), before: keyId.optional(), limit: limitParam(1_000) })
  .strict();

export const EventQuery = z
  .object({ keyId: keyId.optional(), accountId: accountId.optional(), before: keyId.optional(), limit: limitParam(1_000) })
  .strict();

export const KeyEventQuery = z.object({ before: keyId.optional(), limit: limitParam(1_000) }).strict();

export const LedgerList = z
  .object({
    entries: z.array(
      z.object({
        id: z.number().int(),
        keyId: z.number().int(),
        accountId: z.string(),
        kind: z.enum(LEDGER_KINDS),
        amountCents: total(),
        reservationId: z.string().nullable(),
        metadata: z.record(z.string(), z.unknown()).nullable(),
        createdAt: z.string(),
        model: z.string().optional().openapi({ description: 'On the rows of an LLM call charged with model and usage: the catalog\'s model id.' }),
        usage: z
          .object({
            provider: z.string(),
            inputTokens: z.number().int(),
            outputTokens: z.number().int(),
            cachedInputTokens: z.number().int(),
            cacheWriteTokens: z.number().int(),
            reasoningTokens: z.number().int(),
          })
          .optional()
          .openapi({ description: "On the row with the call's cost (a charge, a commit, a hold for a usage): its provider and token counts." }),
      }),
    ),
  })
  .openapi('LedgerList');

// ---------------------------------------------------------------------------------------
// Webhooks and the outbox (the outbox's consumers).
// ---------------------------------------------------------------------------------------

const eventType = z.enum(['budget.threshold', 'key.revoked', 'key.expired', 'hold.expired', 'overage.recorded']);
const webhookUrl = z.string().min(1).max(2048).openapi({ description: 'An http:// or https:// URL.', example: 'https://example.com/hooks/agentkey' });
const webhookEvents = z.array(eventType).min(1).nullable().optional().openapi({ description: 'The event types it gets; null or absent: all five.' });

export const Webhook = z
  .object({
    id: z.number().int(),
    url: z.string(),
    events: z.array(eventType).nullable(),
    accountId: z.string().nullable().openapi({ description: "Only this account's events; null: every account's." }),
    description: z.string().nullable(),
    enabled: z.boolean(),
    createdAt: z.string(),
    updatedAt: z.string(),
  })
  .openapi('Webhook');

export const CreatedWebhook = Webhook.extend({
  secret: z.string().openapi({ description: "The signing secret ('whsec_...'), shown once: verify deliveries with a Standard Webhooks library." }),
}).openapi('CreatedWebhook');

export const UpdatedWebhook = Webhook.extend({
  secret: z.string().optional().openapi({ description: 'The new secret, with rotateSecret: true only (shown once).' }),
}).openapi('UpdatedWebhook');

export const WebhookList = z.object({ webhooks: z.array(Webhook) }).openapi('WebhookList');

export const CreateWebhookBody = z
  .object({
    url: webhookUrl,
    events: webhookEvents,
    accountId: accountId.nullable().optional(),
    description: z.string().max(500).nullable().optional(),
    enabled: z.boolean().optional(),
  })
  .strict()
  .openapi('CreateWebhook');

export const UpdateWebhookBody = z
  .object({
    url: webhookUrl.optional(),
    events: webhookEvents,
    accountId: accountId.nullable().optional(),
    description: z.string().max(500).nullable().optional(),
    enabled: z.boolean().optional(),
    rotateSecret: z.boolean().optional(),
  })
  .strict()
  .openapi('UpdateWebhook');

export const WebhookIdParam = z.object({
  id: z.string().regex(/^[1-9][0-9]{0,15}$/, 'must be a webhook id (a positive whole number)').openapi({ param: { name: 'id', in: 'path' }, example: '3' }),
});

export const WebhookRemoved = z.object({ id: z.number().int(), removed: z.literal(true) }).openapi('WebhookRemoved');

export const DeliveryQuery = z
  .object({ status: z.enum(['pending', 'delivered', 'failed']).optional(), before: keyId.optional(), limit: limitParam(1_000) })
  .strict();

export const DeliveryList = z
  .object({
    deliveries: z.array(
      z.object({
        id: z.number().int(),
        webhookId: z.number().int(),
        eventId: z.string().openapi({ example: 'evt_12' }),
        eventType: eventType.nullable(),
        status: z.enum(['pending', 'delivered', 'failed']),
        attempts: z.number().int(),
        nextAttemptAt: z.string().nullable(),
        lastStatus: z.number().int().nullable(),
        lastError: z.string().nullable(),
        createdAt: z.string(),
        deliveredAt: z.string().nullable(),
        attemptLog: z.array(
          z.object({ attempt: z.number().int(), at: z.string(), status: z.number().int().nullable(), error: z.string().nullable(), durationMs: z.number() }),
        ),
      }),
    ),
  })
  .openapi('DeliveryList');

export const OutboxQuery = z
  .object({
    accountId: accountId.optional(),
    type: eventType.optional(),
    before: z.string().regex(/^(evt_)?[1-9][0-9]{0,15}$/, "must be an event id such as 'evt_12'").optional(),
    limit: limitParam(1_000),
  })
  .strict();

export const OutboxList = z
  .object({
    events: z.array(
      z.object({
        id: z.string().openapi({ example: 'evt_12' }),
        type: eventType,
        timestamp: z.string(),
        data: z.record(z.string(), z.unknown()).openapi({ description: 'camelCase; amounts in cents (exact).' }),
      }),
    ),
  })
  .openapi('OutboxList');
// Rate limits of an account.
export const AccountRateLimitBody = z
  .object({ rateLimit: rateLimitField, concurrency: concurrencyField })
  .strict()
  .openapi('SetAccountRateLimit');

export const AccountRateLimit = z
  .object({
    accountId: z.string(),
    rateLimit: z.union([rateLimit, z.null()]),
    concurrency: z.number().int().nullable(),
    updatedAt: z.string(),
  })
  .openapi('AccountRateLimit');
