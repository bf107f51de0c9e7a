//! corral's runtime directory: the control socket, the workers' notify socket and the Node.js
//! preload live there side by side (`APP.sock`, `APP.notify`, `APP.preload.cjs`).
//!
//! What is there is trusted: the preload is code every Node.js worker runs, and the sockets
//! are how corral is controlled and told that workers are ready. So the directory must be
//! corral's own (or root's) and not writable by others, unless its sticky bit keeps others
//! from replacing what corral puts there (sticky(7) semantics of `/tmp`); corral creates it
//! mode 0700 when it is missing. Sockets are bound with a umask that makes them 0600 from the
//! start, so they are never reachable with a looser mode.

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType, UnixAddr};
use nix::sys::stat::Mode;

/// The longest path a unix socket address holds: `sun_path` is 108 bytes with the NUL
/// (unix(7)).
pub const MAX_SOCKET_PATH: usize = 107;

/// `S_ISVTX`: in a directory, only a file's owner may remove or rename it.
const STICKY: u32 = 0o1000;

/// Makes sure `dir` exists and is safe to keep corral's files in (see the module's comment).
pub fn prepare(dir: &Path) -> io::Result<()> {
    if std::fs::symlink_metadata(dir).is_err() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    check_dir(dir, nix::unistd::geteuid().as_raw()).map(drop)
}

/// Checks, creating and changing nothing, that `dir` is a directory safe for the files of
/// user `uid` (see the module's comment): [`prepare`]'s test, which clients also apply before
/// they trust a socket there. Its metadata when it is.
pub fn check_dir(dir: &Path, uid: u32) -> io::Result<std::fs::Metadata> {
    let m = std::fs::symlink_metadata(dir)?;
    if !m.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory (a symbolic link or a file is in the way)",
            dir.display()
        )));
    }
    check_owner_and_mode(dir, m.uid(), m.mode(), uid)?;
    Ok(m)
}

fn check_owner_and_mode(dir: &Path, uid: u32, mode: u32, me: u32) -> io::Result<()> {
    if uid != me && uid != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} belongs to uid {uid}, not to this user (uid {me}) or root: another user could \
                 replace corral's sockets and Node.js preload there. Remove it, or give another \
                 directory (--control)",
                dir.display()
            ),
        ));
    }
    if mode & 0o022 != 0 && mode & STICKY == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by others (mode {:04o}) without the sticky bit: another user \
                 could replace corral's sockets and Node.js preload there. Make it 0700, or give \
                 another directory (--control)",
                dir.display(),
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Makes way for binding a unix socket of type `ty` at `path`: a socket file left by a dead
/// process is removed; a live one (something answers there) or a file that is not a socket is
/// an error and stays. The probe never blocks.
pub fn remove_stale(path: &Path, ty: SockType) -> io::Result<()> {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !m.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        ));
    }
    let probe = socket(AddressFamily::Unix, ty, SockFlag::SOCK_NONBLOCK, None)?;
    match nix::sys::socket::connect(
        std::os::fd::AsRawFd::as_raw_fd(&probe),
        &UnixAddr::new(path)?,
    ) {
        Err(nix::errno::Errno::ECONNREFUSED) => std::fs::remove_file(path),
        Err(nix::errno::Errno::ENOENT) => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "another process is listening there",
        )),
    }
}

/// A unix socket of type `ty` bound at `path` with mode 0600 (readable and writable by this
/// user, and so only reachable by it and root), replacing a stale one. Close-on-exec and, for
/// the event loop, non-blocking.
pub fn bind_socket(path: &Path, ty: SockType) -> io::Result<OwnedFd> {
    let len = path.as_os_str().len();
    if len > MAX_SOCKET_PATH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is {len} bytes; a unix socket path holds at most {MAX_SOCKET_PATH} \
                 (unix(7)): use a shorter runtime directory or --control path",
                path.display()
            ),
        ));
    }
    remove_stale(path, ty)?;
    let fd = socket(
        AddressFamily::Unix,
        ty,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    // The umask applies to the socket file bind(2) creates: 0600 from its first moment. It is
    // the process's, so it is put back at once; nothing else in corral creates files meanwhile.
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
    let bound = nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr);
    nix::sys::stat::umask(old);
    bound?;
    Ok(fd)
}

/// Writes `bytes` to `path` with `mode`, replacing it whole: a reader sees the old file or the
/// new one, never half of one.
pub fn write_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    use std::io::Write;
    let mut temp = path.as_os_str().to_owned();
    temp.push(".new");
    let temp = PathBuf::from(temp);
    match std::fs::remove_file(&temp) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)?;
    f.write_all(bytes)?;
    drop(f);
    std::fs::rename(&temp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&temp);
    })
}

/// A file next to the control socket: its path with `.sock` replaced by `.EXTENSION` (or
/// `.EXTENSION` added when it has another ending).
pub fn beside(control: &Path, extension: &str) -> PathBuf {
    if control.extension().is_some_and(|e| e == "sock") {
        control.with_extension(extension)
    } else {
        let mut p = control.as_os_str().to_owned();
        p.push(".");
        p.push(extension);
        PathBuf::from(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("corral-rundir-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_directory_of_another_user_or_writable_by_others_is_refused() {
        let d = Path::new("/x");
        assert!(check_owner_and_mode(d, 1000, 0o40700, 1000).is_ok());
        assert!(check_owner_and_mode(d, 0, 0o40755, 1000).is_ok(), "root's");
        assert!(
            check_owner_and_mode(d, 0, 0o41777, 1000).is_ok(),
            "sticky, as /tmp"
        );
        let e = check_owner_and_mode(d, 1001, 0o40700, 1000).unwrap_err();
        assert!(e.to_string().contains("belongs to uid 1001"), "{e}");
        let e = check_owner_and_mode(d, 1000, 0o40777, 1000).unwrap_err();
        assert!(
            e.to_string().contains("writable by others (mode 0777)"),
            "{e}"
        );
        let e = check_owner_and_mode(d, 1000, 0o40770, 1000).unwrap_err();
        assert!(e.to_string().contains("mode 0770"), "{e}");
    }

    #[test]
    fn prepare_creates_a_private_directory_and_refuses_a_symlink() {
        let d = dir("prepare");
        prepare(&d.join("a")).unwrap();
        let m = std::fs::metadata(d.join("a")).unwrap();
        assert_eq!(m.mode() & 0o777, 0o700);
        std::os::unix::fs::symlink(d.join("a"), d.join("link")).unwrap();
        let e = prepare(&d.join("link")).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn sockets_are_0600_from_the_start_and_a_live_one_is_not_taken_over() {
        let d = dir("bind");
        prepare(&d).unwrap();
        let p = d.join("s.notify");
        let first = bind_socket(&p, SockType::Datagram).unwrap();
        let m = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o777, 0o600);
        // Another supervisor may not take over a socket that is bound.
        let e = bind_socket(&p, SockType::Datagram).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        // Once its owner is gone, it is stale and replaced.
        drop(first);
        bind_socket(&p, SockType::Datagram).unwrap();
        // Not a socket: left alone.
        std::fs::write(d.join("f"), "x").unwrap();
        let e = bind_socket(&d.join("f"), SockType::Stream).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AlreadyExists);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_path_too_long_for_sun_path_is_a_clear_error() {
        let long = std::env::temp_dir().join("x".repeat(120));
        let e = bind_socket(&long, SockType::Datagram).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("at most 107"), "{e}");
        assert!(!long.exists());
    }

    #[test]
    fn files_are_replaced_whole_with_their_mode() {
        let d = dir("write");
        prepare(&d).unwrap();
        let p = d.join("app.preload.cjs");
        write_file(&p, b"one", 0o444).unwrap();
        write_file(&p, b"two", 0o444).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        assert_eq!(std::fs::metadata(&p).unwrap().mode() & 0o777, 0o444);
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "no temporary left"
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn files_beside_the_control_socket() {
        assert_eq!(
            beside(Path::new("/run/corral/api/api.sock"), "notify"),
            Path::new("/run/corral/api/api.notify")
        );
        assert_eq!(
            beside(Path::new("/x/ctl"), "preload.cjs"),
            Path::new("/x/ctl.preload.cjs")
        );
    }
}
