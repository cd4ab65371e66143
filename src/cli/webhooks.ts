// The `webhooks` commands (add, list, show, update, remove, deliveries) and `outbox`, the
// recent events: everything shown goes through out()/table(), which escape what the
// database holds.
import { type Command, Option } from 'commander';
import type { AgentKeyEvent, Webhook, WebhookDelivery } from '../types.js';
import { type Common, UserError, anId, json, list, out, wholeNumber, withAgentKey, withCommon } from './common.js';
import { printable, table, when } from './format.js';

const TYPES = ['budget.threshold', 'key.revoked', 'key.expired', 'hold.expired', 'overage.recorded'];

function webhookDetails(w: Webhook): string {
  return [
    `id           ${w.id}`,
    `url          ${w.url}`,
    `events       ${w.events === null ? 'all' : w.events.join(', ')}`,
    `account      ${w.accountId ?? 'all'}`,
    `description  ${w.description ?? '-'}`,
    `enabled      ${w.enabled ? 'yes' : 'no'}`,
    `created      ${when(w.createdAt)}`,
    `updated      ${when(w.updatedAt)}`,
  ].join('\n');
}

function webhooksTable(hooks: Webhook[]): string {
  if (hooks.length === 0) return 'No webhook endpoints.';
  return table(
    ['id', 'url', 'events', 'account', 'enabled', 'description'],
    hooks.map((w) => [w.id, w.url, w.events === null ? 'all' : w.events.join(','), w.accountId ?? 'all', w.enabled ? 'yes' : 'no', w.description ?? '']),
  );
}

function deliveriesTable(deliveries: WebhookDelivery[]): string {
  if (deliveries.length === 0) return 'No deliveries.';
  return table(
    ['id', 'event', 'type', 'status', 'attempts', 'last answer', 'next try', 'created'],
    deliveries.map((d) => [
      d.id,
      d.eventId,
      d.eventType ?? '?',
      d.status,
      d.attempts,
      d.lastError ?? (d.lastStatus === null ? '-' : `HTTP ${d.lastStatus}`),
      when(d.nextAttemptAt),
      when(d.createdAt),
    ]),
  );
}

function eventsTable(events: AgentKeyEvent[]): string {
  if (events.length === 0) return 'No events.';
  return table(['id', 'time', 'type', 'data'], events.map((e) => [e.id, when(e.timestamp), e.type, printable(JSON.stringify(e.data))]));
}

function eventTypes(value: string): string[] {
  const types = list(value);
  const unknown = types.filter((t) => !TYPES.includes(t));
  if (types.length === 0 || unknown.length > 0) throw new UserError(`--events must be a comma-separated list of ${TYPES.join(', ')}; got ${JSON.stringify(value)}.`);
  return types;
}

export function addWebhookCommands(program: Command): void {
  const hooks = program.command('webhooks').description('webhook endpoints (events posted, signed per Standard Webhooks) and their deliveries');

  withCommon(hooks.command('add'))
    .description('add an endpoint; its signing secret is printed once')
    .requiredOption('--url <url>', 'where events are posted (http:// or https://)')
    .option('--events <types>', `comma-separated event types (default: all): ${TYPES.join(', ')}`)
    .option('--account <id>', "only this account's events (default: every account's)")
    .option('--description <text>', 'a label')
    .option('--disabled', 'add it disabled')
    .action(async (o: Common & { url: string; events?: string; account?: string; description?: string; disabled?: boolean }) => {
      const events = o.events === undefined ? undefined : eventTypes(o.events);
      await withAgentKey(o, 'create', async (ak) => {
        const made = await ak.createWebhook({
          url: o.url,
          ...(events ? { events: events as never } : {}),
          ...(o.account !== undefined ? { accountId: o.account } : {}),
          ...(o.description !== undefined ? { description: o.description } : {}),
          ...(o.disabled ? { enabled: false } : {}),
        });
        if (o.json) return json(made);
        const { secret, ...hook } = made;
        out(`Added webhook ${made.id}. Its signing secret is shown this once; give it to the receiver now:\n\n  ${secret}\n`);
        out(webhookDetails(hook));
      });
    });

  withCommon(hooks.command('list'))
    .description('every endpoint, without secrets')
    .action(async (o: Common) => {
      await withAgentKey(o, 'read', async (ak) => {
        const list = await ak.listWebhooks();
        if (o.json) json({ webhooks: list });
        else out(webhooksTable(list));
      });
    });

  withCommon(hooks.command('show'))
    .description('one endpoint, with how its deliveries stand')
    .argument('<id>', 'webhook id', anId('id'))
    .action(async (id: number, o: Common) => {
      await withAgentKey(o, 'read', async (ak) => {
        const hook = await ak.getWebhook(id);
        if (!hook) throw new UserError(`No webhook endpoint has id ${id}.`);
        if (o.json) return json(hook);
        out(webhookDetails(hook));
      });
    });

  withCommon(hooks.command('update'))
    .description("change an endpoint's url, events, account, description or enabled flag, or give it a new secret")
    .argument('<id>', 'webhook id', anId('id'))
    .option('--url <url>', 'where events are posted')
    .option('--events <types>', 'comma-separated event types')
    .option('--all-events', 'every event type')
    .option('--account <id>', "only this account's events")
    .option('--all-accounts', "every account's events")
    .option('--description <text>', 'a label')
    .addOption(new Option('--enable', 'enable it').conflicts('disable'))
    .option('--disable', 'disable it (events written meanwhile are not delivered to it)')
    .option('--rotate-secret', 'a new signing secret, printed once (the old one stops at once)')
    .action(async (id: number, o: Common & { url?: string; events?: string; allEvents?: boolean; account?: string; allAccounts?: boolean; description?: string; enable?: boolean; disable?: boolean; rotateSecret?: boolean }) => {
      if (o.events !== undefined && o.allEvents) throw new UserError('Use --events or --all-events, not both.');
      if (o.account !== undefined && o.allAccounts) throw new UserError('Use --account or --all-accounts, not both.');
      const changes = {
        ...(o.url !== undefined ? { url: o.url } : {}),
        ...(o.events !== undefined ? { events: eventTypes(o.events) as never } : o.allEvents ? { events: null } : {}),
        ...(o.account !== undefined ? { accountId: o.account } : o.allAccounts ? { accountId: null } : {}),
        ...(o.description !== undefined ? { description: o.description } : {}),
        ...(o.enable ? { enabled: true } : o.disable ? { enabled: false } : {}),
        ...(o.rotateSecret ? { rotateSecret: true } : {}),
      };
      if (Object.keys(changes).length === 0) throw new UserError('Nothing to change: give at least one of the options (see --help).');
      await withAgentKey(o, 'change', async (ak) => {
        const updated = await ak.updateWebhook(id, changes);
        if (o.json) return json(updated);
        const { secret, ...hook } = updated;
        out(`Updated webhook ${id}.`);
        if (secret) out(`Its new signing secret is shown this once:\n\n  ${secret}\n`);
        out(webhookDetails(hook));
      });
    });

  withCommon(hooks.command('remove'))
    .description('remove an endpoint with its deliveries')
    .argument('<id>', 'webhook id', anId('id'))
    .action(async (id: number, o: Common) => {
      await withAgentKey(o, 'change', async (ak) => {
        if (!(await ak.deleteWebhook(id))) throw new UserError(`No webhook endpoint has id ${id}.`);
        if (o.json) return json({ id, removed: true });
        out(`Removed webhook ${id} and its deliveries.`);
      });
    });

  withCommon(hooks.command('deliveries'))
    .description("an endpoint's deliveries, newest first, with each attempt's answer")
    .argument('<id>', 'webhook id', anId('id'))
    .addOption(new Option('--status <status>', 'only these').choices(['pending', 'delivered', 'failed']))
    .option('--before <delivery id>', 'only deliveries older than this one', anId('before'))
    .option('--limit <n>', 'at most this many', wholeNumber('limit', 1, 1000), 50)
    .action(async (id: number, o: Common & { status?: 'pending' | 'delivered' | 'failed'; before?: number; limit: number }) => {
      await withAgentKey(o, 'read', async (ak) => {
        const deliveries = await ak.webhookDeliveries({
          webhookId: id,
          ...(o.status !== undefined ? { status: o.status } : {}),
          ...(o.before !== undefined ? { before: o.before } : {}),
          limit: o.limit,
        });
        if (o.json) return json({ deliveries });
        out(deliveriesTable(deliveries));
      });
    });

  withCommon(program.command('outbox'))
    .description('recent events, newest first: budget.threshold, key.revoked, key.expired, hold.expired, overage.recorded')
    .option('--account <id>', 'only this account')
    .addOption(new Option('--type <type>', 'only this type').choices(TYPES))
    .option('--before <event id>', "only events older than this one (e.g. 'evt_12')")
    .option('--limit <n>', 'at most this many', wholeNumber('limit', 1, 1000), 50)
    .action(async (o: Common & { account?: string; type?: string; before?: string; limit: number }) => {
      await withAgentKey(o, 'read', async (ak) => {
        const events = await ak.outboxEvents({
          ...(o.account !== undefined ? { accountId: o.account } : {}),
          ...(o.type !== undefined ? { type: o.type as never } : {}),
          ...(o.before !== undefined ? { before: o.before } : {}),
          limit: o.limit,
        });
        if (o.json) return json({ events });
        out(eventsTable(events));
        const last = events.at(-1);
        if (events.length === o.limit && last) out(`(older events: --before ${last.id})`);
      });
    });
}
