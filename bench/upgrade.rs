//! An upgrade in place next to a `systemctl restart` of the same app, in a booted systemd (the
//! tests' sandbox): how long each takes, and the slowest request a client saw during it, under
//! a load of one new connection per request. `cargo bench --bench upgrade` (as root).
//!
//! ROUNDS (default 5) rounds of each, interleaved; START_S (default 1) is how long each of the
//! app's 4 workers takes to get ready, which a restart pays and an upgrade does not.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/common/sandbox.rs"]
mod sandbox;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const PORT: u16 = 8090;

/// Each request: when it began, how long it took, whether it failed.
type Record = Arc<Mutex<Vec<(Instant, Duration, bool)>>>;

/// One operation: how long it took, the slowest request during it, the failed requests.
type Run = (Duration, Duration, usize);

fn main() {
    let rounds: usize = env("ROUNDS", 5);
    let start_s: f64 = env("START_S", 1.0);
    let Some(sb) = sandbox::boot() else {
        eprintln!("SKIPPED: the systemd sandbox cannot boot here");
        return;
    };
    sb.install();
    sb.write(
        "/etc/corral/bench.toml",
        &format!(
            "command = [\"python3\", \"{}\"]\nworkers = 4\n\
             environment = {{ WORKER_READY_DELAY = \"{start_s}\" }}\n\
             [[listen]]\nname = \"http\"\naddress = \"127.0.0.1:{PORT}\"\n\
             [readiness]\ntimeout = \"30s\"\n[stop]\ntimeout = \"5s\"\n",
            sandbox::WORKER_PY
        ),
    );
    sb.ok("systemctl daemon-reload && systemctl start corral@bench.socket corral@bench.service");

    let record: Record = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let ns = std::fs::File::open(format!("/proc/{}/ns/net", sb.pid)).unwrap();
    let (r, s) = (record.clone(), stop.clone());
    let load = std::thread::spawn(move || {
        nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        while !s.load(Ordering::Relaxed) {
            let t = Instant::now();
            let ok = common::http_get(PORT, "/").is_ok();
            r.lock().unwrap().push((t, t.elapsed(), !ok));
        }
    });
    std::thread::sleep(Duration::from_secs(2));

    let mut results: Vec<(&str, Vec<Run>)> = vec![
        ("corral upgrade", Vec::new()),
        ("systemctl restart", Vec::new()),
        ("nothing (baseline)", Vec::new()),
    ];
    for _ in 0..rounds {
        for (i, cmd) in [
            "corral upgrade bench",
            "systemctl restart corral@bench.service",
            "sleep 0.2",
        ]
        .iter()
        .enumerate()
        {
            let t0 = Instant::now();
            sb.ok(cmd);
            let t1 = Instant::now();
            // What was in flight as it ended finishes meanwhile.
            std::thread::sleep(Duration::from_millis(1500));
            let recs = record.lock().unwrap();
            let during: Vec<_> = recs
                .iter()
                .filter(|(t, d, _)| *t + *d >= t0 && *t <= t1)
                .collect();
            let worst = during.iter().map(|(_, d, _)| *d).max().unwrap_or_default();
            let failed = during.iter().filter(|(_, _, f)| *f).count();
            results[i].1.push((t1 - t0, worst, failed));
        }
    }
    stop.store(true, Ordering::Relaxed);
    load.join().unwrap();
    let total = record.lock().unwrap().len();

    println!(
        "4 workers, each {start_s} s to get ready; one new connection per request; {rounds} rounds, \
         {total} requests in all\n"
    );
    println!("| operation | time (median, min–max) | slowest request during it (median, max) | failed requests |");
    println!("|---|---|---|---|");
    for (what, runs) in &results {
        let mut times: Vec<Duration> = runs.iter().map(|r| r.0).collect();
        let mut worst: Vec<Duration> = runs.iter().map(|r| r.1).collect();
        times.sort();
        worst.sort();
        let failed: usize = runs.iter().map(|r| r.2).sum();
        println!(
            "| {what} | {} ms ({}–{}) | {} ms ({}) | {failed} |",
            ms(times[times.len() / 2]),
            ms(times[0]),
            ms(times[times.len() - 1]),
            ms(worst[worst.len() / 2]),
            ms(worst[worst.len() - 1]),
        );
    }
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
