// Webhooks and the outbox in the dashboard: the Webhooks view (#/webhooks: every endpoint from
// GET /v1/webhooks with its recent deliveries, failures said plainly) and the overview's
// "Recent events" list (GET /v1/outbox). Built from text with h() (never HTML); app.js places them.

import { ago, api, h, visibleJson, when } from './ui.js';

const DELIVERIES_SHOWN = 10;
const SUMMARY_MAX = 160;

// ---- Recent events (the overview) ----

/** The newest outbox events; a failure to read them is said in the section, the rest still shows. */
export async function loadRecentEvents() {
  try {
    return { events: (await api('/v1/outbox?limit=20')).events };
  } catch (err) {
    if (err.message === 'signed out') throw err;
    return { events: [], error: err.message };
  }
}

export function recentEventsSection({ events, error }) {
  return h('section', { class: 'card', 'aria-labelledby': 'events-title' },
    h('h2', { id: 'events-title' }, 'Recent events'),
    error
      ? h('p', { id: 'events-error', class: 'error', role: 'alert' }, `Could not load the events: ${error}`)
      : events.length === 0
        ? h('p', { id: 'events-none', class: 'muted' }, 'No events yet: revoking a key, a key expiring, a hold expiring, an alert percent reached or an overage writes one.')
        : h('div', { class: 'table-wrap' },
            h('table', { id: 'events' },
              h('thead', {}, h('tr', {}, ['Event', 'When', 'Key / account', 'Details'].map((t) => h('th', { scope: 'col' }, t)))),
              h('tbody', {}, events.map((e) =>
                h('tr', { 'data-event-id': e.id, 'data-type': e.type },
                  h('td', { class: 'event-type', 'data-label': 'Event' }, h('code', {}, e.type)),
                  h('td', { 'data-label': 'When', title: when(e.timestamp) }, ago(e.timestamp)),
                  h('td', { class: 'event-owner', 'data-label': 'Key / account' }, owner(e.data)),
                  h('td', { class: 'event-summary meta', 'data-label': 'Details' }, summary(e.data))))))));
}

function owner(data) {
  const parts = [];
  if (data && data.keyId !== undefined && data.keyId !== null) parts.push(h('a', { href: `#/keys/${encodeURIComponent(String(data.keyId))}` }, `key ${data.keyId}`));
  if (data && data.accountId !== undefined && data.accountId !== null) parts.push(h('span', { class: 'mono' }, String(data.accountId)));
  if (parts.length === 0) return h('span', { class: 'muted' }, '—');
  return parts.length === 2 ? [parts[0], ' · ', parts[1]] : parts[0];
}

/** The data's other fields as 'name: value', cut short: the full event is in the API. */
function summary(data) {
  const parts = Object.entries(data ?? {})
    .filter(([k]) => k !== 'keyId' && k !== 'accountId')
    .map(([k, v]) => `${k}: ${typeof v === 'string' ? v : visibleJson(v)}`);
  const text = parts.join(' · ');
  return text.length > SUMMARY_MAX ? `${text.slice(0, SUMMARY_MAX - 1)}…` : text || '—';
}

// ---- the Webhooks view ----

export async function webhooksPage(view) {
  const { webhooks } = await api('/v1/webhooks');
  // Each endpoint's deliveries; one failing to load is said under that endpoint only.
  const deliveries = await Promise.all(webhooks.map((w) =>
    api(`/v1/webhooks/${w.id}/deliveries?limit=${DELIVERIES_SHOWN}`).then((r) => ({ list: r.deliveries }), (err) => {
      if (err.message === 'signed out') throw err;
      return { list: [], error: err.message };
    })));
  view.replaceChildren(
    h('p', {}, h('a', { href: '#/' }, '← Overview')),
    h('h1', {}, 'Webhooks'),
    webhooks.length === 0
      ? h('section', { class: 'card' }, h('p', { id: 'webhooks-none', class: 'muted' }, 'No webhook endpoints. Add one with ', h('code', {}, 'agentkey webhooks add <url>'), ' or POST /v1/webhooks.'))
      : h('div', { id: 'webhooks' }, webhooks.map((w, i) => endpoint(w, deliveries[i]))),
  );
}

function endpoint(w, { list, error }) {
  const failed = list.filter((d) => d.status === 'failed').length;
  return h('section', { class: 'card webhook', 'data-webhook-id': w.id, 'aria-labelledby': `webhook-${w.id}-url` },
    h('h2', { id: `webhook-${w.id}-url`, class: 'webhook-url mono' }, w.url),
    w.description ? h('p', { class: 'webhook-description' }, w.description) : null,
    h('div', { class: 'grid' },
      field('Id', String(w.id)),
      field('Events', w.events === null ? h('span', { class: 'muted' }, 'all') : h('span', { class: 'scopes webhook-events' }, w.events.map((t) => h('code', {}, t)))),
      field('Account', w.accountId === null ? h('span', { class: 'muted' }, 'every account') : h('span', { class: 'mono webhook-account' }, w.accountId)),
      field('Enabled', h('span', { class: `badge ${w.enabled ? 'active' : 'revoked'} webhook-enabled` }, w.enabled ? 'enabled' : 'disabled')),
      field('Created', when(w.createdAt))),
    h('h3', {}, 'Recent deliveries', failed > 0 ? h('span', { class: 'delivery-failures error' }, ` · ${failed} failed`) : ''),
    error
      ? h('p', { class: 'error', role: 'alert' }, `Could not load the deliveries: ${error}`)
      : list.length === 0
        ? h('p', { class: 'muted deliveries-none' }, 'No deliveries yet.')
        : h('div', { class: 'table-wrap' },
            h('table', { class: 'deliveries' },
              h('thead', {}, h('tr', {}, ['Event', 'Status', 'Attempts', 'Last response', 'When'].map((t) => h('th', { scope: 'col' }, t)))),
              h('tbody', {}, list.map(delivery)))));
}

function delivery(d) {
  const problem = d.status !== 'delivered';
  return h('tr', { class: `delivery ${d.status}`, 'data-delivery-id': d.id, 'data-status': d.status },
    h('td', { 'data-label': 'Event' }, h('code', {}, d.eventType ?? '—'), ' ', h('span', { class: 'muted mono' }, d.eventId)),
    h('td', { 'data-label': 'Status' }, h('span', { class: `badge delivery-status ${d.status === 'delivered' ? 'active' : d.status === 'failed' ? 'revoked' : 'expired'}` }, d.status)),
    h('td', { class: 'num delivery-attempts', 'data-label': 'Attempts' }, String(d.attempts)),
    h('td', { class: 'delivery-last', 'data-label': 'Last response' },
      d.lastStatus !== null ? `HTTP ${d.lastStatus}` : '',
      problem && d.lastError ? h('div', { class: 'error delivery-error' }, d.lastError) : '',
      d.lastStatus === null && !(problem && d.lastError) ? h('span', { class: 'muted' }, d.attempts === 0 ? 'not sent yet' : '—') : ''),
    h('td', { 'data-label': 'When' },
      d.status === 'delivered' ? `delivered ${ago(d.deliveredAt)}`
        : d.status === 'pending' ? (!d.nextAttemptAt ? 'waiting' : Date.parse(d.nextAttemptAt) > Date.now() ? `next try ${ago(d.nextAttemptAt)}` : 'next try due now')
          : `gave up; created ${ago(d.createdAt)}`));
}

function field(name, value) {
  return h('div', { class: 'field' }, h('div', { class: 'muted' }, name), h('div', {}, value));
}
