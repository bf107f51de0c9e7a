//! systemd units from an app config: one pure function, [`render`], for the generator
//! (drop-ins for the shipped `corral@.service` / `corral@.socket` templates) and for
//! `corral generate` (standalone `APP.service` + `APP.socket`). The shipped templates themselves
//! come from [`template_service`] and [`template_socket`]; a test keeps `units/` equal to them.
//!
//! Layout under systemd, per app `APP` with listeners `L0, L1, ...`:
//! - `corral@APP.socket` holds the first listener. systemd names every descriptor of a socket
//!   unit with its one `FileDescriptorName=` (systemd.socket(5)), so each further listener gets
//!   a socket unit of its own, `corral@APP:NAME.socket` (`:` is in neither app nor listener
//!   names, so these never collide), pointed at `corral@APP.service` with `Service=`;
//! - `corral@APP.service` inherits all of them (`Sockets=`) and requires them, so starting the
//!   service alone also opens its sockets.
//!
//! Instances of real template files can be enabled (`systemctl enable corral@api.socket`), which
//! units written wholly by a generator cannot.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{Address, Balance, Config, Listen};

/// Where the binary is installed by the packages, and what the templates run.
pub const BINARY: &str = "/usr/bin/corral";
/// Where app configs live.
pub const CONFIG_DIR: &str = "/etc/corral";
/// systemd's default TimeoutStopSec= is 90s; corral needs its drain time plus this margin to
/// SIGKILL what is left and exit by itself before systemd steps in.
const STOP_MARGIN: Duration = Duration::from_secs(10);
/// WatchdogSec= of the supervisor when the config's `[service] watchdog` is not set: corral pings
/// from its event loop at half of it, so a loop stuck this long gets the service restarted.
const DEFAULT_WATCHDOG: &str = "30s";

/// LimitNOFILE=, `SOFT:HARD`: systemd's defaults, said where an operator looks. The workers get
/// the soft limit, 1024 (kept for select(2), systemd.exec(5)), as they would as services of
/// their own; an app that needs more sets it in a drop-in. corral raises only its own soft
/// limit, to what its workers' files need (nofile.rs), within the hard limit, 524288, which a
/// worker may raise its own to as well. Under these units the sockets are the socket units':
/// corral opens none (nofile.rs overcounts there).
const NOFILE_SOFT: u64 = 1024;
const NOFILE_HARD: u64 = 524288;
const _: () = assert!(crate::nofile::wanted(0) <= NOFILE_HARD);

/// Sandboxing for the supervisor and its workers: `systemd-analyze security` rates it about 1.1
/// ("OK"). No MemoryDenyWriteExecute=: V8 and other JITs need writable executable pages.
/// Apps that must write somewhere add `ReadWritePaths=` in a drop-in (or use StateDirectory=).
const HARDENING: &str = "\
NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
UMask=0027
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateUsers=yes
ProtectHostname=yes
ProtectClock=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
RemoveIPC=yes
KeyringMode=private
DevicePolicy=closed
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
SystemCallErrorNumber=EPERM
";

/// One file to write, relative to the output directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitFile {
    pub path: PathBuf,
    pub contents: String,
}

/// What the units are for.
#[derive(Clone, Debug)]
pub enum Flavor {
    /// Drop-ins for the `corral@.service` / `corral@.socket` templates (the generator).
    Generator,
    /// Self-contained `APP.service` / `APP.socket` (`corral generate`), running `binary` on the
    /// config at `config` (absolute).
    Standalone { binary: PathBuf, config: PathBuf },
}

/// The shipped `corral@.service`.
pub fn template_service() -> String {
    let mut s = format!(
        "\
# corral@.service: one corral supervisor per app, configured by /etc/corral/%i.toml.
# corral-generator(8) adds the app's user, directory, timeouts and sockets as drop-ins.
[Unit]
Description=corral app %i
After=network.target

[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/bin/corral run /etc/corral/%i.toml
# Synchronous: systemctl reload waits for the roll and fails when it is refused or fails
# (systemd.service(5) advises this over kill -HUP).
ExecReload=/usr/bin/corral reload --control %t/corral/%i/%i.sock %i
# SIGTERM to corral, which drains its workers; SIGKILL for whatever is left at the timeout.
KillMode=mixed
Restart=on-failure
RestartSec=1s
TimeoutStopSec=40s
WatchdogSec={DEFAULT_WATCHDOG}
RuntimeDirectory=corral/%i
# Open files: what the workers get (systemd's defaults; raise them for the app in a drop-in).
# corral raises its own soft limit, within the hard one, for its pipes and connections.
LimitNOFILE={NOFILE_SOFT}:{NOFILE_HARD}
DynamicUser=yes
",
    );
    s += HARDENING;
    // For apps without listeners; an app with listeners is enabled through its socket.
    s += "\n[Install]\nWantedBy=multi-user.target\n";
    s
}

/// The shipped `corral@.socket`; the generator adds the listener in a drop-in.
pub fn template_socket() -> String {
    "\
# corral@.socket: the listeners of corral@%i.service, from /etc/corral/%i.toml.
# corral-generator(8) adds ListenStream= and FileDescriptorName= in a drop-in.
[Unit]
Description=corral app %i sockets

[Socket]
Service=corral@%i.service

[Install]
WantedBy=sockets.target
"
    .to_string()
}

/// systemd expands `%` specifiers in most settings (systemd.unit(5)): a literal `%` is `%%`.
fn escape(s: &str) -> String {
    s.replace('%', "%%")
}

/// A duration as systemd reads it, in whole milliseconds.
fn sec(d: Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// How many sockets a balanced listener's socket unit holds: one per worker, and one for each
/// worker a reload batch starts beside the old ones (an old worker keeps its socket while it
/// drains). More workers than that (`corral scale`) share sockets until the config counts
/// them, `daemon-reload` regenerates the unit and the socket unit restarts.
pub fn balanced_sockets(config: &Config) -> u32 {
    let workers = config.workers.resolve().max(1);
    workers + config.reload.batch.slots(workers).max(1)
}

fn listen_lines(l: &Listen, config: &Config) -> String {
    let mut s = String::new();
    let addr = match &l.address {
        Address::Tcp(a) => a.to_string(),
        Address::Unix(p) => p.display().to_string(),
    };
    let balanced = l.balance.per_worker() && matches!(l.address, Address::Tcp(_));
    let sockets = if balanced {
        balanced_sockets(config)
    } else {
        1
    };
    for _ in 0..sockets {
        let _ = writeln!(s, "ListenStream={}", escape(&addr));
    }
    if balanced {
        // One SO_REUSEPORT group (socket(7)), in which corral steers each new connection to
        // a worker's socket (balance.rs); systemd.socket(5) ReusePort=.
        s += "ReusePort=yes\n";
    }
    let _ = writeln!(s, "FileDescriptorName={}", escape(&l.name));
    let _ = writeln!(s, "Backlog={}", l.backlog);
    if let Address::Tcp(a) = &l.address {
        if a.ip().is_unspecified() && a.is_ipv6() {
            // "[::]:PORT" (and a bare "PORT") means every address, IPv4 too, whatever
            // net.ipv6.bindv6only says (systemd.socket(5) BindIPv6Only=).
            s += "BindIPv6Only=both\n";
        }
    }
    if let Some(mode) = l.mode {
        let _ = writeln!(s, "SocketMode={mode:04o}");
    }
    if let Some(u) = &l.owner {
        let _ = writeln!(s, "SocketUser={}", escape(u));
    }
    if let Some(g) = &l.group {
        let _ = writeln!(s, "SocketGroup={}", escape(g));
    }
    s
}

/// The unit names of the app's sockets, first listener first.
fn socket_units(config: &Config, flavor: &Flavor) -> Vec<String> {
    let app = &config.app;
    config
        .listen
        .iter()
        .enumerate()
        .map(|(i, l)| match (flavor, i) {
            (Flavor::Generator, 0) => format!("corral@{app}.socket"),
            (Flavor::Generator, _) => format!("corral@{app}:{}.socket", l.name),
            (Flavor::Standalone { .. }, 0) => format!("{app}.socket"),
            (Flavor::Standalone { .. }, _) => format!("{app}-{}.socket", l.name),
        })
        .collect()
}

/// The service settings that come from the app config; `watchdog` is the WatchdogSec= to use
/// when the config sets none (`None`: leave the template's).
fn service_settings(config: &Config, sockets: &[String], watchdog: Option<&str>) -> String {
    let mut s = String::new();
    if !sockets.is_empty() {
        let _ = writeln!(s, "Sockets={}", sockets.join(" "));
    }
    // No user: a dynamic one (systemd.exec(5) DynamicUser=), never root; a group alone is
    // then the dynamic user's group.
    match &config.service.user {
        None => s += "DynamicUser=yes\n",
        Some(u) => {
            s += "DynamicUser=no\n";
            let _ = writeln!(s, "User={}", escape(u));
        }
    }
    if let Some(g) = &config.service.group {
        let _ = writeln!(s, "Group={}", escape(g));
    }
    if let Some(d) = &config.directory {
        let _ = writeln!(s, "WorkingDirectory={}", escape(&d.display().to_string()));
    }
    match (config.service.watchdog, watchdog) {
        (Some(w), _) => {
            let _ = writeln!(s, "WatchdogSec={}", sec(w));
        }
        (None, Some(default)) => {
            let _ = writeln!(s, "WatchdogSec={default}");
        }
        (None, None) => {}
    }
    // The agent stops after the workers (supervisor_agent.rs).
    let agent_stop = config
        .agent
        .as_ref()
        .map_or(Duration::ZERO, |a| a.stop.drain_time());
    let _ = writeln!(
        s,
        "TimeoutStopSec={}",
        sec(config.stop.drain_time() + agent_stop + STOP_MARGIN)
    );
    let _ = writeln!(s, "TimeoutStartSec={}", sec(start_timeout(config)));
    // ProtectHome=yes hides /home and /root: an app that lives there (as PM2 apps often do)
    // gets them read-only instead.
    let in_home = |p: &Path| p.starts_with("/home") || p.starts_with("/root");
    if config.directory.as_deref().is_some_and(in_home) || in_home(Path::new(&config.command[0])) {
        s += "ProtectHome=read-only\n";
    }
    s
}

/// What an app with an even listener needs to deal its connections out in turn (ebpf.rs):
/// CAP_BPF in the host's user namespace, which PrivateUsers= would confine to the unit's own,
/// and bpf(2), which the hardening's `~@privileged` denies. corral keeps CAP_BPF from its
/// workers (spawn.rs). `systemd-analyze security` rates the unit 1.6 with these, 1.3 without
/// (systemd 252, offline); without them corral places connections at random and says why.
fn deal_settings(config: &Config) -> &'static str {
    let even = config
        .listen
        .iter()
        .any(|l| l.balance == Balance::Even && matches!(l.address, Address::Tcp(_)));
    // A root app's workers would get every capability of the bounding set at exec, whatever
    // corral does with its ambient set (capabilities(7)): no CAP_BPF there.
    let root = matches!(config.service.user.as_deref(), Some("root" | "0"));
    if even && !root {
        "PrivateUsers=no\nCapabilityBoundingSet=CAP_BPF\nAmbientCapabilities=CAP_BPF\n\
         SystemCallFilter=bpf\n"
    } else {
        ""
    }
}

/// systemd applies TimeoutStartSec= to the start (every slot ready) and to ExecReload= (a
/// whole roll: one readiness timeout per batch, then the last old workers' drain). The
/// default 90s would cut a long roll short, and fail a reload that is still going well.
fn start_timeout(config: &Config) -> Duration {
    let workers = config.workers.resolve().max(1);
    let batch = config.reload.batch.slots(workers).max(1);
    let rounds = workers.div_ceil(batch);
    // An agent is ready before the workers start, and a reload that replaces it stops the old
    // one and waits for the new one first.
    let agent = config.agent.as_ref().map_or(Duration::ZERO, |a| {
        a.stop.drain_time() + a.readiness.timeout
    });
    let roll = agent
        + config.readiness.timeout * rounds
        + config.stop.drain_time()
        + Duration::from_secs(30);
    roll.max(Duration::from_secs(90))
}

/// The app's first socket unit (the one an operator enables) pulls in the others, so every
/// listener is open at boot, not only once the service has started.
fn siblings(i: usize, sockets: &[String]) -> String {
    if i == 0 && sockets.len() > 1 {
        format!("Wants={}\n", sockets[1..].join(" "))
    } else {
        String::new()
    }
}

fn header(source: &Path) -> String {
    format!(
        "# Generated by corral from {}: edit that file, not this one.\n",
        source.display()
    )
}

/// Renders the units for `config`, read from `source`.
pub fn render(config: &Config, source: &Path, flavor: &Flavor) -> Vec<UnitFile> {
    let app = &config.app;
    let sockets = socket_units(config, flavor);
    let mut files = Vec::new();
    let deps = if sockets.is_empty() {
        String::new()
    } else {
        format!("Requires={0}\nAfter={0}\n", sockets.join(" "))
    };
    match flavor {
        Flavor::Generator => {
            files.push(UnitFile {
                path: PathBuf::from(format!("corral@{app}.service.d/50-corral.conf")),
                contents: format!(
                    "{}[Unit]\nSourcePath={}\n{deps}\n[Service]\n{}",
                    header(source),
                    source.display(),
                    service_settings(config, &sockets, None) + deal_settings(config)
                ),
            });
            for (i, (unit, l)) in sockets.iter().zip(&config.listen).enumerate() {
                let service = if i == 0 {
                    String::new()
                } else {
                    format!("Service=corral@{app}.service\n")
                };
                files.push(UnitFile {
                    path: PathBuf::from(format!("{unit}.d/50-corral.conf")),
                    contents: format!(
                        "{}[Unit]\nSourcePath={}\n{}\n[Socket]\n{service}{}",
                        header(source),
                        source.display(),
                        siblings(i, &sockets),
                        listen_lines(l, config)
                    ),
                });
            }
        }
        Flavor::Standalone {
            binary,
            config: path,
        } => {
            let bin = escape(&binary.display().to_string());
            let mut service = format!(
                "{}[Unit]\nDescription=corral app {app}\nAfter=network.target\n{deps}\n[Service]\nType=notify\nNotifyAccess=main\n\
                 ExecStart={bin} run {}\nExecReload={bin} reload --control %t/corral/{app}/{app}.sock \
                 {app}\nKillMode=mixed\n\
                 Restart=on-failure\nRestartSec=1s\n\
                 RuntimeDirectory=corral/{app}\nLimitNOFILE={NOFILE_SOFT}:{NOFILE_HARD}\n",
                header(source),
                escape(&path.display().to_string()),
            );
            service += &service_settings(config, &sockets, Some(DEFAULT_WATCHDOG));
            service += HARDENING;
            service += deal_settings(config);
            service += "\n[Install]\nWantedBy=multi-user.target\n";
            files.push(UnitFile {
                path: PathBuf::from(format!("{app}.service")),
                contents: service,
            });
            for (i, (unit, l)) in sockets.iter().zip(&config.listen).enumerate() {
                files.push(UnitFile {
                    path: PathBuf::from(unit),
                    contents: format!(
                        "{}[Unit]\nDescription=corral app {app} socket {}\n{}\n[Socket]\n\
                         Service={app}.service\n{}\n[Install]\nWantedBy=sockets.target\n",
                        header(source),
                        escape(&l.name),
                        siblings(i, &sockets),
                        listen_lines(l, config)
                    ),
                });
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Config {
        Config::parse(Path::new("/etc/corral/api.toml"), text).unwrap()
    }

    #[test]
    fn shipped_templates_are_what_the_code_renders() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("units");
        for (file, want) in [
            ("corral@.service", template_service()),
            ("corral@.socket", template_socket()),
        ] {
            if std::env::var_os("CORRAL_UPDATE_GOLDEN").is_some() {
                std::fs::write(root.join(file), &want).unwrap();
            }
            let got = std::fs::read_to_string(root.join(file)).unwrap_or_default();
            assert_eq!(
                got, want,
                "units/{file} differs from units.rs: CORRAL_UPDATE_GOLDEN=1 cargo test rewrites it"
            );
        }
    }

    #[test]
    fn the_open_file_limit_covers_the_most_workers_and_control_connections() {
        assert_eq!(
            crate::nofile::wanted(0),
            16384,
            "8448 rounded up, as the comments give"
        );
        let line = "LimitNOFILE=1024:524288\n";
        assert!(template_service().contains(line));
        let standalone = render(
            &config("command = [\"x\"]\n"),
            Path::new("/etc/corral/api.toml"),
            &Flavor::Standalone {
                binary: BINARY.into(),
                config: "/etc/corral/api.toml".into(),
            },
        );
        assert!(standalone[0].contents.contains(line));
    }

    #[test]
    fn specifiers_are_escaped_and_durations_are_systemd_syntax() {
        assert_eq!(escape("50%"), "50%%");
        assert_eq!(sec(Duration::from_millis(1500)), "1500ms");
        assert_eq!(sec(Duration::from_secs(40)), "40s");
    }

    #[test]
    fn a_group_without_a_user_still_runs_as_a_dynamic_user() {
        let files = render(
            &config("command = [\"x\"]\n[service]\ngroup = \"www-data\"\n"),
            Path::new("/etc/corral/api.toml"),
            &Flavor::Generator,
        );
        let service = &files[0].contents;
        assert!(
            service.contains("DynamicUser=yes\nGroup=www-data\n"),
            "{service}"
        );
        assert!(
            !service.lines().any(|l| l.starts_with("User=")),
            "{service}"
        );
    }

    #[test]
    fn an_app_without_listeners_gets_only_a_service_drop_in() {
        let files = render(
            &config("command = [\"x\"]\n"),
            Path::new("/etc/corral/api.toml"),
            &Flavor::Generator,
        );
        assert_eq!(files.len(), 1);
        assert!(!files[0].contents.contains("Sockets="));
        assert!(files[0].contents.contains("DynamicUser=yes"));
    }

    #[test]
    fn an_agent_adds_its_stop_to_the_stop_timeout_and_its_start_to_the_start_timeout() {
        let unit = |text: &str| {
            let files = render(
                &config(text),
                Path::new("/etc/corral/api.toml"),
                &Flavor::Generator,
            );
            files[0].contents.clone()
        };
        let plain = "command = [\"x\"]\nstop = { timeout = \"30s\" }\n\
                     readiness = { timeout = \"100s\" }\n";
        assert!(
            unit(plain).contains("TimeoutStopSec=40s"),
            "{}",
            unit(plain)
        );
        assert!(
            unit(plain).contains("TimeoutStartSec=160s"),
            "{}",
            unit(plain)
        );
        let agent = format!(
            "{plain}[agent]\ncommand = [\"y\"]\nstop = {{ timeout = \"20s\" }}\n\
             readiness = {{ timeout = \"5s\" }}\n"
        );
        // Workers 30s, then the agent 20s, and the margin.
        assert!(
            unit(&agent).contains("TimeoutStopSec=60s"),
            "{}",
            unit(&agent)
        );
        // The old agent's stop and the new one's start come before the workers' roll.
        assert!(
            unit(&agent).contains("TimeoutStartSec=185s"),
            "{}",
            unit(&agent)
        );
    }
}
