//! Descriptors carried across execve(2) by an upgrade in place, by number.
//!
//! corral opens everything close-on-exec. What the next image must find open is passed as a
//! copy: dup(2) makes one without `FD_CLOEXEC` (fcntl(2)), so the originals never change, and
//! an exec that fails leaves nothing behind once the copies are dropped. The next image takes
//! each number once, makes it close-on-exec again (its workers must not inherit it), and
//! closes whatever it was given and did not take.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

/// Set while an image takes over from the one before (until [`Take::commit`]): what it built
/// so far may be dropped for the previous binary to be put back, and a socket dropped then
/// must leave its file where it is, for that binary still uses it.
static ADOPTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether a socket's file must be left alone when it is dropped (see `ADOPTING`).
pub fn adopting() -> bool {
    ADOPTING.load(std::sync::atomic::Ordering::SeqCst)
}

/// The copies made for the next image; closed if this is dropped (the exec failed).
#[derive(Default)]
pub struct Carry {
    kept: Vec<OwnedFd>,
}

impl Carry {
    /// A copy of `fd` that stays open across execve: its number.
    pub fn fd(&mut self, fd: impl AsFd) -> io::Result<RawFd> {
        let copy = nix::unistd::dup(fd)?;
        let n = copy.as_raw_fd();
        self.kept.push(copy);
        Ok(n)
    }

    /// Every number carried.
    pub fn numbers(&self) -> Vec<RawFd> {
        self.kept.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// The next image's side: hands out a close-on-exec copy of each carried descriptor, at most
/// once, and holds the originals, still open across exec, until [`Take::commit`]. An image
/// that cannot take over drops what it built (closing only copies) and can still hand every
/// original on, to the binary it puts back.
pub struct Take {
    held: HashMap<RawFd, OwnedFd>,
    taken: HashSet<RawFd>,
}

impl Take {
    /// The descriptors the previous image said it carried; fails if one is not open.
    pub fn inherited(given: &[RawFd]) -> io::Result<Take> {
        ADOPTING.store(true, std::sync::atomic::Ordering::SeqCst);
        let mut held = HashMap::new();
        for &n in given {
            if held.contains_key(&n) {
                continue;
            }
            let fd = crate::spawn::adopt_inherited_fd(n)
                .map_err(|e| io::Error::new(e.kind(), format!("carried fd {n}: {e}")))?;
            held.insert(n, fd);
        }
        Ok(Take {
            held,
            taken: HashSet::new(),
        })
    }

    /// A close-on-exec copy of what was carried as `n`.
    pub fn fd(&mut self, n: RawFd) -> io::Result<OwnedFd> {
        let Some(fd) = self.held.get(&n) else {
            return Err(io::Error::other(format!(
                "fd {n} is not one the previous corral carried"
            )));
        };
        if !self.taken.insert(n) {
            return Err(io::Error::other(format!("fd {n} is taken twice")));
        }
        // F_DUPFD_CLOEXEC: the workers never inherit it.
        fd.try_clone()
    }

    /// The original of `n`, open across exec (the binary put back).
    pub fn original(&self, n: RawFd) -> Option<&OwnedFd> {
        self.held.get(&n)
    }

    /// Taken over: the originals are closed, those taken live on as their copies.
    pub fn commit(self) {
        drop(self.held);
        ADOPTING.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_carried_copy_stays_open_across_exec_and_is_taken_once() {
        let (a, _b) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        let mut carry = Carry::default();
        let n = carry.fd(&a).unwrap();
        let flags = nix::fcntl::fcntl(&carry.kept[0], nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_eq!(flags & libc::FD_CLOEXEC, 0, "the copy is not close-on-exec");
        assert_eq!(carry.numbers(), vec![n]);
        // As the next image would find them.
        let mut take = Take {
            held: carry
                .kept
                .into_iter()
                .map(|fd| (fd.as_raw_fd(), fd))
                .collect(),
            taken: HashSet::new(),
        };
        let fd = take.fd(n).unwrap();
        let flags = nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_ne!(
            flags & libc::FD_CLOEXEC,
            0,
            "what is taken is close-on-exec"
        );
        let original = take.original(n).unwrap();
        let flags = nix::fcntl::fcntl(original, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_eq!(
            flags & libc::FD_CLOEXEC,
            0,
            "the original stays open across exec"
        );
        assert!(take.fd(n).is_err(), "taken once");
        assert!(take.fd(n + 1000).is_err(), "only what was carried");
        take.commit();
        assert!(nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_GETFD).is_ok());
    }
}
