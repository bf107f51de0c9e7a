// An Express 5 app written the PM2 way, run unchanged under corral with [node] preload = true:
// it listens on process.env.PORT, says process.send('ready') once listening (PM2's wait_ready),
// and closes on the 'shutdown' message (PM2's shutdown_with_message). It has no SIGTERM
// handler, so SIGTERM would kill it with requests in flight: only the message stops it well.
//
// GET / answers {pid, ppid, instance}. GET /slow?s=N sends the headers (with X-Pid, X-Ppid) at once and the body N
// seconds later, so a test knows the request is in flight and can see that it completes.
const express = require('express');

const app = express();

function describe() {
  return JSON.stringify({
    pid: process.pid,
    ppid: process.ppid,
    instance: process.env.NODE_APP_INSTANCE,
  });
}

app.get('/', (req, res) => {
  res.type('application/json').send(describe());
});

app.get('/slow', (req, res) => {
  const body = describe();
  res.writeHead(200, {
    'Content-Type': 'application/json',
    'Content-Length': Buffer.byteLength(body),
    'X-Pid': process.pid,
    'X-Ppid': process.ppid,
  });
  res.flushHeaders();
  setTimeout(() => res.end(body), Number(req.query.s || 1) * 1000);
});

const server = app.listen(process.env.PORT || 3000, () => {
  process.send('ready');
});

process.on('message', (msg) => {
  if (msg === 'shutdown') {
    server.close(() => process.exit(0));
  }
});
