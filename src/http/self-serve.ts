import { randomUUID } from 'node:crypto';
import type { AgentKey, CreateKeyOptions, ValidKey } from '../agentkey.js';
import { AgentKeyError } from '../errors.js';
import { budgetToMicros, describe } from '../money.js';
import { isAttenuation, parseScopes } from '../scopes.js';
import { addDuration, parseDuration, parsePeriod } from '../time.js';
import { type PackageErrorBody, errorToHttp, packageBody } from './errors.js';
import { surfaceOptions, timeoutOption } from './options.js';
import { minuteLimiter } from './rate-limit.js';
import { type RefusalReason, refuse } from './refusals.js';
import { withTimeout } from './timeout.js';

export interface AgentKeyRoutesOptions {
  /** The only scopes POST /signup grants (a body may ask for some of them). Unset: a scopeless key. */
  signupScopes?: string[];
  /** Signups allowed per client address per minute (429 past it). Default 10; false turns it off. */
  signupRateLimit?: number | false;
  /** Refuse signups without a valid `email` (400), as the package does by default. Default true. */
  requireEmailForSignup?: boolean;
  /** How long a route waits for the key store before failing closed with 503. Default 10 s. */
  timeoutMs?: number;
}

export interface RouteInput {
  body: unknown;
  key: ValidKey | undefined;
  ip: string;
  id?: string;
}
export interface RouteOutput {
  status: number;
  body: unknown;
}

/** The package's name for these options. */
export type RouteOptions = AgentKeyRoutesOptions;

export function checkRoutesOptions(
  options: unknown,
): Required<Pick<AgentKeyRoutesOptions, 'signupRateLimit' | 'requireEmailForSignup' | 'timeoutMs'>> & { signupScopes: string[] | null } {
  const o = surfaceOptions<AgentKeyRoutesOptions>(options, ['signupScopes', 'signupRateLimit', 'requireEmailForSignup', 'timeoutMs'], 'createAgentKeyRoutes options');
  const limit = o.signupRateLimit ?? 10;
  if (limit !== false && !(Number.isInteger(limit) && limit > 0)) {
    throw new AgentKeyError('invalid_argument', `signupRateLimit must be a positive whole number or false; got ${describe(limit)}.`);
  }
  if (o.requireEmailForSignup !== undefined && typeof o.requireEmailForSignup !== 'boolean') {
    throw new AgentKeyError('invalid_argument', 'requireEmailForSignup must be true or false.');
  }
  const timeoutMs = timeoutOption(o.timeoutMs);
  return {
    timeoutMs,
    signupScopes: parseScopes(o.signupScopes, null, 'signupScopes'),
    signupRateLimit: limit,
    requireEmailForSignup: o.requireEmailForSignup ?? true,
  };
}

const EMAIL = /^[^\s@]{1,64}@[^\s@]{1,189}\.[^\s@]{1,63}$/;

/**
 * The package's self-serve routes, framework-neutral: each takes the parsed request and
 * returns a status and a JSON body, never throws. Refusals come from the refusal table,
 * in the package's shape (`error` a string, plus `code` and `message`).
 */
export function selfServeHandlers(ak: AgentKey, opts: ReturnType<typeof checkRoutesOptions>) {
  const allowSignup = opts.signupRateLimit === false ? () => true : minuteLimiter(opts.signupRateLimit);
  const guarded = (failure: string, fn: (input: RouteInput) => Promise<RouteOutput>) => async (input: RouteInput): Promise<RouteOutput> => {
    try {
      // A store that never answers must not hang the request: fail closed instead.
      return await withTimeout(fn(input), opts.timeoutMs);
    } catch (err) {
      const e = errorToHttp(err);
      return { status: e.status, body: packageBody(e, failure) };
    }
  };

  return {
    /** POST /signup: a new account and a key with only `signupScopes` (or some of them). Unauthenticated. */
    signup: guarded('Failed to create key', async ({ body, ip }) => {
      if (!allowSignup(ip)) return fail('signup_rate_limited');
      const b = bodyObject(body);
      const email = b.email;
      if (email !== undefined && email !== null && (typeof email !== 'string' || !EMAIL.test(email))) {
        return fail('invalid_email');
      }
      if (opts.requireEmailForSignup && !email) return fail('email_required');
      const allowed = opts.signupScopes;
      let scopes: string[] = allowed ?? [];
      // Without signupScopes the key is scopeless, whatever the body asks: never a caller's scopes.
      if (allowed !== null && b.scopes !== undefined && b.scopes !== null) {
        const asked = parseScopes(b.scopes, null) ?? [];
        const disallowed = asked.filter((x) => !allowed.includes(x));
        if (disallowed.length > 0) {
          return fail('signup_scope_not_allowed', disallowed.join(', '), { allowed });
        }
        scopes = asked;
      }
      const accountId = `acct_${randomUUID().replaceAll('-', '')}`;
      const fields = keyFields(b);
      const created = await ak.create({
        ...fields,
        // As the package: a signup key lasts 24 hours unless the body says otherwise.
        expiresIn: fields.expiresIn ?? '24h',
        accountId,
        scopes,
        userId: (email as string | undefined) ?? null,
      }, { signup: true });
      return { status: 201, body: { ...created, accountId } };
    }),

    /** GET /sdk-keys/me: the calling key's own metadata. */
    me: guarded('Failed to read key', async ({ key }) => ({ status: 200, body: key })),

    /** POST /sdk-keys: a key for the caller's account, a child of the caller and never wider. */
    createChild: guarded('Failed to create key', async ({ body, key }) => {
      const parent = key as ValidKey;
      const b = bodyObject(body);
      const fields = keyFields(b);
      const scopes = b.scopes === undefined ? parent.scopes : parseScopes(b.scopes, null);
      if (!isAttenuation(parent.scopes, scopes)) {
        return fail('scope_not_allowed');
      }
      // Check the types first, so that e.g. "500" is a 400, never compared as a string.
      const budgetMicros = budgetToMicros(fields.budgetCents, 'budget_cents');
      const budgetCents = fields.budgetCents ?? null;
      if (parent.budgetCents !== null) {
        if (budgetMicros === null) {
          return fail('budget_exceeds_parent', `budget_cents is required: the calling key has a budget of ${parent.budgetCents} cents, and the keys it makes may not be unlimited.`);
        }
        if (budgetMicros > budgetToMicros(parent.budgetCents)!) {
          return fail('budget_exceeds_parent', `budget_cents may not exceed the calling key's budget of ${parent.budgetCents} cents.`);
        }
      }
      const expiresAt = fields.expiresIn != null ? addDuration(new Date(), parseDuration(fields.expiresIn, 'expires_in')) : null;
      if (parent.expiresAt !== null) {
        if (expiresAt === null) {
          return fail('expiry_exceeds_parent', `expires_in is required: the calling key expires at ${parent.expiresAt}, and the keys it makes may not outlive it.`);
        }
        if (expiresAt > new Date(parent.expiresAt)) {
          return fail('expiry_exceeds_parent', `expires_in may not reach past the calling key's expiry (${parent.expiresAt}).`);
        }
      }
      const created = await ak.create({
        ...fields,
        // create() works the expiry out again and checks it against the caller's (a zero
        // expires_in makes a key expired at once, as on /signup).
        expiresIn: fields.expiresIn ?? null,
        budgetCents,
        budgetPeriod: parsePeriod(fields.budgetPeriod, 'budget_period'),
        scopes,
        delegatedBy: fields.delegatedBy ?? parent.delegatedBy,
        accountId: parent.accountId,
        // A child of the caller: its spend also counts against the caller, so a daily
        // child under a monthly caller can never outspend the caller's month.
        parentId: parent.keyId,
      }, { by: parent.keyId });
      return { status: 201, body: { ...created, accountId: parent.accountId } };
    }),

    /**
     * PATCH /sdk-keys/:id: changes one of the caller's descendants (never the caller itself,
     * which would let a key raise its own budget, nor a key outside its subtree), within
     * the tree's rules; `cascade: true` narrows the descendants of that key too.
     */
    update: guarded('Failed to update key', async ({ body, key, id }) => {
      const caller = key as ValidKey;
      const b = bodyObject(body);
      const { cascade, ...rest } = b;
      const pick = (snake: string, camel: string) => (rest[snake] !== undefined ? rest[snake] : rest[camel]);
      const known = ['name', 'scopes', 'budget_cents', 'budgetCents', 'budget_period', 'budgetPeriod', 'expires_in', 'expiresIn', 'delegated_by', 'delegatedBy'];
      const unknown = Object.keys(rest).filter((k) => !known.includes(k));
      if (unknown.length > 0) throw new AgentKeyError('invalid_argument', `Unknown field ${JSON.stringify(unknown[0])}; allowed: name, scopes, budget_cents, budget_period, expires_in, delegated_by, cascade.`);
      const changes = Object.fromEntries(
        Object.entries({
          name: pick('name', 'name'),
          scopes: pick('scopes', 'scopes'),
          budgetCents: pick('budget_cents', 'budgetCents'),
          budgetPeriod: pick('budget_period', 'budgetPeriod'),
          expiresIn: pick('expires_in', 'expiresIn'),
          delegatedBy: pick('delegated_by', 'delegatedBy'),
        }).filter(([, v]) => v !== undefined),
      );
      try {
        const options = { accountId: caller.accountId, by: caller.keyId, ...(cascade === undefined ? {} : { cascade: cascade as boolean }) };
        return { status: 200, body: await ak.update(id as string, changes, options) };
      } catch (err) {
        // As DELETE answers a key that is not the caller's account's.
        if (err instanceof AgentKeyError && err.code === 'key_not_found') return fail('key_not_in_account');
        throw err;
      }
    }),

    /**
     * DELETE /sdk-keys/:id: revokes the caller itself or one of its descendants; a root
     * caller also other keys of its account. A child never revokes an ancestor or a sibling.
     */
    revoke: guarded('Failed to revoke key', async ({ key, id }) => {
      const caller = key as ValidKey;
      const revoked = await ak.revoke(id as string, caller.accountId, { by: caller.keyId });
      if (!revoked) return fail('key_not_in_account');
      return { status: 200, body: { revoked: true, id: Number(id) } };
    }),
  };
}

function fail(reason: RefusalReason, detail?: string, extra: Record<string, unknown> = {}): RouteOutput & { body: PackageErrorBody } {
  const e = refuse(reason, detail, extra);
  return { status: e.status, body: packageBody(e) };
}

function bodyObject(body: unknown): Record<string, unknown> {
  if (body === undefined || body === null) return {};
  if (typeof body !== 'object' || Array.isArray(body)) {
    throw new AgentKeyError('invalid_argument', 'The request body must be a JSON object.');
  }
  return body as Record<string, unknown>;
}

/** Body fields in the @katrinalaszlo/agentkey package's snake_case (camelCase accepted too), checked by `create()`. */
function keyFields(b: Record<string, unknown>): Omit<CreateKeyOptions, 'accountId'> {
  const pick = (snake: string, camel: string) => (b[snake] !== undefined ? b[snake] : b[camel]);
  return {
    name: pick('name', 'name') as string | undefined,
    budgetCents: pick('budget_cents', 'budgetCents') as number | undefined,
    budgetPeriod: pick('budget_period', 'budgetPeriod') as CreateKeyOptions['budgetPeriod'],
    expiresIn: pick('expires_in', 'expiresIn') as string | undefined,
    delegatedBy: pick('delegated_by', 'delegatedBy') as string | undefined,
  };
}
