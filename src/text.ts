import { AgentKeyError } from './errors.js';

/**
 * The characters no text input may hold: C0 and C1 control characters (U+0000–U+001F,
 * U+007F–U+009F: escape sequences, BEL, NUL...) and the bidirectional marks, embeddings,
 * overrides and isolates (U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069), which
 * make text read differently from what it is. Names, ids and labels end up in operators'
 * terminals, logs and dashboards; such characters have no place in them.
 */
const UNSAFE_TEXT = /[\u0000-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]/;

/**
 * The one rule for text the library accepts (names, account ids, subjects, user ids,
 * delegatedBy, idempotency keys, reasons): throws `invalid_argument` when `value` holds a
 * character of UNSAFE_TEXT, naming the field and the character, never echoing the text.
 */
export function checkText(value: string, field: string): string {
  const found = UNSAFE_TEXT.exec(value);
  if (found) {
    const code = (found[0].codePointAt(0) as number).toString(16).toUpperCase().padStart(4, '0');
    throw new AgentKeyError(
      'invalid_argument',
      `${field} must not contain control characters or bidirectional formatting characters; got U+${code} at index ${found.index}.`,
    );
  }
  return value;
}
