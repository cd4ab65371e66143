/**
 * What the service's middleware leaves on a request's context: its id, and the code of
 * the error it was answered with (for the request's log line).
 */
export type Env = { Variables: { requestId: string; errorCode: string | undefined } };
