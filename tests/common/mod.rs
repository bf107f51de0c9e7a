//! Harness for running the real `corral` binary against the real test worker.
//!
//! Every wait is bounded and synchronised on an event: a line in corral's log, an answer on
//! the control socket, a process exit. When a test fails, the harness prints everything corral
//! logged, so the failure comes with its context.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const CORRAL: &str = env!("CARGO_BIN_EXE_corral");

/// A corral binary's bytes with its version stamp (src/version.rs) changed to `version`: the
/// "newer" corral the upgrade tests move to says it is that version, as a new build would.
pub fn stamped(mut bytes: Vec<u8>, version: &str) -> Vec<u8> {
    let mark = b"corral-build-version:";
    let at = bytes
        .windows(mark.len())
        .position(|w| w == mark)
        .expect("the binary carries its version stamp")
        + mark.len();
    let end = at + bytes[at..].iter().position(|&b| b == 0).unwrap();
    let room = end - at + bytes[end..].iter().take_while(|&&b| b == 0).count();
    assert!(version.len() < room, "the version fits the stamp");
    for (i, b) in bytes[at..at + room].iter_mut().enumerate() {
        *b = version.as_bytes().get(i).copied().unwrap_or(0);
    }
    bytes
}

pub fn worker_py() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/worker.py")
        .display()
        .to_string()
}

/// Says that a test could not run here, where a person sees it: straight to the test process's
/// standard error (the harness captures only what `eprintln!` prints), so `cargo test` shows a
/// SKIPPED line for each test that did not run. Under `CI=true` a test must not skip: it fails.
pub fn skipped(why: &str) {
    use std::io::Write;
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("this test cannot run here, and CI must run it: {why}");
    }
    let _ = writeln!(std::io::stderr().lock(), "SKIPPED: {why}");
}

/// A fresh directory per test, removed when the test passes.
pub fn scratch_dir() -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "corral-test-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

type Log = Arc<(Mutex<Vec<String>>, Condvar)>;

pub struct Corral {
    pub pid: i32,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub control: PathBuf,
    pub port: u16,
    log: Log,
    exit: Receiver<ExitStatus>,
    exited: Option<ExitStatus>,
}

/// Fills `{port}`, `{worker}` (the Python worker) and `{worker_ipc}` (the Node.js one) in a
/// config template.
pub fn render(template: &str, port: u16) -> String {
    let ipc = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/worker-ipc.js");
    template
        .replace("{port}", &port.to_string())
        .replace("{worker}", &worker_py())
        .replace("{worker_ipc}", &ipc.display().to_string())
}

impl Corral {
    pub fn start(template: &str) -> Corral {
        Self::start_with(template, |_| {})
    }

    /// Starts `corral run` on `template` (app name `demo`); `tweak` may adjust the command.
    pub fn start_with(template: &str, tweak: impl FnOnce(&mut Command)) -> Corral {
        let dir = scratch_dir();
        let port = free_port();
        let config = dir.join("demo.toml");
        std::fs::write(&config, render(template, port)).unwrap();
        let control = dir.join("demo.sock");
        let mut cmd = Command::new(CORRAL);
        cmd.arg("run")
            .arg(&config)
            .arg("--control")
            .arg(&control)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("CORRAL_LOG");
        // The tweak may replace the command whole (to wrap it); stdio is set after it.
        tweak(&mut cmd);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // If the test process dies (a timeout's SIGKILL), its supervisor goes with it.
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = cmd.spawn().expect("start corral");
        let pid = child.id() as i32;
        let log: Log = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let stderr = child.stderr.take().unwrap();
        let l = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let (m, c) = &*l;
                m.lock().unwrap().push(line);
                c.notify_all();
            }
        });
        let (tx, exit) = channel();
        std::thread::spawn(move || {
            if let Ok(st) = child.wait() {
                let _ = tx.send(st);
            }
        });
        Corral {
            pid,
            dir,
            config,
            control,
            port,
            log,
            exit,
            exited: None,
        }
    }

    /// Rewrites the config (for a reload).
    pub fn write_config(&self, template: &str) {
        std::fs::write(&self.config, render(template, self.port)).unwrap();
    }

    pub fn lines(&self) -> Vec<String> {
        self.log.0.lock().unwrap().clone()
    }

    /// Where the log is now; `wait_for_after` looks only at lines after it.
    pub fn mark(&self) -> usize {
        self.log.0.lock().unwrap().len()
    }

    pub fn wait_for(&self, needle: &str, timeout: Duration) -> String {
        self.wait_for_after(0, needle, timeout)
    }

    /// Waits until a log line after `mark` contains `needle`.
    pub fn wait_for_after(&self, mark: usize, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let (m, c) = &*self.log;
        let mut lines = m.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().skip(mark).find(|l| l.contains(needle)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                drop(lines);
                panic!("no log line with {needle:?} within {timeout:?}");
            }
            lines = c.wait_timeout(lines, left).unwrap().0;
        }
    }

    /// Waits until `done` holds for the log so far (it is asked again at each new line), for at
    /// most `timeout`; returns whether it came to hold.
    pub fn wait_log(&self, timeout: Duration, mut done: impl FnMut(&[String]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let (m, c) = &*self.log;
        let mut lines = m.lock().unwrap();
        while !done(&lines) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            lines = c.wait_timeout(lines, left).unwrap().0;
        }
        true
    }

    /// Waits for "N/N ready · generation G" in the status line.
    pub fn wait_ready(&self, n: u32, generation: u32) {
        self.wait_for(
            &format!("{n}/{n} ready · generation {generation} "),
            Duration::from_secs(20),
        );
        // A round trip through the event loop: what came with the line (the BPF program of
        // balanced listeners) is applied by now.
        let _ = self.ctl(&["status", "demo"]);
    }

    /// Runs `corral ARGS --control <this socket>`.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = Command::new(CORRAL);
        cmd.args(args).arg("--control").arg(&self.control);
        cmd.output().expect("run corral")
    }

    pub fn status(&self) -> Value {
        let out = self.ctl(&["status", "demo", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    /// pids of the workers in `state`, in slot order.
    pub fn pids(&self, state: &str) -> Vec<i64> {
        let s = self.status();
        s["workers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|w| w["state"] == state)
            .map(|w| w["pid"].as_i64().unwrap())
            .collect()
    }

    pub fn get(&self, path: &str) -> std::io::Result<Value> {
        http_get(self.port, path)
    }

    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig).unwrap();
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.exit.recv_timeout(timeout).ok();
        }
        self.exited
    }
}

impl Drop for Corral {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = self.exit.recv_timeout(Duration::from_secs(10));
        }
        if std::thread::panicking() {
            eprintln!("---- corral's log ----");
            for l in self.lines() {
                // A worker's 48 KiB line says no more in full than in its first few hundred bytes.
                match l.char_indices().nth(300) {
                    Some((cut, _)) => eprintln!("{}... ({} bytes)", &l[..cut], l.len()),
                    None => eprintln!("{l}"),
                }
            }
            eprintln!("---- end of corral's log (dir {}) ----", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// One request on a new connection, as a client without keep-alive makes it.
pub fn http_get(port: u16, path: &str) -> std::io::Result<Value> {
    request(TcpStream::connect(("127.0.0.1", port))?, path)
}

/// [`http_get`] from a client at `source` (any of 127.0.0.0/8 reaches the loopback).
pub fn http_get_from(source: std::net::Ipv4Addr, port: u16, path: &str) -> std::io::Result<Value> {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    s.bind(&std::net::SocketAddr::from((source, 0)).into())?;
    s.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())?;
    request(s.into(), path)
}

fn request(mut s: TcpStream, path: &str) -> std::io::Result<Value> {
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(std::io::Error::other(format!("no HTTP answer: {text:?}")));
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other(format!("bad status: {head}")));
    }
    serde_json::from_str(body).map_err(std::io::Error::other)
}

/// Waits until `pid` has exited (pidfd_open(2) + poll(2): an event, not a polling loop).
/// Returns false if it is still alive after `timeout`.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    // SAFETY: plain syscalls on an fd this function owns and closes.
    unsafe {
        let fd = libc::syscall(libc::SYS_pidfd_open, pid, 0) as i32;
        if fd < 0 {
            return true; // ESRCH: already gone
        }
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let r = libc::poll(&mut p, 1, timeout.as_millis() as i32);
        libc::close(fd);
        r == 1
    }
}

/// Continuous load: one new connection per request, from a thread, until told to stop.
pub struct Load {
    stop: Arc<std::sync::atomic::AtomicBool>,
    /// Requests that went through so far.
    done: Arc<std::sync::atomic::AtomicU64>,
    handle: std::thread::JoinHandle<(u64, Vec<String>)>,
}

impl Load {
    pub fn start(port: u16) -> Load {
        Self::start_in(None, port)
    }

    /// The same from inside a network namespace (a systemd sandbox's `/proc/PID/ns/net`).
    pub fn start_in(netns: Option<std::fs::File>, port: u16) -> Load {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let done = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (s, d) = (stop.clone(), done.clone());
        let handle = std::thread::spawn(move || {
            if let Some(ns) = netns {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            }
            let (mut ok, mut failures) = (0u64, Vec::new());
            // Bounded: stops when told to, or after 2 minutes at most.
            let limit = Instant::now() + Duration::from_secs(120);
            while !s.load(Ordering::SeqCst) && Instant::now() < limit {
                match http_get(port, "/") {
                    Ok(_) => {
                        ok += 1;
                        d.store(ok, Ordering::SeqCst);
                    }
                    Err(e) => failures.push(e.to_string()),
                }
            }
            (ok, failures)
        });
        Load { stop, done, handle }
    }

    /// Waits until `n` requests have gone through, for at most `timeout`; whether they did.
    pub fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.done.load(Ordering::SeqCst) < n {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::yield_now();
        }
        true
    }

    /// Stops the load and checks what a user under it would: no request failed, and at least
    /// `min_ok` went through (so the load really ran across what the test did).
    #[track_caller]
    pub fn finish_without_failures(self, min_ok: u64) {
        let (ok, failures) = self.finish();
        assert!(
            failures.is_empty(),
            "{} failed: {failures:?}",
            failures.len()
        );
        assert!(ok >= min_ok, "only {ok} requests went through");
    }

    /// Stops the load; returns (successful requests, failures).
    pub fn finish(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.join().unwrap()
    }
}

/// Which workers answer `n` simultaneous requests. Each connection first does the test
/// worker's HOLD handshake: the worker that took it answers at once and then stays busy with it
/// (it serves one connection at a time), so the next connection must go to another worker.
/// With `n` workers, all `n` answer; without this, the kernel may hand sequential connections
/// to the same few workers.
pub fn answers_from_n_at_once(port: u16, n: usize) -> std::io::Result<Vec<Value>> {
    let mut conns = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"HOLD\n")?;
        let mut held = [0u8; 5];
        s.read_exact(&mut held)?;
        if &held != b"HELD\n" {
            return Err(std::io::Error::other(format!("no HELD: {held:?}")));
        }
        conns.push(s);
    }
    let mut answers = Vec::new();
    for mut s in conns {
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")?;
        let mut buf = String::new();
        s.read_to_string(&mut buf)?;
        let body = buf
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {buf:?}")))?;
        answers.push(serde_json::from_str(body).map_err(std::io::Error::other)?);
    }
    Ok(answers)
}

/// A FUSE file system whose server never answers (nothing reads its `/dev/fuse`), as one
/// that hangs (an NFS server gone): whatever looks at a path under `dir` waits until it is
/// dropped, then gets ENOTCONN. Needs root, and a kernel and a container that allow the mount.
pub struct HungFs {
    pub dir: PathBuf,
    fuse: Option<std::fs::File>,
}

impl HungFs {
    pub fn mount() -> Result<HungFs, String> {
        use std::os::fd::AsRawFd;
        use std::os::unix::ffi::OsStrExt;
        let fuse = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .map_err(|e| format!("cannot open /dev/fuse: {e}"))?;
        let dir = scratch_dir();
        let target = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
        // fuse(4): the mount takes the connection's descriptor and the root's file type.
        let options = std::ffi::CString::new(format!(
            "fd={},rootmode=40000,user_id=0,group_id=0",
            fuse.as_raw_fd()
        ))
        .unwrap();
        // SAFETY: every pointer is a NUL-terminated string that outlives the call.
        let r = unsafe {
            libc::mount(
                c"corral-test-hung".as_ptr(),
                target.as_ptr(),
                c"fuse".as_ptr(),
                0,
                options.as_ptr().cast(),
            )
        };
        if r != 0 {
            let e = std::io::Error::last_os_error();
            let _ = std::fs::remove_dir(&dir);
            return Err(format!("cannot mount a FUSE file system here: {e}"));
        }
        Ok(HungFs {
            dir,
            fuse: Some(fuse),
        })
    }
}

impl Drop for HungFs {
    fn drop(&mut self) {
        use std::os::unix::ffi::OsStrExt;
        // The last descriptor of the connection closed aborts it: whoever waits gets ENOTCONN.
        drop(self.fuse.take());
        let target = std::ffi::CString::new(self.dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: a NUL-terminated path that outlives the call.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// `VmRSS` or `VmHWM` of a process (proc_pid_status(5)), in bytes.
pub fn vm(pid: i32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

/// The pid in a log line of corral's (`worker 0 pid 1234 (generation 1): ...`).
pub fn pid_in(line: &str) -> i32 {
    line.split("pid ")
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {line:?}"))
}

/// The state letter of `/proc/PID/stat` (proc(5)): `S` sleeping, `T` stopped, `Z` zombie...
pub fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits until `pid` is in `state`. Nothing reports that another process stopped (waitid(2)
/// WSTOPPED is for one's own children), so `/proc` is looked at every 10 ms, within `timeout`.
pub fn wait_state(pid: i32, state: char, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if proc_state(pid) == Some(state) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The signals `pid` ignores (`SigIgn` in `/proc/PID/status`, proc(5)), by number.
pub fn ignored_signals(pid: i32) -> Vec<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    (1..=64).filter(|n| mask >> (n - 1) & 1 == 1).collect()
}

/// A process the test started indirectly (a corral that outlives the script(1) that ran it),
/// killed when the test ends, however it ends.
pub struct KillOnDrop(pub i32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if proc_state(self.0).is_some() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(self.0),
                nix::sys::signal::Signal::SIGKILL,
            );
            wait_gone(self.0, Duration::from_secs(10));
        }
    }
}
