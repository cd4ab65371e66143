import type { AgentKey } from '../agentkey.js';
import { type AgentKeyMiddlewareOptions, expressGuard } from '../http/express.js';
import { type FastifyAgentKeyOptions, fastifyGuard } from '../http/fastify.js';
import { type FetchAgentKeyOptions, fetchGuard } from '../http/fetch.js';
import { type HonoAgentKeyOptions, honoGuard } from '../http/hono.js';
import type { SubjectValidation, subjectIdentities } from './subjects.js';

/** verify() plus the four framework adapters over one Authenticate. */
export function withAdapters(ak: AgentKey, ids: ReturnType<typeof subjectIdentities>) {
  return {
    /** Checks a bearer token: `validateBySubject`'s result, with `subject` and `claims` when valid. */
    verify: (token: string): Promise<SubjectValidation> => ids.verify(token),
    /** Express middleware (as agentKeyMiddleware): req.agentKey. */
    express: (opts: AgentKeyMiddlewareOptions = {}) => expressGuard(ak, opts, ids.authenticate),
    /** Hono middleware (as agentkey/hono): c.get('agentKey'). */
    hono: (opts: HonoAgentKeyOptions = {}) => honoGuard(ak, opts, ids.authenticate),
    /** A web-standard guard (as agentkey/fetch). */
    fetch: (opts: FetchAgentKeyOptions = {}) => fetchGuard(ak, opts, ids.authenticate),
    /** A Fastify preHandler (as agentkey/fastify): request.agentKey. */
    fastify: (opts: FastifyAgentKeyOptions = {}) => fastifyGuard(ak, opts, ids.authenticate),
  };
}

