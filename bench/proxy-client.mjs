// The benchmark's client (bench/proxy.mjs starts it as a process of its own): `callers`
// concurrent loops of POST <url> with one chat completion request, over node:http keep-alive,
// for `seconds`, timing each call. Prints { ops, seconds, p50, p99, failed } (ms) on stdout.
import http from 'node:http';
import { performance } from 'node:perf_hooks';

const [url, bearer, seconds, callers] = process.argv.slice(2);
const target = new URL(url);
const body = JSON.stringify({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'Say hello to the benchmark.' }], max_tokens: 32 });
const agent = new http.Agent({ keepAlive: true, maxSockets: Number(callers) });
const headers = { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body), authorization: `Bearer ${bearer}` };

function call() {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: target.hostname, port: target.port, path: target.pathname, method: 'POST', agent, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (c) => (text += c));
      res.on('end', () => resolve(res.statusCode === 200 && text.includes('"usage"')));
    });
    req.on('error', reject);
    req.end(body);
  });
}

const latencies = [];
let failed = 0;
const start = performance.now();
const stopAt = start + Number(seconds) * 1000;
await Promise.all(
  Array.from({ length: Number(callers) }, async () => {
    while (performance.now() < stopAt) {
      const t0 = performance.now();
      const ok = await call().catch(() => false);
      latencies.push(performance.now() - t0);
      if (!ok) failed++;
    }
  }),
);
const elapsed = (performance.now() - start) / 1000;
latencies.sort((a, b) => a - b);
const at = (q) => latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))] ?? 0;
process.stdout.write(`${JSON.stringify({ ops: latencies.length, seconds: elapsed, p50: at(0.5), p99: at(0.99), failed })}\n`);
agent.destroy();
