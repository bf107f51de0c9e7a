//! corral's memory and log when its log is not read, or read slowly, and when many workers
//! leave lines unfinished. A worker writes 500 MiB of 48 KiB lines while corral's stderr is a
//! pipe nobody reads: corral's RSS stays within 4 MiB of what it was once the worker was ready.
//! 300 workers each write 49,000 bytes without a newline: the same. Once the pipe is read, the
//! lines that did not fit are said in reports, at most about one a second, that count exactly
//! what was lost.

mod common;

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Bytes per line, newline included: journald's LineMax, the longest line corral queues whole.
const LINE: usize = 48 * 1024;
/// 10,667 × 48 KiB is a little over 500 MiB.
const LINES: usize = 10_667;
/// What a worker line becomes on corral's stderr: `demo[0]: ` + the line.
const RECORD: u64 = ("demo[0]: ".len() + LINE) as u64;
const MIB: u64 = 1024 * 1024;
/// The most corral's RSS may grow over what it was once its workers were ready: the queue
/// (1 MiB) and the partial lines (1 MiB) at their budgets, and the allocator's slack.
const GROWTH: u64 = 4 * MIB;

/// Writes READY=1, waits for the test to say go (the FIFO argv[1] opened and closed), then
/// writes lines of argv[2] bytes to stdout as fast as corral takes them: argv[3] of them, or
/// for argv[4] seconds if given. Then it writes how many to argv[1] + ".count", and exits. It
/// is restarted (corral exits once no worker is left), and the new one waits for a go that
/// never comes.
const FLOOD: &str = r#"
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1", os.environ["NOTIFY_SOCKET"])
with open(sys.argv[1]) as go:
    go.read()
line = b"x" * (int(sys.argv[2]) - 1) + b"\n"
out = sys.stdout.buffer
end = time.monotonic() + float(sys.argv[4]) if len(sys.argv) > 4 else None
n = 0
while n < int(sys.argv[3]) and (end is None or time.monotonic() < end):
    out.write(line)
    n += 1
out.flush()
with open(sys.argv[1] + ".count", "w") as f:
    f.write(str(n))
"#;

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// A drop report, `corral: N log line(s) dropped (B bytes): ...`: (N, B).
fn report(line: &str) -> Option<(u64, u64)> {
    let rest = line.strip_prefix("corral: ")?;
    let (lines, rest) = rest.split_once(" log line(s) dropped (")?;
    let (bytes, _) = rest.split_once(" bytes)")?;
    Some((lines.parse().ok()?, bytes.parse().ok()?))
}

/// corral running one flood worker, its stderr a pipe the test reads only when it chooses to.
struct Flood {
    child: Child,
    pid: i32,
    dir: PathBuf,
    go: PathBuf,
    worker: i32,
}

impl Flood {
    /// Starts corral on a worker that floods once told to (`secs`: for that long at most) and
    /// returns once corral is ready (its READY=1: its log is not read).
    fn start(lines: usize, secs: Option<f64>) -> Flood {
        let dir = scratch_dir();
        let go = dir.join("go");
        nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let script = dir.join("flood.py");
        std::fs::write(&script, FLOOD).unwrap();
        let config = dir.join("demo.toml");
        let control = dir.join("demo.sock");
        let secs = secs.map(|s| format!(", \"{s}\"")).unwrap_or_default();
        std::fs::write(
            &config,
            format!(
                "command = [\"python3\", \"{}\", \"{}\", \"{LINE}\", \"{lines}\"{secs}]\n\
                 [restart]\npolicy = \"always\"\n",
                script.display(),
                go.display()
            ),
        )
        .unwrap();
        let sd = std::os::unix::net::UnixDatagram::bind(dir.join("notify")).unwrap();
        let mut cmd = Command::new(CORRAL);
        cmd.arg("run")
            .arg(&config)
            .arg("--control")
            .arg(&control)
            .env("NOTIFY_SOCKET", dir.join("notify"))
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("CORRAL_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        // If the test process dies, its supervisor goes with it.
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("start corral");
        let pid = child.id() as i32;
        let mut flood = Flood {
            child,
            pid,
            dir,
            go,
            worker: 0,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "corral never said READY=1");
            sd.set_read_timeout(Some(left)).unwrap();
            let n = sd.recv(&mut buf).expect("READY=1 within 30s");
            if &buf[..n] == b"READY=1" {
                break;
            }
        }
        let out = Command::new(CORRAL)
            .args(["status", "demo", "--json", "--control"])
            .arg(&control)
            .output()
            .unwrap();
        let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        flood.worker = status["workers"][0]["pid"]
            .as_i64()
            .expect("the worker's pid") as i32;
        flood
    }

    /// Tells the worker to start writing.
    fn go(&self) {
        std::fs::write(&self.go, b"go\n").unwrap();
    }

    /// Waits for the worker to exit; returns how many lines it wrote.
    fn wait_worker(&self, timeout: Duration) -> u64 {
        assert!(
            wait_gone(self.worker, timeout),
            "the worker did not finish within {timeout:?}"
        );
        let count = Path::new(&format!("{}.count", self.go.display())).to_owned();
        std::fs::read_to_string(count).unwrap().parse().unwrap()
    }

    fn stderr(&mut self) -> ChildStderr {
        self.child.stderr.take().unwrap()
    }

    /// SIGTERM, and a clean exit.
    fn stop(mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        assert!(
            wait_gone(self.pid, Duration::from_secs(30)),
            "corral did not exit"
        );
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

type Log = Arc<(Mutex<Vec<(Instant, String)>>, Condvar)>;

/// Reads corral's stderr from a thread, each line with when it was read; `pause` between reads
/// of at most 16 KiB makes a slow reader.
fn read_log(stderr: ChildStderr, pause: Option<Duration>) -> (Log, std::thread::JoinHandle<()>) {
    let log: Log = Arc::default();
    let l = log.clone();
    let reader = std::thread::spawn(move || {
        let (m, c) = &*l;
        let read = |line: Vec<u8>| {
            m.lock()
                .unwrap()
                .push((Instant::now(), String::from_utf8_lossy(&line).into_owned()));
            c.notify_all();
        };
        match pause {
            None => {
                for line in BufReader::new(stderr).split(b'\n') {
                    let Ok(line) = line else { break };
                    read(line);
                }
            }
            Some(pause) => {
                let mut stderr = stderr;
                let (mut buf, mut partial) = (vec![0u8; 16 * 1024], Vec::new());
                loop {
                    let n = match stderr.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    partial.extend_from_slice(&buf[..n]);
                    while let Some(nl) = partial.iter().position(|&b| b == b'\n') {
                        let rest = partial.split_off(nl + 1);
                        partial.pop();
                        read(std::mem::replace(&mut partial, rest));
                    }
                    std::thread::sleep(pause); // the slow reader itself, not a wait
                }
            }
        }
    });
    (log, reader)
}

/// Waits until every line the worker wrote is either on corral's stderr or counted in a
/// report; returns the lines seen and the reports (when read, lines, bytes).
fn wait_counted(log: &Log, wrote: u64) -> (u64, Vec<(Instant, u64, u64)>) {
    let whole = format!("demo[0]: {}", "x".repeat(LINE - 1));
    let (m, c) = &**log;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut lines = m.lock().unwrap();
    loop {
        let seen = lines.iter().filter(|(_, l)| *l == whole).count() as u64;
        let reports: Vec<(Instant, u64, u64)> = lines
            .iter()
            .filter_map(|(t, l)| report(l).map(|(n, b)| (*t, n, b)))
            .collect();
        let dropped: u64 = reports.iter().map(|r| r.1).sum();
        if seen + dropped >= wrote {
            return (seen, reports);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "after 60s of reading: {seen} lines written and {dropped} reported dropped, of \
             {wrote}; reports: {:?}",
            reports.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>()
        );
        lines = c.wait_timeout(lines, left).unwrap().0;
    }
}

/// Waits for a line that starts with `start`.
fn wait_line(log: &Log, start: &str) {
    let (m, c) = &**log;
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut lines = m.lock().unwrap();
    while !lines.iter().any(|(_, l)| l.starts_with(start)) {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let own: Vec<&String> = lines
                .iter()
                .map(|(_, l)| l)
                .filter(|l| !l.starts_with("demo[0]: "))
                .collect();
            panic!("no line {start:?} within 30s; corral's own: {own:?}");
        }
        lines = c.wait_timeout(lines, left).unwrap().0;
    }
}

/// The reports count exactly the lines lost, and their bytes.
#[track_caller]
fn check_counts(seen: u64, reports: &[(Instant, u64, u64)], wrote: u64) {
    let dropped: u64 = reports.iter().map(|r| r.1).sum();
    let bytes: u64 = reports.iter().map(|r| r.2).sum();
    assert_eq!(seen + dropped, wrote, "the reports count what was lost");
    assert_eq!(bytes, dropped * RECORD, "the reports count the bytes lost");
    assert!(dropped > 0 && seen > 0, "seen {seen}, dropped {dropped}");
}

#[test]
fn a_stalled_reader_costs_corral_no_memory_and_drops_are_counted() {
    let mut flood = Flood::start(LINES, None);
    let baseline = vm(flood.pid, "VmRSS");
    let started = Instant::now();
    flood.go();
    let wrote = flood.wait_worker(Duration::from_secs(300));
    assert_eq!(wrote, LINES as u64);
    let took = started.elapsed();
    let (rss, peak) = (vm(flood.pid, "VmRSS"), vm(flood.pid, "VmHWM"));
    eprintln!(
        "corral's RSS: {:.1} MiB once ready, {:.1} MiB after {} MiB written in {took:.1?} \
         (peak {:.1} MiB)",
        mib(baseline),
        mib(rss),
        (LINE * LINES) as u64 / MIB,
        mib(peak),
    );
    assert!(
        rss <= baseline + GROWTH,
        "RSS grew from {baseline} to {rss} bytes"
    );
    assert!(
        peak <= baseline + GROWTH,
        "RSS peaked at {peak} bytes, from {baseline}"
    );

    // Now read: what was queued, and the report of what was not.
    let reading = Instant::now();
    let (log, reader) = read_log(flood.stderr(), None);
    let (seen, reports) = wait_counted(&log, wrote);
    let last = reports.last().unwrap().0;
    eprintln!(
        "{seen} lines written, {} dropped in {} report(s) over {:.1?} of reading",
        reports.iter().map(|r| r.1).sum::<u64>(),
        reports.len(),
        last - reading
    );
    check_counts(seen, &reports, wrote);
    // Nothing was dropped once the pipe was read: one report, or two if it split.
    assert!(reports.len() <= 2, "{} reports", reports.len());
    // corral's own lines have room of their own: the worker's exit, which came while the queue
    // was full of the worker's lines, is not lost in its flood.
    let exit = format!("pid {} (generation 1): exited with code 0", flood.worker);
    wait_line(&log, &format!("corral[demo]: worker 0 {exit}"));
    flood.stop();
    reader.join().unwrap();
}

/// A reader slower than the worker: lines are dropped all along, and said about once a second,
/// not beside every line; the last report comes when dropping ends, without any exit.
#[test]
fn a_slow_reader_gets_a_drop_report_a_second() {
    let mut flood = Flood::start(usize::MAX >> 1, Some(3.5));
    let baseline = vm(flood.pid, "VmRSS");
    // About 1.6 MB/s, far below what the worker writes.
    let (log, reader) = read_log(flood.stderr(), Some(Duration::from_millis(10)));
    flood.go();
    let wrote = flood.wait_worker(Duration::from_secs(60));
    let (seen, reports) = wait_counted(&log, wrote);
    let peak = vm(flood.pid, "VmHWM");
    let gaps: Vec<f64> = reports
        .windows(2)
        .map(|w| (w[1].0 - w[0].0).as_secs_f64())
        .collect();
    let span = (reports.last().unwrap().0 - reports[0].0).as_secs_f64();
    eprintln!(
        "{wrote} lines from the worker: {seen} written, {} dropped, in {} reports over {span:.1}s \
         (gaps {gaps:.2?}); RSS {:.1} MiB once ready, peak {:.1} MiB",
        reports.iter().map(|r| r.1).sum::<u64>(),
        reports.len(),
        mib(baseline),
        mib(peak)
    );
    check_counts(seen, &reports, wrote);
    assert!(
        peak <= baseline + GROWTH,
        "RSS peaked at {peak} bytes, from {baseline}"
    );
    // Several reports over the 3.5s of dropping: it did not wait for the end to say it.
    assert!(reports.len() >= 3, "{} reports", reports.len());
    // At most one a second (as read: the pipe ahead of a report delays it by a few ms), so at
    // most one per whole second of their span, plus the first.
    assert!(
        gaps.iter().all(|&g| g >= 0.5),
        "reports closer than a second: {gaps:?}"
    );
    assert!(
        reports.len() as f64 <= span.floor() + 2.0,
        "{} reports in {span:.1}s",
        reports.len()
    );
    flood.stop();
    reader.join().unwrap();
}

/// What the relays may hold in partial lines, all together (corral(1), LOGGING: 1 MiB).
const PARTIAL_BYTES: u64 = MIB;

/// The bytes of worker text in corral's log, the `APP[SLOT]: ` prefixes left out, per slot, and
/// the bytes counted in drop reports.
fn worker_bytes(lines: &[String], workers: usize) -> (Vec<u64>, u64) {
    let mut per_slot = vec![0u64; workers];
    let mut dropped = 0;
    for l in lines {
        if let Some(rest) = l.strip_prefix("demo[") {
            let (slot, text) = rest.split_once("]: ").expect("a worker line");
            per_slot[slot.parse::<usize>().unwrap()] += text.len() as u64;
        } else if let Some((_, bytes)) = report(l) {
            dropped += bytes;
        }
    }
    (per_slot, dropped)
}

/// Hundreds of workers each write 49,000 bytes without a newline, and wait: a partial line
/// each, just under 48 KiB. Held whole, they cost corral 15 MB at 300 workers (50 MB at 1024);
/// within the budget, corral's RSS stays within 4 MiB of what it was once they were ready,
/// and what does not fit is written out at once as pieces of lines, not held.
#[test]
fn many_workers_with_partial_lines_cost_corral_only_the_budget() {
    const WORKERS: usize = 300;
    const WRITE: u64 = 49_000;
    if !["/usr/bin/systemd-notify", "/bin/systemd-notify"]
        .iter()
        .any(|p| Path::new(p).exists())
    {
        skipped("systemd-notify is not installed (the workers are shell one-liners using it)");
        return;
    }
    let dir = scratch_dir();
    // The workers wait on this FIFO until the test closes the end it holds: EOF, all at once.
    let go = dir.join("go");
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let hold = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&go)
        .unwrap();
    // Ready once the FIFO is open (systemd-notify is a child of the worker: its tree counts).
    let mut corral = Corral::start(&format!(
        "command = ['sh', '-c', 'exec 3<\"$0\"; systemd-notify --ready; read _ <&3; \
         printf %0{WRITE}d 0; exec sleep 600', '{}']\nworkers = {WORKERS}\n",
        go.display()
    ));
    corral.wait_for(
        &format!("{WORKERS}/{WORKERS} ready · generation 1 "),
        Duration::from_secs(120),
    );
    let baseline = vm(corral.pid, "VmRSS");
    drop(hold);
    let total = WORKERS as u64 * WRITE;
    // All but what the budget may hold is written or reported dropped, at once.
    let emitted = corral.wait_log(Duration::from_secs(30), |lines| {
        let (seen, dropped) = worker_bytes(lines, WORKERS);
        seen.iter().sum::<u64>() + dropped >= total - PARTIAL_BYTES
    });
    let (rss, peak) = (vm(corral.pid, "VmRSS"), vm(corral.pid, "VmHWM"));
    eprintln!(
        "corral's RSS with {WORKERS} workers: {:.1} MiB once ready, {:.1} MiB with {:.1} MiB \
         of partial lines written (peak {:.1} MiB)",
        mib(baseline),
        mib(rss),
        mib(total),
        mib(peak)
    );
    assert!(
        peak <= baseline + GROWTH,
        "RSS peaked at {:.1} MiB, from {:.1} MiB",
        mib(peak),
        mib(baseline)
    );
    // The workers are still there, their lines unfinished: corral holds no more of them than
    // the budget, and wrote out the rest.
    let (seen, dropped) = worker_bytes(&corral.lines(), WORKERS);
    let seen: u64 = seen.iter().sum();
    assert!(
        emitted,
        "after 30s, {seen} bytes written and {dropped} reported dropped, of {total}"
    );
    assert!(seen <= total, "{seen} bytes of {total} written");
    corral.signal(nix::sys::signal::Signal::SIGTERM);
    let status = corral.wait_exit(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
