// Budget bars: a key's or an account's budget (spent, held, remaining and overage), and one
// per budget window (day, week, month, lifetime), spent and held stacked against the window's
// cap, the alert percents as marks on each, and when it resets. Built from text with h()
// (never HTML); app.js places them.

import { dollars, h, when } from './ui.js';

const NAMES = { day: 'Day', week: 'Week', month: 'Month', lifetime: 'Lifetime' };

/** The table's alert percents (GET /v1/alerts), for windows whose key or account sets none. */
export const tableAlerts = { percents: null };

/** The percents that apply: the owner's own ([]: none), else the table's. */
export function alertsFor(own) {
  return Array.isArray(own) ? own : tableAlerts.percents ?? [];
}

/**
 * Every window as a bar. `heldCents`: the owner's holds, which count against each of its
 * windows alike; `alerts`: the owner's own percents (null: the table's).
 */
export function windowBars(budgets, heldCents, alerts, id) {
  if (!Array.isArray(budgets) || budgets.length === 0) return null;
  const marks = alertsFor(alerts);
  return h('ul', { class: 'windows', ...(id ? { id } : {}) }, budgets.map((w) => windowBar(w, heldCents, marks)));
}

function windowBar(w, heldCents, marks) {
  const cap = Number(w.cents);
  const held = Number(heldCents ?? 0);
  const pct = (x) => (cap > 0 ? Math.min(100, Math.max(0, (Number(x) / cap) * 100)) : 0);
  const spent = round(pct(w.spentCents));
  const heldPct = round(Math.min(100 - spent, pct(held)));
  const name = NAMES[w.period] ?? String(w.period);
  const resets = w.resetAt ? `resets ${when(w.resetAt)}` : 'never resets';
  const label = `${name} window: spent ${dollars(w.spentCents)}, held ${dollars(held)}, ${dollars(w.remainingCents)} left of ${dollars(w.cents)}, ${resets}` +
    (marks.length ? `; alerts at ${marks.map((p) => `${p}%`).join(', ')}` : '');
  return h('li', { class: 'window', 'data-period': w.period },
    h('div', { class: 'window-head' },
      h('span', { class: 'window-name' }, name),
      h('span', { class: 'window-reset muted' }, resets)),
    h('div', { class: 'bar window-bar' + (Number(w.remainingCents) <= 0 ? ' over' : ''), role: 'img', 'aria-label': label, title: label },
      h('span', { class: 'spent', style: `width:${spent}%` }),
      h('span', { class: 'held', style: `width:${heldPct}%` }),
      marks.map((p) => h('span', { class: 'mark', 'data-percent': p, style: `left:${p}%`, title: `Alert at ${p}%` }))),
    h('div', { class: 'bar-text window-text' },
      h('span', { class: 'window-spent' }, dollars(w.spentCents)), ' spent',
      held > 0 ? [' · ', h('span', { class: 'window-held' }, dollars(held)), ' held'] : '',
      ' · ', h('span', { class: 'window-left' }, dollars(w.remainingCents)), ' left of ',
      h('span', { class: 'window-cap' }, dollars(w.cents))));
}

/** A percentage with at most 4 decimals, so a style reads '90%', not '90.00000000001%'. */
function round(x) {
  return Math.round(x * 10000) / 10000;
}

// ---- a key's or an account's budget bar: spent | held | remaining (the package's one budget) ----

// Overage (real cost no budget could take) is never part of spent: it is shown beside it, in red.
function overage(b) {
  return b.overageCents > 0
    ? h('span', { class: 'overage', title: 'Real cost no budget could take: recorded, never counted toward the cap' },
        ' · ', h('span', { class: 'amount-overage' }, dollars(b.overageCents)), ' overage')
    : '';
}

export function bar(b) {
  const budget = b.budgetCents;
  if (budget === null || budget === undefined) {
    return h('div', { class: 'bar-text' }, `${dollars(b.spentCents)} spent`, b.heldCents > 0 ? ` · ${dollars(b.heldCents)} held` : '', ' · no cap', overage(b));
  }
  const pct = (x) => (budget > 0 ? Math.min(100, (x / budget) * 100) : 0);
  const spent = pct(b.spentCents);
  const held = Math.min(100 - spent, pct(b.heldCents));
  const label = `Spent ${dollars(b.spentCents)}, held ${dollars(b.heldCents)}, remaining ${dollars(b.remainingCents)} of ${dollars(budget)}`;
  const over = b.spentCents + b.heldCents > budget;
  return h(
    'div',
    { class: 'budget' },
    h(
      'div',
      { class: 'bar' + (over ? ' over' : ''), role: 'img', 'aria-label': label, title: label },
      h('span', { class: 'spent', style: `width:${spent}%` }),
      h('span', { class: 'held', style: `width:${held}%` }),
    ),
    h(
      'div',
      { class: 'bar-text' },
      h('span', { class: 'amount-spent' }, dollars(b.spentCents)),
      ' spent',
      b.heldCents > 0 ? h('span', {}, ' · ', h('span', { class: 'amount-held' }, dollars(b.heldCents)), ' held') : '',
      ' · ',
      h('span', { class: 'amount-remaining' }, dollars(b.remainingCents)),
      ' left of ',
      h('span', { class: 'amount-budget' }, dollars(budget)),
      overage(b),
    ),
  );
}
