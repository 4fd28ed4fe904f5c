#!/usr/bin/env node
'use strict';

//
// omega_peer.js - a real Primus server (transformer "websockets", npm ws)
// with the original omega-supreme and metroplex plugins, plus real Primus
// clients (primus.Socket) connected to it, driven from stdin by
// tests/test_omega.c to check cross-server messages between Node and C.
//
// Usage:
//   node omega_peer.js --url redis://127.0.0.1:PORT --ns NS
//        [--interval MS] [--latency MS] [--username U] [--password P]
//        [--clients N] [--max-ms MS]
//
// Start-up: listen on 127.0.0.1, any port; metroplex registers
// "http://127.0.0.1:PORT"                          -> "registered ADDRESS"
// then N clients connect; each says hello, the server maps its spark id
//                                                   -> "spark NAME ID" each,
// and once metroplex has written them to Redis     -> "clients N"
// Every message a client receives                  -> "recv NAME JSON"
//
// Commands (stdin, one per line), each answered by one line:
//   spark ID JSON       primus.forward.spark(ID, msg)    -> "forwarded JSON"
//   sparks ID,ID JSON   primus.forward.sparks(ids, msg)  -> "forwarded JSON"
//   broadcast JSON      primus.forward.broadcast(msg)    -> "forwarded JSON"
//       where JSON is {"err": null | {"message", "status"}, "data": ...}
//   end                 close everything, exit 0        -> "done"
//
// Failures print "error MESSAGE" and exit 1; after --max-ms (default 60000)
// the process prints "error deadline" and exits 2.
//

function out(line) {
  process.stdout.write(line + '\n');
}

function fail(message, code) {
  out('error ' + String(message).replace(/\n/g, ' '));
  process.exit(code || 1);
}

const opts = {
  url: 'redis://127.0.0.1:6379', ns: 'metroplex', interval: 300000, latency: 2000,
  username: 'omega', password: 'supreme', clients: 0, maxMs: 60000
};
{
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i].replace(/^--/, '').replace(/-(.)/g, (m, c) => c.toUpperCase());
    if (!(key in opts) || i + 1 >= argv.length) fail('bad argument ' + argv[i]);
    const v = argv[++i];
    opts[key] = typeof opts[key] === 'number' ? Number(v) : v;
  }
}
setTimeout(() => fail('deadline', 2), opts.maxMs).unref();

const need = (name) => require(require.resolve(name, { paths: [__dirname] }));
let Redis, Primus, Metroplex, Omega;
try {
  Redis = need('ioredis');
  Primus = need('primus');
  Metroplex = need('metroplex');
  Omega = need('omega-supreme');
} catch (e) {
  fail('cannot load packages (run npm ci in ' + __dirname + '): ' + e.message);
}

const redis = new Redis(opts.url, { connectTimeout: 2000, maxRetriesPerRequest: 2 });
redis.on('error', (err) => process.stderr.write('omega_peer: redis: ' + err.message + '\n'));

const server = require('http').createServer();
const primus = new Primus(server, {
  transformer: 'websockets',
  redis: redis,
  namespace: opts.ns,
  interval: opts.interval,
  latency: opts.latency,
  username: opts.username,
  password: opts.password
});
// omega-supreme first: metroplex adds forward.spark/sparks/broadcast to it.
primus.plugin('omega-supreme', Omega);
primus.plugin('metroplex', Metroplex);
primus.on('error', (err) => fail('primus: ' + (err && err.message ? err.message : err)));

const names = new Map(); // spark id -> client name
const sockets = [];

primus.on('connection', (spark) => {
  spark.on('data', (data) => {
    if (data && data.hello) {
      names.set(spark.id, data.hello);
      out('spark ' + data.hello + ' ' + spark.id);
      if (names.size === opts.clients) {
        // metroplex.connect is a MULTI without callback on this connection:
        // a PING after it answers once it ran.
        redis.ping().then(() => out('clients ' + names.size));
      }
    }
  });
});

primus.on('register', (address) => {
  out('registered ' + address);
  if (opts.clients === 0) out('clients 0');
  for (let i = 0; i < opts.clients; i++) {
    const name = 'c' + i;
    const client = new primus.Socket(address, { strategy: false });
    client.on('open', () => client.write({ hello: name }));
    client.on('data', (data) => out('recv ' + name + ' ' + JSON.stringify(data)));
    client.on('error', (err) => process.stderr.write('omega_peer: client: ' + err.message + '\n'));
    sockets.push(client);
  }
});

server.listen(0, '127.0.0.1');

function report(err, data) {
  out('forwarded ' + JSON.stringify({
    err: err ? { message: err.message, status: err.status || null } : null,
    data: data === undefined ? null : data
  }));
}

function end() {
  for (const s of sockets) s.end();
  primus.destroy({ close: true, timeout: 0 }, () => {
    redis.quit().finally(() => {
      out('done');
      process.exit(0);
    });
  });
}

const rl = require('readline').createInterface({ input: process.stdin });
rl.on('line', (line) => {
  const sp = line.indexOf(' ');
  const cmd = sp < 0 ? line : line.slice(0, sp);
  let rest = sp < 0 ? '' : line.slice(sp + 1);
  try {
    if (cmd === 'spark' || cmd === 'sparks') {
      const sp2 = rest.indexOf(' ');
      const ids = rest.slice(0, sp2);
      const msg = JSON.parse(rest.slice(sp2 + 1));
      if (cmd === 'spark') primus.forward.spark(ids, msg, report);
      else primus.forward.sparks(ids.split(','), msg, report);
    } else if (cmd === 'broadcast') {
      primus.forward.broadcast(JSON.parse(rest), report);
    } else if (cmd === 'end') {
      end();
    } else if (cmd.length) {
      fail('unknown command ' + cmd);
    }
  } catch (e) {
    fail(cmd + ': ' + e.message);
  }
});
rl.on('close', () => end());
