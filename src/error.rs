//! corral's errors, and the exit codes they map to. `main` prints an error once; nothing below
//! it prints and exits.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::config::ConfigError;

/// Exit codes, stable and documented in `corral --help` and the README.
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// The operation failed: bad config, refused or failed reload, worker failure, I/O error.
    pub const FAILED: i32 = 1;
    /// The command line was wrong.
    pub const USAGE: i32 = 2;
    /// No supervisor answers on the control socket.
    pub const NOT_RUNNING: i32 = 3;
}

#[derive(Debug)]
pub enum Error {
    /// One or more config files are invalid; each diagnostic names FILE:LINE:COL.
    Config(Vec<ConfigError>),
    /// The listeners in the config and those systemd passed (or that could be bound) disagree.
    Listen(String),
    /// An operation on the system failed; `what` says which, in words a user knows.
    Io { what: String, source: io::Error },
    /// Nothing listens on the control socket.
    NotRunning { path: PathBuf, source: io::Error },
    /// The supervisor answered that it could not do what was asked (the reason is its own).
    Refused(String),
    /// The control protocol was not followed (different versions, garbage).
    Protocol(String),
    /// Bad command-line use not caught by the argument parser.
    Usage(String),
}

impl Error {
    pub fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }

    pub fn exit_code(&self) -> i32 {
        match self {
            Error::NotRunning { .. } => exit::NOT_RUNNING,
            Error::Usage(_) => exit::USAGE,
            _ => exit::FAILED,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(errors) => {
                for (i, e) in errors.iter().enumerate() {
                    if i > 0 {
                        writeln!(f)?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
            Error::Listen(m) | Error::Refused(m) | Error::Protocol(m) | Error::Usage(m) => {
                f.write_str(m)
            }
            Error::Io { what, source } => write!(f, "{what}: {source}"),
            Error::NotRunning { path, source } => write!(
                f,
                "no corral is running there: cannot connect to {} ({source})",
                path.display()
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<ConfigError> for Error {
    fn from(e: ConfigError) -> Error {
        Error::Config(vec![e])
    }
}
