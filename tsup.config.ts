import { defineConfig } from 'tsup';

/**
 * Agentkey's SQL lives in .sql files (src/store/sql/) imported as their text. Every bundle
 * of src/ needs this loader; those built with `config: false` (bench/run.mjs, the tests'
 * worker bundles in test/helpers/processes.ts and test/core.test.ts) pass it themselves.
 */
const loader = { '.sql': 'text' } as const;

export default defineConfig([
  {
    entry: {
      index: 'src/index.ts',
      express: 'src/http/express.ts',
      hono: 'src/http/hono.ts',
      fetch: 'src/http/fetch.ts',
      fastify: 'src/http/fastify.ts',
      jwt: 'src/identity/jwt.ts',
      clerk: 'src/identity/clerk.ts',
      server: 'src/server/index.ts',
      webhooks: 'src/webhooks/index.ts',
      llm: 'src/llm/index.ts',
      // The LLM proxy (issue 18): Hono and the price catalog, behind a subpath of its own.
      proxy: 'src/proxy/index.ts',
    },
    format: ['esm', 'cjs'],
    dts: true,
    clean: false,
    shims: true,
    target: 'node20',
    sourcemap: true,
    loader,
  },
  {
    // The `agentkey` command. ESM only (some of its dependencies are), with its shebang.
    entry: { cli: 'src/cli/bin.ts' },
    format: ['esm'],
    target: 'node20',
    sourcemap: true,
    banner: { js: '#!/usr/bin/env node' },
    loader,
  },
]);
