import http from 'node:http';
import https from 'node:https';
import { type Readable, pipeline } from 'node:stream';
import zlib from 'node:zlib';

/**
 * The HTTP client of the upstream calls: node:http(s) with keep-alive agents of the proxy's
 * own. (fetch costs several times a node:http round trip on a loaded machine, which is most
 * of a proxy's overhead.) The answer's body is a web stream read only as fast as it is
 * pulled, so the client's pace reaches the upstream socket.
 */

/** The upstream's answer: its status and headers, and its body still to read (decoded when it came compressed). */
export interface Answer {
  status: number;
  headers: Headers;
  /** The body as Node reads it (see `webStream` and `readWhole`). */
  body: Readable;
}

export type Sent =
  | { kind: 'answer'; res: Answer }
  /** No answer within timeoutMs. */
  | { kind: 'timeout' }
  /** The client went away first. */
  | { kind: 'cancelled' }
  /** Refused, reset, or no such host: the system's error code. */
  | { kind: 'unreachable'; detail: string };

export interface Agents {
  http: http.Agent;
  https: https.Agent;
}

/** Keep-alive agents (idle sockets do not keep the process alive: Node unrefs them). */
export function createAgents(): Agents {
  return { http: new http.Agent({ keepAlive: true }), https: new https.Agent({ keepAlive: true }) };
}

/**
 * POSTs `body` to `url`; resolves with the answer's head, or why there is none within
 * `timeoutMs`. `abort` cancels the call at any time, the body's reading included.
 */
export function send(url: URL, agents: Agents, headers: Headers, body: Uint8Array | string, abort: AbortController, timeoutMs: number): Promise<Sent> {
  return new Promise((resolve) => {
    let timedOut = false;
    let settled = false;
    const finish = (sent: Sent) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(sent);
    };
    const payload = typeof body === 'string' ? Buffer.from(body) : body;
    const out: Record<string, string> = Object.fromEntries(headers);
    out['content-length'] = String(payload.byteLength);
    const secure = url.protocol === 'https:';
    const req = (secure ? https : http).request(url, { method: 'POST', headers: out, agent: secure ? agents.https : agents.http }, (res) =>
      finish({ kind: 'answer', res: answerOf(res) }),
    );
    req.on('error', (err: NodeJS.ErrnoException) => {
      finish(timedOut ? { kind: 'timeout' } : abort.signal.aborted ? { kind: 'cancelled' } : { kind: 'unreachable', detail: err.code ?? err.message.slice(0, 100) });
    });
    const timer = setTimeout(() => {
      timedOut = true;
      abort.abort();
    }, timeoutMs);
    // For the whole call: a cancel while the body is read destroys the socket too.
    if (abort.signal.aborted) req.destroy();
    else abort.signal.addEventListener('abort', () => req.destroy(), { once: true });
    req.end(payload);
  });
}

const DECODERS: Record<string, () => NodeJS.ReadWriteStream> = {
  gzip: () => zlib.createGunzip(),
  'x-gzip': () => zlib.createGunzip(),
  deflate: () => zlib.createInflate(),
  br: () => zlib.createBrotliDecompress(),
};

function answerOf(res: http.IncomingMessage): Answer {
  const headers = new Headers();
  for (const [name, value] of Object.entries(res.headers)) {
    if (Array.isArray(value)) for (const v of value) headers.append(name, v);
    else if (value !== undefined) headers.set(name, value);
  }
  // Asked for identity; an upstream that compresses anyway is decoded, so its answer can be read on its way through.
  const decoder = DECODERS[(headers.get('content-encoding') ?? '').trim().toLowerCase()];
  let source: Readable = res;
  if (decoder) {
    headers.delete('content-encoding');
    source = pipeline(res, decoder(), () => {}) as unknown as Readable;
  }
  return { status: res.statusCode ?? 502, headers, body: source };
}

/**
 * A whole body, read straight from the socket (no web stream: a whole answer is small, and
 * each web stream costs tens of microseconds). Rejects when the upstream breaks off, goes
 * quiet for `idleMs`, or the body passes `maxBytes` (then only the bytes so far matter).
 */
export function readWhole(source: Readable, idleMs: number, maxBytes = Number.POSITIVE_INFINITY): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let timer: NodeJS.Timeout;
    const idle = () => {
      clearTimeout(timer);
      timer = setTimeout(() => fail(new Error(`The upstream sent nothing for ${idleMs} ms.`)), idleMs);
    };
    const done = () => {
      clearTimeout(timer);
      source.off('data', data).off('end', end).off('error', fail).off('close', closed);
    };
    const fail = (err: Error) => {
      done();
      source.destroy();
      reject(err);
    };
    const data = (chunk: Buffer) => {
      idle();
      size += chunk.byteLength;
      chunks.push(chunk);
      if (size >= maxBytes) {
        done();
        source.destroy();
        resolve(Buffer.concat(chunks));
      }
    };
    const end = () => {
      done();
      resolve(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks));
    };
    const closed = () => fail(new Error('The upstream closed the connection before the end of its answer.'));
    source.on('data', data).on('end', end).on('error', fail).on('close', closed);
    idle();
  });
}

/** A Node stream as a web stream: paused while the web stream's queue is full, destroyed when it is cancelled. */
export function webStream(source: Readable): ReadableStream<Uint8Array> {
  let ended = false;
  return new ReadableStream<Uint8Array>({
    start(controller) {
      source.on('data', (chunk: Buffer) => {
        controller.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
        if ((controller.desiredSize ?? 0) <= 0) source.pause();
      });
      source.on('end', () => {
        ended = true;
        controller.close();
      });
      source.on('error', (err) => {
        if (ended) return;
        ended = true;
        controller.error(err);
      });
      // A connection closed before the body's end: an error, not a short body.
      source.on('close', () => {
        if (ended) return;
        ended = true;
        controller.error(new Error('The upstream closed the connection before the end of its answer.'));
      });
    },
    pull() {
      source.resume();
    },
    cancel() {
      ended = true;
      source.destroy();
    },
  });
}
