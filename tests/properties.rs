//! Property-based tests of what corral parses from others: config files (from operators),
//! sd_notify datagrams (from workers), control requests (from clients). Arbitrary input never
//! panics, and what is accepted means what it says. A fixed seed and a fixed number of cases
//! per property: the same run every time, within a bounded time.

use std::path::Path;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use corral::config::Config as AppConfig;
use corral::notify::Notification;

/// A runner with a fixed seed and budget, and no files of failures left behind.
fn runner(cases: u32) -> TestRunner {
    let config = Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    };
    TestRunner::new_with_rng(config, TestRng::deterministic_rng(RngAlgorithm::ChaCha))
}

/// Text that looks like a config file: keys corral knows and does not, values of every TOML
/// type, sections, junk.
fn config_text() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("command".to_string()),
        Just("workers".to_string()),
        Just("directory".to_string()),
        Just("environment".to_string()),
        Just("[readiness]\nmode".to_string()),
        Just("[readiness]\ntimeout".to_string()),
        Just("[stop]\ntimeout".to_string()),
        Just("[stop]\nmessage".to_string()),
        Just("[restart]\nstop_exit_codes".to_string()),
        Just("[restart]\nmax_failures".to_string()),
        Just("[[listen]]\naddress".to_string()),
        Just("[[listen]]\nname".to_string()),
        Just("[limits]\nmax_memory".to_string()),
        "[a-z_]{1,12}",
    ];
    let value = prop_oneof![
        "\"[ -~]{0,20}\"",
        any::<i64>().prop_map(|n| n.to_string()),
        Just("true".to_string()),
        Just("[\"node\", \"app.js\"]".to_string()),
        Just("[0, 3, 300]".to_string()),
        Just("\"30s\"".to_string()),
        Just("\"1.5x\"".to_string()),
        Just("{ A = \"1\" }".to_string()),
        "[ -~]{0,10}",
    ];
    prop::collection::vec((key, value), 0..12).prop_map(|kvs| {
        kvs.into_iter()
            .map(|(k, v)| format!("{k} = {v}\n"))
            .collect::<String>()
    })
}

#[test]
fn configs_never_panic_and_every_diagnostic_points_into_the_file() {
    let path = Path::new("/etc/corral/prop.toml");
    runner(2000)
        .run(&config_text(), |text| {
            match AppConfig::parse(path, &text) {
                Ok(c) => {
                    // What is accepted is what the file says it is.
                    prop_assert!(!c.command.is_empty());
                    prop_assert!(c.workers.resolve() >= 1);
                }
                Err(e) => {
                    let lines = text.lines().count().max(1);
                    prop_assert!(!e.diagnostics.is_empty());
                    for d in &e.diagnostics {
                        prop_assert!(d.line >= 1 && d.line <= lines + 1, "{d:?} in {lines}");
                        prop_assert!(d.col >= 1);
                    }
                }
            }
            Ok(())
        })
        .unwrap();
}

/// A TOML basic string's body with control characters in it, escaped TOML's way
/// (`\u001b`, `\u0007`, `\t`, ...), so that the file itself is valid.
fn with_controls() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "[a-zA-Z_ /.:]{1,4}",
        Just("\\u001b[2J".to_string()),
        Just("\\u001b]0;x\\u0007".to_string()),
        Just("\\u009b".to_string()),
        Just("\\n".to_string()),
        Just("\\r".to_string()),
        Just("\\t".to_string()),
        Just("\\b".to_string()),
        Just("\\\\".to_string()),
    ];
    prop::collection::vec(piece, 1..5).prop_map(|p| p.concat())
}

/// Whatever keys, values and paths a config holds, its diagnostics as shown (by `corral check`,
/// a refused reload) hold no control character but the newline between them.
#[test]
fn shown_diagnostics_carry_no_control_character() {
    let line = prop_oneof![
        with_controls().prop_map(|k| format!("\"{k}\" = 1")),
        with_controls().prop_map(|k| format!("[environment]\n\"{k}\" = []")),
        with_controls().prop_map(|k| format!("[environment]\n\"CORRAL_{k}\" = \"x\"")),
        with_controls().prop_map(|k| format!("[stop]\n\"{k}\" = 1")),
        with_controls().prop_map(|v| format!("workers = \"{v}\"")),
        with_controls().prop_map(|v| format!("directory = \"{v}\"")),
        with_controls().prop_map(|v| format!("environment_file = \"/{v}\"")),
        with_controls().prop_map(|v| format!("[[listen]]\nname = \"{v}\"\naddress = \"/{v}\"")),
        with_controls().prop_map(|v| format!("[[listen]]\naddress = \"[{v}]:80\"")),
        with_controls().prop_map(|v| format!("[readiness]\ntimeout = \"{v}\"")),
        with_controls().prop_map(|k| format!("\"{k}\" = 1\n\"{k}\" = 2")),
    ];
    let dir = std::env::temp_dir().join(format!("corral-prop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    runner(1000)
        .run(&prop::collection::vec(line, 1..4), |lines| {
            let text = lines.join("\n") + "\n";
            // Loaded from a file: environment files are read (and not found) too.
            let path = dir.join("prop.toml");
            std::fs::write(&path, &text).unwrap();
            if let Err(e) = AppConfig::load(&path) {
                let shown = e.to_string();
                prop_assert!(
                    !shown.contains(|c: char| c.is_control() && c != '\n'),
                    "{text:?} shows {shown:?}"
                );
            }
            Ok(())
        })
        .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn arbitrary_bytes_as_a_config_never_panic() {
    let path = Path::new("/etc/corral/prop.toml");
    runner(2000)
        .run(&prop::collection::vec(any::<u8>(), 0..400), |bytes| {
            let text = String::from_utf8_lossy(&bytes);
            let _ = AppConfig::parse(path, &text);
            Ok(())
        })
        .unwrap();
}

#[test]
fn notify_datagrams_never_panic_and_say_what_they_carry() {
    runner(3000)
        .run(&prop::collection::vec(any::<u8>(), 0..600), |bytes| {
            let _ = Notification::parse(&bytes);
            Ok(())
        })
        .unwrap();
    let assignment = prop_oneof![
        Just("READY=1".to_string()),
        Just("WATCHDOG=1".to_string()),
        Just("STOPPING=1".to_string()),
        "STATUS=[ -~]{0,30}",
        any::<u64>().prop_map(|n| format!("EXTEND_TIMEOUT_USEC={n}")),
        "[A-Z_]{1,10}=[ -~]{0,10}",
    ];
    runner(3000)
        .run(&prop::collection::vec(assignment, 0..8), |lines| {
            let datagram = lines.join("\n");
            let n = Notification::parse(datagram.as_bytes());
            prop_assert_eq!(n.ready, lines.iter().any(|l| l == "READY=1"));
            prop_assert_eq!(n.watchdog_ping, lines.iter().any(|l| l == "WATCHDOG=1"));
            // The last STATUS= wins, as systemd keeps the last.
            let status = lines.iter().rev().find_map(|l| l.strip_prefix("STATUS="));
            prop_assert_eq!(n.status.as_deref(), status);
            Ok(())
        })
        .unwrap();
}

/// Control commands, all of them, with arbitrary arguments.
fn command() -> impl Strategy<Value = corral::control::Command> {
    use corral::control::Command;
    prop_oneof![
        Just(Command::Status),
        Just(Command::Reload { mainpid: None }),
        (proptest::option::of(any::<u32>()), any::<bool>())
            .prop_map(|(worker, agent)| Command::Restart { worker, agent }),
        "[ -~]{0,12}".prop_map(|workers| Command::Scale { workers }),
        ("[ -~]{0,12}", proptest::option::of(any::<u32>()))
            .prop_map(|(signal, worker)| Command::Signal { signal, worker }),
    ]
}

#[test]
fn control_requests_never_panic_and_round_trip() {
    use corral::control::{parse, Request, PROTOCOL_VERSION};
    // Whatever a client sends, the server answers with a command or an error text.
    runner(3000)
        .run(&"[ -~]{0,200}", |line| {
            let _ = parse(&line);
            Ok(())
        })
        .unwrap();
    runner(2000)
        .run(&prop::collection::vec(any::<u8>(), 0..300), |bytes| {
            let _ = parse(&String::from_utf8_lossy(&bytes));
            Ok(())
        })
        .unwrap();
    // What this client sends, this server reads as sent; another version is an error that
    // names both.
    runner(2000)
        .run(&(command(), any::<u32>()), |(command, other)| {
            let line = serde_json::to_string(&Request {
                version: PROTOCOL_VERSION,
                command: command.clone(),
            })
            .unwrap();
            prop_assert_eq!(parse(&line), Ok(command.clone()));
            if other != PROTOCOL_VERSION {
                let line = serde_json::to_string(&Request {
                    version: other,
                    command,
                })
                .unwrap();
                let e = parse(&line).unwrap_err();
                prop_assert!(e.contains(&format!("protocol version {other}")), "{e}");
            }
            Ok(())
        })
        .unwrap();
}

/// A PM2 app as JSON: keys of PM2's schema (snake_case, camelCase, aliases) and others, with
/// values of every JSON type, in range and far out of it.
fn pm2_app() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("name"),
        Just("script"),
        Just("exec"),
        Just("cwd"),
        Just("args"),
        Just("interpreter"),
        Just("interpreter_args"),
        Just("instances"),
        Just("exec_mode"),
        Just("env"),
        Just("env_production"),
        Just("env_file"),
        Just("port"),
        Just("wait_ready"),
        Just("listen_timeout"),
        Just("kill_timeout"),
        Just("killTimeout"),
        Just("shutdown_with_message"),
        Just("max_memory_restart"),
        Just("autorestart"),
        Just("restart_delay"),
        Just("exp_backoff_restart_delay"),
        Just("max_restarts"),
        Just("min_uptime"),
        Just("stop_exit_codes"),
        Just("instance_var"),
        Just("increment_var"),
        Just("uid"),
        Just("gid"),
        Just("username"),
        Just("namespace"),
        Just("watch"),
        Just("cron_restart"),
        Just("out_file"),
        Just("vizion"),
        Just("unknown_key"),
    ];
    let value = prop_oneof![
        "\"[ -~]{0,16}\"".prop_map(|s| s),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>()
            .prop_filter("JSON has no NaN or infinity", |f| f.is_finite())
            .prop_map(|f| format!("{f:e}")),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("null".to_string()),
        Just("\"max\"".to_string()),
        Just("\"300M\"".to_string()),
        Just("\"app.js\"".to_string()),
        Just("[0, \"3\", 300, -1]".to_string()),
        Just("{\"PORT\": 3000, \"HOST\": \"::1\", \"CORRAL_X\": \"1\", \"A=B\": 2}".to_string()),
        Just("{\"PORT\": \"x\", \"NODE_ENV\": {\"nested\": [1]}}".to_string()),
        Just("[]".to_string()),
        Just("{}".to_string()),
    ];
    (
        prop::collection::btree_map(key, value, 0..10),
        prop::bool::ANY,
    )
        .prop_map(|(kvs, with_script)| {
            let mut fields: Vec<String> = kvs
                .into_iter()
                .map(|(k, v)| format!("\"{k}\": {v}"))
                .collect();
            if with_script {
                fields.push("\"script\": \"server.js\"".into());
            }
            format!("{{{}}}", fields.join(", "))
        })
}

#[test]
fn any_pm2_app_imports_to_configs_corral_takes_or_is_refused_cleanly() {
    let dir = std::env::temp_dir().join(format!("corral-prop-import-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("server.js"), "// a stand-in\n").unwrap();
    let corral = env!("CARGO_BIN_EXE_corral");
    runner(64)
        .run(&prop::collection::vec(pm2_app(), 1..4), |apps| {
            let file = dir.join("ecosystem.json");
            std::fs::write(&file, format!("{{\"apps\": [{}]}}", apps.join(", "))).unwrap();
            let out = dir.join("out");
            let _ = std::fs::remove_dir_all(&out);
            let o = std::process::Command::new(corral)
                .args(["import", "pm2"])
                .arg(&file)
                .arg("--output")
                .arg(&out)
                .current_dir(&dir)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            // Either configs, or a refusal that says why (no script, ...): never a panic.
            prop_assert!(
                matches!(o.status.code(), Some(0 | 1)) && !err.contains("panicked"),
                "{apps:?}: {:?} {err}",
                o.status
            );
            if o.status.code() == Some(1) {
                prop_assert!(err.contains("ecosystem.json"), "{err}");
                prop_assert!(!err.contains("a bug in corral import"), "{apps:?}: {err}");
                return Ok(());
            }
            let configs: Vec<_> = std::fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            prop_assert_eq!(configs.len(), apps.len());
            let check = std::process::Command::new(corral)
                .arg("check")
                .args(&configs)
                .output()
                .unwrap();
            prop_assert!(
                check.status.success(),
                "{apps:?}: {}",
                String::from_utf8_lossy(&check.stderr)
            );
            Ok(())
        })
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
