//! Balanced listeners, the decisions: which workers get new connections, draining a worker
//! before it is asked to stop, and stepping around a worker whose queue backs up.
//!
//! With balanced listeners (balance.rs) each worker accepts from sockets of its own, and corral
//! tells the kernel which sockets new connections go to. A worker on its way out is first
//! taken out of that set, and asked to stop only once its accept queue has stayed empty for
//! `stop.drain`: by then it has taken and read every connection that was meant for it (a
//! connection belongs to the socket its SYN reached, so one whose handshake takes longer still
//! comes), and a server that closes connections it has accepted but not read when its
//! graceful shutdown begins (uvicorn, hypercorn, Node.js's `server.close()`) loses none. A
//! ready worker whose queue was not empty at [`STALL_CHECKS`] checks in a row (its event loop
//! is blocked, or it cannot keep up) gets no new connections until its queue is empty again,
//! unless its clients must stay with it (`balance = "source"`: a session in its memory is
//! worth a wait, as with nginx's `ip_hash`, which moves a client only off a failed server).
//! Connections go to ready workers; when none is, to starting ones (which serve soon); never
//! to a draining or stopping one while there is another.

use std::time::{Duration, Instant};

use super::{Action, Supervisor, WorkerId, WorkerState};

/// How much longer than `stop.drain` a worker is drained at most; then it is asked to stop
/// whatever its queue holds.
pub const DRAIN_MAX: Duration = Duration::from_secs(2);
/// How often queues are looked at while a worker drains; while connections were found waiting
/// at the last look (a worker stalled for a second must be stepped around within a few tens of
/// milliseconds, or a client in a hundred waits for it: nginx's price of `reuseport`); and
/// otherwise (an idle app costs 5 wake-ups a second).
pub const CHECK_DRAINING: Duration = Duration::from_millis(20);
pub const CHECK_BUSY: Duration = Duration::from_millis(10);
pub const CHECK_SERVING: Duration = Duration::from_millis(200);
/// A ready worker whose queue was not empty at this many checks in a row is stepped around.
pub const STALL_CHECKS: u8 = 2;

impl Supervisor {
    /// Starts draining a worker being retired, when its listeners are balanced and it was
    /// serving; returns whether it did (the stop itself then waits for [`Self::end_drain`]).
    pub(super) fn start_drain(&mut self, id: WorkerId, now: Instant) -> bool {
        let running = self.phase == super::Phase::Running;
        let w = self.workers.get_mut(&id).expect("worker exists");
        let balanced = super::params_for(&self.params, w.seat, w.generation).balanced;
        if !(balanced && running && w.ready_at.is_some() && w.pid.is_some()) {
            return false;
        }
        w.drain_pending = true;
        w.drain_empty_since = None;
        w.deadline = Some(now + self.params[&w.generation].drain + DRAIN_MAX);
        let (slot, pid, gen) = (w.seat, w.pid, w.generation);
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
        let timeout = self.params[&w.generation].stop_timeout;
        w.deadline = Some(now + timeout);
        w.extend_until = now + timeout * super::EXTEND_FACTOR;
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
                if now.saturating_duration_since(since) >= self.params[&w.generation].drain {
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

    /// The workers new connections should go to: the ready ones (not about to stop, having
    /// said STOPPING=1), or, when none is ready, the starting ones, which serve soon. Then
    /// the same without those stepped around, unless every ready one is: for even spreading.
    fn serving_now(&self) -> (Vec<WorkerId>, Vec<WorkerId>) {
        let balanced =
            |w: &super::Worker| super::params_for(&self.params, w.seat, w.generation).balanced;
        let in_state = |state: WorkerState| -> Vec<(WorkerId, bool)> {
            self.workers
                .iter()
                .filter(|(_, w)| w.state == state && balanced(w) && !w.said_stopping)
                .map(|(&id, w)| (id, w.stalled))
                .collect()
        };
        let ready = in_state(WorkerState::Ready);
        let keeping: Vec<WorkerId> = if ready.is_empty() {
            in_state(WorkerState::Starting)
                .into_iter()
                .map(|(id, _)| id)
                .collect()
        } else {
            ready.iter().map(|&(id, _)| id).collect()
        };
        let healthy: Vec<WorkerId> = ready
            .iter()
            .filter(|(_, s)| !s)
            .map(|&(id, _)| id)
            .collect();
        if healthy.is_empty() {
            (keeping.clone(), keeping)
        } else {
            (healthy, keeping)
        }
    }

    /// After every event: announce a changed serving set (or slot count: a slot scaled away
    /// lets go of the socket it kept), and keep the queue checks going while there is
    /// anything to look at.
    pub(super) fn settle_balance(&mut self, now: Instant) {
        let balanced = self
            .workers
            .values()
            .any(|w| super::params_for(&self.params, w.seat, w.generation).balanced);
        if !balanced {
            self.next_queue_check = None;
            self.serving = (Vec::new(), Vec::new(), 0);
            return;
        }
        let (serving, keeping) = self.serving_now();
        let now_serving = (serving, keeping, self.desired);
        if now_serving != self.serving {
            self.serving = now_serving.clone();
            let (serving, keeping, slots) = now_serving;
            self.out.push(Action::Balance {
                serving,
                keeping,
                slots,
            });
        }
        if self.next_queue_check.is_none() && self.worth_checking() {
            self.next_queue_check = Some(now + self.check_every());
        }
    }

    /// Queues are worth looking at while a worker drains, or while two or more serve (one
    /// alone has nowhere else to send connections).
    fn worth_checking(&self) -> bool {
        let serving = self
            .workers
            .values()
            .filter(|w| {
                w.state == WorkerState::Ready
                    && super::params_for(&self.params, w.seat, w.generation).balanced
            })
            .count();
        serving >= 2 || self.workers.values().any(|w| w.drain_pending)
    }

    fn check_every(&self) -> Duration {
        if self.queues_busy {
            CHECK_BUSY
        } else if self.workers.values().any(|w| w.drain_pending) {
            CHECK_DRAINING
        } else {
            CHECK_SERVING
        }
    }

    /// The answer to a queue check: where connections wait. While they wait at a serving
    /// worker, the next look comes sooner.
    pub(super) fn on_queues(&mut self, waiting: Vec<(WorkerId, bool)>, now: Instant) {
        self.queues_busy = false;
        for (id, w) in waiting {
            self.queues_busy |= w && self.workers.get(&id).is_some_and(|x| !x.drain_pending);
            self.on_queued(id, w, now);
        }
        if self.queues_busy {
            let soon = now + CHECK_BUSY;
            self.next_queue_check = Some(self.next_queue_check.map_or(soon, |t| t.min(soon)));
        }
    }

    /// From `on_tick`: asks for the queues of the ready and draining workers when it is time.
    pub(super) fn queue_check_due(&mut self, now: Instant) {
        if self.next_queue_check.is_none_or(|t| t > now) {
            return;
        }
        self.next_queue_check = self.worth_checking().then(|| now + self.check_every());
        let workers: Vec<WorkerId> = self
            .workers
            .iter()
            .filter(|(_, w)| super::params_for(&self.params, w.seat, w.generation).balanced)
            .filter(|(_, w)| w.state == WorkerState::Ready || w.drain_pending)
            .map(|(&id, _)| id)
            .collect();
        if !workers.is_empty() {
            self.out.push(Action::QueueCheck { workers });
        }
    }
}
