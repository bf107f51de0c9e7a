//! `corral import pm2`: PM2's apps (an ecosystem file, or its saved process list) as corral
//! app configs, one `APP.toml` each, with a report of what became what and what a person
//! should look at.

mod env_file;
mod pm2;
mod read;
mod toml_out;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{Map, Value};

use crate::error::Error;

pub struct Options {
    pub file: PathBuf,
    pub output: PathBuf,
    pub env_name: Option<String>,
    pub port: Option<u16>,
    pub force: bool,
}

/// One app: its PM2 name, its corral name and file, the config, and the report.
struct Written {
    pm2_name: String,
    name: String,
    path: PathBuf,
    converted: pm2::Converted,
}

/// An app name corral takes (letters, digits, `_`, `.`, `-`; config/mod.rs): PM2's may hold
/// anything.
fn app_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| if crate::config::name_char(c) { c } else { '-' })
        .collect();
    while s.starts_with(['.', '-']) {
        s.remove(0);
    }
    s.truncate(120);
    if s.is_empty() {
        "app".into()
    } else {
        s
    }
}

/// A word as a POSIX shell reads it back: quoted when it holds anything but the safe
/// characters.
fn shell_word(s: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-.,:/@%+=".contains(c);
    if !s.is_empty() && s.chars().all(safe) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// The name of the user running this, unless root.
fn current_user() -> Option<String> {
    let uid = nix::unistd::geteuid();
    if uid.is_root() {
        return None;
    }
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map(|u| u.name)
}

/// What tells apart two records of a dump: PM2 keeps one per process, so the processes of
/// one app share its name, namespace and script.
fn dump_identity(app: &Map<String, Value>) -> (String, String, String) {
    let field = |k: &str| app.get(k).map(|v| v.to_string()).unwrap_or_default();
    (
        pm2::pm2_name(app),
        field("namespace"),
        field("pm_exec_path"),
    )
}

/// An app to convert: its settings, the number of processes a dump held for it, and the
/// variables whose values differed between those processes.
type App = (Map<String, Value>, Option<u32>, Vec<String>);

/// A dump's records grouped into apps, each with its number of processes and the variables
/// whose values differed between them (by name only: values may be secrets).
fn group_dump(records: Vec<Map<String, Value>>) -> Vec<App> {
    let mut apps: Vec<App> = Vec::new();
    for record in records {
        let id = dump_identity(&record);
        match apps.iter_mut().find(|(a, _, _)| dump_identity(a) == id) {
            Some((first, n, differ)) => {
                *n = Some(n.unwrap_or(1) + 1);
                let empty = Map::new();
                let env = |a: &Map<String, Value>| {
                    a.get("env")
                        .and_then(Value::as_object)
                        .cloned()
                        .unwrap_or_else(|| empty.clone())
                };
                let (a, b) = (env(first), env(&record));
                for k in a.keys().chain(b.keys()) {
                    if a.get(k) != b.get(k) && k != "unique_id" && !differ.contains(k) {
                        differ.push(k.clone());
                    }
                }
            }
            None => apps.push((record, Some(1), Vec::new())),
        }
    }
    apps
}

/// Reads, converts, checks every result with corral's own checker, and only then writes.
pub fn run(opts: &Options) -> Result<String, Error> {
    let fail = |msg: String| Error::Refused(msg);
    let source = read::read(&opts.file).map_err(fail)?;
    let source_name = opts
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| opts.file.display().to_string());
    let apps: Vec<App> = if source.dump {
        group_dump(source.apps)
    } else {
        source
            .apps
            .into_iter()
            .map(|a| (a, None, Vec::new()))
            .collect()
    };
    if apps.is_empty() {
        return Err(fail(format!("{} has no apps", opts.file.display())));
    }
    if opts.port.is_some() && apps.len() > 1 {
        return Err(fail(format!(
            "--port: {} has {} apps, and each needs its own port; give each its PORT in env",
            opts.file.display(),
            apps.len()
        )));
    }
    // A profile no app has is a typo, which `pm2 start --env` would pass over with a warning.
    let mut deploy_env = Map::new();
    if let (Some(env), false) = (&opts.env_name, source.dump) {
        let key = format!("env_{env}");
        if !apps.iter().any(|(a, _, _)| a.contains_key(&key)) {
            let mut have: Vec<&str> = apps
                .iter()
                .flat_map(|(a, _, _)| a.keys())
                .filter_map(|k| k.strip_prefix("env_"))
                .filter(|k| *k != "file")
                .collect();
            have.sort();
            have.dedup();
            let have = if have.is_empty() {
                "none has an env_NAME".to_string()
            } else {
                format!("they have: {}", have.join(", "))
            };
            return Err(fail(format!(
                "--env {env}: no app in {} has {key} ({have}); nothing was written",
                opts.file.display()
            )));
        }
        if let Some(Value::Object(e)) = source
            .deploy
            .as_ref()
            .and_then(|d| d.get(env))
            .and_then(|d| d.get("env"))
        {
            deploy_env = e.clone();
        }
    }
    let cwd =
        std::env::current_dir().map_err(|e| Error::io("cannot read the current directory", e))?;
    let conv_opts = pm2::Options {
        env_name: opts.env_name.clone(),
        deploy_env,
        port: opts.port,
        cwd,
        file_dir: source.file_dir.clone(),
        source: source_name.clone(),
        dump: source.dump,
        current_user: current_user(),
        path: std::env::var_os("PATH").unwrap_or_default(),
    };
    let mut written: Vec<Written> = Vec::new();
    for (i, (app, instances, differ)) in apps.iter().enumerate() {
        let pm2_name = pm2::pm2_name(app);
        let base = app_name(&pm2_name);
        let mut name = base.clone();
        let mut n = 2;
        while written.iter().any(|w| w.name == name) {
            name = format!("{base}-{n}");
            n += 1;
        }
        let mut converted = pm2::convert(app, *instances, &name, &conv_opts).map_err(|e| {
            fail(format!(
                "{}: app {i} ({pm2_name}): {e}",
                opts.file.display()
            ))
        })?;
        if !differ.is_empty() {
            converted.attention.push(format!(
                "the dump's processes of {pm2_name} had different values of {}: corral gives \
                 every worker the same environment (the first process's); use CORRAL_WORKER \
                 where they must differ",
                differ.join(", ")
            ));
        }
        let path = opts.output.join(format!("{name}.toml"));
        written.push(Written {
            pm2_name,
            name,
            path,
            converted,
        });
    }
    let existing: Vec<String> = written
        .iter()
        .filter(|w| w.path.exists())
        .map(|w| w.path.display().to_string())
        .collect();
    if !existing.is_empty() && !opts.force {
        return Err(fail(format!(
            "not overwriting {} (nothing was written): use --force, or another --output",
            existing.join(", ")
        )));
    }
    std::fs::create_dir_all(&opts.output)
        .map_err(|e| Error::io(format!("cannot create {}", opts.output.display()), e))?;
    for w in &written {
        std::fs::write(&w.path, &w.converted.toml)
            .map_err(|e| Error::io(format!("cannot write {}", w.path.display()), e))?;
    }
    Ok(report(&written, &source.other_keys, &source_name))
}

/// What became what, what to look at, and what to do next.
fn report(written: &[Written], other_keys: &[String], source: &str) -> String {
    let mut r = String::new();
    let mut mapped = 0;
    let mut attention = 0;
    for w in written {
        let c = &w.converted;
        mapped += c.mapped.len();
        attention += c.attention.len();
        let _ = writeln!(r, "{} -> {}", w.pm2_name, w.path.display());
        let _ = writeln!(r, "  mapped: {}", c.mapped.join(", "));
        for a in &c.attention {
            let _ = writeln!(r, "  look at: {a}");
        }
        for n in &c.notes {
            let _ = writeln!(r, "  note: {n}");
        }
    }
    for k in other_keys {
        attention += 1;
        let why = match k.as_str() {
            "deploy" => {
                "out of scope: corral does not deploy code; keep your deploy tool, and end it \
                 with `systemctl reload corral@APP` (with --env, its deploy.NAME.env was applied)"
            }
            _ => "not a PM2 setting corral knows; not imported",
        };
        let _ = writeln!(r, "{source}: look at: {k}: {why}");
    }
    let _ = writeln!(
        r,
        "\n{} app(s) written, {mapped} key(s) mapped, {attention} to look at (above).",
        written.len()
    );
    let _ = writeln!(
        r,
        "\nNext steps, app by app (PM2's copy holds the port until it is deleted):"
    );
    let mut deleted = BTreeSet::new();
    for w in written {
        let units = if w.converted.listens {
            format!("corral@{0}.socket corral@{0}.service", w.name)
        } else {
            format!("corral@{}.service", w.name)
        };
        let target = format!("/etc/corral/{}.toml", w.name);
        let _ = writeln!(
            r,
            "  sudo install -m 0644 {} {target} && corral check {target}",
            shell_word(&w.path.display().to_string()),
        );
        let _ = writeln!(r, "  sudo systemctl daemon-reload");
        // PM2 deletes every process of a name at once.
        if deleted.insert(w.pm2_name.clone()) {
            let _ = writeln!(r, "  pm2 delete {}", shell_word(&w.pm2_name));
        }
        let _ = writeln!(r, "  sudo systemctl enable --now {units}");
    }
    let _ = writeln!(
        r,
        "When PM2 runs nothing more: `pm2 save --force`, then `pm2 unstartup` removes its boot \
         unit, and `pm2 kill` stops its daemon."
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_shell_words() {
        assert_eq!(app_name("api:prod"), "api-prod");
        assert_eq!(app_name("..x"), "x");
        assert_eq!(app_name("✓"), "app");
        assert_eq!(shell_word("web"), "web");
        assert_eq!(shell_word("edge proxy"), "'edge proxy'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
    }
}
