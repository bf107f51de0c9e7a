//! journald's native protocol (systemd-journald.service(8), "Native Journal Protocol"): one
//! datagram per entry to /run/systemd/journal/socket, each field `NAME=value\n`, or, when the
//! value holds a newline, `NAME\n` + 64-bit little-endian length + bytes + `\n`. Values that
//! are not text go as they are (the protocol allows any bytes but newline in the first form);
//! journalctl shows them as byte arrays: nothing is lost silently.

use std::io;
use std::os::unix::net::UnixDatagram;
use std::path::Path;

pub const SOCKET: &str = "/run/systemd/journal/socket";

/// True when this process's stderr is the journal stream systemd set up for it: `JOURNAL_STREAM`
/// holds the device and inode of that stream (systemd.exec(5)), and they match fd 2.
pub fn stderr_is_journal() -> bool {
    let Ok(v) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// Appends one field to an entry being built.
pub fn field(entry: &mut Vec<u8>, name: &str, value: &[u8]) {
    entry.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        entry.push(b'\n');
        entry.extend_from_slice(&(value.len() as u64).to_le_bytes());
        entry.extend_from_slice(value);
    } else {
        entry.push(b'=');
        entry.extend_from_slice(value);
    }
    entry.push(b'\n');
}

/// A connection to journald.
pub struct Journal {
    sock: UnixDatagram,
}

impl Journal {
    pub fn connect() -> io::Result<Journal> {
        Self::connect_to(Path::new(SOCKET))
    }

    pub fn connect_to(path: &Path) -> io::Result<Journal> {
        let sock = UnixDatagram::unbound()?;
        sock.connect(path)?;
        Ok(Journal { sock })
    }

    /// Sends one entry (blocking: call it from the output thread, never the event loop).
    pub fn send(&self, entry: &[u8]) -> io::Result<()> {
        self.sock.send(entry).map(drop)
    }
}

/// Splits a leading sd-daemon(3) priority prefix `<N>` (0..=7) off a line.
pub fn split_priority(line: &[u8]) -> (Option<u8>, &[u8]) {
    match line {
        [b'<', d @ b'0'..=b'7', b'>', rest @ ..] => (Some(d - b'0'), rest),
        _ => (None, line),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_text_or_length_prefixed() {
        let mut e = Vec::new();
        field(&mut e, "MESSAGE", b"hello");
        field(&mut e, "CORRAL_WORKER", b"2");
        assert_eq!(e, b"MESSAGE=hello\nCORRAL_WORKER=2\n");
        let mut e = Vec::new();
        field(&mut e, "MESSAGE", b"a\nb");
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(b"a\nb\n");
        assert_eq!(e, want);
    }

    #[test]
    fn priority_prefixes() {
        assert_eq!(split_priority(b"<3>boom"), (Some(3), &b"boom"[..]));
        assert_eq!(split_priority(b"<8>no"), (None, &b"<8>no"[..]));
        assert_eq!(split_priority(b"<3"), (None, &b"<3"[..]));
        assert_eq!(split_priority(b"plain"), (None, &b"plain"[..]));
    }

    #[test]
    fn entries_reach_a_datagram_socket_whole() {
        let dir = std::env::temp_dir().join(format!("corral-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("socket");
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        let j = Journal::connect_to(&path).unwrap();
        let mut e = Vec::new();
        field(&mut e, "MESSAGE", &[0xff, b'\n', 0]);
        j.send(&e).unwrap();
        let mut buf = [0u8; 256];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], &e[..]);
        let _ = std::fs::remove_dir_all(dir);
    }
}
