//! The `corral` command line. Errors are printed here, once, and mapped to stable exit codes.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;

use corral::cli::{Cli, Cmd};
use corral::config::Config;
use corral::control::{self, Command, StatusReply};
use corral::error::{exit, Error};
use corral::runtime::{self, RunOptions};

fn main() -> ExitCode {
    // Installed as /usr/lib/systemd/system-generators/corral-generator -> /usr/bin/corral.
    let mut args = std::env::args_os();
    let argv0 = args.next().unwrap_or_default();
    if Path::new(&argv0).file_name() == Some(std::ffi::OsStr::new("corral-generator")) {
        let rest: Vec<_> = args.collect();
        return ExitCode::from(corral::generator::main(&rest) as u8);
    }
    // corral runs itself under this name to be its keeper (see keeper.rs).
    if argv0 == corral::keeper::ARGV0 {
        return ExitCode::from(corral::keeper::main() as u8);
    }
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    exit::OK as u8
                }
                _ => exit::USAGE as u8,
            });
        }
    };
    match dispatch(cli.command) {
        Ok(code) => ExitCode::from(code as u8),
        Err(e) => {
            // Config diagnostics stand alone, each line FILE:LINE:COL: ..., for editors and CI.
            let prefix = if matches!(e, Error::Config(_)) {
                ""
            } else {
                "corral: "
            };
            let _ = writeln!(std::io::stderr(), "{prefix}{e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

/// `corral run api` means /etc/corral/api.toml; anything with a `/` or `.toml` is a path.
fn config_path(arg: &str) -> PathBuf {
    if arg.contains('/') || arg.ends_with(".toml") {
        PathBuf::from(arg)
    } else {
        PathBuf::from(format!("/etc/corral/{arg}.toml"))
    }
}

fn control_path(app: &str, given: Option<PathBuf>) -> PathBuf {
    given.unwrap_or_else(|| control::find_path(app))
}

fn dispatch(cmd: Cmd) -> Result<i32, Error> {
    match cmd {
        Cmd::Run { config, control } => runtime::run(RunOptions {
            config: config_path(&config),
            control,
        }),
        Cmd::Check { configs } => check(&configs),
        Cmd::Logs {
            app,
            follow,
            worker,
            agent,
            lines,
            control,
        } => {
            let who = match (agent, worker) {
                (true, _) => Some("agent".to_string()),
                (false, w) => w.map(|w| w.to_string()),
            };
            logs(&app, follow, who, lines, control)
        }
        Cmd::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut cmd, "corral", &mut std::io::stdout());
            Ok(exit::OK)
        }
        Cmd::Generate { config, output } => generate(&config, &output),
        Cmd::Import(corral::cli::Import::Pm2 {
            file,
            output,
            env,
            port,
            force,
        }) => {
            let report = corral::import::run(&corral::import::Options {
                file,
                output,
                env_name: env,
                port,
                force,
            })?;
            print!("{report}");
            Ok(0)
        }
        Cmd::Status { app, control, json } => status(app, control, json),
        Cmd::Reload { app, control } => remote(
            &control_path(&app, control),
            Command::Reload {
                // Set by systemd for ExecReload= (systemd.exec(5)): the supervisor then knows
                // systemd times this reload (runtime.rs).
                mainpid: std::env::var("MAINPID").ok().and_then(|p| p.parse().ok()),
            },
            "reloaded",
            None,
        ),
        Cmd::Restart {
            app,
            worker,
            agent,
            control,
        } => {
            let path = control_path(&app, control);
            if agent {
                let status = control::request(&path, Command::Status, Some(QUICK));
                if let Ok(r) = status {
                    if r.status.is_some_and(|s| s.agent.is_none()) {
                        return Err(Error::Refused(format!(
                            "{app} has no agent (no [agent] in its config)"
                        )));
                    }
                }
            }
            remote(&path, Command::Restart { worker, agent }, "restarted", None)
        }
        // Bounded: the new binary's check takes 10 s at most, the exec and take-over
        // milliseconds; a new image that hangs is not waited for past this.
        Cmd::Upgrade { app, control } => remote(
            &control_path(&app, control),
            Command::Upgrade,
            "upgraded",
            Some(std::time::Duration::from_secs(60)),
        ),
        Cmd::UpgradeCheck => {
            use std::io::Read;
            let mut state = Vec::new();
            std::io::stdin()
                .take(256 << 20)
                .read_to_end(&mut state)
                .map_err(|e| Error::io("cannot read the state", e))?;
            match corral::handover::check(&state) {
                Ok(said) => {
                    println!("{said}");
                    Ok(exit::OK)
                }
                Err(why) => Err(Error::Refused(why)),
            }
        }
        Cmd::Scale {
            app,
            workers,
            control,
        } => remote(
            &control_path(&app, control),
            Command::Scale { workers },
            "scaled",
            Some(QUICK),
        ),
        Cmd::Signal {
            app,
            signal,
            worker,
            control,
        } => remote(
            &control_path(&app, control),
            Command::Signal { signal, worker },
            "sent",
            Some(QUICK),
        ),
    }
}

/// `corral logs`: journalctl, matching the fields corral gives every entry of the app. An app
/// whose supervisor writes to its standard error instead (`corral run` outside systemd) has
/// nothing in the journal: say where its log is.
fn logs(
    app: &str,
    follow: bool,
    worker: Option<String>,
    lines: u32,
    control: Option<PathBuf>,
) -> Result<i32, Error> {
    use std::os::unix::process::CommandExt;
    let path = control_path(app, control);
    if let Ok(r) = control::request(&path, Command::Status, Some(QUICK)) {
        if let Some(s) = r.status.filter(|s| s.log == "stderr") {
            return Err(Error::Refused(format!(
                "{app} runs outside systemd (corral run, pid {}), which writes its workers' \
                 lines to its own standard error, not to the journal: look where that process's \
                 output goes (its terminal, or the file or pipe it was started with)",
                s.pid
            )));
        }
    }
    if !Path::new("/run/systemd/journal/socket").exists() {
        return Err(Error::Refused(format!(
            "journald is not running on this machine, so {app} has no journal: under \
             `corral run` outside systemd, its workers' lines are on corral's standard error"
        )));
    }
    let mut cmd = std::process::Command::new("journalctl");
    cmd.arg(format!("CORRAL_APP={app}")).args([
        "-n",
        &lines.to_string(),
        "-o",
        "short-iso",
        "--no-hostname",
    ]);
    if let Some(w) = worker {
        cmd.arg(format!("CORRAL_WORKER={w}"));
    }
    if follow {
        cmd.arg("-f");
    }
    // Replaces this process: journalctl's pager, colours and exit code are the user's.
    let e = cmd.exec();
    Err(match e.kind() {
        std::io::ErrorKind::NotFound => Error::Refused(format!(
            "there is no journal on this machine (journalctl not found): under `corral run` \
             outside systemd, {app}'s logs are on corral's standard error"
        )),
        _ => Error::io("cannot run journalctl", e),
    })
}

fn check(paths: &[PathBuf]) -> Result<i32, Error> {
    let mut errors = Vec::new();
    for p in paths {
        match Config::load(p) {
            Ok(c) => {
                for w in c.warnings() {
                    eprintln!("{}: warning: {w}", p.display());
                }
                println!(
                    "{}: ok ({} {}, {} listener{}{})",
                    p.display(),
                    match c.workers {
                        corral::config::WorkerCount::Auto =>
                            format!("auto = {}", c.workers.resolve()),
                        corral::config::WorkerCount::Count(n) => n.to_string(),
                    },
                    if c.workers.resolve() == 1 {
                        "worker"
                    } else {
                        "workers"
                    },
                    c.listen.len(),
                    if c.listen.len() == 1 { "" } else { "s" },
                    if c.agent.is_some() { ", an agent" } else { "" }
                )
            }
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(exit::OK)
    } else {
        Err(Error::Config(errors))
    }
}

fn generate(config: &Path, output: &Path) -> Result<i32, Error> {
    let c = Config::load_settings(config)?;
    let abs = std::path::absolute(config)
        .map_err(|e| Error::io(format!("cannot resolve {}", config.display()), e))?;
    let binary =
        std::env::current_exe().map_err(|e| Error::io("cannot find the corral binary", e))?;
    let flavor = corral::units::Flavor::Standalone {
        binary,
        config: abs.clone(),
    };
    let files = corral::units::render(&c, &abs, &flavor);
    std::fs::create_dir_all(output)
        .map_err(|e| Error::io(format!("cannot create {}", output.display()), e))?;
    for f in &files {
        let p = output.join(&f.path);
        std::fs::write(&p, &f.contents)
            .map_err(|e| Error::io(format!("cannot write {}", p.display()), e))?;
        println!("wrote {}", p.display());
    }
    let names: Vec<String> = files.iter().map(|f| f.path.display().to_string()).collect();
    let first = if c.listen.is_empty() {
        format!("{}.service", c.app)
    } else {
        format!("{}.socket", c.app)
    };
    println!("\nTo install and start them:");
    println!(
        "  sudo cp {} /etc/systemd/system/",
        names
            .iter()
            .map(|n| output.join(n).display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("  sudo systemctl daemon-reload");
    println!("  sudo systemctl enable --now {first}");
    Ok(exit::OK)
}

/// How long a command that needs no roll waits for the supervisor.
const QUICK: std::time::Duration = std::time::Duration::from_secs(10);

fn remote(
    path: &Path,
    command: Command,
    done: &str,
    timeout: Option<std::time::Duration>,
) -> Result<i32, Error> {
    // A roll's progress, as it goes, on stderr: stdout keeps only the outcome.
    let r = control::request_with_progress(path, command, timeout, |p| eprintln!("{p}"))?;
    if r.ok {
        println!("{}", r.message.unwrap_or_else(|| done.to_string()));
        Ok(exit::OK)
    } else {
        Err(Error::Refused(r.error.unwrap_or_else(|| "failed".into())))
    }
}

/// "12s ago", "3m ago", "2h ago", "4d ago", for a time in seconds since the epoch.
fn ago(at: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(at, |d| d.as_secs());
    let s = now.saturating_sub(at);
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

fn status(app: Option<String>, control: Option<PathBuf>, json: bool) -> Result<i32, Error> {
    let paths: Vec<PathBuf> = match (&app, control) {
        (_, Some(p)) => vec![p],
        (Some(a), None) => vec![control::find_path(a)],
        (None, None) => {
            // Every app on this machine: every socket in the control directory.
            let v = control::all_paths();
            if v.is_empty() {
                return Err(Error::NotRunning {
                    path: control::control_dir(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "no control socket there",
                    ),
                });
            }
            v
        }
    };
    let mut replies = Vec::new();
    let mut failed = None;
    for p in &paths {
        match control::request(p, Command::Status, Some(QUICK)) {
            Ok(r) => match (r.ok, r.status) {
                (true, Some(s)) => replies.push(s),
                _ => {
                    return Err(Error::Refused(
                        r.error.unwrap_or_else(|| "no status".into()),
                    ))
                }
            },
            // Listing every app: one dead socket (a SIGKILLed supervisor's) says so and
            // the others are still shown.
            Err(e) if paths.len() > 1 => {
                eprintln!("corral: {e}");
                failed = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    if replies.is_empty() {
        if let Some(e) = failed {
            return Err(e);
        }
    }
    let mut out = std::io::stdout().lock();
    if json {
        // One app asked about (by name or socket): an object; every app: an array.
        let text = if paths.len() == 1 && replies.len() == 1 {
            serde_json::to_string_pretty(&replies[0])
        } else {
            serde_json::to_string_pretty(&replies)
        };
        let _ = writeln!(out, "{}", text.expect("status serialises"));
    } else {
        let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
        for s in &replies {
            let _ = write!(out, "{}", table(s, color));
        }
    }
    Ok(exit::OK)
}

fn table(s: &StatusReply, color: bool) -> String {
    let mut t = format!(
        "{} ({}) · {} · generation {} · {}/{} ready · {} restart{}",
        s.app,
        s.config.display(),
        s.state,
        s.generation,
        s.ready,
        s.desired,
        s.restarts,
        if s.restarts == 1 { "" } else { "s" }
    );
    if let Some(r) = &s.reload {
        t += &format!(
            " · reloading to generation {}: {}/{} replaced",
            r.generation, r.replaced, r.total
        );
    }
    if !s.version.is_empty() {
        t += &format!(" · corral {}", corral::escape::controls(&s.version));
    }
    if let Some(u) = &s.upgraded {
        t += &format!(
            " · upgraded in place {} from {}",
            ago(u.at),
            corral::escape::controls(&u.from)
        );
    }
    t += "\n";
    for l in &s.listeners {
        let how = match (l.balance.as_str(), l.sockets) {
            ("shared", _) => "shared by the workers".to_string(),
            (b, Some(n)) => format!(
                "balanced ({b}), {n} socket{}",
                if n == 1 { "" } else { "s" }
            ),
            (b, None) => format!("balanced ({b})"),
        };
        t += &format!(
            "listen {} {} · {how}",
            l.name,
            corral::escape::controls(&l.address)
        );
        if let Some(note) = &l.note {
            t += &format!(" · {note}");
        }
        t += "\n";
    }
    t += &format!(
        "{:>4}  {:>8}  {:<8}  {:>3}  {:>8}  {:>7}  {:>6}  {:>9}  {}\n",
        "SLOT", "PID", "STATE", "GEN", "RESTARTS", "UPTIME", "CPU", "RSS", "STATUS"
    );
    for w in s.agent.iter().chain(&s.workers) {
        let state = if color {
            let c = match w.state.as_str() {
                "ready" => "32",
                "starting" => "33",
                _ => "31",
            };
            format!("\x1b[{c}m{:<8}\x1b[0m", w.state)
        } else {
            format!("{:<8}", w.state)
        };
        t += &format!(
            "{:>4}  {:>8}  {}  {:>3}  {:>8}  {:>7}  {:>6}  {:>9}  {}\n",
            w.slot.map_or("agent".into(), |s| s.to_string()),
            w.pid.map_or("-".into(), |p| p.to_string()),
            state,
            w.generation,
            w.restarts,
            w.uptime_s.map_or("-".into(), human_uptime),
            w.cpu_percent.map_or("-".into(), |c| format!("{c:.1}%")),
            w.rss_bytes.map_or("-".into(), human_bytes),
            corral::escape::controls(w.status.as_deref().unwrap_or(""))
        );
    }
    t
}

/// "42s", "7m", "3h", "2d": as `pm2 list` shows uptimes.
fn human_uptime(s: f64) -> String {
    let s = s as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1024.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", UNITS[i])
    }
}
