//! The checker: walks a parsed TOML document, builds a [`Config`] and collects a
//! diagnostic, with its position, for every problem; also the key tables and the
//! "did you mean" suggestions.

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml_edit::{Item, Key, TableLike, Value};

use super::diagnostics::Earliest;
use super::environment_file::MAX_ENVIRONMENT_FILES;
use super::values::{parse_address, parse_duration, parse_signal, parse_size};
use super::{
    Address, Agent, Balance, Batch, Config, Diagnostic, EnvironmentFile, Limits, Listen, Logs,
    Node, Readiness, ReadinessMode, Reload, Restart, RestartPolicy, Service, Stop, WorkerCount,
};

/// Environment variables corral sets itself; apps may not set them.
pub(super) const RESERVED_ENV: &[&str] = &[
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

/// Whether corral sets the variable `name` itself, so that an app may not.
pub fn reserved_env(name: &str) -> bool {
    RESERVED_ENV.contains(&name) || name.starts_with(RESERVED_ENV_PREFIX)
}

pub(super) const TOP_KEYS: &[&str] = &[
    "command",
    "directory",
    "workers",
    "environment",
    "environment_file",
    "listen",
    "readiness",
    "watchdog",
    "stop",
    "restart",
    "reload",
    "limits",
    "node",
    "logs",
    "service",
    "agent",
];
pub(super) const AGENT_KEYS: &[&str] = &[
    "command",
    "directory",
    "environment",
    "workers_wait",
    "readiness",
    "watchdog",
    "stop",
    "restart",
];
pub(super) const LISTEN_KEYS: &[&str] = &[
    "name", "address", "backlog", "balance", "mode", "owner", "group",
];
pub(super) const READINESS_KEYS: &[&str] = &["mode", "timeout"];
pub(super) const WATCHDOG_KEYS: &[&str] = &["timeout"];
pub(super) const STOP_KEYS: &[&str] = &["signal", "message", "timeout", "drain"];
pub(super) const AGENT_STOP_KEYS: &[&str] = &["signal", "message", "timeout"];
pub(super) const RESTART_KEYS: &[&str] = &[
    "policy",
    "delay",
    "max_delay",
    "reset_after",
    "max_failures",
    "interval",
    "stop_exit_codes",
];
pub(super) const RELOAD_KEYS: &[&str] = &["batch"];
pub(super) const LIMITS_KEYS: &[&str] = &["max_memory"];
pub(super) const LOGS_KEYS: &[&str] = &["stderr_priority"];
pub(super) const NODE_KEYS: &[&str] = &["preload"];
pub(super) const SERVICE_KEYS: &[&str] = &["user", "group", "watchdog"];

/// Sections and their keys, for hints about keys put at the top level.
const SECTIONS: &[(&str, &[&str])] = &[
    ("[[listen]]", LISTEN_KEYS),
    ("[readiness]", READINESS_KEYS),
    ("[watchdog]", WATCHDOG_KEYS),
    ("[stop]", STOP_KEYS),
    ("[restart]", RESTART_KEYS),
    ("[reload]", RELOAD_KEYS),
    ("[limits]", LIMITS_KEYS),
    ("[node]", NODE_KEYS),
    ("[logs]", LOGS_KEYS),
    ("[service]", SERVICE_KEYS),
    ("[agent]", AGENT_KEYS),
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
/// Listener names end up in unit names (corral@APP:NAME.socket, at most 255 characters with
/// the app name, itself at most 128).
const MAX_LISTEN_NAME: usize = 64;

const DURATION_EXAMPLE: &str = "a string like \"30s\"";

/// Collects diagnostics while walking the document.
pub(super) struct Checker<'a> {
    text: &'a str,
    /// Where the lines of `text` start, to place diagnostics without rescanning it.
    positions: Positions<'a>,
    /// The earliest problems by position, and how many more (diagnostics.rs).
    pub(super) diags: Earliest,
    /// Where `stop.message` was set, if it was.
    stop_message_at: Option<Option<Range<usize>>>,
    /// Where `readiness.mode = "listen"` was set, if it was.
    listen_mode_at: Option<Option<Range<usize>>>,
    /// `readiness.mode` was given but invalid.
    readiness_mode_bad: bool,
}

/// Turns byte offsets into 1-based (line, column in characters) in time independent of the
/// offset: one pass over the text notes where each line starts and how many characters come
/// before every `BLOCK`th byte, so a file with a hundred thousand problems costs no more to
/// report than to read (finding each position from the start of the text cost their product).
pub(super) struct Positions<'a> {
    text: &'a str,
    /// Byte offset where each line starts; the first is 0.
    line_starts: Vec<usize>,
    /// `chars[i]` is the number of characters in `text[..i * BLOCK]`.
    chars: Vec<usize>,
}

impl<'a> Positions<'a> {
    const BLOCK: usize = 64;

    pub(super) fn new(text: &'a str) -> Self {
        let bytes = text.as_bytes();
        let mut line_starts = vec![0];
        line_starts.extend(
            bytes
                .iter()
                .enumerate()
                .filter(|(_, &b)| b == b'\n')
                .map(|(i, _)| i + 1),
        );
        let mut chars = Vec::with_capacity(bytes.len() / Self::BLOCK + 2);
        let mut n = 0;
        for block in bytes.chunks(Self::BLOCK) {
            chars.push(n);
            n += count_chars(block);
        }
        chars.push(n);
        Positions {
            text,
            line_starts,
            chars,
        }
    }

    /// 1-based (line, column in characters) of a byte offset; an offset past the end is the
    /// end, one inside a character is that character.
    pub(super) fn pos(&self, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(self.text.len());
        while !self.text.is_char_boundary(offset) {
            offset -= 1;
        }
        // line_starts[0] == 0 <= offset, so line >= 1.
        let line = self.line_starts.partition_point(|&start| start <= offset);
        let start = self.line_starts[line - 1];
        (
            line,
            self.chars_before(offset) - self.chars_before(start) + 1,
        )
    }

    /// Characters in `text[..offset]`, `offset` on a character boundary.
    fn chars_before(&self, offset: usize) -> usize {
        let block = offset / Self::BLOCK;
        self.chars[block] + count_chars(&self.text.as_bytes()[block * Self::BLOCK..offset])
    }
}

/// Characters in UTF-8 `bytes` cut on character boundaries: the bytes that do not continue one.
fn count_chars(bytes: &[u8]) -> usize {
    bytes.iter().filter(|&&b| b & 0xC0 != 0x80).count()
}

/// Names and addresses of the listeners so far, with their header lines.
#[derive(Default)]
/// The listeners' names and addresses so far, with the line of each: a duplicate is found in
/// constant time (a file may hold tens of thousands of listeners).
struct Seen {
    names: std::collections::HashMap<String, usize>,
    addresses: std::collections::HashMap<Address, usize>,
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
    pub(super) fn new(text: &'a str) -> Self {
        Checker {
            text,
            positions: Positions::new(text),
            diags: Earliest::default(),
            stop_message_at: None,
            listen_mode_at: None,
            readiness_mode_bad: false,
        }
    }

    /// 1-based (line, column in characters) of a byte offset.
    fn pos(&self, offset: usize) -> (usize, usize) {
        self.positions.pos(offset)
    }

    fn line_of(&self, span: &Option<Range<usize>>) -> usize {
        span.as_ref().map_or(1, |s| self.pos(s.start).0)
    }

    pub(super) fn error(&mut self, span: Option<Range<usize>>, message: String) {
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

    pub(super) fn document(&mut self, path: &Path, app: String, root: &dyn TableLike) -> Config {
        let mut config = Config {
            path: path.to_path_buf(),
            app,
            command: Vec::new(),
            directory: None,
            workers: WorkerCount::Count(1),
            environment: Vec::new(),
            environment_files: Vec::new(),
            listen: Vec::new(),
            readiness: Readiness::default(),
            watchdog: None,
            stop: Stop::default(),
            restart: Restart::default(),
            reload: Reload::default(),
            limits: Limits::default(),
            node: Node::default(),
            logs: Logs::default(),
            service: Service::default(),
            agent: None,
        };
        let mut has_command = false;
        // Read last: what it does not set is the app's, wherever in the file that is.
        let mut agent = None;
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
                "environment_file" => config.environment_files = self.environment_files(key, item),
                "listen" => config.listen = self.listeners(key, item),
                "readiness" => self.readiness("", key, item, &mut config.readiness),
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
                "stop" => self.stop("", key, item, &mut config.stop),
                "restart" => self.restart("", key, item, &mut config.restart),
                "agent" => agent = Some((key, item)),
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
                "node" => {
                    for (k, v) in self.section("node", key, item) {
                        match k.get() {
                            "preload" => {
                                if let Some(b) = v.as_bool() {
                                    config.node.preload = b;
                                } else {
                                    self.type_error("node.preload", k, v, "true or false");
                                }
                            }
                            _ => self.unknown_key(k, v, NODE_KEYS, "[node]"),
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
            if !config.node_ipc() && !self.readiness_mode_bad {
                self.error(
                    at,
                    "stop.message: only allowed with readiness.mode = \"node-ipc\" or \
                     [node] preload = true (it is sent over the Node.js IPC channel)"
                        .into(),
                );
            }
        }
        if let Some(at) = self.listen_mode_at.take() {
            if config.listen.is_empty() {
                self.error(
                    at,
                    "readiness.mode = \"listen\": needs a [[listen]] (a worker is ready once it \
                     waits for connections on one of its listeners)"
                        .into(),
                );
            }
        }
        if let Some((key, item)) = agent {
            config.agent = self.agent(key, item, &config);
        }
        config
    }

    /// `[agent]`, over the app's settings in `app`.
    fn agent(&mut self, key: &Key, item: &Item, app: &Config) -> Option<Agent> {
        let mut readiness = app.readiness.clone();
        if readiness.mode == ReadinessMode::Listen {
            readiness.mode = ReadinessMode::Exec;
        }
        let mut agent = Agent {
            command: Vec::new(),
            directory: app.directory.clone(),
            environment: Vec::new(),
            workers_wait: true,
            readiness,
            watchdog: None,
            stop: app.stop.clone(),
            restart: app.restart.clone(),
        };
        let mut has_command = false;
        let mut own_message = false;
        for (k, v) in self.section("agent", key, item) {
            match k.get() {
                "command" => {
                    has_command = true;
                    if let Some(command) = self.command(k, v) {
                        agent.command = command;
                    }
                }
                "directory" => {
                    if let Some(d) = self.directory(k, v) {
                        agent.directory = Some(d);
                    }
                }
                "environment" => agent.environment = self.environment(k, v),
                "workers_wait" => match v.as_bool() {
                    Some(b) => agent.workers_wait = b,
                    None => self.type_error("agent.workers_wait", k, v, "true or false"),
                },
                "readiness" => {
                    self.readiness("agent.", k, v, &mut agent.readiness);
                    if let Some(at) = self.listen_mode_at.take() {
                        self.error(
                            at,
                            "agent.readiness.mode = \"listen\": the agent has no listeners \
                             (choose \"notify\", \"node-ipc\" or \"exec\")"
                                .into(),
                        );
                    }
                }
                "watchdog" => {
                    for (wk, wv) in self.section("agent.watchdog", k, v) {
                        match wk.get() {
                            "timeout" => {
                                agent.watchdog =
                                    self.duration("agent.watchdog.timeout", wk, wv, false)
                            }
                            _ => self.unknown_key(wk, wv, WATCHDOG_KEYS, "[agent.watchdog]"),
                        }
                    }
                }
                "stop" => {
                    let before = self.stop_message_at.take();
                    self.stop("agent.", k, v, &mut agent.stop);
                    if let Some(at) = std::mem::replace(&mut self.stop_message_at, before) {
                        own_message = true;
                        if agent.readiness.mode != ReadinessMode::NodeIpc {
                            self.error(
                                at,
                                "agent.stop.message: only allowed with agent.readiness.mode = \
                                 \"node-ipc\" (it is sent over the Node.js IPC channel)"
                                    .into(),
                            );
                        }
                    }
                }
                "restart" => self.restart("agent.", k, v, &mut agent.restart),
                _ => self.unknown_key(k, v, AGENT_KEYS, "[agent]"),
            }
        }
        // The app's stop.message reaches the agent only over a channel of its own: the agent
        // gets no preload (config/mod.rs agent_config), so only readiness "node-ipc" opens one.
        if !own_message && agent.readiness.mode != ReadinessMode::NodeIpc {
            agent.stop.message = None;
        }
        if !has_command {
            self.error(
                loc(key, item),
                "[agent]: missing required key `command` (the agent's program, e.g. \
                 command = [\"node\", \"agent.js\"])"
                    .into(),
            );
            return None;
        }
        Some(agent)
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
            if reserved_env(name) {
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

    /// `environment_file`: a path, or an array of them, each absolute and optionally after a
    /// `-` (as systemd's `EnvironmentFile=`). The files are read later, by `Config::load`.
    fn environment_files(&mut self, key: &Key, item: &Item) -> Vec<EnvironmentFile> {
        const NAME: &str = "environment_file";
        let values: Vec<&Value> = match item.as_value() {
            Some(value @ Value::String(_)) => vec![value],
            Some(Value::Array(array)) => array.iter().collect(),
            _ => {
                self.type_error(
                    NAME,
                    key,
                    item,
                    "a path or an array of paths like [\"/etc/corral/api.env\"]",
                );
                return Vec::new();
            }
        };
        if values.len() > MAX_ENVIRONMENT_FILES {
            self.error(
                loc(key, item),
                format!(
                    "{NAME}: at most {MAX_ENVIRONMENT_FILES} files, found {}",
                    values.len()
                ),
            );
            return Vec::new();
        }
        let mut files = Vec::new();
        for value in values {
            let Some(s) = value.as_str() else {
                self.error(
                    value.span(),
                    format!(
                        "{NAME}: expected every element to be a string, found {}",
                        describe_value(value)
                    ),
                );
                continue;
            };
            let (optional, path) = match s.strip_prefix('-') {
                Some(path) => (true, path),
                None => (false, s),
            };
            // Absolute, as systemd requires: a relative path could be taken from the config's
            // directory, corral's or the workers' (`directory`), and an operator reading it
            // should not have to know which.
            let problem = if path.contains('\0') {
                Some("must not contain NUL")
            } else if !path.starts_with('/') {
                Some(
                    "must be an absolute path, like \"/etc/corral/api.env\" (a leading '-' \
                     makes it optional: \"-/etc/corral/api.env\")",
                )
            } else if path.contains(['*', '?', '[']) {
                Some("wildcards are not supported: name each file")
            } else {
                None
            };
            if let Some(problem) = problem {
                self.error(
                    value.span(),
                    format!("{NAME} \"{}\": {problem}", s.escape_debug()),
                );
                continue;
            }
            let (line, col) = value.span().map_or((1, 1), |span| self.pos(span.start));
            files.push(EnvironmentFile {
                path: PathBuf::from(path),
                optional,
                line,
                col,
            });
        }
        files
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
        let mut balance: Option<(Balance, Option<Range<usize>>)> = None;
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
                "balance" => {
                    // true and false, as before "source" was there: "even" and "shared".
                    let b = match v.as_bool() {
                        Some(true) => Some(Balance::Even),
                        Some(false) => Some(Balance::Shared),
                        None if v.as_str().is_none() => {
                            let what = "true, false, \"even\", \"source\" or \"shared\"";
                            self.type_error("listen.balance", k, v, what);
                            None
                        }
                        None => self.choice(
                            "listen.balance",
                            k,
                            v,
                            &[
                                ("even", Balance::Even),
                                ("source", Balance::Source),
                                ("shared", Balance::Shared),
                            ],
                        ),
                    };
                    match b {
                        Some(b) => balance = Some((b, loc(k, v))),
                        None => ok = false,
                    }
                }
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
        if let (Some(Address::Unix(path)), Some((Balance::Even | Balance::Source, at))) =
            (&address, &balance)
        {
            self.error(
                at.clone(),
                format!(
                    "listen.balance: only applies to TCP addresses; the workers share the unix \
                     socket {}",
                    path.display()
                ),
            );
            ok = false;
        }
        if !ok {
            return None;
        }
        let tcp = matches!(address, Some(Address::Tcp(_)));
        Some(Listen {
            name: name?,
            address: address?,
            backlog,
            mode,
            owner,
            group,
            balance: balance.filter(|_| tcp).map_or(Balance::Shared, |(b, _)| b),
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
        } else if !name.chars().all(super::name_char) || name.starts_with(['.', '-']) {
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
        if let Some(first) = seen.names.get(name) {
            self.error(
                loc(key, item),
                format!("listen.name \"{name}\" is already used by the listener at line {first}"),
            );
            return None;
        }
        seen.names.insert(name.to_string(), line);
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
        if let Some(first) = seen.addresses.get(&address) {
            self.error(
                loc(key, item),
                format!("listen.address {address} is already used by the listener at line {first}"),
            );
            return None;
        }
        seen.addresses.insert(address.clone(), line);
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

    fn readiness(&mut self, prefix: &str, key: &Key, item: &Item, readiness: &mut Readiness) {
        for (k, v) in self.section(&format!("{prefix}readiness"), key, item) {
            match k.get() {
                "mode" => {
                    let choices = [
                        ("notify", ReadinessMode::Notify),
                        ("exec", ReadinessMode::Exec),
                        ("node-ipc", ReadinessMode::NodeIpc),
                        ("listen", ReadinessMode::Listen),
                    ];
                    match self.choice(&format!("{prefix}readiness.mode"), k, v, &choices) {
                        Some(mode) => {
                            readiness.mode = mode;
                            if mode == ReadinessMode::Listen {
                                self.listen_mode_at = Some(loc(k, v));
                            }
                        }
                        None => self.readiness_mode_bad = true,
                    }
                }
                "timeout" => {
                    if let Some(d) =
                        self.duration(&format!("{prefix}readiness.timeout"), k, v, false)
                    {
                        readiness.timeout = d;
                    }
                }
                _ => self.unknown_key(k, v, READINESS_KEYS, &format!("[{prefix}readiness]")),
            }
        }
    }

    fn stop(&mut self, prefix: &str, key: &Key, item: &Item, stop: &mut Stop) {
        for (k, v) in self.section(&format!("{prefix}stop"), key, item) {
            match k.get() {
                "signal" => {
                    let Some(s) = v.as_str() else {
                        self.type_error(
                            &format!("{prefix}stop.signal"),
                            k,
                            v,
                            "a signal name like \"SIGTERM\"",
                        );
                        continue;
                    };
                    match parse_signal(s) {
                        Ok(signal) => stop.signal = signal,
                        Err(e) => self.error(loc(k, v), format!("stop.signal: {e}")),
                    }
                }
                "message" => {
                    if let Some(message) = self.string(&format!("{prefix}stop.message"), k, v) {
                        stop.message = Some(message.to_string());
                        self.stop_message_at = Some(loc(k, v));
                    }
                }
                "timeout" => {
                    if let Some(d) = self.duration(&format!("{prefix}stop.timeout"), k, v, false) {
                        stop.timeout = d;
                    }
                }
                // The agent has no listeners to drain.
                "drain" if prefix.is_empty() => {
                    if let Some(d) = self.duration("stop.drain", k, v, true) {
                        stop.drain = d;
                    }
                }
                _ if prefix.is_empty() => self.unknown_key(k, v, STOP_KEYS, "[stop]"),
                _ => self.unknown_key(k, v, AGENT_STOP_KEYS, &format!("[{prefix}stop]")),
            }
        }
    }

    fn restart(&mut self, prefix: &str, key: &Key, item: &Item, restart: &mut Restart) {
        // (given, valid value, position)
        let mut delay: (bool, Option<Duration>, Option<Range<usize>>) = (false, None, None);
        let mut max_delay: (bool, Option<Duration>, Option<Range<usize>>) = (false, None, None);
        for (k, v) in self.section(&format!("{prefix}restart"), key, item) {
            match k.get() {
                "policy" => {
                    let choices = [
                        ("always", RestartPolicy::Always),
                        ("on-failure", RestartPolicy::OnFailure),
                        ("never", RestartPolicy::Never),
                    ];
                    if let Some(policy) =
                        self.choice(&format!("{prefix}restart.policy"), k, v, &choices)
                    {
                        restart.policy = policy;
                    }
                }
                "delay" => {
                    delay = (
                        true,
                        self.duration(&format!("{prefix}restart.delay"), k, v, false),
                        loc(k, v),
                    );
                }
                "max_delay" => {
                    max_delay = (
                        true,
                        self.duration(&format!("{prefix}restart.max_delay"), k, v, false),
                        loc(k, v),
                    );
                }
                "reset_after" => {
                    if let Some(d) =
                        self.duration(&format!("{prefix}restart.reset_after"), k, v, true)
                    {
                        restart.reset_after = d;
                    }
                }
                "max_failures" => {
                    if let Some(n) =
                        self.int_in(&format!("{prefix}restart.max_failures"), k, v, 0, 100_000)
                    {
                        restart.max_failures = n as u32;
                    }
                }
                "interval" => {
                    if let Some(d) =
                        self.duration(&format!("{prefix}restart.interval"), k, v, false)
                    {
                        restart.interval = d;
                    }
                }
                "stop_exit_codes" => {
                    if let Some(codes) = self.exit_codes(k, v) {
                        restart.stop_exit_codes = codes;
                    }
                }
                _ => self.unknown_key(k, v, RESTART_KEYS, &format!("[{prefix}restart]")),
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
                        "{prefix}restart.max_delay ({:?}) must not be shorter than {prefix}restart.delay ({:?})",
                        restart.max_delay, restart.delay
                    ),
                );
            } else {
                self.error(
                    delay.2,
                    format!(
                        "{prefix}restart.delay ({:?}) is longer than the default {prefix}restart.max_delay ({:?}); \
                         set max_delay too",
                        restart.delay, restart.max_delay
                    ),
                );
            }
        }
    }

    /// `restart.stop_exit_codes`: an array of exit codes, 0 to 255.
    fn exit_codes(&mut self, key: &Key, item: &Item) -> Option<Vec<i32>> {
        const NAME: &str = "restart.stop_exit_codes";
        let Some(array) = item.as_array() else {
            self.type_error(NAME, key, item, "an array of exit codes like [0, 3]");
            return None;
        };
        let mut codes = Vec::new();
        let mut ok = true;
        for value in array.iter() {
            match value.as_integer() {
                Some(c) if (0..=255).contains(&c) => codes.push(c as i32),
                Some(c) => {
                    self.error(
                        value.span(),
                        format!("{NAME}: an exit code is 0 to 255, found {c}"),
                    );
                    ok = false;
                }
                None => {
                    self.error(
                        value.span(),
                        format!("{NAME}: expected integers, found {}", describe_value(value)),
                    );
                    ok = false;
                }
            }
        }
        ok.then_some(codes)
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

/// The candidate closest to `word`, if it is close enough to be a likely typo.
fn suggest<'c>(word: &str, candidates: &[&'c str]) -> Option<&'c str> {
    let lower = word.to_lowercase();
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .iter()
        .map(|c| (strsim::levenshtein(&lower, &c.to_lowercase()), *c))
        .filter(|(d, c)| *d <= limit && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_and_hints() {
        // The distance `suggest` measures with (edits over characters), pinned because its
        // limit on how far a hint may be is tuned to it.
        use strsim::levenshtein;
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
}
