//! corral as systemd's child: sockets from `LISTEN_FDS`, `READY=1`/`STATUS=`/`WATCHDOG=1` to
//! `NOTIFY_SOCKET`. systemd's side is played here by a real listening socket handed over at
//! fd 3 and a real datagram socket, so the protocol is exercised byte for byte.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Replaces corral's command by `sh -c 'LISTEN_PID=$$ exec corral ...'` with `listener` at fd 3:
/// what systemd does for a socket-activated service.
fn activated(cmd: &mut Command, listener: &std::net::TcpListener, names: &str) {
    let args: Vec<std::ffi::OsString> = cmd.get_args().map(Into::into).collect();
    let mut wrapped = Command::new("sh");
    wrapped
        .arg("-c")
        .arg("LISTEN_PID=$$ exec \"$0\" \"$@\"")
        .arg(CORRAL)
        .args(args)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", names)
        .env_remove("NOTIFY_SOCKET");
    let fd = listener.as_raw_fd();
    // SAFETY: dup2/fcntl are async-signal-safe; they only place the listener at fd 3.
    unsafe {
        wrapped.pre_exec(move || {
            if fd == 3 {
                let flags = libc::fcntl(3, libc::F_GETFD);
                libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    *cmd = wrapped;
}

const TEMPLATE: &str = r#"
command = ["python3", "{worker}"]
workers = 2
[[listen]]
name = "http"
address = "127.0.0.1:1"   # under systemd the socket unit decides; this is not bound
"#;

#[test]
fn sockets_passed_by_systemd_are_served_by_every_worker() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let c = Corral::start_with(TEMPLATE, |cmd| activated(cmd, &listener, "http"));
    c.wait_ready(2, 1);
    // The config's address is not systemd's socket's: said, not acted on.
    let warning = c.wait_for("listener `http`: the config says 127.0.0.1:1", SECS(5));
    assert!(
        warning.contains(&format!("systemd's socket is 127.0.0.1:{port}")),
        "{warning}"
    );
    // corral keeps the socket; the test can even close its own copy.
    drop(listener);
    let mut slots = std::collections::BTreeSet::new();
    for w in answers_from_n_at_once(port, 2).unwrap() {
        assert_eq!(w["listen_fdnames"], "http");
        assert_eq!(w["fds"], serde_json::json!([0, 1, 2, 3]));
        slots.insert(w["slot"].as_str().unwrap().to_string());
    }
    assert_eq!(
        slots.len(),
        2,
        "both workers serve systemd's socket: {slots:?}"
    );
    // A reload under systemd matches listeners by name again.
    let out = c.ctl(&["reload", "demo"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(http_get(port, "/").unwrap()["generation"], "2");
}

#[test]
fn a_listener_name_systemd_did_not_pass_is_an_error_naming_both_sides() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut c = Corral::start_with(TEMPLATE, |cmd| activated(cmd, &listener, "web"));
    let st = c.wait_exit(SECS(10)).expect("corral refuses to start");
    assert_eq!(st.code(), Some(1));
    let line = c.wait_for("not among the sockets systemd passed", SECS(5));
    assert!(
        line.contains("http") && line.contains("LISTEN_FDNAMES=web"),
        "{line}"
    );
}

/// Reads datagrams from the fake systemd socket until `pred` holds for one, or panics.
fn expect_datagram(sock: &UnixDatagram, what: &str, pred: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + SECS(20);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(deadline - Instant::now()))
            .unwrap();
        let Ok(n) = sock.recv(&mut buf) else { break };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        if pred(&msg) {
            return msg;
        }
        seen.push(msg);
    }
    panic!("systemd never got {what}; it got {seen:?}");
}

#[test]
fn corral_tells_systemd_ready_status_watchdog_reloading_and_stopping() {
    let dir = scratch_dir();
    let path = dir.join("notify");
    let sd = UnixDatagram::bind(&path).unwrap();
    let template = r#"
command = ["python3", "{worker}"]
workers = 2
[[listen]]
name = "http"
address = "127.0.0.1:{port}"
"#;
    let mut c = Corral::start_with(template, |cmd| {
        cmd.env("NOTIFY_SOCKET", &path)
            .env("WATCHDOG_USEC", "300000");
    });
    let status = expect_datagram(&sd, "STATUS=", |m| m.starts_with("STATUS=0/2 ready"));
    assert_eq!(status, "STATUS=0/2 ready · generation 1 · 0 restarts");
    expect_datagram(&sd, "READY=1", |m| m == "READY=1");
    // Pinged from the event loop at half of WATCHDOG_USEC: several within a second.
    let t = Instant::now();
    for _ in 0..3 {
        expect_datagram(&sd, "WATCHDOG=1", |m| m == "WATCHDOG=1");
    }
    assert!(t.elapsed() < SECS(2), "pings every 150ms expected");

    c.signal(Signal::SIGHUP);
    let r = expect_datagram(&sd, "RELOADING=1", |m| m.starts_with("RELOADING=1"));
    assert!(r.starts_with("RELOADING=1\nMONOTONIC_USEC="), "{r}");
    expect_datagram(&sd, "READY=1 after the reload", |m| m == "READY=1");

    // A stopped (SIGSTOP) loop stops pinging: that is what lets systemd's watchdog act.
    c.signal(Signal::SIGSTOP);
    sd.set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut buf = [0u8; 4096];
    while sd.recv(&mut buf).is_ok() {} // drain what was sent before the stop
    assert!(
        sd.recv(&mut buf).is_err(),
        "no ping while the supervisor is stopped"
    );
    c.signal(Signal::SIGCONT);
    expect_datagram(&sd, "WATCHDOG=1 after SIGCONT", |m| m == "WATCHDOG=1");

    c.signal(Signal::SIGTERM);
    expect_datagram(&sd, "STOPPING=1", |m| m == "STOPPING=1");
    assert_eq!(c.wait_exit(SECS(15)).unwrap().code(), Some(0));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_silent_worker_is_killed_by_the_watchdog_and_replaced() {
    let c = Corral::start(
        r#"
command = ["python3", "{worker}"]
workers = 2
environment = { WORKER_WATCHDOG = "1" }
[[listen]]
name = "http"
address = "127.0.0.1:{port}"
[watchdog]
timeout = "1s"
[stop]
timeout = "2s"
[restart]
delay = "50ms"
"#,
    );
    c.wait_ready(2, 1);
    let hung = c.get("/hang").unwrap();
    let pid = hung["pid"].as_i64().unwrap();
    let line = c.wait_for("sent no WATCHDOG=1 for 1.0s", SECS(10));
    assert!(line.contains(&format!("pid {pid} ")), "{line}");
    c.wait_for(
        &format!("pid {pid} (generation 1): killed by SIGABRT"),
        SECS(10),
    );
    c.wait_for("2/2 ready · generation 1 · 1 restart", SECS(10));
    // The other worker kept pinging and was left alone.
    assert_eq!(c.status()["restarts"], 1);
}

/// Every datagram until one is `READY=1`, which ends a reload.
fn datagrams_until_ready(sock: &UnixDatagram) -> Vec<String> {
    let deadline = Instant::now() + SECS(20);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        sock.set_read_timeout(Some(deadline - Instant::now()))
            .unwrap();
        let Ok(n) = sock.recv(&mut buf) else { break };
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        let done = msg == "READY=1";
        seen.push(msg);
        if done {
            return seen;
        }
    }
    panic!("no READY=1 within 20s; got {seen:?}");
}

#[test]
fn a_workers_extension_reaches_systemd_only_for_a_reload_systemd_waits_for() {
    let dir = scratch_dir();
    let path = dir.join("notify");
    let sd = UnixDatagram::bind(&path).unwrap();
    let template = |env: &str| {
        format!(
            r#"
command = ["python3", "{{worker}}"]
workers = 1
environment = {{ {env} }}
[[listen]]
name = "http"
address = "127.0.0.1:{{port}}"
[readiness]
timeout = "5s"
"#
        )
    };
    let c = Corral::start_with(&template(""), |cmd| {
        cmd.env("NOTIFY_SOCKET", &path);
    });
    expect_datagram(&sd, "READY=1", |m| m == "READY=1");
    // Each new worker asks for 8s, past readiness.timeout, as it starts.
    c.write_config(&template(r#"WORKER_EXTEND_USEC = "8000000""#));

    // `corral reload` from a shell: systemd waits for nothing, and an extension would only
    // push its watchdog out.
    let out = c.ctl(&["reload", "demo"]);
    assert!(out.status.success(), "{out:?}");
    let sent = datagrams_until_ready(&sd);
    assert!(
        !sent.iter().any(|m| m.starts_with("EXTEND_TIMEOUT_USEC=")),
        "{sent:?}"
    );

    // The same as systemd's ExecReload= runs it, with $MAINPID naming corral.
    let out = Command::new(CORRAL)
        .args(["reload", "demo", "--control"])
        .arg(&c.control)
        .env("MAINPID", c.pid.to_string())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let sent = datagrams_until_ready(&sd);
    let at = sent
        .iter()
        .position(|m| m.starts_with("EXTEND_TIMEOUT_USEC="))
        .unwrap_or_else(|| panic!("no extension passed on: {sent:?}"));
    // The worker's 8s, and 10s for corral to act on it.
    assert_eq!(sent[at], "EXTEND_TIMEOUT_USEC=18000000", "{sent:?}");
    // At once a ping: systemd's watchdog is not pushed out with its start timer.
    assert_eq!(sent[at + 1], "WATCHDOG=1", "{sent:?}");
    drop(c);
    let _ = std::fs::remove_dir_all(dir);
}
