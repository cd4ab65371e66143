import type { ResolvedUpstream } from './options.js';

/**
 * The headers of the call to the upstream: the client's minus its credentials and the
 * hop-by-hop ones, with the operator's key in their place. The answer's headers come back
 * the same way, minus what describes the operator's account.
 */

/** Never forwarded: hop-by-hop (RFC 9110 7.6.1), recomputed, or the agent's credentials and address. */
const DROP_REQUEST = new Set([
  'connection', 'keep-alive', 'proxy-authenticate', 'proxy-authorization', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade',
  'host', 'content-length', 'expect', 'accept-encoding',
  'authorization', 'x-api-key', 'api-key', 'cookie',
  // The operator's account is the operator's to choose (Upstream.headers), not the agent's.
  'openai-organization', 'openai-project',
  'forwarded', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'x-real-ip',
]);

/** Never passed back: hop-by-hop, recomputed (the body is re-sent, maybe changed), or about the operator's account. */
const DROP_RESPONSE = new Set([
  'connection', 'keep-alive', 'proxy-authenticate', 'proxy-connection', 'te', 'trailer', 'transfer-encoding', 'upgrade',
  'content-length', 'set-cookie',
  'openai-organization', 'openai-project', 'anthropic-organization-id',
]);
const OPERATOR_LIMITS = /^(x-ratelimit-|anthropic-ratelimit-)/;

export const ANTHROPIC_VERSION = '2023-06-01';

/** The headers sent upstream for one request. */
export function upstreamHeaders(client: Headers, upstream: ResolvedUpstream): Headers {
  const named = new Set((client.get('connection') ?? '').toLowerCase().split(',').map((s) => s.trim()));
  const out = new Headers();
  for (const [name, value] of client) if (!DROP_REQUEST.has(name) && !named.has(name)) out.set(name, value);
  out.set('content-type', 'application/json');
  // The answer is read on its way through; a compressed one could not be.
  out.set('accept-encoding', 'identity');
  if (upstream.flavor === 'anthropic') {
    out.set('x-api-key', upstream.apiKey);
    if (!out.has('anthropic-version')) out.set('anthropic-version', ANTHROPIC_VERSION);
  } else out.set('authorization', `Bearer ${upstream.apiKey}`);
  for (const [name, value] of Object.entries(upstream.headers)) out.set(name, value);
  return out;
}

/** The upstream answer's headers, as the client gets them. */
export function clientHeaders(upstream: Headers): Headers {
  const out = new Headers();
  for (const [name, value] of upstream) if (!DROP_RESPONSE.has(name) && !OPERATOR_LIMITS.test(name)) out.set(name, value);
  return out;
}
