/**
 * agentkey/proxy: an OpenAI- and Anthropic-compatible proxy that enforces agentkey keys
 * (scope, model allow-list, budget) and meters every call from the usage the upstream
 * reports. See createProxy().
 */
export { type Proxy, createProxy } from './proxy.js';
export type { Flavor, ProxyLogger, ProxyObserver, ProxyOptions, ProxyOutcome, Upstream } from './options.js';
export { describeUpstreams, upstreamsFromEnv } from './env.js';
