//! Balanced listeners, the decisions: which workers get new connections, draining a worker
//! before it is asked to stop, and stepping around a worker whose queue backs up.
//!
//! With balanced listeners (balance.rs) each worker accepts from sockets of its own, and corral
//! tells the kernel which sockets new connections go to. A worker on its way out is first
//! taken out of that set, and asked to stop only once its accept queue has stayed empty for
//! [`DRAIN_SETTLE`]: by then it has taken and read every connection that was meant for it, so a
//! server that closes connections it has accepted but not read when its graceful shutdown
//! begins (uvicorn, hypercorn, Node.js's `server.close()`) loses none. A ready worker whose
//! queue was not empty at [`STALL_CHECKS`] checks in a row (its event loop is blocked, or it
//! cannot keep up) gets no new connections until its queue is empty again, unless every
//! worker is in that state.

use std::time::{Duration, Instant};

use super::{Action, Supervisor, WorkerId, WorkerState};

/// How long a draining worker's queue must stay empty before the stop begins: the time for a
/// connection whose SYN reached its socket just before the program changed to complete its
/// handshake and be accepted and read.
pub const DRAIN_SETTLE: Duration = Duration::from_millis(100);
/// The longest a worker is drained; then it is asked to stop whatever its queue holds.
pub const DRAIN_MAX: Duration = Duration::from_secs(2);
/// How often queues are looked at while a worker drains, and otherwise.
pub const CHECK_DRAINING: Duration = Duration::from_millis(20);
pub const CHECK_SERVING: Duration = Duration::from_millis(200);
/// A ready worker whose queue was not empty at this many checks in a row is stepped around.
pub const STALL_CHECKS: u8 = 2;

impl Supervisor {
    /// Starts draining a worker being retired, when its listeners are balanced and it was
    /// serving; returns whether it did (the stop itself then waits for [`Self::end_drain`]).
    pub(super) fn start_drain(&mut self, id: WorkerId, now: Instant) -> bool {
        let running = self.phase == super::Phase::Running;
        let w = self.workers.get_mut(&id).expect("worker exists");
        let balanced = self.params[&w.generation].balanced;
        if !(balanced && running && w.ready_at.is_some() && w.pid.is_some()) {
            return false;
        }
        w.drain_pending = true;
        w.drain_empty_since = None;
        w.deadline = Some(now + DRAIN_MAX);
        let (slot, pid, gen) = (w.slot, w.pid, w.generation);
        self.log(
            super::Level::Info,
            Some(slot),
            pid,
            Some(gen),
            "draining: new connections go to other workers; stopping it once its queue is empty"
                .into(),
        );
        // Look at its queue soon, whatever the schedule was.
        let soon = now + CHECK_DRAINING;
        self.next_queue_check = Some(self.next_queue_check.map_or(soon, |t| t.min(soon)));
        true
    }

    /// The drain is over: the stop begins (its timeout counts from now).
    pub(super) fn end_drain(&mut self, id: WorkerId, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        w.drain_pending = false;
        w.deadline = Some(now + self.params[&w.generation].stop_timeout);
        self.first_stop_step(id);
    }

    pub(super) fn on_queued(&mut self, id: WorkerId, waiting: bool, now: Instant) {
        let Some(w) = self.workers.get_mut(&id) else {
            return;
        };
        if w.drain_pending {
            if waiting {
                w.drain_empty_since = None;
            } else {
                let since = *w.drain_empty_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= DRAIN_SETTLE {
                    self.end_drain(id, now);
                }
            }
        } else if w.state == WorkerState::Ready {
            if waiting {
                w.waiting_checks = w.waiting_checks.saturating_add(1);
            } else {
                w.waiting_checks = 0;
            }
            w.stalled = w.waiting_checks >= STALL_CHECKS;
        }
    }

    /// The workers new connections should go to: the ready ones not stepped around, or, when
    /// every ready one is, all of them.
    fn serving_now(&self) -> Vec<WorkerId> {
        let ready: Vec<(WorkerId, bool)> = self
            .workers
            .iter()
            .filter(|(_, w)| w.state == WorkerState::Ready && self.params[&w.generation].balanced)
            .map(|(&id, w)| (id, w.stalled))
            .collect();
        let healthy: Vec<WorkerId> = ready
            .iter()
            .filter(|(_, s)| !s)
            .map(|&(id, _)| id)
            .collect();
        if healthy.is_empty() {
            ready.into_iter().map(|(id, _)| id).collect()
        } else {
            healthy
        }
    }

    /// After every event: announce a changed serving set, and keep the queue checks going
    /// while there is anything to look at.
    pub(super) fn settle_balance(&mut self, now: Instant) {
        let balanced = self
            .workers
            .values()
            .any(|w| self.params[&w.generation].balanced);
        if !balanced {
            self.next_queue_check = None;
            if !self.serving.is_empty() {
                self.serving.clear();
            }
            return;
        }
        let serving = self.serving_now();
        if serving != self.serving {
            self.serving = serving.clone();
            let slots = self.desired;
            self.out.push(Action::Balance { serving, slots });
        }
        if self.next_queue_check.is_none() {
            self.next_queue_check = Some(now + self.check_every());
        }
    }

    fn check_every(&self) -> Duration {
        if self.workers.values().any(|w| w.drain_pending) {
            CHECK_DRAINING
        } else {
            CHECK_SERVING
        }
    }

    /// From `on_tick`: asks for the queues of the ready and draining workers when it is time.
    pub(super) fn queue_check_due(&mut self, now: Instant) {
        if self.next_queue_check.is_none_or(|t| t > now) {
            return;
        }
        self.next_queue_check = Some(now + self.check_every());
        let workers: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| self.params[&w.generation].balanced)
            .filter(|(_, w)| w.state == WorkerState::Ready || w.drain_pending)
            .map(|(&id, _)| id)
            .collect();
        if !workers.is_empty() {
            self.out.push(Action::QueueCheck { workers });
        }
    }
}
