// Egg.js's messenger (app.messenger, agent.messenger) on corral's bus: the same calls, for an
// app moving from egg-cluster to corral. Needs the Node.js IPC channel (readiness.mode =
// "node-ipc", or [node] preload = true for workers).
//
//   messenger.sendToAgent(action, data)   to the agent
//   messenger.sendToApp(action, data)     to every worker
//   messenger.broadcast(action, data)     to the agent and every worker
//   messenger.sendTo(pid, action, data)   to one process, by pid, as Egg's
//   messenger.sendToSlot(slot, action, data)   to one slot's (newest) worker
//   messenger.sendRandom(action, data)   to one ready worker, each in turn, as Egg's
//   messenger.on(action, (data, from, pid) => ...)   from: "agent" or a slot number
const handlers = new Map();

function send(to, action, data) {
  process.send({ corral: "bus", to, data: { action, data } });
}

process.on("message", (m) => {
  if (!m || m.corral !== "bus" || !m.data) return;
  for (const fn of handlers.get(m.data.action) || []) fn(m.data.data, m.from, m.pid);
});

module.exports = {
  sendToAgent: (action, data) => send("agent", action, data),
  sendToApp: (action, data) => send("all", action, data),
  broadcast: (action, data) => {
    send("agent", action, data);
    send("all", action, data);
  },
  sendTo: (pid, action, data) => send({ pid }, action, data),
  sendToSlot: (slot, action, data) => send(slot, action, data),
  sendRandom: (action, data) => send("any", action, data),
  on: (action, fn) => {
    handlers.set(action, [...(handlers.get(action) || []), fn]);
  },
};
