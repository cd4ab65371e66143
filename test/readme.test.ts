import fs from 'node:fs';
import path from 'node:path';
import { expect, it } from 'vitest';
import { createApp } from '../src/server/index.js';
import { forEachDatabase } from './helpers/databases.js';
import { ROOT } from './helpers/processes.js';

/**
 * The README's first curl example, run as written (in-process, on both databases): each
 * command's route, headers and body, and every "field":value its `# =>` comment shows.
 */

interface Step {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: string | undefined;
  shown: string | undefined;
}

function readmeSteps(): Step[] {
  const readme = fs.readFileSync(path.join(ROOT, 'README.md'), 'utf8');
  const block = /```sh\n([\s\S]*?)```/g;
  let match: RegExpExecArray | null;
  while ((match = block.exec(readme))) {
    const text = match[1] as string;
    if (!text.includes('curl')) continue;
    const lines = text.replace(/\\\n\s*/g, ' ').split('\n');
    const steps: Step[] = [];
    lines.forEach((line, i) => {
      const curl = /^curl -s (\S+)(.*)$/.exec(line.trim());
      if (!curl) return;
      const rest = curl[2] as string;
      const headers: Record<string, string> = {};
      for (const h of rest.matchAll(/-H (?:"([^"]+)"|'([^']+)')/g)) {
        const [name, ...value] = (h[1] ?? h[2] ?? '').split(':');
        headers[(name as string).trim().toLowerCase()] = value.join(':').trim();
      }
      const data = /-d (?:'([^']*)'|"((?:[^"\\]|\\.)*)")/.exec(rest);
      const body = data ? (data[1] ?? (data[2] as string).replace(/\\"/g, '"')) : undefined;
      const next = lines[i + 1]?.trim();
      steps.push({
        method: body !== undefined ? 'POST' : 'GET',
        path: new URL(`http://${curl[1]}`).pathname,
        headers,
        body,
        shown: next?.startsWith('# =>') ? next.slice(4).trim() : undefined,
      });
    });
    return steps;
  }
  throw new Error('the README has no sh block with curl');
}

/** Every complete "field":value pair of a `# =>` comment ("ak_..." placeholders skipped). */
function shownFields(shown: string): Record<string, unknown> {
  const fields: Record<string, unknown> = {};
  for (const m of shown.matchAll(/"(\w+)":("[^"]*"|-?[\d.]+|true|false|null|\[[^\]]*\])/g)) {
    const value = JSON.parse(m[2] as string) as unknown;
    if (typeof value === 'string' && value.endsWith('...')) continue;
    fields[m[1] as string] = value;
  }
  return fields;
}

forEachDatabase((getDb) => {
  it('happy: the quick start curl commands work as written and answer what the README shows', async () => {
    const steps = readmeSteps();
    expect(steps.map((s) => `${s.method} ${s.path}`)).toEqual(['POST /v1/keys', 'POST /v1/verify', 'POST /v1/charge']);
    const ak = await getDb().agentKey();
    const admin = 'akadmin_readme_test_0123456789';
    const { app } = createApp(ak, { adminKey: admin });
    let key = '';
    for (const step of steps) {
      const headers = Object.fromEntries(Object.entries(step.headers).map(([k, v]) => [k, v.replace('$ADMIN', admin)]));
      const res = await app.request(step.path, { method: step.method, headers, body: step.body?.replace('$KEY', key) });
      const body = (await res.json()) as Record<string, unknown>;
      expect(res.status, JSON.stringify(body)).toBeLessThan(300);
      if (step.path === '/v1/keys') key = body.key as string;
      expect(step.shown, `${step.path} has a # => line`).toBeDefined();
      const fields = shownFields(step.shown as string);
      expect(Object.keys(fields).length).toBeGreaterThan(1);
      expect(body).toMatchObject(fields);
    }
    expect(key).toMatch(/^ak_/);
  });
});
