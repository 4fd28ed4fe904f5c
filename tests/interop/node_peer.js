#!/usr/bin/env node
'use strict';

//
// node_peer.js - a small CLI process that drives the original Node.js
// `metroplex` plugin (npm, v1.0.2) without a real Primus server, so that the
// C interop tests (tests/test_interop.c) can run a Node server beside ours on
// the same Redis.
//
// Usage:
//   node node_peer.js --url redis://127.0.0.1:PORT --ns NS
//        [--interval MS] [--latency MS] [--address http://host:port]
//        [--connect id,id,...] [--disconnect id,id,...]
//        [--lookup id,id,...] [--print-servers] [--stdin]
//        [--unregister] [--stay-ms MS] [--max-ms MS]
//
// Steps, in this order, each one only when asked for:
//   1. create the Metroplex instance: new Metroplex({}, {redis, namespace,
//      interval, latency, address}); with --address the constructor
//      registers, and we wait for its 'register' event  -> "registered ADDR"
//   2. --connect: metroplex.connect({id}) for each id     -> "connected N"
//   3. --disconnect: metroplex.disconnect({id})           -> "disconnected N"
//   4. --lookup: metroplex.sparks(ids)                    -> one line
//      "spark ADDRESS-or-null ID" per id, then "lookup {json}"
//   5. --print-servers: metroplex.servers()               -> one line
//      "server ADDRESS" per server (without our own), then "servers [json]"
//   6. --stdin: read commands, one per line, until "end" or end of input:
//        connect IDS | disconnect IDS | lookup IDS | servers | unregister |
//        sleep MS | end
//      each answered as in the steps above, then "ok COMMAND".
//   7. --unregister: metroplex.unregister()               -> "unregistered ADDR"
//   8. --stay-ms: stay alive that long, heartbeating      -> "staying MS"
//   9. quit Redis and exit 0                              -> "done"
//
// Every line goes to stdout as soon as it is known (stdout is synchronous for
// pipes and files). Failures print "error MESSAGE" and exit 1. The process
// always exits by itself: after --max-ms (default: stay-ms + 10000, or 60000
// with --stdin) it prints "error deadline" and exits 2.
//
// IDS are comma-separated (ids may contain anything but a comma or a
// newline). Connects and disconnects are sent by the original as MULTI/EXEC
// without a callback; we follow them with a PING on the same connection, so
// "connected N" is printed only once Redis has executed them.
//

function fail(message, code) {
  process.stdout.write('error ' + String(message).replace(/\n/g, ' ') + '\n');
  process.exit(code || 1);
}

function parseArgs(argv) {
  const opts = {
    url: 'redis://127.0.0.1:6379',
    ns: 'metroplex',
    interval: 300000,
    latency: 2000,
    address: '',
    connect: [],
    disconnect: [],
    lookup: null,
    printServers: false,
    stdin: false,
    unregister: false,
    stayMs: 0,
    maxMs: 0
  };
  const needValue = (i) => {
    if (i + 1 >= argv.length) fail('missing value for ' + argv[i]);
    return argv[i + 1];
  };
  const ids = (s) => s.split(',').filter((x) => x.length > 0);
  const int = (name, s) => {
    const n = Number(s);
    if (!Number.isInteger(n) || n < 0) fail('bad value for ' + name + ': ' + s);
    return n;
  };
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    switch (a) {
      case '--url': opts.url = needValue(i); i++; break;
      case '--ns': opts.ns = needValue(i); i++; break;
      case '--interval': opts.interval = int(a, needValue(i)); i++; break;
      case '--latency': opts.latency = int(a, needValue(i)); i++; break;
      case '--address': opts.address = needValue(i); i++; break;
      case '--connect': opts.connect = ids(needValue(i)); i++; break;
      case '--disconnect': opts.disconnect = ids(needValue(i)); i++; break;
      case '--lookup': opts.lookup = ids(needValue(i)); i++; break;
      case '--print-servers': opts.printServers = true; break;
      case '--stdin': opts.stdin = true; break;
      case '--unregister': opts.unregister = true; break;
      case '--stay-ms': opts.stayMs = int(a, needValue(i)); i++; break;
      case '--max-ms': opts.maxMs = int(a, needValue(i)); i++; break;
      default: fail('unknown argument ' + a);
    }
  }
  if (!opts.maxMs) opts.maxMs = opts.stdin ? 60000 + opts.stayMs : opts.stayMs + 10000;
  return opts;
}

const opts = parseArgs(process.argv.slice(2));

// The hard deadline: whatever happens, this process ends by itself.
setTimeout(() => fail('deadline', 2), opts.maxMs).unref();

function out(line) {
  process.stdout.write(line + '\n');
}

let Redis, Metroplex;
try {
  // Resolve the packages next to this script (tests/interop/node_modules),
  // whatever the working directory.
  Redis = require(require.resolve('ioredis', { paths: [__dirname] }));
  Metroplex = require(require.resolve('metroplex', { paths: [__dirname] }));
} catch (e) {
  fail('cannot load ioredis/metroplex (run npm ci in ' + __dirname + '): ' + e.message);
}

const redis = new Redis(opts.url, {
  connectTimeout: 2000,
  maxRetriesPerRequest: 2,
  retryStrategy: (times) => (times > 10 ? null : 200),
  lazyConnect: false
});
redis.on('error', (err) => {
  // ioredis reports connection errors here and retries; a command that
  // finally fails reaches its own callback. Keep stderr informative only.
  process.stderr.write('node_peer: redis: ' + err.message + '\n');
});

const metroplex = new Metroplex({}, {
  redis: redis,
  namespace: opts.ns,
  interval: opts.interval,
  latency: opts.latency,
  address: opts.address || undefined
});
metroplex.on('error', (err) => fail('metroplex: ' + (err && err.message ? err.message : err)));

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function registered() {
  if (!opts.address) return Promise.resolve();
  return new Promise((resolve) => {
    metroplex.once('register', (address) => {
      out('registered ' + address);
      resolve();
    });
  });
}

async function connect(ids) {
  for (const id of ids) metroplex.connect({ id: id });
  await redis.ping(); // same connection: runs after the MULTI/EXECs above
  out('connected ' + ids.length);
}

async function disconnect(ids) {
  for (const id of ids) metroplex.disconnect({ id: id });
  await redis.ping();
  out('disconnected ' + ids.length);
}

function lookup(ids) {
  return new Promise((resolve, reject) => {
    if (ids.length === 0) {
      out('lookup {}');
      return resolve();
    }
    metroplex.sparks(ids, (err, addresses) => {
      if (err) return reject(err);
      const map = {};
      ids.forEach((id, i) => {
        const a = addresses[i];
        out('spark ' + (a === null || a === undefined ? 'null' : a) + ' ' + id);
        map[id] = a === undefined ? null : a;
      });
      out('lookup ' + JSON.stringify(map));
      resolve();
    });
  });
}

function servers() {
  return new Promise((resolve, reject) => {
    metroplex.servers((err, list) => {
      if (err) return reject(err);
      list.slice().sort().forEach((a) => out('server ' + a));
      out('servers ' + JSON.stringify(list.slice().sort()));
      resolve();
    });
  });
}

function unregister() {
  return new Promise((resolve, reject) => {
    metroplex.unregister(null, (err, address) => {
      if (err) return reject(err);
      out('unregistered ' + (address || ''));
      resolve();
    });
  });
}

// Commands from stdin, one per line, until "end" or end of input.
function commands() {
  return new Promise((resolve, reject) => {
    const readline = require('readline');
    const rl = readline.createInterface({ input: process.stdin, terminal: false });
    const queue = [];
    let busy = false;
    let closed = false;
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      rl.close();
      resolve();
    };
    const run = async () => {
      if (busy) return;
      busy = true;
      try {
        while (queue.length && !finished) {
          const line = queue.shift().trim();
          if (!line) continue;
          const sp = line.indexOf(' ');
          const cmd = sp < 0 ? line : line.slice(0, sp);
          const arg = sp < 0 ? '' : line.slice(sp + 1);
          const ids = arg.split(',').filter((x) => x.length > 0);
          switch (cmd) {
            case 'connect': await connect(ids); break;
            case 'disconnect': await disconnect(ids); break;
            case 'lookup': await lookup(ids); break;
            case 'servers': await servers(); break;
            case 'unregister': await unregister(); break;
            case 'sleep': await sleep(Number(arg) || 0); break;
            case 'end': out('ok end'); finish(); return;
            default: throw new Error('unknown command ' + cmd);
          }
          out('ok ' + cmd);
        }
      } catch (e) {
        reject(e);
        return;
      } finally {
        busy = false;
      }
      if (closed && !queue.length) finish();
    };
    rl.on('line', (line) => {
      queue.push(line);
      run();
    });
    rl.on('close', () => {
      closed = true;
      if (!busy && !queue.length) finish();
    });
  });
}

async function main() {
  await registered();
  if (opts.connect.length) await connect(opts.connect);
  if (opts.disconnect.length) await disconnect(opts.disconnect);
  if (opts.lookup) await lookup(opts.lookup);
  if (opts.printServers) await servers();
  if (opts.stdin) await commands();
  if (opts.unregister) await unregister();
  if (opts.stayMs) {
    out('staying ' + opts.stayMs);
    await sleep(opts.stayMs);
  }
  clearInterval(metroplex.timer);
  try {
    await redis.quit();
  } catch (e) {
    redis.disconnect();
  }
  out('done');
  process.exit(0);
}

main().catch((e) => fail(e && e.message ? e.message : e));
