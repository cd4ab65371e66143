import { type ProxyError, refusal } from './errors.js';

/** The request body as JSON, read up to `limit` bytes: an object, or the error the client gets (400 or 413). */
export async function readJsonBody(req: Request, limit: number): Promise<{ ok: true; bytes: Uint8Array; body: Record<string, unknown> } | { ok: false; error: ProxyError }> {
  const tooLarge = refusal('body_too_large', `${limit} bytes`);
  const length = req.headers.get('content-length');
  const declared = length === null ? NaN : Number(length);
  if (declared > limit) return { ok: false, error: tooLarge };
  // A declared length is held to by the HTTP parser: read it whole (the runtime's fast path);
  // a chunked body is read up to the limit.
  let bytes: Uint8Array | null;
  try {
    bytes = Number.isSafeInteger(declared) ? new Uint8Array(await req.arrayBuffer()) : await readUpTo(req, limit);
  } catch {
    return { ok: false, error: refusal('invalid_request', 'The request body could not be read to its end.') };
  }
  if (bytes === null) return { ok: false, error: tooLarge };
  let body: unknown;
  try {
    body = JSON.parse(Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('utf8'));
  } catch {
    return { ok: false, error: refusal('invalid_json') };
  }
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    return { ok: false, error: refusal('invalid_request', 'The request body must be a JSON object.') };
  }
  return { ok: true, bytes, body: body as Record<string, unknown> };
}

/** The body's bytes, or null past `limit` (reading stops there). */
async function readUpTo(req: Request, limit: number): Promise<Uint8Array | null> {
  if (!req.body) return new Uint8Array(0);
  const chunks: Uint8Array[] = [];
  let size = 0;
  const reader = req.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > limit) {
      await reader.cancel().catch(() => {});
      return null;
    }
    chunks.push(value);
  }
  return chunks.length === 1 ? (chunks[0] as Uint8Array) : Buffer.concat(chunks);
}
