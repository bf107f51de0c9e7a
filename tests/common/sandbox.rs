//! A private, real systemd booted as PID 1 in new namespaces, for the tests.
//!
//! /etc, /usr and /var are overlays that vanish with it, /run and /tmp are fresh, the network
//! is a private loopback: the host is left untouched. `multi-user.target` is never booted (it
//! would start the host's services); the sandbox boots a target that only brings up journald.
//! If it cannot boot, tests fail loudly in CI (`CI=true`) and are skipped with the reason
//! elsewhere.
#![allow(dead_code)] // each test crate uses a part of it

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The test workers inside the sandbox (see [`Sandbox::install_workers`]).
pub const WORKER_PY: &str = "/usr/local/lib/corral-test/worker.py";
pub const WORKER_JS: &str = "/usr/local/lib/corral-test/worker.js";
pub const SHELL_WORKER: &str = "/usr/local/lib/corral-test/shell-worker.sh";
pub const AGENT_PY: &str = "/usr/local/lib/corral-test/agent.py";

/// At most one sandbox at a time from this test binary: each boots a whole systemd.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const BOOT: &str = r#"
mount -t proc proc /proc && mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /tmp && ip link set lo up || exit 1
for d in etc usr var; do mkdir -p /run/.sb/$d-up /run/.sb/$d-work
  mount -t overlay overlay -o lowerdir=/$d,upperdir=/run/.sb/$d-up,workdir=/run/.sb/$d-work /$d || exit 1; done
mkdir -p /run/systemd/system
printf "[Unit]\nRequires=systemd-journald.socket\nAfter=systemd-journald.socket\n" > /run/systemd/system/sandbox.target
export container=other
exec /usr/bin/systemd --system --unit=sandbox.target --show-status=no
"#;

pub struct Sandbox {
    /// systemd's pid, as seen from the host.
    pub pid: i32,
    unshare: Child,
    _turn: MutexGuard<'static, ()>,
}

/// Boots a sandbox, or says why it cannot (then the caller skips, or fails in CI).
pub fn boot() -> Option<Sandbox> {
    match try_boot() {
        Ok(s) => Some(s),
        Err(why) => {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                panic!("the systemd sandbox cannot boot, and CI must run these tests: {why}");
            }
            crate::common::skipped(&format!("the systemd sandbox cannot boot here: {why}"));
            None
        }
    }
}

fn try_boot() -> Result<Sandbox, String> {
    if !nix::unistd::geteuid().is_root() {
        return Err("not root (namespaces and systemd as PID 1 need root)".into());
    }
    if !Path::new("/usr/bin/systemd").exists() && !Path::new("/lib/systemd/systemd").exists() {
        return Err("no systemd on this machine".into());
    }
    let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let unshare = Command::new("setsid")
        .args([
            "unshare",
            "--pid",
            "--fork",
            "--mount",
            "--uts",
            "--ipc",
            "--cgroup",
            "--net",
            "--propagation",
            "private",
            "bash",
            "-c",
            BOOT,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    let upid = unshare.id();
    let mut sb = Sandbox {
        pid: 0,
        unshare,
        _turn: turn,
    };
    // systemd is unshare's only child (--fork); it appears right after the fork.
    let deadline = Instant::now() + Duration::from_secs(10);
    while sb.pid == 0 {
        let children = std::fs::read_to_string(format!("/proc/{upid}/task/{upid}/children"))
            .unwrap_or_default();
        if let Some(p) = children.split_whitespace().next() {
            sb.pid = p.parse().unwrap();
            break;
        }
        if let Ok(Some(st)) = sb.unshare.try_wait() {
            return Err(format!("unshare exited: {st}"));
        }
        if Instant::now() > deadline {
            return Err("unshare never forked".into());
        }
        std::thread::yield_now();
    }
    // bash mounts, then execs systemd, which opens its private bus socket: only then can
    // systemctl talk to it (before, it reports "offline").
    let bus = format!("/proc/{}/root/run/systemd/private", sb.pid);
    while !Path::new(&bus).exists() {
        if let Ok(Some(st)) = sb.unshare.try_wait() {
            return Err(format!("the sandbox exited while booting: {st}"));
        }
        if Instant::now() > deadline {
            return Err(format!("systemd never opened {bus}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Blocks until boot is done (systemctl(1) is-system-running --wait).
    let out = sb.sh("timeout 60 systemctl is-system-running --wait");
    let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if state != "running" && state != "degraded" {
        return Err(format!(
            "systemd did not come up: {state:?} {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // journald starts on first use: log one entry, so that the journal (and a cursor) exists.
    let out = sb.sh(
        "echo sandbox booted | systemd-cat -t sandbox && \
         timeout 10 sh -c 'until journalctl -q -n 1 -t sandbox -o cat | grep -q booted; do sleep 0.05; done'",
    );
    if !out.status.success() {
        return Err("journald did not come up".into());
    }
    Ok(sb)
}

impl Sandbox {
    /// Runs a shell script inside every namespace of the sandbox.
    pub fn sh(&self, script: &str) -> Output {
        Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-a", "sh", "-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("run nsenter")
    }

    /// Runs a script that must succeed; returns its stdout.
    #[track_caller]
    pub fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(
            out.status.success(),
            "`{script}` failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a file inside the sandbox.
    pub fn write(&self, path: &str, contents: &str) {
        let mut child = Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-a", "sh", "-c"])
            .arg(format!(
                "mkdir -p \"$(dirname '{path}')\" && cat > '{path}'"
            ))
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(contents.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "cannot write {path}");
    }

    /// Copies a host file into the sandbox. Nothing is read through a host path inside the
    /// sandbox: wherever the project lives (under /tmp, which the sandbox replaces; under
    /// /home or /root, which ProtectHome= hides from services), its bytes come over stdin.
    pub fn copy_in(&self, from: &Path, to: &str, mode: u32) {
        let data = std::fs::read(from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
        let mut child = Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-a", "sh", "-c"])
            .arg(format!(
                "mkdir -p \"$(dirname '{to}')\" && cat > '{to}' && chmod {mode:o} '{to}'"
            ))
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&data).unwrap();
        assert!(
            child.wait().unwrap().success(),
            "cannot copy {} to {to}",
            from.display()
        );
    }

    /// The test workers, where a hardened service can read them.
    pub fn install_workers(&self) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        self.copy_in(&root.join("tests/worker.py"), WORKER_PY, 0o644);
        self.copy_in(&root.join("tests/worker.js"), WORKER_JS, 0o644);
        self.copy_in(&root.join("tests/agent.py"), AGENT_PY, 0o644);
        self.copy_in(
            &root.join("tests/real/shell-worker.sh"),
            SHELL_WORKER,
            0o755,
        );
    }

    /// Installs corral as the packages do: binary, generator symlink, unit templates; and
    /// the test workers.
    pub fn install(&self) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        self.copy_in(
            Path::new(env!("CARGO_BIN_EXE_corral")),
            "/usr/bin/corral",
            0o755,
        );
        for unit in ["corral@.service", "corral@.socket"] {
            self.copy_in(
                &root.join("units").join(unit),
                &format!("/usr/lib/systemd/system/{unit}"),
                0o644,
            );
        }
        self.ok(
            "mkdir -p /usr/lib/systemd/system-generators /etc/corral && \
             ln -sf /usr/bin/corral /usr/lib/systemd/system-generators/corral-generator",
        );
        self.install_workers();
    }

    /// The current journal cursor: `wait_journal` looks only after it.
    pub fn cursor(&self) -> String {
        let out = self.ok("journalctl --show-cursor -n 0 -q | sed -n 's/^-- cursor: //p'");
        out.trim().to_string()
    }

    /// Waits for a journal entry after `cursor` containing `needle`, among the entries of
    /// `filter` (journalctl arguments): follows the journal (an event, not polling), bounded.
    #[track_caller]
    pub fn wait_journal(
        &self,
        cursor: &str,
        filter: &str,
        needle: &str,
        timeout: Duration,
    ) -> String {
        let mut child = Command::new("nsenter")
            .args(["-t", &self.pid.to_string(), "-a", "sh", "-c"])
            // -f alone means the last 10 entries: everything after the cursor is wanted.
            .arg(format!(
                "exec journalctl --after-cursor='{cursor}' -n all -f -o cat {filter}"
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("run journalctl");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let needle_owned = needle.to_string();
        std::thread::spawn(move || {
            use std::io::BufRead;
            // Entries may hold bytes that are not UTF-8: read bytes, compare as text.
            let mut reader = std::io::BufReader::new(stdout);
            let mut raw = Vec::new();
            while matches!(reader.read_until(b'\n', &mut raw), Ok(n) if n > 0) {
                let line = String::from_utf8_lossy(&raw).trim_end().to_string();
                if line.contains(&needle_owned) {
                    let _ = tx.send(line);
                    break;
                }
                raw.clear();
            }
        });
        let found = rx.recv_timeout(timeout);
        // nsenter forked journalctl into the sandbox's pid namespace. Kill journalctl, not
        // nsenter: nsenter then reaps it and exits. An orphan would be reparented to the host's
        // init, and the sandbox's shutdown would wait for that zombie.
        let n = child.id();
        let kids =
            std::fs::read_to_string(format!("/proc/{n}/task/{n}/children")).unwrap_or_default();
        for pid in kids.split_whitespace().filter_map(|p| p.parse().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = child.wait();
        match found {
            Ok(line) => line,
            Err(_) => {
                let log = self.sh(&format!(
                    "journalctl --after-cursor='{cursor}' {filter} --no-pager -o short-monotonic"
                ));
                panic!(
                    "no journal entry with {needle:?} within {timeout:?}; the journal since:\n{}",
                    String::from_utf8_lossy(&log.stdout)
                );
            }
        }
    }

    /// A `systemctl show -p NAME --value UNIT`.
    pub fn prop(&self, unit: &str, name: &str) -> String {
        self.ok(&format!("systemctl show -p {name} --value {unit}"))
            .trim()
            .to_string()
    }

    /// Runs `f` on a thread inside the sandbox's network namespace (it has its own loopback).
    pub fn in_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = File::open(format!("/proc/{}/ns/net", self.pid)).unwrap();
        std::thread::scope(|s| {
            s.spawn(move || {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// Prints what a failed test needs: the journal of the whole boot and the unit states.
    fn dump(&self) {
        let out = self.sh("systemctl list-units --all --no-pager 'corral*'; journalctl -b --no-pager -o short-monotonic | tail -n 200");
        eprintln!(
            "---- sandbox journal (tail) ----\n{}{}---- end ----",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        let _ = self.sh("systemctl poweroff --no-block");
        // systemd, PID 1 of its namespace, exits on poweroff; unshare then exits too.
        if !crate::common::wait_gone(self.unshare.id() as i32, Duration::from_secs(20)) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        let _ = self.unshare.wait();
    }
}
