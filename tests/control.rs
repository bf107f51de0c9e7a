//! The control socket and the operator commands, and what a supervisor keeps doing when its
//! surroundings misbehave (garbage requests, foreign users, a log reader that does not read).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SECS: fn(u64) -> Duration = Duration::from_secs;

const TEMPLATE: &str = r#"
command = ["python3", "{worker}"]
workers = 2
[[listen]]
name = "http"
address = "127.0.0.1:{port}"
"#;

fn raw(c: &Corral, line: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(&c.control).unwrap();
    s.write_all(line.as_bytes()).unwrap();
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).unwrap();
    serde_json::from_str(&reply).unwrap_or_else(|e| panic!("{e}: {reply:?}"))
}

#[test]
fn malformed_and_foreign_requests_get_an_error_and_harm_nothing() {
    let c = Corral::start(TEMPLATE);
    c.wait_ready(2, 1);
    let r = raw(&c, "garbage\n");
    assert_eq!(r["ok"], false);
    assert!(
        r["error"].as_str().unwrap().contains("malformed request"),
        "{r}"
    );
    let r = raw(&c, "{\"version\":99,\"command\":\"status\"}\n");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("protocol version 99 is not supported"),
        "{r}"
    );
    let r = raw(&c, "{\"version\":1,\"command\":\"explode\"}\n");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("unknown or malformed command"),
        "{r}"
    );
    let r = raw(
        &c,
        "{\"version\":1,\"command\":\"scale\",\"workers\":\"lots\"}\n",
    );
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("expected N, +N or -N"),
        "{r}"
    );
    // A client that connects and says nothing, or hangs up, does not block anyone else.
    let idle = UnixStream::connect(&c.control).unwrap();
    drop(UnixStream::connect(&c.control).unwrap());
    assert_eq!(c.status()["ready"], 2);
    drop(idle);
    c.get("/").unwrap();
}

#[test]
fn only_root_and_the_supervisors_user_may_use_the_control_socket() {
    let c = Corral::start(TEMPLATE);
    c.wait_ready(2, 1);
    let as_nobody = |path: &std::path::Path| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", CORRAL])
            .args(["status", "demo", "--control"])
            .arg(path)
            .output()
            .unwrap()
    };
    // Mode 0600: the kernel already refuses the connection.
    let out = as_nobody(&c.control);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("Permission denied"));
    // Even with the file opened up, the peer's credentials are checked.
    std::fs::set_permissions(&c.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&c.control, std::fs::Permissions::from_mode(0o666)).unwrap();
    let out = as_nobody(&c.control);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied: uid 65534 may not control this corral"),
        "{err}"
    );
    assert_eq!(c.status()["ready"], 2);
}

#[test]
fn restart_and_scale_over_the_control_socket() {
    let c = Corral::start(TEMPLATE);
    c.wait_ready(2, 1);
    let before = c.pids("ready");
    let out = c.ctl(&["restart", "demo", "--worker", "1"]);
    assert!(out.status.success(), "{out:?}");
    let after = c.pids("ready");
    assert_eq!(after[0], before[0], "slot 0 untouched");
    assert_ne!(after[1], before[1], "slot 1 replaced");
    let out = c.ctl(&["restart", "demo", "--worker", "7"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("there is no worker 7"));

    let out = c.ctl(&["scale", "demo", "+2"]);
    assert!(out.status.success(), "{out:?}");
    c.wait_for("4/4 ready", SECS(20));
    let out = c.ctl(&["scale", "demo", "-3"]);
    assert!(out.status.success(), "{out:?}");
    c.wait_for("1/1 ready", SECS(20));
    let s = c.status();
    assert_eq!(s["desired"], 1);
    let out = c.ctl(&["scale", "demo", "-1"]);
    assert_eq!(out.status.code(), Some(1), "scaling to 0 is refused");
}

#[test]
fn a_log_reader_that_never_reads_does_not_stall_the_supervisor() {
    let dir = scratch_dir();
    let port = free_port();
    let config = dir.join("demo.toml");
    let control = dir.join("demo.sock");
    // Each worker writes far more than a pipe holds, at start.
    std::fs::write(
        &config,
        render(
            r#"
command = ["sh", "-c", "yes 'a line of noise from a busy worker' | head -n 200000; exec python3 {worker}"]
workers = 2
[[listen]]
name = "http"
address = "127.0.0.1:{port}"
"#,
            port,
        ),
    )
    .unwrap();
    // corral's READY=1 to "systemd" is the event to wait for: it needs every worker ready.
    let sd = std::os::unix::net::UnixDatagram::bind(dir.join("notify")).unwrap();
    let mut child = Command::new(CORRAL)
        .arg("run")
        .arg(&config)
        .arg("--control")
        .arg(&control)
        .env("NOTIFY_SOCKET", dir.join("notify"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped()) // and never read while the test runs
        .spawn()
        .unwrap();
    let deadline = Instant::now() + SECS(30);
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "corral never said READY=1");
        sd.set_read_timeout(Some(left)).unwrap();
        let n = sd.recv(&mut buf).expect("READY=1 within 30s");
        if &buf[..n] == b"READY=1" {
            break;
        }
    }
    // It keeps answering although its stderr has been full for a long time.
    let out = Command::new(CORRAL)
        .args(["status", "demo", "--json", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["ready"], 2, "{out:?}");
    http_get(port, "/").unwrap();
    let reload = Command::new(CORRAL)
        .args(["reload", "demo", "--control"])
        .arg(&control)
        .output()
        .unwrap();
    assert!(reload.status.success(), "{reload:?}");
    // Now read: the dropped lines were counted and said so.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let mut log = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        log.contains("log line(s) dropped"),
        "{}",
        &log[log.len().saturating_sub(2000)..]
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn listeners_added_and_removed_by_a_reload() {
    let c = Corral::start(TEMPLATE);
    c.wait_ready(2, 1);
    let unix = c.dir.join("admin.sock");
    c.write_config(&format!(
        "{TEMPLATE}\n[[listen]]\nname = \"admin\"\naddress = \"{}\"\n",
        unix.display()
    ));
    let out = c.ctl(&["reload", "demo"]);
    assert!(out.status.success(), "{out:?}");
    let w = c.get("/").unwrap();
    assert_eq!(w["listen_fdnames"], "http:admin");
    assert_eq!(w["fds"], serde_json::json!([0, 1, 2, 3, 4]));
    // Served on the new unix socket too.
    let mut s = UnixStream::connect(&unix).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
    assert!(reply.contains("\"generation\": \"2\""), "{reply}");

    // A port already taken is refused, and nothing changes.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    c.write_config(&format!(
        "{TEMPLATE}\n[[listen]]\nname = \"other\"\naddress = \"{}\"\n",
        taken.local_addr().unwrap()
    ));
    let out = c.ctl(&["reload", "demo"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Address already in use"));
    assert!(unix.exists(), "the refused reload closed nothing");

    // Removed: once no generation uses it, the socket file goes.
    c.write_config(TEMPLATE);
    assert!(c.ctl(&["reload", "demo"]).status.success());
    assert_eq!(c.get("/").unwrap()["listen_fdnames"], "http");
    assert!(
        !unix.exists(),
        "the unix socket of a removed listener is cleaned up"
    );
}

#[test]
fn a_restart_during_a_reload_keeps_the_reloads_config() {
    let c = Corral::start(TEMPLATE);
    c.wait_ready(2, 1);
    c.write_config(&format!(
        "{}\n[readiness]\ntimeout = \"10s\"\n",
        TEMPLATE.replace(
            "workers = 2",
            "workers = 2\nenvironment = { WORKER_TAG = \"v2\", WORKER_READY_DELAY = \"0.5\" }"
        )
    ));
    let reload = std::process::Command::new(CORRAL)
        .args(["reload", "demo", "--control"])
        .arg(&c.control)
        .spawn()
        .unwrap();
    c.wait_for("reload: replacing 2 worker(s) with generation 2", SECS(10));
    let out = c.ctl(&["restart", "demo"]);
    assert!(out.status.success(), "{out:?}");
    assert!(reload.wait_with_output().unwrap().status.success());
    for w in answers_from_n_at_once(c.port, 2).unwrap() {
        assert_eq!(
            w["tag"], "v2",
            "the restart replayed the newest config, not the old one"
        );
    }
}

#[test]
fn a_control_path_that_is_not_a_socket_is_never_deleted() {
    let dir = scratch_dir();
    let data = dir.join("data.txt");
    std::fs::write(&data, "precious").unwrap();
    std::fs::write(
        dir.join("demo.toml"),
        "command = [\"python3\", \"-c\", \"1\"]\n",
    )
    .unwrap();
    let out = Command::new(CORRAL)
        .arg("run")
        .arg(dir.join("demo.toml"))
        .arg("--control")
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a file that is not a socket is in the way"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&data).unwrap(), "precious");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn status_of_every_app_survives_a_dead_apps_socket() {
    let c = Corral::start(TEMPLATE);
    c.wait_ready(2, 1);
    // Next to the live app's socket, one nobody answers on, as a SIGKILLed supervisor leaves.
    let dead = c.dir.join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    // The control directory is $RUNTIME_DIRECTORY when set (as under systemd).
    let out = Command::new(CORRAL)
        .args(["status", "--json"])
        .env("RUNTIME_DIRECTORY", &c.dir)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let apps: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(apps.as_array().unwrap().len(), 1);
    assert_eq!(apps[0]["app"], "demo");
    assert!(String::from_utf8_lossy(&out.stderr).contains("dead.sock"));
    // Only the dead one: not running.
    let out = Command::new(CORRAL)
        .args(["status", "--json", "--control"])
        .arg(&dead)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3), "{out:?}");
}

#[test]
fn scaling_up_and_down_under_load_fails_no_request() {
    let c = Corral::start(TEMPLATE);
    c.wait_ready(2, 1);
    let load = Load::start(c.port);
    c.get("/").unwrap();
    let out = c.ctl(&["scale", "demo", "+2"]);
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("scaled from 2 to 4 workers"));
    c.wait_for("4/4 ready", SECS(20));
    let out = c.ctl(&["scale", "demo", "1"]);
    assert!(out.status.success(), "{out:?}");
    c.wait_for("1/1 ready · generation 1", SECS(20));
    c.get("/").unwrap();
    load.finish_without_failures(21);
    // Scaled down to the lowest slot; the highest went.
    let s = c.status();
    let slots: Vec<u64> = s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == "ready")
        .map(|w| w["slot"].as_u64().unwrap())
        .collect();
    assert_eq!(slots, vec![0]);
}

#[test]
fn logs_without_a_journal_says_so() {
    let out = Command::new(CORRAL)
        .args(["logs", "demo", "--control", "/nonexistent/demo.sock"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    if std::path::Path::new("/run/systemd/journal/socket").exists() {
        assert!(err.contains("cannot run journalctl"), "{err}");
    } else {
        assert!(
            err.contains("journald is not running on this machine"),
            "{err}"
        );
    }
}

#[test]
fn logs_of_an_app_run_outside_systemd_say_where_its_log_is() {
    let c = Corral::start(TEMPLATE);
    c.wait_ready(2, 1);
    let out = c.ctl(&["logs", "demo"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "demo runs outside systemd (corral run, pid {})",
            c.pid
        )) && err.contains("standard error"),
        "{err}"
    );
    assert_eq!(c.status()["log"], "stderr");
}

#[test]
fn status_has_colour_on_a_terminal_unless_no_color() {
    let c = Corral::start(TEMPLATE);
    c.wait_ready(2, 1);
    // script(1) runs the command on a pseudo-terminal, as a user's shell would.
    let on_tty = |no_color: bool| {
        let mut cmd = Command::new("script");
        cmd.args(["-qec"])
            .arg(format!(
                "{CORRAL} status demo --control {}",
                c.control.display()
            ))
            .arg("/dev/null")
            .env_remove("NO_COLOR");
        if no_color {
            cmd.env("NO_COLOR", "1");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        on_tty(false).contains("\x1b[32mready"),
        "green 'ready' on a terminal"
    );
    let plain = on_tty(true);
    assert!(
        plain.contains("ready") && !plain.contains('\x1b'),
        "{plain:?}"
    );
}

#[test]
fn a_supervisor_of_another_protocol_version_gives_a_clear_error() {
    let dir = scratch_dir();
    let path = dir.join("future.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        s.write_all(b"{\"version\":2,\"ok\":true,\"shape\":\"new\"}\n")
            .unwrap();
    });
    let out = Command::new(CORRAL)
        .args(["status", "demo", "--control"])
        .arg(&path)
        .output()
        .unwrap();
    server.join().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the supervisor speaks control protocol version 2, this client 1"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn corral_signal_reaches_every_worker_or_one_slot() {
    let c = Corral::start(TEMPLATE);
    c.wait_ready(2, 1);
    let out = c.ctl(&["signal", "demo", "USR1"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("sent SIGUSR1 to 2 worker(s)"),
        "{out:?}"
    );
    c.wait_for("slot 0 got SIGUSR1", SECS(10));
    c.wait_for("slot 1 got SIGUSR1", SECS(10));
    let mark = c.mark();
    let out = c.ctl(&["signal", "demo", "SIGUSR2", "--worker", "1"]);
    assert!(out.status.success(), "{out:?}");
    c.wait_for_after(mark, "slot 1 got SIGUSR2", SECS(10));
    // Bad input: a clear error, nothing sent.
    let out = c.ctl(&["signal", "demo", "USR3"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown signal"),
        "{out:?}"
    );
    let out = c.ctl(&["signal", "demo", "USR1", "--worker", "7"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("there is no worker 7"),
        "{out:?}"
    );
    assert!(!c.lines()[mark..]
        .iter()
        .any(|l| l.contains("slot 0 got SIGUSR2")));
}

#[test]
fn a_status_with_control_characters_is_shown_escaped() {
    let c = Corral::start(
        r#"
command = ["python3", "{worker}"]
environment = { WORKER_STATUS = "evil\u001b]0;owned\u0007\u001b[2Jend" }
"#,
    );
    c.wait_ready(1, 1);
    let out = c.ctl(&["status", "demo"]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("evil\\x1b]0;owned\\x07\\x1b[2Jend"), "{text}");
    assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    // JSON keeps the text as it is (escaped the JSON way).
    assert_eq!(
        c.status()["workers"][0]["status"],
        "evil\u{1b}]0;owned\u{7}\u{1b}[2Jend"
    );
}

/// A stand-in for a supervisor, as another user could start one: it answers every connection
/// with a made-up status and prints what each one sent (`got b'...'`). It binds as root and
/// becomes that user (`argv[2]`) before listen(2), which is whom SO_PEERCRED then names.
const FAKE_SUPERVISOR: &str = r#"
import os, socket, sys
path, uid = sys.argv[1], int(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o777)
os.chown(path, uid, uid)
os.setgroups([]); os.setgid(uid); os.setuid(uid)
s.listen(16)
print("listening", flush=True)
fake = b'{"version":1,"ok":true,"message":"reloaded","status":{"app":"fake","pid":1,"config":"/x","state":"running","generation":1,"desired":0,"ready":0,"restarts":0,"reload":null,"workers":[]}}\n'
while True:
    c, _ = s.accept()
    c.settimeout(5)
    try:
        got = c.recv(65536)
    except OSError:
        got = b"?"
    print("got", repr(got), flush=True)
    try:
        c.sendall(fake)
    except OSError:
        pass
    c.close()
"#;

struct Fake {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Fake {
    /// Listening at `path` as `uid` once this returns.
    fn start(path: &std::path::Path, uid: u32) -> Fake {
        let mut child = Command::new("python3")
            .args(["-c", FAKE_SUPERVISOR])
            .arg(path)
            .arg(uid.to_string())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for l in out.lines().map_while(Result::ok) {
                let _ = tx.send(l);
            }
        });
        let fake = Fake { child, lines };
        assert_eq!(
            fake.next(),
            "listening",
            "the fake supervisor did not start"
        );
        fake
    }

    /// Its next line, within 10s.
    fn next(&self) -> String {
        self.lines
            .recv_timeout(SECS(10))
            .expect("a line from the fake supervisor within 10s")
    }

    /// What else it printed, once it is stopped.
    fn stop(mut self) -> Vec<String> {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.lines.iter().collect()
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `corral ARGS` as `uid`, outside systemd and without XDG_RUNTIME_DIR, with `TMPDIR`.
fn corral_as(uid: u32, args: &[&str], tmpdir: &std::path::Path) -> std::process::Output {
    Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(CORRAL)
        .args(args)
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("RUNTIME_DIRECTORY")
        .env("TMPDIR", tmpdir)
        .output()
        .unwrap()
}

#[test]
fn a_control_directory_another_user_made_first_is_not_used() {
    // Issue 9: without XDG_RUNTIME_DIR, uid 4242's corral looks in $TMPDIR/corral-4242, which
    // nobody (uid 65534) made beforehand, open to all, with a fake supervisor in it.
    let dir = scratch_dir();
    let tmp = dir.join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let planted = tmp.join("corral-4242");
    std::fs::create_dir(&planted).unwrap();
    std::os::unix::fs::chown(&planted, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).unwrap();
    let fake = Fake::start(&planted.join("demo.sock"), 65534);
    for (args, what) in [
        (&["status", "demo"][..], "status"),
        (&["reload", "demo"][..], "reload"),
    ] {
        let out = corral_as(4242, args, &tmp);
        assert_eq!(out.status.code(), Some(1), "{what}: {out:?}");
        assert!(out.stdout.is_empty(), "{what}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "will not connect to {}/demo.sock: {} belongs to uid 65534, not to this user \
                 (uid 4242) or root",
                planted.display(),
                planted.display()
            )),
            "{what}: {err}"
        );
    }
    assert_eq!(
        fake.stop(),
        Vec::<String>::new(),
        "nothing reached the fake"
    );
    // Made by uid 4242 itself, the same directory is used (and a missing supervisor is
    // "not running", exit 3).
    std::fs::remove_dir_all(&planted).unwrap();
    std::fs::create_dir(&planted).unwrap();
    std::os::unix::fs::chown(&planted, Some(4242), Some(4242)).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o700)).unwrap();
    let out = corral_as(4242, &["status", "demo"], &tmp);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_supervisor_of_another_user_is_not_believed() {
    // In a directory root owns, a process of uid 65534 listens: root's client sends it nothing.
    let dir = scratch_dir();
    let path = dir.join("demo.sock");
    let fake = Fake::start(&path, 65534);
    for args in [&["status", "demo"][..], &["reload", "demo"][..]] {
        let out = Command::new(CORRAL)
            .args(args)
            .arg("--control")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        assert!(out.stdout.is_empty(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!(
                "will not talk to {}: the process answering there (pid ",
                path.display()
            )) && err.contains(
                "runs as uid 65534, which is neither root nor this user (uid 0): another user \
                     may have put it there to fake corral's answers. Nothing was sent to it"
            ),
            "{err}"
        );
    }
    // Both connected, and hung up without a byte.
    assert_eq!([fake.next(), fake.next()], ["got b''", "got b''"]);
    assert_eq!(fake.stop(), Vec::<String>::new());

    // A directory root made for that user, as systemd makes RuntimeDirectory=corral/APP in
    // /run/corral for the service's user: that user's supervisor there is believed.
    let handed = dir.join("demo");
    std::fs::create_dir(&handed).unwrap();
    std::os::unix::fs::chown(&handed, Some(65534), Some(65534)).unwrap();
    let path = handed.join("demo.sock");
    let fake = Fake::start(&path, 65534);
    let out = Command::new(CORRAL)
        .args(["status", "--json", "--control"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["app"], "fake");
    assert!(fake
        .next()
        .starts_with("got b'{\"version\":1,\"command\":\"status\"}"));
    // But not another user's process there.
    fake.stop();
    std::fs::remove_file(&path).unwrap();
    let fake = Fake::start(&path, 4242);
    let out = Command::new(CORRAL)
        .args(["status", "--control"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(
            "runs as uid 4242, which is neither root nor this user (uid 0), nor uid 65534 (the \
             directory's owner)"
        ),
        "{err}"
    );
    assert_eq!(fake.next(), "got b''");
    assert_eq!(fake.stop(), Vec::<String>::new());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn idle_control_connections_past_the_cap_leave_corral_its_file_descriptors() {
    // 200 open files at most: without a cap, 200 clients that never send a request would take
    // every one corral has (issue 9: status hung, respawns failed with EMFILE).
    const LIMIT: u64 = 200;
    let c = Corral::start_with(&TEMPLATE.replace("workers = 2", "workers = 3"), |cmd| {
        // SAFETY: setrlimit is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(cmd, || {
                let l = libc::rlimit {
                    rlim_cur: LIMIT,
                    rlim_max: LIMIT,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    c.wait_ready(3, 1);
    let idle: Vec<UnixStream> = (0..200)
        .map(|_| UnixStream::connect(&c.control).unwrap())
        .collect();
    let started = Instant::now();
    let out = Command::new(CORRAL)
        .args(["status", "demo", "--json", "--control"])
        .arg(&c.control)
        .output()
        .unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "{out:?}");
    assert!(took < SECS(2), "status took {took:?}");
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s["ready"], 3);
    eprintln!("status with 200 idle connections open: {took:?}");
    // The oldest idle connection was closed to make room, and told why.
    let mut first = BufReader::new(&idle[0]);
    idle[0].set_read_timeout(Some(SECS(5))).unwrap();
    let mut reply = String::new();
    first.read_line(&mut reply).unwrap();
    assert!(
        reply.contains("closed without a request: 64 control connections are open"),
        "{reply}"
    );
    // A crashed worker gets its pipes, and is replaced.
    let mark = c.mark();
    let crashed = c.get("/crash").unwrap()["pid"].as_i64().unwrap();
    c.wait_for_after(
        mark,
        &format!("pid {crashed} (generation 1): exited"),
        SECS(10),
    );
    c.wait_for_after(mark, "3/3 ready · generation 1 · 1 restart", SECS(20));
    let fds = std::fs::read_dir(format!("/proc/{}/fd", c.pid))
        .unwrap()
        .count();
    eprintln!("corral's open files with 200 idle connections: {fds} (limit {LIMIT})");
    assert!(fds < LIMIT as usize, "{fds}");
    drop(idle);
}
