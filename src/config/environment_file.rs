//! `environment_file`: the files [`Config::load`] reads, in systemd's `EnvironmentFile=` format
//! ([`crate::envfile`]), into the workers' environment.
//!
//! They are read each time the config is, so a reload re-reads them: a secret or a setting in
//! them changes with `corral reload`, `systemctl reload` or SIGHUP, and a file that became
//! malformed refuses the reload like a bad config. Reading takes the same care as the config's
//! own (a regular file, at most [`MAX_ENVIRONMENT_FILE_SIZE`] bytes, never a wait on a FIFO),
//! and happens wherever the config is loaded, off the event loop.
//!
//! The values are often secrets. No message quotes one: a problem in a file is
//! `FILE:LINE: what is wrong`, and a file that cannot be read is named with why, at the place
//! in the config that names it.

use std::collections::HashMap;

use super::check::reserved_env;
use super::{read_file, Config, ConfigError, Diagnostic, Kind};
use crate::envfile;

/// The most files `environment_file` may name. systemd sets no limit; this one bounds what a
/// load reads (16 × 1 MiB) far above any real use (a file of settings, one of secrets, a local
/// override).
pub const MAX_ENVIRONMENT_FILES: usize = 16;

/// The largest environment file read: 1 MiB, as for the config itself, hundreds of times any
/// real one. A larger file is refused before it is read.
pub const MAX_ENVIRONMENT_FILE_SIZE: u64 = 1024 * 1024;

const ENVIRONMENT_FILE: Kind = Kind {
    max: MAX_ENVIRONMENT_FILE_SIZE,
    what: "an environment file",
};

impl Config {
    /// Reads the files of `environment_file` into `environment`: the files in order, a later
    /// one's value of a name replacing an earlier one's (as systemd does), and the config's own
    /// `environment` over them all. An optional file that does not exist is skipped; any other
    /// problem with any file is an error, and every one is reported.
    pub(super) fn read_environment_files(mut self) -> Result<Config, ConfigError> {
        if self.environment_files.is_empty() {
            return Ok(self);
        }
        let mut diagnostics = Vec::new();
        let mut in_files = Vec::new();
        let mut merged: Vec<(String, String)> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        for file in &self.environment_files {
            let bytes = match read_file(&file.path, ENVIRONMENT_FILE) {
                Ok(bytes) => bytes,
                Err(e) if e.missing && file.optional => continue,
                Err(e) => {
                    let hint = if e.missing {
                        "; a leading '-' makes a file optional"
                    } else {
                        ""
                    };
                    diagnostics.push(Diagnostic {
                        line: file.line,
                        col: file.col,
                        message: format!(
                            "environment_file {}: {}{hint}",
                            file.path.display(),
                            e.message
                        ),
                    });
                    continue;
                }
            };
            let reserved = |name: &str| {
                reserved_env(name)
                    .then(|| format!("`{name}` is reserved: corral sets it for the workers"))
            };
            match envfile::parse_with(&bytes, reserved) {
                Ok(assignments) => {
                    for a in assignments {
                        match index.get(&a.name) {
                            Some(&i) => merged[i].1 = a.value,
                            None => {
                                index.insert(a.name.clone(), merged.len());
                                merged.push((a.name, a.value));
                            }
                        }
                    }
                }
                Err(problems) => in_files.push(file_error(&file.path, problems)),
            }
        }
        if !diagnostics.is_empty() || !in_files.is_empty() {
            return Err(ConfigError {
                file: self.path.clone(),
                diagnostics,
                more: 0,
                environment_files: in_files,
            });
        }
        // The config's own names win: the files' values of them are dropped, and the config's
        // come after the files', in its own order.
        let own: std::collections::HashSet<&str> =
            self.environment.iter().map(|(k, _)| k.as_str()).collect();
        merged.retain(|(k, _)| !own.contains(k.as_str()));
        merged.append(&mut self.environment);
        self.environment = merged;
        Ok(self)
    }
}

/// The problems of one environment file as an error naming it, `FILE:LINE: message` each;
/// past the most [`ConfigError`]'s display lists, a last diagnostic counts the rest, as the
/// display does for the problems it has but does not list.
fn file_error(path: &std::path::Path, problems: envfile::Problems) -> ConfigError {
    let keep = super::MAX_LISTED_DIAGNOSTICS - 1;
    let mut diagnostics: Vec<Diagnostic> = problems
        .listed
        .into_iter()
        .map(|p| Diagnostic {
            line: p.line,
            col: 0,
            message: p.message,
        })
        .collect();
    if problems.total > diagnostics.len() && diagnostics.len() > keep {
        diagnostics.truncate(keep);
    }
    if problems.total > diagnostics.len() {
        let rest = problems.total - diagnostics.len();
        let s = if rest == 1 { "" } else { "s" };
        diagnostics.push(Diagnostic {
            line: 0,
            col: 0,
            message: format!("... and {} more error{s}", super::thousands(rest)),
        });
    }
    ConfigError {
        file: path.to_path_buf(),
        diagnostics,
        more: 0,
        environment_files: Vec::new(),
    }
}
