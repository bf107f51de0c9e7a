//! `corral import pm2`: PM2's apps (an ecosystem file, or its saved process list) as corral
//! app configs, one `APP.toml` each, with a report of what became what and what a person
//! should look at.

mod pm2;
mod read;
mod toml_out;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::error::Error;

pub struct Options {
    pub file: PathBuf,
    pub output: PathBuf,
    pub env_name: Option<String>,
    pub port: Option<u16>,
    pub force: bool,
}

/// One app: its file's name, the config, and the report.
struct Written {
    name: String,
    path: PathBuf,
    converted: pm2::Converted,
}

/// An app name corral takes (letters, digits, `_`, `.`, `-`; config/mod.rs): PM2's may hold
/// anything.
fn app_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    while s.starts_with(['.', '-']) {
        s.remove(0);
    }
    s.truncate(128);
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

/// Reads, converts, checks every result with corral's own checker, and only then writes.
pub fn run(opts: &Options) -> Result<String, Error> {
    let fail = |msg: String| Error::Refused(msg);
    let source = read::read(&opts.file).map_err(fail)?;
    let source_name = opts
        .file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| opts.file.display().to_string());
    let conv_opts = pm2::Options {
        env_name: opts.env_name.clone(),
        port: opts.port,
        base_dir: source.base_dir.clone(),
        source: source_name.clone(),
        dump: source.dump,
        current_user: current_user(),
    };
    // A dump holds one record per process: an app in cluster mode is there once per
    // instance.
    let mut apps: Vec<(read::App, Option<u32>)> = Vec::new();
    for app in source.apps {
        if source.dump {
            let name = app.get("name").cloned();
            if let Some((_, n)) = apps
                .iter_mut()
                .find(|(a, _)| a.get("name").is_some() && a.get("name") == name.as_ref())
            {
                *n = Some(n.unwrap_or(1) + 1);
                continue;
            }
            apps.push((app, Some(1)));
        } else {
            apps.push((app, None));
        }
    }
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
    // A profile no app has is a typo, which `pm2 start --env` would ignore silently.
    if let Some(env) = &opts.env_name {
        let key = format!("env_{env}");
        if !source.dump && !apps.iter().any(|(a, _)| a.contains_key(&key)) {
            let mut have: Vec<&str> = apps
                .iter()
                .flat_map(|(a, _)| a.keys())
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
    }
    let mut written = Vec::new();
    for (i, (app, instances)) in apps.iter().enumerate() {
        let converted = pm2::convert(app, *instances, &conv_opts)
            .map_err(|e| fail(format!("{}: app {i}: {e}", opts.file.display())))?;
        let mut name = app_name(&converted.name);
        let mut n = 2;
        while written.iter().any(|w: &Written| w.name == name) {
            name = format!("{}-{n}", app_name(&converted.name));
            n += 1;
        }
        let path = opts.output.join(format!("{name}.toml"));
        // What is written must be a config corral takes: checked by corral's own checker.
        let check_path = Path::new("/etc/corral").join(format!("{name}.toml"));
        if let Err(e) = Config::parse(&check_path, &converted.toml) {
            return Err(fail(format!(
                "the config made for {} does not pass corral check (a bug in corral import; \
                 please report it with the ecosystem file):\n{e}\n{}",
                converted.name, converted.toml
            )));
        }
        written.push(Written {
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
        let _ = writeln!(r, "{} -> {}", c.name, w.path.display());
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
                 with `systemctl reload corral@APP`"
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
        "\nNext steps, for each app (PM2's copy holds the port until it stops):"
    );
    for w in written {
        let units = if w.converted.listens {
            format!("corral@{0}.socket corral@{0}.service", w.name)
        } else {
            format!("corral@{}.service", w.name)
        };
        let _ = writeln!(
            r,
            "  sudo install -m 0644 {} /etc/corral/{}.toml && corral check /etc/corral/{}.toml",
            w.path.display(),
            w.name,
            w.name
        );
        let _ = writeln!(r, "  sudo systemctl daemon-reload");
        let _ = writeln!(
            r,
            "  pm2 delete {} && sudo systemctl enable --now {units}",
            shell_word(&w.converted.name)
        );
    }
    let _ = writeln!(
        r,
        "When PM2 runs nothing more: `pm2 save --force`, then `pm2 unstartup` removes its boot \
         unit, and `pm2 kill` stops its daemon."
    );
    r
}
