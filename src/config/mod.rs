//! App config files: parsing and validation.
//!
//! An app is described by one TOML file; the app name is the file stem
//! (`/etc/corral/api.toml` describes the app `api`). Parsing never stops at
//! the first problem: every problem in the file is collected and reported as
//! `FILE:LINE:COL: message`, with 1-based lines and columns (columns counted
//! in characters), sorted by position; the first [`MAX_LISTED_DIAGNOSTICS`] are kept and
//! listed, and the rest counted. `Config::load` reads only a regular file of at most
//! [`MAX_CONFIG_SIZE`] bytes, and placing the diagnostics takes time linear in their number
//! and the file's size, so no file can hold up corral for long.
//!
//! This file holds the schema (the types a valid file becomes), `Config::load`/`parse` and
//! the bounded reading of files; `check` walks the document and collects the diagnostics,
//! `values` parses the values inside strings (durations, sizes, signals, addresses), `cpus`
//! counts the CPUs for `workers = "auto"`, and `environment_file` reads the files of
//! `environment_file` into the workers' environment, which `Config::load` does each time (so a
//! reload re-reads them).

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use toml_edit::ImDocument;

mod check;
mod cpus;
mod diagnostics;
mod environment_file;
mod values;

pub use check::reserved_env;
use check::{
    Checker, AGENT_KEYS, AGENT_STOP_KEYS, LIMITS_KEYS, LISTEN_KEYS, LOGS_KEYS, NODE_KEYS,
    READINESS_KEYS, RELOAD_KEYS, RESTART_KEYS, SERVICE_KEYS, STOP_KEYS, TOP_KEYS, WATCHDOG_KEYS,
};
pub use cpus::available_cpus;
pub use environment_file::{MAX_ENVIRONMENT_FILES, MAX_ENVIRONMENT_FILE_SIZE};
pub use values::{parse_duration, parse_signal, parse_size, signal_number};

/// The largest config file [`Config::load`] reads: 1 MiB, hundreds of times any real config.
/// A larger file is refused before it is read, so that no file (a log written to by mistake,
/// a symlink to a huge file) can make corral hold or parse an unbounded amount of text.
pub const MAX_CONFIG_SIZE: u64 = 1024 * 1024;

/// How many diagnostics a [`ConfigError`] keeps and lists, the earliest in the file; a last
/// line counts the rest ([`ConfigError::more`]).
pub const MAX_LISTED_DIAGNOSTICS: usize = 100;

/// What `readiness.mode = "exec"` means for a reload, said wherever it matters.
pub const EXEC_WARNING: &str = "readiness.mode = \"exec\" counts a worker as ready as soon as it \
     runs, before it can serve: a reload then stops old workers while the new ones may still be \
     starting, and cannot be refused when they fail. Use \"notify\", \"node-ipc\", or \"listen\" \
     (ready once the worker waits for connections) to protect reloads";

/// A validated app config.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Config {
    /// The file the config came from, as given.
    pub path: PathBuf,
    /// The app name: the file stem.
    pub app: String,
    /// The worker's argv (no shell). Never empty.
    pub command: Vec<String>,
    /// Working directory of the workers; always absolute.
    pub directory: Option<PathBuf>,
    /// How many workers to run.
    pub workers: WorkerCount,
    /// Extra environment for the workers, each name once. From [`Config::parse`], the
    /// config's own `environment`, in file order; [`Config::load`] puts the variables of the
    /// `environment_file` files before them, the config's own winning over the files' and a
    /// later file's over an earlier one's. The values may be secrets: corral never shows them (its
    /// `Debug` form would).
    pub environment: Vec<(String, String)>,
    /// `environment_file`: the files [`Config::load`] reads into `environment`, in order.
    pub environment_files: Vec<EnvironmentFile>,
    /// Listening sockets, in file order.
    pub listen: Vec<Listen>,
    /// How a worker tells it is ready.
    pub readiness: Readiness,
    /// Worker watchdog timeout (`[watchdog] timeout`); `None` when not set.
    pub watchdog: Option<Duration>,
    /// How workers are stopped.
    pub stop: Stop,
    /// When and how fast workers are restarted.
    pub restart: Restart,
    /// Rolling reload settings.
    pub reload: Reload,
    /// Resource limits.
    pub limits: Limits,
    /// Node.js apps: the preload and PM2's variables.
    pub node: Node,
    /// Logging settings.
    pub logs: Logs,
    /// Settings for the generated systemd service.
    pub service: Service,
    /// The app's agent: one process beside the workers (`[agent]`).
    pub agent: Option<Agent>,
}

/// `[agent]`: what differs for the agent from the workers. What it does not set is the
/// app's: its readiness, stop and restart settings (a readiness mode of `listen` becomes
/// `exec`: the agent has no listeners; `stop.message` only with readiness `node-ipc`), its
/// directory and environment (`environment` adds to the app's and wins over it). It gets no
/// Node.js preload.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Agent {
    /// Its argv (no shell). Never empty.
    pub command: Vec<String>,
    /// Always absolute.
    pub directory: Option<PathBuf>,
    /// Over the app's environment, each name once.
    pub environment: Vec<(String, String)>,
    /// The workers start once the agent is ready (at corral's start).
    pub workers_wait: bool,
    pub readiness: Readiness,
    /// `agent.watchdog.timeout`: none unless set (a watchdog is the program's).
    pub watchdog: Option<Duration>,
    pub stop: Stop,
    pub restart: Restart,
}

/// One file of `environment_file`, in systemd's `EnvironmentFile=` format (see
/// [`crate::envfile`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EnvironmentFile {
    /// Always absolute.
    pub path: PathBuf,
    /// Given with a leading `-`: a file that does not exist is no error.
    pub optional: bool,
    /// Where the path is written in the config, for messages about the file as a whole.
    pub line: usize,
    pub col: usize,
}

/// Number of workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WorkerCount {
    /// A fixed number (1..=1024).
    Count(u32),
    /// One per available CPU (see [`available_cpus`]).
    Auto,
}

impl WorkerCount {
    /// The actual number of workers to run.
    pub fn resolve(self) -> u32 {
        match self {
            WorkerCount::Count(n) => n,
            WorkerCount::Auto => available_cpus(),
        }
    }
}

/// One `[[listen]]` socket.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Listen {
    /// Name of the socket (`LISTEN_FDNAMES` entry, `FileDescriptorName=`).
    pub name: String,
    pub address: Address,
    /// Listen backlog; default `SOMAXCONN` (4096).
    pub backlog: u32,
    /// Unix socket file mode.
    pub mode: Option<u32>,
    /// Unix socket file owner.
    pub owner: Option<String>,
    /// Unix socket file group.
    pub group: Option<String>,
    /// How new connections reach the workers: a socket all share (the default), or a socket
    /// per worker with connections steered (balance.rs).
    pub balance: Balance,
    /// Line of the `[[listen]]` header, for later messages.
    pub span_line: usize,
}

/// How a TCP listener's new connections are shared out (`listen.balance`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Balance {
    /// One socket every worker accepts from: the kernel wakes whichever waits.
    #[default]
    Shared,
    /// A socket per worker, new connections dealt out to the serving workers in turn (at
    /// random without CAP_BPF: balance.rs).
    Even,
    /// A socket per worker, a client address always sent to the same slot while it serves.
    Source,
}

impl Balance {
    /// A socket per worker.
    pub fn per_worker(self) -> bool {
        self != Balance::Shared
    }

    /// As the config and `corral status` write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Balance::Shared => "shared",
            Balance::Even => "even",
            Balance::Source => "source",
        }
    }
}

/// Where a socket listens.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Address {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp(addr) => write!(f, "{addr}"),
            Address::Unix(path) => write!(f, "{}", path.display()),
        }
    }
}

/// `[readiness]`
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Readiness {
    pub mode: ReadinessMode,
    pub timeout: Duration,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            mode: ReadinessMode::Notify,
            timeout: Duration::from_secs(30),
        }
    }
}

/// `readiness.mode`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ReadinessMode {
    /// `"notify"`: the worker sends `READY=1` over `NOTIFY_SOCKET`.
    Notify,
    /// `"exec"`: the worker is ready once it is running.
    Exec,
    /// `"node-ipc"`: the worker says so over the Node.js IPC channel.
    NodeIpc,
    /// `"listen"`: the worker, or a process of its tree, waits for connections on one of its
    /// listeners (see `crate::probe`).
    Listen,
}

/// `[stop]`
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Stop {
    #[serde(with = "values::signal_number")]
    pub signal: Signal,
    /// Message sent over the Node IPC channel (node-ipc readiness only).
    pub message: Option<String>,
    pub timeout: Duration,
    /// Balanced listeners: how long a worker's queue must stay empty, once it gets no new
    /// connections, before its stop begins.
    pub drain: Duration,
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            signal: Signal::SIGTERM,
            message: None,
            timeout: Duration::from_secs(30),
            drain: Duration::from_millis(100),
        }
    }
}

impl Stop {
    /// The longest a graceful stop may take before SIGKILL: `timeout` after the stop signal,
    /// and with a `message`, another `timeout` after the message before the signal.
    pub fn drain_time(&self) -> Duration {
        if self.message.is_some() {
            self.timeout * 2
        } else {
            self.timeout
        }
    }
}

/// `[restart]`
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Restart {
    pub policy: RestartPolicy,
    pub delay: Duration,
    pub max_delay: Duration,
    /// A worker that has been ready this long resets the backoff.
    pub reset_after: Duration,
    /// A slot that fails this many times within `interval` ends the app (0: never).
    pub max_failures: u32,
    pub interval: Duration,
    /// Exit codes that mean "stopped on purpose": the slot is not refilled (PM2's
    /// `stop_exit_codes`).
    pub stop_exit_codes: Vec<i32>,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            policy: RestartPolicy::OnFailure,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
            // With the default backoff, a worker that fails at once every time reaches its
            // tenth failure about 51 s after its first: a blip of a few failures never ends
            // the app; a program that cannot start ends it within a minute.
            max_failures: 10,
            interval: Duration::from_secs(60),
            stop_exit_codes: Vec::new(),
        }
    }
}

/// `restart.policy`
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// `[reload]`
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Reload {
    pub batch: Batch,
}

impl Default for Reload {
    fn default() -> Self {
        Reload {
            batch: Batch::Count(1),
        }
    }
}

/// How many workers are replaced at a time during a reload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Batch {
    Count(u32),
    Percent(u32),
}

impl Batch {
    /// Number of workers replaced at a time out of `workers`, always in
    /// `1..=max(workers, 1)`.
    pub fn slots(self, workers: u32) -> u32 {
        let n = match self {
            Batch::Count(n) => n,
            Batch::Percent(p) => {
                let n = (u64::from(workers) * u64::from(p)).div_ceil(100);
                u32::try_from(n).unwrap_or(u32::MAX)
            }
        };
        n.clamp(1, workers.max(1))
    }
}

/// `[limits]`
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    /// Memory limit in bytes.
    pub max_memory: Option<u64>,
}

/// `[node]`
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// Load corral's preload into Node.js workers (`NODE_OPTIONS=--require`): `listen(PORT)`
    /// on a `[[listen]]` port takes the inherited socket, as under PM2's cluster mode.
    pub preload: bool,
}

/// `[logs]`
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Logs {
    /// Syslog priority (0..=7) of lines the workers write to stderr.
    pub stderr_priority: u8,
}

impl Default for Logs {
    fn default() -> Self {
        Logs { stderr_priority: 6 }
    }
}

/// `[service]`
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Service {
    pub user: Option<String>,
    pub group: Option<String>,
    /// Supervisor watchdog; `Some(ZERO)` means explicitly disabled.
    pub watchdog: Option<Duration>,
}

/// Everything wrong with one config file, and with the environment files it names.
#[derive(Clone, Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    /// The problems, sorted by position: from [`Config::parse`], the earliest
    /// [`MAX_LISTED_DIAGNOSTICS`] of them.
    pub diagnostics: Vec<Diagnostic>,
    /// How many problems there were past those in `diagnostics`, which were counted but not
    /// kept: a file of nothing but errors costs no more memory than one of a hundred.
    pub more: usize,
    /// What is wrong inside the files of `environment_file`, one error per file (whose `file`
    /// is that file), shown after this file's own diagnostics. A file that cannot be read at
    /// all is a diagnostic of the config, at the place it names the file.
    pub environment_files: Vec<ConfigError>,
}

/// One problem. `line` and `col` are 1-based; a diagnostic about the file as
/// a whole (it cannot be read) has `line == 0` and `col == 0`, and one about a line of an
/// environment file, whose text is never quoted, has `col == 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// One line per diagnostic, in the order they are in (sorted by position), at most
/// [`MAX_LISTED_DIAGNOSTICS`] of them, then `FILE: ... and N more errors` if there are more
/// (those not listed, and those counted in `more`); then the same for each environment file.
/// They go to a terminal (`corral check`, a refused reload): a control character in a key name
/// or a path (`"\u001b[2J" = 1`) is shown escaped (escape.rs), and a line stays one line.
impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display().to_string();
        let file = crate::escape::if_controls(&file);
        let listed = self.diagnostics.len().min(MAX_LISTED_DIAGNOSTICS);
        for (i, d) in self.diagnostics[..listed].iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            let message = crate::escape::if_controls(&d.message);
            match (d.line, d.col) {
                (0, _) => write!(f, "{file}: {message}")?,
                (line, 0) => write!(f, "{file}:{line}: {message}")?,
                (line, col) => write!(f, "{file}:{line}:{col}: {message}")?,
            }
        }
        let rest = self.diagnostics.len() - listed + self.more;
        if rest > 0 {
            let s = if rest == 1 { "" } else { "s" };
            write!(f, "\n{file}: ... and {} more error{s}", thousands(rest))?;
        }
        for (i, e) in self.environment_files.iter().enumerate() {
            if i > 0 || !self.diagnostics.is_empty() {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// `n` with its digits in groups of three: 119900 is "119,900".
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl std::error::Error for ConfigError {}

/// Every key a config file may hold, as `section.key` (`command` for top-level scalars): the
/// one list the parser accepts, which the man page's coverage test checks corral.toml(5) against.
pub fn all_keys() -> Vec<String> {
    let tables: &[(&str, &[&str])] = &[
        ("listen", LISTEN_KEYS),
        ("readiness", READINESS_KEYS),
        ("watchdog", WATCHDOG_KEYS),
        ("stop", STOP_KEYS),
        ("restart", RESTART_KEYS),
        ("reload", RELOAD_KEYS),
        ("limits", LIMITS_KEYS),
        ("node", NODE_KEYS),
        ("logs", LOGS_KEYS),
        ("service", SERVICE_KEYS),
    ];
    let mut keys = Vec::new();
    for top in TOP_KEYS {
        match tables.iter().find(|(t, _)| t == top) {
            Some((t, sub)) => keys.extend(sub.iter().map(|k| format!("{t}.{k}"))),
            None if *top == "agent" => {
                let own: &[(&str, &[&str])] = &[
                    ("readiness", READINESS_KEYS),
                    ("watchdog", WATCHDOG_KEYS),
                    ("stop", AGENT_STOP_KEYS),
                    ("restart", RESTART_KEYS),
                ];
                for k in AGENT_KEYS {
                    match own.iter().find(|(t, _)| t == k) {
                        Some((t, sub)) => {
                            keys.extend(sub.iter().map(|s| format!("agent.{t}.{s}")));
                        }
                        None => keys.push(format!("agent.{k}")),
                    }
                }
            }
            None => keys.push(top.to_string()),
        }
    }
    keys
}

impl Config {
    /// Whether workers get a Node.js IPC channel: for `readiness.mode = "node-ipc"`, and with
    /// the preload (its watchdog pings and notifications go over it).
    pub fn node_ipc(&self) -> bool {
        self.readiness.mode == ReadinessMode::NodeIpc || self.node.preload
    }

    /// The agent as a process of its own: this config with the agent's command, directory,
    /// environment and settings, and no listeners.
    pub fn agent_config(&self) -> Option<Config> {
        let a = self.agent.as_ref()?;
        let mut environment = self.environment.clone();
        for (k, v) in &a.environment {
            environment.retain(|(e, _)| e != k);
            environment.push((k.clone(), v.clone()));
        }
        Some(Config {
            command: a.command.clone(),
            directory: a.directory.clone(),
            workers: WorkerCount::Count(1),
            environment,
            listen: Vec::new(),
            readiness: a.readiness.clone(),
            watchdog: a.watchdog,
            stop: a.stop.clone(),
            restart: a.restart.clone(),
            limits: Limits::default(),
            // The preload hands `listen(PORT)` the workers' sockets; the agent has none, and
            // may listen on ports of its own (metrics, an admin page).
            node: Node { preload: false },
            agent: None,
            ..self.clone()
        })
    }

    /// What is valid but worth a second look, for `corral check` and a reload's answer.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.readiness.mode == ReadinessMode::Exec {
            w.push(EXEC_WARNING.to_string());
        }
        w
    }

    /// Reads and parses the config file at `path`, which must be a regular file (or a symlink
    /// to one) of at most [`MAX_CONFIG_SIZE`] bytes: anything else is refused at once, with
    /// one diagnostic saying why, without blocking on a FIFO or reading an endless device.
    /// Then reads the files of `environment_file`, with the same care, into `environment`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_settings(path)?.read_environment_files()
    }

    /// [`Config::load`] without reading the files of `environment_file`: what the generator
    /// needs, at boot, before those files may exist (they are read when the app starts).
    pub fn load_settings(path: &Path) -> Result<Config, ConfigError> {
        match read_config(path) {
            Ok(text) => Config::parse(path, &text),
            Err(message) => Err(ConfigError {
                file: path.to_path_buf(),
                diagnostics: vec![Diagnostic {
                    line: 0,
                    col: 0,
                    message,
                }],
                more: 0,
                environment_files: Vec::new(),
            }),
        }
    }

    /// Parses and validates `text`; `path` is only used for messages and to
    /// derive the app name.
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let mut ck = Checker::new(text);
        let app = match app_name(path) {
            Ok(app) => app,
            Err(message) => {
                ck.diags.push(Diagnostic {
                    line: 1,
                    col: 1,
                    message,
                });
                String::new()
            }
        };
        let config = match ImDocument::parse(text) {
            Ok(doc) => Some(ck.document(path, app, doc.as_table())),
            Err(err) => {
                let message = err
                    .message()
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join("; ");
                ck.error(err.span(), format!("TOML syntax error: {message}"));
                None
            }
        };
        match config {
            Some(config) if ck.diags.is_empty() => Ok(config),
            _ => {
                let (diagnostics, more) = ck.diags.into_sorted();
                Err(ConfigError {
                    file: path.to_path_buf(),
                    diagnostics,
                    more,
                    environment_files: Vec::new(),
                })
            }
        }
    }
}

/// What kind of file is read, for the limit on its size and the words about it.
#[derive(Clone, Copy)]
struct Kind {
    /// The most bytes it may have.
    max: u64,
    /// "a config file"
    what: &'static str,
}

/// A config file: at most [`MAX_CONFIG_SIZE`] bytes.
const CONFIG: Kind = Kind {
    max: MAX_CONFIG_SIZE,
    what: "a config file",
};

impl Kind {
    /// "1048576 bytes, 1 MiB"
    fn limit(&self) -> String {
        const MIB: u64 = 1024 * 1024;
        if self.max % MIB == 0 {
            format!("{} bytes, {} MiB", self.max, self.max / MIB)
        } else {
            format!("{} bytes", self.max)
        }
    }
}

/// Why a file could not be read; `missing` when it does not exist (`ENOENT`, a dangling
/// symlink among others), which an optional file may be.
#[derive(Debug)]
struct Unreadable {
    missing: bool,
    message: String,
}

impl From<String> for Unreadable {
    fn from(message: String) -> Self {
        Unreadable {
            missing: false,
            message,
        }
    }
}

/// The text of the config file at `path`, or why it cannot be had, in a few system calls
/// whatever `path` is.
fn read_config(path: &Path) -> Result<String, String> {
    let bytes = read_file(path, CONFIG).map_err(|e| e.message)?;
    // The words fs::read_to_string used.
    String::from_utf8(bytes).map_err(|_| "cannot read: stream did not contain valid UTF-8".into())
}

/// The bytes of the file at `path`, a regular file (or a symlink to one) of at most
/// `kind.max` bytes, or why it cannot be had, in a few system calls whatever `path` is: no
/// wait on a FIFO, no endless read of a device.
fn read_file(path: &Path, kind: Kind) -> Result<Vec<u8>, Unreadable> {
    let cannot = |e: io::Error| Unreadable {
        missing: e.kind() == io::ErrorKind::NotFound,
        message: format!("cannot read: {e}"),
    };
    // What `path` leads to is looked at before it is opened, as opening some devices does
    // something (a watchdog device arms the watchdog, a tape rewinds)...
    regular_file(&fs::metadata(path).map_err(cannot)?)?;
    // ...and what was opened is checked again by its descriptor (read_open), since the path
    // may lead elsewhere by now. Should it be a FIFO then, O_NONBLOCK keeps the open from
    // waiting for a writer; O_NOCTTY keeps a terminal from becoming corral's.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(cannot)?;
    Ok(read_open(file, kind)?)
}

/// The bytes of an opened file: refused unless it is a regular file of at most `kind.max`
/// bytes by `fstat`, and read no further than that.
fn read_open(file: File, kind: Kind) -> Result<Vec<u8>, String> {
    let cannot = |e: io::Error| format!("cannot read: {e}");
    let meta = file.metadata().map_err(cannot)?;
    regular_file(&meta)?;
    if meta.len() > kind.max {
        return Err(format!(
            "is {} bytes, more than {} may have ({})",
            meta.len(),
            kind.what,
            kind.limit()
        ));
    }
    // A regular file never blocks, but some file systems (FUSE) could answer EAGAIN while
    // O_NONBLOCK is set.
    let flags =
        nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_GETFL).map_err(|e| cannot(e.into()))?;
    let flags = nix::fcntl::OFlag::from_bits_retain(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_SETFL(flags)).map_err(|e| cannot(e.into()))?;
    read_capped(file, meta.len(), kind)
}

/// Reads `reader`, `size` bytes long when opened, up to `kind.max` bytes: a file that grows
/// meanwhile is read no further than one byte past the limit.
fn read_capped(reader: impl Read, size: u64, kind: Kind) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::with_capacity(size.min(kind.max) as usize + 1);
    reader
        .take(kind.max + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > kind.max {
        return Err(format!(
            "grew past the most {} may have ({}) while being read (it was {size} bytes when \
             opened)",
            kind.what,
            kind.limit()
        ));
    }
    Ok(bytes)
}

/// Refuses what is not a regular file, saying what it is.
fn regular_file(meta: &fs::Metadata) -> Result<(), String> {
    let t = meta.file_type();
    let what = if t.is_file() {
        return Ok(());
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        return Err("is not a regular file".into());
    };
    Err(format!("is {what}, not a regular file"))
}

/// Whether `c` may be in an app's or a listener's name: both end up in unit names
/// (corral@APP:NAME.socket), and systemd.unit(5) allows these there without escaping.
pub fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
}

/// The app name: the file stem, which must be usable in a unit instance name.
fn app_name(path: &Path) -> Result<String, String> {
    let stem = path.file_stem().unwrap_or_default();
    let Some(stem) = stem.to_str() else {
        return Err(format!(
            "the app name (from the file name) `{}` is not valid UTF-8",
            stem.to_string_lossy()
        ));
    };
    if stem.is_empty() {
        return Err("the app name (the file name without .toml) must not be empty".into());
    }
    if stem.len() > 128 {
        return Err(format!(
            "the app name `{stem}` (from the file name) is longer than 128 characters"
        ));
    }
    let valid_chars = stem.chars().all(name_char);
    // Not starting with '-' either: `corral reload -web` would read it as an option.
    if !valid_chars || stem.starts_with(['.', '-']) {
        return Err(format!(
            "invalid app name `{stem}` (from the file name): use only letters, digits, '_', '.' \
             and '-', not starting with '.' or '-'"
        ));
    }
    Ok(stem.to_string())
}
#[cfg(test)]
mod tests;
