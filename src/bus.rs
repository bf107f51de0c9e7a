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

use nix::sys::socket::{setsockopt, sockopt, UnixAddr};
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
    /// One slot's worker.
    Slot(u32),
}

/// A message as a process sent it: its destination and its data (any JSON).
#[derive(Debug, PartialEq)]
pub struct Message {
    pub to: To,
    pub data: Value,
}

/// Reads one message. `Ok(None)`: `{}`, which only registers the sender's address.
pub fn parse(bytes: &[u8]) -> Result<Option<Message>, String> {
    if bytes.len() > MAX_MESSAGE {
        return Err(format!("longer than {MAX_MESSAGE} bytes"));
    }
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let Value::Object(mut o) = v else {
        return Err("not a JSON object".into());
    };
    o.remove("corral");
    if o.is_empty() {
        return Ok(None);
    }
    let to = match o.get("to") {
        Some(Value::String(s)) if s == "agent" => To::Agent,
        Some(Value::String(s)) if s == "all" => To::All,
        Some(Value::Number(n)) => match n.as_u64().and_then(|n| u32::try_from(n).ok()) {
            Some(n) => To::Slot(n),
            None => return Err(format!("\"to\": {n} is no slot")),
        },
        Some(other) => {
            return Err(format!(
                "\"to\": {other} is not \"agent\", \"all\" or a slot number"
            ))
        }
        None => return Err("no \"to\"".into()),
    };
    Ok(Some(Message {
        to,
        data: o.remove("data").unwrap_or(Value::Null),
    }))
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

/// What the receiver gets, as one JSON text (no newline).
pub fn envelope(from: Seat, data: &Value, dropped: u64) -> Vec<u8> {
    let from = match from {
        Seat::Slot(n) => Value::from(n),
        Seat::Agent => Value::from("agent"),
    };
    let mut o = serde_json::Map::new();
    o.insert("corral".into(), Value::from("bus"));
    o.insert("from".into(), from);
    o.insert("data".into(), data.clone());
    if dropped > 0 {
        o.insert("dropped".into(), Value::from(dropped));
    }
    serde_json::to_vec(&Value::Object(o)).expect("JSON serialises")
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

/// A message to pass on: who sent it, sitting where, and where it receives (if it said).
pub struct Sent<'a> {
    pub id: WorkerId,
    pub seat: Seat,
    pub bytes: &'a [u8],
    pub address: Option<UnixAddr>,
}

/// The runtime's side: the `CORRAL_BUS` socket, who receives where, and the counts.
pub struct Router {
    socket: NotifySocket,
    /// Where each datagram sender receives: the address it last sent from.
    inbox: HashMap<WorkerId, UnixAddr>,
    limits: HashMap<WorkerId, Limiter>,
    /// Messages for each receiver dropped since the last one it got.
    owed: HashMap<WorkerId, u64>,
    pub delivered: u64,
    pub dropped: u64,
    unreported: u64,
    reported_at: Option<Instant>,
}

impl Router {
    /// Binds the bus socket at `path` (mode 0600, as the notify socket: rundir.rs).
    pub fn bind(path: &Path) -> io::Result<Router> {
        let socket = NotifySocket::bind(path)?;
        // Room for bursts of messages of up to MAX_MESSAGE from every process.
        let _ = setsockopt(&socket, sockopt::RcvBuf, &(1 << 20));
        let _ = setsockopt(&socket, sockopt::SndBuf, &(1 << 20));
        Ok(Router {
            socket,
            inbox: HashMap::new(),
            limits: HashMap::new(),
            owed: HashMap::new(),
            delivered: 0,
            dropped: 0,
            unreported: 0,
            reported_at: None,
        })
    }

    /// The value of `CORRAL_BUS`.
    pub fn env_value(&self) -> &str {
        self.socket.env_value()
    }

    pub fn try_clone_std(&self) -> io::Result<std::os::unix::net::UnixDatagram> {
        self.socket.try_clone_std()
    }

    /// Takes up to [`BATCH`] queued datagrams, and the error that ended the batch
    /// (`WouldBlock`: none left).
    pub fn take(&self) -> (Vec<Datagram>, io::Result<()>) {
        let mut out = Vec::new();
        let mut buf = vec![0u8; MAX_MESSAGE + 1];
        for _ in 0..BATCH {
            match self.socket.recv_into(&mut buf) {
                Ok((pid, len, from)) => out.push(Datagram {
                    pid,
                    bytes: buf[..len].to_vec(),
                    from,
                }),
                Err(e) => return (out, Err(e)),
            }
        }
        (out, Ok(()))
    }

    /// A message passed on to each of `targets(to)` over its Node.js channel if it has one,
    /// else to its registered address, or dropped and counted.
    pub fn route(
        &mut self,
        from: Sent<'_>,
        now: Instant,
        targets: impl FnOnce(To) -> Vec<(WorkerId, i32)>,
        channels: &Channels,
    ) -> Result<(), String> {
        let Sent {
            id,
            seat,
            bytes,
            address,
        } = from;
        if let Some(a) = address {
            self.inbox.insert(id, a);
        }
        let Some(m) = parse(bytes)? else {
            return Ok(());
        };
        let limit = self.limits.entry(id).or_insert_with(|| Limiter::new(now));
        if !limit.allow(bytes.len(), now) {
            self.count_dropped(1);
            return Err("over its rate (bus.rs RATE, BYTES_PER_SECOND): dropped".into());
        }
        for (to, pid) in targets(m.to) {
            let owed = self.owed.remove(&to).unwrap_or(0);
            let mut line = envelope(seat, &m.data, owed);
            let sent = match (channels.get(&pid), self.inbox.get(&to)) {
                (Some((queue, _)), _) => {
                    line.push(b'\n');
                    queue.try_send(line).is_ok()
                }
                (None, Some(addr)) => match self.socket.send_to(&line, addr) {
                    Ok(()) => true,
                    Err(e) => {
                        // Gone (or never there): not registered any more.
                        if e.kind() != io::ErrorKind::WouldBlock
                            && e.raw_os_error() != Some(libc::ENOBUFS)
                        {
                            self.inbox.remove(&to);
                        }
                        false
                    }
                },
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

    fn count_dropped(&mut self, n: u64) {
        self.dropped += n;
        self.unreported += n;
    }

    /// The process is gone.
    pub fn forget(&mut self, id: WorkerId) {
        self.inbox.remove(&id);
        self.limits.remove(&id);
        self.owed.remove(&id);
    }

    /// What to say of messages dropped since it was last said, at most every [`REPORT_EVERY`].
    pub fn report(&mut self, now: Instant) -> Option<String> {
        if self.unreported == 0 || self.reported_at.is_some_and(|t| now < t + REPORT_EVERY) {
            return None;
        }
        self.reported_at = Some(now);
        let n = std::mem::take(&mut self.unreported);
        Some(format!(
            "bus: {n} message(s) dropped (a receiver's queue full or its address unknown, or a \
             sender over its rate); {} delivered, {} dropped in all",
            self.delivered, self.dropped
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_where_they_go() {
        let m = |s: &str| parse(s.as_bytes());
        assert_eq!(
            m(r#"{"to":"agent","data":{"job":1}}"#).unwrap(),
            Some(Message {
                to: To::Agent,
                data: serde_json::json!({"job": 1})
            })
        );
        assert_eq!(m(r#"{"to":"all"}"#).unwrap().unwrap().to, To::All);
        assert_eq!(
            m(r#"{"corral":"bus","to":3,"data":"x"}"#)
                .unwrap()
                .unwrap()
                .to,
            To::Slot(3)
        );
        assert_eq!(m("{}").unwrap(), None, "registers only");
        for bad in [
            r#"{"to":"nobody"}"#,
            r#"{"to":-1}"#,
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
        let e = envelope(Seat::Slot(2), &serde_json::json!({"a": 1}), 0);
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"corral":"bus","from":2,"data":{"a":1}})
        );
        let e = envelope(Seat::Agent, &Value::Null, 7);
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v["from"], "agent");
        assert_eq!(v["dropped"], 7);
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
