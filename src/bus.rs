//! The message bus between an app's agent and its workers: small JSON messages that corral
//! passes on, to the agent, to one worker by slot, or to every worker.
//!
//! Two ways in and out, whichever the process has:
//! - any language: the unix datagram socket at `CORRAL_BUS`. A process binds a datagram socket
//!   of its own (an abstract address is enough: `bind("")` autobinds on Linux, unix(7)) and sends
//!   `{"to": ..., "data": ...}` to `CORRAL_BUS`; corral knows the sender by its credentials
//!   (`SO_PASSCRED`, as for `NOTIFY_SOCKET`) and delivers what is for it to the address it last
//!   sent from. Sending `{}` registers that address without sending anything.
//! - Node.js processes with an IPC channel (`readiness.mode = "node-ipc"` or the preload):
//!   `process.send({corral: "bus", to, data})`, received as the same objects in
//!   `process.on('message')`.
//!
//! What a process receives: `{"corral": "bus", "from": "agent" | SLOT, "data": ..., "dropped": N}`,
//! `dropped` being how many messages for it were dropped since the last one it got (left out
//! when none). corral never waits for a receiver: a full socket buffer or channel queue, a
//! receiver that never registered, or a sender over its rate drops the message, counted.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::notify::NotifySocket;
use crate::supervisor::{Seat, WorkerId};

/// The largest message, on either way in: a longer one is dropped.
pub const MAX_MESSAGE: usize = 64 * 1024;
/// What one process may send: this many messages a second on average...
pub const RATE: u32 = 1000;
/// ... in bursts of up to this many...
pub const BURST: u32 = 2000;
/// ... and this many bytes a second (bursts of twice as many).
pub const BYTES_PER_SECOND: u64 = 4 << 20;

/// Where a message goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum To {
    Agent,
    /// Every worker (not the agent), the sender too if it is one.
    All,
    /// One worker, each in turn: a ready one, or one that runs while none is ready (Egg's
    /// `sendRandom`: work to share out).
    Any,
    /// One slot's worker: its newest (a reload's new one as soon as it runs).
    Slot(u32),
    /// One process, by the pid a message from it carried (`{"pid": N}`): an answer reaches
    /// the very process that asked, whatever happens to its slot meanwhile.
    Pid(i32),
}

/// A message as a process sent it: its destination and its data, as it was written (passed
/// on byte for byte: never re-encoded, so never larger).
#[derive(Debug)]
pub struct Message {
    pub to: To,
    pub data: Option<Box<serde_json::value::RawValue>>,
}

#[derive(serde::Deserialize)]
struct Wire<'a> {
    #[serde(borrow)]
    to: Option<&'a serde_json::value::RawValue>,
    data: Option<Box<serde_json::value::RawValue>>,
    #[serde(flatten)]
    rest: std::collections::BTreeMap<String, serde::de::IgnoredAny>,
}

/// Reads one message. `Ok(None)`: `{}`, which only registers the sender's address.
pub fn parse(bytes: &[u8]) -> Result<Option<Message>, String> {
    if bytes.len() > MAX_MESSAGE {
        return Err(format!("longer than {MAX_MESSAGE} bytes"));
    }
    let w: Wire = serde_json::from_slice(bytes).map_err(|e| format!("not a JSON object: {e}"))?;
    let Some(to) = w.to else {
        let only_corral = w.rest.keys().all(|k| k == "corral");
        return match (w.data, only_corral) {
            (None, true) => Ok(None),
            _ => Err("no \"to\"".into()),
        };
    };
    let to = match serde_json::from_str::<Value>(to.get()) {
        Ok(Value::String(s)) if s == "agent" => To::Agent,
        Ok(Value::String(s)) if s == "all" => To::All,
        Ok(Value::String(s)) if s == "any" => To::Any,
        Ok(Value::Number(n)) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => To::Slot(n),
            None => return Err(format!("\"to\": {n} is no slot")),
        },
        Ok(Value::Object(o)) if o.len() == 1 && o.contains_key("pid") => {
            match o["pid"].as_i64().and_then(|p| i32::try_from(p).ok()) {
                Some(p) if p > 0 => To::Pid(p),
                _ => return Err(format!("\"to\": {} is no pid", o["pid"])),
            }
        }
        _ => {
            return Err(format!(
                "\"to\": {} is not \"agent\", \"all\", \"any\", a slot number or {{\"pid\": N}}",
                to.get()
            ))
        }
    };
    Ok(Some(Message { to, data: w.data }))
}

/// Whether a Node.js channel line is a bus message (`{"corral": "bus", ...}`).
pub fn is_bus_line(line: &[u8]) -> bool {
    // Cheap first: every bus line names it.
    if !line.windows(5).any(|w| w == b"\"bus\"") {
        return false;
    }
    matches!(
        serde_json::from_slice::<Value>(line),
        Ok(Value::Object(o)) if o.get("corral") == Some(&Value::String("bus".into()))
    )
}

/// What the receiver gets, as one JSON text (no newline): who sent it (its seat and pid, for
/// an answer `{"pid": N}`), the data as it was sent, and what was lost since the last one.
pub fn envelope(
    from: Seat,
    pid: i32,
    data: Option<&serde_json::value::RawValue>,
    dropped: u64,
) -> Vec<u8> {
    let from = match from {
        Seat::Slot(n) => n.to_string(),
        Seat::Agent => "\"agent\"".to_string(),
    };
    let data = data.map_or("null", |d| d.get());
    let mut out = format!("{{\"corral\":\"bus\",\"from\":{from},\"pid\":{pid},\"data\":{data}");
    if dropped > 0 {
        out += &format!(",\"dropped\":{dropped}");
    }
    out.push('}');
    out.into_bytes()
}

/// A sender's allowance: a token bucket for messages and one for bytes.
#[derive(Clone, Debug)]
pub struct Limiter {
    messages: f64,
    bytes: f64,
    at: Instant,
}

impl Limiter {
    pub fn new(now: Instant) -> Limiter {
        Limiter {
            messages: f64::from(BURST),
            bytes: (BYTES_PER_SECOND * 2) as f64,
            at: now,
        }
    }

    /// Whether a message of `len` bytes may go now (and takes it from the allowance).
    pub fn allow(&mut self, len: usize, now: Instant) -> bool {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.messages = (self.messages + dt * f64::from(RATE)).min(f64::from(BURST));
        self.bytes = (self.bytes + dt * BYTES_PER_SECOND as f64).min((BYTES_PER_SECOND * 2) as f64);
        if self.messages >= 1.0 && self.bytes >= len as f64 {
            self.messages -= 1.0;
            self.bytes -= len as f64;
            true
        } else {
            false
        }
    }
}

/// How often at most corral says that it dropped messages.
pub const REPORT_EVERY: Duration = Duration::from_secs(1);

/// How many datagrams one turn of the loop takes at most.
pub const BATCH: usize = 256;

/// A Node.js channel's queue of lines to write (nodeipc.rs), and its stop message.
pub type Channels = HashMap<i32, (mpsc::Sender<Vec<u8>>, Option<String>)>;

/// A datagram on the bus socket: its sender's pid, and address if it has one.
pub struct Datagram {
    pub pid: i32,
    pub bytes: Vec<u8>,
    pub from: Option<UnixAddr>,
}

/// A message to pass on: who sent it (the process at its seat, `pid`), and where it receives
/// (if it said).
pub struct Sent<'a> {
    pub id: WorkerId,
    pub seat: Seat,
    pub pid: i32,
    pub bytes: &'a [u8],
    pub address: Option<UnixAddr>,
}

/// Lines a Node.js channel's queue keeps free for the stop message: bus messages never take
/// the last one.
const KEEP_FOR_STOP: usize = 1;

/// Where a datagram receiver gets its messages: a socket of corral's connected to its
/// address, one per receiver. What waits unread at a receiver counts against the sending
/// socket's buffer (unix(7)): with one socket for all, one process that never reads would
/// stop delivery to every other.
struct Outbox {
    address: UnixAddr,
    socket: OwnedFd,
}

/// The router as an upgrade in place hands it over (carry.rs).
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Saved {
    socket: i32,
    path: std::path::PathBuf,
    outbox: Vec<(WorkerId, i32)>,
    owed: Vec<(WorkerId, u64)>,
    delivered: u64,
    dropped: u64,
}

impl Saved {
    /// Nothing: what is left where a saved router was taken.
    pub fn empty() -> Saved {
        Saved {
            socket: -1,
            path: Default::default(),
            outbox: Vec::new(),
            owed: Vec::new(),
            delivered: 0,
            dropped: 0,
        }
    }
}

/// The runtime's side: the `CORRAL_BUS` socket, who receives where, and the counts.
pub struct Router {
    socket: NotifySocket,
    outbox: HashMap<WorkerId, Outbox>,
    limits: HashMap<WorkerId, Limiter>,
    /// Messages for each receiver dropped since the last one it got.
    owed: HashMap<WorkerId, u64>,
    /// Messages each receiver got, and those dropped (for it, or refused from a sender).
    pub delivered: u64,
    pub dropped: u64,
    /// Dropped before they reached the router (the Node.js channels' readers).
    lost: Arc<AtomicU64>,
    /// Where datagrams are received into, made once.
    buf: Vec<u8>,
    unreported: u64,
    reported_at: Option<Instant>,
    /// Where `"any"` goes next among the ready workers.
    turn: usize,
}

impl Router {
    /// Binds the bus socket at `path` (mode 0600, as the notify socket: rundir.rs).
    pub fn bind(path: &Path) -> io::Result<Router> {
        Ok(Router::with(NotifySocket::bind(path)?))
    }

    fn with(socket: NotifySocket) -> Router {
        Router {
            socket,
            outbox: HashMap::new(),
            limits: HashMap::new(),
            owed: HashMap::new(),
            delivered: 0,
            dropped: 0,
            lost: Arc::new(AtomicU64::new(0)),
            buf: vec![0u8; MAX_MESSAGE + 1],
            unreported: 0,
            reported_at: None,
            turn: 0,
        }
    }

    /// The router for an upgrade in place: its socket, each receiver's outbox (its address is
    /// the socket's peer), what each is owed, and the counts.
    pub fn save(&mut self, carry: &mut crate::carry::Carry) -> io::Result<Saved> {
        let (delivered, dropped) = self.counts();
        let mut outbox = Vec::new();
        for (id, o) in &self.outbox {
            outbox.push((*id, carry.fd(&o.socket)?));
        }
        Ok(Saved {
            socket: carry.fd(&self.socket)?,
            path: self.socket.path().to_path_buf(),
            outbox,
            owed: self.owed.iter().map(|(k, v)| (*k, *v)).collect(),
            delivered,
            dropped,
        })
    }

    /// What [`Router::save`] saved.
    pub fn restore(saved: Saved, take: &mut crate::carry::Take) -> io::Result<Router> {
        let mut r = Router::with(NotifySocket::adopt(take.fd(saved.socket)?, &saved.path)?);
        for (id, fd) in saved.outbox {
            let socket = take.fd(fd)?;
            // Its address is where it is connected (a receiver gone meanwhile: let go of).
            if let Ok(address) = nix::sys::socket::getpeername::<UnixAddr>(socket.as_raw_fd()) {
                r.outbox.insert(id, Outbox { address, socket });
            }
        }
        r.owed = saved.owed.into_iter().collect();
        r.delivered = saved.delivered;
        r.dropped = saved.dropped;
        Ok(r)
    }

    /// The value of `CORRAL_BUS`.
    pub fn env_value(&self) -> &str {
        self.socket.env_value()
    }

    pub fn try_clone_std(&self) -> io::Result<std::os::unix::net::UnixDatagram> {
        self.socket.try_clone_std()
    }

    /// Where the Node.js channels' readers count what they drop.
    pub fn lost(&self) -> Arc<AtomicU64> {
        self.lost.clone()
    }

    /// Takes up to [`BATCH`] queued datagrams, each with the worker `attribute` finds for its
    /// sender at once (a sender that exits right after sending is still there to look at);
    /// returns the error that ended the batch (`WouldBlock`: none left).
    pub fn take(
        &mut self,
        mut attribute: impl FnMut(i32) -> Option<WorkerId>,
    ) -> (Vec<(WorkerId, Datagram)>, io::Result<()>) {
        let mut out = Vec::new();
        for _ in 0..BATCH {
            match self.socket.recv_into(&mut self.buf) {
                Ok((pid, len, from)) => match attribute(pid) {
                    Some(id) => out.push((
                        id,
                        Datagram {
                            pid,
                            bytes: self.buf[..len].to_vec(),
                            from,
                        },
                    )),
                    None => self.count_dropped(1),
                },
                Err(e) => return (out, Err(e)),
            }
        }
        (out, Ok(()))
    }

    /// A message passed on to each of `targets(to)` over its Node.js channel if it has one,
    /// else to its registered address; or dropped, counted.
    pub fn route(
        &mut self,
        from: Sent<'_>,
        now: Instant,
        targets: impl Fn(To) -> Vec<(WorkerId, i32)>,
        channels: &Channels,
    ) -> Result<(), String> {
        if let Some(a) = from.address {
            self.register(from.id, a);
        }
        let m = match parse(from.bytes) {
            Ok(Some(m)) => m,
            Ok(None) => return Ok(()),
            Err(e) => {
                self.count_dropped(1);
                return Err(e);
            }
        };
        let targets = match m.to {
            To::Any => {
                // One it can reach (a worker that has sent nothing yet has no address): ready,
                // or while none is, any that runs.
                let reachable = |mut v: Vec<(WorkerId, i32)>| {
                    v.retain(|(id, pid)| {
                        channels.contains_key(pid) || self.outbox.contains_key(id)
                    });
                    v
                };
                let mut some = reachable(targets(To::Any));
                if some.is_empty() {
                    some = reachable(targets(To::All));
                }
                self.in_turn(some)
            }
            to => targets(to),
        };
        if targets.is_empty() {
            self.count_dropped(1);
            return Err(format!("nobody to pass it to ({:?})", m.to));
        }
        // A message to many costs the sender as many: what corral writes is what counts.
        let cost = from.bytes.len() * targets.len();
        let limit = self
            .limits
            .entry(from.id)
            .or_insert_with(|| Limiter::new(now));
        if !limit.allow(cost, now) {
            self.count_dropped(targets.len() as u64);
            return Err("over its rate (bus.rs RATE, BYTES_PER_SECOND): dropped".into());
        }
        for (to, pid) in targets {
            let owed = self.owed.remove(&to).unwrap_or(0);
            let mut line = envelope(from.seat, from.pid, m.data.as_deref(), owed);
            let sent = match (channels.get(&pid), self.outbox.get(&to)) {
                (Some((queue, _)), _) => {
                    line.push(b'\n');
                    queue.capacity() > KEEP_FOR_STOP && queue.try_send(line).is_ok()
                }
                (None, Some(out)) => self.send(to, out, &line),
                (None, None) => false,
            };
            if sent {
                self.delivered += 1;
            } else {
                *self.owed.entry(to).or_default() += owed + 1;
                self.count_dropped(1);
            }
        }
        Ok(())
    }

    /// The next of `ready` in turn, for `"any"`.
    fn in_turn(&mut self, ready: Vec<(WorkerId, i32)>) -> Vec<(WorkerId, i32)> {
        if ready.is_empty() {
            return ready;
        }
        let i = self.turn % ready.len();
        self.turn = self.turn.wrapping_add(1);
        vec![ready[i]]
    }

    /// Where `id` receives from now on: a socket connected to `address`, made once per
    /// address.
    fn register(&mut self, id: WorkerId, address: UnixAddr) {
        if self.outbox.get(&id).is_some_and(|o| o.address == address) {
            return;
        }
        let socket = nix::sys::socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .and_then(|s| nix::sys::socket::connect(s.as_raw_fd(), &address).map(|()| s));
        match socket {
            Ok(socket) => {
                self.outbox.insert(id, Outbox { address, socket });
            }
            Err(e) => {
                tracing::debug!("bus: cannot reach a sender's address: {e}");
                self.outbox.remove(&id);
            }
        }
    }

    /// One datagram to a registered receiver, without waiting: a full queue drops it; an
    /// address that is gone (or not ours to write to) is let go of.
    fn send(&self, to: WorkerId, out: &Outbox, line: &[u8]) -> bool {
        match nix::sys::socket::send(out.socket.as_raw_fd(), line, MsgFlags::MSG_DONTWAIT) {
            Ok(_) => true,
            Err(e) => {
                use nix::errno::Errno;
                if matches!(
                    e,
                    Errno::ECONNREFUSED
                        | Errno::ENOENT
                        | Errno::ENOTDIR
                        | Errno::EPERM
                        | Errno::EACCES
                ) {
                    tracing::debug!("bus: receiver {to} is gone ({e})");
                }
                false
            }
        }
    }

    fn count_dropped(&mut self, n: u64) {
        self.dropped += n;
        self.unreported += n;
    }

    /// The process is gone.
    pub fn forget(&mut self, id: WorkerId) {
        self.outbox.remove(&id);
        self.limits.remove(&id);
        self.owed.remove(&id);
    }

    /// Counts (delivered, dropped), the channels' readers' drops included.
    pub fn counts(&mut self) -> (u64, u64) {
        let lost = self.lost.swap(0, Ordering::Relaxed);
        self.count_dropped(lost);
        (self.delivered, self.dropped)
    }

    /// What to say of messages dropped since it was last said, at most every [`REPORT_EVERY`]
    /// (called at each message and each tick, so the last drops of a burst are said too).
    pub fn report(&mut self, now: Instant) -> Option<String> {
        self.counts();
        if self.unreported == 0 || self.reported_at.is_some_and(|t| now < t + REPORT_EVERY) {
            return None;
        }
        self.reported_at = Some(now);
        let n = std::mem::take(&mut self.unreported);
        Some(format!(
            "bus: {n} message(s) dropped (a receiver's queue full or its address unknown, a \
             sender over its rate, or a message that is not one); {} delivered, {} dropped in \
             all",
            self.delivered, self.dropped
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_goes_to_each_ready_worker_in_turn() {
        let dir = std::env::temp_dir().join(format!("corral-bus-any-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = Router::bind(&dir.join("bus")).unwrap();
        let ready = vec![(1, 101), (2, 102), (3, 103)];
        let got: Vec<i32> = (0..6).map(|_| r.in_turn(ready.clone())[0].1).collect();
        assert_eq!(got, [101, 102, 103, 101, 102, 103]);
        assert!(r.in_turn(Vec::new()).is_empty(), "none ready: nobody");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn messages_name_where_they_go() {
        let m = |s: &str| parse(s.as_bytes());
        let one = m(r#"{"to":"agent","data":{"job":1}}"#).unwrap().unwrap();
        assert_eq!(
            (one.to, one.data.unwrap().get()),
            (To::Agent, r#"{"job":1}"#)
        );
        assert_eq!(m(r#"{"to":"all"}"#).unwrap().unwrap().to, To::All);
        assert_eq!(m(r#"{"to":"any"}"#).unwrap().unwrap().to, To::Any);
        assert_eq!(
            m(r#"{"corral":"bus","to":3,"data":"x"}"#)
                .unwrap()
                .unwrap()
                .to,
            To::Slot(3)
        );
        assert_eq!(m(r#"{"to":{"pid":42}}"#).unwrap().unwrap().to, To::Pid(42));
        assert!(m("{}").unwrap().is_none(), "registers only");
        assert!(m(r#"{"corral":"bus"}"#).unwrap().is_none());
        for bad in [
            r#"{"to":"nobody"}"#,
            r#"{"to":-1}"#,
            r#"{"to":{"pid":0}}"#,
            r#"{"data":1}"#,
            "[1]",
            "nope",
        ] {
            assert!(m(bad).is_err(), "{bad}");
        }
        let long = format!(r#"{{"to":"all","data":"{}"}}"#, "x".repeat(MAX_MESSAGE));
        assert!(m(&long).unwrap_err().contains("longer"));
    }

    #[test]
    fn what_a_receiver_gets_says_who_sent_it_and_what_was_lost() {
        let data = |s: &str| serde_json::value::RawValue::from_string(s.into()).unwrap();
        let d = data(r#"{"a": 1e15}"#);
        let e = envelope(Seat::Slot(2), 77, Some(&d), 0);
        // The data as sent, byte for byte: never re-encoded (1e15 stays 4 bytes).
        assert_eq!(
            String::from_utf8(e.clone()).unwrap(),
            r#"{"corral":"bus","from":2,"pid":77,"data":{"a": 1e15}}"#
        );
        let e = envelope(Seat::Agent, 5, None, 7);
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(
            (v["from"].as_str(), v["dropped"].as_u64()),
            (Some("agent"), Some(7))
        );
        assert!(is_bus_line(&e));
        assert!(!is_bus_line(br#"{"corral":"other","bus":1}"#));
        assert!(!is_bus_line(br#""ready""#));
    }

    #[test]
    fn a_sender_gets_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        let sent = (0..5000).filter(|_| l.allow(10, t0)).count();
        assert_eq!(sent, BURST as usize);
        // A tenth of a second later: a tenth of the rate.
        let t1 = t0 + Duration::from_millis(100);
        let sent = (0..5000).filter(|_| l.allow(10, t1)).count();
        assert_eq!(sent, (RATE / 10) as usize);
        // Bytes too: 8 MiB of burst, then 4 MiB a second.
        let mut l = Limiter::new(t0);
        let big = MAX_MESSAGE;
        let sent = (0..1000).filter(|_| l.allow(big, t0)).count();
        assert_eq!(sent, (BYTES_PER_SECOND * 2) as usize / big);
    }
}
