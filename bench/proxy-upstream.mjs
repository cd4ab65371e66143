// The benchmark's fake upstream (bench/proxy.mjs starts it as a process of its own, as a real
// upstream is): OpenAI's POST /v1/chat/completions, answered with one constant completion and
// its usage after checking the operator's key, at once or after BENCH_UPSTREAM_DELAY_MS (a
// model's think time). It prints its port on stdout.
import http from 'node:http';

const KEY = process.env.BENCH_UPSTREAM_KEY;
const DELAY = Number(process.env.BENCH_UPSTREAM_DELAY_MS ?? 0);
const answer = JSON.stringify({
  id: 'chatcmpl-bench',
  object: 'chat.completion',
  created: 1,
  model: 'gpt-4o-mini',
  choices: [{ index: 0, message: { role: 'assistant', content: 'Hello from the benchmark upstream.' }, finish_reason: 'stop', logprobs: null }],
  usage: { prompt_tokens: 20, completion_tokens: 8, total_tokens: 28 },
});
const refused = JSON.stringify({ error: { message: 'Incorrect API key provided.', type: 'invalid_request_error', param: null, code: 'invalid_api_key' } });

const server = http.createServer((req, res) => {
  req.resume();
  req.on('end', () => {
    const ok = req.headers.authorization === `Bearer ${KEY}`;
    const body = ok ? answer : refused;
    const send = () => {
      res.writeHead(ok ? 200 : 401, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) });
      res.end(body);
    };
    if (DELAY > 0) setTimeout(send, DELAY);
    else send();
  });
});
server.keepAliveTimeout = 60_000;
server.listen(0, '127.0.0.1', () => process.stdout.write(`${JSON.stringify({ port: server.address().port })}\n`));
process.stdin.on('end', () => server.close(() => process.exit(0)));
process.stdin.resume();
