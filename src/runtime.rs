//! The event loop: the one owner of all worker state.
//!
//! It waits on child exits (SIGCHLD, reaped with waitpid), the notify socket, the control
//! socket, SIGTERM/SIGINT/SIGHUP and one next deadline — nothing polls, nothing sleeps for a
//! fixed time. Each wake-up becomes an [`Event`] for the state machine, whose [`Action`]s are
//! performed here, depth first: an action's own outcome (a spawn's pid) is fed back before the
//! next action runs.

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::{Config, ReadinessMode};
use crate::control::{self, Command, Incoming, Reply, Response, StatusReply};
use crate::error::Error;
use crate::listen::{self, Pool, Set};
use crate::notify::{Notification, NotifySocket, Systemd};
use crate::output::{Output, Tag};
use crate::spawn;
use crate::supervisor::{
    self, Action, Event, ExitStatus, Level, Params, RequestId, Scope, Seat, Supervisor, WorkerId,
};
use crate::terminal::{Hup, Note};

mod upgrade;

/// Variables meant for corral itself, never passed on to workers (corral-worker(7): nothing of
/// the supervisor's own). `JOURNAL_STREAM` too: a worker's stdout is corral's pipe, not the journal.
const SUPERVISOR_ONLY: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "JOURNAL_STREAM",
    "NODE_CHANNEL_FD",
    "NODE_CHANNEL_SERIALIZATION_MODE",
    // systemd.exec(5): corral's pid, and the memory-pressure interface of corral's cgroup.
    "SYSTEMD_EXEC_PID",
    "MEMORY_PRESSURE_WATCH",
    "MEMORY_PRESSURE_WRITE",
];

pub struct RunOptions {
    pub config: PathBuf,
    pub control: Option<PathBuf>,
}

/// `corral run`: supervises until stopped; returns the exit code. Started by an upgrade in
/// place (`CORRAL_RESUME`: runtime/upgrade.rs), it takes over from the image before it.
pub fn run(opts: RunOptions) -> Result<i32, Error> {
    // Before anything changes the environment: an image that cannot take over puts the one
    // before it back with the environment it was given.
    let resume = upgrade::Resume::take();
    let fresh = match &resume {
        Some(_) => None,
        None => Some(Config::load(&opts.config)?),
    };
    // What the next image of an upgrade in place gets back: the variables taken out below.
    let own_env: Vec<(Vec<u8>, Vec<u8>)> = std::env::vars_os()
        .filter(|(k, _)| {
            SUPERVISOR_ONLY
                .iter()
                .any(|s| k.as_bytes() == s.as_bytes() && !s.starts_with("LISTEN_"))
        })
        .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect();
    // Take what systemd gave corral, and keep it from the workers' inherited environment.
    // Where logs go is decided before JOURNAL_STREAM is taken out of the environment below.
    let journal = crate::journal::stderr_is_journal();
    let systemd = Systemd::from_env(std::env::var("NOTIFY_SOCKET").ok().as_deref());
    let sd_watchdog = systemd_watchdog();
    let inherited = match &resume {
        Some(_) => None,
        None => listen::take_systemd_fds()?,
    };
    let base_env: Vec<(OsString, OsString)> = std::env::vars_os()
        .filter(|(k, _)| !SUPERVISOR_ONLY.iter().any(|s| k.as_bytes() == s.as_bytes()))
        .filter(|(k, _)| !k.as_bytes().starts_with(b"CORRAL_"))
        .collect();
    // While this process has one thread: changing the environment races with other threads.
    for k in SUPERVISOR_ONLY {
        std::env::remove_var(k);
    }

    let app = match (&fresh, &resume) {
        (Some(c), _) => c.app.clone(),
        (None, Some(r)) => r.state.app.clone(),
        (None, None) => unreachable!("one or the other"),
    };
    let output = Output::start(journal);
    crate::own_log::init(&app, output.clone());
    let mut resume = resume;
    if let Some(r) = &mut resume {
        if let Err(why) = r.check() {
            return Err(resume.take().expect("there").fall_back(&why));
        }
    }

    let control_path = match &resume {
        Some(r) => r.state.control_path.clone(),
        None => opts.control.unwrap_or_else(|| control::default_path(&app)),
    };
    // Absolute: the notify socket and the Node.js preload are beside it, and workers that run
    // elsewhere (`directory`) find them by this path.
    let control_path = std::path::absolute(&control_path).unwrap_or(control_path);
    let devnull: OwnedFd = match std::fs::File::open("/dev/null") {
        Ok(f) => f.into(),
        Err(e) => return Err(failed(resume, Error::io("cannot open /dev/null", e))),
    };
    // Orphans of a worker's tree (a process whose parent exited) are reparented here rather
    // than to init (prctl(2), PR_SET_CHILD_SUBREAPER): corral reaps them, and kills what is
    // left when it exits.
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        warn!("cannot become a child subreaper: {e}");
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .on_thread_start(crate::signals::block_in_this_thread)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return Err(failed(resume, Error::io("cannot start the event loop", e))),
    };
    // Workers are forked from this thread, the one block_on runs on for the process's whole
    // life: PR_SET_PDEATHSIG fires when the *thread* that forked exits (prctl(2)). An upgrade
    // in place execs from it too: exec is not an exit, and the workers stay.
    let flush = output.clone();
    let code = rt.block_on(async move {
        let (begin, parts) = match resume {
            Some(mut r) => match r.parts(&control_path) {
                Ok(p) => (Begin::Resumed(Box::new(r)), p),
                Err(why) => return Err(r.fall_back(&why)),
            },
            None => {
                let config = fresh.expect("not resuming");
                let pool = Pool::new(inherited);
                let listeners = pool.set_for(&config)?;
                let parts = Parts::bind(&control_path, pool, devnull.as_raw_fd())?;
                let config = Box::new(config);
                (Begin::Fresh { config, listeners }, parts)
            }
        };
        // Before any worker: what they get is the limit corral was started with (nofile.rs).
        let worker_nofile = match &begin {
            Begin::Fresh { listeners, .. } => crate::nofile::raise(balanced_listeners(listeners)),
            Begin::Resumed(r) => r.state.worker_nofile,
        };
        let (loaded_tx, mut loaded_rx) = mpsc::channel(1);
        let (handing, _) = tokio::sync::watch::channel(false);
        let Parts {
            server,
            control,
            control_fd,
            notify,
            bus,
            keeper,
            keeper_starts,
            pool,
        } = parts;
        let config_path = match &begin {
            Begin::Fresh { config, .. } => config.path.clone(),
            Begin::Resumed(r) => r.state.config_path.clone(),
        };
        let mut lp = Loop {
            worker_io: HashMap::new(),
            worker_nofile,
            loaded_tx,
            keeper,
            keeper_starts,
            app: app.clone(),
            config_path,
            machine: Supervisor::new(),
            gens: HashMap::new(),
            next_gen: 1,
            pool,
            notify_env: notify.env_value().to_string(),
            notify,
            systemd,
            base_env,
            devnull,
            output,
            pending: HashMap::new(),
            next_request: 1,
            exit: None,
            ipc: HashMap::new(),
            bus,
            ipc_bus: None,
            ipc_notes: None,
            preload: crate::node::Preload::new(&control_path),
            handing,
            control_fd,
            control_path: control_path.clone(),
            exe: upgrade::own_binary(),
            argv: crate::handover::own_arguments(),
            own_env,
            nohup: false,
            upgrading: Vec::new(),
            upgrades: 0,
            last_upgrade: None,
        };
        let code = lp.run(begin, control, sd_watchdog, &mut loaded_rx).await;
        // Answers given in the last turn (a stop answers every reload waiting) are written
        // before the connections go with the runtime.
        tokio::task::yield_now().await;
        drop(server);
        lp.kill_leftovers();
        // The last lines (the exit's) are worth waiting a moment for.
        flush.flush(Duration::from_secs(2));
        code
    });
    // A reload's reading of the config may still be under way, on a file system that hangs
    // (a dead NFS server): dropping the runtime would wait for its thread for good. Its
    // outcome is of no use any more, and the thread goes with the process.
    rt.shutdown_timeout(ABANDON_LOAD_AFTER);
    code
}

/// systemd.service(5), Type=notify-reload: RELOADING=1 with the time it began.
fn reloading() -> String {
    format!(
        "RELOADING=1\nMONOTONIC_USEC={}",
        crate::handover::monotonic_us()
    )
}

/// `e` ended the start; an image started by an upgrade in place puts the previous one back
/// instead (which returns only if it cannot).
fn failed(resume: Option<upgrade::Resume>, e: Error) -> Error {
    match resume {
        Some(r) => r.fall_back(&e.to_string()),
        None => e,
    }
}

/// How a loop begins: with a config read now, or with what an earlier image handed over.
enum Begin {
    Fresh { config: Box<Config>, listeners: Set },
    Resumed(Box<upgrade::Resume>),
}

/// The sockets and the keeper, bound and started here or taken over.
struct Parts {
    server: control::Server,
    control: tokio::net::UnixListener,
    /// A second handle on the control socket, for an upgrade in place to carry.
    control_fd: OwnedFd,
    notify: NotifySocket,
    bus: crate::bus::Router,
    keeper: Option<crate::keeper::Keeper>,
    keeper_starts: u32,
    pool: Pool,
}

impl Parts {
    fn bind(control_path: &Path, pool: Pool, stdin: std::os::fd::RawFd) -> Result<Parts, Error> {
        let (server, control) = control::Server::bind(control_path)?;
        let control_fd = std::os::fd::AsFd::as_fd(&control)
            .try_clone_to_owned()
            .map_err(|e| Error::io("control socket", e))?;
        // Beside the control socket: that one being ours means no other supervisor uses it.
        let notify_path = crate::rundir::beside(control_path, "notify");
        let notify = NotifySocket::bind(&notify_path).map_err(|e| {
            Error::io(
                format!("cannot create the notify socket {}", notify_path.display()),
                e,
            )
        })?;
        let bus_path = crate::rundir::beside(control_path, "bus");
        let bus = crate::bus::Router::bind(&bus_path).map_err(|e| {
            Error::io(
                format!("cannot create the bus socket {}", bus_path.display()),
                e,
            )
        })?;
        Ok(Parts {
            server,
            control,
            control_fd,
            notify,
            bus,
            keeper: start_keeper(stdin),
            keeper_starts: 1,
            pool,
        })
    }
}

/// How long corral's exit waits for a reading of the config still under way.
const ABANDON_LOAD_AFTER: Duration = Duration::from_millis(500);

/// `WATCHDOG_USEC` for this process (sd_watchdog_enabled(3)): ping at half of it.
fn systemd_watchdog() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}

struct Generation {
    workers: Launch,
    /// The agent's (`[agent]`), with no listeners.
    agent: Option<Launch>,
}

/// What a process is started with: its config, listeners and environment.
struct Launch {
    config: Config,
    listeners: Set,
    env: Vec<CString>,
    /// Its PATH, for finding the program.
    path: Option<OsString>,
    program: Result<PathBuf, String>,
}

/// Starts the keeper (keeper.rs); without one, corral runs on, and says what that costs.
fn start_keeper(stdin: std::os::fd::RawFd) -> Option<crate::keeper::Keeper> {
    match crate::keeper::Keeper::start(Path::new("/proc/self/exe"), stdin) {
        Ok(k) => Some(k),
        Err(e) => {
            warn!(
                "cannot start the keeper ({e}): if corral is killed, processes the workers \
                 started may outlive it"
            );
            None
        }
    }
}

/// How often the listeners are checked for a worker having shut one down.
const LISTENERS_CHECK: Duration = Duration::from_secs(2);

/// How many notify datagrams one turn of the loop takes at most.
const NOTIFY_BATCH: usize = 256;

/// How many times the keeper is started in all before corral gives up on it.
const KEEPER_STARTS: u32 = 5;

/// What the runtime keeps of a worker it spawned, until it is reaped.
struct WorkerIo {
    seat: Seat,
    /// Its generation's listeners, where its own sockets are.
    listeners: Set,
    /// The inodes of its listening sockets, for readiness mode `listen`.
    inodes: std::collections::HashSet<u64>,
    /// The tasks relaying its output and reading and writing its Node.js channel.
    tasks: Tasks,
}

/// A worker's tasks, each of which gives back what it holds when told to stop (an upgrade in
/// place).
#[derive(Default)]
struct Tasks {
    stdout: Option<tokio::task::JoinHandle<Option<Pipe>>>,
    stderr: Option<tokio::task::JoinHandle<Option<Pipe>>>,
    channel: Option<(crate::nodeipc::Reader, crate::nodeipc::Writer)>,
}

/// A worker's output pipe, and the part of a line its relay holds.
type Pipe = (OwnedFd, Vec<u8>);

/// A worker's Node.js channel, new or handed over: corral's halves, what was read of it and not
/// handled, and the lines not written to it yet.
type ChannelIo = (
    tokio::net::unix::OwnedReadHalf,
    tokio::net::unix::OwnedWriteHalf,
    Vec<u8>,
    Vec<Vec<u8>>,
);

struct Loop {
    worker_io: HashMap<WorkerId, WorkerIo>,
    /// The open-file limit corral was started with, which its workers get.
    worker_nofile: Option<(u64, u64)>,
    /// Where the thread that reads the config for a reload sends what it read (the machine
    /// asks for one reading at a time: `Action::Load`).
    loaded_tx: mpsc::Sender<Result<Config, crate::config::ConfigError>>,
    /// Kills the workers' process groups if corral dies (keeper.rs).
    keeper: Option<crate::keeper::Keeper>,
    keeper_starts: u32,
    app: String,
    config_path: PathBuf,
    machine: Supervisor,
    gens: HashMap<u32, Generation>,
    next_gen: u32,
    pool: Pool,
    notify_env: String,
    notify: NotifySocket,
    systemd: Option<Systemd>,
    base_env: Vec<(OsString, OsString)>,
    devnull: OwnedFd,
    output: Output,
    pending: HashMap<RequestId, Reply>,
    next_request: RequestId,
    exit: Option<i32>,
    /// Node.js IPC channels of node-ipc workers, by pid, with the app's `stop.message`.
    ipc: crate::bus::Channels,
    /// The agent's and workers' messages to each other (bus.rs).
    bus: crate::bus::Router,
    /// Where the Node.js channels' readers send bus messages.
    ipc_bus: Option<mpsc::Sender<(i32, Vec<u8>)>>,
    /// Where the channels' readers report a worker's `'ready'` (by pid).
    ipc_notes: Option<mpsc::Sender<(i32, Notification)>>,
    /// The Node.js preload, written beside the control socket the first time a generation
    /// asks for it.
    preload: crate::node::Preload,
    /// Set for an upgrade in place: the relay and channel tasks stop and hand over what they
    /// hold (runtime/upgrade.rs).
    handing: tokio::sync::watch::Sender<bool>,
    control_fd: OwnedFd,
    control_path: PathBuf,
    /// The binary this corral was started from, which an upgrade in place runs again, and
    /// its arguments and own variables.
    exe: PathBuf,
    argv: Vec<Vec<u8>>,
    own_env: Vec<(Vec<u8>, Vec<u8>)>,
    /// SIGHUP was ignored when corral started (nohup(1)).
    nohup: bool,
    /// The requests waiting for the upgrade in place under way.
    upgrading: Vec<RequestId>,
    /// Upgrades in place so far, and the last one's time and the version it came from.
    upgrades: u32,
    last_upgrade: Option<(u64, String)>,
}

impl Loop {
    async fn run(
        &mut self,
        begin: Begin,
        control: tokio::net::UnixListener,
        sd_watchdog: Option<Duration>,
        loaded: &mut mpsc::Receiver<Result<Config, crate::config::ConfigError>>,
    ) -> Result<i32, Error> {
        let resumed = |begin: Begin| match begin {
            Begin::Resumed(r) => Some(*r),
            Begin::Fresh { .. } => None,
        };
        let mut signals = match crate::signals::Signals::install() {
            Ok(s) => s,
            Err(e) => {
                return Err(failed(
                    resumed(begin),
                    Error::io("cannot handle signals", e),
                ))
            }
        };
        // SIGHUP ignored at start (nohup) is handled since: an earlier image says so.
        let nohup = match &begin {
            Begin::Resumed(r) => r.state.hup_ignored,
            Begin::Fresh { .. } => signals.hup_ignored_at_start,
        };
        self.nohup = nohup;
        let mut terminal = crate::terminal::Terminal::new(crate::terminal::probe(), nohup);
        let [term, int, quit] = &mut signals.stop;
        let [usr1, usr2] = &mut signals.usr;
        let notify_io = match self
            .notify
            .try_clone_std()
            .and_then(tokio::net::UnixDatagram::from_std)
        {
            Ok(s) => s,
            Err(e) => return Err(failed(resumed(begin), Error::io("notify socket", e))),
        };
        let (to_loop, mut from_control) = mpsc::channel::<Incoming>(64);
        let (ipc_notes, mut ipc_noted) = mpsc::channel::<(i32, Notification)>(1024);
        self.ipc_notes = Some(ipc_notes);
        let (ipc_bus, mut ipc_bused) = mpsc::channel::<(i32, Vec<u8>)>(1024);
        self.ipc_bus = Some(ipc_bus);
        let bus_io = match self
            .bus
            .try_clone_std()
            .and_then(tokio::net::UnixDatagram::from_std)
        {
            Ok(s) => s,
            Err(e) => return Err(failed(resumed(begin), Error::io("bus socket", e))),
        };
        tokio::spawn(control::serve(control, to_loop, self.handing.subscribe()));

        match begin {
            Begin::Fresh { config, listeners } => self.start_fresh(*config, listeners)?,
            Begin::Resumed(r) => self.resume(*r),
        }

        // A worker may shut a listener down for every worker (shutdown(2) acts on the socket,
        // not on its copy): looked at this often, and at every worker exit.
        let mut listeners_check = tokio::time::interval(LISTENERS_CHECK);
        listeners_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_ping = sd_watchdog.map(|d| Instant::now() + d);
        if next_ping.is_some() {
            self.sd_send("WATCHDOG=1");
        }
        loop {
            if let Some(code) = self.exit {
                return Ok(code);
            }
            let deadline = match (self.machine.next_deadline(), next_ping) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(tokio::time::Instant::from_std(d)).await,
                    None => std::future::pending().await,
                }
            };
            // Asked for in this turn, by SIGUSR2 (None) or a request (its reply).
            let mut upgrade: Option<Option<Reply>> = None;
            tokio::select! {
                _ = signals.chld.recv() => {
                    self.drain_notify();
                    self.reap();
                    self.relisten();
                }
                _ = listeners_check.tick() => {
                    self.relisten();
                    if let Some(Note::WentWithoutHangup) =
                        terminal.check(Instant::now(), crate::terminal::probe)
                    {
                        info!(
                            "the terminal went away without a SIGHUP: corral runs on, and a \
                             SIGHUP still means reload"
                        );
                    }
                }
                Some(config) = loaded.recv() => self.loaded(config),
                _ = term.recv() => self.step(Event::Stop),
                _ = int.recv() => self.step(Event::Stop),
                _ = quit.recv() => self.step(Event::Stop),
                _ = signals.hup.recv() => {
                    match terminal.hup(Instant::now(), crate::terminal::probe) {
                        Hup::Reload => self.reload(None),
                        Hup::Stop => {
                            info!("the terminal went away (SIGHUP): stopping");
                            self.step(Event::Stop);
                        }
                        Hup::Ignore => info!(
                            "the terminal went away (SIGHUP): ignored, as corral was started \
                             with SIGHUP ignored (nohup); a later SIGHUP means reload"
                        ),
                        // Its stop is under way: a second Stop would kill the workers at once.
                        Hup::Echo => {}
                    }
                }
                _ = signals.tstp.recv() => {
                    if crate::terminal::in_foreground() {
                        // Ctrl-Z: stop, as SIGTSTP's default action would (signal(7)); with
                        // corral's handler in place, by SIGSTOP, which cannot be caught. SIGCONT
                        // (`fg`, `bg`) resumes. The workers, in process groups of their own, go
                        // on serving.
                        info!("SIGTSTP in the foreground of the terminal: stopping until SIGCONT");
                        // The line is on the terminal before the output thread stops too; a
                        // terminal that takes no output (Ctrl-S) holds the loop 200 ms at most.
                        self.output.flush(Duration::from_millis(200));
                        let _ = kill(nix::unistd::getpid(), Signal::SIGSTOP);
                    } else {
                        info!("SIGTSTP ignored: corral is not in the foreground of a terminal");
                    }
                }
                _ = usr1.recv() => info!(
                    "SIGUSR1 ignored: to send it to the workers, `corral signal {} USR1`",
                    self.app
                ),
                // nginx's and einhorn's signal for a new binary (corral(1), SIGNALS).
                _ = usr2.recv() => {
                    info!("SIGUSR2: upgrading in place");
                    upgrade = Some(None);
                }
                ready = notify_io.readable() => {
                    ready.map_err(|e| Error::io("notify socket", e))?;
                    // Inside try_io: the WouldBlock that ends the batch clears the readiness.
                    let mut batch = Vec::new();
                    let _ = notify_io.try_io(tokio::io::Interest::READABLE, || {
                        self.take_datagrams(&mut batch)
                    });
                    for (id, msg) in batch {
                        self.step(Event::Notify { id, msg });
                    }
                }
                ready = bus_io.readable() => {
                    ready.map_err(|e| Error::io("bus socket", e))?;
                    let mut batch = Vec::new();
                    let _ = bus_io.try_io(tokio::io::Interest::READABLE, || {
                        let machine = &self.machine;
                        let (got, end) = self.bus.take(|pid| sender_of(machine, pid));
                        batch = got;
                        end
                    });
                    for (id, d) in batch {
                        self.bus_message(id, &d.bytes, d.from);
                    }
                }
                Some((pid, bytes)) = ipc_bused.recv() => {
                    if let Some(id) = self.machine.worker_by_pid(pid) {
                        self.bus_message(id, &bytes, None);
                    }
                }
                Some(incoming) = from_control.recv() => {
                    if incoming.command == Command::Upgrade {
                        upgrade = Some(Some(incoming.reply));
                    } else {
                        self.control(incoming);
                    }
                }
                Some((pid, msg)) = ipc_noted.recv() => {
                    if let Some(id) = self.machine.worker_by_pid(pid) {
                        self.step(Event::Notify { id, msg });
                    }
                }
                _ = sleep => {
                    let now = Instant::now();
                    if let (Some(t), Some(every)) = (next_ping, sd_watchdog) {
                        if t <= now {
                            // From the loop itself: a stuck loop stops pinging, and systemd acts.
                            self.sd_send("WATCHDOG=1");
                            next_ping = Some(now + every);
                        }
                    }
                    self.drain_notify();
                    self.step(Event::Tick);
                    if let Some(said) = self.bus.report(now) {
                        warn!("{said}");
                    }
                }
            }
            if let Some(reply) = upgrade {
                let queues = upgrade::Queues {
                    control: &mut from_control,
                    notes: &mut ipc_noted,
                    bus: &mut ipc_bused,
                };
                let stops = crate::signals::Stops {
                    term: &mut *term,
                    int: &mut *int,
                    quit: &mut *quit,
                    hup: &mut signals.hup,
                };
                self.upgrade(reply, queues, stops).await;
            }
        }
    }

    /// The first generation, from the config read at start.
    fn start_fresh(&mut self, config: Config, listeners: Set) -> Result<(), Error> {
        for w in self.pool.address_mismatches(&config) {
            warn!("{w}");
        }
        for w in listeners.notes() {
            warn!("{w}");
        }
        let workers = config.workers.resolve();
        if let Some(w) = crate::nofile::check(workers, balanced_listeners(&listeners)) {
            warn!("{w}");
        }
        info!(
            "starting {workers} worker(s) of {} (control socket {})",
            config.command.join(" "),
            self.control_path.display()
        );
        let mut params = Params::from_config(&config, workers);
        params.balanced = listeners.balanced();
        let gen = self
            .add_generation(config, listeners)
            .map_err(Error::Refused)?;
        debug_assert_eq!(gen, 1);
        self.step(Event::Start { params });
        Ok(())
    }

    /// Reads every queued datagram into `batch`, each with the worker it is from; ends with the
    /// error that stopped it (`WouldBlock` when the queue is empty). A datagram is attributed
    /// before the next one is read: `systemd-notify` waits for its `BARRIER=1` datagram's fd to
    /// be closed (sd_notify_barrier(3)) and exits then, so its earlier `READY=1` must be
    /// attributed while it is still there to look at.
    /// At most [`NOTIFY_BATCH`] datagrams are taken at a time: a sender that never stops cannot
    /// hold the loop, which comes back for the rest after its other work.
    fn take_datagrams(&self, batch: &mut Vec<(WorkerId, Notification)>) -> std::io::Result<()> {
        for _ in 0..NOTIFY_BATCH {
            match self.notify.recv() {
                Ok(d) if d.notification.is_empty() => {}
                Ok(d) => match self.sender(d.pid) {
                    Some(id) => batch.push((id, d.notification)),
                    // Only a current worker's tree is heard.
                    None => tracing::debug!("ignored a notification from pid {}", d.pid),
                },
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(e),
                Err(e) => {
                    warn!("notify socket: {e}");
                    return Err(e);
                }
            }
        }
        // Not WouldBlock: the socket stays readable, and the loop's next turn takes the rest.
        Ok(())
    }

    /// The worker a datagram's sender belongs to: the worker itself, or any process of its
    /// tree (a shell wrapper's child, `npm start`'s node, `systemd-notify`), found through its
    /// parents, or through its process group once its parent has gone. Like systemd's
    /// `NotifyAccess=all` (systemd.service(5)), but each worker hears only its own tree.
    fn sender(&self, pid: i32) -> Option<WorkerId> {
        sender_of(&self.machine, pid)
    }

    /// A bus message from worker (or agent) `id`: passed on (bus.rs).
    fn bus_message(
        &mut self,
        id: WorkerId,
        bytes: &[u8],
        from: Option<nix::sys::socket::UnixAddr>,
    ) {
        let Some(seat) = self.machine.seat_of(id) else {
            return;
        };
        let now = Instant::now();
        let machine = &self.machine;
        let from = crate::bus::Sent {
            id,
            seat,
            pid: self.machine.pid_of(id).unwrap_or(0),
            bytes,
            address: from,
        };
        let routed = self
            .bus
            .route(from, now, |to| machine.bus_targets(to), &self.ipc);
        if let Err(e) = routed {
            tracing::debug!("bus: a message from {seat} was not passed on: {e}");
        }
        if let Some(said) = self.bus.report(now) {
            warn!("{said}");
        }
    }

    /// Hands queued notifications to the machine before an exit or a deadline is handled: a
    /// `READY=1`, `ERRNO=` or `WATCHDOG=1` sent just before must count first, whatever order
    /// the wake-ups came in.
    fn drain_notify(&mut self) {
        let mut batch = Vec::new();
        let _ = self.take_datagrams(&mut batch);
        for (id, msg) in batch {
            self.step(Event::Notify { id, msg });
        }
    }

    fn step(&mut self, event: Event) {
        let actions = self.machine.step(event, Instant::now());
        for a in actions {
            self.perform(a);
        }
    }

    fn perform(&mut self, action: Action) {
        match action {
            Action::Spawn {
                id,
                slot,
                generation,
            } => self.start(id, Seat::Slot(slot), generation),
            Action::SpawnAgent { id, generation } => self.start(id, Seat::Agent, generation),
            Action::Message { pid, .. } => {
                // stop.message, alone: as PM2's shutdown_with_message sends it.
                if let Some((channel, Some(message))) = self.ipc.get(&pid) {
                    let _ = channel.try_send(crate::nodeipc::message(message));
                }
            }
            Action::Probe { workers } => self.probe(workers),
            Action::Load => self.load(),
            Action::Balance {
                serving,
                keeping,
                slots,
            } => {
                // Every group a live generation uses, once.
                let mut done: Vec<*const crate::balance::Group> = Vec::new();
                for g in self.gens.values() {
                    for group in g.workers.listeners.groups.iter().flatten() {
                        if !done.contains(&std::rc::Rc::as_ptr(group)) {
                            done.push(std::rc::Rc::as_ptr(group));
                            group.steer(&serving, &keeping, slots);
                        }
                    }
                }
            }
            Action::QueueCheck { workers } => {
                // One poll(2) for every socket: it runs up to 100 times a second under load.
                let mut owner = Vec::new();
                let mut sockets = Vec::new();
                for id in workers {
                    let Some(io) = self.worker_io.get(&id) else {
                        continue;
                    };
                    for s in io.listeners.own_sockets(id) {
                        owner.push(id);
                        sockets.push(s);
                    }
                }
                let mut waiting: Vec<(WorkerId, bool)> = Vec::new();
                for (id, w) in owner
                    .into_iter()
                    .zip(crate::balance::waiting_many(&sockets))
                {
                    match waiting.last_mut() {
                        Some((last, any)) if *last == id => *any |= w,
                        _ => waiting.push((id, w)),
                    }
                }
                self.step(Event::Queued { waiting });
            }
            Action::Signal { pid, signal, .. } => {
                let _ = kill(Pid::from_raw(pid), signal);
                if signal == Signal::SIGKILL {
                    // The worker leads its own process group: take its children too.
                    let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                }
            }
            Action::Reply { request, result } => {
                if let Some(tx) = self.pending.remove(&request) {
                    tx.send(match result {
                        Ok(m) => Response::ok(m),
                        Err(e) => Response::err(e),
                    });
                }
            }
            Action::Forget { generation } => {
                self.gens.remove(&generation);
            }
            Action::Systemd(msg) => match msg {
                supervisor::Systemd::Ready => self.sd_send("READY=1"),
                supervisor::Systemd::Stopping => self.sd_send("STOPPING=1"),
                supervisor::Systemd::Extend(d) => {
                    self.sd_send(&format!("EXTEND_TIMEOUT_USEC={}", d.as_micros()));
                    // systemd pushes its watchdog timer out by the extension too
                    // (service_extend_timeout); a ping right after, from this loop, which is
                    // alive to send it, puts the watchdog back at WatchdogSec= from now, so
                    // that a corral hung later is still noticed in time. Harmless without a
                    // watchdog: systemd then has none to reset.
                    self.sd_send("WATCHDOG=1");
                }
                supervisor::Systemd::Reloading => self.sd_send(&reloading()),
                supervisor::Systemd::Status(s) => {
                    info!("{s}");
                    self.sd_send(&format!("STATUS={s}"));
                    // Whoever waits for a reload sees how it goes (never blocking the loop).
                    for waiting in self.pending.values() {
                        let _ = waiting.progress.try_send(s.clone());
                    }
                }
            },
            Action::Log {
                level,
                seat,
                pid,
                generation,
                message,
            } => {
                let mut who = String::new();
                match seat {
                    Some(Seat::Slot(s)) => who += &format!("worker {s} "),
                    Some(Seat::Agent) => who += "agent ",
                    None => {}
                }
                if let Some(p) = pid {
                    who += &format!("pid {p} ");
                }
                if let (Some(g), Some(_)) = (generation, seat) {
                    who += &format!("(generation {g}) ");
                }
                if !who.is_empty() {
                    who.pop();
                    who += ": ";
                }
                // -1: not about one worker (tracing fields are fixed per call site).
                let agent = seat == Some(Seat::Agent);
                let slot = match seat {
                    Some(Seat::Slot(s)) => i64::from(s),
                    _ => -1,
                };
                let pid = pid.map(i64::from).unwrap_or(-1);
                let generation = generation.map(i64::from).unwrap_or(-1);
                match level {
                    Level::Info => info!(slot, agent, pid, generation, "{who}{message}"),
                    Level::Warn => warn!(slot, agent, pid, generation, "{who}{message}"),
                    Level::Error => error!(slot, agent, pid, generation, "{who}{message}"),
                }
            }
            Action::SampleMemory { workers } => {
                // The worker's whole tree: gunicorn's or hypercorn's processes count.
                let pids: Vec<i32> = workers.iter().map(|&(_, pid)| pid).collect();
                let usage = crate::procfs::usage_of(&pids);
                for (id, pid) in workers {
                    if let Some(u) = usage.get(&pid).filter(|u| u.processes > 0) {
                        self.step(Event::Memory {
                            id,
                            rss: u.rss_bytes,
                        });
                    }
                }
            }
            Action::Exit(code) => self.exit = Some(code),
        }
    }

    fn sd_send(&self, msg: &str) {
        if let Some(sd) = &self.systemd {
            if let Err(e) = sd.send(msg) {
                warn!("cannot notify systemd: {e}");
            }
        }
    }

    /// Registers a generation; fails (and changes nothing) when its workers' environment cannot
    /// be made, as when the Node.js preload cannot be written.
    fn add_generation(&mut self, config: Config, listeners: Set) -> Result<u32, String> {
        let gen = self.next_gen;
        self.insert_generation(gen, config, listeners)?;
        self.next_gen += 1;
        Ok(gen)
    }

    /// Registers generation `gen` (a new one, or one an earlier image handed over).
    fn insert_generation(
        &mut self,
        gen: u32,
        config: Config,
        listeners: Set,
    ) -> Result<(), String> {
        let agent = match config.agent_config() {
            Some(own) => Some(self.launch(own, Set::default(), gen)?),
            None => None,
        };
        let workers = self.launch(config, listeners, gen)?;
        self.gens.insert(gen, Generation { workers, agent });
        Ok(())
    }

    /// What the processes of generation `gen` run with `config` get.
    fn launch(&mut self, config: Config, listeners: Set, gen: u32) -> Result<Launch, String> {
        let mut env: Vec<(OsString, OsString)> = self.base_env.clone();
        for (k, v) in &config.environment {
            env.retain(|(ek, _)| ek.as_bytes() != k.as_bytes());
            env.push((k.into(), v.into()));
        }
        let path = env
            .iter()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.clone());
        let program = resolve(&config, path.as_deref());
        if config.node.preload {
            self.preload.apply(&mut env, &config, &listeners)?;
        }
        let mut add = |k: &str, v: String| env.push((k.into(), v.into()));
        if !listeners.sockets.is_empty() {
            add("LISTEN_FDS", listeners.sockets.len().to_string());
            add("LISTEN_FDNAMES", listeners.fdnames());
        }
        add("NOTIFY_SOCKET", self.notify_env.clone());
        add("CORRAL_BUS", self.bus.env_value().to_string());
        if config.node_ipc() {
            // The channel follows the listeners (spawn places it there).
            add("NODE_CHANNEL_FD", (3 + listeners.sockets.len()).to_string());
            add("NODE_CHANNEL_SERIALIZATION_MODE", "json".into());
        }
        if let Some(wd) = config.watchdog {
            add("WATCHDOG_USEC", wd.as_micros().to_string());
        }
        add("CORRAL_APP", config.app.clone());
        add("CORRAL_GENERATION", gen.to_string());
        let env = env
            .into_iter()
            .filter_map(|(k, v)| {
                let mut e = k.as_bytes().to_vec();
                e.push(b'=');
                e.extend_from_slice(v.as_bytes());
                CString::new(e).ok()
            })
            .collect();
        Ok(Launch {
            config,
            listeners,
            env,
            path,
            program,
        })
    }

    /// Performs a `Spawn` (or `SpawnAgent`) action and reports how it went.
    fn start(&mut self, id: WorkerId, seat: Seat, generation: u32) {
        // An earlier action's answer may have made corral stop meanwhile: no fork for a
        // worker that would only be stopped.
        if !self.machine.spawn_wanted(id) {
            self.step(Event::SpawnSkipped { id });
            return;
        }
        let event = match self.spawn(id, seat, generation) {
            Ok(pid) => {
                // The worker leads its own process group (spawn.rs).
                self.tell_keeper(true, pid);
                Event::Spawned { id, pid }
            }
            Err((error, cannot_execute)) => Event::SpawnFailed {
                id,
                error,
                cannot_execute,
            },
        };
        self.step(event);
    }

    /// Forks and execs a worker; the error says why not, and whether the program cannot be
    /// executed at all (spawn.rs, `SpawnError::cannot_execute`).
    fn spawn(&mut self, id: WorkerId, seat: Seat, generation: u32) -> Result<i32, (String, bool)> {
        let g = self
            .gens
            .get_mut(&generation)
            .expect("a generation being spawned exists");
        let g = match seat {
            Seat::Slot(_) => &mut g.workers,
            Seat::Agent => g
                .agent
                .as_mut()
                .ok_or_else(|| ("the generation has no agent".to_string(), true))?,
        };
        if g.program.is_err() {
            // Not found before: it may have been installed (or its mount come up) since.
            g.program = resolve(&g.config, g.path.as_deref());
        }
        let g = &*g;
        // Not found on PATH: it cannot be executed.
        let program = g.program.clone().map_err(|e| (e, true))?;
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| (format!("cannot create a pipe: {e}"), false))
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let mut env = g.env.clone();
        env.push(CString::new(format!("CORRAL_WORKER={seat}")).expect("no NUL"));
        if let (true, Seat::Slot(slot)) = (g.config.node.preload, seat) {
            // PM2's instance number (NODE_APP_INSTANCE): the slot.
            env.push(CString::new(format!("NODE_APP_INSTANCE={slot}")).expect("no NUL"));
        }
        // Its listeners: shared ones, and its own socket of each balanced one (balance.rs);
        // the agent has none.
        let sockets = match seat {
            Seat::Slot(slot) => g
                .listeners
                .sockets_for(id, slot)
                .map_err(|e| (format!("cannot open a listening socket: {e}"), false))?,
            Seat::Agent => Vec::new(),
        };
        let listeners = g.listeners.clone();
        let release = |why: String| {
            if let Seat::Slot(slot) = seat {
                listeners.release(id, Some(slot));
            }
            why
        };
        let mut fds: Vec<std::os::fd::RawFd> = sockets.iter().map(|s| s.as_raw_fd()).collect();
        let node_ipc = g.config.node_ipc();
        let channel = if node_ipc {
            let (theirs, read, write) = crate::nodeipc::channel().map_err(|e| {
                let why = format!("cannot create the Node.js IPC channel: {e}");
                (release(why), false)
            })?;
            fds.push(theirs.as_raw_fd());
            Some((theirs, read, write))
        } else {
            None
        };
        let cmd = spawn::Command {
            program: &program,
            argv: &g.config.command,
            env: &env,
            listen_pid: !g.listeners.sockets.is_empty(),
            die_with_parent: true,
            nofile: self.worker_nofile,
            watchdog_pid: g.config.watchdog.is_some(),
            fds: &fds,
            stdin: self.devnull.as_raw_fd(),
            stdout: out_w.as_raw_fd(),
            stderr: err_w.as_raw_fd(),
            directory: g.config.directory.as_deref(),
        };
        let pid = spawn::spawn(&cmd).map_err(|e| {
            let cannot_execute = e.cannot_execute();
            (release(e.to_string()), cannot_execute)
        })?;
        drop((out_w, err_w));
        let inodes = listen_inodes(&g.config, &sockets);
        let channel = channel.map(|(theirs, read, write)| {
            drop(theirs);
            (read, write, Vec::new(), Vec::new())
        });
        let (out, err) = (Some((out_r, Vec::new())), Some((err_r, Vec::new())));
        let tasks = self.start_tasks(pid, seat, generation, out, err, channel);
        self.worker_io.insert(
            id,
            WorkerIo {
                seat,
                listeners,
                inodes,
                tasks,
            },
        );
        Ok(pid)
    }

    /// Starts the tasks of a worker of `generation`: the relays of its output pipes, and the
    /// reader and writer of its Node.js channel.
    fn start_tasks(
        &mut self,
        pid: i32,
        seat: Seat,
        generation: u32,
        stdout: Option<Pipe>,
        stderr: Option<Pipe>,
        channel: Option<ChannelIo>,
    ) -> Tasks {
        let config = self.gens.get(&generation).map(|g| match seat {
            Seat::Agent => g.agent.as_ref().unwrap_or(&g.workers),
            Seat::Slot(_) => &g.workers,
        });
        let stderr_priority = config.map_or(3, |c| c.config.logs.stderr_priority);
        let stop_message = config.and_then(|c| c.config.stop.message.clone());
        let mut tasks = Tasks::default();
        if let (Some((read, write, unread, unsent)), Some(notes)) = (channel, &self.ipc_notes) {
            let bus = self.ipc_bus.clone().expect("set before any spawn");
            let lost = self.bus.lost();
            let reader = tokio::spawn(crate::nodeipc::read(
                read,
                unread,
                pid,
                notes.clone(),
                (bus, lost),
                self.handing.subscribe(),
            ));
            let (queue, writer) = crate::nodeipc::writer(write, unsent, self.handing.subscribe());
            self.ipc.insert(pid, (queue, stop_message));
            tasks.channel = Some((reader, writer));
        }
        let tag = Tag {
            app: self.app.clone(),
            seat,
            pid,
            generation,
            priority: 6, // info, as journald gives a service's stdout (journald.conf(5))
        };
        let err_tag = Tag {
            priority: stderr_priority,
            ..tag.clone()
        };
        let relay = |(fd, held): Pipe, tag| {
            let stop = self.handing.subscribe();
            tokio::spawn(self.output.clone().relay(fd, tag, stop, held))
        };
        tasks.stdout = stdout.map(|p| relay(p, tag));
        tasks.stderr = stderr.map(|p| relay(p, err_tag));
        tasks
    }

    /// readiness mode `listen`: looks at each starting worker's tree. The worker alone first,
    /// which is all most servers are; the whole tree (one pass over /proc) only when that
    /// found nothing.
    fn probe(&mut self, workers: Vec<(WorkerId, i32)>) {
        let mut found = Vec::new();
        let mut deeper = Vec::new();
        for (id, pid) in workers {
            let Some(io) = self.worker_io.get(&id) else {
                continue;
            };
            match crate::probe::probe(&[pid], &io.inodes) {
                Some(f) => found.push((id, f)),
                None => deeper.push((id, pid)),
            }
        }
        if !deeper.is_empty() {
            let roots: Vec<i32> = deeper.iter().map(|&(_, pid)| pid).collect();
            let trees = crate::procfs::trees_now(&roots);
            for (id, pid) in deeper {
                let tree: Vec<i32> = trees[&pid]
                    .iter()
                    .map(|s| s.pid)
                    .filter(|&p| p != pid)
                    .collect();
                if let Some(f) = crate::probe::probe(&tree, &self.worker_io[&id].inodes) {
                    found.push((id, f));
                }
            }
        }
        for (id, f) in found {
            self.step(Event::Listening {
                id,
                how: f.to_string(),
            });
        }
    }

    /// Puts back in listen() any listener of a live generation that a worker shut down.
    fn relisten(&mut self) {
        for g in self.gens.values() {
            for name in g.workers.listeners.relisten() {
                warn!("listener `{name}` was shut down by a worker: listening again");
            }
        }
    }

    /// Reaps every child that has exited (one SIGCHLD may stand for several).
    fn reap(&mut self) {
        loop {
            let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, sig, core)) => (
                    pid,
                    ExitStatus::Signal {
                        signal: sig as i32,
                        core_dumped: core,
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let (pid, status) = status;
            if self.keeper.as_ref().is_some_and(|k| k.pid == pid.as_raw()) {
                self.keeper_exited(status);
                continue;
            }
            // Not a worker: an orphan of a worker's tree, reparented here (corral is a child
            // subreaper).
            let Some(id) = self.machine.worker_by_pid(pid.as_raw()) else {
                continue;
            };
            // Whatever the worker left in its process group goes with it.
            let _ = killpg(pid, Signal::SIGKILL);
            self.tell_keeper(false, pid.as_raw());
            self.ipc.remove(&pid.as_raw());
            self.bus.forget(id);
            self.step(Event::Exited { id, status });
            // Its own sockets: kept, with what is queued on them, for the next worker of a
            // slot that now has none (a crash), else out of their groups.
            if let Some(WorkerIo {
                seat: Seat::Slot(slot),
                listeners,
                ..
            }) = self.worker_io.remove(&id)
            {
                let keep = self.machine.slot_is_empty(slot).then_some(slot);
                listeners.release(id, keep);
            }
        }
    }

    /// Tells the keeper a worker's process group came (`add`) or went. A keeper that does not
    /// take the record (stopped, its pipe full) is replaced: one that missed a departure would
    /// kill whoever gets that group id next.
    fn tell_keeper(&mut self, add: bool, pgid: i32) {
        let Some(k) = &mut self.keeper else { return };
        let told = if add { k.watch(pgid) } else { k.forget(pgid) };
        if let Err(e) = told {
            let _ = kill(Pid::from_raw(k.pid), Signal::SIGKILL);
            self.replace_keeper(&format!("does not take what corral tells it ({e})"));
        }
    }

    /// The keeper died while corral lives (someone killed it): start another.
    fn keeper_exited(&mut self, status: ExitStatus) {
        self.replace_keeper(&status.to_string());
    }

    /// Starts a new keeper, and tells it the workers there are now.
    fn replace_keeper(&mut self, why: &str) {
        self.keeper = None;
        if self.keeper_starts >= KEEPER_STARTS {
            error!(
                "the keeper {why}, and was started {KEEPER_STARTS} times: going on without one; \
                 if corral is killed, processes the workers started may outlive it"
            );
            return;
        }
        warn!("the keeper {why}: starting another");
        self.keeper_starts += 1;
        self.keeper = start_keeper(self.devnull.as_raw_fd());
        if let Some(k) = &mut self.keeper {
            for pid in self.machine.worker_pids() {
                if k.watch(pid).is_err() {
                    break;
                }
            }
        }
    }

    /// At exit: whatever is left of the workers' trees (orphans reparented to corral, which
    /// left their worker's process group) is killed with its process group, so that nothing of
    /// them outlives corral. Their own children come to corral in turn as they die (it is a
    /// subreaper), and go in the next pass; bounded in time.
    fn kill_leftovers(&mut self) {
        let me = std::process::id() as i32;
        let my_group = nix::unistd::getpgrp().as_raw();
        let keeper = self.keeper.as_ref().map(|k| k.pid);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let left: Vec<i32> = crate::procfs::children(me)
                .unwrap_or_else(|| {
                    let all = crate::procfs::all_stats();
                    all.iter().filter(|s| s.ppid == me).map(|s| s.pid).collect()
                })
                .into_iter()
                .filter(|&p| Some(p) != keeper)
                .collect();
            if left.is_empty() {
                return;
            }
            for pid in &left {
                if let Some(s) = crate::procfs::read_stat(*pid) {
                    if s.pgrp > 1 && s.pgrp != my_group && Some(s.pgrp) != keeper {
                        let _ = killpg(Pid::from_raw(s.pgrp), Signal::SIGKILL);
                    }
                }
                let _ = kill(Pid::from_raw(*pid), Signal::SIGKILL);
            }
            while let Ok(st) = waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                if st == WaitStatus::StillAlive {
                    break;
                }
            }
            if Instant::now() >= deadline {
                warn!(
                    "{} process(es) of the workers' trees would not go",
                    left.len()
                );
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// A reload was asked for (`reply`: who to answer; none for SIGHUP): the machine decides
    /// when the config is read, and who shares which reading (supervisor_load.rs).
    fn reload(&mut self, reply: Option<Reply>) {
        let systemd_waits = reply.as_ref().is_some_and(|r| r.systemd_waits);
        let request = reply.map(|tx| self.request(tx));
        self.step(Event::Reload {
            request,
            systemd_waits,
        });
    }

    /// `Action::Load`: reads the config on a thread of its own. Reading and checking a file is
    /// bounded, but the loop must go on feeding the watchdog, reaping and answering meanwhile.
    fn load(&mut self) {
        info!("reload: reading {}", self.config_path.display());
        let path = self.config_path.clone();
        let done = self.loaded_tx.clone();
        tokio::task::spawn_blocking(move || {
            let loaded = Config::load(&path);
            // What the load built and dropped (the whole document) goes back to the kernel:
            // else the thread's arena keeps it for good (spawn.rs).
            spawn::release_free_memory();
            // The machine asks for one reading at a time, and the channel holds one.
            let _ = done.try_send(loaded);
        });
    }

    /// The config a `Load` asked for was read: registered as a new generation, or refused
    /// (nothing changes); the machine answers whoever waited for it.
    fn loaded(&mut self, loaded: Result<Config, crate::config::ConfigError>) {
        let outcome = self.prepare(loaded).map_err(|e| {
            let msg = format!("reload refused, nothing changed:\n{e}");
            error!("{msg}");
            msg
        });
        self.step(Event::Loaded { outcome });
    }

    /// The generation of a config just read, with the parameters the machine needs.
    fn prepare(
        &mut self,
        loaded: Result<Config, crate::config::ConfigError>,
    ) -> Result<(u32, Params), Error> {
        let config = loaded?;
        let listeners = self.pool.set_for(&config)?;
        for w in self.pool.address_mismatches(&config) {
            warn!("{w}");
        }
        for w in listeners.notes() {
            warn!("{w}");
        }
        let workers = config.workers.resolve();
        let mut params = Params::from_config(&config, workers);
        params.balanced = listeners.balanced();
        // Said before the roll, whose new workers would otherwise fail with EMFILE.
        if let Some(w) = crate::nofile::check(workers, balanced_listeners(&listeners)) {
            warn!("{w}");
        }
        let generation = self
            .add_generation(config, listeners)
            .map_err(Error::Refused)?;
        Ok((generation, params))
    }

    /// Registers `config` as a new generation and asks the machine to roll to it.
    fn roll_to(
        &mut self,
        config: Config,
        listeners: Set,
        workers: u32,
        scope: Scope,
        reply: Option<Reply>,
    ) {
        let mut params = Params::from_config(&config, workers);
        params.balanced = listeners.balanced();
        // Said before the roll, whose new workers would otherwise fail with EMFILE.
        if let Some(w) = crate::nofile::check(workers, balanced_listeners(&listeners)) {
            warn!("{w}");
        }
        let generation = match self.add_generation(config, listeners) {
            Ok(g) => g,
            Err(e) => {
                let msg = format!("reload refused, nothing changed: {e}");
                error!("{msg}");
                if let Some(tx) = reply {
                    tx.send(Response::err(msg));
                }
                return;
            }
        };
        let systemd_waits = reply.as_ref().is_some_and(|r| r.systemd_waits);
        let request = reply.map(|tx| self.request(tx));
        self.step(Event::Roll {
            generation,
            params,
            scope,
            request,
            systemd_waits,
        });
    }

    fn request(&mut self, tx: Reply) -> RequestId {
        let id = self.next_request;
        self.next_request += 1;
        self.pending.insert(id, tx);
        id
    }

    fn control(&mut self, incoming: Incoming) {
        let Incoming { command, reply } = incoming;
        match command {
            Command::Status => {
                let snap = self.machine.snapshot(Instant::now());
                let mut r = Response::ok(format!("{} is {}", self.app, snap.state));
                let journal = self.output.is_journal();
                let generation = snap.generation;
                let mut status = StatusReply::new(&self.app, &self.config_path, snap, journal);
                if let Some(g) = self.gens.get(&generation) {
                    status.listeners = g.workers.listeners.status();
                }
                let (delivered, dropped) = self.bus.counts();
                status.bus = crate::control::BusCounts { delivered, dropped };
                status.upgraded =
                    self.last_upgrade
                        .as_ref()
                        .map(|(at, from)| crate::control::Upgraded {
                            at: *at,
                            from: from.clone(),
                            count: self.upgrades,
                        });
                r.status = Some(status);
                reply.send(r);
            }
            Command::Reload { mainpid } => {
                // systemd.exec(5): $MAINPID is set for ExecReload= and the other control
                // commands, the client passes it on; naming this process, it is the reload
                // systemd runs for this unit, and times.
                let mut reply = reply;
                reply.systemd_waits = self.systemd.is_some() && mainpid == Some(std::process::id());
                self.reload(Some(reply))
            }
            Command::Restart { worker, agent } => {
                // The newest config asked for, so that a restart never undoes a reload under
                // way; with no reload pending, the live count (a `corral scale` included).
                let latest = self.machine.latest_generation();
                let Some(g) = self.gens.get(&latest) else {
                    reply.send(Response::err("nothing is running"));
                    return;
                };
                let (config, listeners) = (g.workers.config.clone(), g.workers.listeners.clone());
                let workers = if latest == self.machine.active_generation() {
                    self.machine.desired()
                } else {
                    config.workers.resolve()
                };
                let scope = match (worker, agent) {
                    (_, true) => Scope::Agent,
                    (Some(n), false) => Scope::Slot(n),
                    (None, false) => Scope::All,
                };
                self.roll_to(config, listeners, workers, scope, Some(reply));
            }
            Command::Signal { signal, worker } => reply.send(self.signal_workers(&signal, worker)),
            // Taken by the loop before it comes here (runtime/upgrade.rs).
            Command::Upgrade => reply.send(Response::err("an upgrade in place is under way")),
            Command::Scale { workers } => {
                let target = match parse_scale(&workers, self.machine.desired()) {
                    Ok(n) => n,
                    Err(e) => {
                        reply.send(Response::err(e));
                        return;
                    }
                };
                let active = self.machine.active_generation();
                if let Some(g) = self.gens.get(&active) {
                    if let Some(w) =
                        crate::nofile::check(target, balanced_listeners(&g.workers.listeners))
                    {
                        warn!("{w}");
                    }
                }
                let request = Some(self.request(reply));
                self.step(Event::Scale {
                    workers: target,
                    request,
                });
            }
        }
    }
}

impl Loop {
    /// `corral signal`: the signal to each worker process (not its children: a worker that
    /// wants them to hear it passes it on, as a shell wrapper's trap does).
    fn signal_workers(&mut self, name: &str, worker: Option<u32>) -> Response {
        let signal = match crate::config::parse_signal(name) {
            Ok(s) => s,
            Err(e) => return Response::err(format!("cannot send {name:?}: {e}")),
        };
        let pids = match self.machine.slot_pids(worker) {
            Ok(p) => p,
            Err(e) => return Response::err(e),
        };
        let mut sent = Vec::new();
        for pid in pids {
            if kill(Pid::from_raw(pid), signal).is_ok() {
                sent.push(pid.to_string());
            }
        }
        let msg = format!(
            "sent {} to {} worker(s): pid {}",
            signal.as_str(),
            sent.len(),
            sent.join(", ")
        );
        info!("{msg}");
        Response::ok(msg)
    }
}

/// The inodes of a worker's listening sockets, which readiness mode `listen` looks for.
fn listen_inodes(
    config: &Config,
    sockets: &[std::rc::Rc<listen::ListenSocket>],
) -> std::collections::HashSet<u64> {
    if config.readiness.mode == ReadinessMode::Listen {
        crate::probe::inodes_of(sockets.iter().map(|s| &**s))
    } else {
        Default::default()
    }
}

/// How many of a generation's listeners are balanced: each is a socket per worker.
fn balanced_listeners(listeners: &Set) -> u32 {
    listeners.groups.iter().flatten().count() as u32
}

fn resolve(config: &Config, path: Option<&std::ffi::OsStr>) -> Result<PathBuf, String> {
    spawn::resolve_program(&config.command[0], path, config.directory.as_deref())
        .map_err(|e| e.to_string())
}

/// "4", "+2", "-1" against the current count.
pub fn parse_scale(arg: &str, current: u32) -> Result<u32, String> {
    let bad = || format!("cannot scale to {arg:?}: expected N, +N or -N");
    let n = if let Some(d) = arg.strip_prefix('+') {
        current.checked_add(d.parse().map_err(|_| bad())?)
    } else if let Some(d) = arg.strip_prefix('-') {
        current.checked_sub(d.parse().map_err(|_| bad())?)
    } else {
        Some(arg.parse().map_err(|_| bad())?)
    };
    match n {
        Some(n) if (1..=1024).contains(&n) => Ok(n),
        _ => Err(format!(
            "cannot scale to {arg}: the result must be 1..=1024 workers (now {current})"
        )),
    }
}

/// The worker a datagram's sender belongs to (see `Loop::sender`).
fn sender_of(machine: &Supervisor, pid: i32) -> Option<WorkerId> {
    if let Some(id) = machine.worker_by_pid(pid) {
        return Some(id);
    }
    let first = crate::procfs::read_stat(pid)?;
    let me = std::process::id() as i32;
    let parent_of = |p: i32| {
        if p == pid {
            Some(first.ppid)
        } else {
            crate::procfs::read_stat(p).map(|s| s.ppid)
        }
    };
    let is_worker = |p: i32| machine.worker_by_pid(p).is_some();
    let root = crate::procfs::ancestor_where(pid, me, parent_of, is_worker)
        .or_else(|| is_worker(first.pgrp).then_some(first.pgrp))?;
    machine.worker_by_pid(root)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_arguments() {
        assert_eq!(parse_scale("4", 2), Ok(4));
        assert_eq!(parse_scale("+3", 2), Ok(5));
        assert_eq!(parse_scale("-1", 2), Ok(1));
        assert!(parse_scale("-2", 2).unwrap_err().contains("1..=1024"));
        assert!(parse_scale("x", 2).unwrap_err().contains("expected N"));
        assert!(parse_scale("0", 2).is_err());
    }
}
