import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { MAX_CENTS, MICROS_PER_CENT, budgetToMicros, centsToMicros, isValidCents, microsToCents } from '../src/money.js';
import { throwsWith } from './helpers/errors.js';

/** n micros written as a decimal number of cents, e.g. 300 -> '0.0300'. */
function microsAsCentsText(n: number): string {
  const s = String(n).padStart(5, '0');
  return `${s.slice(0, -4)}.${s.slice(-4)}`;
}

describe('money units', () => {
  it('happy: one micro-dollar is a ten-thousandth of a cent, and $1 billion fits with room to spare', () => {
    expect(MICROS_PER_CENT).toBe(10_000);
    expect(MAX_CENTS).toBeGreaterThanOrEqual(1e11); // $1 billion
    // Every budget and every single cost stays a safe integer in micros, and budget + cost fits a BIGINT.
    expect(Number.isSafeInteger(MAX_CENTS * MICROS_PER_CENT)).toBe(true);
    expect(2 * MAX_CENTS * MICROS_PER_CENT).toBeLessThan(2 ** 63);
  });
});

describe('centsToMicros', () => {
  it('happy: converts the decimal the user wrote, not its binary approximation', () => {
    expect(Math.ceil(0.07 * MICROS_PER_CENT)).toBe(701); // what a naive round-up would charge
    expect(centsToMicros(0.07)).toBe(700);
    expect(centsToMicros(0.03)).toBe(300);
    expect(centsToMicros(0.1)).toBe(1_000);
    expect(centsToMicros(0.0001)).toBe(1);
    expect(centsToMicros(15)).toBe(150_000);
    expect(centsToMicros(0)).toBe(0);
    expect(centsToMicros(-0)).toBe(0);
    expect(centsToMicros(1e11)).toBe(1e15);
    expect(centsToMicros(99_999_999_999.9999)).toBe(999_999_999_999_999);
    expect(centsToMicros(MAX_CENTS)).toBe(MAX_CENTS * MICROS_PER_CENT);
  });

  it('happy: a $0.0003 call is 0.03 cents (300 micros), never rounded up to a whole cent', () => {
    expect(centsToMicros(0.03)).toBe(300);
    expect(microsToCents(centsToMicros(0.03))).toBe(0.03);
  });

  it('security: a cost finer than a micro-dollar is rounded up, so nothing is under-charged', () => {
    expect(centsToMicros(0.00001)).toBe(1);
    expect(centsToMicros(1.23456)).toBe(12_346);
    expect(centsToMicros(1e-7)).toBe(1);
    expect(centsToMicros(5e-324)).toBe(1);
    expect(centsToMicros(1.2e-3)).toBe(12); // exponent form without a sub-micro remainder
  });

  it('happy: float noise lands on the boundary it came from; 10,000 charges of 0.1 + 0.2 cost 3,000 cents, not 3,001', () => {
    expect(0.1 + 0.2).toBe(0.30000000000000004);
    expect(centsToMicros(0.1 + 0.2)).toBe(3_000);
    expect(centsToMicros(0.1 + 0.2, 'down')).toBe(3_000);
    expect(centsToMicros(0.3 - 0.1)).toBe(2_000); // 0.19999999999999998
    expect(centsToMicros(0.7 + 0.1)).toBe(8_000); // 0.7999999999999999
    let total = 0;
    for (let i = 0; i < 10_000; i++) total += centsToMicros(0.1 + 0.2);
    expect(microsToCents(total)).toBe(3_000);
    // a genuine remainder still rounds: up for a cost, down for a budget
    expect(centsToMicros(0.30001)).toBe(3_001);
    expect(centsToMicros(0.30001, 'down')).toBe(3_000);
  });

  it('happy: a sum of decimal prices, in any order, costs what the decimals add up to (property)', () => {
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 0, max: 100_000_000 }), { minLength: 1, maxLength: 12 }), (parts) => {
        const asFloat = parts.reduce((sum, micros) => sum + micros / MICROS_PER_CENT, 0);
        const exact = parts.reduce((sum, micros) => sum + micros, 0);
        expect(centsToMicros(asFloat)).toBe(exact);
      }),
    );
  });

  it('happy: a decimal string is read exactly, digit for digit', () => {
    expect(centsToMicros('0.3')).toBe(3_000);
    expect(centsToMicros('0.30000000000000004')).toBe(3_001); // written out, it is more than 0.3
    expect(centsToMicros('0.30000000000000004', 'down')).toBe(3_000);
    expect(centsToMicros('0.00001')).toBe(1);
    expect(centsToMicros('15')).toBe(150_000);
    expect(centsToMicros('-0.5')).toBe(-5_000);
    expect(centsToMicros(`${MAX_CENTS}`)).toBe(MAX_CENTS * MICROS_PER_CENT);
    expect(budgetToMicros('500', 'budget_cents')).toBe(5_000_000);
  });

  it('security: a budget finer than a micro-dollar is rounded down, so it is never exceeded', () => {
    expect(centsToMicros(0.00001, 'down')).toBe(0);
    expect(centsToMicros(1.23456, 'down')).toBe(12_345);
    expect(centsToMicros(0.03, 'down')).toBe(300);
    expect(budgetToMicros(0.00005)).toBe(0);
    expect(budgetToMicros(0.00015)).toBe(1);
  });

  it('happy: every whole number of micros up to $50 billion survives cents -> micros exactly (property)', () => {
    fc.assert(
      fc.property(fc.integer({ min: 0, max: 5e15 }), (n) => {
        const cents = n / MICROS_PER_CENT;
        expect(centsToMicros(cents)).toBe(n);
        expect(centsToMicros(cents, 'down')).toBe(n);
      }),
      { numRuns: 2_000 },
    );
  });

  it('happy: rounding up and down differ by at most one micro (property)', () => {
    fc.assert(
      fc.property(fc.double({ min: 0, max: 1e9, noNaN: true }), (cents) => {
        const diff = centsToMicros(cents) - centsToMicros(cents, 'down');
        expect(diff === 0 || diff === 1).toBe(true);
      }),
      { numRuns: 2_000 },
    );
  });
});

describe('microsToCents', () => {
  it('happy: gives back the exact decimal number of cents (property)', () => {
    expect(microsToCents(600_000)).toBe(60);
    expect(microsToCents(300)).toBe(0.03);
    expect(microsToCents(3_000)).toBe(0.3); // unlike 0.1 + 0.2
    fc.assert(
      fc.property(fc.integer({ min: 0, max: MAX_CENTS * MICROS_PER_CENT }), (n) => {
        expect(microsToCents(n)).toBe(Number(microsAsCentsText(n)));
      }),
      { numRuns: 2_000 },
    );
  });
});

describe('isValidCents', () => {
  it('happy: accepts finite, non-negative amounts up to MAX_CENTS', () => {
    for (const v of [0, 0.0001, 0.03, 15, 1e11, MAX_CENTS]) expect(isValidCents(v)).toBe(true);
  });

  it('error: refuses negative, NaN, infinite, too large and non-numeric values', () => {
    for (const v of [-0.0001, -1, NaN, Infinity, -Infinity, MAX_CENTS + 1, null, undefined, 10n, {}, [], true]) {
      expect(isValidCents(v), String(v)).toBe(false);
    }
  });

  it('happy: decimal strings are amounts too; anything but plain digits and one point is refused', () => {
    for (const v of ['5', '0', '0.3', '0.30000000000000004', '15.0000', `${MAX_CENTS}`, `${MAX_CENTS}.000`]) expect(isValidCents(v), v).toBe(true);
    for (const v of ['', ' 5', '5 ', '-5', '+5', '5e3', '0x10', '1,5', '.5', '5.', '1.2.3', 'NaN', 'Infinity', `${MAX_CENTS}.0001`, '99999999999999999']) {
      expect(isValidCents(v), v).toBe(false);
    }
    expect(isValidCents('-5', true)).toBe(true);
    expect(isValidCents('--5', true)).toBe(false);
  });
});

describe('budgetToMicros', () => {
  it('happy: null and undefined mean an unlimited budget', () => {
    expect(budgetToMicros(null)).toBeNull();
    expect(budgetToMicros(undefined)).toBeNull();
    expect(budgetToMicros(5000)).toBe(50_000_000);
  });

  it('error: anything else throws AgentKeyError invalid_budget naming the field', () => {
    for (const v of [-1, NaN, Infinity, '5e3', '-5', ' 5', MAX_CENTS + 1, true, {}, []]) {
      const err = throwsWith(() => budgetToMicros(v, 'budget_cents'), 'invalid_budget', String(v));
      expect(err.message).toContain('budget_cents');
    }
  });
});
