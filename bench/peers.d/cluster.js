// The Node.js cluster contender of bench/peers: a primary that forks WORKERS copies of app.js
// with Node's cluster module, as a small hand-written supervisor would.
//
//   NODE_CLUSTER_SCHED_POLICY=rr|none WORKERS=4 PORT=... node cluster.js APP.js
//
// rr: the primary accepts every connection and hands it to the workers in turn (Node's default
// on Linux, and what PM2's cluster mode uses); none: the workers accept from the one shared
// socket themselves, and the kernel picks who wakes.
// - a worker that dies is forked again at once;
// - SIGHUP: a rolling restart like PM2's reload, one worker at a time: fork the new one, wait
//   until it listens, then ask the old one to stop (SIGTERM; the app closes gracefully) and wait
//   for it to exit (SIGKILL after 10 s). Prints "reloaded" when done;
// - SIGTERM/SIGINT: stop every worker, then exit.
'use strict';
const cluster = require('cluster');

const app = process.argv[2];
const workers = Number(process.env.WORKERS || 4);
cluster.setupPrimary({ exec: app, silent: false });

const retiring = new Set();
let stopping = false;

function fork() {
  return new Promise((resolve) => {
    const w = cluster.fork();
    w.once('listening', () => resolve(w));
  });
}

function retire(w) {
  return new Promise((resolve) => {
    retiring.add(w);
    if (w.isDead()) return resolve();
    const kill = setTimeout(() => w.process.kill('SIGKILL'), 10000);
    w.once('exit', () => {
      clearTimeout(kill);
      resolve();
    });
    w.process.kill('SIGTERM');
  });
}

cluster.on('exit', (w) => {
  if (stopping || retiring.has(w)) {
    retiring.delete(w);
    return;
  }
  fork(); // a crash: replace it at once
});

let reloading = null;
async function reload() {
  for (const old of Object.values(cluster.workers)) {
    if (retiring.has(old)) continue;
    await fork();
    await retire(old);
  }
  console.log('reloaded');
}

process.on('SIGHUP', () => {
  if (reloading === null) reloading = reload().finally(() => (reloading = null));
});

function stop() {
  if (stopping) return;
  stopping = true;
  const all = Object.values(cluster.workers).map(retire);
  Promise.all(all).then(() => process.exit(0));
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

Promise.all(Array.from({ length: workers }, fork)).then(() => console.log(`${workers} listening`));
