import type { ChildProcess } from 'node:child_process';

/** Types of pgbouncer.mjs (see there). */
export declare function pgbouncerBinary(): string | null;
export declare function startPgBouncer(
  serverUrl: string,
  options?: { poolSize?: number },
): Promise<{ url(database?: string): string; port: number; child: ChildProcess; stop(): Promise<void> }>;
