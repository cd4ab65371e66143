import { describe, expect, it } from 'vitest';
import { AgentKey, AgentKeyError } from '../../src/index.js';
import { createProxy, upstreamsFromEnv } from '../../src/proxy/index.js';
import { allowList, allows } from '../../src/proxy/models.js';
import { SseParser } from '../../src/proxy/sse.js';
import { anthropicUsage, openaiChatUsage, openaiResponsesUsage } from '../../src/proxy/usage.js';
import { hangingPool } from '../helpers/faults.js';

/**
 * The proxy's pure parts: the event-stream reader (any chunking, any line ending, every byte
 * kept), the usage readers of each API, model allow-lists, and the checks of its options and
 * of the environment, whose messages never show a key.
 */

describe('SseParser', () => {
  const stream = 'event: message_start\r\ndata: {"a":1}\r\n\r\n: a comment\n\ndata: line one\ndata: line two\n\nevent: ping\rdata: {}\r\rdata: [DONE]\n\n';

  it('happy: any split of a stream gives the same events, and their raw text is the stream, byte for byte', () => {
    const whole = new SseParser().push(stream);
    expect(whole.map((e) => [e.event, e.data])).toEqual([
      ['message_start', '{"a":1}'],
      [null, 'line one\nline two'],
      ['ping', '{}'],
      [null, '[DONE]'],
    ]);
    expect(whole.map((e) => e.raw).join('')).toBe(stream);
    for (let size = 1; size <= 7; size++) {
      const parser = new SseParser();
      const events = [];
      for (let i = 0; i < stream.length; i += size) events.push(...parser.push(stream.slice(i, i + size)));
      expect(events, `chunks of ${size}`).toEqual(whole);
      expect(parser.rest()).toBe('');
    }
  });

  it('happy: an event the stream did not close stays in rest(), unparsed', () => {
    const parser = new SseParser();
    expect(parser.push('data: {"x":1}\n\ndata: {"y"')).toHaveLength(1);
    expect(parser.rest()).toBe('data: {"y"');
  });
});

describe('usage readers', () => {
  it('happy: each API\'s usage in one convention: input counts cached and cache-written tokens, output counts reasoning', () => {
    expect(openaiChatUsage({ prompt_tokens: 100, completion_tokens: 40, prompt_tokens_details: { cached_tokens: 30 }, completion_tokens_details: { reasoning_tokens: 10 } })).toEqual({
      inputTokens: 100,
      outputTokens: 40,
      cachedInputTokens: 30,
      reasoningTokens: 10,
    });
    expect(openaiResponsesUsage({ input_tokens: 50, output_tokens: 5, input_tokens_details: { cached_tokens: 0 } })).toEqual({ inputTokens: 50, outputTokens: 5 });
    expect(anthropicUsage({ input_tokens: 10, cache_creation_input_tokens: 20, cache_read_input_tokens: 30, output_tokens: 7 })).toEqual({
      inputTokens: 60,
      outputTokens: 7,
      cachedInputTokens: 30,
      cacheWriteTokens: 20,
    });
  });

  it('happy: a message_delta completes message_start: its output total wins, the input stays', () => {
    const start = anthropicUsage({ input_tokens: 10, cache_read_input_tokens: 5, output_tokens: 1 });
    expect(anthropicUsage({ output_tokens: 99 }, start)).toEqual({ inputTokens: 15, outputTokens: 99, cachedInputTokens: 5 });
  });

  it('error: counts that are missing, negative or fractional are absent, and a part never passes its whole', () => {
    expect(openaiChatUsage(null)).toBeNull();
    expect(openaiChatUsage({ completion_tokens: 3 })).toBeNull();
    expect(openaiChatUsage({ prompt_tokens: 5, completion_tokens: -1 })).toEqual({ inputTokens: 5, outputTokens: 0 });
    expect(openaiChatUsage({ prompt_tokens: 5, completion_tokens: 2, prompt_tokens_details: { cached_tokens: 9 }, completion_tokens_details: { reasoning_tokens: 1.5 } })).toEqual({
      inputTokens: 5,
      outputTokens: 2,
      cachedInputTokens: 5,
    });
  });
});

describe('model allow-lists', () => {
  it('happy: names and globs, without regard to case; no models: every model', () => {
    const rules = allowList({ models: ['gpt-4o-mini', 'claude-*', 'o*-mini'] });
    expect(['gpt-4o-mini', 'GPT-4o-mini', 'claude-haiku-4-5', 'o3-mini', 'o4-mini'].map((m) => allows(rules, m))).toEqual([true, true, true, true, true]);
    expect(['gpt-4o', 'gpt-4o-mini-2024', 'xclaude-1', 'o3'].map((m) => allows(rules, m))).toEqual([false, false, false, false]);
    expect(allows(allowList(null), 'anything')).toBe(true);
    expect(allows(allowList({ team: 'a' }), 'anything')).toBe(true);
  });

  it('security: regular-expression characters in a name are literal; a models that is not a list of names allows nothing', () => {
    expect(allows(allowList({ models: ['gpt-4.1'] }), 'gpt-4x1')).toBe(false);
    expect(allows(allowList({ models: ['a(b|c)'] }), 'ab')).toBe(false);
    expect(allows(allowList({ models: 'gpt-4o' }), 'gpt-4o')).toBe(false);
    expect(allows(allowList({ models: [1] }), '1')).toBe(false);
    expect(allows(allowList({ models: [] }), 'gpt-4o')).toBe(false);
  });
});

describe('createProxy() options', () => {
  const ak = new AgentKey({ pool: hangingPool() as never });
  const secret = 'sk-must-not-appear-0123456789';
  const thrown = (f: () => unknown): AgentKeyError => {
    try {
      f();
    } catch (err) {
      expect(err).toBeInstanceOf(AgentKeyError);
      return err as AgentKeyError;
    }
    throw new Error('expected a throw');
  };

  it('error: each mistake is an invalid_argument (a duration: invalid_duration) naming the option, never showing a key', () => {
    const cases: [unknown, RegExp][] = [
      [{}, /needs upstreams/],
      [{ upstreams: {} }, /needs upstreams/],
      [{ upstreams: { groq: { apiKey: secret } } }, /Upstream "groq" needs flavor/],
      [{ upstreams: { openai: { apiKey: '' } } }, /needs apiKey/],
      [{ upstreams: { openai: { apiKey: `${secret} x` } } }, /needs apiKey/],
      [{ upstreams: { openai: { apiKey: secret, baseUrl: 'ftp://x' } } }, /baseUrl must be an http\(s\) URL/],
      [{ upstreams: { openai: { apiKey: secret, baseUrl: `https://user:${secret}@example.com` } } }, /no credentials/],
      [{ upstreams: { 'Bad Name': { flavor: 'openai', apiKey: secret } } }, /Upstream name "Bad Name"/],
      [{ upstreams: { openai: { apiKey: secret, token: 1 } } }, /unknown option "token"/],
      [{ upstreams: { openai: { apiKey: secret } }, holdTtl: '48h' }, /holdTtl/],
      [{ upstreams: { openai: { apiKey: secret } }, timeoutMs: 0 }, /timeoutMs/],
      [{ upstreams: { openai: { apiKey: secret } }, prices: {} }, /prices must be a PriceCatalog/],
      [{ upstreams: { openai: { apiKey: secret } }, scopes: ['x'] }, /unknown option "scopes"/],
    ];
    for (const [options, message] of cases) {
      const err = thrown(() => createProxy(ak, options as never));
      expect(err.code).toBe(String(message).includes('holdTtl') ? 'invalid_duration' : 'invalid_argument');
      expect(err.message).toMatch(message);
      expect(err.message).not.toContain(secret);
    }
  });

  it('error: the first argument must be an AgentKey', () => {
    expect(thrown(() => createProxy({} as never, { upstreams: { openai: { apiKey: secret } } })).message).toMatch(/needs an AgentKey/);
  });
});

describe('upstreamsFromEnv()', () => {
  it('happy: openai and anthropic from their keys (agentkey\'s variables first), base URLs from variables or flags, and more from AGENTKEY_UPSTREAMS', () => {
    expect(upstreamsFromEnv({})).toEqual({});
    expect(upstreamsFromEnv({ OPENAI_API_KEY: 'sk-a', AGENTKEY_OPENAI_API_KEY: 'sk-b', ANTHROPIC_API_KEY: 'sk-c', AGENTKEY_ANTHROPIC_BASE_URL: 'http://claude.local' })).toEqual({
      openai: { flavor: 'openai', apiKey: 'sk-b' },
      anthropic: { flavor: 'anthropic', apiKey: 'sk-c', baseUrl: 'http://claude.local' },
    });
    expect(upstreamsFromEnv({ OPENAI_API_KEY: 'sk-a', AGENTKEY_OPENAI_BASE_URL: 'http://a' }, { openai: 'http://b' })).toEqual({ openai: { flavor: 'openai', apiKey: 'sk-a', baseUrl: 'http://b' } });
    const env = { GROQ_KEY: 'gsk-1', AGENTKEY_UPSTREAMS: JSON.stringify({ groq: { flavor: 'openai', baseUrl: 'https://api.groq.com/openai', apiKeyEnv: 'GROQ_KEY', provider: 'groq' } }) };
    expect(upstreamsFromEnv(env)).toEqual({ groq: { flavor: 'openai', baseUrl: 'https://api.groq.com/openai', apiKey: 'gsk-1', provider: 'groq' } });
  });

  it('error: bad JSON, a non-object, or an apiKeyEnv that is not set: one sentence naming the variable, never a key', () => {
    expect(() => upstreamsFromEnv({ AGENTKEY_UPSTREAMS: '{' })).toThrow(/AGENTKEY_UPSTREAMS is not valid JSON/);
    expect(() => upstreamsFromEnv({ AGENTKEY_UPSTREAMS: '[]' })).toThrow(/must be a JSON object/);
    expect(() => upstreamsFromEnv({ AGENTKEY_UPSTREAMS: '{"x": {"flavor": "openai", "apiKeyEnv": "NOPE"}}' })).toThrow(/AGENTKEY_UPSTREAMS.x.apiKeyEnv names "NOPE", which is not set/);
  });
});
