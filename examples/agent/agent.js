// The agent: one process per app, beside the workers. It runs the scheduled job (here every
// 200 ms: a line in JOB_LOG, then the tick told to every worker) exactly once however many
// workers there are, during a reload too, and answers workers that greet it.
const fs = require("fs");
const messenger = require("./messenger");

let tick = 0;
const job = setInterval(() => {
  tick += 1;
  if (process.env.JOB_LOG) fs.appendFileSync(process.env.JOB_LOG, `job ${process.pid} ${tick}\n`);
  messenger.sendToApp("tick", { tick, agent: process.pid });
}, 200);

// A worker says hello once it listens, and is ready once the agent answered: the answer goes
// to its pid, so that during a reload it reaches the new worker, not its slot's old one.
messenger.on("hello", (data, from, pid) => messenger.sendTo(pid, "welcome", { agent: process.pid }));

process.on("message", (m) => {
  if (m === "shutdown") {
    clearInterval(job);
    process.exit(0);
  }
});
process.send("ready");
