//! PM2's app settings (PM2 7's ecosystem schema, `lib/API/schema.json`, and the records
//! `pm2 save` writes) as a corral app config. Every key is mapped, or reported with why it has
//! no equivalent and what to use instead; none is dropped silently. Where PM2 decides
//! something itself (which interpreter, cluster or fork mode, where a relative path points),
//! the import decides it the same way, from PM2's `lib/Common.js` and `lib/God.js`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::env_file;
use super::toml_out::{string, strings, Doc};

/// How the conversion goes.
pub struct Options {
    /// `--env NAME`: which `env_NAME` to apply, as `pm2 start --env NAME`.
    pub env_name: Option<String>,
    /// `deploy.NAME.env` of the file, which PM2 applies under the app's `env` with `--env`.
    pub deploy_env: Map<String, Value>,
    /// `--port`: the app's port where its `env` has none.
    pub port: Option<u16>,
    /// Where relative paths point: the directory `pm2 start` would run in (this command's).
    pub cwd: PathBuf,
    /// The ecosystem file's directory, where a relative script is looked for next.
    pub file_dir: PathBuf,
    /// The file's name, for the header.
    pub source: String,
    /// The file is PM2's saved process list.
    pub dump: bool,
    /// Who runs this import, when not root: PM2 runs apps as the user who runs `pm2`.
    pub current_user: Option<String>,
    /// `PATH` here, where PM2 looks for a script or an interpreter.
    pub path: std::ffi::OsString,
}

/// One app, converted.
pub struct Converted {
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

/// The keys of PM2 7's schema, each with its explicit aliases (PM2 also takes the camelCase
/// form of each, `lib/tools/Config.js`).
const SCHEMA: &[(&str, &[&str])] = &[
    ("script", &["exec"]),
    ("name", &[]),
    ("name_prefix", &[]),
    ("filter_env", &[]),
    ("namespace", &[]),
    ("install_url", &[]),
    ("cwd", &[]),
    ("args", &[]),
    ("exec_interpreter", &["interpreter"]),
    ("node_args", &["interpreterArgs", "interpreter_args"]),
    ("out_file", &["out", "output", "out_log"]),
    ("error_file", &["error", "err", "err_file", "err_log"]),
    ("log_file", &["log"]),
    ("disable_logs", &[]),
    ("log_type", &[]),
    ("log_date_format", &[]),
    ("time", &[]),
    ("env", &[]),
    ("max_memory_restart", &[]),
    ("pid_file", &["pid"]),
    ("restart_delay", &[]),
    ("exp_backoff_restart_delay", &[]),
    ("source_map_support", &[]),
    ("disable_source_map_support", &[]),
    ("wait_ready", &[]),
    ("instances", &[]),
    ("kill_timeout", &[]),
    ("shutdown_with_message", &[]),
    ("listen_timeout", &[]),
    ("cron_restart", &["cron"]),
    ("merge_logs", &["combine_logs"]),
    ("vizion", &[]),
    ("autostart", &[]),
    ("autorestart", &[]),
    ("stop_exit_codes", &[]),
    ("watch_delay", &[]),
    ("watch", &[]),
    ("ignore_watch", &[]),
    ("watch_options", &[]),
    ("min_uptime", &[]),
    ("max_restarts", &[]),
    ("execute_command", &[]),
    ("exec_mode", &[]),
    ("force", &[]),
    ("append_env_to_name", &[]),
    ("post_update", &[]),
    ("trace", &[]),
    ("disable_trace", &[]),
    ("v8", &[]),
    ("event_loop_inspector", &[]),
    ("deep_monitoring", &[]),
    ("increment_var", &[]),
    ("instance_var", &[]),
    ("pmx", &[]),
    ("automation", &[]),
    ("treekill", &[]),
    ("port", &[]),
    ("username", &[]),
    ("uid", &["user"]),
    ("gid", &[]),
    ("windowsHide", &[]),
    ("kill_retry_time", &[]),
    ("write", &[]),
    ("io", &[]),
];

/// A key as PM2 reads it: an alias, or the camelCase form of a key, as the key itself.
fn canonical(key: &str) -> String {
    for (name, aliases) in SCHEMA {
        if key == *name || aliases.contains(&key) {
            return name.to_string();
        }
    }
    // camelCase: `killTimeout` is `kill_timeout`.
    let mut snake = String::with_capacity(key.len() + 4);
    for c in key.chars() {
        if c.is_ascii_uppercase() {
            snake.push('_');
            snake.push(c.to_ascii_lowercase());
        } else {
            snake.push(c);
        }
    }
    if SCHEMA.iter().any(|(name, _)| *name == snake) {
        snake
    } else {
        key.to_string()
    }
}

/// Keys of PM2's own that have no meaning outside it (monitoring, Keymetrics, Windows), and
/// why nothing is needed for them.
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
    ("write", "PM2's own"),
    ("execute_command", "PM2's own"),
    (
        "autostart",
        "corral starts every worker; `systemctl enable` starts the app at boot",
    ),
    (
        "filter_env",
        "workers get the unit's environment and the config's, never a shell's",
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

/// Environment variables of the process PM2 ran in rather than of the app: a dump records
/// the whole environment of `pm2 start`.
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

/// The interpreter PM2 picks for a script by its extension (`lib/API/interpreter.json`).
fn interpreter_for_extension(ext: &str) -> Option<&'static str> {
    Some(match ext {
        "sh" => "bash",
        "py" => "python",
        "rb" => "ruby",
        "php" => "php",
        "pl" => "perl",
        "js" => "node",
        "coffee" => "coffee",
        "ls" => "lsc",
        "ts" | "tsx" => "bun",
        _ => return None,
    })
}

/// Whether a file is a compiled program, as PM2 decides between running it and giving it to
/// node: a NUL byte in its first block (PM2's `isbinaryfile`, simplified; an ELF file has one
/// in its header).
fn is_binary(path: &Path) -> Option<bool> {
    use std::io::Read;
    let mut buf = [0u8; 512];
    let mut f = std::fs::File::open(path).ok()?;
    let n = f.read(&mut buf).ok()?;
    Some(buf[..n].contains(&0))
}

/// `which`: the executable `name` in the directories of `path`, as exec will find it.
fn which(name: &str, path: &std::ffi::OsStr) -> Option<PathBuf> {
    if name.contains('/') {
        return None;
    }
    crate::spawn::resolve_program(name, Some(path), None).ok()
}

/// The `PATH` a unit gets from systemd (systemd.exec(5), "Environment variables in spawned
/// processes"): a bare program name is looked up there, not in a login shell's `PATH`.
const SYSTEMD_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

/// A number as PM2's `parseInt` reads it: an integer, or the digits a string starts with.
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f.trunc() as i64)),
        Value::String(s) => {
            let s = s.trim();
            let (sign, digits) = match s.strip_prefix('-') {
                Some(rest) => (-1, rest),
                None => (1, s),
            };
            let end = digits
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(digits.len());
            digits[..end].parse::<i64>().ok().map(|n| sign * n)
        }
        _ => None,
    }
}

/// A number of milliseconds PM2 takes: a non-negative integer.
fn millis(v: &Value) -> Option<u64> {
    int(v).and_then(|n| u64::try_from(n).ok())
}

/// PM2's `min_uptime`: a number of ms, or "10s", "2m", "1h", as milliseconds.
fn duration_ms(v: &Value) -> Option<u64> {
    match v {
        Value::Number(_) => millis(v),
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
            let at = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            let n: u64 = s[..at].parse().ok()?;
            match &s[at..] {
                "" => size(&Value::from(n)),
                u @ ("K" | "M" | "G") => Some(format!("{n}{u}")),
                _ => None,
            }
        }
        _ => None,
    }
}

/// A JSON value as the text an environment variable gets (PM2 stringifies objects).
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

/// A path without its `.` components (`cwd/./server.js`), as a person would write it.
fn tidy(p: &Path) -> PathBuf {
    p.components().collect()
}

/// The name PM2 gives an app: its `name`, or its script's file name without extension.
pub fn pm2_name(app: &Map<String, Value>) -> String {
    if let Some(Value::String(n)) = app.get("name") {
        if !n.is_empty() {
            return n.clone();
        }
    }
    let script = ["pm_exec_path", "script", "exec"]
        .iter()
        .find_map(|k| app.get(*k).and_then(Value::as_str))
        .unwrap_or("app");
    Path::new(script)
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("app")
        .to_string()
}

/// What the conversion of one app gathers: the config, and what the report says.
struct Out {
    doc: Doc,
    mapped: Vec<String>,
    attention: Vec<String>,
    notes: Vec<String>,
    /// The names the file used, for comments and the report: `interpreter`, not PM2's
    /// `exec_interpreter`.
    written_as: BTreeMap<String, String>,
}

impl Out {
    fn say(&self, k: &str) -> String {
        self.written_as
            .get(k)
            .cloned()
            .unwrap_or_else(|| k.to_string())
    }

    fn mapped(&mut self, k: &str) {
        let k = self.say(k);
        if !self.mapped.contains(&k) {
            self.mapped.push(k);
        }
    }
}

/// Converts one app, to be written as `/etc/corral/{app}.toml`. `instances_in_dump` is the
/// number of processes a dump held for it.
pub fn convert(
    app: &Map<String, Value>,
    instances_in_dump: Option<u32>,
    corral_app: &str,
    opts: &Options,
) -> Result<Converted, String> {
    let mut keys: BTreeMap<String, Value> = BTreeMap::new();
    let mut out = Out {
        doc: Doc::default(),
        mapped: Vec::new(),
        attention: Vec::new(),
        notes: Vec::new(),
        written_as: BTreeMap::new(),
    };
    for (k, v) in app {
        let c = canonical(k);
        if let Some(first) = out.written_as.get(&c) {
            if !opts.dump {
                out.attention.push(format!(
                    "{first} and {k} are the same PM2 setting, both given: {k} was used"
                ));
            }
        }
        out.written_as.insert(c.clone(), k.clone());
        keys.insert(c, v.clone());
    }
    let name = pm2_name(app);
    if keys.remove("name").is_some() {
        out.mapped("name");
    }

    let run = command(&mut keys, &mut out, opts)?;
    workers(&mut keys, &mut out, instances_in_dump, &run);
    let env = environment(&mut keys, &mut out, &name, &run, opts);
    let ipc = listening(&mut keys, &mut out, &run, &env);
    stopping(&mut keys, &mut out, &run, ipc);
    restarting(&mut keys, &mut out);
    limits_and_user(&mut keys, &mut out, corral_app, opts);
    no_equivalent(&mut keys, &mut out, corral_app, opts.dump);

    out.doc.header(&format!(
        "{corral_app}: imported from {} by `corral import pm2`. Each setting says the PM2 key \
         it came from. Check it with `corral check`; corral.toml(5) describes every key.",
        opts.source
    ));
    let (toml, listens) = checked(&mut out, corral_app)?;
    Ok(Converted {
        toml,
        mapped: out.mapped,
        attention: out.attention,
        notes: out.notes,
        listens,
    })
}

/// What runs: the program, its interpreter and their arguments.
struct Run {
    /// The interpreter's program name (`node`, `python3`), or none for a program run itself.
    interpreter: Option<String>,
    /// It is Node.js (or bun, which takes the same preload and IPC channel).
    node: bool,
    /// Where relative paths of the app point.
    dir: PathBuf,
}

fn command(
    keys: &mut BTreeMap<String, Value>,
    out: &mut Out,
    opts: &Options,
) -> Result<Run, String> {
    // A dump holds the path PM2 resolved; an ecosystem file, what the person wrote.
    let script = match keys.remove("pm_exec_path") {
        Some(v) => {
            keys.remove("script");
            Some(v)
        }
        None => keys.remove("script"),
    };
    let script = match script {
        Some(Value::String(s)) if !s.is_empty() => s,
        _ => return Err("no `script`: PM2 requires one".into()),
    };
    out.mapped("script");
    // PM2 resolves `cwd` and the script against the directory `pm2 start` runs in
    // (`prepareAppConf`); a dump has the result as `pm_cwd`.
    let cwd = match (keys.remove("pm_cwd"), keys.remove("cwd")) {
        (Some(Value::String(c)), _) | (None, Some(Value::String(c))) => {
            Some(tidy(&opts.cwd.join(c)))
        }
        (None, None) => None,
        (Some(other), _) | (None, Some(other)) => {
            out.attention
                .push(format!("cwd {other}: not a directory name; not imported"));
            None
        }
    };
    if cwd.is_some() {
        out.mapped("cwd");
    }
    let mut dir = cwd.clone().unwrap_or_else(|| opts.cwd.clone());
    let mut path = tidy(&dir.join(&script));
    if !opts.dump && !path.exists() {
        if let Some(found) = which(&script, &opts.path) {
            // PM2 runs a script it does not find as a file from PATH (`which`).
            out.notes.push(format!(
                "script {script}: found on PATH here, at {}",
                found.display()
            ));
            path = found;
        } else if cwd.is_none() && opts.file_dir.join(&script).exists() {
            // pm2 start looks in the directory it runs in; this import was run elsewhere.
            dir = opts.file_dir.clone();
            path = tidy(&dir.join(&script));
            out.notes.push(format!(
                "script {script}: not in the directory this import runs in, found beside the \
                 ecosystem file; relative paths were resolved there, as pm2 start run from \
                 that directory does"
            ));
        } else {
            out.attention.push(format!(
                "script {}: not found here (PM2 would refuse it: Script not found); check the \
                 path before starting",
                path.display()
            ));
        }
    }
    if matches!(
        path.file_name().and_then(|n| n.to_str()),
        Some("npm" | "yarn" | "pnpm")
    ) {
        out.attention.push(format!(
            "script {script}: a package manager does not pass signals on to the server, so \
             corral's stop and readiness see npm, not the app; run the server's own file \
             (e.g. node server.js)"
        ));
    }

    let given = keys.remove("exec_interpreter");
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or("")
        .to_string();
    let interpreter = match &given {
        Some(Value::String(i)) if i == "none" => None,
        Some(Value::String(i)) if !i.is_empty() => Some(i.clone()),
        Some(Value::Null) | None => match interpreter_for_extension(&ext) {
            // PM2 falls back to python3 when there is no `python`.
            Some("python") if which("python", &opts.path).is_none() => Some("python3".into()),
            Some(i) => Some(i.to_string()),
            // No extension PM2 knows: a compiled program runs itself, anything else is
            // given to node (PM2's `resolveInterpreter`).
            None => match is_binary(&path) {
                Some(true) => None,
                Some(false) => Some("node".into()),
                None => {
                    out.attention.push(format!(
                        "interpreter: {} could not be read here to tell whether it is a program \
                         or a script for node (as PM2 tells); it is run as a program",
                        path.display()
                    ));
                    None
                }
            },
        },
        Some(other) => {
            out.attention.push(format!(
                "interpreter {other}: not a program name; not imported"
            ));
            None
        }
    };
    let node = interpreter.as_deref().is_some_and(|i| {
        let base = Path::new(i)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("");
        base.ends_with("node") || base.ends_with("bun")
    });
    let mut argv = Vec::new();
    let mut from = vec![out.say("script")];
    if let Some(i) = &interpreter {
        argv.push(program(i, out, opts));
    }
    if given.is_some() {
        from.push(out.say("exec_interpreter"));
        out.mapped("exec_interpreter");
    }
    if let Some(v) = keys.remove("node_args") {
        let a = args_of(&v);
        if !a.is_empty() {
            from.push(out.say("node_args"));
        }
        out.mapped("node_args");
        argv.extend(a);
    }
    argv.push(path.display().to_string());
    if let Some(v) = keys.remove("args") {
        let a = args_of(&v);
        if !a.is_empty() {
            from.push(out.say("args"));
        }
        out.mapped("args");
        argv.extend(a);
    }
    let mut why = from.join(", ");
    if given.is_none() {
        if let Some(i) = &interpreter {
            let kind = if ext.is_empty() {
                "a script without extension".to_string()
            } else {
                format!("a .{ext} file")
            };
            why += &format!("; {i}, as PM2 runs {kind}");
        }
    }
    out.doc.set("", "command", strings(&argv), &why);
    if let Some(d) = &cwd {
        out.doc
            .set("", "directory", string(&d.display().to_string()), "cwd");
    }
    Ok(Run {
        interpreter,
        node,
        dir,
    })
}

/// An interpreter as the unit can run it: a bare name systemd's `PATH` does not find is
/// written with the directory it was found in here.
fn program(name: &str, out: &mut Out, opts: &Options) -> String {
    if name.contains('/') {
        return name.to_string();
    }
    if which(name, SYSTEMD_PATH.as_ref()).is_some() {
        return name.to_string();
    }
    match which(name, &opts.path) {
        Some(found) => {
            out.notes.push(format!(
                "{name}: written as {}, where it is here: systemd's PATH ({}) does not have it",
                found.display(),
                SYSTEMD_PATH
            ));
            found.display().to_string()
        }
        None => {
            out.attention.push(format!(
                "{name}: not found here; the unit looks for it in systemd's PATH ({}): write \
                 its full path in command",
                SYSTEMD_PATH
            ));
            name.to_string()
        }
    }
}

fn workers(
    keys: &mut BTreeMap<String, Value>,
    out: &mut Out,
    instances_in_dump: Option<u32>,
    run: &Run,
) {
    let instances = keys.remove("instances");
    let exec_mode = keys.remove("exec_mode");
    if exec_mode.is_some() {
        out.mapped("exec_mode");
    }
    let value = match (&instances, instances_in_dump) {
        (_, Some(n)) => Some((n.to_string(), format!("{n} process(es) in the dump"))),
        (Some(Value::String(s)), _) if s == "max" => {
            Some(("\"auto\"".into(), "instances: \"max\"".to_string()))
        }
        (Some(v), _) => match int(v) {
            Some(0) => Some(("\"auto\"".into(), "instances: 0, all CPUs".into())),
            Some(n) if n < 0 => {
                out.attention.push(format!(
                    "instances {v}: PM2 runs all CPUs but {}; corral has \"auto\" (all CPUs) \
                     or a number: \"auto\" was written, set a number to keep CPUs free",
                    -n
                ));
                Some(("\"auto\"".into(), format!("instances: {v}, see below")))
            }
            Some(n) => Some((n.to_string(), format!("instances: {v}"))),
            None => {
                out.attention.push(format!(
                    "instances {v}: not a number; PM2 reads it as 0 (all CPUs), and \"auto\" \
                     was written"
                ));
                Some(("\"auto\"".into(), format!("instances: {v}, see below")))
            }
        },
        (None, _) => None,
    };
    if let Some((value, comment)) = value {
        out.doc.set("", "workers", value, &comment);
        out.mapped("instances");
    }
    let mode = exec_mode.as_ref().map(env_text).unwrap_or_default();
    // PM2's `determineExecMode`: cluster when asked, or for node with `instances` given.
    let cluster = mode.starts_with("cluster")
        || (mode.is_empty() && run.node && instances.as_ref().and_then(int).is_some());
    if cluster && !run.node {
        out.attention.push(format!(
            "exec_mode {mode}: PM2's cluster mode is for Node.js; {} workers share the \
             listeners corral holds, and must take them from fd 3 (LISTEN_FDS)",
            run.interpreter.as_deref().unwrap_or("these")
        ));
    }
}

/// The environment, and the port it gives.
struct Env {
    port: Option<u16>,
    host: Option<String>,
}

fn environment(
    keys: &mut BTreeMap<String, Value>,
    out: &mut Out,
    name: &str,
    run: &Run,
    opts: &Options,
) -> Env {
    // Each variable with where it came from, for its comment.
    let mut env: BTreeMap<String, (String, String)> = BTreeMap::new();
    let mut left_out = Vec::new();
    // PM2's order (`mergeEnvironmentVariables`): deploy.NAME.env, then env, then env_NAME.
    if opts.env_name.is_some() && !opts.dump {
        let from = format!("deploy.{}.env", opts.env_name.as_deref().unwrap_or(""));
        for (k, v) in &opts.deploy_env {
            env.insert(k.clone(), (env_text(v), from.clone()));
        }
    }
    match keys.remove("env") {
        Some(Value::Object(e)) => {
            for (k, v) in e {
                if opts.dump && k == name {
                    // PM2 passes each app its own settings under its name; not the app's.
                    out.notes.push(format!(
                        "env.{k}: PM2's own (the app's settings, for PM2's code)"
                    ));
                } else if opts.dump && inherited(&k) {
                    left_out.push(k);
                } else {
                    env.insert(k, (env_text(&v), "env".into()));
                }
            }
            out.mapped("env");
        }
        None => {}
        Some(other) => out.attention.push(format!(
            "env {other}: not an object of variables; not imported"
        )),
    }
    let profiles: Vec<String> = keys
        .keys()
        .filter(|k| k.starts_with("env_") && *k != "env_file")
        .cloned()
        .collect();
    for p in &profiles {
        let v = keys.remove(p).unwrap_or(Value::Null);
        let profile = &p["env_".len()..];
        if opts.dump {
            // A dump's env already holds the profile it was started with.
            out.notes
                .push(format!("{p}: the dump's env already has it applied"));
        } else if opts.env_name.as_deref() == Some(profile) {
            match v {
                Value::Object(e) => {
                    for (k, v) in e {
                        env.insert(k, (env_text(&v), p.clone()));
                    }
                    out.mapped(p);
                }
                other => out.attention.push(format!(
                    "{p} {other}: not an object of variables; not imported"
                )),
            }
        } else {
            out.notes.push(format!(
                "{p}: not applied (choose it with --env {profile}, as `pm2 start --env \
                 {profile}`)"
            ));
        }
    }
    if let Some(profile) = &opts.env_name {
        if !opts.dump && !profiles.iter().any(|p| p == &format!("env_{profile}")) {
            out.notes.push(format!(
                "--env {profile}: the app has no env_{profile}; its env alone applies"
            ));
        }
    }
    if opts.dump {
        // The record's flattened copy of its environment and of its settings: PM2's own.
        let flat: Vec<String> = keys
            .keys()
            .filter(|k| {
                env.contains_key(*k)
                    || left_out.contains(k)
                    || DUMP_BOOKKEEPING.contains(&k.as_str())
                    || k.starts_with("axm_")
                    || *k == name
            })
            .cloned()
            .collect();
        for k in flat {
            keys.remove(&k);
        }
        if !left_out.is_empty() {
            left_out.sort();
            out.notes.push(format!(
                "left out of environment, as the shell's that started PM2 rather than the \
                 app's: {}",
                left_out.join(", ")
            ));
            out.attention.push(
                "environment: PM2's dump records everything the app's environment had when \
                 PM2 started it; review what was kept, and move secrets to an environment_file"
                    .into(),
            );
        }
    }
    if let Some(v) = keys.remove("port") {
        match env_text(&v).parse::<u16>() {
            // PM2 sets PORT from `port` (`prepareAppConf`).
            Ok(p) if p > 0 => {
                env.insert("PORT".into(), (p.to_string(), out.say("port")));
                out.mapped("port");
            }
            _ => out
                .attention
                .push(format!("port {v}: not a port; not imported")),
        }
    }
    if let Some(p) = opts.port {
        match env.get("PORT") {
            None => {
                env.insert("PORT".into(), (p.to_string(), "--port".into()));
            }
            Some((given, _)) if *given != p.to_string() => out.notes.push(format!(
                "--port {p}: not used, as the app's env sets PORT {given}"
            )),
            Some(_) => {}
        }
    }
    // PM2 makes Python's output unbuffered, so that lines reach its logs as written.
    if run
        .interpreter
        .as_deref()
        .is_some_and(|i| i.contains("python"))
        && !env.contains_key("PYTHONUNBUFFERED")
    {
        env.insert(
            "PYTHONUNBUFFERED".into(),
            ("1".into(), "PM2 sets it for Python".into()),
        );
    }
    // What corral sets itself, or a name no environment can hold, cannot be kept.
    let refused: Vec<String> = env
        .keys()
        .filter(|k| {
            k.is_empty() || k.contains(['=', '\0']) || crate::config::reserved_env(k.as_str())
        })
        .cloned()
        .collect();
    for k in refused {
        env.remove(&k);
        out.attention.push(format!(
            "env {}: corral sets this variable itself (or it is not a variable name); not \
             imported",
            k.escape_debug()
        ));
    }
    let with_nul: Vec<String> = env
        .iter()
        .filter(|(_, (v, _))| v.contains('\0'))
        .map(|(k, _)| k.clone())
        .collect();
    for k in with_nul {
        env.remove(&k);
        out.attention
            .push(format!("env {k}: its value holds a NUL byte; not imported"));
    }
    if let Some(v) = keys.remove("env_file") {
        env_files(&v, out, &run.dir);
    }
    let port = env.get("PORT").and_then(|(p, _)| p.parse::<u16>().ok());
    let host = env.get("HOST").map(|(h, _)| h.clone());
    for (k, (v, from)) in &env {
        out.doc.set("environment", k, string(v), from);
    }
    Env { port, host }
}

/// PM2 7 does not read `env_file` (no code of it does): an app that has one loads the file
/// itself. corral can supply the variables instead, re-read at every reload, when the file
/// reads the same in systemd's syntax as in dotenv's.
fn env_files(v: &Value, out: &mut Out, dir: &Path) {
    out.mapped("env_file");
    let mut taken = Vec::new();
    for f in args_of(v) {
        let path = tidy(&dir.join(&f));
        let shown = path.display().to_string();
        match std::fs::read(&path) {
            Err(e) => out.attention.push(format!(
                "env_file {shown}: cannot be read here ({e}); not imported. PM2 does not read \
                 it, the app does: add it as environment_file once it is there"
            )),
            Ok(bytes) => match env_file::differences(&bytes) {
                Ok(d) if d.is_empty() => taken.push(shown),
                Ok(d) => {
                    let lines: Vec<String> = d
                        .iter()
                        .map(|(n, why)| format!("line {n}: {why}"))
                        .collect();
                    out.attention.push(format!(
                        "env_file {shown}: not imported, as corral would read it otherwise \
                         than the app (systemd's EnvironmentFile= syntax): {}. The app goes on \
                         reading it itself",
                        lines.join("; ")
                    ));
                }
                Err(e) => out.attention.push(format!(
                    "env_file {shown}: not imported, as it is not systemd's EnvironmentFile= \
                     syntax ({e}). The app goes on reading it itself"
                )),
            },
        }
    }
    if !taken.is_empty() {
        out.doc.set(
            "",
            "environment_file",
            strings(&taken),
            "env_file: re-read at every reload",
        );
        out.notes.push(
            "env_file: PM2 does not read it (the app did, with dotenv or the like); corral \
             now gives the workers its variables, re-read at every reload, and dotenv leaves \
             them as they are"
                .into(),
        );
    }
}

/// The listener and readiness; returns whether the workers get a Node.js IPC channel.
fn listening(keys: &mut BTreeMap<String, Value>, out: &mut Out, run: &Run, env: &Env) -> bool {
    let wait_ready = match keys.remove("wait_ready") {
        Some(v) => {
            out.mapped("wait_ready");
            v.as_bool() == Some(true)
        }
        None => false,
    };
    let port = env.port;
    let mut listens = false;
    match port {
        // With the preload, a Node.js app's own listen(PORT) takes the socket corral holds.
        Some(p) if run.node => {
            let (address, comment) = match env.host.as_deref().map(str::trim) {
                None | Some("") => (
                    p.to_string(),
                    "PORT, on every address, as listen(PORT) with no host".to_string(),
                ),
                Some("localhost") => (format!("127.0.0.1:{p}"), "HOST localhost, PORT".into()),
                Some(h) if h.parse::<std::net::Ipv4Addr>().is_ok() => {
                    (format!("{h}:{p}"), "HOST, PORT".into())
                }
                Some(h) if h.parse::<std::net::Ipv6Addr>().is_ok() => {
                    (format!("[{h}]:{p}"), "HOST, PORT".into())
                }
                Some(h) => {
                    out.attention.push(format!(
                        "HOST {h}: not an address; the listener is on every address: write \
                         the address in [[listen]]"
                    ));
                    (
                        p.to_string(),
                        "PORT, on every address (HOST is no address)".into(),
                    )
                }
            };
            out.doc.listen(vec![
                ("name", string("http"), ""),
                ("address", string(&address), &comment),
            ]);
            out.doc.set(
                "node",
                "preload",
                "true".into(),
                "listen(PORT) takes the socket corral holds, as in PM2's cluster mode",
            );
            listens = true;
        }
        Some(p) => out.attention.push(format!(
            "PORT {p}: {} binds it itself, so no [[listen]] was written and more than one \
             worker would collide on it; to share one socket, add a [[listen]] on {p} and have \
             the program take it from fd 3 (LISTEN_FDS: uvicorn --fd 3, gunicorn with no \
             --bind, corral-worker(7))",
            run.interpreter.as_deref().unwrap_or("the program")
        )),
        None => {}
    }
    let (mode, why) = if wait_ready && run.node {
        ("node-ipc", "wait_ready: process.send('ready')")
    } else if wait_ready {
        out.attention.push(
            "wait_ready on a program that is not Node.js: it must send READY=1 on \
             NOTIFY_SOCKET instead (sd_notify(3))"
                .into(),
        );
        ("notify", "wait_ready, not Node.js")
    } else if listens {
        (
            "listen",
            "ready once it listens, as PM2's cluster mode waits for 'listening'",
        )
    } else {
        out.notes.push(
            "readiness.mode \"exec\": a worker counts as ready once started, as PM2 counts it \
             online; fine for a worker that serves no port"
                .into(),
        );
        ("exec", "nothing tells when it is ready")
    };
    out.doc.set("readiness", "mode", string(mode), why);
    if let Some(v) = keys.remove("listen_timeout") {
        out.mapped("listen_timeout");
        match millis(&v) {
            // PM2 reads 0 as "not set" (`listen_timeout || GRACEFUL_LISTEN_TIMEOUT`).
            Some(0) => out.notes.push(
                "listen_timeout 0: PM2 uses its default for 0; corral's readiness.timeout \
                 applies"
                    .into(),
            ),
            Some(n) => out.doc.set(
                "readiness",
                "timeout",
                string(&ms(n)),
                &format!("listen_timeout {v}; not ready by then is a failed start"),
            ),
            None => out.attention.push(format!(
                "listen_timeout {v}: not a number of ms; not imported"
            )),
        }
    }
    mode == "node-ipc" || listens
}

fn stopping(keys: &mut BTreeMap<String, Value>, out: &mut Out, run: &Run, ipc: bool) {
    let with_message = match keys.remove("shutdown_with_message") {
        Some(v) => {
            out.mapped("shutdown_with_message");
            v.as_bool() == Some(true)
        }
        None => false,
    };
    if with_message && run.node {
        out.doc.set(
            "stop",
            "message",
            string("shutdown"),
            "shutdown_with_message: process.on('message') gets 'shutdown'",
        );
        // The message goes over the Node.js IPC channel, which the preload opens.
        if !ipc {
            out.doc.set(
                "node",
                "preload",
                "true".into(),
                "for shutdown_with_message's channel",
            );
        }
    } else if with_message {
        out.attention.push(
            "shutdown_with_message on a program that is not Node.js: there is no IPC channel \
             to send it on; it gets stop.signal"
                .into(),
        );
    }
    out.doc
        .set("stop", "signal", string("SIGINT"), "PM2 stops with SIGINT");
    match keys.remove("kill_timeout") {
        Some(v) => {
            out.mapped("kill_timeout");
            match millis(&v) {
                Some(n) => out.doc.set(
                    "stop",
                    "timeout",
                    string(&ms(n)),
                    &format!("kill_timeout {v}"),
                ),
                None => out.attention.push(format!(
                    "kill_timeout {v}: not a number of ms; not imported"
                )),
            }
        }
        None => out.doc.set(
            "stop",
            "timeout",
            string("1600ms"),
            "PM2's default kill_timeout",
        ),
    }
}

fn restarting(keys: &mut BTreeMap<String, Value>, out: &mut Out) {
    let autorestart = keys.remove("autorestart");
    let max_restarts = keys.remove("max_restarts");
    let min_uptime = keys.remove("min_uptime");
    if autorestart.is_some() {
        out.mapped("autorestart");
    }
    // PM2 restarts any exit, and with max_restarts 0 none (God.js: `unstable_restarts >=
    // max_restarts` holds at the first exit).
    let never = autorestart.as_ref().and_then(Value::as_bool) == Some(false)
        || max_restarts.as_ref().and_then(int) == Some(0);
    let why = match (&autorestart, never) {
        (Some(_), true) if autorestart.as_ref().and_then(Value::as_bool) == Some(false) => {
            "autorestart: false"
        }
        (_, true) => "max_restarts 0: PM2 restarts nothing",
        (Some(_), false) => "autorestart: true, as PM2 restarts any exit",
        (None, false) => "PM2 restarts any exit",
    };
    out.doc.set(
        "restart",
        "policy",
        string(if never { "never" } else { "always" }),
        why,
    );
    // PM2 waits restart_delay between restarts, always the same; exp_backoff_restart_delay
    // grows 1.5 times per exit up to 15s and starts again after 30s up (God.js, Worker.js).
    // corral's wait doubles from restart.delay up to restart.max_delay.
    let fixed = keys.remove("restart_delay");
    let backoff = keys.remove("exp_backoff_restart_delay");
    if let Some(v) = &backoff {
        out.mapped("exp_backoff_restart_delay");
        match millis(v) {
            Some(n) if n > 0 => {
                out.doc.set(
                    "restart",
                    "delay",
                    string(&ms(n)),
                    "exp_backoff_restart_delay",
                );
                out.doc.set(
                    "restart",
                    "max_delay",
                    string(&ms(n.max(15_000))),
                    "PM2's backoff stops growing at 15s",
                );
                out.doc.set(
                    "restart",
                    "reset_after",
                    string("30s"),
                    "PM2 starts the backoff again after 30s up",
                );
            }
            Some(_) => {}
            None => out.attention.push(format!(
                "exp_backoff_restart_delay {v}: not a number of ms; not imported"
            )),
        }
    }
    if let Some(v) = &fixed {
        if backoff.is_some() {
            out.notes.push(format!(
                "{}: exp_backoff_restart_delay takes its place, as in PM2",
                out.say("restart_delay")
            ));
        } else {
            out.mapped("restart_delay");
            match millis(v) {
                Some(n) if n > 0 => {
                    out.doc
                        .set("restart", "delay", string(&ms(n)), "restart_delay");
                    out.doc.set(
                        "restart",
                        "max_delay",
                        string(&ms(n)),
                        "restart_delay is always the same",
                    );
                }
                Some(_) => {}
                None => out.attention.push(format!(
                    "restart_delay {v}: not a number of ms; not imported"
                )),
            }
        }
    }
    // PM2 gives up on an app after max_restarts (16) exits, each sooner than min_uptime (1s)
    // after its start, within min_uptime × max_restarts of the first (God.js); corral gives
    // up after restart.max_failures failures within restart.interval.
    if never || (max_restarts.is_none() && min_uptime.is_none()) {
        if let Some(v) = &min_uptime {
            out.mapped("min_uptime");
            out.notes.push(format!(
                "min_uptime {v}: nothing restarts, so nothing to count"
            ));
        }
        if max_restarts.is_some() {
            out.mapped("max_restarts");
        }
        return;
    }
    let count = match &max_restarts {
        None => Some(16),
        Some(v) => int(v).and_then(|n| u64::try_from(n).ok()),
    };
    let up = match &min_uptime {
        None => Some(1000),
        Some(v) => duration_ms(v),
    };
    for (k, v, ok) in [
        ("max_restarts", &max_restarts, count.is_some()),
        ("min_uptime", &min_uptime, up.is_some()),
    ] {
        if let Some(v) = v {
            if ok {
                out.mapped(k);
            } else {
                out.attention
                    .push(format!("{k} {v}: not a value PM2 takes; not imported"));
            }
        }
    }
    let (Some(count), Some(up)) = (count, up) else {
        return;
    };
    out.doc.set(
        "restart",
        "max_failures",
        count.to_string(),
        if max_restarts.is_some() {
            "max_restarts"
        } else {
            "PM2's default max_restarts"
        },
    );
    let window = count.saturating_mul(up.max(1));
    out.doc.set(
        "restart",
        "interval",
        string(&ms(window)),
        "min_uptime × max_restarts, the time PM2 counts them in",
    );
}

fn limits_and_user(
    keys: &mut BTreeMap<String, Value>,
    out: &mut Out,
    corral_app: &str,
    opts: &Options,
) {
    if let Some(v) = keys.remove("stop_exit_codes") {
        out.mapped("stop_exit_codes");
        let items: Vec<Value> = match &v {
            Value::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        let mut codes = Vec::new();
        for item in &items {
            // PM2 compares with parseInt of each (God.js).
            match int(item) {
                Some(c) if (0..=255).contains(&c) => codes.push(c.to_string()),
                _ => out.attention.push(format!(
                    "stop_exit_codes {item}: not an exit status (0 to 255); left out"
                )),
            }
        }
        out.doc.set(
            "restart",
            "stop_exit_codes",
            format!("[{}]", codes.join(", ")),
            "stop_exit_codes",
        );
    }
    if let Some(v) = keys.remove("max_memory_restart") {
        out.mapped("max_memory_restart");
        match size(&v) {
            Some(s) if s != "0" => out.doc.set(
                "limits",
                "max_memory",
                string(&s),
                "max_memory_restart: replaced gracefully, the new worker ready first",
            ),
            Some(_) => out
                .notes
                .push("max_memory_restart 0: no limit, as in PM2".into()),
            None => out.attention.push(format!(
                "max_memory_restart {v}: not a size PM2 takes; not imported"
            )),
        }
    }
    // PM2 runs an app as the user who ran `pm2` unless uid says otherwise; corral@.service
    // runs it as a dynamic user unless [service] user names one (DynamicUser=,
    // systemd.exec(5)).
    // (the user, why, whether the file said so)
    let ran_as = match keys.remove("username") {
        Some(Value::String(u)) if !u.is_empty() => {
            Some((u, "username: PM2 ran it as this user".to_string(), true))
        }
        _ if !opts.dump => opts.current_user.clone().map(|u| {
            (
                u,
                "who ran `corral import`; PM2 runs apps as the user who runs pm2".to_string(),
                false,
            )
        }),
        _ => None,
    };
    for (k, field) in [("uid", "user"), ("gid", "group")] {
        if let Some(v) = keys.remove(k) {
            let text = env_text(&v);
            let shown = out.say(k);
            out.mapped(k);
            if v.is_number() {
                out.attention.push(format!(
                    "{shown} {text}: [service] {field} takes a name; write the name of {shown} \
                     {text}"
                ));
            } else {
                out.doc.set("service", field, string(&text), &shown);
            }
        }
    }
    match ran_as {
        Some((user, _, _)) if user == "root" && !out.doc.has("service", "user") => {
            out.mapped("username");
            out.notes.push(format!(
                "username root: PM2 ran the app as root; corral@{corral_app} runs it as a \
                 dynamic user with no privileges, which is what most servers need; set \
                 [service] user only if it must be an account"
            ));
        }
        Some((user, why, said)) => {
            if said {
                out.mapped("username");
            }
            if !out.doc.has("service", "user") {
                out.doc.set("service", "user", string(&user), &why);
                if !said {
                    out.attention.push(format!(
                        "service.user {user}: the user running this import; change it if PM2 \
                         ran the app as someone else"
                    ));
                }
            }
        }
        None => {}
    }
}

fn no_equivalent(keys: &mut BTreeMap<String, Value>, out: &mut Out, corral_app: &str, dump: bool) {
    let log_keys: Vec<String> = [
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
    .filter(|k| keys.remove(*k).is_some())
    .map(|k| out.say(k))
    .collect();
    if !log_keys.is_empty() {
        out.notes.push(format!(
            "{}: the workers' lines go to journald, one entry per line with the worker's \
             fields, timestamped; `corral logs {corral_app}` shows them, `journalctl` filters \
             them",
            log_keys.join(", ")
        ));
    }
    let mut watch_keys = Vec::new();
    for k in ["watch", "ignore_watch", "watch_options", "watch_delay"] {
        match keys.remove(k) {
            Some(v) if k == "watch" && v.as_bool() == Some(false) => out
                .notes
                .push("watch false: corral does not watch files either".into()),
            Some(_) => watch_keys.push(out.say(k)),
            None => {}
        }
    }
    if !watch_keys.is_empty() {
        out.attention.push(format!(
            "{}: corral does not watch files; run `systemctl reload corral@{corral_app}` from \
             your deploy step, or from a systemd path unit on the files (systemd.path(5))",
            watch_keys.join(", ")
        ));
    }
    if let Some(v) = keys.remove("cron_restart") {
        out.attention.push(format!(
            "{} {v}: use a systemd timer (systemd.timer(5)) whose service runs `systemctl \
             reload corral@{corral_app}`, which restarts the workers without a gap",
            out.say("cron_restart")
        ));
    }
    for k in ["source_map_support", "disable_source_map_support"] {
        if keys.remove(k).is_some() {
            out.notes.push(format!(
                "{}: give node --enable-source-maps in interpreter_args if the app needs them",
                out.say(k)
            ));
        }
    }
    if let Some(v) = keys.remove("instance_var") {
        if v.as_str() == Some("NODE_APP_INSTANCE") {
            out.mapped("instance_var");
        } else {
            out.attention.push(format!(
                "instance_var {v}: corral gives the instance number as CORRAL_WORKER (and \
                 NODE_APP_INSTANCE with [node] preload), not under another name; read it there"
            ));
        }
    }
    if let Some(v) = keys.remove("increment_var") {
        out.attention.push(format!(
            "increment_var {v}: corral does not add a number to a variable per worker; \
             compute it from CORRAL_WORKER (e.g. PORT + CORRAL_WORKER)"
        ));
    }
    // A dump has PM2's "default" in every record; a file that says it means something by it.
    if let Some(ns) = keys
        .remove("namespace")
        .filter(|ns| !(dump && ns == "default"))
    {
        out.notes.push(format!(
            "namespace {ns}: corral has no namespaces; each app is a file in /etc/corral and a \
             unit corral@{corral_app}"
        ));
    }
    for (k, why) in NOT_NEEDED {
        if keys.remove(*k).is_some() {
            out.notes
                .push(format!("{}: not needed ({why})", out.say(k)));
        }
    }
    let unknown: Vec<String> = keys.keys().cloned().collect();
    for k in unknown {
        out.attention.push(format!(
            "{}: not a PM2 setting corral knows; not imported",
            out.say(&k)
        ));
    }
}

/// The config's text, checked as `corral check` would: a setting the checker refuses (a value
/// PM2 takes and corral does not, such as 5000 instances) is left out and reported, so that
/// every app still gets a config. Returns whether the config has a listener.
fn checked(out: &mut Out, corral_app: &str) -> Result<(String, bool), String> {
    let check_path = Path::new("/etc/corral").join(format!("{corral_app}.toml"));
    // Each round removes at least one setting; a config has far fewer.
    for _ in 0..64 {
        if !out.attention.is_empty() {
            out.doc.clear_footer();
            out.doc.footer("To look at:");
            for a in &out.attention {
                out.doc.footer(&format!("- {a}"));
            }
        }
        let (text, at) = out.doc.render_mapped();
        let err = match crate::config::Config::parse(&check_path, &text) {
            Ok(c) => return Ok((text, !c.listen.is_empty())),
            Err(e) => e,
        };
        let mut removed = false;
        for d in &err.diagnostics {
            let Some((_, table, key)) = at.iter().find(|(line, _, _)| *line == d.line) else {
                continue;
            };
            if table.is_empty() && key == "command" {
                continue;
            }
            let value = if table == "listen" {
                out.doc.remove_listens();
                out.doc.remove("node", "preload");
                Some(String::new())
            } else {
                out.doc.remove(table, key)
            };
            if let Some(value) = value {
                let name = if table.is_empty() {
                    key.clone()
                } else {
                    format!("{table}.{key}")
                };
                out.attention.push(format!(
                    "{name} {value}: corral does not take this value ({}); left out",
                    d.message
                ));
                removed = true;
            }
        }
        if !removed {
            return Err(format!(
                "the config made does not pass corral check (a bug in corral import; please \
                 report it with the ecosystem file):\n{err}\n{text}"
            ));
        }
    }
    Err("the config made does not pass corral check after removing what it refused".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pm2_values_as_pm2_reads_them() {
        assert_eq!(size(&Value::from("300M")).as_deref(), Some("300M"));
        assert_eq!(size(&Value::from(314_572_800u64)).as_deref(), Some("300M"));
        assert_eq!(size(&Value::from(1000u64)).as_deref(), Some("1000"));
        assert_eq!(size(&Value::from("12X")), None);
        assert_eq!(duration_ms(&Value::from("2m")), Some(120_000));
        assert_eq!(duration_ms(&Value::from("1500")), Some(1500));
        assert_eq!(duration_ms(&Value::from("2d")), None);
        assert_eq!(int(&Value::from("4")), Some(4));
        assert_eq!(int(&Value::from("-2")), Some(-2));
        assert_eq!(int(&Value::from(2.7)), Some(2));
        assert_eq!(int(&Value::from("x")), None);
        assert_eq!(ms(1600), "1600ms");
        assert_eq!(ms(120_000), "2m");
    }

    #[test]
    fn keys_as_pm2_reads_them() {
        assert_eq!(canonical("interpreter_args"), "node_args");
        assert_eq!(canonical("exec"), "script");
        assert_eq!(canonical("killTimeout"), "kill_timeout");
        assert_eq!(canonical("maxMemoryRestart"), "max_memory_restart");
        assert_eq!(canonical("windowsHide"), "windowsHide");
        assert_eq!(canonical("healthCheck"), "healthCheck");
        assert_eq!(interpreter_for_extension("py"), Some("python"));
        assert_eq!(interpreter_for_extension("ts"), Some("bun"));
        assert_eq!(interpreter_for_extension("mjs"), None);
        assert!(inherited("PATH") && inherited("LC_ALL") && inherited("PM2_HOME"));
        assert!(!inherited("NODE_ENV") && !inherited("DATABASE_URL"));
    }
}
