import type { Meter } from './apis.js';
import { streamErrorEvent } from './errors.js';
import type { Flavor } from './options.js';
import { SseParser } from './sse.js';

/** How a body passed through ended. */
export type BodyEnd =
  /** The upstream sent all of it. */
  | 'complete'
  /** The client went away. */
  | 'cancelled'
  /** The upstream broke off, or went quiet for longer than the idle bound. */
  | 'broken';

export interface TapOptions {
  /** Leave out of the client's stream the events the meter says to (else every byte goes through as it came). */
  strip: boolean;
  flavor: Flavor;
  /** The longest wait for the next chunk, in ms. */
  idleMs: number;
  /** Cancels the upstream call. */
  abort(): void;
  /** Called once, when the body ended, however it ended. */
  end(how: BodyEnd): void;
}

const IDLE = Symbol('idle');
type ReadResult = Awaited<ReturnType<ReadableStreamDefaultReader<Uint8Array>['read']>>;

/**
 * An upstream's event stream as the client's: read only as fast as the client reads (a pull
 * stream: at most one chunk waits here), each chunk shown to the meter on its way. Nothing
 * is held back but an event's own bytes when events are being left out. A client that goes
 * away cancels the upstream call; an upstream that breaks off (or goes quiet for `idleMs`)
 * ends the stream with an error event in the flavor's shape (the status, 200, is already sent).
 */
export function tap(body: ReadableStream<Uint8Array>, meter: Meter, o: TapOptions): ReadableStream<Uint8Array> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  const encoder = new TextEncoder();
  const parser = new SseParser();
  let ended = false;
  const end = (how: BodyEnd) => {
    if (ended) return;
    ended = true;
    o.end(how);
  };

  /** What of `chunk` goes to the client. */
  const inspect = (chunk: Uint8Array): Uint8Array | null => {
    const events = parser.push(decoder.decode(chunk, { stream: true }));
    if (!o.strip) {
      for (const ev of events) meter.event(ev);
      return chunk;
    }
    let out = '';
    for (const ev of events) if (!meter.event(ev)) out += ev.raw;
    return out === '' ? null : encoder.encode(out);
  };

  /** Reads what is left at the end; returns what of it goes to the client. */
  const finish = (): Uint8Array | null => {
    const events = parser.push(decoder.decode());
    let out = '';
    for (const ev of events) if (!meter.event(ev) || !o.strip) out += ev.raw;
    // An event the upstream did not close with a blank line: passed on, and read for its usage too.
    const rest = parser.rest();
    if (rest !== '') {
      for (const ev of new SseParser().push(`${rest}\n\n`)) meter.event(ev);
      out += rest;
    }
    return o.strip && out !== '' ? encoder.encode(out) : null;
  };

  return new ReadableStream<Uint8Array>({
    async pull(controller) {
      for (;;) {
        let next: ReadResult;
        try {
          next = await readWithin(reader, o.idleMs);
        } catch (err) {
          if (ended) return;
          o.abort();
          reader.cancel().catch(() => {});
          end('broken');
          const why = err === IDLE ? `The upstream sent nothing for ${o.idleMs} ms; the stream was cut.` : 'The upstream broke off the stream.';
          controller.enqueue(encoder.encode(streamErrorEvent(o.flavor, why)));
          controller.close();
          return;
        }
        if (ended) return;
        if (next.done) {
          const tail = finish();
          if (tail) controller.enqueue(tail);
          controller.close();
          end('complete');
          return;
        }
        const out = inspect(next.value);
        if (out) {
          controller.enqueue(out);
          return;
        }
      }
    },
    cancel() {
      end('cancelled');
      o.abort();
      reader.cancel().catch(() => {});
    },
  });
}

function readWithin(reader: ReadableStreamDefaultReader<Uint8Array>, ms: number): Promise<ReadResult> {
  let timer: NodeJS.Timeout | undefined;
  const idle = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(IDLE), ms);
  });
  return Promise.race([reader.read(), idle]).finally(() => clearTimeout(timer));
}
