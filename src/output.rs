//! Relay of worker output, and the supervisor's own log lines, to its stderr or to journald.
//!
//! Under journald (stderr is the journal stream, systemd.exec(5) `JOURNAL_STREAM`), each line a
//! worker writes becomes one entry with `CORRAL_APP`, `CORRAL_WORKER`, `CORRAL_WORKER_PID`,
//! `CORRAL_GENERATION`, `SYSLOG_IDENTIFIER=APP` and a `PRIORITY` from its `<N>` prefix (stripped)
//! or the stream's default. Otherwise lines go to stderr as `APP[SLOT]: line`.
//!
//! Writing to stderr can block (a full pipe, a stopped pager, a slow journald). The event loop
//! must never wait for that, so every line goes through a queue to one writer thread. The queue
//! is bounded in bytes ([`QUEUE_BYTES`]), not in lines: bounded in lines (8192), a reader that
//! stalled made the queue pin 8192 lines of up to 48 KiB, about 400 MB, for as long as it stayed
//! stuck. Now a stalled reader costs the supervisor at most the budget, whatever the workers
//! write. A line that does not fit is dropped and counted. The writer says how many lines and
//! bytes were dropped as soon as it can write again, then at most once per [`REPORT_EVERY`]
//! while lines are still being dropped, and once more after the last one: every dropped line is
//! in one report, without a report beside nearly every line written.
//!
//! Worker pipes are read as fast as they fill, so a worker never blocks on its own output
//! either. A relay holds only its worker's partial line, and all relays' partial lines together
//! stay within their own budget ([`crate::lines::PARTIAL_BYTES`]); the read buffer is one per
//! thread, shared by all the relays. So the queue and the partial lines are all the memory
//! output costs, however many workers write.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::journal::{self, Journal};
use crate::lines::{Break, Budget, Lines, MAX_LINE};

/// The bytes of lines waiting for the writer, at most: about twenty of the longest lines, or
/// thousands of ordinary ones. Enough for a burst while the reader keeps up, and the most a
/// reader that stalls for good costs the supervisor.
pub const QUEUE_BYTES: usize = 1024 * 1024;
/// The last part of [`QUEUE_BYTES`], which only corral's own lines may take: a worker that floods
/// the log does not crowd out the news that it exited, or why.
pub const OWN_ROOM: usize = 64 * 1024;
/// What a queued line costs beyond its bytes (its slot in the queue, its allocation's header),
/// so that a flood of empty lines is bounded in memory too.
const RECORD_OVERHEAD: usize = 64;
/// Drop reports come at most this often while lines are being dropped.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);
/// One read from a worker's pipe.
const READ_SIZE: usize = 16 * 1024;
/// What stays allocated once a burst is over: a queue that once held thousands of lines gives
/// the rest of its slots back instead of keeping them for the process's life.
const KEEP_RECORDS: usize = 256;

thread_local! {
    /// The relays' read buffer, one per thread: each relay hands what it read on to the queue
    /// before its next await, so an idle relay holds no buffer of its own.
    static READ_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; READ_SIZE].into_boxed_slice());
}

/// Where lines end up.
pub enum Sink {
    Stream(Box<dyn Write + Send>),
    Journal(Journal),
}

/// Lines dropped for want of room, and their bytes as they would have been written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dropped {
    pub lines: u64,
    pub bytes: u64,
}

#[derive(Clone)]
pub struct Output {
    inner: Arc<Closer>,
    journal: bool,
    /// What every relay's partial line counts against.
    partials: Arc<Budget>,
}

/// What the event loop and the writer share, under one lock. The lock is held for a push or a
/// pop, never across a write, so the event loop never waits for the sink.
#[derive(Default)]
struct Queue {
    records: VecDeque<Vec<u8>>,
    /// The cost ([`cost`]) of the records queued or being written: what [`QUEUE_BYTES`] bounds.
    /// A record is paid for until it is freed, after its write.
    cost: usize,
    dropped: Dropped,
    /// Records accepted, and records the writer is done with: what a flush waits on.
    pushed: u64,
    done: u64,
    /// A flush wants the drops said, without waiting for their turn, once `done` reaches this.
    flush_at: Option<u64>,
    flushers: usize,
    /// The writer waits on `wake`: a record, or a drop to report, must wake it. Otherwise (it is
    /// writing, or stuck in a write) nothing needs waking, and no wake-up is paid for per line.
    waiting: bool,
    /// Every [`Output`] is gone: the writer ends once the queue is empty.
    closed: bool,
}

/// What a record costs in the queue's budget.
fn cost(record: &Vec<u8>) -> usize {
    record.capacity() + RECORD_OVERHEAD
}

impl Queue {
    /// Queues `record` if the queue stays within `limit`; else counts it as dropped.
    fn push(&mut self, record: Vec<u8>, limit: usize) {
        let cost = cost(&record);
        if self.cost + cost > limit {
            self.dropped.lines += 1;
            self.dropped.bytes += record.len() as u64;
            return;
        }
        self.cost += cost;
        self.pushed += 1;
        self.records.push_back(record);
    }

    /// The writer is done with a record of `cost` (it is written, and freed).
    fn done(&mut self, cost: usize) {
        self.cost -= cost;
        self.done += 1;
        // Up to QUEUE_BYTES / RECORD_OVERHEAD slots after a burst of short lines: give them back.
        if self.records.is_empty() && self.records.capacity() > 4 * KEEP_RECORDS {
            self.records.shrink_to(KEEP_RECORDS);
        }
    }
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits here for a record, or for its next report to be due.
    wake: Condvar,
    /// Flushes wait here for the writer's progress.
    progress: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn wake_writer(&self, q: &mut Queue) {
        if q.waiting {
            q.waiting = false;
            self.wake.notify_one();
        }
    }
}

/// Tells the writer, when the last [`Output`] goes, that nothing more will come.
struct Closer(Arc<Shared>);

impl Drop for Closer {
    fn drop(&mut self) {
        let mut q = self.0.lock();
        q.closed = true;
        q.waiting = false;
        self.0.wake.notify_one();
    }
}

/// Who wrote a line: the fields of its journal entry, or its prefix on stderr.
#[derive(Clone, Debug)]
pub struct Tag {
    pub app: String,
    pub seat: crate::supervisor::Seat,
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
        let journal = matches!(sink, Sink::Journal(_));
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
            progress: Condvar::new(),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name("corral-output".into())
            .spawn(move || {
                // Signals are the event loop's, on the main thread (signals.rs).
                crate::signals::block_in_this_thread();
                writer(s, sink)
            })
            .expect("spawn the output thread");
        Output {
            inner: Arc::new(Closer(shared)),
            journal,
            partials: Arc::default(),
        }
    }

    /// Waits until everything queued so far is written, and the lines dropped so far are said,
    /// for at most `timeout` (the sink may be blocked for good: then lines are lost, as at any
    /// exit).
    pub fn flush(&self, timeout: Duration) {
        let s = &self.inner.0;
        let deadline = Instant::now() + timeout;
        let mut q = s.lock();
        let target = q.pushed;
        q.flush_at = Some(q.flush_at.map_or(target, |t| t.max(target)));
        q.flushers += 1;
        s.wake_writer(&mut q);
        while q.done < target || q.flush_at.is_some() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            q = s
                .progress
                .wait_timeout(q, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        q.flushers -= 1;
    }

    /// Whether records are journal entries (else text lines).
    pub fn is_journal(&self) -> bool {
        self.journal
    }

    /// Queues one record of corral's own: a complete line with its newline, or a journal entry.
    /// Never blocks: without room in the queue, the record is dropped and counted.
    pub fn line(&self, line: Vec<u8>) {
        self.push(line, QUEUE_BYTES);
    }

    /// What was dropped so far.
    pub fn dropped(&self) -> Dropped {
        self.inner.0.lock().dropped
    }

    fn push(&self, record: Vec<u8>, limit: usize) {
        let s = &self.inner.0;
        let mut q = s.lock();
        q.push(record, limit);
        s.wake_writer(&mut q);
    }

    /// Reads a worker's pipe until EOF, queuing each line; `held` is the start of a line an
    /// earlier image's relay had read (an upgrade in place). Told to `stop`, it gives the pipe
    /// back, with what is unread still in it, and the part of a line it holds.
    pub async fn relay(
        self,
        fd: OwnedFd,
        tag: Tag,
        mut stop: tokio::sync::watch::Receiver<bool>,
        held: Vec<u8>,
    ) -> Option<(OwnedFd, Vec<u8>)> {
        let Ok(pipe) = tokio::net::unix::pipe::Receiver::from_owned_fd(fd) else {
            return None;
        };
        let prefix = format!("{}[{}]: ", tag.app, tag.seat);
        let mut lines = Lines::new(self.partials.clone());
        let mut emit = |text: &[u8], end: Break| self.emit(&tag, &prefix, text, end);
        lines.feed(&held, &mut emit);
        loop {
            let readable = tokio::select! {
                r = pipe.readable() => r,
                // A sender gone (never an upgrade) disables this branch.
                Ok(_) = stop.wait_for(|&s| s) => {
                    let held = lines.take_partial();
                    return Some((pipe.into_nonblocking_fd().ok()?, held));
                }
            };
            if readable.is_err() {
                break;
            }
            let read = READ_BUF.with(|buf| {
                let mut buf = buf.borrow_mut();
                let read = pipe.try_read(&mut buf);
                if let Ok(n) = read {
                    lines.feed(&buf[..n], &mut emit);
                }
                read
            });
            match read {
                Ok(0) => break,
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => break,
            }
        }
        lines.finish(&mut emit);
        None
    }

    /// Queues `text` as one line, or as several of at most MAX_LINE bytes, in the part of the
    /// queue a worker may take. `end` is why `text` ended; under journald, each piece that does
    /// not end with a newline says why in `CORRAL_LINE_BREAK=` (see [`Break::field`]).
    fn emit(&self, tag: &Tag, prefix: &str, text: &[u8], end: Break) {
        let limit = QUEUE_BYTES - OWN_ROOM;
        let pieces = text.len().div_ceil(MAX_LINE);
        for (i, part) in text.chunks(MAX_LINE).enumerate() {
            let end = if i + 1 < pieces { Break::LineMax } else { end };
            if self.journal {
                let (prio, msg) = crate::journal::split_priority(part);
                let mut e = Vec::with_capacity(msg.len() + 160);
                journal::field(&mut e, "MESSAGE", msg);
                let prio = prio.unwrap_or(tag.priority);
                journal::field(&mut e, "PRIORITY", prio.to_string().as_bytes());
                journal::field(&mut e, "SYSLOG_IDENTIFIER", tag.app.as_bytes());
                journal::field(&mut e, "CORRAL_APP", tag.app.as_bytes());
                journal::field(&mut e, "CORRAL_WORKER", tag.seat.to_string().as_bytes());
                journal::field(&mut e, "CORRAL_WORKER_PID", tag.pid.to_string().as_bytes());
                journal::field(
                    &mut e,
                    "CORRAL_GENERATION",
                    tag.generation.to_string().as_bytes(),
                );
                if let Some(why) = end.field() {
                    journal::field(&mut e, "CORRAL_LINE_BREAK", why.as_bytes());
                }
                self.push(e, limit);
            } else {
                let mut line = Vec::with_capacity(prefix.len() + part.len() + 1);
                line.extend_from_slice(prefix.as_bytes());
                line.extend_from_slice(part);
                line.push(b'\n');
                self.push(line, limit);
            }
        }
    }
}

/// When to say that lines were dropped: at once the first time, then at most once per
/// REPORT_EVERY while more are dropped, and once more after the last, so that every dropped line
/// is in exactly one report. The time is passed in (tests pass their own).
#[derive(Default)]
struct Reports {
    said: Dropped,
    last: Option<Instant>,
}

impl Reports {
    /// What was dropped since the last report, if it is time to say it: REPORT_EVERY after the
    /// last report, or at once when `force`d (a flush, the end).
    fn due(&mut self, total: Dropped, now: Instant, force: bool) -> Option<Dropped> {
        if total.lines == self.said.lines {
            return None;
        }
        if !force && self.last.is_some_and(|t| now < t + REPORT_EVERY) {
            return None;
        }
        let new = Dropped {
            lines: total.lines - self.said.lines,
            bytes: total.bytes - self.said.bytes,
        };
        self.said = total;
        self.last = Some(now);
        Some(new)
    }

    /// When the next report is due, if some drops are not said yet.
    fn next(&self, total: Dropped, now: Instant) -> Option<Instant> {
        if total.lines == self.said.lines {
            return None;
        }
        Some(self.last.map_or(now, |t| t + REPORT_EVERY))
    }
}

fn writer(shared: Arc<Shared>, mut sink: Sink) {
    let mut reports = Reports::default();
    let mut q = shared.lock();
    loop {
        let now = Instant::now();
        let flushed = q.flush_at.is_some_and(|t| q.done >= t);
        // A flush, or the end, wants every drop said now; otherwise reports keep to their rate.
        let force = flushed || (q.closed && q.records.is_empty());
        if let Some(d) = reports.due(q.dropped, now, force) {
            drop(q);
            report(&mut sink, d);
            q = shared.lock();
            continue;
        }
        if flushed {
            q.flush_at = None;
            shared.progress.notify_all();
        }
        if let Some(record) = q.records.pop_front() {
            drop(q);
            write(&mut sink, &record);
            let c = cost(&record);
            drop(record);
            q = shared.lock();
            q.done(c);
            if q.flushers > 0 {
                shared.progress.notify_all();
            }
            continue;
        }
        if q.closed {
            return;
        }
        q.waiting = true;
        q = match reports.next(q.dropped, now) {
            Some(at) => {
                shared
                    .wake
                    .wait_timeout(q, at.saturating_duration_since(now))
                    .unwrap_or_else(|e| e.into_inner())
                    .0
            }
            None => shared.wake.wait(q).unwrap_or_else(|e| e.into_inner()),
        };
        q.waiting = false;
    }
}

fn report(sink: &mut Sink, d: Dropped) {
    let msg = format!(
        "corral: {} log line(s) dropped ({} bytes): output was not read fast enough",
        d.lines, d.bytes
    );
    match sink {
        Sink::Stream(_) => write(sink, format!("{msg}\n").as_bytes()),
        Sink::Journal(_) => {
            let mut e = Vec::new();
            journal::field(&mut e, "MESSAGE", msg.as_bytes());
            journal::field(&mut e, "PRIORITY", b"4");
            journal::field(&mut e, "SYSLOG_IDENTIFIER", b"corral");
            write(sink, &e);
        }
    }
}

fn write(sink: &mut Sink, record: &[u8]) {
    match sink {
        Sink::Stream(w) => {
            let _ = w.write_all(record);
            let _ = w.flush();
        }
        Sink::Journal(j) => {
            let _ = j.send(record);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    /// A sink that blocks until opened, like a stopped reader on a full pipe, then keeps what it
    /// is given.
    #[derive(Clone, Default)]
    struct Gated {
        open: Arc<(Mutex<bool>, Condvar)>,
        got: Arc<Mutex<Vec<u8>>>,
    }
    impl Gated {
        fn open(&self) {
            let (m, c) = &*self.open;
            *m.lock().unwrap() = true;
            c.notify_all();
        }
        fn text(&self) -> String {
            String::from_utf8(self.got.lock().unwrap().clone()).unwrap()
        }
    }
    impl Write for Gated {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let (m, c) = &*self.open;
            let mut open = m.lock().unwrap();
            while !*open {
                open = c.wait(open).unwrap();
            }
            self.got.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn tag() -> Tag {
        Tag {
            app: "app".into(),
            seat: crate::supervisor::Seat::Slot(0),
            pid: 1,
            generation: 1,
            priority: 6,
        }
    }

    /// A line of `len` bytes, its newline included, allocated to the byte (its clones too).
    fn line(len: usize) -> Vec<u8> {
        let mut l = vec![b'x'; len - 1];
        l.push(b'\n');
        l.shrink_to_fit();
        l
    }

    /// The sum of the reports in `text`, and how many there are.
    fn reported_sum(text: &str) -> (Dropped, usize) {
        let r = reported(text);
        let sum = r.iter().fold(Dropped::default(), |a, d| Dropped {
            lines: a.lines + d.lines,
            bytes: a.bytes + d.bytes,
        });
        (sum, r.len())
    }

    /// The lines dropped according to the reports in `text`.
    fn reported(text: &str) -> Vec<Dropped> {
        text.lines()
            .filter_map(|l| {
                let rest = l.strip_prefix("corral: ")?;
                let (lines, rest) = rest.split_once(" log line(s) dropped (")?;
                let (bytes, _) = rest.split_once(" bytes)")?;
                Some(Dropped {
                    lines: lines.parse().ok()?,
                    bytes: bytes.parse().ok()?,
                })
            })
            .collect()
    }

    #[test]
    fn relays_lines_with_prefix_and_splits_long_ones() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = Output::start_with(Sink::Stream(Box::new(Shared(got.clone()))));
        let long = vec![b'x'; MAX_LINE + 10];
        relay_all(&out, &[b"one\ntwo\n", &long, b"\nno newline at end"]);
        drop(out);
        // The writer thread ends when every sender is gone; wait for its last line.
        let deadline = Instant::now() + Duration::from_secs(5);
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
            assert!(Instant::now() < deadline, "writer never caught up");
            std::thread::yield_now();
        }
    }

    /// Relays what was written to a pipe, whole, then its EOF.
    fn relay_all(out: &Output, written: &[&[u8]]) {
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut w = std::fs::File::from(w);
        for b in written {
            w.write_all(b).unwrap();
        }
        drop(w);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        assert!(rt
            .block_on(out.clone().relay(r, tag(), stopped, Vec::new()))
            .is_none());
    }

    /// Told to stop (an upgrade in place), a relay gives the pipe back with what is unread
    /// still in it, and the part of a line it holds; the next relay, given both, relays the
    /// line whole.
    #[test]
    fn a_stopped_relay_hands_on_its_pipe_and_its_half_line() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = Output::start_with(Sink::Stream(Box::new(Shared(got.clone()))));
        let (r, w) = nix::unistd::pipe().unwrap();
        let mut w = std::fs::File::from(w);
        w.write_all(b"whole\nhalf").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let task = rt.spawn(out.clone().relay(r, tag(), stopped, Vec::new()));
        let deadline = Instant::now() + Duration::from_secs(5);
        rt.block_on(async {
            // Until the relay has read what is there: its whole line is written.
            while got.lock().unwrap().is_empty() {
                assert!(Instant::now() < deadline, "the relay never read");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        stop.send(true).unwrap();
        let (pipe, held) = rt.block_on(task).unwrap().expect("the pipe comes back");
        assert_eq!(held, b"half");
        w.write_all(b" and the rest\nnext\n").unwrap();
        drop(w);
        let (_stop, stopped) = tokio::sync::watch::channel(false);
        assert!(rt
            .block_on(out.clone().relay(pipe, tag(), stopped, held))
            .is_none());
        out.flush(Duration::from_secs(5));
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        assert_eq!(
            text,
            "app[0]: whole\napp[0]: half and the rest\napp[0]: next\n"
        );
    }

    /// Under journald, a piece that is not a whole line says why it ended, as journald's own
    /// `_LINE_BREAK=` would: `line-max`, `eof`, or `budget` when the partial lines of all
    /// relays had used their budget.
    #[test]
    fn journal_entries_say_why_a_line_was_cut() {
        let dir = std::env::temp_dir().join(format!("corral-breaks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("journal");
        let server = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let out = Output::start_with(Sink::Journal(Journal::connect_to(&path).unwrap()));
        let long = vec![b'x'; MAX_LINE + 10];
        relay_all(&out, &[b"one\n", &long, b"\ntail"]);
        // Other relays hold partial lines up to the whole budget: a partial line has no room.
        let mut holders = Vec::new();
        while out.partials.held() < crate::lines::PARTIAL_BYTES {
            let mut l = Lines::new(out.partials.clone());
            let n = (crate::lines::PARTIAL_BYTES - out.partials.held()).min(MAX_LINE - 1);
            l.feed(&vec![b'p'; n], &mut |_: &[u8], _| {
                panic!("no room for {n} bytes")
            });
            holders.push(l);
        }
        relay_all(&out, &[b"half"]);
        out.flush(Duration::from_secs(5));
        let mut entries = Vec::new();
        let mut buf = vec![0u8; 2 * MAX_LINE];
        while entries.len() < 5 {
            let n = server.recv(&mut buf).expect("an entry within 5s");
            let text = String::from_utf8_lossy(&buf[..n]).into_owned();
            let field = |name: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(&format!("{name}=")))
                    .map(str::to_owned)
            };
            let message = field("MESSAGE").unwrap();
            entries.push((message.len(), field("CORRAL_LINE_BREAK")));
        }
        let _ = std::fs::remove_dir_all(&dir);
        let some = |s: &str| Some(s.to_owned());
        assert_eq!(
            entries,
            [
                (3, None),
                (MAX_LINE, some("line-max")),
                (10, None),
                (4, some("eof")),
                (4, some("budget")),
            ]
        );
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_and_drops_are_counted() {
        let sink = Gated::default();
        let out = Output::start_with(Sink::Stream(Box::new(sink.clone())));
        // Long lines: as many as fit in QUEUE_BYTES (the one the writer is stuck on included).
        let long = line(MAX_LINE);
        let started = Instant::now();
        for _ in 0..100 {
            out.line(long.clone());
        }
        // Every call returned although nothing could be written.
        assert!(started.elapsed() < Duration::from_secs(5));
        let fit = (QUEUE_BYTES / (MAX_LINE + RECORD_OVERHEAD)) as u64;
        let dropped = Dropped {
            lines: 100 - fit,
            bytes: (100 - fit) * MAX_LINE as u64,
        };
        assert_eq!(out.dropped(), dropped);
        assert!(out.inner.0.lock().cost <= QUEUE_BYTES);
        sink.open();
        out.flush(Duration::from_secs(10));
        // Each line that fit, and a report of the others, lines and bytes: one, or two when the
        // writer thread first looked after the first drops.
        let text = sink.text();
        assert_eq!(
            text.lines().filter(|l| l.starts_with("xx")).count() as u64,
            fit
        );
        let (sum, n) = reported_sum(&text);
        assert_eq!(sum, dropped);
        assert!(n <= 2, "{n} reports");
        let q = out.inner.0.lock();
        assert_eq!((q.cost, q.records.len()), (0, 0));
    }

    #[test]
    fn short_lines_are_bounded_too_and_the_queue_shrinks_after() {
        let sink = Gated::default();
        let out = Output::start_with(Sink::Stream(Box::new(sink.clone())));
        for _ in 0..100_000 {
            out.line(b"x\n".to_vec());
        }
        let fit = (QUEUE_BYTES / (2 + RECORD_OVERHEAD)) as u64;
        assert_eq!(out.dropped().lines, 100_000 - fit);
        let slots = out.inner.0.lock().records.capacity();
        assert!(slots >= fit as usize - 1, "{slots} slots");
        sink.open();
        out.flush(Duration::from_secs(10));
        let q = out.inner.0.lock();
        assert_eq!((q.cost, q.records.len()), (0, 0));
        assert!(
            q.records.capacity() <= 4 * KEEP_RECORDS,
            "the queue keeps {} slots after the burst",
            q.records.capacity()
        );
        drop(q);
        let (sum, n) = reported_sum(&sink.text());
        assert_eq!(
            sum,
            Dropped {
                lines: 100_000 - fit,
                bytes: 2 * (100_000 - fit)
            }
        );
        assert!(n <= 2, "{n} reports");
    }

    #[test]
    fn a_flooding_worker_leaves_room_for_corrals_own_lines() {
        let sink = Gated::default();
        let out = Output::start_with(Sink::Stream(Box::new(sink.clone())));
        let long = vec![b'x'; MAX_LINE];
        for _ in 0..100 {
            out.emit(&tag(), "app[0]: ", &long, Break::Newline);
        }
        let worker = out.dropped();
        assert!(worker.lines > 50, "{worker:?}");
        for _ in 0..10 {
            out.line(b"corral[app]: worker 0 exited\n".to_vec());
        }
        assert_eq!(out.dropped(), worker, "corral's own lines were dropped");
        assert!(out.inner.0.lock().cost <= QUEUE_BYTES);
        sink.open();
        out.flush(Duration::from_secs(10));
        assert_eq!(sink.text().matches("worker 0 exited").count(), 10);
    }

    #[test]
    fn reports_at_once_then_at_most_once_a_second_then_once_more() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let d = |lines: u64| Dropped {
            lines,
            bytes: 10 * lines,
        };
        let mut r = Reports::default();
        assert_eq!(r.due(d(0), at(0), false), None);
        assert_eq!(r.next(d(0), at(0)), None);
        // The first drops are said at once.
        assert_eq!(r.next(d(1), at(0)), Some(at(0)));
        assert_eq!(r.due(d(1), at(0), false), Some(d(1)));
        // More within the second wait for it.
        assert_eq!(r.due(d(5), at(500), false), None);
        assert_eq!(r.next(d(5), at(500)), Some(at(1000)));
        assert_eq!(r.due(d(5), at(999), false), None);
        assert_eq!(r.due(d(5), at(1000), false), Some(d(4)));
        // Nothing new, nothing said, and no wake-up wanted.
        assert_eq!(r.due(d(5), at(3000), false), None);
        assert_eq!(r.next(d(5), at(3000)), None);
        // After a quiet spell, at once again; a flush or the end does not wait its turn.
        assert_eq!(r.due(d(6), at(3000), false), Some(d(1)));
        assert_eq!(r.due(d(8), at(3100), false), None);
        assert_eq!(r.due(d(8), at(3100), true), Some(d(2)));

        // A drop every millisecond for 10s, and the writer looking every millisecond: one
        // report a second, and one at the end, which together count every drop.
        let mut r = Reports::default();
        let mut said = Vec::new();
        for ms in 0..10_000 {
            if let Some(x) = r.due(d(ms + 1), at(ms), false) {
                said.push((ms, x));
            }
        }
        let end = at(10_000);
        let next = r.next(d(10_000), end).unwrap();
        said.extend(r.due(d(10_000), next, false).map(|x| (10_000, x)));
        assert_eq!(said.len(), 11, "{said:?}");
        assert!(said.windows(2).all(|w| w[1].0 - w[0].0 >= 1000));
        assert_eq!(said.iter().map(|s| s.1.lines).sum::<u64>(), 10_000);
        assert_eq!(said.iter().map(|s| s.1.bytes).sum::<u64>(), 100_000);
    }

    #[test]
    fn drops_are_said_once_the_sink_writes_again_not_per_line() {
        // A sink that takes a while per write: the queue stays full, and lines are dropped all
        // along, but said in few reports, not beside every line.
        struct Slow(Arc<Mutex<Vec<u8>>>);
        impl Write for Slow {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                std::thread::sleep(Duration::from_micros(200));
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = Output::start_with(Sink::Stream(Box::new(Slow(got.clone()))));
        let started = Instant::now();
        let line = line(4096);
        let mut pushed = 0u64;
        while started.elapsed() < Duration::from_millis(1500) {
            out.line(line.clone());
            pushed += 1;
        }
        out.flush(Duration::from_secs(30));
        let secs = started.elapsed().as_secs_f64();
        let text = String::from_utf8(got.lock().unwrap().clone()).unwrap();
        let written = text.lines().filter(|l| l.starts_with("xx")).count() as u64;
        let reports = reported(&text);
        let dropped: u64 = reports.iter().map(|d| d.lines).sum();
        assert_eq!(written + dropped, pushed);
        assert_eq!(dropped, out.dropped().lines);
        assert!(
            written > 100 && dropped > 1000,
            "{written} written, {dropped} dropped"
        );
        // One at the first drop, at most one a second after it, and the flush's.
        assert!(
            reports.len() as f64 <= secs.floor() + 2.0,
            "{} reports in {secs:.1}s: {reports:?}",
            reports.len()
        );
    }
}
