import { type Answer, readWhole } from './client.js';
import { errorResponse, refusal } from './errors.js';
import type { ResolvedUpstream } from './options.js';

/** How much of an upstream's error body is read. */
const MAX_ERROR_BYTES = 64 * 1024;

/** Headers of an upstream's 4xx worth passing on. */
const KEPT = ['content-type', 'retry-after', 'retry-after-ms', 'x-should-retry', 'x-request-id', 'request-id'];

/**
 * The client's answer to an upstream's error (the hold is released by the caller):
 * - a 4xx passes through as it is (the client's own mistake, in the upstream's words),
 *   except 401 and 403, which are the operator's key refused: a 502 that says so, never the
 *   upstream's body (OpenAI's quotes part of the key);
 * - a 5xx (or anything else) is a 502 naming the upstream's status and its message.
 * The operator's key is cut out of any text passed on.
 */
export async function upstreamError(upstream: ResolvedUpstream, res: Answer, timeoutMs: number): Promise<Response> {
  const text = redact(await readSome(res, timeoutMs), upstream.apiKey);
  const status = res.status;
  if (status === 401 || status === 403) {
    return errorResponse(
      upstream.flavor,
      refusal('upstream_auth_failed', `The upstream refused the proxy's own credentials (HTTP ${status}); the operator must check the upstream's key.`),
    );
  }
  if (status >= 400 && status < 500) {
    const headers = new Headers();
    for (const name of KEPT) {
      const value = res.headers.get(name);
      if (value !== null) headers.set(name, value);
    }
    if (!headers.has('content-type')) headers.set('content-type', 'application/json');
    return new Response(text, { status, headers });
  }
  const said = messageOf(text);
  return errorResponse(
    upstream.flavor,
    refusal('upstream_error', `The upstream failed (HTTP ${status})${said ? `: ${said}` : '.'}`, res.headers.has('retry-after') ? { 'retry-after': res.headers.get('retry-after') as string } : {}),
  );
}

/** The error message in an OpenAI- or Anthropic-shaped body, on one line, at most 300 characters. */
function messageOf(text: string): string | null {
  try {
    const body = JSON.parse(text) as { error?: { message?: unknown } | string; message?: unknown };
    const m = typeof body.error === 'object' && body.error !== null ? body.error.message : typeof body.error === 'string' ? body.error : body.message;
    return typeof m === 'string' && m.trim() !== '' ? m.replace(/\s+/g, ' ').trim().slice(0, 300) : null;
  } catch {
    return null;
  }
}

/** Up to MAX_ERROR_BYTES of the body, waiting at most `timeoutMs` between its chunks; nothing when it breaks off. */
async function readSome(res: Answer, timeoutMs: number): Promise<string> {
  const bytes = await readWhole(res.body, timeoutMs, MAX_ERROR_BYTES).catch(() => Buffer.alloc(0));
  return bytes.subarray(0, MAX_ERROR_BYTES).toString('utf8');
}

/** `text` with every occurrence of `secret` cut out. */
export function redact(text: string, secret: string): string {
  return secret.length > 0 && text.includes(secret) ? text.split(secret).join('[redacted]') : text;
}
