#!/usr/bin/env node
'use strict';

//
// connect.js - the Node.js original's commit throughput, for tools/bench.sh.
//
// Usage:
//   node connect.js --url redis://127.0.0.1:PORT --sparks N
//        [--ns NS] [--address http://127.0.0.1:9100] [--chunk 1000]
//        [--keep] [--max-ms 600000]
//
// Creates one metroplex 1.0.2 server (new Metroplex({}, {redis, namespace,
// address}), as tests/interop/node_peer.js does; no Primus needed), waits for
// its 'register' event, then connects N sparks with metroplex.connect({id})
// (ids "1479200822465$12345"-like, generated before timing; `--chunk` per
// event-loop turn, so ioredis can write and read meanwhile) and polls
// HLEN NS:sparks on a second connection every 10 ms until it equals N.
// The time from the first connect() to that HLEN is the commit time.
//
// Prints "node: N sparks in T s: R sparks/s (heap used H MiB, rss M MiB)"
// and "node_sparks_per_s R". Then deletes the namespace's keys (unless
// --keep; the original's unregister cannot: its Lua script unpacks the whole
// set, which fails beyond a few thousand sparks) and exits 0. Any failure
// prints "error ..." and exits 1; after --max-ms it exits 2.
//
// metroplex 1.0.2 keeps one MULTI per spark in flight; near 1,000,000 sparks
// the process runs out of heap, hence bench.sh's 200,000.
//

function fail(message, code) {
  process.stdout.write('error ' + String(message).replace(/\n/g, ' ') + '\n');
  process.exit(code || 1);
}

const opts = {
  url: '',
  sparks: 0,
  ns: 'mpxnode-' + process.pid,
  address: 'http://127.0.0.1:9100',
  chunk: 1000,
  keep: false,
  maxMs: 600000
};
{
  const argv = process.argv.slice(2);
  const value = (i) => {
    if (i + 1 >= argv.length) fail('missing value for ' + argv[i]);
    return argv[i + 1];
  };
  const int = (name, s, lo, hi) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < lo || n > hi) fail('bad value for ' + name + ': ' + s);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    switch (argv[i]) {
      case '--url': opts.url = value(i); i++; break;
      case '--sparks': opts.sparks = int('--sparks', value(i), 1, 10000000); i++; break;
      case '--ns': opts.ns = value(i); i++; break;
      case '--address': opts.address = value(i); i++; break;
      case '--chunk': opts.chunk = int('--chunk', value(i), 1, 1000000); i++; break;
      case '--keep': opts.keep = true; break;
      case '--max-ms': opts.maxMs = int('--max-ms', value(i), 1000, 86400000); i++; break;
      case '-h': case '--help':
        process.stdout.write('usage: node connect.js --url redis://127.0.0.1:PORT --sparks N ' +
          '[--ns NS] [--address URL] [--chunk C] [--keep] [--max-ms MS]\n');
        process.exit(0);
        break;
      default: fail('unknown argument ' + argv[i]);
    }
  }
  if (!opts.url) fail('--url is required');
  if (!opts.sparks) fail('--sparks is required');
}

setTimeout(() => fail('deadline (' + opts.maxMs + ' ms)', 2), opts.maxMs).unref();

let Redis, Metroplex;
try {
  // Our own node_modules first (npm ci in tools/node_baseline), else the
  // interop peer's (tests/interop), which pins the same versions.
  const paths = [__dirname, require('path').join(__dirname, '..', '..', 'tests', 'interop')];
  Redis = require(require.resolve('ioredis', { paths }));
  Metroplex = require(require.resolve('metroplex', { paths }));
} catch (e) {
  fail('cannot load ioredis/metroplex (run npm ci in ' + __dirname + '): ' + e.message);
}

const redisOpts = { connectTimeout: 5000, maxRetriesPerRequest: 2, retryStrategy: () => null };
const redis = new Redis(opts.url, redisOpts);
const check = new Redis(opts.url, redisOpts);
redis.on('error', (err) => process.stderr.write('connect.js: redis: ' + err.message + '\n'));
check.on('error', (err) => process.stderr.write('connect.js: redis (check): ' + err.message + '\n'));

const metroplex = new Metroplex({}, { redis: redis, namespace: opts.ns, address: opts.address });
metroplex.on('error', (err) => fail('metroplex: ' + (err && err.message ? err.message : err)));

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const tick = () => new Promise((resolve) => setImmediate(resolve));

async function main() {
  await new Promise((resolve) => metroplex.once('register', resolve));
  const N = opts.sparks;
  const ids = new Array(N);
  for (let i = 0; i < N; i++) ids[i] = (1479200822465 + Math.floor(i / 1024)) + '$' + i;
  const hashKey = metroplex.namespace + 'sparks';
  if ((await check.hlen(hashKey)) !== 0) fail(hashKey + ' is not empty: choose another --ns');

  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i += opts.chunk) {
    const end = Math.min(N, i + opts.chunk);
    for (let k = i; k < end; k++) metroplex.connect({ id: ids[k] });
    await tick();
  }
  const tConnected = process.hrtime.bigint();
  let hlen = 0;
  for (;;) { // bounded by --max-ms
    hlen = await check.hlen(hashKey);
    if (hlen >= N) break;
    await sleep(10);
  }
  const t1 = process.hrtime.bigint();
  const secs = Number(t1 - t0) / 1e9;
  const mem = process.memoryUsage();
  process.stdout.write(
    'node: ' + N + ' sparks in ' + secs.toFixed(3) + ' s: ' + Math.round(N / secs) +
      ' sparks/s (connect calls ' + (Number(tConnected - t0) / 1e9).toFixed(3) + ' s, heap used ' +
      (mem.heapUsed / 1048576).toFixed(0) + ' MiB, rss ' + (mem.rss / 1048576).toFixed(0) + ' MiB)\n');
  process.stdout.write('node_sparks_per_s ' + Math.round(N / secs) + '\n');

  clearInterval(metroplex.timer);
  if (!opts.keep) {
    const ns = metroplex.namespace;
    await check.unlink(ns + 'sparks', ns + metroplex.address + ':sparks', ns + 'servers',
      ns + metroplex.address);
  }
  redis.disconnect();
  check.disconnect();
  process.exit(0);
}

main().catch((e) => fail(e && e.message ? e.message : e));
