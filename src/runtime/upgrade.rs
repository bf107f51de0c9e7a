//! Upgrade in place, the event loop's part: `corral upgrade APP` or SIGUSR2 makes corral
//! execve(2) the binary now at its own path, keeping its pid, its workers and every socket.
//!
//! In order, the running image:
//! 1. blocks every signal, 32 and 33 too (a handler does not survive exec, and until the next
//!    image has its own, a SIGTERM would end corral and the workers with it: blocked, it waits
//!    for whichever image comes out of this; corral's other threads block them all for good);
//! 2. opens the binary once, and has it read a state of the same shape (`corral
//!    upgrade-check`), serving control requests and feeding systemd's watchdog meanwhile: a
//!    binary that is missing, not executable, of another architecture, crashes or cannot read
//!    this corral's state is refused while nothing has changed;
//! 3. stops accepting control connections (new ones wait in the socket's queue for the next
//!    image), and stops the tasks that relay the workers' output and read and write their
//!    Node.js channels: each gives back its descriptor and what it held (part of a line,
//!    lines not written yet);
//! 4. writes the machine, every generation's config, the listeners, the workers' pipes and
//!    channels, the sockets, the keeper, the waiting control requests and the signals taken
//!    meanwhile to a sealed memfd (handover.rs), with copies of their descriptors that stay
//!    open across exec (carry.rs);
//! 5. tells systemd `RELOADING=1` and execs the binary it opened.
//!
//! The next image takes every descriptor over, starts the tasks again where they were, answers
//! whoever asked for the upgrade, tells systemd `READY=1`, sends itself the signals taken
//! before, unblocks the signals and reaps what exited meanwhile. A datagram on the notify or
//! bus socket waits there across the exec. If it cannot take over, it execs the previous
//! binary, carried open, with the same state: that one goes on, and `corral upgrade` says why
//! the new one could not. An exec that fails leaves this image going on as it was.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{SigSet, SigmaskHow};
use tokio::sync::mpsc;
use tracing::{error, info};

use super::{Loop, Parts, Tasks, WorkerIo};
use crate::carry::{Carry, Take};
use crate::control::{Incoming, Reply, Response};
use crate::handover::{self, State};
use crate::listen::{Pool, Set};
use crate::notify::{Notification, NotifySocket};
use crate::supervisor::{Event, Seat, Supervisor, WorkerId};

/// How long the stopped tasks may take to give back what they hold.
const TASKS_STOP: Duration = Duration::from_secs(5);

/// The binary this process runs, by the path it was started from: an upgrade runs what is at
/// that path then. Read at start, while it names the running binary (a package upgrade
/// replaces the file, after which the kernel's link says "(deleted)").
pub(super) fn own_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .map(|p| match p.to_string_lossy().strip_suffix(" (deleted)") {
            Some(t) => PathBuf::from(t),
            None => p.clone(),
        })
        .unwrap_or_else(|| PathBuf::from("/proc/self/exe"))
}

/// What an image started by an upgrade in place is handed.
pub(super) struct Resume {
    pub state: State,
    memfd: OwnedFd,
    /// The previous binary, open, to put back.
    fallback: Option<OwnedFd>,
    /// Why the image before this one put this binary back (this is the previous binary).
    failed: Option<String>,
    /// The arguments and environment this image was given, for putting the previous back.
    argv: Vec<CString>,
    env: Vec<(Vec<u8>, Vec<u8>)>,
    take: Option<Take>,
    machine: Option<Supervisor>,
    sets: Vec<(u32, Set)>,
}

impl Resume {
    /// The state in `CORRAL_RESUME`, if this image was started by an upgrade in place. One
    /// that cannot be read puts the previous binary back at once.
    pub fn take() -> Option<Resume> {
        let value = std::env::var(handover::RESUME_VAR).ok()?;
        let env = handover::own_environment();
        let argv = handover::arguments(&handover::own_arguments());
        let failed = std::env::var(handover::FAILED_VAR).ok();
        std::env::remove_var(handover::RESUME_VAR);
        std::env::remove_var(handover::FAILED_VAR);
        let (memfd, fallback) = value.split_once(':').unwrap_or((&value, ""));
        let adopt = |n: &str| {
            n.parse::<i32>()
                .ok()
                .and_then(|n| crate::spawn::adopt_inherited_fd(n).ok())
        };
        let fallback = adopt(fallback);
        let Some(memfd) = adopt(memfd) else {
            put_back(
                fallback.as_ref(),
                &argv,
                &env,
                failed.is_some(),
                "no state at CORRAL_RESUME",
            );
        };
        let state = handover::read_memfd(&memfd)
            .map_err(|e| format!("cannot read the state: {e}"))
            .and_then(|b| handover::parse(&b));
        match state {
            Ok(state) => Some(Resume {
                state,
                memfd,
                fallback,
                failed,
                argv,
                env,
                take: None,
                machine: None,
                sets: Vec::new(),
            }),
            Err(why) => put_back(fallback.as_ref(), &argv, &env, failed.is_some(), &why),
        }
    }

    /// Takes the carried descriptors and reads the machine: what can fail before anything is
    /// built.
    pub fn check(&mut self) -> Result<(), String> {
        self.take = Some(Take::inherited(&self.state.carried).map_err(|e| e.to_string())?);
        self.machine = Some(self.state.machine()?);
        Ok(())
    }

    /// The sockets and the keeper, taken over.
    pub fn parts(&mut self, control_path: &std::path::Path) -> Result<Parts, String> {
        let take = self.take.as_mut().ok_or("not checked")?;
        let s = &mut self.state;
        let listeners = std::mem::replace(&mut s.listeners, crate::listen::Saved::empty());
        let (pool, sets): (Pool, _) =
            Pool::restore(listeners, take).map_err(|e| format!("listeners: {e}"))?;
        self.sets = sets;
        let control_fd = take
            .fd(s.control)
            .map_err(|e| format!("control socket: {e}"))?;
        let std = std::os::unix::net::UnixListener::from(
            control_fd.try_clone().map_err(|e| e.to_string())?,
        );
        std.set_nonblocking(true).map_err(|e| e.to_string())?;
        let control = tokio::net::UnixListener::from_std(std).map_err(|e| e.to_string())?;
        let notify_path = crate::rundir::beside(control_path, "notify");
        let notify = NotifySocket::adopt(
            take.fd(s.notify)
                .map_err(|e| format!("notify socket: {e}"))?,
            &notify_path,
        )
        .map_err(|e| format!("notify socket: {e}"))?;
        let bus_saved = std::mem::replace(&mut s.bus, crate::bus::Saved::empty());
        let bus = crate::bus::Router::restore(bus_saved, take).map_err(|e| format!("bus: {e}"))?;
        // A fault to inject, for the tests of putting the previous binary back: an image of
        // this version fails here, having taken over the sockets, which are dropped with the
        // failure, as a real one would.
        if std::env::var("CORRAL_TEST_FAIL_TAKE_OVER").ok().as_deref()
            == Some(crate::version::get())
        {
            drop((notify, bus, pool));
            return Err("failing as CORRAL_TEST_FAIL_TAKE_OVER asks".into());
        }
        let keeper = match s.keeper {
            Some((pid, fd)) => Some(crate::keeper::Keeper::adopt(
                take.fd(fd).map_err(|e| format!("keeper: {e}"))?,
                pid,
            )),
            None => None,
        };
        Ok(Parts {
            server: crate::control::Server::adopt(control_path),
            control,
            control_fd,
            notify,
            bus,
            keeper,
            keeper_starts: s.keeper_starts,
            pool,
        })
    }

    /// This image cannot take over: the previous binary goes on (returns only if it cannot
    /// be put back either).
    pub fn fall_back(self, why: &str) -> crate::error::Error {
        put_back(
            self.fallback.as_ref(),
            &self.argv,
            &self.env,
            self.failed.is_some(),
            why,
        )
    }
}

/// Execs the previous binary (`fallback`) with the state this image was given, saying why; if
/// there is none, or this image is the one put back already, or the exec fails, corral ends.
fn put_back(
    fallback: Option<&OwnedFd>,
    argv: &[CString],
    env: &[(Vec<u8>, Vec<u8>)],
    is_put_back: bool,
    why: &str,
) -> ! {
    eprintln!(
        "corral: error: corral {} cannot take over from the previous corral: {why}",
        crate::version::get()
    );
    if let (Some(fd), false) = (fallback, is_put_back) {
        eprintln!("corral: putting the previous corral back");
        let failed = (
            handover::FAILED_VAR.into(),
            why.replace('\0', " ").into_bytes(),
        );
        let env = handover::environment(env.to_vec(), &[failed]);
        let e = handover::exec_fd(fd, argv, &env);
        eprintln!("corral: error: cannot put the previous corral back: {e}");
    }
    std::process::exit(crate::error::exit::FAILED)
}

impl Loop {
    /// `corral upgrade` (with `reply`) or SIGUSR2: execs the binary at corral's own path,
    /// handing everything over; returns only if it did not happen, having said why.
    pub(super) async fn upgrade(
        &mut self,
        reply: Option<Reply>,
        queues: Queues<'_>,
        signals: crate::signals::Stops<'_>,
    ) {
        let began = Instant::now();
        // Whoever asks for an upgrade while this one is under way gets its outcome too.
        if let Some(r) = reply {
            let id = self.request(r);
            self.upgrading.push(id);
        }
        if self.exit.is_some() || self.machine.stopping() {
            return self.answer(Err("corral is stopping; nothing changed".into()));
        }
        // From here, a signal waits, pending, for whichever image comes out of this (the
        // other threads block them all: signals.rs).
        let mut mask = SigSet::empty();
        let _ = nix::sys::signal::sigprocmask(
            SigmaskHow::SIG_SETMASK,
            Some(&SigSet::all()),
            Some(&mut mask),
        );
        if let Err(e) = crate::spawn::block_reserved_signals() {
            tracing::debug!("cannot block signals 32 and 33: {e}");
        }
        let unblock = |mask: &SigSet| {
            let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(mask), None);
        };
        // 1. The new binary reads a state of this shape, or nothing happens. It is opened
        // once: what was checked is what is executed, whatever replaces the file meanwhile.
        // O_PATH: a binary that may be executed and not read (mode 0711) is one too.
        let exe = match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH)
            .open(&self.exe)
        {
            Ok(f) => OwnedFd::from(f),
            Err(e) => {
                unblock(&mask);
                let why = format!("cannot run {}: {e}; nothing changed", self.exe.display());
                return self.answer(Err(why));
            }
        };
        let Queues {
            control: from_control,
            notes: ipc_noted,
            bus: ipc_bused,
        } = queues;
        info!(
            "upgrade: checking that {} reads this corral's state",
            self.exe.display()
        );
        let checked = match self.check_state(&exe, from_control).await {
            Ok(said) => said,
            Err(why) => {
                unblock(&mask);
                return self.answer(Err(format!("{why}; nothing changed")));
            }
        };
        info!("upgrading in place to {}: {checked}", self.exe.display());
        // 2. What is queued is answered here, what is waiting goes across.
        while let Ok(incoming) = from_control.try_recv() {
            self.control_during_upgrade(incoming);
        }
        // From here the control socket accepts nothing: new connections wait for the next
        // image (control.rs, `serve`).
        self.handing.send_replace(true);
        let workers = self.stop_tasks().await;
        // A signal taken before the block reaches its stream, and requests read meanwhile reach
        // the queue.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        let taken = signals.drain().await;
        // What came while the tasks stopped: a status is answered, anything else asked again.
        while let Ok(incoming) = from_control.try_recv() {
            match incoming.command {
                crate::control::Command::Status => self.control(incoming),
                crate::control::Command::Upgrade => self.control_during_upgrade(incoming),
                _ => incoming.reply.send(Response::err(
                    "corral is upgrading in place: ask again in a moment",
                )),
            }
        }
        // The answers just given are written by their connections' tasks.
        for _ in 0..3 {
            tokio::task::yield_now().await;
        }
        let mut notes = Vec::new();
        while let Ok((pid, n)) = ipc_noted.try_recv() {
            notes.push((pid, handover::Note::from(&n)));
        }
        let mut bus_lines = Vec::new();
        while let Ok(line) = ipc_bused.try_recv() {
            bus_lines.push(line);
        }
        // 3. The state, with its descriptors carried.
        let mut carry = Carry::default();
        let idle = self.machine.systemd_idle();
        let saved = Handed {
            workers: &workers,
            notes: notes.clone(),
            bus_lines: bus_lines.clone(),
            blocked: mask.iter().map(|s| s as i32).collect(),
            signals: taken.clone(),
        };
        let state = self
            .save(&mut carry, saved)
            .map_err(|e| format!("cannot write the state: {e}"));
        let memfd = state.and_then(|s| to_memfd(&s)).and_then(|fd| {
            carry
                .fd(&fd)
                .map_err(|e| format!("cannot write the state: {e}"))
        });
        let memfd = match memfd {
            Ok(n) => n,
            Err(why) => {
                drop(carry);
                self.go_on(workers, notes, bus_lines, &taken, &mask);
                return self.answer(Err(why));
            }
        };
        // The previous binary, to put back: /proc/self/exe opens it even once the package has
        // replaced the file.
        let fallback = std::fs::File::open("/proc/self/exe")
            .map(OwnedFd::from)
            .and_then(|f| carry.fd(&f))
            .ok();
        // 4. systemd sees a reload; exec.
        if idle {
            self.sd_send(&super::reloading());
            self.sd_send("STATUS=upgrading in place");
        }
        let resume = match fallback {
            Some(f) => format!("{memfd}:{f}"),
            None => memfd.to_string(),
        };
        let mut set = self.own_env.clone();
        set.push((handover::RESUME_VAR.into(), resume.into_bytes()));
        let env = handover::environment(handover::own_environment(), &set);
        let argv = handover::arguments(&self.argv);
        info!(
            "upgrade: handing over after {} ms",
            began.elapsed().as_millis()
        );
        self.output.flush(Duration::from_secs(2));
        self.sd_send("WATCHDOG=1");
        // A script's interpreter cannot open a descriptor that is close-on-exec (execveat(2)):
        // it is executed by its path.
        let e = if handover::is_script(&self.exe) {
            handover::exec(&self.exe, &argv, &env)
        } else {
            handover::exec_fd(&exe, &argv, &env)
        };
        // Still here: the exec failed, and this image goes on as it was.
        let why = format!("cannot execute {}: {e}", self.exe.display());
        drop(carry);
        self.go_on(workers, notes, bus_lines, &taken, &mask);
        if idle {
            self.sd_send("READY=1");
        }
        self.answer(Err(why));
    }

    /// Has the new binary (open at `exe`) read a state of this shape, the loop's tasks running
    /// meanwhile and systemd's watchdog fed.
    /// Control requests are served meanwhile, as at any time (but another upgrade).
    async fn check_state(
        &mut self,
        exe: &OwnedFd,
        from_control: &mut mpsc::Receiver<Incoming>,
    ) -> Result<String, String> {
        // The copies made for it are closed before the check runs: it inherits none of them.
        let bytes = self
            .save(&mut Carry::default(), Handed::default())
            .map_err(|e| format!("cannot write the state: {e}"))?;
        let memfd = to_memfd(&bytes)?;
        let path = format!("/proc/{}/fd/{}", std::process::id(), exe.as_raw_fd());
        let shown = self.exe.clone();
        let mut check =
            tokio::task::spawn_blocking(move || handover::probe(Path::new(&path), &shown, &memfd));
        loop {
            tokio::select! {
                done = &mut check => {
                    return done.map_err(|e| format!("the check did not run: {e}"))?;
                }
                _ = tokio::time::sleep(Duration::from_secs(1)) => self.sd_send("WATCHDOG=1"),
                Some(incoming) = from_control.recv() => self.control_during_upgrade(incoming),
            }
        }
    }

    /// A control request that comes before an upgrade hands over: served, but another upgrade.
    fn control_during_upgrade(&mut self, incoming: Incoming) {
        if incoming.command == crate::control::Command::Upgrade {
            let id = self.request(incoming.reply);
            self.upgrading.push(id);
        } else {
            self.control(incoming);
        }
    }

    /// The upgrade did not happen: the tasks start again on what they gave back, and what was
    /// queued for the next image is handled here.
    fn go_on(
        &mut self,
        workers: Vec<(WorkerId, Stopped)>,
        notes: Vec<(i32, handover::Note)>,
        bus_lines: Vec<(i32, Vec<u8>)>,
        signals: &[i32],
        mask: &SigSet,
    ) {
        // The signals taken meanwhile come again, and those pending are delivered.
        raise(signals);
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(mask), None);
        self.handing.send_replace(false);
        for (id, s) in workers {
            let channel = s
                .channel
                .and_then(|(fd, unread, unsent)| channel_io(fd, unread, unsent));
            self.restart_tasks(id, s.stdout, s.stderr, channel);
        }
        self.handled(notes, bus_lines);
    }

    /// Notifications and bus messages from Node.js channels that were queued at the exec.
    fn handled(&mut self, notes: Vec<(i32, handover::Note)>, bus_lines: Vec<(i32, Vec<u8>)>) {
        for (pid, note) in notes {
            if let Some(id) = self.machine.worker_by_pid(pid) {
                self.step(Event::Notify {
                    id,
                    msg: note.into(),
                });
            }
        }
        for (pid, line) in bus_lines {
            if let Some(id) = self.machine.worker_by_pid(pid) {
                self.bus_message(id, &line, None);
            }
        }
    }

    /// Answers the requests that asked for the upgrade: how it went.
    fn answer(&mut self, result: Result<String, String>) {
        let result = result.map_err(|why| {
            let msg = format!(
                "cannot upgrade in place: {why}; corral {} runs on",
                crate::version::get()
            );
            error!("{msg}");
            msg
        });
        if let Ok(m) = &result {
            info!("{m}");
        }
        for r in std::mem::take(&mut self.upgrading) {
            if let Some(tx) = self.pending.remove(&r) {
                tx.send(match &result {
                    Ok(m) => Response::ok(m.clone()),
                    Err(e) => Response::err(e.clone()),
                });
            }
        }
    }

    /// Stops every worker's tasks and collects what they held.
    async fn stop_tasks(&mut self) -> Vec<(WorkerId, Stopped)> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + TASKS_STOP;
        let ids: Vec<WorkerId> = self.worker_io.keys().copied().collect();
        for id in ids {
            let tasks = std::mem::take(&mut self.worker_io.get_mut(&id).expect("listed").tasks);
            let mut stopped = Stopped::default();
            if let Some(h) = tasks.stdout {
                stopped.stdout = given_back(h, deadline).await;
            }
            if let Some(h) = tasks.stderr {
                stopped.stderr = given_back(h, deadline).await;
            }
            if let Some((reader, writer)) = tasks.channel {
                let read = given_back(reader, deadline).await;
                let write = given_back(writer, deadline).await;
                stopped.channel = read.and_then(|(r, unread)| {
                    let unsent = match write {
                        Some((w, unsent)) => {
                            // Dropped, the half would shut the socket down for writing.
                            w.forget();
                            unsent
                        }
                        None => Vec::new(),
                    };
                    // One socket: the halves' descriptor is the same one.
                    let fd = r.as_ref().as_fd().try_clone_to_owned().ok()?;
                    Some((fd, unread, unsent))
                });
            }
            out.push((id, stopped));
        }
        out
    }

    /// The state for the next image; `workers`: what their stopped tasks gave back (none for
    /// the state the new binary checks first).
    fn save(&mut self, carry: &mut Carry, handed: Handed<'_>) -> std::io::Result<Vec<u8>> {
        let Handed {
            workers,
            notes,
            bus_lines,
            blocked,
            signals,
        } = handed;
        let now = Instant::now();
        let saved_at = handover::monotonic_us();
        let machine = String::from_utf8(self.machine.save(now)).map_err(std::io::Error::other)?;
        let machine =
            serde_json::value::RawValue::from_string(machine).map_err(std::io::Error::other)?;
        let mut gens: Vec<u32> = self.gens.keys().copied().collect();
        gens.sort_unstable();
        let generations = gens
            .iter()
            .map(|g| (*g, self.gens[g].workers.config.clone()))
            .collect();
        let sets: Vec<(u32, &Set)> = gens
            .iter()
            .map(|g| (*g, &self.gens[g].workers.listeners))
            .collect();
        let listeners = self.pool.save(&sets, carry)?;
        let mut io = Vec::new();
        for (id, s) in workers {
            let channel = match &s.channel {
                Some((fd, unread, unsent)) => Some(handover::Channel {
                    fd: carry.fd(fd)?,
                    unread: unread.clone(),
                    unsent: unsent.clone(),
                }),
                None => None,
            };
            io.push(handover::WorkerIo {
                id: *id,
                stdout: match &s.stdout {
                    Some((fd, held)) => Some((carry.fd(fd)?, held.clone())),
                    None => None,
                },
                stderr: match &s.stderr {
                    Some((fd, held)) => Some((carry.fd(fd)?, held.clone())),
                    None => None,
                },
                channel,
            });
        }
        let mut requests = Vec::new();
        for (id, r) in &self.pending {
            if let Some(c) = &r.connection {
                requests.push(handover::Request {
                    id: *id,
                    fd: carry.fd(c)?,
                    systemd_waits: r.systemd_waits,
                });
            }
        }
        let keeper = match &self.keeper {
            Some(k) => Some((k.pid, carry.fd(k)?)),
            None => None,
        };
        let state = State {
            format: handover::FORMAT,
            version: crate::version::get().to_string(),
            saved_at,
            machine,
            app: self.app.clone(),
            config_path: self.config_path.clone(),
            control_path: self.control_path.clone(),
            generations,
            next_gen: self.next_gen,
            listeners,
            workers: io,
            notify: carry.fd(&self.notify)?,
            control: carry.fd(&self.control_fd)?,
            bus: self.bus.save(carry)?,
            keeper,
            keeper_starts: self.keeper_starts,
            requests,
            next_request: self.next_request,
            upgrading: self.upgrading.clone(),
            notes,
            bus_lines,
            worker_nofile: self.worker_nofile,
            upgrades: self.upgrades,
            last_upgrade: self.last_upgrade.clone(),
            exe: self.exe.clone(),
            argv: self.argv.clone(),
            own_env: self.own_env.clone(),
            blocked,
            signals,
            hup_ignored: self.nohup,
            reloading_sent: self.machine.systemd_idle(),
            carried: carry.numbers(),
        };
        serde_json::to_vec(&state).map_err(std::io::Error::other)
    }

    /// Starts the workers' tasks on what was carried (`take`), in the next image.
    fn resume_tasks(&mut self, mut take: Take, workers: Vec<handover::WorkerIo>) {
        for w in workers {
            let mut pipe = |p: Option<(i32, Vec<u8>)>| {
                let (n, held) = p?;
                Some((take.fd(n).ok()?, held))
            };
            let (stdout, stderr) = (pipe(w.stdout), pipe(w.stderr));
            let channel = w
                .channel
                .and_then(|c| channel_io(take.fd(c.fd).ok()?, c.unread, c.unsent));
            self.restart_tasks(w.id, stdout, stderr, channel);
        }
        take.commit();
    }

    /// Starts a worker's tasks again on its pipes and channel (a process gone meanwhile has
    /// none to start: what it had is closed).
    fn restart_tasks(
        &mut self,
        id: WorkerId,
        stdout: Option<super::Pipe>,
        stderr: Option<super::Pipe>,
        channel: Option<super::ChannelIo>,
    ) {
        let (Some(pid), Some(seat), Some(generation)) = (
            self.machine.pid_of(id),
            self.machine.seat_of(id),
            self.machine.generation_of(id),
        ) else {
            return;
        };
        let tasks = self.start_tasks(pid, seat, generation, stdout, stderr, channel);
        if let Some(io) = self.worker_io.get_mut(&id) {
            io.tasks = tasks;
        }
    }
}

/// What a worker's stopped tasks gave back.
#[derive(Default)]
struct Stopped {
    stdout: Option<super::Pipe>,
    stderr: Option<super::Pipe>,
    /// The channel, what was read of it and not handled, and the lines not written to it.
    channel: Option<(OwnedFd, Vec<u8>, Vec<Vec<u8>>)>,
}

/// What a stopped task gave back, if it stopped by `deadline` (one that ended before, at its
/// descriptor's end, has nothing to give).
async fn given_back<T>(
    task: tokio::task::JoinHandle<Option<T>>,
    deadline: tokio::time::Instant,
) -> Option<T> {
    tokio::time::timeout_at(deadline, task).await.ok()?.ok()?
}

/// A channel's socket made into the halves its tasks take.
fn channel_io(fd: OwnedFd, unread: Vec<u8>, unsent: Vec<Vec<u8>>) -> Option<super::ChannelIo> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true).ok()?;
    let (read, write) = tokio::net::UnixStream::from_std(std).ok()?.into_split();
    Some((read, write, unread, unsent))
}

fn to_memfd(bytes: &[u8]) -> Result<OwnedFd, String> {
    handover::to_memfd(bytes).map_err(|e| format!("cannot write the state: {e}"))
}

/// What the state holds besides what the loop knows: each worker's stopped tasks' descriptors
/// and bytes, what the Node.js channels' readers had queued, the signal mask from before the
/// upgrade, and the signals taken during it.
#[derive(Default)]
struct Handed<'a> {
    workers: &'a [(WorkerId, Stopped)],
    notes: Vec<(i32, handover::Note)>,
    bus_lines: Vec<(i32, Vec<u8>)>,
    blocked: Vec<i32>,
    signals: Vec<i32>,
}

/// The loop's queues an upgrade empties.
pub(super) struct Queues<'a> {
    pub control: &'a mut mpsc::Receiver<Incoming>,
    pub notes: &'a mut mpsc::Receiver<(i32, Notification)>,
    pub bus: &'a mut mpsc::Receiver<(i32, Vec<u8>)>,
}

/// Sends this process `signals` again: they wait, pending, until the mask lets them through.
fn raise(signals: &[i32]) {
    for &n in signals {
        if let Ok(s) = nix::sys::signal::Signal::try_from(n) {
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), s);
        }
    }
}

impl Loop {
    /// Takes over from the image before (see the module's comment). What cannot be taken over
    /// puts that image's binary back.
    pub(super) fn resume(&mut self, mut r: super::upgrade::Resume) {
        let machine = r.machine.take().expect("checked");
        let sets = std::mem::take(&mut r.sets);
        if let Err(why) = self.rebuild(&mut r, machine, sets) {
            error!("cannot take over: {why}");
            self.output.flush(Duration::from_secs(2));
            let e = r.fall_back(&why);
            error!("{e}");
            std::process::exit(crate::error::exit::FAILED);
        }
        let Resume {
            mut state,
            memfd,
            fallback,
            failed,
            mut take,
            ..
        } = r;
        let mut take = take.take().expect("checked");
        // Waiting control requests, on their connections.
        for q in std::mem::take(&mut state.requests) {
            if let Ok(fd) = take.fd(q.fd) {
                if let Ok(reply) = Reply::resume(fd, q.systemd_waits) {
                    self.pending.insert(q.id, reply);
                }
            }
        }
        self.resume_tasks(take, std::mem::take(&mut state.workers));
        drop((memfd, fallback));
        let from = state.version.clone();
        let result = match &failed {
            None => {
                self.upgrades = state.upgrades + 1;
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                self.last_upgrade = Some((now, from.clone()));
                let took =
                    Duration::from_micros(handover::monotonic_us().saturating_sub(state.saved_at));
                Ok(format!(
                    "upgraded in place from corral {from} to {} (pid {}, {} worker(s) kept; \
                     the new image took over in {} ms)",
                    crate::version::get(),
                    std::process::id(),
                    self.machine.worker_pids().len(),
                    took.as_millis()
                ))
            }
            Some(why) => {
                self.upgrades = state.upgrades;
                self.last_upgrade = state.last_upgrade.clone();
                Err(format!(
                    "the new binary could not take over ({why}), and was put back"
                ))
            }
        };
        self.upgrading = std::mem::take(&mut state.upgrading);
        self.answer(result);
        self.handled(state.notes, state.bus_lines);
        if state.reloading_sent {
            self.sd_send("READY=1");
        }
        self.sd_send(&format!(
            "STATUS=corral {} (upgraded in place from {from})",
            crate::version::get()
        ));
        // Signals sent meanwhile wait, blocked, with those the previous image had taken: now
        // that they are handled, they come.
        raise(&state.signals);
        let mut mask = SigSet::empty();
        for n in &state.blocked {
            if let Ok(s) = nix::sys::signal::Signal::try_from(*n) {
                mask.add(s);
            }
        }
        let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&mask), None);
        // What exited during the exec, and what was queued, is seen now.
        self.drain_notify();
        self.reap();
        self.relisten();
        if self.machine.loading() {
            // The reading under way did not cross the exec: read again.
            self.load();
        }
    }

    /// The machine, the generations and the workers' records from the state; the workers'
    /// descriptors and the requests' are taken after, once nothing can fail.
    fn rebuild(
        &mut self,
        r: &mut Resume,
        machine: Supervisor,
        mut sets: Vec<(u32, Set)>,
    ) -> Result<(), String> {
        let s = &mut r.state;
        self.machine = machine;
        self.next_gen = s.next_gen;
        self.next_request = s.next_request;
        self.nohup = s.hup_ignored;
        for (gen, config) in std::mem::take(&mut s.generations) {
            let set = match sets.iter().position(|(g, _)| *g == gen) {
                Some(i) => sets.swap_remove(i).1,
                None => Set::default(),
            };
            self.insert_generation(gen, config, set)?;
        }
        for (id, seat, generation, _pid) in self.machine.processes() {
            let Some(g) = self.gens.get(&generation) else {
                return Err(format!(
                    "worker {id} is of generation {generation}, not handed over"
                ));
            };
            let listeners = match seat {
                Seat::Slot(_) => g.workers.listeners.clone(),
                Seat::Agent => Set::default(),
            };
            let launch = match seat {
                Seat::Slot(_) => &g.workers,
                Seat::Agent => g.agent.as_ref().unwrap_or(&g.workers),
            };
            let inodes = super::listen_inodes(&launch.config, &listeners.sockets_of(id));
            self.worker_io.insert(
                id,
                WorkerIo {
                    seat,
                    listeners,
                    inodes,
                    tasks: Tasks::default(),
                },
            );
        }
        Ok(())
    }
}
