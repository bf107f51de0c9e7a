// A Node.js worker for readiness mode "node-ipc", as written for PM2's wait_ready: it says
// process.send('ready') once it listens on the socket at fd 3, and shuts down on the
// 'shutdown' message. SIGTERM is ignored, so only the message can stop it gracefully: the
// tests see that it came.
const http = require("http");
const env = process.env;
const server = http.createServer((req, res) => {
  res.setHeader("Content-Type", "application/json");
  res.end(
    JSON.stringify({
      runtime: "node-ipc",
      pid: process.pid,
      slot: env.CORRAL_WORKER,
      generation: env.CORRAL_GENERATION,
      tag: env.WORKER_TAG || null,
      // Node.js deletes NODE_CHANNEL_FD from process.env once it has opened the channel.
      has_channel: typeof process.send === "function",
      listen_fds: env.LISTEN_FDS,
      bus: busIn,
    }),
  );
});
// WORKER_BUS=1: greet the agent over corral's bus, and keep what comes (GET shows it).
const busIn = [];
if (env.WORKER_BUS === "1") {
  process.send({ corral: "bus", to: "agent", data: { hello: Number(env.CORRAL_WORKER) } });
}
server.listen({ fd: 3 }, () => {
  if (env.WORKER_NEVER_READY !== "1") process.send("ready");
});
process.on("SIGTERM", () => {});
// Node.js cannot send datagrams: the watchdog is pinged over the IPC channel, by the slot
// named in WORKER_WATCHDOG_SLOT only (so a test has one worker that pings and one that does not).
if (env.WATCHDOG_USEC && env.WORKER_WATCHDOG_SLOT === env.CORRAL_WORKER) {
  let pings = 0;
  setInterval(() => {
    process.send("WATCHDOG=1");
    pings += 1;
    console.log(`slot ${env.CORRAL_WORKER} pinged ${pings} times`);
  }, Number(env.WATCHDOG_USEC) / 2000);
}
process.on("message", (m) => {
  if (m && m.corral === "bus") busIn.push(m);
  if (m === "shutdown") {
    console.log(`slot ${env.CORRAL_WORKER} got the shutdown message`);
    server.close(() => process.exit(0));
  }
});
