//! The keeper: a small process that kills what is left of the workers' trees when the
//! supervisor dies, even by SIGKILL.
//!
//! A worker dies with corral (`PR_SET_PDEATHSIG`), but that reaches only the worker itself: the
//! processes it started (gunicorn's and hypercorn's worker processes, a shell wrapper's server)
//! would be reparented and go on serving the port. Under systemd the unit's cgroup takes care of
//! them (`KillMode=mixed`, systemd.kill(5)); standalone nothing would. So corral starts this
//! keeper before any worker: corral's own binary, run as `corral-keeper` without a death signal,
//! in a process group of its own (a Ctrl-C on the terminal does not reach it) and with every
//! signal it can block blocked. corral tells it each worker's process group as the worker
//! starts and ends, through a pipe only corral holds the writing end of. When that pipe reads
//! end-of-file, corral is gone: the keeper sends SIGKILL to every process group it was told
//! of and exits.
//!
//! What this guarantees: every process that stayed in its worker's process group (children do,
//! unless they call setsid(2) or setpgid(2)) dies with corral. A process that left the group
//! and whose parent died is not found. Killing the keeper along with corral (`pkill -9
//! corral`) defeats it.
//!
//! The pipe carries 5-byte records: `+` or `-` and a process group id (i32, native order).

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::signal::{killpg, SigSet, Signal};
use nix::unistd::Pid;

/// The name corral runs itself under to be the keeper (see main.rs).
pub const ARGV0: &str = "corral-keeper";

/// Where the keeper finds the pipe's reading end.
const PIPE_FD: RawFd = 3;

/// Records of one change each: `+`/`-` and a pgid.
fn record(add: bool, pgid: i32) -> [u8; 5] {
    let mut r = [0u8; 5];
    r[0] = if add { b'+' } else { b'-' };
    r[1..].copy_from_slice(&pgid.to_ne_bytes());
    r
}

/// Applies whole records from `bytes` to `groups`; returns how many bytes were used (a record
/// cut by the end of a read is completed by the next).
fn apply(bytes: &[u8], groups: &mut HashSet<i32>) -> usize {
    let mut used = 0;
    for r in bytes.chunks_exact(5) {
        let pgid = i32::from_ne_bytes(r[1..].try_into().expect("4 bytes"));
        match r[0] {
            b'+' => {
                groups.insert(pgid);
            }
            b'-' => {
                groups.remove(&pgid);
            }
            _ => {}
        }
        used += 5;
    }
    used
}

/// The keeper process's `main`.
pub fn main() -> i32 {
    // Blocked signals stay pending: none of them ends the keeper (SIGKILL aside).
    let _ = SigSet::all().thread_block();
    let _ = nix::sys::prctl::set_name(c"corral-keeper");
    let mut pipe = std::fs::File::from(adopt_pipe());
    let mut groups = HashSet::new();
    let mut buf = vec![0u8; 4096];
    let mut have = 0;
    loop {
        match pipe.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => {
                have += n;
                let used = apply(&buf[..have], &mut groups);
                buf.copy_within(used..have, 0);
                have -= used;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    // corral is gone.
    for pgid in groups {
        if pgid > 1 {
            let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
        }
    }
    0
}

/// corral placed the pipe's reading end at [`PIPE_FD`] for this process to own. Anything else
/// there (a keeper started by hand) would be read as process groups to kill: refused.
fn adopt_pipe() -> OwnedFd {
    let fd = crate::spawn::adopt_inherited_fd(PIPE_FD).unwrap_or_else(|e| {
        eprintln!("corral-keeper: no pipe at fd {PIPE_FD}: {e}");
        std::process::exit(1)
    });
    let is_fifo = nix::sys::stat::fstat(&fd).is_ok_and(|st| {
        nix::sys::stat::SFlag::from_bits_truncate(st.st_mode)
            .contains(nix::sys::stat::SFlag::S_IFIFO)
    });
    if !is_fifo {
        eprintln!("corral-keeper: fd {PIPE_FD} is not a pipe; corral-keeper is started by corral");
        std::process::exit(1);
    }
    fd
}

/// corral's side: the writing end of the pipe, and the keeper's pid.
pub struct Keeper {
    pipe: std::fs::File,
    pub pid: i32,
}

impl Keeper {
    /// Starts the keeper (corral's own binary, `exe`) with `stdin` and corral's stderr.
    pub fn start(exe: &Path, stdin: RawFd) -> io::Result<Keeper> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let cmd = crate::spawn::Command {
            program: exe,
            argv: &[ARGV0.to_string()],
            env: &[],
            listen_pid: false,
            watchdog_pid: false,
            fds: &[read.as_raw_fd()],
            stdin,
            stdout: 2,
            stderr: 2,
            directory: Some(Path::new("/")),
            die_with_parent: false,
            nofile: None,
        };
        let pid = crate::spawn::spawn(&cmd).map_err(|e| io::Error::other(e.to_string()))?;
        drop(read);
        // Never wait on the keeper from the event loop: a full pipe loses a record, and the
        // keeper reads continuously, so it is never full for long.
        nix::fcntl::fcntl(
            &write,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
        Ok(Keeper {
            pipe: std::fs::File::from(write),
            pid,
        })
    }

    /// The keeper an earlier image started (an upgrade in place: carry.rs); it is this
    /// process's child still, and reads the same pipe.
    pub fn adopt(pipe: OwnedFd, pid: i32) -> Keeper {
        Keeper {
            pipe: std::fs::File::from(pipe),
            pid,
        }
    }

    /// A worker's process group to kill if corral dies.
    pub fn watch(&mut self, pgid: i32) -> io::Result<()> {
        self.send(record(true, pgid))
    }

    /// That worker has been reaped: its group id may be reused. A failure here must not be
    /// ignored: the keeper would kill whoever gets the id next.
    pub fn forget(&mut self, pgid: i32) -> io::Result<()> {
        self.send(record(false, pgid))
    }

    fn send(&mut self, r: [u8; 5]) -> io::Result<()> {
        // A pipe write of at most PIPE_BUF bytes is atomic (pipe(7)): whole or not at all.
        self.pipe.write(&r).map(drop)
    }
}

impl std::os::fd::AsFd for Keeper {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.pipe.as_fd()
    }
}

impl AsRawFd for Keeper {
    fn as_raw_fd(&self) -> RawFd {
        self.pipe.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_add_and_remove_groups_across_reads() {
        let mut g = HashSet::new();
        let mut bytes = Vec::new();
        for (add, pgid) in [(true, 10), (true, 20), (false, 10), (true, 30)] {
            bytes.extend_from_slice(&record(add, pgid));
        }
        // Cut in the middle of the third record.
        let used = apply(&bytes[..12], &mut g);
        assert_eq!(used, 10);
        let rest = [&bytes[used..12], &bytes[12..]].concat();
        assert_eq!(apply(&rest, &mut g), 10);
        assert_eq!(g, HashSet::from([20, 30]));
    }
}
