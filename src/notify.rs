//! The sd_notify protocol (sd_notify(3)), in both directions.
//!
//! Workers get a `NOTIFY_SOCKET` that belongs to the supervisor: a datagram socket with
//! `SO_PASSCRED`, so the kernel attaches the sender's pid to every datagram and a worker cannot
//! claim to be another one. It is a file in corral's runtime directory, as systemd gives
//! services `/run/systemd/notify`, because clients that take the variable for a path (the
//! `sd-notify` crate, `systemd-notify` run as another user, hand-written ones) cannot reach an
//! abstract name. The file has mode 0600: sending to a unix socket needs write permission on it
//! (unix(7)), so only corral's user (the workers' user) and root can send. The supervisor
//! itself talks to systemd through the `NOTIFY_SOCKET` it was started with, if any.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, SockType};

/// sd_notify(3) caps a message at what fits one datagram; systemd reads at most this much
/// (NOTIFY_BUFFER_MAX in systemd's sources is PIPE_BUF). Longer datagrams are truncated and dropped.
pub const MAX_DATAGRAM: usize = 4096;

/// What one datagram said. Unknown assignments are ignored, as systemd ignores them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Notification {
    /// `READY=1`
    pub ready: bool,
    /// `STATUS=...`
    pub status: Option<String>,
    /// `WATCHDOG=1`
    pub watchdog_ping: bool,
    /// `WATCHDOG=trigger`: the worker asks to be treated as hung.
    pub watchdog_trigger: bool,
    /// `STOPPING=1`
    pub stopping: bool,
    /// `RELOADING=1`
    pub reloading: bool,
    /// `EXTEND_TIMEOUT_USEC=`: push the current start (or stop) deadline out to now + this.
    pub extend_timeout: Option<Duration>,
    /// `ERRNO=`: the errno the worker reports as the cause of its failure.
    pub errno: Option<i32>,
}

impl Notification {
    /// Parses a datagram: newline-separated `KEY=VALUE` assignments (sd_notify(3)).
    pub fn parse(datagram: &[u8]) -> Notification {
        let mut n = Notification::default();
        for line in datagram.split(|&b| b == b'\n') {
            let Some(eq) = line.iter().position(|&b| b == b'=') else {
                continue;
            };
            let (key, value) = (&line[..eq], &line[eq + 1..]);
            match key {
                b"READY" => n.ready |= value == b"1",
                b"STATUS" => n.status = Some(String::from_utf8_lossy(value).into_owned()),
                b"WATCHDOG" if value == b"1" => n.watchdog_ping = true,
                b"WATCHDOG" if value == b"trigger" => n.watchdog_trigger = true,
                b"STOPPING" => n.stopping |= value == b"1",
                b"RELOADING" => n.reloading |= value == b"1",
                b"EXTEND_TIMEOUT_USEC" => {
                    if let Some(us) = parse_u64(value) {
                        n.extend_timeout = Some(Duration::from_micros(us));
                    }
                }
                b"ERRNO" => {
                    if let Some(e) = parse_u64(value).and_then(|v| i32::try_from(v).ok()) {
                        n.errno = Some(e);
                    }
                }
                _ => {}
            }
        }
        n
    }

    /// True when the datagram carried anything corral acts on.
    pub fn is_empty(&self) -> bool {
        *self == Notification::default()
    }
}

fn parse_u64(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

/// One received datagram with the kernel-verified pid of its sender.
#[derive(Debug)]
pub struct Datagram {
    pub pid: i32,
    pub notification: Notification,
}

/// The socket the workers' `NOTIFY_SOCKET` points at; its file goes when this is dropped.
pub struct NotifySocket {
    fd: OwnedFd,
    path: PathBuf,
    /// The value for `NOTIFY_SOCKET`: the path.
    env_value: String,
}

impl NotifySocket {
    /// Binds a datagram socket at `path`, mode 0600 (rundir.rs), replacing a stale one and
    /// refusing one that another process still has bound.
    pub fn bind(path: &Path) -> io::Result<NotifySocket> {
        let text = path.to_str().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "the path is not valid UTF-8")
        })?;
        let fd = crate::rundir::bind_socket(path, SockType::Datagram)?;
        // Every datagram then carries SCM_CREDENTIALS, whether or not the sender attached them.
        setsockopt(&fd, sockopt::PassCred, &true)?;
        // Bursts of STATUS= from many workers should not be dropped for want of buffer.
        let _ = setsockopt(&fd, sockopt::RcvBuf, &(256 * 1024));
        Ok(NotifySocket {
            fd,
            path: path.to_path_buf(),
            env_value: text.to_string(),
        })
    }

    /// The socket an earlier image bound at `path` (an upgrade in place: carry.rs), with
    /// what waits on it.
    pub fn adopt(fd: OwnedFd, path: &Path) -> io::Result<NotifySocket> {
        let text = path.to_str().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "the path is not valid UTF-8")
        })?;
        Ok(NotifySocket {
            fd,
            path: path.to_path_buf(),
            env_value: text.to_string(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn env_value(&self) -> &str {
        &self.env_value
    }

    /// A second handle on the same socket, for registering with the event loop.
    pub fn try_clone_std(&self) -> io::Result<UnixDatagram> {
        Ok(UnixDatagram::from(self.fd.try_clone()?))
    }

    /// Receives one datagram without blocking; `WouldBlock` means nothing is queued.
    /// Datagrams without credentials, truncated ones and any passed fds are dropped (fds closed).
    pub fn recv(&self) -> io::Result<Datagram> {
        let mut buf = [0u8; MAX_DATAGRAM + 1];
        let (pid, len, _) = self.recv_into(&mut buf)?;
        Ok(Datagram {
            pid,
            notification: Notification::parse(&buf[..len]),
        })
    }

    /// The same, for datagrams of up to `buf.len() - 1` bytes, with the sender's address when
    /// it has one (bound, or autobound: unix(7)): the bus's (bus.rs). Returns the sender's pid,
    /// the length, and the address.
    pub fn recv_into(
        &self,
        buf: &mut [u8],
    ) -> io::Result<(i32, usize, Option<nix::sys::socket::UnixAddr>)> {
        let max = buf.len() - 1;
        loop {
            // Room for the most fds one message can carry (SCM_MAX_FD, 253): a sender cannot
            // truncate the control data and so make corral miss (and leak) fds it was passed.
            let mut cmsg = nix::cmsg_space!(libc::ucred, [RawFd; 253]);
            let mut iov = [io::IoSliceMut::new(buf)];
            let msg = match recvmsg::<nix::sys::socket::UnixAddr>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_TRUNC,
            ) {
                Ok(m) => m,
                Err(nix::errno::Errno::EAGAIN) => return Err(io::ErrorKind::WouldBlock.into()),
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            };
            let len = msg.bytes;
            let truncated = msg.flags.contains(MsgFlags::MSG_TRUNC) || len > max;
            // Named (a path) or autobound (abstract): longer than the family alone, unix(7).
            // An unbound sender's is that short, which nix's accessors must not be asked of.
            let from = msg.address.filter(|a| {
                use nix::sys::socket::SockaddrLike;
                a.len() as usize > std::mem::size_of::<libc::sa_family_t>()
            });
            let mut pid = None;
            let Ok(cmsgs) = msg.cmsgs() else { continue };
            for c in cmsgs {
                match c {
                    ControlMessageOwned::ScmCredentials(cred) => pid = Some(cred.pid()),
                    ControlMessageOwned::ScmRights(fds) => {
                        // corral keeps no fd store: close what was sent so nothing leaks.
                        for fd in fds {
                            let _ = nix::unistd::close(fd);
                        }
                    }
                    _ => {}
                }
            }
            let (Some(pid), false) = (pid, truncated) else {
                continue;
            };
            return Ok((pid, len, from));
        }
    }

    /// Sends a datagram to `to` without waiting (`WouldBlock` when its queue is full).
    pub fn send_to(&self, bytes: &[u8], to: &nix::sys::socket::UnixAddr) -> io::Result<()> {
        nix::sys::socket::sendto(self.fd.as_raw_fd(), bytes, to, MsgFlags::MSG_DONTWAIT)
            .map(drop)
            .map_err(io::Error::from)
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        // Not while taking over from an earlier image: that one may be put back, and uses it.
        if !crate::carry::adopting() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl std::os::fd::AsFd for NotifySocket {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for NotifySocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// The supervisor's own line to systemd: the `NOTIFY_SOCKET` it was started with.
pub struct Systemd {
    sock: UnixDatagram,
    addr: SocketAddr,
}

impl Systemd {
    /// Reads `NOTIFY_SOCKET` (a path, or `@` for the abstract namespace). `None` when not under
    /// a service manager that wants notifications.
    pub fn from_env(value: Option<&str>) -> Option<Systemd> {
        let value = value?;
        let addr = if let Some(name) = value.strip_prefix('@') {
            SocketAddr::from_abstract_name(name.as_bytes()).ok()?
        } else if value.starts_with('/') {
            SocketAddr::from_pathname(value).ok()?
        } else {
            return None;
        };
        let sock = UnixDatagram::unbound().ok()?;
        // Never wait on systemd from the event loop: a full queue drops the message instead.
        sock.set_nonblocking(true).ok()?;
        Some(Systemd { sock, addr })
    }

    /// Sends one datagram without blocking; failures are for the caller to log, never fatal.
    pub fn send(&self, msg: &str) -> io::Result<()> {
        self.sock.send_to_addr(msg.as_bytes(), &self.addr).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_assignment() {
        let n = Notification::parse(
            b"READY=1\nSTATUS=serving 12 req/s\nWATCHDOG=1\nEXTEND_TIMEOUT_USEC=5000000\nERRNO=2\nSTOPPING=1\nRELOADING=1",
        );
        assert!(n.ready && n.watchdog_ping && n.stopping && n.reloading);
        assert_eq!(n.status.as_deref(), Some("serving 12 req/s"));
        assert_eq!(n.extend_timeout, Some(Duration::from_secs(5)));
        assert_eq!(n.errno, Some(2));
        assert!(!n.watchdog_trigger);
    }

    #[test]
    fn only_exact_values_count() {
        let n = Notification::parse(b"READY=0\nREADY=yes\nWATCHDOG=2\nSTOPPING=true");
        assert!(n.is_empty(), "{n:?}");
        let n = Notification::parse(b"WATCHDOG=trigger");
        assert!(n.watchdog_trigger && !n.watchdog_ping);
    }

    #[test]
    fn ignores_junk_and_unknown_keys() {
        let n = Notification::parse(b"\n\nno equals sign\nMAINPID=4\nFDSTORE=1\nREADY=1\n");
        assert_eq!(
            n,
            Notification {
                ready: true,
                ..Default::default()
            }
        );
        assert!(Notification::parse(b"").is_empty());
        assert!(Notification::parse(b"EXTEND_TIMEOUT_USEC=abc\nERRNO=-1").is_empty());
    }

    #[test]
    fn status_keeps_equals_signs_and_invalid_utf8_is_replaced() {
        let n = Notification::parse(b"STATUS=a=b\xff");
        assert_eq!(n.status.as_deref(), Some("a=b\u{fffd}"));
    }

    #[test]
    fn fds_passed_along_are_closed_however_many() {
        use nix::sys::socket::{sendmsg, ControlMessage};
        let dir = test_dir("fd");
        let s = NotifySocket::bind(&dir.join("n")).unwrap();
        let path = dir.join("file");
        let file = std::fs::File::create(&path).unwrap();
        let count = || {
            std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
                .filter(|t| *t == path)
                .count()
        };
        let client = std::os::unix::net::UnixDatagram::unbound().unwrap();
        let addr = nix::sys::socket::UnixAddr::new(s.env_value()).unwrap();
        let fds = [file.as_raw_fd(); 200];
        for _ in 0..5 {
            let cmsg = [ControlMessage::ScmRights(&fds)];
            let iov = [io::IoSlice::new(b"READY=1")];
            sendmsg(
                client.as_raw_fd(),
                &iov,
                &cmsg,
                MsgFlags::empty(),
                Some(&addr),
            )
            .unwrap();
        }
        for _ in 0..5 {
            assert!(s.recv().unwrap().notification.ready);
        }
        assert_eq!(count(), 1, "only the test's own descriptor is left");
        drop(file);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn socket_reports_sender_pid_and_drops_nothing_valid() {
        let dir = test_dir("pid");
        let path = dir.join("app.notify");
        let s = NotifySocket::bind(&path).unwrap();
        assert_eq!(s.env_value(), path.to_str().unwrap());
        let sys = Systemd::from_env(Some(s.env_value())).unwrap();
        sys.send("READY=1\nSTATUS=hi").unwrap();
        let d = s.recv().expect("a datagram");
        assert_eq!(d.pid, std::process::id() as i32);
        assert!(d.notification.ready);
        assert_eq!(d.notification.status.as_deref(), Some("hi"));
        assert_eq!(s.recv().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        // Oversized datagrams are dropped whole rather than half-read.
        sys.send(&"STATUS=".repeat(1000)).unwrap();
        assert_eq!(s.recv().unwrap_err().kind(), io::ErrorKind::WouldBlock);
        drop(s);
        assert!(!path.exists(), "the socket file goes with the socket");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn test_dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("corral-notify-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
