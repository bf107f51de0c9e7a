//! A chaos run: random reloads, restarts, scales, worker kills and stray signals under load,
//! from a fixed seed (so a failure can be replayed), for a bounded number of steps. Then what
//! must hold whatever happened: every slot ready on the newest generation, no zombie, corral's
//! file descriptors and resident memory back at their baseline, and no connection refused.

mod common;

use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// xorshift64*: enough randomness for choosing steps, and the same steps for the same seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

fn fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// Children of `pid` that are zombies (exited, not reaped).
fn zombies(pid: i32) -> Vec<i32> {
    corral::procfs::all_stats()
        .into_iter()
        .filter(|s| s.ppid == pid && s.zombie)
        .map(|s| s.pid)
        .collect()
}

const TEMPLATE: &str = r#"
command = ["python3", "{worker}"]
workers = 3
[[listen]]
name = "http"
address = "127.0.0.1:{port}"
[readiness]
timeout = "10s"
[stop]
timeout = "5s"
[restart]
delay = "50ms"
max_delay = "200ms"
"#;

#[test]
fn random_operations_under_load_leave_everything_as_it_should_be() {
    let seed = std::env::var("CORRAL_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0ff_ee15_2026u64);
    let mut rng = Rng(seed);
    let c = Corral::start(TEMPLATE);
    c.wait_ready(3, 1);
    // The baseline, once everything has started and answered.
    c.get("/").unwrap();
    let (fds0, rss0) = (fds(c.pid), rss_kib(c.pid));
    let load = Load::start(c.port);
    let mut desired = 3u64;
    let mut done = Vec::new();
    for _ in 0..40 {
        match rng.below(6) {
            0 => {
                let out = c.ctl(&["reload", "demo"]);
                done.push(format!("reload: {}", out.status));
            }
            1 => {
                let w = rng.below(desired).to_string();
                let out = c.ctl(&["restart", "demo", "--worker", &w]);
                done.push(format!("restart {w}: {}", out.status));
            }
            2 => {
                desired = 1 + rng.below(4);
                let out = c.ctl(&["scale", "demo", &desired.to_string()]);
                done.push(format!("scale {desired}: {}", out.status));
            }
            3 | 4 => {
                let pids = c.pids("ready");
                if !pids.is_empty() {
                    let pid = pids[rng.below(pids.len() as u64) as usize] as i32;
                    let _ =
                        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
                    done.push(format!("kill {pid}"));
                }
            }
            _ => {
                c.signal(Signal::SIGUSR2);
                done.push("SIGUSR2".into());
            }
        }
    }
    // Whatever happened: a last reload to the config's 3 workers, which every slot must reach.
    let out = c.ctl(&["reload", "demo"]);
    assert!(
        out.status.success(),
        "the last reload: {out:?}\nsteps: {done:#?}"
    );
    let status = c.status();
    let generation = status["generation"].as_u64().unwrap();
    c.wait_ready(3, generation as u32);
    let status = c.status();
    let workers = status["workers"].as_array().unwrap();
    assert_eq!(workers.len(), 3, "{status}\nsteps: {done:#?}");
    for w in workers {
        assert_eq!(w["state"], "ready", "{status}");
        assert_eq!(w["generation"], generation, "{status}");
    }
    for _ in 0..10 {
        c.get("/").expect("served after the chaos");
    }
    let (_, failures) = load.finish();
    let refused: Vec<&String> = failures.iter().filter(|f| f.contains("refused")).collect();
    assert!(refused.is_empty(), "connections refused: {refused:?}");
    assert!(zombies(c.pid).is_empty(), "zombies: {:?}", zombies(c.pid));
    assert_eq!(
        fds(c.pid),
        fds0,
        "corral's file descriptors back at the baseline"
    );
    let rss = rss_kib(c.pid);
    assert!(
        rss < rss0 + 8 * 1024,
        "corral's RSS {rss} KiB, baseline {rss0} KiB\nsteps: {done:#?}"
    );
    // And the rest of a normal life: a graceful stop.
    let mut c = c;
    c.signal(Signal::SIGTERM);
    assert_eq!(c.wait_exit(SECS(30)).unwrap().code(), Some(0));
}
