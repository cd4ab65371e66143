import type { ChildProcess } from 'node:child_process';

/** Types of start-pg-server.mjs (see there). */
export declare function startPgServer(env?: NodeJS.ProcessEnv): Promise<{ child: ChildProcess; url: string }>;
export declare function stopPgServer(child: ChildProcess): Promise<void>;
