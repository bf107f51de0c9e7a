//! The terminal corral was started from, and what a SIGHUP means because of it (corral(1),
//! SIGNALS).
//!
//! SIGHUP has two senders. An operator (`kill -HUP`, `systemctl reload`) means "reload". The
//! kernel sends it when the terminal hangs up (a closed window, a dropped ssh session), to the
//! session leader (setsid(2)), which is corral or a shell that passes it on to its jobs; at that
//! moment every process of the session loses the terminal: opening `/dev/tty` (tty(4)) fails
//! with ENXIO from then on. So a SIGHUP is the hangup's only when it comes as the terminal goes:
//! the terminal is gone when the signal is handled, and it was there at the last check (every
//! `LISTENERS_CHECK`, 2 s, runtime.rs), or the check that found it gone was less than
//! [`HANGUP_WINDOW`] ago. A terminal that went without a SIGHUP (a background job whose shell
//! exited: only the foreground is told, setsid(2)) leaves every later SIGHUP a reload.
//!
//! The hangup stops corral gracefully: nobody is there to see its output any more. Unless
//! SIGHUP was ignored when corral started (nohup(1)): then the hangup is ignored, as that
//! person asked, and a later SIGHUP reloads.
//!
//! [`Terminal`] decides, from what a probe found and the time it is given (tested with made-up
//! ones); [`probe`] and [`in_foreground`] look at the real terminal.

use std::fs::File;
use std::os::unix::fs::OpenOptionsExt;
use std::time::{Duration, Instant};

/// How long after a check found the terminal gone a SIGHUP is still taken for its hangup: the
/// kernel's signal and the check can be handled in either order.
pub const HANGUP_WINDOW: Duration = Duration::from_secs(2);

/// What opening `/dev/tty` found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// corral has a controlling terminal.
    Present,
    /// It has none (ENXIO): it never had one, or the terminal hung up.
    Gone,
    /// The open failed otherwise (EMFILE, no `/dev/tty` at all): says nothing either way.
    Unknown,
}

/// What a SIGHUP means now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hup {
    /// An operator's: a rolling reload.
    Reload,
    /// The terminal hung up: a graceful stop.
    Stop,
    /// The terminal hung up, and corral was started with SIGHUP ignored (nohup): nothing.
    Ignore,
    /// A SIGHUP after the hangup that is stopping corral: nothing more to do.
    Echo,
}

/// Something a check found, worth a line in the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Note {
    /// The terminal went away and no SIGHUP came with it: SIGHUP keeps meaning reload.
    WentWithoutHangup,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seen {
    /// No terminal at start (systemd, setsid(1), a cron job): every SIGHUP reloads.
    Never,
    /// There at the last check.
    Present,
    /// Found gone by the check at this instant, and no SIGHUP yet.
    GoneAt(Instant),
    /// Gone, and its hangup dealt with or too long ago: every SIGHUP reloads.
    Gone,
    /// Its hangup is stopping corral.
    Stopping,
}

pub struct Terminal {
    nohup: bool,
    seen: Seen,
}

impl Terminal {
    /// `at_start`: the probe when corral started; `nohup`: SIGHUP was ignored then.
    pub fn new(at_start: Probe, nohup: bool) -> Terminal {
        let seen = match at_start {
            Probe::Present => Seen::Present,
            Probe::Gone | Probe::Unknown => Seen::Never,
        };
        Terminal { nohup, seen }
    }

    /// The periodic check; `probe` is called only while there is a terminal to watch.
    pub fn check(&mut self, now: Instant, probe: impl FnOnce() -> Probe) -> Option<Note> {
        match self.seen {
            Seen::Present => {
                if probe() == Probe::Gone {
                    self.seen = Seen::GoneAt(now);
                }
                None
            }
            Seen::GoneAt(at) if now.saturating_duration_since(at) >= HANGUP_WINDOW => {
                self.seen = Seen::Gone;
                Some(Note::WentWithoutHangup)
            }
            Seen::GoneAt(_) | Seen::Never | Seen::Gone | Seen::Stopping => None,
        }
    }

    /// A SIGHUP came; `probe` is called only when the answer depends on it.
    pub fn hup(&mut self, now: Instant, probe: impl FnOnce() -> Probe) -> Hup {
        let hangup = match self.seen {
            Seen::Never | Seen::Gone => false,
            Seen::Stopping => return Hup::Echo,
            Seen::Present => probe() == Probe::Gone,
            Seen::GoneAt(at) => {
                now.saturating_duration_since(at) < HANGUP_WINDOW && probe() != Probe::Present
            }
        };
        if !hangup {
            if let Seen::GoneAt(_) = self.seen {
                // An operator's SIGHUP this late: the terminal went without one.
                self.seen = Seen::Gone;
            }
            return Hup::Reload;
        }
        if self.nohup {
            self.seen = Seen::Gone;
            Hup::Ignore
        } else {
            self.seen = Seen::Stopping;
            Hup::Stop
        }
    }
}

/// Opens the controlling terminal without waiting on it (O_NONBLOCK: a serial line's open may
/// wait for its carrier, open(2)) and without making it one (O_NOCTTY).
fn open_tty() -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open("/dev/tty")
}

/// Whether corral has a controlling terminal now. Only ENXIO means it has none: other errors
/// (EMFILE with every descriptor in use, a system without `/dev/tty`) say nothing.
pub fn probe() -> Probe {
    match open_tty() {
        Ok(_) => Probe::Present,
        Err(e) if e.raw_os_error() == Some(libc::ENXIO) => Probe::Gone,
        Err(_) => Probe::Unknown,
    }
}

/// Whether corral's process group is the foreground one of its controlling terminal
/// (tcgetpgrp(3)), the one its Ctrl-Z stops.
pub fn in_foreground() -> bool {
    let Ok(tty) = open_tty() else {
        return false;
    };
    nix::unistd::tcgetpgrp(&tty).is_ok_and(|group| group == nix::unistd::getpgrp())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHECK: Duration = Duration::from_secs(2);

    fn never_called() -> Probe {
        panic!("no probe needed")
    }

    #[test]
    fn without_a_terminal_at_start_every_sighup_reloads() {
        for at_start in [Probe::Gone, Probe::Unknown] {
            let t0 = Instant::now();
            let mut t = Terminal::new(at_start, false);
            assert_eq!(t.check(t0, never_called), None);
            assert_eq!(t.hup(t0, never_called), Hup::Reload);
            assert_eq!(t.hup(t0 + CHECK, never_called), Hup::Reload);
        }
    }

    #[test]
    fn a_sighup_while_the_terminal_is_there_reloads() {
        let t0 = Instant::now();
        let mut t = Terminal::new(Probe::Present, false);
        assert_eq!(t.hup(t0, || Probe::Present), Hup::Reload);
        assert_eq!(t.check(t0 + CHECK, || Probe::Present), None);
        assert_eq!(t.hup(t0 + CHECK, || Probe::Present), Hup::Reload);
        // A probe that failed otherwise is no evidence of a hangup.
        assert_eq!(t.hup(t0 + CHECK, || Probe::Unknown), Hup::Reload);
    }

    #[test]
    fn a_hangup_stops_once_and_later_sighups_are_its_echoes() {
        let t0 = Instant::now();
        let mut t = Terminal::new(Probe::Present, false);
        assert_eq!(t.check(t0, || Probe::Present), None);
        // The terminal went after that check, and the SIGHUP is handled before the next.
        assert_eq!(t.hup(t0 + CHECK / 2, || Probe::Gone), Hup::Stop);
        assert_eq!(t.hup(t0 + CHECK, never_called), Hup::Echo);
        assert_eq!(t.check(t0 + 10 * CHECK, never_called), None);
        assert_eq!(t.hup(t0 + 10 * CHECK, never_called), Hup::Echo);
    }

    #[test]
    fn a_hangup_found_first_by_the_check_still_stops() {
        let t0 = Instant::now();
        let mut t = Terminal::new(Probe::Present, false);
        assert_eq!(t.check(t0, || Probe::Gone), None);
        // The kernel's SIGHUP, handled just after the check that found the terminal gone.
        assert_eq!(t.hup(t0 + CHECK / 2, || Probe::Gone), Hup::Stop);
    }

    #[test]
    fn a_terminal_gone_without_a_sighup_leaves_sighup_a_reload() {
        let t0 = Instant::now();
        let mut t = Terminal::new(Probe::Present, false);
        assert_eq!(t.check(t0, || Probe::Gone), None);
        assert_eq!(
            t.check(t0 + CHECK, never_called),
            Some(Note::WentWithoutHangup),
            "said once, at the check after the one that found it gone"
        );
        assert_eq!(t.check(t0 + 2 * CHECK, never_called), None);
        assert_eq!(t.hup(t0 + 2 * CHECK, never_called), Hup::Reload);
        assert_eq!(t.hup(t0 + 3 * CHECK, never_called), Hup::Reload);
    }

    #[test]
    fn a_sighup_past_the_window_reloads_even_before_the_next_check() {
        let t0 = Instant::now();
        let mut t = Terminal::new(Probe::Present, false);
        t.check(t0, || Probe::Gone);
        assert_eq!(t.hup(t0 + HANGUP_WINDOW, never_called), Hup::Reload);
        assert_eq!(
            t.check(t0 + 2 * CHECK, never_called),
            None,
            "nothing more to say"
        );
        assert_eq!(t.hup(t0 + 2 * CHECK, never_called), Hup::Reload);
    }

    #[test]
    fn under_nohup_the_hangup_is_ignored_and_the_next_sighup_reloads() {
        let t0 = Instant::now();
        let mut t = Terminal::new(Probe::Present, true);
        assert_eq!(t.hup(t0, || Probe::Gone), Hup::Ignore);
        assert_eq!(t.hup(t0, never_called), Hup::Reload);
        assert_eq!(t.check(t0 + CHECK, never_called), None);
        assert_eq!(t.hup(t0 + CHECK, never_called), Hup::Reload);
        // Found by the check first, the same.
        let mut t = Terminal::new(Probe::Present, true);
        t.check(t0, || Probe::Gone);
        assert_eq!(t.hup(t0 + CHECK / 2, || Probe::Unknown), Hup::Ignore);
        assert_eq!(t.hup(t0 + CHECK / 2, never_called), Hup::Reload);
    }

    #[test]
    fn under_nohup_an_operators_sighup_with_the_terminal_there_reloads() {
        let t0 = Instant::now();
        let mut t = Terminal::new(Probe::Present, true);
        assert_eq!(t.hup(t0, || Probe::Present), Hup::Reload);
    }
}
