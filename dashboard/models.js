// The "Spend by model" view (#/models): what each LLM model cost, over every account, one
// account or one key, in a window of time: a bar per model (charts.js) and a table of its spend,
// calls and tokens of each kind (GET /v1/usage?byModel=true). Only calls charged with a model
// and usage are in it; the rest of the spend is said beside it. Every text from the database
// goes in through h() (text, never HTML) and visible().

import { spendByModel } from './charts.js';
import { api, dollars, h, visible } from './ui.js';

const WINDOWS = [['24h', 'Last 24 hours', 86400e3], ['7d', 'Last 7 days', 7 * 86400e3], ['30d', 'Last 30 days', 30 * 86400e3], ['all', 'All time', null]];
const TOKENS = [['inputTokens', 'Input'], ['cachedInputTokens', 'Cached input'], ['cacheWriteTokens', 'Cache writes'], ['outputTokens', 'Output'], ['reasoningTokens', 'Reasoning']];

let chart = null;

/** The view's scope as the address says it: #/models?account=acct_1&key=12&window=7d. */
export function modelsScope(hash) {
  const q = new URLSearchParams(hash.split('?')[1] ?? '');
  const window = WINDOWS.some(([w]) => w === q.get('window')) ? q.get('window') : '30d';
  return { account: q.get('account') ?? '', key: /^\d+$/.test(q.get('key') ?? '') ? q.get('key') : '', window };
}

/** The address of a scope: what the links to this view and its filters set. */
export function modelsHref({ account = '', key = '', window = '30d' } = {}) {
  const q = new URLSearchParams();
  if (account) q.set('account', account);
  if (key) q.set('key', String(key));
  if (window !== '30d') q.set('window', window);
  const text = q.toString();
  return `#/models${text ? `?${text}` : ''}`;
}

export async function modelsPage(view, scope) {
  const span = WINDOWS.find(([w]) => w === scope.window)[2];
  const query = new URLSearchParams({ byModel: 'true' });
  if (span !== null) query.set('since', new Date(Date.now() - span).toISOString());
  if (scope.account) query.set('accountId', scope.account);
  if (scope.key) query.set('keyId', scope.key);
  const [report, { accounts }, { keys }] = await Promise.all([
    api(`/v1/usage?${query}`),
    api('/v1/accounts'),
    api(`/v1/keys?includeRevoked=true&limit=10000${scope.account ? `&accountId=${encodeURIComponent(scope.account)}` : ''}`),
  ]);
  const models = report.models ?? [];
  const go = (change) => { location.hash = modelsHref({ ...scope, ...change }); };
  const select = (id, label, value, options, onchange) =>
    h('div', { class: 'filter' },
      h('label', { for: id }, label),
      h('select', { id, onchange: (e) => onchange(e.target.value) }, options.map(([v, text]) => h('option', { value: v, selected: v === value }, text))));
  const key = keys.find((k) => String(k.id) === scope.key);

  chart?.destroy();
  chart = null;
  view.replaceChildren(
    h('p', {}, h('a', { href: '#/' }, '← Overview')),
    h('h1', {}, 'Spend by model'),
    h('section', { class: 'card', 'aria-labelledby': 'models-title' },
      h('h2', { id: 'models-title' }, scopeTitle(scope, key)),
      // A form: the page's refresh leaves it alone while the operator is choosing.
      h('form', { class: 'filters', onsubmit: (e) => e.preventDefault() },
        select('models-account', 'Account', scope.account, [['', 'All accounts'], ...accounts.map((a) => [a.accountId, a.accountId])], (v) => go({ account: v, key: '' })),
        select('models-key', 'Key', scope.key, [['', 'All keys'], ...keys.map((k) => [String(k.id), k.name ? `${k.name} (key ${k.id})` : `key ${k.id}`])], (v) => go({ key: v })),
        select('models-window', 'Window', scope.window, WINDOWS.map(([w, text]) => [w, text]), (v) => go({ window: v }))),
      h('p', { id: 'models-total', class: 'muted' }, totalText(report, models)),
      models.length === 0
        ? h('p', { id: 'models-none', class: 'empty' },
            'No LLM calls charged by model here yet. Charge with a model and usage instead of costCents (POST /v1/charge, or the reservations\' commit) to see them.')
        : [
            h('div', { id: 'models-chart', role: 'img', 'aria-label': `Spend by model: ${models.map((m) => `${visible(m.model)} ${dollars(m.costCents)}`).join(', ')}` }),
            h('div', { class: 'table-wrap' }, modelsTable(models)),
          ],
    ),
  );
  chart = spendByModel(document.getElementById('models-chart'), models);
}

function scopeTitle(scope, key) {
  if (scope.key) return key ? `Key: ${key.name || `key ${key.id}`}` : `Key ${scope.key}`;
  return scope.account ? `Account: ${scope.account}` : 'All accounts';
}

function totalText(report, models) {
  const calls = (n) => `${n} call${n === 1 ? '' : 's'}`;
  const byModel = models.reduce((n, m) => n + m.count, 0);
  const rest = report.count - byModel;
  return `${dollars(report.totalCents)} over ${calls(report.count)} in this window` +
    (models.length ? ` · ${calls(byModel)} by model` : '') +
    (rest > 0 ? ` · ${calls(rest)} charged in cents` : '') +
    (Number(report.overageCents) > 0 ? ` · ${dollars(report.overageCents)} overage` : '');
}

function modelsTable(models) {
  const count = (n) => n.toLocaleString('en-US');
  return h('table', { id: 'models' },
    h('thead', {}, h('tr', {}, ['Model', 'Provider', 'Spend', 'Calls', ...TOKENS.map(([, name]) => name), 'Overage'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, models.map((m) =>
      h('tr', { 'data-model': m.model },
        h('th', { scope: 'row', class: 'model-name mono' }, m.model),
        h('td', { class: 'model-provider', 'data-label': 'Provider' }, m.provider ?? '—'),
        h('td', { class: 'num model-spend', 'data-label': 'Spend' }, dollars(m.costCents)),
        h('td', { class: 'num model-calls', 'data-label': 'Calls' }, count(m.count)),
        TOKENS.map(([field, name]) => h('td', { class: `num tokens-${field}`, 'data-label': name }, count(m[field]))),
        h('td', { class: 'num model-overage', 'data-label': 'Overage' }, Number(m.overageCents) > 0 ? h('span', { class: 'overage' }, dollars(m.overageCents)) : '—'),
      ))));
}
