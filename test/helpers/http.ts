import type request from 'supertest';
import { expect } from 'vitest';

/**
 * Every agentkey HTTP error: JSON `{ error: { code, message } }` with a snake_case code and
 * a one-sentence message, and no stack trace or internals in the body. `quotesInput` allows
 * messages that quote the client's own (fuzzed) input, which may contain "Error:".
 */
export function expectJsonError(
  res: request.Response,
  status: number,
  code?: string,
  options: { quotesInput?: boolean } = {},
): void {
  expect({ status: res.status, code: res.body?.error?.code }).toEqual({ status, code: code ?? res.body?.error?.code });
  expectErrorShape(res, options);
  expectOneSentence(res.body.error.message);
}

export function expectErrorShape(res: request.Response, options: { quotesInput?: boolean } = {}): void {
  expect(res.headers['content-type']).toMatch(/^application\/json/);
  expect(res.body).toEqual({ error: expect.objectContaining({ code: expect.any(String), message: expect.any(String) }) });
  expect(res.body.error.code).toMatch(/^[a-z_]+$/);
  expect(res.text).not.toMatch(options.quotesInput ? /\n\s+at |node_modules|\.ts:\d+|\.js:\d+/ : /\n\s+at |Error:|node_modules|\.ts:\d+|\.js:\d+/);
}

/**
 * One sentence: no line break, an end mark, and no end mark followed by a new sentence
 * within. What a message echoes of the input is not its wording, so it is left out of
 * that last check: a JSON-quoted value (`got "x. Y"`), and the package's unquoted
 * `Invalid duration: <input> (<field> must be ...` (a fuzzer sent `". A"` there).
 */
export function expectOneSentence(message: string): void {
  expect(message.length).toBeGreaterThan(0);
  expect(message).not.toMatch(/\n/);
  expect(message).toMatch(/[.!?]$/);
  const wording = message
    .replace(/^Invalid duration: .* \((?=[A-Za-z_.]+ must be)/s, 'Invalid duration: x (')
    .replace(/"(?:[^"\\]|\\.)*"/g, '"x"');
  expect(wording, message).not.toMatch(/[.!?]\s+[A-Z]/);
}

/**
 * The `error` strings the package sent for these refusals (by this project's code); any
 * other refusal shows its message there. Written out here, not taken from src/.
 */
export const PACKAGE_ERRORS: Readonly<Record<string, string>> = {
  missing_key: 'Missing API key',
  invalid_key: 'invalid',
  key_expired: 'expired',
  key_revoked: 'revoked',
  budget_exceeded: 'budget_exceeded',
  insufficient_scope: 'insufficient_scope',
  invalid_email: 'Valid email is required',
  email_required: 'Valid email is required',
};

/**
 * An error from one of the package's own HTTP surfaces (agentKeyMiddleware, the self-serve
 * routes): `error` is a string, as the package's clients parse it, with this project's
 * `code` and one-sentence `message` beside it.
 */
export function expectPackageError(res: request.Response, status: number, error: string | RegExp, code?: string): void {
  expect(res.headers['content-type']).toMatch(/^application\/json/);
  expect(res.status, res.text).toBe(status);
  expect(typeof res.body.error).toBe('string');
  if (typeof error === 'string') expect(res.body.error).toBe(error);
  else expect(res.body.error).toMatch(error);
  expect(res.body.code).toMatch(/^[a-z_]+$/);
  if (code !== undefined) expect(res.body.code).toBe(code);
  expectOneSentence(res.body.message);
  expect(res.text).not.toMatch(/\n\s+at |node_modules|\.ts:\d+|hunter2|ECONNREFUSED/);
}
