/**
 * agentkey/llm, loaded on first use: its tokenizers take about a second and 100 MB to load,
 * which a service (or a CLI command) that mounts no proxy must not pay. createProxy() starts
 * the load at once, so the first request rarely waits for it.
 */
let loading: Promise<typeof import('../llm/index.js')> | undefined;

export function loadLlm(): Promise<typeof import('../llm/index.js')> {
  loading ??= import('../llm/index.js');
  return loading;
}
