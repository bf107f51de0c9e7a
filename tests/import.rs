//! `corral import pm2` over realistic PM2 files, as a person migrating would run it: each
//! case's configs and report are compared with `tests/import/CASE/expected/`
//! (`CORRAL_UPDATE_GOLDEN=1 cargo test --test import` rewrites them), every config written
//! passes `corral check`, and a file that cannot be used is refused with the file and the
//! cause, writing nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{scratch_dir, skipped, CORRAL};

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import")
}

fn have_node() -> bool {
    Command::new("node")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `corral import pm2 FILE ARGS... --output OUT`, with only PATH (and `env`) from outside,
/// so that what an ecosystem file reads from `process.env` is what the test gives it.
fn import(file: &Path, out: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(CORRAL);
    // Run from the file's directory, as `pm2 start` is.
    cmd.args(["import", "pm2"])
        .arg(file)
        .arg("--output")
        .arg(out)
        .args(args)
        .current_dir(file.parent().unwrap())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs one case and compares what it wrote with the expected files.
fn golden(case: &str, file: &str, args: &[&str], env: &[(&str, &str)]) {
    let dir = cases_dir().join(case);
    let input = dir.join(file);
    let js = matches!(
        input.extension().and_then(|e| e.to_str()),
        Some("js" | "cjs" | "mjs")
    );
    if js && !have_node() {
        skipped(&format!(
            "{case}: node is not installed, and {file} is JavaScript"
        ));
        return;
    }
    let out = scratch_dir();
    let o = import(&input, &out, args, env);
    let report = text(&o.stdout);
    assert!(
        o.status.success(),
        "{case}: corral import failed\nstdout:\n{report}\nstderr:\n{}",
        text(&o.stderr)
    );
    // Paths that depend on where the test runs, as placeholders.
    let case_dir = std::fs::canonicalize(&dir).unwrap().display().to_string();
    let place = |s: &str| {
        s.replace(&out.display().to_string(), "$OUT")
            .replace(&case_dir, "$CASE")
    };
    let mut got: Vec<(String, String)> = vec![("report.txt".into(), place(&report))];
    let mut written: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    written.sort();
    for p in &written {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.ends_with(".toml"),
            "{case}: wrote {name}, not an APP.toml"
        );
        got.push((name, place(&std::fs::read_to_string(p).unwrap())));
        // What a person does next: corral check on it.
        let c = Command::new(CORRAL).arg("check").arg(p).output().unwrap();
        assert!(
            c.status.success(),
            "{case}: {} does not pass corral check:\n{}{}",
            p.display(),
            text(&c.stdout),
            text(&c.stderr)
        );
    }
    let expected_dir = dir.join("expected");
    if std::env::var_os("CORRAL_UPDATE_GOLDEN").is_some() {
        let _ = std::fs::remove_dir_all(&expected_dir);
        std::fs::create_dir_all(&expected_dir).unwrap();
        for (name, body) in &got {
            std::fs::write(expected_dir.join(name), body).unwrap();
        }
    }
    let mut expected: Vec<String> = std::fs::read_dir(&expected_dir)
        .unwrap_or_else(|e| panic!("{}: {e}", expected_dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    expected.sort();
    let mut names: Vec<String> = got.iter().map(|(n, _)| n.clone()).collect();
    names.sort();
    assert_eq!(names, expected, "{case}: the files written");
    for (name, body) in &got {
        let want = std::fs::read_to_string(expected_dir.join(name)).unwrap();
        assert!(
            *body == want,
            "{case}/{name} differs from tests/import/{case}/expected/{name} \
             (CORRAL_UPDATE_GOLDEN=1 rewrites it):\n--- got\n{body}\n--- expected\n{want}"
        );
    }
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_javascript_ecosystem_with_functions_require_and_profiles() {
    // process.env is read by the file: what the shell that runs the import has.
    golden(
        "shop",
        "ecosystem.config.js",
        &["--env", "production"],
        &[("SHOP_LOG_LEVEL", "warn")],
    );
}

#[test]
fn every_key_of_the_schema_is_mapped_or_reported() {
    golden("every-key", "ecosystem.json", &[], &[]);
}

#[test]
fn a_yaml_ecosystem() {
    golden("yaml", "process.yml", &[], &[]);
}

#[test]
fn an_es_module_ecosystem() {
    golden("esm", "ecosystem.config.mjs", &["--env", "production"], &[]);
}

#[test]
fn a_commonjs_app_without_a_port_given_one_on_the_command_line() {
    golden("cjs", "ecosystem.config.cjs", &["--port", "7000"], &[]);
}

#[test]
fn pm2_saved_process_list() {
    // A dump written by `pm2 save` (PM2 7.0.4): one record per process, the shell's
    // environment in each.
    golden("dump", "dump.pm2", &[], &[]);
}

/// Runs an import that must fail, and returns its error; checks nothing was written.
fn refused(file: &Path, args: &[&str], path_var: Option<&str>) -> String {
    let out = scratch_dir();
    let mut cmd = Command::new(CORRAL);
    cmd.args(["import", "pm2"])
        .arg(file)
        .arg("--output")
        .arg(&out)
        .args(args)
        .env_clear()
        .env(
            "PATH",
            path_var
                .map(Into::into)
                .unwrap_or_else(|| std::env::var_os("PATH").unwrap_or_default()),
        );
    let o = cmd.output().unwrap();
    let err = text(&o.stderr);
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected a refusal for {}:\nstdout:\n{}\nstderr:\n{err}",
        file.display(),
        text(&o.stdout)
    );
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert!(left.is_empty(), "a refused import wrote {left:?}");
    let _ = std::fs::remove_dir_all(&out);
    err
}

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

#[test]
fn a_javascript_syntax_error_names_the_file_and_the_line() {
    if !have_node() {
        skipped("node is not installed");
        return;
    }
    let d = scratch_dir();
    let f = write(
        &d,
        "ecosystem.config.js",
        "module.exports = {\n  apps: [\n    { name: 'api', script: 'a.js' }\n  ;\n};\n",
    );
    let err = refused(&f, &[], None);
    assert!(err.contains(&f.display().to_string()), "{err}");
    assert!(err.contains("SyntaxError"), "{err}");
    assert!(
        err.contains("ecosystem.config.js:4"),
        "the line is named: {err}"
    );
}

#[test]
fn an_ecosystem_that_throws_shows_its_error() {
    if !have_node() {
        skipped("node is not installed");
        return;
    }
    let d = scratch_dir();
    let f = write(
        &d,
        "ecosystem.config.js",
        "if (!process.env.DATABASE_URL) throw new Error('DATABASE_URL is not set');\n\
         module.exports = { apps: [{ name: 'api', script: 'a.js' }] };\n",
    );
    let err = refused(&f, &[], None);
    assert!(err.contains("DATABASE_URL is not set"), "{err}");
    assert!(
        !err.contains("    at "),
        "no stack of node's internals: {err}"
    );
}

#[test]
fn a_missing_file_and_a_missing_node_are_said_plainly() {
    let d = scratch_dir();
    let missing = d.join("ecosystem.config.js");
    let err = refused(&missing, &[], None);
    assert!(
        err.contains(&format!("cannot read {}", missing.display())) && err.contains("No such file"),
        "{err}"
    );
    let f = write(
        &d,
        "ecosystem.config.js",
        "module.exports = { apps: [{ name: 'api', script: 'a.js' }] };\n",
    );
    let err = refused(&f, &[], Some("/nonexistent"));
    assert!(err.contains("node is not installed"), "{err}");
    assert!(err.contains(&f.display().to_string()), "{err}");
}

#[test]
fn bad_json_and_yaml_are_refused_with_where() {
    let d = scratch_dir();
    let f = write(
        &d,
        "ecosystem.json",
        "{\n  \"apps\": [\n    { \"name\": \"api\", }\n  ]\n}\n",
    );
    let err = refused(&f, &[], None);
    assert!(
        err.contains("is not valid JSON") && err.contains("line 3"),
        "{err}"
    );
    let f = write(&d, "process.yml", "apps:\n  - name: api\n   script: a.js\n");
    let err = refused(&f, &[], None);
    assert!(
        err.contains("is not valid YAML") && err.contains("line 3"),
        "{err}"
    );
    let f = write(&d, "apps.json", "{\"apps\": [{\"name\": \"api\"}]}");
    let err = refused(&f, &[], None);
    assert!(err.contains("no `script`"), "{err}");
    let f = write(&d, "apps.json", "{\"apps\": 3}");
    let err = refused(&f, &[], None);
    assert!(err.contains("`apps` is a number"), "{err}");
}

#[test]
fn an_env_profile_no_app_has_is_refused() {
    let d = scratch_dir();
    let f = write(
        &d,
        "ecosystem.json",
        r#"{"apps": [{"name": "api", "script": "a.js", "env_production": {"A": "1"}, "env_staging": {}}]}"#,
    );
    let err = refused(&f, &["--env", "prod"], None);
    assert!(
        err.contains("--env prod") && err.contains("production, staging"),
        "{err}"
    );
}

#[test]
fn existing_configs_are_kept_unless_forced() {
    let d = scratch_dir();
    let f = write(
        &d,
        "ecosystem.json",
        r#"{"apps": [{"name": "api", "script": "a.js", "instances": 2, "env": {"PORT": 3000}}]}"#,
    );
    let out = d.join("out");
    std::fs::create_dir_all(&out).unwrap();
    let mine = write(&out, "api.toml", "command = [\"mine\"]\n");
    let o = import(&f, &out, &[], &[]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.contains("not overwriting") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(
        std::fs::read_to_string(&mine).unwrap(),
        "command = [\"mine\"]\n"
    );
    let o = import(&f, &out, &["--force"], &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let now = std::fs::read_to_string(&mine).unwrap();
    assert!(now.contains("workers = 2"), "{now}");
}

/// Every key of PM2 7's ecosystem schema (its `lib/API/schema.json`, with the aliases it
/// lists), each with a value as a person writes it.
const PM2_KEYS: &[(&str, &str)] = &[
    ("script", r#""app.js""#),
    ("exec", r#""app.js""#),
    ("name", r#""x""#),
    ("name_prefix", r#""shop""#),
    ("filter_env", "true"),
    ("namespace", r#""backend""#),
    ("install_url", r#""https://example.com/m.tgz""#),
    ("cwd", r#""/srv/app""#),
    ("args", r#"["--verbose"]"#),
    ("exec_interpreter", r#""node""#),
    ("interpreter", r#""node""#),
    ("node_args", r#"["--inspect"]"#),
    ("interpreterArgs", r#""--inspect""#),
    ("interpreter_args", r#""--inspect""#),
    ("out_file", r#""/var/log/app/out.log""#),
    ("out", r#""/var/log/app/out.log""#),
    ("output", r#""/var/log/app/out.log""#),
    ("out_log", r#""/var/log/app/out.log""#),
    ("error_file", r#""/var/log/app/err.log""#),
    ("error", r#""/var/log/app/err.log""#),
    ("err", r#""/var/log/app/err.log""#),
    ("err_file", r#""/var/log/app/err.log""#),
    ("err_log", r#""/var/log/app/err.log""#),
    ("log_file", r#""/var/log/app/all.log""#),
    ("log", "true"),
    ("disable_logs", "true"),
    ("log_type", r#""json""#),
    ("log_date_format", r#""YYYY-MM-DD HH:mm""#),
    ("time", "true"),
    ("env", r#"{"NODE_ENV": "production"}"#),
    ("env_production", r#"{"NODE_ENV": "production"}"#),
    ("max_memory_restart", r#""300M""#),
    ("pid_file", r#""/run/app.pid""#),
    ("pid", r#""/run/app.pid""#),
    ("restart_delay", "3000"),
    ("exp_backoff_restart_delay", "100"),
    ("source_map_support", "true"),
    ("disable_source_map_support", "true"),
    ("wait_ready", "true"),
    ("instances", "4"),
    ("kill_timeout", "5000"),
    ("shutdown_with_message", "true"),
    ("listen_timeout", "8000"),
    ("cron_restart", r#""0 4 * * *""#),
    ("cron", r#""0 4 * * *""#),
    ("merge_logs", "true"),
    ("combine_logs", "true"),
    ("vizion", "false"),
    ("autostart", "false"),
    ("autorestart", "false"),
    ("stop_exit_codes", "[0]"),
    ("watch_delay", "1000"),
    ("watch", "true"),
    ("ignore_watch", r#"["node_modules"]"#),
    ("watch_options", r#"{"usePolling": true}"#),
    ("min_uptime", r#""10s""#),
    ("max_restarts", "10"),
    ("execute_command", "true"),
    ("exec_mode", r#""cluster""#),
    ("force", "true"),
    ("append_env_to_name", "true"),
    ("post_update", r#"["npm install"]"#),
    ("trace", "true"),
    ("disable_trace", "true"),
    ("v8", "true"),
    ("event_loop_inspector", "true"),
    ("deep_monitoring", "true"),
    ("increment_var", r#""PORT""#),
    ("instance_var", r#""INSTANCE_ID""#),
    ("pmx", "false"),
    ("automation", "false"),
    ("treekill", "false"),
    ("port", "3000"),
    ("username", r#""deploy""#),
    ("uid", r#""www-data""#),
    ("user", r#""www-data""#),
    ("gid", r#""www-data""#),
    ("windowsHide", "true"),
    ("kill_retry_time", "100"),
    ("write", "true"),
    ("io", "{}"),
];

/// Whether `text` has `word` as a whole word (`err` is not in `error`).
fn has_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .any(|w| w == word)
}

#[test]
fn every_key_of_pm2s_schema_is_mapped_or_reported_never_dropped() {
    // One app per key, named after it, so that the report's section for the app shows what
    // became of that key.
    let apps: Vec<String> = PM2_KEYS
        .iter()
        .map(|(key, value)| {
            let mut app = format!(r#""name": "k-{key}""#);
            if !matches!(*key, "script" | "exec") {
                app += r#", "script": "app.js""#;
            }
            if *key != "name" {
                app += &format!(r#", "{key}": {value}"#);
            }
            format!("{{{app}}}")
        })
        .collect();
    let d = scratch_dir();
    let f = write(
        &d,
        "ecosystem.json",
        &format!("{{\"apps\": [\n{}\n]}}\n", apps.join(",\n")),
    );
    let out = d.join("out");
    let o = import(&f, &out, &[], &[]);
    let report = text(&o.stdout);
    assert!(o.status.success(), "{}\n{report}", text(&o.stderr));
    for (key, _) in PM2_KEYS {
        let start = report
            .find(&format!("\nk-{key} -> "))
            .or_else(|| report.starts_with(&format!("k-{key} -> ")).then_some(0))
            .unwrap_or_else(|| panic!("no section for k-{key} in:\n{report}"));
        let body = &report[start + 1..];
        let end = body[1..]
            .find("\nk-")
            .map_or(body.find("\n\n").unwrap_or(body.len()), |e| e + 1);
        let section = &body[..end];
        let said: String = section.lines().skip(1).collect::<Vec<_>>().join("\n");
        assert!(
            has_word(&said, key),
            "{key} is neither mapped nor reported:\n{section}"
        );
    }
    // And every config written passes corral check.
    let mut configs: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    configs.sort();
    assert_eq!(configs.len(), PM2_KEYS.len());
    let c = Command::new(CORRAL)
        .arg("check")
        .args(&configs)
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", text(&c.stderr));
}

#[test]
fn values_pm2_takes_and_corral_does_not_are_reported_not_refused() {
    let d = scratch_dir();
    for f in ["a.js", "b.js", "serve.py"] {
        write(&d, f, "// a stand-in\n");
    }
    let f = write(
        &d,
        "ecosystem.json",
        r#"{"apps": [
  {"name": "zero", "script": "a.js", "kill_timeout": 0, "listen_timeout": 0,
   "max_memory_restart": 0, "instances": 5000,
   "env": {"PORT": 3000, "CORRAL_X": "1", "NODE_CHANNEL_FD": "3"}},
  {"name": "huge", "script": "a.js", "max_restarts": 1e12, "min_uptime": 1e11,
   "restart_delay": 1e15},
  {"name": "py", "script": "serve.py", "interpreter": "python3", "wait_ready": true,
   "shutdown_with_message": true, "env": {"PORT": 8000}},
  {"name": "codes", "script": "a.js", "stop_exit_codes": ["0", "7", 300]},
  {"name": "local", "script": "a.js", "env": {"PORT": 3000, "HOST": "127.0.0.1"}},
  {"name": "api:prod", "script": "a.js", "watch": true},
  {"name": "api:prod", "script": "b.js"},
  {"name": "camel", "script": "a.js", "killTimeout": 4000, "waitReady": true,
   "maxMemoryRestart": "200M", "env": {"PORT": 3001}}
]}"#,
    );
    let out = d.join("out");
    let o = import(&f, &out, &[], &[]);
    let report = text(&o.stdout);
    assert!(o.status.success(), "{}\n{report}", text(&o.stderr));
    let read = |name: &str| std::fs::read_to_string(out.join(name)).unwrap();
    let configs: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(configs.len(), 8, "{configs:?}");
    let c = Command::new(CORRAL)
        .arg("check")
        .args(&configs)
        .output()
        .unwrap();
    assert!(c.status.success(), "{}", text(&c.stderr));

    // 5000 workers, a 0 timeout, corral's own variables: left out, each said.
    let zero = read("zero.toml");
    assert!(
        !zero.contains("workers =")
            && !zero.contains("CORRAL_X =")
            && !zero.contains("NODE_CHANNEL_FD ="),
        "{zero}"
    );
    assert!(
        report.contains("workers 5000: corral does not take this value"),
        "{report}"
    );
    assert!(
        report.contains("env CORRAL_X: corral sets this variable itself"),
        "{report}"
    );
    assert!(
        report.contains("listen_timeout 0: PM2 uses its default"),
        "{report}"
    );
    // Numbers too big for anything: no overflow, reported.
    assert!(report.contains("huge -> "), "{report}");
    // A Python server with PORT binds it itself: no listener, no IPC message, told why.
    let py = read("py.toml");
    assert!(
        !py.contains("\n[[listen]]\n") && !py.contains("message ="),
        "{py}"
    );
    assert!(py.contains("mode = \"notify\""), "{py}");
    assert!(
        report.contains("PORT 8000: python3 binds it itself"),
        "{report}"
    );
    // PM2 reads exit codes with parseInt.
    assert!(read("codes.toml").contains("stop_exit_codes = [0, 7]"));
    assert!(
        report.contains("stop_exit_codes 300: not an exit status"),
        "{report}"
    );
    // HOST says where listen() was bound.
    assert!(read("local.toml").contains("address = \"127.0.0.1:3000\""));
    // Names corral cannot take, and twice the same: each its own file, commands for those.
    assert!(read("api-prod.toml").contains("a.js"));
    assert!(read("api-prod-2.toml").contains("b.js"));
    assert!(
        report.contains("systemctl reload corral@api-prod`"),
        "{report}"
    );
    assert_eq!(
        report.matches("pm2 delete api:prod\n").count(),
        1,
        "{report}"
    );
    assert!(report.contains("corral@api-prod-2.service"), "{report}");
    // PM2's camelCase forms are its keys.
    let camel = read("camel.toml");
    for want in [
        "timeout = \"4s\"",
        "mode = \"node-ipc\"",
        "max_memory = \"200M\"",
    ] {
        assert!(camel.contains(want), "{want} in {camel}");
    }
}

#[test]
fn an_ecosystem_that_prints_and_leaves_timers_is_read_at_once() {
    if !have_node() {
        skipped("node is not installed");
        return;
    }
    // dotenv prints a line when it loads; a file may open a connection it never closes.
    let d = scratch_dir();
    write(&d, "server.js", "// a stand-in\n");
    let f = write(
        &d,
        "ecosystem.config.js",
        "console.log('[dotenv] injecting env (2) from .env');\n\
         setInterval(() => {}, 1000);\n\
         module.exports = { apps: [{ name: 'api', script: 'server.js', instances: 2 }] };\n",
    );
    let out = d.join("out");
    let o = import(&f, &out, &[], &[]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(std::fs::read_to_string(out.join("api.toml"))
        .unwrap()
        .contains("workers = 2"));
}

#[test]
fn a_dumps_apps_are_told_apart_by_script_not_name_alone() {
    let d = scratch_dir();
    let record = |script: &str, port: u16| {
        format!(
            r#"{{"name": "web", "namespace": "default", "pm_exec_path": "{script}",
                "pm_cwd": "/srv/web", "exec_interpreter": "node", "exec_mode": "fork_mode",
                "env": {{"PORT": {port}}}}}"#
        )
    };
    let f = write(
        &d,
        "dump.pm2",
        &format!(
            "[{}, {}, {}]",
            record("/srv/web/a.js", 3000),
            record("/srv/web/a.js", 3001),
            record("/srv/web/b.js", 4000)
        ),
    );
    let out = d.join("out");
    let o = import(&f, &out, &[], &[]);
    let report = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let a = std::fs::read_to_string(out.join("web.toml")).unwrap();
    let b = std::fs::read_to_string(out.join("web-2.toml")).unwrap();
    assert!(a.contains("a.js") && a.contains("workers = 2"), "{a}");
    assert!(b.contains("b.js") && b.contains("workers = 1"), "{b}");
    // Fork-mode processes that each had a port now share one: said, by variable name.
    assert!(report.contains("had different values of PORT"), "{report}");
}
