// The agentkey dashboard: a small client over the admin API, no build step. This file is the
// shell (sign-in, routing, refresh), the overview and the key page's layout; ui.js holds the
// shared helpers (h() builds elements from text, never HTML), key.js a key's edit, rotate and
// history parts, windows.js the budget bars, charts.js the uPlot charts, webhooks.js the
// Webhooks view and the recent events, models.js the Spend by model view. All are served by
// src/server/routes/dashboard.ts.

import { $, STORE, ago, api, dollars, h, secretBox, shell, visible, when } from './ui.js';
import { editButton, historyPath, historySection, rotateControl, takeHistory } from './key.js';
import { alertsFor, bar, tableAlerts, windowBars } from './windows.js';
import { spendOverTime } from './charts.js';
import { loadRecentEvents, recentEventsSection, webhooksPage } from './webhooks.js';
import { modelsHref, modelsPage, modelsScope } from './models.js';

const REFRESH_MS = 5000;

const state = { filters: { account: '', status: '', sort: 'spend' }, bucket: 'hour', timer: null, chart: null };

function statusBadge(status) {
  return h('span', { class: `badge ${status}` }, status);
}

// ---- views ----

async function overview(view) {
  const [{ accounts }, { keys }, , recentEvents] = await Promise.all([
    api('/v1/accounts'), api('/v1/keys?includeRevoked=true&limit=10000'), loadTableAlerts(), loadRecentEvents(),
  ]);
  const f = state.filters;
  const shown = keys
    .filter((k) => (!f.account || String(k.accountId) === f.account) && (!f.status || k.status === f.status))
    .sort(
      {
        spend: (a, b) => b.spentCents - a.spentCents || a.id - b.id,
        remaining: (a, b) => (a.remainingCents ?? Infinity) - (b.remainingCents ?? Infinity) || a.id - b.id,
        name: (a, b) => (a.name ?? '').localeCompare(b.name ?? '') || a.id - b.id,
        newest: (a, b) => b.id - a.id,
      }[f.sort],
    );

  const select = (id, label, value, options, onchange) =>
    h(
      'div',
      { class: 'filter' },
      h('label', { for: id }, label),
      h('select', { id, onchange: (e) => onchange(e.target.value) }, options.map(([v, text]) => h('option', { value: v, selected: v === value }, text))),
    );

  view.replaceChildren(
    h('h1', {}, 'Overview'),
    h('section', { class: 'card', 'aria-labelledby': 'accounts-title' },
      h('h2', { id: 'accounts-title' }, 'Accounts'),
      accounts.length === 0
        ? h('p', { class: 'empty' }, 'No accounts yet. Create a key with the curl example in the README, or ', h('code', {}, 'agentkey keys create --account acct_1'), '.')
        : h('div', { class: 'table-wrap' },
            h('table', { id: 'accounts' },
              h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Account'), h('th', { scope: 'col' }, 'Keys'), h('th', { scope: 'col' }, 'Ceiling this period'), h('th', { scope: 'col' }, 'Lifetime spend'), h('th', { scope: 'col' }, 'Rate limits'))),
              h('tbody', {}, accounts.map((a) =>
                h('tr', { 'data-account': a.accountId },
                  h('th', { scope: 'row' }, a.accountId, h('div', {}, h('a', { class: 'muted', href: modelsHref({ account: a.accountId }) }, 'Spend by model'))),
                  h('td', { 'data-label': 'Keys' }, `${a.liveKeys} live / ${a.keys}`),
                  h('td', { 'data-label': 'Ceiling' }, a.ceiling
                    ? [bar(a.ceiling), h('div', { class: 'muted' }, a.ceiling.budgetPeriod ? `per ${a.ceiling.budgetPeriod}, resets ${ago(a.ceiling.budgetResetAt)}` : 'lifetime'),
                       windowBars(a.ceiling.budgets, a.ceiling.heldCents, a.ceiling.alerts)]
                    : h('span', { class: 'muted' }, 'no ceiling')),
                  h('td', { class: 'num', 'data-label': 'Lifetime spend' }, dollars(a.spentCents),
                    a.overageCents > 0 ? h('span', { class: 'overage' }, ` + ${dollars(a.overageCents)} overage`) : ''),
                  h('td', { class: 'rate-limits', 'data-label': 'Rate limits' }, accountLimitsText(a)),
                ))),
            )),
    ),
    h('section', { class: 'card', 'aria-labelledby': 'keys-title' },
      h('h2', { id: 'keys-title' }, 'Keys'),
      h('div', { class: 'filters' },
        select('filter-account', 'Account', f.account, [['', 'All accounts'], ...accounts.map((a) => [a.accountId, a.accountId])], (v) => { f.account = v; refresh(); }),
        select('filter-status', 'Status', f.status, [['', 'Any status'], ['active', 'Active'], ['expired', 'Expired'], ['revoked', 'Revoked']], (v) => { f.status = v; refresh(); }),
        select('sort', 'Sort by', f.sort, [['spend', 'Most spent'], ['remaining', 'Least remaining'], ['name', 'Name'], ['newest', 'Newest']], (v) => { f.sort = v; refresh(); }),
      ),
      shown.length === 0
        ? h('p', { class: 'empty' }, keys.length === 0 ? 'No keys yet.' : 'No key matches these filters.')
        : h('div', { class: 'table-wrap' },
            h('table', { id: 'keys' },
              h('thead', {}, h('tr', {}, ['Key', 'Account', 'Scopes', 'Status', 'Budget', 'Period', 'Last used'].map((t) => h('th', { scope: 'col' }, t)))),
              h('tbody', {}, shown.map((k) =>
                h('tr', { 'data-key-id': k.id, class: k.status },
                  h('th', { scope: 'row' }, h('a', { href: `#/keys/${k.id}` }, k.name || `key ${k.id}`), h('div', { class: 'muted mono' }, k.externalSubject ? `subject ${k.externalSubject}` : k.prefix ?? ''), k.parentId ? h('div', { class: 'muted' }, `child of ${k.parentId}`) : ''),
                  h('td', { 'data-label': 'Account' }, String(k.accountId)),
                  h('td', { 'data-label': 'Scopes' }, scopes(k.scopes)),
                  h('td', { class: 'status', 'data-label': 'Status' }, statusBadge(k.status)),
                  h('td', { class: 'budget-cell', 'data-label': 'Budget' }, bar(k)),
                  h('td', { 'data-label': 'Period' }, k.budgetPeriod ? [`per ${k.budgetPeriod}`, h('div', { class: 'muted' }, `resets ${ago(k.budgetResetAt)}`)] : h('span', { class: 'muted' }, 'lifetime')),
                  h('td', { 'data-label': 'Last used' }, ago(k.lastUsedAt)),
                ))),
            )),
    ),
    // Recent events (webhooks.js).
    recentEventsSection(recentEvents),
  );
}

function scopes(list) {
  if (list === null) return h('span', { class: 'muted' }, 'all');
  if (list.length === 0) return h('span', { class: 'muted' }, 'none');
  return h('span', { class: 'scopes' }, list.map((s) => h('code', {}, s)));
}

async function keyPage(view, id, { quiet } = {}) {
  const since = new Date(Date.now() - (state.bucket === 'hour' ? 48 * 3600e3 : 30 * 86400e3));
  const [key, usage, { entries }, { keys: children }, { events, historyError }] = await Promise.all([
    api(`/v1/keys/${id}`),
    api(`/v1/usage?keyId=${id}&bucket=${state.bucket}&since=${since.toISOString()}`),
    api(`/v1/ledger?keyId=${id}&limit=25`),
    api(`/v1/keys?parentId=${id}&includeRevoked=true`),
    // The history failing to load is said in its section; the rest of the page still shows.
    api(historyPath(id)).catch((err) => {
      if (err.message === 'signed out') throw err;
      return { events: [], historyError: err.message };
    }),
    loadTableAlerts(),
  ]);
  takeHistory(key.id, events);
  // A background refresh keeps what the operator is typing and a raw key not yet copied.
  const keepForm = (quiet && view.querySelector('#child-form')) || null;
  // An open edit form stays as the operator left it (their typing, a refusal's message) through
  // any refresh of the same key, unless the key was revoked meanwhile.
  const openEdit = view.querySelector('#edit-form');
  const keepEdit = openEdit && openEdit.dataset.keyId === String(key.id) && key.status !== 'revoked' ? openEdit : null;
  const created = view.querySelector('#created-key');
  // A new secret from a rotation stays until the operator says Done, as a new child key's does.
  const openRotated = view.querySelector('#rotated-key');
  const rotated = openRotated && openRotated.dataset.keyId === String(key.id) ? openRotated : null;
  const page = [
    h('p', {}, h('a', { href: '#/' }, '← Overview')),
    h('h1', {}, key.name || `Key ${key.id}`, ' ', statusBadge(key.status)),
    h('section', { class: 'card' },
      h('div', { class: 'grid' },
        field('Id', key.id), field('Account', key.accountId),
        key.externalSubject ? field('External subject', h('span', { class: 'mono' }, key.externalSubject)) : field('Prefix', h('span', { class: 'mono' }, key.prefix ?? '—')),
        field('Scopes', scopes(key.scopes)), field('Parent', key.parentId ? h('a', { href: `#/keys/${key.parentId}` }, `key ${key.parentId}`) : '—'),
        field('Period', key.budgetPeriod ? `per ${key.budgetPeriod}, next reset ${when(key.budgetResetAt)}` : 'lifetime'),
        field('Expires', when(key.expiresAt)), field('Last used', ago(key.lastUsedAt)), field('Delegated by', key.delegatedBy ?? '—'),
        field('Metadata', key.metadata ? h('span', { class: 'mono', id: 'key-metadata' }, visible(JSON.stringify(key.metadata))) : '—'),
        field('Rate limit', h('span', { id: 'key-rate-limit' }, rateLimitText(key.rateLimit))),
        field('Concurrency', h('span', { id: 'key-concurrency' }, key.concurrency ? `${key.concurrency} in flight` : '—')),
        field('LLM spend', h('a', { id: 'key-models', href: modelsHref({ key: key.id }) }, 'Spend by model')),
      ),
      h('div', { id: 'key-budget' }, bar(key)),
      keyWindows(key),
      h('div', { id: 'edit-slot', class: 'edit-slot' },
        key.status === 'revoked'
          ? h('p', { id: 'edit-unavailable', class: 'muted' }, 'A revoked key cannot be edited.')
          : keepEdit ?? editButton(key),
        rotateControl(key),
        h('p', { id: 'edit-status', class: 'muted', role: 'status' })),
      rotated ?? h('div', { id: 'rotated-slot' }),
    ),
    h('section', { class: 'card', 'aria-labelledby': 'chart-title' },
      h('div', { class: 'row' },
        h('h2', { id: 'chart-title' }, 'Spend over time'),
        h('div', { class: 'filter' }, h('label', { for: 'bucket' }, 'Buckets'),
          h('select', { id: 'bucket', onchange: (e) => { state.bucket = e.target.value; refresh(); } },
            h('option', { value: 'hour', selected: state.bucket === 'hour' }, 'Hourly, 48 hours'),
            h('option', { value: 'day', selected: state.bucket === 'day' }, 'Daily, 30 days'))),
      ),
      h('p', { class: 'muted', id: 'chart-total' }, `${dollars(usage.totalCents)} over ${usage.count} call${usage.count === 1 ? '' : 's'} in this window`,
        usage.overageCents > 0 ? h('span', { class: 'overage' }, ` · ${dollars(usage.overageCents)} overage`) : ''),
      h('div', { id: 'chart', role: 'img', 'aria-label': `Spend per ${state.bucket}: ${dollars(usage.totalCents)} in total` }),
    ),
    h('section', { class: 'card', 'aria-labelledby': 'ledger-title' },
      h('h2', { id: 'ledger-title' }, 'Recent ledger rows'),
      entries.length === 0
        ? h('p', { class: 'empty' }, 'Nothing recorded yet.')
        : h('div', { class: 'table-wrap' }, h('table', { id: 'ledger' },
            h('thead', {}, h('tr', {}, ['When', 'Kind', 'Amount', 'Details'].map((t) => h('th', { scope: 'col' }, t)))),
            h('tbody', {}, entries.map((e) => h('tr', {},
              h('td', {}, when(e.createdAt)), h('td', {}, h('span', { class: `kind ${e.kind}` }, e.kind)),
              h('td', { class: 'num' }, dollars(e.amountCents)), h('td', { class: 'meta' }, details(e))))))),
    ),
    h('section', { class: 'card', 'aria-labelledby': 'children-title' },
      h('h2', { id: 'children-title' }, 'Delegated keys'),
      children.length === 0
        ? h('p', { class: 'empty' }, 'No child keys.')
        : h('ul', { id: 'children', class: 'children' }, children.map((c) =>
            h('li', { 'data-key-id': c.id }, h('div', { class: 'row' }, h('a', { href: `#/keys/${c.id}` }, c.name || `key ${c.id}`), statusBadge(c.status)), bar(c)))),
    ),
    historySection(historyError),
    h('section', { class: 'card', 'aria-labelledby': 'actions-title' },
      h('h2', { id: 'actions-title' }, 'Actions'),
      created ?? h('div', { id: 'created-slot' }),
      keepForm ?? childForm(key),
      key.status === 'revoked'
        ? h('p', { class: 'muted' }, `Revoked ${when(key.revokedAt)}.`)
        : h('button', { type: 'button', id: 'revoke', class: 'danger', onclick: () => revoke(key, children) }, 'Revoke key'),
      h('p', { id: 'action-error', class: 'error', role: 'alert' }),
    ),
  ];
  view.replaceChildren(...page);
  drawChart(usage, since);
}

// Rate limits, as read: '60 per 1m', and an account's with its concurrency.
function rateLimitText(limit) {
  return limit ? `${limit.requests} per ${limit.per}` : '—';
}

function accountLimitsText(a) {
  const parts = [];
  if (a.rateLimit) parts.push(rateLimitText(a.rateLimit));
  if (a.concurrency) parts.push(`${a.concurrency} in flight`);
  return parts.length ? parts.join(', ') : h('span', { class: 'muted' }, 'none');
}

// ---- budget windows: one bar per window, the alert percents as marks (windows.js) ----

/** The table's alert percents, read with each refresh; a failure keeps the last ones read. */
async function loadTableAlerts() {
  try {
    tableAlerts.percents = (await api('/v1/alerts')).percents;
  } catch (err) {
    if (err.message === 'signed out') throw err;
  }
}

function keyWindows(key) {
  if (!Array.isArray(key.budgets) || key.budgets.length === 0) return null;
  const marks = alertsFor(key.alerts);
  const whose = key.alerts === null ? "the table's" : 'its own';
  return h('div', { class: 'key-windows' },
    h('h3', { id: 'windows-title' }, 'Budget windows'),
    windowBars(key.budgets, key.heldCents, key.alerts, 'key-windows'),
    h('p', { id: 'key-alerts', class: 'muted' }, marks.length === 0
      ? `No alerts (${key.alerts === null ? "the table's are unset" : 'turned off for this key'}).`
      : `Alerts at ${marks.map((p) => `${p}%`).join(', ')} (${whose}).`));
}

function field(name, value) {
  return h('div', { class: 'field' }, h('div', { class: 'muted' }, name), h('div', {}, value));
}

function details(e) {
  const parts = [];
  // An LLM call's row: its model, and on the row with its cost the tokens in and out.
  if (e.model) parts.push(`${e.model}${e.usage ? ` (${e.usage.inputTokens.toLocaleString('en-US')} in / ${e.usage.outputTokens.toLocaleString('en-US')} out)` : ''}`);
  if (e.metadata) for (const [k, v] of Object.entries(e.metadata)) parts.push(`${k}: ${typeof v === 'object' ? JSON.stringify(v) : v}`);
  if (e.reservationId) parts.push(`reservation ${e.reservationId}`);
  return parts.join(' · ') || '—';
}

function childForm(key) {
  const disabled = key.status !== 'active';
  return h('form', { id: 'child-form', class: 'child-form', onsubmit: (e) => { e.preventDefault(); createChild(key, e.target); } },
    h('h3', {}, 'Create a child key'),
    h('div', { class: 'grid' },
      h('label', { for: 'child-name' }, 'Name', h('input', { id: 'child-name', name: 'name', maxlength: 256 })),
      h('label', { for: 'child-budget' }, 'Budget (cents)', h('input', { id: 'child-budget', name: 'budget', type: 'number', min: 0, step: 'any', inputmode: 'decimal' })),
      h('label', { for: 'child-scopes' }, 'Scopes (comma-separated)', h('input', { id: 'child-scopes', name: 'scopes', placeholder: (key.scopes ?? []).join(', ') })),
      h('label', { for: 'child-expires' }, 'Expires in', h('input', { id: 'child-expires', name: 'expires', placeholder: '7d' })),
    ),
    h('button', { type: 'submit', disabled }, 'Create child key'),
  );
}

async function createChild(parent, form) {
  const error = $('action-error');
  error.textContent = '';
  const v = (n) => form.elements[n].value.trim();
  const body = { accountId: String(parent.accountId), parentId: parent.id };
  if (v('name')) body.name = v('name');
  if (v('budget')) body.budgetCents = Number(v('budget'));
  if (v('scopes')) body.scopes = v('scopes').split(',').map((s) => s.trim()).filter(Boolean);
  if (v('expires')) body.expiresIn = v('expires');
  try {
    const created = await api('/v1/keys', { method: 'POST', body: JSON.stringify(body) });
    form.reset();
    const box = secretBox({ id: 'created-key', codeId: 'raw-key', secret: created.key, lines: [`Created key ${created.id}. Copy it now: it is shown this once.`] });
    const slot = $('created-slot') ?? $('created-key');
    slot?.replaceWith(box);
    await refresh(true);
  } catch (err) {
    if (err.message !== 'signed out') error.textContent = err.message;
  }
}

async function revoke(key, children) {
  const live = children.filter((c) => c.status === 'active').length;
  $('confirm-title').textContent = visible(`Revoke ${key.name || `key ${key.id}`}?`);
  $('confirm-text').textContent =
    `It stops working at once${live ? `, and so do its ${live} active child key${live === 1 ? '' : 's'} and every key under them` : ''}. This cannot be undone.`;
  const dialog = $('confirm');
  dialog.returnValue = '';
  dialog.showModal();
  dialog.addEventListener('close', async function onClose() {
    dialog.removeEventListener('close', onClose);
    if (dialog.returnValue !== 'ok') return;
    try {
      await api(`/v1/keys/${key.id}/revoke`, { method: 'POST' });
      await refresh(true);
    } catch (err) {
      if (err.message !== 'signed out') $('action-error').textContent = err.message;
    }
  });
}

function drawChart(usage, since) {
  state.chart?.destroy();
  state.chart = spendOverTime($('chart'), usage, since, state.bucket);
}

// ---- shell ----

function route() {
  if (location.hash === '#/webhooks') return { page: 'webhooks' };
  if (/^#\/models(\?|$)/.test(location.hash)) return { page: 'models', scope: modelsScope(location.hash) };
  const m = /^#\/keys\/(\d+)$/.exec(location.hash);
  return m ? { page: 'key', id: m[1] } : { page: 'overview' };
}

async function refresh(quiet = false) {
  if (!sessionStorage.getItem(STORE)) return;
  const view = $('view');
  const r = route();
  try {
    if (r.page === 'key') await keyPage(view, r.id, { quiet });
    else if (r.page === 'webhooks') await webhooksPage(view);
    else if (r.page === 'models') await modelsPage(view, r.scope);
    else await overview(view);
    $('live').textContent = `Updated ${new Date().toLocaleTimeString()}`;
  } catch (err) {
    if (err.message === 'signed out') return;
    if (err.code === 'key_not_found') view.replaceChildren(h('p', {}, h('a', { href: '#/' }, '← Overview')), h('p', { class: 'empty' }, 'No key has this id.'));
    else $('live').textContent = `Could not refresh: ${err.message}`;
  }
}

function schedule() {
  clearInterval(state.timer);
  state.timer = setInterval(() => {
    // Leave the page alone while the operator is typing or confirming.
    const active = document.activeElement;
    if (document.querySelector('dialog[open]') || (active && active.closest && active.closest('form'))) return;
    if (document.visibilityState === 'visible') refresh(true);
  }, REFRESH_MS);
}

/** Says so when this instance's key cache cannot hear changes (/healthz: a pooler without AGENTKEY_DIRECT_URL). */
async function connectionNotice() {
  const health = await fetch('/healthz').then((r) => (r.ok ? r.json() : null), () => null);
  const notice = $('notice');
  notice.hidden = health?.cache !== 'fallback';
  notice.textContent = notice.hidden
    ? ''
    : 'This instance cannot hear key changes: DATABASE_URL goes through a connection pooler and AGENTKEY_DIRECT_URL is not set. ' +
      'A revocation or update made through another instance takes up to a second to apply here. Set AGENTKEY_DIRECT_URL to a direct URL of the database.';
}

function signedIn() {
  connectionNotice();
  $('sign-in').hidden = true;
  $('view').hidden = false;
  $('sign-out').hidden = false;
  for (const nav of document.querySelectorAll('.top a.nav')) nav.hidden = false;
  refresh();
  schedule();
}

function signOut(message = '') {
  sessionStorage.removeItem(STORE);
  clearInterval(state.timer);
  $('notice').hidden = true;
  $('view').hidden = true;
  $('view').replaceChildren();
  $('sign-out').hidden = true;
  for (const nav of document.querySelectorAll('.top a.nav')) nav.hidden = true;
  $('sign-in').hidden = false;
  $('sign-in-error').textContent = message;
  $('live').textContent = '';
  $('admin-key').focus();
}

shell.refresh = refresh;
shell.signOut = signOut;

$('sign-in-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  const key = $('admin-key').value.trim();
  $('sign-in-error').textContent = '';
  const res = await fetch('/v1/accounts?limit=1', { headers: { authorization: `Bearer ${key}` } }).catch(() => null);
  if (!res) return ($('sign-in-error').textContent = 'The service did not answer.');
  if (res.status === 401) return ($('sign-in-error').textContent = 'That is not the admin key.');
  sessionStorage.setItem(STORE, key);
  $('admin-key').value = '';
  signedIn();
});
$('sign-out').addEventListener('click', () => signOut());
addEventListener('hashchange', () => refresh());

if (sessionStorage.getItem(STORE)) signedIn();
else signOut();
