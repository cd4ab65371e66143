import { type Server, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { type JWTHeaderParameters, type JWTPayload, SignJWT, generateKeyPair } from 'jose';

/** A key pair made by jose (the private key signs test tokens, the public one verifies). */
export type KeyPair = Awaited<ReturnType<typeof generateKeyPair>>;
export type PrivateKey = KeyPair['privateKey'];

/** Clerk's JWT category header for machine-to-machine tokens. */
export const CLERK_M2M_CATEGORY = 'cl_B7d4PD333AAA';
/** Clerk's JWT category header for session tokens. */
export const CLERK_SESSION_CATEGORY = 'cl_B7d4PD111AAA';

export const nowSeconds = (): number => Math.floor(Date.now() / 1000);

let jtiCounter = 0;
/** A jti no other token of the run has. */
export const nextJti = (prefix = 'jti_'): string => `${prefix}${process.pid}_${++jtiCounter}`;

/**
 * Signs `payload` as a compact JWS. Claims set to undefined are left out (JSON drops them),
 * so a test can remove a default claim with `{ sub: undefined }`.
 */
export function signToken(key: PrivateKey | Uint8Array, payload: Record<string, unknown>, header: Partial<JWTHeaderParameters> & { alg: string }): Promise<string> {
  return new SignJWT(payload as JWTPayload).setProtectedHeader(header as JWTHeaderParameters).sign(key);
}

/** Replaces a token's payload with `payload`, keeping its header and (now wrong) signature. */
export function tamperPayload(token: string, payload: Record<string, unknown>): string {
  const [header, , signature] = token.split('.');
  return `${header}.${Buffer.from(JSON.stringify(payload)).toString('base64url')}.${signature}`;
}

/** A local HTTP server on 127.0.0.1 that answers with `handle`; `hits` counts its requests. */
export async function localServer(
  handle: (req: { method: string; url: string; headers: Record<string, string | string[] | undefined>; body: string }) => { status?: number; body: unknown },
): Promise<{ url: string; hits: () => number; close: () => Promise<void>; server: Server }> {
  let hits = 0;
  const server = createServer((req, res) => {
    let body = '';
    req.on('data', (chunk: Buffer) => (body += chunk.toString()));
    req.on('end', () => {
      hits += 1;
      const out = handle({ method: req.method ?? 'GET', url: req.url ?? '/', headers: req.headers, body });
      res.statusCode = out.status ?? 200;
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify(out.body));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    hits: () => hits,
    server,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
