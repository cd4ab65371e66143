/**
 * The official OpenAI SDK as an agent, through agentkey's LLM proxy: the agent holds an
 * agentkey key (scoped, budgeted, limited to some models), never the OpenAI key, and every
 * call is held at its worst case first and committed at its real cost.
 *
 *   OPENAI_API_KEY=sk-... npx tsx examples/proxy-openai.ts   # after npm install (which builds dist/)
 *
 * It runs on an in-memory database and a proxy of its own. With `agentkey serve` and
 * OPENAI_API_KEY set, the same proxy is at http://localhost:8787/proxy/openai/v1 and keys
 * come from `agentkey keys create` or POST /v1/keys.
 */
import type { AddressInfo } from 'node:net';
import { PGlite } from '@electric-sql/pglite';
import { serve } from '@hono/node-server';
import OpenAI from 'openai';
import { AgentKey } from 'agentkey';
import { createProxy } from 'agentkey/proxy';

const apiKey = process.env.OPENAI_API_KEY;
if (!apiKey) throw new Error('Set OPENAI_API_KEY: the operator key the proxy calls OpenAI with.');

// The operator's side: a database, a proxy with the OpenAI key, and a key for an agent.
const ak = new AgentKey({ pool: new PGlite() });
await ak.migrate();
const proxy = createProxy(ak, { upstreams: { openai: { apiKey, ...(process.env.OPENAI_BASE_URL ? { baseUrl: process.env.OPENAI_BASE_URL } : {}) } } });
const server = serve({ fetch: proxy.fetch, port: 0, hostname: '127.0.0.1' });
await new Promise((resolve) => server.once('listening', resolve));
const proxyUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
const agentKey = await ak.create({
  accountId: 'acct_demo',
  scopes: ['proxy.chat'],
  budgetCents: 50,
  metadata: { models: ['gpt-4o-mini', 'text-embedding-3-*'] },
});

// The agent's side: the official SDK, with the agentkey key and the proxy as its base URL.
const openai = new OpenAI({ apiKey: agentKey.key, baseURL: `${proxyUrl}/proxy/openai/v1` });

const reply = await openai.chat.completions.create({
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content: 'Say hello in five words.' }],
  max_tokens: 50,
});
console.log('reply:', reply.choices[0]?.message.content);

// A stream: the proxy asks OpenAI for the usage and commits it when the stream ends.
const stream = await openai.chat.completions.create({
  model: 'gpt-4o-mini',
  messages: [{ role: 'user', content: 'Count to five.' }],
  max_tokens: 50,
  stream: true,
});
let streamed = '';
for await (const chunk of stream) streamed += chunk.choices[0]?.delta.content ?? '';
console.log('stream:', streamed);

// A model outside the key's allow-list is refused before any call to OpenAI.
try {
  await openai.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'Hi.' }], max_tokens: 10 });
} catch (err) {
  if (!(err instanceof OpenAI.PermissionDeniedError)) throw err;
  console.log('refused:', err.status, err.code);
}

// Every call is in the ledger, with its model and tokens, and in the key's spend.
await proxy.settled();
const info = await ak.getKey(agentKey.id);
console.log(`spent: ${info?.spentCents} of ${info?.budgetCents} cents`);
for (const row of await ak.ledger({ keyId: agentKey.id })) {
  if (row.kind === 'commit') console.log('commit:', row.amountCents, 'cents,', row.model, row.usage?.inputTokens, 'in,', row.usage?.outputTokens, 'out');
}

server.close();
await ak.close();
