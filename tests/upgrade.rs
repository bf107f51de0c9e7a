//! `corral upgrade`: the supervisor re-executes the binary now at its path, keeping its pid,
//! its workers and its sockets. Each test runs corral from a copy of the binary in its own
//! directory, and installs a "newer" one there as a package would (a new file renamed over the
//! old): the same build, stamped with another version (src/version.rs).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Three workers behind one TCP listener; `{env}` adds worker environment, and `more` config.
fn config(env: &str, more: &str) -> String {
    format!(
        r#"
command = ["python3", "{{worker}}"]
workers = 3
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
{more}
"#
    )
}

/// The build's bytes with its version stamp changed to `version`.
fn stamped(version: &str) -> Vec<u8> {
    common::stamped(std::fs::read(CORRAL).unwrap(), version)
}

/// Installs `bytes` at `path` as a package manager does: a new file renamed over the old one
/// (the running binary's file stays, unlinked).
fn install(path: &Path, bytes: &[u8], mode: u32) {
    let new = path.with_extension("new");
    // Written by a child of its own: a file open for writing cannot be executed (ETXTBSY), and
    // a process the test's other threads fork meanwhile would hold this process's descriptor
    // until its own exec.
    let mut cat = Command::new("sh")
        .args(["-c", "cat > \"$1\"", "sh"])
        .arg(&new)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut cat.stdin.take().unwrap(), bytes).unwrap();
    assert!(cat.wait().unwrap().success());
    std::fs::set_permissions(&new, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&new, path).unwrap();
}

/// corral running from its own copy of the binary, `<scratch>/bin/corral`.
fn start(template: &str) -> (Corral, PathBuf) {
    start_env(template, &[])
}

fn start_env(template: &str, env: &[(&str, &str)]) -> (Corral, PathBuf) {
    let bin = scratch_dir().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("corral");
    install(&exe, &std::fs::read(CORRAL).unwrap(), 0o755);
    let e = exe.clone();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let c = Corral::start_with(template, move |cmd| {
        let args: Vec<_> = cmd.get_args().map(|a| a.to_owned()).collect();
        let mut new = Command::new(&e);
        new.args(args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("CORRAL_LOG")
            .envs(env);
        *cmd = new;
    });
    (c, exe)
}

fn upgrade(c: &Corral) -> std::process::Output {
    c.ctl(&["upgrade", "demo"])
}

#[test]
fn an_upgrade_under_load_keeps_every_worker_and_fails_no_request() {
    let (c, exe) = start(&config(
        "WORKER_WATCHDOG = \"1\"",
        "[watchdog]\ntimeout = \"1s\"",
    ));
    c.wait_ready(3, 1);
    let before = c.status();
    let workers = c.pids("ready");
    install(&exe, &stamped("9.8.7-upgraded"), 0o755);

    let load = Load::start(c.port);
    // Wait for the load to be under way before upgrading.
    let t = Instant::now();
    while c.get("/").is_err() && t.elapsed() < SECS(5) {}
    let out = upgrade(&c);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "upgrade failed: {said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains(&format!(
            "upgraded in place from corral {} to 9.8.7-upgraded",
            before["version"].as_str().unwrap()
        )),
        "{said}"
    );
    // Load across the upgrade and a few watchdog periods after it: a worker whose WATCHDOG=1
    // went unheard would be killed as hung.
    let mark = c.mark();
    std::thread::sleep(SECS(3));
    load.finish_without_failures(50);

    let after = c.status();
    assert_eq!(
        after["pid"], before["pid"],
        "the supervisor's pid is unchanged"
    );
    assert_eq!(after["pid"].as_i64(), Some(c.pid as i64));
    assert_eq!(c.pids("ready"), workers, "every worker is the one it was");
    assert_eq!(after["restarts"], 0, "no worker was restarted: {after}");
    assert_eq!(after["version"], "9.8.7-upgraded");
    assert_eq!(after["upgraded"]["from"], before["version"]);
    assert_eq!(after["upgraded"]["count"], 1);
    assert!(
        !c.lines()[mark..].iter().any(|l| l.contains("watchdog")),
        "no watchdog timeout after the upgrade: {:?}",
        &c.lines()[mark..]
    );
    let table = c.ctl(&["status", "demo"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("corral 9.8.7-upgraded · upgraded in place"),
        "{table}"
    );

    // The workers' output is still relayed, and the new image hears and handles a crash.
    let mark = c.mark();
    let out = c.ctl(&["signal", "demo", "USR1", "--worker", "1"]);
    assert!(out.status.success());
    c.wait_for_after(mark, "slot 1 got SIGUSR1", SECS(5));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(workers[0] as i32),
        Signal::SIGKILL,
    )
    .unwrap();
    c.wait_for_after(mark, "ready after", SECS(10));
    c.wait_for_after(mark, "3/3 ready · generation 1", SECS(10));
    let now = c.pids("ready");
    assert_ne!(now[0], workers[0], "slot 0 has a new worker");
    assert_eq!(&now[1..], &workers[1..]);

    // A second upgrade, back to the build's own version, counts as one more.
    install(&exe, &std::fs::read(CORRAL).unwrap(), 0o755);
    assert!(upgrade(&c).status.success());
    let last = c.status();
    assert_eq!(last["upgraded"]["count"], 2);
    assert_eq!(last["upgraded"]["from"], "9.8.7-upgraded");
    assert_eq!(c.pids("ready"), now);
}

#[test]
fn a_reload_under_way_finishes_after_the_upgrade_and_its_client_gets_the_answer() {
    let (c, exe) = start(&config("", ""));
    c.wait_ready(3, 1);
    let old = c.pids("ready");
    // Generation 2's workers take a second each to be ready: the roll is under way, and its
    // client waiting, when the upgrade comes.
    c.write_config(&config("WORKER_READY_DELAY = \"1\"", ""));
    let control = c.control.clone();
    let reload = std::thread::spawn(move || {
        Command::new(CORRAL)
            .args(["reload", "demo", "--control"])
            .arg(&control)
            .output()
            .unwrap()
    });
    c.wait_for("started", SECS(10));
    let t = Instant::now();
    while c.status()["reload"].is_null() && t.elapsed() < SECS(10) {}
    assert!(!c.status()["reload"].is_null(), "a reload is under way");
    install(&exe, &stamped("0.0.0-rolling"), 0o755);
    let load = Load::start(c.port);
    let out = upgrade(&c);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reloaded = reload.join().unwrap();
    let said = String::from_utf8_lossy(&reloaded.stdout);
    assert!(
        reloaded.status.success(),
        "the reload's client gets its answer from the new image: {said}{}",
        String::from_utf8_lossy(&reloaded.stderr)
    );
    assert!(said.contains("generation 2"), "{said}");
    load.finish_without_failures(10);
    let s = c.status();
    assert_eq!(s["generation"], 2);
    assert_eq!(s["ready"], 3);
    assert_eq!(s["version"], "0.0.0-rolling");
    for pid in old {
        assert!(wait_gone(pid as i32, SECS(10)), "old worker {pid} stopped");
    }
}

#[test]
fn a_binary_that_cannot_take_over_changes_nothing() {
    let (c, exe) = start(&config("", ""));
    c.wait_ready(3, 1);
    let workers = c.pids("ready");
    let version = c.status()["version"].clone();
    // What each case does to the binary at corral's path, and what the refusal says.
    type Case<'a> = (&'a str, Box<dyn Fn() + 'a>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "missing",
            Box::new(|| std::fs::remove_file(&exe).unwrap()),
            "cannot run",
        ),
        (
            "not executable",
            Box::new(|| install(&exe, &std::fs::read(CORRAL).unwrap(), 0o644)),
            "Permission denied",
        ),
        (
            "not a program for this machine",
            Box::new(|| install(&exe, &[0x7f, b'E', b'L', b'F', 1, 1, 1, 0, 0, 0], 0o755)),
            "cannot run",
        ),
        (
            "fails before it takes over",
            Box::new(|| {
                install(
                    &exe,
                    b"#!/bin/sh\necho 'this corral cannot read that state' >&2\nexit 1\n",
                    0o755,
                )
            }),
            "this corral cannot read that state",
        ),
    ];
    for (what, make, why) in cases {
        make();
        let load = Load::start(c.port);
        // Under way before the upgrade is asked for: a refusal takes milliseconds.
        assert!(load.wait_for_requests(1, SECS(10)), "{what}: the load runs");
        let out = upgrade(&c);
        load.finish_without_failures(1);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(
            err.contains("cannot upgrade in place") && err.contains(why),
            "{what}: {err}"
        );
        assert!(err.contains("nothing changed"), "{what}: {err}");
        let s = c.status();
        assert_eq!(c.pids("ready"), workers, "{what}: the workers are the same");
        assert_eq!(s["version"], version, "{what}");
        assert!(s["upgraded"].is_null(), "{what}");
        assert!(c.get("/").is_ok(), "{what}: still serving");
    }
}

/// A new image that fails after the exec, having taken the descriptors over, puts the previous
/// binary back (carried open across the exec): the same pid, the same workers, every request
/// served, and `corral upgrade` says why.
#[test]
fn a_new_image_that_fails_to_take_over_puts_the_previous_one_back() {
    let (c, exe) = start_env(
        &config("", ""),
        &[("CORRAL_TEST_FAIL_TAKE_OVER", "6.6.6-broken")],
    );
    c.wait_ready(3, 1);
    let before = c.status();
    let workers = c.pids("ready");
    install(&exe, &stamped("6.6.6-broken"), 0o755);
    let load = Load::start(c.port);
    let out = upgrade(&c);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("could not take over (failing as CORRAL_TEST_FAIL_TAKE_OVER asks)")
            && err.contains("put back"),
        "{err}"
    );
    // Load past it: the put-back image serves and hears its workers.
    std::thread::sleep(SECS(1));
    load.finish_without_failures(20);
    let after = c.status();
    assert_eq!(after["pid"], before["pid"]);
    assert_eq!(
        after["version"], before["version"],
        "the previous binary runs"
    );
    assert!(after["upgraded"].is_null(), "no upgrade counted: {after}");
    assert_eq!(c.pids("ready"), workers);
    assert_eq!(after["restarts"], 0);
    // The sockets' files are still there: a new worker says READY=1 on the notify socket.
    let out = c.ctl(&["restart", "demo", "--worker", "0"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let workers = c.pids("ready");

    // And the next good binary upgrades it.
    install(&exe, &stamped("6.6.7-fixed"), 0o755);
    let out = upgrade(&c);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(c.status()["version"], "6.6.7-fixed");
    assert_eq!(c.pids("ready"), workers);
}

/// A wrapper script at corral's path (`exec` of the real binary) is checked and executed as
/// the binary would be: a script is executed by its path, its interpreter then reading it. This
/// one takes a second over the check: a second `corral upgrade` asked meanwhile waits for the
/// same upgrade, and both are told how it went.
#[test]
fn a_wrapper_script_upgrades_too_and_two_asking_at_once_share_the_upgrade() {
    let (c, exe) = start(&config("", ""));
    c.wait_ready(3, 1);
    let workers = c.pids("ready");
    let script =
        format!("#!/bin/sh\n[ \"$1\" = upgrade-check ] && sleep 1\nexec {CORRAL} \"$@\"\n");
    install(&exe, script.as_bytes(), 0o755);
    let control = c.control.clone();
    let first = std::thread::spawn(move || {
        Command::new(CORRAL)
            .args(["upgrade", "demo", "--control"])
            .arg(&control)
            .output()
            .unwrap()
    });
    c.wait_for("upgrade: checking that", SECS(10));
    let second = upgrade(&c);
    let first = first.join().unwrap();
    for out in [&first, &second] {
        assert!(
            out.status.success()
                && String::from_utf8_lossy(&out.stdout).contains("upgraded in place"),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let s = c.status();
    assert_eq!(s["upgraded"]["count"], 1, "one upgrade for both: {s}");
    assert_eq!(s["pid"].as_i64(), Some(c.pid as i64));
    assert_eq!(c.pids("ready"), workers);
}
