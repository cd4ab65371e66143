import fs from 'node:fs';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  plugins: [
    {
      // An .sql file imported from TypeScript is its text, as tsup's loader makes it (tsup.config.ts).
      name: 'agentkey-sql-text',
      enforce: 'pre',
      load(id) {
        const file = id.split('?')[0] as string;
        return file.endsWith('.sql') ? `export default ${JSON.stringify(fs.readFileSync(file, 'utf8'))};` : null;
      },
    },
  ],
  test: {
    globals: true,
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    testTimeout: 30_000,
    hookTimeout: 60_000,
    pool: 'forks',
  },
});
