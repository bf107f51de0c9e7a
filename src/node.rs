//! Node.js apps with `[node] preload = true`: corral's preload (`node/preload.cjs`) and the
//! variables that go with it (corral-worker(7), NODE.JS).
//!
//! The preload is built into the binary, so the file the workers load always matches the
//! supervisor that describes the listeners to it, from a package or a checkout alike. It is
//! written beside the control socket (rundir.rs keeps that directory corral's own), checked
//! again for every generation that uses it, and removed when corral exits.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::listen::Set;

/// corral's Node.js preload.
pub const PRELOAD: &str = include_str!("../node/preload.cjs");

/// Environment: a name and a value.
pub type Env = Vec<(OsString, OsString)>;

pub struct Preload {
    path: PathBuf,
    written: bool,
}

impl Preload {
    /// The preload of the supervisor whose control socket is `control`.
    pub fn new(control: &Path) -> Preload {
        Preload {
            path: crate::rundir::beside(control, "preload.cjs"),
            written: false,
        }
    }

    /// Writes the file (mode 0444) if it is not there: the first time, or if something removed
    /// it since (a cleaner of /tmp, an operator).
    fn ensure(&mut self) -> Result<&Path, String> {
        if !self.written || !self.path.exists() {
            crate::rundir::write_file(&self.path, PRELOAD.as_bytes(), 0o444).map_err(|e| {
                format!(
                    "cannot write the Node.js preload {}: {e}",
                    self.path.display()
                )
            })?;
            self.written = true;
        }
        Ok(&self.path)
    }

    /// What a generation with the preload adds to its workers' environment: `NODE_OPTIONS`
    /// with `--require` of the preload first, the listeners for it (`CORRAL_NODE_LISTEN`),
    /// and PM2's `PORT` where it is unambiguous and the config does not set it. Any inherited
    /// `NODE_APP_INSTANCE` goes: each worker gets its slot there (runtime.rs).
    pub fn apply(&mut self, env: &mut Env, config: &Config, listeners: &Set) -> Result<(), String> {
        let path = self.ensure()?;
        let existing = env
            .iter()
            .find(|(k, _)| k == "NODE_OPTIONS")
            .map(|(_, v)| v.clone());
        let options = node_options(path, existing.as_ref())?;
        env.retain(|(k, _)| k != "NODE_OPTIONS" && k != "NODE_APP_INSTANCE");
        env.push(("NODE_OPTIONS".into(), options));
        env.push((
            "CORRAL_NODE_LISTEN".into(),
            listeners.describe().to_string().into(),
        ));
        let set_here = config.environment.iter().any(|(k, _)| k == "PORT");
        if let (Some(port), false) = (listeners.only_port(), set_here) {
            env.retain(|(k, _)| k != "PORT");
            env.push(("PORT".into(), port.to_string().into()));
        }
        Ok(())
    }
}

impl Drop for Preload {
    fn drop(&mut self) {
        if self.written {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// `NODE_OPTIONS` with `--require "PRELOAD"` first, then what the worker would have had.
/// Node.js splits the variable at spaces, except inside double quotes, where `\` escapes the
/// next character (Node.js's command-line documentation, NODE_OPTIONS).
pub fn node_options(preload: &Path, existing: Option<&OsString>) -> Result<OsString, String> {
    let path = preload.to_str().ok_or_else(|| {
        format!(
            "the Node.js preload's path {} is not UTF-8, which NODE_OPTIONS cannot carry",
            preload.display()
        )
    })?;
    let quoted = path.replace('\\', "\\\\").replace('"', "\\\"");
    let mut v = OsString::from(format!("--require \"{quoted}\""));
    if let Some(e) = existing.filter(|e| !e.is_empty()) {
        v.push(" ");
        v.push(e);
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_options_quote_the_path_and_keep_what_was_there() {
        let o = node_options(Path::new("/run/corral/api/api.preload.cjs"), None).unwrap();
        assert_eq!(o, "--require \"/run/corral/api/api.preload.cjs\"");
        let o = node_options(
            Path::new("/srv/my app/a\"b\\c.cjs"),
            Some(&OsString::from("--max-old-space-size=512")),
        )
        .unwrap();
        assert_eq!(
            o,
            "--require \"/srv/my app/a\\\"b\\\\c.cjs\" --max-old-space-size=512"
        );
        use std::os::unix::ffi::OsStrExt;
        let bad = std::ffi::OsStr::from_bytes(b"/x/\xff.cjs");
        assert!(node_options(Path::new(bad), None)
            .unwrap_err()
            .contains("not UTF-8"));
    }

    #[test]
    fn node_reads_the_quoted_path_back() {
        // Node.js itself parses NODE_OPTIONS: a preload in a directory with a space and a quote
        // in its name is loaded.
        if std::process::Command::new("node")
            .arg("--version")
            .output()
            .is_err()
        {
            use std::io::Write;
            let _ = writeln!(std::io::stderr().lock(), "SKIPPED: node is not installed");
            assert!(
                std::env::var("CI").map_or(true, |v| v != "true"),
                "CI has node"
            );
            return;
        }
        let dir = std::env::temp_dir().join(format!("corral node \"q\" {}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("p.cjs");
        std::fs::write(&file, "process.stdout.write('preloaded ');").unwrap();
        let out = std::process::Command::new("node")
            .args(["-e", "console.log('main')"])
            .env("NODE_OPTIONS", node_options(&file, None).unwrap())
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "preloaded main\n",
            "{out:?}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}
