/** Types of ports.mjs (see there). */
export declare function freePort(): Promise<number>;
