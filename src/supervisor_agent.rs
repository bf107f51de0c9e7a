//! The machine's decisions about the app's agent (`[agent]`): one process beside the workers,
//! for what must run once per app rather than once per worker (a scheduled job, a connection
//! to a config service), as Egg.js's agent.
//!
//! There is exactly one agent process at any time, a reload included: a reload that changes
//! the agent stops the old one before it starts the new one, and the workers roll only once
//! the new one is ready. At start the agent is ready before the first worker starts (unless
//! `agent.workers_wait = false`); at a stop, the workers go first and the agent last. A crashed
//! agent is restarted with the same backoff and crash-loop rules as a slot, while the workers
//! serve on. Its process is a `Worker` in its own seat ([`Seat::Agent`]), so its readiness,
//! watchdog and stop steps are the workers'.

use std::time::Instant;

use super::{
    Ended, Params, Phase, Scope, Seat, Slot, StopKind, Supervisor, Worker, WorkerId, WorkerState,
    WorkerView,
};

/// What the machine needs from a generation's `[agent]`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AgentParams {
    /// Its readiness, stop and restart settings, as a worker's.
    pub process: Params,
    /// The workers start once the agent is first ready (`agent.workers_wait`).
    pub workers_wait: bool,
    /// Stands for everything the agent runs with (its command, directory, environment and
    /// settings), set by the runtime: a reload whose agent has another key replaces the agent,
    /// and one with the same key keeps it running.
    pub key: u64,
}

/// The agent's seat.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct AgentSeat {
    /// Its process (`worker`), the generation it runs, its backoff and failures, as a slot's;
    /// `removing`: the new config has no agent, and this one goes.
    pub(super) slot: Slot,
    /// The workers wait for the agent's first readiness.
    pub(super) gate: bool,
    /// A roll is replacing the agent.
    pub(super) swap: Option<Swap>,
}

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub(super) struct Swap {
    /// The generation whose agent takes over.
    pub(super) to: u32,
    /// The generation whose agent runs again if the new one fails (none: the app had none).
    pub(super) from: Option<u32>,
    /// The new agent has been started (the old one is gone).
    pub(super) started: bool,
}

impl Supervisor {
    /// At start: the agent first. Returns whether the workers wait for it to be ready.
    pub(super) fn start_agent(&mut self, now: Instant) -> bool {
        let Some(a) = self.params[&self.active].agent.as_ref() else {
            return false;
        };
        let (wait, delay) = (a.workers_wait, a.process.delay);
        self.agent = Some(AgentSeat {
            slot: Slot::new(self.active, delay),
            gate: wait,
            swap: None,
        });
        self.spawn(Seat::Agent, false, self.active, now);
        wait
    }

    /// The agent said it is ready: workers waiting for it start, and a swap is over (the roll
    /// goes on with the workers).
    pub(super) fn agent_ready(&mut self, id: WorkerId, now: Instant) {
        let generation = self.workers[&id].generation;
        let Some(a) = &mut self.agent else { return };
        a.slot.retry_at = None;
        a.slot.generation = generation;
        a.swap = None;
        if std::mem::take(&mut a.gate) {
            for i in 0..self.desired {
                let s = &self.slots[i as usize];
                let empty = s.worker.is_none() && s.incoming.is_none();
                if empty && !s.removing && s.retry_at.is_none() {
                    let g = s.generation;
                    self.spawn(Seat::Slot(i), false, g, now);
                }
            }
        }
    }

    /// The agent's process is gone (its exit is already logged).
    pub(super) fn agent_gone(&mut self, id: WorkerId, w: &Worker, gone: Ended, now: Instant) {
        let Some(a) = &mut self.agent else { return };
        if a.slot.worker == Some(id) {
            a.slot.worker = None;
        }
        if a.slot.removing {
            self.agent = None;
            return;
        }
        if self.phase != Phase::Running {
            return;
        }
        if let Some(swap) = a.swap {
            if !swap.started {
                // The old agent is gone: the new one starts, and is the only one.
                a.swap = Some(Swap {
                    started: true,
                    ..swap
                });
                self.spawn(Seat::Agent, false, swap.to, now);
                return;
            }
            // The new agent ended before it was ready: the reload fails, and the old one
            // starts again (here: the roll need not bring it back).
            a.swap = None;
            if let Some(roll) = &mut self.roll {
                roll.agent_before = None;
            }
            let reason = match &w.stop {
                Some(StopKind::Failed(r)) => r.clone(),
                _ => gone.what,
            };
            match swap.from {
                Some(g) => {
                    a.slot.generation = g;
                    self.spawn(Seat::Agent, false, g, now);
                }
                None => self.agent = None,
            }
            self.fail_roll(
                format!("the generation {} agent {reason}", w.generation),
                now,
            );
            return;
        }
        self.refill(w, gone, now);
    }

    /// A roll to `generation` begins: the agent is replaced now if the roll asks for it
    /// (`corral restart --agent`) or its config changed (another key), or started if the app
    /// had none. The workers' part of the roll waits for it ([`Self::swapping`]). Returns, when
    /// it began a swap, the generation whose agent ran before (none: no agent).
    pub(super) fn roll_agent(
        &mut self,
        generation: u32,
        scope: Scope,
        now: Instant,
    ) -> Option<Option<u32>> {
        if matches!(scope, Scope::Slot(_)) {
            return None;
        }
        let new = self.params[&generation]
            .agent
            .as_ref()
            .map(|a| (a.key, a.process.delay));
        let Some((key, delay)) = new else {
            // A config without an agent stops it once the roll has succeeded (agent_rolled).
            return None;
        };
        let Some(a) = &mut self.agent else {
            self.agent = Some(AgentSeat {
                slot: Slot::new(generation, delay),
                gate: false,
                swap: Some(Swap {
                    to: generation,
                    from: None,
                    started: true,
                }),
            });
            self.spawn(Seat::Agent, false, generation, now);
            return Some(None);
        };
        // One on its way out (an earlier reload dropped it) is replaced however alike: the
        // config it came from is no longer the app's.
        let same = !a.slot.removing
            && self.params[&a.slot.generation]
                .agent
                .as_ref()
                .is_some_and(|old| old.key == key);
        if same && scope != Scope::Agent {
            return None;
        }
        let from = (!a.slot.removing).then_some(a.slot.generation);
        a.slot.removing = false;
        self.swap_agent(generation, from, now);
        Some(from)
    }

    /// Replaces the agent with `to`'s: the one running is stopped first and the new one
    /// starts once it is gone (agent_gone); with none running, at once. `from`: whose agent
    /// runs again if the new one fails.
    fn swap_agent(&mut self, to: u32, from: Option<u32>, now: Instant) {
        let Some(a) = &mut self.agent else { return };
        a.slot.retry_at = None;
        let running = a.slot.worker;
        a.swap = Some(Swap {
            to,
            from,
            started: running.is_none(),
        });
        match running {
            Some(old) => self.retire(old, now),
            None => self.spawn(Seat::Agent, false, to, now),
        }
    }

    /// A roll that replaced the agent failed (a worker of the new generation was not ready):
    /// the agent that ran before it (`before`; none: the app had none) is put back, so that
    /// the app is again what it was.
    pub(super) fn agent_roll_failed(&mut self, before: Option<u32>, now: Instant) {
        let Some(a) = &mut self.agent else { return };
        match (a.swap, before) {
            // The new agent is starting: its end brings `from` back (agent_gone).
            (Some(swap), _) if swap.started => {
                if let Some(id) = a.slot.worker {
                    if let Some(w) = self.workers.get_mut(&id) {
                        w.stop = Some(StopKind::Abort);
                    }
                    self.kill(id);
                }
            }
            // The old one is still stopping: the one that starts after it is its own again.
            (Some(swap), Some(g)) => {
                a.swap = Some(Swap {
                    to: g,
                    from: Some(g),
                    ..swap
                });
            }
            // The new one is serving: replaced in turn by the old one.
            (None, Some(g)) => {
                let from = Some(a.slot.generation);
                self.swap_agent(g, from, now);
            }
            // The app had no agent: the roll's goes.
            (_, None) => {
                a.swap = None;
                a.slot.removing = true;
                a.slot.retry_at = None;
                match a.slot.worker {
                    Some(id) => self.retire(id, now),
                    None => self.agent = None,
                }
            }
        }
    }

    /// Whether a roll's workers wait for a new agent.
    pub(super) fn swapping(&self) -> bool {
        self.agent.as_ref().is_some_and(|a| a.swap.is_some())
    }

    /// A roll of every slot to `generation` succeeded: an agent it kept (the same config) now
    /// belongs to `generation`, so that the old one can be forgotten; an agent the new config
    /// has none of stops.
    pub(super) fn agent_rolled(&mut self, generation: u32, now: Instant) {
        let keeps = self.params[&generation].agent.is_some();
        let Some(a) = &mut self.agent else { return };
        if keeps {
            a.slot.removing = false;
            a.slot.generation = generation;
            if let Some(w) = a.slot.worker.and_then(|id| self.workers.get_mut(&id)) {
                w.generation = generation;
            }
            return;
        }
        a.slot.removing = true;
        a.slot.retry_at = None;
        match a.slot.worker {
            Some(id) => self.retire(id, now),
            None => self.agent = None,
        }
    }

    /// At a stop, the agent goes last: once no worker is left.
    pub(super) fn settle_agent(&mut self, now: Instant) {
        if self.phase != Phase::Stopping {
            return;
        }
        let workers_left = self
            .workers
            .values()
            .any(|w| matches!(w.seat, Seat::Slot(_)));
        let Some(a) = &mut self.agent else { return };
        a.slot.retry_at = None;
        a.gate = false;
        if let (false, Some(id)) = (workers_left, a.slot.worker) {
            self.retire(id, now);
        }
    }

    /// The processes a bus message for `to` reaches (bus.rs): the agent; every worker that
    /// is not stopping (a reload's new ones included); one slot's newest worker (a reload's
    /// new one as soon as it runs); or the worker or agent of that pid. Only processes that
    /// run (have a pid) and are not stopping.
    pub fn bus_targets(&self, to: crate::bus::To) -> Vec<(WorkerId, i32)> {
        use crate::bus::To;
        let running = |id: WorkerId| {
            let w = self.workers.get(&id)?;
            let pid = w.pid.filter(|_| w.state != WorkerState::Stopping)?;
            Some((id, pid))
        };
        match to {
            To::Agent => self
                .agent
                .as_ref()
                .and_then(|a| a.slot.worker)
                .and_then(running)
                .into_iter()
                .collect(),
            To::All => self
                .workers
                .iter()
                .filter(|(_, w)| matches!(w.seat, Seat::Slot(_)))
                .filter_map(|(&id, _)| running(id))
                .collect(),
            // Those ready, in slot order: the router picks one in turn (bus.rs).
            To::Any => {
                let mut ready: Vec<(Seat, WorkerId)> = self
                    .workers
                    .iter()
                    .filter(|(_, w)| {
                        matches!(w.seat, Seat::Slot(_)) && w.state == WorkerState::Ready
                    })
                    .map(|(&id, w)| (w.seat, id))
                    .collect();
                ready.sort_unstable();
                ready
                    .into_iter()
                    .filter_map(|(_, id)| running(id))
                    .collect()
            }
            // The newest: a reload's new worker, which an answer to its greeting must reach.
            To::Slot(n) => self
                .slots
                .get(n as usize)
                .and_then(|s| s.incoming.and_then(running).or(s.worker.and_then(running)))
                .into_iter()
                .collect(),
            To::Pid(p) => self
                .workers
                .iter()
                .find(|(_, w)| w.pid == Some(p))
                .and_then(|(&id, _)| running(id))
                .into_iter()
                .collect(),
        }
    }

    /// A process's pid, once it runs.
    pub fn pid_of(&self, id: WorkerId) -> Option<i32> {
        self.workers.get(&id)?.pid
    }

    /// Where a process sits.
    pub fn seat_of(&self, id: WorkerId) -> Option<Seat> {
        self.workers.get(&id).map(|w| w.seat)
    }

    /// How many agent processes there are (one at most, ever).
    #[cfg(test)]
    pub(super) fn agent_processes(&self) -> usize {
        self.workers
            .values()
            .filter(|w| w.seat == Seat::Agent)
            .count()
    }

    /// Whether the agent, if there is one, is ready (the app is not ready until it is).
    pub(super) fn agent_is_ready(&self) -> bool {
        let Some(a) = &self.agent else { return true };
        a.slot
            .worker
            .is_some_and(|id| self.workers[&id].state == WorkerState::Ready)
    }

    /// When the agent waits out its backoff.
    pub(super) fn agent_retry_at(&self) -> Option<Instant> {
        self.agent.as_ref().and_then(|a| a.slot.retry_at)
    }

    /// Starts the agent again once its backoff is over.
    pub(super) fn agent_tick(&mut self, now: Instant) {
        let Some(a) = &mut self.agent else { return };
        if a.slot.retry_at.is_some_and(|t| t <= now) {
            a.slot.retry_at = None;
            if a.slot.worker.is_none() && !a.slot.removing {
                let g = a.slot.generation;
                self.spawn(Seat::Agent, false, g, now);
            }
        }
    }

    /// The generations the agent refers to.
    pub(super) fn agent_generations(&self) -> Vec<u32> {
        let Some(a) = &self.agent else { return vec![] };
        let mut g = vec![a.slot.generation];
        g.extend(a.swap.map(|s| s.to));
        g
    }

    pub(super) fn agent_view(&self, now: Instant) -> Option<WorkerView> {
        let a = self.agent.as_ref()?;
        match a.slot.worker {
            Some(id) => Some(self.view(id, &a.slot, now)),
            None => Some(WorkerView {
                slot: None,
                pid: None,
                state: if a.slot.retry_at.is_some() {
                    "backoff"
                } else {
                    "stopped"
                },
                generation: a.slot.generation,
                restarts: a.slot.restarts,
                uptime_s: None,
                status: None,
            }),
        }
    }
}
