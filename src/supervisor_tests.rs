//! Tests for the supervisor state machine, driven by a fake clock.
//!
//! `Harness` plays the runtime: it feeds events in at a time it controls, answers every `Spawn`
//! at once with `Spawned` (or `SpawnFailed` when a test asked for it), depth first as the runtime
//! does, and keeps every action and a trace of events for failure messages.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use super::agent::AgentParams;
use super::*;
use crate::config::{Batch, RestartPolicy};
use crate::notify::Notification;

/// `assert!` that prints the recent events and actions when it fails.
macro_rules! check {
    ($h:expr, $cond:expr $(,)?) => {
        assert!($cond, "check failed: {}\n{}", stringify!($cond), $h.context())
    };
    ($h:expr, $cond:expr, $($msg:tt)+) => {
        assert!($cond, "check failed: {}\n{}", format!($($msg)+), $h.context())
    };
}

/// `assert_eq!` that prints the recent events and actions when it fails.
macro_rules! check_eq {
    ($h:expr, $left:expr, $right:expr $(,)?) => {
        check_eq!($h, $left, $right, "{} == {}", stringify!($left), stringify!($right))
    };
    ($h:expr, $left:expr, $right:expr, $($msg:tt)+) => {{
        let (left, right) = (&$left, &$right);
        assert!(
            *left == *right,
            "check failed: {}\n  left: {:?}\n right: {:?}\n{}",
            format!($($msg)+),
            left,
            right,
            $h.context()
        )
    }};
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Builds `Params` with small durations: ready_timeout 5s, stop_timeout 3s (SIGTERM), restart
/// on-failure with delay 100ms, max_delay 1s, reset_after 10s; batch 1; no watchdog.
#[derive(Clone)]
struct P(Params);

impl P {
    fn new(workers: u32) -> P {
        P(Params {
            workers,
            batch: 1,
            exec_ready: false,
            probe_listeners: false,
            ready_timeout: secs(5),
            watchdog: None,
            stop_signal: Signal::SIGTERM,
            stop_message: false,
            drain: ms(100),
            stop_timeout: secs(3),
            policy: RestartPolicy::OnFailure,
            delay: ms(100),
            max_delay: secs(1),
            reset_after: secs(10),
            max_memory: None,
            balanced: false,
            max_failures: 10,
            failure_interval: secs(60),
            stop_exit_codes: Vec::new(),
            agent: None,
        })
    }

    /// An agent with `own` settings (its `workers` is ignored), which the workers wait for;
    /// `key` stands for its config (another key: a changed agent).
    fn agent(mut self, own: P, key: u64) -> P {
        self.0.agent = Some(Box::new(AgentParams {
            process: own.0,
            workers_wait: true,
            key,
        }));
        self
    }

    /// The workers start without waiting for the agent.
    fn agent_no_wait(mut self) -> P {
        self.0.agent.as_mut().expect("an agent").workers_wait = false;
        self
    }

    fn max_memory(mut self, bytes: u64) -> P {
        self.0.max_memory = Some(bytes);
        self
    }

    fn batch(mut self, batch: u32) -> P {
        self.0.batch = batch;
        self
    }

    fn exec_ready(mut self) -> P {
        self.0.exec_ready = true;
        self
    }

    fn watchdog(mut self, every: Duration) -> P {
        self.0.watchdog = Some(every);
        self
    }

    fn max_failures(mut self, n: u32, within: Duration) -> P {
        self.0.max_failures = n;
        self.0.failure_interval = within;
        self
    }

    fn stop_exit_codes(mut self, codes: &[i32]) -> P {
        self.0.stop_exit_codes = codes.to_vec();
        self
    }

    fn balanced(mut self) -> P {
        self.0.balanced = true;
        self
    }

    fn stop_message(mut self) -> P {
        self.0.stop_message = true;
        self
    }

    fn probe_listeners(mut self) -> P {
        self.0.probe_listeners = true;
        self
    }

    fn ready_timeout(mut self, d: Duration) -> P {
        self.0.ready_timeout = d;
        self
    }

    fn delay(mut self, delay: Duration, max_delay: Duration) -> P {
        self.0.delay = delay;
        self.0.max_delay = max_delay;
        self
    }

    fn policy(mut self, policy: RestartPolicy) -> P {
        self.0.policy = policy;
        self
    }
}

impl From<P> for Params {
    fn from(p: P) -> Params {
        p.0
    }
}

fn ready_msg() -> Notification {
    Notification {
        ready: true,
        ..Default::default()
    }
}

fn ok(s: &str) -> Option<Result<String, String>> {
    Some(Ok(s.to_string()))
}

struct Harness {
    sup: Supervisor,
    base: Instant,
    now: Instant,
    next_pid: i32,
    pids: BTreeMap<WorkerId, i32>,
    /// Spawn actions in order: (id, slot, generation).
    spawns: Vec<(WorkerId, u32, u32)>,
    /// SpawnAgent actions in order: (id, generation).
    agents: Vec<(WorkerId, u32)>,
    /// Spawns to answer with `SpawnFailed`: (seat, generation, error, cannot_execute), each
    /// used once.
    failing: Vec<(Seat, u32, String, bool)>,
    /// Spawn actions not performed because `spawn_wanted` said no, as the runtime skips them.
    skipped: Vec<WorkerId>,
    actions: Vec<Action>,
    trace: Vec<String>,
    /// A snapshot after every `Supervisor::step`.
    history: Vec<Snapshot>,
}

impl Harness {
    fn new() -> Harness {
        let base = Instant::now();
        Harness {
            sup: Supervisor::new(),
            base,
            now: base,
            next_pid: 1000,
            pids: BTreeMap::new(),
            spawns: Vec::new(),
            agents: Vec::new(),
            failing: Vec::new(),
            skipped: Vec::new(),
            actions: Vec::new(),
            trace: Vec::new(),
            history: Vec::new(),
        }
    }

    /// Sends `Start`; the workers are spawned but not ready.
    fn start(params: impl Into<Params>) -> Harness {
        let mut h = Harness::new();
        h.step(Event::Start {
            params: params.into(),
        });
        h
    }

    /// Sends `Start` and makes every worker ready.
    fn started(params: impl Into<Params>) -> Harness {
        let mut h = Harness::start(params);
        for (id, _, _) in h.spawns.clone() {
            h.ready(id);
        }
        let snap = h.snap();
        check_eq!(h, snap.ready, snap.desired, "every worker is ready");
        h
    }

    // ---- feeding events ----

    fn step(&mut self, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        self.feed(event, &mut out);
        out
    }

    fn feed(&mut self, event: Event, out: &mut Vec<Action>) {
        let line = format!("{:>9} => {}", fmt_time(self.at()), describe_event(&event));
        self.trace.push(line);
        let actions = self.sup.step(event, self.now);
        self.history.push(self.sup.snapshot(self.now));
        let agents = self.sup.agent_processes();
        check!(self, agents <= 1, "{agents} agent processes at once");
        for action in actions {
            self.trace
                .push(format!("{:>9}    {}", "", describe_action(&action)));
            self.actions.push(action.clone());
            out.push(action.clone());
            let spawned = match action {
                Action::Spawn {
                    id,
                    slot,
                    generation,
                } => {
                    self.spawns.push((id, slot, generation));
                    Some((id, Seat::Slot(slot), generation))
                }
                Action::SpawnAgent { id, generation } => {
                    self.agents.push((id, generation));
                    Some((id, Seat::Agent, generation))
                }
                _ => None,
            };
            match action {
                Action::Spawn { .. } | Action::SpawnAgent { .. } => {
                    let (id, seat, generation) = spawned.expect("a spawn");
                    let reused = self.spawns.iter().filter(|s| s.0 == id).count()
                        + self.agents.iter().filter(|s| s.0 == id).count();
                    check!(self, reused == 1, "worker id {id} spawned twice");
                    if !self.sup.spawn_wanted(id) {
                        self.skipped.push(id);
                        self.feed(Event::SpawnSkipped { id }, out);
                        continue;
                    }
                    let fail = self
                        .failing
                        .iter()
                        .position(|(s, g, _, _)| (*s, *g) == (seat, generation));
                    let answer = match fail {
                        Some(i) => {
                            let (_, _, error, cannot_execute) = self.failing.remove(i);
                            Event::SpawnFailed {
                                id,
                                error,
                                cannot_execute,
                            }
                        }
                        None => {
                            let pid = self.next_pid;
                            self.next_pid += 1;
                            self.pids.insert(id, pid);
                            Event::Spawned { id, pid }
                        }
                    };
                    self.feed(answer, out);
                }
                Action::Signal { id, pid, .. } => {
                    check_eq!(self, self.pids.get(&id), Some(&pid), "signal names its pid");
                }
                _ => {}
            }
        }
    }

    fn tick(&mut self) -> Vec<Action> {
        self.step(Event::Tick)
    }

    /// Moves the fake clock forward and sends `Tick`.
    fn advance(&mut self, by: Duration) -> Vec<Action> {
        self.now += by;
        self.tick()
    }

    fn notify(&mut self, id: WorkerId, msg: Notification) -> Vec<Action> {
        self.step(Event::Notify { id, msg })
    }

    fn ready(&mut self, id: WorkerId) -> Vec<Action> {
        self.notify(id, ready_msg())
    }

    fn exit(&mut self, id: WorkerId, code: i32) -> Vec<Action> {
        let status = ExitStatus::Code(code);
        self.step(Event::Exited { id, status })
    }

    fn killed(&mut self, id: WorkerId, signal: Signal) -> Vec<Action> {
        let status = ExitStatus::Signal {
            signal: signal as i32,
            core_dumped: false,
        };
        self.step(Event::Exited { id, status })
    }

    fn roll(
        &mut self,
        generation: u32,
        params: impl Into<Params>,
        scope: Scope,
        request: Option<RequestId>,
    ) -> Vec<Action> {
        self.step(Event::Roll {
            generation,
            params: params.into(),
            scope,
            request,
            systemd_waits: false,
        })
    }

    fn reload(&mut self, request: Option<RequestId>) -> Vec<Action> {
        self.step(Event::Reload {
            request,
            systemd_waits: false,
        })
    }

    /// The reading a `Load` asked for ended with `outcome`: a generation and its parameters,
    /// or why the config was refused.
    fn loaded(&mut self, outcome: Result<(u32, P), &str>) -> Vec<Action> {
        let outcome = outcome.map(|(g, p)| (g, p.into())).map_err(str::to_string);
        self.step(Event::Loaded { outcome })
    }

    /// How many readings of the config were asked for since `mark`.
    fn loads_since(&self, mark: usize) -> usize {
        self.actions[mark..]
            .iter()
            .filter(|a| **a == Action::Load)
            .count()
    }

    fn scale(&mut self, workers: u32, request: Option<RequestId>) -> Vec<Action> {
        self.step(Event::Scale { workers, request })
    }

    fn stop(&mut self) -> Vec<Action> {
        self.step(Event::Stop)
    }

    /// The next spawn of `slot` with `generation` is answered with `SpawnFailed`: a program
    /// that cannot be executed when `error` says "No such file or directory" or "Permission
    /// denied", else a failure that may pass (as spawn.rs's `cannot_execute` sorts errnos).
    fn fail_spawn(&mut self, slot: u32, generation: u32, error: &str) {
        let cannot_execute = ["No such file or directory", "Permission denied"]
            .iter()
            .any(|e| error.contains(e));
        self.failing.push((
            Seat::Slot(slot),
            generation,
            error.to_string(),
            cannot_execute,
        ));
    }

    /// The next spawn of the agent with `generation` fails, as `fail_spawn`.
    fn fail_agent_spawn(&mut self, generation: u32, error: &str) {
        let cannot_execute = error.contains("No such file or directory");
        self.failing
            .push((Seat::Agent, generation, error.to_string(), cannot_execute));
    }

    /// The newest agent spawned with `generation`.
    fn agent_of(&self, generation: u32) -> WorkerId {
        match self.agents.iter().rev().find(|a| a.1 == generation) {
            Some(&(id, _)) => id,
            None => panic!(
                "no agent was spawned with generation {generation}\n{}",
                self.context()
            ),
        }
    }

    // ---- looking at what happened ----

    fn at(&self) -> Duration {
        self.now - self.base
    }

    fn snap(&self) -> Snapshot {
        self.sup.snapshot(self.now)
    }

    /// Index into the action log, for `*_since`.
    fn mark(&self) -> usize {
        self.actions.len()
    }

    /// The newest worker spawned for `slot` (any generation).
    fn last_spawn(&self, slot: u32) -> WorkerId {
        let found = self.spawns.iter().rev().find(|s| s.1 == slot);
        match found {
            Some(&(id, _, _)) => id,
            None => panic!("slot {slot} was never spawned\n{}", self.context()),
        }
    }

    /// The newest worker spawned for `slot` with `generation`.
    fn spawn_of(&self, slot: u32, generation: u32) -> WorkerId {
        let found = self
            .spawns
            .iter()
            .rev()
            .find(|s| (s.1, s.2) == (slot, generation));
        match found {
            Some(&(id, _, _)) => id,
            None => panic!(
                "slot {slot} was never spawned with generation {generation}\n{}",
                self.context()
            ),
        }
    }

    /// (slot, generation) of every spawn since `mark`.
    fn spawned_since(&self, mark: usize) -> Vec<(u32, u32)> {
        self.actions[mark..]
            .iter()
            .filter_map(|a| match a {
                Action::Spawn {
                    slot, generation, ..
                } => Some((*slot, *generation)),
                _ => None,
            })
            .collect()
    }

    fn pid(&self, id: WorkerId) -> i32 {
        match self.pids.get(&id) {
            Some(&pid) => pid,
            None => panic!("worker {id} has no pid\n{}", self.context()),
        }
    }

    /// Every signal ever sent to `pid`.
    fn signals_to_pid(&self, pid: i32) -> Vec<Signal> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Signal { pid: p, signal, .. } if *p == pid => Some(*signal),
                _ => None,
            })
            .collect()
    }

    /// Every signal ever sent to the worker `id`.
    fn signals(&self, id: WorkerId) -> Vec<Signal> {
        self.pids
            .get(&id)
            .map_or_else(Vec::new, |&pid| self.signals_to_pid(pid))
    }

    fn replies(&self) -> Vec<(RequestId, Result<String, String>)> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Reply { request, result } => Some((*request, result.clone())),
                _ => None,
            })
            .collect()
    }

    /// The answer to `request`, if it came; fails if it came twice.
    fn reply(&self, request: RequestId) -> Option<Result<String, String>> {
        let mut found: Vec<_> = self
            .replies()
            .into_iter()
            .filter(|(r, _)| *r == request)
            .map(|(_, result)| result)
            .collect();
        check!(self, found.len() <= 1, "request {request} answered twice");
        found.pop()
    }

    /// Systemd messages since `mark`, STATUS lines left out.
    fn systemd_since(&self, mark: usize) -> Vec<Systemd> {
        self.actions[mark..]
            .iter()
            .filter_map(|a| match a {
                Action::Systemd(Systemd::Status(_)) => None,
                Action::Systemd(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    }

    fn systemd(&self) -> Vec<Systemd> {
        self.systemd_since(0)
    }

    /// The last STATUS line sent.
    fn status(&self) -> String {
        let last = self.actions.iter().rev().find_map(|a| match a {
            Action::Systemd(Systemd::Status(s)) => Some(s.clone()),
            _ => None,
        });
        last.unwrap_or_default()
    }

    fn exit_code(&self) -> Option<i32> {
        let codes: Vec<i32> = self
            .actions
            .iter()
            .filter_map(|a| match a {
                Action::Exit(c) => Some(*c),
                _ => None,
            })
            .collect();
        check!(
            self,
            codes.len() <= 1,
            "Exit came more than once: {codes:?}"
        );
        codes.first().copied()
    }

    fn forgotten(&self) -> Vec<u32> {
        self.actions
            .iter()
            .filter_map(|a| match a {
                Action::Forget { generation } => Some(*generation),
                _ => None,
            })
            .collect()
    }

    /// (slot, generation, state) of every worker the snapshot shows, in its order.
    fn layout(&self) -> Vec<(u32, u32, &'static str)> {
        let snap = self.snap();
        snap.workers
            .iter()
            .map(|v| (v.slot.expect("a worker's slot"), v.generation, v.state))
            .collect()
    }

    /// The workers of one slot, as the snapshot shows them.
    fn views(&self, slot: u32) -> Vec<WorkerView> {
        let snap = self.snap();
        snap.workers
            .into_iter()
            .filter(|v| v.slot == Some(slot))
            .collect()
    }

    /// The one ready worker of `slot`.
    fn serving(&self, slot: u32) -> WorkerId {
        let ready: Vec<WorkerView> = self
            .views(slot)
            .into_iter()
            .filter(|v| v.state == "ready")
            .collect();
        check_eq!(self, ready.len(), 1, "slot {slot} has one ready worker");
        let pid = ready[0].pid.expect("a ready worker has a pid");
        match self.sup.worker_by_pid(pid) {
            Some(id) => id,
            None => panic!("pid {pid} is no worker\n{}", self.context()),
        }
    }

    /// The lowest ready count seen after any step since history index `from`.
    fn min_ready_since(&self, from: usize) -> u32 {
        let min = self.history[from..].iter().map(|s| s.ready).min();
        min.unwrap_or(u32::MAX)
    }

    /// The most workers of `generation` seen starting at once since history index `from`.
    fn max_starting_since(&self, from: usize, generation: u32) -> usize {
        let counts = self.history[from..].iter().map(|s| {
            let starting = s.workers.iter().filter(|v| v.state == "starting");
            starting.filter(|v| v.generation == generation).count()
        });
        counts.max().unwrap_or(0)
    }

    /// The recent trace and the current state, for failure messages.
    fn context(&self) -> String {
        let from = self.trace.len().saturating_sub(50);
        let mut s = format!(
            "--- trace: last {} of {} lines (time since start) ---\n",
            self.trace.len() - from,
            self.trace.len()
        );
        for line in &self.trace[from..] {
            s += line;
            s.push('\n');
        }
        let snap = self.snap();
        let deadline = self.sup.next_deadline().map(|d| fmt_time(d - self.base));
        let _ = writeln!(
            s,
            "--- now {}: {} · desired {} · ready {} · next deadline {deadline:?} · status {:?}",
            fmt_time(self.at()),
            snap.state,
            snap.desired,
            snap.ready,
            self.status()
        );
        for v in snap.agent.iter().chain(&snap.workers) {
            let _ = writeln!(
                s,
                "    slot {:?} generation {} pid {:?} {} (restarts {})",
                v.slot, v.generation, v.pid, v.state, v.restarts
            );
        }
        s
    }
}

fn fmt_time(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn describe_event(e: &Event) -> String {
    match e {
        Event::Start { params } => format!("Start {{ workers: {} }}", params.workers),
        Event::Roll {
            generation,
            params,
            scope,
            request,
            systemd_waits,
        } => format!(
            "Roll {{ generation: {generation}, workers: {}, batch: {}, scope: {scope:?}, \
             request: {request:?}, systemd_waits: {systemd_waits} }}",
            params.workers, params.batch
        ),
        Event::Notify { id, msg } => {
            let mut parts = Vec::new();
            if msg.ready {
                parts.push("READY=1".to_string());
            }
            if msg.watchdog_ping {
                parts.push("WATCHDOG=1".to_string());
            }
            if msg.watchdog_trigger {
                parts.push("WATCHDOG=trigger".to_string());
            }
            if msg.stopping {
                parts.push("STOPPING=1".to_string());
            }
            if let Some(d) = msg.extend_timeout {
                parts.push(format!("EXTEND_TIMEOUT_USEC={}", d.as_micros()));
            }
            if let Some(s) = &msg.status {
                parts.push(format!("STATUS={s}"));
            }
            format!("Notify {{ id: {id}, {} }}", parts.join(" "))
        }
        other => format!("{other:?}"),
    }
}

fn describe_action(a: &Action) -> String {
    match a {
        Action::Log {
            level,
            seat: Some(seat),
            message,
            ..
        } => format!("log {level:?} [{seat}] {message}"),
        Action::Log { level, message, .. } => format!("log {level:?} {message}"),
        Action::Systemd(Systemd::Status(s)) => format!("STATUS={s}"),
        other => format!("{other:?}"),
    }
}

// ---- start and readiness ----

#[test]
fn start_spawns_one_worker_per_slot_and_announces_ready_only_when_all_are_ready() {
    let mut h = Harness::start(P::new(3));
    check_eq!(h, h.spawned_since(0), vec![(0, 1), (1, 1), (2, 1)]);
    check_eq!(h, h.status(), "0/3 ready · generation 1 · 0 restarts");
    check_eq!(h, h.snap().state, "starting");
    check_eq!(h, h.systemd(), vec![]);

    let ids: Vec<WorkerId> = (0..3).map(|s| h.last_spawn(s)).collect();
    h.ready(ids[0]);
    check_eq!(h, h.status(), "1/3 ready · generation 1 · 0 restarts");
    h.ready(ids[1]);
    check_eq!(h, h.status(), "2/3 ready · generation 1 · 0 restarts");
    check_eq!(
        h,
        h.systemd(),
        vec![],
        "no READY=1 before every slot is ready"
    );

    let out = h.ready(ids[2]);
    check!(h, out.contains(&Action::Systemd(Systemd::Ready)));
    check_eq!(h, h.status(), "3/3 ready · generation 1 · 0 restarts");
    check_eq!(h, h.systemd(), vec![Systemd::Ready], "READY=1 exactly once");
    check_eq!(h, h.snap().state, "running");
    check_eq!(
        h,
        h.layout(),
        vec![(0, 1, "ready"), (1, 1, "ready"), (2, 1, "ready")]
    );
    check!(h, h.views(1)[0].pid == Some(h.pid(ids[1])));
    check_eq!(h, h.sup.worker_by_pid(h.pid(ids[2])), Some(ids[2]));
    check_eq!(
        h,
        h.sup.next_deadline(),
        None,
        "no watchdog: nothing to wait for"
    );
}

#[test]
fn a_second_start_is_ignored() {
    let mut h = Harness::started(P::new(2));
    let out = h.step(Event::Start {
        params: P::new(5).into(),
    });
    check_eq!(h, out, vec![]);
    check_eq!(h, h.snap().desired, 2);
}

#[test]
fn exec_readiness_makes_a_worker_ready_as_soon_as_it_is_spawned() {
    let h = Harness::start(P::new(3).exec_ready());
    check_eq!(h, h.snap().ready, 3);
    check_eq!(h, h.systemd(), vec![Systemd::Ready]);
    check_eq!(
        h,
        h.layout(),
        vec![(0, 1, "ready"), (1, 1, "ready"), (2, 1, "ready")]
    );
    check_eq!(h, h.sup.next_deadline(), None, "no readiness deadline left");
}

#[test]
fn the_last_status_line_sent_is_the_current_one_with_exec_readiness() {
    let mut h = Harness::start(P::new(3).exec_ready());
    check_eq!(h, h.status(), "3/3 ready · generation 1 · 0 restarts");

    h.roll(2, P::new(3).exec_ready(), Scope::All, Some(1));
    h.ready(h.spawn_of(0, 2)); // no-op: exec readiness
    check_eq!(
        h,
        h.status(),
        "3/3 ready · generation 2 · 0 restarts · reloading to generation 2: 3/3 replaced"
    );
}

#[test]
fn readiness_timeout_kills_the_worker_and_restarts_the_slot_after_the_backoff() {
    let mut h = Harness::start(P::new(2));
    let (a, b) = (h.last_spawn(0), h.last_spawn(1));
    h.ready(a);
    check_eq!(h, h.sup.next_deadline(), Some(h.base + secs(5)));

    h.advance(ms(4999));
    check_eq!(h, h.signals(b), vec![]);
    h.advance(ms(1));
    check_eq!(h, h.signals(b), vec![Signal::SIGKILL]);
    check_eq!(h, h.views(1)[0].state, "stopping");

    // Too late: a worker given up on is never counted ready.
    h.ready(b);
    check_eq!(h, h.snap().ready, 1);
    check!(h, !h.systemd().contains(&Systemd::Ready));

    h.killed(b, Signal::SIGKILL);
    check_eq!(h, h.sup.next_deadline(), Some(h.now + ms(100)));
    let view = &h.views(1)[0];
    check_eq!(h, (view.state, view.restarts), ("backoff", 1));
    let mark = h.mark();
    h.advance(ms(99));
    check_eq!(h, h.spawned_since(mark), vec![]);
    h.advance(ms(1));
    check_eq!(h, h.spawned_since(mark), vec![(1, 1)]);

    h.ready(h.last_spawn(1));
    check_eq!(h, h.systemd(), vec![Systemd::Ready]);
    check_eq!(h, h.status(), "2/2 ready · generation 1 · 1 restart");
}

#[test]
fn extend_timeout_usec_pushes_the_readiness_deadline_out() {
    let mut h = Harness::start(P::new(1));
    let w = h.last_spawn(0);
    h.advance(secs(4));
    let extend = |d| Notification {
        extend_timeout: Some(d),
        ..Default::default()
    };
    h.notify(w, extend(secs(3)));
    check_eq!(h, h.sup.next_deadline(), Some(h.base + secs(7)));
    h.notify(w, extend(secs(1)));
    check_eq!(
        h,
        h.sup.next_deadline(),
        Some(h.base + secs(7)),
        "never shortened"
    );

    h.advance(secs(1));
    h.advance(ms(1999));
    check_eq!(
        h,
        h.signals(w),
        vec![],
        "not given up on at the original 5s"
    );
    h.advance(ms(1));
    check_eq!(h, h.signals(w), vec![Signal::SIGKILL]);
}

#[test]
fn notify_from_an_unknown_worker_changes_nothing() {
    let mut h = Harness::started(P::new(2).watchdog(secs(2)));
    let gone = h.last_spawn(0);
    h.exit(gone, 1);
    let before = serde_json::to_string(&h.snap()).unwrap();
    let deadline = h.sup.next_deadline();

    let everything = Notification {
        ready: true,
        status: Some("hello".into()),
        watchdog_ping: true,
        watchdog_trigger: true,
        stopping: true,
        reloading: true,
        extend_timeout: Some(secs(60)),
        errno: Some(2),
    };
    for id in [gone, 999] {
        let out = h.notify(id, everything.clone());
        check_eq!(h, out, vec![], "worker {id}");
    }
    check_eq!(h, serde_json::to_string(&h.snap()).unwrap(), before);
    check_eq!(h, h.sup.next_deadline(), deadline);
}

// ---- crashes and backoff ----

/// Crashes the newest worker of `slot` and returns how long the slot waited to be respawned,
/// checking that nothing is spawned a millisecond earlier and that the same slot comes back.
fn crash_and_time_restart(h: &mut Harness, slot: u32) -> Duration {
    let id = h.last_spawn(slot);
    h.exit(id, 1);
    let crashed_at = h.now;
    let deadline = h.sup.next_deadline();
    check!(
        h,
        deadline.is_some(),
        "a restart of slot {slot} is scheduled"
    );
    let wait = deadline.unwrap() - crashed_at;
    check_eq!(h, h.views(slot)[0].state, "backoff");
    let mark = h.mark();
    h.advance(wait - ms(1));
    check_eq!(h, h.spawned_since(mark), vec![], "nothing before the delay");
    h.advance(ms(1));
    check_eq!(
        h,
        h.spawned_since(mark),
        vec![(slot, 1)],
        "the same slot again"
    );
    wait
}

#[test]
fn crashes_back_off_exponentially_up_to_max_delay_and_reset_after_a_long_ready_run() {
    let mut h = Harness::started(P::new(3));
    let waits: Vec<Duration> = (0..6).map(|_| crash_and_time_restart(&mut h, 1)).collect();
    check_eq!(
        h,
        waits,
        vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
    );

    // Ready for exactly reset_after: the backoff starts over.
    h.ready(h.last_spawn(1));
    h.advance(secs(10));
    check_eq!(h, crash_and_time_restart(&mut h, 1), ms(100));

    // Ready for a bit less than reset_after: it does not.
    h.ready(h.last_spawn(1));
    h.advance(ms(9999));
    check_eq!(h, crash_and_time_restart(&mut h, 1), ms(200));

    h.ready(h.last_spawn(1));
    let snap = h.snap();
    check_eq!(h, snap.restarts, 8);
    let per_slot: Vec<u32> = snap.workers.iter().map(|v| v.restarts).collect();
    check_eq!(h, per_slot, vec![0, 8, 0]);
    check_eq!(h, h.status(), "3/3 ready · generation 1 · 8 restarts");
    let slots: Vec<u32> = h.spawns.iter().map(|s| s.1).collect();
    check_eq!(h, slots, vec![0, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1]);
}

// ---- restart policies and exit ----

#[test]
fn on_failure_does_not_restart_a_clean_exit_after_ready() {
    let mut h = Harness::started(P::new(2));
    let mark = h.mark();
    h.exit(h.last_spawn(0), 0);
    check_eq!(h, h.sup.next_deadline(), None);
    h.advance(secs(60));
    check_eq!(h, h.spawned_since(mark), vec![]);
    check_eq!(h, h.layout(), vec![(1, 1, "ready")]);
    check_eq!(h, h.exit_code(), None, "slot 1 still runs");
    check_eq!(h, h.status(), "1/2 ready · generation 1 · 0 restarts");
}

#[test]
fn on_failure_restarts_an_error_exit_a_signal_and_a_clean_exit_before_ready() {
    let mut h = Harness::started(P::new(3));
    let mark = h.mark();
    h.exit(h.last_spawn(0), 1);
    h.killed(h.last_spawn(1), Signal::SIGSEGV);
    h.advance(ms(100));
    check_eq!(h, h.spawned_since(mark), vec![(0, 1), (1, 1)]);

    // Exiting with 0 before READY=1 is a failure too.
    let mark = h.mark();
    h.exit(h.last_spawn(0), 0);
    h.advance(ms(200));
    check_eq!(h, h.spawned_since(mark), vec![(0, 1)]);
    check_eq!(h, h.snap().restarts, 3);
}

#[test]
fn always_restarts_a_clean_exit() {
    let mut h = Harness::started(P::new(1).policy(RestartPolicy::Always));
    let mark = h.mark();
    h.exit(h.last_spawn(0), 0);
    h.advance(ms(100));
    check_eq!(h, h.spawned_since(mark), vec![(0, 1)]);
    check_eq!(h, h.exit_code(), None);
}

#[test]
fn never_restarts_nothing_and_exits_1_when_the_last_exit_failed() {
    let mut h = Harness::started(P::new(2).policy(RestartPolicy::Never));
    let mark = h.mark();
    h.exit(h.last_spawn(0), 0);
    check_eq!(h, h.exit_code(), None, "slot 1 still runs");
    h.killed(h.last_spawn(1), Signal::SIGSEGV);
    check_eq!(h, h.exit_code(), Some(1));
    h.advance(secs(60));
    check_eq!(h, h.spawned_since(mark), vec![]);
}

#[test]
fn never_exits_0_when_the_last_exit_was_clean() {
    let mut h = Harness::started(P::new(2).policy(RestartPolicy::Never));
    h.exit(h.last_spawn(0), 3);
    check_eq!(h, h.exit_code(), None);
    h.exit(h.last_spawn(1), 0);
    check_eq!(h, h.exit_code(), Some(0));
}

#[test]
fn on_failure_exits_0_once_every_worker_exited_cleanly() {
    let mut h = Harness::started(P::new(1));
    let out = h.exit(h.last_spawn(0), 0);
    check!(h, out.contains(&Action::Exit(0)));
    check_eq!(h, h.exit_code(), Some(0));
}

#[test]
fn never_exits_1_when_the_only_worker_is_not_ready_in_time() {
    let mut h = Harness::start(P::new(1).policy(RestartPolicy::Never));
    let w = h.last_spawn(0);
    h.advance(secs(5));
    h.killed(w, Signal::SIGKILL);
    check_eq!(h, h.exit_code(), Some(1));
}

// ---- watchdog ----

#[test]
fn watchdog_aborts_a_silent_worker_then_kills_it_and_restarts_it() {
    let mut h = Harness::started(P::new(1).watchdog(secs(2)));
    let w = h.last_spawn(0);
    check_eq!(h, h.sup.next_deadline(), Some(h.base + secs(2)));

    h.advance(ms(1500));
    let ping = Notification {
        watchdog_ping: true,
        ..Default::default()
    };
    h.notify(w, ping);
    check_eq!(
        h,
        h.sup.next_deadline(),
        Some(h.base + ms(3500)),
        "pushed out"
    );

    h.advance(ms(1999));
    check_eq!(h, h.signals(w), vec![]);
    h.advance(ms(1));
    check_eq!(h, h.signals(w), vec![Signal::SIGABRT]);
    check_eq!(h, h.snap().ready, 0, "a hung worker is not capacity");

    // It ignores SIGABRT: SIGKILL after the stop timeout.
    check_eq!(h, h.sup.next_deadline(), Some(h.base + ms(6500)));
    h.advance(ms(2999));
    check_eq!(h, h.signals(w), vec![Signal::SIGABRT]);
    h.advance(ms(1));
    check_eq!(h, h.signals(w), vec![Signal::SIGABRT, Signal::SIGKILL]);

    let mark = h.mark();
    h.killed(w, Signal::SIGKILL);
    h.advance(ms(100));
    check_eq!(h, h.spawned_since(mark), vec![(0, 1)]);
    check_eq!(h, h.snap().restarts, 1);
}

#[test]
fn watchdog_trigger_aborts_at_once_and_its_exit_counts_as_a_failure() {
    let mut h = Harness::started(P::new(1));
    let w = h.last_spawn(0);
    let trigger = Notification {
        watchdog_trigger: true,
        ..Default::default()
    };
    let out = h.notify(w, trigger);
    let sigabrt = Action::Signal {
        id: w,
        pid: h.pid(w),
        signal: Signal::SIGABRT,
    };
    check!(h, out.contains(&sigabrt));

    // Even a clean exit: corral gave up on it, so on-failure restarts it.
    let mark = h.mark();
    h.exit(w, 0);
    check_eq!(h, h.views(0)[0].state, "backoff");
    h.advance(ms(100));
    check_eq!(h, h.spawned_since(mark), vec![(0, 1)]);
    check_eq!(h, h.exit_code(), None);
}

// ---- rolling reload ----

#[test]
fn rolling_reload_replaces_one_slot_at_a_time_without_losing_capacity() {
    let mut h = Harness::started(P::new(3));
    let old: Vec<WorkerId> = (0..3).map(|s| h.serving(s)).collect();
    let (mark, hist) = (h.mark(), h.history.len());

    let out = h.roll(2, P::new(3), Scope::All, Some(7));
    let reloading = out
        .iter()
        .position(|a| *a == Action::Systemd(Systemd::Reloading));
    let spawn = out.iter().position(|a| matches!(a, Action::Spawn { .. }));
    check!(
        h,
        reloading.is_some() && reloading < spawn,
        "RELOADING=1 first"
    );
    check_eq!(h, h.systemd_since(mark), vec![Systemd::Reloading]);
    check_eq!(h, h.snap().state, "reloading");

    let mut new = Vec::new();
    for slot in 0..3 {
        let expected: Vec<(u32, u32)> = (0..=slot).map(|s| (s, 2)).collect();
        check_eq!(
            h,
            h.spawned_since(mark),
            expected,
            "one new worker at a time"
        );
        let n = h.spawn_of(slot, 2);
        check_eq!(
            h,
            h.signals(old[slot as usize]),
            vec![],
            "old {slot} kept until new ready"
        );
        h.ready(n);
        check_eq!(h, h.signals(old[slot as usize]), vec![Signal::SIGTERM]);
        check_eq!(h, h.reply(7), None);
        new.push(n);
    }
    check_eq!(h, h.spawned_since(mark).len(), 3);

    // Everything is replaced, but the old workers are still draining.
    check_eq!(
        h,
        h.snap().reload.map(|r| (r.replaced, r.total)),
        Some((3, 3))
    );
    check_eq!(h, h.systemd_since(mark), vec![Systemd::Reloading]);
    check_eq!(h, h.forgotten(), Vec::<u32>::new());
    h.exit(old[0], 0);
    h.exit(old[2], 0);
    check_eq!(h, h.reply(7), None);
    check_eq!(
        h,
        h.forgotten(),
        Vec::<u32>::new(),
        "generation 1 still runs in slot 1"
    );

    h.exit(old[1], 0);
    check_eq!(
        h,
        h.reply(7),
        ok("generation 2 serving: 3 worker(s) replaced")
    );
    check_eq!(
        h,
        h.systemd_since(mark),
        vec![Systemd::Reloading, Systemd::Ready]
    );
    check_eq!(h, h.forgotten(), vec![1]);

    check!(h, h.min_ready_since(hist) >= 3, "capacity never dropped");
    check_eq!(h, h.max_starting_since(hist, 2), 1, "batch 1");
    for &n in &new {
        check_eq!(h, h.signals(n), vec![]);
    }
    check_eq!(h, h.status(), "3/3 ready · generation 2 · 0 restarts");
    check_eq!(
        h,
        h.layout(),
        vec![(0, 2, "ready"), (1, 2, "ready"), (2, 2, "ready")]
    );
    check_eq!(h, h.snap().state, "running");
    check!(h, !h.sup.is_rolling());
    check_eq!(h, h.sup.active_generation(), 2);
}

#[test]
fn old_workers_that_ignore_the_stop_signal_are_killed_and_the_reload_ends() {
    let mut h = Harness::started(P::new(1));
    let old = h.serving(0);
    h.roll(2, P::new(1), Scope::All, Some(1));
    h.ready(h.spawn_of(0, 2));
    h.advance(secs(3));
    check_eq!(h, h.signals(old), vec![Signal::SIGTERM, Signal::SIGKILL]);
    check_eq!(h, h.reply(1), None);
    h.killed(old, Signal::SIGKILL);
    check_eq!(
        h,
        h.reply(1),
        ok("generation 2 serving: 1 worker(s) replaced")
    );
}

#[test]
fn rolling_reload_with_batch_2_starts_two_at_a_time() {
    let mut h = Harness::started(P::new(3));
    let old: Vec<WorkerId> = (0..3).map(|s| h.serving(s)).collect();
    let (mark, hist) = (h.mark(), h.history.len());

    h.roll(2, P::new(3).batch(2), Scope::All, Some(1));
    check_eq!(h, h.spawned_since(mark), vec![(0, 2), (1, 2)]);
    h.ready(h.spawn_of(1, 2));
    check_eq!(h, h.signals(old[1]), vec![Signal::SIGTERM]);
    check_eq!(h, h.signals(old[0]), vec![]);
    check_eq!(h, h.spawned_since(mark), vec![(0, 2), (1, 2), (2, 2)]);
    h.ready(h.spawn_of(0, 2));
    h.ready(h.spawn_of(2, 2));
    for &o in &old {
        check_eq!(h, h.signals(o), vec![Signal::SIGTERM]);
        h.exit(o, 0);
    }
    check_eq!(
        h,
        h.reply(1),
        ok("generation 2 serving: 3 worker(s) replaced")
    );
    check_eq!(h, h.max_starting_since(hist, 2), 2);
    check!(h, h.min_ready_since(hist) >= 3);
}

#[test]
fn a_batch_larger_than_the_worker_count_starts_them_all_at_once() {
    check_eq!(Harness::new(), Batch::Count(5).slots(2), 2);
    let mut h = Harness::started(P::new(2));
    let (mark, hist) = (h.mark(), h.history.len());
    h.roll(2, P::new(2).batch(5), Scope::All, Some(1));
    check_eq!(h, h.spawned_since(mark), vec![(0, 2), (1, 2)]);
    for slot in 0..2 {
        let old = h.serving(slot);
        h.ready(h.spawn_of(slot, 2));
        h.exit(old, 0);
    }
    check_eq!(
        h,
        h.reply(1),
        ok("generation 2 serving: 2 worker(s) replaced")
    );
    check_eq!(h, h.max_starting_since(hist, 2), 2);
    check!(h, h.min_ready_since(hist) >= 2);
}

/// How slot 1's replacement fails in `failed_roll_keeps_the_slots_not_yet_replaced`.
#[derive(Clone, Copy, Debug)]
enum Failure {
    ExitsBeforeReady,
    TimesOut,
    SpawnFails,
}

/// Slot 0 is replaced, slot 1's replacement fails: the roll stops there.
fn failed_roll_keeps_the_slots_not_yet_replaced(how: Failure) {
    let mut h = Harness::started(P::new(3));
    let old: Vec<WorkerId> = (0..3).map(|s| h.serving(s)).collect();
    if let Failure::SpawnFails = how {
        h.fail_spawn(1, 2, "No such file or directory");
    }
    let (mark, hist) = (h.mark(), h.history.len());
    h.roll(2, P::new(3), Scope::All, Some(1));
    let n0 = h.spawn_of(0, 2);
    h.ready(n0);
    h.exit(old[0], 0);

    let reason = match how {
        Failure::ExitsBeforeReady => {
            h.exit(h.spawn_of(1, 2), 1);
            "exited with code 1"
        }
        Failure::TimesOut => {
            let n1 = h.spawn_of(1, 2);
            h.advance(secs(5));
            check_eq!(
                h,
                h.signals(n1),
                vec![Signal::SIGKILL],
                "the failed worker is killed"
            );
            h.killed(n1, Signal::SIGKILL);
            "was not ready within 5.0s"
        }
        Failure::SpawnFails => "failed to start: No such file or directory",
    };

    let reply = h.reply(1);
    let err = match &reply {
        Some(Err(e)) => e.clone(),
        other => panic!("expected an error reply, got {other:?}\n{}", h.context()),
    };
    check!(
        h,
        err.contains("slot 1"),
        "{how:?}: reason names the slot: {err}"
    );
    check!(h, err.contains(reason), "{how:?}: reason says why: {err}");

    check_eq!(
        h,
        h.spawned_since(mark),
        vec![(0, 2), (1, 2)],
        "slot 2 never tried"
    );
    check_eq!(h, h.signals(old[1]), vec![]);
    check_eq!(h, h.signals(old[2]), vec![]);
    check_eq!(h, h.serving(0), n0);
    check_eq!(h, h.serving(1), old[1]);
    check_eq!(h, h.serving(2), old[2]);
    check_eq!(
        h,
        h.layout(),
        vec![(0, 2, "ready"), (1, 1, "ready"), (2, 1, "ready")]
    );
    let snap = h.snap();
    check_eq!(
        h,
        (snap.state, snap.generation, snap.ready),
        ("running", 1, 3)
    );
    check!(h, snap.reload.is_none());
    check_eq!(
        h,
        h.systemd_since(mark),
        vec![Systemd::Reloading, Systemd::Ready]
    );
    check!(h, h.min_ready_since(hist) >= 3);
    check_eq!(h, h.status(), "3/3 ready · generation 1 · 0 restarts");

    // Nothing is left pending: no restart, no second try.
    check_eq!(h, h.sup.next_deadline(), None);
    let later = h.mark();
    h.advance(secs(60));
    check_eq!(h, h.spawned_since(later), vec![]);
}

#[test]
fn failed_roll_when_a_replacement_exits_before_ready() {
    failed_roll_keeps_the_slots_not_yet_replaced(Failure::ExitsBeforeReady);
}

#[test]
fn failed_roll_when_a_replacement_is_not_ready_in_time() {
    failed_roll_keeps_the_slots_not_yet_replaced(Failure::TimesOut);
}

#[test]
fn failed_roll_when_a_replacement_cannot_be_spawned() {
    failed_roll_keeps_the_slots_not_yet_replaced(Failure::SpawnFails);
}

#[test]
fn failed_roll_kills_the_other_replacements_in_flight() {
    let mut h = Harness::started(P::new(4));
    let old: Vec<WorkerId> = (0..4).map(|s| h.serving(s)).collect();
    let mark = h.mark();
    h.roll(2, P::new(4).batch(2), Scope::All, Some(1));
    let (n0, n1) = (h.spawn_of(0, 2), h.spawn_of(1, 2));
    h.exit(n1, 1);
    check_eq!(h, h.signals(n0), vec![Signal::SIGKILL], "aborted");
    check_eq!(h, h.reply(1), None, "waits for the aborted worker to go");

    h.ready(n0);
    check_eq!(h, h.signals(n0), vec![Signal::SIGKILL], "too late to count");
    h.killed(n0, Signal::SIGKILL);
    check!(
        h,
        matches!(h.reply(1), Some(Err(e)) if e.contains("slot 1"))
    );
    check_eq!(h, h.spawned_since(mark), vec![(0, 2), (1, 2)]);
    for (slot, &o) in old.iter().enumerate() {
        check_eq!(h, h.signals(o), vec![]);
        check_eq!(h, h.serving(slot as u32), o);
    }
    check_eq!(h, h.forgotten(), vec![2], "nothing runs generation 2");
    check_eq!(h, h.sup.next_deadline(), None);
}

#[test]
fn reloads_asked_for_during_a_reload_are_coalesced_into_one_with_the_newest_config() {
    let mut h = Harness::started(P::new(3));
    let mark = h.mark();
    h.roll(2, P::new(3), Scope::All, Some(1));
    let out = h.roll(3, P::new(3), Scope::All, Some(2));
    check_eq!(
        h,
        h.spawned_since(mark),
        vec![(0, 2)],
        "nothing more started"
    );
    check!(h, !out.iter().any(|a| matches!(a, Action::Forget { .. })));
    let out = h.roll(4, P::new(3), Scope::All, Some(3));
    check!(
        h,
        out.contains(&Action::Forget { generation: 3 }),
        "3 never runs"
    );

    for slot in 0..3 {
        let old = h.serving(slot);
        h.ready(h.spawn_of(slot, 2));
        h.exit(old, 0);
    }
    check_eq!(
        h,
        h.reply(1),
        ok("generation 2 serving: 3 worker(s) replaced")
    );
    check_eq!(h, (h.reply(2), h.reply(3)), (None, None));
    check_eq!(h, h.snap().reload.map(|r| r.generation), Some(4));
    check_eq!(
        h,
        h.systemd_since(mark),
        vec![Systemd::Reloading, Systemd::Ready, Systemd::Reloading]
    );

    for slot in 0..3 {
        let old = h.serving(slot);
        h.ready(h.spawn_of(slot, 4));
        h.exit(old, 0);
    }
    let done = ok("generation 4 serving: 3 worker(s) replaced");
    check_eq!(h, (h.reply(2), h.reply(3)), (done.clone(), done));
    let generations: Vec<u32> = h.spawned_since(mark).iter().map(|s| s.1).collect();
    check_eq!(
        h,
        generations,
        vec![2, 2, 2, 4, 4, 4],
        "generation 3 never spawned"
    );
    check_eq!(h, h.forgotten(), vec![3, 1, 2]);
    check_eq!(h, h.status(), "3/3 ready · generation 4 · 0 restarts");
    check!(h, !h.sup.is_rolling());
}

/// Replaces every slot of a roll to `generation` in turn: each replacement ready, then the old
/// worker exits.
fn finish_roll(h: &mut Harness, slots: u32, generation: u32) {
    for slot in 0..slots {
        let old = h.serving(slot);
        h.ready(h.spawn_of(slot, generation));
        h.exit(old, 0);
    }
}

#[test]
fn reloads_asked_while_the_config_is_read_share_the_next_reading_and_its_roll() {
    let mut h = Harness::started(P::new(2));
    let mark = h.mark();
    let out = h.reload(Some(1));
    check!(
        h,
        out.contains(&Action::Load),
        "the first reload reads the config"
    );
    // Asked while it is being read (SIGHUP among them): they wait for the next reading.
    for request in [Some(2), None, Some(3), Some(4)] {
        h.reload(request);
    }
    check_eq!(h, h.loads_since(mark), 1, "one reading at a time");
    let out = h.loaded(Ok((2, P::new(2))));
    check!(
        h,
        out.contains(&Action::Load),
        "the next reading, for 2, 3, 4"
    );
    check_eq!(h, h.spawned_since(mark), vec![(0, 2)], "1's roll began");
    // Read while the first roll is under way: queued behind it, for all three.
    h.loaded(Ok((3, P::new(2))));
    check_eq!(
        h,
        h.loads_since(mark),
        2,
        "nobody waits for another reading"
    );
    finish_roll(&mut h, 2, 2);
    check_eq!(
        h,
        h.reply(1),
        ok("generation 2 serving: 2 worker(s) replaced")
    );
    check_eq!(h, (h.reply(2), h.reply(3), h.reply(4)), (None, None, None));
    finish_roll(&mut h, 2, 3);
    let done = ok("generation 3 serving: 2 worker(s) replaced");
    for request in [2, 3, 4] {
        check_eq!(h, h.reply(request), done.clone(), "request {request}");
    }
    check_eq!(h, h.loads_since(mark), 2);
    let generations: Vec<u32> = h.spawned_since(mark).iter().map(|s| s.1).collect();
    check_eq!(h, generations, vec![2, 2, 3, 3], "two rolls");
    check_eq!(h, h.status(), "2/2 ready · generation 3 · 0 restarts");
}

#[test]
fn a_refused_config_is_the_answer_of_everyone_who_shared_its_reading() {
    let mut h = Harness::started(P::new(2));
    let mark = h.mark();
    h.reload(Some(1));
    h.reload(Some(2));
    h.reload(Some(3));
    let out = h.loaded(Err("reload refused, nothing changed:\nx.toml:1:1: bad"));
    check_eq!(
        h,
        h.reply(1),
        Some(Err(
            "reload refused, nothing changed:\nx.toml:1:1: bad".into()
        ))
    );
    check!(
        h,
        out.contains(&Action::Load),
        "2 and 3 asked after it began"
    );
    h.loaded(Err("still bad"));
    let refused = Some(Err("still bad".to_string()));
    check_eq!(h, (h.reply(2), h.reply(3)), (refused.clone(), refused));
    check_eq!(h, h.loads_since(mark), 2);
    check_eq!(h, h.spawned_since(mark), vec![], "nothing changed");
    // The next reload reads the config again.
    let out = h.reload(Some(4));
    check!(h, out.contains(&Action::Load));
}

#[test]
fn stop_answers_the_reloads_waiting_for_a_reading_and_forgets_what_it_read() {
    let mut h = Harness::started(P::new(2));
    let mark = h.mark();
    h.reload(Some(1));
    h.reload(Some(2));
    h.stop();
    let stopping = Some(Err("corral is stopping".to_string()));
    check_eq!(
        h,
        (h.reply(1), h.reply(2)),
        (stopping.clone(), stopping.clone())
    );
    // The reading under way ends after: nothing runs it, and no other reading follows.
    let out = h.loaded(Ok((2, P::new(2))));
    check_eq!(h, out, vec![Action::Forget { generation: 2 }]);
    // Asked for while stopping: answered at once.
    let out = h.reload(Some(3));
    check_eq!(h, h.reply(3), stopping);
    check!(h, !out.contains(&Action::Load));
    check_eq!(h, h.loads_since(mark), 1);
    check_eq!(h, h.spawned_since(mark), vec![]);
}

#[test]
fn reload_to_more_workers_starts_the_added_slots_first() {
    let mut h = Harness::started(P::new(3));
    let (mark, hist) = (h.mark(), h.history.len());
    h.roll(2, P::new(5), Scope::All, Some(1));
    for slot in [3, 4, 0, 1, 2] {
        let old = (slot < 3).then(|| h.serving(slot));
        h.ready(h.spawn_of(slot, 2));
        if let Some(old) = old {
            check_eq!(h, h.signals(old), vec![Signal::SIGTERM]);
            h.exit(old, 0);
        }
    }
    let order: Vec<u32> = h.spawned_since(mark).iter().map(|s| s.0).collect();
    check_eq!(h, order, vec![3, 4, 0, 1, 2]);
    check_eq!(
        h,
        h.reply(1),
        ok("generation 2 serving: 5 worker(s) replaced")
    );
    check!(h, h.min_ready_since(hist) >= 3);
    check_eq!(h, h.snap().desired, 5);
    check_eq!(h, h.status(), "5/5 ready · generation 2 · 0 restarts");
}

#[test]
fn slots_added_by_a_reload_do_not_count_against_the_old_worker_count() {
    // During start-up: slot 2 is not ready yet, slot 3 (added by the reload) is.
    let mut h = Harness::start(P::new(3));
    h.ready(h.last_spawn(0));
    h.ready(h.last_spawn(1));
    h.roll(2, P::new(5), Scope::All, Some(1));
    h.ready(h.spawn_of(3, 2));
    check_eq!(
        h,
        h.systemd(),
        vec![Systemd::Reloading],
        "no READY=1 while slot 2 starts"
    );
    check_eq!(h, h.snap().ready, 2);

    // Running: never "4/3 ready".
    let mut h = Harness::started(P::new(3));
    let hist = h.history.len();
    h.roll(2, P::new(5), Scope::All, Some(1));
    h.ready(h.spawn_of(3, 2));
    let over = h.history[hist..].iter().any(|s| s.ready > s.desired);
    check!(h, !over, "more ready than desired: {}", h.status());
}

#[test]
fn reload_to_fewer_workers_stops_the_surplus_slot_only_at_the_end() {
    let mut h = Harness::started(P::new(3));
    let old: Vec<WorkerId> = (0..3).map(|s| h.serving(s)).collect();
    let (mark, hist) = (h.mark(), h.history.len());
    h.roll(2, P::new(2), Scope::All, Some(1));

    h.ready(h.spawn_of(0, 2));
    h.exit(old[0], 0);
    check_eq!(h, h.signals(old[2]), vec![], "slot 2 serves until the end");
    let out = h.ready(h.spawn_of(1, 2));
    let stops: Vec<WorkerId> = out
        .iter()
        .filter_map(|a| match a {
            Action::Signal { id, .. } => Some(*id),
            _ => None,
        })
        .collect();
    check_eq!(
        h,
        stops,
        vec![old[1], old[2]],
        "slot 1's old worker, then slot 2"
    );
    check_eq!(h, h.signals(old[2]), vec![Signal::SIGTERM]);
    check_eq!(h, h.spawned_since(mark), vec![(0, 2), (1, 2)]);
    check!(h, h.min_ready_since(hist) >= 2);

    h.exit(old[1], 0);
    h.exit(old[2], 0);
    check_eq!(h, h.snap().desired, 2);
    check_eq!(h, h.layout(), vec![(0, 2, "ready"), (1, 2, "ready")]);
    check!(
        h,
        h.status()
            .starts_with("2/2 ready · generation 2 · 0 restarts"),
        "status shows the new count"
    );
}

#[test]
fn reload_to_fewer_workers_replies_once_the_surplus_worker_has_exited() {
    let mut h = Harness::started(P::new(3));
    let old: Vec<WorkerId> = (0..3).map(|s| h.serving(s)).collect();
    let mark = h.mark();
    h.roll(2, P::new(2), Scope::All, Some(1));
    h.ready(h.spawn_of(0, 2));
    h.ready(h.spawn_of(1, 2));
    for &o in &old {
        h.exit(o, 0);
    }
    check_eq!(
        h,
        h.reply(1),
        ok("generation 2 serving: 2 worker(s) replaced")
    );
    check_eq!(
        h,
        h.systemd_since(mark),
        vec![Systemd::Reloading, Systemd::Ready]
    );
    check!(h, !h.sup.is_rolling());
    check_eq!(h, h.status(), "2/2 ready · generation 2 · 0 restarts");
    check_eq!(h, h.snap().state, "running");
}

#[test]
fn failed_reload_to_more_workers_drops_the_added_slots_and_replies() {
    let mut h = Harness::started(P::new(3));
    let old: Vec<WorkerId> = (0..3).map(|s| h.serving(s)).collect();
    h.roll(2, P::new(5), Scope::All, Some(1));
    let n3 = h.spawn_of(3, 2);
    h.ready(n3);
    h.exit(h.spawn_of(4, 2), 1);
    check_eq!(
        h,
        h.signals(n3),
        vec![Signal::SIGTERM],
        "the added slot goes again"
    );
    h.exit(n3, 0);

    check!(
        h,
        matches!(h.reply(1), Some(Err(e)) if e.contains("slot 4"))
    );
    check!(h, !h.sup.is_rolling());
    check_eq!(h, h.snap().desired, 3);
    for (slot, &o) in old.iter().enumerate() {
        check_eq!(h, h.serving(slot as u32), o);
    }
    check_eq!(h, h.status(), "3/3 ready · generation 1 · 0 restarts");
}

#[test]
fn restart_right_after_a_scale_down_ends_when_the_scaled_away_worker_exits() {
    let mut h = Harness::started(P::new(3));
    let gone = h.serving(2);
    h.scale(2, Some(1));
    // `corral restart`: same config, the current count.
    h.roll(2, P::new(2), Scope::All, Some(2));
    for slot in 0..2 {
        let old = h.serving(slot);
        h.ready(h.spawn_of(slot, 2));
        h.exit(old, 0);
    }
    h.exit(gone, 0);
    check_eq!(
        h,
        h.reply(2),
        ok("generation 2 serving: 2 worker(s) replaced")
    );
    check!(h, !h.sup.is_rolling());
}

#[test]
fn a_queued_restart_of_a_slot_removed_by_the_running_reload_is_refused() {
    let mut h = Harness::started(P::new(3));
    let old: Vec<WorkerId> = (0..3).map(|s| h.serving(s)).collect();
    let mark = h.mark();
    h.roll(2, P::new(2), Scope::All, Some(1));
    // Valid when asked: slot 2 still exists.
    h.roll(3, P::new(3), Scope::Slot(2), Some(2));
    h.ready(h.spawn_of(0, 2));
    h.ready(h.spawn_of(1, 2));
    for &o in &old {
        h.exit(o, 0);
    }
    check_eq!(
        h,
        h.reply(1),
        ok("generation 2 serving: 2 worker(s) replaced")
    );
    check_eq!(
        h,
        h.reply(2),
        Some(Err("there is no worker 2 (slots are 0..2)".to_string()))
    );
    check_eq!(h, h.spawned_since(mark), vec![(0, 2), (1, 2)]);
    check!(h, h.forgotten().contains(&3));
    check!(h, !h.sup.is_rolling());
}

#[test]
fn a_crash_of_the_old_worker_while_its_replacement_starts_spawns_nothing_more() {
    let mut h = Harness::started(P::new(3));
    let old0 = h.serving(0);
    let mark = h.mark();
    h.roll(2, P::new(3), Scope::All, Some(1));
    let n0 = h.spawn_of(0, 2);
    h.exit(old0, 1);
    check_eq!(h, h.layout()[0], (0, 2, "starting"));
    check_eq!(
        h,
        h.sup.next_deadline(),
        Some(h.now + secs(5)),
        "only n0's readiness"
    );
    h.advance(secs(1));
    check_eq!(h, h.spawned_since(mark), vec![(0, 2)]);

    h.ready(n0);
    check_eq!(h, h.serving(0), n0);
    check_eq!(h, h.spawned_since(mark), vec![(0, 2), (1, 2)]);
    for slot in 1..3 {
        let old = h.serving(slot);
        h.ready(h.spawn_of(slot, 2));
        h.exit(old, 0);
    }
    check_eq!(
        h,
        h.reply(1),
        ok("generation 2 serving: 3 worker(s) replaced")
    );
    check_eq!(h, h.spawned_since(mark), vec![(0, 2), (1, 2), (2, 2)]);
    check_eq!(h, h.signals(n0), vec![]);
}

#[test]
fn a_slot_in_backoff_when_a_reload_starts_is_filled_by_the_new_generation() {
    let mut h = Harness::started(P::new(3));
    h.exit(h.serving(0), 1);
    check_eq!(h, h.views(0)[0].state, "backoff");
    let mark = h.mark();
    h.roll(2, P::new(3), Scope::All, Some(1));
    check_eq!(h, h.spawned_since(mark), vec![(0, 2)]);
    h.advance(ms(100));
    check_eq!(
        h,
        h.spawned_since(mark),
        vec![(0, 2)],
        "the backoff spawns nothing"
    );

    let n0 = h.spawn_of(0, 2);
    h.ready(n0);
    check_eq!(h, h.serving(0), n0);
    for slot in 1..3 {
        let old = h.serving(slot);
        h.ready(h.spawn_of(slot, 2));
        h.exit(old, 0);
    }
    check_eq!(
        h,
        h.reply(1),
        ok("generation 2 serving: 3 worker(s) replaced")
    );
    check_eq!(h, h.status(), "3/3 ready · generation 2 · 1 restart");
    check_eq!(h, h.sup.next_deadline(), None);
}

#[test]
fn a_failed_replacement_of_a_slot_in_backoff_falls_back_to_restarting_it() {
    let mut h = Harness::started(P::new(2));
    h.exit(h.serving(0), 1);
    let mark = h.mark();
    h.roll(2, P::new(2), Scope::All, Some(1));
    h.exit(h.spawn_of(0, 2), 1);
    check!(
        h,
        matches!(h.reply(1), Some(Err(e)) if e.contains("slot 0"))
    );
    check_eq!(h, h.views(0)[0].state, "backoff");
    h.advance(ms(200));
    check_eq!(h, h.spawned_since(mark), vec![(0, 2), (0, 1)]);
    h.ready(h.last_spawn(0));
    check_eq!(h, h.status(), "2/2 ready · generation 1 · 2 restarts");
}

#[test]
fn a_slot_crashing_during_a_reload_restarts_and_is_then_replaced() {
    let mut h = Harness::started(P::new(3));
    let mark = h.mark();
    h.roll(2, P::new(3), Scope::All, Some(1));
    h.exit(h.serving(2), 1);
    h.advance(ms(100));
    check_eq!(h, h.spawned_since(mark), vec![(0, 2), (2, 1)]);
    h.ready(h.spawn_of(2, 1));
    for slot in 0..3 {
        let old = h.serving(slot);
        h.ready(h.spawn_of(slot, 2));
        h.exit(old, 0);
    }
    check_eq!(
        h,
        h.reply(1),
        ok("generation 2 serving: 3 worker(s) replaced")
    );
    check_eq!(
        h,
        h.layout(),
        vec![(0, 2, "ready"), (1, 2, "ready"), (2, 2, "ready")]
    );
}

#[test]
fn roll_of_one_slot_replaces_only_that_slot() {
    let mut h = Harness::started(P::new(3));
    let old: Vec<WorkerId> = (0..3).map(|s| h.serving(s)).collect();
    let mark = h.mark();
    h.roll(2, P::new(3), Scope::Slot(1), Some(4));
    check_eq!(h, h.spawned_since(mark), vec![(1, 2)]);
    h.ready(h.spawn_of(1, 2));
    check_eq!(h, h.signals(old[1]), vec![Signal::SIGTERM]);
    h.exit(old[1], 0);
    check_eq!(
        h,
        h.reply(4),
        ok("generation 2 serving: 1 worker(s) replaced")
    );
    check_eq!(
        h,
        h.systemd_since(mark),
        vec![Systemd::Reloading, Systemd::Ready]
    );
    check_eq!(h, (h.signals(old[0]), h.signals(old[2])), (vec![], vec![]));
    check_eq!(
        h,
        h.layout(),
        vec![(0, 1, "ready"), (1, 2, "ready"), (2, 1, "ready")]
    );
    check_eq!(h, (h.snap().generation, h.snap().desired), (1, 3));
    check_eq!(
        h,
        h.forgotten(),
        Vec::<u32>::new(),
        "both generations still run"
    );
}

#[test]
fn roll_of_a_slot_out_of_range_is_refused() {
    let mut h = Harness::started(P::new(3));
    let mark = h.mark();
    h.roll(2, P::new(3), Scope::Slot(3), Some(5));
    check_eq!(
        h,
        h.reply(5),
        Some(Err("there is no worker 3 (slots are 0..3)".to_string()))
    );
    check_eq!(h, h.spawned_since(mark), vec![]);
    check_eq!(h, h.systemd_since(mark), vec![]);
    check!(h, !h.sup.is_rolling());
}

#[test]
fn a_refused_roll_forgets_its_generation() {
    let mut h = Harness::started(P::new(3));
    let out = h.roll(2, P::new(3), Scope::Slot(3), Some(5));
    check!(h, out.contains(&Action::Forget { generation: 2 }));
}

#[test]
fn a_replacement_given_up_on_stops_the_roll_at_once() {
    let mut h = Harness::started(P::new(4));
    let old: Vec<WorkerId> = (0..4).map(|s| h.serving(s)).collect();
    let mark = h.mark();
    h.roll(2, P::new(4).batch(2), Scope::All, Some(1));
    let (n0, n1) = (h.spawn_of(0, 2), h.spawn_of(1, 2));
    let extend = Notification {
        extend_timeout: Some(secs(10)),
        ..Default::default()
    };
    h.notify(n0, extend);
    h.advance(secs(5));
    check_eq!(h, h.signals(n1), vec![Signal::SIGKILL], "given up on");
    // SIGKILL is sent but the process has not been reaped yet; n0 gets ready meanwhile.
    h.advance(secs(1));
    h.ready(n0);
    check_eq!(
        h,
        h.spawned_since(mark),
        vec![(0, 2), (1, 2)],
        "the roll goes no further"
    );
    check_eq!(h, h.signals(old[0]), vec![], "slot 0 keeps its old worker");
}

// ---- scale ----

#[test]
fn live_scale_up_adds_slots_and_scale_down_stops_the_highest() {
    let mut h = Harness::started(P::new(3));
    let mark = h.mark();
    h.scale(5, Some(1));
    check_eq!(h, h.spawned_since(mark), vec![(3, 1), (4, 1)]);
    check_eq!(h, h.reply(1), ok(&scaled(3, 5)));
    check_eq!(h, h.status(), "3/5 ready · generation 1 · 0 restarts");
    h.ready(h.last_spawn(3));
    h.ready(h.last_spawn(4));
    check_eq!(h, h.status(), "5/5 ready · generation 1 · 0 restarts");
    check_eq!(h, h.systemd(), vec![Systemd::Ready], "no second READY=1");

    let ids: Vec<WorkerId> = (0..5).map(|s| h.serving(s)).collect();
    let mark = h.mark();
    h.scale(2, Some(2));
    check_eq!(h, h.reply(2), ok(&scaled(5, 2)));
    for (slot, &id) in ids.iter().enumerate() {
        let expected = if slot >= 2 {
            vec![Signal::SIGTERM]
        } else {
            vec![]
        };
        check_eq!(h, h.signals(id), expected, "slot {slot}");
    }
    check_eq!(h, (h.snap().desired, h.snap().ready), (2, 2));
    check_eq!(h, h.status(), "2/2 ready · generation 1 · 0 restarts");
    for &id in &ids[2..] {
        h.exit(id, 0);
    }
    check_eq!(h, h.layout(), vec![(0, 1, "ready"), (1, 1, "ready")]);
    check_eq!(h, h.spawned_since(mark), vec![]);
    check_eq!(h, h.sup.next_deadline(), None);
    check_eq!(h, h.exit_code(), None);
    check_eq!(h, h.snap().restarts, 0);
}

#[test]
fn scaling_back_up_refills_a_slot_once_its_worker_has_drained() {
    let mut h = Harness::started(P::new(3));
    let w2 = h.serving(2);
    h.scale(2, Some(1));
    let mark = h.mark();
    h.scale(3, Some(2));
    check_eq!(h, h.reply(2), ok(&scaled(2, 3)));
    check_eq!(h, h.spawned_since(mark), vec![], "slot 2 still drains");
    h.exit(w2, 0);
    check_eq!(h, h.spawned_since(mark), vec![(2, 1)]);
    h.ready(h.last_spawn(2));
    check_eq!(h, h.status(), "3/3 ready · generation 1 · 0 restarts");
}

#[test]
fn scale_to_zero_and_scale_during_a_reload_are_refused() {
    let mut h = Harness::started(P::new(3));
    let mark = h.mark();
    h.scale(0, Some(1));
    check_eq!(
        h,
        h.reply(1),
        Some(Err(
            "cannot scale to 0 workers (stop the service instead)".to_string()
        ))
    );
    check_eq!(h, h.snap().desired, 3);
    check_eq!(h, h.spawned_since(mark), vec![]);

    h.roll(2, P::new(3), Scope::All, None);
    h.scale(5, Some(2));
    check_eq!(
        h,
        h.reply(2),
        Some(Err("a reload is under way; scale after it".to_string()))
    );
    check_eq!(h, h.spawned_since(mark), vec![(0, 2)]);
}

// ---- stop ----

#[test]
fn stop_asks_every_worker_to_go_kills_stragglers_and_exits_0() {
    let mut h = Harness::started(P::new(3));
    let ids: Vec<WorkerId> = (0..3).map(|s| h.serving(s)).collect();
    let mark = h.mark();
    h.stop();
    check_eq!(h, h.systemd_since(mark), vec![Systemd::Stopping]);
    for &id in &ids {
        check_eq!(h, h.signals(id), vec![Signal::SIGTERM]);
    }
    check_eq!(h, h.snap().state, "stopping");
    check!(
        h,
        h.status().ends_with("stopping, 3 left"),
        "{}",
        h.status()
    );

    h.advance(secs(1));
    h.exit(ids[0], 0);
    h.exit(ids[1], 1); // a crash while stopping is not restarted
    check_eq!(
        h,
        h.sup.next_deadline(),
        Some(h.base + secs(3)),
        "only the kill"
    );
    check_eq!(h, h.exit_code(), None);

    h.advance(ms(1999));
    check_eq!(h, h.signals(ids[2]), vec![Signal::SIGTERM]);
    h.advance(ms(1));
    check_eq!(h, h.signals(ids[2]), vec![Signal::SIGTERM, Signal::SIGKILL]);
    check_eq!(h, h.signals(ids[0]), vec![Signal::SIGTERM]);
    h.killed(ids[2], Signal::SIGKILL);
    check_eq!(h, h.exit_code(), Some(0));
    h.advance(secs(60));
    check_eq!(h, h.spawned_since(mark), vec![]);
}

#[test]
fn a_second_stop_kills_every_worker_at_once() {
    let mut h = Harness::started(P::new(2));
    let ids: Vec<WorkerId> = (0..2).map(|s| h.serving(s)).collect();
    h.stop();
    h.advance(ms(10));
    h.stop();
    for &id in &ids {
        check_eq!(h, h.signals(id), vec![Signal::SIGTERM, Signal::SIGKILL]);
    }
    check_eq!(h, h.sup.next_deadline(), None);
    h.killed(ids[0], Signal::SIGKILL);
    check_eq!(h, h.exit_code(), None);
    h.killed(ids[1], Signal::SIGKILL);
    check_eq!(h, h.exit_code(), Some(0));
}

#[test]
fn stop_answers_a_reload_in_progress_and_the_one_queued_with_an_error() {
    let mut h = Harness::started(P::new(3));
    h.roll(2, P::new(3), Scope::All, Some(1));
    h.roll(3, P::new(3), Scope::All, Some(2));
    let n0 = h.spawn_of(0, 2);
    let mark = h.mark();
    h.stop();
    let stopping = Some(Err("corral is stopping".to_string()));
    check_eq!(
        h,
        (h.reply(1), h.reply(2)),
        (stopping.clone(), stopping.clone())
    );
    check_eq!(h, h.signals(n0), vec![Signal::SIGTERM]);
    check!(h, !h.sup.is_rolling());

    h.roll(4, P::new(3), Scope::All, Some(3));
    check_eq!(h, h.reply(3), stopping);
    for slot in 0..3 {
        h.exit(h.spawn_of(slot, 1), 0);
    }
    h.exit(n0, 1);
    check_eq!(h, h.exit_code(), Some(0));
    check_eq!(h, h.spawned_since(mark), vec![]);
}

#[test]
fn stop_cancels_a_pending_restart() {
    let mut h = Harness::started(P::new(2));
    h.exit(h.serving(0), 1);
    let w1 = h.serving(1);
    let mark = h.mark();
    h.stop();
    check_eq!(h, h.layout(), vec![(1, 1, "stopping")]);
    h.advance(ms(100));
    check_eq!(h, h.spawned_since(mark), vec![]);
    h.exit(w1, 0);
    check_eq!(h, h.exit_code(), Some(0));
}

#[test]
fn stop_with_nothing_running_exits_at_once() {
    let mut h = Harness::started(P::new(1));
    h.exit(h.serving(0), 1);
    let out = h.stop();
    check!(h, out.contains(&Action::Exit(0)));
}

// ---- limits.max_memory ----

const MIB: u64 = 1 << 20;

/// The workers the last `SampleMemory` since `mark` asked about.
fn sampled_since(h: &Harness, mark: usize) -> Vec<WorkerId> {
    h.actions[mark..]
        .iter()
        .filter_map(|a| match a {
            Action::SampleMemory { workers } => Some(workers.iter().map(|w| w.0).collect()),
            _ => None,
        })
        .next_back()
        .unwrap_or_default()
}

#[test]
fn without_a_memory_limit_nothing_is_sampled_and_nothing_is_due() {
    let mut h = Harness::started(P::new(2));
    check_eq!(
        h,
        h.sup.next_deadline(),
        None,
        "an idle supervisor has no timer at all"
    );
    let mark = h.mark();
    h.advance(secs(60));
    check!(h, sampled_since(&h, mark).is_empty());
}

#[test]
fn a_worker_above_max_memory_is_replaced_new_one_ready_first() {
    let mut h = Harness::started(P::new(2).max_memory(100 * MIB));
    let (w0, w1) = (h.last_spawn(0), h.last_spawn(1));
    let mark = h.mark();
    h.advance(MEMORY_SAMPLE_EVERY);
    let mut sampled = sampled_since(&h, mark);
    sampled.sort();
    check_eq!(h, sampled, vec![w0, w1], "ready workers are sampled");

    // Under the limit: nothing happens.
    let mark = h.mark();
    h.step(Event::Memory {
        id: w1,
        rss: 50 * MIB,
    });
    check!(h, h.spawned_since(mark).is_empty());

    // Above: a replacement for slot 0, same generation; the old one keeps serving until then.
    h.step(Event::Memory {
        id: w0,
        rss: 300 * MIB,
    });
    check_eq!(h, h.spawned_since(mark), vec![(0, 1)]);
    check!(
        h,
        h.signals(w0).is_empty(),
        "the old worker serves until its replacement is ready"
    );
    check_eq!(h, h.snap().ready, 2, "capacity is kept");
    // Sampled again while the replacement starts: no second replacement.
    let mark = h.mark();
    h.step(Event::Memory {
        id: w0,
        rss: 300 * MIB,
    });
    check!(h, h.spawned_since(mark).is_empty());

    let new = h.last_spawn(0);
    h.ready(new);
    check_eq!(
        h,
        h.signals(w0),
        vec![Signal::SIGTERM],
        "then it is stopped gracefully"
    );
    check_eq!(h, h.snap().restarts, 1, "and counted as a restart");
    h.exit(w0, 0);
    check_eq!(h, h.snap().ready, 2);
    check!(
        h,
        h.status()
            .starts_with("2/2 ready · generation 1 · 1 restart")
    );
}

#[test]
fn a_replacement_for_memory_that_fails_leaves_the_old_worker_serving() {
    let mut h = Harness::started(P::new(1).max_memory(100 * MIB));
    let old = h.last_spawn(0);
    h.step(Event::Memory {
        id: old,
        rss: 300 * MIB,
    });
    let new = h.last_spawn(0);
    check!(h, new != old);
    h.exit(new, 1);
    check!(h, h.signals(old).is_empty(), "the old worker still serves");
    check_eq!(h, h.snap().ready, 1);
}

/// The reply of a live scale.
fn scaled(from: u32, to: u32) -> String {
    format!(
        "scaled from {from} to {to} workers (until the next reload, which applies the \
         config's `workers` again)"
    )
}

#[test]
fn a_reload_takes_over_a_slot_whose_memory_replacement_is_still_starting() {
    let mut h = Harness::started(P::new(1).max_memory(100 * MIB));
    let old = h.last_spawn(0);
    h.step(Event::Memory {
        id: old,
        rss: 300 * MIB,
    });
    let for_memory = h.last_spawn(0);
    h.roll(2, P::new(1).max_memory(100 * MIB), Scope::All, Some(1));
    check_eq!(
        h,
        h.signals(for_memory),
        vec![Signal::SIGKILL],
        "it gives way to the roll's"
    );
    let new = h.spawn_of(0, 2);
    h.exit(for_memory, 137);
    h.ready(new);
    h.exit(old, 0);
    check_eq!(
        h,
        h.reply(1),
        ok("generation 2 serving: 1 worker(s) replaced")
    );
    let views = h.views(0);
    check_eq!(h, views.len(), 1, "one worker in the slot: {views:?}");
    check_eq!(h, views[0].generation, 2);
}

#[test]
fn a_failed_memory_replacement_is_retried_only_after_the_slots_backoff() {
    let mut h = Harness::started(P::new(1).max_memory(100 * MIB));
    let old = h.last_spawn(0);
    h.step(Event::Memory {
        id: old,
        rss: 300 * MIB,
    });
    h.exit(h.last_spawn(0), 1);
    // Within the backoff (100ms): no new attempt.
    let mark = h.mark();
    h.step(Event::Memory {
        id: old,
        rss: 300 * MIB,
    });
    check!(h, h.spawned_since(mark).is_empty());
    // After it: one more, and on failure the wait doubles.
    h.advance(ms(100));
    h.step(Event::Memory {
        id: old,
        rss: 300 * MIB,
    });
    check_eq!(h, h.spawned_since(mark), vec![(0, 1)]);
    h.exit(h.last_spawn(0), 1);
    let mark = h.mark();
    h.advance(ms(100));
    h.step(Event::Memory {
        id: old,
        rss: 300 * MIB,
    });
    check!(h, h.spawned_since(mark).is_empty(), "200ms now");
    check!(
        h,
        h.signals(old).is_empty(),
        "the old worker serves on throughout"
    );
}

// ---- stop.message ----

/// The stop steps sent to `id`, in order: "message" or the signal's name.
fn stop_steps(h: &Harness, id: WorkerId) -> Vec<String> {
    let pid = h.pid(id);
    h.actions
        .iter()
        .filter_map(|a| match a {
            Action::Message { pid: p, .. } if *p == pid => Some("message".to_string()),
            Action::Signal { pid: p, signal, .. } if *p == pid => Some(signal.as_str().into()),
            _ => None,
        })
        .collect()
}

#[test]
fn stop_message_comes_alone_then_the_signal_then_sigkill_each_after_the_timeout() {
    let mut h = Harness::started(P::new(1).stop_message());
    let w = h.last_spawn(0);
    h.stop();
    check_eq!(
        h,
        stop_steps(&h, w),
        vec!["message"],
        "the message alone, as PM2 sends it"
    );
    h.advance(secs(3) - ms(1));
    check_eq!(h, stop_steps(&h, w), vec!["message"]);
    h.advance(ms(1));
    check_eq!(h, stop_steps(&h, w), vec!["message", "SIGTERM"]);
    h.advance(secs(3) - ms(1));
    check_eq!(h, stop_steps(&h, w), vec!["message", "SIGTERM"]);
    h.advance(ms(1));
    check_eq!(h, stop_steps(&h, w), vec!["message", "SIGTERM", "SIGKILL"]);
    h.killed(w, Signal::SIGKILL);
    check_eq!(h, h.exit_code(), Some(0));
}

#[test]
fn a_worker_that_exits_on_the_message_gets_no_signal() {
    let mut h = Harness::started(P::new(2).stop_message());
    let old = h.last_spawn(1);
    h.roll(2, P::new(2).stop_message(), Scope::All, Some(7));
    let new = h.spawn_of(0, 2);
    h.ready(new);
    let first_old = h.spawns[0].0;
    check_eq!(h, stop_steps(&h, first_old), vec!["message"]);
    h.exit(first_old, 0);
    let new1 = h.spawn_of(1, 2);
    h.ready(new1);
    h.exit(old, 0);
    check_eq!(
        h,
        h.reply(7),
        ok("generation 2 serving: 2 worker(s) replaced")
    );
    check_eq!(h, stop_steps(&h, old), vec!["message"]);
    // Nothing more for them, however long it waits.
    h.advance(secs(10));
    check_eq!(h, stop_steps(&h, first_old), vec!["message"]);
}

#[test]
fn without_a_message_the_signal_comes_first_and_sigkill_after_the_timeout() {
    let mut h = Harness::started(P::new(1));
    let w = h.last_spawn(0);
    h.stop();
    check_eq!(h, stop_steps(&h, w), vec!["SIGTERM"]);
    h.advance(secs(3));
    check_eq!(h, stop_steps(&h, w), vec!["SIGTERM", "SIGKILL"]);
}

#[test]
fn extend_timeout_while_the_message_is_out_pushes_the_signal_back() {
    let mut h = Harness::started(P::new(1).stop_message());
    let w = h.last_spawn(0);
    h.stop();
    h.advance(secs(1));
    let ext = Notification {
        extend_timeout: Some(secs(5)),
        ..Default::default()
    };
    h.notify(w, ext);
    h.advance(secs(4));
    check_eq!(h, stop_steps(&h, w), vec!["message"]);
    h.advance(secs(1));
    check_eq!(h, stop_steps(&h, w), vec!["message", "SIGTERM"]);
}

// ---- readiness mode listen ----

fn probes_since(h: &Harness, mark: usize) -> Vec<Vec<WorkerId>> {
    h.actions[mark..]
        .iter()
        .filter_map(|a| match a {
            Action::Probe { workers } => Some(workers.iter().map(|(id, _)| *id).collect()),
            _ => None,
        })
        .collect()
}

#[test]
fn listen_probes_back_off_to_five_a_second_and_stop_once_ready() {
    let mut h = Harness::start(P::new(1).probe_listeners());
    let w = h.last_spawn(0);
    check!(h, probes_since(&h, 0).is_empty(), "no probe at exec");
    // Probes at 10, 30, 70, 150, 310, 510, 710 ms: doubling, then every 200 ms.
    let mut at = Vec::new();
    let mark = h.mark();
    for _ in 0..800 {
        let before = h.mark();
        h.advance(ms(1));
        if !probes_since(&h, before).is_empty() {
            at.push(h.at().as_millis());
        }
    }
    check_eq!(h, at, vec![10, 30, 70, 150, 310, 510, 710]);
    check!(h, probes_since(&h, mark).iter().all(|p| p == &vec![w]));
    check_eq!(h, h.sup.next_deadline(), Some(h.base + ms(910)));
    let out = h.step(Event::Listening {
        id: w,
        how: "pid 1000 waits for connections (epoll)".into(),
    });
    check!(h, out.contains(&Action::Systemd(Systemd::Ready)));
    check_eq!(h, h.snap().ready, 1);
    let mark = h.mark();
    h.advance(secs(2));
    check!(h, probes_since(&h, mark).is_empty(), "no probe once ready");
}

#[test]
fn in_listen_mode_ready_1_is_not_readiness() {
    let mut h = Harness::start(P::new(1).probe_listeners());
    let w = h.last_spawn(0);
    h.ready(w);
    check_eq!(
        h,
        h.snap().ready,
        0,
        "READY=1 from the program does not count"
    );
    h.step(Event::Listening {
        id: w,
        how: "x".into(),
    });
    check_eq!(h, h.snap().ready, 1);
}

#[test]
fn listen_readiness_times_out_like_any_other_and_a_late_finding_changes_nothing() {
    let mut h = Harness::start(P::new(1).probe_listeners());
    let w = h.last_spawn(0);
    h.advance(secs(5));
    check_eq!(h, h.signals(w), vec![Signal::SIGKILL]);
    let mark = h.mark();
    h.step(Event::Listening {
        id: w,
        how: "late".into(),
    });
    check_eq!(h, h.snap().ready, 0);
    check!(h, probes_since(&h, mark).is_empty());
    h.killed(w, Signal::SIGKILL);
    check_eq!(h, h.views(0)[0].state, "backoff");
}

#[test]
fn a_reload_waits_for_the_listen_probe_of_each_replacement() {
    let mut h = Harness::start(P::new(2).probe_listeners());
    for (id, _, _) in h.spawns.clone() {
        h.step(Event::Listening {
            id,
            how: "x".into(),
        });
    }
    h.roll(2, P::new(2).probe_listeners(), Scope::All, Some(1));
    let new0 = h.spawn_of(0, 2);
    h.advance(secs(2));
    check_eq!(
        h,
        h.spawned_since(0).len(),
        3,
        "the second replacement waits for the first"
    );
    check_eq!(h, h.reply(1), None);
    h.step(Event::Listening {
        id: new0,
        how: "x".into(),
    });
    let new1 = h.spawn_of(1, 2);
    h.step(Event::Listening {
        id: new1,
        how: "x".into(),
    });
    for id in [h.spawns[0].0, h.spawns[1].0] {
        h.exit(id, 0);
    }
    check_eq!(
        h,
        h.reply(1),
        ok("generation 2 serving: 2 worker(s) replaced")
    );
}

#[test]
fn a_reload_to_exec_readiness_says_it_could_not_wait() {
    let mut h = Harness::started(P::new(1));
    h.roll(2, P::new(1).exec_ready(), Scope::All, Some(3));
    let old = h.spawns[0].0;
    h.exit(old, 0);
    let reply = h.reply(3).expect("answered").expect("succeeded");
    check!(
        h,
        reply.starts_with("generation 2 serving: 1 worker(s) replaced")
    );
    check!(
        h,
        reply.contains("warning: readiness.mode = \"exec\""),
        "{reply}"
    );
}

#[test]
fn a_worker_stopped_before_it_was_ready_gets_the_signal_not_the_message() {
    let mut h = Harness::started(P::new(1).stop_message());
    h.roll(2, P::new(1).stop_message(), Scope::All, Some(1));
    let starting = h.spawn_of(0, 2);
    h.stop();
    check_eq!(h, stop_steps(&h, starting), vec!["SIGTERM"]);
    let ready = h.spawns[0].0;
    check_eq!(h, stop_steps(&h, ready), vec!["message"]);
}

// ---- balanced listeners: the serving set and draining ----

/// The two sets of the last `Balance` action: for even spreading, and for source balancing.
fn balance_sets(h: &Harness) -> (Vec<WorkerId>, Vec<WorkerId>) {
    h.actions
        .iter()
        .rev()
        .find_map(|a| match a {
            Action::Balance {
                serving, keeping, ..
            } => Some((serving.clone(), keeping.clone())),
            _ => None,
        })
        .unwrap_or_default()
}

fn serving(h: &Harness) -> Vec<WorkerId> {
    balance_sets(h).0
}

fn keeping(h: &Harness) -> Vec<WorkerId> {
    balance_sets(h).1
}

/// Advances to the next queue check and answers it: `waiting` for the workers listed.
fn answer_checks(h: &mut Harness, waiting: &[WorkerId]) -> Vec<WorkerId> {
    let deadline = h.sup.next_deadline().expect("a check is scheduled");
    h.now = h.now.max(deadline);
    let out = h.tick();
    let asked: Vec<WorkerId> = out
        .iter()
        .filter_map(|a| match a {
            Action::QueueCheck { workers } => Some(workers.clone()),
            _ => None,
        })
        .flatten()
        .collect();
    let answers = asked.iter().map(|id| (*id, waiting.contains(id))).collect();
    h.step(Event::Queued { waiting: answers });
    asked
}

#[test]
fn balanced_workers_get_connections_once_ready_and_a_retired_one_is_drained_first() {
    let mut h = Harness::start(P::new(2).balanced());
    let (a, b) = (h.last_spawn(0), h.last_spawn(1));
    check_eq!(
        h,
        serving(&h),
        vec![a, b],
        "while none is ready, the starting ones"
    );
    h.ready(a);
    check_eq!(h, serving(&h), vec![a]);
    h.ready(b);
    check_eq!(h, serving(&h), vec![a, b]);
    h.roll(2, P::new(2).balanced(), Scope::All, Some(1));
    let a2 = h.spawn_of(0, 2);
    check_eq!(
        h,
        serving(&h),
        vec![a, b],
        "a starting worker gets no connections"
    );
    h.ready(a2);
    // a is steered away from, and not asked to stop yet.
    check_eq!(h, serving(&h), vec![b, a2]);
    check_eq!(h, h.signals(a), vec![]);
    let views = h.views(0);
    let old = views.iter().find(|v| v.generation == 1).unwrap();
    check_eq!(h, old.state, "draining");
    // Its queue still holds connections: no stop.
    let asked = answer_checks(&mut h, &[a]);
    check!(h, asked.contains(&a));
    check_eq!(h, h.signals(a), vec![]);
    // Empty at two checks 100 ms apart: now the stop.
    let start = h.now;
    while h.now < start + ms(140) && h.signals(a).is_empty() {
        answer_checks(&mut h, &[]);
    }
    check_eq!(h, h.signals(a), vec![Signal::SIGTERM]);
    check!(h, h.now - start >= ms(100), "stop.drain");
    // The stop timeout counts from the signal.
    h.advance(secs(3) - ms(1));
    check_eq!(h, h.signals(a), vec![Signal::SIGTERM]);
    h.advance(ms(1));
    check_eq!(h, h.signals(a), vec![Signal::SIGTERM, Signal::SIGKILL]);
}

#[test]
fn a_drain_that_never_empties_ends_after_its_limit() {
    let mut h = Harness::started(P::new(1).balanced());
    let a = h.last_spawn(0);
    h.roll(2, P::new(1).balanced(), Scope::All, None);
    h.ready(h.spawn_of(0, 2));
    let start = h.now;
    while h.signals(a).is_empty() {
        answer_checks(&mut h, &[a]);
        check!(h, h.now <= start + ms(100) + drain::DRAIN_MAX, "bounded");
    }
    check_eq!(h, h.now - start, ms(100) + drain::DRAIN_MAX);
    check!(h, h.context().contains("did not stay empty within 2.1s"));
}

#[test]
fn a_ready_worker_whose_queue_backs_up_is_stepped_around_until_it_empties() {
    let mut h = Harness::started(P::new(3).balanced());
    let ids: Vec<WorkerId> = (0..3).map(|s| h.last_spawn(s)).collect();
    check_eq!(h, serving(&h), ids.clone());
    answer_checks(&mut h, &[]);
    check_eq!(
        h,
        h.sup.next_deadline(),
        Some(h.now + drain::CHECK_SERVING),
        "empty queues: an idle pace"
    );
    answer_checks(&mut h, &[ids[1]]);
    check_eq!(h, serving(&h), ids.clone(), "once is not a stall");
    check_eq!(
        h,
        h.sup.next_deadline(),
        Some(h.now + drain::CHECK_BUSY),
        "connections waiting: the next look comes soon"
    );
    let start = h.now;
    answer_checks(&mut h, &[ids[1]]);
    check_eq!(h, serving(&h), vec![ids[0], ids[2]]);
    check_eq!(
        h,
        h.now - start,
        drain::CHECK_BUSY,
        "stepped around within 10 ms"
    );
    answer_checks(&mut h, &[]);
    check_eq!(h, serving(&h), ids.clone(), "back once its queue is empty");
    // When every worker backs up, all of them serve.
    answer_checks(&mut h, &ids);
    answer_checks(&mut h, &ids);
    check_eq!(h, serving(&h), ids);
}

#[test]
fn a_stalled_worker_is_stepped_around_for_even_spreading_but_keeps_its_source_clients() {
    let mut h = Harness::started(P::new(2).balanced());
    let ids: Vec<WorkerId> = (0..2).map(|s| h.last_spawn(s)).collect();
    for _ in 0..5 {
        answer_checks(&mut h, &[ids[1]]);
    }
    check_eq!(h, serving(&h), vec![ids[0]]);
    check_eq!(
        h,
        keeping(&h),
        ids,
        "source balancing keeps the slot's clients on it"
    );
}

#[test]
fn a_shutdown_does_not_drain_and_unbalanced_workers_are_never_drained() {
    let mut h = Harness::started(P::new(1).balanced());
    let a = h.last_spawn(0);
    h.stop();
    check_eq!(h, h.signals(a), vec![Signal::SIGTERM]);

    let mut h = Harness::started(P::new(1));
    let a = h.last_spawn(0);
    h.roll(2, P::new(1), Scope::All, None);
    h.ready(h.spawn_of(0, 2));
    check_eq!(h, h.signals(a), vec![Signal::SIGTERM]);
    check!(
        h,
        !h.actions
            .iter()
            .any(|x| matches!(x, Action::Balance { .. } | Action::QueueCheck { .. }))
    );
}

#[test]
fn a_shutdown_stops_a_draining_worker_at_once() {
    let mut h = Harness::started(P::new(1).balanced());
    let a = h.last_spawn(0);
    h.roll(2, P::new(1).balanced(), Scope::All, None);
    h.ready(h.spawn_of(0, 2));
    check_eq!(h, h.signals(a), vec![], "draining");
    h.stop();
    check_eq!(h, h.signals(a), vec![Signal::SIGTERM]);
}

#[test]
fn a_worker_that_said_stopping_gets_no_new_connections() {
    let mut h = Harness::started(P::new(2).balanced());
    let (a, b) = (h.last_spawn(0), h.last_spawn(1));
    let stopping = Notification {
        stopping: true,
        ..Default::default()
    };
    h.notify(a, stopping);
    check_eq!(h, serving(&h), vec![b]);
}

#[test]
fn with_no_worker_ready_starting_ones_get_the_connections() {
    let mut h = Harness::start(P::new(2).balanced());
    let (a, b) = (h.last_spawn(0), h.last_spawn(1));
    check_eq!(h, serving(&h), vec![a, b]);
    h.ready(a);
    check_eq!(h, serving(&h), vec![a]);
}

#[test]
fn a_scale_down_is_announced_so_the_slots_kept_socket_goes() {
    let mut h = Harness::started(P::new(3).balanced());
    let before = h.mark();
    h.scale(2, None);
    let announced = h.actions[before..]
        .iter()
        .any(|x| matches!(x, Action::Balance { slots: 2, .. }));
    check!(h, announced);
}

#[test]
fn a_worker_that_exits_while_it_drains_is_done_with() {
    let mut h = Harness::started(P::new(1).balanced());
    let a = h.last_spawn(0);
    h.roll(2, P::new(1).balanced(), Scope::All, Some(5));
    h.ready(h.spawn_of(0, 2));
    h.exit(a, 0);
    check_eq!(
        h,
        h.reply(5),
        ok("generation 2 serving: 1 worker(s) replaced")
    );
    check_eq!(h, h.signals(a), vec![]);
}

#[test]
fn one_serving_worker_alone_is_not_checked_on() {
    let h = Harness::started(P::new(1).balanced());
    check_eq!(
        h,
        h.sup.next_deadline(),
        None,
        "no queue checks: nowhere else to send"
    );
}

// ---- crash loops, stop exit codes, EXTEND_TIMEOUT_USEC's ceiling, memory batches ----

/// Crashes slot 0's worker `n` times, each as soon as its restart is due.
fn crash_slot0(h: &mut Harness, n: u32) {
    for _ in 0..n {
        let w = h.last_spawn(0);
        h.ready(w);
        h.exit(w, 1);
        if h.exit_code().is_some() || h.snap().state == "stopping" {
            return;
        }
        let due = h.sup.next_deadline().expect("a restart is due");
        h.now = h.now.max(due);
        h.tick();
    }
}

#[test]
fn a_slot_that_fails_too_often_within_the_interval_ends_the_app_with_1() {
    let mut h = Harness::started(P::new(2).max_failures(4, secs(60)));
    crash_slot0(&mut h, 3);
    check_eq!(h, h.exit_code(), None, "three failures are a blip");
    crash_slot0(&mut h, 1);
    check_eq!(h, h.snap().state, "stopping");
    check!(
        h,
        h.context().contains("slot 0 failed 4 times within 1m00s")
    );
    let other = h.last_spawn(1);
    check_eq!(
        h,
        h.signals(other),
        vec![Signal::SIGTERM],
        "the rest is stopped gracefully"
    );
    h.exit(other, 0);
    check_eq!(h, h.exit_code(), Some(1));
}

#[test]
fn failures_further_apart_than_the_interval_never_add_up() {
    let mut h = Harness::started(P::new(1).max_failures(3, secs(10)));
    // Each worker serves for restart.reset_after (10s) first: no run of failures either.
    for _ in 0..6 {
        let w = h.last_spawn(0);
        h.ready(w);
        h.advance(secs(11));
        h.exit(w, 1);
        h.advance(secs(2));
    }
    check_eq!(h, h.exit_code(), None);
    check_eq!(h, h.snap().state, "running");
}

#[test]
fn max_failures_0_never_gives_up() {
    let mut h = Harness::started(P::new(1).max_failures(0, secs(60)));
    crash_slot0(&mut h, 50);
    check_eq!(h, h.exit_code(), None);
}

#[test]
fn a_program_that_cannot_be_started_ends_the_app_at_once() {
    let mut h = Harness::new();
    h.fail_spawn(0, 1, "cannot run /nonexistent: No such file or directory");
    h.step(Event::Start {
        params: P::new(1).into(),
    });
    check_eq!(h, h.exit_code(), Some(1));
    check!(
        h,
        h.context()
            .contains("cannot start the app: cannot run /nonexistent")
    );
}

#[test]
fn a_spawn_failure_once_running_is_a_failure_like_others() {
    let mut h = Harness::started(P::new(1));
    let w = h.last_spawn(0);
    h.fail_spawn(0, 1, "cannot create a pipe: Too many open files");
    h.exit(w, 1);
    h.advance(ms(100));
    check_eq!(h, h.exit_code(), None);
    check_eq!(h, h.views(0)[0].state, "backoff");
}

#[test]
fn a_stop_exit_code_leaves_the_slot_empty_and_others_restart() {
    let mut h = Harness::started(
        P::new(2)
            .stop_exit_codes(&[3])
            .policy(RestartPolicy::Always),
    );
    let (a, b) = (h.last_spawn(0), h.last_spawn(1));
    h.exit(a, 3);
    h.advance(secs(5));
    check_eq!(h, h.spawned_since(0).len(), 2, "slot 0 is not refilled");
    check!(
        h,
        h.context()
            .contains("exit code 3 is one of restart.stop_exit_codes")
    );
    h.exit(b, 4);
    h.advance(ms(100));
    check_eq!(
        h,
        h.spawned_since(0).len(),
        3,
        "another code restarts as always"
    );
}

#[test]
fn extend_timeout_is_capped_and_forwarded_to_systemd_while_corral_is_timed() {
    let mut h = Harness::start(P::new(1));
    let w = h.last_spawn(0);
    let out = h.notify(
        w,
        Notification {
            extend_timeout: Some(Duration::from_micros(u64::MAX)),
            ..Default::default()
        },
    );
    // readiness.timeout 5s: at most 50s more.
    check_eq!(h, h.sup.next_deadline(), Some(h.now + secs(50)));
    check!(
        h,
        out.contains(&Action::Systemd(Systemd::Extend(secs(60)))),
        "{out:?}"
    );
    h.advance(secs(50));
    check_eq!(
        h,
        h.signals(w),
        vec![Signal::SIGKILL],
        "the capped deadline holds"
    );

    // While corral stops, systemd times the stop: it hears of the extension too.
    let mut h = Harness::started(P::new(1));
    let w = h.last_spawn(0);
    h.stop();
    let out = h.notify(
        w,
        Notification {
            extend_timeout: Some(secs(20)),
            ..Default::default()
        },
    );
    check!(
        h,
        out.contains(&Action::Systemd(Systemd::Extend(secs(30)))),
        "{out:?}"
    );
}

#[test]
fn memory_replacements_go_a_batch_at_a_time() {
    let mut h = Harness::started(P::new(3).max_memory(100 * MIB));
    let ids: Vec<WorkerId> = (0..3).map(|s| h.last_spawn(s)).collect();
    let mark = h.mark();
    for &id in &ids {
        h.step(Event::Memory { id, rss: 300 * MIB });
    }
    check_eq!(h, h.spawned_since(mark), vec![(0, 1)], "reload.batch is 1");
    h.ready(h.last_spawn(0));
    h.step(Event::Memory {
        id: ids[1],
        rss: 300 * MIB,
    });
    check_eq!(h, h.spawned_since(mark), vec![(0, 1), (1, 1)]);
}

// ---- EXTEND_TIMEOUT_USEC: bounded per phase, forwarded only while systemd waits ----

fn extend(d: Duration) -> Notification {
    Notification {
        extend_timeout: Some(d),
        ..Default::default()
    }
}

/// Sends `EXTEND_TIMEOUT_USEC=` worth `by` every second, as a worker that keeps saying it
/// makes progress, until corral sends it a signal or `limit` has passed; returns when.
fn keep_extending(h: &mut Harness, w: WorkerId, by: Duration, limit: Duration) -> Duration {
    let began = h.at();
    while h.signals(w).len() < 2 && h.at() - began < limit {
        let before = h.signals(w).len();
        h.notify(w, extend(by));
        h.advance(secs(1));
        if h.signals(w).len() > before && h.signals(w).last() == Some(&Signal::SIGKILL) {
            break;
        }
    }
    h.at() - began
}

#[test]
fn a_stream_of_extensions_cannot_keep_a_worker_starting_past_10_times_its_timeout() {
    let mut h = Harness::start(P::new(1));
    let w = h.last_spawn(0);
    let took = keep_extending(&mut h, w, secs(5), secs(300));
    // readiness.timeout 5s: the start lasts 50s at most, however often it is extended.
    check_eq!(h, h.signals(w), vec![Signal::SIGKILL]);
    check_eq!(h, took, secs(50));
}

#[test]
fn a_stream_of_extensions_cannot_keep_a_stop_going_past_10_times_its_timeout() {
    let mut h = Harness::started(P::new(1));
    let w = h.last_spawn(0);
    h.stop();
    let took = keep_extending(&mut h, w, secs(3), secs(300));
    // stop.timeout 3s: SIGTERM, then SIGKILL 30s after the stop began at most.
    check_eq!(h, h.signals(w), vec![Signal::SIGTERM, Signal::SIGKILL]);
    check_eq!(h, took, secs(30));
    h.killed(w, Signal::SIGKILL);
    check_eq!(h, h.exit_code(), Some(0));
}

#[test]
fn extensions_reach_systemd_only_while_it_waits_for_corral_and_never_past_the_ceiling() {
    let extends = |h: &Harness, mark: usize| -> Vec<Duration> {
        h.systemd_since(mark)
            .into_iter()
            .filter_map(|m| match m {
                Systemd::Extend(d) => Some(d),
                _ => None,
            })
            .collect()
    };
    let mut h = Harness::started(P::new(1));
    let gen2 = |h: &mut Harness, systemd_waits: bool| {
        let generation = h.sup.latest_generation() + 1;
        h.step(Event::Roll {
            generation,
            params: P::new(1).into(),
            scope: Scope::All,
            request: None,
            systemd_waits,
        });
    };
    // A roll from `corral reload` or SIGHUP: systemd is not waiting for it, and would only
    // push its watchdog out.
    gen2(&mut h, false);
    let n = h.last_spawn(0);
    let mark = h.mark();
    h.notify(n, extend(secs(20)));
    check_eq!(
        h,
        extends(&h, mark),
        vec![],
        "nothing sent for a roll systemd does not time"
    );
    check_eq!(
        h,
        h.sup.next_deadline(),
        Some(h.now + secs(20)),
        "the worker got it still"
    );
    // An ExecReload= queued behind it: systemd waits from now on, for this roll too.
    gen2(&mut h, true);
    let mark = h.mark();
    h.notify(n, extend(Duration::from_micros(u64::MAX)));
    check_eq!(
        h,
        extends(&h, mark),
        vec![secs(50) + SYSTEMD_MARGIN],
        "capped at 10 × 5s"
    );
    h.advance(secs(1));
    let mark = h.mark();
    h.notify(n, extend(Duration::from_micros(u64::MAX)));
    check_eq!(
        h,
        extends(&h, mark),
        vec![secs(49) + SYSTEMD_MARGIN],
        "repeats move the ceiling no further"
    );
}

// ---- spawn failures at start ----

#[test]
fn once_the_start_is_given_up_the_other_slots_are_not_forked() {
    let mut h = Harness::new();
    h.fail_spawn(0, 1, "cannot run /srv/app: Permission denied");
    h.step(Event::Start {
        params: P::new(3).into(),
    });
    check_eq!(h, h.exit_code(), Some(1));
    check_eq!(h, h.pids.len(), 0, "no worker forked");
    check_eq!(h, h.skipped.len(), 2, "slots 1 and 2 skipped");
    check!(h, !h.context().contains("started"), "no worker started");
}

#[test]
fn a_spawn_failure_that_may_pass_backs_off_at_start_instead_of_ending_the_app() {
    let mut h = Harness::new();
    h.fail_spawn(
        0,
        1,
        "cannot start a worker: Resource temporarily unavailable (os error 11)",
    );
    h.step(Event::Start {
        params: P::new(2).into(),
    });
    check_eq!(h, h.exit_code(), None);
    check_eq!(h, h.views(0)[0].state, "backoff");
    h.advance(ms(100));
    h.ready(h.last_spawn(0));
    h.ready(h.last_spawn(1));
    check_eq!(h, h.snap().ready, 2);
    check!(h, h.systemd().contains(&Systemd::Ready));
}

// ---- slow crash loops and kills from outside ----

#[test]
fn a_slot_never_ready_in_time_ends_the_app_however_slowly_it_fails() {
    // Each try takes 10s: 10 failures take longer than restart.interval (60s).
    let mut h = Harness::start(P::new(1).ready_timeout(secs(10)));
    for _ in 0..200 {
        if h.exit_code().is_some() || h.snap().state == "stopping" {
            break;
        }
        let w = h.last_spawn(0);
        let due = h.sup.next_deadline().expect("a deadline");
        h.now = h.now.max(due);
        h.tick();
        if h.signals(w) == vec![Signal::SIGKILL] && h.sup.worker_by_pid(h.pid(w)).is_some() {
            h.killed(w, Signal::SIGKILL);
        }
    }
    check_eq!(h, h.exit_code(), Some(1));
    check!(
        h,
        h.context()
            .contains("slot 0 failed 10 times in a row, never ready for 10.0s in between")
    );
    check!(
        h,
        h.at() > secs(100),
        "slower than the interval could catch"
    );
}

#[test]
fn workers_that_crash_soon_after_ready_with_a_long_delay_end_the_app() {
    let mut h = Harness::started(P::new(1).delay(secs(6), secs(30)));
    for _ in 0..10 {
        let w = h.last_spawn(0);
        h.ready(w);
        h.advance(secs(1));
        h.exit(w, 1);
        if h.exit_code().is_some() {
            break;
        }
        let due = h.sup.next_deadline().expect("a restart is due");
        h.now = due;
        h.tick();
    }
    check_eq!(h, h.exit_code(), Some(1));
    check!(h, h.context().contains("10 times in a row"));
}

#[test]
fn workers_that_serve_a_while_between_failures_never_end_the_app() {
    let mut h = Harness::started(P::new(1).delay(secs(6), secs(30)));
    for _ in 0..30 {
        let w = h.last_spawn(0);
        h.ready(w);
        h.advance(secs(10));
        h.exit(w, 1);
        let due = h.sup.next_deadline().expect("a restart is due");
        h.now = due;
        h.tick();
    }
    check_eq!(h, h.exit_code(), None);
    check_eq!(h, h.snap().state, "running");
}

#[test]
fn a_sigkill_from_outside_to_a_ready_worker_is_replaced_but_not_counted() {
    let mut h = Harness::started(P::new(1).max_failures(3, secs(60)));
    for _ in 0..10 {
        let w = h.last_spawn(0);
        h.ready(w);
        h.killed(w, Signal::SIGKILL);
        let due = h.sup.next_deadline().expect("a restart is due");
        h.now = due;
        h.tick();
    }
    check_eq!(h, h.exit_code(), None);
    check_eq!(h, h.snap().restarts, 10, "each was replaced");
    check!(
        h,
        h.context()
            .contains("not counted towards restart.max_failures")
    );
    // Killed before it was ready: it never got to serve, which counts.
    for _ in 0..3 {
        let w = h.last_spawn(0);
        h.killed(w, Signal::SIGKILL);
        if let Some(due) = h.sup.next_deadline() {
            h.now = due;
            h.tick();
        }
    }
    check_eq!(h, h.exit_code(), Some(1));
}

#[path = "supervisor_agent_tests.rs"]
mod agent;

// ---- the state handed across an upgrade (supervisor_state.rs) ----

#[test]
fn a_saved_state_comes_back_whole_for_every_worker_state_and_a_roll_under_way() {
    // An agent, a balanced app with a worker crashed and in backoff, one draining, one in a
    // memory replacement, a roll under way with a reload queued behind it.
    let p = || P::new(4).balanced().agent(P::new(1), 1).max_memory(1 << 30);
    let mut h = Harness::start(p());
    let agent = h.agent_of(1);
    h.ready(agent);
    for s in 0..4 {
        let id = h.last_spawn(s);
        h.ready(id);
    }
    let crashed = h.serving(3);
    h.exit(crashed, 1);
    h.roll(2, p(), Scope::All, Some(1));
    let n0 = h.spawn_of(0, 2);
    h.ready(n0);
    h.step(Event::Reload {
        request: Some(2),
        systemd_waits: true,
    });
    h.advance(ms(30));
    let saved = h.sup.save(h.now);
    let mut back = Supervisor::restore(&saved, h.now).expect("its own state");
    check_eq!(
        h,
        String::from_utf8(back.save(h.now)).unwrap(),
        String::from_utf8(saved.clone()).unwrap(),
        "saved again, the same"
    );
    check_eq!(h, back.next_deadline(), h.sup.next_deadline());
    check_eq!(
        h,
        serde_json::to_value(back.snapshot(h.now)).unwrap(),
        serde_json::to_value(h.snap()).unwrap()
    );
    // And it goes on as the original does, event for event.
    let n1 = h.spawn_of(1, 2);
    let pid = h.pid(n1);
    for event in [
        Event::Notify {
            id: n1,
            msg: ready_msg(),
        },
        Event::Tick,
        Event::Queued {
            waiting: vec![(n0, false)],
        },
        Event::Stop,
    ] {
        let later = h.now + secs(1);
        let want = h.sup.step(event.clone(), later);
        let got = back.step(event, later);
        check_eq!(
            h,
            got,
            want,
            "the restored machine decides alike (pid {pid})"
        );
    }
}

#[test]
fn a_state_of_another_format_is_refused_whole_and_says_why() {
    let h = Harness::started(P::new(1));
    let saved = String::from_utf8(h.sup.save(h.now)).unwrap();
    let newer = saved.replacen(
        &format!("\"format\":{}", state::STATE_FORMAT),
        &format!("\"format\":{}", state::STATE_FORMAT + 1),
        1,
    );
    let err = Supervisor::restore(newer.as_bytes(), h.now).err().unwrap();
    check!(
        h,
        err.contains("format 2") && err.contains("reads format 1"),
        "{err}"
    );
    let err = Supervisor::restore(b"{\"nonsense\":1}", h.now)
        .err()
        .unwrap();
    check!(h, err.starts_with("not a corral state"), "{err}");
    let cut = &saved.as_bytes()[..saved.len() / 2];
    check!(h, Supervisor::restore(cut, h.now).is_err());
}
