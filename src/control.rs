//! The control socket: a small versioned request/response protocol over a unix stream socket.
//!
//! One request per connection, one JSON object per line each way:
//! `{"version":1,"command":"status"}` → `{"version":1,"ok":true,"status":{...}}`.
//! A request of another protocol version gets an error reply naming both versions; a client
//! checks the reply's version the same way, so mismatched binaries say so instead of
//! misreading each other. Only root and the supervisor's own user may connect (SO_PEERCRED).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream as StdStream;
use std::path::{Path, PathBuf};
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

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "lowercase")]
pub enum Command {
    Status,
    Reload,
    Restart {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<u32>,
    },
    Scale {
        /// "4", "+2" or "-1"
        workers: String,
    },
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
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReloadProgress {
    pub generation: u32,
    pub replaced: u32,
    pub total: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub slot: u32,
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
        let pids: Vec<i32> = snap.workers.iter().filter_map(|w| w.pid).collect();
        let usage = crate::procfs::usage_of(&pids);
        let of = |pid: Option<i32>| {
            pid.and_then(|p| usage.get(&p))
                .copied()
                .filter(|u| u.processes > 0)
        };
        StatusReply {
            app: app.to_string(),
            log: if journal { "journal" } else { "stderr" }.into(),
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
            workers: snap
                .workers
                .into_iter()
                .map(|w| WorkerStatus {
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
                })
                .collect(),
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
}

impl Reply {
    pub fn send(self, r: Response) {
        let _ = self.answer.send(r);
    }
}

/// The listening control socket; removed from the file system when dropped.
pub struct Server {
    path: PathBuf,
}

impl Server {
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

/// Accepts connections forever, handing each request to the event loop.
pub async fn serve(listener: UnixListener, to_loop: mpsc::Sender<Incoming>) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(connection(stream, to_loop.clone()));
            }
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

async fn connection(stream: UnixStream, to_loop: mpsc::Sender<Incoming>) {
    let allowed = peer_allowed(&stream);
    let (read, mut write) = stream.into_split();
    let request = match allowed {
        Err(e) => Err(Response::err(e)),
        Ok(()) => {
            let mut line = String::new();
            let mut reader =
                tokio::io::BufReader::new(tokio::io::AsyncReadExt::take(read, MAX_REQUEST));
            let read = tokio::time::timeout(Duration::from_secs(10), reader.read_line(&mut line));
            match read.await {
                Err(_) => Err(Response::err("no request within 10s")),
                Ok(Err(e)) => Err(Response::err(format!("cannot read request: {e}"))),
                Ok(Ok(_)) if !line.ends_with('\n') => Err(Response::err(
                    "request too long or not terminated by a newline",
                )),
                Ok(Ok(_)) => parse(&line).map_err(Response::err),
            }
        }
    };
    let response = match request {
        Err(r) => r,
        Ok(command) => {
            let (answer, mut answered) = oneshot::channel();
            let (progress, mut progressed) = mpsc::channel(64);
            let incoming = Incoming {
                command,
                reply: Reply { answer, progress },
            };
            if to_loop.send(incoming).await.is_err() {
                Response::err("corral is shutting down")
            } else {
                loop {
                    tokio::select! {
                        // Progress queued before the answer goes out before it.
                        biased;
                        Some(p) = progressed.recv() => {
                            if send_line(&mut write, &Response::progress(p)).await.is_err() {
                                break Response::err("the client went away");
                            }
                        }
                        r = &mut answered => {
                            break r.unwrap_or_else(|_| Response::err("corral is shutting down"));
                        }
                    }
                }
            }
        }
    };
    let _ = send_line(&mut write, &response).await;
}

async fn send_line(
    write: &mut tokio::net::unix::OwnedWriteHalf,
    r: &Response,
) -> std::io::Result<()> {
    let mut text = serde_json::to_string(r).expect("a response serialises");
    text.push('\n');
    write.write_all(text.as_bytes()).await
}

/// Checks a request line: JSON, this protocol version, a known command. The error is the
/// reply's text.
fn parse(line: &str) -> Result<Command, String> {
    let value: serde_json::Value =
        serde_json::from_str(line).map_err(|e| format!("malformed request: {e}"))?;
    match value.get("version").and_then(|v| v.as_u64()) {
        Some(v) if v == u64::from(PROTOCOL_VERSION) => {}
        Some(v) => {
            return Err(format!(
                "protocol version {v} is not supported: this supervisor speaks version \
                 {PROTOCOL_VERSION} (corral {}); use the corral binary of the same version",
                env!("CARGO_PKG_VERSION")
            ))
        }
        None => return Err("malformed request: no \"version\"".into()),
    }
    let request: Request =
        serde_json::from_value(value).map_err(|e| format!("unknown or malformed command: {e}"))?;
    Ok(request.command)
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
pub fn request_with_progress(
    path: &Path,
    command: Command,
    timeout: Option<Duration>,
    mut progress: impl FnMut(&str),
) -> Result<Response, Error> {
    let stream = StdStream::connect(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused => Error::NotRunning {
            path: path.to_path_buf(),
            source: e,
        },
        _ => Error::io(format!("cannot connect to {}", path.display()), e),
    })?;
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
            return Err(Error::Protocol(format!(
                "{} closed the connection without an answer",
                path.display()
            )));
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
                    env!("CARGO_PKG_VERSION")
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
            command: Command::Restart { worker: Some(2) },
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"version":1,"command":"restart","worker":2}"#
        );
        let r: Request = serde_json::from_str(r#"{"version":1,"command":"status"}"#).unwrap();
        assert_eq!(r.command, Command::Status);
    }
}
