//! Relay of worker output, and the supervisor's own log lines, to its stderr.
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

/// Lines waiting for the writer at most; beyond that, lines are dropped (and counted).
pub const QUEUE_LINES: usize = 8192;
/// A longer line is split, as journald splits at its LineMax= (journald.conf(5), 48K).
pub const MAX_LINE: usize = 48 * 1024;

#[derive(Clone)]
pub struct Output {
    tx: SyncSender<Vec<u8>>,
    dropped: Arc<AtomicU64>,
}

impl Output {
    /// Starts the writer thread on this process's stderr.
    pub fn start() -> Output {
        Self::start_with(Box::new(io::stderr()))
    }

    pub fn start_with(sink: Box<dyn Write + Send>) -> Output {
        let (tx, rx) = sync_channel(QUEUE_LINES);
        let dropped = Arc::new(AtomicU64::new(0));
        let d = dropped.clone();
        std::thread::Builder::new()
            .name("corral-output".into())
            .spawn(move || writer(rx, sink, d))
            .expect("spawn the output thread");
        Output { tx, dropped }
    }

    /// Queues one complete line (with its newline). Never blocks.
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

    /// Reads a worker's pipe until EOF, queuing each line behind `prefix`.
    pub async fn relay(self, fd: OwnedFd, prefix: String) {
        let Ok(mut pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            return;
        };
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
                self.emit(&prefix, &buf[start..start + nl]);
                start += nl + 1;
            }
            buf.drain(..start);
            while buf.len() >= MAX_LINE {
                let rest = buf.split_off(MAX_LINE);
                self.emit(&prefix, &buf);
                buf = rest;
            }
        }
        if !buf.is_empty() {
            self.emit(&prefix, &buf);
        }
    }

    /// Queues `text` as one line, or as several of at most MAX_LINE bytes.
    fn emit(&self, prefix: &str, text: &[u8]) {
        for part in text.chunks(MAX_LINE) {
            let mut line = Vec::with_capacity(prefix.len() + part.len() + 1);
            line.extend_from_slice(prefix.as_bytes());
            line.extend_from_slice(part);
            line.push(b'\n');
            self.line(line);
        }
    }
}

fn writer(rx: Receiver<Vec<u8>>, mut sink: Box<dyn Write + Send>, dropped: Arc<AtomicU64>) {
    let mut reported = 0;
    while let Ok(line) = rx.recv() {
        let now = dropped.load(Ordering::Relaxed);
        if now > reported {
            let msg = format!(
                "corral: {} log line(s) dropped: output was not read fast enough\n",
                now - reported
            );
            let _ = sink.write_all(msg.as_bytes());
            reported = now;
        }
        let _ = sink.write_all(&line);
        let _ = sink.flush();
    }
}

/// Lets `tracing` write the supervisor's own events through the same queue.
pub struct EventWriter {
    out: Output,
    buf: Vec<u8>,
}

impl Write for EventWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.out.line(std::mem::take(&mut self.buf));
        }
        Ok(())
    }
}

impl Drop for EventWriter {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Output {
    type Writer = EventWriter;
    fn make_writer(&'a self) -> EventWriter {
        EventWriter {
            out: self.clone(),
            buf: Vec::new(),
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
        let out = Output::start_with(Box::new(Shared(got.clone())));
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
        rt.block_on(out.clone().relay(r, "app[0]: ".into()));
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
        let out = Output::start_with(Box::new(Blocked(gate.clone())));
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
