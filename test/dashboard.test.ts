import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { AddressInfo } from 'node:net';
import { PGlite } from '@electric-sql/pglite';
import { serve } from '@hono/node-server';
import { type Browser, type Page, chromium } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentKey } from '../src/index.js';
import { type RunningServer, createApp, startServer } from '../src/server/index.js';
import { usePgBouncer } from './helpers/pgbouncer.js';
import { priced } from './helpers/metered.js';
import { ROOT } from './helpers/processes.js';

/**
 * The dashboard end to end: the real service (embedded PGlite) and Debian's chromium
 * driven by playwright-core. Keys are created and charged over the HTTP API, as an
 * operator's agents would; the browser must show them. Screenshots go to
 * test-results/dashboard/ for a person to look at.
 */

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const ADMIN = 'akadmin_dashboard_test_0123456789';
const SHOTS = path.join(ROOT, 'test-results/dashboard');

let browser: Browser;
let server: RunningServer;
let dataDir: string;

async function call(method: string, route: string, body?: unknown, admin = true) {
  const res = await fetch(server.url + route, {
    method,
    headers: { ...(admin ? { authorization: `Bearer ${ADMIN}` } : {}), ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const json = (await res.json()) as Record<string, any>;
  if (!res.ok) throw new Error(`${method} ${route} -> ${res.status} ${JSON.stringify(json)}`);
  return json;
}

async function signIn(page: Page, key = ADMIN) {
  await page.goto(`${server.url}/dashboard`);
  await page.getByLabel('Admin key').fill(key);
  await page.getByRole('button', { name: 'Sign in' }).click();
}

/** A new page, signed in, on key `id`'s page, with its errors watched. */
async function openKeyPage(id: number | string): Promise<{ page: Page; errors: string[] }> {
  const page = await browser.newPage();
  const errors = watchErrors(page);
  await signIn(page);
  await page.goto(`${server.url}/dashboard#/keys/${id}`);
  return { page, errors };
}

async function shot(page: Page, name: string) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage: true });
}

/** Fails on any error the page logs or throws: a broken script must not pass as an empty page. */
function watchErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(err.message));
  page.on('console', (msg) => {
    if (msg.type() === 'error') errors.push(msg.text());
  });
  return errors;
}

const keys: Record<string, { id: number; key: string }> = {};

beforeAll(async () => {
  if (!fs.existsSync(CHROMIUM)) {
    throw new Error(`chromium is not at ${CHROMIUM}: run "apt-get install -y chromium" (.ci/run does), or set CHROMIUM_PATH.`);
  }
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--no-first-run'],
  });
  dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'agentkey-dashboard-'));
  server = await startServer({ dataDir, port: 0, host: '127.0.0.1', adminKey: ADMIN });

  const make = async (name: string, body: Record<string, unknown>) => {
    const k = await call('POST', '/v1/keys', { name, ...body });
    keys[name] = { id: k.id, key: k.key };
  };
  await make('sales-agent', { accountId: 'acct_acme', scopes: ['proxy.chat'], budgetCents: 500, budgetPeriod: 'month' });
  await make('research-sub', { accountId: 'acct_acme', parentId: keys['sales-agent']!.id, budgetCents: 200 });
  await make('deep-sub', { accountId: 'acct_acme', parentId: keys['research-sub']!.id, budgetCents: 50 });
  await make('batch-bot', { accountId: 'acct_zeta', budgetCents: 10_000 });
  await call('PUT', '/v1/accounts/acct_acme/budget', { budgetCents: 2000, budgetPeriod: 'month' });
  await call('POST', '/v1/charge', { key: keys['sales-agent']!.key, costCents: 125, metadata: { model: 'gpt-test', inputTokens: 1200 } }, false);
  await call('POST', '/v1/charge', { key: keys['research-sub']!.key, costCents: 30 }, false);
  await call('POST', '/v1/reservations', { key: keys['sales-agent']!.key, costCents: 50, ttl: '1h' }, false);
  await call('POST', '/v1/charge', { key: keys['batch-bot']!.key, costCents: 7.5 }, false);
}, 120_000);

afterAll(async () => {
  await browser?.close();
  await server?.close();
  if (dataDir) fs.rmSync(dataDir, { recursive: true, force: true });
});

describe('dashboard', () => {
  it('security: a wrong admin key is refused and nothing is shown; the key never goes in the URL', async () => {
    const page = await browser.newPage();
    const errors = watchErrors(page);
    await signIn(page, 'akadmin_not_the_right_key_000000');
    await expect.poll(() => page.locator('#sign-in-error').textContent()).toContain('not the admin key');
    expect(await page.locator('#view').isHidden()).toBe(true);
    expect(page.url()).not.toContain('akadmin');
    // The browser logs the refused request itself; nothing else may go wrong.
    expect(errors.filter((e) => !e.includes('status of 401'))).toEqual([]);
    await page.close();
  });

  it('happy: signing in shows accounts and every key with its spend, held and remaining money in dollars', async () => {
    const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
    const errors = watchErrors(page);
    await signIn(page);
    const row = (name: string) => page.locator('#keys tbody tr', { hasText: name });
    await expect.poll(() => row('sales-agent').count()).toBe(1);
    expect(page.url()).not.toContain(ADMIN);
    expect(await page.evaluate("sessionStorage.getItem('agentkey.adminKey')")).toBe(ADMIN);

    // sales-agent: $1.25 own + $0.30 by its child = $1.55 spent, $0.50 held, $2.95 left of $5.00.
    const sales = row('sales-agent');
    expect(await sales.locator('.amount-spent').textContent()).toBe('$1.55');
    expect(await sales.locator('.amount-held').textContent()).toBe('$0.50');
    expect(await sales.locator('.amount-remaining').textContent()).toBe('$2.95');
    expect(await sales.locator('.amount-budget').textContent()).toBe('$5.00');
    expect(await sales.locator('.bar').getAttribute('aria-label')).toBe('Spent $1.55, held $0.50, remaining $2.95 of $5.00');
    expect(await sales.locator('.status').textContent()).toBe('active');
    expect(await sales.textContent()).toContain('proxy.chat');
    expect(await sales.textContent()).toContain('per month');
    expect(await row('batch-bot').locator('.amount-spent').textContent()).toBe('$0.075');

    const acme = page.locator('#accounts tr[data-account="acct_acme"]');
    expect(await acme.locator('.amount-spent').textContent()).toBe('$1.55');
    expect(await acme.locator('.amount-budget').textContent()).toBe('$20.00');
    expect(await page.locator('#accounts tr[data-account="acct_zeta"]').textContent()).toContain('no ceiling');
    await shot(page, 'overview-desktop');
    expect(errors).toEqual([]);
    await page.close();
  });

  it('happy: filters by account and status, and sorts by spend', async () => {
    const page = await browser.newPage();
    await signIn(page);
    await page.locator('#keys').waitFor();
    const names = () => page.locator('#keys tbody tr th a').allTextContents();
    expect(await names()).toEqual(['sales-agent', 'research-sub', 'batch-bot', 'deep-sub']);
    await page.getByLabel('Account', { exact: true }).selectOption('acct_zeta');
    await expect.poll(names).toEqual(['batch-bot']);
    await page.getByLabel('Account', { exact: true }).selectOption('');
    await page.getByLabel('Status').selectOption('revoked');
    await expect.poll(() => page.locator('#view .empty').last().textContent()).toBe('No key matches these filters.');
    await page.getByLabel('Status').selectOption('');
    await page.getByLabel('Sort by').selectOption('name');
    await expect.poll(names).toEqual(['batch-bot', 'deep-sub', 'research-sub', 'sales-agent']);
    await page.close();
  });

  it('happy: the overview refreshes by itself, so a running agent\'s spend moves', async () => {
    const page = await browser.newPage();
    await signIn(page);
    const spent = page.locator('#keys tbody tr', { hasText: 'batch-bot' }).locator('.amount-spent');
    await expect.poll(() => spent.textContent()).toBe('$0.075');
    await call('POST', '/v1/charge', { key: keys['batch-bot']!.key, costCents: 100 }, false);
    // No reload, no click: the page polls.
    await expect.poll(() => spent.textContent(), { timeout: 20_000 }).toBe('$1.075');
    await page.close();
  });

  it('happy: a key page shows its chart, ledger rows with metadata, and its children with bars', async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
    const errors = watchErrors(page);
    await signIn(page);
    await page.locator('#keys tbody tr th a', { hasText: 'sales-agent' }).click();
    await page.locator('#chart canvas').waitFor();
    expect(page.url()).toMatch(new RegExp(`#/keys/${keys['sales-agent']!.id}$`));
    expect(await page.locator('#view h1').textContent()).toContain('sales-agent');
    // The ledger: the charge with its model, and the hold.
    const ledger = page.locator('#ledger tbody tr');
    expect(await ledger.count()).toBe(2);
    const rows = await ledger.allTextContents();
    expect(rows.some((r) => r.includes('charge') && r.includes('$1.25') && r.includes('model: gpt-test'))).toBe(true);
    expect(rows.some((r) => r.includes('hold') && r.includes('$0.50'))).toBe(true);
    expect(await page.locator('#chart-total').textContent()).toContain('$1.25 over 1 call');
    const box = await page.locator('#chart canvas').boundingBox();
    expect(box?.width).toBeGreaterThan(200);
    expect(box?.height).toBeGreaterThan(100);
    const child = page.locator('#children li', { hasText: 'research-sub' });
    expect(await child.locator('.amount-spent').textContent()).toBe('$0.30');
    expect(await child.locator('.amount-budget').textContent()).toBe('$2.00');
    // Reached by a link (a hash change), the page still has both actions.
    expect(await page.getByRole('button', { name: 'Create child key' }).count()).toBe(1);
    expect(await page.getByRole('button', { name: 'Revoke key' }).count()).toBe(1);
    await page.getByLabel('Buckets').selectOption('day');
    await expect.poll(() => page.locator('#chart').getAttribute('aria-label')).toBe('Spend per day: $1.25 in total');
    await shot(page, 'key-desktop');
    expect(errors).toEqual([]);
    await page.close();
  });

  it('happy: creating a child key shows the raw key once, and that key works', async () => {
    const page = await browser.newPage();
    await signIn(page);
    await page.goto(`${server.url}/dashboard#/keys/${keys['batch-bot']!.id}`);
    await page.getByLabel('Name').fill('batch-helper');
    await page.getByLabel('Budget (cents)').fill('250');
    await page.getByRole('button', { name: 'Create child key' }).click();
    const raw = (await page.locator('#raw-key').textContent()) ?? '';
    expect(raw).toMatch(/^ak_/);
    await shot(page, 'child-created');
    const verified = await call('POST', '/v1/verify', { key: raw }, false);
    expect(verified).toMatchObject({ valid: true, name: 'batch-helper', budgetCents: 250, accountId: 'acct_zeta' });
    expect(await page.locator('#children li', { hasText: 'batch-helper' }).count()).toBe(1);
    // Shown once: a reload does not bring it back.
    await page.reload();
    await page.locator('#children').waitFor();
    expect(await page.content()).not.toContain(raw);
    await page.close();
  });

  it('happy: revoking asks first; then the key and its whole subtree show as revoked', async () => {
    const page = await browser.newPage();
    await signIn(page);
    await page.goto(`${server.url}/dashboard#/keys/${keys['research-sub']!.id}`);
    await page.getByRole('button', { name: 'Revoke key' }).click();
    expect(await page.locator('#confirm').isVisible()).toBe(true);
    expect(await page.locator('#confirm-text').textContent()).toContain('1 active child key');
    // Cancel changes nothing.
    await page.getByRole('button', { name: 'Cancel' }).click();
    expect((await call('GET', `/v1/keys/${keys['research-sub']!.id}`)).status).toBe('active');
    await page.getByRole('button', { name: 'Revoke key' }).click();
    await page.locator('#confirm-ok').click();
    await expect.poll(() => page.locator('#view h1 .badge').textContent()).toBe('revoked');
    expect(await page.locator('#children li', { hasText: 'deep-sub' }).locator('.badge').textContent()).toBe('revoked');
    expect((await call('GET', `/v1/keys/${keys['deep-sub']!.id}`)).status).toBe('revoked');
    expect((await call('GET', `/v1/keys/${keys['sales-agent']!.id}`)).status).toBe('active');
    await page.locator('a', { hasText: 'Overview' }).click();
    const status = (name: string) => page.locator('#keys tbody tr', { hasText: name }).locator('.status').textContent();
    await expect.poll(() => status('research-sub')).toBe('revoked');
    expect(await status('deep-sub')).toBe('revoked');
    expect(await status('sales-agent')).toBe('active');
    await page.close();
  });

  it('happy: readable on a phone: no horizontal overflow of the page itself', async () => {
    const page = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
    await signIn(page);
    await page.locator('#keys').waitFor();
    await shot(page, 'overview-phone');
    const overflow = await page.evaluate('document.documentElement.scrollWidth - document.documentElement.clientWidth');
    expect(overflow).toBeLessThanOrEqual(0);
    await page.goto(`${server.url}/dashboard#/keys/${keys['sales-agent']!.id}`);
    await page.locator('#chart canvas').waitFor();
    await shot(page, 'key-phone');
    expect(await page.evaluate('document.documentElement.scrollWidth - document.documentElement.clientWidth')).toBeLessThanOrEqual(0);
    await page.close();
  });

  it('happy: an external subject (a JWT or Clerk machine) shows as a key named by its subject, with its spend', async () => {
    await server.ak.ensureSubject('mch_dashboard', { accountId: 'acct_ext', budgetCents: 300 });
    expect(await server.ak.trackUsageBySubject('mch_dashboard', { costCents: 40 })).toMatchObject({ success: true });
    const page = await browser.newPage();
    await signIn(page);
    const row = page.locator('#keys tbody tr', { hasText: 'subject mch_dashboard' });
    await expect.poll(() => row.count()).toBe(1);
    expect(await row.locator('.amount-spent').textContent()).toBe('$0.40');
    expect(await row.locator('.amount-budget').textContent()).toBe('$3.00');
    await row.locator('th a').click();
    await page.locator('#chart canvas').waitFor();
    expect(await page.locator('#view .grid').first().textContent()).toContain('External subjectmch_dashboard');
    // A subject's budget row has no secret of its own to rotate.
    expect(await page.getByRole('button', { name: 'Rotate secret' }).count()).toBe(0);
    await page.close();
  });

  it('happy: every asset comes from the service itself', async () => {
    const page = await browser.newPage();
    const origins = new Set<string>();
    page.on('request', (req) => origins.add(new URL(req.url()).origin));
    await signIn(page);
    await page.locator('#keys').waitFor();
    expect([...origins]).toEqual([new URL(server.url).origin]);
    const res = await fetch(`${server.url}/dashboard`);
    expect(res.headers.get('content-security-policy')).toContain("default-src 'self'");
    await page.close();
  });

  it('security: text with an escape sequence, BEL or a right-to-left override (here in metadata, which is free JSON) is shown escaped, not acted on', async () => {
    const k = await call('POST', '/v1/keys', { accountId: 'acct_meta', name: 'meta-bot', budgetCents: 100 });
    await call('POST', '/v1/charge', { key: k.key, costCents: 1, metadata: { note: 'x\u001b[31m\u202eevil\u0007' } }, false);
    const { page, errors } = await openKeyPage(k.id);
    const ledger = page.locator('#ledger tbody tr');
    await ledger.first().waitFor();
    const rows = await ledger.allTextContents();
    expect(rows.some((r) => r.includes('note: x\\x1b[31m\\u202eevil\\x07')), rows.join('\n')).toBe(true);
    expect(rows.join('\n')).not.toMatch(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/);
    expect(errors).toEqual([]);
    await page.close();
  });

  it('happy: overage shows in red beside the spend, on the key, in its window total and as its own ledger rows, and on the account', async () => {
    const k = await call('POST', '/v1/keys', { accountId: 'acct_over', name: 'over-bot', budgetCents: 1 });
    const hold = await call('POST', '/v1/reservations', { key: k.key, costCents: 1 }, false);
    expect(await call('POST', `/v1/reservations/${hold.reservationId}/commit`, { key: k.key, costCents: 3 }, false)).toMatchObject({ chargedCents: 1, overageCents: 2 });
    const { page, errors } = await openKeyPage(k.id);
    const amount = page.locator('#key-budget .amount-overage');
    await amount.waitFor();
    expect(await amount.textContent()).toBe('$0.02');
    const red = 'rgb(185, 28, 28)';
    expect(await amount.evaluate((e) => (globalThis as unknown as { getComputedStyle(e: unknown): { color: string } }).getComputedStyle(e).color)).toBe(red);
    expect(await page.locator('#key-budget .amount-spent').textContent()).toBe('$0.01');
    expect(await page.locator('#chart-total').textContent()).toContain('$0.02 overage');
    const overageRow = page.locator('#ledger tbody tr', { hasText: 'overage' });
    expect(await overageRow.count()).toBe(1);
    expect(await overageRow.locator('.kind').evaluate((e) => (globalThis as unknown as { getComputedStyle(e: unknown): { color: string } }).getComputedStyle(e).color)).toBe(red);
    expect(await overageRow.locator('td.num').textContent()).toBe('$0.02');
    await page.goto(`${server.url}/dashboard#/`);
    const account = page.locator('tr', { hasText: 'acct_over' }).locator('.overage');
    await account.first().waitFor();
    expect(await account.first().textContent()).toContain('$0.02 overage');
    await shot(page, 'overage');
    expect(errors).toEqual([]);
    await page.close();
  });

  it('happy: a total past $5 billion (an exact decimal string in the API) is shown digit for digit', async () => {
    const k = await call('POST', '/v1/keys', { accountId: 'acct_huge', name: 'huge-bot' });
    for (const costCents of [500_000_000_000, 500_000_000_000, '0.0001']) await call('POST', '/v1/charge', { key: k.key, costCents }, false);
    expect((await call('GET', `/v1/keys/${k.id}`)).spentCents).toBe('1000000000000.0001');
    const page = await browser.newPage();
    const errors = watchErrors(page);
    await signIn(page);
    const row = page.locator('#keys tbody tr', { hasText: 'huge-bot' });
    await expect.poll(() => row.count()).toBe(1);
    // An unlimited key's bar is its text: what it spent, and no cap.
    expect(await row.locator('.bar-text').textContent()).toContain('$10,000,000,000.000001 spent');
    expect(errors).toEqual([]);
    await page.close();
  });

  it('happy: editing a key\'s name and budget from its page sends only those fields, and the page and the stored key show the change', async () => {
    const k = await call('POST', '/v1/keys', { accountId: 'acct_edit', name: 'edit-me', scopes: ['proxy.chat'], budgetCents: 100, budgetPeriod: 'month', expiresIn: '30d', delegatedBy: 'ops' });
    const before = await call('GET', `/v1/keys/${k.id}`);
    const page = await browser.newPage();
    const errors = watchErrors(page);
    const patches: unknown[] = [];
    page.on('request', (req) => {
      if (req.method() === 'PATCH') patches.push(req.postDataJSON());
    });
    await signIn(page);
    await page.goto(`${server.url}/dashboard#/keys/${k.id}`);
    await page.getByRole('button', { name: 'Edit key' }).click();
    const form = page.locator('#edit-form');
    // The form starts with the key as it is.
    expect(await form.getByLabel('Name').inputValue()).toBe('edit-me');
    expect(await form.getByLabel('Budget in cents').inputValue()).toBe('100');
    expect(await form.getByLabel('Period').inputValue()).toBe('month');
    expect(await form.getByLabel('Scopes').inputValue()).toBe('proxy.chat');
    expect(await form.getByLabel('Delegated by').inputValue()).toBe('ops');
    expect(await form.getByLabel('No expiry').isChecked()).toBe(false);
    await form.getByLabel('Name').fill('edited-name');
    await form.getByLabel('Budget in cents').fill('250');
    await form.getByRole('button', { name: 'Save changes' }).click();

    await page.locator('#view h1', { hasText: 'edited-name' }).waitFor({ timeout: 10_000 });
    expect(await page.locator('#key-budget .amount-budget').textContent()).toBe('$2.50');
    await page.locator('#edit-status', { hasText: 'Changes saved.' }).waitFor({ timeout: 10_000 });
    expect(await page.locator('#edit-form').count()).toBe(0);
    expect(await page.getByRole('button', { name: 'Edit key' }).count()).toBe(1);
    expect(patches).toEqual([{ name: 'edited-name', budgetCents: 250 }]);
    const after = await call('GET', `/v1/keys/${k.id}`);
    expect(after).toMatchObject({ name: 'edited-name', budgetCents: 250, scopes: ['proxy.chat'], budgetPeriod: 'month', delegatedBy: 'ops', expiresAt: before.expiresAt, status: 'active' });
    expect(errors).toEqual([]);
    await page.close();
  });

  it('refusal: narrowing a parent below its child shows the server\'s message and changes nothing; with cascade ticked the child is narrowed too', async () => {
    const parent = await call('POST', '/v1/keys', { accountId: 'acct_edit_tree', name: 'edit-parent', budgetCents: 1000 });
    const child = await call('POST', '/v1/keys', { accountId: 'acct_edit_tree', name: 'edit-child', parentId: parent.id, budgetCents: 600 });
    const { page, errors } = await openKeyPage(parent.id);
    await page.getByRole('button', { name: 'Edit key' }).click();
    const form = page.locator('#edit-form');
    await form.getByLabel('Budget in cents').fill('300');
    await form.getByRole('button', { name: 'Save changes' }).click();

    const error = page.locator('#edit-error');
    await error.filter({ hasText: 'would be wider than its parent' }).waitFor({ timeout: 10_000 });
    // The server's own message, naming the child, then a pointer to the checkbox.
    expect(await error.textContent()).toContain(`Key ${child.id}, a descendant of key ${parent.id}, would be wider than its parent (budget)`);
    expect(await error.textContent()).toContain('tick "Also narrow the keys under it (cascade)"');
    expect(await page.locator('#edit-cascade-label').getAttribute('class')).toContain('attention');
    expect(await page.evaluate('document.activeElement && document.activeElement.id')).toBe('edit-cascade');
    // The form keeps what was typed; nothing changed on the server or the page.
    expect(await form.getByLabel('Budget in cents').inputValue()).toBe('300');
    expect((await call('GET', `/v1/keys/${parent.id}`)).budgetCents).toBe(1000);
    expect((await call('GET', `/v1/keys/${child.id}`)).budgetCents).toBe(600);
    expect(await page.locator('#key-budget .amount-budget').textContent()).toBe('$10.00');
    await shot(page, 'edit-refused');

    await form.getByLabel('Also narrow the keys under it (cascade)').check();
    await form.getByRole('button', { name: 'Save changes' }).click();
    await page.locator('#key-budget .amount-budget', { hasText: '$3.00' }).waitFor({ timeout: 10_000 });
    expect(await page.locator('#children li', { hasText: 'edit-child' }).locator('.amount-budget').textContent()).toBe('$3.00');
    expect((await call('GET', `/v1/keys/${parent.id}`)).budgetCents).toBe(300);
    expect((await call('GET', `/v1/keys/${child.id}`)).budgetCents).toBe(300);
    // The browser logs the refused request itself; nothing else may go wrong.
    expect(errors.filter((e) => !e.includes('status of 409'))).toEqual([]);
    await page.close();
  });

  it("happy: a key's metadata is shown on its page and edited as JSON (empty removes it); text that is not JSON is refused beside the form", async () => {
    // Markup, and characters that must not hide on the page: a bidi override and a C1 control.
    const meta = { team: '<b>search</b>', note: 'a\u202eb\u0085c' };
    const k = await call('POST', '/v1/keys', { accountId: 'acct_edit_meta', name: 'meta', metadata: meta });
    const page = await browser.newPage();
    const errors = watchErrors(page);
    const patches: unknown[] = [];
    page.on('request', (req) => {
      if (req.method() === 'PATCH') patches.push(req.postDataJSON());
    });
    await signIn(page);
    await page.goto(`${server.url}/dashboard#/keys/${k.id}`);
    expect(await page.locator('#key-metadata').textContent()).toBe('{"note":"a\\u202eb\\x85c","team":"<b>search</b>"}');
    expect(await page.locator('#view b').count()).toBe(0);
    await page.getByRole('button', { name: 'Edit key' }).click();
    const form = page.locator('#edit-form');
    const field = form.getByLabel('Metadata');
    // In the form (keys in the order PostgreSQL keeps them), the hidden characters are JSON
    // escapes: the text parses back to the same object.
    expect(await field.inputValue()).toBe('{"note":"a\\u202eb\\u0085c","team":"<b>search</b>"}');
    expect(JSON.parse(await field.inputValue())).toEqual(meta);
    await field.fill('{team: ads}');
    await form.getByRole('button', { name: 'Save changes' }).click();
    await page.locator('#edit-error', { hasText: 'The metadata must be JSON' }).waitFor({ timeout: 10_000 });
    await field.fill('["not", "an object"]');
    await form.getByRole('button', { name: 'Save changes' }).click();
    await page.locator('#edit-error', { hasText: /metadata/ }).waitFor({ timeout: 10_000 });
    expect((await call('GET', `/v1/keys/${k.id}`)).metadata).toEqual(meta);
    await field.fill('{"team": "ads", "tier": 2}');
    await form.getByRole('button', { name: 'Save changes' }).click();
    await page.locator('#edit-status', { hasText: 'Changes saved.' }).waitFor({ timeout: 10_000 });
    expect(await page.locator('#key-metadata').textContent()).toBe('{"team":"ads","tier":2}');
    await page.getByRole('button', { name: 'Edit key' }).click();
    await page.locator('#edit-form').getByLabel('Metadata').fill('');
    await page.locator('#edit-form').getByRole('button', { name: 'Save changes' }).click();
    await page.locator('#edit-status', { hasText: 'Changes saved.' }).waitFor({ timeout: 10_000 });
    expect((await call('GET', `/v1/keys/${k.id}`)).metadata).toBeNull();
    expect(patches).toEqual([{ metadata: ['not', 'an object'] }, { metadata: { team: 'ads', tier: 2 } }, { metadata: null }]);
    // The refused PATCH is logged by the browser as a failed request; nothing else.
    expect(errors.filter((e) => !/status of 400/.test(e))).toEqual([]);
    await page.close();
  });

  it('security: a name with markup typed into the edit form is stored and shown as text, not markup', async () => {
    const k = await call('POST', '/v1/keys', { accountId: 'acct_edit_xss', name: 'plain-name', budgetCents: 100 });
    const markup = '<img src=x onerror=alert(1)>';
    const page = await browser.newPage();
    const errors = watchErrors(page);
    const dialogs: string[] = [];
    page.on('dialog', async (d) => {
      dialogs.push(d.message());
      await d.dismiss();
    });
    await signIn(page);
    await page.goto(`${server.url}/dashboard#/keys/${k.id}`);
    await page.getByRole('button', { name: 'Edit key' }).click();
    await page.locator('#edit-form').getByLabel('Name').fill(markup);
    await page.locator('#edit-form').getByRole('button', { name: 'Save changes' }).click();

    await page.locator('#view h1', { hasText: markup }).waitFor({ timeout: 10_000 });
    expect(await page.locator('#view h1').textContent()).toContain(markup);
    expect(await page.locator('#view img').count()).toBe(0);
    expect((await call('GET', `/v1/keys/${k.id}`)).name).toBe(markup);
    // Opened again, the form holds the same text; on the overview the link's text is the markup, as text.
    await page.getByRole('button', { name: 'Edit key' }).click();
    expect(await page.locator('#edit-form').getByLabel('Name').inputValue()).toBe(markup);
    await page.goto(`${server.url}/dashboard#/`);
    const link = page.locator('#keys tbody tr th a', { hasText: markup });
    await link.waitFor({ timeout: 10_000 });
    expect(await link.textContent()).toBe(markup);
    expect(await page.locator('#view img').count()).toBe(0);
    expect(dialogs).toEqual([]);
    expect(errors).toEqual([]);
    await page.close();
  });

  it('refusal: a revoked key has no Edit control, and says why', async () => {
    const k = await call('POST', '/v1/keys', { accountId: 'acct_edit_revoked', name: 'gone-bot' });
    await call('POST', `/v1/keys/${k.id}/revoke`);
    const page = await browser.newPage();
    await signIn(page);
    await page.goto(`${server.url}/dashboard#/keys/${k.id}`);
    await page.locator('#edit-unavailable').waitFor({ timeout: 10_000 });
    expect(await page.locator('#edit-unavailable').textContent()).toBe('A revoked key cannot be edited.');
    expect(await page.getByRole('button', { name: 'Edit key' }).count()).toBe(0);
    await page.close();
  });

  it('happy: rotating with no grace shows the new secret once; it verifies, the old one is refused at once, and the new prefix shows', async () => {
    const k = await call('POST', '/v1/keys', { accountId: 'acct_rotate', name: 'rotate-me', budgetCents: 100 });
    const { page, errors } = await openKeyPage(k.id);
    await page.getByRole('button', { name: 'Rotate secret' }).click();
    const dialog = page.locator('#rotate-dialog');
    expect(await dialog.isVisible()).toBe(true);
    expect(await dialog.getByLabel('Not at all: it stops at once').isChecked()).toBe(true);
    await shot(page, 'rotate-dialog');
    await dialog.getByRole('button', { name: 'Rotate secret' }).click();

    const secret = page.locator('#rotated-secret');
    await secret.waitFor({ timeout: 10_000 });
    const raw = (await secret.textContent()) ?? '';
    expect(raw).toMatch(/^ak_/);
    expect(raw).not.toBe(k.key);
    expect(await page.locator('#rotate-note').textContent()).toBe('The previous secret stopped working at once.');
    expect(await page.locator('#rotate-dialog').count()).toBe(0);
    expect(await call('POST', '/v1/verify', { key: raw }, false)).toMatchObject({ valid: true, name: 'rotate-me' });
    expect(await call('POST', '/v1/verify', { key: k.key }, false)).toMatchObject({ valid: false });
    // The page refreshed: the new prefix shows; the secret box stays until Done.
    const { prefix } = await call('GET', `/v1/keys/${k.id}`);
    expect(raw.startsWith(prefix)).toBe(true);
    await expect.poll(() => page.locator('#view .grid').first().textContent()).toContain(`Prefix${prefix}`);
    expect(await page.locator('#rotated-secret').textContent()).toBe(raw);
    await shot(page, 'rotated');
    // Shown once: a reload does not bring it back.
    await page.reload();
    await page.locator('#history').waitFor();
    expect(await page.content()).not.toContain(raw);
    expect(errors).toEqual([]);
    await page.close();
  });

  it('happy: rotating with a 1 hour grace period says until when the old secret works, and it still does', async () => {
    const k = await call('POST', '/v1/keys', { accountId: 'acct_rotate', name: 'rotate-grace' });
    const { page, errors } = await openKeyPage(k.id);
    await page.getByRole('button', { name: 'Rotate secret' }).click();
    await page.locator('#rotate-dialog').getByLabel('For 1 hour').check();
    const started = Date.now();
    await page.locator('#rotate-ok').click();
    const note = page.locator('#rotate-note');
    await note.waitFor({ timeout: 10_000 });
    const text = (await note.textContent()) ?? '';
    const until = /works until (\d{4}-\d\d-\d\d) (\d\d:\d\d) UTC, then is refused\./.exec(text);
    expect(until, text).not.toBeNull();
    const at = Date.parse(`${until![1]}T${until![2]}:00Z`);
    // Shown to the minute: within a minute of an hour from the click.
    expect(Math.abs(at - (started + 3600e3))).toBeLessThan(120e3);
    const raw = (await page.locator('#rotated-secret').textContent()) ?? '';
    expect(await call('POST', '/v1/verify', { key: raw }, false)).toMatchObject({ valid: true });
    expect(await call('POST', '/v1/verify', { key: k.key }, false)).toMatchObject({ valid: true });
    expect(errors).toEqual([]);
    await page.close();
  });

  it('refusal: a grace period past 7 days, then a key revoked meanwhile: the server\'s message shows beside the form and nothing rotates', async () => {
    const k = await call('POST', '/v1/keys', { accountId: 'acct_rotate', name: 'rotate-refused' });
    const { page, errors } = await openKeyPage(k.id);
    await page.getByRole('button', { name: 'Rotate secret' }).click();
    const dialog = page.locator('#rotate-dialog');
    // Typing a duration picks "another time"; the server judges it.
    await dialog.getByLabel('Other grace period').fill('8d');
    expect(await dialog.getByLabel('For another time').isChecked()).toBe(true);
    await page.locator('#rotate-ok').click();
    const error = page.locator('#rotate-error');
    await error.filter({ hasText: 'at most' }).waitFor({ timeout: 10_000 });
    expect(await error.textContent()).toBe("Invalid duration: 8d (gracePeriod must be at most 7 days, '7d').");
    expect(await dialog.getByLabel('Other grace period').inputValue()).toBe('8d');
    expect(await call('POST', '/v1/verify', { key: k.key }, false)).toMatchObject({ valid: true });

    await call('POST', `/v1/keys/${k.id}/revoke`);
    await dialog.getByLabel('Not at all: it stops at once').check();
    await page.locator('#rotate-ok').click();
    await error.filter({ hasText: 'revoked' }).waitFor({ timeout: 10_000 });
    expect(await error.textContent()).toBe(`Key ${k.id} is revoked; a revoked key cannot be rotated.`);
    expect(await page.locator('#rotated-secret').count()).toBe(0);
    await shot(page, 'rotate-refused');
    await dialog.getByRole('button', { name: 'Cancel' }).click();
    // The dialog leaves on its close event, a moment after the click.
    await expect.poll(() => page.locator('#rotate-dialog').count()).toBe(0);
    // Once the page knows, it offers no rotation.
    await page.locator('#rotate-unavailable').waitFor({ timeout: 20_000 });
    expect(await page.getByRole('button', { name: 'Rotate secret' }).count()).toBe(0);
    // The browser logs the refused requests itself; nothing else may go wrong.
    expect(errors.filter((e) => !/status of (400|409)/.test(e))).toEqual([]);
    await page.close();
  });

  it('happy: the history shows created, updated and rotated entries newest first, by whom, each change readable; markup in a name is text', async () => {
    const k = await call('POST', '/v1/keys', { accountId: 'acct_history', name: '<b>markup</b>', scopes: ['docs.read'], budgetCents: 100 });
    const child = await call('POST', '/v1/keys', { accountId: 'acct_history', name: 'history-child', parentId: k.id, budgetCents: 50 });
    await call('PATCH', `/v1/keys/${k.id}`, { name: 'plain', budgetCents: 250, scopes: null });
    await call('POST', `/v1/keys/${k.id}/rotate`, { gracePeriod: '1h' });
    // As self-serve does: the parent changes its child, recorded as the parent key's doing.
    await server.ak.update(child.id, { budgetCents: 20 }, { by: k.id });

    const { page, errors } = await openKeyPage(k.id);
    const entries = page.locator('#history > li');
    await entries.first().waitFor({ timeout: 10_000 });
    expect(await entries.evaluateAll((els) => els.map((e) => e.getAttribute('data-kind')))).toEqual(['rotated', 'updated', 'created']);
    expect(await page.locator('#history .actor').allTextContents()).toEqual(['admin', 'admin', 'admin']);
    expect(await page.locator('#history time').first().textContent()).toMatch(/^\d{4}-\d\d-\d\d \d\d:\d\d UTC$/);

    const change = (kind: string, field: string) => page.locator(`#history > li[data-kind="${kind}"] li[data-field="${field}"]`).textContent();
    expect(await change('updated', 'name')).toBe('name: <b>markup</b> → plain');
    expect(await change('updated', 'budgetCents')).toBe('budgetCents: $1.00 → $2.50');
    expect(await change('updated', 'scopes')).toBe('scopes: docs.read → all');
    expect(await change('created', 'name')).toBe('name: <b>markup</b>');
    expect(await change('rotated', 'previousKeyValidUntil')).toMatch(/^previousKeyValidUntil: \d{4}-\d\d-\d\d \d\d:\d\d UTC$/);
    expect(await page.locator('#history b, #view b').count()).toBe(0);
    await shot(page, 'history');

    // On the child's page, the change by the parent names it, linking to its page.
    await page.goto(`${server.url}/dashboard#/keys/${child.id}`);
    await page.locator('#view h1', { hasText: 'history-child' }).waitFor({ timeout: 10_000 });
    const byKey = page.locator('#history > li[data-kind="updated"]');
    await byKey.waitFor({ timeout: 10_000 });
    expect(await byKey.locator('.actor').textContent()).toBe(`key #${k.id}`);
    expect(await byKey.locator('li[data-field="budgetCents"]').textContent()).toBe('budgetCents: $0.50 → $0.20');
    await byKey.locator('.actor a').click();
    await page.locator('#view h1', { hasText: 'plain' }).waitFor({ timeout: 10_000 });
    expect(page.url()).toMatch(new RegExp(`#/keys/${k.id}$`));
    expect(errors).toEqual([]);
    await page.close();
  });

  it('happy: "Show older" pages the history with before, and a refresh keeps the older entries', async () => {
    const k = await call('POST', '/v1/keys', { accountId: 'acct_history', name: 'busy-0' });
    // 55 renames: 56 events, more than the page of 50.
    for (let i = 1; i <= 55; i++) await call('PATCH', `/v1/keys/${k.id}`, { name: `busy-${i}` });
    const page = await browser.newPage();
    const errors = watchErrors(page);
    const paged: string[] = [];
    page.on('request', (req) => {
      if (req.url().includes('/events?')) paged.push(new URL(req.url()).search);
    });
    await signIn(page);
    await page.goto(`${server.url}/dashboard#/keys/${k.id}`);
    const entries = page.locator('#history > li');
    await entries.first().waitFor({ timeout: 10_000 });
    expect(await entries.count()).toBe(50);
    expect(await entries.first().locator('li[data-field="name"]').textContent()).toBe('name: busy-54 → busy-55');
    const older = page.getByRole('button', { name: 'Show older' });
    expect(await older.isVisible()).toBe(true);
    await older.click();
    await expect.poll(() => entries.count()).toBe(56);
    expect(await entries.last().getAttribute('data-kind')).toBe('created');
    expect(await entries.last().locator('li[data-field="name"]').textContent()).toBe('name: busy-0');
    expect(await older.isHidden()).toBe(true);
    const lastOfFirstPage = await entries.nth(49).getAttribute('data-event-id');
    expect(paged).toContain(`?limit=50&before=${lastOfFirstPage}`);
    // A new change and the page's own refresh: the newest shows on top, the older pages stay.
    await call('PATCH', `/v1/keys/${k.id}`, { name: 'busy-56' });
    await expect.poll(() => entries.count(), { timeout: 20_000 }).toBe(57);
    expect(await entries.first().locator('li[data-field="name"]').textContent()).toBe('name: busy-55 → busy-56');
    expect(await entries.last().getAttribute('data-kind')).toBe('created');
    expect(errors).toEqual([]);
    await page.close();
  });

  it('happy: the overview lists recent events (a key.revoked row) and the Webhooks view shows each endpoint, its description as text, and its deliveries', async () => {
    const hook = await call('POST', '/v1/webhooks', { url: 'http://127.0.0.1:9/hook', description: '<b>x</b>' });
    const k = await call('POST', '/v1/keys', { accountId: 'acct_hooks', name: 'hook-victim', budgetCents: 100 });
    await call('POST', `/v1/keys/${k.id}/revoke`);
    const page = await browser.newPage();
    const errors = watchErrors(page);
    await signIn(page);
    const revoked = page.locator('#events tbody tr[data-type="key.revoked"]', { hasText: `key ${k.id}` });
    await expect.poll(() => revoked.count()).toBe(1);
    expect(await revoked.locator('.event-owner').textContent()).toBe(`key ${k.id} · acct_hooks`);
    expect(await revoked.locator('.event-summary').textContent()).toContain('revokedAt: ');

    await page.locator('#nav-webhooks').click();
    const card = page.locator(`#webhooks .webhook[data-webhook-id="${hook.id}"]`);
    await card.waitFor();
    expect(await card.locator('.webhook-url').textContent()).toBe('http://127.0.0.1:9/hook');
    // The description is text: the markup shows as typed, and no <b> element is made from it.
    expect(await card.locator('.webhook-description').textContent()).toBe('<b>x</b>');
    expect(await card.locator('.webhook-description b').count()).toBe(0);
    expect(await card.textContent()).toContain('every account');
    expect(await card.locator('.webhook-enabled').textContent()).toBe('enabled');
    // The revocation is queued for this endpoint; nothing listens on port 9, so it is never delivered.
    const delivery = card.locator('tr.delivery', { hasText: 'key.revoked' });
    await expect.poll(() => delivery.count(), { timeout: 15_000 }).toBeGreaterThan(0);
    expect(['pending', 'failed']).toContain(await delivery.first().getAttribute('data-status'));
    await shot(page, 'webhooks');
    expect(errors).toEqual([]);
    await page.close();
  });
});

describe('dashboard: rate limits', () => {
  it("happy: a key's rate and concurrency limits show on its page and are edited there (empty removes them); a bad one is refused beside the form; the accounts view shows an account's", async () => {
    const k = await call('POST', '/v1/keys', { accountId: 'acct_dash_rl', name: 'limited', rateLimit: { requests: 60, per: '1m' }, concurrency: 4 });
    await call('PUT', '/v1/accounts/acct_dash_rl/rate-limit', { rateLimit: { requests: 600, per: '1h' }, concurrency: 10 });
    const page = await browser.newPage();
    const errors = watchErrors(page);
    const patches: unknown[] = [];
    page.on('request', (req) => {
      if (req.method() === 'PATCH') patches.push(req.postDataJSON());
    });
    await signIn(page);
    const row = page.locator('#accounts tr[data-account="acct_dash_rl"] td.rate-limits');
    await row.waitFor({ timeout: 10_000 });
    expect(await row.textContent()).toBe('600 per 1h, 10 in flight');
    await page.goto(`${server.url}/dashboard#/keys/${k.id}`);
    await page.locator('#key-rate-limit').waitFor({ timeout: 10_000 });
    expect(await page.locator('#key-rate-limit').textContent()).toBe('60 per 1m');
    expect(await page.locator('#key-concurrency').textContent()).toBe('4 in flight');
    await page.getByRole('button', { name: 'Edit key' }).click();
    const form = page.locator('#edit-form');
    expect(await form.getByLabel('Rate limit').inputValue()).toBe('60/1m');
    expect(await form.getByLabel('Concurrency').inputValue()).toBe('4');
    await form.getByLabel('Rate limit').fill('sixty a minute');
    await form.getByRole('button', { name: 'Save changes' }).click();
    await page.locator('#edit-error', { hasText: 'The rate limit must be requests/window' }).waitFor({ timeout: 10_000 });
    // The shape is right but the window too long: the server's own message.
    await form.getByLabel('Rate limit').fill('60/2d');
    await form.getByRole('button', { name: 'Save changes' }).click();
    await page.locator('#edit-error', { hasText: /rateLimit.per/ }).waitFor({ timeout: 10_000 });
    expect((await call('GET', `/v1/keys/${k.id}`)).rateLimit).toEqual({ requests: 60, per: '1m' });
    await form.getByLabel('Rate limit').fill('120/1h');
    await form.getByLabel('Concurrency').fill('');
    await form.getByRole('button', { name: 'Save changes' }).click();
    await page.locator('#edit-status', { hasText: 'Changes saved.' }).waitFor({ timeout: 10_000 });
    expect(await page.locator('#key-rate-limit').textContent()).toBe('120 per 1h');
    expect(await page.locator('#key-concurrency').textContent()).toBe('—');
    await page.getByRole('button', { name: 'Edit key' }).click();
    await page.locator('#edit-form').getByLabel('Rate limit').fill('');
    await page.locator('#edit-form').getByRole('button', { name: 'Save changes' }).click();
    await page.locator('#edit-status', { hasText: 'Changes saved.' }).waitFor({ timeout: 10_000 });
    expect(await call('GET', `/v1/keys/${k.id}`)).toMatchObject({ rateLimit: null, concurrency: null });
    expect(patches).toEqual([{ rateLimit: { requests: 60, per: '2d' } }, { rateLimit: { requests: 120, per: '1h' }, concurrency: null }, { rateLimit: null }]);
    await shot(page, 'rate-limits');
    expect(errors.filter((e) => !/status of 400/.test(e))).toEqual([]);
    await page.close();
  });
});

describe('dashboard: budget windows', () => {
  it('happy: a key with a day and a month window and alerts [50, 80] shows two bars, spent and held stacked, the marks at 50% and 80%', async () => {
    const k = await call('POST', '/v1/keys', {
      accountId: 'acct_windows', name: 'windowed',
      budgets: [{ cents: 1000, period: 'day' }, { cents: 10000, period: 'month' }], alerts: [50, 80],
    });
    await call('POST', '/v1/charge', { key: k.key, costCents: 600 }, false);
    await call('POST', '/v1/reservations', { key: k.key, costCents: 100, ttl: '1h' }, false);
    const { page, errors } = await openKeyPage(k.id);
    const bars = page.locator('#key-windows > li');
    await bars.first().waitFor();
    expect(await bars.count()).toBe(2);
    const day = page.locator('#key-windows > li[data-period="day"]');
    const month = page.locator('#key-windows > li[data-period="month"]');
    expect(await day.locator('.window-name').textContent()).toBe('Day');
    expect(await month.locator('.window-name').textContent()).toBe('Month');
    expect(await day.locator('.window-reset').textContent()).toMatch(/^resets \d{4}-\d\d-\d\d 00:00 UTC$/);
    expect(await month.locator('.window-reset').textContent()).toMatch(/^resets \d{4}-\d\d-01 00:00 UTC$/);
    // $6 spent and $1 held of $10 a day; of $100 a month.
    expect(await day.locator('.spent').getAttribute('style')).toBe('width:60%');
    expect(await day.locator('.held').getAttribute('style')).toBe('width:10%');
    expect(await month.locator('.spent').getAttribute('style')).toBe('width:6%');
    expect(await month.locator('.held').getAttribute('style')).toBe('width:1%');
    for (const bar of [day, month]) {
      expect(await bar.locator('.mark').evaluateAll((marks) => marks.map((m) => [m.getAttribute('data-percent'), m.getAttribute('style')]))).toEqual([
        ['50', 'left:50%'],
        ['80', 'left:80%'],
      ]);
    }
    // The marks sit where the style says: 50% and 80% along the bar.
    const box = (await day.locator('.window-bar').boundingBox())!;
    const mark80 = (await day.locator('.mark[data-percent="80"]').boundingBox())!;
    expect(Math.abs(mark80.x + mark80.width / 2 - (box.x + box.width * 0.8))).toBeLessThan(2);
    expect(await day.locator('.window-text').textContent()).toBe('$6.00 spent · $1.00 held · $3.00 left of $10.00');
    expect(await day.locator('.window-bar').getAttribute('aria-label')).toContain('alerts at 50%, 80%');
    expect(await page.locator('#key-alerts').textContent()).toBe('Alerts at 50%, 80% (its own).');
    await shot(page, 'key-windows');
    expect(errors).toEqual([]);
    await page.close();
  });

  it("happy: the key edit form sets windows and alerts (only what changed is sent); a key with no alerts of its own shows the table's", async () => {
    const k = await call('POST', '/v1/keys', { accountId: 'acct_windows', name: 'windows-edit', budgets: [{ cents: 1000, period: 'day' }, { cents: 10000, period: 'month' }] });
    await call('PUT', '/v1/alerts', { percents: [75] });
    try {
      const { page, errors } = await openKeyPage(k.id);
      const patches: unknown[] = [];
      page.on('request', (req) => {
        if (req.method() === 'PATCH') patches.push(req.postDataJSON());
      });
      await page.locator('#key-windows > li').first().waitFor();
      expect(await page.locator('#key-windows .mark').evaluateAll((m) => m.map((x) => x.getAttribute('style')))).toEqual(['left:75%', 'left:75%']);
      expect(await page.locator('#key-alerts').textContent()).toBe("Alerts at 75% (the table's).");

      await page.getByRole('button', { name: 'Edit key' }).click();
      const form = page.locator('#edit-form');
      expect(await form.getByLabel('Day cap').inputValue()).toBe('1000');
      expect(await form.getByLabel('Week cap').inputValue()).toBe('');
      expect(await form.getByLabel('Month cap').inputValue()).toBe('10000');
      expect(await form.getByLabel('Alert percents').inputValue()).toBe('');
      // Beside the budget field, a window change is refused in the page, and nothing is sent.
      await form.getByLabel('Budget in cents').fill('500');
      await form.getByLabel('Week cap').fill('3000');
      await form.getByRole('button', { name: 'Save changes' }).click();
      await expect.poll(() => page.locator('#edit-error').textContent()).toContain('not both');
      await form.getByLabel('Budget in cents').fill('1000');
      await form.getByLabel('Day cap').fill('1500');
      await form.getByLabel('Alert percents').fill('90, 50');
      await form.getByRole('button', { name: 'Save changes' }).click();
      await page.locator('#edit-status', { hasText: 'Changes saved.' }).waitFor({ timeout: 10_000 });
      expect(patches).toEqual([{ budgets: [{ cents: 1500, period: 'day' }, { cents: 10000, period: 'month' }, { cents: 3000, period: 'week' }], alerts: [90, 50] }]);
      const saved = await call('GET', `/v1/keys/${k.id}`);
      expect(saved.budgets.map((w: { period: string; cents: number }) => [w.period, w.cents])).toEqual([['day', 1500], ['week', 3000], ['month', 10000]]);
      expect(saved.alerts).toEqual([50, 90]);
      await expect.poll(() => page.locator('#key-windows > li').count()).toBe(3);
      expect(await page.locator('#key-windows > li[data-period="week"] .mark').evaluateAll((m) => m.map((x) => x.getAttribute('style')))).toEqual(['left:50%', 'left:90%']);

      // A window emptied goes; 'none' turns alerts off. The server's refusal (a bad percent) shows beside the form.
      await page.getByRole('button', { name: 'Edit key' }).click();
      await form.getByLabel('Alert percents').fill('0');
      await form.getByRole('button', { name: 'Save changes' }).click();
      await expect.poll(() => page.locator('#edit-error').textContent()).toContain('from 1 to 100');
      expect((await call('GET', `/v1/keys/${k.id}`)).alerts).toEqual([50, 90]);
      await form.getByLabel('Alert percents').fill('none');
      await form.getByLabel('Week cap').fill('');
      await form.getByRole('button', { name: 'Save changes' }).click();
      await page.locator('#edit-status', { hasText: 'Changes saved.' }).waitFor({ timeout: 10_000 });
      const after = await call('GET', `/v1/keys/${k.id}`);
      expect(after.budgets.map((w: { period: string }) => w.period)).toEqual(['day', 'month']);
      expect(after.alerts).toEqual([]);
      await expect.poll(() => page.locator('#key-windows > li').count()).toBe(2);
      expect(await page.locator('#key-windows .mark').count()).toBe(0);
      expect(await page.locator('#key-alerts').textContent()).toBe('No alerts (turned off for this key).');
      expect(errors.filter((e) => !e.includes('status of 400'))).toEqual([]);
      await page.close();
    } finally {
      await call('PUT', '/v1/alerts', { percents: null });
    }
  });

  it("happy: the accounts view shows an account's windows as bars with its alert marks", async () => {
    await call('POST', '/v1/keys', { accountId: 'acct_ceil_windows', name: 'ceil-key' });
    await call('PUT', '/v1/accounts/acct_ceil_windows/budget', { budgets: [{ cents: 2000, period: 'week' }, { cents: 50000 }], alerts: [80] });
    const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
    const errors = watchErrors(page);
    await signIn(page);
    const row = page.locator('#accounts tr[data-account="acct_ceil_windows"]');
    await row.locator('.windows > li').first().waitFor();
    expect(await row.locator('.windows > li').evaluateAll((li) => li.map((x) => x.getAttribute('data-period')))).toEqual(['week', 'lifetime']);
    expect(await row.locator('.windows > li[data-period="lifetime"] .window-reset').textContent()).toBe('never resets');
    expect(await row.locator('.windows .mark').evaluateAll((m) => m.map((x) => x.getAttribute('style')))).toEqual(['left:80%', 'left:80%']);
    expect(errors).toEqual([]);
    await page.close();
  });
});

describe('dashboard with no keys', () => {
  let empty: RunningServer;
  let dir: string;
  beforeAll(async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'agentkey-dashboard-empty-'));
    // No deliverer here: with a second PGlite server in this process running one beside the first's,
    // requests to the first stalled (seen on 2026-12-01; not understood yet: see the closing note).
    empty = await startServer({ dataDir: dir, port: 0, host: '127.0.0.1', adminKey: ADMIN, webhooks: false });
  }, 60_000);
  afterAll(async () => {
    await empty?.close();
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
  });

  it('happy: empty states say what to do, and sign-out forgets the key', async () => {
    const page = await browser.newPage();
    await page.goto(`${empty.url}/dashboard`);
    await page.getByLabel('Admin key').fill(ADMIN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect.poll(() => page.locator('#view .empty').first().textContent()).toContain('No accounts yet');
    expect(await page.locator('#view .empty').last().textContent()).toBe('No keys yet.');
    await shot(page, 'empty');
    await page.getByRole('button', { name: 'Sign out' }).click();
    expect(await page.evaluate("sessionStorage.getItem('agentkey.adminKey')")).toBeNull();
    expect(await page.getByLabel('Admin key').isVisible()).toBe(true);
    await page.close();
  });
});

describe('dashboard behind a pooler', () => {
  const urls = usePgBouncer();
  let pooled: RunningServer;
  beforeAll(async () => {
    pooled = await startServer({ databaseUrl: urls().pooled, port: 0, host: '127.0.0.1', adminKey: ADMIN, webhooks: false, tableName: `pooled_dash_${process.pid}` });
  }, 60_000);
  afterAll(async () => {
    await pooled?.close();
  });

  it('security: an instance whose key cache cannot hear changes (a pooler, no AGENTKEY_DIRECT_URL) says so on every page; one that can says nothing', async () => {
    expect(await (await fetch(`${pooled.url}/healthz`)).json()).toEqual({ status: 'ok', database: 'postgres', pooled: true, cache: 'fallback' });
    const page = await browser.newPage();
    const errors = watchErrors(page);
    await page.goto(`${pooled.url}/dashboard`);
    await page.getByLabel('Admin key').fill(ADMIN);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await expect.poll(() => page.locator('#notice').isVisible()).toBe(true);
    expect(await page.locator('#notice').textContent()).toContain('DATABASE_URL goes through a connection pooler and AGENTKEY_DIRECT_URL is not set');
    await shot(page, 'pooled-notice');
    await page.getByRole('button', { name: 'Sign out' }).click();
    expect(await page.locator('#notice').isVisible()).toBe(false);
    await page.close();

    // The embedded database: nothing to say.
    const plain = await browser.newPage();
    await signIn(plain);
    await expect.poll(() => plain.locator('#view table').first().isVisible()).toBe(true);
    expect(await plain.locator('#notice').isVisible()).toBe(false);
    await plain.close();
    expect(errors).toEqual([]);
  });
});

describe('dashboard: spend by model', () => {
  /** Cents as the dashboard shows them in dollars (ui.js dollars()). */
  const usd = (cents: number) => {
    const [whole = '0', fraction = ''] = (cents / 100).toFixed(6).replace(/0+$/, '').split('.');
    return `$${Number(whole).toLocaleString('en-US')}.${fraction.padEnd(2, '0')}`;
  };
  const mini1 = { inputTokens: 1200, outputTokens: 300, cachedInputTokens: 200, reasoningTokens: 100 };
  const mini2 = { inputTokens: 800, outputTokens: 50 };
  const haiku = { inputTokens: 30_000, outputTokens: 7000, cacheWriteTokens: 10_000 };
  /** The table as shown: each row's cells by their class. */
  const rowsOf = (page: Page) =>
    page.locator('#models tbody tr').evaluateAll((trs) =>
      trs.map((tr) => Object.fromEntries([...tr.children].map((cell) => [cell.className.split(' ').find((c: string) => c.startsWith('model-') || c.startsWith('tokens-')), cell.textContent]))),
    );

  it('happy: "Spend by model" in the navigation: a bar and a row per model, dearest first, with spend, calls and tokens of each kind; scoped to an account or a key from the filters, the overview and the key page', async () => {
    const a = await call('POST', '/v1/keys', { accountId: 'acct_llm', name: 'llm-agent', budgetCents: 10_000 });
    const b = await call('POST', '/v1/keys', { accountId: 'acct_llm', name: 'llm-helper' });
    const other = await call('POST', '/v1/keys', { accountId: 'acct_llm_other', name: 'elsewhere' });
    for (const [key, body] of [
      [a.key, { model: 'gpt-4o-mini', usage: mini1 }],
      [a.key, { provider: 'anthropic', model: 'claude-haiku-4-5', usage: haiku }],
      [b.key, { model: 'gpt-4o-mini', usage: mini2 }],
      [other.key, { model: 'gpt-4o', usage: { inputTokens: 1000, outputTokens: 100 } }],
      [a.key, { costCents: 3 }],
    ] as const) {
      await call('POST', '/v1/charge', { key, ...body }, false);
    }
    const hold = await call('POST', '/v1/reservations', { key: b.key, model: 'gpt-4o-mini', usage: { inputTokens: 4000, outputTokens: 4000 } }, false);
    await call('POST', `/v1/reservations/${hold.reservationId}/commit`, { key: b.key, model: 'gpt-4o-mini', usage: mini2 }, false);
    const miniCost = priced('gpt-4o-mini', mini1) + 2 * priced('gpt-4o-mini', mini2);
    const haikuCost = priced('claude-haiku-4-5', haiku, 'anthropic');

    const page = await browser.newPage({ viewport: { width: 1366, height: 900 } });
    const errors = watchErrors(page);
    await signIn(page);
    await page.locator('#nav-models').click();
    await page.locator('#models-chart canvas').waitFor();
    expect(page.url()).toMatch(/#\/models$/);
    expect(await page.locator('#models-title').textContent()).toBe('All accounts');
    // Every account's: as the API reports them, in its order.
    const all = (await call('GET', '/v1/usage?byModel=true')).models as { model: string; costCents: number; count: number }[];
    expect(all.map((m) => m.model)).toEqual(expect.arrayContaining(['claude-haiku-4-5', 'gpt-4o', 'gpt-4o-mini']));
    expect((await rowsOf(page)).map((r) => [r['model-name'], r['model-spend'], r['model-calls']])).toEqual(all.map((m) => [m.model, usd(m.costCents), String(m.count)]));
    expect(await page.locator('#models-chart').getAttribute('aria-label')).toContain(`claude-haiku-4-5 ${usd(haikuCost)}`);

    // One account: its models only, with the tokens of each kind.
    await page.getByLabel('Account', { exact: true }).selectOption('acct_llm');
    await expect.poll(() => page.locator('#models-title').textContent()).toBe('Account: acct_llm');
    expect(page.url()).toMatch(/#\/models\?account=acct_llm$/);
    expect(await rowsOf(page)).toEqual([
      { 'model-name': 'claude-haiku-4-5', 'model-provider': 'anthropic', 'model-spend': usd(haikuCost), 'model-calls': '1', 'tokens-inputTokens': '30,000', 'tokens-cachedInputTokens': '0', 'tokens-cacheWriteTokens': '10,000', 'tokens-outputTokens': '7,000', 'tokens-reasoningTokens': '0', 'model-overage': '—' },
      { 'model-name': 'gpt-4o-mini', 'model-provider': 'openai', 'model-spend': usd(miniCost), 'model-calls': '3', 'tokens-inputTokens': '2,800', 'tokens-cachedInputTokens': '200', 'tokens-cacheWriteTokens': '0', 'tokens-outputTokens': '400', 'tokens-reasoningTokens': '100', 'model-overage': '—' },
    ]);
    expect(await page.locator('#models-total').textContent()).toBe(`${usd(haikuCost + miniCost + 3)} over 5 calls in this window · 4 calls by model · 1 call charged in cents`);
    // Its keys are the choices; one key narrows it again.
    expect(await page.locator('#models-key option').allTextContents()).toEqual(['All keys', `llm-agent (key ${a.id})`, `llm-helper (key ${b.id})`]);
    await page.getByLabel('Key', { exact: true }).selectOption(String(b.id));
    await expect.poll(() => page.locator('#models-title').textContent()).toBe('Key: llm-helper');
    expect((await rowsOf(page)).map((r) => [r['model-name'], r['model-calls'], r['tokens-inputTokens']])).toEqual([['gpt-4o-mini', '2', '1,600']]);
    await page.getByLabel('Window', { exact: true }).selectOption('24h');
    await expect.poll(() => page.url()).toMatch(new RegExp(`#/models\\?account=acct_llm&key=${b.id}&window=24h$`));
    expect((await rowsOf(page)).map((r) => r['model-calls'])).toEqual(['2']);
    await shot(page, 'models');

    // From the overview's accounts and from a key's page.
    await page.goto(`${server.url}/dashboard#/`);
    await page.locator('#accounts tr[data-account="acct_llm_other"] a', { hasText: 'Spend by model' }).click();
    await expect.poll(() => page.locator('#models-title').textContent()).toBe('Account: acct_llm_other');
    expect((await rowsOf(page)).map((r) => [r['model-name'], r['model-provider']])).toEqual([['gpt-4o', 'openai']]);
    await page.goto(`${server.url}/dashboard#/keys/${a.id}`);
    await page.locator('#key-models').click();
    await expect.poll(() => page.locator('#models-title').textContent()).toBe('Key: llm-agent');
    expect((await rowsOf(page)).map((r) => r['model-name'])).toEqual(['claude-haiku-4-5', 'gpt-4o-mini']);
    // The key page's ledger names the model and the tokens of each LLM call.
    await page.goto(`${server.url}/dashboard#/keys/${b.id}`);
    const ledger = page.locator('#ledger tbody tr');
    await ledger.first().waitFor();
    expect(await ledger.first().locator('.meta').textContent()).toMatch(/^gpt-4o-mini \(800 in \/ 50 out\) · reservation rsv_/);
    // A key with nothing by model says so.
    await page.goto(`${server.url}/dashboard#/models?key=${keys['batch-bot']!.id}`);
    await expect.poll(() => page.locator('#models-none').count()).toBe(1);
    expect(await page.locator('#models-chart').count()).toBe(0);
    expect(await page.locator('#models-total').textContent()).toMatch(/ over \d+ calls? in this window · \d+ calls? charged in cents$/);
    expect(errors).toEqual([]);
    await page.close();
  });

  describe('with model names written by SQL', () => {
    // The library refuses control and bidirectional characters in model names; a ledger row written by SQL (an import, an older tool) may still carry them, and markup passes the library: a service of its own.
    const EVIL = '<img src=x onerror="window.pwned=1">\u001b[31m\u202eledom\u0007';
    let pg: PGlite;
    let ak: AgentKey;
    let http: ReturnType<typeof serve>;
    let url: string;
    beforeAll(async () => {
      pg = new PGlite();
      ak = new AgentKey({ pool: pg });
      await ak.migrate();
      const { app } = createApp(ak, { adminKey: ADMIN });
      http = serve({ fetch: app.fetch, port: 0, hostname: '127.0.0.1' });
      await new Promise<void>((resolve) => (http.listening ? resolve() : http.once('listening', () => resolve())));
      url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
    });
    afterAll(async () => {
      await new Promise((resolve) => http?.close(resolve));
      await ak?.close();
      await pg?.close();
    });

    it('security: a model name with markup, an escape sequence, a bidi override and BEL, and a key named so by SQL, are shown escaped as text in the table, the title, the filters and the chart', async () => {
      const k = await ak.create({ accountId: '<b>acct</b>', name: 'plain' });
      await pg.query(
        `INSERT INTO "${ak.tableName}_ledger" (key_id, account_id, kind, amount_micros, model, usage) VALUES ($1, $2, 'charge', 1002000, $3, $4)`,
        [k.id, '<b>acct</b>', EVIL, JSON.stringify({ provider: 'custom', inputTokens: 1_000_000, outputTokens: 1000, cachedInputTokens: 0, cacheWriteTokens: 0, reasoningTokens: 0 })],
      );
      await pg.query(`UPDATE ${ak.tableName} SET name = $1 WHERE id = $2`, ['<i>n</i>\u202eeman\u001b[2J', k.id]);
      const page = await browser.newPage();
      const errors = watchErrors(page);
      await page.goto(`${url}/dashboard`);
      await page.getByLabel('Admin key').fill(ADMIN);
      await page.getByRole('button', { name: 'Sign in' }).click();
      await page.locator('#keys').waitFor();
      await page.goto(`${url}/dashboard#/models?account=${encodeURIComponent('<b>acct</b>')}&key=${k.id}`);
      await page.locator('#models tbody tr').first().waitFor();
      const shown = '<img src=x onerror="window.pwned=1">\\x1b[31m\\u202eledom\\x07';
      expect(await page.locator('#models tbody th.model-name').textContent()).toBe(shown);
      expect(await page.locator('#models .model-provider').textContent()).toBe('custom');
      expect(await page.locator('#models .model-spend').textContent()).toBe('$1.002');
      expect(await page.locator('#models-title').textContent()).toBe('Key: <i>n</i>\\u202eeman\\x1b[2J');
      expect(await page.locator('#models-key option:checked').textContent()).toBe(`<i>n</i>\\u202eeman\\x1b[2J (key ${k.id})`);
      expect(await page.locator('#models-account option:checked').textContent()).toBe('<b>acct</b>');
      expect(await page.locator('#models-chart').getAttribute('aria-label')).toBe(`Spend by model: ${shown} $1.002`);
      // Nothing was taken as markup or acted on.
      expect(await page.locator('#view img, #view b, #view i').count()).toBe(0);
      expect(await page.evaluate('window.pwned')).toBeUndefined();
      expect(await page.locator('#view').textContent()).not.toMatch(/[\u0000-\u0008\u000b-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/);
      await shot(page, 'models-escaped');
      expect(errors).toEqual([]);
      await page.close();
    });
  });
});
