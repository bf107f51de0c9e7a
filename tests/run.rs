//! `corral run` end to end: the real binary, the real test worker, real sockets and signals.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Three workers behind one TCP listener; `{env}` lets a test add worker environment.
fn config(workers: u32, env: &str) -> String {
    format!(
        r#"
command = ["python3", "{{worker}}"]
workers = {workers}
environment = {{ {env} }}

[[listen]]
name = "http"
address = "127.0.0.1:{{port}}"

[readiness]
timeout = "10s"

[stop]
timeout = "5s"

[restart]
delay = "50ms"
"#
    )
}

#[test]
fn workers_see_exactly_what_systemd_would_give_them() {
    let unix = scratch_dir().join("admin.sock");
    let template = format!(
        r#"
command = ["python3", "{{worker}}"]
workers = 2
[watchdog]
timeout = "20s"
[[listen]]
name = "http"
address = "127.0.0.1:{{port}}"
[[listen]]
name = "admin"
address = "{}"
mode = "0660"
"#,
        unix.display()
    );
    // corral itself is started with variables and an fd meant for it, as systemd would.
    let extra = std::fs::File::open("/dev/null").unwrap();
    nix::fcntl::fcntl(
        &extra,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let c = Corral::start_with(&template, |cmd| {
        cmd.env("WATCHDOG_USEC", "999999999")
            .env("WATCHDOG_PID", "1")
            .env("JOURNAL_STREAM", "1:2")
            .env("CORRAL_WORKER", "99");
    });
    c.wait_ready(2, 1);
    drop(extra);

    let mut seen = BTreeSet::new();
    for w in answers_from_n_at_once(c.port, 2).unwrap() {
        let pid = w["pid"].as_i64().unwrap();
        assert_eq!(
            w["listen_pid"],
            pid.to_string(),
            "LISTEN_PID must be the worker's own pid"
        );
        assert_eq!(w["watchdog_pid"], pid.to_string());
        assert_eq!(w["listen_fds"], "2");
        assert_eq!(w["listen_fdnames"], "http:admin");
        assert_eq!(
            w["watchdog_usec"], "20000000",
            "the worker's own watchdog, not corral's"
        );
        assert_eq!(w["app"], "demo");
        assert_eq!(w["generation"], "1");
        // A file beside the control socket, as systemd gives /run/systemd/notify.
        assert_eq!(
            w["notify_socket"].as_str().unwrap(),
            c.dir.join("demo.notify").to_str().unwrap()
        );
        // fds 0-2 and the two listeners, nothing of the supervisor's.
        assert_eq!(w["fds"], serde_json::json!([0, 1, 2, 3, 4]));
        let env: Vec<&str> = w["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(!env.contains(&"JOURNAL_STREAM"), "{env:?}");
        seen.insert((pid, w["slot"].as_str().unwrap().to_string()));
    }
    let slots: BTreeSet<String> = seen.iter().map(|(_, s)| s.clone()).collect();
    assert_eq!(
        slots,
        ["0", "1"].map(String::from).into(),
        "both workers answer"
    );

    // The unix listener is served too, with the mode asked for.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&unix).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    // The control socket is private, and so is the notify socket: only corral's user (the
    // workers') and root may send.
    let mode = std::fs::metadata(&c.control).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mode = std::fs::metadata(c.dir.join("demo.notify"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

#[test]
fn a_crashed_worker_is_replaced_in_the_same_slot_with_backoff() {
    let c = Corral::start(&config(3, ""));
    c.wait_ready(3, 1);
    let before = c.status();
    let mark = c.mark();
    let crashed = c.get("/crash").unwrap();
    let pid = crashed["pid"].as_i64().unwrap();
    let slot = crashed["slot"].as_str().unwrap().parse::<i64>().unwrap();
    let line = c.wait_for_after(
        mark,
        &format!("pid {pid} (generation 1): exited with code 3 after"),
        SECS(10),
    );
    assert!(line.contains(&format!("worker {slot} ")), "{line}");
    c.wait_for_after(mark, "restarting in 50ms", SECS(10));
    c.wait_for_after(mark, "3/3 ready · generation 1 · 1 restart", SECS(20));

    let after = c.status();
    let slots: Vec<i64> = after["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["slot"].as_i64().unwrap())
        .collect();
    assert_eq!(slots, vec![0, 1, 2]);
    for (b, a) in before["workers"]
        .as_array()
        .unwrap()
        .iter()
        .zip(after["workers"].as_array().unwrap())
    {
        if b["slot"] == slot {
            assert_ne!(a["pid"], b["pid"], "the crashed slot has a new worker");
            assert_eq!(a["restarts"], 1);
        } else {
            assert_eq!(a["pid"], b["pid"], "other slots are untouched");
            assert_eq!(a["restarts"], 0);
        }
    }
    assert_eq!(after["restarts"], 1);
}

#[test]
fn exec_failure_is_reported_with_its_cause() {
    let mut c = Corral::start(
        r#"
command = ["/nonexistent/server", "--port", "1"]
[restart]
delay = "1s"
"#,
    );
    let line = c.wait_for("failed to start", SECS(10));
    assert!(
        line.contains("cannot run /nonexistent/server: No such file or directory"),
        "{line}"
    );
    assert!(
        !c.lines().iter().any(|l| l.contains("127")),
        "no exit-code-127 mystery"
    );
    // A program that cannot be started at all ends the app at once, with the reason.
    c.wait_for("cannot start the app", SECS(10));
    assert_eq!(c.wait_exit(SECS(10)).unwrap().code(), Some(1));
}

#[test]
fn a_program_that_cannot_be_executed_ends_the_start_without_forking_the_other_slots() {
    let dir = scratch_dir();
    let program = dir.join("server");
    std::fs::write(&program, "#!/bin/sh\nexec sleep 60\n").unwrap(); // mode 0644: EACCES
    let mut c = Corral::start(&format!(
        "command = [\"{}\"]\nworkers = 3\n",
        program.display()
    ));
    assert_eq!(c.wait_exit(SECS(10)).unwrap().code(), Some(1));
    let lines = c.lines();
    let failed: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains("failed to start"))
        .collect();
    assert_eq!(failed.len(), 1, "slot 0 only: {lines:#?}");
    assert!(failed[0].contains("Permission denied"), "{}", failed[0]);
    assert!(
        !lines.iter().any(|l| l.ends_with(": started")),
        "no worker forked: {lines:#?}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// Starts corral with an open-file limit of `soft`:`hard` (what systemd's LimitNOFILE= sets).
fn with_nofile(soft: u64, hard: u64) -> impl FnOnce(&mut std::process::Command) {
    move |cmd| {
        // SAFETY: setrlimit is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, move || {
                let l = libc::rlimit {
                    rlim_cur: soft,
                    rlim_max: hard,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
}

#[test]
fn running_out_of_file_descriptors_at_start_backs_off_instead_of_ending_the_app() {
    // 48 open files: corral's own and a few workers' pipes fit; the rest get EMFILE, which may
    // pass (a worker exits, an operator raises the limit), unlike a program that is not there.
    let mut c = Corral::start_with(
        r#"
command = ["sleep", "600"]
workers = 30
[readiness]
mode = "exec"
[restart]
delay = "1s"
"#,
        with_nofile(48, 48),
    );
    let failed = c.wait_for("failed to start: ", SECS(10));
    assert!(failed.contains("Too many open files"), "{failed}");
    c.wait_for("restarting in 1.0s", SECS(10));
    assert!(
        !c.lines().iter().any(|l| l.contains("cannot start the app")),
        "{:#?}",
        c.lines()
    );
    assert!(
        c.wait_exit(Duration::from_millis(300)).is_none(),
        "still running"
    );
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit(SECS(10)).unwrap().code(), Some(0));
}

#[test]
fn a_crash_loop_past_the_limit_ends_corral_with_1_and_says_why() {
    let mut c = Corral::start(
        r#"
command = ["python3", "{worker}"]
environment = { WORKER_EXIT_AFTER = "0", WORKER_EXIT_CODE = "1" }
[restart]
delay = "10ms"
max_delay = "20ms"
max_failures = 5
interval = "1m"
"#,
    );
    let why = c.wait_for("giving up on the app", SECS(30));
    assert!(why.contains("slot 0 failed 5 times within 1m00s"), "{why}");
    assert!(why.contains("exited with code 1"), "{why}");
    assert_eq!(c.wait_exit(SECS(10)).unwrap().code(), Some(1));
}

#[test]
fn a_slow_crash_loop_ends_corral_too() {
    // Each worker is given up on 300ms after it started, and waits 400ms, then 800ms, to be
    // started again: never 3 failures within restart.interval (1s), but 3 in a row, none ready.
    let mut c = Corral::start(
        r#"
command = ["python3", "{worker}"]
environment = { WORKER_NEVER_READY = "1" }
[readiness]
timeout = "300ms"
[restart]
delay = "400ms"
max_failures = 3
interval = "1s"
"#,
    );
    let why = c.wait_for("giving up on the app", SECS(20));
    assert!(
        why.contains("slot 0 failed 3 times in a row, never ready for 10.0s in between"),
        "{why}"
    );
    assert!(why.contains("was not ready within 300ms"), "{why}");
    assert_eq!(c.wait_exit(SECS(10)).unwrap().code(), Some(1));
}

#[test]
fn extend_timeout_of_u64_max_ends_a_reload_at_the_ceiling() {
    let c = Corral::start(&config(1, ""));
    c.wait_ready(1, 1);
    c.write_config(
        &config(
            1,
            r#"WORKER_NEVER_READY = "1", WORKER_EXTEND_USEC = "18446744073709551615""#,
        )
        .replace("timeout = \"10s\"", "timeout = \"1s\""),
    );
    // readiness.timeout 1s: an extension is worth 10s at most.
    let asked = std::time::Instant::now();
    let out = c.ctl(&["reload", "demo"]);
    let took = asked.elapsed();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("was not ready within"),
        "{out:?}"
    );
    assert!(took >= SECS(9) && took < SECS(30), "{took:?}");
    c.get("/").expect("the old worker serves on");
}

#[test]
fn a_worker_not_ready_in_time_is_killed_and_never_counted_ready() {
    let c = Corral::start(
        r#"
command = ["python3", "{worker}"]
environment = { WORKER_NEVER_READY = "1" }
[readiness]
timeout = "700ms"
[restart]
delay = "5s"
"#,
    );
    let line = c.wait_for("was not ready within 700ms", SECS(10));
    let pid = pid_in(&line);
    assert!(wait_gone(pid, SECS(5)), "the worker was killed");
    c.wait_for("killed by SIGKILL", SECS(5));
    assert!(!c.lines().iter().any(|l| l.contains("1/1 ready")));
    let s = c.status();
    assert_eq!(s["ready"], 0);
    assert_eq!(s["workers"][0]["state"], "backoff");
}

#[test]
fn ready_from_a_descendant_of_the_worker_counts() {
    // The worker forks; its child says READY=1 (as `npm start` or a shell wrapper's program
    // would), and the worker never does.
    let c = Corral::start(
        r#"
command = ["python3", "{worker}"]
environment = { WORKER_READY_FROM_CHILD = "1" }
[readiness]
timeout = "10s"
"#,
    );
    c.wait_ready(1, 1);
}

#[test]
fn ready_from_a_process_outside_every_workers_tree_changes_nothing() {
    let c = Corral::start(
        r#"
command = ["python3", "{worker}"]
environment = { WORKER_NEVER_READY = "1" }
[readiness]
timeout = "2s"
"#,
    );
    c.wait_for("started", SECS(10));
    // This test process is no descendant of the worker; neither is a child of it.
    let notify = c.dir.join("demo.notify");
    let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
    s.send_to(b"READY=1", &notify).unwrap();
    let sent = std::process::Command::new("python3")
        .args(["-c", "import socket,sys; socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b'READY=1', sys.argv[1])"])
        .arg(&notify)
        .status()
        .unwrap();
    assert!(sent.success());
    c.wait_for("was not ready within 2.0s", SECS(10));
    assert!(!c.lines().iter().any(|l| l.contains("1/1 ready")));
}

#[test]
fn sighup_under_load_fails_no_request_and_leaves_only_the_new_generation() {
    let c = Corral::start(&config(3, r#"WORKER_TAG = "v1""#));
    c.wait_ready(3, 1);
    let old = c.pids("ready");
    let load = Load::start(c.port);
    // Let the load run against generation 1 first.
    c.get("/").unwrap();
    c.write_config(&config(
        3,
        r#"WORKER_TAG = "v2", WORKER_READY_DELAY = "0.3""#,
    ));
    let mark = c.mark();
    c.signal(Signal::SIGHUP);
    c.wait_for_after(mark, "generation 2 serving: 3 worker(s) replaced", SECS(60));
    load.finish_without_failures(21);

    for pid in &old {
        assert!(wait_gone(*pid as i32, SECS(5)), "old worker {pid} is gone");
    }
    for _ in 0..30 {
        let w = c.get("/").unwrap();
        assert_eq!(w["tag"], "v2");
        assert_eq!(w["generation"], "2");
    }
    let s = c.status();
    assert_eq!(s["generation"], 2);
    assert_eq!(s["ready"], 3);
}

#[test]
fn a_reload_with_a_bad_config_is_refused_and_changes_nothing() {
    let c = Corral::start(&config(2, ""));
    c.wait_ready(2, 1);
    let before = c.pids("ready");
    std::fs::write(
        &c.config,
        "command = [\"python3\"]\nworkers = 0\n[stop]\ntimeuot = \"1s\"\n",
    )
    .unwrap();
    let out = c.ctl(&["reload", "demo"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let file = c.config.display().to_string();
    assert!(err.contains(&format!("{file}:2:")), "{err}");
    assert!(err.contains(&format!("{file}:4:1")), "{err}");
    assert!(err.contains("did you mean `timeout`"), "{err}");
    // SIGHUP with the same bad file: refused too.
    let mark = c.mark();
    c.signal(Signal::SIGHUP);
    c.wait_for_after(mark, "reload refused, nothing changed", SECS(10));
    let s = c.status();
    assert_eq!(s["generation"], 1);
    assert_eq!(c.pids("ready"), before);
    c.get("/").unwrap();
}

/// A key name is shown as it is in a diagnostic; one that holds an escape sequence (here: clear
/// the screen, retitle the terminal) reaches no terminal as such, through `corral check`, a
/// refused reload's answer or corral's log: its control characters are shown escaped.
#[test]
fn control_characters_in_a_configs_keys_are_shown_escaped() {
    let c = Corral::start(&config(1, ""));
    c.wait_ready(1, 1);
    let bad = "command = [\"x\"]\n\"\\u001b[2J\" = 1\n\
               [environment]\n\"T\\u001b]0;owned\\u0007\" = []\n";
    std::fs::write(&c.config, bad).unwrap();
    let file = c.config.display().to_string();
    let expected = [
        format!("{file}:2:1: unknown key `\\x1b[2J` in the top level"),
        format!("{file}:4:27: environment.T\\x1b]0;owned\\x07: expected a string"),
    ];
    let check = std::process::Command::new(CORRAL)
        .arg("check")
        .arg(&c.config)
        .output()
        .unwrap();
    let mark = c.mark();
    let reload = c.ctl(&["reload", "demo"]);
    c.wait_for_after(mark, "reload refused", SECS(10));
    for (what, out) in [("corral check", check), ("corral reload", reload)] {
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        for line in &expected {
            assert!(err.contains(line.as_str()), "{what}: {line:?} in {err:?}");
        }
        assert!(!err.contains(['\x1b', '\x07']), "{what}: {err:?}");
    }
    let log = c.lines()[mark..].join("\n");
    assert!(log.contains(&expected[0]), "{log:?}");
    assert!(!log.contains(['\x1b', '\x07']), "{log:?}");
}

#[test]
fn a_new_generation_that_never_gets_ready_leaves_the_old_one_serving_every_slot() {
    let c = Corral::start(&config(3, r#"WORKER_TAG = "v1""#));
    c.wait_ready(3, 1);
    let before = c.pids("ready");
    c.write_config(
        &config(3, r#"WORKER_TAG = "v2", WORKER_NEVER_READY = "1""#).replace("10s", "800ms"),
    );
    let out = c.ctl(&["reload", "demo"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("slot 0: the generation 2 worker was not ready within 800ms"),
        "{err}"
    );
    let s = c.status();
    assert_eq!(s["generation"], 1);
    assert_eq!(c.pids("ready"), before, "every slot keeps its old worker");
    for _ in 0..20 {
        assert_eq!(c.get("/").unwrap()["tag"], "v1");
    }
    // A good config afterwards rolls fine: the refusal left nothing behind.
    c.write_config(&config(3, r#"WORKER_TAG = "v3""#));
    let out = c.ctl(&["reload", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert_eq!(c.get("/").unwrap()["tag"], "v3");
}

#[test]
fn reload_exit_codes() {
    let c = Corral::start(&config(1, ""));
    c.wait_ready(1, 1);
    let out = c.ctl(&["reload", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("generation 2 serving"));
    // The roll's progress came on stderr while it went.
    let progress = String::from_utf8_lossy(&out.stderr);
    assert!(
        progress.contains("reloading to generation 2: 0/1 replaced")
            && progress.contains("reloading to generation 2: 1/1 replaced"),
        "{progress}"
    );
    let missing = c.dir.join("nothing-here.sock");
    let out = std::process::Command::new(CORRAL)
        .args(["reload", "demo", "--control"])
        .arg(&missing)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "not running = 3");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no corral is running there"));
}

#[test]
fn a_changed_worker_count_is_applied_by_the_reload() {
    let c = Corral::start(&config(2, ""));
    c.wait_ready(2, 1);
    c.write_config(&config(4, ""));
    assert!(c.ctl(&["reload", "demo"]).status.success());
    let s = c.status();
    assert_eq!(
        (s["desired"].as_u64(), s["ready"].as_u64()),
        (Some(4), Some(4))
    );
    c.write_config(&config(1, ""));
    assert!(c.ctl(&["reload", "demo"]).status.success());
    let s = c.status();
    assert_eq!(s["workers"].as_array().unwrap().len(), 1, "{s}");
    assert_eq!(s["workers"][0]["slot"], 0);
}

#[test]
fn sigterm_stops_gracefully_and_exits_0() {
    let mut c = Corral::start(&config(3, ""));
    c.wait_ready(3, 1);
    let pids = c.pids("ready");
    c.signal(Signal::SIGTERM);
    let st = c.wait_exit(SECS(15)).expect("corral exits");
    assert_eq!(st.code(), Some(0));
    for pid in pids {
        assert!(wait_gone(pid as i32, SECS(1)));
    }
    assert!(!c.control.exists(), "the control socket is removed");
}

#[test]
fn a_second_sigterm_kills_at_once() {
    let mut c = Corral::start(&config(2, r#"WORKER_IGNORE_TERM = "1""#).replace("5s", "60s"));
    c.wait_ready(2, 1);
    c.signal(Signal::SIGTERM);
    c.wait_for("stopping, 2 left", SECS(5));
    c.signal(Signal::SIGTERM);
    let st = c
        .wait_exit(SECS(10))
        .expect("exits well before the 60s stop timeout");
    assert_eq!(st.code(), Some(0));
    assert!(c
        .lines()
        .iter()
        .any(|l| l.contains("killing every worker now")));
}

#[test]
fn sigkill_of_the_supervisor_leaves_no_worker_alive() {
    let mut c = Corral::start(&config(3, ""));
    c.wait_ready(3, 1);
    let pids = c.pids("ready");
    c.signal(Signal::SIGKILL);
    c.wait_exit(SECS(10)).expect("corral died");
    for pid in pids {
        assert!(
            wait_gone(pid as i32, SECS(5)),
            "worker {pid} outlived its supervisor"
        );
    }
}

#[test]
fn worker_output_is_relayed_line_by_line_with_app_and_slot() {
    let c = Corral::start(&config(
        2,
        r#"WORKER_SAY = "hello from a worker", WORKER_SAY_ERR = "oops on stderr""#,
    ));
    c.wait_ready(2, 1);
    c.wait_for("demo[0]: hello from a worker", SECS(5));
    c.wait_for("demo[1]: hello from a worker", SECS(5));
    c.wait_for("demo[1]: oops on stderr", SECS(5));
}

#[test]
fn status_reports_every_field() {
    let c = Corral::start(&config(2, r#"WORKER_STATUS = "serving""#));
    c.wait_ready(2, 1);
    c.wait_for("2/2 ready", SECS(5));
    let s = c.status();
    assert_eq!(s["app"], "demo");
    assert_eq!(s["state"], "running");
    assert_eq!(
        s["version"],
        env!("CARGO_PKG_VERSION"),
        "the supervisor's own"
    );
    for (i, w) in s["workers"].as_array().unwrap().iter().enumerate() {
        assert_eq!(w["slot"], i as u64);
        assert!(w["pid"].as_i64().unwrap() > 1);
        assert_eq!(w["state"], "ready");
        assert_eq!(w["generation"], 1);
        assert_eq!(w["restarts"], 0);
        assert!(w["uptime_s"].as_f64().unwrap() >= 0.0);
        assert!(w["rss_bytes"].as_u64().unwrap() > 1_000_000, "{w}");
        let cpu = w["cpu_percent"].as_f64().unwrap();
        assert!((0.0..=200.0).contains(&cpu), "{w}");
        assert_eq!(w["status"], "serving");
    }
    let out = c.ctl(&["status", "demo"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SLOT") && text.contains("serving"), "{text}");
    assert!(
        text.starts_with("demo (") && text.contains("running · generation 1 · 2/2 ready"),
        "{text}"
    );
    let version = format!("· corral {}\n", env!("CARGO_PKG_VERSION"));
    assert!(
        text.lines().next().unwrap().ends_with(version.trim_end()),
        "{text}"
    );
    for column in [
        "PID", "STATE", "GEN", "RESTARTS", "UPTIME", "CPU", "RSS", "STATUS",
    ] {
        assert!(text.contains(column), "no {column} column: {text}");
    }
    assert!(!text.contains('\x1b'), "no colour when not on a terminal");
}

#[test]
fn check_reports_every_error_with_line_and_column() {
    let dir = scratch_dir();
    let bad = dir.join("bad.toml");
    std::fs::write(&bad, "workers = \"many\"\ncomand = [\"x\"]\n").unwrap();
    let good = dir.join("good.toml");
    std::fs::write(&good, "command = [\"x\"]\n").unwrap();
    let out = std::process::Command::new(CORRAL)
        .arg("check")
        .arg(&good)
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    let b = bad.display().to_string();
    assert!(err.contains(&format!("{b}:1:11")), "{err}");
    assert!(
        err.contains(&format!("{b}:2:1")) && err.contains("did you mean `command`"),
        "{err}"
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("good.toml: ok"));
    let out = std::process::Command::new(CORRAL)
        .arg("check")
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(out.stderr.is_empty(), "{out:?}");

    // Valid, but a reload cannot be protected: said plainly, and still exit 0.
    let exec = dir.join("exec.toml");
    std::fs::write(&exec, "command = [\"x\"]\nreadiness.mode = \"exec\"\n").unwrap();
    let out = std::process::Command::new(CORRAL)
        .arg("check")
        .arg(&exec)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{}: warning: readiness.mode = \"exec\"",
            exec.display()
        )) && err.contains("cannot be refused when they fail"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

fn node_ipc(env: &str, timeout: &str) -> String {
    format!(
        r#"
command = ["node", "{{worker_ipc}}"]
workers = 2
environment = {{ {env} }}
[[listen]]
name = "http"
address = "127.0.0.1:{{port}}"
[readiness]
mode = "node-ipc"
timeout = "{timeout}"
[stop]
message = "shutdown"
timeout = "10s"
[restart]
delay = "5s"
"#
    )
}

#[test]
fn node_ipc_workers_say_ready_with_process_send_and_stop_on_the_message() {
    let mut c = Corral::start(&node_ipc(r#"WORKER_TAG = "v1""#, "10s"));
    c.wait_ready(2, 1);
    for w in answers_from_n_at_once_node(c.port) {
        assert_eq!(w["runtime"], "node-ipc");
        // Node.js found the channel; LISTEN_FDS counts only the listeners.
        assert_eq!(w["has_channel"], true);
        assert_eq!(w["listen_fds"], "1");
    }
    // A reload stops the old workers with the message (they ignore SIGTERM).
    c.write_config(&node_ipc(r#"WORKER_TAG = "v2""#, "10s"));
    let out = c.ctl(&["reload", "demo"]);
    assert!(out.status.success(), "{out:?}");
    c.wait_for("demo[0]: slot 0 got the shutdown message", SECS(5));
    c.wait_for("demo[1]: slot 1 got the shutdown message", SECS(5));
    assert_eq!(c.get("/").unwrap()["tag"], "v2");
    assert!(
        !c.lines().iter().any(|l| l.contains("still running")),
        "no worker needed SIGKILL"
    );
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit(SECS(8)).unwrap().code(), Some(0));
}

#[test]
fn a_node_ipc_worker_pings_its_watchdog_over_the_channel() {
    let config =
        node_ipc(r#"WORKER_WATCHDOG_SLOT = "0""#, "10s") + "[watchdog]\ntimeout = \"1s\"\n";
    let c = Corral::start(&config);
    c.wait_ready(2, 1);
    // Slot 1 never pings and is caught after 1s; slot 0 pings every 0.5s and lives on: six
    // pings are three watchdog periods.
    c.wait_for("sent no WATCHDOG=1 for 1.0s", SECS(10));
    c.wait_for("slot 0 pinged 6 times", SECS(10));
    let w0 = c.status()["workers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["slot"] == 0 && w["generation"] == 1)
        .cloned()
        .expect("slot 0's first worker is still there");
    assert_eq!(w0["state"], "ready", "{w0}");
    let silent: Vec<String> = c
        .lines()
        .into_iter()
        .filter(|l| l.contains("sent no WATCHDOG=1"))
        .collect();
    assert!(
        silent.iter().all(|l| l.contains("worker 1 ")),
        "slot 0 pinged over IPC: {silent:#?}"
    );
}

#[test]
fn a_node_ipc_worker_that_never_sends_ready_is_not_ready() {
    let c = Corral::start(&node_ipc(r#"WORKER_NEVER_READY = "1""#, "1s"));
    c.wait_for("was not ready within 1.0s", SECS(10));
    assert!(!c.lines().iter().any(|l| l.contains("2/2 ready")));
}

/// Two requests on two connections at once: node serves them concurrently, so this only
/// collects answers (which worker answers is up to the kernel).
fn answers_from_n_at_once_node(port: u16) -> Vec<serde_json::Value> {
    (0..2).map(|_| http_get(port, "/").unwrap()).collect()
}

#[test]
fn a_worker_above_max_memory_is_replaced_after_its_replacement_is_ready() {
    let c = Corral::start(
        r#"
command = ["python3", "{worker}"]
environment = { WORKER_ALLOC_MB = "80" }
[[listen]]
name = "http"
address = "127.0.0.1:{port}"
[limits]
max_memory = "50M"
"#,
    );
    let line = c.wait_for("above limits.max_memory (50 MiB): replacing it", SECS(20));
    let old = pid_in(&line) as i64;
    let exited = c.wait_for(
        &format!("pid {old} (generation 1): exited with code 0"),
        SECS(20),
    );
    // The replacement was ready before the old worker was asked to go.
    let lines = c.lines();
    let pos = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap();
    let replacing = pos("above limits.max_memory");
    let ready_new = replacing
        + lines[replacing..]
            .iter()
            .position(|l| l.contains("ready after") && !l.contains(&format!("pid {old} ")))
            .expect("the replacement got ready");
    assert!(ready_new < pos(&exited), "{lines:#?}");
    c.get("/").unwrap();
}

#[test]
fn max_memory_counts_the_whole_process_tree() {
    // The worker is small; the child it started holds 80 MiB.
    let c = Corral::start(
        r#"
command = ["python3", "{worker}"]
environment = { WORKER_CHILD_ALLOC_MB = "80" }
[[listen]]
name = "http"
address = "127.0.0.1:{port}"
[limits]
max_memory = "50M"
"#,
    );
    c.wait_for("above limits.max_memory (50 MiB): replacing it", SECS(20));
    let s = c.status();
    let w = &s["workers"][0];
    assert!(w["processes"].as_u64().unwrap() >= 2, "{w}");
}

#[test]
fn a_notify_path_too_long_for_a_unix_socket_is_an_error_at_start() {
    // The control socket's path just fits a unix socket address (107 bytes); the notify
    // socket's, two bytes longer, does not.
    let base = scratch_dir();
    let fill = 107 - base.as_os_str().len() - "/".len() - "/demo.sock".len();
    let dir = base.join("d".repeat(fill));
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(dir.join("demo.sock").as_os_str().len(), 107);
    let config = dir.join("demo.toml");
    std::fs::write(&config, "command = [\"true\"]\n").unwrap();
    let out = std::process::Command::new(CORRAL)
        .arg("run")
        .arg(&config)
        .arg("--control")
        .arg(dir.join("demo.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot create the notify socket") && err.contains("at most 107"),
        "{err}"
    );
}

/// Pids of the processes whose command line is exactly `argv`.
fn pids_of(argv: &[&str]) -> Vec<i32> {
    let want: Vec<u8> = argv
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| std::fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| c == want))
        .collect()
}

/// Waits (bounded) until exactly one process runs `argv`; its pid.
fn one_process(argv: &[&str]) -> i32 {
    let deadline = std::time::Instant::now() + SECS(10);
    loop {
        if let [pid] = pids_of(argv)[..] {
            return pid;
        }
        assert!(std::time::Instant::now() < deadline, "no single {argv:?}");
        std::thread::yield_now();
    }
}

#[test]
fn orphans_that_left_the_workers_group_go_when_corral_exits() {
    let mut c = Corral::start(&config(1, r#"WORKER_ORPHANS = "1""#));
    c.wait_ready(1, 1);
    let orphan = one_process(&["sleep", "3602"]);
    let its_child = one_process(&["sleep", "3601"]);
    // Reparented to corral, a child subreaper, not to init.
    let stat = corral::procfs::read_stat(orphan).unwrap();
    assert_eq!(stat.ppid, c.pid);
    assert_ne!(
        stat.pgrp,
        c.pids("ready")[0] as i32,
        "it left the worker's group"
    );
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit(SECS(20)).unwrap().code(), Some(0));
    assert!(wait_gone(orphan, SECS(5)), "the orphan outlived corral");
    assert!(
        wait_gone(its_child, SECS(5)),
        "the orphan's child outlived corral"
    );
}

#[test]
fn a_killed_keeper_is_replaced_and_the_new_one_does_its_job() {
    let mut c = Corral::start(&config(1, r#"WORKER_CHILD_ALLOC_MB = "1""#));
    c.wait_ready(1, 1);
    // corral's child named corral-keeper (other tests' corrals have theirs).
    let keeper = corral::procfs::all_stats()
        .into_iter()
        .filter(|s| s.ppid == c.pid)
        .map(|s| s.pid)
        .find(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|n| n == "corral-keeper\n")
        })
        .expect("corral's keeper");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(keeper), Signal::SIGKILL).unwrap();
    c.wait_for("the keeper killed by SIGKILL: starting another", SECS(10));
    // The worker's child, in its process group, must go with a SIGKILLed corral.
    let worker = c.pids("ready")[0] as i32;
    let child = corral::procfs::all_stats()
        .into_iter()
        .find(|s| s.ppid == worker)
        .expect("the worker's child")
        .pid;
    c.signal(Signal::SIGKILL);
    c.wait_exit(SECS(10));
    assert!(wait_gone(worker, SECS(5)));
    assert!(
        wait_gone(child, SECS(5)),
        "the new keeper killed the worker's group"
    );
}

/// Three workers behind a balanced listener (a socket each, connections steered by corral).
fn balanced(workers: u32, env: &str) -> String {
    config(workers, env).replace(
        "address = \"127.0.0.1:{port}\"\n",
        "address = \"127.0.0.1:{port}\"\nbalance = true\n",
    )
}

#[test]
fn a_balanced_listener_spreads_connections_evenly() {
    let c = Corral::start(&balanced(3, ""));
    c.wait_ready(3, 1);
    let mut per_worker = std::collections::BTreeMap::new();
    for _ in 0..300 {
        let w = c.get("/").unwrap();
        *per_worker.entry(w["pid"].as_i64().unwrap()).or_insert(0) += 1;
    }
    // At random among 3: about 100 each; below 50 has a chance of about 1e-10.
    assert_eq!(per_worker.len(), 3, "{per_worker:?}");
    assert!(per_worker.values().all(|&n| n >= 50), "{per_worker:?}");
    // Each worker has a socket of its own, and still finds it at fd 3.
    let mut inodes = std::collections::BTreeMap::new();
    for _ in 0..60 {
        let w = c.get("/").unwrap();
        assert_eq!(w["listen_fds"], "1");
        inodes.insert(
            w["pid"].as_i64().unwrap(),
            w["listen_inode"].as_u64().unwrap(),
        );
    }
    let distinct: std::collections::BTreeSet<_> = inodes.values().collect();
    assert_eq!(distinct.len(), 3, "{inodes:?}");
}

/// The slot that answers a client at `source`.
fn slot_from(c: &Corral, source: std::net::Ipv4Addr) -> String {
    let w = common::http_get_from(source, c.port, "/").expect("served");
    w["slot"].as_str().unwrap().to_string()
}

#[test]
fn source_balancing_keeps_each_client_on_its_slot_across_a_restart_and_a_reload() {
    let c = Corral::start(&config(3, r#"WORKER_TAG = "v1""#).replace(
        "address = \"127.0.0.1:{port}\"\n",
        "address = \"127.0.0.1:{port}\"\nbalance = \"source\"\n",
    ));
    c.wait_ready(3, 1);
    let clients: Vec<std::net::Ipv4Addr> = (2..42).map(|i| [127, 0, 0, i].into()).collect();
    let slots = |c: &Corral| -> Vec<String> { clients.iter().map(|s| slot_from(c, *s)).collect() };
    let first = slots(&c);
    let used: std::collections::BTreeSet<&String> = first.iter().collect();
    assert_eq!(used.len(), 3, "40 addresses reach every slot: {first:?}");
    assert_eq!(slots(&c), first, "a client keeps its slot");
    let status = c.status();
    assert_eq!(status["listeners"][0]["balance"], "source", "{status}");

    // A crashed worker: its clients go to the others meanwhile, and back to its
    // replacement.
    let mark = c.mark();
    let crashed = c.get("/crash").unwrap();
    let slot = crashed["slot"].as_str().unwrap().to_string();
    c.wait_for_after(mark, "3/3 ready · generation 1 ", SECS(20));
    // A round trip through the event loop: what the log says is applied by now.
    c.status();
    assert_eq!(
        slots(&c),
        first,
        "slot {slot} restarted: its clients are back"
    );

    // A rolling restart and a reload: new workers, the same slots for the same clients.
    let out = c.ctl(&["restart", "demo"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(slots(&c), first, "after corral restart");
    c.write_config(&config(3, r#"WORKER_TAG = "v2""#).replace(
        "address = \"127.0.0.1:{port}\"\n",
        "address = \"127.0.0.1:{port}\"\nbalance = \"source\"\n",
    ));
    let out = c.ctl(&["reload", "demo"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(slots(&c), first, "after a reload");
    assert_eq!(c.get("/").unwrap()["tag"], "v2");
}

#[test]
fn a_balanced_slot_waiting_out_its_restart_delay_gets_no_connections() {
    let c = Corral::start(&balanced(3, "").replace("delay = \"50ms\"", "delay = \"4s\""));
    c.wait_ready(3, 1);
    let crashed = c.get("/crash").unwrap();
    c.wait_for(
        &format!("pid {} (generation 1): exited with code 3", crashed["pid"]),
        SECS(10),
    );
    // A round trip through the event loop: what the exit changed is applied by now.
    c.status();
    // For the next 4 s slot's socket has no worker: every client is served by the others (a
    // connection sent to the slot would wait there, and be answered by the slot's next worker).
    for _ in 0..60 {
        let w = c.get("/").expect("served by another worker");
        assert_ne!(w["slot"], crashed["slot"]);
    }
}

#[test]
fn scaling_a_balanced_listener_down_and_up_under_load_fails_no_request() {
    let c = Corral::start(&balanced(4, ""));
    c.wait_ready(4, 1);
    let load = Load::start(c.port);
    c.get("/").unwrap();
    for n in ["2", "4", "1", "3"] {
        let out = c.ctl(&["scale", "demo", n]);
        assert!(out.status.success(), "{out:?}");
    }
    // The load goes on while the scaled-away workers drain and the new ones start.
    c.wait_ready(3, 1);
    load.finish_without_failures(20);
    let slots: std::collections::BTreeSet<String> = (0..60)
        .map(|_| c.get("/").unwrap()["slot"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(slots.len(), 3, "{slots:?}");
}

#[test]
fn turning_balance_on_or_off_takes_a_restart_and_a_reload_says_so() {
    let c = Corral::start(&config(2, ""));
    c.wait_ready(2, 1);
    c.write_config(&balanced(2, ""));
    let out = c.ctl(&["reload", "demo"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("listen.balance changed") && err.contains("takes a restart"),
        "{err}"
    );
    c.get("/").expect("the old workers serve on");
}

#[test]
fn a_balanced_listener_on_an_address_in_use_is_an_error_at_start() {
    // Another program of this user listens there with SO_REUSEPORT: corral must not join it.
    let taken = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    taken.set_reuse_port(true).unwrap();
    taken
        .bind(
            &"127.0.0.1:0"
                .parse::<std::net::SocketAddr>()
                .unwrap()
                .into(),
        )
        .unwrap();
    taken.listen(8).unwrap();
    let port = taken.local_addr().unwrap().as_socket().unwrap().port();
    let dir = scratch_dir();
    let config = dir.join("demo.toml");
    std::fs::write(
        &config,
        format!(
            "command = [\"true\"]\n[[listen]]\nname = \"http\"\naddress = \"127.0.0.1:{port}\"\nbalance = true\n"
        ),
    )
    .unwrap();
    // Bounded: a corral that joined the other program's group would run on.
    let out = std::process::Command::new("timeout")
        .args(["10", CORRAL, "run"])
        .arg(&config)
        .arg("--control")
        .arg(dir.join("demo.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Address already in use"),
        "{out:?}"
    );
}

#[test]
fn a_crashed_balanced_workers_queued_connections_wait_for_its_replacement() {
    let c = Corral::start(&balanced(1, r#"WORKER_READY_DELAY = "0.5""#));
    c.wait_ready(1, 1);
    let mark = c.mark();
    let crashed = c.get("/crash").unwrap()["pid"].as_i64().unwrap();
    c.wait_for_after(
        mark,
        &format!("pid {crashed} (generation 1): exited with code 3"),
        SECS(10),
    );
    // The slot has no worker now: connections queue on its socket, which it keeps for the
    // next one (were the socket gone, they would be refused: it is the only one).
    let port = c.port;
    let waiting: Vec<_> = (0..3)
        .map(|_| std::thread::spawn(move || http_get(port, "/")))
        .collect();
    for t in waiting {
        let w = t.join().unwrap().expect("served by the replacement");
        assert_ne!(w["pid"], crashed);
    }
}

#[test]
fn stray_signals_to_corral_fail_no_request_and_leave_it_running() {
    // A process group of its own: run from a terminal, the test's group may be the terminal's
    // foreground, where SIGTSTP stops corral as Ctrl-Z would.
    let c = Corral::start_with(&config(3, ""), |cmd| {
        std::os::unix::process::CommandExt::process_group(cmd, 0);
    });
    c.wait_ready(3, 1);
    let workers = c.pids("ready");
    let load = Load::start(c.port);
    c.get("/").unwrap();
    // Every signal but those that mean something to corral (corral(1) SIGNALS: a reload, a
    // stop) and the two that cannot be caught, by number as kill(1) takes it: the
    // real-time ones have no name in nix. Among them what a fault raises (SIGSEGV, SIGABRT...)
    // with no fault behind it, job control (SIGTSTP: corral is in no terminal's foreground
    // here), and 32 and 33, which glibc keeps below its SIGRTMIN() (nptl(7)).
    let meaningful = [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGQUIT,
        libc::SIGTERM,
        libc::SIGKILL,
        libc::SIGSTOP,
    ];
    let signals: Vec<i32> = (1..=libc::SIGRTMAX())
        .filter(|n| !meaningful.contains(n))
        .collect();
    assert_eq!(signals.len(), 58);
    // Twice: a signal whose first one went to a handler that set the default back (the Rust
    // runtime's for SIGSEGV and SIGBUS) would end corral the second time.
    for _ in 0..2 {
        for &sig in &signals {
            let sent = std::process::Command::new("kill")
                .arg(format!("-{sig}"))
                .arg(c.pid.to_string())
                .status()
                .unwrap();
            assert!(sent.success());
        }
    }
    c.wait_for(
        "SIGUSR1 ignored: to send it to the workers, `corral signal demo USR1`",
        SECS(5),
    );
    // SIGUSR2 upgrades in place (twice here), with the other signals arriving meanwhile.
    c.wait_for("upgraded in place from corral", SECS(10));
    c.wait_for(
        "SIGTSTP ignored: corral is not in the foreground of a terminal",
        SECS(5),
    );
    let s = c.status();
    assert_eq!(s["generation"], 1, "no signal but HUP reloads");
    assert_eq!(s["ready"], 3);
    assert_eq!(c.pids("ready"), workers, "every worker is the one it was");
    assert_ne!(proc_state(c.pid), Some('T'), "corral is not stopped");
    for _ in 0..20 {
        c.get("/").expect("served after the signals");
    }
    load.finish_without_failures(10);
    // What corral ignores, its workers do not: they start with every signal at its default
    // (the Python worker ignores SIGPIPE and SIGXFSZ itself).
    for w in workers {
        let ignored = ignored_signals(w as i32);
        assert!(
            ignored
                .iter()
                .all(|&n| n == libc::SIGPIPE || n == libc::SIGXFSZ),
            "worker {w} ignores {ignored:?}"
        );
    }
}

/// Runs corral on a pseudo-terminal of its own, as in a terminal window: script(1) runs `line`
/// (made from corral's command line) with bash on a new terminal, whose session it leads. The
/// typescript goes to script's stderr, which the harness reads as corral's log; `$PPID` in
/// `line` is script's pid, so `2>/proc/$PPID/fd/2` sends corral's log there directly (for a
/// corral that outlives the terminal).
fn in_a_terminal(cmd: &mut std::process::Command, line: impl FnOnce(&str) -> String) {
    let corral: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut script = std::process::Command::new("script");
    script
        .args(["-qfec", &line(&corral.join(" ")), "/dev/stderr"])
        .env("SHELL", "/bin/bash");
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => script.env(k, v),
            None => script.env_remove(k),
        };
    }
    *cmd = script;
}

/// corral's own pid, its workers', and a guard that kills corral if the test fails.
fn corral_and_workers(c: &Corral) -> (i32, Vec<i32>, KillOnDrop) {
    let status = c.status();
    let corral = status["pid"].as_i64().unwrap() as i32;
    let workers = status["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["pid"].as_i64().unwrap() as i32)
        .collect();
    (corral, workers, KillOnDrop(corral))
}

fn send(pid: i32, sig: Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).unwrap();
}

/// Stops a corral that outlived its terminal, and checks it stopped gracefully.
fn stop_gracefully(c: &Corral, corral: i32) {
    send(corral, Signal::SIGTERM);
    assert!(wait_gone(corral, SECS(20)), "corral stopped");
    assert!(!c.control.exists(), "corral stopped gracefully");
}

#[test]
fn a_closed_terminal_stops_a_foreground_corral_gracefully() {
    // Killing script closes the terminal: the kernel sends SIGHUP to corral, which leads the
    // terminal's session, as at a closed window (setsid(2)).
    let c = Corral::start_with(&config(2, ""), |cmd| {
        in_a_terminal(cmd, |corral| format!("exec {corral}"))
    });
    c.wait_ready(2, 1);
    let (corral, workers, _guard) = corral_and_workers(&c);
    c.signal(Signal::SIGKILL); // script: the terminal goes away
    assert!(wait_gone(corral, SECS(20)), "corral stopped");
    for w in workers {
        assert!(wait_gone(w, SECS(5)));
    }
    // A graceful stop removes the control socket; a killed corral would leave it.
    assert!(!c.control.exists(), "corral stopped gracefully");
    assert!(
        !c.lines().iter().any(|l| l.contains("reload:")),
        "not taken for a reload"
    );
}

#[test]
fn a_sighup_after_the_terminal_went_without_one_reloads() {
    // A background job (`set -m`: a process group of its own) of a shell that then exits: the
    // job loses the terminal and gets no SIGHUP (only the foreground does, setsid(2)). The
    // shell waits on a FIFO until corral has started with the terminal.
    let dir = scratch_dir();
    let go = dir.join("go");
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let fifo = go.display().to_string();
    let mut c = Corral::start_with(&config(2, ""), |cmd| {
        in_a_terminal(cmd, |corral| {
            format!("set -m; {corral} </dev/null >/dev/null 2>/proc/$PPID/fd/2 & read -r _ <{fifo}")
        })
    });
    c.wait_ready(2, 1);
    let (corral, _, _guard) = corral_and_workers(&c);
    let tty = std::fs::read_to_string(format!("/proc/{corral}/stat")).unwrap();
    let tty_nr = tty.rsplit_once(')').unwrap().1.split_whitespace().nth(4);
    assert_ne!(
        tty_nr,
        Some("0"),
        "corral started with a controlling terminal"
    );
    // The shell reads its line and exits; script then closes the terminal.
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&go)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"go\n"))
        .expect("the shell waits on the FIFO");
    assert!(
        c.wait_exit(SECS(10)).is_some(),
        "the shell and script exited"
    );
    c.wait_for(
        "the terminal went away without a SIGHUP: corral runs on, and a SIGHUP still means reload",
        SECS(10),
    );
    let mark = c.mark();
    send(corral, Signal::SIGHUP);
    c.wait_for_after(mark, "reload: reading", SECS(5));
    c.wait_ready(2, 2);
    assert_eq!(c.status()["generation"], 2);
    stop_gracefully(&c, corral);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn under_nohup_a_closed_terminal_is_ignored_and_a_later_sighup_reloads() {
    // nohup(1) starts corral with SIGHUP ignored, as the terminal's session leader: the kernel's
    // SIGHUP at the hangup comes to corral itself.
    let c = Corral::start_with(&config(2, ""), |cmd| {
        in_a_terminal(cmd, |corral| {
            format!("exec nohup {corral} </dev/null >/dev/null 2>/proc/$PPID/fd/2")
        })
    });
    c.wait_ready(2, 1);
    let (corral, workers, _guard) = corral_and_workers(&c);
    c.signal(Signal::SIGKILL); // script: the terminal goes away
    c.wait_for(
        "the terminal went away (SIGHUP): ignored, as corral was started with SIGHUP ignored \
         (nohup); a later SIGHUP means reload",
        SECS(10),
    );
    let s = c.status();
    assert_eq!(s["ready"], 2, "the app runs on");
    assert_eq!(
        c.pids("ready"),
        workers.iter().map(|&w| w as i64).collect::<Vec<_>>()
    );
    let mark = c.mark();
    send(corral, Signal::SIGHUP);
    c.wait_for_after(mark, "reload: reading", SECS(5));
    c.wait_ready(2, 2);
    stop_gracefully(&c, corral);
}

#[test]
fn a_background_corral_writing_to_a_tostop_terminal_is_not_stopped() {
    // With TOSTOP (termios(3)) a background job's write to its terminal raises SIGTTOU, which
    // stops it by default (credentials(7)); corral's log goes to the terminal here.
    let c = Corral::start_with(&config(2, ""), |cmd| {
        in_a_terminal(cmd, |corral| {
            format!("stty tostop; set -m; {corral} </dev/null >/dev/null & wait")
        })
    });
    c.wait_ready(2, 1);
    let (corral, _, _guard) = corral_and_workers(&c);
    assert_ne!(proc_state(corral), Some('T'));
    stop_gracefully(&c, corral);
}

#[test]
fn sigtstp_stops_a_corral_in_the_foreground_of_its_terminal_until_sigcont() {
    // What Ctrl-Z sends to the terminal's foreground process group. corral's log goes straight
    // to the test: script(1) stops itself when its child stops, and would hold the last lines.
    let c = Corral::start_with(&config(2, ""), |cmd| {
        in_a_terminal(cmd, |corral| format!("exec {corral} 2>/proc/$PPID/fd/2"))
    });
    c.wait_ready(2, 1);
    let (corral, _, _guard) = corral_and_workers(&c);
    send(corral, Signal::SIGTSTP);
    c.wait_for(
        "SIGTSTP in the foreground of the terminal: stopping until SIGCONT",
        SECS(5),
    );
    assert!(wait_state(corral, 'T', SECS(5)), "corral is stopped");
    // The workers, in process groups of their own, go on serving.
    c.get("/").expect("served while corral is stopped");
    send(corral, Signal::SIGCONT);
    assert_eq!(c.status()["ready"], 2, "corral answers again");
    stop_gracefully(&c, corral);
}

#[test]
fn a_listener_a_worker_shut_down_is_put_back_in_listen() {
    let c = Corral::start(&config(2, ""));
    c.wait_ready(2, 1);
    let mark = c.mark();
    // shutdown(2) acts on the shared socket: no worker can accept any more.
    c.get("/shutdown-listener").unwrap();
    c.wait_for_after(
        mark,
        "listener `http` was shut down by a worker: listening again",
        SECS(10),
    );
    for _ in 0..20 {
        c.get("/").expect("served again, without a reload");
    }
    assert_eq!(c.status()["generation"], 1);
}

/// (soft, hard) "Max open files" of a process, from /proc/PID/limits.
fn nofile(pid: i32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let f: Vec<&str> = line.split_whitespace().collect();
    (f[3].to_string(), f[4].to_string())
}

#[test]
fn corral_raises_its_own_open_file_limit_and_workers_keep_theirs() {
    let c = Corral::start(&config(1, ""));
    c.wait_ready(1, 1);
    let mine = nofile(std::process::id() as i32);
    let worker = c.pids("ready")[0] as i32;
    assert_eq!(
        nofile(worker),
        mine,
        "the worker has what corral was started with"
    );
    let (soft, hard) = nofile(c.pid);
    let want = corral::nofile::wanted(0).min(hard.parse().unwrap_or(u64::MAX));
    assert!(
        soft.parse::<u64>().unwrap() >= want,
        "corral's soft limit {soft}, hard {hard}"
    );
}

#[test]
fn a_balanced_listener_raises_corrals_limit_for_a_socket_per_worker() {
    // 1024 workers with one balanced listener: 5 files each, twice over in a reload, and 256
    // of corral's own make 10496, rounded up to 16384, within the hard limit.
    let (_, hard) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
    if hard <= 10496 {
        skipped(&format!(
            "the hard open-file limit here, {hard}, is below 10496"
        ));
        return;
    }
    let c = Corral::start_with(&balanced(1, ""), with_nofile(1024, hard));
    c.wait_ready(1, 1);
    let want = 16384.min(hard);
    assert_eq!(nofile(c.pid), (want.to_string(), hard.to_string()));
    let worker = c.pids("ready")[0] as i32;
    assert_eq!(
        nofile(worker),
        ("1024".to_string(), hard.to_string()),
        "the worker keeps the limit corral was started with"
    );
}

#[test]
fn a_limit_too_low_for_the_workers_is_said_at_start_reload_and_scale() {
    // A balanced listener: 5 files per worker, twice over, and 256 of corral's own. 270 leaves
    // room for 1 worker (266), not for 2 (276) or 3 (286).
    let c = Corral::start_with(&balanced(1, ""), with_nofile(270, 270));
    c.wait_ready(1, 1);
    assert!(
        !c.lines().iter().any(|l| l.contains("may need")),
        "{:#?}",
        c.lines()
    );
    c.write_config(&balanced(3, ""));
    let mark = c.mark();
    let out = c.ctl(&["reload", "demo"]);
    assert!(out.status.success(), "{out:?}");
    let warning = c.wait_for_after(mark, "may need", SECS(5));
    assert!(
        warning.contains("3 worker(s) may need 286 open files"),
        "{warning}"
    );
    assert!(
        warning.contains("its limit is 270 (hard limit 270)"),
        "{warning}"
    );
    assert!(warning.contains("LimitNOFILE="), "{warning}");
    let mark = c.mark();
    let out = c.ctl(&["scale", "demo", "5"]);
    assert!(out.status.success(), "{out:?}");
    let warning = c.wait_for_after(mark, "may need", SECS(5));
    assert!(
        warning.contains("5 worker(s) may need 306 open files"),
        "{warning}"
    );
    drop(c);

    let c = Corral::start_with(&balanced(2, ""), with_nofile(270, 270));
    let warning = c.wait_for("may need", SECS(5));
    assert!(
        warning.contains("warning: 2 worker(s) may need 276 open files"),
        "{warning}"
    );
}

/// A config of at most 1 MiB with over 100k errors, every line of `[environment]` a type error
/// (`V0=[0]`, ..., `Va=[0]`, `Vb=[1]`, ..., names in hexadecimal to fit 100k), and how many
/// errors it has.
fn config_with_100k_errors() -> (String, usize) {
    let mut text = String::from("command = [\"x\"]\n[environment]\n");
    let mut n = 0;
    loop {
        let line = format!("V{n:x}=[{}]\n", n % 10);
        if text.len() + line.len() > 1 << 20 {
            assert!(n > 100_000, "{n} errors");
            return (text, n);
        }
        text += &line;
        n += 1;
    }
}

/// The same errors on one line of at most 1 MiB, in an inline table.
fn one_line_of_errors() -> String {
    let mut text = String::from("command = [\"x\"]\nenvironment = { V0=[0]");
    let mut n = 1;
    loop {
        let entry = format!(", V{n:x}=[{}]", n % 10);
        if text.len() + entry.len() + " }\n".len() > 1 << 20 {
            return text + " }\n";
        }
        text += &entry;
        n += 1;
    }
}

#[test]
fn a_huge_broken_config_is_refused_while_corral_answers_meanwhile() {
    let c = Corral::start(&config(2, ""));
    c.wait_ready(2, 1);
    let (text, errors) = config_with_100k_errors();
    std::fs::write(&c.config, text).unwrap();
    let control = c.control.clone();
    let reload = std::thread::spawn(move || {
        let out = std::process::Command::new(CORRAL)
            .args(["reload", "demo", "--control"])
            .arg(&control)
            .output()
            .unwrap();
        (out, std::time::Instant::now())
    });
    // While the file is read and checked (off the event loop; most of a second in a debug
    // build), corral answers.
    let mark = c.mark();
    c.wait_for_after(mark, "reload: reading", SECS(10));
    let out = c.ctl(&["status", "demo", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let answered = std::time::Instant::now();
    let still_reading = !c.lines()[mark..]
        .iter()
        .any(|l| l.contains("reload refused"));
    let (out, refused_at) = reload.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    // The list is capped, and the rest counted: all of them.
    let more = format!("... and {} more errors", thousands(errors - 100));
    assert!(
        err.contains(&more),
        "{more:?} in {}",
        &err[..err.len().min(500)]
    );
    assert!(err.lines().count() < 120, "{} lines", err.lines().count());
    assert!(
        still_reading && answered < refused_at,
        "status answered while the reload was being read"
    );
    assert_eq!(c.status()["generation"], 1);
    c.get("/").unwrap();
}

/// `n` as corral writes a count: 105423 is "105,423".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A refused reload gives back the memory reading the file took: 1 MiB of errors, a line each
/// or all on one line, leaves corral within a few MiB of where it was (it used to keep 50 and
/// 100 MB for good).
#[test]
fn a_refused_huge_config_leaves_corral_at_its_memory_baseline() {
    const MIB: u64 = 1 << 20;
    let c = Corral::start(&config(2, ""));
    c.wait_ready(2, 1);
    let good = std::fs::read(&c.config).unwrap();
    let baseline = vm(c.pid, "VmRSS");
    let (lines, _) = config_with_100k_errors();
    for (how, text) in [
        ("a line each", lines),
        ("on one line", one_line_of_errors()),
    ] {
        std::fs::write(&c.config, text).unwrap();
        let out = c.ctl(&["reload", "demo"]);
        assert_eq!(out.status.code(), Some(1), "{how}: {out:?}");
        let rss = vm(c.pid, "VmRSS");
        assert!(
            rss < baseline + 4 * MIB,
            "errors {how}: corral's RSS went from {} KiB to {} KiB",
            baseline / 1024,
            rss / 1024
        );
    }
    // And a good reload after them works as ever.
    std::fs::write(&c.config, good).unwrap();
    let out = c.ctl(&["reload", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(vm(c.pid, "VmRSS") < baseline + 4 * MIB);
    c.get("/").unwrap();
}

/// `template` made slow to read: a `restart.stop_exit_codes` of about 512 KiB, which the
/// template's `[restart]`, its last section, takes (most of a second to read in a debug build).
fn slow_to_read(template: &str) -> String {
    assert!(
        template.trim_end().ends_with("delay = \"50ms\""),
        "{template}"
    );
    let mut text = template.to_string() + "stop_exit_codes = [200";
    while text.len() < 512 * 1024 {
        text += ", 200";
    }
    text + "]\n"
}

/// `corral reload` from a thread, bounded in time, as a person or a deploy script runs it.
fn reload_in_background(c: &Corral) -> std::thread::JoinHandle<std::process::Output> {
    let control = c.control.clone();
    std::thread::spawn(move || {
        std::process::Command::new("timeout")
            .args(["60", CORRAL, "reload", "demo", "--control"])
            .arg(&control)
            .output()
            .unwrap()
    })
}

/// The lines of corral's log after `mark` that contain `needle`.
fn count_after(c: &Corral, mark: usize, needle: &str) -> usize {
    c.lines()[mark..]
        .iter()
        .filter(|l| l.contains(needle))
        .count()
}

/// Reloads asked for at once, with a config that takes a while to read, share readings and
/// rolls: each client gets the answer of the roll it waited for, after two readings and two
/// rolls, not one of each per client (twenty clients took 73s, in a debug build).
#[test]
fn concurrent_reloads_share_readings_and_rolls_and_each_is_answered() {
    const CLIENTS: usize = 10;
    let c = Corral::start(&config(2, ""));
    c.wait_ready(2, 1);
    c.write_config(&slow_to_read(&config(2, "")));
    let mark = c.mark();
    let clients: Vec<_> = (0..CLIENTS).map(|_| reload_in_background(&c)).collect();
    for client in clients {
        let out = client.join().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(said.contains("serving: 2 worker(s) replaced"), "{out:?}");
    }
    // The first reading, and one for all who asked during it; a client slow to start may
    // have come during the second.
    let readings = count_after(&c, mark, "reload: reading");
    let rolls = count_after(&c, mark, "reload: replacing");
    assert!(
        readings <= 3 && rolls <= 3,
        "{CLIENTS} reloads at once: {readings} readings, {rolls} rolls"
    );
    let status = c.status();
    assert_eq!(status["ready"], 2, "{status}");
    assert_eq!(status["generation"], 1 + rolls, "{status}");
}

/// A reload whose config is being read when corral is told to stop, and one waiting for the
/// next reading, are each answered that corral is stopping (they used to find the connection
/// closed without an answer).
#[test]
fn reloads_waiting_when_corral_stops_are_answered() {
    let mut c = Corral::start(&config(2, ""));
    c.wait_ready(2, 1);
    c.write_config(&slow_to_read(&config(2, "")));
    let mark = c.mark();
    let reading = reload_in_background(&c);
    c.wait_for_after(mark, "reload: reading", SECS(10));
    let waiting = reload_in_background(&c);
    c.wait_for_after(mark, "this reload reads it again after that", SECS(10));
    c.signal(Signal::SIGTERM);
    for client in [reading, waiting] {
        let out = client.join().unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("corral is stopping"), "{out:?}");
    }
    let exit = c.wait_exit(SECS(20)).expect("corral exits");
    assert_eq!(exit.code(), Some(0));
}

/// A reload reading its config from a file system that hangs does not keep corral from
/// stopping: the client is answered, and corral exits without waiting for the reading (which
/// would never end).
#[test]
fn a_reload_stuck_on_a_hung_file_system_does_not_hold_up_the_stop() {
    let fs = match HungFs::mount() {
        Ok(fs) => fs,
        Err(why) => return skipped(&why),
    };
    let mut c = Corral::start(&config(1, ""));
    c.wait_ready(1, 1);
    std::fs::remove_file(&c.config).unwrap();
    std::os::unix::fs::symlink(fs.dir.join("demo.toml"), &c.config).unwrap();
    let mark = c.mark();
    let stuck = reload_in_background(&c);
    c.wait_for_after(mark, "reload: reading", SECS(10));
    // Still reading: corral answers meanwhile.
    assert_eq!(c.status()["ready"], 1);
    c.signal(Signal::SIGTERM);
    let out = stuck.join().unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("corral is stopping"),
        "{out:?}"
    );
    let exit = c.wait_exit(SECS(20));
    assert_eq!(exit.and_then(|e| e.code()), Some(0), "corral exited");
}

#[test]
fn a_fifo_or_dev_zero_as_the_config_is_refused_at_once() {
    let c = Corral::start(&config(1, ""));
    c.wait_ready(1, 1);
    std::fs::remove_file(&c.config).unwrap();
    nix::unistd::mkfifo(&c.config, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    // Bounded: a reload stuck on the FIFO would hang here.
    let out = std::process::Command::new("timeout")
        .args(["10", CORRAL, "reload", "demo", "--control"])
        .arg(&c.control)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a FIFO, not a regular file"),
        "{out:?}"
    );
    std::fs::remove_file(&c.config).unwrap();
    std::os::unix::fs::symlink("/dev/zero", &c.config).unwrap();
    let out = std::process::Command::new("timeout")
        .args(["10", CORRAL, "reload", "demo", "--control"])
        .arg(&c.control)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("a character device"),
        "{out:?}"
    );
    assert_eq!(c.status()["ready"], 1);
}

/// `environment_file` end to end: the workers see the file's values; a changed file is taken
/// by a reload under load without a failed request; a malformed one refuses the reload with
/// FILE:LINE and the old workers serve on with the old value; and no value ever shows in
/// corral's answers or its log.
#[test]
fn environment_files_are_reread_at_each_reload_and_their_values_never_shown() {
    const V1: &str = "s3cret-v1-7f3a9c";
    const V2: &str = "s3cret-v2-51be04";
    const V3: &str = "s3cret-v3-e88d12";
    let files = scratch_dir();
    let env_file = files.join("api.env");
    std::fs::write(
        &env_file,
        format!("# the app's secrets\nWORKER_TAG=\"{V1}\"\n"),
    )
    .unwrap();
    // The optional file is missing: no error.
    let template = config(3, r#"WORKER_READY_DELAY = "0.3""#).replacen(
        "[[listen]]",
        &format!(
            "environment_file = [\"{}\", \"-{}\"]\n\n[[listen]]",
            env_file.display(),
            files.join("api.local.env").display()
        ),
        1,
    );
    let c = Corral::start(&template);
    c.wait_ready(3, 1);
    for _ in 0..10 {
        let w = c.get("/").unwrap();
        assert_eq!(w["tag"], V1);
        assert!(w["env"].as_array().unwrap().contains(&"WORKER_TAG".into()));
    }

    // The file changes; a reload under load takes it, and fails no request.
    let load = Load::start(c.port);
    c.get("/").unwrap();
    std::fs::write(&env_file, format!("WORKER_TAG='{V2}'\n")).unwrap();
    let out = c.ctl(&["reload", "demo"]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    load.finish_without_failures(20);
    let said = format!("{out:?}");
    for _ in 0..30 {
        let w = c.get("/").unwrap();
        assert_eq!(w["tag"], V2);
        assert_eq!(w["generation"], "2");
    }

    // A malformed file refuses the reload, naming the file and the line but not the value.
    std::fs::write(&env_file, format!("# rotated\nWORKER_TAG={V3}\n{V3}\n")).unwrap();
    let before = c.pids("ready");
    let out = c.ctl(&["reload", "demo"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(
        err.contains(&format!("{}:3: no '=' on this line", env_file.display())),
        "{err}"
    );
    // SIGHUP: refused the same way.
    let mark = c.mark();
    c.signal(Signal::SIGHUP);
    c.wait_for_after(mark, "reload refused, nothing changed", SECS(10));
    // `corral check` says the same.
    let check = std::process::Command::new(CORRAL)
        .arg("check")
        .arg(&c.config)
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(1), "{check:?}");
    let check_err = String::from_utf8_lossy(&check.stderr).to_string();
    assert!(
        check_err.contains(&format!("{}:3: ", env_file.display())),
        "{check_err}"
    );
    // The old workers serve on, with the old value.
    assert_eq!(c.status()["generation"], 2);
    assert_eq!(c.pids("ready"), before);
    for _ in 0..10 {
        assert_eq!(c.get("/").unwrap()["tag"], V2);
    }

    // Nothing corral said shows a value: not its answers, not its status, not its log.
    let table = c.ctl(&["status", "demo"]);
    let json = c.ctl(&["status", "demo", "--json"]);
    let shown = [
        said,
        err,
        check_err,
        format!("{check:?}"),
        format!("{table:?}"),
        format!("{json:?}"),
        c.lines().join("\n"),
    ];
    for text in &shown {
        for secret in [V1, V2, V3, "s3cret"] {
            assert!(!text.contains(secret), "{secret} shown in:\n{text}");
        }
    }
    std::fs::remove_dir_all(&files).unwrap();
}

#[test]
fn a_relative_control_path_reaches_workers_that_run_in_another_directory() {
    // `--control demo.sock` from corral's directory; the worker runs in / and finds the notify
    // socket beside the control socket all the same.
    let dir = scratch_dir();
    let port = free_port();
    let template = config(1, "").replace("command = [", "directory = \"/\"\ncommand = [");
    std::fs::write(dir.join("demo.toml"), render(&template, port)).unwrap();
    let mut child = std::process::Command::new(CORRAL)
        .current_dir(&dir)
        .args(["run", "demo.toml", "--control", "demo.sock"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let deadline = std::time::Instant::now() + SECS(20);
    let mut seen = Vec::new();
    let ready = loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if line.contains("1/1 ready") => break true,
            Ok(line) => seen.push(line),
            Err(_) => break false,
        }
    };
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        Signal::SIGTERM,
    );
    let _ = child.wait();
    assert!(ready, "never ready: {seen:#?}");
}
