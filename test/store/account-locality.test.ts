import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { AgentKey } from '../../src/index.js';
import { functionDefinitions } from '../../src/store/definitions.js';
import { tableNames } from '../../src/store/identifiers.js';
import { forEachDatabase } from '../helpers/databases.js';

/*
 * Account locality (issue 19), checked against the live schema after migrate(), the live
 * functions' text (pg_proc.prosrc) and the SQL under src/store/ (.sql files and the template
 * strings of src/store/*.ts). Over 400 lines in one file on purpose: the classification lists,
 * the checker and the checks read against each other, and docs/scaling.md is tested from here.
 *
 * What is checked (the Citus rules cited are in docs/scaling.md, with their URLs):
 * - every table migrate() makes is account-scoped (ACCOUNT_SCOPED: its account column) or
 *   global (GLOBAL: why, and what it becomes on Citus); a table in neither fails;
 * - on account-scoped tables: every PRIMARY KEY / UNIQUE / EXCLUDE constraint and unique index
 *   includes the account column, or is in UNIQUE_EXCEPTIONS; foreign keys between them include
 *   it; none from a global table to an account-scoped one; id columns from sequences are bigint;
 *   no rules; triggers only as listed (TRIGGERS: Citus needs citus.enable_unsafe_triggers);
 * - each function migrate() installs that touches an account-scoped table takes an account
 *   argument (proargnames ~ /account/), is a trigger function that writes with NEW/OLD's
 *   account, or is in FUNCTION_EXCEPTIONS;
 * - the locality lint (below) and the router lint: SELECT ... FOR UPDATE / SHARE on an
 *   account-scoped table names one account (`account_id = $n` or a variable), as Citus runs
 *   those in single-shard queries only; the ones that do not are pinned in FOR_UPDATE_EXCEPTIONS.
 *
 * The locality rule, checkable: two references to account-scoped tables that meet in one query
 * (in one FROM list / JOIN, or a subquery that names an outer reference's alias) must be
 * connected by predicates that pin the account: `a.account_id = b.account_id` (casts allowed),
 * or a key link — key_id, parent_id, ancestor_ids, path, or the keys table's own id, on both
 * sides (`h.key_id = k.id`, `path @> ARRAY[n.id]`, `n.id = ANY(k.ancestor_ids)`,
 * `l.key_id IN (SELECT d.id ...)`) — because a key lives in one account (on Citus an UPDATE of
 * the distribution column is refused, so a key cannot move). Links chain (a-b, b-c connects
 * a-c). UNION branches are separate queries; an uncorrelated subquery is a query of its own;
 * INSERT targets are writes, not joins. Violations must equal JOIN_EXCEPTIONS exactly.
 * Known blind spots: SQL assembled from several TypeScript fragments is seen fragment by
 * fragment, and a correlation through an unaliased outer table is not detected.
 */

const TABLE = 'sdk_api_keys';
const t = tableNames(TABLE);
const bare = (quoted: string) => quoted.replace(/"/g, '').replace(/^.*\./, '');
const ROOT = fileURLToPath(new URL('../../', import.meta.url));

/** Account-scoped tables (distributed by account on Citus, co-located with the keys table): their account column. */
const ACCOUNT_SCOPED: Record<string, string> = {
  [bare(t.table)]: 'account_id',
  [bare(t.ledger)]: 'account_id',
  [bare(t.holds)]: 'account_id',
  [bare(t.accounts)]: 'account_id',
  [bare(t.events)]: 'account_id',
  [bare(t.windows)]: 'account_id',
  [bare(t.outbox)]: 'account_id',
  [bare(t.accountLimits)]: 'account_id',
  [bare(t.rateWindows)]: 'account_id',
};

/** Global tables: what each becomes on Citus, and why it has no account. `live`: made by every migrate(). */
const GLOBAL: Record<string, { citus: 'reference' | 'coordinator'; live: boolean; why: string }> = {
  agentkey_migrations: { citus: 'reference', live: true, why: 'schema versions of every keys table, written only by migrate()' },
  [bare(t.settings)]: { citus: 'reference', live: true, why: "table-wide settings ('alert_percents'), read by every spend" },
  [bare(t.webhooks)]: { citus: 'reference', live: true, why: 'webhook endpoints; account_id NULL means every account' },
  [bare(t.deliveries)]: { citus: 'coordinator', live: true, why: "the deliverers' queue over every account's outbox (leased with SKIP LOCKED)" },
  [bare(t.attempts)]: { citus: 'coordinator', live: true, why: 'the history of those deliveries' },
  [bare(t.orphans)]: { citus: 'coordinator', live: false, why: 'rows set aside from a dropped keys table (made only when needed)' },
  agentkey_admin_key: { citus: 'reference', live: false, why: "the HTTP service's admin key hash (one row; made by `agentkey serve`, not migrate())" },
};

/** Unique constraints / indexes without the account column, as `table.index(columns)`. Each is adapted at Citus time (docs/scaling.md). */
const UNIQUE_EXCEPTIONS: Record<string, string> = {
  [`${TABLE}.${TABLE}_pkey(id)`]: "the user's keys table: its id primary key is theirs and never changed by migrate()",
  [`${TABLE}.${TABLE}_key_hash_uidx(key_hash)`]: 'validate() finds a key by hash alone; on Citus unique per account plus a plain index',
  [`${TABLE}.${TABLE}_subject_uidx(external_subject)`]: 'validateBySubject() finds a key by subject alone; same as the hash',
  [`${TABLE}_ledger.${TABLE}_ledger_pkey(id)`]: 'agentkey-owned: proposal P2 (migration to (account_id, id))',
  [`${TABLE}_ledger.${TABLE}_ledger_idem_uidx(key_id,idempotency_key)`]: 'agentkey-owned: proposal P2 (account_id first)',
  [`${TABLE}_holds.${TABLE}_holds_pkey(id)`]: 'agentkey-owned: proposal P2; hold ids are random and found by id alone (settle)',
  [`${TABLE}_holds.${TABLE}_holds_idem_uidx(key_id,idempotency_key)`]: 'agentkey-owned: proposal P2',
  [`${TABLE}_events.${TABLE}_events_pkey(id)`]: 'agentkey-owned: proposal P2',
  [`${TABLE}_windows.${TABLE}_windows_pkey(id)`]: 'agentkey-owned: proposal P2',
  [`${TABLE}_outbox.${TABLE}_outbox_pkey(id)`]: 'agentkey-owned: proposal P2',
  [`${TABLE}_rate_windows.${TABLE}_rate_windows_pkey(scope,window_no)`]: "the exact-mode counters, keyed by scope ('k:<per_s>:<key id>', 'a:<per_s>:<account>'), which names one key or account: (account_id, scope, window_no) at Citus time",
  [`${TABLE}_outbox.${TABLE}_outbox_dedupe_uidx(dedupe)`]: 'agentkey-owned: proposal P2 (the dedupe text already names the account)',
};

/** Account columns that may hold NULL (Citus refuses a NULL distribution value). */
const NULLABLE_ACCOUNT: Record<string, string> = {};

/** Triggers on account-scoped tables (each needs citus.enable_unsafe_triggers on Citus; see the doc). */
const TRIGGERS: Record<string, string[]> = {
  [TABLE]: ['agentkey_changed', 'agentkey_deleted', 'agentkey_key_event', 'agentkey_sync', 'agentkey_sync_insert'],
  [`${TABLE}_ledger`]: ['agentkey_append_only'],
  [`${TABLE}_holds`]: ['agentkey_hold_expired'],
  [`${TABLE}_accounts`]: ['agentkey_ceiling_changed', 'agentkey_ceiling_event'],
  [`${TABLE}_events`]: ['agentkey_events_append_only'],
  [`${TABLE}_windows`]: ['agentkey_windows_changed'],
  [`${TABLE}_outbox`]: ['agentkey_outbox_append_only', 'agentkey_outbox_notify'],
  [`${TABLE}_account_limits`]: ['agentkey_account_limits_changed'],
};

/** Functions that touch account-scoped tables without an account argument. Citus consequence in the doc. */
const FUNCTION_EXCEPTIONS: Record<string, string> = {
};

/** Joins the locality rule flags, by source and a pattern of the query: each with its reason. */
const JOIN_EXCEPTIONS: { source: RegExp; query: RegExp; why: string }[] = [
];

/** SELECT ... FOR UPDATE / SHARE on account-scoped tables that names no single account (multi-shard on Citus, which refuses them). */
const FOR_UPDATE_EXCEPTIONS: { source: RegExp; query: RegExp; why: string }[] = [
];

// ---------------------------------------------------------------------------------------------
// The checker: SQL text -> query blocks -> references, links, violations.

const KEY_COLS = new Set(['key_id', 'parent_id', 'ancestor_ids', 'path']);
const ALIAS_STOP = /^(where|on|set|join|left|right|full|inner|cross|natural|using|order|group|limit|for|returning|with|as|select|values|do|and|or|union|except|intersect|lateral|having|window|offset|when|then|else|end)$/i;

interface Ref { table: string; alias: string | null; branch: Branch; insert: boolean }
interface Branch { text: string; block: Block }
interface Block { text: string; children: Block[]; parent: Branch | null; branches: Branch[] }

/** Splits `text` into blocks at each parenthesis that opens a query; a child shows as §n in its parent's text. */
function parseBlock(text: string, parent: Branch | null): Block {
  const block: Block = { text: '', children: [], parent, branches: [] };
  let own = '';
  for (let i = 0; i < text.length; i++) {
    if (text[i] === '(' && /^\(\s*(SELECT|WITH|UPDATE|INSERT|DELETE|VALUES)\b/i.test(text.slice(i, i + 200))) {
      let depth = 0;
      let j = i;
      for (; j < text.length; j++) {
        if (text[j] === '(') depth++;
        else if (text[j] === ')' && --depth === 0) break;
      }
      block.children.push({ text: text.slice(i + 1, j), children: [], parent: null, branches: [] });
      own += ` §${block.children.length - 1} `;
      i = j;
    } else own += text[i];
  }
  block.text = own;
  block.branches = own.split(/\b(?:UNION(?:\s+ALL)?|INTERSECT|EXCEPT)\b/i).map((b) => ({ text: b, block }));
  block.children = block.children.map((c, n) => parseBlock(c.text, block.branches.find((b) => b.text.includes(`§${n} `)) ?? block.branches[0]!));
  return block;
}

function refsOf(branch: Branch): Ref[] {
  const refs: Ref[] = [];
  for (const m of branch.text.matchAll(/\b(FROM|JOIN|UPDATE|USING|INTO|,)\s+@(\w+)(?:\s+(?:AS\s+)?([a-z_]\w*))?/gi)) {
    if (!(m[2]! in ACCOUNT_TOKENS)) continue;
    const alias = m[3] && !ALIAS_STOP.test(m[3]) ? m[3] : null;
    refs.push({ table: ACCOUNT_TOKENS[m[2]!]!, alias, branch, insert: /^INTO$/i.test(m[1]!) && /INSERT\s+INTO\s*$/i.test(branch.text.slice(0, m.index! + 4)) });
  }
  return refs;
}

const ACCOUNT_TOKENS: Record<string, string> = {
  keys: TABLE, ledger: `${TABLE}_ledger`, holds: `${TABLE}_holds`, accounts: `${TABLE}_accounts`, events: `${TABLE}_events`,
  windows: `${TABLE}_windows`, outbox: `${TABLE}_outbox`, account_limits: `${TABLE}_account_limits`,
};

function allBranches(block: Block): Branch[] {
  return [...block.branches, ...block.children.flatMap(allBranches)];
}
function fullText(block: Block): string {
  return block.text.replace(/§(\d+) /g, (_, n: string) => `(${fullText(block.children[Number(n)]!)}) `);
}
/** The branches a branch can see names from: itself and its enclosing ones. */
function scopes(branch: Branch): Branch[] {
  return branch.block.parent ? [branch, ...scopes(branch.block.parent)] : [branch];
}

export interface Violation { source: string; query: string }

/** Joins between account-scoped references that no chain of account-pinning predicates connects. */
export function joinViolations(source: string, sql: string): Violation[] {
  const out: Violation[] = [];
  for (const statement of sql.replace(/--[^\n]*/g, ' ').split(';')) {
    const root = parseBlock(statement, null);
    const branches = allBranches(root);
    const refs = branches.flatMap(refsOf);
    const reads = refs.filter((r) => !r.insert);
    if (reads.length < 2) continue;
    const group = new Map<Ref, Ref>(reads.map((r) => [r, r]));
    const find = (r: Ref): Ref => (group.get(r) === r ? r : find(group.get(r)!));
    const resolve = (q: string | undefined, branch: Branch): Ref | undefined => {
      for (const s of scopes(branch)) {
        const hit = reads.find((r) => r.branch === s && (q ? r.alias === q : r.alias === null));
        if (hit || !q) return hit;
      }
      return undefined;
    };
    const pins = (a: Ref, ca: string, b: Ref, cb: string) =>
      (ca === 'account_id' && cb === 'account_id') ||
      ((KEY_COLS.has(ca) || (ca === 'id' && a.table === TABLE)) && (KEY_COLS.has(cb) || (cb === 'id' && b.table === TABLE)));
    const link = (a: Ref | undefined, ca: string, b: Ref | undefined, cb: string) => {
      if (a && b && a !== b && pins(a, ca, b, cb)) group.set(find(a), find(b));
    };
    // References pinned to one account variable of the function (`k.account_id = p_account`) meet inside that account.
    const pinned = new Map<string, Ref>();
    for (const br of branches) {
      const cmp = /(?:\b([a-z_]\w*)\.)?\b([a-z_]\w*)(?:::\w+)?\s*(?:=|@>|<@|&&)\s*(?:ANY\s*\(\s*)?(?:ARRAY\s*\[\s*)?(?:\b([a-z_]\w*)\.)?\b([a-z_]\w*)/gi;
      for (const m of br.text.matchAll(cmp)) {
        link(resolve(m[1], br), m[2]!, resolve(m[3], br), m[4]!);
        const ref = m[2] === 'account_id' && !m[3] && /^[pv]_/.test(m[4]!) ? resolve(m[1], br) : undefined;
        if (!ref) continue;
        const other = pinned.get(m[4]!);
        if (other) group.set(find(ref), find(other));
        else pinned.set(m[4]!, ref);
      }
      for (const m of br.text.matchAll(/(?:\b([a-z_]\w*)\.)?\b([a-z_]\w*)\s+IN\s+§(\d+) /gi)) {
        const child = br.block.children[Number(m[3])]!;
        const sel = /^\s*SELECT\s+(?:DISTINCT\s+)?(?:([a-z_]\w*)\.)?([a-z_]\w*)/i.exec(child.branches[0]!.text);
        if (sel) link(resolve(m[1], br), m[2]!, resolve(sel[1], child.branches[0]!), sel[2]!);
      }
    }
    // Pairs that meet: two in one branch, or one in a subquery that names the other's alias.
    for (const a of reads) {
      for (const b of reads) {
        if (a === b || find(a) === find(b)) continue;
        const same = a.branch === b.branch && reads.indexOf(a) < reads.indexOf(b);
        const correlated = a.alias !== null && b.branch !== a.branch && scopes(b.branch).includes(a.branch) &&
          new RegExp(`\\b${a.alias}\\.`).test(fullText(b.branch.block));
        if (same || correlated) out.push({ source, query: fullText(root).replace(/\s+/g, ' ').trim() });
      }
    }
  }
  return [...new Map(out.map((v) => [`${v.source}|${v.query}`, v])).values()];
}

/** SELECT ... FOR UPDATE / SHARE on an account-scoped table whose query names no single account. */
export function forUpdateViolations(source: string, sql: string): Violation[] {
  const out: Violation[] = [];
  for (const statement of sql.replace(/--[^\n]*/g, ' ').split(';')) {
    for (const br of allBranches(parseBlock(statement, null))) {
      if (!/\bFOR\s+(?:NO\s+KEY\s+)?(?:UPDATE|SHARE)\b/i.test(br.text) || refsOf(br).length === 0) continue;
      if (/\baccount_id(?:::text)?\s*=\s*(?!ANY\b)(?:\$\d+|[a-z_]\w*)\b(?![.(])/i.test(br.text)) continue;
      out.push({ source, query: fullText(br.block).replace(/\s+/g, ' ').trim() });
    }
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// The SQL under src/store/, with every table name as @token.

const TOKEN_OF: Record<string, string> = {
  table: 'keys', accountLimits: 'account_limits', account_limits: 'account_limits', rateWindows: 'rate_windows', rate_windows: 'rate_windows',
};
const token = (name: string) => `@${TOKEN_OF[name] ?? name}`;

/** The .sql files, placeholders as tokens. */
function sqlFiles(): { source: string; sql: string }[] {
  const dir = path.join(ROOT, 'src/store/sql');
  return ['functions', 'triggers', 'migrations'].flatMap((sub) =>
    fs.readdirSync(path.join(dir, sub)).filter((f) => f.endsWith('.sql')).map((f) => ({
      source: `src/store/sql/${sub}/${f}`,
      sql: fs.readFileSync(path.join(dir, sub, f), 'utf8').replace(/\{\{(\w+)\}\}/g, (_, n: string) => token(n)),
    })));
}

/** Every template string of src/store/*.ts that names a table: `${t.x}` as @x, a conditional one as absent, any other as its string literals. */
function tsTemplates(): { source: string; sql: string }[] {
  const out: { source: string; sql: string }[] = [];
  const dir = path.join(ROOT, 'src/store');
  for (const f of fs.readdirSync(dir).filter((x) => x.endsWith('.ts'))) {
    const src = fs.readFileSync(path.join(dir, f), 'utf8');
    const read = (i: number): [string, number] => {
      let s = '';
      for (; i < src.length && src[i] !== '`'; i++) {
        if (src[i] === '\\') { s += src[++i]; continue; }
        if (src[i] === '$' && src[i + 1] === '{') {
          let depth = 0; let j = i + 1; let inner = '';
          for (; j < src.length; j++) {
            if (src[j] === '{') depth++;
            else if (src[j] === '}' && --depth === 0) break;
            else if (src[j] === '`') { const [nested, end] = read(j + 1); inner += ` '${nested}' `; j = end; continue; }
            inner += src[j];
          }
          const table = /^\{\s*(?:this\.)?t\.(\w+)\s*$/.exec(inner);
          // A conditional part may be absent: counted as absent. Any other keeps its string literals.
          s += table ? token(table[1]!) : inner.includes('?') ? ' ' : ` ${[...inner.matchAll(/'([^']*)'/g)].map((m) => m[1]).join(' ')} `;
          i = j;
          continue;
        }
        s += src[i];
      }
      return [s, i];
    };
    for (let i = 0; i < src.length; i++) {
      if (src[i] === '/' && src[i + 1] === '/') { i = src.indexOf('\n', i); if (i < 0) break; continue; }
      if (src[i] === '/' && src[i + 1] === '*') { i = src.indexOf('*/', i) + 1; if (i <= 0) break; continue; }
      if (src[i] === "'" || src[i] === '"') { const q = src[i]; for (i++; i < src.length && src[i] !== q; i++) if (src[i] === '\\') i++; continue; }
      if (src[i] !== '`') continue;
      const line = src.slice(0, i).split('\n').length;
      const [text, end] = read(i + 1);
      if (/@\w+/.test(text)) out.push({ source: `src/store/${f}:${line}`, sql: text });
      i = end;
    }
  }
  return out;
}

function unmatched(found: Violation[], pinned: { source: RegExp; query: RegExp; why: string }[]) {
  const covered = (v: Violation) => pinned.some((p) => p.source.test(v.source) && p.query.test(v.query));
  return {
    unexplained: found.filter((v) => !covered(v)),
    stale: pinned.filter((p) => !found.some((v) => p.source.test(v.source) && p.query.test(v.query))).map((p) => p.why),
  };
}

describe('the locality checker', () => {
  it('error: flags a made-up join across accounts, and a correlated subquery that pins nothing', () => {
    expect(joinViolations('made-up', 'SELECT l.amount_micros FROM @ledger l JOIN @holds h ON h.id = l.reservation_id')).toHaveLength(1);
    expect(joinViolations('made-up', 'SELECT k.id FROM @keys k WHERE EXISTS (SELECT 1 FROM @accounts a WHERE a.budget_micros > k.budget_micros)')).toHaveLength(1);
    expect(forUpdateViolations('made-up', 'SELECT id FROM @holds WHERE key_id = ANY($1) FOR UPDATE')).toHaveLength(1);
  });

  it('happy: the same queries pinned to one account, or linked through a key, pass; unions and inserts are no joins', () => {
    expect(joinViolations('ok', 'SELECT 1 FROM @ledger l JOIN @holds h ON h.account_id = l.account_id AND h.id = l.reservation_id')).toEqual([]);
    expect(joinViolations('ok', 'SELECT 1 FROM @keys k WHERE EXISTS (SELECT 1 FROM @ledger l WHERE l.key_id = k.id)')).toEqual([]);
    expect(joinViolations('ok', 'SELECT 1 FROM @keys k JOIN @holds h ON h.path @> ARRAY[k.id] JOIN @accounts a ON a.account_id = k.account_id::text')).toEqual([]);
    expect(joinViolations('ok', 'SELECT id FROM @keys WHERE key_hash = $1 UNION ALL SELECT key_id FROM @holds WHERE id = $2')).toEqual([]);
    expect(joinViolations('ok', 'INSERT INTO @ledger (key_id) SELECT id FROM @keys WHERE id = 1')).toEqual([]);
    // Both pinned to the function's one account variable: inside that account.
    expect(joinViolations('ok', 'SELECT 1 FROM @keys k LEFT JOIN @accounts a ON a.account_id = p_account WHERE k.account_id::text = p_account')).toEqual([]);
    // Pinned to two different variables, or only one side pinned: still a join across accounts.
    expect(joinViolations('made-up', 'SELECT 1 FROM @keys k LEFT JOIN @accounts a ON a.account_id = p_other WHERE k.account_id::text = p_account')).toHaveLength(1);
    expect(joinViolations('made-up', 'SELECT 1 FROM @keys k LEFT JOIN @accounts a ON a.budget_micros > 0 WHERE k.account_id::text = p_account')).toHaveLength(1);
    expect(forUpdateViolations('ok', 'SELECT id FROM @keys WHERE account_id = $1 ORDER BY id FOR UPDATE')).toEqual([]);
  });
});

describe('the SQL under src/store/', () => {
  it('security: no query joins two accounts, except the pinned ones', () => {
    const found = [...sqlFiles(), ...tsTemplates()].flatMap((f) => joinViolations(f.source, f.sql));
    expect(unmatched(found, JOIN_EXCEPTIONS)).toEqual({ unexplained: [], stale: [] });
  });

  it('happy: every row lock on an account-scoped table names one account (Citus: single-shard only), except the pinned ones', () => {
    const found = [...sqlFiles(), ...tsTemplates()].flatMap((f) => forUpdateViolations(f.source, f.sql));
    expect(unmatched(found, FOR_UPDATE_EXCEPTIONS)).toEqual({ unexplained: [], stale: [] });
  });

  it('happy: every table any source creates is classified', () => {
    const made = new Set<string>();
    const scan = (dir: string) => {
      for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
        const p = path.join(dir, e.name);
        if (e.isDirectory()) scan(p);
        else if (/\.(ts|sql)$/.test(e.name)) {
          for (const m of fs.readFileSync(p, 'utf8').matchAll(/CREATE TABLE IF NOT EXISTS (\S+)/g)) made.add(m[1]!);
        }
      }
    };
    scan(path.join(ROOT, 'src'));
    const names: Record<string, string> = { '${TABLE}': 'agentkey_admin_key', '${t.migrations}': 'agentkey_migrations', '${t.orphans}': bare(t.orphans) };
    const resolved = [...made].map((m) => names[m] ?? bare(m.replace(/\{\{(\w+)\}\}/, (_, n: string) => (t as unknown as Record<string, string>)[n === 'account_limits' ? 'accountLimits' : n === 'rate_windows' ? 'rateWindows' : n === 'table' ? 'table' : n] ?? m)));
    for (const name of resolved) expect(name in ACCOUNT_SCOPED || name in GLOBAL, name).toBe(true);
  });
});

forEachDatabase((getDb) => {
  describe('the live schema after migrate()', () => {
    let migrated: Promise<void> | undefined;
    const live = async () => {
      const db = getDb();
      migrated ??= (async () => {
        const ak = new AgentKey({ pool: db.pool, tableName: TABLE });
        await ak.migrate();
        await ak.close();
      })();
      await migrated;
      return db;
    };

    it('happy: every table is account-scoped (with its column) or global, and account columns share one type', async () => {
      const db = await live();
      const tables = (await db.query<{ name: string }>(`SELECT relname AS name FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace ORDER BY 1`)).map((r) => r.name);
      expect(tables).toEqual([...Object.keys(ACCOUNT_SCOPED), ...Object.entries(GLOBAL).filter(([, g]) => g.live).map(([n]) => n)].sort());
      const cols = await db.query<{ table: string; type: string; nullable: string }>(
        `SELECT table_name AS table, data_type AS type, is_nullable AS nullable FROM information_schema.columns
         WHERE table_schema = 'public' AND (table_name, column_name) IN (SELECT * FROM unnest($1::text[], $2::text[]))`,
        [Object.keys(ACCOUNT_SCOPED), Object.values(ACCOUNT_SCOPED)],
      );
      expect(cols.map((c) => c.table).sort()).toEqual(Object.keys(ACCOUNT_SCOPED).sort());
      // Co-located tables need one distribution column type.
      expect(new Set(cols.map((c) => c.type))).toEqual(new Set(['text']));
      expect(Object.fromEntries(cols.filter((c) => c.nullable === 'YES').map((c) => [c.table, true]))).toEqual(
        Object.fromEntries(Object.keys(NULLABLE_ACCOUNT).map((n) => [n, true])),
      );
    });

    it('happy: unique constraints and indexes include the account column, except the pinned ones; foreign keys, sequences, rules, triggers', async () => {
      const db = await live();
      const names = Object.keys(ACCOUNT_SCOPED);
      const uniques = await db.query<{ table: string; name: string; cols: string[] }>(
        `SELECT c.relname AS table, i.relname AS name, array_agg(a.attname::text ORDER BY k.ord) AS cols
         FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class i ON i.oid = x.indexrelid
         CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
         LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum
         WHERE c.relname = ANY($1) AND c.relnamespace = 'public'::regnamespace
           AND (x.indisunique OR EXISTS (SELECT 1 FROM pg_constraint n WHERE n.conindid = x.indexrelid AND n.contype = 'x'))
         GROUP BY 1, 2`,
        [names],
      );
      const missing = uniques.filter((u) => !u.cols.includes(ACCOUNT_SCOPED[u.table]!)).map((u) => `${u.table}.${u.name}(${u.cols.map((c) => c ?? 'expr').join(',')})`);
      expect(missing.sort()).toEqual(Object.keys(UNIQUE_EXCEPTIONS).sort());

      const fks = await db.query<{ from: string; to: string; from_cols: string[]; to_cols: string[] }>(
        `SELECT f.relname AS from, r.relname AS to,
                ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = c.conrelid AND attnum = ANY(c.conkey)) AS from_cols,
                ARRAY(SELECT attname::text FROM pg_attribute WHERE attrelid = c.confrelid AND attnum = ANY(c.confkey)) AS to_cols
         FROM pg_constraint c JOIN pg_class f ON f.oid = c.conrelid JOIN pg_class r ON r.oid = c.confrelid
         WHERE c.contype = 'f' AND c.connamespace = 'public'::regnamespace`,
      );
      for (const fk of fks) {
        if (fk.to in ACCOUNT_SCOPED) {
          expect(fk.from in ACCOUNT_SCOPED, `${fk.from} -> ${fk.to}: a global table may not reference a distributed one`).toBe(true);
          expect(fk.from_cols.includes(ACCOUNT_SCOPED[fk.from]!) && fk.to_cols.includes(ACCOUNT_SCOPED[fk.to]!), `${fk.from} -> ${fk.to}`).toBe(true);
        }
      }

      // Citus makes sequences unique per node by their high bits: smaller than BIGINT, inserts on workers fail.
      const serials = await db.query<{ table: string; type: string }>(
        `SELECT table_name AS table, data_type AS type FROM information_schema.columns
         WHERE table_schema = 'public' AND table_name = ANY($1) AND (column_default LIKE 'nextval(%' OR is_identity = 'YES')`,
        [names],
      );
      expect(serials.length).toBeGreaterThan(0);
      for (const s of serials) expect(s.type, s.table).toBe('bigint');

      expect(await db.query(`SELECT 1 FROM pg_rules WHERE schemaname = 'public' AND tablename = ANY($1)`, [names])).toEqual([]);

      const triggers = await db.query<{ table: string; names: string[] }>(
        `SELECT c.relname AS table, array_agg(g.tgname::text ORDER BY g.tgname) AS names FROM pg_trigger g JOIN pg_class c ON c.oid = g.tgrelid
         WHERE NOT g.tgisinternal AND c.relname = ANY($1) AND c.relnamespace = 'public'::regnamespace GROUP BY 1`,
        [names],
      );
      expect(Object.fromEntries(triggers.map((r) => [r.table, r.names]))).toEqual(TRIGGERS);
    });

    it('security: every installed function that touches an account-scoped table takes the account, writes with its row\'s, or is pinned', async () => {
      const db = await live();
      const fns = await liveFunctions(db.query);
      const tables = Object.keys(ACCOUNT_SCOPED).sort((a, b) => b.length - a.length);
      const unexplained: string[] = [];
      for (const f of fns) {
        if (!tables.some((n) => f.src.includes(`"${n}"`))) continue;
        if (f.trigger) {
          // A trigger writes another account-scoped row only with its own row's account.
          if (/INSERT INTO/i.test(f.src)) expect(f.src, f.name).toMatch(/\b(NEW|OLD)\.account_id\b/);
          continue;
        }
        if ((f.args ?? []).some((a) => /account/.test(a))) continue;
        if (!(f.name in FUNCTION_EXCEPTIONS)) unexplained.push(f.name);
      }
      expect(unexplained).toEqual([]);
      for (const name of Object.keys(FUNCTION_EXCEPTIONS)) expect(fns.map((f) => f.name)).toContain(name);
      console.log(`live signatures:\n${fns.map((f) => `  ${f.signature}`).join('\n')}`);
    });

    it('security: the live functions hold no cross-account join and no unpinned row lock beyond the pinned ones', async () => {
      const db = await live();
      const fns = await liveFunctions(db.query);
      const names = Object.entries({ ...ACCOUNT_TOKENS, settings: `${TABLE}_settings`, rate_windows: `${TABLE}_rate_windows` }).sort((a, b) => b[1].length - a[1].length);
      const tokenized = fns.map((f) => ({ source: `live:${f.name}`, sql: names.reduce((s, [tok, n]) => s.split(`"${n}"`).join(`@${tok}`), f.src) }));
      expect(tokenized.some((f) => f.sql.includes('@keys'))).toBe(true);
      expect(unmatched(tokenized.flatMap((f) => joinViolations(f.source, f.sql)), JOIN_EXCEPTIONS).unexplained).toEqual([]);
      expect(unmatched(tokenized.flatMap((f) => forUpdateViolations(f.source, f.sql)), FOR_UPDATE_EXCEPTIONS).unexplained).toEqual([]);
    });

    it('happy: docs/scaling.md names the live signatures and tables, so it cannot rot', async () => {
      const db = await live();
      const doc = fs.readFileSync(path.join(ROOT, 'docs/scaling.md'), 'utf8');
      const block = /<!-- live-signatures -->\s*```sql\n([\s\S]*?)```/.exec(doc)?.[1] ?? '';
      const inDoc = [...block.matchAll(/'([^']+\([^']*\))'/g)].map((m) => m[1]);
      const fns = await liveFunctions(db.query);
      expect(inDoc.sort()).toEqual(fns.filter((f) => /_(spend_many|spend|settle|rate_take)$/.test(f.name)).map((f) => f.signature).sort());
      const distributed = [...doc.matchAll(/create_distributed_table\('(\w+)'/g)].map((m) => m[1]);
      expect(new Set(distributed)).toEqual(new Set([...Object.keys(ACCOUNT_SCOPED), bare(t.rateWindows)]));
      const reference = [...doc.matchAll(/create_reference_table\('(\w+)'/g)].map((m) => m[1]);
      expect(new Set(reference)).toEqual(new Set(Object.entries(GLOBAL).filter(([, g]) => g.citus === 'reference').map(([n]) => n)));
      // Every constraint and index the doc drops exists under that name.
      for (const m of doc.matchAll(/DROP (CONSTRAINT|INDEX) (\w+)/g)) {
        expect(await db.query(`SELECT 1 FROM pg_class WHERE relname = $1`, [m[2]]), m[2]).toHaveLength(1);
      }
    });
  });
}, ['postgres']);

interface LiveFunction { name: string; signature: string; args: string[] | null; trigger: boolean; src: string }

/** The functions migrate() installs (definitions.ts), as pg_proc has them. */
async function liveFunctions(query: <R>(text: string, params?: unknown[]) => Promise<R[]>): Promise<LiveFunction[]> {
  return query<LiveFunction>(
    `SELECT p.proname::text AS name, p.oid::regprocedure::text AS signature, p.proargnames::text[] AS args,
            p.prorettype = 'trigger'::regtype AS trigger, p.prosrc AS src
     FROM unnest($1::text[]) s JOIN pg_proc p ON p.oid = to_regprocedure(s) ORDER BY 1`,
    [functionDefinitions(t).flatMap((d) => (d.kind === 'function' ? [d.signature] : []))],
  );
}
