//! `[agent]` end to end: one process beside the workers, under `corral run`, with the real test
//! workers and a real agent (tests/agent.py) whose scheduled job writes to a file.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn agent_py() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/agent.py")
        .display()
        .to_string()
}

/// 3 workers and an agent whose job log is `log`; `agent_env` is added to the agent's
/// environment, `batch` is the reload batch.
fn config(log: &Path, agent_env: &str, batch: u32) -> String {
    format!(
        r#"
command = ["python3", "{{worker}}"]
workers = 3
environment = {{ AGENT_LOG = "{log}" }}

[[listen]]
name = "http"
address = "127.0.0.1:{{port}}"

[readiness]
timeout = "10s"

[stop]
timeout = "5s"

[restart]
delay = "50ms"

[reload]
batch = {batch}

[agent]
command = ["python3", "{agent}"]
environment = {{ {agent_env} }}
"#,
        log = log.display(),
        agent = agent_py(),
    )
}

/// The processes whose environment says CORRAL_WORKER=agent and CORRAL_APP=demo.
fn agent_processes() -> Vec<i32> {
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let vars: Vec<&[u8]> = env.split(|&b| b == 0).collect();
        if vars.contains(&&b"CORRAL_WORKER=agent"[..]) && vars.contains(&&b"CORRAL_APP=demo"[..]) {
            found.push(pid);
        }
    }
    found
}

/// Counts agent processes every few milliseconds until stopped; returns the most seen at once.
struct Census {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<usize>,
}

impl Census {
    fn start(log: PathBuf) -> Census {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut most = 0;
            // Bounded: until told, or 2 minutes.
            let until = std::time::Instant::now() + SECS(120);
            while !s.load(Ordering::SeqCst) && std::time::Instant::now() < until {
                // Only processes that got as far as running the agent's code count: a fork
                // of corral's not yet exec'd has corral's environment.
                let running: BTreeSet<i32> = jobs(&log).into_iter().collect();
                let n = agent_processes()
                    .into_iter()
                    .filter(|p| running.contains(p))
                    .count();
                most = most.max(n);
                std::thread::sleep(Duration::from_millis(5));
            }
            most
        });
        Census { stop, handle }
    }

    fn most(self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// The pids that ran the job, in the order the job log has them (`job PID ...` lines).
fn jobs(log: &Path) -> Vec<i32> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("job ")?.split(' ').next()?.parse().ok())
        .collect()
}

/// The pids of the job log with repeats of the same pid collapsed: one entry per agent that
/// ran the job, so an agent that came back after another would show twice.
fn runs(log: &Path) -> Vec<i32> {
    let mut r: Vec<i32> = jobs(log);
    r.dedup();
    r
}

fn agent_pid(c: &Corral) -> i64 {
    let s = c.status();
    assert_eq!(s["agent"]["state"], "ready", "{s}");
    s["agent"]["pid"].as_i64().unwrap()
}

fn worker_pids(c: &Corral) -> Vec<i64> {
    c.pids("ready")
}

#[test]
fn the_agent_runs_once_beside_the_workers_across_reloads_restarts_and_crashes() {
    let dir = scratch_dir();
    let log = dir.join("jobs");
    let mut c = Corral::start(&config(&log, r#"AGENT_TAG = "v1""#, 1));
    c.wait_ready(3, 1);

    // Started first: the agent was ready before any worker started.
    let lines = c.lines();
    let ready = lines
        .iter()
        .position(|l| l.contains("agent pid") && l.contains("ready after"))
        .expect("the agent's ready line");
    let first_worker = lines
        .iter()
        .position(|l| l.contains("worker ") && l.contains(": started"))
        .expect("a worker's start line");
    assert!(ready < first_worker, "{lines:#?}");
    // Its own row, its output relayed under its name, CORRAL_WORKER=agent and no listener.
    let agent = agent_pid(&c);
    c.wait_for("demo[agent]: agent v1 as agent", SECS(10));
    let table = String::from_utf8(c.ctl(&["status", "demo"]).stdout).unwrap();
    assert!(
        table
            .lines()
            .any(|l| l.trim_start().starts_with("agent") && l.contains(&agent.to_string())),
        "{table}"
    );
    let environ = std::fs::read(format!("/proc/{agent}/environ")).unwrap();
    let environ = String::from_utf8_lossy(&environ);
    assert!(!environ.contains("LISTEN_FDS="), "{environ}");
    assert!(environ.contains("AGENT_TAG=v1"), "{environ}");

    // A reload that leaves the agent's config alone (the reload batch) leaves it running,
    // under load; one that changes it replaces it, never two at once, and the job goes on.
    let workers = worker_pids(&c);
    let census = Census::start(log.clone());
    let load = Load::start(c.port);
    c.write_config(&config(&log, r#"AGENT_TAG = "v1""#, 2));
    let out = c.ctl(&["reload", "demo"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(agent_pid(&c), agent, "an unchanged agent keeps running");
    assert!(worker_pids(&c).iter().all(|p| !workers.contains(p)));
    c.write_config(&config(&log, r#"AGENT_TAG = "v2""#, 2));
    let out = c.ctl(&["reload", "demo"]);
    assert!(out.status.success(), "{out:?}");
    load.finish_without_failures(20);
    let second = agent_pid(&c);
    assert_ne!(second, agent, "a changed agent is replaced");
    c.wait_for("demo[agent]: agent v2 as agent", SECS(10));

    // Alone: workers untouched.
    let workers = worker_pids(&c);
    let out = c.ctl(&["restart", "demo", "--agent"]);
    assert!(out.status.success(), "{out:?}");
    let third = agent_pid(&c);
    assert_ne!(third, second);
    assert_eq!(
        worker_pids(&c),
        workers,
        "restart --agent leaves the workers alone"
    );

    // A crash: restarted, the workers serve on.
    let mark = c.mark();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(third as i32), Signal::SIGKILL).unwrap();
    c.wait_for_after(mark, "agent pid", SECS(10));
    let deadline = std::time::Instant::now() + SECS(10);
    let fourth = loop {
        let s = c.status();
        if s["agent"]["state"] == "ready" && s["agent"]["pid"].as_i64() != Some(third) {
            break s["agent"]["pid"].as_i64().unwrap();
        }
        assert!(std::time::Instant::now() < deadline, "not restarted: {s}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(worker_pids(&c), workers);
    assert_eq!(c.status()["agent"]["restarts"], 1);
    assert_eq!(census.most(), 1, "never more than one agent at once");
    let expected = [agent, second, third, fourth].map(|p| p as i32);
    assert_eq!(
        runs(&log),
        expected,
        "the job ran in one agent at a time, in turn"
    );

    // At the stop, the workers go first and the agent last.
    c.signal(Signal::SIGTERM);
    assert!(c.wait_exit(SECS(20)).is_some_and(|s| s.success()));
    let lines = c.lines();
    let agent_gone = lines
        .iter()
        .rposition(|l| l.contains(&format!("agent pid {fourth}")) && l.contains("exited"))
        .expect("the agent's exit");
    let last_worker_gone = lines
        .iter()
        .rposition(|l| l.contains("worker ") && l.contains("exited"))
        .expect("the workers' exits");
    assert!(last_worker_gone < agent_gone, "{lines:#?}");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .ends_with(&format!("stop {fourth}\n")));
}

#[test]
fn restart_agent_of_an_app_without_one_says_so_and_changes_nothing() {
    let mut c = Corral::start(
        r#"
command = ["python3", "{worker}"]
workers = 1
[[listen]]
name = "http"
address = "127.0.0.1:{port}"
"#,
    );
    c.wait_ready(1, 1);
    let before = worker_pids(&c);
    let out = c.ctl(&["restart", "demo", "--agent"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("demo has no agent"), "{err}");
    assert_eq!(worker_pids(&c), before);
    c.signal(Signal::SIGTERM);
    assert!(c.wait_exit(SECS(20)).is_some());
}

/// 3 workers (`worker`: the Python test worker, or `node` and the Node.js one over its IPC
/// channel) greeting the agent over corral's bus; the agent answers and tells them all.
fn bus_config(log: &Path, node: bool) -> String {
    let (command, readiness) = if node {
        // It ignores SIGTERM: it goes on its stop message.
        (
            r#"["node", "{worker_ipc}"]"#,
            r#"readiness = { mode = "node-ipc" }
stop = { message = "shutdown", timeout = "5s" }"#,
        )
    } else {
        (r#"["python3", "{worker}"]"#, "")
    };
    format!(
        r#"
command = {command}
workers = 3
environment = {{ AGENT_LOG = "{log}", WORKER_BUS = "1" }}
{readiness}

# A connection to each worker in turn (or at random without CAP_BPF): GETs reach them all.
[[listen]]
name = "http"
address = "127.0.0.1:{{port}}"
balance = "even"

[agent]
command = ["python3", "{agent}"]
environment = {{ AGENT_BUS = "1" }}
readiness = {{ mode = "notify", timeout = "10s" }}
"#,
        log = log.display(),
        agent = agent_py(),
    )
}

/// What each slot's worker got on the bus, once every one has its welcome.
fn welcomed(c: &Corral) -> std::collections::BTreeMap<String, serde_json::Value> {
    let deadline = std::time::Instant::now() + SECS(20);
    let mut got: std::collections::BTreeMap<String, serde_json::Value> = Default::default();
    loop {
        if let Ok(a) = c.get("/") {
            got.insert(a["slot"].as_str().unwrap().to_string(), a["bus"].clone());
        }
        let all = got.len() == 3
            && got.values().all(|b| {
                b.as_array()
                    .is_some_and(|m| m.iter().any(|m| m["data"].get("welcome").is_some()))
            });
        if all {
            return got;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not welcomed: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_bus_carries_messages_between_the_agent_and_workers_in_python_and_node() {
    for node in [false, true] {
        if node && !Path::new("/usr/bin/node").exists() {
            skipped("node is not installed (.ci/run installs it)");
            continue;
        }
        let log = scratch_dir().join("jobs");
        let mut c = Corral::start(&bus_config(&log, node));
        c.wait_ready(3, 1);
        for (slot, bus) in welcomed(&c) {
            let n: u64 = slot.parse().unwrap();
            let msgs = bus.as_array().unwrap();
            // Worker → agent → this slot, and agent → all.
            assert!(
                msgs.iter().any(|m| m["corral"] == "bus"
                    && m["from"] == "agent"
                    && m["data"]["welcome"] == n),
                "{msgs:?}"
            );
            assert!(
                msgs.iter().any(|m| m["data"]["greeted"] == n),
                "its own greeting reached every worker, this one too: {msgs:?}"
            );
        }
        let text = std::fs::read_to_string(&log).unwrap();
        for n in 0..3 {
            assert!(text.contains(&format!("hello {n} from {n}")), "{text}");
        }
        // "any": each greeting's share reached exactly one worker.
        let deadline = std::time::Instant::now() + SECS(10);
        loop {
            let mut shares: Vec<u64> = welcomed(&c)
                .values()
                .flat_map(|b| b.as_array().cloned().unwrap_or_default())
                .filter_map(|m| m["data"]["share"].as_u64())
                .collect();
            shares.sort();
            if shares == [0, 1, 2] {
                break;
            }
            assert!(
                shares.len() < 3 && std::time::Instant::now() < deadline,
                "each share once (node: {node}): {shares:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let s = c.status();
        assert!(s["bus"]["delivered"].as_u64().unwrap() >= 3 + 3 * 3, "{s}");
        c.signal(Signal::SIGTERM);
        assert!(c.wait_exit(SECS(20)).is_some());
    }
}

#[test]
fn a_flood_on_the_bus_is_dropped_past_the_senders_rate_and_a_deaf_worker_stops_no_one() {
    let log = scratch_dir().join("jobs");
    // Slot 2 registers on the bus and never reads it.
    let config = bus_config(&log, false).replace(
        "WORKER_BUS = \"1\"",
        "WORKER_BUS = \"1\", WORKER_BUS_DEAF_SLOT = \"2\"",
    );
    let mut c = Corral::start(&config);
    c.wait_ready(3, 1);
    let before = c.status()["bus"].clone();
    // 2,000 messages of 50 kB to every worker, as fast as one worker can send them.
    let flood = c.get("/bus-flood?n=2000&size=50000").unwrap();
    assert!(flood["bus"].is_array());
    // Answers at once while the flood is taken in; every message is passed on or counted as
    // dropped: past the sender's allowance (8 MiB at once, 4 MiB a second), dropped.
    let started = std::time::Instant::now();
    let mut s = c.status();
    let answered = started.elapsed();
    assert!(answered < SECS(2), "status took {answered:?}");
    let counted = |s: &serde_json::Value, k: &str| {
        s["bus"][k].as_u64().unwrap() - before[k].as_u64().unwrap()
    };
    let deadline = std::time::Instant::now() + SECS(10);
    while counted(&s, "delivered") + counted(&s, "dropped") < 2000 * 3 {
        assert!(std::time::Instant::now() < deadline, "{s}");
        std::thread::sleep(Duration::from_millis(20));
        s = c.status();
    }
    let (delivered, dropped) = (counted(&s, "delivered"), counted(&s, "dropped"));
    eprintln!(
        "flood of 2000 x 3 receivers: {delivered} delivered, {dropped} dropped; status \
         answered in {answered:?}"
    );
    assert_eq!(delivered + dropped, 6000, "{s}");
    assert!(delivered <= 3 * 8 * 1024 * 1024 / 50_000, "{s}");
    c.wait_for("bus: ", SECS(5));
    // The deaf worker's full queue holds up nobody: a new worker 0 gets the agent's answer.
    let old = c.pids("ready")[0];
    let out = c.ctl(&["restart", "demo", "--worker", "0"]);
    assert!(out.status.success(), "{out:?}");
    let deadline = std::time::Instant::now() + SECS(20);
    loop {
        let a = c.get("/").unwrap();
        let fresh = a["slot"] == "0" && a["pid"].as_i64() != Some(old);
        let msgs = a["bus"].as_array().unwrap();
        if fresh && msgs.iter().any(|m| m["data"].get("welcome").is_some()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{a}");
        std::thread::sleep(Duration::from_millis(20));
    }
    c.signal(Signal::SIGTERM);
    assert!(c.wait_exit(SECS(20)).is_some());
}

/// examples/agent/app.toml, run from where its .js files are, its job log at `log`, and
/// `extra` added to its `[agent]`.
fn example(log: &Path, extra: &str) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent");
    let text = std::fs::read_to_string(dir.join("app.toml")).unwrap();
    let text = text
        .replace(
            "command = [\"node\", \"app.js\"]",
            &format!(
                "command = [\"node\", \"app.js\"]\ndirectory = \"{}\"",
                dir.display()
            ),
        )
        .replace("/tmp/corral-agent-jobs.log", &log.display().to_string())
        .replace("127.0.0.1:8090", "127.0.0.1:{port}");
    format!("{text}{extra}")
}

#[test]
fn the_egg_style_example_runs_its_job_once_across_a_reload_under_load() {
    if !Path::new("/usr/bin/node").exists() {
        skipped("node is not installed (.ci/run installs it)");
        return;
    }
    let log = scratch_dir().join("jobs");
    let mut c = Corral::start(&example(&log, ""));
    c.wait_ready(3, 1);
    let first = agent_pid(&c);
    // Every worker hears the agent's ticks, and was answered its greeting.
    let deadline = std::time::Instant::now() + SECS(20);
    let mut seen = BTreeSet::new();
    while seen.len() < 3 {
        let a = c.get("/").unwrap();
        if a["welcomed"] == true && a["last"]["agent"] == first {
            seen.insert(a["slot"].as_str().unwrap().to_string());
        }
        assert!(std::time::Instant::now() < deadline, "{seen:?}: {a}");
    }
    // A reload that changes the agent, under load: no request fails, and the job ran in one
    // agent, then in the next, never in two at once.
    let census = Census::start(log.clone());
    let load = Load::start(c.port);
    c.write_config(&example(&log, "environment = { VERSION = \"2\" }\n"));
    let out = c.ctl(&["reload", "demo"]);
    assert!(out.status.success(), "{out:?}");
    load.finish_without_failures(20);
    let second = agent_pid(&c);
    assert_ne!(second, first);
    let deadline = std::time::Instant::now() + SECS(10);
    while runs(&log).last() != Some(&(second as i32)) {
        assert!(std::time::Instant::now() < deadline, "{:?}", runs(&log));
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(census.most(), 1);
    assert_eq!(runs(&log), [first as i32, second as i32]);
    c.signal(Signal::SIGTERM);
    assert!(c.wait_exit(SECS(20)).is_some_and(|s| s.success()));
}

/// An upgrade in place keeps the agent, the workers' Node.js channels and the bus: after it, a
/// restarted worker's greeting reaches the agent and its answer reaches every worker, the old
/// ones through the channels carried across the exec; a reload's stop message reaches the old
/// workers through them too (they ignore SIGTERM).
#[test]
fn the_agent_the_bus_and_nodejs_channels_go_on_across_an_upgrade() {
    if !Path::new("/usr/bin/node").exists() {
        skipped("node is not installed (.ci/run installs it)");
        return;
    }
    let log = scratch_dir().join("jobs");
    let c = Corral::start(&bus_config(&log, true));
    c.wait_ready(3, 1);
    welcomed(&c);
    let (agent, workers) = (agent_pid(&c), worker_pids(&c));
    let load = Load::start(c.port);
    let out = c.ctl(&["upgrade", "demo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(agent_pid(&c), agent, "the agent is kept");
    assert_eq!(worker_pids(&c), workers, "the workers are kept");

    // Worker 1 again: its greeting goes to the agent, whose answer to all reaches the two
    // kept workers over their carried channels.
    let out = c.ctl(&["restart", "demo", "--worker", "1"]);
    assert!(out.status.success());
    let greeted_1 = |bus: &serde_json::Value| {
        bus.as_array().map_or(0, |m| {
            m.iter().filter(|m| m["data"]["greeted"] == 1).count()
        })
    };
    let deadline = std::time::Instant::now() + SECS(20);
    loop {
        let got = welcomed(&c);
        if ["0", "2"].iter().all(|s| greeted_1(&got[*s]) >= 2) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{got:?}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A reload: the kept workers get their stop message over the carried channels.
    let mark = c.mark();
    let out = c.ctl(&["reload", "demo"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for slot in [0, 2] {
        c.wait_for_after(
            mark,
            &format!("slot {slot} got the shutdown message"),
            SECS(10),
        );
    }
    load.finish_without_failures(20);
    assert!(
        !c.lines()[mark..].iter().any(|l| l.contains("SIGKILL")),
        "no worker had to be killed: {:?}",
        &c.lines()[mark..]
    );
}
