import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { gzipSync } from 'node:zlib';

/**
 * A fake model API on a real port (node:http), speaking enough of OpenAI's chat completions,
 * responses and embeddings, and Anthropic's messages, for the official SDKs: whole answers
 * and server-sent event streams, with the usage they report. What each request gets is
 * steered by an `x-fake` header (JSON of a `Script`; the proxy passes the client's headers
 * on), or by `fake.script` for every request. It checks the operator's key as the real APIs
 * do (401 quoting the key it got, as OpenAI's does, so a test can see it never leaks), and
 * records every request: path, headers, body, and whether its client went away before the
 * answer ended.
 */
export interface Script {
  /** Answer this status with an error body in the API's shape. */
  status?: number;
  /** Never answer (until the client goes away). */
  hang?: boolean;
  /** Destroy the connection: before any answer, or mid-answer (after `afterChunks` chunks of a stream, half of a whole answer). */
  drop?: 'before' | 'mid';
  /** The usage reported. Default { input: 21, output: 9 }. */
  usage?: { input: number; output: number; cached?: number; cacheWrite?: number; reasoning?: number };
  /** Leave the usage out (a stream that never reports it). */
  noUsage?: boolean;
  /** The words of the answer, one chunk each in a stream. Default 'Hello from the fake upstream'. */
  text?: string;
  /** Wait this long before each chunk of a stream (a slow stream). */
  delayMs?: number;
  /** For drop 'mid' and stall: how many text chunks to send first. */
  afterChunks?: number;
  /** After `afterChunks` text chunks, send nothing more until the client goes away. */
  stall?: boolean;
  /** Compress a whole answer with gzip, whatever Accept-Encoding asked for. */
  gzip?: boolean;
}

export interface Recorded {
  path: string;
  headers: http.IncomingHttpHeaders;
  body: Record<string, unknown>;
  /** The client closed the connection before the answer was complete. */
  cancelled: boolean;
  /** The answer was sent whole. */
  finished: boolean;
}

export interface FakeLlm {
  url: string;
  apiKey: string;
  requests: Recorded[];
  /** The script for requests without an x-fake header. */
  script: Script;
  close(): Promise<void>;
}

export const FAKE_TEXT = 'Hello from the fake upstream';
const DEFAULT_USAGE = { input: 21, output: 9 };

export async function startFakeLlm(apiKey = 'sk-operator-0123456789abcdefSECRET'): Promise<FakeLlm> {
  const fake: FakeLlm = { url: '', apiKey, requests: [], script: {}, close: async () => {} };
  const sockets = new Set<import('node:net').Socket>();
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      let body: Record<string, unknown> = {};
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>;
      } catch {
        /* recorded as {} */
      }
      const rec: Recorded = { path: req.url ?? '', headers: req.headers, body, cancelled: false, finished: false };
      fake.requests.push(rec);
      res.on('close', () => {
        if (!res.writableFinished) rec.cancelled = true;
      });
      res.on('finish', () => (rec.finished = true));
      const header = req.headers['x-fake'];
      const script: Script = typeof header === 'string' ? (JSON.parse(header) as Script) : fake.script;
      void answer(req, res, rec, script, apiKey).catch(() => res.destroy());
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  fake.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  fake.close = () =>
    new Promise<void>((resolve) => {
      for (const s of sockets) s.destroy();
      server.close(() => resolve());
    });
  return fake;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

async function answer(req: http.IncomingMessage, res: http.ServerResponse, rec: Recorded, script: Script, apiKey: string): Promise<void> {
  const anthropic = rec.path === '/v1/messages';
  const known = ['/v1/chat/completions', '/v1/responses', '/v1/embeddings', '/v1/messages'];
  if (!known.includes(rec.path)) return json(res, 404, errorOf(anthropic, 404, `Unknown path ${rec.path}.`));
  const sent = anthropic ? req.headers['x-api-key'] : req.headers.authorization?.replace(/^Bearer /, '');
  if (sent !== apiKey) return json(res, 401, errorOf(anthropic, 401, `Incorrect API key provided: ${String(sent)}.`));
  if (anthropic && !req.headers['anthropic-version']) return json(res, 400, errorOf(true, 400, 'anthropic-version header is required.'));
  if (script.hang) return; // the socket stays open until the client gives up
  if (script.drop === 'before') return void req.socket.destroy();
  if (script.status) return json(res, script.status, errorOf(anthropic, script.status, `Fake error ${script.status} (the key was ${apiKey}).`));

  const model = String(rec.body.model);
  const words = (script.text ?? FAKE_TEXT).split(' ').map((w, i) => (i === 0 ? w : ` ${w}`));
  const u = script.usage ?? DEFAULT_USAGE;
  const stream = rec.body.stream === true;
  if (rec.path === '/v1/embeddings') return json(res, 200, embeddings(rec.body, u));
  if (!stream && script.drop === 'mid') {
    // Half of a whole answer, then the connection is cut.
    res.writeHead(200, { 'content-type': 'application/json', 'content-length': 400 });
    await new Promise((resolve) => res.write('{"id": "chatcmpl-fake", "object": "chat.com', resolve));
    return void req.socket.destroy();
  }
  if (!stream) {
    const text = words.join('');
    if (rec.path === '/v1/chat/completions') return json(res, 200, withUsage(script, { id: 'chatcmpl-fake', object: 'chat.completion', created: 1, model, choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null }, finish_reason: 'stop', logprobs: null }] }, chatUsage(u)), script.gzip);
    if (rec.path === '/v1/responses') return json(res, 200, withUsage(script, responseOf(model, text), responsesUsage(u)));
    return json(res, 200, withUsage(script, { id: 'msg_fake', type: 'message', role: 'assistant', model, content: [{ type: 'text', text }], stop_reason: 'end_turn', stop_sequence: null }, anthropicUsage(u)));
  }

  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', 'x-request-id': 'req_fake' });
  const events = streamOf(rec.path, rec.body, model, words, u, script);
  let textChunks = 0;
  // What was written reaches the socket before a drop destroys it.
  let written: Promise<unknown> = Promise.resolve();
  for (const ev of events) {
    if (res.destroyed) return;
    if (ev.text) {
      if ((script.drop === 'mid' || script.stall) && textChunks === (script.afterChunks ?? 1)) {
        if (script.drop === 'mid') {
          await written;
          await sleep(20);
          req.socket.destroy();
        }
        return; // stall: nothing more; the client's cancel closes it
      }
      textChunks++;
      if (script.delayMs) await sleep(script.delayMs);
    }
    written = new Promise((resolve) => res.write(ev.raw, resolve));
  }
  res.end();
}

function json(res: http.ServerResponse, status: number, body: unknown, gzip = false): void {
  const text = gzip ? gzipSync(JSON.stringify(body)) : Buffer.from(JSON.stringify(body));
  res.writeHead(status, {
    'content-type': 'application/json',
    'content-length': text.byteLength,
    'x-request-id': 'req_fake',
    'openai-organization': 'org-operator-secret',
    ...(gzip ? { 'content-encoding': 'gzip' } : {}),
  });
  res.end(text);
}

function errorOf(anthropic: boolean, status: number, message: string): unknown {
  if (anthropic) return { type: 'error', error: { type: status === 401 ? 'authentication_error' : status >= 500 ? 'api_error' : 'invalid_request_error', message } };
  return { error: { message, type: status >= 500 ? 'server_error' : 'invalid_request_error', param: null, code: status === 401 ? 'invalid_api_key' : null } };
}

function withUsage(script: Script, body: Record<string, unknown>, usage: unknown): Record<string, unknown> {
  return script.noUsage ? body : { ...body, usage };
}

type U = NonNullable<Script['usage']>;

export const chatUsage = (u: U) => ({
  prompt_tokens: u.input,
  completion_tokens: u.output,
  total_tokens: u.input + u.output,
  prompt_tokens_details: { cached_tokens: u.cached ?? 0 },
  completion_tokens_details: { reasoning_tokens: u.reasoning ?? 0 },
});

const responsesUsage = (u: U) => ({
  input_tokens: u.input,
  input_tokens_details: { cached_tokens: u.cached ?? 0 },
  output_tokens: u.output,
  output_tokens_details: { reasoning_tokens: u.reasoning ?? 0 },
  total_tokens: u.input + u.output,
});

/** Anthropic's input_tokens leave the cache's tokens out; `u.input` is every input token. */
const anthropicUsage = (u: U) => ({
  input_tokens: u.input - (u.cached ?? 0) - (u.cacheWrite ?? 0),
  cache_creation_input_tokens: u.cacheWrite ?? 0,
  cache_read_input_tokens: u.cached ?? 0,
  output_tokens: u.output,
});

function responseOf(model: string, text: string): Record<string, unknown> {
  return {
    id: 'resp_fake',
    object: 'response',
    created_at: 1,
    status: 'completed',
    model,
    output: [{ type: 'message', id: 'msg_fake', status: 'completed', role: 'assistant', content: [{ type: 'output_text', text, annotations: [] }] }],
  };
}

function embeddings(body: Record<string, unknown>, u: U): unknown {
  const inputs = Array.isArray(body.input) ? body.input : [body.input];
  const vector = new Float32Array([0.25, -0.5, 1]);
  const embedding = body.encoding_format === 'base64' ? Buffer.from(vector.buffer).toString('base64') : Array.from(vector);
  return { object: 'list', model: body.model, data: inputs.map((_, index) => ({ object: 'embedding', index, embedding })), usage: { prompt_tokens: u.input, total_tokens: u.input } };
}

interface Ev {
  raw: string;
  /** Carries text (one word). */
  text?: boolean;
}

function streamOf(path: string, body: Record<string, unknown>, model: string, words: string[], u: U, script: Script): Ev[] {
  const data = (d: unknown, event?: string): string => `${event ? `event: ${event}\n` : ''}data: ${JSON.stringify(d)}\n\n`;
  if (path === '/v1/chat/completions') {
    const includeUsage = (body.stream_options as { include_usage?: boolean } | undefined)?.include_usage === true && !script.noUsage;
    const chunk = (delta: unknown, finish: string | null) => ({
      id: 'chatcmpl-fake', object: 'chat.completion.chunk', created: 1, model,
      choices: [{ index: 0, delta, finish_reason: finish, logprobs: null }],
      ...(includeUsage ? { usage: null } : {}),
    });
    return [
      { raw: data(chunk({ role: 'assistant', content: '' }, null)) },
      ...words.map((w) => ({ raw: data(chunk({ content: w }, null)), text: true })),
      { raw: data(chunk({}, 'stop')) },
      ...(includeUsage ? [{ raw: data({ id: 'chatcmpl-fake', object: 'chat.completion.chunk', created: 1, model, choices: [], usage: chatUsage(u) }) }] : []),
      { raw: 'data: [DONE]\n\n' },
    ];
  }
  if (path === '/v1/responses') {
    let seq = 0;
    const ev = (type: string, rest: Record<string, unknown>) => data({ type, sequence_number: seq++, ...rest }, type);
    const done = { ...responseOf(model, words.join('')), ...(script.noUsage ? {} : { usage: responsesUsage(u) }) };
    return [
      { raw: ev('response.created', { response: { ...responseOf(model, ''), status: 'in_progress', output: [] } }) },
      ...words.map((w) => ({ raw: ev('response.output_text.delta', { item_id: 'msg_fake', output_index: 0, content_index: 0, delta: w }), text: true })),
      { raw: ev('response.completed', { response: done }) },
    ];
  }
  const usage = anthropicUsage(u);
  return [
    { raw: data({ type: 'message_start', message: { id: 'msg_fake', type: 'message', role: 'assistant', model, content: [], stop_reason: null, stop_sequence: null, usage: { ...usage, output_tokens: 1 } } }, 'message_start') },
    { raw: data({ type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }, 'content_block_start') },
    { raw: 'event: ping\ndata: {"type": "ping"}\n\n' },
    ...words.map((w) => ({ raw: data({ type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: w } }, 'content_block_delta'), text: true })),
    { raw: data({ type: 'content_block_stop', index: 0 }, 'content_block_stop') },
    ...(script.noUsage ? [] : [{ raw: data({ type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: u.output } }, 'message_delta') }]),
    { raw: data({ type: 'message_stop' }, 'message_stop') },
  ];
}
