//! Tests of whole config files through [`Config::parse`] and [`Config::load`] (with the
//! environment files it reads), and of the schema types.

use super::check::RESERVED_ENV;
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
        "readiness.mode: expected \"notify\", \"exec\", \"node-ipc\" or \"listen\", found \"ready\"",
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
fn listen_balance() {
    let c = ok("command = [\"x\"]\n[[listen]]\nname = \"a\"\naddress = \"8080\"\nbalance = true\n[[listen]]\nname = \"b\"\naddress = \"8081\"\n[[listen]]\nname = \"c\"\naddress = \"/run/c.sock\"\n[[listen]]\nname = \"d\"\naddress = \"8082\"\nbalance = \"source\"\n[[listen]]\nname = \"e\"\naddress = \"8083\"\nbalance = \"even\"\n[[listen]]\nname = \"f\"\naddress = \"8084\"\nbalance = false\n[[listen]]\nname = \"g\"\naddress = \"/run/g.sock\"\nbalance = \"shared\"\n");
    let b: Vec<Balance> = c.listen.iter().map(|l| l.balance).collect();
    use Balance::*;
    assert_eq!(
        b,
        [Even, Shared, Shared, Source, Even, Shared, Shared],
        "TCP balanced when asked, unix never"
    );
    assert_error_after_command(
        "[[listen]]\nname = \"c\"\naddress = \"/run/c.sock\"\nbalance = true\n",
        5,
        11,
        "listen.balance: only applies to TCP addresses",
    );
    assert_error_after_command(
        "[[listen]]\nname = \"a\"\naddress = \"8080\"\nbalance = 1\n",
        5,
        11,
        "listen.balance: expected true, false, \"even\", \"source\" or \"shared\"",
    );
    assert_error_after_command(
        "[[listen]]\nname = \"a\"\naddress = \"8080\"\nbalance = \"sorce\"\n",
        5,
        11,
        "listen.balance: expected \"even\", \"source\" or \"shared\", found \"sorce\"; did you mean \"source\"?",
    );
    assert_error_after_command(
        "[[listen]]\nname = \"c\"\naddress = \"/run/c.sock\"\nbalance = \"source\"\n",
        5,
        11,
        "listen.balance: only applies to TCP addresses",
    );
}

#[test]
fn listen_readiness_needs_a_listener() {
    let c = ok("command = [\"x\"]\nreadiness.mode = \"listen\"\n[[listen]]\nname = \"a\"\naddress = \"8080\"\n");
    assert_eq!(c.readiness.mode, ReadinessMode::Listen);
    assert!(c.warnings().is_empty());
    assert_error_after_command(
        "[readiness]\nmode = \"listen\"\n",
        3,
        8,
        "readiness.mode = \"listen\": needs a [[listen]]",
    );
}

#[test]
fn exec_readiness_is_valid_but_warned_about() {
    let c = ok("command = [\"x\"]\nreadiness.mode = \"exec\"\n");
    let w = c.warnings();
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("cannot be refused"), "{w:?}");
    assert!(ok("command = [\"x\"]\n").warnings().is_empty());
}

#[test]
fn node_section() {
    let c = ok("command = [\"x\"]\n");
    assert!(!c.node.preload && !c.node_ipc());
    let c = ok("command = [\"node\", \"app.js\"]\n[node]\npreload = true\n[stop]\nmessage = \"shutdown\"\n");
    assert!(
        c.node.preload && c.node_ipc(),
        "the preload brings the IPC channel"
    );
    assert_eq!(c.stop.message.as_deref(), Some("shutdown"));
    assert_error_after_command(
        "[node]\npreload = \"yes\"\n",
        3,
        11,
        "node.preload: expected true or false",
    );
    assert_error_after_command("[node]\npreloud = true\n", 3, 1, "did you mean `preload`?");
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
    let c = ok(
        "command = [\"x\"]\n[restart]\ndelay = \"2s\"\nmax_delay = \"2s\"\nreset_after = \"0\"\n",
    );
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
        more: 0,
        environment_files: Vec::new(),
    };
    assert_eq!(e.to_string(), "x.toml:1:2: one\nx.toml:3:4: two");
    let boxed: Box<dyn std::error::Error> = Box::new(e.clone());
    assert!(boxed.to_string().starts_with("x.toml:1:2"));

    // Environment files' problems: a line without a column, after the config's own.
    let in_file = |line, col, message: &str| Diagnostic {
        line,
        col,
        message: message.into(),
    };
    let env = ConfigError {
        file: PathBuf::from("/etc/a.env"),
        diagnostics: vec![in_file(3, 0, "three"), in_file(0, 0, "whole")],
        more: 0,
        environment_files: Vec::new(),
    };
    let both = ConfigError {
        environment_files: vec![env.clone(), env.clone()],
        ..e
    };
    assert_eq!(
        both.to_string(),
        "x.toml:1:2: one\nx.toml:3:4: two\n/etc/a.env:3: three\n/etc/a.env: whole\n\
         /etc/a.env:3: three\n/etc/a.env: whole"
    );
    let files_only = ConfigError {
        file: PathBuf::from("x.toml"),
        diagnostics: Vec::new(),
        more: 0,
        environment_files: vec![env],
    };
    assert_eq!(
        files_only.to_string(),
        "/etc/a.env:3: three\n/etc/a.env: whole"
    );
}

/// A fresh directory for one test's files, removed by `cleanup`.
fn scratch_dir(test: &str) -> PathBuf {
    let dir =
        std::env::temp_dir().join(format!("corral-config-test-{}-{test}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// The one message of a file `Config::load` refuses as a whole (`FILE: message`).
fn load_refused(path: &Path) -> String {
    let e = Config::load(path).unwrap_err();
    assert_eq!(e.diagnostics.len(), 1, "{e}");
    let d = &e.diagnostics[0];
    assert_eq!((d.line, d.col), (0, 0), "{e}");
    assert_eq!(e.to_string(), format!("{}: {}", path.display(), d.message));
    d.message.clone()
}

#[test]
fn load_refuses_a_fifo_at_once() {
    use nix::sys::stat::Mode;
    let dir = scratch_dir("fifo");
    let path = dir.join("pipe.toml");
    nix::unistd::mkfifo(&path, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    // On another thread, so that a load that blocks (waiting for a writer) fails the test
    // instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let p = path.clone();
    std::thread::spawn(move || tx.send(load_refused(&p)).unwrap());
    let message = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("Config::load blocked on a FIFO");
    assert_eq!(message, "is a FIFO, not a regular file");

    // The same when the FIFO is what the path leads to once opened (checked by fstat):
    // opened as load opens it, it is refused without a read that would block.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .unwrap();
    assert_eq!(
        read_open(file, CONFIG).unwrap_err(),
        "is a FIFO, not a regular file"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_refuses_devices_and_directories_even_through_symlinks() {
    let dir = scratch_dir("devices");
    let zero = dir.join("zero.toml");
    std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
    assert_eq!(
        load_refused(&zero),
        "is a character device, not a regular file"
    );
    // by its descriptor too
    assert_eq!(
        read_open(File::open("/dev/zero").unwrap(), CONFIG).unwrap_err(),
        "is a character device, not a regular file"
    );
    let sub = dir.join("sub.toml");
    fs::create_dir(&sub).unwrap();
    assert_eq!(load_refused(&sub), "is a directory, not a regular file");
    // a dangling symlink is a file that cannot be read
    let dangling = dir.join("dangling.toml");
    std::os::unix::fs::symlink(dir.join("nowhere"), &dangling).unwrap();
    let message = load_refused(&dangling);
    assert!(message.starts_with("cannot read: "), "{message}");
    assert!(message.contains("No such file"), "{message}");
    // A symlink to a regular file is followed; the app is named after the link.
    fs::write(dir.join("real.toml"), "command = [\"x\"]\n").unwrap();
    let link = dir.join("web.toml");
    std::os::unix::fs::symlink(dir.join("real.toml"), &link).unwrap();
    assert_eq!(Config::load(&link).unwrap().app, "web");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn load_refuses_a_file_over_the_cap() {
    assert_eq!(MAX_CONFIG_SIZE, 1024 * 1024);
    let dir = scratch_dir("size");
    let path = dir.join("big.toml");
    // At the cap: read and parsed (a valid file, mostly a comment).
    let mut text = String::from("command = [\"x\"]\n#");
    text.push_str(&"x".repeat(MAX_CONFIG_SIZE as usize - text.len() - 1));
    text.push('\n');
    assert_eq!(text.len() as u64, MAX_CONFIG_SIZE);
    fs::write(&path, &text).unwrap();
    Config::load(&path).unwrap();
    // One byte more: refused, with both sizes.
    text.push('\n');
    fs::write(&path, &text).unwrap();
    assert_eq!(
        load_refused(&path),
        "is 1048577 bytes, more than a config file may have (1048576 bytes, 1 MiB)"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn reading_stops_past_the_cap() {
    // A file that grows while read, or claims a size of 0 like those in /proc: no more than
    // the cap and one byte are read, whatever follows.
    let message = read_capped(std::io::repeat(b'#'), 0, CONFIG).unwrap_err();
    assert_eq!(
        message,
        "grew past the most a config file may have (1048576 bytes, 1 MiB) while being read \
         (it was 0 bytes when opened)"
    );
    let text = read_capped(&b"command = [\"x\"]\n"[..], 16, CONFIG).unwrap();
    assert_eq!(text, b"command = [\"x\"]\n");
}

#[test]
fn load_reports_invalid_utf8_as_before() {
    let dir = scratch_dir("utf8");
    let path = dir.join("latin1.toml");
    fs::write(&path, b"command = [\"caf\xe9\"]\n").unwrap();
    let before = fs::read_to_string(&path).unwrap_err();
    assert_eq!(load_refused(&path), format!("cannot read: {before}"));
    fs::remove_dir_all(&dir).unwrap();
}

/// `[environment]` with lines `a0=[]`, `a1=[]`, ... (each a type error) up to `size` bytes,
/// and their number. (Errors that cost little to word: unknown keys would spend most of the
/// test, unoptimized, on their did-you-mean hints.)
fn bad_variables(size: usize) -> (String, usize) {
    let mut text = String::from("command = [\"x\"]\n[environment]\n");
    let mut n = 0;
    loop {
        let line = format!("a{n}=[]\n");
        if text.len() + line.len() > size {
            return (text, n);
        }
        text.push_str(&line);
        n += 1;
    }
}

#[test]
fn a_full_size_file_of_errors_lists_the_first_and_counts_the_rest() {
    let dir = scratch_dir("many");
    let path = dir.join("api.toml");
    let (text, total) = bad_variables(MAX_CONFIG_SIZE as usize);
    assert!(total > 100_000, "{total}");
    fs::write(&path, &text).unwrap();
    let e = Config::load(&path).unwrap_err();
    // The first MAX_LISTED_DIAGNOSTICS problems are kept, in order, each placed on its line;
    // the rest are counted.
    assert_eq!(e.diagnostics.len(), MAX_LISTED_DIAGNOSTICS);
    assert_eq!(e.diagnostics.len() + e.more, total);
    for (i, d) in e.diagnostics.iter().enumerate() {
        let col = format!("a{i}=").len() + 1;
        assert_eq!((d.line, d.col), (i + 3, col), "{}", d.message);
    }
    let message = |i: usize| format!("environment.a{i}: expected a string, found an array");
    // Displayed: the first MAX_LISTED_DIAGNOSTICS, then the count of the rest.
    let shown = e.to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), MAX_LISTED_DIAGNOSTICS + 1);
    let file = path.display();
    assert_eq!(lines[0], format!("{file}:3:4: {}", message(0)));
    assert_eq!(
        lines[MAX_LISTED_DIAGNOSTICS - 1],
        format!("{file}:102:5: {}", message(99))
    );
    let rest = total - MAX_LISTED_DIAGNOSTICS;
    let grouped = format!("{},{:03}", rest / 1000, rest % 1000);
    assert_eq!(
        lines[MAX_LISTED_DIAGNOSTICS],
        format!("{file}: ... and {grouped} more errors")
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn errors_beyond_the_listed_are_counted() {
    let diagnostic = |line| Diagnostic {
        line,
        col: 1,
        message: "bad".into(),
    };
    let e = |n: usize| ConfigError {
        file: PathBuf::from("x.toml"),
        diagnostics: (1..=n).map(diagnostic).collect(),
        more: 0,
        environment_files: Vec::new(),
    };
    let shown = e(MAX_LISTED_DIAGNOSTICS).to_string();
    assert_eq!(shown.lines().count(), MAX_LISTED_DIAGNOSTICS);
    assert!(shown.ends_with("x.toml:100:1: bad"), "{shown}");
    let shown = e(MAX_LISTED_DIAGNOSTICS + 1).to_string();
    assert!(shown.ends_with("x.toml:100:1: bad\nx.toml: ... and 1 more error"));
    let shown = e(MAX_LISTED_DIAGNOSTICS + 1234).to_string();
    assert!(shown.ends_with("\nx.toml: ... and 1,234 more errors"));
    // Those counted but not kept count the same.
    let counted = ConfigError {
        more: 1234,
        ..e(MAX_LISTED_DIAGNOSTICS)
    };
    assert_eq!(counted.to_string(), shown);
    let counted = ConfigError {
        more: 1000,
        ..e(MAX_LISTED_DIAGNOSTICS + 234)
    };
    assert_eq!(counted.to_string(), shown);
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1000), "1,000");
    assert_eq!(thousands(119_900), "119,900");
    assert_eq!(thousands(1_234_567), "1,234,567");
}

#[test]
fn positions_match_a_scan_from_the_start() {
    // What Checker::pos computed by scanning the text up to each offset.
    fn scan(text: &str, offset: usize) -> (usize, usize) {
        let mut offset = offset.min(text.len());
        while !text.is_char_boundary(offset) {
            offset -= 1;
        }
        let before = &text[..offset];
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        let line = before.matches('\n').count() + 1;
        (line, before[line_start..].chars().count() + 1)
    }
    let long = format!(
        "{}\n{}\r\n\n{}",
        "é".repeat(100),
        "a€b𝄞".repeat(40),
        "x".repeat(130)
    );
    for text in [
        "",
        "\n",
        "a",
        "\n\n",
        "ab\ncd",
        "é\nü€\n",
        "𝄞",
        long.as_str(),
    ] {
        let positions = check::Positions::new(text);
        for offset in 0..text.len() + 3 {
            assert_eq!(
                positions.pos(offset),
                scan(text, offset),
                "offset {offset} of {text:?}"
            );
        }
    }
}

#[test]
fn many_errors_on_one_long_line_are_placed_by_characters() {
    // Columns on a line of a hundred thousand characters, with multibyte ones before each;
    // as many errors as are kept, spread along the line.
    let mut text = String::from("command = [\"x\"]\nenvironment = { ");
    let mut col = "environment = { ".len() + 1;
    let mut expected = Vec::new();
    let every = 5000 / MAX_LISTED_DIAGNOSTICS;
    for i in 0..5000 {
        let bad = i % every == every - 1;
        let entry = format!("\"é{i}\" = {}", if bad { "[]" } else { "\"v\"" });
        if bad {
            let at = col + entry.chars().position(|c| c == '[').unwrap();
            expected.push((2, at, format!("environment.é{i}: expected a string")));
        }
        text.push_str(&entry);
        text.push_str(", ");
        col += entry.chars().count() + 2;
    }
    text.push_str("B = 1 }\n");
    let got = errors(&text);
    assert_eq!(got.len(), expected.len());
    for ((line, col, message), (l, c, m)) in got.iter().zip(&expected) {
        assert_eq!((line, col), (l, c), "{message}");
        assert!(message.starts_with(m.as_str()), "{message}");
    }
}

#[test]
fn environment_file_takes_a_path_or_an_array_of_them() {
    let c = ok("command = [\"x\"]\nenvironment_file = \"/etc/corral/api.env\"\n");
    assert_eq!(
        c.environment_files,
        [EnvironmentFile {
            path: PathBuf::from("/etc/corral/api.env"),
            optional: false,
            line: 2,
            col: 20,
        }]
    );
    let c = ok(r#"command = ["x"]
environment_file = [
  "/etc/corral/api.env",
  "-/etc/corral/api.local.env",
]
"#);
    let got: Vec<(&str, bool, usize, usize)> = c
        .environment_files
        .iter()
        .map(|f| (f.path.to_str().unwrap(), f.optional, f.line, f.col))
        .collect();
    assert_eq!(
        got,
        [
            ("/etc/corral/api.env", false, 3, 3),
            ("/etc/corral/api.local.env", true, 4, 3)
        ]
    );
    // Parsing reads no file: the environment is the config's own.
    assert!(c.environment.is_empty());
    assert!(ok("command = [\"x\"]\nenvironment_file = []\n")
        .environment_files
        .is_empty());
    assert!(ok("command = [\"x\"]\n").environment_files.is_empty());
}

#[test]
fn environment_file_errors() {
    assert_error_after_command(
        "environment_file = \"api.env\"\n",
        2,
        20,
        "environment_file \"api.env\": must be an absolute path, like \"/etc/corral/api.env\"",
    );
    assert_error_after_command(
        "environment_file = [\"-api.env\"]\n",
        2,
        21,
        "environment_file \"-api.env\": must be an absolute path",
    );
    assert_error_after_command(
        "environment_file = [\"-\"]\n",
        2,
        21,
        "must be an absolute path",
    );
    assert_error_after_command(
        "environment_file = [\"\"]\n",
        2,
        21,
        "must be an absolute path",
    );
    assert_error_after_command(
        "environment_file = [\"/etc/corral/*.env\"]\n",
        2,
        21,
        "wildcards are not supported: name each file",
    );
    assert_error_after_command(
        "environment_file = [\"/a.env\", 3]\n",
        2,
        31,
        "environment_file: expected every element to be a string, found an integer",
    );
    assert_error_after_command(
        "environment_file = { a = \"/a.env\" }\n",
        2,
        20,
        "environment_file: expected a path or an array of paths",
    );
    let many: Vec<String> = (0..=MAX_ENVIRONMENT_FILES)
        .map(|i| format!("\"/{i}.env\""))
        .collect();
    assert_error_after_command(
        &format!("environment_file = [{}]\n", many.join(", ")),
        2,
        20,
        "environment_file: at most 16 files, found 17",
    );
    // Typos get a hint.
    let (_, _, m) = error_with_command("environment_files = [\"/a.env\"]\n");
    assert!(m.contains("did you mean `environment_file`?"), "{m}");
}

/// Writes `files` (name, contents) in a scratch directory and a config naming them in
/// `environment_file` (each `name`, or `-name` for an optional one, made absolute) after
/// `rest`; loads it.
fn load_with_files(
    test: &str,
    rest: &str,
    files: &[(&str, &[u8])],
    listed: &[&str],
) -> (PathBuf, Result<Config, ConfigError>) {
    let dir = scratch_dir(test);
    for (name, contents) in files {
        fs::write(dir.join(name), contents).unwrap();
    }
    let listed: Vec<String> = listed
        .iter()
        .map(|name| match name.strip_prefix('-') {
            Some(name) => format!("\"-{}\"", dir.join(name).display()),
            None => format!("\"{}\"", dir.join(name).display()),
        })
        .collect();
    let config = dir.join("api.toml");
    fs::write(
        &config,
        format!(
            "command = [\"x\"]\n{rest}\nenvironment_file = [{}]\n",
            listed.join(", ")
        ),
    )
    .unwrap();
    let loaded = Config::load(&config);
    (dir, loaded)
}

fn env_of(c: &Config) -> Vec<(&str, &str)> {
    c.environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

#[test]
fn environment_files_merge_under_the_configs_own_environment() {
    let (dir, loaded) = load_with_files(
        "env-merge",
        "environment = { B = \"config\", Z = \"own\" }",
        &[
            ("first.env", b"A=first\nB=first\nC=first\n"),
            (
                "second.env",
                b"# later files win\nC=second\nD='second'\nA=\"second\"\nD=last\n",
            ),
        ],
        &["first.env", "second.env"],
    );
    let c = loaded.unwrap();
    // The files' names in the order they first appear, with their last value (in a file as
    // across files); the config's own after them, winning over the files.
    assert_eq!(
        env_of(&c),
        [
            ("A", "second"),
            ("C", "second"),
            ("D", "last"),
            ("B", "config"),
            ("Z", "own"),
        ]
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_missing_optional_file_is_fine_and_a_missing_required_one_is_an_error() {
    let (dir, loaded) = load_with_files(
        "env-missing",
        "",
        &[("api.env", b"A=1\n")],
        &["api.env", "-api.local.env"],
    );
    assert_eq!(env_of(&loaded.unwrap()), [("A", "1")]);
    let _ = fs::remove_dir_all(&dir);

    let (dir, loaded) = load_with_files("env-required", "", &[], &["api.env", "-other.env"]);
    let e = loaded.unwrap_err();
    let missing = dir.join("api.env");
    // At the place in the config that names it, and naming it.
    assert_eq!(e.file, dir.join("api.toml"));
    assert_eq!(e.diagnostics.len(), 1, "{e}");
    let d = &e.diagnostics[0];
    assert_eq!((d.line, d.col), (3, 21), "{e}");
    assert!(
        d.message.starts_with(&format!(
            "environment_file {}: cannot read: No such file or directory",
            missing.display()
        )),
        "{e}"
    );
    assert!(
        d.message
            .ends_with("(os error 2); a leading '-' makes a file optional"),
        "{e}"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_optional_file_that_exists_but_cannot_be_used_is_still_an_error() {
    let dir = scratch_dir("env-optional-bad");
    fs::create_dir(dir.join("api.env")).unwrap();
    let (dir2, loaded) = load_with_files(
        "env-optional-bad-2",
        "",
        &[("bad.env", b"A=1\nnonsense\n")],
        &["-bad.env"],
    );
    let e = loaded.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2: no '=' on this line: an assignment is NAME=value, and a comment starts with \
             '#' or ';' (systemd would ignore this line)",
            dir2.join("bad.env").display()
        )
    );
    fs::remove_dir_all(&dir2).unwrap();
    // A directory where the file should be.
    let config = dir.join("api.toml");
    fs::write(
        &config,
        format!(
            "command = [\"x\"]\nenvironment_file = \"-{}\"\n",
            dir.join("api.env").display()
        ),
    )
    .unwrap();
    let e = Config::load(&config).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "{}:2:20: environment_file {}: is a directory, not a regular file",
            config.display(),
            dir.join("api.env").display()
        )
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_malformed_file_is_refused_with_file_and_line_and_never_its_values() {
    const SECRET: &str = "pa55-w0rd-do-not-show";
    let bad = format!("# secrets\nDB_USER=api\nDB_PASSWORD {SECRET}\nTOKEN=\"{SECRET}\nOTHER=1\n");
    let (dir, loaded) = load_with_files(
        "env-malformed",
        "",
        &[
            ("good.env", format!("KEY={SECRET}\n").as_bytes()),
            ("bad.env", bad.as_bytes()),
            ("reserved.env", b"A=1\nLISTEN_FDS=3\nCORRAL_APP=x\n"),
        ],
        &["good.env", "bad.env", "reserved.env"],
    );
    let e = loaded.unwrap_err();
    let shown = e.to_string();
    let bad_path = dir.join("bad.env").display().to_string();
    let reserved_path = dir.join("reserved.env").display().to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), 4, "{shown}");
    assert!(
        lines[0].starts_with(&format!("{bad_path}:3: no '=' on this line")),
        "{shown}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{bad_path}:4: the double quote opened on this line is never closed"
        )),
        "{shown}"
    );
    assert_eq!(
        lines[2],
        format!("{reserved_path}:2: `LISTEN_FDS` is reserved: corral sets it for the workers")
    );
    assert_eq!(
        lines[3],
        format!("{reserved_path}:3: `CORRAL_APP` is reserved: corral sets it for the workers")
    );
    assert!(!shown.contains(SECRET), "{shown}");
    // Nor in the error's Debug form.
    assert!(!format!("{e:?}").contains(SECRET));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_file_of_nothing_but_errors_lists_the_first_and_counts_the_rest() {
    let text = "no equals here\n".repeat(5000);
    let (dir, loaded) = load_with_files("env-many", "", &[("a.env", text.as_bytes())], &["a.env"]);
    let shown = loaded.unwrap_err().to_string();
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(lines.len(), MAX_LISTED_DIAGNOSTICS, "{shown}");
    let path = dir.join("a.env").display().to_string();
    assert!(lines[98].starts_with(&format!("{path}:99: ")), "{shown}");
    assert_eq!(lines[99], format!("{path}: ... and 4,901 more errors"));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn environment_files_are_read_with_the_configs_care() {
    use nix::sys::stat::Mode;
    assert_eq!(MAX_ENVIRONMENT_FILE_SIZE, 1024 * 1024);
    let dir = scratch_dir("env-care");
    let fifo = dir.join("fifo.env");
    nix::unistd::mkfifo(&fifo, Mode::S_IRUSR | Mode::S_IWUSR).unwrap();
    let big = dir.join("big.env");
    let mut text = String::from("A=1\n#");
    text.push_str(&"x".repeat(MAX_ENVIRONMENT_FILE_SIZE as usize - text.len() - 1));
    text.push('\n');
    fs::write(&big, &text).unwrap();
    let config = dir.join("api.toml");
    let write = |files: &[&Path]| {
        let listed: Vec<String> = files
            .iter()
            .map(|f| format!("\"{}\"", f.display()))
            .collect();
        fs::write(
            &config,
            format!(
                "command = [\"x\"]\nenvironment_file = [{}]\n",
                listed.join(", ")
            ),
        )
        .unwrap();
    };
    // At the cap: read.
    write(&[&big]);
    assert_eq!(env_of(&Config::load(&config).unwrap()), [("A", "1")]);
    // A byte more, a FIFO (on a thread, so that a load that blocks fails instead of hanging)
    // and /dev/zero: each refused, all at once.
    text.push('\n');
    fs::write(&big, &text).unwrap();
    write(&[&big, &fifo, Path::new("/dev/zero")]);
    let (tx, rx) = std::sync::mpsc::channel();
    let c = config.clone();
    std::thread::spawn(move || tx.send(Config::load(&c).unwrap_err()).unwrap());
    let e = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("Config::load blocked on a FIFO");
    let messages: Vec<&str> = e.diagnostics.iter().map(|d| d.message.as_str()).collect();
    assert_eq!(
        messages,
        [
            format!(
                "environment_file {}: is 1048577 bytes, more than an environment file may have \
                 (1048576 bytes, 1 MiB)",
                big.display()
            ),
            format!(
                "environment_file {}: is a FIFO, not a regular file",
                fifo.display()
            ),
            "environment_file /dev/zero: is a character device, not a regular file".to_string(),
        ]
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn agent_takes_the_apps_settings_it_does_not_set_wherever_they_are_in_the_file() {
    let c = ok(r#"command = ["node", "server.js"]
directory = "/srv/app"
environment = { DB = "postgres://db", ROLE = "worker" }

[agent]
command = ["node", "agent.js"]
environment = { ROLE = "agent" }
restart = { delay = "1s", max_delay = "1m" }

[readiness]
mode = "node-ipc"
timeout = "9s"

[stop]
signal = "SIGINT"
message = "shutdown"
"#);
    let a = c.agent.clone().expect("an agent");
    assert_eq!(a.command, ["node", "agent.js"]);
    assert!(a.workers_wait);
    assert_eq!(a.directory.as_deref(), Some(Path::new("/srv/app")));
    assert_eq!(a.readiness.mode, ReadinessMode::NodeIpc);
    assert_eq!(a.readiness.timeout, Duration::from_secs(9));
    assert_eq!(a.stop.signal, Signal::SIGINT);
    assert_eq!(a.stop.message.as_deref(), Some("shutdown"));
    assert_eq!(a.restart.delay, Duration::from_secs(1));
    assert_eq!(a.restart.max_delay, Duration::from_secs(60));
    assert_eq!(a.restart.max_failures, c.restart.max_failures);
    assert_eq!(a.watchdog, None);
    // The agent's own process: its command and environment over the app's, no listener.
    let own = c.agent_config().unwrap();
    assert_eq!(own.command, ["node", "agent.js"]);
    assert!(own.listen.is_empty());
    let env: Vec<(&str, &str)> = own
        .environment
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(env, [("DB", "postgres://db"), ("ROLE", "agent")]);
    assert!(c.agent_config().unwrap().agent.is_none());
    assert!(ok("command = [\"x\"]").agent.is_none());
}

#[test]
fn agent_readiness_listen_becomes_exec_and_cannot_be_asked_for() {
    let c = ok(r#"command = ["x"]
readiness = { mode = "listen" }
[[listen]]
name = "http"
address = "127.0.0.1:8080"
[agent]
command = ["y"]
"#);
    assert_eq!(c.agent.unwrap().readiness.mode, ReadinessMode::Exec);
    assert_error_after_command(
        "[agent]\ncommand = [\"y\"]\nreadiness = { mode = \"listen\" }\n",
        4,
        22,
        "agent.readiness.mode = \"listen\": the agent has no listeners",
    );
}

#[test]
fn agent_errors_name_the_agents_keys() {
    assert_error_after_command(
        "[agent]\nworkers_wait = true\n",
        2,
        1,
        "[agent]: missing required key `command`",
    );
    assert_error_after_command(
        "[agent]\ncommand = [\"y\"]\nrestart = { delay = \"soon\" }\n",
        4,
        21,
        "agent.restart.delay",
    );
    assert_error_after_command(
        "[agent]\ncommand = [\"y\"]\nstop = { drain = \"1s\" }\n",
        4,
        10,
        "[agent.stop]",
    );
    assert_error_after_command(
        "[agent]\ncommand = [\"y\"]\nstop = { message = \"bye\" }\n",
        4,
        20,
        "agent.stop.message: only allowed with agent.readiness.mode = \"node-ipc\"",
    );
    assert_error_after_command(
        "[agent]\ncommand = [\"y\"]\nworkers_wait = \"yes\"\n",
        4,
        16,
        "agent.workers_wait",
    );
    assert_error_after_command(
        "[agent]\ncommand = [\"y\"]\nenvironment = { CORRAL_WORKER = \"0\" }\n",
        4,
        17,
        "CORRAL_WORKER",
    );
    assert_error_after_command(
        "[agent]\ncommand = [\"y\"]\nlisten = 1\n",
        4,
        1,
        "unknown key",
    );
}

#[test]
fn agent_inherits_stop_message_only_with_a_channel_of_its_own() {
    let app =
        "command = [\"x\"]\nreadiness = { mode = \"node-ipc\" }\nstop = { message = \"bye\" }\n";
    let c = ok(&format!("{app}[agent]\ncommand = [\"y\"]\n"));
    assert_eq!(c.agent.unwrap().stop.message.as_deref(), Some("bye"));
    let c = ok(&format!(
        "{app}[agent]\ncommand = [\"y\"]\nreadiness = {{ mode = \"notify\" }}\n"
    ));
    assert_eq!(
        c.agent.unwrap().stop.message,
        None,
        "no channel: the signal alone"
    );
    let c = ok("command = [\"x\"]\nnode = { preload = true }\n[agent]\ncommand = [\"y\"]\n");
    assert!(
        !c.agent_config().unwrap().node.preload,
        "no preload for the agent"
    );
}

#[test]
fn a_config_comes_back_whole_from_what_an_upgrade_saves() {
    // What corral holds of each generation is handed across an upgrade in place as is: the
    // environment files as they were read then, not as they are on disk now.
    let c = ok(&format!(
        "{FULL}\n[agent]\ncommand = [\"node\", \"agent.js\"]\nenvironment = {{ A = \"1\" }}\n"
    ));
    let saved = serde_json::to_string(&c).unwrap();
    let back: Config = serde_json::from_str(&saved).unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), saved);
    assert_eq!(format!("{back:?}"), format!("{c:?}"));
    assert_eq!(back.stop.signal, c.stop.signal);
}
