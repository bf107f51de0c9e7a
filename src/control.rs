//! The control socket: a small versioned request/response protocol over a unix stream socket.
//!
//! One request per connection, one JSON object per line each way:
//! `{"version":1,"command":"status"}` → `{"version":1,"ok":true,"status":{...}}`.
//! A request of another protocol version gets an error reply naming both versions; a client
//! checks the reply's version the same way, so mismatched binaries say so instead of
//! misreading each other. Only root and the supervisor's own user may connect (SO_PEERCRED).
//!
//! Both ends check the other. The supervisor takes at most [`MAX_CONNECTIONS`] connections at
//! once, waits [`REQUEST_TIMEOUT`] for a request and [`WRITE_TIMEOUT`] for a client to take each
//! line of its answer, so clients cannot use up its file descriptors (it needs them to start
//! workers). A client believes only a directory and a peer that another user cannot have
//! planted (`trusted_uids`), and sends nothing to anyone else.

use std::collections::BTreeMap;
use std::io::{self, BufRead, BufReader, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream as StdStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use crate::error::Error;
use crate::supervisor::Snapshot;

pub const PROTOCOL_VERSION: u32 = 1;
/// A request line longer than this is refused.
const MAX_REQUEST: u64 = 64 * 1024;
/// Control connections open at once. Past it, a new connection takes the place of the oldest
/// one that has not sent its request yet (which is told so and closed); when every one is busy
/// (a reload each client waits for), the new one is answered with an error at once. The unit's
/// LimitNOFILE= counts them (units.rs).
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection may take to send its request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client may take to make room for a line of the answer (a client that never
/// reads): the connection is closed then. Progress and answers are small, so a reading client
/// never waits on this.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Command {
    Status,
    Reload {
        /// The client's `$MAINPID`, which systemd sets for `ExecReload=` (systemd.exec(5)):
        /// the supervisor's own pid when systemd runs the reload, and waits for it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mainpid: Option<u32>,
    },
    Restart {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<u32>,
        /// The agent alone. A corral older than the field would read this as a restart of
        /// every worker: the client asks first whether the app has an agent, which an older
        /// corral's status never shows.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        agent: bool,
    },
    Scale {
        /// "4", "+2" or "-1"
        workers: String,
    },
    /// Re-execute the binary at the supervisor's own path, keeping its pid and workers.
    Upgrade,
    /// Send a signal to the workers, or to one slot's.
    Signal {
        signal: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<u32>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub version: u32,
    #[serde(flatten)]
    pub command: Command,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub version: u32,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusReply>,
    /// Set on the lines that come before the answer of a long operation (a reload's progress);
    /// the answer itself has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<String>,
}

/// What `status` returns: the supervisor's snapshot plus what only the runtime knows.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StatusReply {
    pub app: String,
    pub pid: u32,
    pub config: PathBuf,
    pub state: String,
    pub generation: u32,
    pub desired: u32,
    pub ready: u32,
    pub restarts: u64,
    pub reload: Option<ReloadProgress>,
    pub workers: Vec<WorkerStatus>,
    /// Where the workers' lines go: `"journal"`, or `"stderr"` (corral's standard error).
    #[serde(default)]
    pub log: String,
    /// The current generation's listeners.
    #[serde(default)]
    pub listeners: Vec<ListenerStatus>,
    /// The app's agent (`[agent]`), if it has one.
    #[serde(default)]
    pub agent: Option<WorkerStatus>,
    /// Messages the bus passed on between the agent and the workers, and dropped (bus.rs).
    #[serde(default)]
    pub bus: BusCounts,
    /// The supervisor's own version (empty from a corral older than the field).
    #[serde(default)]
    pub version: String,
    /// Its last upgrade in place, if it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgraded: Option<Upgraded>,
}

/// When the supervisor last upgraded in place, and from which version.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Upgraded {
    /// Seconds since the epoch.
    pub at: u64,
    pub from: String,
    /// Upgrades in place since it started.
    pub count: u32,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BusCounts {
    pub delivered: u64,
    pub dropped: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    /// As the kernel says: `127.0.0.1:8080`, a unix socket's path.
    pub address: String,
    /// `shared`, `even` or `source`: as it is, which may not be what the config asks.
    pub balance: String,
    /// Sockets in the listener's group, for a balanced one.
    pub sockets: Option<usize>,
    /// Why it is not balanced as the config asks.
    pub note: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReloadProgress {
    pub generation: u32,
    pub replaced: u32,
    pub total: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerStatus {
    /// None for the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<u32>,
    pub pid: Option<i32>,
    pub state: String,
    pub generation: u32,
    pub restarts: u32,
    pub uptime_s: Option<f64>,
    /// CPU time over the worker's life, in percent of one CPU (what ps(1) shows as %CPU), of
    /// the processes of the worker's tree that are alive now.
    pub cpu_percent: Option<f64>,
    /// Resident memory of the worker's whole process tree.
    pub rss_bytes: Option<u64>,
    /// How many processes the worker's tree has (1: the worker alone).
    #[serde(default)]
    pub processes: Option<u32>,
    pub status: Option<String>,
}

impl StatusReply {
    pub fn new(app: &str, config: &Path, snap: Snapshot, journal: bool) -> StatusReply {
        let pids: Vec<i32> = snap
            .workers
            .iter()
            .chain(&snap.agent)
            .filter_map(|w| w.pid)
            .collect();
        let usage = crate::procfs::usage_of(&pids);
        let of = |pid: Option<i32>| {
            pid.and_then(|p| usage.get(&p))
                .copied()
                .filter(|u| u.processes > 0)
        };
        let status = |w: crate::supervisor::WorkerView| WorkerStatus {
            slot: w.slot,
            pid: w.pid,
            state: w.state.to_string(),
            generation: w.generation,
            restarts: w.restarts,
            uptime_s: w.uptime_s.map(|u| (u * 10.0).round() / 10.0),
            cpu_percent: of(w.pid).zip(w.uptime_s).map(|(t, u)| {
                let pct = if u > 0.0 {
                    t.cpu_seconds / u * 100.0
                } else {
                    0.0
                };
                (pct * 10.0).round() / 10.0
            }),
            rss_bytes: of(w.pid).map(|t| t.rss_bytes),
            processes: of(w.pid).map(|t| t.processes),
            status: w.status,
        };
        StatusReply {
            app: app.to_string(),
            log: if journal { "journal" } else { "stderr" }.into(),
            listeners: Vec::new(),
            pid: std::process::id(),
            config: config.to_path_buf(),
            state: snap.state.to_string(),
            generation: snap.generation,
            desired: snap.desired,
            ready: snap.ready,
            restarts: snap.restarts,
            reload: snap.reload.map(|r| ReloadProgress {
                generation: r.generation,
                replaced: r.replaced,
                total: r.total,
            }),
            agent: snap.agent.map(status),
            bus: BusCounts::default(),
            version: crate::version::get().to_string(),
            upgraded: None,
            workers: snap.workers.into_iter().map(status).collect(),
        }
    }
}

impl Response {
    pub fn ok(message: impl Into<String>) -> Response {
        Response {
            version: PROTOCOL_VERSION,
            ok: true,
            message: Some(message.into()),
            error: None,
            status: None,
            progress: None,
        }
    }
    /// A line of a long operation's progress, sent before its answer.
    pub fn progress(line: String) -> Response {
        Response {
            version: PROTOCOL_VERSION,
            ok: true,
            message: None,
            error: None,
            status: None,
            progress: Some(line),
        }
    }
    pub fn err(error: impl Into<String>) -> Response {
        Response {
            version: PROTOCOL_VERSION,
            ok: false,
            message: None,
            error: Some(error.into()),
            status: None,
            progress: None,
        }
    }
}

/// The default control socket path (corral(1), CONTROL SOCKET): `$RUNTIME_DIRECTORY/APP.sock` under
/// systemd, else `/run/corral/APP.sock` as root, else `$XDG_RUNTIME_DIR/corral/APP.sock`.
pub fn default_path(app: &str) -> PathBuf {
    control_dir().join(format!("{app}.sock"))
}

/// The directory of [`default_path`]: where control sockets are, for every app.
pub fn control_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("RUNTIME_DIRECTORY") {
        // systemd.exec(5): several directories are separated by colons; the first is ours.
        if let Some(first) = std::env::split_paths(&dir).next() {
            if !first.as_os_str().is_empty() {
                return first;
            }
        }
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/corral");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("corral"),
        _ => std::env::temp_dir().join(format!("corral-{}", nix::unistd::geteuid())),
    }
}

/// Where a client looks for APP's socket: the first of these that exists, else the default.
/// The default path; as root, `/run/corral/APP.sock` (standalone) and `/run/corral/APP/APP.sock`
/// (`corral@APP.service`, `RuntimeDirectory=corral/APP`). A `RUNTIME_DIRECTORY` inherited from
/// some other unit (a deploy timer running `corral reload api`) must not hide the app.
pub fn find_path(app: &str) -> PathBuf {
    let default = default_path(app);
    let mut candidates = vec![default.clone()];
    if nix::unistd::geteuid().is_root() {
        let file = format!("{app}.sock");
        candidates.push(Path::new("/run/corral").join(&file));
        candidates.push(Path::new("/run/corral").join(app).join(&file));
    }
    candidates
        .into_iter()
        .find(|p| p.exists())
        .unwrap_or(default)
}

/// Every control socket on this machine that a client can see: `DIR/*.sock` and `DIR/*/*.sock`
/// under the control directory.
pub fn all_paths() -> Vec<PathBuf> {
    let dir = control_dir();
    let dir = dir.as_path();
    let socks = |d: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(d)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut v = socks(dir);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                v.extend(socks(&e.path()));
            }
        }
    }
    v.sort();
    v
}

/// A request from a connection, for the event loop to answer.
pub struct Incoming {
    pub command: Command,
    pub reply: Reply,
}

/// Where the event loop answers a request: the answer, and progress lines before it.
pub struct Reply {
    pub answer: oneshot::Sender<Response>,
    pub progress: mpsc::Sender<String>,
    /// Set by the event loop: systemd waits for this request (an `ExecReload=`), and times it.
    pub systemd_waits: bool,
    /// The connection, for an upgrade in place to hand over with the request (carry.rs).
    pub connection: Option<OwnedFd>,
}

impl Reply {
    pub fn send(self, r: Response) {
        let _ = self.answer.send(r);
    }

    /// Where to answer a request an earlier image took on `connection` (an upgrade in
    /// place): its progress and answer go there as they would have.
    pub fn resume(connection: OwnedFd, systemd_waits: bool) -> io::Result<Reply> {
        let std = std::os::unix::net::UnixStream::from(connection.try_clone()?);
        std.set_nonblocking(true)?;
        let (_, write) = UnixStream::from_std(std)?.into_split();
        let (answer, answered) = oneshot::channel();
        let (progress, progressed) = mpsc::channel(64);
        tokio::spawn(async move {
            let mut write = write;
            let response = deliver(&mut write, answered, progressed).await;
            if let Some(r) = response {
                let _ = send_line(&mut write, &r).await;
            }
        });
        Ok(Reply {
            answer,
            progress,
            systemd_waits,
            connection: Some(connection),
        })
    }
}

/// The listening control socket; removed from the file system when dropped.
pub struct Server {
    path: PathBuf,
}

impl Server {
    /// The control socket an earlier image bound at `path` (an upgrade in place).
    pub fn adopt(path: &Path) -> Server {
        Server {
            path: path.to_path_buf(),
        }
    }

    /// Binds `path` with mode 0600 in a directory that is safe for it (rundir.rs). A socket
    /// file left by a dead supervisor is replaced; one a live supervisor answers on is an error
    /// (two supervisors of one app would fight).
    pub fn bind(path: &Path) -> Result<(Server, UnixListener), Error> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::rundir::prepare(dir)
                .map_err(|e| Error::io(format!("runtime directory {}", dir.display()), e))?;
        }
        let fd =
            crate::rundir::bind_socket(path, nix::sys::socket::SockType::Stream).map_err(|e| {
                let e = match e.kind() {
                    io::ErrorKind::AddrInUse => {
                        io::Error::new(e.kind(), "another corral is running this app")
                    }
                    _ => e,
                };
                Error::io(format!("control socket {}", path.display()), e)
            })?;
        let listener = std::os::unix::net::UnixListener::from(fd);
        let listener = nix::sys::socket::listen(
            &listener,
            nix::sys::socket::Backlog::new(64).expect("in range"),
        )
        .map_err(io::Error::from)
        .and_then(|()| UnixListener::from_std(listener))
        .map_err(|e| Error::io(format!("cannot listen on {}", path.display()), e))?;
        Ok((
            Server {
                path: path.to_path_buf(),
            },
            listener,
        ))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The open control connections, for [`MAX_CONNECTIONS`].
#[derive(Default)]
struct Connections {
    /// Open, counting those told to close that have not closed yet.
    open: usize,
    next: u64,
    /// Those that have not sent their request, oldest first, each with how to close it.
    waiting: BTreeMap<u64, oneshot::Sender<()>>,
}

/// One open connection's place in [`Connections`]; given back when dropped.
struct Slot {
    id: u64,
    all: Arc<Mutex<Connections>>,
}

impl Slot {
    /// Its request came: it is no longer the one to close for a newcomer.
    fn busy(&self) {
        self.all
            .lock()
            .expect("not poisoned")
            .waiting
            .remove(&self.id);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut all = self.all.lock().expect("not poisoned");
        all.open -= 1;
        all.waiting.remove(&self.id);
    }
}

/// A place for a new connection, what says it must make way for a newer one, and whether an
/// older one was told to; `None` when there is no place.
fn admit(all: &Arc<Mutex<Connections>>) -> Option<(Slot, oneshot::Receiver<()>, bool)> {
    let mut c = all.lock().expect("not poisoned");
    // Those told to close still hold their descriptor until their task has run (serve lets
    // it); twice the cap bounds them however fast connections come.
    let evicted = c.open >= MAX_CONNECTIONS;
    if evicted {
        if c.open >= 2 * MAX_CONNECTIONS {
            return None;
        }
        let (_, close) = c.waiting.pop_first()?;
        let _ = close.send(());
    }
    c.open += 1;
    c.next += 1;
    let id = c.next;
    let (close, closed) = oneshot::channel();
    c.waiting.insert(id, close);
    Some((
        Slot {
            id,
            all: all.clone(),
        },
        closed,
        evicted,
    ))
}

fn line(r: &Response) -> String {
    let mut text = serde_json::to_string(r).expect("a response serialises");
    text.push('\n');
    text
}

/// Accepts connections forever, handing each request to the event loop. It never waits on a
/// client: one too many is answered without waiting and closed.
///
/// While `handing` is set (an upgrade in place), it accepts nothing: new connections wait in
/// the socket's queue for the next image, which answers them.
pub async fn serve(
    listener: UnixListener,
    to_loop: mpsc::Sender<Incoming>,
    mut handing: tokio::sync::watch::Receiver<bool>,
) {
    let all = Arc::new(Mutex::new(Connections::default()));
    loop {
        let upgrading = *handing.borrow();
        if upgrading && handing.wait_for(|&h| !h).await.is_err() {
            return;
        }
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Ok(_) = handing.wait_for(|&h| h) => continue,
        };
        match accepted {
            Ok((stream, _)) => match admit(&all) {
                Some((slot, closed, evicted)) => {
                    tokio::spawn(connection(stream, to_loop.clone(), slot, closed));
                    if evicted {
                        // The one told to close does so before the next is taken: a burst of
                        // connections does not pile up closing ones.
                        tokio::task::yield_now().await;
                    }
                }
                None => {
                    // A new socket's buffer is empty: the line fits, and the write (the socket
                    // is non-blocking) never waits. Written directly, not through the reactor,
                    // which may not have seen the socket writable yet.
                    let text = line(&Response::err(format!(
                        "corral is busy: {MAX_CONNECTIONS} control connections are open and \
                         waiting for answers; try again later"
                    )));
                    let _ = stream
                        .into_std()
                        .and_then(|s| (&s).write_all(text.as_bytes()));
                }
            },
            Err(e) => {
                // Out of fds, say: retrying at once would spin. The event loop runs on meanwhile.
                tracing::warn!("control socket: cannot accept: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

fn peer_allowed(stream: &UnixStream) -> Result<(), String> {
    let cred = stream
        .peer_cred()
        .map_err(|e| format!("cannot read peer credentials: {e}"))?;
    let me = nix::unistd::geteuid().as_raw();
    if cred.uid() == 0 || cred.uid() == me {
        Ok(())
    } else {
        Err(format!(
            "permission denied: uid {} may not control this corral (only root and uid {me})",
            cred.uid()
        ))
    }
}

async fn connection(
    stream: UnixStream,
    to_loop: mpsc::Sender<Incoming>,
    slot: Slot,
    closed: oneshot::Receiver<()>,
) {
    let allowed = peer_allowed(&stream);
    let (read, mut write) = stream.into_split();
    let request = match allowed {
        Err(e) => Err(Response::err(e)),
        Ok(()) => {
            let mut line = String::new();
            let mut reader =
                tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
            let read = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line));
            tokio::select! {
                r = read => match r {
                    Err(_) => Err(Response::err(format!(
                        "no request within {}s",
                        REQUEST_TIMEOUT.as_secs()
                    ))),
                    Ok(Err(e)) => Err(Response::err(format!("cannot read request: {e}"))),
                    Ok(Ok(_)) if !line.ends_with('\n') => Err(Response::err(
                        "request too long or not terminated by a newline",
                    )),
                    Ok(Ok(_)) => parse(&line).map_err(Response::err),
                },
                Ok(()) = closed => Err(Response::err(format!(
                    "closed without a request: {MAX_CONNECTIONS} control connections are open, \
                     and a newer one needed this one's place"
                ))),
            }
        }
    };
    slot.busy();
    let response = match request {
        Err(r) => r,
        Ok(command) => {
            let (answer, answered) = oneshot::channel();
            let (progress, progressed) = mpsc::channel(64);
            // Kept with the request: an upgrade in place hands the connection over with it.
            let connection = write.as_ref().as_fd().try_clone_to_owned().ok();
            let incoming = Incoming {
                command,
                reply: Reply {
                    answer,
                    progress,
                    systemd_waits: false,
                    connection,
                },
            };
            if to_loop.send(incoming).await.is_err() {
                Response::err("corral is shutting down")
            } else {
                match deliver(&mut write, answered, progressed).await {
                    Some(r) => r,
                    None => return,
                }
            }
        }
    };
    let _ = send_line(&mut write, &response).await;
    drop(slot);
}

/// Writes the progress lines of a request until its answer comes, which it returns; `None`
/// when the client takes no more lines (it is gone: what it asked for goes on without it).
async fn deliver(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    mut answered: oneshot::Receiver<Response>,
    mut progressed: mpsc::Receiver<String>,
) -> Option<Response> {
    loop {
        tokio::select! {
            // Progress queued before the answer goes out before it.
            biased;
            Some(p) = progressed.recv() => {
                send_line(write, &Response::progress(p)).await.ok()?;
            }
            r = &mut answered => {
                return Some(r.unwrap_or_else(|_| Response::err("corral is shutting down")));
            }
        }
    }
}

/// Writes one line, or gives up after [`WRITE_TIMEOUT`] of the client not taking it.
async fn send_line(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    r: &Response,
) -> std::io::Result<()> {
    send_line_within(write, r, WRITE_TIMEOUT).await
}

async fn send_line_within(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    r: &Response,
    timeout: Duration,
) -> std::io::Result<()> {
    tokio::time::timeout(timeout, write.write_all(line(r).as_bytes()))
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client takes no answer",
            ))
        })
}

/// Checks a request line: JSON, this protocol version, a known command. The error is the
/// reply's text.
pub fn parse(line: &str) -> Result<Command, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("malformed request: {e}"))?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(format!(
                "protocol version {v} is not supported: this supervisor speaks version \
                 {PROTOCOL_VERSION} (corral {}); use the corral binary of the same version",
                crate::version::get()
            ))
        }
        None => return Err("malformed request: no \"version\"".into()),
    }
    let request: Request =
        serde_json::from_value(value).map_err(|e| format!("unknown or malformed command: {e}"))?;
    Ok(request.command)
}

/// Who a client believes on the socket at `path`, before it connects: root, this user, and
/// the owner of the socket's directory when root or this user made that directory for it,
/// as systemd makes `RuntimeDirectory=corral/APP` in root's `/run/corral` for the service's
/// user (`sudo corral status api`). A directory that fails rundir.rs's test otherwise (another
/// user's, or writable by others: a `/tmp/corral-UID` someone else made first) is refused, so
/// nothing is sent through it. A directory that cannot be looked at is left to `connect` to
/// report; the peer's check still applies.
fn trusted_uids(path: &Path) -> Result<Vec<u32>, Error> {
    let me = nix::unistd::geteuid().as_raw();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Ok(m) = std::fs::symlink_metadata(dir) else {
        return Ok(vec![0, me]);
    };
    let refused = match crate::rundir::check_dir(dir, me) {
        Ok(_) => return Ok(vec![0, me]),
        Err(e) => e,
    };
    // Made for its owner: a safe directory of that user, in one only root or this user can
    // add to (no write bit for others at all: a sticky /tmp is not that).
    let owner = m.uid();
    let handed_over = crate::rundir::check_dir(dir, owner).is_ok()
        && std::fs::canonicalize(dir)
            .ok()
            .and_then(|d| std::fs::metadata(d.parent()?).ok())
            .is_some_and(|p| (p.uid() == 0 || p.uid() == me) && p.mode() & 0o022 == 0);
    if handed_over {
        Ok(vec![0, me, owner])
    } else {
        Err(Error::io(
            format!("will not connect to {}", path.display()),
            refused,
        ))
    }
}

/// Refuses a peer whose uid is not in `trusted` (SO_PEERCRED: who called listen(2)) before
/// anything is sent to it: another user's process there would otherwise read the request and
/// fake the answer.
fn check_peer(stream: &StdStream, path: &Path, trusted: &[u32]) -> Result<(), Error> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let cred = getsockopt(stream, PeerCredentials).map_err(|e| {
        Error::io(
            format!("cannot tell who answers on {}", path.display()),
            e.into(),
        )
    })?;
    if trusted.contains(&cred.uid()) {
        return Ok(());
    }
    let me = nix::unistd::geteuid().as_raw();
    let others: String = trusted
        .iter()
        .filter(|&&u| u != 0 && u != me)
        .map(|u| format!(", nor uid {u} (the directory's owner)"))
        .collect();
    Err(Error::io(
        format!("will not talk to {}", path.display()),
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the process answering there (pid {}) runs as uid {}, which is neither root nor \
                 this user (uid {me}){others}: another user may have put it there to fake \
                 corral's answers. Nothing was sent to it",
                cred.pid(),
                cred.uid()
            ),
        ),
    ))
}

/// Sends one request and waits for the reply, at most `timeout` (none for a reload, which
/// answers when its roll is done, however long that takes).
pub fn request(
    path: &Path,
    command: Command,
    timeout: Option<Duration>,
) -> Result<Response, Error> {
    request_with_progress(path, command, timeout, |_| {})
}

/// [`request`], handing each progress line of a long operation to `progress` as it comes.
///
/// A connection closed without a line of answer was not served: a supervisor that upgraded in
/// place meanwhile (runtime/upgrade.rs) closes those it had not read at its exec, and hands on
/// every request it took. A `status`, which changes nothing, is asked once more then; the
/// new image answers it. Any other command says so, for the operator to look and ask again.
pub fn request_with_progress(
    path: &Path,
    command: Command,
    timeout: Option<Duration>,
    mut progress: impl FnMut(&str),
) -> Result<Response, Error> {
    let again = command == Command::Status;
    match request_once(path, command.clone(), timeout, &mut progress) {
        Err(Error::Protocol(e)) if e.ends_with(UNANSWERED) => {
            if again {
                request_once(path, command, timeout, &mut progress)
            } else {
                Err(Error::Protocol(format!(
                    "{e}: it did not take the request (it may have been upgrading in place);                      see `corral status` and ask again"
                )))
            }
        }
        other => other,
    }
}

/// How a connection closed without an answer is reported.
const UNANSWERED: &str = "closed the connection without an answer";

fn request_once(
    path: &Path,
    command: Command,
    timeout: Option<Duration>,
    progress: &mut impl FnMut(&str),
) -> Result<Response, Error> {
    let trusted = trusted_uids(path)?;
    let stream = StdStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => Error::NotRunning {
            path: path.to_path_buf(),
            source: e,
        },
        _ => Error::io(format!("cannot connect to {}", path.display()), e),
    })?;
    check_peer(&stream, path, &trusted)?;
    stream
        .set_read_timeout(timeout)
        .map_err(|e| Error::io("control socket", e))?;
    let mut text = serde_json::to_string(&Request {
        version: PROTOCOL_VERSION,
        command,
    })
    .expect("a request serialises");
    text.push('\n');
    // A supervisor that refuses this peer answers and closes without reading: the write then
    // fails with EPIPE, but its answer is still there to read.
    if let Err(e) = (&stream).write_all(text.as_bytes()) {
        if e.kind() != io::ErrorKind::BrokenPipe {
            return Err(Error::io(format!("cannot send to {}", path.display()), e));
        }
    }
    let mut reader = BufReader::new(&stream);
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => Error::io(
                format!(
                    "no answer from {} within {}s (is the supervisor stopped or stuck?)",
                    path.display(),
                    timeout.unwrap_or_default().as_secs()
                ),
                e,
            ),
            _ => Error::io(format!("cannot read from {}", path.display()), e),
        })?;
        if line.is_empty() {
            return Err(Error::Protocol(format!("{} {UNANSWERED}", path.display())));
        }
        let value: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
            Error::Protocol(format!(
                "{} answered something that is not corral's protocol: {e}",
                path.display()
            ))
        })?;
        match value.get("version").and_then(|v| v.as_u64()) {
            Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
            other => {
                return Err(Error::Protocol(format!(
                    "the supervisor speaks control protocol version {}, this client \
                     {PROTOCOL_VERSION} (corral {}): use the corral binary of the same version",
                    other.map_or("?".to_string(), |v| v.to_string()),
                    crate::version::get()
                )))
            }
        }
        let response: Response = serde_json::from_value(value)
            .map_err(|e| Error::Protocol(format!("malformed answer: {e}")))?;
        match &response.progress {
            Some(p) => progress(p),
            None => return Ok(response),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_a_stable_wire_form() {
        let r = Request {
            version: 1,
            command: Command::Restart {
                worker: Some(2),
                agent: false,
            },
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"version":1,"command":"restart","worker":2}"#
        );
        let r: Request = serde_json::from_str(r#"{"version":1,"command":"status"}"#).unwrap();
        assert_eq!(r.command, Command::Status);
    }

    #[test]
    fn past_the_cap_the_oldest_connection_without_a_request_makes_way() {
        let all = Arc::new(Mutex::new(Connections::default()));
        let mut open: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| admit(&all).expect("room"))
            .collect();
        // The first has sent its request: the second is the oldest still waiting.
        open[0].0.busy();
        assert!(open.iter().all(|c| !c.2), "no one made way below the cap");
        let mut newcomer = admit(&all).expect("room, made by the oldest waiting");
        assert!(newcomer.2);
        assert!(open[1].1.try_recv().is_ok(), "told to close");
        assert!(open[0].1.try_recv().is_err(), "a busy one is left alone");
        assert!(open[2].1.try_recv().is_err());
        // Until it has closed, it still counts; at twice the cap nothing more is taken.
        assert_eq!(all.lock().unwrap().open, MAX_CONNECTIONS + 1);
        let mut more = Vec::new();
        while let Some(c) = admit(&all) {
            more.push(c);
        }
        assert_eq!(all.lock().unwrap().open, 2 * MAX_CONNECTIONS);
        assert!(more.iter_mut().all(|c| c.1.try_recv().is_err()));
        // Once those told to close have closed, the next newcomer takes the place of the
        // oldest waiting one again.
        drop(open.drain(1..).collect::<Vec<_>>());
        assert_eq!(all.lock().unwrap().open, MAX_CONNECTIONS + 1);
        let _last = admit(&all).expect("room");
        assert!(newcomer.1.try_recv().is_ok());
        drop((newcomer, more, _last));
        assert_eq!(all.lock().unwrap().open, 1, "only the busy one");
        assert!(all.lock().unwrap().waiting.is_empty());
    }

    #[test]
    fn every_connection_busy_means_the_next_is_refused() {
        let all = Arc::new(Mutex::new(Connections::default()));
        let busy: Vec<_> = (0..MAX_CONNECTIONS)
            .map(|_| admit(&all).expect("room"))
            .collect();
        for (slot, _, _) in &busy {
            slot.busy();
        }
        assert!(admit(&all).is_none());
        drop(busy);
        assert!(admit(&all).is_some());
    }

    #[tokio::test]
    async fn the_accept_loop_makes_way_then_answers_busy() {
        use tokio::io::AsyncWriteExt as _;
        let dir = std::env::temp_dir().join(format!("corral-control-cap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("t.sock");
        let (_server, listener) = Server::bind(&path).unwrap();
        let (to_loop, mut incoming) = mpsc::channel(256);
        let (_handing, not_handing) = tokio::sync::watch::channel(false);
        tokio::spawn(serve(listener, to_loop, not_handing));
        let request = b"{\"version\":1,\"command\":\"status\"}\n";
        let first_line = |s: UnixStream| async move {
            let mut line = String::new();
            let mut r = tokio::io::BufReader::new(s);
            tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line))
                .await
                .expect("a line within 5s")
                .unwrap();
            line
        };
        // One that says nothing, then the rest of the cap asking and never answered.
        let idle = UnixStream::connect(&path).await.unwrap();
        let mut held = Vec::new();
        let mut busy = Vec::new();
        for _ in 1..MAX_CONNECTIONS {
            let mut s = UnixStream::connect(&path).await.unwrap();
            s.write_all(request).await.unwrap();
            held.push(incoming.recv().await.unwrap());
            busy.push(s);
        }
        // A newcomer takes the idle one's place, which is told why.
        let mut newcomer = UnixStream::connect(&path).await.unwrap();
        let told = first_line(idle).await;
        assert!(told.contains("closed without a request"), "{told}");
        newcomer.write_all(request).await.unwrap();
        held.push(incoming.recv().await.unwrap());
        // Every place is busy: the next is answered at once.
        let refused = first_line(UnixStream::connect(&path).await.unwrap()).await;
        assert!(
            refused.contains("corral is busy: 64 control connections"),
            "{refused}"
        );
        // Answered, they make room.
        for i in held.drain(..) {
            i.reply.send(Response::ok("done"));
        }
        for s in busy {
            assert!(first_line(s).await.contains("done"));
        }
        let mut s = UnixStream::connect(&path).await.unwrap();
        s.write_all(request).await.unwrap();
        assert!(incoming.recv().await.is_some());
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn a_client_that_never_reads_is_given_up_on() {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let (_read, mut write) = ours.into_split();
        let progress = Response::progress("x".repeat(1000));
        let mut lines = 0;
        let e = loop {
            match send_line_within(&mut write, &progress, Duration::from_millis(200)).await {
                Ok(()) => lines += 1,
                Err(e) => break e,
            }
        };
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(lines > 10, "the socket's buffer took {lines} lines first");
        drop(theirs);
    }
}
