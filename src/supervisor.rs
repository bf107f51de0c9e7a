//! The decision core: a pure state machine, `step(event, now) -> actions`.
//!
//! Nothing here reads a clock, touches a process or a socket. The runtime feeds in what happened
//! (a child exited, a worker said `READY=1`, a deadline passed, a reload was asked for) with the
//! current time, and performs the actions that come back. That keeps every decision — when a
//! slot is ready, when the next batch of a roll starts, when a roll has failed, how long a crashed
//! slot waits — testable with a fake clock.
//!
//! Model: the app has `desired` *slots* (0..N-1, the `CORRAL_WORKER` a worker sees). A slot holds
//! at most one serving worker and, during a roll, at most one *incoming* replacement. A worker is
//! `Starting` until it is ready, `Ready`, then `Stopping` once corral asked it to go or gave up on
//! it. A slot with no worker waits out its backoff. Invariants a roll keeps:
//! - an old worker is asked to stop only after its replacement is ready, so capacity never drops;
//! - at most `batch` replacements are starting at once;
//! - a failed replacement aborts the roll, and every slot not yet replaced keeps its old worker.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::config::{Config, ReadinessMode, RestartPolicy};
use crate::notify::Notification;

/// Identifies a worker for its whole life; never reused (pids are).
pub type WorkerId = u64;
/// Identifies a control-socket request waiting for a roll to end.
pub type RequestId = u64;

/// Where a process sits: a worker's slot (its `CORRAL_WORKER`), or the app's one agent.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Seat {
    Slot(u32),
    Agent,
}

impl fmt::Display for Seat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Seat::Slot(n) => write!(f, "{n}"),
            Seat::Agent => f.write_str("agent"),
        }
    }
}

/// What the state machine needs from one generation's config.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Params {
    pub workers: u32,
    pub batch: u32,
    /// readiness mode `exec`: ready as soon as exec succeeded.
    pub exec_ready: bool,
    /// readiness mode `listen`: probe a starting worker's tree until it waits on a listener.
    pub probe_listeners: bool,
    pub ready_timeout: Duration,
    pub watchdog: Option<Duration>,
    #[serde(with = "crate::config::signal_number")]
    pub stop_signal: Signal,
    /// `stop.message`: a stop begins with the message alone; `stop_signal` follows only if the
    /// worker is still there after `stop_timeout` (PM2's `shutdown_with_message`).
    pub stop_message: bool,
    pub stop_timeout: Duration,
    /// Balanced: how long a draining worker's queue must stay empty before its stop begins
    /// (`stop.drain`).
    pub drain: Duration,
    pub policy: RestartPolicy,
    pub delay: Duration,
    pub max_delay: Duration,
    pub reset_after: Duration,
    /// A slot failing this many times within `failure_interval` ends the app (0: never).
    pub max_failures: u32,
    pub failure_interval: Duration,
    /// Exit codes after which a slot is not refilled (`restart.stop_exit_codes`).
    pub stop_exit_codes: Vec<i32>,
    /// `limits.max_memory`: a ready worker whose RSS is above it is replaced gracefully.
    pub max_memory: Option<u64>,
    /// Each worker has listening sockets of its own, which corral steers new connections to
    /// (balance.rs): a worker is drained (steered away from, its queue emptied) before it is
    /// asked to stop. Set by the runtime, which knows where the sockets came from.
    pub balanced: bool,
    /// The app's agent (`[agent]`), if it has one.
    pub agent: Option<Box<agent::AgentParams>>,
}

impl Params {
    /// The parts of `config` the decisions depend on; `workers` is the resolved count.
    pub fn from_config(config: &Config, workers: u32) -> Params {
        Params {
            workers,
            batch: config.reload.batch.slots(workers),
            exec_ready: config.readiness.mode == ReadinessMode::Exec,
            probe_listeners: config.readiness.mode == ReadinessMode::Listen,
            ready_timeout: config.readiness.timeout,
            watchdog: config.watchdog,
            stop_signal: config.stop.signal,
            stop_message: config.stop.message.is_some(),
            drain: config.stop.drain,
            stop_timeout: config.stop.timeout,
            policy: config.restart.policy,
            delay: config.restart.delay,
            max_delay: config.restart.max_delay,
            reset_after: config.restart.reset_after,
            max_failures: config.restart.max_failures,
            failure_interval: config.restart.interval,
            stop_exit_codes: config.restart.stop_exit_codes.clone(),
            max_memory: config.limits.max_memory,
            balanced: false,
            agent: config.agent_config().map(|own| {
                use std::hash::{Hash, Hasher};
                // What the agent runs with: its own settings, and the environment it gets,
                // which the app's `environment` (and its files, read again) is part of.
                let mut h = std::collections::hash_map::DefaultHasher::new();
                config.agent.hash(&mut h);
                own.environment.hash(&mut h);
                own.node.preload.hash(&mut h);
                Box::new(agent::AgentParams {
                    process: Params::from_config(&own, 1),
                    workers_wait: config.agent.as_ref().is_none_or(|a| a.workers_wait),
                    key: h.finish(),
                })
            }),
        }
    }
}

/// How a worker process ended, as waitpid(2) reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            ExitStatus::Code(c) => write!(f, "exited with code {c}"),
            ExitStatus::Signal {
                signal,
                core_dumped,
            } => {
                match Signal::try_from(signal) {
                    Ok(s) => write!(f, "killed by {}", s.as_str())?,
                    Err(_) => write!(f, "killed by signal {signal}")?,
                }
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

/// Which slots a roll replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Scope {
    /// Every slot, and the slot count becomes the new generation's `workers`.
    All,
    /// One slot (`corral restart --worker N`).
    Slot(u32),
    /// The agent alone (`corral restart --agent`).
    Agent,
}

/// Everything that can happen to the supervisor.
#[derive(Clone, Debug)]
pub enum Event {
    /// The first generation: fill every slot.
    Start { params: Params },
    /// A `Spawn` action succeeded: the child exec'd its program.
    Spawned { id: WorkerId, pid: i32 },
    /// A `Spawn` action failed before or at exec; `error` says why ("No such file or directory").
    /// `cannot_execute`: the program cannot be run as configured (not found, not executable,
    /// its directory missing), which trying again will not change; otherwise the failure may
    /// pass (out of processes, memory or file descriptors).
    SpawnFailed {
        id: WorkerId,
        error: String,
        cannot_execute: bool,
    },
    /// A `Spawn` action the runtime did not perform because [`Supervisor::spawn_wanted`] said
    /// it was no longer wanted (corral began to stop meanwhile).
    SpawnSkipped { id: WorkerId },
    /// The worker's process was reaped.
    Exited { id: WorkerId, status: ExitStatus },
    /// A datagram from the worker (its pid checked by the runtime).
    Notify { id: WorkerId, msg: Notification },
    /// The next deadline has passed (or any wake-up: it is harmless early).
    Tick,
    /// Replace workers with a new generation (reload: new config; restart: same config again).
    Roll {
        generation: u32,
        params: Params,
        scope: Scope,
        request: Option<RequestId>,
        /// systemd waits for this roll and times it: an `ExecReload=` (a timeout there fails
        /// the `systemctl reload` job), so a worker's `EXTEND_TIMEOUT_USEC=` is passed on.
        systemd_waits: bool,
    },
    /// Change the slot count of the running generation, now (`corral scale`).
    Scale {
        workers: u32,
        request: Option<RequestId>,
    },
    /// A reload was asked for: read the config again and roll to it (`request`: who to
    /// answer; none for SIGHUP). Reloads asked for while the config is being read share the
    /// next reading (supervisor_load.rs). `systemd_waits`: it is systemd's `ExecReload=`,
    /// which systemd times (see `Event::Roll`).
    Reload {
        request: Option<RequestId>,
        systemd_waits: bool,
    },
    /// The reading a `Load` action asked for ended: the new generation, registered with its
    /// parameters, or why the config was refused.
    Loaded {
        outcome: Result<(u32, Params), String>,
    },
    /// SIGTERM/SIGINT: drain; a second one kills at once.
    Stop,
    /// A worker's resident memory, as a `SampleMemory` action asked for.
    Memory { id: WorkerId, rss: u64 },
    /// A `Probe` found the worker's tree waiting for connections (`how` says where and how).
    Listening { id: WorkerId, how: String },
    /// Whether connections wait in the accept queues of each worker's own sockets, as a
    /// `QueueCheck` asked.
    Queued { waiting: Vec<(WorkerId, bool)> },
}

/// Messages for systemd (and, standalone, for the terminal).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Systemd {
    Ready,
    Reloading,
    Stopping,
    Status(String),
    /// `EXTEND_TIMEOUT_USEC=`: a worker's start or stop was extended, and with it corral's own
    /// start, `ExecReload=` or stop, which systemd times. Never more than
    /// [`EXTEND_FACTOR`] times the worker's phase timeout plus [`SYSTEMD_MARGIN`].
    Extend(Duration),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// What the runtime should do.
#[derive(Clone, Debug, PartialEq)]
pub enum Action {
    /// Fork and exec a worker for `slot` with `generation`'s config, then report `Spawned` or
    /// `SpawnFailed` for `id` before anything else.
    Spawn {
        id: WorkerId,
        slot: u32,
        generation: u32,
    },
    /// Fork and exec the app's agent with `generation`'s `[agent]`, then report `Spawned` or
    /// `SpawnFailed` for `id` before anything else.
    SpawnAgent {
        id: WorkerId,
        generation: u32,
    },
    /// Send `signal` to the worker; SIGKILL goes to its whole process group.
    Signal {
        id: WorkerId,
        pid: i32,
        signal: Signal,
    },
    /// Send the worker its generation's `stop.message` (over its Node.js IPC channel).
    Message {
        id: WorkerId,
        pid: i32,
    },
    /// Look whether these starting workers' trees wait for connections on a listener; report
    /// each that does as `Event::Listening`.
    Probe {
        workers: Vec<(WorkerId, i32)>,
    },
    /// Balanced listeners: new connections go to these workers' sockets only (none: the
    /// kernel's own choice among all). `serving` steps around a worker whose queue backs up,
    /// for even spreading; `keeping` does not, for source balancing, whose clients wait for
    /// their slot's worker. `slots` is the slot count, for sockets kept for a slot.
    Balance {
        serving: Vec<WorkerId>,
        keeping: Vec<WorkerId>,
        slots: u32,
    },
    /// Report whether connections wait in each of these workers' own sockets' queues, as one
    /// `Event::Queued`.
    QueueCheck {
        workers: Vec<WorkerId>,
    },
    /// Read and check the config file, off the loop, and register the new generation; then
    /// report `Event::Loaded`. Never asked for again before that.
    Load,
    /// Answer a control request that waited for a roll, a scale or a reload's reading.
    Reply {
        request: RequestId,
        result: Result<String, String>,
    },
    /// No worker or slot refers to this generation any more; its config can be dropped.
    Forget {
        generation: u32,
    },
    Systemd(Systemd),
    Log {
        level: Level,
        seat: Option<Seat>,
        pid: Option<i32>,
        generation: Option<u32>,
        message: String,
    },
    /// Read these workers' resident memory and report each as `Event::Memory`.
    SampleMemory {
        workers: Vec<(WorkerId, i32)>,
    },
    /// Nothing is left to supervise: exit the process with this code.
    Exit(i32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Starting,
    Ready,
    Stopping,
}

/// Why corral is stopping a worker, which decides what its exit means.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum StopKind {
    /// Asked to go (replaced, scaled away, shutdown): its exit is expected, nothing is restarted.
    Retire,
    /// Given up on (not ready in time, watchdog): its exit counts as a crash.
    Failed(String),
    /// A replacement killed because its roll failed: the old worker still holds the slot.
    Abort,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Worker {
    seat: Seat,
    generation: u32,
    pid: Option<i32>,
    state: WorkerState,
    #[serde(with = "state::instant")]
    started_at: Instant,
    #[serde(with = "state::opt_instant")]
    ready_at: Option<Instant>,
    /// Readiness timeout while starting, watchdog while ready, SIGKILL while stopping.
    #[serde(with = "state::opt_instant")]
    deadline: Option<Instant>,
    /// The latest `EXTEND_TIMEOUT_USEC=` may push `deadline` to in this phase (its start, or
    /// its stop): [`EXTEND_FACTOR`] times the phase's timeout after the phase began.
    #[serde(with = "state::instant")]
    extend_until: Instant,
    stop: Option<StopKind>,
    kill_sent: bool,
    /// The worker said `STOPPING=1` on its own.
    said_stopping: bool,
    /// Stopping with `stop.message`: the stop signal is still to come at the deadline.
    signal_pending: bool,
    /// readiness mode `listen`: when the next probe is due, and the wait after it.
    #[serde(with = "state::opt_instant")]
    probe_at: Option<Instant>,
    probe_every: Duration,
    /// Balanced: steered away from before its stop, until its queue has been empty a while.
    drain_pending: bool,
    #[serde(with = "state::opt_instant")]
    drain_empty_since: Option<Instant>,
    /// Balanced: its queue backs up (a stalled event loop); new connections go elsewhere.
    stalled: bool,
    /// Balanced: at how many checks in a row its queue was not empty.
    waiting_checks: u8,
    status: Option<String>,
    errno: Option<i32>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Slot {
    /// The generation a restart of this slot uses.
    generation: u32,
    worker: Option<WorkerId>,
    incoming: Option<WorkerId>,
    /// Set while the slot waits out its backoff.
    #[serde(with = "state::opt_instant")]
    retry_at: Option<Instant>,
    next_delay: Duration,
    restarts: u32,
    /// Scaled away: it goes once its worker is gone; highest slots only.
    removing: bool,
    /// After a failed replacement for memory: no new one before this (the slot's backoff).
    #[serde(with = "state::opt_instant")]
    replace_after: Option<Instant>,
    /// When its workers failed, within the last `restart.interval`.
    #[serde(with = "state::instants")]
    failures: VecDeque<Instant>,
    /// Failures in a row with no worker ready `restart.reset_after` in between, however far
    /// apart: a slow crash loop the interval cannot see.
    failures_in_a_row: u32,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Roll {
    generation: u32,
    scope: Scope,
    old_count: u32,
    new_count: u32,
    pending: VecDeque<u32>,
    in_flight: BTreeSet<u32>,
    draining: BTreeSet<WorkerId>,
    requests: Vec<RequestId>,
    /// An `ExecReload=` waits for it (see `Event::Roll`).
    systemd_waits: bool,
    failed: Option<String>,
    total: u32,
    replaced: u32,
    /// Surplus slots (shrink) have been told to go; the roll then waits for `draining`.
    settled: bool,
    /// What the roll does to the agent has been decided (supervisor_agent.rs): at its first
    /// step.
    agent_decided: bool,
    /// The roll replaces the agent: the generation whose agent ran before (none: the app had
    /// no agent), which runs again if the roll fails.
    agent_before: Option<Option<u32>>,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
struct Queued {
    generation: u32,
    params: Params,
    scope: Scope,
    requests: Vec<RequestId>,
    systemd_waits: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
enum Phase {
    Idle,
    Running,
    Stopping,
}

/// A read-only view for `corral status`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WorkerView {
    /// None: the agent.
    pub slot: Option<u32>,
    pub pid: Option<i32>,
    /// starting | ready | stopping | backoff
    pub state: &'static str,
    pub generation: u32,
    pub restarts: u32,
    pub uptime_s: Option<f64>,
    pub status: Option<String>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct RollView {
    pub generation: u32,
    pub replaced: u32,
    pub total: u32,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Snapshot {
    /// starting | running | reloading | stopping
    pub state: &'static str,
    pub generation: u32,
    pub desired: u32,
    pub ready: u32,
    pub restarts: u64,
    pub reload: Option<RollView>,
    pub workers: Vec<WorkerView>,
    pub agent: Option<WorkerView>,
}

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Supervisor {
    params: BTreeMap<u32, Params>,
    active: u32,
    desired: u32,
    slots: Vec<Slot>,
    workers: BTreeMap<WorkerId, Worker>,
    next_id: WorkerId,
    roll: Option<Roll>,
    queued: Option<Queued>,
    /// The config readings reloads wait for (supervisor_load.rs).
    loads: load::Loads,
    phase: Phase,
    announced_ready: bool,
    last_status: String,
    restarts: u64,
    last_failed: bool,
    /// The exit code once the stop is done: 1 when corral gave up on the app.
    stop_code: i32,
    /// When memory is next sampled (only while some generation has `limits.max_memory`).
    #[serde(with = "state::opt_instant")]
    next_sample: Option<Instant>,
    /// Balanced: the workers new connections go to, and the slot count, as last announced.
    serving: (Vec<WorkerId>, Vec<WorkerId>, u32),
    /// Balanced: when the accept queues are next looked at.
    #[serde(with = "state::opt_instant")]
    next_queue_check: Option<Instant>,
    /// Connections waited at a serving worker at the last queue check.
    queues_busy: bool,
    /// The app's agent, if it has one (supervisor_agent.rs).
    agent: Option<agent::AgentSeat>,
    /// What a step returns: empty between steps.
    #[serde(skip)]
    out: Vec<Action>,
}

/// However many `EXTEND_TIMEOUT_USEC=` a worker sends, a phase of its life (its start, its
/// stop) lasts at most this many times the phase's timeout (`readiness.timeout`,
/// `stop.timeout`), counted from the phase's beginning: timeouts cannot be extended without
/// bound.
pub const EXTEND_FACTOR: u32 = 10;
/// What corral adds to a worker's extended deadline when it asks systemd to wait for it.
pub const SYSTEMD_MARGIN: Duration = Duration::from_secs(10);

/// How often workers' memory is checked against `limits.max_memory`.
pub const MEMORY_SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// readiness mode `listen`: the first probe this long after exec, each next one twice as long
/// after the last, up to [`PROBE_MAX`]. A program that is up at once is seen within
/// milliseconds; one that imports for seconds is looked at five times a second.
pub const PROBE_FIRST: Duration = Duration::from_millis(10);
pub const PROBE_MAX: Duration = Duration::from_millis(200);

impl Default for Supervisor {
    fn default() -> Self {
        Self::new()
    }
}

impl Supervisor {
    pub fn new() -> Supervisor {
        Supervisor {
            params: BTreeMap::new(),
            active: 0,
            desired: 0,
            slots: Vec::new(),
            workers: BTreeMap::new(),
            next_id: 1,
            roll: None,
            queued: None,
            loads: Default::default(),
            phase: Phase::Idle,
            announced_ready: false,
            last_status: String::new(),
            restarts: 0,
            last_failed: false,
            next_sample: None,
            stop_code: 0,
            serving: (Vec::new(), Vec::new(), 0),
            next_queue_check: None,
            queues_busy: false,
            agent: None,
            out: Vec::new(),
        }
    }

    /// Feeds one event in; returns what to do, in order.
    pub fn step(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::Start { params } => self.on_start(params, now),
            Event::Spawned { id, pid } => self.on_spawned(id, pid, now),
            Event::SpawnFailed {
                id,
                error,
                cannot_execute,
            } => self.on_gone(id, Gone::SpawnFailed(error, cannot_execute), now),
            Event::SpawnSkipped { id } => {
                // Only a worker that was not wanted any more; never forked, so nothing to wait for.
                if !self.spawn_wanted(id) {
                    self.on_gone(id, Gone::Skipped, now);
                }
            }
            Event::Exited { id, status } => self.on_gone(id, Gone::Exited(status), now),
            Event::Notify { id, msg } => self.on_notify(id, msg, now),
            Event::Tick => self.on_tick(now),
            Event::Roll {
                generation,
                params,
                scope,
                request,
                systemd_waits,
            } => self.on_roll(generation, params, scope, request, systemd_waits),
            Event::Scale { workers, request } => self.on_scale(workers, request, now),
            Event::Reload {
                request,
                systemd_waits,
            } => self.on_reload(request, systemd_waits),
            Event::Loaded { outcome } => self.on_loaded(outcome),
            Event::Stop => self.on_stop(now),
            Event::Memory { id, rss } => self.on_memory(id, rss, now),
            Event::Listening { id, how } => self.on_listening(id, how, now),
            Event::Queued { waiting } => self.on_queues(waiting, now),
        }
        self.settle(now);
        std::mem::take(&mut self.out)
    }

    /// The earliest time at which `Tick` has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        // A probe is due only for a worker still starting, whatever else forgot to clear it.
        let workers = self
            .workers
            .values()
            .flat_map(|w| {
                let probe = w.probe_at.filter(|_| w.state == WorkerState::Starting);
                [w.deadline, probe]
            })
            .flatten();
        let slots = self
            .slots
            .iter()
            .filter_map(|s| s.retry_at)
            .chain(self.agent_retry_at());
        let timers = [self.next_sample, self.next_queue_check]
            .into_iter()
            .flatten();
        workers.chain(slots).chain(timers).min()
    }

    /// Whether a `Spawn` action is still wanted when the runtime comes to it: the actions of
    /// one step are performed in order, and an earlier one's answer may have made corral stop
    /// (a program that cannot be executed, at start), so that the workers after it would only
    /// be forked to be stopped. One not wanted is reported as `Event::SpawnSkipped`.
    pub fn spawn_wanted(&self, id: WorkerId) -> bool {
        self.workers
            .get(&id)
            .is_some_and(|w| w.pid.is_none() && w.state == WorkerState::Starting)
    }

    /// Which worker a pid belongs to (for exits and notify datagrams).
    pub fn worker_by_pid(&self, pid: i32) -> Option<WorkerId> {
        self.workers
            .iter()
            .find(|(_, w)| w.pid == Some(pid))
            .map(|(&id, _)| id)
    }

    /// Whether a slot is there and has no worker at all (one of its workers crashed, and it
    /// waits to be refilled).
    pub fn slot_is_empty(&self, slot: u32) -> bool {
        self.slots
            .get(slot as usize)
            .is_some_and(|s| !s.removing && s.worker.is_none() && s.incoming.is_none())
    }

    /// The pids of every worker there is.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.workers.values().filter_map(|w| w.pid).collect()
    }

    /// The pids of the workers of `slot` (its serving one and a replacement starting), or of
    /// every slot, in slot order; `Err` names the slots there are.
    pub fn slot_pids(&self, slot: Option<u32>) -> Result<Vec<i32>, String> {
        if let Some(n) = slot {
            self.check_scope(Scope::Slot(n))?;
        }
        let mut ws: Vec<&Worker> = self
            .workers
            .values()
            .filter(|w| match w.seat {
                Seat::Slot(s) => slot.is_none_or(|n| s == n),
                Seat::Agent => false,
            })
            .collect();
        ws.sort_by_key(|w| (w.seat, w.generation));
        Ok(ws.into_iter().filter_map(|w| w.pid).collect())
    }

    /// The generation whose config sets the slot count and policies now.
    pub fn active_generation(&self) -> u32 {
        self.active
    }

    /// The newest config asked for: the queued roll's, else the running roll's, else the
    /// active one. A restart replays this one, so that it never undoes a reload under way.
    pub fn latest_generation(&self) -> u32 {
        self.queued
            .as_ref()
            .map(|q| q.generation)
            .or(self.roll.as_ref().map(|r| r.generation))
            .unwrap_or(self.active)
    }

    /// The slot count now (what `corral scale +N` is relative to).
    pub fn desired(&self) -> u32 {
        self.desired
    }

    #[cfg(test)]
    pub fn is_rolling(&self) -> bool {
        self.roll.is_some()
    }

    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let mut workers = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let i = i as u32;
            let mut any = false;
            for id in [slot.worker, slot.incoming].into_iter().flatten() {
                any = true;
                workers.push(self.view(id, slot, now));
            }
            if !any && slot.retry_at.is_some() {
                workers.push(WorkerView {
                    slot: Some(i),
                    pid: None,
                    state: "backoff",
                    generation: slot.generation,
                    restarts: slot.restarts,
                    uptime_s: None,
                    status: None,
                });
            }
        }
        // Replaced workers still draining belong to no slot field but are still running.
        for (&id, w) in &self.workers {
            let Seat::Slot(s) = w.seat else { continue };
            let slot = &self.slots[s as usize];
            if slot.worker != Some(id) && slot.incoming != Some(id) {
                workers.push(self.view(id, slot, now));
            }
        }
        workers.sort_by_key(|w| (w.slot, w.generation));
        Snapshot {
            state: match self.phase {
                Phase::Idle => "starting",
                Phase::Stopping => "stopping",
                Phase::Running if self.roll.is_some() => "reloading",
                Phase::Running if !self.announced_ready => "starting",
                Phase::Running => "running",
            },
            generation: self.active,
            desired: self.desired,
            ready: self.ready_count(),
            restarts: self.restarts,
            reload: self.roll.as_ref().map(|r| RollView {
                generation: r.generation,
                replaced: r.replaced,
                total: r.total,
            }),
            workers,
            agent: self.agent_view(now),
        }
    }

    fn view(&self, id: WorkerId, slot: &Slot, now: Instant) -> WorkerView {
        let w = &self.workers[&id];
        let state = if w.said_stopping {
            WorkerState::Stopping
        } else {
            w.state
        };
        WorkerView {
            slot: match w.seat {
                Seat::Slot(n) => Some(n),
                Seat::Agent => None,
            },
            pid: w.pid,
            state: match state {
                WorkerState::Starting => "starting",
                WorkerState::Ready => "ready",
                WorkerState::Stopping if w.drain_pending => "draining",
                WorkerState::Stopping => "stopping",
            },
            generation: w.generation,
            restarts: slot.restarts,
            uptime_s: Some(now.saturating_duration_since(w.started_at).as_secs_f64()),
            status: w.status.clone(),
        }
    }

    // ---- events ----

    fn on_start(&mut self, params: Params, now: Instant) {
        if self.phase != Phase::Idle {
            return;
        }
        self.phase = Phase::Running;
        self.active = 1;
        self.desired = params.workers;
        let delay = params.delay;
        self.params.insert(1, params);
        let wait = self.start_agent(now);
        for i in 0..self.desired {
            self.slots.push(Slot::new(1, delay));
            if !wait {
                self.spawn(Seat::Slot(i), false, 1, now);
            }
        }
    }

    fn on_spawned(&mut self, id: WorkerId, pid: i32, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        w.pid = Some(pid);
        let (seat, generation) = (w.seat, w.generation);
        if w.state == WorkerState::Stopping {
            // Given up on before its pid was known (a roll failed meanwhile): finish the job.
            if w.kill_sent {
                let signal = Signal::SIGKILL;
                self.out.push(Action::Signal { id, pid, signal });
            } else {
                self.first_stop_step(id);
            }
            return;
        }
        self.log(
            Level::Info,
            Some(seat),
            Some(pid),
            Some(generation),
            "started".into(),
        );
        let p = params_for(&self.params, seat, generation);
        if p.exec_ready {
            self.become_ready(id, now);
        } else if p.probe_listeners {
            let w = self.workers.get_mut(&id).expect("worker exists");
            w.probe_at = Some(now + PROBE_FIRST);
            w.probe_every = PROBE_FIRST;
        }
    }

    fn on_gone(&mut self, id: WorkerId, how: Gone, now: Instant) {
        let Some(w) = self.workers.remove(&id) else {
            return;
        };
        // Whatever role it had, a worker a roll waits for is no longer there to wait for.
        if let Some(roll) = &mut self.roll {
            roll.draining.remove(&id);
        }
        let uptime = now.saturating_duration_since(w.started_at);
        let expected = matches!(w.stop, Some(StopKind::Retire | StopKind::Abort));
        let failed = match (&w.stop, &how) {
            (Some(StopKind::Failed(_)), _) => true,
            (_, Gone::SpawnFailed(..)) => true,
            (_, Gone::Skipped) => false,
            (_, Gone::Exited(st)) => !st.success() || w.ready_at.is_none(),
        };
        let what = match &how {
            Gone::SpawnFailed(e, _) => format!("failed to start: {e}"),
            Gone::Skipped => String::new(),
            Gone::Exited(st) => {
                let mut m = format!("{st} after {}", human(uptime));
                if let Some(e) = w.errno {
                    m += &format!(
                        " (it reported ERRNO={e}: {})",
                        nix::errno::Errno::from_raw(e)
                    );
                }
                if w.ready_at.is_none() && !expected {
                    m += " before it was ready";
                }
                m
            }
        };
        let level = if expected || !failed {
            Level::Info
        } else {
            Level::Error
        };
        // A worker never forked has nothing to report.
        if !matches!(how, Gone::Skipped) {
            self.log(level, Some(w.seat), w.pid, Some(w.generation), what.clone());
        }
        let gone = Ended {
            how,
            failed,
            expected,
            what,
        };
        let s = match w.seat {
            Seat::Slot(s) => s as usize,
            Seat::Agent => return self.agent_gone(id, &w, gone, now),
        };

        let slot = &mut self.slots[s];
        if slot.incoming == Some(id) {
            slot.incoming = None;
            let slot_has_worker = slot.worker.is_some();
            if let Some(roll) = &mut self.roll {
                roll.in_flight.remove(&(s as u32));
                if roll.failed.is_none() {
                    let reason = match &w.stop {
                        Some(StopKind::Failed(r)) => r.clone(),
                        _ => gone.what,
                    };
                    self.fail_roll(
                        format!("slot {s}: the generation {} worker {reason}", w.generation),
                        now,
                    );
                }
            }
            // A slot that had nothing serving (it was in backoff) goes back to its old plan.
            if !slot_has_worker && self.phase == Phase::Running && !self.slots[s].removing {
                self.schedule_restart(w.seat, None, now);
            }
            // A replacement for memory that failed: the old worker serves on; the next try
            // waits out the slot's backoff, doubling as crashes do.
            if slot_has_worker && self.roll.is_none() && w.stop != Some(StopKind::Abort) {
                let slot = &mut self.slots[s];
                let p = &self.params[&slot.generation];
                let wait = slot.next_delay;
                slot.next_delay = (wait * 2).min(p.max_delay);
                slot.replace_after = Some(now + wait);
                self.log(
                    Level::Warn,
                    Some(w.seat),
                    None,
                    None,
                    format!("its replacement failed; the next try waits {}", human(wait)),
                );
            }
            return;
        }
        if slot.worker == Some(id) {
            slot.worker = None;
            self.refill(&w, gone, now);
        }
        // Otherwise: a replaced or retired worker finished draining.
    }

    /// The process serving a seat is gone: it is started again now (it was retired and is
    /// wanted again), after its backoff, or not (a crash loop ends the app; the restart policy
    /// or `restart.stop_exit_codes` may say no).
    fn refill(&mut self, w: &Worker, gone: Ended, now: Instant) {
        let seat = w.seat;
        let ready_for = w.ready_at.map(|t| now.saturating_duration_since(t));
        let slot = seat_slot(&mut self.slots, &mut self.agent, seat);
        if self.phase != Phase::Running || slot.removing {
            return;
        }
        if gone.expected {
            // Retired, then wanted again (scaled back up while it drained): refill at once.
            if slot.incoming.is_none() {
                let gen = slot.generation;
                self.spawn(seat, false, gen, now);
            }
            return;
        }
        // A program that cannot be executed, at the app's start: nothing will change by
        // trying again. A failure that may pass (EAGAIN, ENOMEM, EMFILE) backs off as a
        // crash does, and counts towards restart.max_failures.
        if let Gone::SpawnFailed(e, true) = &gone.how {
            if !self.announced_ready && self.roll.is_none() {
                self.give_up_app(format!("cannot start the app: {e}"), now);
                return;
            }
        }
        let p = params_for(&self.params, seat, slot.generation);
        let (policy, reset_after) = (p.policy, p.reset_after);
        if let Gone::Exited(ExitStatus::Code(c)) = gone.how {
            if p.stop_exit_codes.contains(&c) {
                self.last_failed = false;
                self.log(
                    Level::Info,
                    Some(seat),
                    None,
                    None,
                    format!("exit code {c} is one of restart.stop_exit_codes: not restarted"),
                );
                return;
            }
        }
        // A SIGKILL corral did not send, to a worker that was serving: the OOM killer, or an
        // operator's `kill -9`. It is replaced as any failed worker is, but says nothing of
        // whether the program can run, so it does not count towards a crash loop.
        let killed_from_outside = w.ready_at.is_some()
            && !w.kill_sent
            && matches!(gone.how, Gone::Exited(ExitStatus::Signal { signal, .. })
                if signal == Signal::SIGKILL as i32);
        if gone.failed && killed_from_outside {
            self.log(
                Level::Warn,
                Some(seat),
                w.pid,
                Some(w.generation),
                "the SIGKILL was not corral's (the OOM killer, or an operator?): not \
                 counted towards restart.max_failures"
                    .into(),
            );
        }
        if gone.failed && !killed_from_outside {
            if let Some(reason) = self.crash_loop(seat, ready_for, now) {
                let last = match &w.stop {
                    Some(StopKind::Failed(why)) => why,
                    _ => &gone.what,
                };
                let reason = format!(
                    "{reason} (the last: {last}): giving up on the app \
                     (restart.max_failures)"
                );
                self.give_up_app(reason, now);
                return;
            }
        } else if ready_for.is_some_and(|d| d >= reset_after) {
            seat_slot(&mut self.slots, &mut self.agent, seat).failures_in_a_row = 0;
        }
        self.last_failed = gone.failed;
        let restart = match policy {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => gone.failed,
            RestartPolicy::Never => false,
        };
        if seat_slot(&mut self.slots, &mut self.agent, seat)
            .incoming
            .is_some()
        {
            // Its replacement is already starting and will take the slot.
            return;
        }
        if restart {
            self.schedule_restart(seat, ready_for, now);
        } else {
            let policy = match policy {
                RestartPolicy::Always => "always",
                RestartPolicy::OnFailure => "on-failure",
                RestartPolicy::Never => "never",
            };
            self.log(
                Level::Warn,
                Some(seat),
                None,
                None,
                format!("not restarted (restart policy {policy})"),
            );
        }
    }

    /// Counts a failure of a slot's worker (`ready_for`: how long it had been ready); says
    /// why the slot is in a crash loop, if it now is: `restart.max_failures` failures within
    /// `restart.interval`, or as many in a row with no worker ready `restart.reset_after` in
    /// between (the backoff's own test of a worker that works), however slowly they come:
    /// a worker that is never ready in time, or a long `restart.delay`, fails fewer times
    /// than the limit in any one interval, and would go on for ever.
    fn crash_loop(
        &mut self,
        seat: Seat,
        ready_for: Option<Duration>,
        now: Instant,
    ) -> Option<String> {
        let s = seat_slot(&mut self.slots, &mut self.agent, seat);
        let p = params_for(&self.params, seat, s.generation);
        let who = match seat {
            Seat::Slot(n) => format!("slot {n}"),
            Seat::Agent => "the agent".to_string(),
        };
        if p.max_failures == 0 {
            return None;
        }
        if ready_for.is_some_and(|d| d >= p.reset_after) {
            s.failures_in_a_row = 0;
        }
        // Bounded: it stops counting at the limit.
        s.failures_in_a_row = (s.failures_in_a_row + 1).min(p.max_failures);
        s.failures.push_back(now);
        while s
            .failures
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) > p.failure_interval)
        {
            s.failures.pop_front();
        }
        // Bounded: never more than the limit are kept.
        while s.failures.len() > p.max_failures as usize {
            s.failures.pop_front();
        }
        if s.failures.len() >= p.max_failures as usize {
            return Some(format!(
                "{who} failed {} times within {}",
                p.max_failures,
                human(p.failure_interval)
            ));
        }
        if s.failures_in_a_row >= p.max_failures {
            return Some(format!(
                "{who} failed {} times in a row, never ready for {} in between",
                p.max_failures,
                human(p.reset_after)
            ));
        }
        None
    }

    /// The app cannot be kept running: everything stops, and corral exits 1, so that what
    /// watches it (systemd's Restart=, StartLimitBurst=, OnFailure=) takes over.
    fn give_up_app(&mut self, reason: String, now: Instant) {
        self.log(Level::Error, None, None, None, reason);
        self.stop_code = 1;
        self.last_failed = true;
        self.on_stop(now);
    }

    fn on_notify(&mut self, id: WorkerId, msg: Notification, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        let p = params_for(&self.params, w.seat, w.generation);
        if let Some(status) = msg.status {
            w.status = Some(status);
        }
        if msg.errno.is_some() {
            w.errno = msg.errno;
        }
        if let Some(ext) = msg.extend_timeout {
            // sd_notify(3): extends the current start or stop timeout to at least now + ext.
            let extendable = w.state == WorkerState::Starting
                || (w.state == WorkerState::Stopping
                    && !w.kill_sent
                    && !w.drain_pending
                    && w.deadline.is_some());
            if extendable {
                // Never past the phase's ceiling (EXTEND_FACTOR): a worker may keep extending
                // while it makes progress, but neither one message (even
                // EXTEND_TIMEOUT_USEC=18446744073709551615) nor a stream of them lifts the
                // deadline.
                let ext = ext.min(w.extend_until.saturating_duration_since(now));
                w.deadline = w.deadline.max(Some(now + ext));
                let until = w.deadline.expect("just set");
                // systemd times corral's own start, its stop, and an ExecReload= it waits for:
                // let it wait for the worker too (sd_notify(3)). Not otherwise: systemd applies
                // the extension to its watchdog timer as well (service_extend_timeout), which
                // would only delay its noticing a hung corral.
                let roll_timed = self.roll.as_ref().is_some_and(|r| r.systemd_waits)
                    || self.queued.as_ref().is_some_and(|q| q.systemd_waits);
                let timed = self.phase == Phase::Stopping || !self.announced_ready || roll_timed;
                if timed {
                    let wait = until.saturating_duration_since(now) + SYSTEMD_MARGIN;
                    self.out.push(Action::Systemd(Systemd::Extend(wait)));
                }
            }
        }
        if msg.watchdog_ping && w.state == WorkerState::Ready {
            w.deadline = p.watchdog.map(|d| now + d);
        }
        if msg.stopping && w.state == WorkerState::Ready {
            w.said_stopping = true;
        }
        // In mode `listen` the probe alone decides: the program's own READY=1 is what that
        // mode is chosen against (gunicorn's arbiter says it before any worker has booted).
        if msg.ready && w.state == WorkerState::Starting && !p.probe_listeners {
            self.become_ready(id, now);
        }
        if msg.watchdog_trigger {
            self.give_up(id, "asked for it with WATCHDOG=trigger".into(), now);
        }
    }

    /// A ready worker above `limits.max_memory` is replaced the graceful way: a new worker for
    /// its slot first, the old one stopped once that is ready (as one step of a roll).
    fn on_memory(&mut self, id: WorkerId, rss: u64, now: Instant) {
        let Some(w) = self.workers.get(&id) else {
            return;
        };
        let Some(limit) = self.params[&w.generation].max_memory else {
            return;
        };
        // limits.max_memory is the workers'.
        let Seat::Slot(s) = w.seat else { return };
        let slot = &self.slots[s as usize];
        // At most reload.batch replacements at a time, as in a roll: each is a second process
        // with its memory until the old one is gone.
        let replacing = self.slots.iter().filter(|s| s.incoming.is_some()).count() as u32;
        let batch = self.params[&w.generation].batch.max(1);
        let replaceable = w.state == WorkerState::Ready
            && slot.worker == Some(id)
            && slot.incoming.is_none()
            && !slot.removing
            && slot.replace_after.is_none_or(|t| t <= now)
            && self.roll.is_none()
            && replacing < batch
            && self.phase == Phase::Running;
        if rss <= limit || !replaceable {
            return;
        }
        let (pid, gen) = (w.pid, w.generation);
        self.log(
            Level::Warn,
            Some(w.seat),
            pid,
            Some(gen),
            format!(
                "uses {} MiB, above limits.max_memory ({} MiB): replacing it",
                rss >> 20,
                limit >> 20
            ),
        );
        let slot = &mut self.slots[s as usize];
        slot.restarts += 1;
        self.restarts += 1;
        self.spawn(Seat::Slot(s), true, gen, now);
    }

    fn on_listening(&mut self, id: WorkerId, how: String, now: Instant) {
        let starting = self
            .workers
            .get(&id)
            .is_some_and(|w| w.state == WorkerState::Starting);
        if starting {
            self.become_ready_because(id, Some(how), now);
        }
    }

    fn on_tick(&mut self, now: Instant) {
        self.queue_check_due(now);
        if self.next_sample.is_some_and(|t| t <= now) {
            self.next_sample = None;
            let workers: Vec<(WorkerId, i32)> = self
                .workers
                .iter()
                .filter(|(_, w)| w.state == WorkerState::Ready)
                .filter(|(_, w)| self.params[&w.generation].max_memory.is_some())
                .filter_map(|(&id, w)| w.pid.map(|p| (id, p)))
                .collect();
            if !workers.is_empty() {
                self.out.push(Action::SampleMemory { workers });
            }
        }
        let mut probes = Vec::new();
        for (&id, w) in &mut self.workers {
            if w.probe_at.is_some_and(|t| t <= now) && w.state == WorkerState::Starting {
                w.probe_every = (w.probe_every * 2).min(PROBE_MAX);
                w.probe_at = Some(now + w.probe_every);
                probes.extend(w.pid.map(|pid| (id, pid)));
            }
        }
        if !probes.is_empty() {
            self.out.push(Action::Probe { workers: probes });
        }
        let due: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.deadline.is_some_and(|d| d <= now))
            .map(|(&id, _)| id)
            .collect();
        for id in due {
            let w = &self.workers[&id];
            let p = params_for(&self.params, w.seat, w.generation);
            match w.state {
                WorkerState::Starting => {
                    let reason = format!("was not ready within {}", human(p.ready_timeout));
                    self.give_up(id, reason, now);
                }
                WorkerState::Ready => {
                    let wd = p.watchdog.unwrap_or_default();
                    let reason = format!("sent no WATCHDOG=1 for {}", human(wd));
                    self.give_up(id, reason, now);
                }
                WorkerState::Stopping if w.drain_pending => {
                    let (slot, pid, gen) = (w.seat, w.pid, w.generation);
                    let msg = format!(
                        "its queue did not stay empty within {} of its drain: stopping it anyway",
                        human(p.drain + DRAIN_MAX)
                    );
                    self.log(Level::Warn, Some(slot), pid, Some(gen), msg);
                    self.end_drain(id, now);
                }
                WorkerState::Stopping if w.signal_pending => {
                    // stop.message was not enough: now the stop signal, and its own timeout.
                    let (slot, pid, gen) = (w.seat, w.pid, w.generation);
                    let (signal, timeout) = (p.stop_signal, p.stop_timeout);
                    let msg = format!(
                        "did not exit on stop.message in time: sending {}",
                        signal.as_str()
                    );
                    self.log(Level::Warn, Some(slot), pid, Some(gen), msg);
                    let w = self.workers.get_mut(&id).expect("worker exists");
                    w.signal_pending = false;
                    w.deadline = Some(now + timeout);
                    if let Some(pid) = pid {
                        self.out.push(Action::Signal { id, pid, signal });
                    }
                }
                WorkerState::Stopping => {
                    let (slot, pid, gen) = (w.seat, w.pid, w.generation);
                    let msg = format!(
                        "still running {} after stop: killing",
                        human(p.stop_timeout)
                    );
                    self.log(Level::Warn, Some(slot), pid, Some(gen), msg);
                    self.kill(id);
                }
            }
        }
        if self.phase != Phase::Running {
            return;
        }
        self.agent_tick(now);
        for i in 0..self.slots.len() {
            let slot = &mut self.slots[i];
            if slot.retry_at.is_some_and(|t| t <= now) {
                slot.retry_at = None;
                let gated = self.agent.as_ref().is_some_and(|a| a.gate);
                if slot.worker.is_none() && slot.incoming.is_none() && !slot.removing && !gated {
                    let gen = slot.generation;
                    self.spawn(Seat::Slot(i as u32), false, gen, now);
                }
            }
        }
    }

    fn on_roll(
        &mut self,
        generation: u32,
        params: Params,
        scope: Scope,
        request: Option<RequestId>,
        systemd_waits: bool,
    ) {
        self.roll_for(
            generation,
            params,
            scope,
            request.into_iter().collect(),
            systemd_waits,
        );
    }

    /// A roll to `generation` that `requests` wait for: begun, or queued behind the one under
    /// way, or refused.
    fn roll_for(
        &mut self,
        generation: u32,
        params: Params,
        scope: Scope,
        requests: Vec<RequestId>,
        systemd_waits: bool,
    ) {
        if self.phase != Phase::Running {
            for r in requests {
                self.reply(r, Err("corral is stopping".into()));
            }
            self.out.push(Action::Forget { generation });
            return;
        }
        if let Err(e) = self.check_scope(scope) {
            for r in requests {
                self.reply(r, Err(e.clone()));
            }
            self.out.push(Action::Forget { generation });
            return;
        }
        if self.roll.is_some() {
            // Coalesce: one more roll, with the newest config, for everyone who asked meanwhile.
            let q = self.queued.get_or_insert_with(|| Queued {
                generation,
                params: params.clone(),
                scope,
                requests: Vec::new(),
                systemd_waits: false,
            });
            q.systemd_waits |= systemd_waits;
            if q.scope != scope {
                q.scope = Scope::All;
            }
            if q.generation != generation {
                // The config this one supersedes will never run.
                self.out.push(Action::Forget {
                    generation: q.generation,
                });
            }
            q.generation = generation;
            q.params = params;
            q.requests.extend(requests);
            self.log(
                Level::Info,
                None,
                None,
                Some(generation),
                "a reload is under way: this one follows it, with the newest config".into(),
            );
            return;
        }
        self.begin_roll(generation, params, scope, requests, systemd_waits);
    }

    fn check_scope(&self, scope: Scope) -> Result<(), String> {
        match scope {
            Scope::Slot(n) if n >= self.desired => Err(format!(
                "there is no worker {n} (slots are 0..{})",
                self.desired
            )),
            Scope::Agent if self.agent.as_ref().is_none_or(|a| a.slot.removing) => {
                Err("the app has no agent".into())
            }
            _ => Ok(()),
        }
    }

    fn on_scale(&mut self, workers: u32, request: Option<RequestId>, now: Instant) {
        if self.phase != Phase::Running || self.roll.is_some() || workers == 0 {
            let why = if workers == 0 {
                "cannot scale to 0 workers (stop the service instead)"
            } else if self.phase != Phase::Running {
                "corral is stopping"
            } else {
                "a reload is under way; scale after it"
            };
            if let Some(r) = request {
                self.reply(r, Err(why.into()));
            }
            return;
        }
        let old = self.desired;
        self.desired = workers;
        let gen = self.active;
        let delay = self.params[&gen].delay;
        // Before the agent's first readiness, new slots wait for it as the others do.
        let gated = self.agent.as_ref().is_some_and(|a| a.gate);
        for i in 0..workers.max(old) {
            if i < workers {
                if i as usize >= self.slots.len() {
                    self.slots.push(Slot::new(gen, delay));
                }
                let slot = &mut self.slots[i as usize];
                if slot.removing {
                    slot.removing = false;
                    if slot.worker.is_none() && slot.incoming.is_none() && !gated {
                        self.spawn(Seat::Slot(i), false, gen, now);
                    }
                } else if i >= old && !gated {
                    self.spawn(Seat::Slot(i), false, gen, now);
                }
            } else {
                self.remove_slot(i, now);
            }
        }
        self.log(
            Level::Info,
            None,
            None,
            None,
            format!("scaled from {old} to {workers} workers"),
        );
        if let Some(r) = request {
            self.reply(
                r,
                Ok(format!(
                    "scaled from {old} to {workers} workers (until the next reload, which \
                     applies the config's `workers` again)"
                )),
            );
        }
    }

    fn on_stop(&mut self, now: Instant) {
        if self.phase == Phase::Stopping {
            self.log(
                Level::Warn,
                None,
                None,
                None,
                "second stop request: killing every worker now".into(),
            );
            let ids: Vec<WorkerId> = self.workers.keys().copied().collect();
            for id in ids {
                self.kill(id);
            }
            return;
        }
        self.phase = Phase::Stopping;
        self.out.push(Action::Systemd(Systemd::Stopping));
        let mut requests = Vec::new();
        if let Some(roll) = self.roll.take() {
            requests.extend(roll.requests);
        }
        if let Some(q) = self.queued.take() {
            requests.extend(q.requests);
        }
        requests.extend(self.waiting_for_loads());
        for r in requests {
            self.reply(r, Err("corral is stopping".into()));
        }
        for slot in &mut self.slots {
            slot.retry_at = None;
        }
        // The workers first; the agent once they are gone (settle_agent).
        let ids: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| w.seat != Seat::Agent)
            .map(|(&id, _)| id)
            .collect();
        for id in ids {
            // One that was draining is asked to stop now with the others.
            if self.workers[&id].drain_pending {
                self.end_drain(id, now);
            }
            self.retire(id, now);
        }
    }

    // ---- the roll ----

    fn begin_roll(
        &mut self,
        generation: u32,
        params: Params,
        scope: Scope,
        requests: Vec<RequestId>,
        systemd_waits: bool,
    ) {
        let old_count = self.desired;
        let new_count = match scope {
            Scope::All => params.workers,
            Scope::Slot(_) | Scope::Agent => old_count,
        };
        let delay = params.delay;
        self.params.insert(generation, params);
        let mut pending = VecDeque::new();
        match scope {
            Scope::All => {
                // Added slots first: capacity grows before anything is replaced.
                for i in old_count..new_count {
                    if i as usize >= self.slots.len() {
                        self.slots.push(Slot::new(generation, delay));
                    } else {
                        self.slots[i as usize].removing = false;
                    }
                    pending.push_back(i);
                }
                pending.extend(0..old_count.min(new_count));
            }
            Scope::Slot(n) => pending.push_back(n),
            Scope::Agent => {}
        }
        let total = pending.len() as u32;
        self.log(
            Level::Info,
            None,
            None,
            Some(generation),
            format!(
                "reload: replacing {total} worker(s) with generation {generation}, {} at a time",
                self.params[&generation].batch
            ),
        );
        self.out.push(Action::Systemd(Systemd::Reloading));
        self.roll = Some(Roll {
            generation,
            scope,
            old_count,
            new_count,
            pending,
            in_flight: BTreeSet::new(),
            draining: BTreeSet::new(),
            requests,
            systemd_waits,
            failed: None,
            total,
            replaced: 0,
            settled: false,
            agent_decided: false,
            agent_before: None,
        });
    }

    /// Starts replacements up to the batch size.
    fn pump(&mut self, now: Instant) {
        if let Some(roll) = &mut self.roll {
            if !std::mem::replace(&mut roll.agent_decided, true) {
                let (generation, scope) = (roll.generation, roll.scope);
                let before = self.roll_agent(generation, scope, now);
                if let Some(roll) = &mut self.roll {
                    roll.agent_before = before;
                }
            }
        }
        loop {
            let Some(roll) = &mut self.roll else { return };
            if roll.failed.is_some() {
                return;
            }
            // The workers roll once a new agent is ready, and not before the first one is.
            if self
                .agent
                .as_ref()
                .is_some_and(|a| a.swap.is_some() || a.gate)
            {
                return;
            }
            let batch = self.params[&roll.generation].batch.max(1) as usize;
            if roll.in_flight.len() >= batch {
                return;
            }
            let Some(s) = roll.pending.pop_front() else {
                return;
            };
            roll.in_flight.insert(s);
            let gen = roll.generation;
            // A replacement already starting in this slot (for memory) gives way to the roll's:
            // a slot has one incoming worker at most.
            if let Some(old) = self.slots[s as usize].incoming.take() {
                if let Some(w) = self.workers.get_mut(&old) {
                    w.stop = Some(StopKind::Abort);
                }
                self.kill(old);
            }
            self.spawn(Seat::Slot(s), true, gen, now);
        }
    }

    fn fail_roll(&mut self, reason: String, now: Instant) {
        let Some(roll) = &mut self.roll else { return };
        if roll.failed.is_some() {
            return;
        }
        roll.failed = Some(reason.clone());
        roll.pending.clear();
        let agent_before = roll.agent_before.take();
        let (old_count, generation) = (roll.old_count, roll.generation);
        let in_flight: Vec<u32> = roll.in_flight.iter().copied().collect();
        self.log(
            Level::Error,
            None,
            None,
            Some(generation),
            format!("reload failed, every slot not yet replaced keeps its worker: {reason}"),
        );
        if let Some(before) = agent_before {
            self.agent_roll_failed(before, now);
        }
        for s in in_flight {
            if let Some(id) = self.slots[s as usize].incoming {
                let w = self.workers.get_mut(&id).expect("incoming worker exists");
                if w.state != WorkerState::Stopping {
                    w.stop = Some(StopKind::Abort);
                    w.state = WorkerState::Stopping;
                    self.kill(id);
                }
            }
        }
        // Slots this roll added go again: the old generation's count stands.
        for i in old_count..self.slots.len() as u32 {
            self.remove_slot(i, now);
            if let Some(roll) = &mut self.roll {
                if let Some(id) = self.slots[i as usize].worker {
                    roll.draining.insert(id);
                }
            }
        }
    }

    /// Moves a roll forward: next batch, shrink at the end, reply when everything has drained.
    fn advance_roll(&mut self, now: Instant) {
        self.pump(now);
        let swapping = self.swapping();
        let Some(roll) = &mut self.roll else { return };
        if !roll.pending.is_empty() || !roll.in_flight.is_empty() || swapping {
            return;
        }
        if roll.failed.is_none() && !roll.settled {
            roll.settled = true;
            let (new_count, generation, scope) = (roll.new_count, roll.generation, roll.scope);
            if scope == Scope::All {
                self.active = generation;
                self.desired = new_count;
                self.agent_rolled(generation, now);
            }
            for i in new_count..self.slots.len() as u32 {
                self.remove_slot(i, now);
                if let (Some(roll), Some(id)) = (&mut self.roll, self.slots[i as usize].worker) {
                    roll.draining.insert(id);
                }
            }
        }
        let roll = self.roll.as_ref().expect("roll exists");
        if !roll.draining.is_empty() {
            return;
        }
        let roll = self.roll.take().expect("roll exists");
        let result = match &roll.failed {
            None => {
                let mut msg = format!(
                    "generation {} serving: {} worker(s) replaced",
                    roll.generation, roll.replaced
                );
                self.log(Level::Info, None, None, Some(roll.generation), msg.clone());
                if self.params[&roll.generation].exec_ready {
                    msg += "\nwarning: readiness.mode = \"exec\": each new worker counted as \
                            ready once it ran, not once it could serve, so this reload could \
                            not wait for them";
                }
                Ok(msg)
            }
            Some(reason) => Err(reason.clone()),
        };
        for r in roll.requests {
            self.reply(r, result.clone());
        }
        // Type=notify-reload: READY=1 ends the reload, whether or not it succeeded.
        self.out.push(Action::Systemd(Systemd::Ready));
        if let Some(q) = self.queued.take() {
            // Asked for when the slot existed; the roll that just ended may have removed it.
            if let Err(e) = self.check_scope(q.scope) {
                for r in q.requests {
                    self.reply(r, Err(e.clone()));
                }
                self.out.push(Action::Forget {
                    generation: q.generation,
                });
                return;
            }
            self.begin_roll(q.generation, q.params, q.scope, q.requests, q.systemd_waits);
            self.pump(now);
        }
    }

    // ---- helpers ----

    fn spawn(&mut self, seat: Seat, incoming: bool, generation: u32, now: Instant) {
        let id = self.next_id;
        self.next_id += 1;
        let p = params_for(&self.params, seat, generation);
        self.workers.insert(
            id,
            Worker {
                seat,
                generation,
                pid: None,
                state: WorkerState::Starting,
                started_at: now,
                ready_at: None,
                deadline: Some(now + p.ready_timeout),
                extend_until: now + p.ready_timeout * EXTEND_FACTOR,
                stop: None,
                kill_sent: false,
                said_stopping: false,
                signal_pending: false,
                drain_pending: false,
                drain_empty_since: None,
                stalled: false,
                waiting_checks: 0,
                probe_at: None,
                probe_every: PROBE_FIRST,
                status: None,
                errno: None,
            },
        );
        let s = seat_slot(&mut self.slots, &mut self.agent, seat);
        if incoming {
            s.incoming = Some(id);
        } else {
            s.worker = Some(id);
            s.retry_at = None;
        }
        self.out.push(match seat {
            Seat::Slot(slot) => Action::Spawn {
                id,
                slot,
                generation,
            },
            Seat::Agent => Action::SpawnAgent { id, generation },
        });
    }

    fn become_ready(&mut self, id: WorkerId, now: Instant) {
        self.become_ready_because(id, None, now);
    }

    /// Readiness, with what showed it when that is worth saying (the listen probe's finding).
    fn become_ready_because(&mut self, id: WorkerId, why: Option<String>, now: Instant) {
        let w = self.workers.get_mut(&id).expect("worker exists");
        w.state = WorkerState::Ready;
        w.ready_at = Some(now);
        w.probe_at = None;
        w.deadline = params_for(&self.params, w.seat, w.generation)
            .watchdog
            .map(|d| now + d);
        let (seat, gen, pid) = (w.seat, w.generation, w.pid);
        let took = now.saturating_duration_since(w.started_at);
        let mut msg = format!("ready after {}", human(took));
        if let Some(why) = why {
            msg += &format!(": {why}");
        }
        self.log(Level::Info, Some(seat), pid, Some(gen), msg);
        let s = match seat {
            Seat::Slot(s) => s,
            Seat::Agent => return self.agent_ready(id, now),
        };
        let slot = &mut self.slots[s as usize];
        if slot.incoming == Some(id) {
            slot.incoming = None;
            slot.retry_at = None;
            slot.replace_after = None;
            slot.generation = gen;
            let old = slot.worker.replace(id);
            // The worker it replaces worked a while: the slot's run of failures is over.
            let reset_after = self.params[&slot.generation].reset_after;
            let old_worked = old
                .and_then(|o| self.workers.get(&o)?.ready_at)
                .is_some_and(|t| now.saturating_duration_since(t) >= reset_after);
            let slot = &mut self.slots[s as usize];
            if old_worked {
                slot.failures_in_a_row = 0;
            }
            if let Some(roll) = &mut self.roll {
                roll.in_flight.remove(&s);
                roll.replaced += 1;
                if let Some(old) = old {
                    roll.draining.insert(old);
                }
            }
            if let Some(old) = old {
                self.retire(old, now);
            }
        }
    }

    /// Asks a worker to stop gracefully: the stop signal now and SIGKILL after the stop
    /// timeout; or, with `stop.message`, the message now, the stop signal after the timeout and
    /// SIGKILL after another.
    fn retire(&mut self, id: WorkerId, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.state == WorkerState::Stopping {
            return;
        }
        let p = params_for(&self.params, w.seat, w.generation);
        w.state = WorkerState::Stopping;
        w.stop = Some(StopKind::Retire);
        w.deadline = Some(now + p.stop_timeout);
        w.extend_until = now + p.stop_timeout * EXTEND_FACTOR;
        w.probe_at = None;
        if self.start_drain(id, now) {
            return;
        }
        if self.workers[&id].pid.is_some() {
            self.first_stop_step(id);
        }
    }

    /// The first step of a graceful stop: `stop.message` alone if there is one and the worker
    /// was ready (one still starting may not listen for messages yet: it would wait out the
    /// whole timeout for nothing), else the stop signal.
    fn first_stop_step(&mut self, id: WorkerId) {
        let w = self.workers.get_mut(&id).expect("worker exists");
        let Some(pid) = w.pid else { return };
        let p = params_for(&self.params, w.seat, w.generation);
        if p.stop_message && w.ready_at.is_some() {
            w.signal_pending = true;
            self.out.push(Action::Message { id, pid });
        } else {
            let signal = p.stop_signal;
            self.out.push(Action::Signal { id, pid, signal });
        }
    }

    /// Gives up on a worker that failed to start or went silent: SIGKILL if it never became
    /// ready, else SIGABRT (for a core dump to debug the hang) and SIGKILL after the stop timeout.
    fn give_up(&mut self, id: WorkerId, reason: String, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.state == WorkerState::Stopping {
            return;
        }
        let was_starting = w.state == WorkerState::Starting;
        let (seat, pid, gen) = (w.seat, w.pid, w.generation);
        w.state = WorkerState::Stopping;
        w.stop = Some(StopKind::Failed(reason.clone()));
        self.log(Level::Error, Some(seat), pid, Some(gen), reason.clone());
        if was_starting {
            self.kill(id);
            // A replacement given up on stops its roll now, not when its exit is reaped.
            let Seat::Slot(slot) = seat else { return };
            if self.slots[slot as usize].incoming == Some(id) {
                self.fail_roll(
                    format!("slot {slot}: the generation {gen} worker {reason}"),
                    now,
                );
            }
        } else {
            let w = self.workers.get_mut(&id).expect("worker exists");
            let timeout = params_for(&self.params, seat, gen).stop_timeout;
            w.deadline = Some(now + timeout);
            w.extend_until = now + timeout * EXTEND_FACTOR;
            if let Some(pid) = pid {
                let signal = Signal::SIGABRT;
                self.out.push(Action::Signal { id, pid, signal });
            }
        }
    }

    fn kill(&mut self, id: WorkerId) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        w.state = WorkerState::Stopping;
        w.probe_at = None;
        w.signal_pending = false;
        w.drain_pending = false;
        w.stop.get_or_insert(StopKind::Retire);
        w.deadline = None;
        if !w.kill_sent {
            w.kill_sent = true;
            if let Some(pid) = w.pid {
                let signal = Signal::SIGKILL;
                self.out.push(Action::Signal { id, pid, signal });
            }
        }
    }

    /// Marks a slot for removal and stops whatever runs in it.
    fn remove_slot(&mut self, i: u32, now: Instant) {
        let slot = &mut self.slots[i as usize];
        slot.removing = true;
        slot.retry_at = None;
        let ids: Vec<WorkerId> = [slot.worker, slot.incoming].into_iter().flatten().collect();
        for id in ids {
            self.retire(id, now);
        }
    }

    fn schedule_restart(&mut self, seat: Seat, ready_for: Option<Duration>, now: Instant) {
        let slot = seat_slot(&mut self.slots, &mut self.agent, seat);
        let p = params_for(&self.params, seat, slot.generation);
        if ready_for.is_some_and(|d| d >= p.reset_after) {
            slot.next_delay = p.delay;
        }
        let wait = slot.next_delay;
        slot.next_delay = (wait * 2).min(p.max_delay);
        slot.retry_at = Some(now + wait);
        slot.restarts += 1;
        self.restarts += 1;
        self.log(
            Level::Info,
            Some(seat),
            None,
            None,
            format!("restarting in {}", human(wait)),
        );
    }

    fn ready_count(&self) -> u32 {
        // Slots a roll is adding count once the roll has settled the new count.
        self.slots
            .iter()
            .take(self.desired as usize)
            .filter(|s| !s.removing)
            .filter(|s| {
                s.worker
                    .is_some_and(|id| self.workers[&id].state == WorkerState::Ready)
            })
            .count() as u32
    }

    /// After every event: roll progress, slot clean-up, readiness, status, exit.
    fn settle(&mut self, now: Instant) {
        if self.roll.is_some() {
            self.advance_roll(now);
        }
        // Removed slots go from the top, once no worker (not even a draining one) refers to them.
        while let Some(last) = self.slots.last() {
            let i = self.slots.len() as u32 - 1;
            let empty = last.worker.is_none() && last.incoming.is_none();
            if !(last.removing && empty) || self.workers.values().any(|w| w.seat == Seat::Slot(i)) {
                break;
            }
            self.slots.pop();
        }
        self.settle_agent(now);
        let ready = self.ready_count();
        let all_ready = ready == self.desired && self.agent_is_ready();
        if self.phase == Phase::Running && !self.announced_ready && all_ready {
            self.announced_ready = true;
            self.out.push(Action::Systemd(Systemd::Ready));
        }
        let status = self.status_line(ready, now);
        // A pending Spawn is answered by a step of its own, which settles again with the
        // up-to-date line; sending this one now would put a stale line last.
        let spawning = self.out.iter().any(|a| matches!(a, Action::Spawn { .. }));
        if status != self.last_status && !spawning {
            self.last_status = status.clone();
            self.out.push(Action::Systemd(Systemd::Status(status)));
        }
        // Forget configs nothing refers to any more.
        let mut used: BTreeSet<u32> = self.slots.iter().map(|s| s.generation).collect();
        used.extend(self.workers.values().map(|w| w.generation));
        used.extend(self.agent_generations());
        used.insert(self.active);
        if let Some(r) = &self.roll {
            used.insert(r.generation);
        }
        let unused: Vec<u32> = self
            .params
            .keys()
            .copied()
            .filter(|g| !used.contains(g))
            .collect();
        for generation in unused {
            self.params.remove(&generation);
            self.out.push(Action::Forget { generation });
        }
        self.settle_balance(now);
        // Memory is sampled while any worker's config limits it.
        let limited = self.phase == Phase::Running
            && self
                .workers
                .values()
                .any(|w| self.params[&w.generation].max_memory.is_some());
        if !limited {
            self.next_sample = None;
        } else if self.next_sample.is_none() {
            self.next_sample = Some(now + MEMORY_SAMPLE_EVERY);
        }
        let idle = self.workers.is_empty()
            && self.slots.iter().all(|s| s.retry_at.is_none())
            && self.agent_retry_at().is_none()
            && self.roll.is_none();
        match self.phase {
            Phase::Stopping if self.workers.is_empty() => {
                self.phase = Phase::Idle;
                self.out.push(Action::Exit(self.stop_code));
            }
            Phase::Running if idle => {
                self.phase = Phase::Idle;
                self.log(
                    Level::Warn,
                    None,
                    None,
                    None,
                    "no worker is running and none will be restarted: exiting".into(),
                );
                self.out.push(Action::Exit(i32::from(self.last_failed)));
            }
            _ => {}
        }
    }

    fn status_line(&self, ready: u32, now: Instant) -> String {
        let mut s = format!(
            "{ready}/{} ready · generation {} · {} restart{}",
            self.desired,
            self.active,
            self.restarts,
            if self.restarts == 1 { "" } else { "s" }
        );
        if let Some(a) = self.agent_view(now) {
            if a.state != "ready" {
                s += &format!(" · agent {}", a.state);
            }
        }
        if let Some(r) = &self.roll {
            s += &format!(
                " · reloading to generation {}: {}/{} replaced",
                r.generation, r.replaced, r.total
            );
        }
        if self.phase == Phase::Stopping {
            s += &format!(" · stopping, {} left", self.workers.len());
        }
        s
    }

    fn reply(&mut self, request: RequestId, result: Result<String, String>) {
        self.out.push(Action::Reply { request, result });
    }

    fn log(
        &mut self,
        level: Level,
        seat: Option<Seat>,
        pid: Option<i32>,
        generation: Option<u32>,
        message: String,
    ) {
        self.out.push(Action::Log {
            level,
            seat,
            pid,
            generation,
            message,
        });
    }
}

/// How a process ended, and what that means.
struct Ended {
    how: Gone,
    /// A crash, as opposed to an exit corral asked for or a clean one.
    failed: bool,
    /// corral asked it to go.
    expected: bool,
    /// What happened, in words.
    what: String,
}

enum Gone {
    /// Why, and whether the program cannot be executed at all.
    SpawnFailed(String, bool),
    Exited(ExitStatus),
    /// Never forked: no longer wanted when its turn came.
    Skipped,
}

impl Slot {
    fn new(generation: u32, delay: Duration) -> Slot {
        Slot {
            generation,
            worker: None,
            incoming: None,
            retry_at: None,
            next_delay: delay,
            restarts: 0,
            removing: false,
            replace_after: None,
            failures: VecDeque::new(),
            failures_in_a_row: 0,
        }
    }
}

/// The slot of a seat: the agent's is its own (its backoff and failures).
fn seat_slot<'a>(
    slots: &'a mut [Slot],
    agent: &'a mut Option<agent::AgentSeat>,
    seat: Seat,
) -> &'a mut Slot {
    match seat {
        Seat::Slot(n) => &mut slots[n as usize],
        Seat::Agent => &mut agent.as_mut().expect("the app has an agent").slot,
    }
}

/// The parameters a process of `seat` runs with in `generation`: the agent has its own.
fn params_for(params: &BTreeMap<u32, Params>, seat: Seat, generation: u32) -> &Params {
    let p = &params[&generation];
    match seat {
        Seat::Slot(_) => p,
        Seat::Agent => {
            &p.agent
                .as_ref()
                .expect("the generation has an agent")
                .process
        }
    }
}

/// "250ms", "3.2s", "2m05s": short, for log lines.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        let s = d.as_secs();
        format!("{}m{:02}s", s / 60, s % 60)
    }
}

#[path = "supervisor_drain.rs"]
pub(crate) mod drain;
use drain::DRAIN_MAX;

#[path = "supervisor_load.rs"]
mod load;

#[path = "supervisor_agent.rs"]
pub mod agent;

#[path = "supervisor_state.rs"]
pub mod state;

#[cfg(test)]
#[path = "supervisor_tests.rs"]
mod tests;
