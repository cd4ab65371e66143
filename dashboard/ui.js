// What every part of the dashboard shares: elements built from text (never HTML), money and
// time as shown, the admin API, and the box that shows a new secret once.
// Everything user-supplied (names, scopes, metadata) goes in with textContent, never HTML,
// and through visible(): SQL and metadata can hold control characters and bidi overrides.

export const STORE = 'agentkey.adminKey';
export const $ = (id) => document.getElementById(id);

/** What the shell (app.js) lends the parts: set once at start. */
export const shell = {
  refresh: async (quiet) => {},
  signOut: (message) => {},
};

// Control characters, bidi overrides, invisible characters: shown as escapes (\x1b, \u202e),
// never acted on; the same rule as the CLI's printable() in src/cli/format.ts.
const UNPRINTABLE = /[\p{Cc}\p{Zl}\p{Zp}]|(?!\u200d)\p{Cf}|\p{Cs}/gu;
const SHORT = { '\n': '\\n', '\r': '\\r', '\t': '\\t' };
export function visible(text) {
  return String(text).replace(UNPRINTABLE, (c) => {
    const code = c.codePointAt(0);
    const hex = (width) => code.toString(16).padStart(width, '0');
    return SHORT[c] ?? (code <= 0xff ? `\\x${hex(2)}` : code <= 0xffff ? `\\u${hex(4)}` : `\\u{${hex(0)}}`);
  });
}

/**
 * A value as JSON text in which every character visible() would escape is a JSON escape
 * (\u202e), so the text shows no hidden characters and parses back to the same value.
 */
export function visibleJson(value) {
  return JSON.stringify(value).replace(UNPRINTABLE, (c) =>
    Array.from({ length: c.length }, (_, i) => `\\u${c.charCodeAt(i).toString(16).padStart(4, '0')}`).join(''));
}

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined && c !== false) el.append(c instanceof Node ? c : visible(c));
  return el;
}

/** Cents as dollars: 250 -> $2.50; sub-cent amounts keep their digits: 0.15 -> $0.0015. */
export function dollars(cents) {
  if (cents === null || cents === undefined) return 'unlimited';
  // A total past $5 billion comes as an exact decimal string of cents: read it digit for digit.
  if (typeof cents === 'string') {
    const [whole, fraction = ''] = cents.replace(/^-/, '').split('.');
    const micros = BigInt(whole + fraction.padEnd(4, '0').slice(0, 4));
    const rest = (micros % 1000000n).toString().padStart(6, '0').replace(/0+$/, '');
    return `${cents.startsWith('-') ? '-' : ''}$${(micros / 1000000n).toLocaleString('en-US')}.${rest.padEnd(2, '0')}`;
  }
  const value = Math.abs(cents) / 100;
  const [whole, fraction = ''] = value.toFixed(6).replace(/0+$/, '').split('.');
  return `${cents < 0 ? '-' : ''}$${Number(whole).toLocaleString('en-US')}.${fraction.padEnd(2, '0')}`;
}

export function ago(iso) {
  if (!iso) return 'never';
  const s = Math.round((Date.now() - Date.parse(iso)) / 1000);
  if (s < 0) return 'in ' + span(-s);
  return span(s) + ' ago';
}
function span(s) {
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}
export function when(iso) {
  return iso ? iso.replace('T', ' ').replace(/:\d\d\.\d+Z$/, ' UTC') : '—';
}

export async function api(path, options = {}) {
  const res = await fetch(path, {
    ...options,
    headers: { authorization: `Bearer ${sessionStorage.getItem(STORE)}`, ...(options.body ? { 'content-type': 'application/json' } : {}) },
  });
  const body = await res.json().catch(() => ({ error: { code: 'bad_response', message: 'The service sent something that is not JSON.' } }));
  if (res.status === 401 && path.startsWith('/v1/') && !path.startsWith('/v1/verify')) {
    shell.signOut('The admin key was refused; sign in again.');
    throw new Error('signed out');
  }
  if (!res.ok) throw Object.assign(new Error(body.error?.message ?? `HTTP ${res.status}`), { code: body.error?.code });
  return body;
}

/**
 * A raw secret shown this once, with a Copy button: `id` names the box (kept through a
 * refresh by the page), `codeId` the secret itself; `lines` say what it is.
 */
export function secretBox({ id, codeId, secret, lines, keyId }) {
  const code = h('code', { id: codeId, class: 'mono' }, secret);
  const box = h('div', { id, class: 'created', role: 'status', 'data-key-id': keyId },
    lines.map((line) => h('p', {}, line)),
    h('div', { class: 'row' }, code, h('button', { type: 'button', class: 'secondary', onclick: (e) => copy(secret, e.target, code) }, 'Copy')),
    h('button', { type: 'button', class: 'link', onclick: () => box.remove() }, 'Done'));
  return box;
}

async function copy(text, button, code) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = 'Copied';
  } catch {
    // No clipboard (plain http on another host): select the text so Ctrl-C works.
    const range = document.createRange();
    range.selectNodeContents(code);
    getSelection().removeAllRanges();
    getSelection().addRange(range);
    button.textContent = 'Selected: press Ctrl-C';
  }
}
