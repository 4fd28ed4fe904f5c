#!/usr/bin/env node
'use strict';

//
// forward.js - the Node.js original's cross-server message throughput, the
// counterpart of build/bin/metroplex-omegabench (tools/omegabench.c).
//
// Usage:
//   node forward.js --redis redis://127.0.0.1:PORT
//        [--seconds 2] [--servers 10] [--clients 100] [--mode procs|single]
//        [--sparks real|registry] [--ns NS] [--interval 10000] [--latency 4000]
//        [--max-ms 180000]
//
// Starts 1 sending + --servers receiving Node servers, each an http server on
// a free 127.0.0.1 port with Primus 8.0.9 (transformer "websockets", npm ws)
// + omega-supreme 3.0.1 + metroplex 1.0.2, all in namespace --ns (default
// "mpxfwd-PID"), metroplex interval --interval ms (keep-alive every
// interval - latency ms). Each receiver holds --clients sparks:
//   --sparks real      (default) real Primus clients (primus.Socket over
//                      websockets, in the receiver's process) connect to it;
//                      every forwarded message is written to the websocket
//                      and decoded by the client, which counts it;
//   --sparks registry  no clients: metroplex.connect({id}) registers the ids
//                      and primus.spark() is patched to return a counting
//                      stub, like omegabench's no-op deliver callback.
//   --mode procs       (default) the sender runs in this process and every
//                      receiver (with its clients) in a child process
//                      (child_process.fork), as Node servers are deployed;
//   --mode single      all 11 servers (and the clients) in this process.
// Then, for --seconds per form, one request at a time (await the callback,
// like omegabench's blocking mpx_forward_*):
//   spark      primus.forward.spark(id, msg), id cycling over the remote ids
//   sparks     primus.forward.sparks(all servers x clients ids, msg)
//   broadcast  primus.forward.broadcast(msg)
// msg is {"event":"bench","n":12345}, as omegabench's. Prints one line per
// form (messages/s, sparks reached/s from the replies' "send"), then, once
// the clients got everything, the messages the clients received, and a final
// JSON line starting with "node_forward_json ".
//
// Loopback only. Shuts down cleanly (primus.destroy: metroplex unregisters
// every server, which removes its sparks); the namespace's keys left are
// deleted. Failures print "error ..." and exit 1; after --max-ms, exit 2.
//

const path = require('path');
const { fork } = require('child_process');

function fail(message, code) {
  process.stdout.write('error ' + String(message).replace(/\n/g, ' ') + '\n');
  process.exit(code || 1);
}

const opts = {
  role: 'main',
  redis: '',
  seconds: 2,
  servers: 10,
  clients: 100,
  mode: 'procs',
  sparks: 'real',
  ns: 'mpxfwd-' + process.pid,
  interval: 10000,
  latency: 4000,
  index: 0,
  maxMs: 180000
};
{
  const argv = process.argv.slice(2);
  const value = (i) => {
    if (i + 1 >= argv.length) fail('missing value for ' + argv[i]);
    return argv[i + 1];
  };
  const num = (name, s, lo, hi, int) => {
    const n = Number(s);
    if (!Number.isFinite(n) || (int && !Number.isInteger(n)) || n < lo || n > hi) {
      fail('bad value for ' + name + ': ' + s);
    }
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    switch (a) {
      case '--role': opts.role = value(i); i++; break;
      case '--redis': case '--url': opts.redis = value(i); i++; break;
      case '--seconds': opts.seconds = num(a, value(i), 0.1, 60, false); i++; break;
      case '--servers': opts.servers = num(a, value(i), 1, 100, true); i++; break;
      case '--clients': opts.clients = num(a, value(i), 1, 10000, true); i++; break;
      case '--mode': opts.mode = value(i); i++; break;
      case '--sparks': opts.sparks = value(i); i++; break;
      case '--ns': opts.ns = value(i); i++; break;
      case '--interval': opts.interval = num(a, value(i), 2000, 3600000, true); i++; break;
      case '--latency': opts.latency = num(a, value(i), 1, 3600000, true); i++; break;
      case '--index': opts.index = num(a, value(i), 0, 1000, true); i++; break;
      case '--max-ms': opts.maxMs = num(a, value(i), 5000, 3600000, true); i++; break;
      case '-h': case '--help':
        process.stdout.write('usage: node forward.js --redis redis://127.0.0.1:PORT [--seconds S] ' +
          '[--servers N] [--clients N] [--mode procs|single] [--sparks real|registry] [--ns NS] ' +
          '[--interval MS] [--latency MS] [--max-ms MS]\n');
        process.exit(0);
        break;
      default: fail('unknown argument ' + a);
    }
  }
  if (!opts.redis) fail('--redis is required');
  if (!/^redis:\/\/(127\.0\.0\.1|localhost|\[::1\])(:\d+)?(\/\d*)?$/.test(opts.redis)) {
    fail('--redis must be a loopback redis:// URL (got ' + opts.redis + ')');
  }
  if (!['procs', 'single'].includes(opts.mode)) fail('--mode must be procs or single');
  if (!['real', 'registry'].includes(opts.sparks)) fail('--sparks must be real or registry');
  if (opts.latency >= opts.interval) fail('--latency must be below --interval');
}

setTimeout(() => fail('deadline (' + opts.maxMs + ' ms)', 2), opts.maxMs).unref();

let Redis, Primus, Metroplex, Omega;
try {
  // Our own node_modules first (npm ci in tools/node_baseline), else the
  // interop peer's (tests/interop), which pins the same versions.
  const paths = [__dirname, path.join(__dirname, '..', '..', 'tests', 'interop')];
  const need = (name) => require(require.resolve(name, { paths }));
  Redis = need('ioredis');
  Primus = need('primus');
  Metroplex = need('metroplex');
  Omega = need('omega-supreme');
} catch (e) {
  fail('cannot load primus/omega-supreme/metroplex/ioredis (run npm ci in ' + __dirname + '): ' +
    e.message);
}

const MSG = { event: 'bench', n: 12345 };
const redisOpts = { connectTimeout: 5000, maxRetriesPerRequest: 2, retryStrategy: () => null };
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// One Node server: http + Primus (websockets) + omega-supreme + metroplex on
// 127.0.0.1, any port. Resolves once metroplex registered it.
function startServer(name) {
  const redis = new Redis(opts.redis, redisOpts);
  redis.on('error', (err) => process.stderr.write('forward.js ' + name + ': redis: ' +
    err.message + '\n'));
  const server = require('http').createServer();
  const primus = new Primus(server, {
    transformer: 'websockets',
    redis: redis,
    namespace: opts.ns,
    interval: opts.interval,
    latency: opts.latency
  });
  // omega-supreme first: metroplex adds forward.spark/sparks/broadcast to it.
  primus.plugin('omega-supreme', Omega);
  primus.plugin('metroplex', Metroplex);
  primus.on('error', (err) => fail(name + ': primus: ' + (err && err.message ? err.message : err)));
  return new Promise((resolve) => {
    primus.once('register', (address) => resolve({ name, redis, server, primus, address }));
    server.listen(0, '127.0.0.1');
  });
}

function stopServer(s) {
  return new Promise((resolve) => {
    // close: metroplex unregisters (annihilate: the server and its sparks).
    s.primus.destroy({ close: true, timeout: 0 }, () => resolve());
  }).then(() => s.redis.quit().catch(() => {}));
}

// A receiving server with its sparks. Resolves to
// { address, ids, received(), stop() } once the ids are in Redis.
async function startReceiver(index) {
  const s = await startServer('receiver ' + index);
  const ids = [];
  const sockets = [];
  let received = 0;
  if (opts.sparks === 'real') {
    const connected = new Promise((resolve) => {
      s.primus.on('connection', (spark) => {
        ids.push(spark.id);
        if (ids.length === opts.clients) resolve();
      });
    });
    for (let i = 0; i < opts.clients; i++) {
      const client = new s.primus.Socket(s.address, { strategy: false });
      client.on('data', () => { received++; });
      client.on('error', (err) => process.stderr.write('forward.js receiver ' + index +
        ': client: ' + err.message + '\n'));
      sockets.push(client);
    }
    await connected;
  } else {
    // Registry only: ids registered as metroplex does for a connection, and
    // primus.spark() (what omega-supreme's receiving side calls) answers a
    // stub that counts the writes.
    const stub = { write() { received++; return true; } };
    const own = new Set();
    for (let i = 0; i < opts.clients; i++) {
      const id = 'node-' + index + '-' + i + '-' + process.pid;
      ids.push(id);
      own.add(id);
      s.primus.metroplex.connect({ id });
    }
    // (Primus defines both read-only on its prototype: shadow them.)
    Object.defineProperty(s.primus, 'spark', {
      value: (id) => (own.has(id) ? stub : undefined), configurable: true
    });
    Object.defineProperty(s.primus, 'forEach', {
      value: (fn) => { for (let i = 0; i < own.size; i++) fn(stub); return s.primus; },
      configurable: true
    });
  }
  // metroplex.connect is a MULTI without callback on this connection: a PING
  // after it answers once they all ran.
  await s.redis.ping();
  return {
    address: s.address,
    ids,
    received: () => received,
    stop: async () => {
      for (const c of sockets) c.end();
      // Let the disconnections (metroplex.disconnect) reach Redis before quit.
      for (let i = 0; i < 100 && s.primus.connected > 0; i++) await sleep(20);
      await s.redis.ping().catch(() => {});
      delete s.primus.spark; // the stubs, if any: Primus's own again
      delete s.primus.forEach;
      await stopServer(s);
    }
  };
}

// --- child process: one receiver -------------------------------------------------

if (opts.role === 'receiver') {
  let r = null;
  process.on('disconnect', () => process.exit(3)); // parent gone
  process.on('message', async (m) => {
    if (m && m.type === 'received') {
      process.send({ type: 'received', received: r.received() });
    } else if (m && m.type === 'stop') {
      const received = r.received();
      await r.stop();
      process.send({ type: 'stopped', received }, () => process.exit(0));
    }
  });
  startReceiver(opts.index).then((rec) => {
    r = rec;
    process.send({ type: 'ready', address: r.address, ids: r.ids });
  }, (e) => fail('receiver ' + opts.index + ': ' + (e && e.message ? e.message : e)));
  return;
}

// --- main: the sender, the receivers, the measurement --------------------------------

// A receiver in a child process, with the same interface as startReceiver().
function forkReceiver(index) {
  const args = ['--role', 'receiver', '--index', String(index), '--redis', opts.redis,
    '--clients', String(opts.clients), '--sparks', opts.sparks, '--ns', opts.ns,
    '--interval', String(opts.interval), '--latency', String(opts.latency),
    '--max-ms', String(opts.maxMs)];
  const child = fork(__filename, args, { stdio: ['ignore', 'pipe', 'inherit', 'ipc'] });
  child.stdout.on('data', (d) => process.stdout.write('[receiver ' + index + '] ' + d));
  const waiters = new Map();
  const wait = (type) => new Promise((resolve) => waiters.set(type, resolve));
  let exited = false;
  child.on('message', (m) => {
    const w = waiters.get(m.type);
    if (w) { waiters.delete(m.type); w(m); }
  });
  child.on('exit', (code) => {
    exited = true;
    if (!stopping) fail('receiver ' + index + ' exited (' + code + ')');
  });
  let stopping = false;
  return wait('ready').then((m) => ({
    address: m.address,
    ids: m.ids,
    received: () => { child.send({ type: 'received' }); return wait('received').then((x) => x.received); },
    stop: () => {
      stopping = true;
      if (exited) return Promise.resolve();
      const done = new Promise((resolve) => child.once('exit', resolve));
      child.send({ type: 'stop' });
      const kill = setTimeout(() => child.kill('SIGKILL'), 10000);
      return done.then(() => clearTimeout(kill));
    },
    pid: child.pid
  }));
}

function forwardP(fn) {
  return new Promise((resolve, reject) => {
    fn((err, data) => (err ? reject(err) : resolve(data)));
  });
}

async function main() {
  const t0 = Date.now();
  const check = new Redis(opts.redis, redisOpts);
  check.on('error', (err) => process.stderr.write('forward.js: redis (check): ' + err.message + '\n'));
  const existing = await check.scard(opts.ns + ':servers');
  if (existing !== 0) fail(opts.ns + ':servers is not empty: choose another --ns');

  const sender = await startServer('sender');
  const receivers = await Promise.all(Array.from({ length: opts.servers }, (_, i) =>
    opts.mode === 'procs' ? forkReceiver(i + 1) : startReceiver(i + 1)));
  const ids = [].concat(...receivers.map((r) => r.ids));
  const N = ids.length;
  const hlen = await check.hlen(opts.ns + ':sparks');
  const nservers = await check.scard(opts.ns + ':servers');
  if (hlen !== N || nservers !== opts.servers + 1) {
    fail('registry has ' + hlen + ' sparks and ' + nservers + ' servers, expected ' + N +
      ' and ' + (opts.servers + 1));
  }
  process.stdout.write('node forward: ' + (opts.servers + 1) + ' servers (1 sender + ' +
    opts.servers + ' receivers, mode ' + opts.mode + '), ' + N + ' sparks (' +
    (opts.sparks === 'real' ? 'real Primus clients' : 'registered ids, no clients') +
    '), set up in ' + ((Date.now() - t0) / 1000).toFixed(1) + ' s, ' + opts.seconds +
    ' s per form\n');

  const fwd = sender.primus.forward;
  const forms = [
    { key: 'spark', label: 'spark', expect: 1,
      call: (i) => forwardP((cb) => fwd.spark(ids[i % N], MSG, cb)) },
    { key: 'sparks', label: 'sparks (' + N + ' ids / ' + opts.servers + ' servers)', expect: N,
      call: () => forwardP((cb) => fwd.sparks(ids, MSG, cb)) },
    { key: 'broadcast', label: 'broadcast (' + opts.servers + ' servers)', expect: N,
      call: () => forwardP((cb) => fwd.broadcast(MSG, cb)) }
  ];
  const pad = (s, n) => (s.length >= n ? s : s + ' '.repeat(n - s.length));
  const lpad = (s, n) => (s.length >= n ? s : ' '.repeat(n - s.length) + s);
  process.stdout.write(pad('form', 32) + ' ' + lpad('messages/s', 12) + ' ' +
    lpad('sparks reached/s', 16) + '\n');
  const results = {};
  let sentTotal = 0;
  for (const f of forms) {
    let msgs = 0, reached = 0, short = 0;
    const start = process.hrtime.bigint();
    const limit = BigInt(Math.round(opts.seconds * 1e9));
    let el;
    do {
      let data;
      try {
        data = await f.call(msgs);
      } catch (e) {
        fail(f.key + ': ' + e.message + (e.status ? ' (status ' + e.status + ')' : ''));
      }
      msgs++;
      reached += data.send;
      if (data.send !== f.expect) short++;
      el = process.hrtime.bigint() - start;
    } while (el < limit);
    const secs = Number(el) / 1e9;
    sentTotal += reached;
    results[f.key] = {
      messages: msgs, reached, seconds: +secs.toFixed(3),
      messages_per_s: Math.round(msgs / secs), reached_per_s: Math.round(reached / secs)
    };
    process.stdout.write(pad(f.label, 32) + ' ' + lpad(String(Math.round(msgs / secs)), 12) + ' ' +
      lpad(String(Math.round(reached / secs)), 16) +
      (short ? '  (' + short + ' replies reached fewer than ' + f.expect + ')' : '') + '\n');
  }

  // Wait (at most 20 s) until the clients received every message written.
  const totalReceived = async () =>
    (await Promise.all(receivers.map((r) => r.received()))).reduce((a, b) => a + b, 0);
  let got = 0;
  const tw = Date.now();
  for (;;) {
    got = await totalReceived();
    if (got >= sentTotal || Date.now() - tw > 20000) break;
    await sleep(50);
  }
  process.stdout.write('node forward: sparks reached ' + sentTotal + ', messages received by ' +
    (opts.sparks === 'real' ? 'the clients ' : 'the stubs ') + got + ' (drained in ' +
    ((Date.now() - tw) / 1000).toFixed(1) + ' s)\n');

  await Promise.all(receivers.map((r) => r.stop()));
  await stopServer(sender);
  const left = await check.keys(opts.ns + ':*');
  if (left.length) await check.unlink(...left);
  await check.quit();
  process.stdout.write('node_forward_json ' + JSON.stringify({
    impl: 'node', primus: '8.0.9', 'omega-supreme': '3.0.1', metroplex: '1.0.2',
    node: process.version, mode: opts.mode, sparks: opts.sparks, servers: opts.servers,
    clients_per_server: opts.clients, seconds_per_form: opts.seconds, results,
    received: got, reached: sentTotal
  }) + '\n');
  process.exit(got === sentTotal ? 0 : 1);
}

main().catch((e) => fail(e && e.message ? e.message : e));
