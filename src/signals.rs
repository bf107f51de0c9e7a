//! The signals the supervisor can be sent, and what each does (corral(1), SIGNALS).
//!
//! No signal but SIGKILL and SIGSTOP takes the app down unless that is what it means: a signal
//! whose default action would end corral (and with it, through `PR_SET_PDEATHSIG`, every
//! worker mid-request) is either given a meaning or handled and ignored.
//! - SIGTERM, SIGINT, SIGQUIT: a graceful stop; a second one kills the workers at once.
//! - SIGHUP: a rolling reload, unless the terminal corral runs in has gone away (a closed
//!   terminal window sends it), which stops corral gracefully instead: nobody is there to see
//!   its output any more.
//! - SIGUSR1, SIGUSR2: ignored, with a line saying how to send them to the workers (`corral
//!   signal`). Node.js opens its inspector on SIGUSR1, and `systemctl kill` sends a signal to
//!   every process of the unit already: passing it on would deliver it twice, or where it was
//!   not meant to go.
//! - SIGALRM, SIGVTALRM, SIGPROF, SIGIO, SIGPWR, SIGXCPU, SIGXFSZ, SIGSTKFLT and the real-time
//!   signals: ignored.
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
    _ignored: Vec<Signal>,
}

/// Signals that end a process by default and mean nothing to corral.
const IGNORED: &[libc::c_int] = &[
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGSTKFLT,
];

impl Signals {
    pub fn install() -> io::Result<Signals> {
        let raw = |n: libc::c_int| signal(SignalKind::from_raw(n));
        let mut ignored = Vec::new();
        for &n in IGNORED {
            ignored.push(raw(n)?);
        }
        for n in libc::SIGRTMIN()..=libc::SIGRTMAX() {
            ignored.push(raw(n)?);
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
            _ignored: ignored,
        })
    }
}

/// The terminal corral was started in, if any: a SIGHUP while it is gone means the terminal
/// went away, not "reload".
pub struct Terminal {
    had: bool,
}

impl Terminal {
    pub fn at_start() -> Terminal {
        Terminal { had: open_tty() }
    }

    /// Whether corral had a controlling terminal and no longer has it (after a hangup,
    /// opening `/dev/tty` fails with ENXIO).
    pub fn gone(&self) -> bool {
        self.had && !open_tty()
    }
}

fn open_tty() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .is_ok()
}
