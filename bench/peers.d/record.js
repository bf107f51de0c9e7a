// A latency-recording client for bench/peers: beside wrk, at a modest fixed rate, one new
// connection per request, it writes one line per request so latency can be drawn over time.
//
//   node record.js PORT RATE SECONDS OUT.csv
//
// OUT.csv: a first line `# {"t0_epoch_ms": ...}` (when this client started), then: start (ms
// since this client started), latency (ms), status (HTTP status, or 0 for a
// failed request: refused, reset, timed out after 10 s). It stops sending after SECONDS and
// exits once the last answer is in (or has timed out).
'use strict';
const http = require('http');
const fs = require('fs');

const [port, rate, seconds, out] = [Number(process.argv[2]), Number(process.argv[3]), Number(process.argv[4]), process.argv[5]];
const rows = [];
const t0 = process.hrtime.bigint();
const t0Epoch = Date.now();
const now = () => Number(process.hrtime.bigint() - t0) / 1e6;
let pending = 0;
let sent = 0;
let done = false;

function one() {
  const start = now();
  pending++;
  let finished = false;
  const end = (status) => {
    if (finished) return;
    finished = true;
    rows.push(`${start.toFixed(2)},${(now() - start).toFixed(3)},${status}`);
    pending--;
    if (done && pending === 0) write();
  };
  const req = http.get({ host: '127.0.0.1', port, path: '/', agent: false, timeout: 10000 }, (res) => {
    res.resume();
    res.on('end', () => end(res.statusCode));
    res.on('error', () => end(0));
  });
  req.on('timeout', () => req.destroy(new Error('timeout')));
  req.on('error', () => end(0));
}

function write() {
  fs.writeFileSync(out, `# {"t0_epoch_ms":${t0Epoch}}\nstart_ms,latency_ms,status\n` + rows.join('\n') + '\n');
  process.exit(0);
}

// Sends on a fixed schedule (not after each answer), so a slow answer does not hide others.
const interval = 1000 / rate;
function tick() {
  const due = Math.floor(now() / interval) + 1;
  while (sent < due && sent < rate * seconds) {
    sent++;
    one();
  }
  if (sent >= rate * seconds) {
    done = true;
    if (pending === 0) write();
    return;
  }
  setTimeout(tick, Math.max(1, interval / 2));
}
tick();
