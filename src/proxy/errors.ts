import { type RefusalReason, refuse } from '../http/refusals.js';
import type { Flavor } from './options.js';

/**
 * Errors in the shape of the API the client speaks, so its SDK raises its own error class
 * (OpenAI's and Anthropic's SDKs pick the class by status: 400 BadRequestError, 401
 * AuthenticationError, 403 PermissionDeniedError, 429 RateLimitError, 5xx InternalServerError):
 * - OpenAI: `{ error: { message, type, param: null, code } }`;
 * - Anthropic: `{ type: 'error', error: { type, message } }`.
 * `code` is agentkey's refusal code ('budget_exceeded', 'invalid_key', 'model_not_allowed', ...):
 * OpenAI's `error.code`, and Anthropic's `error.details.error_code` (its SDK's `errorCode`).
 */
export interface ProxyError {
  status: number;
  code: string;
  message: string;
  headers?: Record<string, string>;
}

const OPENAI_TYPES: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  403: 'permission_error',
  404: 'not_found_error',
  413: 'invalid_request_error',
  415: 'invalid_request_error',
  429: 'rate_limit_error',
};

// https://docs.anthropic.com/en/api/errors
const ANTHROPIC_TYPES: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  403: 'permission_error',
  404: 'not_found_error',
  413: 'request_too_large',
  415: 'invalid_request_error',
  429: 'rate_limit_error',
  529: 'overloaded_error',
};

/**
 * A row of the refusal table (src/http/refusals.ts), the one home of every status and code:
 * `detail` is the proxy's sentence for the rows that take one.
 */
export function refusal(reason: RefusalReason, detail?: string, headers?: Record<string, string>): ProxyError {
  const e = refuse(reason, detail);
  return { status: e.status, code: e.body.error.code, message: e.body.error.message, ...(headers ? { headers } : {}) };
}

/** The body of an error in the flavor's shape. */
export function errorBody(flavor: Flavor, e: { status: number; code: string; message: string }): Record<string, unknown> {
  if (flavor === 'anthropic') {
    const type = ANTHROPIC_TYPES[e.status] ?? (e.status >= 500 ? 'api_error' : 'invalid_request_error');
    return { type: 'error', error: { type, message: e.message, details: { error_code: e.code } } };
  }
  const type = OPENAI_TYPES[e.status] ?? (e.status >= 500 ? 'server_error' : 'invalid_request_error');
  return { error: { message: e.message, type, param: null, code: e.code } };
}

/** An error as a Response in the flavor's shape. */
export function errorResponse(flavor: Flavor, e: ProxyError): Response {
  return new Response(JSON.stringify(errorBody(flavor, e)), {
    status: e.status,
    headers: { 'content-type': 'application/json', ...e.headers },
  });
}

/**
 * The last event of a stream that broke after it began (the status, 200, is already sent):
 * an error event in the flavor's shape, which both SDKs raise as an APIError.
 */
export function streamErrorEvent(flavor: Flavor, message: string): string {
  const body = JSON.stringify(errorBody(flavor, refusal('upstream_stream_failed', message)));
  return flavor === 'anthropic' ? `event: error\ndata: ${body}\n\n` : `data: ${body}\n\n`;
}

/** A refusal that a retry within seconds cannot pass: the SDKs' `x-should-retry: false` stops their automatic retries. */
export const NO_RETRY = { 'x-should-retry': 'false' } as const;
