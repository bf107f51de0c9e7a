//! Relay of worker output, and the supervisor's own log lines, to its stderr or to journald.
//!
//! Under journald (stderr is the journal stream, systemd.exec(5) `JOURNAL_STREAM`), each line a
//! worker writes becomes one entry with `CORRAL_APP`, `CORRAL_WORKER`, `CORRAL_WORKER_PID`,
//! `CORRAL_GENERATION`, `SYSLOG_IDENTIFIER=APP` and a `PRIORITY` from its `<N>` prefix (stripped)
//! or the stream's default. Otherwise lines go to stderr as `APP[SLOT]: line`.
//!
//! Writing to stderr can block (a full pipe, a stopped pager, a slow journald). The event loop
//! must never wait for that, so every line goes through a bounded queue to one writer thread;
//! when the queue is full the line is dropped and counted, and the writer reports the count as
//! soon as it can write again. Worker pipes are read as fast as they fill, so a worker never
//! blocks on its own output either.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::Arc;

use tokio::io::AsyncReadExt;

use crate::journal::{self, Journal};

/// Lines waiting for the writer at most; beyond that, lines are dropped (and counted).
pub const QUEUE_LINES: usize = 8192;
/// A longer line is split, as journald splits at its LineMax= (journald.conf(5), 48K).
pub const MAX_LINE: usize = 48 * 1024;

/// Where lines end up.
pub enum Sink {
    Stream(Box<dyn Write + Send>),
    Journal(Journal),
}

#[derive(Clone)]
pub struct Output {
    tx: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
    journal: bool,
    /// How many flush markers (empty records) the writer has passed.
    flushed: Arc<(std::sync::Mutex<u64>, std::sync::Condvar)>,
    markers: Arc<AtomicU64>,
}

/// Who wrote a line: the fields of its journal entry, or its prefix on stderr.
#[derive(Clone, Debug)]
pub struct Tag {
    pub app: String,
    pub slot: u32,
    pub pid: i32,
    pub generation: u32,
    /// syslog priority of a line without a `<N>` prefix.
    pub priority: u8,
}

impl Output {
    /// Starts the writer thread: on journald when `journal` (stderr is the journal stream, see
    /// [`crate::journal::stderr_is_journal`]) and journald answers, else on stderr.
    pub fn start(journal: bool) -> Output {
        if journal {
            if let Ok(j) = Journal::connect() {
                return Self::start_with(Sink::Journal(j));
            }
        }
        Self::start_with(Sink::Stream(Box::new(io::stderr())))
    }

    pub fn start_with(sink: Sink) -> Output {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        let journal = matches!(sink, Sink::Journal(_));
        let flushed = Arc::new((std::sync::Mutex::new(0), std::sync::Condvar::new()));
        let f = flushed.clone();
        std::thread::Builder::new()
            .name("corral-output".into())
            .spawn(move || writer(rx, sink, d, f))
            .expect("spawn the output thread");
        Output {
            tx,
            dropped,
            journal,
            flushed,
            markers: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Waits until everything queued so far is written, for at most `timeout` (the sink may be
    /// blocked for good: then lines are lost, as at any exit).
    pub fn flush(&self, timeout: std::time::Duration) {
        if self.tx.try_send(Vec::new()).is_err() {
            return;
        }
        let target = self.markers.fetch_add(1, Ordering::SeqCst) + 1;
        let (m, c) = &*self.flushed;
        let guard = m.lock().unwrap_or_else(|e| e.into_inner());
        let _ = c.wait_timeout_while(guard, timeout, |done| *done < target);
    }

    /// Whether records are journal entries (else text lines).
    pub fn is_journal(&self) -> bool {
        self.journal
    }

    /// Queues one record: a complete line with its newline, or a journal entry. Never blocks.
    pub fn line(&self, line: Vec<u8>) {
        match self.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Reads a worker's pipe until EOF, queuing each line.
    pub async fn relay(self, fd: OwnedFd, tag: Tag) {
        let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            return;
        };
        let prefix = format!("{}[{}]: ", tag.app, tag.slot);
        let mut buf: Vec<u8> = Vec::with_capacity(4096);
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            let n = match pipe.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
            let mut start = 0;
            while let Some(nl) = buf[start..].iter().position(|&b| b == b'\n') {
                self.emit(&tag, &prefix, &buf[start..start + nl]);
                start += nl + 1;
            }
            buf.drain(..start);
            while buf.len() >= MAX_LINE {
                let rest = buf.split_off(MAX_LINE);
                self.emit(&tag, &prefix, &buf);
                buf = rest;
            }
        }
        if !buf.is_empty() {
            self.emit(&tag, &prefix, &buf);
        }
    }

    /// Queues `text` as one line, or as several of at most MAX_LINE bytes.
    fn emit(&self, tag: &Tag, prefix: &str, text: &[u8]) {
        for part in text.chunks(MAX_LINE) {
            if self.journal {
                let (prio, msg) = crate::journal::split_priority(part);
                let mut e = Vec::with_capacity(msg.len() + 160);
                journal::field(&mut e, "MESSAGE", msg);
                let prio = prio.unwrap_or(tag.priority);
                journal::field(&mut e, "PRIORITY", prio.to_string().as_bytes());
                journal::field(&mut e, "SYSLOG_IDENTIFIER", tag.app.as_bytes());
                journal::field(&mut e, "CORRAL_APP", tag.app.as_bytes());
                journal::field(&mut e, "CORRAL_WORKER", tag.slot.to_string().as_bytes());
                journal::field(&mut e, "CORRAL_WORKER_PID", tag.pid.to_string().as_bytes());
                journal::field(
                    &mut e,
                    "CORRAL_GENERATION",
                    tag.generation.to_string().as_bytes(),
                );
                self.line(e);
            } else {
                let mut line = Vec::with_capacity(prefix.len() + part.len() + 1);
                line.extend_from_slice(prefix.as_bytes());
                line.extend_from_slice(part);
                line.push(b'\n');
                self.line(line);
            }
        }
    }
}

fn writer(
    rx: Receiver<Vec<u8>>,
    mut sink: Sink,
    dropped: Arc<AtomicU64>,
    flushed: Arc<(std::sync::Mutex<u64>, std::sync::Condvar)>,
) {
    let mut reported = 0;
    while let Ok(record) = rx.recv() {
        if record.is_empty() {
            // A flush marker: everything queued before it has been written.
            let (m, c) = &*flushed;
            *m.lock().unwrap_or_else(|e| e.into_inner()) += 1;
            c.notify_all();
            continue;
        }
        let now = dropped.load(Ordering::Relaxed);
        if now > reported {
            let msg = format!(
                "corral: {} log line(s) dropped: output was not read fast enough",
                now - reported
            );
            match &mut sink {
                Sink::Stream(w) => {
                    let _ = w.write_all(format!("{msg}\n").as_bytes());
                }
                Sink::Journal(j) => {
                    let mut e = Vec::new();
                    journal::field(&mut e, "MESSAGE", msg.as_bytes());
                    journal::field(&mut e, "PRIORITY", b"4");
                    journal::field(&mut e, "SYSLOG_IDENTIFIER", b"corral");
                    let _ = j.send(&e);
                }
            }
            reported = now;
        }
        match &mut sink {
            Sink::Stream(w) => {
                let _ = w.write_all(&record);
                let _ = w.flush();
            }
            Sink::Journal(j) => {
                let _ = j.send(&record);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A sink that blocks until released, like a stopped reader on a full pipe.
    struct Blocked(Arc<(Mutex<bool>, std::sync::Condvar)>);
    impl Write for Blocked {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (m, c) = &*self.0;
            let mut open = m.lock().unwrap();
            while !*open {
                open = c.wait(open).unwrap();
            }
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn relays_lines_with_prefix_and_splits_long_ones() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = Output::start_with(Sink::Stream(Box::new(Shared(got.clone()))));
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut w = std::fs::File::from(w);
        let long = vec![b'x'; MAX_LINE + 10];
        w.write_all(b"one\ntwo\n").unwrap();
        w.write_all(&long).unwrap();
        w.write_all(b"\nno newline at end").unwrap();
        drop(w);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let tag = Tag {
            app: "app".into(),
            slot: 0,
            pid: 1,
            generation: 1,
            priority: 6,
        };
        rt.block_on(out.clone().relay(r, tag));
        drop(out);
        // The writer thread ends when every sender is gone; wait for its last line.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = got.lock().unwrap().clone();
            if text.ends_with(b"app[0]: no newline at end\n") {
                let text = String::from_utf8(text).unwrap();
                let lines: Vec<&str> = text.lines().collect();
                assert_eq!(lines[0], "app[0]: one");
                assert_eq!(lines[1], "app[0]: two");
                assert_eq!(lines[2].len(), "app[0]: ".len() + MAX_LINE);
                assert_eq!(lines[3], "app[0]: xxxxxxxxxx");
                assert_eq!(lines.len(), 5);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "writer never caught up"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn a_blocked_sink_drops_and_counts_instead_of_blocking() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let out = Output::start_with(Sink::Stream(Box::new(Blocked(gate.clone()))));
        let started = std::time::Instant::now();
        for _ in 0..QUEUE_LINES + 500 {
            out.line(b"x\n".to_vec());
        }
        // Every call returned although nothing could be written.
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        assert!(out.dropped() >= 499, "dropped {}", out.dropped());
        let (m, c) = &*gate;
        *m.lock().unwrap() = true;
        c.notify_all();
    }
}
