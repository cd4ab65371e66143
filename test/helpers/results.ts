import { expect } from 'vitest';
import type { AgentKey, CommitResult, ReserveResult, ValidKey, ValidationResult } from '../../src/index.js';

/** Narrowing the library's results to their success shape, failing the test otherwise. */

export function valid(result: ValidationResult): ValidKey {
  expect(result.valid).toBe(true);
  return result as ValidKey;
}

export type Reserved = Extract<ReserveResult, { success: true }>;
export function reserved(result: ReserveResult): Reserved {
  expect(result, JSON.stringify(result)).toMatchObject({ success: true });
  return result as Reserved;
}

export type Committed = Extract<CommitResult, { success: true }>;
export function committed(result: CommitResult): Committed {
  expect(result, JSON.stringify(result)).toMatchObject({ success: true });
  return result as Committed;
}

/** A well-formed reservation id that no hold has. */
export function unknownReservationId(): string {
  return 'rsv_' + 'A'.repeat(12) + 'z'.repeat(12);
}

/** An ISO-8601 instant in UTC with milliseconds, as the library returns them. */
export const ISO = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

/** What a key has spent, in cents, as getKey() shows it; the key must exist. */
export async function spentOf(ak: AgentKey, id: number): Promise<number> {
  const info = await ak.getKey(id);
  if (!info) throw new Error(`key ${id} not found`);
  return Number(info.spentCents);
}
