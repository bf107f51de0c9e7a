//! corral's own open-file limit (`RLIMIT_NOFILE`, getrlimit(2)).
//!
//! What corral holds open grows with its workers: its ends of each worker's stdout and stderr
//! pipes and of a Node.js IPC channel, and, for each balanced listener (`listen.balance`), the
//! worker's own listening socket (balance.rs); twice over while a roll has the new workers and
//! the old, or a scale down's workers still stop while others start. On top of that, its own
//! files and the control connections. Shared listeners are one socket each, whatever the
//! count, and are in its own.
//!
//! systemd starts a service with a soft limit of 1024, which it keeps low for programs that
//! still use select(2) (systemd.exec(5), `LimitNOFILE=`), and a hard limit of 524288. corral
//! raises only its own soft limit, within the hard one (setrlimit(2) lets any process do
//! that), and gives its workers the limit it was started with: they should not notice what
//! corral needs. When the hard limit leaves too little room for the workers asked for, corral
//! says so at start and at each reload or scale, before a worker fails to start with EMFILE.

use nix::sys::resource::{getrlimit, setrlimit, Resource};

/// The most workers an app has: the most a config's `workers` or `corral scale` allows
/// (config/check.rs, runtime.rs).
pub const MOST_WORKERS: u32 = 1024;
/// Files corral holds per worker, besides its balanced sockets: its ends of the stdout and
/// stderr pipes, and of a Node.js IPC channel, and the socket it writes the worker's bus
/// messages from (bus.rs).
pub const FDS_PER_WORKER: u64 = 4;
/// corral's own: listeners, the notify and control sockets, the keeper's pipe, /dev/null, the
/// journal, the event loop's, a spawn's pipes while it forks, /proc reads; a few dozen at most.
pub const FDS_OWN: u64 = 128;
/// The control connections: `MAX_CONNECTIONS` open and as many being closed.
const FDS_CONTROL: u64 = 2 * crate::control::MAX_CONNECTIONS as u64;

/// What corral may have open at once with `workers` workers and `balanced` balanced
/// listeners: every worker's files twice over (a roll), plus its own and the control
/// connections. 8448 for 1024 workers without balanced listeners.
pub const fn needed(workers: u32, balanced: u32) -> u64 {
    2 * workers as u64 * (FDS_PER_WORKER + balanced as u64) + FDS_CONTROL + FDS_OWN
}

/// The soft limit corral asks for: room for the most workers `corral scale` may ask for with
/// these listeners, rounded up to a power of two for what the estimate leaves out.
pub const fn wanted(balanced: u32) -> u64 {
    needed(MOST_WORKERS, balanced).next_power_of_two()
}

/// At start: raises corral's soft limit to [`wanted`], within the hard limit; returns the
/// limit it was started with, for the workers.
pub fn raise(balanced: u32) -> Option<(u64, u64)> {
    let original = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    raise_to(wanted(balanced));
    Some(original)
}

/// Raises the soft limit to `want` (never lowers it), within the hard limit; the failure, if
/// setrlimit(2) refuses, is said.
fn raise_to(want: u64) {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    let want = want.min(hard);
    if want > soft {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, want, hard) {
            tracing::warn!("cannot raise the open-file limit from {soft} to {want}: {e}");
        }
    }
}

/// At start, reload or scale: raises the soft limit for `workers` with `balanced` balanced
/// listeners if it can, and says what will go wrong if the limit still leaves too little.
pub fn check(workers: u32, balanced: u32) -> Option<String> {
    raise_to(wanted(balanced));
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    shortfall(workers, balanced, soft, hard)
}

/// The warning when a limit of `soft` (hard: `hard`) is below what `workers` workers with
/// `balanced` balanced listeners may need.
pub fn shortfall(workers: u32, balanced: u32, soft: u64, hard: u64) -> Option<String> {
    let need = needed(workers, balanced);
    if soft >= need {
        return None;
    }
    let per_worker = FDS_PER_WORKER + u64::from(balanced);
    let balanced_part = if balanced > 0 {
        format!(" and its {balanced} balanced listener socket(s)")
    } else {
        String::new()
    };
    Some(format!(
        "{workers} worker(s) may need {need} open files in corral: {per_worker} per worker (its \
         output pipes, IPC channel and bus socket{balanced_part}), twice over during a reload, and \
         {} of its own; its limit is {soft} (hard limit {hard}), so workers may fail to start \
         with \"Too many open files\": raise the hard limit (LimitNOFILE= in a drop-in for the \
         service, or `ulimit -Hn` before `corral run`), or run fewer workers",
        FDS_CONTROL + FDS_OWN
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_listeners_count_one_socket_per_worker_twice_over() {
        assert_eq!(needed(MOST_WORKERS, 0), 8448);
        // 1024 workers with one balanced listener: one more socket each, twice over.
        assert_eq!(needed(MOST_WORKERS, 1), 2 * 1024 * 5 + 256);
        assert_eq!(wanted(1), 16384);
        assert_eq!(wanted(0), 16384);
    }

    #[test]
    fn a_limit_too_low_for_the_workers_is_said_with_what_to_do() {
        assert_eq!(shortfall(100, 1, 2048, 2048), None);
        let msg = shortfall(1024, 1, 8192, 8192).expect("10496 > 8192");
        assert!(
            msg.starts_with("1024 worker(s) may need 10496 open files"),
            "{msg}"
        );
        assert!(msg.contains("5 per worker"), "{msg}");
        assert!(msg.contains("1 balanced listener socket(s)"), "{msg}");
        assert!(msg.contains("its limit is 8192 (hard limit 8192)"), "{msg}");
        assert!(msg.contains("LimitNOFILE="), "{msg}");
    }
}
