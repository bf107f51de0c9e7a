//! The Node.js IPC channel, for `readiness.mode = "node-ipc"` (what PM2's `wait_ready` uses)
//! and for workers with corral's Node.js preload.
//!
//! Node.js opens an IPC channel when it finds `NODE_CHANNEL_FD` in its environment, as
//! `child_process.fork()` sets it up: a stream socket on which, with
//! `NODE_CHANNEL_SERIALIZATION_MODE=json`, every message is one JSON value and a newline. A worker
//! says it is ready with `process.send('ready')`, and may be told to shut down with a message
//! (`stop.message`). Node.js cannot send unix datagrams, so the channel also carries the
//! sd_notify(3) vocabulary: a string message of `KEY=VALUE` lines (`'WATCHDOG=1'`,
//! `'STATUS=warming caches'`, `'READY=1'`) means what the same datagram on `NOTIFY_SOCKET` would.

use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;

use crate::notify::Notification;

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

/// What one message line says: `'ready'` is `READY=1`; any other string is read as an
/// sd_notify datagram; anything else (objects the app sends for itself) says nothing.
pub fn notification(line: &[u8]) -> Notification {
    match serde_json::from_slice::<serde_json::Value>(line) {
        Ok(serde_json::Value::String(s)) if s == "ready" => Notification {
            ready: true,
            ..Default::default()
        },
        Ok(serde_json::Value::String(s)) => Notification::parse(s.as_bytes()),
        _ => Notification::default(),
    }
}

/// The line that delivers `message` to the worker's `process.on('message')`.
pub fn message(message: &str) -> Vec<u8> {
    let mut line = serde_json::to_vec(message).expect("a string serialises");
    line.push(b'\n');
    line
}

/// How many lines may wait to be written to one worker's channel (bus messages, the stop
/// message): past it, a line is dropped, never waited for.
pub const QUEUE: usize = 256;
/// How long one line may take to be taken by the worker before the channel is given up.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The writing half of a channel, behind a bounded queue: a task writes each line whole, in
/// order, however slowly the worker reads; the queue's sender is what the loop keeps. `unsent`
/// goes first (what an earlier image had not written yet: an upgrade in place). Told to `stop`,
/// the task gives back the half and what it had not written, the rest of a line it was
/// writing first.
pub fn writer(
    mut channel: OwnedWriteHalf,
    unsent: Vec<Vec<u8>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> (mpsc::Sender<Vec<u8>>, Writer) {
    let (tx, mut rx) = mpsc::channel::<Vec<u8>>(QUEUE);
    let task = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let mut pending: std::collections::VecDeque<Vec<u8>> = unsent.into();
        loop {
            let line = match pending.pop_front() {
                Some(l) => l,
                None => tokio::select! {
                    // A line queued before the stop is written (or handed on) first.
                    biased;
                    l = rx.recv() => match l {
                        Some(l) => l,
                        None => return None,
                    },
                    Ok(_) = stop.wait_for(|&s| s) => {
                        return Some((channel, left(Vec::new(), pending, &mut rx)));
                    }
                },
            };
            let mut at = 0;
            // A channel nobody reads (the worker is gone, a process of its tree holds the
            // other end): the task ends rather than wait for ever.
            let give_up = tokio::time::sleep(WRITE_TIMEOUT);
            tokio::pin!(give_up);
            while at < line.len() {
                tokio::select! {
                    w = channel.write(&line[at..]) => match w {
                        Ok(0) | Err(_) => return None,
                        Ok(n) => at += n,
                    },
                    _ = &mut give_up => return None,
                    Ok(_) = stop.wait_for(|&s| s) => {
                        return Some((channel, left(vec![line[at..].to_vec()], pending, &mut rx)));
                    }
                }
            }
            if *stop.borrow() {
                return Some((channel, left(Vec::new(), pending, &mut rx)));
            }
        }
    });
    (tx, task)
}

/// What a stopped writer had not written: `first` (the rest of a line it was writing), then the
/// lines it held, then those queued.
fn left(
    mut first: Vec<Vec<u8>>,
    pending: std::collections::VecDeque<Vec<u8>>,
    rx: &mut mpsc::Receiver<Vec<u8>>,
) -> Vec<Vec<u8>> {
    first.extend(pending);
    while let Ok(l) = rx.try_recv() {
        first.push(l);
    }
    first
}

/// A reader task: when stopped, its half of the channel and what it read and did not handle.
pub type Reader = tokio::task::JoinHandle<Option<(OwnedReadHalf, Vec<u8>)>>;

/// A writer task: when stopped, its half of the channel and the lines it had not written.
pub type Writer = tokio::task::JoinHandle<Option<(OwnedWriteHalf, Vec<Vec<u8>>)>>;

/// Reads the worker's messages until it closes the channel, reporting each that says something
/// with `pid`, and passing bus messages (bus.rs) on to `bus`. Never blocks the event loop: a
/// full queue drops the report, as a full notify socket drops datagrams.
///
/// `unread` is what an earlier image had read and not handled (an upgrade in place); told to
/// `stop`, the reader gives back its half and what it has read and not handled.
pub async fn read(
    channel: OwnedReadHalf,
    unread: Vec<u8>,
    pid: i32,
    to_loop: mpsc::Sender<(i32, Notification)>,
    (bus, lost): (mpsc::Sender<(i32, Vec<u8>)>, Arc<AtomicU64>),
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Option<(OwnedReadHalf, Vec<u8>)> {
    // This channel's own allowance, before the queue all channels share: one flooding worker
    // cannot crowd the others out of it (the router applies the same again: bus.rs).
    let mut limit = crate::bus::Limiter::new(std::time::Instant::now());
    let mut reader = BufReader::new(tokio::io::AsyncReadExt::chain(
        std::io::Cursor::new(unread),
        channel,
    ));
    // Bounded: a message longer than MAX_LINE is skipped up to its newline, never buffered.
    let mut line = Vec::new();
    let mut skipping = false;
    loop {
        let filled = tokio::select! {
            f = reader.fill_buf() => f.map(<[u8]>::len),
            Ok(_) = stop.wait_for(|&s| s) => {
                // What is read and not handled: the line so far (unless it is being skipped),
                // then what is buffered.
                let mut left = if skipping { Vec::new() } else { std::mem::take(&mut line) };
                left.extend_from_slice(reader.buffer());
                let (cursor, channel) = reader.into_inner().into_inner();
                let at = cursor.position() as usize;
                left.extend_from_slice(&cursor.into_inner()[at..]);
                return Some((channel, left));
            }
        };
        let chunk = match filled {
            Ok(0) | Err(_) => return None,
            Ok(_) => reader.buffer(),
        };
        let (part, end) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], Some(i + 1)),
            None => (chunk, None),
        };
        if !skipping {
            line.extend_from_slice(part);
            if line.len() > MAX_LINE {
                line.clear();
                skipping = true;
            }
        }
        let used = end.unwrap_or(chunk.len());
        reader.consume(used);
        if end.is_some() {
            if !skipping {
                let text = line.trim_ascii_end();
                if crate::bus::is_bus_line(text) {
                    let allowed = limit.allow(text.len(), std::time::Instant::now());
                    if !allowed || bus.try_send((pid, text.to_vec())).is_err() {
                        lost.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    let n = notification(text);
                    if !n.is_empty() {
                        let _ = to_loop.try_send((pid, n));
                    }
                }
            }
            line.clear();
            skipping = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `f` on an event loop like corral's (one thread, timers and I/O).
    fn on_a_loop(f: impl std::future::Future<Output = ()>) {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f);
    }

    #[test]
    fn an_oversized_message_is_skipped_and_the_next_ready_still_counts() {
        on_a_loop(async {
            let (theirs, ours, _write) = channel().unwrap();
            let (tx, mut rx) = mpsc::channel(4);
            let (bus, _bus_rx) = mpsc::channel(4);
            let (_stop, stopped) = tokio::sync::watch::channel(false);
            let reader = tokio::spawn(read(
                ours,
                Vec::new(),
                42,
                tx,
                (bus, Default::default()),
                stopped,
            ));
            let mut worker = std::os::unix::net::UnixStream::from(theirs);
            let mut junk = vec![b'x'; 3 * MAX_LINE];
            junk.extend_from_slice(b"\"ready\"\n{\"a\":1}\n\"ready\"\n");
            std::io::Write::write_all(&mut worker, &junk).unwrap();
            drop(worker);
            // The first "ready" ends the oversized line, which is skipped whole.
            let (pid, n) = rx.recv().await.unwrap();
            assert!(pid == 42 && n.ready, "the 'ready' after the junk");
            assert!(
                rx.recv().await.is_none(),
                "neither the junk line nor the object said anything"
            );
            reader.await.unwrap();
        });
    }

    #[test]
    fn lines_are_written_whole_and_in_order_and_a_worker_that_never_reads_fills_only_its_queue() {
        on_a_loop(async {
            let (theirs, ours, write) = channel().unwrap();
            let (tx, mut rx) = mpsc::channel(QUEUE);
            let (bus, mut bus_rx) = mpsc::channel(QUEUE);
            let lost: Arc<AtomicU64> = Default::default();
            let (_stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(read(
                ours,
                Vec::new(),
                7,
                tx,
                (bus, lost.clone()),
                stopped.clone(),
            ));
            let (queue, _task) = writer(write, Vec::new(), stopped);
            // Long lines (more than one write each), in order, whole.
            let lines: Vec<Vec<u8>> = (0..20)
                .map(|i| {
                    let mut l =
                        format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(100_000)).into_bytes();
                    l.push(b'\n');
                    l
                })
                .collect();
            for l in &lines {
                queue.try_send(l.clone()).unwrap();
            }
            let worker = tokio::net::UnixStream::from_std({
                let s = std::os::unix::net::UnixStream::from(theirs);
                s.set_nonblocking(true).unwrap();
                s
            })
            .unwrap();
            let mut reader = BufReader::new(worker);
            for want in &lines {
                let mut got = Vec::new();
                reader.read_until(b'\n', &mut got).await.unwrap();
                assert_eq!(&got, want);
            }
            // Nobody reads any more: the queue fills, and what does not fit is refused at
            // once (the router counts it dropped), never waited for.
            let mut taken = 0;
            while queue.try_send(lines[0].clone()).is_ok() {
                taken += 1;
                assert!(taken <= QUEUE + 64, "the queue is bounded");
            }
            // A bus line from the worker reaches the bus queue; a notification does not.
            let mut w = reader.into_inner();
            use tokio::io::AsyncWriteExt;
            w.write_all(b"{\"corral\":\"bus\",\"to\":\"agent\"}\n\"ready\"\n")
                .await
                .unwrap();
            let (pid, line) = bus_rx.recv().await.unwrap();
            assert_eq!(
                (pid, &line[..]),
                (7, &br#"{"corral":"bus","to":"agent"}"#[..])
            );
            assert!(rx.recv().await.unwrap().1.ready);
            assert_eq!(lost.load(Ordering::Relaxed), 0);
        });
    }

    /// An upgrade in place stops the channel's tasks: what the reader had read of a line and
    /// what the writer had not written are handed on, and new tasks on the same channel go on
    /// from there: nothing is lost, no line is cut.
    #[test]
    fn stopped_tasks_hand_on_what_they_had_not_handled() {
        on_a_loop(async {
            let (theirs, ours, write) = channel().unwrap();
            let (tx, mut rx) = mpsc::channel(QUEUE);
            let (bus, _bus_rx) = mpsc::channel(QUEUE);
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let reader = tokio::spawn(read(
                ours,
                Vec::new(),
                7,
                tx.clone(),
                (bus.clone(), Default::default()),
                stopped.clone(),
            ));
            let (queue, writer_task) = writer(write, Vec::new(), stopped);
            let mut worker = std::os::unix::net::UnixStream::from(theirs);
            // Half a message from the worker, then a long line to it that it does not read yet.
            std::io::Write::write_all(&mut worker, b"\"REA").unwrap();
            let mut long = format!("\"{}\"", "y".repeat(600_000)).into_bytes();
            long.push(b'\n');
            queue.try_send(long.clone()).unwrap();
            queue.try_send(b"\"next\"\n".to_vec()).unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            stop.send(true).unwrap();
            let (read_half, unread) = reader.await.unwrap().expect("the reader hands over");
            let (write_half, unsent) = writer_task.await.unwrap().expect("the writer hands over");
            assert_eq!(unread, b"\"REA");
            assert!(!unsent.is_empty(), "the long line was not all written");
            // The next image's tasks, on the same channel.
            let (_stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(read(
                read_half,
                unread,
                7,
                tx,
                (bus, Default::default()),
                stopped.clone(),
            ));
            let (_queue, _task) = writer(write_half, unsent, stopped);
            std::io::Write::write_all(&mut worker, b"DY=1\"\n").unwrap();
            assert!(
                rx.recv().await.unwrap().1.ready,
                "the message read in two halves"
            );
            let mut got = Vec::new();
            let worker = tokio::net::UnixStream::from_std({
                worker.set_nonblocking(true).unwrap();
                worker
            })
            .unwrap();
            let mut lines = BufReader::new(worker);
            lines.read_until(b'\n', &mut got).await.unwrap();
            assert_eq!(got, long, "the long line whole");
            got.clear();
            lines.read_until(b'\n', &mut got).await.unwrap();
            assert_eq!(got, b"\"next\"\n");
        });
    }

    #[test]
    fn ready_and_the_sd_notify_vocabulary_are_understood() {
        assert!(notification(b"\"ready\"").ready);
        assert!(notification(b"\"READY=1\"").ready);
        assert!(notification(b"\"not ready\"").is_empty());
        assert!(notification(b"{\"cmd\":\"NODE_HANDLE_ACK\"}").is_empty());
        assert!(notification(b"ready").is_empty(), "not JSON");
        let n = notification(b"\"WATCHDOG=1\\nSTATUS=warm\"");
        assert!(n.watchdog_ping && !n.ready);
        assert_eq!(n.status.as_deref(), Some("warm"));
        assert_eq!(message("shutdown"), b"\"shutdown\"\n");
        assert_eq!(message("a\"b"), b"\"a\\\"b\"\n");
    }
}
