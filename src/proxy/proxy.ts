import { OpenAPIHono } from '@hono/zod-openapi';
import type { AgentKey } from '../agentkey.js';
import { checkAgentKey } from '../http/verify.js';
import type { PriceCatalog } from '../llm/index.js';
import { APIS } from './apis.js';
import { ProxyCall, type ProxyState } from './call.js';
import { createAgents } from './client.js';
import { loadLlm } from './llm.js';
import { ModelRules } from './models.js';
import { documentRoute } from './openapi.js';
import { type ProxyOptions, checkProxyOptions } from './options.js';

/** A request id an app it is mounted in may have given the request (the service's request log does). */
type ProxyEnv = { Variables: { requestId?: string } };

/** The proxy: a Hono app (mount it, or serve its `fetch`), and a way to wait for its holds to be settled. */
export type Proxy = OpenAPIHono<ProxyEnv> & {
  /** Resolves once every settlement begun so far (commit or release) has ended: call it before closing the AgentKey. */
  settled(): Promise<void>;
};

/**
 * An OpenAI- and Anthropic-compatible proxy that meters every call on the caller's agentkey
 * key: `POST /proxy/<upstream>/v1/chat/completions`, `/v1/responses` and `/v1/embeddings`
 * for upstreams of flavor 'openai', `/v1/messages` for 'anthropic'. The agent sends its
 * agentkey key where its SDK sends a provider key; the proxy checks it and its scope,
 * holds the request's worst case (estimateMaxCost), forwards it with the operator's key,
 * streams the answer through, and commits the usage the upstream reported.
 *
 * @example
 * const proxy = createProxy(ak, { upstreams: { openai: { apiKey: process.env.OPENAI_API_KEY } } });
 * serve({ fetch: proxy.fetch, port: 8788 });
 * // an agent: new OpenAI({ apiKey: 'ak_...', baseURL: 'http://localhost:8788/proxy/openai/v1' })
 */
export function createProxy(ak: AgentKey, options: ProxyOptions): Proxy {
  checkAgentKey(ak, 'createProxy()');
  const o = checkProxyOptions(options);
  void loadLlm().catch(() => {});
  // Holds and commits are priced by one catalog: the AgentKey's (new AgentKey({ prices })), unless another is given here.
  const own = catalogOf(ak);
  const prices = o.prices ?? own;
  const ownPrices = o.prices !== undefined && o.prices !== own ? o.prices : undefined;
  const state: ProxyState = { ak, o, models: new ModelRules(ak, o.modelsTtlMs), prices, ownPrices, pending: new Set(), agents: createAgents() };
  const app = new OpenAPIHono<ProxyEnv>();
  for (const spec of APIS) {
    app.post(`/proxy/:upstream${spec.path}`, (c) => new ProxyCall(state, spec, c.req.param('upstream'), c.req.raw, c.get('requestId')).run());
    documentRoute(app, spec);
  }
  return Object.assign(app, {
    async settled() {
      while (state.pending.size > 0) await Promise.allSettled([...state.pending]);
    },
  });
}

/** The AgentKey's price catalog; undefined: the bundled one. */
function catalogOf(ak: AgentKey): PriceCatalog | undefined {
  return ak.prices ?? undefined;
}
