//! Readiness for servers that never say `READY=1` (`readiness.mode = "listen"`): a worker is
//! ready once it, or a process of its tree, is waiting for connections on one of the listening
//! sockets it inherited.
//!
//! The listeners are known by their socket inodes (the `socket:[INODE]` of `/proc/PID/fd`,
//! which a `dup()`, a `fromfd()` or an fd passed over SCM_RIGHTS keeps). A process waits on one
//! when, per proc(5):
//! - an epoll instance of it has the socket registered for input: `/proc/PID/fdinfo/EPFD` lists
//!   each target as `tfd: N events: HEX ... ino: HEX` (event loops: libuv/Node.js, asyncio and
//!   so uvicorn and hypercorn, Go's netpoller, tokio, gunicorn's gthread worker);
//! - a thread of it is blocked in `accept`/`accept4` on it: `/proc/PID/task/TID/syscall` gives
//!   the system call number and its arguments (blocking servers);
//! - a thread of it is blocked in `poll`/`ppoll`/`select`/`pselect6` with the socket in its
//!   read set, read from the process's memory with process_vm_readv(2) (Python's
//!   `socketserver`, gunicorn's sync worker).
//!
//! Not detected: io_uring accepts, and a process that blocks the other way round (in
//! `epoll_wait` on an instance whose registration is gone). Reading another process's
//! syscall file and memory needs ptrace access to it (ptrace(2), "Ptrace access mode
//! checking"); corral has it for its own descendants of the same user.

use std::collections::HashSet;
use std::fmt;

/// `EPOLLIN` (epoll_ctl(2)): the registration asks for input, which for a listener means
/// incoming connections.
const EPOLLIN: u32 = 0x1;
/// `POLLIN` (poll(2)).
const POLLIN: i16 = 0x1;
/// At most this many `/proc` entries (fds, threads, processes) are looked at in one probe of one
/// worker's tree, whatever its shape: a server that is still starting has few, and the probe
/// runs on the event loop.
pub const BUDGET: usize = 8192;
/// At most this many `pollfd` entries are read from a thread.
const MAX_POLLFDS: u64 = 4096;

/// How a process was found waiting for connections.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    pub pid: i32,
    pub how: &'static str,
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pid {} waits for connections ({})", self.pid, self.how)
    }
}

/// The inode of a `socket:[INODE]` link target.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// One registration of an epoll instance, from its fdinfo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpollTarget {
    pub fd: i32,
    pub events: u32,
    pub ino: u64,
}

/// The registrations listed in the fdinfo text of an epoll fd (proc(5): `tfd:` lines; the
/// numbers after `events:` and `ino:` are hexadecimal).
pub fn epoll_targets(fdinfo: &str) -> Vec<EpollTarget> {
    fdinfo
        .lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix("tfd:")?;
            let mut fd = None;
            let mut events = None;
            let mut ino = None;
            let mut words = rest.split_whitespace();
            if let Some(w) = words.next() {
                fd = w.parse().ok();
            }
            while let Some(w) = words.next() {
                let (key, value) = match w.split_once(':') {
                    Some((k, v)) if !v.is_empty() => (k, v),
                    Some((k, _)) => (k, words.next().unwrap_or("")),
                    None => continue,
                };
                match key {
                    "events" => events = u32::from_str_radix(value, 16).ok(),
                    "ino" => ino = u64::from_str_radix(value, 16).ok(),
                    _ => {}
                }
            }
            Some(EpollTarget {
                fd: fd?,
                events: events?,
                ino: ino?,
            })
        })
        .collect()
}

/// A thread's current system call, from `/proc/PID/task/TID/syscall`: the number and the six
/// argument registers. `None` when it is running or not in a system call.
pub fn parse_syscall(text: &str) -> Option<(i64, [u64; 6])> {
    let mut words = text.split_whitespace();
    let nr: i64 = words.next()?.parse().ok()?;
    if nr < 0 {
        return None;
    }
    let mut args = [0u64; 6];
    for a in &mut args {
        *a = u64::from_str_radix(words.next()?.trim_start_matches("0x"), 16).ok()?;
    }
    Some((nr, args))
}

/// What a blocked system call waits on, as far as readiness goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// `accept(fd)`.
    Accept { fd: i32 },
    /// `poll`/`ppoll`: `count` entries of `struct pollfd` at `addr`.
    Poll { addr: u64, count: u64 },
    /// `select`/`pselect6`: an `fd_set` of `nfds` bits at `addr` (the read set).
    Select { nfds: u64, addr: u64 },
}

/// Classifies a system call by its number (this architecture's, from libc).
pub fn wait_of(nr: i64, args: [u64; 6]) -> Option<Wait> {
    let fd = || i32::try_from(args[0]).ok();
    match nr {
        n if n == libc::SYS_accept4 => Some(Wait::Accept { fd: fd()? }),
        n if n == libc::SYS_ppoll => Some(Wait::Poll {
            addr: args[0],
            count: args[1],
        }),
        n if n == libc::SYS_pselect6 => Some(Wait::Select {
            nfds: args[0],
            addr: args[1],
        }),
        _ => legacy_wait(nr, args),
    }
}

/// The older calls, which not every architecture has (aarch64 has only the ones above).
#[cfg(target_arch = "x86_64")]
fn legacy_wait(nr: i64, args: [u64; 6]) -> Option<Wait> {
    match nr {
        libc::SYS_accept => Some(Wait::Accept {
            fd: i32::try_from(args[0]).ok()?,
        }),
        libc::SYS_poll => Some(Wait::Poll {
            addr: args[0],
            count: args[1],
        }),
        libc::SYS_select => Some(Wait::Select {
            nfds: args[0],
            addr: args[1],
        }),
        _ => None,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn legacy_wait(nr: i64, args: [u64; 6]) -> Option<Wait> {
    #[cfg(any(target_arch = "aarch64", target_arch = "riscv64"))]
    let _ = (nr, args);
    #[cfg(not(any(target_arch = "aarch64", target_arch = "riscv64")))]
    if nr == libc::SYS_accept {
        return Some(Wait::Accept {
            fd: i32::try_from(args[0]).ok()?,
        });
    }
    None
}

/// Whether an array of `struct pollfd` (poll(2): `int fd; short events; short revents`, in
/// native byte order) asks for input on one of `fds`.
pub fn pollfds_watch(bytes: &[u8], fds: &HashSet<i32>) -> bool {
    bytes.chunks_exact(8).any(|e| {
        let fd = i32::from_ne_bytes(e[0..4].try_into().expect("4 bytes"));
        let events = i16::from_ne_bytes(e[4..6].try_into().expect("2 bytes"));
        fds.contains(&fd) && events & POLLIN != 0
    })
}

/// Whether an `fd_set` (select(2): an array of `long` words, bit `fd % bits` of word
/// `fd / bits`, native byte order) has one of `fds` below `nfds`.
pub fn fdset_has(bytes: &[u8], nfds: u64, fds: &HashSet<i32>) -> bool {
    const WORD: usize = std::mem::size_of::<libc::c_long>();
    fds.iter().any(|&fd| {
        let Ok(f) = usize::try_from(fd) else {
            return false;
        };
        if f as u64 >= nfds {
            return false;
        }
        let (word, bit) = (f / (WORD * 8), f % (WORD * 8));
        let Some(w) = bytes.get(word * WORD..(word + 1) * WORD) else {
            return false;
        };
        let mut buf = [0u8; 8];
        buf[..WORD].copy_from_slice(w);
        (u64::from_ne_bytes(buf) >> bit) & 1 == 1
    })
}

/// Looks at the processes of one worker's tree; the first found waiting for connections on a
/// socket with one of `inodes` wins.
pub fn probe(tree: &[i32], inodes: &HashSet<u64>) -> Option<Found> {
    if inodes.is_empty() {
        return None;
    }
    let mut budget = BUDGET;
    for &pid in tree {
        if budget == 0 {
            return None;
        }
        budget -= 1;
        if let Some(found) = probe_process(pid, inodes, &mut budget) {
            return Some(found);
        }
    }
    None
}

/// Takes one from `budget` for each item of `items`, and stops when it is spent.
fn within<'b, T>(
    items: impl Iterator<Item = T> + 'b,
    budget: &'b mut usize,
) -> impl Iterator<Item = T> + 'b {
    items.take_while(move |_| {
        let left = *budget > 0;
        *budget = budget.saturating_sub(1);
        left
    })
}

fn probe_process(pid: i32, inodes: &HashSet<u64>, budget: &mut usize) -> Option<Found> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    let mut listeners = HashSet::new();
    let mut epolls = Vec::new();
    for entry in within(dir.flatten(), budget) {
        let Some(fd) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        if socket_inode(&target).is_some_and(|i| inodes.contains(&i)) {
            listeners.insert(fd);
        } else if target == "anon_inode:[eventpoll]" {
            epolls.push(fd);
        }
    }
    for ep in epolls {
        let Ok(info) = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{ep}")) else {
            continue;
        };
        let watched = epoll_targets(&info)
            .iter()
            .any(|t| inodes.contains(&t.ino) && t.events & EPOLLIN != 0);
        if watched {
            return Some(Found { pid, how: "epoll" });
        }
    }
    if listeners.is_empty() {
        return None;
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for task in within(tasks.flatten(), budget) {
        let Ok(text) = std::fs::read_to_string(task.path().join("syscall")) else {
            continue;
        };
        let Some((nr, args)) = parse_syscall(&text) else {
            continue;
        };
        let how = match wait_of(nr, args) {
            Some(Wait::Accept { fd }) if listeners.contains(&fd) => "accept",
            Some(Wait::Poll { addr, count }) if count <= MAX_POLLFDS => {
                // A thread whose memory cannot be read is passed over, not the process.
                let Some(bytes) = read_memory(pid, addr, count as usize * 8) else {
                    continue;
                };
                if !pollfds_watch(&bytes, &listeners) {
                    continue;
                }
                "poll"
            }
            Some(Wait::Select { nfds, addr }) if addr != 0 => {
                let len = (nfds.min(libc::FD_SETSIZE as u64) as usize).div_ceil(8);
                let Some(bytes) = read_memory(pid, addr, len.next_multiple_of(8)) else {
                    continue;
                };
                if !fdset_has(&bytes, nfds, &listeners) {
                    continue;
                }
                "select"
            }
            _ => continue,
        };
        return Some(Found { pid, how });
    }
    None
}

/// Reads `len` bytes at `addr` of process `pid` (process_vm_readv(2)).
fn read_memory(pid: i32, addr: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let remote = [nix::sys::uio::RemoteIoVec {
        base: usize::try_from(addr).ok()?,
        len,
    }];
    let n = nix::sys::uio::process_vm_readv(
        nix::unistd::Pid::from_raw(pid),
        &mut [std::io::IoSliceMut::new(&mut buf)],
        &remote,
    )
    .ok()?;
    buf.truncate(n);
    Some(buf)
}

/// The inodes of the listening sockets corral hands to workers.
pub fn inodes_of<F: std::os::fd::AsFd>(fds: impl IntoIterator<Item = F>) -> HashSet<u64> {
    fds.into_iter()
        .filter_map(|fd| nix::sys::stat::fstat(fd).ok())
        .map(|st| st.st_ino)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a Python process with a listener (fd 3, inode 45891 = 0xb343) registered in
    // an epoll instance (fd 4); the first lines are the epoll fd's own.
    const FDINFO: &str = "pos:\t0\nflags:\t02000002\nmnt_id:\t17\nino:\t1038\n\
        tfd:        3 events:       19 data:                3  pos:0 ino:b343 sdev:9\n\
        tfd:       10 events:        4 data:   7f0000000000a  pos:0 ino:2a sdev:9\n";

    #[test]
    fn epoll_registrations_are_read_from_fdinfo() {
        assert_eq!(
            epoll_targets(FDINFO),
            vec![
                EpollTarget {
                    fd: 3,
                    events: 0x19,
                    ino: 45891
                },
                EpollTarget {
                    fd: 10,
                    events: 0x4,
                    ino: 0x2a
                },
            ]
        );
        // The fdinfo of a file that is not an epoll instance lists no targets.
        assert!(epoll_targets("pos:\t0\nflags:\t02\nmnt_id:\t10\nino:\t45891\n").is_empty());
        assert!(epoll_targets("tfd: x events: zz").is_empty());
    }

    #[test]
    fn socket_links() {
        assert_eq!(socket_inode("socket:[45891]"), Some(45891));
        assert_eq!(socket_inode("anon_inode:[eventpoll]"), None);
        assert_eq!(socket_inode("/dev/null"), None);
    }

    #[test]
    fn syscall_lines() {
        let accept = format!(
            "{} 0x3 0x7ffe1 0x7ffe2 0x80800 0x0 0x0 0x7ffe0 0x7f1",
            libc::SYS_accept4
        );
        let (nr, args) = parse_syscall(&accept).unwrap();
        assert_eq!(wait_of(nr, args), Some(Wait::Accept { fd: 3 }));
        let ppoll = format!(
            "{} 0x7ffc10 0x2 0x0 0x0 0x8 0x0 0x7ffe0 0x7f1",
            libc::SYS_ppoll
        );
        let (nr, args) = parse_syscall(&ppoll).unwrap();
        assert_eq!(
            wait_of(nr, args),
            Some(Wait::Poll {
                addr: 0x7ffc10,
                count: 2
            })
        );
        assert_eq!(parse_syscall("running"), None);
        assert_eq!(parse_syscall("-1 0x7ffc3ad04758 0x7f0f460ed503"), None);
        assert_eq!(parse_syscall("230 0x1"), None, "truncated");
        // epoll_wait itself says nothing about which sockets.
        let wait = format!(
            "{} 0x4 0x7f 0x400 0xffffffff 0x0 0x0 0x1 0x2",
            libc::SYS_epoll_pwait
        );
        let (nr, args) = parse_syscall(&wait).unwrap();
        assert_eq!(wait_of(nr, args), None);
    }

    #[test]
    fn poll_and_select_sets() {
        let fds: HashSet<i32> = [3].into();
        let entry = |fd: i32, events: i16| {
            let mut v = fd.to_ne_bytes().to_vec();
            v.extend_from_slice(&events.to_ne_bytes());
            v.extend_from_slice(&0i16.to_ne_bytes());
            v
        };
        let mut arr = entry(5, POLLIN);
        arr.extend(entry(3, POLLIN));
        assert!(pollfds_watch(&arr, &fds));
        // Watched for output only, or not at all.
        assert!(!pollfds_watch(&entry(3, 0x4), &fds));
        assert!(!pollfds_watch(&entry(5, POLLIN), &fds));

        let mut set = [0u8; 128];
        set[0] = 1 << 3;
        assert!(fdset_has(&set, 4, &fds));
        assert!(!fdset_has(&set, 3, &fds), "fd 3 is not below nfds 3");
        set[0] = 1 << 4;
        assert!(!fdset_has(&set, 5, &fds));
        let high: HashSet<i32> = [70].into();
        set[70 / 8] = 1 << (70 % 8);
        assert!(fdset_has(&set, 71, &high));
    }

    #[test]
    fn a_real_listener_in_epoll_is_found_and_one_not_watched_is_not() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::OwnedFd::from(l);
        let inodes = inodes_of([&fd]);
        let me = std::process::id() as i32;
        assert_eq!(probe(&[me], &inodes), None);
        let ep =
            nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC).unwrap();
        ep.add(
            &fd,
            nix::sys::epoll::EpollEvent::new(nix::sys::epoll::EpollFlags::EPOLLIN, 7),
        )
        .unwrap();
        assert_eq!(
            probe(&[me], &inodes),
            Some(Found {
                pid: me,
                how: "epoll"
            })
        );
        assert_eq!(probe(&[me], &HashSet::from([1])), None);
    }

    /// Waits (bounded) until the probe finds this process waiting in a thread.
    fn found_within(inodes: &HashSet<u64>) -> Option<Found> {
        let me = std::process::id() as i32;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            if let Some(f) = probe(&[me], inodes) {
                return Some(f);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            // The thread is about to block: look again once it has (a bounded wait).
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_thread_blocked_in_accept_or_poll_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let inodes = inodes_of([&std::os::fd::OwnedFd::from(l.try_clone().unwrap())]);
        let t = std::thread::spawn(move || l.accept().map(drop));
        assert_eq!(found_within(&inodes).map(|f| f.how), Some("accept"));
        std::net::TcpStream::connect(addr).unwrap();
        t.join().unwrap().unwrap();

        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let inodes = inodes_of([&std::os::fd::OwnedFd::from(l.try_clone().unwrap())]);
        let t = std::thread::spawn(move || {
            use std::os::fd::AsFd;
            let mut fds = [nix::poll::PollFd::new(
                l.as_fd(),
                nix::poll::PollFlags::POLLIN,
            )];
            nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(10_000u16)).map(drop)
        });
        assert_eq!(found_within(&inodes).map(|f| f.how), Some("poll"));
        std::net::TcpStream::connect(addr).unwrap();
        t.join().unwrap().unwrap();
    }
}
