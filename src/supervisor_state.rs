//! The machine's whole state as bytes and back, versioned: what an upgrade in place hands from
//! the running corral to the binary that replaces it across execve(2), which keeps the pid and
//! the workers (issue 13's groundwork; nothing calls it yet outside the tests).
//!
//! Times are `Instant`s, which mean nothing outside the process that made them; they are
//! written as offsets from the moment of saving, and read back as offsets from the moment of
//! loading (the monotonic clock goes on across an exec, so the gap is the exec's own time).
//! A state of a format this corral does not know is refused, whole, with the reason: the old
//! image then keeps running.

use std::cell::Cell;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::Supervisor;

/// The format this corral writes, and the newest it reads. Raise it with any change to what
/// is saved, and read the older formats still (or refuse them with a reason).
pub const STATE_FORMAT: u32 = 1;

thread_local! {
    /// The moment times are written relative to, while a save or a load is under way.
    static BASE: Cell<Option<Instant>> = const { Cell::new(None) };
}

#[derive(Serialize, Deserialize)]
struct Envelope<S> {
    format: u32,
    /// The corral that wrote it, for messages.
    version: String,
    state: S,
}

impl Supervisor {
    /// The state, as of `now`.
    pub fn save(&self, now: Instant) -> Vec<u8> {
        BASE.with(|b| b.set(Some(now)));
        let out = serde_json::to_vec(&Envelope {
            format: STATE_FORMAT,
            version: crate::version::get().to_string(),
            state: self,
        });
        BASE.with(|b| b.set(None));
        out.expect("the state serialises")
    }

    /// A state that [`Supervisor::save`] wrote, as of `now`; refused if its format is not one
    /// this corral reads.
    pub fn restore(bytes: &[u8], now: Instant) -> Result<Supervisor, String> {
        #[derive(Deserialize)]
        struct Head {
            format: u32,
            version: String,
        }
        let head: Head =
            serde_json::from_slice(bytes).map_err(|e| format!("not a corral state: {e}"))?;
        if head.format != STATE_FORMAT {
            return Err(format!(
                "the state is of format {} (corral {}), this corral reads format {STATE_FORMAT}",
                head.format, head.version
            ));
        }
        BASE.with(|b| b.set(Some(now)));
        let read = serde_json::from_slice::<Envelope<Supervisor>>(bytes);
        BASE.with(|b| b.set(None));
        let mut s = read
            .map_err(|e| format!("the state cannot be read: {e}"))?
            .state;
        s.out.clear();
        Ok(s)
    }
}

/// What the runtime asks of the machine around an upgrade in place.
impl Supervisor {
    /// Each process there is: its id, seat, generation and pid.
    pub fn processes(&self) -> Vec<(super::WorkerId, super::Seat, u32, i32)> {
        let mut out: Vec<_> = self
            .workers
            .iter()
            .filter_map(|(&id, w)| Some((id, w.seat, w.generation, w.pid?)))
            .collect();
        out.sort_unstable();
        out
    }

    /// The generation of a process.
    pub fn generation_of(&self, id: super::WorkerId) -> Option<u32> {
        Some(self.workers.get(&id)?.generation)
    }

    /// Whether a reading of the config is under way (its outcome does not cross an exec: the
    /// next image reads it again).
    pub fn loading(&self) -> bool {
        self.loads.current.is_some()
    }

    /// Whether corral is stopping.
    pub fn stopping(&self) -> bool {
        self.phase == super::Phase::Stopping
    }

    /// Whether systemd sees corral running and waits for nothing of it: its start is over,
    /// and no reload it times is under way. Only then does an upgrade in place tell it
    /// `RELOADING=1` and `READY=1` (a `READY=1` of the upgrade's own would end systemd's wait
    /// for a start or a reload early).
    pub fn systemd_idle(&self) -> bool {
        let timed = self.roll.as_ref().is_some_and(|r| r.systemd_waits)
            || self.queued.as_ref().is_some_and(|q| q.systemd_waits)
            || self.loads.current.as_ref().is_some_and(|(_, w)| *w)
            || self.loads.next.as_ref().is_some_and(|(_, w)| *w);
        self.phase == super::Phase::Running && self.announced_ready && !timed
    }
}

fn base() -> Instant {
    BASE.with(Cell::get)
        .expect("times are saved and read only within Supervisor::save and restore")
}

/// An `Instant` as signed microseconds from the base.
pub(super) mod instant {
    use super::*;

    pub fn to_offset(t: Instant) -> i64 {
        let b = base();
        match t.checked_duration_since(b) {
            Some(d) => d.as_micros().min(i64::MAX as u128) as i64,
            None => -(b.duration_since(t).as_micros().min(i64::MAX as u128) as i64),
        }
    }

    pub fn from_offset(us: i64) -> Instant {
        let b = base();
        let d = Duration::from_micros(us.unsigned_abs());
        if us >= 0 {
            b.checked_add(d).unwrap_or(b)
        } else {
            b.checked_sub(d).unwrap_or(b)
        }
    }

    pub fn serialize<S: Serializer>(t: &Instant, s: S) -> Result<S::Ok, S::Error> {
        to_offset(*t).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Instant, D::Error> {
        i64::deserialize(d).map(from_offset)
    }
}

/// An `Option<Instant>` the same way.
pub(super) mod opt_instant {
    use super::*;

    pub fn serialize<S: Serializer>(t: &Option<Instant>, s: S) -> Result<S::Ok, S::Error> {
        t.map(instant::to_offset).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Instant>, D::Error> {
        Option::<i64>::deserialize(d).map(|o| o.map(instant::from_offset))
    }
}

/// A queue of `Instant`s the same way.
pub(super) mod instants {
    use super::*;
    use std::collections::VecDeque;

    pub fn serialize<S: Serializer>(t: &VecDeque<Instant>, s: S) -> Result<S::Ok, S::Error> {
        let v: Vec<i64> = t.iter().map(|&i| instant::to_offset(i)).collect();
        v.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<VecDeque<Instant>, D::Error> {
        Vec::<i64>::deserialize(d).map(|v| v.into_iter().map(instant::from_offset).collect())
    }
}
