//! PM2's app settings (PM2 7's ecosystem schema, and the records `pm2 save` writes) as a
//! corral app config. Every key is mapped, or reported with why it has no equivalent and what
//! to use instead; none is dropped silently.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::toml_out::{self, string, strings, Doc};

/// How the conversion goes: which `env_NAME` to apply, a port given on the command line.
pub struct Options {
    pub env_name: Option<String>,
    pub port: Option<u16>,
    pub base_dir: PathBuf,
    pub source: String,
    pub dump: bool,
    /// Who runs this import, when not root: PM2 runs apps as the user who runs `pm2`.
    pub current_user: Option<String>,
}

/// One app, converted.
pub struct Converted {
    pub name: String,
    pub toml: String,
    /// PM2 keys that became corral settings.
    pub mapped: Vec<String>,
    /// What a person should look at: approximations, settings with no equivalent that
    /// change behaviour, unknown keys.
    pub attention: Vec<String>,
    /// Keys with no equivalent that need nothing (or are PM2's bookkeeping), with why.
    pub notes: Vec<String>,
    /// Whether the config has a `[[listen]]` (so it has a socket unit).
    pub listens: bool,
}

/// Keys of PM2's own that have no meaning outside it (monitoring, Keymetrics, Windows), and
/// bookkeeping fields of its saved process list.
const NOT_NEEDED: &[(&str, &str)] = &[
    ("vizion", "PM2's versioning metadata"),
    ("pmx", "PM2's monitoring"),
    ("automation", "PM2's monitoring"),
    ("trace", "PM2's transaction tracing"),
    ("disable_trace", "PM2's transaction tracing"),
    ("v8", "PM2's monitoring"),
    ("event_loop_inspector", "PM2's monitoring"),
    ("deep_monitoring", "PM2's monitoring"),
    ("io", "PM2's APM (PM2.io)"),
    ("post_update", "Keymetrics' pull and upgrade"),
    ("install_url", "PM2 modules"),
    ("force", "corral runs one supervisor per app"),
    (
        "append_env_to_name",
        "the app's name is its config file's name",
    ),
    ("name_prefix", "the app's name is its config file's name"),
    ("windowsHide", "Windows only"),
    (
        "kill_retry_time",
        "corral sends SIGKILL once, at the stop timeout",
    ),
    (
        "treekill",
        "corral always stops a worker's whole process group",
    ),
    ("pid_file", "systemd and `corral status` know the pids"),
    ("pid", "systemd and `corral status` know the pids"),
    ("write", "PM2's own"),
    ("execute_command", "PM2's own"),
    (
        "autostart",
        "corral starts every worker; `systemctl enable` starts the app at boot",
    ),
    (
        "filter_env",
        "workers get corral's environment with `environment` added",
    ),
];

/// Fields PM2's saved process list holds about the process, not its settings.
const DUMP_BOOKKEEPING: &[&str] = &[
    "status",
    "pm_uptime",
    "created_at",
    "restart_time",
    "unstable_restarts",
    "versioning",
    "version",
    "km_link",
    "vizion_running",
    "NODE_APP_INSTANCE",
    "pm_pid_path",
    "pm_err_log_path",
    "pm_out_log_path",
    "pm_log_path",
    "unique_id",
    "exit_code",
    "node_version",
    "prev_restart_delay",
    "pm_id",
    "pmx_module",
    "_pm2_version",
];

/// Environment variables that the process PM2 ran in had, not the app's: a dump records the
/// whole environment of `pm2 start`.
fn inherited(name: &str) -> bool {
    const NAMES: &[&str] = &[
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "SHELL",
        "PWD",
        "OLDPWD",
        "SHLVL",
        "TERM",
        "LANG",
        "LANGUAGE",
        "MAIL",
        "HOSTNAME",
        "DISPLAY",
        "EDITOR",
        "VISUAL",
        "PAGER",
        "TZ",
        "_",
        "LS_COLORS",
        "COLORTERM",
        "TMPDIR",
        "SUDO_USER",
        "SUDO_UID",
        "SUDO_GID",
        "SUDO_COMMAND",
        "MOTD_SHOWN",
        "unique_id",
    ];
    const PREFIXES: &[&str] = &["LC_", "SSH_", "XDG_", "PM2_", "DBUS_", "TERM_", "npm_"];
    NAMES.contains(&name) || PREFIXES.iter().any(|p| name.starts_with(p))
}

/// PM2's interpreter for a script, by its extension (as PM2 chooses it when none is given).
fn interpreter_for(script: &str) -> Option<&'static str> {
    let ext = Path::new(script).extension()?.to_str()?;
    Some(match ext {
        "js" | "cjs" | "mjs" => "node",
        "py" => "python3",
        "rb" => "ruby",
        "php" => "php",
        "sh" => "bash",
        "pl" => "perl",
        "ts" => "ts-node",
        "coffee" => "coffee",
        _ => return None,
    })
}

/// A path without its `.` components (`cwd/./server.js`), as a person would write it.
fn tidy(p: &Path) -> PathBuf {
    p.components().collect()
}

fn script_ext(script: &str) -> &str {
    Path::new(script)
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
}

/// Milliseconds as a corral duration.
fn ms(n: u64) -> String {
    if n % 60_000 == 0 && n > 0 {
        format!("{}m", n / 60_000)
    } else if n % 1000 == 0 && n > 0 {
        format!("{}s", n / 1000)
    } else {
        format!("{n}ms")
    }
}

/// PM2's `min_uptime`: a number of ms, or "10s", "2m", "1h", as milliseconds.
fn duration_ms(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let s = s.trim();
            let at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let n: u64 = s[..at].parse().ok()?;
            let unit = match &s[at..] {
                "" | "ms" => 1,
                "s" => 1000,
                "m" => 60_000,
                "h" => 3_600_000,
                _ => return None,
            };
            n.checked_mul(unit)
        }
        _ => None,
    }
}

/// PM2's `max_memory_restart`: bytes, or "300M", "1G", "512K" (powers of 1024, as PM2 counts).
fn size(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => {
            let b = n.as_u64()?;
            for (unit, shift) in [("G", 30), ("M", 20), ("K", 10)] {
                if b >= 1 << shift && b % (1 << shift) == 0 {
                    return Some(format!("{}{unit}", b >> shift));
                }
            }
            Some(b.to_string())
        }
        Value::String(s) => {
            let s = s.trim().to_ascii_uppercase();
            let s = s.strip_suffix('B').unwrap_or(&s);
            let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
            let n: u64 = num.parse().ok()?;
            match unit {
                "" => size(&Value::from(n)),
                "K" | "M" | "G" => Some(format!("{n}{unit}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A JSON value as the text an environment variable would get (PM2 stringifies objects).
fn env_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// Arguments, from a list or a string split at spaces (PM2 splits a string the same way).
fn args_of(v: &Value) -> Vec<String> {
    match v {
        Value::Array(a) => a.iter().map(env_text).collect(),
        Value::String(s) => s.split_whitespace().map(str::to_string).collect(),
        Value::Null => Vec::new(),
        other => vec![env_text(other)],
    }
}

/// PM2's names for the same key (its schema's aliases), to the name used here.
fn canonical(key: &str) -> &str {
    match key {
        "exec" => "script",
        "interpreter" => "exec_interpreter",
        "interpreterArgs" | "interpreter_args" => "node_args",
        "out" | "output" | "out_log" => "out_file",
        "error" | "err" | "err_file" | "err_log" => "error_file",
        "log" => "log_file",
        "cron" => "cron_restart",
        "combine_logs" => "merge_logs",
        "user" => "uid",
        k => k,
    }
}

fn take(keys: &mut BTreeMap<String, Value>, k: &str) -> Option<Value> {
    keys.remove(k)
}

/// Converts one app. `instances_in_dump` is the number of processes a dump held for it.
pub fn convert(
    app: &Map<String, Value>,
    instances_in_dump: Option<u32>,
    opts: &Options,
) -> Result<Converted, String> {
    let mut keys: BTreeMap<String, Value> = BTreeMap::new();
    // The names the file used, for comments and the report: `interpreter`, not PM2's
    // `exec_interpreter`.
    let mut written_as: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in app {
        keys.insert(canonical(k).to_string(), v.clone());
        written_as.insert(canonical(k).to_string(), k.clone());
    }
    let say = |k: &str| written_as.get(k).cloned().unwrap_or_else(|| k.to_string());
    let mut doc = Doc::default();
    let mut mapped = Vec::new();
    let mut attention = Vec::new();
    let mut notes = Vec::new();

    // ---- what to run ----
    let script = if opts.dump {
        take(&mut keys, "pm_exec_path").or_else(|| take(&mut keys, "script"))
    } else {
        take(&mut keys, "script")
    };
    let script = match script {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return Err("no `script`: PM2 requires one".into()),
    };
    let stem = || {
        Path::new(&script)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or("app")
            .to_string()
    };
    let name = match take(&mut keys, "name") {
        Some(Value::String(n)) if !n.is_empty() => {
            mapped.push("name".into());
            n
        }
        None => stem(),
        Some(other) => {
            attention.push(format!(
                "name {other}: not a name; the app is named after its script"
            ));
            stem()
        }
    };
    // A dump has PM2's "default" in every record; a file that says it means something by it.
    if let Some(ns) = take(&mut keys, "namespace").filter(|ns| !(opts.dump && ns == "default")) {
        notes.push(format!(
            "namespace {ns}: corral has no namespaces; each app is a file in /etc/corral and \
             a unit corral@{name}"
        ));
    }
    let cwd = match (take(&mut keys, "pm_cwd"), take(&mut keys, "cwd")) {
        (Some(Value::String(c)), _) | (None, Some(Value::String(c))) => {
            let p = Path::new(&c);
            Some(tidy(&if p.is_absolute() {
                p.to_path_buf()
            } else {
                opts.base_dir.join(p)
            }))
        }
        (None, None) => None,
        (Some(other), _) | (None, Some(other)) => {
            attention.push(format!("cwd {other}: not a directory name; not imported"));
            None
        }
    };
    let dir = cwd.clone().unwrap_or_else(|| opts.base_dir.clone());
    let script_path = {
        let p = Path::new(&script);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            dir.join(p)
        }
    };
    let script_text = tidy(&script_path).display().to_string();
    let given = take(&mut keys, "exec_interpreter");
    let interpreter = match &given {
        Some(Value::String(i)) if i == "none" => None,
        Some(Value::String(i)) if !i.is_empty() => Some(i.clone()),
        _ => interpreter_for(&script).map(str::to_string),
    };
    let node = interpreter
        .as_deref()
        .is_some_and(|i| Path::new(i).file_name().is_some_and(|n| n == "node"));
    let mut command = Vec::new();
    let mut from = vec![say("script")];
    if let Some(i) = &interpreter {
        command.push(i.clone());
    }
    if given.is_some() {
        from.push(say("exec_interpreter"));
    }
    if let Some(v) = take(&mut keys, "node_args") {
        let a = args_of(&v);
        if !a.is_empty() {
            from.push(say("node_args"));
        }
        command.extend(a);
    }
    command.push(script_text);
    if let Some(v) = take(&mut keys, "args") {
        let a = args_of(&v);
        if !a.is_empty() {
            from.push(say("args"));
        }
        command.extend(a);
    }
    mapped.extend(from.iter().cloned());
    let mut why = from.join(", ");
    if given.is_none() {
        if let Some(i) = &interpreter {
            why += &format!("; {i}, as PM2 runs a .{} file", script_ext(&script));
        }
    }
    doc.set("", "command", strings(&command), &why);
    if let Some(d) = &cwd {
        doc.set("", "directory", string(&d.display().to_string()), "cwd");
        mapped.push("cwd".into());
    }

    // ---- how many ----
    let instances = take(&mut keys, "instances");
    let exec_mode = take(&mut keys, "exec_mode");
    let cluster = exec_mode
        .as_ref()
        .and_then(Value::as_str)
        .is_some_and(|m| m.starts_with("cluster"));
    let workers = match (&instances, instances_in_dump) {
        (_, Some(n)) => Some((n.to_string(), format!("{n} process(es) in the dump"))),
        (Some(Value::String(s)), _) if s == "max" => {
            Some(("\"auto\"".into(), "instances: \"max\"".into()))
        }
        (Some(v), _) => match v.as_i64() {
            Some(0) => Some(("\"auto\"".into(), "instances: 0 (all CPUs)".into())),
            Some(-1) => {
                attention.push(
                    "instances -1 (all CPUs but one): corral has \"auto\" (all CPUs) or a \
                     number; \"auto\" was written, set a number to keep a CPU free"
                        .into(),
                );
                Some(("\"auto\"".into(), "instances: -1, see above".into()))
            }
            Some(n) if n >= 1 => Some((n.to_string(), format!("instances: {n}"))),
            _ => {
                attention.push(format!(
                    "instances {v}: not a number PM2 takes; not imported"
                ));
                None
            }
        },
        (None, _) => None,
    };
    if let Some((value, comment)) = workers {
        doc.set("", "workers", value, &comment);
        mapped.push("instances".into());
    }
    if let Some(m) = &exec_mode {
        mapped.push("exec_mode".into());
        if cluster && !node {
            attention.push(format!(
                "exec_mode {m}: PM2's cluster mode is for Node.js; {} workers share the \
                 listeners corral holds, and must take them from fd 3 (LISTEN_FDS)",
                interpreter.as_deref().unwrap_or("these")
            ));
        }
    }

    // ---- environment ----
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    let mut left_out = Vec::new();
    let env_value = match take(&mut keys, "env") {
        Some(Value::Object(e)) => Some(e),
        None => None,
        Some(other) => {
            attention.push(format!(
                "env {other}: not an object of variables; not imported"
            ));
            None
        }
    };
    if let Some(e) = env_value {
        for (k, v) in e {
            if opts.dump && k == name {
                // PM2 passes each app its own settings under its name; not the app's.
                notes.push(format!(
                    "env.{k}: PM2's own (the app's settings, for PM2's code)"
                ));
            } else if opts.dump && inherited(&k) {
                left_out.push(k);
            } else {
                env.insert(k, env_text(&v));
            }
        }
        mapped.push("env".into());
    }
    // env_NAME profiles: the one chosen with --env over env, as `pm2 start --env NAME`.
    let profiles: Vec<String> = keys
        .keys()
        .filter(|k| k.starts_with("env_") && *k != "env_file")
        .cloned()
        .collect();
    for p in &profiles {
        let v = take(&mut keys, p).expect("listed");
        let pname = &p["env_".len()..];
        if opts.dump {
            // A dump's env already holds the profile it was started with.
            notes.push(format!(
                "{p}: the dump's env already has the profile applied"
            ));
            continue;
        }
        if opts.env_name.as_deref() == Some(pname) {
            match v {
                Value::Object(e) => {
                    for (k, v) in e {
                        env.insert(k, env_text(&v));
                    }
                    mapped.push(p.clone());
                }
                other => attention.push(format!(
                    "{p} {other}: not an object of variables; not imported"
                )),
            }
        } else {
            notes.push(format!(
                "{p}: not applied (choose it with --env {pname}, as `pm2 start --env {pname}`)"
            ));
        }
    }
    if let Some(name) = &opts.env_name {
        if !opts.dump && !profiles.iter().any(|p| p == &format!("env_{name}")) {
            notes.push(format!(
                "--env {name}: the app has no env_{name}; env alone applies"
            ));
        }
    }
    if opts.dump {
        // Its flattened copy of the environment and of the settings: PM2's own.
        let flat: Vec<String> = keys
            .keys()
            .filter(|k| {
                env.contains_key(*k)
                    || left_out.contains(k)
                    || DUMP_BOOKKEEPING.contains(&k.as_str())
                    || k.starts_with("axm_")
                    || k == &&name
            })
            .cloned()
            .collect();
        for k in flat {
            keys.remove(&k);
        }
        if !left_out.is_empty() {
            left_out.sort();
            notes.push(format!(
                "left out of environment, as the shell's that started PM2 rather than the \
                 app's: {}",
                left_out.join(", ")
            ));
            attention.push(
                "environment: PM2's dump records everything the app's environment had when PM2 \
                 started it; review what was kept, and move secrets to an environment_file"
                    .into(),
            );
        }
    }
    if let Some(v) = take(&mut keys, "port") {
        match env_text(&v).parse::<u16>() {
            Ok(p) if p > 0 => {
                env.insert("PORT".into(), p.to_string());
                mapped.push("port".into());
            }
            _ => attention.push(format!("port {v}: not a port; not imported")),
        }
    }
    if let Some(p) = opts.port {
        env.insert("PORT".into(), p.to_string());
    }
    let port: Option<u16> = env.get("PORT").and_then(|p| p.parse().ok());
    match take(&mut keys, "instance_var") {
        Some(Value::String(v)) if v == "NODE_APP_INSTANCE" => mapped.push("instance_var".into()),
        Some(v) => attention.push(format!(
            "instance_var {v}: corral gives the instance number as CORRAL_WORKER (and \
             NODE_APP_INSTANCE with [node] preload), not under another name; read it there"
        )),
        None => {}
    }
    if let Some(v) = take(&mut keys, "increment_var") {
        attention.push(format!(
            "increment_var {v}: corral does not add a number to a variable per worker; \
             compute it from CORRAL_WORKER (e.g. PORT + CORRAL_WORKER)"
        ));
    }
    if let Some(v) = take(&mut keys, "env_file") {
        let files = args_of(&v);
        let files: Vec<String> = files
            .into_iter()
            .map(|f| {
                let p = Path::new(&f);
                if p.is_absolute() {
                    f
                } else {
                    tidy(&dir.join(p)).display().to_string()
                }
            })
            .collect();
        doc.set(
            "",
            "environment_file",
            strings(&files),
            "env_file: read at every start and reload",
        );
        mapped.push("env_file".into());
        // PM2 7's schema has no env_file: where a file has it, the app reads it (dotenv);
        // corral reads it in systemd's EnvironmentFile= syntax, which most .env files are.
        attention.push(
            "env_file: corral reads the file itself, as systemd's EnvironmentFile= does \
             (KEY=value, quotes, # comments; no `export`); `corral check` says if a line is not"
                .into(),
        );
        for f in &files {
            if !Path::new(f).exists() {
                attention.push(format!(
                    "env_file {f}: not found here; the app does not start without it (a \
                     leading '-' makes it optional)"
                ));
            }
        }
    }
    if !env.is_empty() {
        let body: Vec<String> = env
            .iter()
            .map(|(k, v)| format!("{} = {}", toml_out::key(k), string(v)))
            .collect();
        doc.set(
            "",
            "environment",
            format!("{{ {} }}", body.join(", ")),
            "env",
        );
    }

    // ---- listeners, readiness ----
    let wait_ready = match take(&mut keys, "wait_ready") {
        Some(v) => {
            mapped.push("wait_ready".into());
            v.as_bool() == Some(true)
        }
        None => false,
    };
    if let Some(p) = port {
        doc.listen(vec![
            ("name", string("http"), ""),
            (
                "address",
                string(&p.to_string()),
                "PORT: every address, IPv4 and IPv6",
            ),
        ]);
    } else if cluster {
        attention.push(
            "exec_mode cluster without a PORT: give the port with --port, or add a \
             [[listen]]; without one corral cannot hold the socket for the workers"
                .into(),
        );
    }
    if node && port.is_some() {
        doc.set(
            "node",
            "preload",
            "true".into(),
            "listen(PORT) takes the socket corral holds, as PM2's cluster mode makes it",
        );
    }
    let mode = if wait_ready {
        Some(("node-ipc", "wait_ready: process.send('ready')"))
    } else if port.is_some() {
        Some((
            "listen",
            "ready once it listens, as PM2's cluster mode waits for 'listening'",
        ))
    } else {
        Some(("exec", "nothing tells when it is ready"))
    };
    if let Some((m, why)) = mode {
        if m == "node-ipc" && !node {
            attention.push(
                "wait_ready on a program that is not Node.js: it must send READY=1 \
                            on NOTIFY_SOCKET instead (sd_notify(3))"
                    .into(),
            );
            doc.set(
                "readiness",
                "mode",
                string("notify"),
                "wait_ready, not Node.js",
            );
        } else {
            doc.set("readiness", "mode", string(m), why);
        }
        if m == "exec" {
            notes.push(
                "readiness.mode \"exec\": a worker counts as ready once started, as PM2 \
                 counts it online; fine for a worker that serves no port"
                    .into(),
            );
        }
    }
    if let Some(v) = take(&mut keys, "listen_timeout") {
        match v.as_u64() {
            Some(n) => {
                doc.set(
                    "readiness",
                    "timeout",
                    string(&ms(n)),
                    &format!("listen_timeout: {n}; not ready by then is a failed start, not ready"),
                );
                mapped.push("listen_timeout".into());
            }
            None => attention.push(format!("listen_timeout {v}: not a number of ms")),
        }
    }

    // ---- stopping ----
    let with_message = match take(&mut keys, "shutdown_with_message") {
        Some(v) => {
            mapped.push("shutdown_with_message".into());
            v.as_bool() == Some(true)
        }
        None => false,
    };
    if with_message {
        if node || wait_ready {
            doc.set(
                "stop",
                "message",
                string("shutdown"),
                "shutdown_with_message: process.on('message') gets 'shutdown'",
            );
            // The message goes over the Node.js IPC channel, which the preload brings.
            if !wait_ready && !doc.has("node", "preload") {
                doc.set(
                    "node",
                    "preload",
                    "true".into(),
                    "for shutdown_with_message's channel",
                );
            }
        } else {
            attention.push(
                "shutdown_with_message on a program that is not Node.js: there is no IPC \
                 channel to send it on; it gets stop.signal"
                    .into(),
            );
        }
    }
    doc.set("stop", "signal", string("SIGINT"), "PM2 stops with SIGINT");
    if let Some(v) = take(&mut keys, "kill_timeout") {
        match v.as_u64() {
            Some(n) => {
                doc.set(
                    "stop",
                    "timeout",
                    string(&ms(n)),
                    &format!("kill_timeout: {n}"),
                );
                mapped.push("kill_timeout".into());
            }
            None => attention.push(format!("kill_timeout {v}: not a number of ms")),
        }
    } else {
        doc.set(
            "stop",
            "timeout",
            string("1600ms"),
            "PM2's default kill_timeout",
        );
    }
    // ---- restarting ----
    if let Some(v) = take(&mut keys, "autorestart") {
        mapped.push("autorestart".into());
        if v.as_bool() == Some(false) {
            doc.set("restart", "policy", string("never"), "autorestart: false");
        } else {
            doc.set(
                "restart",
                "policy",
                string("always"),
                "autorestart: true, as PM2 restarts any exit",
            );
        }
    } else {
        doc.set(
            "restart",
            "policy",
            string("always"),
            "PM2 restarts any exit",
        );
    }
    // PM2 waits restart_delay between restarts, always the same; exp_backoff_restart_delay
    // grows 1.5 times per exit up to 15s and starts again after 30s up (PM2's God.js,
    // Worker.js). corral's wait doubles from restart.delay up to restart.max_delay.
    let fixed = take(&mut keys, "restart_delay");
    let backoff = take(&mut keys, "exp_backoff_restart_delay");
    if let Some(v) = &fixed {
        mapped.push("restart_delay".into());
        match v.as_u64() {
            Some(n) if n > 0 && backoff.is_none() => {
                doc.set("restart", "delay", string(&ms(n)), "restart_delay");
                doc.set(
                    "restart",
                    "max_delay",
                    string(&ms(n)),
                    "restart_delay is always the same",
                );
            }
            Some(_) => {}
            None => attention.push(format!("restart_delay {v}: not a number of ms")),
        }
    }
    if let Some(v) = &backoff {
        mapped.push("exp_backoff_restart_delay".into());
        match v.as_u64() {
            Some(n) if n > 0 => {
                doc.set(
                    "restart",
                    "delay",
                    string(&ms(n)),
                    "exp_backoff_restart_delay",
                );
                doc.set(
                    "restart",
                    "max_delay",
                    string(&ms(n.max(15_000))),
                    "PM2's backoff stops growing at 15s",
                );
                doc.set(
                    "restart",
                    "reset_after",
                    string("30s"),
                    "PM2 starts again after 30s up",
                );
            }
            Some(_) => {}
            None => attention.push(format!("exp_backoff_restart_delay {v}: not a number of ms")),
        }
    }
    // PM2 gives up on an app after max_restarts (16) exits, each sooner than min_uptime (1s)
    // after its start, within min_uptime × max_restarts of the first (God.js); corral gives
    // up after restart.max_failures failures within restart.interval.
    let max_restarts = take(&mut keys, "max_restarts");
    let min_uptime = take(&mut keys, "min_uptime");
    if max_restarts.is_some() || min_uptime.is_some() {
        let count = match &max_restarts {
            None => Some(16),
            Some(v) => v.as_u64().filter(|&n| n > 0),
        };
        let up = match &min_uptime {
            None => Some(1000),
            Some(v) => duration_ms(v),
        };
        match (count, up) {
            (Some(count), Some(up)) => {
                doc.set(
                    "restart",
                    "max_failures",
                    count.to_string(),
                    if max_restarts.is_some() {
                        "max_restarts"
                    } else {
                        "PM2's default max_restarts"
                    },
                );
                doc.set(
                    "restart",
                    "interval",
                    string(&ms(count * up.max(1))),
                    "min_uptime × max_restarts, the time PM2 counts them in",
                );
                mapped.extend(max_restarts.iter().map(|_| "max_restarts".to_string()));
                mapped.extend(min_uptime.iter().map(|_| "min_uptime".to_string()));
            }
            _ => attention.push(format!(
                "max_restarts {} / min_uptime {}: not numbers PM2 takes; not imported",
                max_restarts.unwrap_or(Value::Null),
                min_uptime.unwrap_or(Value::Null)
            )),
        }
    }
    if let Some(v) = take(&mut keys, "stop_exit_codes") {
        let codes: Vec<i64> = match &v {
            Value::Array(a) => a.iter().filter_map(Value::as_i64).collect(),
            Value::Number(n) => n.as_i64().into_iter().collect(),
            _ => Vec::new(),
        };
        let codes: Vec<String> = codes
            .into_iter()
            .filter(|c| (0..=255).contains(c))
            .map(|c| c.to_string())
            .collect();
        doc.set(
            "restart",
            "stop_exit_codes",
            format!("[{}]", codes.join(", ")),
            "stop_exit_codes",
        );
        mapped.push("stop_exit_codes".into());
    }

    // ---- memory, user ----
    if let Some(v) = take(&mut keys, "max_memory_restart") {
        match size(&v) {
            Some(s) => {
                doc.set(
                    "limits",
                    "max_memory",
                    string(&s),
                    "max_memory_restart: replaced gracefully, the new worker ready first",
                );
                mapped.push("max_memory_restart".into());
            }
            None => attention.push(format!("max_memory_restart {v}: not a size PM2 takes")),
        }
    }
    // PM2 runs an app as the user who ran `pm2` unless uid says otherwise; corral@.service
    // runs it as a dynamic user unless [service] user names one (DynamicUser=,
    // systemd.exec(5)).
    let ran_as = match take(&mut keys, "username") {
        Some(Value::String(u)) if !u.is_empty() => Some((u, "username: PM2 ran it as this user")),
        _ if !opts.dump => opts.current_user.clone().map(|u| {
            (
                u,
                "who ran `corral import`; PM2 runs apps as the user who runs pm2",
            )
        }),
        _ => None,
    };
    for (k, field) in [("uid", "user"), ("gid", "group")] {
        if let Some(v) = take(&mut keys, k) {
            let text = env_text(&v);
            let k = say(k);
            if v.is_number() {
                attention.push(format!(
                    "{k} {text}: [service] {field} takes a name; write the name of {k} {text}"
                ));
            } else {
                doc.set("service", field, string(&text), &k);
                mapped.push(k);
            }
        }
    }

    if let Some((user, _)) = ran_as.as_ref().filter(|(u, _)| u == "root") {
        if !doc.has("service", "user") {
            notes.push(format!(
                "username {user}: PM2 ran the app as root; corral@{name} runs it as a dynamic \
                 user with no privileges, which is what most servers need; set [service] user \
                 only if it must be an account"
            ));
        }
    }
    if let Some((user, why)) = ran_as {
        if user != "root" && !doc.has("service", "user") {
            doc.set("service", "user", string(&user), why);
            mapped.push("username".into());
            if !opts.dump {
                attention.push(format!(
                    "service.user {user}: the user running this import; change it if PM2 ran \
                     the app as someone else"
                ));
            }
        }
    }

    // ---- no equivalent ----
    let log_keys: Vec<&str> = [
        "out_file",
        "error_file",
        "log_file",
        "log_date_format",
        "merge_logs",
        "log_type",
        "time",
        "disable_logs",
    ]
    .into_iter()
    .filter(|k| take(&mut keys, k).is_some())
    .collect();
    if !log_keys.is_empty() {
        notes.push(format!(
            "{}: the workers' lines go to journald, one entry per line with the worker's \
             fields, timestamped; `corral logs {name}` shows them, `journalctl` filters them",
            log_keys
                .iter()
                .map(|k| say(k))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let watch_keys: Vec<&str> = ["watch", "ignore_watch", "watch_options", "watch_delay"]
        .into_iter()
        .filter(|k| match take(&mut keys, k) {
            Some(v) if *k == "watch" && v.as_bool() == Some(false) => {
                notes.push("watch false: corral does not watch files either".into());
                false
            }
            Some(_) => true,
            None => false,
        })
        .collect();
    if !watch_keys.is_empty() {
        attention.push(format!(
            "{}: corral does not watch files; run `systemctl reload corral@{name}` from your \
             deploy step, or from a systemd path unit on the files (systemd.path(5))",
            watch_keys.join(", ")
        ));
    }
    if let Some(v) = take(&mut keys, "cron_restart") {
        attention.push(format!(
            "{} {v}: use a systemd timer (systemd.timer(5)) whose service runs \
             `systemctl reload corral@{name}`, which restarts the workers without a gap",
            say("cron_restart")
        ));
    }
    for k in ["source_map_support", "disable_source_map_support"] {
        if take(&mut keys, k).is_some() {
            notes.push(format!(
                "{k}: give node --enable-source-maps in interpreter_args if the app needs them"
            ));
        }
    }
    let leftover: Vec<String> = keys.keys().cloned().collect();
    for k in leftover {
        if let Some((_, why)) = NOT_NEEDED.iter().find(|(n, _)| *n == k) {
            keys.remove(&k);
            notes.push(format!("{k}: not needed ({why})"));
        } else if k == "exec_interpreter" {
            keys.remove(&k);
        }
    }
    for (k, _) in keys {
        attention.push(format!("{k}: not a PM2 setting corral knows; not imported"));
    }

    doc.header(&format!(
        "{name}: imported from {} by `corral import pm2`. Each setting says the PM2 key it \
         came from. Check it with `corral check`; corral.toml(5) describes every key.",
        opts.source
    ));
    if !attention.is_empty() {
        doc.footer("To look at:");
        for a in &attention {
            doc.footer(&format!("- {a}"));
        }
    }
    let toml = doc.render();
    Ok(Converted {
        listens: port.is_some(),
        name,
        toml,
        mapped,
        attention,
        notes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pm2_sizes_and_durations() {
        assert_eq!(size(&Value::from("300M")).as_deref(), Some("300M"));
        assert_eq!(size(&Value::from("1G")).as_deref(), Some("1G"));
        assert_eq!(size(&Value::from(314_572_800u64)).as_deref(), Some("300M"));
        assert_eq!(size(&Value::from(1000u64)).as_deref(), Some("1000"));
        assert_eq!(size(&Value::from("12X")), None);
        assert_eq!(duration_ms(&Value::from(1000u64)), Some(1000));
        assert_eq!(duration_ms(&Value::from("2m")), Some(120_000));
        assert_eq!(duration_ms(&Value::from("1500")), Some(1500));
        assert_eq!(duration_ms(&Value::from("2d")), None);
        assert_eq!(ms(1600), "1600ms");
        assert_eq!(ms(120_000), "2m");
    }

    #[test]
    fn interpreters_by_extension_and_aliases() {
        assert_eq!(interpreter_for("app.js"), Some("node"));
        assert_eq!(interpreter_for("run.py"), Some("python3"));
        assert_eq!(interpreter_for("server"), None);
        assert_eq!(canonical("interpreter_args"), "node_args");
        assert_eq!(canonical("exec"), "script");
        assert!(inherited("PATH") && inherited("LC_ALL") && inherited("PM2_HOME"));
        assert!(!inherited("NODE_ENV") && !inherited("DATABASE_URL"));
    }
}
