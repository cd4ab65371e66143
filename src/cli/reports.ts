// The reports read from the ledger: `agentkey usage` (spend per hour or day, or by LLM model
// with --by-model) and `agentkey ledger` (its rows, newest first, an LLM call's with its model).
import { type Command, Option } from 'commander';
import { type Common, UserError, anId, instant, json, out, wholeNumber, withAgentKey, withCommon } from './common.js';
import { ledgerTable, modelsReport, usageReport } from './format.js';

const LEDGER_PAGE = 50;

export function addReportCommands(program: Command): void {
  withCommon(program.command('usage'))
    .description('spend from the ledger: a table per hour or day, and a chart; or by LLM model with --by-model')
    .option('--key <id>', 'only this key', wholeNumber('key', 1, Number.MAX_SAFE_INTEGER))
    .option('--account <id>', 'only this account')
    .option('--since <when>', "start: '7d', '24h', '2w' ago or an ISO date", instant)
    .option('--until <when>', 'end (default: now)', instant)
    .addOption(new Option('--bucket <size>', 'bucket size').choices(['hour', 'day']).default('day'))
    .option('--by-model', 'spend, calls and tokens of each LLM model (the calls charged with a model and usage) instead of per bucket')
    .action(async (o: Common & { key?: number; account?: string; since?: Date; until?: Date; bucket: 'hour' | 'day'; byModel?: boolean }, cmd: Command) => {
      const until = o.until ?? new Date();
      const since = o.since ?? new Date(until.getTime() - (o.bucket === 'hour' ? 86_400_000 : 30 * 86_400_000));
      if (since >= until) throw new UserError('--since must be before --until.');
      if (o.byModel && cmd.getOptionValueSource('bucket') === 'cli') throw new UserError('Use --by-model or --bucket, not both: --by-model shows one row per model over the whole span.');
      await withAgentKey(o, 'read', async (ak) => {
        const report = await ak.usage({
          ...(o.key !== undefined ? { keyId: o.key } : {}),
          ...(o.account !== undefined ? { accountId: o.account } : {}),
          since,
          until,
          ...(o.byModel ? { byModel: true } : { bucket: o.bucket }),
        });
        if (o.json) return json({ since: since.toISOString(), until: until.toISOString(), ...(o.byModel ? {} : { bucket: o.bucket }), ...report });
        out(o.byModel ? modelsReport(report, since, until) : usageReport(report, o.bucket, since, until));
      });
    });

  withCommon(program.command('ledger'))
    .description("ledger rows, newest first: kind, amount, and an LLM call's model and tokens (page with --before)")
    .option('--key <id>', 'only this key', anId('key'))
    .option('--account <id>', 'only this account')
    .option('--before <id>', 'only rows older than this row id (the last one shown)', anId('before'))
    .option('--limit <n>', `at most this many rows (default ${LEDGER_PAGE})`, wholeNumber('limit', 1, 1_000))
    .action(async (o: Common & { key?: number; account?: string; before?: number; limit?: number }) => {
      const limit = o.limit ?? LEDGER_PAGE;
      await withAgentKey(o, 'read', async (ak) => {
        const entries = await ak.ledger({
          ...(o.key !== undefined ? { keyId: o.key } : {}),
          ...(o.account !== undefined ? { accountId: o.account } : {}),
          ...(o.before !== undefined ? { before: o.before } : {}),
          limit,
        });
        if (o.json) return json({ entries });
        if (entries.length === 0) return out(o.before === undefined ? 'No ledger rows.' : `No ledger rows before ${o.before}.`);
        const last = entries[entries.length - 1] as { id: number };
        out(`${ledgerTable(entries)}${entries.length === limit ? `\nOlder rows: run it again with --before ${last.id}.` : ''}`);
      });
    });
}
