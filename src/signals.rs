//! The signals the supervisor can be sent, and what each does (corral(1), SIGNALS).
//!
//! No signal but SIGKILL and SIGSTOP takes the app down unless that is what it means: a signal
//! whose default action would end corral (and with it, through `PR_SET_PDEATHSIG`, every
//! worker mid-request) or stop it (and with it the event loop: no reaping, no answers, and under
//! systemd the watchdog's kill) is either given a meaning or ignored. Default actions are
//! signal(7)'s table.
//! - SIGTERM, SIGINT, SIGQUIT: a graceful stop; a second one kills the workers at once.
//! - SIGHUP: a rolling reload, unless it is the hangup of the terminal corral runs in
//!   (terminal.rs decides).
//! - SIGUSR1: ignored, with a line saying how to send it to the workers (`corral signal`).
//!   Node.js opens its inspector on SIGUSR1, and `systemctl kill` sends a signal to every
//!   process of the unit already: passing it on would deliver it twice, or where it was not
//!   meant to go.
//! - SIGUSR2: an upgrade in place (runtime/upgrade.rs), as nginx and einhorn read it.
//! - SIGTSTP: stops corral (SIGSTOP) only while it runs in the foreground of its terminal, where
//!   Ctrl-Z sends it; ignored anywhere else.
//! - SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGXCPU, SIGXFSZ, SIGSTKFLT and the real-time
//!   signals from `SIGRTMIN()`: handled, and dropped.
//! - SIGILL, SIGTRAP, SIGABRT, SIGBUS, SIGFPE, SIGSEGV, SIGSYS, SIGTTIN, SIGTTOU, and 32 and 33
//!   (below glibc's `SIGRTMIN()`): ignored ([`FAULTS`], [`TERMINAL_STOPS`], [`reserved`]).
//!
//! Workers start with every signal at its default (spawn.rs).

use std::io;

use tokio::signal::unix::{signal, Signal, SignalKind};

/// The streams the event loop waits on, and the handlers that only keep other signals from
/// being fatal.
pub struct Signals {
    pub chld: Signal,
    /// SIGTERM, SIGINT and SIGQUIT.
    pub stop: [Signal; 3],
    pub hup: Signal,
    pub usr: [Signal; 2],
    pub tstp: Signal,
    /// SIGHUP was ignored when corral was started (nohup(1)): ignored dispositions survive
    /// execve(2) (signal(7)), and corral's own handler replaces it.
    pub hup_ignored_at_start: bool,
    _dropped: Vec<Signal>,
}

/// Signals that end a process by default and mean nothing to corral: handled, and dropped.
const DROPPED: &[libc::c_int] = &[
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGSTKFLT,
];

/// The signals a fault raises: ignored (SIG_IGN), so that one sent with kill(2) is discarded
/// by the kernel. A real fault still ends corral. POSIX leaves a process that ignores a real
/// SIGFPE, SIGILL or SIGSEGV undefined (sigaction(2), NOTES), but Linux sends a fault's signal
/// with force_sig_info_to_task() (kernel/signal.c), which sets an ignored (or blocked) signal
/// back to SIG_DFL first: a bad access, a division by zero, an illegal instruction, a breakpoint
/// or a seccomp(2) trap kills corral as before (checked on Linux 6.18 with a C program that
/// ignores them all). abort(3) still aborts: when SIGABRT is ignored, it restores the default and
/// raises it again. What is lost is the Rust runtime's handler for SIGSEGV and SIGBUS, which
/// says "has overflowed its stack" before aborting on a stack overflow: corral then dies of
/// SIGSEGV without that line. Before, the first SIGSEGV or SIGBUS sent with kill(2) went to that
/// handler, which set the default back, and the second killed corral.
pub const FAULTS: &[libc::c_int] = &[
    libc::SIGILL,
    libc::SIGTRAP,
    libc::SIGABRT,
    libc::SIGBUS,
    libc::SIGFPE,
    libc::SIGSEGV,
    libc::SIGSYS,
];

/// Job-control stops for a background job's use of its terminal (credentials(7)): ignored.
/// corral never reads the terminal (SIGTTIN). It writes its log there, and with TOSTOP set
/// (termios(3)) a background job's write raises SIGTTOU: ignored, the write goes through
/// (a handler would not do: the kernel restarts the write, which raises it again).
pub const TERMINAL_STOPS: &[libc::c_int] = &[libc::SIGTTIN, libc::SIGTTOU];

/// The kernel's first real-time signal (signal(7): Linux has 33, from 32 to 64).
const KERNEL_SIGRTMIN: libc::c_int = 32;

/// The real-time signals glibc keeps for its threads (nptl(7): 32 and 33, which is why its
/// `SIGRTMIN()` is 34). glibc's sigaction refuses them, so the handlers above cannot reach
/// them, yet the kernel delivers them, by default fatally.
pub fn reserved() -> std::ops::Range<libc::c_int> {
    KERNEL_SIGRTMIN..libc::SIGRTMIN()
}

/// Blocks every signal in the calling thread, for good: corral's other threads (the output
/// writer, the blocking pool) never take a signal, so that every one goes to the event loop's
/// thread. There, an upgrade in place blocks them too, and what comes meanwhile waits, pending,
/// for the next image (runtime/upgrade.rs) instead of being taken by a handler on another
/// thread and lost with it at the exec.
pub fn block_in_this_thread() {
    let _ = nix::sys::signal::pthread_sigmask(
        nix::sys::signal::SigmaskHow::SIG_BLOCK,
        Some(&nix::sys::signal::SigSet::all()),
        None,
    );
}

/// The streams of the stop and reload signals, for an upgrade in place to empty.
pub struct Stops<'a> {
    pub term: &'a mut Signal,
    pub int: &'a mut Signal,
    pub quit: &'a mut Signal,
    pub hup: &'a mut Signal,
}

impl Stops<'_> {
    /// The signals taken and not yet handled (an upgrade in place hands them on), by number;
    /// waits for nothing.
    pub async fn drain(self) -> Vec<i32> {
        let mut out = Vec::new();
        for (n, s) in [
            (libc::SIGTERM, self.term),
            (libc::SIGINT, self.int),
            (libc::SIGQUIT, self.quit),
            (libc::SIGHUP, self.hup),
        ] {
            while let Ok(Some(())) = tokio::time::timeout(std::time::Duration::ZERO, s.recv()).await
            {
                out.push(n);
            }
        }
        out
    }
}

impl Signals {
    pub fn install() -> io::Result<Signals> {
        if let Err(e) = crate::spawn::deep_signal_stack() {
            tracing::warn!(
                "cannot make the signal stack deeper ({e}): a burst of signals may end corral"
            );
        }
        // Read before corral's own SIGHUP handler replaces the disposition it was started with.
        let hup_ignored_at_start = crate::procfs::own_ignored_signals()
            .is_some_and(|mask| mask >> (libc::SIGHUP - 1) & 1 == 1);
        for &n in FAULTS.iter().chain(TERMINAL_STOPS) {
            crate::spawn::ignore_signal(n)?;
        }
        for n in reserved() {
            // Where glibc installed its handler (it does for 33 with the first thread), the
            // handler stays: it does nothing with a signal another process sent.
            let ignored = crate::spawn::signal_is_default(n)
                .and_then(|default| default.then(|| crate::spawn::ignore_signal(n)).transpose());
            if let Err(e) = ignored {
                tracing::warn!("cannot ignore signal {n} ({e}): `kill -{n}` would end corral");
            }
        }
        let raw = |n: libc::c_int| signal(SignalKind::from_raw(n));
        let mut dropped = Vec::new();
        for &n in DROPPED {
            dropped.push(raw(n)?);
        }
        for n in libc::SIGRTMIN()..=libc::SIGRTMAX() {
            dropped.push(raw(n)?);
        }
        Ok(Signals {
            chld: signal(SignalKind::child())?,
            stop: [
                signal(SignalKind::terminate())?,
                signal(SignalKind::interrupt())?,
                signal(SignalKind::quit())?,
            ],
            hup: signal(SignalKind::hangup())?,
            usr: [
                signal(SignalKind::user_defined1())?,
                signal(SignalKind::user_defined2())?,
            ],
            tstp: raw(libc::SIGTSTP)?,
            hup_ignored_at_start,
            _dropped: dropped,
        })
    }
}
