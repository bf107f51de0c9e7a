//! The command line: every command and flag, in one place for `--help`, the completions and
//! the man page's coverage test.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Exit codes, as `--help` and corral(1) list them (see [`crate::error::exit`]).
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  failure: invalid config, refused or failed reload, error
  2  usage error
  3  not running: no supervisor answers on the control socket";

#[derive(Parser)]
#[command(
    name = "corral",
    version = crate::version::get(),
    about = "Run N copies of a server behind shared, socket-activated listeners, the systemd way",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the supervisor in the foreground (what corral@.service starts).
    Run {
        /// The app config file, or an app name for /etc/corral/APP.toml.
        config: String,
        /// Control socket path (default: $RUNTIME_DIRECTORY/APP.sock under systemd, /run/corral/APP.sock as root, else $XDG_RUNTIME_DIR/corral/APP.sock).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// Validate config files; prints every error with FILE:LINE:COL and exits 1 on any.
    Check {
        #[arg(required = true, value_name = "CONFIG")]
        configs: Vec<PathBuf>,
    },
    /// Show the workers of one app, or of every app running on this machine.
    Status {
        app: Option<String>,
        /// Control socket path (default: found from APP, see corral(1)).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
        /// Print JSON (stable field names) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rolling reload with the re-read config; returns when done, non-zero if refused or failed.
    Reload {
        app: String,
        /// Control socket path (default: found from APP, see corral(1)).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// Rolling restart of every worker, or one, or the agent, without re-reading the config.
    Restart {
        app: String,
        /// Only this slot.
        #[arg(long, value_name = "N")]
        worker: Option<u32>,
        /// Only the agent (`[agent]`): stopped, then started again.
        #[arg(long, conflicts_with = "worker")]
        agent: bool,
        /// Control socket path (default: found from APP, see corral(1)).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// Re-execute the supervisor from the corral binary now installed, keeping its pid, its
    /// workers and its sockets (after a package upgrade); non-zero if it could not.
    Upgrade {
        app: String,
        /// Control socket path (default: found from APP, see corral(1)).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// Read an upgrade's state on standard input and say whether this binary can take it
    /// over (run by the supervisor itself before `corral upgrade` execs this binary).
    #[command(hide = true, name = "upgrade-check")]
    UpgradeCheck,
    /// Show the app's logs from the journal (journalctl with the app's fields).
    Logs {
        app: String,
        /// Keep printing new lines as they come.
        #[arg(short, long)]
        follow: bool,
        /// Only this slot's lines (CORRAL_WORKER=N).
        #[arg(long, value_name = "N")]
        worker: Option<u32>,
        /// Only the agent's lines (CORRAL_WORKER=agent).
        #[arg(long, conflicts_with = "worker")]
        agent: bool,
        /// How many of the last lines to show.
        #[arg(short = 'n', long, value_name = "N", default_value_t = 50)]
        lines: u32,
        /// Control socket path, to tell an app that logs outside the journal (default: found
        /// from APP, see corral(1)).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// Print a shell completion script.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write standalone APP.service and APP.socket units for CONFIG (replaces `pm2 startup`).
    Generate {
        config: PathBuf,
        /// Directory to write the units to.
        #[arg(long, value_name = "DIR", default_value = ".")]
        output: PathBuf,
    },
    /// Send a signal to the workers (all, or one slot's), like `pm2 sendSignal`.
    Signal {
        app: String,
        /// A signal name, like USR1, SIGUSR2 or HUP.
        #[arg(value_name = "SIGNAL")]
        signal: String,
        /// Only this slot's worker.
        #[arg(long, value_name = "N")]
        worker: Option<u32>,
        /// Control socket path (default: found from APP, see corral(1)).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
    /// Write corral app configs from another tool's (PM2's ecosystem file or saved list).
    #[command(subcommand)]
    Import(Import),
    /// Change the number of workers now: N, +N or -N (until the next reload re-reads `workers`).
    Scale {
        app: String,
        #[arg(allow_hyphen_values = true, value_name = "N|+N|-N")]
        workers: String,
        /// Control socket path (default: found from APP, see corral(1)).
        #[arg(long, value_name = "PATH")]
        control: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum Import {
    /// PM2's apps: an ecosystem file (.js, .cjs, .mjs, .json, .yaml) or `pm2 save`'s dump.pm2.
    Pm2 {
        /// The ecosystem file, or ~/.pm2/dump.pm2.
        file: PathBuf,
        /// Directory to write APP.toml files to (nothing is written if any app fails).
        #[arg(long, value_name = "DIR", default_value = ".")]
        output: PathBuf,
        /// Apply the app's env_NAME over env, as `pm2 start --env NAME`.
        #[arg(long, value_name = "NAME")]
        env: Option<String>,
        /// The port the app listens on, when the ecosystem does not say (PORT in env).
        #[arg(long, value_name = "PORT")]
        port: Option<u16>,
        /// Overwrite APP.toml files that exist.
        #[arg(long)]
        force: bool,
    },
}
