// A key's own page parts that change it or tell its story: editing (PATCH /v1/keys/:id with
// only the changed fields), rotating its secret (POST /v1/keys/:id/rotate), and its history
// (GET /v1/keys/:id/events). app.js lays out the page; these build and run the parts.

import { $, api, dollars, h, secretBox, shell, visible, visibleJson, when } from './ui.js';

// ---- editing a key: PATCH /v1/keys/:id with only the fields the operator changed ----

export function editButton(key) {
  return h('button', { type: 'button', id: 'edit', class: 'secondary', onclick: (e) => {
    const form = editForm(key);
    e.currentTarget.replaceWith(form);
    $('edit-status').textContent = '';
    form.elements.name.focus();
  } }, 'Edit key');
}

const splitScopes = (text) => text.split(',').map((s) => s.trim()).filter(Boolean);

// Budget windows in the form: one cap per period (empty: no such window), sent as `budgets`.
const WINDOWS = [['day', 'Day'], ['week', 'Week'], ['month', 'Month'], ['lifetime', 'Lifetime']];
const windowCents = (key, period) => {
  const w = (key.budgets ?? []).find((x) => x.period === period);
  return w ? String(w.cents) : '';
};
const alertsShown = (alerts) => (alerts === null || alerts === undefined ? '' : alerts.length === 0 ? 'none' : alerts.join(', '));

function windowsFieldset(initial) {
  return h('fieldset', { class: 'windows-edit' },
    h('legend', {}, 'Budget windows in cents (a charge must fit every one; empty: none of that length)'),
    h('div', { class: 'grid' },
      WINDOWS.map(([p, name]) => h('label', { for: `edit-window-${p}` }, `${name} cap`,
        h('input', { id: `edit-window-${p}`, name: `window_${p}`, type: 'number', min: 0, step: 'any', inputmode: 'decimal', value: initial.windows[p] }))),
      h('label', { for: 'edit-alerts' }, 'Alert percents (such as 50, 80; empty: the table\'s; none: no alerts)',
        h('input', { id: 'edit-alerts', name: 'alerts', maxlength: 64, value: initial.alerts, placeholder: '50, 80, 100' }))));
}

/** The windows and alerts the form says, into `changes`; a message when they cannot be sent. */
function windowChanges(key, form, initial, changes) {
  const raw = (n) => form.elements[n].value;
  if (WINDOWS.some(([p]) => raw(`window_${p}`) !== initial.windows[p])) {
    if ('budgetCents' in changes || 'budgetPeriod' in changes) return 'Change the budget windows or the budget and period above, not both: the windows include the budget.';
    if (WINDOWS.some(([p]) => form.elements[`window_${p}`].validity.badInput)) return 'Each window cap must be a number of cents, or empty for none.';
    // The key's own order first: its first window keeps its place (and the package's reset rule).
    const order = [...new Set([...(key.budgets ?? []).map((w) => w.period), ...WINDOWS.map(([p]) => p)])];
    changes.budgets = order.filter((p) => raw(`window_${p}`).trim() !== '').map((p) => ({ cents: Number(raw(`window_${p}`)), period: p }));
  }
  if (raw('alerts') !== initial.alerts) {
    const text = raw('alerts').trim().toLowerCase();
    if (text === '') changes.alerts = null;
    else if (text === 'none') changes.alerts = [];
    else {
      const parts = text.split(',').map((x) => x.trim().replace(/%$/, '')).filter(Boolean);
      if (!parts.every((x) => /^\d+$/.test(x))) return 'Alert percents are whole numbers such as 50, 80, 100; "none" for no alerts; empty for the table\'s.';
      changes.alerts = parts.map(Number);
    }
  }
  return '';
}

function editForm(key) {
  // What the form starts with, as shown (escaped): a field still equal to it is not sent.
  const initial = {
    name: visible(key.name ?? ''),
    budget: key.budgetCents === null || key.budgetCents === undefined ? '' : String(key.budgetCents),
    period: key.budgetPeriod ?? '',
    scopes: key.scopes === null ? '' : key.scopes.map(visible).join(', '),
    delegatedBy: visible(key.delegatedBy ?? ''),
    noExpiry: !key.expiresAt,
    // JSON text with every hidden character as its JSON escape: what is shown parses back; unchanged, it is not sent.
    metadata: key.metadata ? visibleJson(key.metadata) : '',
    // Rate limits: '60/1m' and a number (empty: none).
    rateLimit: key.rateLimit ? `${key.rateLimit.requests}/${key.rateLimit.per}` : '',
    concurrency: key.concurrency === null || key.concurrency === undefined ? '' : String(key.concurrency),
    windows: Object.fromEntries(WINDOWS.map(([p]) => [p, windowCents(key, p)])),
    alerts: alertsShown(key.alerts),
  };
  const form = h('form', { id: 'edit-form', class: 'edit-form', 'data-key-id': key.id, 'aria-labelledby': 'edit-title',
    onsubmit: (e) => { e.preventDefault(); saveEdit(key, form, initial); } },
    h('h3', { id: 'edit-title' }, 'Edit key'),
    h('div', { class: 'grid' },
      h('label', { for: 'edit-name' }, 'Name', h('input', { id: 'edit-name', name: 'name', maxlength: 256, value: initial.name })),
      h('label', { for: 'edit-budget' }, 'Budget in cents (empty: no cap)',
        h('input', { id: 'edit-budget', name: 'budget', type: 'number', min: 0, step: 'any', inputmode: 'decimal', value: initial.budget })),
      h('label', { for: 'edit-period' }, 'Period',
        h('select', { id: 'edit-period', name: 'period' },
          [['', 'None (lifetime)'], ['day', 'Per day'], ['month', 'Per month']].map(([v, text]) => h('option', { value: v, selected: v === initial.period }, text)))),
      h('label', { for: 'edit-scopes' }, 'Scopes (comma-separated; empty: all)', h('input', { id: 'edit-scopes', name: 'scopes', value: initial.scopes })),
      h('div', {},
        h('label', { for: 'edit-expires' }, 'Expires in (such as 7d; empty: unchanged)',
          h('input', { id: 'edit-expires', name: 'expires', placeholder: '7d', maxlength: 16, 'aria-describedby': 'edit-expires-now',
            oninput: (e) => { if (e.target.value.trim()) form.elements.noExpiry.checked = false; } })),
        h('div', { id: 'edit-expires-now', class: 'muted' }, `Now: ${key.expiresAt ? `expires ${when(key.expiresAt)}` : 'no expiry'}`),
        h('label', { for: 'edit-no-expiry', class: 'check' },
          h('input', { id: 'edit-no-expiry', name: 'noExpiry', type: 'checkbox', checked: initial.noExpiry,
            onchange: (e) => { if (e.target.checked) form.elements.expires.value = ''; } }),
          ' No expiry')),
      h('label', { for: 'edit-delegated-by' }, 'Delegated by', h('input', { id: 'edit-delegated-by', name: 'delegatedBy', maxlength: 256, value: initial.delegatedBy })),
      h('label', { for: 'edit-metadata' }, 'Metadata (a JSON object; empty: none)',
        h('textarea', { id: 'edit-metadata', name: 'metadata', rows: 2, spellcheck: 'false', placeholder: '{"team": "search"}' }, initial.metadata)),
      h('label', { for: 'edit-rate-limit' }, 'Rate limit (requests/window, such as 60/1m; empty: none)',
        h('input', { id: 'edit-rate-limit', name: 'rateLimit', maxlength: 32, placeholder: '60/1m', value: initial.rateLimit })),
      h('label', { for: 'edit-concurrency' }, 'Concurrency (requests in flight; empty: none)',
        h('input', { id: 'edit-concurrency', name: 'concurrency', type: 'number', min: 1, step: 1, value: initial.concurrency })),
    ),
    windowsFieldset(initial),
    h('label', { for: 'edit-cascade', class: 'check', id: 'edit-cascade-label' },
      h('input', { id: 'edit-cascade', name: 'cascade', type: 'checkbox', 'aria-describedby': 'edit-error' }),
      ' Also narrow the keys under it (cascade)'),
    h('p', { id: 'edit-error', class: 'error', role: 'alert' }),
    h('div', { class: 'actions' },
      h('button', { type: 'submit', id: 'edit-save' }, 'Save changes'),
      h('button', { type: 'button', class: 'secondary', onclick: () => {
        const button = editButton(key);
        form.replaceWith(button);
        button.focus();
      } }, 'Cancel')),
  );
  return form;
}

async function saveEdit(key, form, initial) {
  const error = $('edit-error');
  const cascadeLabel = $('edit-cascade-label');
  error.replaceChildren();
  cascadeLabel.classList.remove('attention');
  const raw = (n) => form.elements[n].value;
  const v = (n) => raw(n).trim();
  const changes = {};
  if (raw('name') !== initial.name) changes.name = v('name') || null;
  if (form.elements.budget.validity.badInput) {
    error.textContent = 'The budget must be a number of cents, or empty for no cap.';
    return;
  }
  if (raw('budget') !== initial.budget) changes.budgetCents = v('budget') === '' ? null : Number(v('budget'));
  if (raw('period') !== initial.period) changes.budgetPeriod = raw('period') || null;
  const scopes = splitScopes(raw('scopes'));
  if (JSON.stringify(scopes) !== JSON.stringify(splitScopes(initial.scopes))) changes.scopes = scopes.length ? scopes : null;
  const noExpiry = form.elements.noExpiry.checked;
  if (v('expires')) changes.expiresIn = v('expires');
  else if (noExpiry && !initial.noExpiry) changes.expiresIn = null;
  else if (!noExpiry && initial.noExpiry) {
    error.textContent = 'Say when it should expire (such as 7d), or tick "No expiry".';
    return;
  }
  if (raw('delegatedBy') !== initial.delegatedBy) changes.delegatedBy = v('delegatedBy') || null;
  if (raw('metadata') !== initial.metadata) {
    // Text that is not JSON cannot go as an object; whether the object is acceptable is the server's to say.
    try {
      changes.metadata = v('metadata') === '' ? null : JSON.parse(v('metadata'));
    } catch {
      error.textContent = 'The metadata must be JSON, such as {"team": "search"}, or empty for none.';
      return;
    }
  }
  if (raw('rateLimit') !== initial.rateLimit) {
    // The shape is read here; whether the numbers are allowed is the server's to say.
    const m = /^\s*(\d+)\s*\/\s*(\S+)\s*$/.exec(raw('rateLimit'));
    if (v('rateLimit') !== '' && !m) {
      error.textContent = 'The rate limit must be requests/window, such as 60/1m, or empty for none.';
      return;
    }
    changes.rateLimit = m ? { requests: Number(m[1]), per: m[2] } : null;
  }
  if (form.elements.concurrency.validity.badInput) {
    error.textContent = 'The concurrency must be a whole number, or empty for none.';
    return;
  }
  if (raw('concurrency') !== initial.concurrency) changes.concurrency = v('concurrency') === '' ? null : Number(v('concurrency'));
  const windowsError = windowChanges(key, form, initial, changes);
  if (windowsError) {
    error.textContent = windowsError;
    return;
  }
  if (Object.keys(changes).length === 0) {
    error.textContent = 'Nothing changed.';
    return;
  }
  if (form.elements.cascade.checked) changes.cascade = true;
  const save = $('edit-save');
  save.disabled = true;
  try {
    await api(`/v1/keys/${key.id}`, { method: 'PATCH', body: JSON.stringify(changes) });
    form.remove();
    await shell.refresh(true);
    const status = $('edit-status');
    if (status) status.textContent = 'Changes saved.';
    $('edit')?.focus();
  } catch (err) {
    if (err.message === 'signed out') return;
    // The server's own words, as text; the form keeps what the operator typed.
    error.append(h('span', {}, err.message));
    if (err.code === 'narrows_children') {
      error.append(h('span', { class: 'hint-line' }, 'To narrow them with it, tick "Also narrow the keys under it (cascade)" and save again.'));
      cascadeLabel.classList.add('attention');
      form.elements.cascade.focus();
    }
  } finally {
    save.disabled = false;
  }
}

// ---- rotating the secret: a new one shown once; the old one works for the grace period ----

const GRACE = [['0', 'Not at all: it stops at once'], ['1h', 'For 1 hour'], ['1d', 'For 1 day'], ['7d', 'For 7 days']];

/** The Rotate control for a key that has a secret (not an external subject's budget row). */
export function rotateControl(key) {
  if (key.externalSubject) return null;
  if (key.status === 'revoked') return h('p', { id: 'rotate-unavailable', class: 'muted' }, 'A revoked key has no secret to rotate.');
  return h('button', { type: 'button', id: 'rotate', class: 'secondary', onclick: () => openRotate(key) }, 'Rotate secret');
}

function openRotate(key) {
  $('rotate-dialog')?.remove();
  const other = h('input', { id: 'rotate-grace-other', name: 'other', placeholder: '30m', maxlength: 32, 'aria-label': 'Other grace period',
    oninput: () => { form.elements.grace.value = 'other'; } });
  const form = h('form', { id: 'rotate-form', onsubmit: (e) => { e.preventDefault(); rotate(key, form, dialog); } },
    h('h2', { id: 'rotate-title' }, `Rotate the secret of ${key.name || `key ${key.id}`}?`),
    h('p', {}, 'The key gets a new secret, shown once; it keeps its id, budget, spend and children.'),
    h('fieldset', { class: 'grace' },
      h('legend', {}, 'The current secret keeps working'),
      GRACE.map(([value, text], i) => h('label', { class: 'check' }, h('input', { type: 'radio', name: 'grace', value, checked: i === 0 }), ` ${text}`)),
      h('label', { class: 'check' }, h('input', { type: 'radio', name: 'grace', value: 'other', 'aria-label': 'For another time' }), ' For ', other),
      h('p', { class: 'muted' }, 'Such as 30s, 15m, 12h or 3d; at most 7 days.')),
    h('p', { id: 'rotate-error', class: 'error', role: 'alert' }),
    h('div', { class: 'actions' },
      h('button', { type: 'button', class: 'secondary', onclick: () => dialog.close() }, 'Cancel'),
      h('button', { type: 'submit', id: 'rotate-ok' }, 'Rotate secret')));
  const dialog = h('dialog', { id: 'rotate-dialog', 'aria-labelledby': 'rotate-title', onclose: () => dialog.remove() }, form);
  document.body.append(dialog);
  dialog.showModal();
}

async function rotate(key, form, dialog) {
  const error = $('rotate-error');
  error.replaceChildren();
  const choice = form.elements.grace.value;
  // What the operator typed goes to the server as it is: its refusal says what is wrong.
  const gracePeriod = choice === 'other' ? form.elements.other.value.trim() : choice === '0' ? 0 : choice;
  const ok = $('rotate-ok');
  ok.disabled = true;
  try {
    const rotated = await api(`/v1/keys/${key.id}/rotate`, { method: 'POST', body: JSON.stringify({ gracePeriod }) });
    dialog.close();
    const until = rotated.previousKeyValidUntil;
    const box = secretBox({
      id: 'rotated-key', codeId: 'rotated-secret', secret: rotated.key, keyId: key.id,
      lines: [
        `New secret for key ${rotated.id} (prefix ${rotated.prefix}). Copy it now: it is shown this once.`,
        h('span', { id: 'rotate-note' }, until ? `The previous secret works until ${when(until)}, then is refused.` : 'The previous secret stopped working at once.'),
      ],
    });
    ($('rotated-slot') ?? $('rotated-key'))?.replaceWith(box);
    await shell.refresh(true);
    $('rotate')?.focus();
  } catch (err) {
    // The server's own words, as text, beside the form, which keeps the choice.
    if (err.message !== 'signed out') error.append(h('span', {}, err.message));
  } finally {
    ok.disabled = false;
  }
}

// ---- history: the key's events, newest first, paged with before ----

const PAGE = 50;
const history = { keyId: null, events: [], more: false };

/**
 * The newest page as the page's refresh got it, merged with older pages the operator already
 * opened (when it still joins them), so a refresh does not fold the timeline back.
 */
export function takeHistory(keyId, newest) {
  const held = history.keyId === keyId ? history.events : [];
  const oldestNew = newest.at(-1)?.id;
  if (held.length > newest.length && oldestNew !== undefined && held[0].id >= oldestNew) {
    history.events = [...newest, ...held.filter((e) => e.id < oldestNew)];
  } else {
    history.events = newest;
    history.more = newest.length === PAGE;
  }
  history.keyId = keyId;
}

export const historyPath = (id) => `/v1/keys/${id}/events?limit=${PAGE}`;

export function historySection(error = '') {
  const list = h('ol', { id: 'history', class: 'history' });
  const older = h('button', { type: 'button', id: 'history-older', class: 'secondary', onclick: showOlder }, 'Show older');
  fill(list, older);
  return h('section', { class: 'card', 'aria-labelledby': 'history-title' },
    h('h2', { id: 'history-title' }, 'History'),
    history.events.length === 0 ? h('p', { class: 'empty' }, 'Nothing recorded yet.') : [list, older],
    h('p', { id: 'history-error', class: 'error', role: 'alert' }, error));
}

function fill(list, older) {
  list.replaceChildren(...history.events.map(entry));
  older.hidden = !history.more;
}

async function showOlder(e) {
  const older = e.currentTarget;
  const last = history.events.at(-1);
  $('history-error').textContent = '';
  older.disabled = true;
  try {
    const { events } = await api(`/v1/keys/${history.keyId}/events?limit=${PAGE}&before=${last.id}`);
    // A refresh meanwhile may have replaced the timeline (or the page): add only where it ended.
    if (history.events.at(-1) !== last) return;
    history.events = [...history.events, ...events];
    history.more = events.length === PAGE;
    fill($('history'), $('history-older'));
  } catch (err) {
    if (err.message !== 'signed out') $('history-error').textContent = err.message;
  } finally {
    older.disabled = false;
  }
}

const ACTORS = { admin: 'admin', cli: 'CLI', library: 'library', sql: 'SQL (an edit of the table)' };

function entry(e) {
  const who = e.actor === 'key' && e.actorKeyId !== null
    ? h('a', { href: `#/keys/${e.actorKeyId}` }, `key #${e.actorKeyId}`)
    : ACTORS[e.actor] ?? e.actor;
  return h('li', { 'data-event-id': e.id, 'data-kind': e.kind },
    h('div', { class: 'event-head' },
      h('time', { datetime: e.at }, when(e.at)), ' ',
      h('span', { class: 'kind' }, e.kind.replace('_', ' ')), ' by ',
      h('span', { class: 'actor' }, who)),
    Object.keys(e.changes).length === 0 ? null : h('ul', { class: 'changes' }, Object.entries(e.changes).map(([name, change]) =>
      h('li', { 'data-field': name },
        h('code', {}, name), ': ',
        'before' in change ? [h('span', { class: 'before' }, shown(name, change.before)), ' → '] : null,
        'after' in change ? h('span', { class: 'after' }, shown(name, change.after)) : h('span', { class: 'after muted' }, 'removed')))));
}

const TIMES = new Set(['expiresAt', 'revokedAt', 'previousKeyValidUntil']);

/**
 * A changed value as a person reads it: money in dollars, times in UTC, lists joined. A value
 * of another type than agentkey writes (SQL can insert anything) is shown as JSON.
 */
function shown(name, value) {
  if (name === 'scopes' && value === null) return 'all';
  if (name === 'scopes' && Array.isArray(value)) return value.length === 0 ? 'none' : value.map((v) => (typeof v === 'string' ? v : JSON.stringify(v))).join(', ');
  if (value === null || value === undefined) return { budgetCents: 'no cap', previousKeyValidUntil: 'none: it stopped at once' }[name] ?? 'none';
  const money = typeof value === 'number' || (typeof value === 'string' && /^-?\d+(\.\d+)?$/.test(value));
  if ((name === 'budgetCents' || name === 'costCents') && money) return dollars(value);
  if (TIMES.has(name) && typeof value === 'string' && !Number.isNaN(Date.parse(value))) return when(value);
  if (Array.isArray(value)) return value.map((v) => (typeof v === 'object' ? JSON.stringify(v) : String(v))).join(', ');
  if (typeof value === 'object') return JSON.stringify(value);
  return String(value);
}
