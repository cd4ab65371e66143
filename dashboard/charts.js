// The dashboard's charts (uPlot, served with the dashboard): spend over time on a key's page,
// and spend by model. Each draws bars of dollars into an element and returns the chart, for
// its caller to destroy before drawing again; null when there is nothing to draw into.

import { dollars, visible } from './ui.js';

const BARS = { label: 'Spend', stroke: '#2563eb', fill: 'rgba(37,99,235,0.6)', width: 1, points: { show: false } };
const DOLLARS_AXIS = { values: (u, ticks) => ticks.map((v) => dollars(v * 100)), size: 70 };
const Y = { range: (u, min, max) => [0, Math.max(max * 1.1, 0.01)] };

function chart(el, options, data) {
  if (!el || typeof uPlot === 'undefined') return null;
  const width = Math.max(260, el.clientWidth || 600);
  return new uPlot({ width, height: 220, legend: { show: false }, cursor: { drag: { x: false, y: false } }, ...options }, data, el);
}

/** A key's spend per hour or day (`bucket`) from `since` to now; empty buckets are zero. */
export function spendOverTime(el, usage, since, bucket) {
  const step = bucket === 'hour' ? 3600 : 86400;
  const first = Math.floor(since.getTime() / 1000 / step) * step;
  const now = Date.now() / 1000;
  const byStart = new Map(usage.buckets.map((b) => [Date.parse(b.start) / 1000, b.costCents / 100]));
  const xs = [];
  const ys = [];
  for (let t = first; t <= now; t += step) {
    xs.push(t);
    ys.push(byStart.get(t) ?? 0);
  }
  return chart(el, {
    // Half a bucket of room on each side, so the first and the current bucket's bars show whole.
    scales: { x: { time: true, range: (u, min, max) => [min - step / 2, max + step / 2] }, y: Y },
    axes: [{}, DOLLARS_AXIS],
    series: [{}, { ...BARS, paths: uPlot.paths.bars({ size: [0.7, 40] }) }],
  }, [xs, ys]);
}

/** A bar per model, in the order given; names drawn escaped (canvas text, never HTML). */
export function spendByModel(el, models) {
  if (models.length === 0) return null;
  const xs = models.map((_, i) => i);
  const names = models.map((m) => visible(m.model));
  return chart(el, {
    // Up to the dearest model's spend, however small: a model's calls often cost fractions of a cent.
    scales: { x: { time: false, range: () => [-0.5, models.length - 0.5] }, y: { range: (u, min, max) => [0, max > 0 ? max * 1.1 : 0.01] } },
    axes: [{ splits: () => xs, values: (u, splits) => splits.map((i) => names[i] ?? '') }, DOLLARS_AXIS],
    series: [{}, { ...BARS, paths: uPlot.paths.bars({ size: [0.6, 80] }) }],
  }, [xs, models.map((m) => Number(m.costCents) / 100)]);
}
