// A port that was free a moment ago, on 127.0.0.1: for servers the tests and benchmarks
// start as processes of their own (PgBouncer, service instances), which must be told one.
import net from 'node:net';

/** Resolves with a port nothing listened on a moment ago (whoever binds it next may still race). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}
