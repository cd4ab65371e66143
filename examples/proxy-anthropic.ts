/**
 * The official Anthropic SDK as an agent, through agentkey's LLM proxy. The SDK sends its
 * key as `x-api-key`; the proxy takes the agentkey key from there, and calls Anthropic with
 * the operator's key instead.
 *
 *   ANTHROPIC_API_KEY=sk-ant-... npx tsx examples/proxy-anthropic.ts   # after npm install (which builds dist/)
 *
 * With `agentkey serve` and ANTHROPIC_API_KEY set, the same proxy is at
 * http://localhost:8787/proxy/anthropic (the SDK adds /v1/messages).
 */
import type { AddressInfo } from 'node:net';
import Anthropic from '@anthropic-ai/sdk';
import { PGlite } from '@electric-sql/pglite';
import { serve } from '@hono/node-server';
import { AgentKey } from 'agentkey';
import { createProxy } from 'agentkey/proxy';

const apiKey = process.env.ANTHROPIC_API_KEY;
if (!apiKey) throw new Error('Set ANTHROPIC_API_KEY: the operator key the proxy calls Anthropic with.');

const ak = new AgentKey({ pool: new PGlite() });
await ak.migrate();
const proxy = createProxy(ak, { upstreams: { anthropic: { apiKey, ...(process.env.ANTHROPIC_BASE_URL ? { baseUrl: process.env.ANTHROPIC_BASE_URL } : {}) } } });
const server = serve({ fetch: proxy.fetch, port: 0, hostname: '127.0.0.1' });
await new Promise((resolve) => server.once('listening', resolve));
const proxyUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
// One cent a day, Claude models only.
const agentKey = await ak.create({
  accountId: 'acct_demo',
  scopes: ['proxy.chat'],
  budgets: [{ cents: 1, period: 'day' }],
  metadata: { models: ['claude-*'] },
});

const anthropic = new Anthropic({ apiKey: agentKey.key, baseURL: `${proxyUrl}/proxy/anthropic` });

const message = await anthropic.messages.create({
  model: 'claude-haiku-4-5',
  max_tokens: 100,
  messages: [{ role: 'user', content: 'Say hello in five words.' }],
});
console.log('reply:', message.content.map((b) => (b.type === 'text' ? b.text : '')).join(''));

// A stream: the input from message_start and the output from message_delta are committed.
const stream = anthropic.messages.stream({ model: 'claude-haiku-4-5', max_tokens: 100, messages: [{ role: 'user', content: 'Count to five.' }] });
stream.on('text', (text) => process.stdout.write(text));
const final = await stream.finalMessage();
console.log(`\nstream: ${final.usage.output_tokens} output tokens`);

// A request whose worst case the day's budget cannot hold is refused with a 429, and
// Retry-After says when the day's window starts again.
try {
  await anthropic.messages.create({ model: 'claude-haiku-4-5', max_tokens: 4_000, messages: [{ role: 'user', content: 'Write a long story.' }] }, { maxRetries: 0 });
} catch (err) {
  if (!(err instanceof Anthropic.RateLimitError)) throw err;
  console.log('refused:', err.status, err.errorCode, 'retry after', err.headers?.get('retry-after'), 's');
}

await proxy.settled();
const info = await ak.getKey(agentKey.id);
console.log(`spent: ${info?.spentCents} cents today`);

server.close();
await ak.close();
