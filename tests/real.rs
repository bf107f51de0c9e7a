//! Real third-party programs, installed from the registries at pinned versions by
//! `tests/real/install` (uvicorn, hypercorn and gunicorn from PyPI, Express from npm; the
//! `listenfd` and `sd-notify` crates build `examples/listenfd_worker.rs`), run unchanged under
//! corral with 3 workers. For each, what its user would check:
//! - it is ready only once it really serves (a request right after "3/3 ready" is answered at
//!   once, not queued behind a start-up);
//! - a reload under load, one new connection per request, fails no request;
//! - a slow request in flight on a worker the reload replaces completes;
//! - after a stop, no process of any worker's tree is left.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Where `tests/real/install` put the programs (beside this build's target directory), or
/// `None` with SKIPPED said where a person sees it; in CI, their absence is a failure.
fn programs() -> Option<PathBuf> {
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).parent().unwrap();
    let dir = target.join("real-programs");
    if dir.join("stamp").exists() {
        return Some(dir);
    }
    skipped(&format!(
        "the real-program tests need tests/real/install to have run ({} is missing)",
        dir.display()
    ));
    None
}

/// Fills `{python}` (PYTHONPATH of the installed packages), `{node_modules}`, `{real}`
/// (tests/real) and `{repo}` in a config template; `{port}` is the harness's.
fn template(t: &str, programs: &Path) -> String {
    t.replace("{python}", &programs.join("python").display().to_string())
        .replace(
            "{node_modules}",
            &programs.join("node/node_modules").display().to_string(),
        )
        .replace("{real}", &repo().join("tests/real").display().to_string())
        .replace("{repo}", &repo().display().to_string())
}

/// A request whose headers have come and whose body is still to come.
struct InFlight {
    stream: TcpStream,
    /// The process serving it, and its parent.
    pid: i64,
    ppid: i64,
    rest: Vec<u8>,
}

impl InFlight {
    fn start(port: u16, seconds: f64) -> std::io::Result<InFlight> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(SECS(60)))?;
        write!(
            stream,
            "GET /slow?s={seconds} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let n = stream.read(&mut buf)?;
            if n == 0 {
                return Err(std::io::Error::other(format!(
                    "closed before the headers: {:?}",
                    String::from_utf8_lossy(&got)
                )));
            }
            got.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&got[..end]).to_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{head}");
        let header = |name: &str| -> i64 {
            head.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}: ")))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or_else(|| panic!("no {name} in {head}"))
        };
        Ok(InFlight {
            pid: header("x-pid"),
            ppid: header("x-ppid"),
            rest: got[end + 4..].to_vec(),
            stream,
        })
    }

    /// Reads the body to its end; it must be the JSON the headers announced.
    fn finish(mut self) -> serde_json::Value {
        self.stream
            .read_to_end(&mut self.rest)
            .unwrap_or_else(|e| panic!("the request in flight on pid {} failed: {e}", self.pid));
        let body: serde_json::Value = serde_json::from_slice(&self.rest).unwrap_or_else(|e| {
            panic!(
                "the request in flight on pid {} did not complete ({e}): {:?}",
                self.pid,
                String::from_utf8_lossy(&self.rest)
            )
        });
        assert_eq!(body["pid"], self.pid);
        body
    }
}

/// Every process below `root` now (children, theirs, ...), from /proc.
fn descendants(root: i32) -> Vec<i32> {
    let stats = corral::procfs::all_stats();
    let mut out = Vec::new();
    let mut queue = vec![root];
    while let Some(p) = queue.pop() {
        for s in stats.iter().filter(|s| s.ppid == p) {
            out.push(s.pid);
            queue.push(s.pid);
        }
    }
    out
}

/// The longest "ready after X" of the lines so far, in seconds.
fn longest_start(c: &Corral) -> f64 {
    c.lines()
        .iter()
        .filter_map(|l| l.split("ready after ").nth(1))
        .filter_map(|t| {
            let t = t.split([':', ' ']).next()?;
            match t.strip_suffix("ms") {
                Some(ms) => ms.parse::<f64>().ok().map(|v| v / 1000.0),
                None => t.strip_suffix('s')?.parse().ok(),
            }
        })
        .fold(0.0, f64::max)
}

/// What every program is put through; returns corral for program-specific checks before it
/// is stopped by [`stopped_leaves_nothing`].
fn serves_reloads_and_drains(c: &Corral) {
    c.wait_ready(3, 1);
    // Ready means serving: a request now is answered at once, not after a start-up.
    let asked = Instant::now();
    c.get("/").expect("a request right after 3/3 ready");
    let took = asked.elapsed();
    assert!(
        took < Duration::from_millis(900),
        "the first request after 3/3 ready took {took:?}: a worker was counted ready before \
         it served"
    );

    // A slow request, lasting beyond the time the reload takes to replace its worker (one
    // start per slot before it at most), so that it is in flight when its worker is asked to
    // stop.
    let seconds = 2.0 * 3.0 * longest_start(c) + 1.5;
    let slow = InFlight::start(c.port, seconds).unwrap();
    let status = c.status();
    let serving = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["pid"] == slow.pid || w["pid"] == slow.ppid)
        .unwrap_or_else(|| panic!("pid {} is in no worker's tree: {status}", slow.pid));
    let (slot, old) = (
        serving["slot"].as_u64().unwrap(),
        serving["pid"].as_i64().unwrap(),
    );

    let load = Load::start(c.port);
    let mark = c.mark();
    let out = c.ctl(&["reload", "demo"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("generation 2 serving: 3 worker(s) replaced"),
        "{out:?}"
    );
    load.finish_without_failures(20);

    let done_at = c.mark();
    slow.finish();
    // Its worker was replaced (its successor ready, and so it asked to stop) while the
    // request was still in flight.
    let lines = c.lines();
    let needle = format!("worker {slot} pid ");
    let replaced = lines[mark..]
        .iter()
        .position(|l| l.contains(&needle) && l.contains("(generation 2): ready after"))
        .map(|i| i + mark)
        .unwrap_or_else(|| panic!("slot {slot} got no generation 2 worker"));
    assert!(
        replaced < done_at,
        "the slow request ended before its worker was asked to stop: make it longer"
    );
    assert!(
        wait_gone(old as i32, SECS(20)),
        "the old worker {old} drained and exited"
    );
    assert_eq!(c.status()["generation"], 2);
}

/// Stops corral with SIGTERM: exit 0, and every process that was below it is gone.
fn stopped_leaves_nothing(mut c: Corral) {
    let tree = descendants(c.pid);
    assert!(tree.len() >= 3, "{tree:?}");
    c.signal(Signal::SIGTERM);
    let status = c.wait_exit(SECS(40)).expect("corral exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{:#?}", c.lines());
    all_gone(&tree, "a stopped corral");
}

/// Every pid of `tree` is gone (bounded wait each).
#[track_caller]
fn all_gone(tree: &[i32], after: &str) {
    for &pid in tree {
        assert!(
            wait_gone(pid, SECS(10)),
            "pid {pid} of a worker's tree outlived {after}"
        );
    }
}

#[test]
fn uvicorn_with_a_slow_import_is_ready_only_once_it_listens() {
    let Some(p) = programs() else { return };
    let c = Corral::start(&template(
        r#"
command = ["python3", "-m", "uvicorn", "--fd", "3", "--no-access-log", "asgi_app:app"]
directory = "{real}"
workers = 3
environment = { PYTHONPATH = "{python}", APP_IMPORT_SECONDS = "2" }
[[listen]]
name = "http"
address = "127.0.0.1:{port}"
balance = true
[readiness]
mode = "listen"
"#,
        &p,
    ));
    c.wait_ready(3, 1);
    // Each became ready after its 2 s import, by the probe of its own epoll registration.
    let ready: Vec<String> = c
        .lines()
        .into_iter()
        .filter(|l| l.contains("ready after"))
        .collect();
    assert_eq!(ready.len(), 3, "{ready:#?}");
    for l in &ready {
        assert!(l.contains("waits for connections (epoll)"), "{l}");
    }
    assert!(longest_start(&c) >= 2.0, "{ready:#?}");
    serves_reloads_and_drains(&c);
    stopped_leaves_nothing(c);
}

#[test]
fn express_written_for_pm2_runs_unchanged_through_the_preload() {
    let Some(p) = programs() else { return };
    let c = Corral::start(&template(
        r#"
command = ["node", "{real}/express/app.js"]
workers = 3
environment = { NODE_PATH = "{node_modules}" }
[[listen]]
name = "http"
address = "127.0.0.1:{port}"
balance = true
[node]
preload = true
[readiness]
mode = "node-ipc"
[stop]
message = "shutdown"
"#,
        &p,
    ));
    c.wait_ready(3, 1);
    // PM2's variables: NODE_APP_INSTANCE is the worker's slot.
    let slots: std::collections::HashMap<i64, String> = c.status()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["pid"].as_i64().unwrap(), w["slot"].to_string()))
        .collect();
    for _ in 0..10 {
        let w = c.get("/").expect("an answer");
        let pid = w["pid"].as_i64().unwrap();
        assert_eq!(w["instance"].as_str(), Some(slots[&pid].as_str()), "{w}");
    }
    serves_reloads_and_drains(&c);
    // The app has no SIGTERM handler: only the message stopped the old workers well.
    assert!(
        !c.lines()
            .iter()
            .any(|l| l.contains("did not exit on stop.message")),
        "no worker needed the stop signal"
    );
    stopped_leaves_nothing(c);
}

#[test]
fn express_imported_from_its_pm2_ecosystem_file_runs_as_written() {
    let Some(p) = programs() else { return };
    // The app's ecosystem file, as its PM2 user has it; `corral import pm2` makes the config,
    // which runs as written (only its port is the harness's free one).
    let dir = scratch_dir();
    let eco = dir.join("ecosystem.config.js");
    std::fs::write(
        &eco,
        template(
            r#"const path = require('path');
module.exports = {
  apps: [{
    name: 'demo',
    script: path.join('{real}', 'express', 'app.js'),
    instances: 3,
    exec_mode: 'cluster',
    wait_ready: true,
    listen_timeout: 10000,
    shutdown_with_message: true,
    kill_timeout: 5000,
    env: { PORT: 12345, NODE_PATH: '{node_modules}' },
  }],
};
"#,
            &p,
        ),
    )
    .unwrap();
    let out = std::process::Command::new(CORRAL)
        .args(["import", "pm2"])
        .arg(&eco)
        .arg("--output")
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let imported = std::fs::read_to_string(dir.join("demo.toml")).unwrap();
    assert!(imported.contains("address = \"12345\""), "{imported}");
    let c = Corral::start(&imported.replace("\"12345\"", "\"{port}\""));
    c.wait_ready(3, 1);
    let slots: std::collections::HashMap<i64, String> = c.status()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["pid"].as_i64().unwrap(), w["slot"].to_string()))
        .collect();
    for _ in 0..6 {
        let w = c.get("/").expect("an answer");
        let pid = w["pid"].as_i64().unwrap();
        assert_eq!(w["instance"].as_str(), Some(slots[&pid].as_str()), "{w}");
    }
    let old: Vec<i64> = slots.keys().copied().collect();
    let r = c.ctl(&["reload", "demo"]);
    assert!(
        String::from_utf8_lossy(&r.stdout).contains("generation 2 serving: 3 worker(s) replaced"),
        "{r:?}"
    );
    for pid in old {
        assert!(wait_gone(pid as i32, SECS(10)), "old worker {pid} left");
    }
    c.get("/").expect("an answer from generation 2");
    // PM2's shutdown_with_message stopped them, not the signal.
    assert!(
        !c.lines()
            .iter()
            .any(|l| l.contains("did not exit on stop.message")),
        "{:#?}",
        c.lines()
    );
    stopped_leaves_nothing(c);
}

#[test]
fn express_listening_on_a_port_no_listener_provides_fails_loudly() {
    let Some(p) = programs() else { return };
    let c = Corral::start(&template(
        r#"
command = ["node", "{real}/express/app.js"]
environment = { NODE_PATH = "{node_modules}", PORT = "3999" }
[[listen]]
name = "http"
address = "127.0.0.1:{port}"
[node]
preload = true
[readiness]
mode = "node-ipc"
timeout = "5s"
"#,
        &p,
    ));
    let line = c.wait_for("ERR_CORRAL_NO_LISTENER", SECS(20));
    assert!(!line.is_empty());
    let why = c.wait_for("listen(3999)", SECS(5));
    assert!(
        why.contains(&format!("http (127.0.0.1:{})", c.port)),
        "{why}"
    );
    c.wait_for("before it was ready", SECS(5));
    assert!(!c.lines().iter().any(|l| l.contains("1/1 ready")));
}

#[test]
fn a_rust_worker_on_the_listenfd_and_sd_notify_crates() {
    // `cargo test` builds the examples beside the test binaries' directory.
    let exe = std::env::current_exe().unwrap();
    let exe = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples/listenfd_worker");
    assert!(exe.exists(), "{} is missing", exe.display());
    let c = Corral::start(&format!(
        r#"
command = ["{}"]
workers = 3
[[listen]]
name = "http"
address = "127.0.0.1:{{port}}"
[watchdog]
timeout = "2s"
"#,
        exe.display()
    ));
    serves_reloads_and_drains(&c);
    stopped_leaves_nothing(c);
}

#[test]
fn a_shell_worker_whose_child_says_ready_with_systemd_notify() {
    // .ci/run installs systemd, which has it.
    assert!(
        Path::new("/usr/bin/systemd-notify").exists() || Path::new("/bin/systemd-notify").exists(),
        "systemd-notify is not installed"
    );
    let c = Corral::start(&template(
        r#"
command = ["{real}/shell-worker.sh"]
workers = 3
[[listen]]
name = "http"
address = "127.0.0.1:{port}"
"#,
        Path::new("/"),
    ));
    serves_reloads_and_drains(&c);
    stopped_leaves_nothing(c);
}

#[test]
fn hypercorn_in_its_multi_process_mode_dies_whole_with_a_killed_corral() {
    let Some(p) = programs() else { return };
    let c = Corral::start(&template(
        r#"
command = ["python3", "-m", "hypercorn", "--bind", "fd://3", "--graceful-timeout", "30", "asgi_app:app"]
directory = "{real}"
workers = 3
environment = { PYTHONPATH = "{python}" }
[[listen]]
name = "http"
address = "127.0.0.1:{port}"
balance = true
[readiness]
mode = "listen"
"#,
        &p,
    ));
    c.wait_ready(3, 1);
    // hypercorn serves from a child process: the probe found it there.
    let workers: Vec<i64> = c.pids("ready");
    for l in c.lines().iter().filter(|l| l.contains("ready after")) {
        let waiting: i64 = l
            .split(": pid ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{l}"));
        assert!(!workers.contains(&waiting), "{l}: a child, not the worker");
    }
    let s = c.status();
    for w in s["workers"].as_array().unwrap() {
        assert!(w["processes"].as_u64().unwrap() >= 2, "{w}");
    }
    serves_reloads_and_drains(&c);

    // SIGKILL: corral cannot clean up; its keeper does.
    let tree = descendants(c.pid);
    assert!(
        tree.len() >= 7,
        "3 workers with their children, and the keeper: {tree:?}"
    );
    let mut c = c;
    c.signal(Signal::SIGKILL);
    c.wait_exit(SECS(10)).expect("corral is gone");
    all_gone(&tree, "a SIGKILLed corral");
}

#[test]
fn gunicorn_is_ready_once_its_workers_wait_in_select() {
    let Some(p) = programs() else { return };
    let c = Corral::start(&template(
        r#"
command = ["python3", "-m", "gunicorn", "--workers", "2", "--no-control-socket", "wsgi_app:app"]
directory = "{real}"
workers = 3
environment = { PYTHONPATH = "{python}" }
[[listen]]
name = "http"
address = "127.0.0.1:{port}"
[readiness]
mode = "listen"
"#,
        &p,
    ));
    c.wait_ready(3, 1);
    let ready: Vec<String> = c
        .lines()
        .into_iter()
        .filter(|l| l.contains("ready after"))
        .collect();
    for l in &ready {
        assert!(l.contains("waits for connections (select)"), "{l}");
    }
    serves_reloads_and_drains(&c);
    stopped_leaves_nothing(c);
}
