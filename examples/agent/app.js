// A worker: an HTTP server on the socket corral passes at fd 3, which shows the last tick the
// agent's job told it of.
const http = require("http");
const messenger = require("./messenger");

let last = null;
let welcomed = false;
messenger.on("tick", (data) => (last = data));
// Ready once the agent answered its greeting (Egg's workers wait for the agent too).
messenger.on("welcome", () => {
  if (!welcomed) process.send("ready");
  welcomed = true;
});

const server = http.createServer((req, res) => {
  res.setHeader("Content-Type", "application/json");
  res.end(JSON.stringify({ slot: process.env.CORRAL_WORKER, pid: process.pid, last, welcomed }));
});
server.listen({ fd: 3 }, () => {
  messenger.sendToAgent("hello", { slot: Number(process.env.CORRAL_WORKER) });
});
process.on("message", (m) => {
  if (m === "shutdown") server.close(() => process.exit(0));
});
