import { AgentKeyError, type AgentKeyErrorCode } from '../errors.js';

/** The one JSON error body every agentkey HTTP surface sends. */
export interface HttpErrorBody {
  error: { code: string; message: string; [extra: string]: unknown };
}

export interface HttpError {
  status: number;
  body: HttpErrorBody;
}

export function httpError(status: number, code: string, message: string, extra: Record<string, unknown> = {}): HttpError {
  return { status, body: { error: { code, message, ...extra } } };
}

const STATUS: Partial<Record<AgentKeyErrorCode, number>> = {
  scope_not_allowed: 403,
  budget_exceeds_parent: 403,
  expiry_exceeds_parent: 403,
  parent_inactive: 403,
  depth_exceeded: 403,
  parent_not_found: 404,
  not_migrated: 500,
  storage_error: 500,
  invalid_pool: 500,
  invalid_table_name: 500,
};

/** Maps any thrown error to a status and the JSON body; never leaks a stack trace. */
export function errorToHttp(err: unknown): HttpError {
  if (err instanceof AgentKeyError) {
    const status = STATUS[err.code] ?? 400;
    // Infrastructure detail stays in the server's logs, not in a client's response.
    const message = status >= 500 ? 'The key store is unavailable; try again later.' : err.message;
    return httpError(status, err.code, message);
  }
  return httpError(500, 'internal_error', 'The server failed to handle this request.');
}

/** Writes a JSON response with Node's plain ServerResponse API (works under Express too). */
export function sendJson(res: JsonResponse, status: number, body: unknown): void {
  res.statusCode = status;
  res.setHeader('content-type', 'application/json; charset=utf-8');
  res.end(JSON.stringify(body));
}

export interface JsonResponse {
  statusCode: number;
  setHeader(name: string, value: string): unknown;
  end(chunk?: string): unknown;
}
