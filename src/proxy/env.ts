import { AgentKeyError } from '../errors.js';
import { type Upstream, checkProxyOptions } from './options.js';

type Env = Record<string, string | undefined>;

/**
 * The upstreams the environment configures, for `agentkey serve`:
 * - `openai` from AGENTKEY_OPENAI_API_KEY (or OPENAI_API_KEY), at AGENTKEY_OPENAI_BASE_URL
 *   (default https://api.openai.com);
 * - `anthropic` from AGENTKEY_ANTHROPIC_API_KEY (or ANTHROPIC_API_KEY), at
 *   AGENTKEY_ANTHROPIC_BASE_URL (default https://api.anthropic.com);
 * - more by name from AGENTKEY_UPSTREAMS, a JSON object such as
 *   `{"groq": {"flavor": "openai", "baseUrl": "https://api.groq.com/openai", "apiKeyEnv": "GROQ_API_KEY", "provider": "groq"}}`,
 *   where `apiKeyEnv` names the variable holding the key (or `apiKey` holds it), and a name
 *   given there wins over the two above.
 * `baseUrls` (the CLI's flags) win over the variables. A mistake throws, naming the
 * variable, never a key.
 *
 * @example createProxy(ak, { upstreams: upstreamsFromEnv() })
 */
export function upstreamsFromEnv(env: Env = process.env, baseUrls: { openai?: string; anthropic?: string } = {}): Record<string, Upstream> {
  const upstreams: Record<string, Upstream> = {};
  for (const flavor of ['openai', 'anthropic'] as const) {
    const upper = flavor.toUpperCase();
    const apiKey = nonEmpty(env[`AGENTKEY_${upper}_API_KEY`]) ?? nonEmpty(env[`${upper}_API_KEY`]);
    const baseUrl = baseUrls[flavor] ?? nonEmpty(env[`AGENTKEY_${upper}_BASE_URL`]);
    if (apiKey) upstreams[flavor] = { flavor, apiKey, ...(baseUrl ? { baseUrl } : {}) };
  }
  const json = nonEmpty(env.AGENTKEY_UPSTREAMS);
  if (json === undefined) return upstreams;
  let parsed: unknown;
  try {
    parsed = JSON.parse(json);
  } catch {
    throw new AgentKeyError('invalid_argument', 'AGENTKEY_UPSTREAMS is not valid JSON; give an object of upstreams by name.');
  }
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new AgentKeyError('invalid_argument', 'AGENTKEY_UPSTREAMS must be a JSON object of upstreams by name, such as {"groq": {"flavor": "openai", "baseUrl": "...", "apiKeyEnv": "GROQ_API_KEY"}}.');
  }
  for (const [name, value] of Object.entries(parsed as Record<string, unknown>)) {
    if (value === null || typeof value !== 'object' || Array.isArray(value)) throw new AgentKeyError('invalid_argument', `AGENTKEY_UPSTREAMS.${name} must be an object.`);
    const { apiKeyEnv, ...rest } = value as Record<string, unknown> & { apiKeyEnv?: unknown };
    if (apiKeyEnv !== undefined) {
      if (typeof apiKeyEnv !== 'string' || !nonEmpty(env[apiKeyEnv])) {
        throw new AgentKeyError('invalid_argument', `AGENTKEY_UPSTREAMS.${name}.apiKeyEnv names ${JSON.stringify(String(apiKeyEnv).slice(0, 64))}, which is not set.`);
      }
      rest.apiKey = env[apiKeyEnv];
    }
    upstreams[name] = rest as unknown as Upstream;
  }
  return upstreams;
}

function nonEmpty(value: string | undefined): string | undefined {
  return value !== undefined && value.trim() !== '' ? value.trim() : undefined;
}

/**
 * What a set of upstreams mounts, for a start-up line: each name, flavor and base URL, never
 * a key. Throws, as createProxy() would, for an upstream that is not valid.
 */
export function describeUpstreams(upstreams: Record<string, Upstream>): { name: string; flavor: string; baseUrl: string }[] {
  return [...checkProxyOptions({ upstreams }).upstreams.values()].map((u) => ({ name: u.name, flavor: u.flavor, baseUrl: u.base }));
}
