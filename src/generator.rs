//! `corral-generator`: systemd.generator(7) turning `/etc/corral/*.toml` into units.
//!
//! systemd runs generators early at boot and on every `daemon-reload`, in parallel, with three
//! output directories; corral writes into the first (normal priority). A generator must not
//! delay boot or talk to other processes: this one reads files, renders text and writes files,
//! nothing else. A config that does not parse skips that app with a message on /dev/kmsg (where
//! generator messages go, as journald may not run yet) and never fails the run.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::units::{self, Flavor};

/// What one run did.
#[derive(Debug, Default)]
pub struct Report {
    pub written: Vec<PathBuf>,
    /// One message per app skipped (every diagnostic of its config).
    pub skipped: Vec<String>,
}

/// Renders units for every `*.toml` in `config_dir` into `out`.
pub fn generate(config_dir: &Path, out: &Path) -> Report {
    let mut report = Report::default();
    let mut configs: Vec<PathBuf> = match std::fs::read_dir(config_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect(),
        // No /etc/corral: nothing to do.
        Err(_) => return report,
    };
    configs.sort();
    for path in configs {
        let config = match Config::load_settings(&path) {
            Ok(c) => c,
            Err(e) => {
                report
                    .skipped
                    .push(format!("skipping {}:\n{e}", path.display()));
                continue;
            }
        };
        for file in units::render(&config, &path, &Flavor::Generator) {
            let target = out.join(&file.path);
            let written = target
                .parent()
                .map_or(Ok(()), std::fs::create_dir_all)
                .and_then(|()| std::fs::write(&target, &file.contents));
            match written {
                Ok(()) => report.written.push(target),
                Err(e) => report
                    .skipped
                    .push(format!("cannot write {}: {e}", target.display())),
            }
        }
    }
    report
}

/// Entry point when invoked as `corral-generator NORMAL_DIR [EARLY_DIR LATE_DIR]`.
pub fn main(args: &[OsString]) -> i32 {
    let Some(out) = args.first() else {
        eprintln!("usage: corral-generator NORMAL_DIR [EARLY_DIR LATE_DIR] (systemd.generator(7))");
        return crate::error::exit::USAGE;
    };
    let report = generate(Path::new(units::CONFIG_DIR), Path::new(out));
    for msg in &report.skipped {
        kmsg(msg);
    }
    // Never fail: one broken app must not mark the whole generator run as failed.
    crate::error::exit::OK
}

/// Writes to the kernel log at warning level, one record per line; stderr if that fails.
fn kmsg(msg: &str) {
    let pid = std::process::id();
    let mut out = std::fs::OpenOptions::new().write(true).open("/dev/kmsg");
    for line in msg.lines() {
        let record = format!("<4>corral-generator[{pid}]: {line}\n");
        let sent = match &mut out {
            Ok(f) => f.write_all(record.as_bytes()).is_ok(),
            Err(_) => false,
        };
        if !sent {
            eprintln!("corral-generator: {line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_config_skips_only_its_app() {
        let base = std::env::temp_dir().join(format!("corral-gen-{}", std::process::id()));
        let (etc, out) = (base.join("etc"), base.join("out"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(
            etc.join("good.toml"),
            "command = [\"x\"]\n[[listen]]\nname = \"http\"\naddress = \"8080\"\n",
        )
        .unwrap();
        std::fs::write(etc.join("bad.toml"), "comand = 1\n").unwrap();
        std::fs::write(etc.join("notes.txt"), "not a config").unwrap();
        let r = generate(&etc, &out);
        assert_eq!(r.skipped.len(), 1, "{:?}", r.skipped);
        assert!(r.skipped[0].contains("bad.toml:1:1"), "{}", r.skipped[0]);
        assert!(out.join("corral@good.service.d/50-corral.conf").is_file());
        assert!(out.join("corral@good.socket.d/50-corral.conf").is_file());
        assert!(!out.join("corral@bad.service.d").exists());
        let _ = std::fs::remove_dir_all(base);
    }

    #[test]
    fn an_environment_file_not_there_at_boot_does_not_skip_the_app() {
        // The files are the app's to read when it starts (a secret store may put them there
        // after the generators ran); the units do not depend on them.
        let base = std::env::temp_dir().join(format!("corral-gen-env-{}", std::process::id()));
        let (etc, out) = (base.join("etc"), base.join("out"));
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        let missing = base.join("not-yet.env");
        std::fs::write(
            etc.join("api.toml"),
            format!(
                "command = [\"x\"]\nenvironment_file = \"{}\"\n",
                missing.display()
            ),
        )
        .unwrap();
        assert!(Config::load(&etc.join("api.toml")).is_err());
        let r = generate(&etc, &out);
        assert!(r.skipped.is_empty(), "{:?}", r.skipped);
        assert!(out.join("corral@api.service.d/50-corral.conf").is_file());
        let _ = std::fs::remove_dir_all(base);
    }
}
