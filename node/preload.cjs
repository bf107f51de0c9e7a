// corral's Node.js preload, for apps with `[node] preload = true` (corral.toml(5)).
//
// corral loads this into each Node.js worker with NODE_OPTIONS=--require. It makes an app
// written for PM2's cluster mode run unchanged: `server.listen(PORT)`, `listen({ port })` and
// Express's `app.listen(PORT)` on the port of one of the app's [[listen]] sockets take the
// socket the worker inherited (fd 3, 4, ...) instead of binding the port, which corral (or
// systemd) already holds. A listen on a port no [[listen]] provides throws, naming the ones
// that exist: binding it would fail in all workers but one, or silently serve nothing.
//
// corral describes the listeners in CORRAL_NODE_LISTEN (JSON: name, fd, and port or path).
// Only the first Node.js process to load this file takes them, and it removes the variable,
// as Node.js itself does with NODE_CHANNEL_FD: a child process the app starts (which gets
// NODE_OPTIONS too) binds what it asks for, as it would anywhere.
'use strict';

const net = require('net');

const described = process.env.CORRAL_NODE_LISTEN;
delete process.env.CORRAL_NODE_LISTEN;

let listeners = [];
if (described !== undefined) {
  try {
    listeners = JSON.parse(described);
  } catch (e) {
    throw new Error(`corral: CORRAL_NODE_LISTEN is not valid JSON (${e.message})`);
  }
  install();
}

function install() {
  const app = process.env.CORRAL_APP || 'this app';
  const original = net.Server.prototype.listen;

  function configured() {
    if (listeners.length === 0) return 'it has none';
    return 'it has ' + listeners.map((l) => `${l.name} (${l.path || l.address})`).join(', ');
  }

  function refuse(problem) {
    const e = new Error(
      `corral: ${problem} (${app}: ${configured()}). Under corral the sockets are opened once ` +
        'for all workers: listen on the port of one of them, or add a [[listen]] to the ' +
        "app's config."
    );
    e.code = 'ERR_CORRAL_NO_LISTENER';
    return e;
  }

  // What a call to listen() asks for, in the forms net.Server#listen accepts (Node.js's
  // net documentation): (port[, host][, backlog][, cb]), (path[, backlog][, cb]),
  // (options[, cb]), (handle[, backlog][, cb]), ([cb]).
  function request(args) {
    const first = args[0];
    if (first === null || first === undefined || typeof first === 'function') {
      return { kind: 'any' };
    }
    if (typeof first === 'number' || (typeof first === 'string' && /^\d+$/.test(first))) {
      const host = typeof args[1] === 'string' ? args[1] : undefined;
      return { kind: 'port', port: Number(first), host };
    }
    if (typeof first === 'string') return { kind: 'path', path: first };
    if (typeof first === 'object') {
      if (first.fd !== undefined || first._handle || first.handle) return { kind: 'own' };
      if (typeof first.path === 'string') return { kind: 'path', path: first.path };
      if (first.port !== undefined && first.port !== null) {
        return { kind: 'port', port: Number(first.port), host: first.host };
      }
      return { kind: 'any' };
    }
    return { kind: 'own' };
  }

  function find(req) {
    if (req.kind === 'path') return listeners.filter((l) => l.path === req.path);
    const same = listeners.filter((l) => l.port === req.port);
    if (same.length > 1 && req.host !== undefined) {
      const exact = same.filter((l) => l.host === req.host);
      if (exact.length > 0) return exact;
    }
    return same;
  }

  net.Server.prototype.listen = function listen(...args) {
    const req = request(args);
    // Port 0 or none: an ephemeral port of this worker's own, as anywhere.
    if (req.kind === 'own' || req.kind === 'any' || (req.kind === 'port' && req.port === 0)) {
      return original.apply(this, args);
    }
    const found = find(req);
    const asked = req.kind === 'path' ? `listen("${req.path}")` : `listen(${req.port})`;
    if (found.length === 0) {
      throw refuse(`${asked} asks for a socket that no [[listen]] provides`);
    }
    if (found.length > 1) {
      const names = found.map((l) => l.name).join(' and ');
      throw refuse(`${asked} matches ${names}: pass the host too, to say which`);
    }
    const cb = args.find((a) => typeof a === 'function');
    const options = { fd: found[0].fd };
    return cb ? original.call(this, options, cb) : original.call(this, options);
  };
}
