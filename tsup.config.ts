import { defineConfig } from 'tsup';

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
    },
    format: ['esm', 'cjs'],
    dts: true,
    clean: false,
    shims: true,
    target: 'node20',
    sourcemap: true,
  },
  {
    // The `agentkey` command. ESM only (some of its dependencies are), with its shebang.
    entry: { cli: 'src/cli/bin.ts' },
    format: ['esm'],
    target: 'node20',
    sourcemap: true,
    banner: { js: '#!/usr/bin/env node' },
  },
]);
