import { describe, expect, it } from 'vitest';
import { AgentKeyError } from '../../src/index.js';
import { costFromUsage, createPriceCatalog, estimateMaxCost } from '../../src/llm/index.js';
import { forEachDatabase } from '../helpers/databases.js';

/**
 * trackUsage, reserve and commit with `{ model, usage }` in place of costCents, on both
 * databases: the cost is the catalog's, the ledger rows keep the model and the token
 * counts, usage({ byModel }) breaks spend down by model, and every bad input throws and
 * writes nothing.
 */

const usage = { inputTokens: 1200, outputTokens: 300, cachedInputTokens: 200, reasoningTokens: 100 };

forEachDatabase((getDb) => {
  const ledgerRows = async (table: string, keyId: number) =>
    getDb().query<{ kind: string; amount_micros: string; model: string | null; usage: Record<string, unknown> | null }>(
      `SELECT kind, amount_micros::text, model, usage FROM "${table}_ledger" WHERE key_id = $1 ORDER BY id`,
      [keyId],
    );

  describe('metered spend: { model, usage } instead of costCents', () => {
    it('happy: trackUsage charges the catalog cost, and the ledger row keeps the model and the counts', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const r = await ak.trackUsage(key, { model: 'gpt-4o-mini', usage, idempotencyKey: 'call-1' });
      const cost = costFromUsage({ model: 'gpt-4o-mini', usage }).costCents;
      expect(cost).toBeGreaterThan(0);
      expect(r).toMatchObject({ success: true, budgetUsedCents: cost, costCents: cost });
      expect(await ledgerRows(ak.tableName, id)).toEqual([
        {
          kind: 'charge',
          amount_micros: String(Math.round(cost * 10_000)),
          model: 'gpt-4o-mini',
          usage: { provider: 'openai', inputTokens: 1200, outputTokens: 300, cachedInputTokens: 200, cacheWriteTokens: 0, reasoningTokens: 100 },
        },
      ]);
      const [row] = await ak.ledger({ keyId: id });
      expect(row).toMatchObject({ kind: 'charge', model: 'gpt-4o-mini', usage: { provider: 'openai', inputTokens: 1200 } });
      // A retry with the same usage replays; with other counts it is a conflict.
      expect(await ak.trackUsage(key, { model: 'gpt-4o-mini', usage, idempotencyKey: 'call-1' })).toMatchObject({ success: true, replayed: true });
      expect(await ak.trackUsage(key, { model: 'gpt-4o-mini', usage: { ...usage, outputTokens: 301 }, idempotencyKey: 'call-1' })).toEqual({
        success: false,
        reason: 'idempotency_conflict',
      });
      expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true });
    });

    it('happy: a hold for the worst case, then a commit of the real usage: the commit carries the counts, an overage row the model', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 5 });
      const request = { model: 'gpt-4o', messages: [{ role: 'user', content: 'Write a haiku.' }], max_tokens: 200 };
      const worst = estimateMaxCost({ api: 'openai.chat', request });
      const hold = await ak.reserve(key, { costCents: worst.costCents });
      if (!hold.success) throw new Error(hold.reason);
      const real = { inputTokens: 20, outputTokens: 40 };
      const c = await ak.commit(hold.reservationId, { model: 'gpt-4o', usage: real });
      expect(c).toMatchObject({ success: true, costCents: costFromUsage({ model: 'gpt-4o', usage: real }).costCents, overageCents: 0 });
      expect(costFromUsage({ model: 'gpt-4o', usage: real }).costCents).toBeLessThanOrEqual(worst.costCents);
      // A reserve may name a usage too (a worst case in tokens): its hold row has the model.
      const second = await ak.reserve(key, { model: 'gpt-4o', usage: { inputTokens: 100_000, outputTokens: 100_000 } });
      expect(second).toMatchObject({ success: false, reason: 'budget_exceeded' });
      const third = await ak.reserve(key, { model: 'gpt-4o', usage: { inputTokens: 100, outputTokens: 100 } });
      if (!third.success) throw new Error(third.reason);
      expect(third.heldCents).toBe(costFromUsage({ model: 'gpt-4o', usage: { inputTokens: 100, outputTokens: 100 } }).costCents);
      // A hold in cents says nothing of a price.
      expect(hold.heldCents).toBeUndefined();
      // The upstream used far more than held: what the budget cannot take is overage, by model.
      const big = await ak.commit(third.reservationId, { model: 'gpt-4o', usage: { inputTokens: 10_000, outputTokens: 10_000 } });
      expect(big).toMatchObject({ success: true, overBudget: true });
      const rows = await ledgerRows(ak.tableName, id);
      expect(rows.map((r) => [r.kind, r.model, r.usage === null ? null : r.usage.inputTokens])).toEqual([
        ['hold', null, null],
        ['commit', 'gpt-4o', 20],
        ['hold', 'gpt-4o', 100],
        ['commit', 'gpt-4o', 10_000],
        ['overage', 'gpt-4o', null],
      ]);
      expect(await ak.audit({ keyId: id })).toMatchObject({ ok: true });
    });

    it('happy: usage({ byModel }) breaks spend down by model, with token sums; calls in cents are not in it', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 1000 });
      await ak.trackUsage(key, { model: 'gpt-4o-mini', usage: { inputTokens: 1000, outputTokens: 10 } });
      await ak.trackUsage(key, { model: 'gpt-4o-mini', usage: { inputTokens: 500, outputTokens: 20, cachedInputTokens: 100 } });
      await ak.trackUsage(key, { provider: 'anthropic', model: 'claude-haiku-4-5', usage: { inputTokens: 3000, outputTokens: 700, cacheWriteTokens: 1000 } });
      await ak.trackUsage(key, { costCents: 3 });
      const report = await ak.usage({ keyId: id, byModel: true });
      const mini = costFromUsage({ model: 'gpt-4o-mini', usage: { inputTokens: 1000, outputTokens: 10 } }).costCents +
        costFromUsage({ model: 'gpt-4o-mini', usage: { inputTokens: 500, outputTokens: 20, cachedInputTokens: 100 } }).costCents;
      const haiku = costFromUsage({ model: 'claude-haiku-4-5', usage: { inputTokens: 3000, outputTokens: 700, cacheWriteTokens: 1000 } }).costCents;
      expect(report.count).toBe(4);
      expect(report.models).toEqual([
        { model: 'claude-haiku-4-5', provider: 'anthropic', costCents: haiku, overageCents: 0, count: 1, inputTokens: 3000, outputTokens: 700, cachedInputTokens: 0, cacheWriteTokens: 1000, reasoningTokens: 0 },
        { model: 'gpt-4o-mini', provider: 'openai', costCents: Number(mini.toFixed(4)), overageCents: 0, count: 2, inputTokens: 1500, outputTokens: 30, cachedInputTokens: 100, cacheWriteTokens: 0, reasoningTokens: 0 },
      ]);
      expect((await ak.usage({ keyId: id })).models).toBeUndefined();
      expect(await ak.usage({ accountId: 'acct_1', byModel: true, since: new Date(Date.now() + 60_000) })).toMatchObject({ models: [] });
      await expect(ak.usage({ byModel: 'yes' as never })).rejects.toThrow(/byModel/);
    });

    it('happy: new AgentKey({ prices }) prices a private model', async () => {
      const prices = createPriceCatalog({ custom: [{ model: 'acme-llm', inputPerMTok: 1, outputPerMTok: 4 }] });
      const ak = await getDb().agentKey({ prices });
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      expect(await ak.trackUsage(key, { model: 'acme-llm', usage: { inputTokens: 1000, outputTokens: 1000 } })).toMatchObject({ success: true, budgetUsedCents: 0.5 });
      expect((await ledgerRows(ak.tableName, id))[0]).toMatchObject({ model: 'acme-llm', usage: { provider: 'custom' } });
      expect(() => new (ak.constructor as new (o: unknown) => unknown)({ pool: getDb().pool, prices: { custom: [] } })).toThrow(/createPriceCatalog/);
    });

    it('error: an unknown model, usage with a cost, usage without a model, bad counts: each throws and writes nothing', async () => {
      const ak = await getDb().agentKey();
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: 100 });
      const hold = await ak.reserve(key, { costCents: 1 });
      if (!hold.success) throw new Error(hold.reason);
      const bad: [string, unknown, string][] = [
        ['unknown model', { model: 'my-private-llama', usage: { inputTokens: 10 } }, 'unknown_model'],
        ['cost and usage', { model: 'gpt-4o', usage: { inputTokens: 10 }, costCents: 1 }, 'invalid_argument'],
        ['usage without a model', { usage: { inputTokens: 10 } }, 'unknown_model'],
        ['negative tokens', { model: 'gpt-4o', usage: { inputTokens: -1 } }, 'invalid_usage'],
        ['no usage', { model: 'gpt-4o' }, 'invalid_usage'],
        ['cache past input', { model: 'gpt-4o', usage: { inputTokens: 1, cachedInputTokens: 2 } }, 'invalid_usage'],
        ['an unknown option', { model: 'gpt-4o', usage: { inputTokens: 1 }, colour: 'red' }, 'invalid_argument'],
        ['a model name with a control character', { model: 'gpt-4o\u001b[2J', usage: { inputTokens: 1 } }, 'unknown_model'],
        ['a model name with a bidi override', { model: 'gpt-4o\u202e', usage: { inputTokens: 1 } }, 'unknown_model'],
      ];
      for (const [what, options, code] of bad) {
        await expect(ak.trackUsage(key, options as never), what).rejects.toThrow(expect.objectContaining({ code }));
        await expect(ak.reserve(key, options as never), what).rejects.toThrow(AgentKeyError);
        await expect(ak.commit(hold.reservationId, options as never), what).rejects.toThrow(expect.objectContaining({ code }));
      }
      const rows = await ledgerRows(ak.tableName, id);
      expect(rows.map((r) => r.kind)).toEqual(['hold']);
      expect((await ak.getKey(id))?.spentCents).toBe(0);
    });

    it('concurrency: 60 metered charges at once on one budget: spend never passes it and equals the accepted calls', async () => {
      const ak = await getDb().agentKey();
      const one = costFromUsage({ model: 'gpt-4o', usage: { inputTokens: 1000, outputTokens: 500 } }).costCents;
      const budget = Math.floor(one * 25 * 100) / 100;
      const { key, id } = await ak.create({ accountId: 'acct_1', budgetCents: budget });
      const results = await Promise.all(
        Array.from({ length: 60 }, () => ak.trackUsage(key, { model: 'gpt-4o', usage: { inputTokens: 1000, outputTokens: 500 } })),
      );
      const accepted = results.filter((r) => r.success).length;
      expect(accepted).toBe(Math.floor((budget * 10_000) / Math.round(one * 10_000)));
      const info = await ak.getKey(id);
      expect(Math.round((info?.spentCents as number) * 10_000)).toBe(accepted * Math.round(one * 10_000));
      expect(info?.spentCents as number).toBeLessThanOrEqual(budget);
      expect((await ak.usage({ keyId: id, byModel: true })).models?.[0]).toMatchObject({ count: accepted, inputTokens: accepted * 1000 });
    });
  });
});
