import { afterEach, describe, expect, it } from 'vitest';
import { addDuration, addUtcMonths, durationMs, parseDuration, parseInstant, parsePeriod } from '../src/time.js';
import { throwsWith } from './helpers/errors.js';

const at = (iso: string) => new Date(iso);
const plus = (iso: string, duration: string) => addDuration(at(iso), parseDuration(duration)).toISOString();

export const MALFORMED_DURATIONS: unknown[] = [
  '7x', '', ' ', '00d', '1.5h', -1, 1, 7, '-1d', '999999999d', 'm', 'mo', 'd7', '7 d', '7D', '7M', '1y',
  '1e3s', '７d', '7dd', '7d;', 'Infinity', null, {}, [], '40000d', '5300w', '1300mo',
];

describe('parseDuration', () => {
  it('happy: accepts s, m (minutes), h, d, w and mo', () => {
    expect(parseDuration('30s')).toEqual({ amount: 30, unit: 's' });
    expect(parseDuration('30m')).toEqual({ amount: 30, unit: 'm' });
    expect(parseDuration('1h')).toEqual({ amount: 1, unit: 'h' });
    expect(parseDuration('7d')).toEqual({ amount: 7, unit: 'd' });
    expect(parseDuration('2w')).toEqual({ amount: 2, unit: 'w' });
    expect(parseDuration('1mo')).toEqual({ amount: 1, unit: 'mo' });
    expect(parseDuration('36500d')).toEqual({ amount: 36500, unit: 'd' }); // 100 years is the cap
    expect(parseDuration('1000mo')).toEqual({ amount: 1000, unit: 'mo' });
    // Zero, as in the package: a key given '0h' is expired at once.
    expect(parseDuration('0h')).toEqual({ amount: 0, unit: 'h' });
    expect(parseDuration('0mo')).toEqual({ amount: 0, unit: 'mo' });
  });

  it("error: messages begin with the package's 'Invalid duration: <input>'", () => {
    expect(() => parseDuration('7x')).toThrow(/^Invalid duration: 7x \(/);
    expect(() => parseDuration(42)).toThrow(/^Invalid duration: 42 \(/);
  });

  it('error: a zero ttl is refused: a hold must last a while', () => {
    throwsWith(() => durationMs('0s', 'ttl', 86_400_000), 'invalid_duration');
    expect(durationMs('1s', 'ttl', 86_400_000)).toBe(1_000);
  });

  it('error: a malformed or absurdly long duration throws invalid_duration', () => {
    for (const value of MALFORMED_DURATIONS) {
      throwsWith(() => parseDuration(value), 'invalid_duration', JSON.stringify(value));
    }
  });

  it('error: the message names the field that was wrong', () => {
    try {
      parseDuration('7x', 'expires_in');
      expect.unreachable();
    } catch (err) {
      expect((err as Error).message).toContain('expires_in');
      expect((err as Error).message).toContain('7x');
    }
  });
});

describe('addDuration', () => {
  it('happy: s, m, h, d and w are exact; m is minutes, not months', () => {
    const t = '2024-03-10T12:00:00.000Z';
    expect(plus(t, '30s')).toBe('2024-03-10T12:00:30.000Z');
    expect(plus(t, '30m')).toBe('2024-03-10T12:30:00.000Z');
    expect(plus(t, '1h')).toBe('2024-03-10T13:00:00.000Z');
    expect(plus(t, '7d')).toBe('2024-03-17T12:00:00.000Z');
    expect(plus(t, '2w')).toBe('2024-03-24T12:00:00.000Z');
  });

  it('happy: months are UTC calendar months clamped to the end of shorter months', () => {
    expect(plus('2023-01-31T10:20:30.456Z', '1mo')).toBe('2023-02-28T10:20:30.456Z');
    expect(plus('2024-01-31T10:20:30.456Z', '1mo')).toBe('2024-02-29T10:20:30.456Z');
    expect(plus('2023-01-31T00:00:00.000Z', '2mo')).toBe('2023-03-31T00:00:00.000Z');
    expect(plus('2023-01-31T00:00:00.000Z', '3mo')).toBe('2023-04-30T00:00:00.000Z');
    expect(plus('2023-12-31T23:59:59.999Z', '2mo')).toBe('2024-02-29T23:59:59.999Z');
    expect(plus('2023-11-30T00:00:00.000Z', '3mo')).toBe('2024-02-29T00:00:00.000Z');
    expect(plus('2024-02-29T00:00:00.000Z', '12mo')).toBe('2025-02-28T00:00:00.000Z');
    expect(plus('2024-05-15T08:00:00.000Z', '25mo')).toBe('2026-06-15T08:00:00.000Z');
    expect(addUtcMonths(at('2024-01-31T00:00:00Z'), 1).toISOString()).toBe('2024-02-29T00:00:00.000Z');
  });

  describe('in a server time zone far from UTC (Pacific/Kiritimati, UTC+14)', () => {
    const saved = process.env.TZ;
    afterEach(() => {
      if (saved === undefined) delete process.env.TZ;
      else process.env.TZ = saved;
    });

    it('happy: computes the same instants as in UTC', () => {
      const cases: [string, string][] = [
        ['2023-01-31T10:00:00.000Z', '1mo'],
        ['2024-01-31T20:00:00.000Z', '1mo'], // already Feb 1 on the local calendar
        ['2023-12-31T23:00:00.000Z', '2mo'],
        ['2024-03-30T12:00:00.000Z', '1d'],
        ['2024-03-10T11:00:00.000Z', '30m'],
      ];
      process.env.TZ = 'UTC';
      const utc = cases.map(([t, d]) => plus(t, d));
      process.env.TZ = 'Pacific/Kiritimati';
      expect(new Date('2024-06-01T00:00:00Z').getTimezoneOffset()).toBe(-840); // the zone really is in effect
      const kiritimati = cases.map(([t, d]) => plus(t, d));
      expect(kiritimati).toEqual(utc);
      expect(kiritimati[1]).toBe('2024-02-29T20:00:00.000Z');
    });
  });
});

describe('parsePeriod', () => {
  it("happy: 'day', 'month' and null", () => {
    expect(parsePeriod('day')).toBe('day');
    expect(parsePeriod('month')).toBe('month');
    expect(parsePeriod(null)).toBeNull();
    expect(parsePeriod(undefined)).toBeNull();
  });

  it('error: any other period throws invalid_period', () => {
    for (const value of ['week', 'year', 'Day', 'MONTH', 'monthly', 'daily', '', ' day', 1, {}, ['day'], true]) {
      throwsWith(() => parsePeriod(value), 'invalid_period', JSON.stringify(value));
    }
  });
});

describe('parseInstant', () => {
  it('happy: a Date or an ISO-8601 string', () => {
    expect(parseInstant(at('2030-01-01T00:00:00Z'), 'expiresAt').toISOString()).toBe('2030-01-01T00:00:00.000Z');
    expect(parseInstant('2030-01-01T00:00:00+02:00', 'expiresAt').toISOString()).toBe('2029-12-31T22:00:00.000Z');
  });

  it('error: anything else throws invalid_argument', () => {
    for (const value of ['not a date', '', 'x'.repeat(65), new Date(NaN), 12345, {}, []]) {
      throwsWith(() => parseInstant(value, 'expiresAt'), 'invalid_argument', String(value));
    }
  });
});
