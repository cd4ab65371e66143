import { expect } from 'vitest';
import { AgentKeyError } from '../../src/index.js';

/**
 * Checks on the errors the library throws: an AgentKeyError with a code and a one-sentence
 * message (ends with a full stop, one line), rejected by async methods rather than thrown.
 */

/** `err` is an AgentKeyError with `code` and a one-sentence message. */
export function expectAgentKeyError(err: unknown, code: string, label = code): asserts err is AgentKeyError {
  expect(err, `${label}: expected AgentKeyError ${code}`).toBeInstanceOf(AgentKeyError);
  expect((err as AgentKeyError).code, label).toBe(code);
  expect((err as AgentKeyError).name).toBe('AgentKeyError');
  expect((err as Error).message, label).toMatch(/\.$/);
  expect((err as Error).message, label).not.toContain('\n');
}

/** Calls an async method: it must return a rejected promise (not throw synchronously) with `code`. */
export async function rejectsWith(call: () => Promise<unknown>, code: string, label = code): Promise<AgentKeyError> {
  let promise: Promise<unknown> | undefined;
  expect(() => {
    promise = call();
  }, `${label}: threw synchronously instead of rejecting`).not.toThrow();
  const err = await (promise as Promise<unknown>).then(
    (value) => ({ resolved: value }),
    (e: unknown) => e,
  );
  expectAgentKeyError(err, code, label);
  return err;
}

/** `call()` must throw an AgentKeyError with `code` at once. */
export function throwsWith(call: () => unknown, code: string, label = code): AgentKeyError {
  let err: unknown;
  try {
    call();
  } catch (e) {
    err = e;
  }
  expectAgentKeyError(err, code, label);
  return err;
}

/** The AgentKeyError a promise rejects with; fails when it resolves or rejects with anything else. */
export async function agentKeyErrorOf(promise: Promise<unknown>): Promise<AgentKeyError> {
  const err = await promise.then(
    () => new Error('expected the call to fail'),
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(AgentKeyError);
  return err as AgentKeyError;
}

/** The AgentKeyError code a promise (or a call) rejects with, 'resolved' when it does not; any other error is thrown on. */
export async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (err) {
    if (err instanceof AgentKeyError) return err.code;
    throw err;
  }
  return 'resolved';
}
