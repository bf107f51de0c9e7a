//! App config files: parsing and validation.
//!
//! An app is described by one TOML file; the app name is the file stem
//! (`/etc/corral/api.toml` describes the app `api`). Parsing never stops at
//! the first problem: every problem in the file is collected and reported as
//! `FILE:LINE:COL: message`, with 1-based lines and columns (columns counted
//! in characters), sorted by position.

use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;
use toml_edit::{ImDocument, Item, Key, TableLike, Value};

/// A validated app config.
#[derive(Clone, Debug)]
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
    /// Extra environment for the workers, in file order.
    pub environment: Vec<(String, String)>,
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
    /// Logging settings.
    pub logs: Logs,
    /// Settings for the generated systemd service.
    pub service: Service,
}

/// Number of workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug)]
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
    /// Line of the `[[listen]]` header, for later messages.
    pub span_line: usize,
}

/// Where a socket listens.
#[derive(Clone, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadinessMode {
    /// `"notify"`: the worker sends `READY=1` over `NOTIFY_SOCKET`.
    Notify,
    /// `"exec"`: the worker is ready once it is running.
    Exec,
    /// `"node-ipc"`: the worker says so over the Node.js IPC channel.
    NodeIpc,
}

/// `[stop]`
#[derive(Clone, Debug)]
pub struct Stop {
    pub signal: Signal,
    /// Message sent over the Node IPC channel (node-ipc readiness only).
    pub message: Option<String>,
    pub timeout: Duration,
}

impl Default for Stop {
    fn default() -> Self {
        Stop {
            signal: Signal::SIGTERM,
            message: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// `[restart]`
#[derive(Clone, Debug)]
pub struct Restart {
    pub policy: RestartPolicy,
    pub delay: Duration,
    pub max_delay: Duration,
    /// A worker that has been ready this long resets the backoff.
    pub reset_after: Duration,
}

impl Default for Restart {
    fn default() -> Self {
        Restart {
            policy: RestartPolicy::OnFailure,
            delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(30),
            reset_after: Duration::from_secs(10),
        }
    }
}

/// `restart.policy`
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// `[reload]`
#[derive(Clone, Debug)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
#[derive(Clone, Debug, Default)]
pub struct Limits {
    /// Memory limit in bytes.
    pub max_memory: Option<u64>,
}

/// `[logs]`
#[derive(Clone, Debug)]
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
#[derive(Clone, Debug, Default)]
pub struct Service {
    pub user: Option<String>,
    pub group: Option<String>,
    /// Supervisor watchdog; `Some(ZERO)` means explicitly disabled.
    pub watchdog: Option<Duration>,
}

/// Everything wrong with one config file.
#[derive(Clone, Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub diagnostics: Vec<Diagnostic>,
}

/// One problem. `line` and `col` are 1-based; a diagnostic about the file as
/// a whole (it cannot be read) has `line == 0` and `col == 0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = self.file.display();
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            if d.line == 0 {
                write!(f, "{file}: {}", d.message)?;
            } else {
                write!(f, "{file}:{}:{}: {}", d.line, d.col, d.message)?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

/// Environment variables corral sets itself; apps may not set them.
const RESERVED_ENV: &[&str] = &[
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "NODE_CHANNEL_FD",
    "NODE_CHANNEL_SERIALIZATION_MODE",
];
const RESERVED_ENV_PREFIX: &str = "CORRAL_";

const TOP_KEYS: &[&str] = &[
    "command",
    "directory",
    "workers",
    "environment",
    "listen",
    "readiness",
    "watchdog",
    "stop",
    "restart",
    "reload",
    "limits",
    "logs",
    "service",
];
const LISTEN_KEYS: &[&str] = &["name", "address", "backlog", "mode", "owner", "group"];
const READINESS_KEYS: &[&str] = &["mode", "timeout"];
const WATCHDOG_KEYS: &[&str] = &["timeout"];
const STOP_KEYS: &[&str] = &["signal", "message", "timeout"];
const RESTART_KEYS: &[&str] = &["policy", "delay", "max_delay", "reset_after"];
const RELOAD_KEYS: &[&str] = &["batch"];
const LIMITS_KEYS: &[&str] = &["max_memory"];
const LOGS_KEYS: &[&str] = &["stderr_priority"];
const SERVICE_KEYS: &[&str] = &["user", "group", "watchdog"];

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
        ("logs", LOGS_KEYS),
        ("service", SERVICE_KEYS),
    ];
    let mut keys = Vec::new();
    for top in TOP_KEYS {
        match tables.iter().find(|(t, _)| t == top) {
            Some((t, sub)) => keys.extend(sub.iter().map(|k| format!("{t}.{k}"))),
            None => keys.push(top.to_string()),
        }
    }
    keys
}

/// Sections and their keys, for hints about keys put at the top level.
const SECTIONS: &[(&str, &[&str])] = &[
    ("[[listen]]", LISTEN_KEYS),
    ("[readiness]", READINESS_KEYS),
    ("[watchdog]", WATCHDOG_KEYS),
    ("[stop]", STOP_KEYS),
    ("[restart]", RESTART_KEYS),
    ("[reload]", RELOAD_KEYS),
    ("[limits]", LIMITS_KEYS),
    ("[logs]", LOGS_KEYS),
    ("[service]", SERVICE_KEYS),
];

const SYSLOG_LEVELS: &[(&str, u8)] = &[
    ("emerg", 0),
    ("alert", 1),
    ("crit", 2),
    ("err", 3),
    ("error", 3),
    ("warning", 4),
    ("warn", 4),
    ("notice", 5),
    ("info", 6),
    ("debug", 7),
];

const MAX_WORKERS: i64 = 1024;
/// `sizeof(sun_path) - 1`: room for the terminating NUL.
const MAX_UNIX_PATH: usize = 107;
/// Listener names end up in unit names (corral@APP:NAME.socket, at most 255 characters with
/// the app name, itself at most 128).
const MAX_LISTEN_NAME: usize = 64;

const DURATION_EXAMPLE: &str = "a string like \"30s\"";

impl Config {
    /// Reads and parses the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        match fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(err) => Err(ConfigError {
                file: path.to_path_buf(),
                diagnostics: vec![Diagnostic {
                    line: 0,
                    col: 0,
                    message: format!("cannot read: {err}"),
                }],
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
                let mut diagnostics = ck.diags;
                diagnostics.sort_by_key(|d| (d.line, d.col));
                Err(ConfigError {
                    file: path.to_path_buf(),
                    diagnostics,
                })
            }
        }
    }
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
    let valid_chars = stem
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    // Not starting with '-' either: `corral reload -web` would read it as an option.
    if !valid_chars || stem.starts_with(['.', '-']) {
        return Err(format!(
            "invalid app name `{stem}` (from the file name): use only letters, digits, '_', '.' \
             and '-', not starting with '.' or '-'"
        ));
    }
    Ok(stem.to_string())
}

/// Collects diagnostics while walking the document.
struct Checker<'a> {
    text: &'a str,
    diags: Vec<Diagnostic>,
    /// Where `stop.message` was set, if it was.
    stop_message_at: Option<Option<Range<usize>>>,
    /// `readiness.mode` was given but invalid.
    readiness_mode_bad: bool,
}

/// Names and addresses of the listeners so far, with their header lines.
#[derive(Default)]
struct Seen {
    names: Vec<(String, usize)>,
    addresses: Vec<(Address, usize)>,
}

/// Position of a value, falling back to its key (dotted tables have no span).
fn loc(key: &Key, item: &Item) -> Option<Range<usize>> {
    item.span().or_else(|| key.span())
}

fn describe(item: &Item) -> &'static str {
    match item {
        Item::None => "nothing",
        Item::Value(v) => describe_value(v),
        Item::Table(_) => "a table",
        Item::ArrayOfTables(_) => "an array of tables",
    }
}

fn describe_value(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a date-time",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}

/// Entries of a table-like item, with their keys (for key positions).
fn entries(table: &dyn TableLike) -> Vec<(&Key, &Item)> {
    table
        .iter()
        .filter_map(|(name, _)| table.get_key_value(name))
        .collect()
}

/// TOML text of a float.
fn float_text(f: f64) -> String {
    if f.is_nan() {
        "nan".into()
    } else if f.is_infinite() {
        if f > 0.0 { "inf" } else { "-inf" }.into()
    } else {
        // Debug formatting keeps a ".0" on whole numbers and uses exponents
        // for very large or small ones, like TOML's own float syntax.
        format!("{f:?}")
    }
}

impl<'a> Checker<'a> {
    fn new(text: &'a str) -> Self {
        Checker {
            text,
            diags: Vec::new(),
            stop_message_at: None,
            readiness_mode_bad: false,
        }
    }

    /// 1-based (line, column in characters) of a byte offset.
    fn pos(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &self.text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        let col = before[line_start..].chars().count() + 1;
        (line, col)
    }

    fn line_of(&self, span: &Option<Range<usize>>) -> usize {
        span.as_ref().map_or(1, |s| self.pos(s.start).0)
    }

    fn error(&mut self, span: Option<Range<usize>>, message: String) {
        let (line, col) = span.map_or((1, 1), |s| self.pos(s.start));
        self.diags.push(Diagnostic { line, col, message });
    }

    fn type_error(&mut self, name: &str, key: &Key, item: &Item, expected: &str) {
        self.error(
            loc(key, item),
            format!("{name}: expected {expected}, found {}", describe(item)),
        );
    }

    fn unknown_key(&mut self, key: &Key, item: &Item, allowed: &[&str], place: &str) {
        let name = key.get();
        let mut message = format!("unknown key `{name}` in {place}");
        if let Some(hint) = suggest(name, allowed) {
            message.push_str(&format!("; did you mean `{hint}`?"));
        } else if place == "the top level" {
            let homes: Vec<&str> = SECTIONS
                .iter()
                .filter(|(_, keys)| keys.contains(&name))
                .map(|(section, _)| *section)
                .collect();
            if let [section] = homes[..] {
                message.push_str(&format!("; did you mean to put it in {section}?"));
            }
        }
        self.error(key.span().or_else(|| item.span()), message);
    }

    /// The entries of a section, or a type error if it is not a table.
    fn section<'i>(&mut self, name: &str, key: &Key, item: &'i Item) -> Vec<(&'i Key, &'i Item)> {
        match item.as_table_like() {
            Some(table) => entries(table),
            None => {
                self.type_error(name, key, item, &format!("a table ([{name}])"));
                Vec::new()
            }
        }
    }

    fn string<'i>(&mut self, name: &str, key: &Key, item: &'i Item) -> Option<&'i str> {
        match item.as_str() {
            Some(s) if s.contains('\0') => {
                self.error(loc(key, item), format!("{name}: must not contain NUL"));
                None
            }
            Some(s) => Some(s),
            None => {
                self.type_error(name, key, item, "a string");
                None
            }
        }
    }

    /// A user or group name.
    fn account(&mut self, name: &str, key: &Key, item: &Item) -> Option<String> {
        let s = self.string(name, key, item)?;
        if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c == ':' || c == '/') {
            self.error(
                loc(key, item),
                format!("{name}: invalid name \"{}\"", s.escape_debug()),
            );
            return None;
        }
        Some(s.to_string())
    }

    fn duration(
        &mut self,
        name: &str,
        key: &Key,
        item: &Item,
        allow_zero: bool,
    ) -> Option<Duration> {
        let Some(s) = item.as_str() else {
            self.type_error(name, key, item, DURATION_EXAMPLE);
            return None;
        };
        match parse_duration(s) {
            Ok(d) if d.is_zero() && !allow_zero => {
                self.error(loc(key, item), format!("{name}: must be greater than 0"));
                None
            }
            Ok(d) => Some(d),
            Err(e) => {
                self.error(loc(key, item), format!("{name}: {e}"));
                None
            }
        }
    }

    /// An integer in `range`.
    fn int_in(&mut self, name: &str, key: &Key, item: &Item, min: i64, max: i64) -> Option<i64> {
        let Some(n) = item.as_integer() else {
            self.type_error(name, key, item, "an integer");
            return None;
        };
        if n < min || n > max {
            self.error(
                loc(key, item),
                format!("{name}: must be between {min} and {max}, found {n}"),
            );
            return None;
        }
        Some(n)
    }

    /// A string out of a fixed set of choices.
    fn choice<T: Copy>(
        &mut self,
        name: &str,
        key: &Key,
        item: &Item,
        choices: &[(&str, T)],
    ) -> Option<T> {
        let list = choice_list(choices.iter().map(|(s, _)| *s));
        let Some(s) = item.as_str() else {
            self.type_error(name, key, item, &list);
            return None;
        };
        if let Some((_, v)) = choices.iter().find(|(c, _)| *c == s) {
            return Some(*v);
        }
        let mut message = format!("{name}: expected {list}, found \"{}\"", s.escape_debug());
        let names: Vec<&str> = choices.iter().map(|(c, _)| *c).collect();
        if let Some(hint) = suggest(s, &names) {
            message.push_str(&format!("; did you mean \"{hint}\"?"));
        }
        self.error(loc(key, item), message);
        None
    }

    fn document(&mut self, path: &Path, app: String, root: &dyn TableLike) -> Config {
        let mut config = Config {
            path: path.to_path_buf(),
            app,
            command: Vec::new(),
            directory: None,
            workers: WorkerCount::Count(1),
            environment: Vec::new(),
            listen: Vec::new(),
            readiness: Readiness::default(),
            watchdog: None,
            stop: Stop::default(),
            restart: Restart::default(),
            reload: Reload::default(),
            limits: Limits::default(),
            logs: Logs::default(),
            service: Service::default(),
        };
        let mut has_command = false;
        for (key, item) in entries(root) {
            match key.get() {
                "command" => {
                    has_command = true;
                    if let Some(command) = self.command(key, item) {
                        config.command = command;
                    }
                }
                "directory" => config.directory = self.directory(key, item),
                "workers" => {
                    if let Some(workers) = self.workers(key, item) {
                        config.workers = workers;
                    }
                }
                "environment" => config.environment = self.environment(key, item),
                "listen" => config.listen = self.listeners(key, item),
                "readiness" => self.readiness(key, item, &mut config.readiness),
                "watchdog" => {
                    for (k, v) in self.section("watchdog", key, item) {
                        match k.get() {
                            "timeout" => {
                                config.watchdog = self.duration("watchdog.timeout", k, v, false)
                            }
                            _ => self.unknown_key(k, v, WATCHDOG_KEYS, "[watchdog]"),
                        }
                    }
                }
                "stop" => self.stop(key, item, &mut config.stop),
                "restart" => self.restart(key, item, &mut config.restart),
                "reload" => {
                    for (k, v) in self.section("reload", key, item) {
                        match k.get() {
                            "batch" => {
                                if let Some(batch) = self.batch(k, v) {
                                    config.reload.batch = batch;
                                }
                            }
                            _ => self.unknown_key(k, v, RELOAD_KEYS, "[reload]"),
                        }
                    }
                }
                "limits" => {
                    for (k, v) in self.section("limits", key, item) {
                        match k.get() {
                            "max_memory" => config.limits.max_memory = self.max_memory(k, v),
                            _ => self.unknown_key(k, v, LIMITS_KEYS, "[limits]"),
                        }
                    }
                }
                "logs" => {
                    for (k, v) in self.section("logs", key, item) {
                        match k.get() {
                            "stderr_priority" => {
                                if let Some(p) = self.priority(k, v) {
                                    config.logs.stderr_priority = p;
                                }
                            }
                            _ => self.unknown_key(k, v, LOGS_KEYS, "[logs]"),
                        }
                    }
                }
                "service" => self.service(key, item, &mut config.service),
                _ => self.unknown_key(key, item, TOP_KEYS, "the top level"),
            }
        }
        if !has_command {
            self.diags.push(Diagnostic {
                line: 1,
                col: 1,
                message: "missing required key `command` (the program to run, e.g. \
                          command = [\"node\", \"server.js\"])"
                    .into(),
            });
        }
        if let Some(at) = self.stop_message_at.take() {
            if config.readiness.mode != ReadinessMode::NodeIpc && !self.readiness_mode_bad {
                self.error(
                    at,
                    "stop.message: only allowed with readiness.mode = \"node-ipc\" \
                     (it is sent over the Node IPC channel)"
                        .into(),
                );
            }
        }
        config
    }

    fn command(&mut self, key: &Key, item: &Item) -> Option<Vec<String>> {
        let Some(array) = item.as_array() else {
            self.type_error(
                "command",
                key,
                item,
                "an array of strings like [\"node\", \"server.js\"]",
            );
            return None;
        };
        if array.is_empty() {
            self.error(
                loc(key, item),
                "command: must not be empty; give at least the program to run".into(),
            );
            return None;
        }
        let mut argv = Vec::new();
        for (i, value) in array.iter().enumerate() {
            let what = if i == 0 { "the program" } else { "arguments" };
            match value.as_str() {
                Some("") => self.error(value.span(), format!("command: {what} must not be empty")),
                Some(s) if s.contains('\0') => self.error(
                    value.span(),
                    format!("command: {what} must not contain NUL"),
                ),
                Some(s) => argv.push(s.to_string()),
                None => self.error(
                    value.span(),
                    format!(
                        "command: expected every element to be a string, found {}",
                        describe_value(value)
                    ),
                ),
            }
        }
        (argv.len() == array.len()).then_some(argv)
    }

    fn directory(&mut self, key: &Key, item: &Item) -> Option<PathBuf> {
        let s = self.string("directory", key, item)?;
        if !s.starts_with('/') {
            self.error(
                loc(key, item),
                format!(
                    "directory: must be an absolute path, found \"{}\"",
                    s.escape_debug()
                ),
            );
            return None;
        }
        Some(PathBuf::from(s))
    }

    fn workers(&mut self, key: &Key, item: &Item) -> Option<WorkerCount> {
        match item.as_value() {
            Some(Value::Integer(n)) => {
                let n = *n.value();
                if (1..=MAX_WORKERS).contains(&n) {
                    Some(WorkerCount::Count(n as u32))
                } else {
                    self.error(
                        loc(key, item),
                        format!("workers: must be between 1 and {MAX_WORKERS}, found {n}"),
                    );
                    None
                }
            }
            Some(Value::String(s)) if s.value() == "auto" => Some(WorkerCount::Auto),
            Some(Value::String(s)) => {
                self.error(
                    loc(key, item),
                    format!(
                        "workers: expected an integer or \"auto\", found \"{}\"",
                        s.value().escape_debug()
                    ),
                );
                None
            }
            _ => {
                self.type_error("workers", key, item, "an integer or \"auto\"");
                None
            }
        }
    }

    fn environment(&mut self, key: &Key, item: &Item) -> Vec<(String, String)> {
        let mut env = Vec::new();
        for (k, v) in self.section("environment", key, item) {
            let name = k.get();
            let key_at = k.span().or_else(|| v.span());
            if name.is_empty() {
                self.error(
                    key_at,
                    "environment: variable names must not be empty".into(),
                );
                continue;
            }
            if name.contains(['=', '\0']) {
                self.error(
                    key_at,
                    format!(
                        "environment: invalid variable name `{}`: must not contain '=' or NUL",
                        name.escape_debug()
                    ),
                );
                continue;
            }
            if RESERVED_ENV.contains(&name) || name.starts_with(RESERVED_ENV_PREFIX) {
                self.error(
                    key_at,
                    format!("environment: `{name}` is reserved: corral sets it for the workers"),
                );
                continue;
            }
            let value = match v.as_value() {
                Some(Value::String(s)) => s.value().clone(),
                Some(Value::Integer(n)) => n.value().to_string(),
                Some(Value::Boolean(b)) => b.value().to_string(),
                Some(Value::Float(f)) => float_text(*f.value()),
                _ => {
                    self.type_error(&format!("environment.{name}"), k, v, "a string");
                    continue;
                }
            };
            if value.contains('\0') {
                self.error(
                    loc(k, v),
                    format!("environment.{name}: must not contain NUL"),
                );
                continue;
            }
            env.push((name.to_string(), value));
        }
        env
    }

    fn listeners(&mut self, key: &Key, item: &Item) -> Vec<Listen> {
        let mut tables: Vec<(&dyn TableLike, Option<Range<usize>>)> = Vec::new();
        match item {
            Item::ArrayOfTables(array) => {
                for table in array.iter() {
                    tables.push((table, table.span()));
                }
            }
            Item::Value(Value::Array(array)) => {
                for value in array.iter() {
                    match value.as_inline_table() {
                        Some(table) => tables.push((table, value.span())),
                        None => self.error(
                            value.span(),
                            format!(
                                "listen: expected every element to be a table, found {}",
                                describe_value(value)
                            ),
                        ),
                    }
                }
            }
            _ => self.type_error("listen", key, item, "an array of tables ([[listen]])"),
        }
        let mut listeners = Vec::new();
        let mut seen = Seen::default();
        for (table, span) in tables {
            let span = span.or_else(|| key.span());
            if let Some(listen) = self.listen(table, span, &mut seen) {
                listeners.push(listen);
            }
        }
        listeners
    }

    fn listen(
        &mut self,
        table: &dyn TableLike,
        header: Option<Range<usize>>,
        seen: &mut Seen,
    ) -> Option<Listen> {
        let header_line = self.line_of(&header);
        let mut name: Option<String> = None;
        let mut has_name = false;
        let mut address: Option<Address> = None;
        let mut has_address = false;
        let mut backlog = libc::SOMAXCONN as u32;
        let mut mode = None;
        let mut owner = None;
        let mut group = None;
        // Positions of the unix-only keys, to complain about them on TCP.
        let mut unix_only: Vec<(&str, Option<Range<usize>>)> = Vec::new();
        let mut ok = true;
        for (k, v) in entries(table) {
            match k.get() {
                "name" => {
                    has_name = true;
                    name = self.listen_name(k, v, header_line, seen);
                    ok &= name.is_some();
                }
                "address" => {
                    has_address = true;
                    address = self.listen_address(k, v, header_line, seen);
                    ok &= address.is_some();
                }
                "backlog" => match self.int_in("listen.backlog", k, v, 1, 65535) {
                    Some(n) => backlog = n as u32,
                    None => ok = false,
                },
                "mode" => {
                    unix_only.push(("mode", loc(k, v)));
                    mode = self.socket_mode(k, v);
                    ok &= mode.is_some();
                }
                "owner" => {
                    unix_only.push(("owner", loc(k, v)));
                    owner = self.account("listen.owner", k, v);
                    ok &= owner.is_some();
                }
                "group" => {
                    unix_only.push(("group", loc(k, v)));
                    group = self.account("listen.group", k, v);
                    ok &= group.is_some();
                }
                _ => {
                    self.unknown_key(k, v, LISTEN_KEYS, "[[listen]]");
                    ok = false;
                }
            }
        }
        for (what, present) in [("name", has_name), ("address", has_address)] {
            if !present {
                self.error(
                    header.clone(),
                    format!("[[listen]]: missing required key `{what}`"),
                );
            }
        }
        if let Some(Address::Tcp(addr)) = &address {
            for (what, at) in unix_only {
                self.error(
                    at,
                    format!(
                        "listen.{what}: only applies to unix sockets, but {addr} is a TCP address"
                    ),
                );
                ok = false;
            }
        }
        if !ok {
            return None;
        }
        Some(Listen {
            name: name?,
            address: address?,
            backlog,
            mode,
            owner,
            group,
            span_line: header_line,
        })
    }

    fn listen_name(
        &mut self,
        key: &Key,
        item: &Item,
        line: usize,
        seen: &mut Seen,
    ) -> Option<String> {
        let name = self.string("listen.name", key, item)?;
        let len = name.chars().count();
        let problem = if name.is_empty() {
            Some("must not be empty".to_string())
        } else if len > MAX_LISTEN_NAME {
            Some(format!(
                "must be at most {MAX_LISTEN_NAME} characters, found {len}"
            ))
        } else if !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
            || name.starts_with(['.', '-'])
        {
            // It names a socket unit too (corral@APP:NAME.socket) and a LISTEN_FDNAMES entry
            // (no ':'), so only what is safe in both, unescaped.
            Some(
                "use only letters, digits, '_', '.' and '-', not starting with '.' or '-'"
                    .to_string(),
            )
        } else {
            None
        };
        if let Some(problem) = problem {
            self.error(
                loc(key, item),
                format!("listen.name \"{}\": {problem}", name.escape_debug()),
            );
            return None;
        }
        if let Some((_, first)) = seen.names.iter().find(|(n, _)| n == name) {
            self.error(
                loc(key, item),
                format!("listen.name \"{name}\" is already used by the listener at line {first}"),
            );
            return None;
        }
        seen.names.push((name.to_string(), line));
        Some(name.to_string())
    }

    fn listen_address(
        &mut self,
        key: &Key,
        item: &Item,
        line: usize,
        seen: &mut Seen,
    ) -> Option<Address> {
        let s = self.string("listen.address", key, item)?;
        let address = match parse_address(s) {
            Ok(address) => address,
            Err(e) => {
                self.error(
                    loc(key, item),
                    format!("listen.address \"{}\": {e}", s.escape_debug()),
                );
                return None;
            }
        };
        if let Some((_, first)) = seen.addresses.iter().find(|(a, _)| *a == address) {
            self.error(
                loc(key, item),
                format!("listen.address {address} is already used by the listener at line {first}"),
            );
            return None;
        }
        seen.addresses.push((address.clone(), line));
        Some(address)
    }

    fn socket_mode(&mut self, key: &Key, item: &Item) -> Option<u32> {
        const EXPECTED: &str = "an octal string like \"0660\"";
        let mode = match item.as_value() {
            Some(Value::String(s)) => {
                let s = s.value();
                let digits_ok =
                    !s.is_empty() && s.len() <= 4 && s.bytes().all(|b| (b'0'..=b'7').contains(&b));
                if !digits_ok {
                    self.error(
                        loc(key, item),
                        format!(
                            "listen.mode: expected {EXPECTED}, found \"{}\"",
                            s.escape_debug()
                        ),
                    );
                    return None;
                }
                u32::from_str_radix(s, 8).ok()?
            }
            // An integer is only unambiguous when written in octal (0o660).
            Some(Value::Integer(n))
                if self
                    .text
                    .get(item.span().unwrap_or_default())
                    .is_some_and(|raw| raw.starts_with("0o")) =>
            {
                u32::try_from(*n.value()).unwrap_or(u32::MAX)
            }
            _ => {
                self.type_error("listen.mode", key, item, EXPECTED);
                return None;
            }
        };
        if mode > 0o777 {
            self.error(
                loc(key, item),
                format!("listen.mode: must be at most 0777, found {mode:04o}"),
            );
            return None;
        }
        Some(mode)
    }

    fn readiness(&mut self, key: &Key, item: &Item, readiness: &mut Readiness) {
        for (k, v) in self.section("readiness", key, item) {
            match k.get() {
                "mode" => {
                    let choices = [
                        ("notify", ReadinessMode::Notify),
                        ("exec", ReadinessMode::Exec),
                        ("node-ipc", ReadinessMode::NodeIpc),
                    ];
                    match self.choice("readiness.mode", k, v, &choices) {
                        Some(mode) => readiness.mode = mode,
                        None => self.readiness_mode_bad = true,
                    }
                }
                "timeout" => {
                    if let Some(d) = self.duration("readiness.timeout", k, v, false) {
                        readiness.timeout = d;
                    }
                }
                _ => self.unknown_key(k, v, READINESS_KEYS, "[readiness]"),
            }
        }
    }

    fn stop(&mut self, key: &Key, item: &Item, stop: &mut Stop) {
        for (k, v) in self.section("stop", key, item) {
            match k.get() {
                "signal" => {
                    let Some(s) = v.as_str() else {
                        self.type_error("stop.signal", k, v, "a signal name like \"SIGTERM\"");
                        continue;
                    };
                    match parse_signal(s) {
                        Ok(signal) => stop.signal = signal,
                        Err(e) => self.error(loc(k, v), format!("stop.signal: {e}")),
                    }
                }
                "message" => {
                    if let Some(message) = self.string("stop.message", k, v) {
                        stop.message = Some(message.to_string());
                        self.stop_message_at = Some(loc(k, v));
                    }
                }
                "timeout" => {
                    if let Some(d) = self.duration("stop.timeout", k, v, false) {
                        stop.timeout = d;
                    }
                }
                _ => self.unknown_key(k, v, STOP_KEYS, "[stop]"),
            }
        }
    }

    fn restart(&mut self, key: &Key, item: &Item, restart: &mut Restart) {
        // (given, valid value, position)
        let mut delay: (bool, Option<Duration>, Option<Range<usize>>) = (false, None, None);
        let mut max_delay: (bool, Option<Duration>, Option<Range<usize>>) = (false, None, None);
        for (k, v) in self.section("restart", key, item) {
            match k.get() {
                "policy" => {
                    let choices = [
                        ("always", RestartPolicy::Always),
                        ("on-failure", RestartPolicy::OnFailure),
                        ("never", RestartPolicy::Never),
                    ];
                    if let Some(policy) = self.choice("restart.policy", k, v, &choices) {
                        restart.policy = policy;
                    }
                }
                "delay" => {
                    delay = (true, self.duration("restart.delay", k, v, false), loc(k, v));
                }
                "max_delay" => {
                    max_delay = (
                        true,
                        self.duration("restart.max_delay", k, v, false),
                        loc(k, v),
                    );
                }
                "reset_after" => {
                    if let Some(d) = self.duration("restart.reset_after", k, v, true) {
                        restart.reset_after = d;
                    }
                }
                _ => self.unknown_key(k, v, RESTART_KEYS, "[restart]"),
            }
        }
        if let Some(d) = delay.1 {
            restart.delay = d;
        }
        if let Some(d) = max_delay.1 {
            restart.max_delay = d;
        }
        if delay.0 && delay.1.is_none() || max_delay.0 && max_delay.1.is_none() {
            return;
        }
        if restart.max_delay < restart.delay {
            if max_delay.0 {
                self.error(
                    max_delay.2,
                    format!(
                        "restart.max_delay ({:?}) must not be shorter than restart.delay ({:?})",
                        restart.max_delay, restart.delay
                    ),
                );
            } else {
                self.error(
                    delay.2,
                    format!(
                        "restart.delay ({:?}) is longer than the default restart.max_delay ({:?}); \
                         set max_delay too",
                        restart.delay, restart.max_delay
                    ),
                );
            }
        }
    }

    fn batch(&mut self, key: &Key, item: &Item) -> Option<Batch> {
        const EXPECTED: &str = "an integer or a percentage like \"25%\"";
        match item.as_value() {
            Some(Value::Integer(n)) => {
                let n = *n.value();
                match u32::try_from(n) {
                    Ok(n) if n >= 1 => Some(Batch::Count(n)),
                    _ => {
                        self.error(
                            loc(key, item),
                            format!("reload.batch: must be at least 1, found {n}"),
                        );
                        None
                    }
                }
            }
            Some(Value::String(s)) => {
                let s = s.value();
                let percent = s
                    .strip_suffix('%')
                    .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|p| p.parse::<u32>().ok());
                match percent {
                    Some(p) if (1..=100).contains(&p) => Some(Batch::Percent(p)),
                    Some(_) => {
                        self.error(
                            loc(key, item),
                            format!("reload.batch: percentage must be between 1% and 100%, found \"{s}\""),
                        );
                        None
                    }
                    None => {
                        self.error(
                            loc(key, item),
                            format!(
                                "reload.batch: expected {EXPECTED}, found \"{}\"",
                                s.escape_debug()
                            ),
                        );
                        None
                    }
                }
            }
            _ => {
                self.type_error("reload.batch", key, item, EXPECTED);
                None
            }
        }
    }

    fn max_memory(&mut self, key: &Key, item: &Item) -> Option<u64> {
        let bytes = match item.as_value() {
            Some(Value::Integer(n)) => u64::try_from(*n.value()).unwrap_or(0),
            Some(Value::String(s)) => match parse_size(s.value()) {
                Ok(n) => n,
                Err(e) => {
                    self.error(loc(key, item), format!("limits.max_memory: {e}"));
                    return None;
                }
            },
            _ => {
                self.type_error(
                    "limits.max_memory",
                    key,
                    item,
                    "a size like \"512M\" or a number of bytes",
                );
                return None;
            }
        };
        if bytes == 0 {
            self.error(
                loc(key, item),
                "limits.max_memory: must be greater than 0".into(),
            );
            return None;
        }
        Some(bytes)
    }

    fn priority(&mut self, key: &Key, item: &Item) -> Option<u8> {
        const EXPECTED: &str = "a syslog level (\"emerg\", \"alert\", \"crit\", \"err\", \
                                \"warning\", \"notice\", \"info\", \"debug\") or an integer 0 to 7";
        match item.as_value() {
            Some(Value::Integer(_)) => self
                .int_in("logs.stderr_priority", key, item, 0, 7)
                .map(|n| n as u8),
            Some(Value::String(s)) => {
                let s = s.value();
                if let Some((_, p)) = SYSLOG_LEVELS.iter().find(|(n, _)| n == s) {
                    return Some(*p);
                }
                let names: Vec<&str> = SYSLOG_LEVELS.iter().map(|(n, _)| *n).collect();
                let mut message = format!(
                    "logs.stderr_priority: expected {EXPECTED}, found \"{}\"",
                    s.escape_debug()
                );
                if let Some(hint) = suggest(s, &names) {
                    message.push_str(&format!("; did you mean \"{hint}\"?"));
                }
                self.error(loc(key, item), message);
                None
            }
            _ => {
                self.type_error("logs.stderr_priority", key, item, EXPECTED);
                None
            }
        }
    }

    fn service(&mut self, key: &Key, item: &Item, service: &mut Service) {
        for (k, v) in self.section("service", key, item) {
            match k.get() {
                "user" => service.user = self.account("service.user", k, v),
                "group" => service.group = self.account("service.group", k, v),
                "watchdog" => service.watchdog = self.duration("service.watchdog", k, v, true),
                _ => self.unknown_key(k, v, SERVICE_KEYS, "[service]"),
            }
        }
    }
}

/// `"a", "b" or "c"` (quoted).
fn choice_list<'s>(names: impl Iterator<Item = &'s str>) -> String {
    let names: Vec<String> = names.map(|n| format!("\"{n}\"")).collect();
    match names.split_last() {
        None => String::new(),
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
    }
}

/// Edit distance (insertions, deletions, substitutions) between two strings.
fn levenshtein(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, ca) in a.chars().enumerate() {
        cur[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitute = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// The candidate closest to `word`, if it is close enough to be a likely typo.
fn suggest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let lower = word.to_lowercase();
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .iter()
        .map(|c| (levenshtein(&lower, &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= limit && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// A TCP address or unix socket path, as in `ListenStream=`.
fn parse_address(s: &str) -> Result<Address, String> {
    const FORMS: &str = "expected IP:PORT, [IPV6]:PORT, PORT or an absolute unix socket path";
    if s.is_empty() {
        return Err(format!("must not be empty; {FORMS}"));
    }
    if s.starts_with('/') {
        if s.contains('\0') {
            return Err("unix socket path must not contain NUL".into());
        }
        if s.len() > MAX_UNIX_PATH {
            return Err(format!(
                "unix socket path is {} bytes long; the limit is {MAX_UNIX_PATH}",
                s.len()
            ));
        }
        if s.ends_with('/') {
            return Err("unix socket path must name a file, not a directory".into());
        }
        return Ok(Address::Unix(PathBuf::from(s)));
    }
    if s.starts_with('@') {
        return Err(
            "abstract unix sockets are not supported; use a path like /run/app.sock".into(),
        );
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let port = parse_port(s)?;
        return Ok(Address::Tcp(SocketAddr::new(
            Ipv6Addr::UNSPECIFIED.into(),
            port,
        )));
    }
    if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err("missing ']' after the IPv6 address".into());
        };
        let ip: Ipv6Addr = host
            .parse()
            .map_err(|_| format!("`{host}` is not a valid IPv6 address"))?;
        let Some(port) = after.strip_prefix(':') else {
            return Err(format!("missing port; write it like [{host}]:8080"));
        };
        return Ok(Address::Tcp(SocketAddr::new(ip.into(), parse_port(port)?)));
    }
    if s.contains('/') {
        return Err("unix socket paths must be absolute (start with '/')".into());
    }
    let Some((host, port)) = s.rsplit_once(':') else {
        if s.parse::<IpAddr>().is_ok() {
            return Err(format!("missing port; write it like {s}:8080"));
        }
        return Err(format!(
            "{FORMS}; hostnames are not resolved, use an IP address like 127.0.0.1:8080"
        ));
    };
    if host.contains(':') {
        return Err("IPv6 addresses must be in brackets, like [::1]:8080".into());
    }
    if host.is_empty() {
        return Err(format!(
            "missing host; write 0.0.0.0:{port} or [::]:{port}, or just {port} for all addresses"
        ));
    }
    match host.parse::<Ipv4Addr>() {
        Ok(ip) => Ok(Address::Tcp(SocketAddr::new(ip.into(), parse_port(port)?))),
        Err(_) => {
            let example_port = parse_port(port).unwrap_or(8080);
            Err(format!(
                "`{host}` is not an IP address; hostnames are not resolved, use an IP address \
                 like 127.0.0.1:{example_port}"
            ))
        }
    }
}

fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() {
        return Err("missing port".into());
    }
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("invalid port `{s}`"));
    }
    match s.parse::<u16>() {
        Ok(port) if port >= 1 => Ok(port),
        _ => Err(format!("port must be between 1 and 65535, found {s}")),
    }
}

/// A decimal number `DIGITS[.DIGITS]` split into its parts; `None` if malformed.
fn split_number(s: &str) -> Option<(&str, &str)> {
    let (int, frac) = match s.split_once('.') {
        Some((int, frac)) => {
            if frac.is_empty() {
                return None;
            }
            (int, frac)
        }
        None => (s, ""),
    };
    let digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    (!int.is_empty() && digits(int) && digits(frac)).then_some((int, frac))
}

/// `int.frac * unit`, rounded down; `None` on overflow.
fn scale(int: &str, frac: &str, unit: u128) -> Option<u128> {
    let whole = int.parse::<u128>().ok()?.checked_mul(unit)?;
    let frac = &frac[..frac.len().min(18)];
    let part = if frac.is_empty() {
        0
    } else {
        frac.parse::<u128>().ok()? * unit / 10u128.pow(frac.len() as u32)
    };
    whole.checked_add(part)
}

/// Parses a duration: `"250ms"`, `"30s"`, `"2m"`, `"1h"`, `"1m30s"`, `"1.5s"`,
/// `"100us"`, `"0"`. Units: `us`, `ms`, `s`, `m` (or `min`), `h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    const UNITS: &str = "use us, ms, s, m, min or h";
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration; write it like \"30s\"".into());
    }
    if text.starts_with('-') {
        return Err(format!(
            "invalid duration \"{}\": must not be negative",
            s.escape_debug()
        ));
    }
    if let Some((int, frac)) = split_number(text) {
        return if int.bytes().chain(frac.bytes()).all(|b| b == b'0') {
            Ok(Duration::ZERO)
        } else {
            Err("missing unit (e.g. \"30s\")".into())
        };
    }
    let mut total: u128 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..len];
        let Some((int, frac)) = split_number(number) else {
            return Err(format!(
                "invalid duration \"{}\": expected a number followed by a unit ({UNITS})",
                s.escape_debug()
            ));
        };
        rest = rest[len..].trim_start();
        let len = rest
            .find(|c: char| !c.is_alphabetic())
            .unwrap_or(rest.len());
        let unit: u128 = match &rest[..len] {
            "us" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" | "min" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "" => {
                return Err(format!(
                    "invalid duration \"{}\": missing unit after {number} ({UNITS})",
                    s.escape_debug()
                ))
            }
            other => {
                return Err(format!(
                    "invalid duration \"{}\": unknown unit `{other}` ({UNITS})",
                    s.escape_debug()
                ))
            }
        };
        total = scale(int, frac, unit)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| format!("duration \"{}\" is too large", s.escape_debug()))?;
        rest = rest[len..].trim_start();
    }
    // Far beyond any sensible timeout, and small enough that deadline arithmetic never
    // overflows.
    const MAX: u128 = 366 * 24 * 3_600_000_000_000;
    if total > MAX {
        return Err(format!(
            "duration \"{}\" is too large (at most a year)",
            s.escape_debug()
        ));
    }
    let secs = (total / 1_000_000_000) as u64;
    Ok(Duration::new(secs, (total % 1_000_000_000) as u32))
}

/// Parses a size in bytes: `"300M"`, `"1G"`, `"512K"`, `"1024"`, `"1.5G"`.
/// K, M, G and T are powers of 1024 and may be followed by `B` or `iB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty size; write it like \"512M\"".into());
    }
    let len = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = (&text[..len], text[len..].trim_start());
    let Some((int, frac)) = split_number(number) else {
        return Err(format!(
            "invalid size \"{}\": expected a number optionally followed by K, M, G or T",
            s.escape_debug()
        ));
    };
    let mut chars = unit.chars();
    let multiplier: u128 = match chars.next().map(|c| c.to_ascii_uppercase()) {
        None | Some('B') if unit.len() <= 1 => 1,
        Some('K') => 1 << 10,
        Some('M') => 1 << 20,
        Some('G') => 1 << 30,
        Some('T') => 1 << 40,
        _ => 0,
    };
    let suffix = chars.as_str();
    if multiplier == 0 || (multiplier > 1 && !matches!(suffix, "" | "B" | "iB")) || unit == "b" {
        return Err(format!(
            "invalid size \"{}\": unknown unit `{unit}` (use K, M, G or T, optionally followed by B or iB)",
            s.escape_debug()
        ));
    }
    if multiplier == 1 && !frac.is_empty() {
        return Err(format!(
            "invalid size \"{}\": a size in bytes must be a whole number",
            s.escape_debug()
        ));
    }
    scale(int, frac, multiplier)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| format!("size \"{}\" is too large", s.escape_debug()))
}

/// Parses a signal name, `"SIGTERM"` or `"TERM"` (upper case).
pub fn parse_signal(s: &str) -> Result<Signal, String> {
    let lookup = |name: &str| -> Option<Signal> {
        if name.starts_with("SIG") {
            name.parse().ok()
        } else {
            format!("SIG{name}").parse().ok()
        }
    };
    if let Some(signal) = lookup(s) {
        return Ok(signal);
    }
    let upper = s.to_ascii_uppercase();
    if upper != s && lookup(&upper).is_some() {
        return Err(format!(
            "unknown signal \"{}\"; signal names are upper case, like \"{upper}\"",
            s.escape_debug()
        ));
    }
    Err(format!(
        "unknown signal \"{}\" (use a name like \"SIGTERM\" or \"TERM\")",
        s.escape_debug()
    ))
}

/// Number of CPUs this process may use: the smaller of its CPU affinity mask
/// and the cgroup v2 CPU quota (rounded up), at least 1.
pub fn available_cpus() -> u32 {
    let affinity = affinity_cpus().unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map_or(1, |n| u32::try_from(n.get()).unwrap_or(u32::MAX))
    });
    let limit = cgroup_cpu_limit().unwrap_or(u32::MAX);
    affinity.min(limit).max(1)
}

fn affinity_cpus() -> Option<u32> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    let n = (0..nix::sched::CpuSet::count())
        .filter(|&cpu| set.is_set(cpu).unwrap_or(false))
        .count();
    (n > 0).then(|| u32::try_from(n).unwrap_or(u32::MAX))
}

fn cgroup_cpu_limit() -> Option<u32> {
    let cgroups = fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|line| line.strip_prefix("0::"))?;
    cgroup_limit_under(Path::new("/sys/fs/cgroup"), path)
}

/// The smallest `cpu.max` limit of the cgroup at `path` (relative to the
/// cgroup2 mount `root`) and its ancestors up to the root.
fn cgroup_limit_under(root: &Path, path: &str) -> Option<u32> {
    let mut dir = root.to_path_buf();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => dir.push(part),
            Component::RootDir | Component::CurDir => {}
            // Outside our cgroup namespace: only the visible root is known.
            Component::ParentDir | Component::Prefix(_) => {
                dir = root.to_path_buf();
                break;
            }
        }
    }
    let mut best: Option<u32> = None;
    loop {
        if let Some(limit) = fs::read_to_string(dir.join("cpu.max"))
            .ok()
            .and_then(|s| parse_cpu_max(&s))
        {
            best = Some(best.map_or(limit, |b| b.min(limit)));
        }
        if dir == root || !dir.pop() || !dir.starts_with(root) {
            break;
        }
    }
    best
}

/// `"QUOTA PERIOD"` -> ceil(QUOTA / PERIOD); `"max ..."` (no limit) -> None.
fn parse_cpu_max(s: &str) -> Option<u32> {
    let mut fields = s.split_whitespace();
    let quota: u64 = fields.next()?.parse().ok()?;
    let period: u64 = fields.next().map_or(Some(100_000), |p| p.parse().ok())?;
    if period == 0 {
        return None;
    }
    Some(
        u32::try_from(quota.div_ceil(period))
            .unwrap_or(u32::MAX)
            .max(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/etc/corral/api.toml";

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new(PATH), text)
    }

    fn ok(text: &str) -> Config {
        match parse(text) {
            Ok(config) => config,
            Err(e) => panic!("expected a valid config, got:\n{e}"),
        }
    }

    /// All diagnostics as (line, col, message).
    fn errors(text: &str) -> Vec<(usize, usize, String)> {
        match parse(text) {
            Ok(config) => panic!("expected errors, got {config:?}"),
            Err(e) => {
                assert_eq!(e.file, Path::new(PATH));
                e.diagnostics
                    .into_iter()
                    .map(|d| (d.line, d.col, d.message))
                    .collect()
            }
        }
    }

    /// The only diagnostic of a file that has exactly one problem.
    fn error(text: &str) -> (usize, usize, String) {
        let mut all = errors(text);
        assert_eq!(all.len(), 1, "expected one error, got {all:#?}");
        all.remove(0)
    }

    /// The only diagnostic of `command = ["x"]` followed by `rest`.
    fn error_with_command(rest: &str) -> (usize, usize, String) {
        error(&format!("command = [\"x\"]\n{rest}"))
    }

    fn assert_error(text: &str, line: usize, col: usize, contains: &str) {
        let (l, c, message) = error(text);
        assert_eq!((l, c), (line, col), "wrong position for {message:?}");
        assert!(
            message.contains(contains),
            "{message:?} does not contain {contains:?}"
        );
    }

    /// Like `assert_error` with `command = ["x"]` on line 1 (so `rest` starts on line 2).
    fn assert_error_after_command(rest: &str, line: usize, col: usize, contains: &str) {
        assert_error(&format!("command = [\"x\"]\n{rest}"), line, col, contains);
    }

    const FULL: &str = r#"command = ["node", "server.js", "--port=0"]
directory = "/srv/api"
workers = 4

[environment]
NODE_ENV = "production"
THREADS = 3
DEBUG = false

[[listen]]
name = "http"
address = "127.0.0.1:8080"
backlog = 1024

[[listen]]
name = "admin"
address = "/run/api/admin.sock"
mode = "0660"
owner = "www-data"
group = "www-data"

[readiness]
mode = "exec"
timeout = "1m"

[watchdog]
timeout = "15s"

[stop]
signal = "SIGINT"
# message = "shutdown" needs readiness.mode = "node-ipc"
timeout = "45s"

[restart]
policy = "always"
delay = "250ms"
max_delay = "1m30s"
reset_after = "2m"

[reload]
batch = "25%"

[limits]
max_memory = "1.5G"

[logs]
stderr_priority = "warning"

[service]
user = "api"
group = "api"
watchdog = "0"
"#;

    #[test]
    fn full_valid_file() {
        let c = ok(FULL);
        assert_eq!(c.path, Path::new(PATH));
        assert_eq!(c.app, "api");
        assert_eq!(c.command, ["node", "server.js", "--port=0"]);
        assert_eq!(c.directory.as_deref(), Some(Path::new("/srv/api")));
        assert_eq!(c.workers, WorkerCount::Count(4));
        assert_eq!(
            c.environment,
            [
                ("NODE_ENV".to_string(), "production".to_string()),
                ("THREADS".to_string(), "3".to_string()),
                ("DEBUG".to_string(), "false".to_string()),
            ]
        );
        assert_eq!(c.listen.len(), 2);
        let http = &c.listen[0];
        assert_eq!(http.name, "http");
        assert_eq!(
            http.address,
            Address::Tcp("127.0.0.1:8080".parse().unwrap())
        );
        assert_eq!(http.backlog, 1024);
        assert_eq!((http.mode, &http.owner, &http.group), (None, &None, &None));
        assert_eq!(http.span_line, 10);
        let admin = &c.listen[1];
        assert_eq!(admin.name, "admin");
        assert_eq!(admin.address, Address::Unix("/run/api/admin.sock".into()));
        assert_eq!(admin.backlog, 4096);
        assert_eq!(admin.mode, Some(0o660));
        assert_eq!(admin.owner.as_deref(), Some("www-data"));
        assert_eq!(admin.group.as_deref(), Some("www-data"));
        assert_eq!(admin.span_line, 15);
        assert_eq!(c.readiness.mode, ReadinessMode::Exec);
        assert_eq!(c.readiness.timeout, Duration::from_secs(60));
        assert_eq!(c.watchdog, Some(Duration::from_secs(15)));
        assert_eq!(c.stop.signal, Signal::SIGINT);
        assert_eq!(c.stop.message, None);
        assert_eq!(c.stop.timeout, Duration::from_secs(45));
        assert_eq!(c.restart.policy, RestartPolicy::Always);
        assert_eq!(c.restart.delay, Duration::from_millis(250));
        assert_eq!(c.restart.max_delay, Duration::from_secs(90));
        assert_eq!(c.restart.reset_after, Duration::from_secs(120));
        assert_eq!(c.reload.batch, Batch::Percent(25));
        assert_eq!(c.limits.max_memory, Some(1536 * 1024 * 1024));
        assert_eq!(c.logs.stderr_priority, 4);
        assert_eq!(c.service.user.as_deref(), Some("api"));
        assert_eq!(c.service.group.as_deref(), Some("api"));
        assert_eq!(c.service.watchdog, Some(Duration::ZERO));
    }

    #[test]
    fn minimal_file_defaults() {
        let c = ok("command = [\"/usr/bin/app\"]\n");
        assert_eq!(c.app, "api");
        assert_eq!(c.command, ["/usr/bin/app"]);
        assert_eq!(c.directory, None);
        assert_eq!(c.workers, WorkerCount::Count(1));
        assert!(c.environment.is_empty());
        assert!(c.listen.is_empty());
        assert_eq!(c.readiness.mode, ReadinessMode::Notify);
        assert_eq!(c.readiness.timeout, Duration::from_secs(30));
        assert_eq!(c.watchdog, None);
        assert_eq!(c.stop.signal, Signal::SIGTERM);
        assert_eq!(c.stop.message, None);
        assert_eq!(c.stop.timeout, Duration::from_secs(30));
        assert_eq!(c.restart.policy, RestartPolicy::OnFailure);
        assert_eq!(c.restart.delay, Duration::from_millis(100));
        assert_eq!(c.restart.max_delay, Duration::from_secs(30));
        assert_eq!(c.restart.reset_after, Duration::from_secs(10));
        assert_eq!(c.reload.batch, Batch::Count(1));
        assert_eq!(c.limits.max_memory, None);
        assert_eq!(c.logs.stderr_priority, 6);
        assert_eq!(c.service.user, None);
        assert_eq!(c.service.group, None);
        assert_eq!(c.service.watchdog, None);
    }

    #[test]
    fn alternative_table_syntaxes() {
        let c = ok(r#"command = ["x"]
stop.signal = "HUP"
restart = { policy = "never" }
environment = { A = "1" }
listen = [{ name = "a", address = "80" }]
[watchdog]
"#);
        assert_eq!(c.stop.signal, Signal::SIGHUP);
        assert_eq!(c.restart.policy, RestartPolicy::Never);
        assert_eq!(c.environment, [("A".to_string(), "1".to_string())]);
        assert_eq!(c.listen[0].address.to_string(), "[::]:80");
        assert_eq!(c.listen[0].span_line, 5);
        assert_eq!(c.watchdog, None);
    }

    #[test]
    fn unknown_key_top_level_with_hint() {
        let e = parse("command = [\"x\"]\n\nworker = 3\n").unwrap_err();
        assert_eq!(
            e.to_string(),
            "/etc/corral/api.toml:3:1: unknown key `worker` in the top level; did you mean `workers`?"
        );
    }

    #[test]
    fn unknown_key_in_tables() {
        assert_error_after_command(
            "[restart]\nmax_dealy = \"1s\"\n",
            3,
            1,
            "unknown key `max_dealy` in [restart]; did you mean `max_delay`?",
        );
        assert_error_after_command(
            "[[listen]]\nname = \"a\"\naddress = \"80\"\n  adress = \"81\"\n",
            5,
            3,
            "unknown key `adress` in [[listen]]; did you mean `address`?",
        );
        // dotted keys: the position is the unknown part of the key
        assert_error_after_command(
            "stop.sgnal = \"TERM\"\n",
            2,
            6,
            "unknown key `sgnal` in [stop]; did you mean `signal`?",
        );
        // inline tables
        assert_error_after_command(
            "readiness = { mode = \"exec\", timout = \"1s\" }\n",
            2,
            30,
            "unknown key `timout` in [readiness]; did you mean `timeout`?",
        );
        // no hint when nothing is close
        let (_, _, m) = error_with_command("banana = 1\n");
        assert_eq!(m, "unknown key `banana` in the top level");
        // a key that belongs in a section
        let (_, _, m) = error_with_command("max_memory = \"1G\"\n");
        assert_eq!(
            m,
            "unknown key `max_memory` in the top level; did you mean to put it in [limits]?"
        );
        // case differences count as close
        let (_, _, m) = error_with_command("Workers = 2\n");
        assert!(m.ends_with("did you mean `workers`?"), "{m}");
    }

    #[test]
    fn type_errors() {
        assert_error_after_command(
            "[readiness]\ntimeout = 30\n",
            3,
            11,
            "readiness.timeout: expected a string like \"30s\", found an integer",
        );
        assert_error_after_command(
            "directory = 5\n",
            2,
            13,
            "directory: expected a string, found an integer",
        );
        assert_error_after_command(
            "stop = \"TERM\"\n",
            2,
            8,
            "stop: expected a table ([stop]), found a string",
        );
        assert_error_after_command(
            "[service]\nwatchdog = true\n",
            3,
            12,
            "service.watchdog: expected a string like \"30s\", found a boolean",
        );
        assert_error_after_command(
            "[listen]\nname = \"a\"\n",
            2,
            1,
            "listen: expected an array of tables ([[listen]]), found a table",
        );
        assert_error_after_command(
            "listen = [\"80\"]\n",
            2,
            11,
            "listen: expected every element to be a table, found a string",
        );
        assert_error_after_command(
            "[limits]\nmax_memory = 1.5\n",
            3,
            14,
            "expected a size like \"512M\" or a number of bytes, found a float",
        );
        assert_error_after_command(
            "stop.signal = 15\n",
            2,
            15,
            "stop.signal: expected a signal name like \"SIGTERM\", found an integer",
        );
        assert_error_after_command(
            "[watchdog]\ntimeout = 1979-05-27\n",
            3,
            11,
            "found a date-time",
        );
        assert_error_after_command("[logs]\nstderr_priority = [3]\n", 3, 19, "found an array");
    }

    #[test]
    fn command_errors() {
        assert_error("workers = 2\n", 1, 1, "missing required key `command`");
        assert_error("command = []\n", 1, 11, "command: must not be empty");
        assert_error(
            "command = \"node server.js\"\n",
            1,
            11,
            "command: expected an array of strings like [\"node\", \"server.js\"], found a string",
        );
        assert_error(
            "command = [\"node\", 3]\n",
            1,
            20,
            "command: expected every element to be a string, found an integer",
        );
        assert_error(
            "command = [\"\", \"x\"]\n",
            1,
            12,
            "command: the program must not be empty",
        );
        assert_error(
            "command = [\"x\", \"\"]\n",
            1,
            17,
            "command: arguments must not be empty",
        );
        // an empty file is just missing its command
        assert_error("", 1, 1, "missing required key `command`");
    }

    #[test]
    fn directory_must_be_absolute() {
        assert_error_after_command(
            "directory = \"srv/api\"\n",
            2,
            13,
            "directory: must be an absolute path, found \"srv/api\"",
        );
    }

    #[test]
    fn workers_values() {
        assert_eq!(
            ok("command = [\"x\"]\nworkers = 1024\n").workers,
            WorkerCount::Count(1024)
        );
        assert_eq!(
            ok("command = [\"x\"]\nworkers = \"auto\"\n").workers,
            WorkerCount::Auto
        );
        assert_error_after_command(
            "workers = 0\n",
            2,
            11,
            "workers: must be between 1 and 1024, found 0",
        );
        assert_error_after_command("workers = 1025\n", 2, 11, "found 1025");
        assert_error_after_command("workers = -3\n", 2, 11, "found -3");
        assert_error_after_command(
            "workers = \"many\"\n",
            2,
            11,
            "workers: expected an integer or \"auto\", found \"many\"",
        );
        assert_error_after_command(
            "workers = 2.0\n",
            2,
            11,
            "workers: expected an integer or \"auto\", found a float",
        );
    }

    #[test]
    fn auto_workers_resolve() {
        let n = WorkerCount::Auto.resolve();
        let std_n = std::thread::available_parallelism().unwrap().get() as u32;
        assert!(n >= 1);
        // std rounds a fractional cgroup quota down; corral rounds it up.
        assert!(n <= std_n + 1, "{n} CPUs, std says {std_n}");
        assert_eq!(available_cpus(), n);
        assert_eq!(WorkerCount::Count(7).resolve(), 7);
    }

    #[test]
    fn cgroup_cpu_max() {
        assert_eq!(parse_cpu_max("max 100000\n"), None);
        assert_eq!(parse_cpu_max("200000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("150000 100000\n"), Some(2));
        assert_eq!(parse_cpu_max("50000 100000\n"), Some(1));
        assert_eq!(parse_cpu_max("100000 0\n"), None);
        assert_eq!(parse_cpu_max("garbage"), None);

        let root = std::env::temp_dir().join(format!("corral-cgroup-test-{}", std::process::id()));
        let leaf = root.join("system.slice/app.service");
        fs::create_dir_all(&leaf).unwrap();
        fs::write(root.join("system.slice/cpu.max"), "300000 100000\n").unwrap();
        fs::write(leaf.join("cpu.max"), "max 100000\n").unwrap();
        assert_eq!(
            cgroup_limit_under(&root, "/system.slice/app.service"),
            Some(3)
        );
        fs::write(leaf.join("cpu.max"), "120000 100000\n").unwrap();
        assert_eq!(
            cgroup_limit_under(&root, "/system.slice/app.service"),
            Some(2)
        );
        assert_eq!(cgroup_limit_under(&root, "/"), None);
        assert_eq!(cgroup_limit_under(&root, "/missing/group"), None);
        assert_eq!(cgroup_limit_under(&root, "/../.."), None);
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn environment_conversion_and_order() {
        let c = ok(r#"command = ["x"]
environment = { Z = "last?", A = 3, B = true, C = 1.5, D = 2.0, E = -7, F = 0x10, G = "" }
"#);
        let expected = [
            ("Z", "last?"),
            ("A", "3"),
            ("B", "true"),
            ("C", "1.5"),
            ("D", "2.0"),
            ("E", "-7"),
            ("F", "16"),
            ("G", ""),
        ];
        let got: Vec<(&str, &str)> = c
            .environment
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn environment_errors() {
        assert_error_after_command(
            "[environment]\nLISTEN_FDS = \"3\"\n",
            3,
            1,
            "environment: `LISTEN_FDS` is reserved",
        );
        for name in RESERVED_ENV.iter().chain(&["CORRAL_APP", "CORRAL_"]) {
            let (_, _, m) = error_with_command(&format!("environment = {{ {name} = \"1\" }}\n"));
            assert!(m.contains("is reserved"), "{name}: {m}");
        }
        // not reserved: different case, or merely containing the prefix
        ok("command = [\"x\"]\nenvironment = { corral_x = \"1\", MY_CORRAL_X = \"1\" }\n");
        assert_error_after_command(
            "[environment]\n\"A=B\" = \"1\"\n",
            3,
            1,
            "environment: invalid variable name `A=B`: must not contain '=' or NUL",
        );
        assert_error_after_command(
            "[environment]\n\"\" = \"1\"\n",
            3,
            1,
            "environment: variable names must not be empty",
        );
        assert_error_after_command(
            "environment = { A = [1] }\n",
            2,
            21,
            "environment.A: expected a string, found an array",
        );
        assert_error_after_command(
            "environment = \"A=1\"\n",
            2,
            15,
            "environment: expected a table ([environment]), found a string",
        );
    }

    #[test]
    fn columns_count_characters() {
        // "é" and "ü" are two bytes each but one column.
        assert_error_after_command(
            "environment = { A = \"é\", \"Ü\" = \"ü\", B = [] }\n",
            2,
            41,
            "environment.B: expected a string",
        );
    }

    fn listen_file(entries: &[&str]) -> String {
        let mut text = String::from("command = [\"x\"]\n");
        for entry in entries {
            text.push_str("[[listen]]\n");
            text.push_str(entry);
        }
        text
    }

    fn address(s: &str) -> Result<Address, String> {
        parse_address(s)
    }

    #[test]
    fn listen_addresses() {
        let tcp = |s: &str| Address::Tcp(s.parse().unwrap());
        assert_eq!(address("127.0.0.1:8080"), Ok(tcp("127.0.0.1:8080")));
        assert_eq!(address("0.0.0.0:80"), Ok(tcp("0.0.0.0:80")));
        assert_eq!(address("[::1]:8080"), Ok(tcp("[::1]:8080")));
        assert_eq!(address("[::]:443"), Ok(tcp("[::]:443")));
        assert_eq!(address("8080"), Ok(tcp("[::]:8080")));
        assert_eq!(
            address("/run/x.sock"),
            Ok(Address::Unix("/run/x.sock".into()))
        );
        let long = format!("/{}", "a".repeat(106));
        assert_eq!(address(&long), Ok(Address::Unix(long.clone().into())));
        let too_long = format!("/{}", "a".repeat(107));
        assert!(address(&too_long)
            .unwrap_err()
            .contains("108 bytes long; the limit is 107"));
        for bad in ["0", "65536", "127.0.0.1:0", "[::1]:99999"] {
            let e = address(bad).unwrap_err();
            assert!(e.contains("port must be between 1 and 65535"), "{bad}: {e}");
        }
        let e = address("localhost:8080").unwrap_err();
        assert!(e.contains("use an IP address like 127.0.0.1:8080"), "{e}");
        let e = address("example.com:443").unwrap_err();
        assert!(e.contains("use an IP address like 127.0.0.1:443"), "{e}");
        assert!(address("localhost").unwrap_err().contains("127.0.0.1:8080"));
        assert!(address("run/x.sock")
            .unwrap_err()
            .contains("must be absolute"));
        assert!(address("::1").unwrap_err().contains("brackets"));
        assert!(address("[::1]").unwrap_err().contains("missing port"));
        assert!(address("[::1:80").unwrap_err().contains("missing ']'"));
        assert!(address("[nope]:80")
            .unwrap_err()
            .contains("not a valid IPv6"));
        assert!(address("127.0.0.1").unwrap_err().contains("missing port"));
        assert!(address("127.0.0.1:").unwrap_err().contains("missing port"));
        assert!(address(":80").unwrap_err().contains("missing host"));
        assert!(address("1.2.3.4:http")
            .unwrap_err()
            .contains("invalid port"));
        assert!(address("@abstract").unwrap_err().contains("abstract"));
        assert!(address("").is_err());
        assert!(address("/run/dir/").is_err());
    }

    #[test]
    fn address_display() {
        assert_eq!(
            Address::Tcp("127.0.0.1:8080".parse().unwrap()).to_string(),
            "127.0.0.1:8080"
        );
        assert_eq!(
            Address::Tcp("[::]:80".parse().unwrap()).to_string(),
            "[::]:80"
        );
        assert_eq!(
            Address::Unix("/run/x.sock".into()).to_string(),
            "/run/x.sock"
        );
    }

    #[test]
    fn listen_address_errors_in_file() {
        assert_error(
            &listen_file(&["name = \"web\"\naddress = \"localhost:8080\"\n"]),
            4,
            11,
            "listen.address \"localhost:8080\": `localhost` is not an IP address; hostnames are \
             not resolved, use an IP address like 127.0.0.1:8080",
        );
        assert_error(
            &listen_file(&["name = \"web\"\naddress = \"127.0.0.1:0\"\n"]),
            4,
            11,
            "port must be between 1 and 65535, found 0",
        );
        assert_error(
            &listen_file(&["name = \"web\"\naddress = 8080\n"]),
            4,
            11,
            "listen.address: expected a string, found an integer",
        );
    }

    #[test]
    fn listen_required_keys() {
        assert_error(
            &listen_file(&["address = \"80\"\n"]),
            2,
            1,
            "[[listen]]: missing required key `name`",
        );
        assert_error(
            &listen_file(&["name = \"a\"\n"]),
            2,
            1,
            "[[listen]]: missing required key `address`",
        );
        let all = errors(&listen_file(&[
            "",
            "name = \"a\"\naddress = \"80\"\n",
            "mode = \"0600\"\n",
        ]));
        let got: Vec<(usize, usize)> = all.iter().map(|(l, c, _)| (*l, *c)).collect();
        assert_eq!(got, [(2, 1), (2, 1), (6, 1), (6, 1)], "{all:#?}");
    }

    #[test]
    fn listen_duplicates() {
        let text = listen_file(&[
            "name = \"web\"\naddress = \"80\"\n",
            "name = \"web\"\naddress = \"[::]:80\"\n",
        ]);
        let all = errors(&text);
        assert_eq!(
            all,
            [
                (
                    6,
                    8,
                    "listen.name \"web\" is already used by the listener at line 2".to_string()
                ),
                (
                    7,
                    11,
                    "listen.address [::]:80 is already used by the listener at line 2".to_string()
                ),
            ]
        );
        // duplicates are found even when the earlier listener has other problems
        let text = listen_file(&[
            "name = \"a\"\naddress = \"/run/a.sock\"\nbacklog = 0\n",
            "name = \"a\"\naddress = \"/run/a.sock\"\n",
        ]);
        let all = errors(&text);
        assert_eq!(all.len(), 3, "{all:#?}");
        assert_eq!((all[1].0, all[1].1), (7, 8));
        assert_eq!((all[2].0, all[2].1), (8, 11));
    }

    #[test]
    fn app_names_cannot_look_like_options() {
        // `corral reload -web` (ExecReload=) would read it as a flag.
        let e = Config::parse(Path::new("/etc/corral/-web.toml"), "command = [\"x\"]\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not starting with '.' or '-'"), "{e}");
    }

    #[test]
    fn listen_names() {
        let name_error = |name: &str| {
            let (l, c, m) = error(&listen_file(&[&format!(
                "name = \"{name}\"\naddress = \"80\"\n"
            )]));
            assert_eq!((l, c), (3, 8), "{m}");
            m
        };
        assert!(name_error("").contains("must not be empty"));
        // Only what is safe in a unit name and in LISTEN_FDNAMES, unescaped.
        for bad in [
            "a:b",
            "a b",
            "caf\u{e9}",
            "a\\tb",
            "web*",
            "a%b",
            "x/../y",
            "-x",
            ".x",
            "a@b",
        ] {
            assert!(
                name_error(bad).contains("use only letters, digits"),
                "{bad:?}"
            );
        }
        assert!(name_error(&"n".repeat(65)).contains("at most 64 characters"));
        let c = ok(&listen_file(&[&format!(
            "name = \"{}\"\naddress = \"80\"\n",
            "n".repeat(64)
        )]));
        assert_eq!(c.listen[0].name.len(), 64);
        ok(&listen_file(&["name = \"web-1_x.y\"\naddress = \"80\"\n"]));
    }

    #[test]
    fn listen_backlog() {
        let c = ok(&listen_file(&[
            "name = \"a\"\naddress = \"80\"\nbacklog = 65535\n",
        ]));
        assert_eq!(c.listen[0].backlog, 65535);
        assert_error(
            &listen_file(&["name = \"a\"\naddress = \"80\"\nbacklog = 0\n"]),
            5,
            11,
            "listen.backlog: must be between 1 and 65535, found 0",
        );
        assert_error(
            &listen_file(&["name = \"a\"\naddress = \"80\"\nbacklog = 65536\n"]),
            5,
            11,
            "found 65536",
        );
        assert_error(
            &listen_file(&["name = \"a\"\naddress = \"80\"\nbacklog = \"1\"\n"]),
            5,
            11,
            "listen.backlog: expected an integer, found a string",
        );
    }

    #[test]
    fn listen_unix_only_keys() {
        let all = errors(&listen_file(&[
            "name = \"a\"\naddress = \"127.0.0.1:80\"\nmode = \"0660\"\nowner = \"root\"\ngroup = \"root\"\n",
        ]));
        assert_eq!(
            all,
            [
                (
                    5,
                    8,
                    "listen.mode: only applies to unix sockets, but 127.0.0.1:80 is a TCP address"
                        .to_string()
                ),
                (
                    6,
                    9,
                    "listen.owner: only applies to unix sockets, but 127.0.0.1:80 is a TCP address"
                        .to_string()
                ),
                (
                    7,
                    9,
                    "listen.group: only applies to unix sockets, but 127.0.0.1:80 is a TCP address"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn listen_modes() {
        let mode = |m: &str| {
            parse(&listen_file(&[&format!(
                "name = \"a\"\naddress = \"/run/a.sock\"\nmode = {m}\n"
            )]))
            .map(|c| c.listen[0].mode)
            .map_err(|e| {
                assert_eq!(e.diagnostics.len(), 1);
                let d = &e.diagnostics[0];
                assert_eq!((d.line, d.col), (5, 8));
                d.message.clone()
            })
        };
        assert_eq!(mode("\"0660\""), Ok(Some(0o660)));
        assert_eq!(mode("\"600\""), Ok(Some(0o600)));
        assert_eq!(mode("\"0777\""), Ok(Some(0o777)));
        assert_eq!(mode("0o640"), Ok(Some(0o640)));
        assert!(mode("\"1777\"")
            .unwrap_err()
            .contains("must be at most 0777"));
        assert!(mode("\"0999\"")
            .unwrap_err()
            .contains("expected an octal string like \"0660\""));
        assert!(mode("\"\"").is_err());
        assert!(mode("\"rw-rw----\"").is_err());
        assert!(mode("660")
            .unwrap_err()
            .contains("expected an octal string like \"0660\", found an integer"));
    }

    #[test]
    fn listen_owner_group() {
        let c = ok(&listen_file(&[
            "name = \"a\"\naddress = \"/run/a.sock\"\nowner = \"app\"\n",
        ]));
        assert_eq!(c.listen[0].owner.as_deref(), Some("app"));
        assert_eq!(c.listen[0].group, None);
        assert_error(
            &listen_file(&["name = \"a\"\naddress = \"/run/a.sock\"\ngroup = \"\"\n"]),
            5,
            9,
            "listen.group: invalid name",
        );
    }

    #[test]
    fn readiness_errors() {
        assert_eq!(
            ok("command = [\"x\"]\nreadiness.mode = \"exec\"\n")
                .readiness
                .mode,
            ReadinessMode::Exec
        );
        assert_error_after_command(
            "[readiness]\nmode = \"ready\"\n",
            3,
            8,
            "readiness.mode: expected \"notify\", \"exec\" or \"node-ipc\", found \"ready\"",
        );
        assert_error_after_command(
            "[readiness]\nmode = \"node_ipc\"\n",
            3,
            8,
            "; did you mean \"node-ipc\"?",
        );
        assert_error_after_command(
            "[readiness]\ntimeout = \"0s\"\n",
            3,
            11,
            "readiness.timeout: must be greater than 0",
        );
        assert_error_after_command(
            "[readiness]\ntimeout = \"30\"\n",
            3,
            11,
            "readiness.timeout: missing unit (e.g. \"30s\")",
        );
    }

    #[test]
    fn watchdog_table() {
        assert_eq!(ok("command = [\"x\"]\n[watchdog]\n").watchdog, None);
        assert_eq!(
            ok("command = [\"x\"]\nwatchdog.timeout = \"500ms\"\n").watchdog,
            Some(Duration::from_millis(500))
        );
        assert_error_after_command(
            "[watchdog]\ntimeout = \"0\"\n",
            3,
            11,
            "watchdog.timeout: must be greater than 0",
        );
        assert_error_after_command(
            "watchdog = \"10s\"\n",
            2,
            12,
            "watchdog: expected a table ([watchdog]), found a string",
        );
    }

    #[test]
    fn stop_errors() {
        assert_error_after_command(
            "[stop]\nsignal = \"SIGFOO\"\n",
            3,
            10,
            "stop.signal: unknown signal \"SIGFOO\"",
        );
        assert_error_after_command(
            "[stop]\ntimeout = \"0ms\"\n",
            3,
            11,
            "stop.timeout: must be greater than 0",
        );
        assert_error_after_command(
            "[stop]\nmessage = \"shutdown\"\n",
            3,
            11,
            "stop.message: only allowed with readiness.mode = \"node-ipc\"",
        );
        assert_error_after_command(
            "[readiness]\nmode = \"exec\"\n[stop]\nmessage = \"shutdown\"\n",
            5,
            11,
            "stop.message: only allowed with readiness.mode = \"node-ipc\"",
        );
        // with an invalid mode only the mode is reported
        assert_error_after_command(
            "[stop]\nmessage = \"bye\"\n[readiness]\nmode = \"ipc\"\n",
            5,
            8,
            "readiness.mode",
        );
        // the order of the sections does not matter
        let c = ok("command = [\"x\"]\nstop.message = \"bye\"\nreadiness.mode = \"node-ipc\"\n");
        assert_eq!(c.stop.message.as_deref(), Some("bye"));
        assert_eq!(c.readiness.mode, ReadinessMode::NodeIpc);
    }

    #[test]
    fn restart_errors() {
        assert_error_after_command(
            "[restart]\npolicy = \"on_failure\"\n",
            3,
            10,
            "restart.policy: expected \"always\", \"on-failure\" or \"never\", found \"on_failure\"; \
             did you mean \"on-failure\"?",
        );
        assert_error_after_command(
            "[restart]\ndelay = \"0\"\n",
            3,
            9,
            "restart.delay: must be greater than 0",
        );
        assert_error_after_command(
            "[restart]\nmax_delay = \"0s\"\n",
            3,
            13,
            "restart.max_delay: must be greater than 0",
        );
        assert_error_after_command(
            "[restart]\ndelay = \"5s\"\nmax_delay = \"1s\"\n",
            4,
            13,
            "restart.max_delay (1s) must not be shorter than restart.delay (5s)",
        );
        assert_error_after_command(
            "[restart]\nmax_delay = \"1s\"\ndelay = \"5s\"\n",
            3,
            13,
            "must not be shorter",
        );
        assert_error_after_command(
            "[restart]\ndelay = \"1m\"\n",
            3,
            9,
            "restart.delay (60s) is longer than the default restart.max_delay (30s)",
        );
        let c = ok("command = [\"x\"]\n[restart]\ndelay = \"2s\"\nmax_delay = \"2s\"\nreset_after = \"0\"\n");
        assert_eq!(c.restart.delay, c.restart.max_delay);
        assert_eq!(c.restart.reset_after, Duration::ZERO);
        // an invalid delay is reported once, without a comparison error
        assert_error_after_command(
            "[restart]\ndelay = \"1x\"\nmax_delay = \"1ms\"\n",
            3,
            9,
            "unknown unit `x`",
        );
    }

    #[test]
    fn reload_batch() {
        let batch = |b: &str| {
            ok(&format!("command = [\"x\"]\nreload.batch = {b}\n"))
                .reload
                .batch
        };
        assert_eq!(batch("3"), Batch::Count(3));
        assert_eq!(batch("\"1%\""), Batch::Percent(1));
        assert_eq!(batch("\"100%\""), Batch::Percent(100));
        assert_error_after_command(
            "reload.batch = 0\n",
            2,
            16,
            "reload.batch: must be at least 1, found 0",
        );
        assert_error_after_command(
            "reload.batch = \"0%\"\n",
            2,
            16,
            "reload.batch: percentage must be between 1% and 100%",
        );
        assert_error_after_command("reload.batch = \"101%\"\n", 2, 16, "between 1% and 100%");
        assert_error_after_command(
            "reload.batch = \"half\"\n",
            2,
            16,
            "reload.batch: expected an integer or a percentage like \"25%\", found \"half\"",
        );
        assert_error_after_command(
            "reload.batch = \"5\"\n",
            2,
            16,
            "expected an integer or a percentage",
        );
        assert_error_after_command("reload.batch = 0.5\n", 2, 16, "found a float");
    }

    #[test]
    fn batch_slots() {
        assert_eq!(Batch::Count(1).slots(10), 1);
        assert_eq!(Batch::Count(3).slots(10), 3);
        assert_eq!(Batch::Count(30).slots(10), 10);
        assert_eq!(Batch::Count(5).slots(0), 1);
        assert_eq!(Batch::Percent(25).slots(10), 3);
        assert_eq!(Batch::Percent(25).slots(8), 2);
        assert_eq!(Batch::Percent(50).slots(3), 2);
        assert_eq!(Batch::Percent(1).slots(3), 1);
        assert_eq!(Batch::Percent(100).slots(7), 7);
        assert_eq!(Batch::Percent(10).slots(0), 1);
        assert_eq!(Batch::Percent(100).slots(u32::MAX), u32::MAX);
    }

    #[test]
    fn limits_max_memory() {
        let mem = |m: &str| {
            ok(&format!("command = [\"x\"]\n[limits]\nmax_memory = {m}\n"))
                .limits
                .max_memory
        };
        assert_eq!(mem("\"512M\""), Some(512 << 20));
        assert_eq!(mem("1048576"), Some(1 << 20));
        assert_error_after_command(
            "[limits]\nmax_memory = 0\n",
            3,
            14,
            "limits.max_memory: must be greater than 0",
        );
        assert_error_after_command(
            "[limits]\nmax_memory = \"0K\"\n",
            3,
            14,
            "must be greater than 0",
        );
        assert_error_after_command(
            "[limits]\nmax_memory = -5\n",
            3,
            14,
            "must be greater than 0",
        );
        assert_error_after_command(
            "[limits]\nmax_memory = \"12X\"\n",
            3,
            14,
            "limits.max_memory: invalid size \"12X\": unknown unit `X`",
        );
    }

    #[test]
    fn logs_priority() {
        let prio = |p: &str| {
            ok(&format!(
                "command = [\"x\"]\n[logs]\nstderr_priority = {p}\n"
            ))
            .logs
            .stderr_priority
        };
        let names = [
            ("emerg", 0),
            ("alert", 1),
            ("crit", 2),
            ("err", 3),
            ("error", 3),
            ("warning", 4),
            ("warn", 4),
            ("notice", 5),
            ("info", 6),
            ("debug", 7),
        ];
        for (name, level) in names {
            assert_eq!(prio(&format!("\"{name}\"")), level, "{name}");
        }
        assert_eq!(prio("0"), 0);
        assert_eq!(prio("7"), 7);
        assert_error_after_command(
            "[logs]\nstderr_priority = 8\n",
            3,
            19,
            "logs.stderr_priority: must be between 0 and 7, found 8",
        );
        assert_error_after_command(
            "[logs]\nstderr_priority = \"loud\"\n",
            3,
            19,
            "logs.stderr_priority: expected a syslog level",
        );
        assert_error_after_command(
            "[logs]\nstderr_priority = \"infoo\"\n",
            3,
            19,
            "did you mean \"info\"?",
        );
    }

    #[test]
    fn service_table() {
        let c = ok("command = [\"x\"]\n[service]\nwatchdog = \"20s\"\n");
        assert_eq!(c.service.watchdog, Some(Duration::from_secs(20)));
        assert_error_after_command(
            "[service]\nuser = \"\"\n",
            3,
            8,
            "service.user: invalid name \"\"",
        );
        assert_error_after_command(
            "[service]\ngroup = 0\n",
            3,
            9,
            "service.group: expected a string, found an integer",
        );
        assert_error_after_command(
            "[service]\nwatchdog = \"soon\"\n",
            3,
            12,
            "service.watchdog: invalid duration \"soon\"",
        );
    }

    #[test]
    fn many_errors_reported_sorted() {
        let text = r#"workers = 0
wrkers = 2
[stop]
timeout = 30
signal = "SIGFOO"
[[listen]]
name = "a:b"
address = "localhost:80"
[limits]
max_memory = "lots"
"#;
        let e = parse(text).unwrap_err();
        let got: Vec<(usize, usize)> = e.diagnostics.iter().map(|d| (d.line, d.col)).collect();
        assert_eq!(
            got,
            [
                (1, 1),
                (1, 11),
                (2, 1),
                (4, 11),
                (5, 10),
                (7, 8),
                (8, 11),
                (10, 14)
            ],
            "{e}"
        );
        let shown = e.to_string();
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(lines.len(), 8);
        assert!(!shown.ends_with('\n'));
        assert!(lines[0].starts_with("/etc/corral/api.toml:1:1: missing required key `command`"));
        assert_eq!(
            lines[2],
            "/etc/corral/api.toml:2:1: unknown key `wrkers` in the top level; did you mean `workers`?"
        );
        assert_eq!(
            lines[3],
            "/etc/corral/api.toml:4:11: stop.timeout: expected a string like \"30s\", found an integer"
        );
    }

    #[test]
    fn syntax_errors() {
        let (line, col, message) = error("command = [\"x\"]\nworkers = = 3\n");
        assert_eq!((line, col), (2, 11), "{message}");
        assert!(message.starts_with("TOML syntax error: "), "{message}");
        assert!(!message.contains('\n'));

        let (line, col, message) = error("command = [\"x\"]\n[stop]\n[stop]\n");
        assert_eq!((line, col), (3, 1), "{message}");
        assert!(message.contains("duplicate key"), "{message}");

        // columns are characters: "é" is two bytes
        let (line, col, _) = error("command = [\"é\"] x\n");
        assert_eq!((line, col), (1, 17));

        // only the syntax error is reported, not the missing command
        let (line, col, _) = error("workers = [\n");
        assert_eq!(line, 2);
        assert_eq!(col, 1);
    }

    #[test]
    fn app_names() {
        let app = |path: &str| Config::parse(Path::new(path), "command = [\"x\"]\n").map(|c| c.app);
        assert_eq!(app("/etc/corral/api.toml").unwrap(), "api");
        assert_eq!(app("relative/my-app_2.v1.toml").unwrap(), "my-app_2.v1");
        assert_eq!(app("noext").unwrap(), "noext");
        for bad in [
            "/etc/corral/.toml",
            "/etc/corral/.hidden.toml",
            "my app.toml",
            "caf\u{e9}.toml",
            "a@b.toml",
            "",
        ] {
            let e = app(bad).unwrap_err();
            assert_eq!(e.diagnostics.len(), 1, "{bad}: {e}");
            let d = &e.diagnostics[0];
            assert_eq!((d.line, d.col), (1, 1), "{bad}");
            assert!(d.message.contains("app name"), "{bad}: {}", d.message);
        }
        // reported together with the other problems
        let e = Config::parse(Path::new("bad name.toml"), "workers = 0\n").unwrap_err();
        assert_eq!(e.diagnostics.len(), 3, "{e}");
    }

    #[test]
    fn load_reads_files() {
        let dir = std::env::temp_dir().join(format!("corral-config-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("web.toml");
        fs::write(&path, "command = [\"x\"]\nworkers = 2\n").unwrap();
        let c = Config::load(&path).unwrap();
        assert_eq!(c.app, "web");
        assert_eq!(c.path, path);
        assert_eq!(c.workers, WorkerCount::Count(2));

        let missing = dir.join("missing.toml");
        let e = Config::load(&missing).unwrap_err();
        assert_eq!(e.diagnostics.len(), 1);
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("{}: cannot read: ", missing.display())),
            "{text}"
        );
        assert!(text.contains("No such file"), "{text}");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn durations() {
        // Capped at a year, so no deadline computed from them can overflow.
        assert_eq!(
            parse_duration("8000h"),
            Ok(Duration::from_secs(8000 * 3600))
        );
        assert!(parse_duration("9000h")
            .unwrap_err()
            .contains("too large (at most a year)"));
        assert!(parse_duration("3000000000000000h")
            .unwrap_err()
            .contains("too large"));
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("30s"), Duration::from_secs(30));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("2min"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1m30s"), Duration::from_secs(90));
        assert_eq!(ok("1h 2m 3s"), Duration::from_secs(3723));
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("0.25h"), Duration::from_secs(900));
        assert_eq!(ok("100us"), Duration::from_micros(100));
        assert_eq!(ok("1s500ms"), Duration::from_millis(1500));
        assert_eq!(ok("0"), Duration::ZERO);
        assert_eq!(ok("0s"), Duration::ZERO);
        assert_eq!(ok(" 5s "), Duration::from_secs(5));
        let err = |s: &str| parse_duration(s).unwrap_err();
        assert_eq!(err("30"), "missing unit (e.g. \"30s\")");
        assert_eq!(err("1.5"), "missing unit (e.g. \"30s\")");
        assert!(err("").contains("empty"));
        assert!(err("30x").contains("unknown unit `x`"));
        assert!(err("30 sec").contains("unknown unit `sec`"));
        assert!(err("1m30").contains("missing unit after 30"));
        assert!(err("s").contains("expected a number"));
        assert!(err("1.s").contains("expected a number"));
        assert!(err(".5s").contains("expected a number"));
        assert!(err("1..5s").contains("expected a number"));
        assert!(err("-1s").contains("negative"));
        assert!(err("99999999999999999999999h").contains("too large"));
        assert!(err("1S").contains("unknown unit `S`"));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("300M"), Ok(300 << 20));
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("1024B"), Ok(1024));
        assert_eq!(parse_size("1.5G"), Ok(1536 << 20));
        assert_eq!(parse_size("512MB"), Ok(512 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("512 M"), Ok(512 << 20));
        assert_eq!(parse_size("4k"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("12X").unwrap_err().contains("unknown unit `X`"));
        assert!(parse_size("1.5").unwrap_err().contains("whole number"));
        assert!(parse_size("1Mb").is_err());
        assert!(parse_size("1b").is_err());
        assert!(parse_size("1GiBB").is_err());
        assert!(parse_size("-1G").is_err());
        assert!(parse_size("99999999T").unwrap_err().contains("too large"));
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("SIGTERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("SIGQUIT"), Ok(Signal::SIGQUIT));
        assert_eq!(parse_signal("INT"), Ok(Signal::SIGINT));
        assert_eq!(parse_signal("USR2"), Ok(Signal::SIGUSR2));
        assert!(parse_signal("term")
            .unwrap_err()
            .contains("upper case, like \"TERM\""));
        assert!(parse_signal("SIGterm").unwrap_err().contains("upper case"));
        assert!(parse_signal("SIGFOO")
            .unwrap_err()
            .contains("unknown signal \"SIGFOO\""));
        assert!(parse_signal("15").is_err());
        assert!(parse_signal("").is_err());
        assert!(parse_signal("SIG").is_err());
    }

    #[test]
    fn edit_distance_and_hints() {
        assert_eq!(levenshtein("", ""), 0);
        assert_eq!(levenshtein("abc", ""), 3);
        assert_eq!(levenshtein("kitten", "sitting"), 3);
        assert_eq!(levenshtein("worker", "workers"), 1);
        assert_eq!(levenshtein("flaw", "lawn"), 2);
        assert_eq!(suggest("worker", TOP_KEYS), Some("workers"));
        assert_eq!(suggest("comand", TOP_KEYS), Some("command"));
        assert_eq!(suggest("enviroment", TOP_KEYS), Some("environment"));
        assert_eq!(suggest("xyz", TOP_KEYS), None);
        assert_eq!(suggest("a", &["b"]), None);
    }

    #[test]
    fn display_of_errors() {
        let e = ConfigError {
            file: PathBuf::from("x.toml"),
            diagnostics: vec![
                Diagnostic {
                    line: 1,
                    col: 2,
                    message: "one".into(),
                },
                Diagnostic {
                    line: 3,
                    col: 4,
                    message: "two".into(),
                },
            ],
        };
        assert_eq!(e.to_string(), "x.toml:1:2: one\nx.toml:3:4: two");
        let boxed: Box<dyn std::error::Error> = Box::new(e);
        assert!(boxed.to_string().starts_with("x.toml:1:2"));
    }
}
