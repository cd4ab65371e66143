import type { LlmApi, TokenUsage } from '../llm/index.js';
import type { Flavor } from './options.js';
import type { SseEvent } from './sse.js';
import { anthropicUsage, openaiChatUsage, openaiResponsesUsage } from './usage.js';

/**
 * The four APIs the proxy speaks: where each lives, how a request is changed before it goes
 * upstream (only to ask for usage on a stream), and how its answer is metered: the usage
 * the upstream reports, and the text produced so far for a call cut short.
 */

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => v !== null && typeof v === 'object' && !Array.isArray(v);

/** Reads one answer: a JSON body, or a stream's events one by one. */
export interface Meter {
  /** The usage the upstream reported for the whole call, once it has. */
  usage: TokenUsage | null;
  /** The input's usage, when the upstream reported it before the end (Anthropic's message_start). */
  input: TokenUsage | null;
  /** A whole (non-streamed) answer. */
  json(body: unknown): void;
  /** One event of a stream; true when it is to be left out of the client's stream. */
  event(ev: SseEvent): boolean;
  /** The output text produced so far (text, tool arguments, reasoning), for a call cut short. */
  text(): string;
}

export interface ApiSpec {
  api: LlmApi;
  flavor: Flavor;
  /** The path under the upstream's base, as under /proxy/<upstream>. */
  path: string;
  /**
   * The body to send upstream, when it must change (null: the client's bytes go as they
   * are), and whether the client's stream must then drop what was added.
   */
  prepare(body: Obj): { body: Obj | null; stripUsage: boolean };
  meter(stripUsage: boolean): Meter;
}

abstract class BaseMeter implements Meter {
  usage: TokenUsage | null = null;
  input: TokenUsage | null = null;
  protected readonly parts: string[] = [];

  abstract json(body: unknown): void;
  abstract event(ev: SseEvent): boolean;

  text(): string {
    return this.parts.join('');
  }

  protected add(value: unknown): void {
    if (typeof value === 'string' && value.length > 0) this.parts.push(value);
  }
}

/** An event's data as JSON, or null ('[DONE]', a comment, or anything else). */
function dataOf(ev: SseEvent): Obj | null {
  if (ev.data === '' || ev.data === '[DONE]') return null;
  try {
    const v: unknown = JSON.parse(ev.data);
    return isObj(v) ? v : null;
  } catch {
    return null;
  }
}

const list = (v: unknown): unknown[] => (Array.isArray(v) ? v : []);

class ChatMeter extends BaseMeter {
  constructor(private readonly stripUsage: boolean) {
    super();
  }

  json(body: unknown): void {
    if (!isObj(body)) return;
    this.usage = openaiChatUsage(body.usage);
    for (const c of list(body.choices)) if (isObj(c) && isObj(c.message)) this.message(c.message);
  }

  event(ev: SseEvent): boolean {
    const data = dataOf(ev);
    if (data === null) return false;
    for (const c of list(data.choices)) if (isObj(c) && isObj(c.delta)) this.message(c.delta);
    if (!isObj(data.usage)) return false;
    this.usage = openaiChatUsage(data.usage) ?? this.usage;
    // The chunk include_usage adds: no choices, only the usage. Dropped when the client did not ask for it.
    return this.stripUsage && Array.isArray(data.choices) && data.choices.length === 0;
  }

  private message(m: Obj): void {
    this.add(m.content);
    this.add(m.refusal);
    this.add(m.reasoning_content);
    if (isObj(m.function_call)) this.add(m.function_call.arguments);
    for (const t of list(m.tool_calls)) if (isObj(t) && isObj(t.function)) this.add(t.function.arguments);
  }
}

class ResponsesMeter extends BaseMeter {
  json(body: unknown): void {
    if (!isObj(body)) return;
    this.usage = openaiResponsesUsage(body.usage);
    for (const item of list(body.output)) {
      if (!isObj(item)) continue;
      this.add(item.arguments);
      for (const part of list(item.content)) if (isObj(part)) this.add(part.text);
    }
  }

  event(ev: SseEvent): boolean {
    const data = dataOf(ev);
    const type = typeof data?.type === 'string' ? data.type : '';
    if (data === null) return false;
    if (type === 'response.completed' || type === 'response.incomplete' || type === 'response.failed') {
      const response = isObj(data.response) ? data.response : {};
      this.usage = openaiResponsesUsage(response.usage) ?? this.usage;
    } else if (type.endsWith('.delta') && !type.includes('audio')) this.add(data.delta);
    return false;
  }
}

class EmbeddingsMeter extends BaseMeter {
  json(body: unknown): void {
    if (isObj(body)) this.usage = openaiChatUsage(body.usage);
  }

  event(): boolean {
    return false;
  }
}

class MessagesMeter extends BaseMeter {
  json(body: unknown): void {
    if (!isObj(body)) return;
    this.usage = anthropicUsage(body.usage);
    for (const block of list(body.content)) if (isObj(block)) this.add(block.text);
  }

  event(ev: SseEvent): boolean {
    const data = dataOf(ev);
    if (data === null) return false;
    if (data.type === 'message_start' && isObj(data.message)) this.input = anthropicUsage(data.message.usage);
    else if (data.type === 'content_block_delta' && isObj(data.delta)) {
      this.add(data.delta.text);
      this.add(data.delta.partial_json);
      this.add(data.delta.thinking);
    } else if (data.type === 'message_delta') this.usage = anthropicUsage(data.usage, this.input) ?? this.usage;
    return false;
  }
}

/** Chat completions: a stream is asked for its usage (`stream_options.include_usage`) when the client did not ask. */
const chat: ApiSpec = {
  api: 'openai.chat',
  flavor: 'openai',
  path: '/v1/chat/completions',
  prepare(body) {
    if (body.stream !== true) return { body: null, stripUsage: false };
    const options = isObj(body.stream_options) ? body.stream_options : {};
    if (options.include_usage === true) return { body: null, stripUsage: false };
    return { body: { ...body, stream_options: { ...options, include_usage: true } }, stripUsage: true };
  },
  meter: (stripUsage) => new ChatMeter(stripUsage),
};

const unchanged = () => ({ body: null, stripUsage: false });

/** Every API, by the path it is served at under /proxy/<upstream>. */
export const APIS: readonly ApiSpec[] = [
  chat,
  { api: 'openai.responses', flavor: 'openai', path: '/v1/responses', prepare: unchanged, meter: () => new ResponsesMeter() },
  { api: 'openai.embeddings', flavor: 'openai', path: '/v1/embeddings', prepare: unchanged, meter: () => new EmbeddingsMeter() },
  { api: 'anthropic.messages', flavor: 'anthropic', path: '/v1/messages', prepare: unchanged, meter: () => new MessagesMeter() },
];
