import { randomUUID } from 'node:crypto';
import type { AgentKey } from '../agentkey.js';
import { AgentKeyError } from '../errors.js';
import { withTimeout } from '../http/timeout.js';
import type { MaxCost, PriceCatalog, TokenUsage } from '../llm/index.js';
import type { ApiSpec, Meter } from './apis.js';
import { loadLlm } from './llm.js';
import { readJsonBody } from './body.js';
import { type Agents, readWhole, send, webStream } from './client.js';
import { type ProxyError, errorResponse, refusal } from './errors.js';
import { type KeyOutcome, checkKey, faultOf, holdRefusal } from './gate.js';
import { type ModelRules, allows } from './models.js';
import type { ProxyOutcome, ResolvedOptions, ResolvedUpstream } from './options.js';
import { Settlement } from './settle.js';
import { type BodyEnd, tap } from './tap.js';
import { upstreamError } from './upstream-errors.js';
import { clientHeaders, upstreamHeaders } from './upstream.js';

/** What every call of one proxy shares. */
export interface ProxyState {
  ak: AgentKey;
  o: ResolvedOptions;
  models: ModelRules;
  /** The catalog that prices holds (undefined: the bundled one). */
  prices: PriceCatalog | undefined;
  /** Set when it is not the AgentKey's: commits are then priced with it (see SettleContext). */
  ownPrices: PriceCatalog | undefined;
  /** Settlements in flight (see Settlement). */
  pending: Set<Promise<void>>;
  /** The keep-alive agents of the upstream calls. */
  agents: Agents;
}

type ValidKeyOutcome = Extract<KeyOutcome, { ok: true }>;

/**
 * One proxied request, top to bottom: the body, the key and its scope, the model and the
 * key's allow-list, the worst case held, the call upstream, and the answer passed through
 * while its usage is read; then the hold is committed with what was used, or released
 * when nothing was. Every refusal is in the upstream API's own error shape. The hold is
 * settled exactly once whatever happens (see Settlement), and the key's concurrency slot
 * is freed when the answer ends.
 */
export class ProxyCall {
  private readonly started = performance.now();
  private readonly requestId: string;
  private model: string | null = null;
  private keyId: number | null = null;
  private settlement: Settlement | null = null;

  constructor(
    private readonly s: ProxyState,
    private readonly spec: ApiSpec,
    private readonly upstreamName: string,
    private readonly req: Request,
    requestId?: string,
  ) {
    this.requestId = requestId || req.headers.get('x-request-id')?.slice(0, 128) || randomUUID();
  }

  async run(): Promise<Response> {
    const upstream = this.s.o.upstreams.get(this.upstreamName);
    if (!upstream || upstream.flavor !== this.spec.flavor) {
      const names = [...this.s.o.upstreams.values()].filter((u) => u.flavor === this.spec.flavor).map((u) => u.name);
      const message = `No upstream named ${JSON.stringify(this.upstreamName.slice(0, 64))} serves ${this.spec.path}; this proxy's are: ${names.join(', ') || 'none'}.`;
      return this.refuse(refusal('upstream_not_found', message), 'bad_request');
    }
    const read = await readJsonBody(this.req, this.s.o.bodyLimitBytes);
    if (!read.ok) return this.refuse(read.error, 'bad_request');
    const key = await checkKey(this.s.ak, this.req.headers, this.s.o.scope, this.s.o.storeTimeoutMs);
    if (!key.ok) return this.refuse(key.error, key.error.status >= 500 ? 'failed' : 'refused');
    this.keyId = key.key.keyId;
    let handedOff = false;
    try {
      const answer = await this.held(upstream, read.body, read.bytes, key);
      handedOff = answer.handedOff;
      return answer.res;
    } catch (err) {
      void this.settlement?.release();
      this.s.o.logger?.error({ requestId: this.requestId, upstream: upstream.name, err: err instanceof Error ? err.message : String(err) }, 'proxy: request failed');
      return this.refuse(faultOf(err), 'failed');
    } finally {
      if (!handedOff) key.release();
    }
  }

  /** From the model check to the answer; `handedOff` when the answer's body now owns the hold and the slot. */
  private async held(upstream: ResolvedUpstream, body: Record<string, unknown>, bytes: Uint8Array, key: ValidKeyOutcome): Promise<{ res: Response; handedOff: boolean }> {
    const { s, spec } = this;
    const done = (res: Response) => ({ res, handedOff: false });
    const model = body.model;
    if (typeof model !== 'string' || model.trim() === '') {
      return done(this.refuse(refusal('invalid_request', 'The request body needs "model": the name of a model.'), 'bad_request'));
    }
    this.model = model;
    const rules = await withTimeout(s.models.of(key.key), s.o.storeTimeoutMs);
    if (!allows(rules, model)) {
      const message =
        rules.kind === 'broken'
          ? 'This key\'s metadata "models" is not a list of model names, so it may use no model until an operator fixes it.'
          : `This key may not use model ${JSON.stringify(model.slice(0, 200))}; its metadata "models" allows ${rules.kind === 'some' ? rules.names.map((n) => JSON.stringify(n)).join(', ') : 'none'}.`;
      return done(this.refuse(refusal('model_not_allowed', message), 'refused'));
    }
    const { estimateMaxCost, countTokens } = await loadLlm();
    let estimate: MaxCost;
    try {
      const provider = upstream.provider === undefined ? {} : { provider: upstream.provider };
      estimate = estimateMaxCost({ model, api: spec.api, request: body, ...provider }, s.prices ? { prices: s.prices } : {});
    } catch (err) {
      // unknown_model, invalid_llm_request: the table's 400 rows, with the error's own sentence.
      if (err instanceof AgentKeyError) return done(this.refuse(refusal(err.code, err.message), 'bad_request'));
      throw err;
    }
    const holdStarted = performance.now();
    const hold = await key.reserve(estimate.costCents, s.o.holdTtl, { model, upstream: upstream.name, inputTokens: estimate.inputTokens, maxOutputTokens: estimate.maxOutputTokens });
    const holdSeconds = (performance.now() - holdStarted) / 1000;
    if (!hold.success) {
      const refusal = await holdRefusal(s.ak, hold, s.o.storeTimeoutMs);
      return done(this.refuse(refusal, refusal.status >= 500 ? 'failed' : 'refused'));
    }
    const settlement = new Settlement(
      {
        ak: s.ak,
        reservationId: hold.reservationId,
        heldCents: estimate.costCents,
        upstream: upstream.name,
        model,
        catalogModel: estimate.model,
        provider: upstream.provider,
        ownPrices: s.ownPrices,
        logger: s.o.logger,
        observer: s.o.observer,
        requestId: this.requestId,
      },
      s.pending,
    );
    this.settlement = settlement;

    const prepared = spec.prepare(body);
    const abort = new AbortController();
    const signal = this.req.signal;
    if (signal.aborted) abort.abort();
    else signal.addEventListener('abort', () => abort.abort(), { once: true });
    safely(() => s.o.observer.overhead?.({ upstream: upstream.name, api: spec.api, seconds: (performance.now() - this.started) / 1000, holdSeconds }));
    const payload = prepared.body ? JSON.stringify(prepared.body) : bytes;
    const sent = await send(new URL(upstream.base + spec.path), s.agents, upstreamHeaders(this.req.headers, upstream), payload, abort, s.o.timeoutMs);

    if (sent.kind === 'timeout') {
      void settlement.release();
      return done(this.refuse(refusal('upstream_timeout', `The upstream did not answer within ${s.o.timeoutMs} ms.`), 'upstream_timeout'));
    }
    if (sent.kind === 'unreachable') {
      void settlement.release();
      return done(this.refuse(refusal('upstream_unreachable', `The upstream could not be reached (${sent.detail}).`), 'upstream_unreachable'));
    }
    const meter = spec.meter(prepared.stripUsage);
    const count = (text: string) => countTokens(text, model);
    if (sent.kind === 'cancelled') {
      // The client went away while the upstream worked on it: what it read is billed.
      this.settle('cancelled', meter, estimate, count, 499);
      return done(errorResponse(spec.flavor, { status: 499, code: 'client_closed', message: 'The client closed the request.' }));
    }
    const res = sent.res;
    if (res.status < 200 || res.status > 299) {
      void settlement.release();
      const error = await upstreamError(upstream, res, s.o.timeoutMs);
      this.report('upstream_error', error.status);
      if (error.status >= 500 || res.status === 401 || res.status === 403) {
        s.o.logger?.error({ requestId: this.requestId, upstream: upstream.name, upstreamStatus: res.status, status: error.status }, 'proxy: the upstream answered an error');
      }
      return done(error);
    }
    const sse = (res.headers.get('content-type') ?? '').toLowerCase().includes('text/event-stream');
    if (!sse) {
      // A whole answer is small next to a stream and the client reads it whole anyway: it is
      // read straight off the socket and sent once it is all here, with its length; one that
      // breaks off is a 502, never half a body.
      let whole: Buffer;
      try {
        whole = await readWhole(res.body, s.o.timeoutMs);
      } catch {
        const how = signal.aborted ? 'cancelled' : 'broken';
        this.settle(how, meter, estimate, count, how === 'cancelled' ? 499 : 502);
        return done(errorResponse(spec.flavor, refusal('upstream_error', 'The upstream broke off its answer.')));
      }
      try {
        meter.json(JSON.parse(whole.toString('utf8')));
      } catch {
        /* not JSON: no usage in it (committed as counted) */
      }
      this.settle('complete', meter, estimate, count, res.status);
      return done(new Response(whole, { status: res.status, headers: clientHeaders(res.headers) }));
    }
    const release = key.release;
    const stream = tap(webStream(res.body), meter, {
      strip: prepared.stripUsage,
      flavor: spec.flavor,
      idleMs: s.o.timeoutMs,
      abort: () => abort.abort(),
      end: (how) => {
        release();
        this.settle(how, meter, estimate, count);
      },
    });
    return { res: new Response(stream, { status: res.status, headers: clientHeaders(res.headers) }), handedOff: true };
  }

  /** Commits what the call used: the usage the upstream reported, or, for a call cut short, what was counted. */
  private settle(how: BodyEnd, meter: Meter, estimate: MaxCost, count: (text: string) => number, status = 200): void {
    const reported = meter.usage;
    if (how === 'complete' && reported === null) {
      this.s.o.logger?.warn({ requestId: this.requestId, model: this.model }, 'proxy: the upstream reported no usage; the usage committed is counted');
    }
    const usage = reported ?? counted(meter, estimate, count);
    void this.settlement?.commit(usage, reported === null);
    this.report(how === 'complete' ? 'ok' : 'partial', status);
  }

  /** Answers a refusal (or a failure) in the upstream API's shape. */
  private refuse(error: ProxyError, outcome: ProxyOutcome): Response {
    this.report(outcome, error.status, error.code);
    return errorResponse(this.spec.flavor, error);
  }

  /** Counts the request and logs its line: never a key, never a body. */
  private report(outcome: ProxyOutcome, status: number, code?: string): void {
    const { o } = this.s;
    // A name no upstream has is the client's text: never a metrics label of its own.
    const upstream = o.upstreams.has(this.upstreamName) ? this.upstreamName : '(unknown)';
    safely(() => o.observer.request?.({ upstream, api: this.spec.api, outcome, model: this.model }));
    const line = {
      requestId: this.requestId,
      upstream: this.upstreamName,
      api: this.spec.api,
      model: this.model,
      keyId: this.keyId,
      status,
      outcome,
      ...(code ? { code } : {}),
      ms: Math.round((performance.now() - this.started) * 10) / 10,
    };
    if (outcome === 'ok' || outcome === 'partial') o.logger?.info(line, 'proxy');
    else if (status < 500) o.logger?.warn(line, 'proxy');
    else o.logger?.error(line, 'proxy');
  }
}

/**
 * The usage of a call cut short: the input as the upstream reported it (Anthropic's
 * message_start) or as the hold bounded it, and the output counted from the text that came
 * (at most what the request allowed).
 */
function counted(meter: Meter, estimate: MaxCost, count: (text: string) => number): TokenUsage {
  const input = meter.input ?? { inputTokens: estimate.inputTokens, outputTokens: 0 };
  let output = Math.max(count(meter.text()), input.outputTokens ?? 0);
  if (estimate.maxOutputTokens > 0) output = Math.min(output, estimate.maxOutputTokens);
  const usage: TokenUsage = { ...input, outputTokens: output };
  delete usage.reasoningTokens;
  return usage;
}

function safely(f: () => void): void {
  try {
    f();
  } catch {
    /* an observer's fault is not the request's */
  }
}
