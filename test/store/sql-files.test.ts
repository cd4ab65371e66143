import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { functionDefinitions, triggerDefinitions } from '../../src/store/definitions.js';
import { tableNames } from '../../src/store/identifiers.js';
import { renderSql, statements } from '../../src/store/sql/render.js';

/** The .sql files of the store: each one used, every placeholder known, migrations safe to split. */

const DIR = fileURLToPath(new URL('../../src/store/sql/', import.meta.url));
const files = (sub: string) => fs.readdirSync(path.join(DIR, sub)).filter((f) => f.endsWith('.sql')).map((f) => path.join(DIR, sub, f));
const read = (file: string) => fs.readFileSync(file, 'utf8');

describe('the SQL files', () => {
  const t = tableNames('billing.api_keys');

  it('happy: every file renders for a schema-qualified table with no placeholder left, from the table names only', () => {
    for (const file of [...files('functions'), ...files('triggers'), ...files('migrations')]) {
      const sql = renderSql(read(file), t);
      expect(sql, file).not.toMatch(/\{\{\w+\}\}/);
      expect(sql, file).not.toContain('undefined');
    }
    expect(renderSql('SELECT 1 FROM {{ledger}} JOIN {{table}} ON true', t)).toBe('SELECT 1 FROM "billing"."api_keys_ledger" JOIN "billing"."api_keys" ON true');
  });

  it('error: an unknown placeholder is refused, not left in the SQL', () => {
    expect(() => renderSql('SELECT 1 FROM {{ledgr}}', t)).toThrow(/unknown placeholder \{\{ledgr\}\}/);
  });

  it('happy: each function and trigger file is one live definition, and each definition one file', () => {
    const defs = [...functionDefinitions(t), ...triggerDefinitions(t)];
    const texts = [...files('functions'), ...files('triggers')].map((f) => renderSql(read(f), t));
    expect(defs.map((d) => d.sql).sort()).toEqual(texts.sort());
    for (const d of functionDefinitions(t)) expect(d.sql).toMatch(/CREATE OR REPLACE FUNCTION "billing"\./);
  });

  it('happy: migration files hold plain statements (no function definitions, a DO block on one line), split where a line ends with a semicolon', () => {
    for (const file of files('migrations')) {
      expect(read(file), file).not.toMatch(/CREATE\s+(OR\s+REPLACE\s+)?FUNCTION/i);
      // A dollar-quoted body opens and closes on its line, so the splitter never cuts inside one.
      for (const line of read(file).split('\n')) expect((line.match(/\$\w*\$/g) ?? []).length % 2, `${file}: ${line}`).toBe(0);
    }
    const start = (s: string) => s.split('\n').filter((line) => !line.trim().startsWith('--')).join(' ').trim().split(/\s+/).slice(0, 2).join(' ');
    expect(statements(read(path.join(DIR, 'migrations/003_trees.sql'))).map(start)).toEqual([
      'ALTER TABLE', 'CREATE TABLE', 'ALTER TABLE', 'UPDATE {{holds}}', 'ALTER TABLE',
    ]);
  });
});
