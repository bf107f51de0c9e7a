// A Node.js worker for the systemd tests: serves HTTP on the socket at fd 3 (LISTEN_FDS), as
// under systemd socket activation. Node cannot send unix datagrams, so its app config uses
// readiness mode "exec". Running at all proves V8's JIT works under the unit's hardening.
const http = require("http");
const server = http.createServer((req, res) => {
  res.setHeader("Content-Type", "application/json");
  res.end(JSON.stringify({ runtime: "node", pid: process.pid, slot: process.env.CORRAL_WORKER }));
});
server.listen({ fd: 3 });
process.on("SIGTERM", () => server.close(() => process.exit(0)));
