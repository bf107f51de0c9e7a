//! What an upgrade in place hands from the running corral to the binary that replaces it
//! across execve(2), which keeps the pid, the workers and every open socket.
//!
//! The state is JSON in a sealed memfd (memfd_create(2), `F_SEAL_WRITE`), whose number the
//! next image finds in `CORRAL_RESUME`; the descriptors it names are carried open (carry.rs).
//! It is versioned: a corral reads the formats up to its own and refuses, whole and with the
//! reason, one it does not know. Before the exec, the running corral has the new binary read
//! the state (`corral upgrade-check`, [`check`]): a binary that is missing, not executable, of
//! another architecture, crashes at start or cannot read the state is found out while nothing
//! has changed.

use std::ffi::{CString, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::config::Config;
use crate::notify::Notification;
use crate::supervisor::{RequestId, Supervisor, WorkerId};

/// The format this corral writes, and the newest it reads.
pub const FORMAT: u32 = 1;

/// The variable naming the state's descriptor in the next image.
pub const RESUME_VAR: &str = "CORRAL_RESUME";
/// Set when a new image gave up and put the previous one back: why.
pub const FAILED_VAR: &str = "CORRAL_UPGRADE_FAILED";

/// The most a state may be: a bound on what the next image reads.
const MAX_STATE: u64 = 256 << 20;

/// How long the new binary may take to read the state before the upgrade is refused.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Serialize, Deserialize)]
pub struct State {
    pub format: u32,
    /// The corral that wrote it.
    pub version: String,
    /// CLOCK_MONOTONIC when it was written, in µs: the machine's times are relative to it.
    pub saved_at: u64,
    /// The machine's own state (supervisor_state.rs, versioned on its own).
    pub machine: Box<RawValue>,
    pub app: String,
    pub config_path: PathBuf,
    pub control_path: PathBuf,
    /// Each live generation's config, as it was read.
    pub generations: Vec<(u32, Config)>,
    pub next_gen: u32,
    pub listeners: crate::listen::Saved,
    pub workers: Vec<WorkerIo>,
    pub notify: i32,
    pub control: i32,
    pub bus: crate::bus::Saved,
    /// The keeper's pid and pipe (keeper.rs), and how many were started.
    pub keeper: Option<(i32, i32)>,
    pub keeper_starts: u32,
    /// Control requests waiting for their answer, with their connections.
    pub requests: Vec<Request>,
    pub next_request: RequestId,
    /// The requests that asked for this upgrade (none for a signal), to be told how it went.
    pub upgrading: Vec<RequestId>,
    /// Notifications and bus messages from Node.js channels not yet handled.
    pub notes: Vec<(i32, Note)>,
    pub bus_lines: Vec<(i32, Vec<u8>)>,
    pub worker_nofile: Option<(u64, u64)>,
    /// Upgrades in place so far, and the last one's time (seconds since the epoch) and
    /// version it came from.
    pub upgrades: u32,
    pub last_upgrade: Option<(u64, String)>,
    /// The binary's path, the arguments and the supervisor's own variables, for the next one.
    pub exe: PathBuf,
    pub argv: Vec<Vec<u8>>,
    pub own_env: Vec<(Vec<u8>, Vec<u8>)>,
    /// The signals blocked before the exec blocked them all: the next image blocks these
    /// again, once it handles its own.
    pub blocked: Vec<i32>,
    /// Stop and reload signals the previous image took and did not handle: sent again.
    #[serde(default)]
    pub signals: Vec<i32>,
    /// SIGHUP was ignored when the first image started (nohup).
    pub hup_ignored: bool,
    /// systemd was told `RELOADING=1`: the next image tells it `READY=1`.
    pub reloading_sent: bool,
    /// Every descriptor carried.
    pub carried: Vec<i32>,
}

/// One process's pipes and Node.js channel.
#[derive(Serialize, Deserialize)]
pub struct WorkerIo {
    pub id: WorkerId,
    /// Each output pipe, with the part of a line its relay held.
    pub stdout: Option<(i32, Vec<u8>)>,
    pub stderr: Option<(i32, Vec<u8>)>,
    pub channel: Option<Channel>,
}

#[derive(Serialize, Deserialize)]
pub struct Channel {
    pub fd: i32,
    /// Read and not handled yet.
    pub unread: Vec<u8>,
    /// Lines not written to it yet.
    pub unsent: Vec<Vec<u8>>,
}

#[derive(Serialize, Deserialize)]
pub struct Request {
    pub id: RequestId,
    pub fd: i32,
    pub systemd_waits: bool,
}

/// A [`Notification`] as the state holds it.
#[derive(Clone, Serialize, Deserialize)]
pub struct Note {
    ready: bool,
    status: Option<String>,
    watchdog_ping: bool,
    watchdog_trigger: bool,
    stopping: bool,
    reloading: bool,
    extend_timeout_us: Option<u64>,
    errno: Option<i32>,
}

impl From<&Notification> for Note {
    fn from(n: &Notification) -> Note {
        Note {
            ready: n.ready,
            status: n.status.clone(),
            watchdog_ping: n.watchdog_ping,
            watchdog_trigger: n.watchdog_trigger,
            stopping: n.stopping,
            reloading: n.reloading,
            extend_timeout_us: n.extend_timeout.map(|d| d.as_micros() as u64),
            errno: n.errno,
        }
    }
}

impl From<Note> for Notification {
    fn from(n: Note) -> Notification {
        Notification {
            ready: n.ready,
            status: n.status,
            watchdog_ping: n.watchdog_ping,
            watchdog_trigger: n.watchdog_trigger,
            stopping: n.stopping,
            reloading: n.reloading,
            extend_timeout: n.extend_timeout_us.map(Duration::from_micros),
            errno: n.errno,
        }
    }
}

/// CLOCK_MONOTONIC in µs, which `Instant` reads too, and which goes on across an exec.
pub fn monotonic_us() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0)
}

impl State {
    /// The `Instant` in this process that was `saved_at` in the one that wrote it.
    pub fn saved_instant(&self) -> Instant {
        let ago = monotonic_us().saturating_sub(self.saved_at);
        let now = Instant::now();
        now.checked_sub(Duration::from_micros(ago)).unwrap_or(now)
    }

    /// The machine, as of when it was saved.
    pub fn machine(&self) -> Result<Supervisor, String> {
        Supervisor::restore(self.machine.get().as_bytes(), self.saved_instant())
    }
}

/// Reads a state: refused, with the reason, if it is not one, or of a format this corral does
/// not read.
pub fn parse(bytes: &[u8]) -> Result<State, String> {
    #[derive(Deserialize)]
    struct Head {
        format: u32,
        version: String,
    }
    let head: Head = serde_json::from_slice(bytes)
        .map_err(|e| format!("not the state of an upgrade in place: {e}"))?;
    if head.format > FORMAT {
        return Err(format!(
            "the state is of format {} (corral {}), newer than this corral {} reads (format \
             {FORMAT})",
            head.format,
            head.version,
            crate::version::get()
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        format!(
            "the state of corral {} (format {}) cannot be read: {e}",
            head.version, head.format
        )
    })
}

/// What `corral upgrade-check` says of a state: whether this binary reads all of it, the
/// machine included.
pub fn check(bytes: &[u8]) -> Result<String, String> {
    let state = parse(bytes)?;
    state.machine()?;
    Ok(format!(
        "corral {} reads the state of corral {} (format {})",
        crate::version::get(),
        state.version,
        state.format
    ))
}

/// The state in a sealed memfd, at offset 0.
pub fn to_memfd(bytes: &[u8]) -> io::Result<OwnedFd> {
    use nix::sys::memfd::{memfd_create, MFdFlags};
    let fd = memfd_create(
        c"corral-state",
        MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
    )?;
    let mut f = std::fs::File::from(fd);
    f.write_all(bytes)?;
    // At its start for whoever reads it as a stream (`corral upgrade-check`'s stdin).
    std::io::Seek::rewind(&mut f)?;
    let fd = OwnedFd::from(f);
    use nix::fcntl::{fcntl, FcntlArg, SealFlag};
    fcntl(
        &fd,
        FcntlArg::F_ADD_SEALS(
            SealFlag::F_SEAL_WRITE
                | SealFlag::F_SEAL_GROW
                | SealFlag::F_SEAL_SHRINK
                | SealFlag::F_SEAL_SEAL,
        ),
    )?;
    Ok(fd)
}

/// Everything in the state's descriptor, read from offset 0 without moving its offset (the
/// same descriptor may be read again, by the image put back).
pub fn read_memfd(fd: &impl AsFd) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = nix::sys::uio::pread(fd, &mut buf, out.len() as i64)?;
        if n == 0 {
            return Ok(out);
        }
        out.extend_from_slice(&buf[..n]);
        if out.len() as u64 > MAX_STATE {
            return Err(io::Error::other("the state is larger than corral reads"));
        }
    }
}

/// Has the binary at `exe` read the state in `memfd` (`corral upgrade-check`), within
/// [`CHECK_TIMEOUT`]: what it says when it can, or why not.
/// `exe` is what is run (a `/proc/PID/fd/N` of the binary opened once), `shown` its name.
pub fn probe(exe: &Path, shown: &Path, memfd: &OwnedFd) -> Result<String, String> {
    use std::process::{Command, Stdio};
    let stdin = std::fs::File::from(memfd.try_clone().map_err(|e| e.to_string())?);
    let mut child = Command::new(exe)
        .arg0("corral")
        .arg("upgrade-check")
        .env_clear()
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", shown.display()))?;
    let deadline = Instant::now() + CHECK_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{} did not read the state within {}s",
                    shown.display(),
                    CHECK_TIMEOUT.as_secs()
                ));
            }
            Err(e) => return Err(format!("cannot wait for {}: {e}", shown.display())),
        }
    };
    let said = |r: Option<std::process::ChildStdout>, e: Option<std::process::ChildStderr>| {
        let mut text = String::new();
        if let Some(mut r) = r {
            let _ = r.by_ref().take(64 << 10).read_to_string(&mut text);
        }
        if let Some(mut e) = e {
            let _ = e.by_ref().take(64 << 10).read_to_string(&mut text);
        }
        text.trim().to_string()
    };
    let text = said(child.stdout.take(), child.stderr.take());
    if status.success() {
        Ok(text)
    } else if text.is_empty() {
        Err(format!("{} {status}", shown.display()))
    } else {
        Err(text)
    }
}

use std::os::unix::process::CommandExt;

/// This process's environment, as bytes.
pub fn own_environment() -> Vec<(Vec<u8>, Vec<u8>)> {
    std::env::vars_os()
        .map(|(k, v)| (k.into_vec(), v.into_vec()))
        .collect()
}

/// `base` with each of `set` in place of the variable of its name, as execve(2) takes them.
pub fn environment(mut base: Vec<(Vec<u8>, Vec<u8>)>, set: &[(Vec<u8>, Vec<u8>)]) -> Vec<CString> {
    for (k, v) in set {
        base.retain(|(bk, _)| bk != k);
        base.push((k.clone(), v.clone()));
    }
    base.into_iter()
        .filter_map(|(mut k, v)| {
            k.push(b'=');
            k.extend_from_slice(&v);
            CString::new(k).ok()
        })
        .collect()
}

pub fn arguments(argv: &[Vec<u8>]) -> Vec<CString> {
    argv.iter()
        .filter_map(|a| CString::new(a.clone()).ok())
        .collect()
}

/// Replaces this image with the binary at `exe`; returns only if that fails.
pub fn exec(exe: &Path, argv: &[CString], env: &[CString]) -> io::Error {
    let Ok(path) = CString::new(exe.as_os_str().as_bytes()) else {
        return io::Error::other("the binary's path has a NUL in it");
    };
    match nix::unistd::execve(&path, argv, env) {
        Ok(never) => match never {},
        Err(e) => e.into(),
    }
}

/// Whether the file at `path` is a script (`#!`): read as far as it can be.
pub fn is_script(path: &Path) -> bool {
    let mut head = [0u8; 2];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok_and(|()| &head == b"#!")
}

/// Puts back the binary open at `fd` (the previous image's); returns only if that fails.
pub fn exec_fd(fd: &impl AsFd, argv: &[CString], env: &[CString]) -> io::Error {
    match nix::unistd::fexecve(fd, argv, env) {
        Ok(never) => match never {},
        Err(e) => e.into(),
    }
}

/// The arguments this process was started with.
pub fn own_arguments() -> Vec<Vec<u8>> {
    std::env::args_os().map(OsString::into_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_of_a_newer_format_is_refused_with_the_reason() {
        let newer = format!(r#"{{"format": {}, "version": "9.0.0"}}"#, FORMAT + 1);
        let e = parse(newer.as_bytes()).err().unwrap();
        assert!(e.contains("newer than this corral"), "{e}");
        assert!(e.contains("9.0.0"), "{e}");
        let e = parse(b"{}").err().unwrap();
        assert!(e.contains("not the state of an upgrade in place"), "{e}");
        let e = check(br#"{"format": 1, "version": "0.0.1"}"#)
            .err()
            .unwrap();
        assert!(e.contains("cannot be read"), "{e}");
    }

    #[test]
    fn the_memfd_is_sealed_and_read_from_its_start_each_time() {
        let fd = to_memfd(b"state bytes").unwrap();
        assert_eq!(read_memfd(&fd).unwrap(), b"state bytes");
        assert_eq!(read_memfd(&fd).unwrap(), b"state bytes");
        let mut f = std::fs::File::from(fd);
        assert!(f.write_all(b"more").is_err(), "sealed against writes");
    }
}
