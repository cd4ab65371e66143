/**
 * An incremental reader of server-sent events (the WHATWG `text/event-stream` format: lines
 * ended by CRLF, LF or CR, an event ended by a blank line). It keeps each event's raw
 * text, so a stream can be passed on event by event exactly as it came.
 */
export interface SseEvent {
  /** The event's text as received, its closing blank line included. */
  raw: string;
  /** The `event:` field, or null. */
  event: string | null;
  /** The `data:` lines joined with '\n'. */
  data: string;
}

export class SseParser {
  private buffer = '';
  /** Where the next line starts within `buffer`. */
  private scanned = 0;
  /** Where the current event starts within `buffer`. */
  private eventStart = 0;
  private event: string | null = null;
  private data: string[] = [];

  /** Feeds text; returns the events it completed. */
  push(text: string): SseEvent[] {
    this.buffer += text;
    const events: SseEvent[] = [];
    for (;;) {
      const end = lineEnd(this.buffer, this.scanned);
      if (end === null) break;
      const line = this.buffer.slice(this.scanned, end.at);
      this.scanned = end.next;
      if (line === '') {
        // A blank line with no field before it (or only comments) is no event: its text goes with the next one, so no byte is lost.
        if (this.data.length === 0 && this.event === null) continue;
        events.push({ raw: this.buffer.slice(this.eventStart, this.scanned), event: this.event, data: this.data.join('\n') });
        this.eventStart = this.scanned;
        this.event = null;
        this.data = [];
      } else this.field(line);
    }
    // Keep only the unfinished event.
    this.buffer = this.buffer.slice(this.eventStart);
    this.scanned -= this.eventStart;
    this.eventStart = 0;
    return events;
  }

  /** The text of an unfinished event at the end of the stream (passed on as it is; never parsed as an event). */
  rest(): string {
    const rest = this.buffer;
    this.buffer = '';
    this.scanned = 0;
    this.data = [];
    this.event = null;
    return rest;
  }

  private field(line: string): void {
    if (line.startsWith(':')) return;
    const colon = line.indexOf(':');
    const name = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? '' : line.slice(colon + 1);
    if (value.startsWith(' ')) value = value.slice(1);
    if (name === 'data') this.data.push(value);
    else if (name === 'event') this.event = value;
  }
}

/** The end of the line starting at `from`: where it ends and where the next begins; null when it is not complete yet. */
function lineEnd(text: string, from: number): { at: number; next: number } | null {
  for (let i = from; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 10) return { at: i, next: i + 1 };
    if (c === 13) {
      // A CR at the end of what came so far may be the first half of a CRLF.
      if (i + 1 >= text.length) return null;
      return { at: i, next: text.charCodeAt(i + 1) === 10 ? i + 2 : i + 1 };
    }
  }
  return null;
}
