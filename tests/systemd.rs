//! corral under a real, booted systemd: the shipped units, the generator, socket activation,
//! `systemctl reload/restart/stop`, journald fields, the systemd watchdog, hardening.
//! Each test boots its own sandbox (see `common/sandbox.rs`); a failing test prints the
//! sandbox's journal.

mod common;
#[path = "common/sandbox.rs"]
mod sandbox;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{http_get, Load};
use sandbox::Sandbox;

const SECS: fn(u64) -> Duration = Duration::from_secs;
const PORT: u16 = 8080;

/// An app config for the sandbox; `extra` is appended (more tables), `env` goes to workers.
fn demo(workers: u32, env: &str, extra: &str) -> String {
    format!(
        r#"
command = ["/usr/bin/python3", "{WORKER_PY}"]
workers = {workers}
environment = {{ {env} }}

[[listen]]
name = "http"
address = "127.0.0.1:{PORT}"

[readiness]
timeout = "5s"

[stop]
timeout = "3s"

[restart]
delay = "100ms"
{extra}
"#,
        WORKER_PY = sandbox::WORKER_PY
    )
}

/// A sandbox with corral installed and `/etc/corral/demo.toml` generated into units.
fn setup(config: &str) -> Option<Sandbox> {
    let sb = sandbox::boot()?;
    sb.install();
    sb.write("/etc/corral/demo.toml", config);
    sb.ok("systemctl daemon-reload");
    Some(sb)
}

fn get(sb: &Sandbox, port: u16) -> std::io::Result<serde_json::Value> {
    sb.in_netns(|| http_get(port, "/"))
}

/// Starts the service and waits for its start job (Type=notify: READY=1, every slot ready).
fn start(sb: &Sandbox) {
    sb.ok("systemctl start corral@demo.socket corral@demo.service");
}

/// Continuous load inside the sandbox's network: one new connection per request.
fn load(sb: &Sandbox, port: u16) -> Load {
    let ns = std::fs::File::open(format!("/proc/{}/ns/net", sb.pid)).unwrap();
    Load::start_in(Some(ns), port)
}

#[test]
fn the_generator_makes_units_and_a_connection_starts_the_service() {
    let Some(sb) = setup(&demo(3, "", "")) else {
        return;
    };
    let socket = sb.ok("systemctl cat corral@demo.socket");
    assert!(
        socket.contains("/run/systemd/generator/corral@demo.socket.d/50-corral.conf"),
        "{socket}"
    );
    assert!(
        socket.contains("ListenStream=127.0.0.1:8080")
            && socket.contains("FileDescriptorName=http")
    );
    sb.ok("systemctl enable --now corral@demo.socket");
    assert!(sb
        .ok("ls /etc/systemd/system/sockets.target.wants/")
        .contains("corral@demo.socket"));
    assert_eq!(sb.prop("corral@demo.service", "ActiveState"), "inactive");

    // The first connection starts the service and is served, not refused.
    let w = get(&sb, PORT).expect("served by socket activation");
    assert_eq!(w["listen_fdnames"], "http");
    start(&sb);
    assert_eq!(
        sb.prop("corral@demo.service", "StatusText"),
        "3/3 ready · generation 1 · 0 restarts"
    );
    // The operator's view, as root, finds the instance's control socket by itself.
    let status = sb.ok("corral status demo");
    assert!(
        status.contains("3/3 ready") && status.contains("SLOT"),
        "{status}"
    );
    let slots: BTreeSet<String> = sb
        .in_netns(|| common::answers_from_n_at_once(PORT, 3))
        .unwrap()
        .iter()
        .map(|w| w["slot"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(slots.len(), 3, "all three workers answer: {slots:?}");
}

#[test]
fn systemctl_reload_under_load_fails_no_request_and_leaves_only_new_workers() {
    let Some(sb) = setup(&demo(3, r#"WORKER_TAG = "v1""#, "")) else {
        return;
    };
    start(&sb);
    let load = load(&sb, PORT);
    sb.write(
        "/etc/corral/demo.toml",
        &demo(3, r#"WORKER_TAG = "v2", WORKER_READY_DELAY = "0.3""#, ""),
    );
    sb.ok("systemctl reload corral@demo.service");
    load.finish_without_failures(21);
    for _ in 0..20 {
        let w = get(&sb, PORT).unwrap();
        assert_eq!(
            (w["tag"].as_str(), w["generation"].as_str()),
            (Some("v2"), Some("2"))
        );
    }
    assert_eq!(
        sb.prop("corral@demo.service", "StatusText"),
        "3/3 ready · generation 2 · 0 restarts"
    );
}

#[test]
fn a_bad_config_or_a_failing_generation_makes_reload_fail_and_the_old_workers_serve() {
    let Some(sb) = setup(&demo(2, r#"WORKER_TAG = "v1""#, "")) else {
        return;
    };
    start(&sb);
    let main_pid = sb.prop("corral@demo.service", "MainPID");
    let workers = sb.ok("corral status demo --json");

    sb.write(
        "/etc/corral/demo.toml",
        "command = [\"x\"]\nworkers = \"lots\"\n",
    );
    let out = sb.sh("systemctl reload corral@demo.service");
    assert!(!out.status.success(), "reload of a bad config must fail");
    let log = sb.ok("journalctl -u corral@demo.service -o cat --no-pager");
    assert!(log.contains("/etc/corral/demo.toml:2:11"), "{log}");

    sb.write(
        "/etc/corral/demo.toml",
        &demo(2, r#"WORKER_TAG = "v2", WORKER_NEVER_READY = "1""#, "").replace("5s", "1s"),
    );
    let out = sb.sh("systemctl reload corral@demo.service");
    assert!(
        !out.status.success(),
        "a generation that never gets ready fails the reload"
    );

    assert_eq!(sb.prop("corral@demo.service", "ActiveState"), "active");
    assert_eq!(sb.prop("corral@demo.service", "MainPID"), main_pid);
    let now: serde_json::Value = serde_json::from_str(&sb.ok("corral status demo --json")).unwrap();
    let before: serde_json::Value = serde_json::from_str(&workers).unwrap();
    let pids = |v: &serde_json::Value| -> Vec<i64> {
        v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["pid"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        pids(&now),
        pids(&before),
        "the old workers still serve every slot"
    );
    for _ in 0..10 {
        assert_eq!(get(&sb, PORT).unwrap()["tag"], "v1");
    }
}

#[test]
fn journal_entries_carry_the_worker_fields_and_priority() {
    let env = r#"WORKER_SAY = "hello from slot {slot}", WORKER_SAY_ERR = "<3>disk on fire in slot {slot}""#;
    let Some(sb) = setup(&demo(3, env, "")) else {
        return;
    };
    let cursor = sb.cursor();
    start(&sb);
    for slot in 0..3 {
        sb.wait_journal(
            &cursor,
            "-u corral@demo.service",
            &format!("disk on fire in slot {slot}"),
            SECS(10),
        );
        sb.wait_journal(
            &cursor,
            "-u corral@demo.service",
            &format!("hello from slot {slot}"),
            SECS(10),
        );
    }
    let one = sb.ok("journalctl -u corral@demo.service CORRAL_WORKER=1 -o cat --no-pager");
    assert!(
        one.contains("hello from slot 1") && one.contains("disk on fire in slot 1"),
        "{one}"
    );
    assert!(!one.contains("slot 0") && !one.contains("slot 2"), "{one}");
    // corral logs selects the same, for the operator.
    let logs = sb.ok("corral logs demo --worker 1 -n 100");
    assert!(logs.contains("hello from slot 1"), "{logs}");
    assert!(
        !logs.contains("slot 0") && !logs.contains("slot 2"),
        "{logs}"
    );
    let errors = sb.ok("journalctl -u corral@demo.service PRIORITY=3 -o cat --no-pager");
    assert_eq!(
        errors
            .lines()
            .filter(|l| l.starts_with("disk on fire in slot"))
            .count(),
        3,
        "{errors}"
    );
    assert!(!errors.contains("hello from"), "{errors}");
    assert!(!errors.contains("<3>"), "the priority prefix is stripped");

    let entry: serde_json::Value = serde_json::from_str(
        sb.ok("journalctl -u corral@demo.service CORRAL_WORKER=2 SYSLOG_IDENTIFIER=demo PRIORITY=6 -o json --no-pager -n 1")
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(entry["SYSLOG_IDENTIFIER"], "demo");
    assert_eq!(entry["CORRAL_APP"], "demo");
    assert_eq!(entry["CORRAL_GENERATION"], "1");
    let pid: i64 = entry["CORRAL_WORKER_PID"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let status: serde_json::Value =
        serde_json::from_str(&sb.ok("corral status demo --json")).unwrap();
    assert!(
        status["workers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|w| w["pid"] == pid && w["slot"] == 2),
        "CORRAL_WORKER_PID {pid} is slot 2's worker: {status}"
    );
}

#[test]
fn a_stopped_supervisor_is_caught_by_the_systemd_watchdog_and_comes_back() {
    let Some(sb) = setup(&demo(2, "", "[service]\nwatchdog = \"2s\"\n")) else {
        return;
    };
    start(&sb);
    let old = sb.prop("corral@demo.service", "MainPID");
    let cursor = sb.cursor();
    sb.ok(&format!("kill -STOP {old}"));
    sb.wait_journal(
        &cursor,
        "-u corral@demo.service",
        "Watchdog timeout",
        SECS(20),
    );
    sb.wait_journal(
        &cursor,
        "-u corral@demo.service",
        "Started corral@demo.service",
        SECS(30),
    );
    let new = sb.prop("corral@demo.service", "MainPID");
    assert_ne!(new, old);
    assert_eq!(sb.prop("corral@demo.service", "ActiveState"), "active");
    assert_eq!(sb.prop("corral@demo.service", "NRestarts"), "1");
    get(&sb, PORT).expect("served again");
}

#[test]
fn systemctl_restart_under_load_refuses_no_connection_and_stop_leaves_nothing() {
    let Some(sb) = setup(&demo(2, "", "")) else {
        return;
    };
    start(&sb);
    let load = load(&sb, PORT);
    let old = sb.prop("corral@demo.service", "MainPID");
    sb.ok("systemctl restart corral@demo.service");
    // Some requests after the restart, then stop the load.
    get(&sb, PORT).unwrap();
    load.finish_without_failures(6);
    assert_ne!(sb.prop("corral@demo.service", "MainPID"), old);

    let cgroup = sb.prop("corral@demo.service", "ControlGroup");
    assert!(!cgroup.is_empty());
    sb.ok("systemctl stop corral@demo.service");
    assert_eq!(sb.prop("corral@demo.service", "ActiveState"), "inactive");
    assert_eq!(sb.prop("corral@demo.service", "Result"), "success");
    let left = sb.sh(&format!(
        "cat /sys/fs/cgroup{cgroup}/cgroup.procs 2>/dev/null; pgrep -f [c]orral-test/worker.py"
    ));
    assert!(
        String::from_utf8_lossy(&left.stdout).trim().is_empty(),
        "processes left: {left:?}"
    );
}

#[test]
fn every_unit_verifies_and_the_default_service_is_hardened() {
    let Some(sb) = setup(&demo(2, "", "")) else {
        return;
    };
    // The shipped templates with their generated drop-ins, and standalone generated units.
    sb.ok("corral generate /etc/corral/demo.toml --output /etc/systemd/system");
    let out = sb.sh(
        "systemd-analyze verify --generators=yes corral@demo.service corral@demo.socket \
         /etc/systemd/system/demo.service /etc/systemd/system/demo.socket",
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {err}");
    let ours: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("corral") || l.contains("demo"))
        .collect();
    assert!(
        ours.is_empty(),
        "systemd-analyze verify complains: {ours:?}"
    );

    assert!(exposure(&sb) <= 2.0);
}

/// `systemd-analyze security`'s overall exposure of corral@demo.service.
fn exposure(sb: &Sandbox) -> f64 {
    let report = sb.ok("systemd-analyze security corral@demo.service --no-pager");
    let line = report
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .expect("an overall exposure line");
    let score = line
        .split(": ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    eprintln!("{line}");
    score
}

#[test]
fn node_and_python_apps_run_under_the_hardening() {
    let Some(sb) = setup(&demo(2, "", "")) else {
        return;
    };
    if !std::path::Path::new("/usr/bin/node").exists() {
        panic!("/usr/bin/node is missing: .ci/run installs nodejs");
    }
    sb.write(
        "/etc/corral/nodeapp.toml",
        &format!(
            "command = [\"/usr/bin/node\", \"{}\"]\nworkers = 2\n\
             [readiness]\nmode = \"exec\"\n[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:8081\"\n",
            sandbox::WORKER_JS
        ),
    );
    sb.ok("systemctl daemon-reload && systemctl start corral@nodeapp.socket corral@nodeapp.service corral@demo.socket corral@demo.service");
    let w = get(&sb, 8081).expect("the Node.js app answers");
    assert_eq!(w["runtime"], "node");
    get(&sb, PORT).expect("the Python app answers");
    // The standalone units of `corral generate` run the app as well.
    sb.ok("systemctl stop corral@demo.socket corral@demo.service && \
           corral generate /etc/corral/demo.toml --output /etc/systemd/system && \
           systemctl daemon-reload && systemctl start demo.socket");
    let w = get(&sb, PORT).expect("served through the standalone units");
    assert_eq!(w["app"], "demo");
}

#[test]
fn long_lines_are_split_and_binary_lines_kept_as_journald_does() {
    let env = r#"WORKER_SAY_LONG = "60000", WORKER_SAY_BINARY = "1""#;
    let Some(sb) = setup(&demo(1, env, "")) else {
        return;
    };
    let cursor = sb.cursor();
    start(&sb);
    sb.wait_journal(&cursor, "-u corral@demo.service", "ready after", SECS(10));
    // 60000 bytes: one entry of 48 KiB (journald's LineMax) and one of the rest, nothing lost.
    let long = sb.ok(
        "journalctl -u corral@demo.service SYSLOG_IDENTIFIER=demo -o cat --no-pager | grep '^LLLL' | awk '{ print length($0) }'",
    );
    let sizes: Vec<usize> = long.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(sizes, vec![49152, 60000 - 49152], "{long}");
    // A line that is not UTF-8 is kept byte for byte (journalctl shows it as a byte array).
    let json = sb.ok(
        "journalctl -u corral@demo.service SYSLOG_IDENTIFIER=demo -o json --no-pager | grep -v LLLL",
    );
    let binary: Vec<u8> = b"binary \xff\xfe junk".to_vec();
    let found = json.lines().any(|l| {
        let v: serde_json::Value = serde_json::from_str(l).unwrap();
        v["MESSAGE"].as_array().map(|a| {
            a.iter()
                .map(|b| b.as_u64().unwrap() as u8)
                .collect::<Vec<u8>>()
        }) == Some(binary.clone())
    });
    assert!(found, "no entry with the binary line: {json}");
}

#[test]
fn a_descendant_says_ready_on_the_notify_path_and_the_cgroup_takes_the_whole_tree() {
    // The workers run as the unit's dynamic user, not root: systemd-notify, a child of the
    // shell worker, sends with its own pid, which corral must trace back to the worker.
    let config = format!(
        r#"
command = ["{}"]
workers = 2
environment = {{ WORKER_PY = "{}" }}
[[listen]]
name = "http"
address = "127.0.0.1:{PORT}"
[readiness]
timeout = "10s"
"#,
        sandbox::SHELL_WORKER,
        sandbox::WORKER_PY
    );
    let Some(sb) = setup(&config) else {
        return;
    };
    // Type=notify: the start job ends only once corral sent READY=1, so every slot was ready.
    start(&sb);
    let w = get(&sb, PORT).expect("the shell worker's server answers");
    assert_eq!(w["notify_socket"], "/run/corral/demo/demo.notify");
    let mode = sb.ok("stat -c '%a %U' /run/corral/demo/demo.notify");
    let user = sb.ok("stat -c '%U' /run/corral/demo");
    assert_eq!(
        mode.trim(),
        format!("600 {}", user.trim()),
        "owned by the app's user"
    );
    assert_ne!(user.trim(), "root");
    let status: serde_json::Value =
        serde_json::from_str(&sb.ok("corral status demo --json")).unwrap();
    assert_eq!(status["log"], "journal");
    assert_eq!(status["ready"], 2);
    for w in status["workers"].as_array().unwrap() {
        assert_eq!(w["processes"], 2, "the shell and its server: {w}");
    }

    // SIGKILL of corral alone: the unit's cgroup takes every process of every worker's tree.
    // The shells and their servers run from /usr/local/lib/corral-test/ (the brackets keep
    // this shell's own command line from matching).
    let tree = sb.ok(
        "systemctl show -p MainPID --value corral@demo.service; pgrep -x corral-keeper; \
         pgrep -f '[c]orral-test/'",
    );
    let pids: Vec<&str> = tree.split_whitespace().collect();
    assert!(
        pids.len() >= 6,
        "corral, its keeper, 2 shells and their 2 servers: {tree}"
    );
    sb.ok("systemctl kill --kill-whom=main --signal=SIGKILL corral@demo.service");
    for pid in pids {
        sb.ok(&format!("timeout 10 tail -s 0.1 --pid={pid} -f /dev/null"));
    }
}

#[test]
fn listen_readiness_sees_epoll_and_poll_under_the_hardening() {
    // The worker never says READY=1; one waits in epoll, one in poll(2), which corral reads
    // with process_vm_readv(2) through the unit's system call filter.
    let config = demo(1, r#"WORKER_NEVER_READY = "1""#, "")
        .replace("[readiness]\n", "[readiness]\nmode = \"listen\"\n");
    let Some(sb) = setup(&config) else {
        return;
    };
    let cursor = sb.cursor();
    start(&sb);
    sb.wait_journal(
        &cursor,
        "-u corral@demo.service",
        "waits for connections (epoll)",
        SECS(10),
    );
    get(&sb, PORT).expect("ready and serving");
    sb.write(
        "/etc/corral/demo.toml",
        &demo(
            1,
            r#"WORKER_NEVER_READY = "1", WORKER_SELECTOR = "poll""#,
            "",
        )
        .replace("[readiness]\n", "[readiness]\nmode = \"listen\"\n"),
    );
    sb.ok("systemctl reload corral@demo.service");
    sb.wait_journal(
        &cursor,
        "-u corral@demo.service",
        "waits for connections (poll)",
        SECS(10),
    );
    get(&sb, PORT).expect("the poll worker serves");
}

#[test]
fn a_workers_extension_reaches_systemd_for_systemctl_reload_and_not_for_corral_reload() {
    let Some(sb) = setup(&demo(1, "", "")) else {
        return;
    };
    start(&sb);
    // PID 1 logs each notification it gets, at debug level, with the unit's name.
    sb.ok("systemd-analyze log-level debug");
    // Each new worker asks for 7s, past readiness.timeout (5s), as it starts.
    sb.write(
        "/etc/corral/demo.toml",
        &demo(1, r#"WORKER_EXTEND_USEC = "7000000""#, ""),
    );
    let unit = "-u corral@demo.service";
    // From a shell: systemd waits for nothing, and an extension would only push its watchdog
    // out. Notifications are handled in order: once the reload's READY=1 is in, so is
    // anything sent before it.
    let cursor = sb.cursor();
    sb.ok("corral reload demo");
    sb.wait_journal(&cursor, unit, "(READY=1)", SECS(20));
    let seen = sb.ok(&format!(
        "journalctl --after-cursor='{cursor}' {unit} --no-pager -o cat"
    ));
    assert!(!seen.contains("EXTEND_TIMEOUT_USEC="), "{seen}");
    // As ExecReload=, which systemd waits for and times: the worker's 7s and corral's 10s,
    // then a watchdog ping.
    let cursor = sb.cursor();
    sb.ok("systemctl reload corral@demo.service");
    sb.wait_journal(&cursor, unit, "EXTEND_TIMEOUT_USEC=17000000", SECS(20));
    sb.wait_journal(&cursor, unit, "(WATCHDOG=1)", SECS(20));
    assert_eq!(
        sb.prop("corral@demo.service", "StatusText"),
        "1/1 ready · generation 3 · 0 restarts"
    );
}

/// `demo` with `balance = "BALANCE"` on its listener.
fn balanced(workers: u32, env: &str, balance: &str) -> String {
    demo(workers, env, "").replace(
        &format!("address = \"127.0.0.1:{PORT}\"\n"),
        &format!("address = \"127.0.0.1:{PORT}\"\nbalance = \"{balance}\"\n"),
    )
}

fn status_json(sb: &Sandbox) -> serde_json::Value {
    serde_json::from_str(&sb.ok("corral status demo --json")).unwrap()
}

#[test]
fn balanced_listeners_take_a_socket_per_worker_from_the_socket_unit_or_say_why_not() {
    // A socket unit generated for a shared listener: one socket.
    let Some(sb) = setup(&demo(3, r#"WORKER_TAG = "v1""#, "")) else {
        return;
    };
    start(&sb);
    // Balancing asked of it: the reload goes on with the one socket, and status says why.
    sb.write(
        "/etc/corral/demo.toml",
        &balanced(3, r#"WORKER_TAG = "v2""#, "source"),
    );
    sb.ok("systemctl reload corral@demo.service");
    let l = &status_json(&sb)["listeners"][0];
    assert_eq!(l["balance"], "shared", "{l}");
    assert!(
        l["note"].as_str().unwrap().contains("passes one socket"),
        "{l}"
    );
    assert!(sb.ok("corral status demo").contains("daemon-reload"));
    assert_eq!(get(&sb, PORT).unwrap()["tag"], "v2");

    // Regenerated: a socket per worker and one for the reload batch, in one SO_REUSEPORT
    // group; corral takes them as one balanced listener.
    sb.ok("systemctl daemon-reload");
    let unit = sb.ok("systemctl cat corral@demo.socket");
    assert_eq!(
        unit.matches(&format!("ListenStream=127.0.0.1:{PORT}\n"))
            .count(),
        4,
        "{unit}"
    );
    assert!(unit.contains("ReusePort=yes"), "{unit}");
    sb.ok("systemctl stop corral@demo.service corral@demo.socket");
    start(&sb);
    let l = &status_json(&sb)["listeners"][0];
    assert_eq!(
        (
            l["balance"].as_str(),
            l["sockets"].as_u64(),
            l["note"].as_str()
        ),
        (Some("source"), Some(4), None),
        "{l}"
    );
    // Each worker finds a socket of its own at fd 3, and each client address its slot.
    let clients: Vec<std::net::Ipv4Addr> = (2..42).map(|i| [127, 0, 0, i].into()).collect();
    let answers = |sb: &Sandbox| -> Vec<serde_json::Value> {
        sb.in_netns(|| {
            clients
                .iter()
                .map(|c| common::http_get_from(*c, PORT, "/").expect("served"))
                .collect()
        })
    };
    let first = answers(&sb);
    let slot_of = |v: &[serde_json::Value]| -> Vec<String> {
        v.iter()
            .map(|w| w["slot"].as_str().unwrap().to_string())
            .collect()
    };
    let inodes: BTreeSet<(String, u64)> = first
        .iter()
        .map(|w| {
            assert_eq!(w["listen_fds"], "1");
            (
                w["slot"].as_str().unwrap().to_string(),
                w["listen_inode"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(inodes.len(), 3, "3 slots, 3 sockets: {inodes:?}");
    let sockets: BTreeSet<u64> = inodes.iter().map(|(_, i)| *i).collect();
    assert_eq!(sockets.len(), 3, "{inodes:?}");
    assert_eq!(
        slot_of(&answers(&sb)),
        slot_of(&first),
        "a client keeps its slot"
    );

    // A crashed worker: its next worker takes its socket and its clients.
    let cursor = sb.cursor();
    sb.in_netns(|| common::http_get_from([127, 0, 0, 2].into(), PORT, "/crash"))
        .unwrap();
    sb.wait_journal(
        &cursor,
        "-u corral@demo.service",
        "3/3 ready · generation 1 · 1 restart",
        SECS(20),
    );
    // A round trip through corral's event loop: what came with the line is applied by now.
    sb.ok("corral status demo");
    assert_eq!(slot_of(&answers(&sb)), slot_of(&first), "after a crash");

    // systemctl reload under load: no failed request, and every client keeps its slot.
    let load = load(&sb, PORT);
    sb.write(
        "/etc/corral/demo.toml",
        &balanced(3, r#"WORKER_TAG = "v3""#, "source"),
    );
    sb.ok("systemctl reload corral@demo.service");
    load.finish_without_failures(10);
    let after = answers(&sb);
    assert_eq!(slot_of(&after), slot_of(&first), "after the reload");
    assert!(after.iter().all(|w| w["tag"] == "v3"));

    // "even" on a reload: connections from one address spread over every worker.
    sb.write(
        "/etc/corral/demo.toml",
        &balanced(3, r#"WORKER_TAG = "v4""#, "even"),
    );
    sb.ok("systemctl reload corral@demo.service");
    let l = &status_json(&sb)["listeners"][0];
    assert_eq!(l["balance"], "even");
    // The units were made for "source": corral has no CAP_BPF to deal connections in turn,
    // places them at random, and says so.
    assert!(l["note"].as_str().unwrap().contains("CAP_BPF"), "{l}");
    let slots: BTreeSet<String> = (0..60)
        .map(|_| {
            get(&sb, PORT).unwrap()["slot"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(slots.len(), 3, "{slots:?}");

    // Regenerated for "even": corral gets CAP_BPF (and keeps it from its workers), deals new
    // connections out in turn, and the unit stays within an exposure of 2.0.
    sb.ok("systemctl daemon-reload");
    assert!(sb
        .ok("systemctl cat corral@demo.service")
        .contains("AmbientCapabilities=CAP_BPF"));
    // Type=notify: back once corral says READY=1, with every worker ready.
    sb.ok("systemctl restart corral@demo.service");
    let l = &status_json(&sb)["listeners"][0];
    assert_eq!(
        (l["balance"].as_str(), l["note"].as_str()),
        (Some("even"), None),
        "{l}"
    );
    let mut per_slot: std::collections::BTreeMap<String, u32> = Default::default();
    for _ in 0..60 {
        let w = get(&sb, PORT).unwrap();
        assert_eq!(w["capabilities"]["CapEff"], "0000000000000000", "{w}");
        assert_eq!(w["capabilities"]["CapAmb"], "0000000000000000", "{w}");
        assert_eq!(w["capabilities"]["CapPrm"], "0000000000000000", "{w}");
        *per_slot
            .entry(w["slot"].as_str().unwrap().into())
            .or_default() += 1;
    }
    assert_eq!(
        per_slot.values().collect::<Vec<_>>(),
        [&20, &20, &20],
        "{per_slot:?}"
    );
    assert!(exposure(&sb) <= 2.0);

    // Shared asked of a socket unit with a socket per worker: it stays balanced (connections
    // the kernel spread over sockets no worker takes would wait there), and status says why.
    sb.write(
        "/etc/corral/demo.toml",
        &demo(3, r#"WORKER_TAG = "v5""#, ""),
    );
    sb.ok("systemctl reload corral@demo.service");
    let l = &status_json(&sb)["listeners"][0];
    assert_eq!(l["balance"], "even", "{l}");
    assert!(
        l["note"].as_str().unwrap().contains("passes 4 sockets"),
        "{l}"
    );
    for _ in 0..20 {
        assert_eq!(get(&sb, PORT).unwrap()["tag"], "v5");
    }
}

#[test]
fn an_agent_runs_in_the_apps_unit_and_cgroup_and_its_lines_are_its_own() {
    // The job log in the unit's runtime directory: writable under its sandboxing, readable here.
    let config = demo(2, r#"WORKER_TAG = "v1""#, "")
        + &format!(
            "\n[agent]\ncommand = [\"/usr/bin/python3\", \"{}\"]\n\
             environment = {{ AGENT_LOG = \"/run/corral/demo/jobs\", AGENT_TAG = \"a1\" }}\n",
            sandbox::AGENT_PY
        );
    let Some(sb) = setup(&config) else {
        return;
    };
    let cursor = sb.cursor();
    // Type=notify: active once corral says READY=1, which waits for the agent and the workers.
    start(&sb);
    let s = status_json(&sb);
    assert_eq!(s["agent"]["state"], "ready", "{s}");
    assert_eq!(s["ready"], 2, "{s}");
    let agent = s["agent"]["pid"].as_i64().unwrap();
    // In the app's unit and cgroup, as its workers.
    let cgroup = |pid: i64| sb.ok(&format!("cat /proc/{pid}/cgroup"));
    assert_eq!(cgroup(agent), cgroup(s["pid"].as_i64().unwrap()));
    assert!(
        cgroup(agent).contains("corral@demo.service"),
        "{}",
        cgroup(agent)
    );
    // Its lines carry CORRAL_WORKER=agent; `corral logs --agent` shows them alone.
    sb.wait_journal(
        &cursor,
        "CORRAL_WORKER=agent",
        "agent a1 as agent",
        SECS(10),
    );
    let logs = sb.ok("corral logs demo --agent -n 100");
    assert!(logs.contains("agent a1 as agent"), "{logs}");
    assert!(
        !logs.contains("worker 0") && !logs.contains("\"slot\""),
        "{logs}"
    );
    // Stopped after its workers: its own stop line is the job log's last.
    sb.ok("systemctl stop corral@demo.service");
    let jobs = sb.ok("cat /run/corral/demo/jobs 2>/dev/null || true");
    // The runtime directory goes with the unit (RuntimeDirectory=); the journal keeps the order.
    let order = sb.ok("journalctl -u corral@demo.service -o cat --no-pager");
    let lines: Vec<&str> = order.lines().collect();
    let agent_exit = lines
        .iter()
        .rposition(|l| l.contains(&format!("agent pid {agent}")) && l.contains("exited"))
        .unwrap_or_else(|| panic!("{order}"));
    let last_worker_exit = lines
        .iter()
        .rposition(|l| l.starts_with("worker ") && l.contains("exited"))
        .unwrap_or_else(|| panic!("{order}"));
    assert!(last_worker_exit < agent_exit, "{order}\n{jobs}");
}
