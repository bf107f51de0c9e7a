// The app every contender of bench/peers runs: a small Node.js HTTP server, the same file under
// corral, PM2, Node's cluster module and nginx.
//
// It listens on PORT (127.0.0.1) as an app written for PM2's cluster mode does: under corral the
// preload hands it the inherited socket, under PM2 and the cluster module the primary shares its
// socket, behind nginx each copy binds a port of its own. Once listening it says
// process.send('ready') when it has an IPC channel (PM2's wait_ready, corral's node-ipc).
//
// It counts the requests it serves, so the share of each worker can be read: the count goes to
// the file BENCH_STATS/PID, written at once when the server listens (the harness takes that file
// as "this worker serves") and then at most every 100 ms while the count changes.
//
// GET /stall busy-loops the event loop for STALL_MS (1000) before it answers: a stalled worker.
// SIGTERM, SIGINT and the message 'shutdown' close the server gracefully (see stop()), then exit.
'use strict';
const http = require('http');
const net = require('net');
const fs = require('fs');
const path = require('path');

const port = Number(process.env.PORT);
const stallMs = Number(process.env.STALL_MS || 1000);
const file = process.env.BENCH_STATS ? path.join(process.env.BENCH_STATS, String(process.pid)) : null;
let count = 0;
let written = -1;

function flush() {
  if (file === null || count === written) return;
  fs.writeFileSync(file + '.tmp', String(count));
  fs.renameSync(file + '.tmp', file);
  written = count;
}

const body = Buffer.from('hello from ' + process.pid + '\n');
let stopping = false;
const server = http.createServer((req, res) => {
  if (req.url === '/stall') {
    const end = Date.now() + stallMs;
    while (Date.now() < end) {
      // the event loop is blocked: no other connection of this worker is served meanwhile
    }
    res.end('stalled ' + process.pid + '\n');
    return;
  }
  count++;
  res.setHeader('Content-Type', 'text/plain');
  // Once stopping, end keep-alive connections after their answer, so the clients reconnect
  // (to another worker) instead of losing a request when the process exits.
  if (stopping) res.setHeader('Connection', 'close');
  res.end(body);
});

server.listen(port, '127.0.0.1', () => {
  flush();
  setInterval(flush, 100).unref();
  if (process.send) process.send('ready');
});

function stop() {
  if (stopping) return;
  stopping = true;
  // Stop accepting, and exit once every connection is closed. Not http.Server#close(): since
  // Node.js 19 it also closes the idle keep-alive connections at once, which races a client
  // sending its next request on one of them (a failed request under any supervisor, the app's
  // doing). Instead a busy connection ends after its next answer (Connection: close above),
  // and those still idle 500 ms later are closed: their clients are not sending.
  net.Server.prototype.close.call(server, () => {
    flush();
    process.exit(0);
  });
  setTimeout(() => server.closeIdleConnections(), 500).unref();
  setTimeout(() => {
    flush();
    process.exit(0);
  }, 10000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.on('message', (m) => {
  if (m === 'shutdown') stop();
});
