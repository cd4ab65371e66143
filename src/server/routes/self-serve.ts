import { type Context, Hono } from 'hono';
import type { AgentKey, ValidKey } from '../../agentkey.js';
import { type HttpError, packageBody, refuse } from '../../http/errors.js';
import { type checkRoutesOptions, selfServeHandlers } from '../../http/self-serve.js';
import { checkVerifyOptions, keyFromHeaders, verifyKey } from '../../http/verify.js';
import type { Env } from '../context.js';

/**
 * The self-serve routes of the @katrinalaszlo/agentkey package, with their security model (see README), answering
 * in the package's shape (`error` a string, with `code` and `message`), as its clients parse it.
 */
export function selfServeRoutes(ak: AgentKey, opts: ReturnType<typeof checkRoutesOptions>, clientAddress: (c: Context) => string) {
  const app = new Hono<Env>();
  const handlers = selfServeHandlers(ak, opts);
  const verifyOpts = checkVerifyOptions({ timeoutMs: opts.timeoutMs });
  type Out = { status: number; body: unknown };
  const refused = (e: HttpError): Out => ({ status: e.status, body: packageBody(e) });
  const withKey = async (c: Context, handle: (key: ValidKey) => Promise<Out>): Promise<Out> => {
    const outcome = await verifyKey(ak, keyFromHeaders((name) => c.req.header(name)), verifyOpts);
    return outcome.ok ? handle(outcome.key) : refused(outcome.error);
  };
  const withJson = async (c: Context, handle: (body: unknown) => Promise<Out>): Promise<Out> => {
    const text = await c.req.text();
    if (text.trim() === '') return handle(undefined);
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      return refused(refuse('invalid_json'));
    }
    return handle(body);
  };
  const send = (c: Context<Env>, out: Out) => {
    const code = (out.body as { code?: string }).code;
    if (out.status >= 400) c.set('errorCode', code);
    return c.json(out.body as object, out.status as 200);
  };
  const ip = (c: Context) => clientAddress(c);
  app.post('/signup', async (c) => send(c, await withJson(c, (body) => handlers.signup({ body, key: undefined, ip: ip(c) }))));
  app.get('/sdk-keys/me', async (c) => send(c, await withKey(c, (key) => handlers.me({ body: undefined, key, ip: ip(c) }))));
  app.post('/sdk-keys', async (c) =>
    send(c, await withKey(c, (key) => withJson(c, (body) => handlers.createChild({ body, key, ip: ip(c) })))),
  );
  app.delete('/sdk-keys/:id', async (c) =>
    send(c, await withKey(c, (key) => handlers.revoke({ body: undefined, key, ip: ip(c), id: c.req.param('id') }))),
  );
  app.patch('/sdk-keys/:id', async (c) =>
    send(c, await withKey(c, (key) => withJson(c, (body) => handlers.update({ body, key, ip: ip(c), id: c.req.param('id') })))),
  );
  return app;
}

/** True for the paths of the self-serve routes: their errors are in the package's shape, whoever refuses. */
export function isSelfServePath(path: string): boolean {
  return path === '/signup' || path === '/sdk-keys' || path.startsWith('/sdk-keys/');
}

/** A refusal of the service (404, 405, 413, 415, a fault...) in the package's shape, for a self-serve path. */
export function inPackageShape(refusal: HttpError): { status: number; body: unknown } {
  return { status: refusal.status, body: packageBody(refusal, 'Failed to create key') };
}
