//! The Node.js IPC channel, for `readiness.mode = "node-ipc"` (what PM2's `wait_ready` uses).
//!
//! Node.js opens an IPC channel when it finds `NODE_CHANNEL_FD` in its environment, as
//! `child_process.fork()` sets it up: a stream socket on which, with
//! `NODE_CHANNEL_SERIALIZATION_MODE=json`, every message is one JSON value and a newline. A worker
//! says it is ready with `process.send('ready')`, and may be told to shut down with a message
//! (`stop.message`) before its stop signal.

use std::io;
use std::os::fd::OwnedFd;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

/// A longer message line is not a `'ready'` and is skipped, whatever it is.
const MAX_LINE: usize = 64 * 1024;

/// A new channel: the worker's end (placed at `NODE_CHANNEL_FD` by spawn) and corral's halves.
pub fn channel() -> io::Result<(OwnedFd, OwnedReadHalf, OwnedWriteHalf)> {
    let (ours, theirs) = socketpair(
        AddressFamily::Unix,
        SockType::Stream,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    let ours = std::os::unix::net::UnixStream::from(ours);
    ours.set_nonblocking(true)?;
    let (read, write) = tokio::net::UnixStream::from_std(ours)?.into_split();
    Ok((theirs, read, write))
}

/// Whether one message line is the `'ready'` message.
pub fn is_ready(line: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<serde_json::Value>(line),
        Ok(serde_json::Value::String(s)) if s == "ready"
    )
}

/// The line that delivers `message` to the worker's `process.on('message')`.
pub fn message(message: &str) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).expect("a string serialises");
    line.push(b'\n');
    line
}

/// Reads the worker's messages until it closes the channel, reporting `pid` on `ready`.
/// Never blocks the event loop: a full queue drops the report (a worker that says `ready`
/// that often is ready already).
pub async fn read(channel: OwnedReadHalf, pid: i32, ready: mpsc::Sender<i32>) {
    let mut reader = BufReader::new(channel);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) if line.len() > MAX_LINE => continue,
            Ok(_) => {
                if is_ready(line.trim_ascii_end()) {
                    let _ = ready.try_send(pid);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_ready_string_is_ready() {
        assert!(is_ready(b"\"ready\""));
        assert!(!is_ready(b"\"not ready\""));
        assert!(!is_ready(b"{\"cmd\":\"NODE_HANDLE_ACK\"}"));
        assert!(!is_ready(b"ready"));
        assert_eq!(message("shutdown"), b"\"shutdown\"\n");
        assert_eq!(message("a\"b"), b"\"a\\\"b\"\n");
    }
}
