//! One error type for the library. Every variant names the file (and where it makes sense the
//! tensor or node) so that a pipeline log tells the user what to fix.
//!
//! Layer: core (imports its own layer and the ones below; see ARCHITECTURE.md).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a model we can read, or is damaged.
    #[error("{path}: {msg}")]
    Malformed { path: PathBuf, msg: String },
    /// The file is valid but uses something pare does not support.
    #[error("{path}: {msg}")]
    Unsupported { path: PathBuf, msg: String },
    /// The user asked for something that cannot be done (bad flag combination, refused path).
    #[error("{0}")]
    Usage(String),
    /// A written model did not pass verification and the user required it to.
    #[error("{0}")]
    Verification(String),
    /// The written model's outputs diverge from the original's and the user required them to
    /// agree.
    #[error("{0}")]
    Diverged(String),
    /// The work was asked to stop (Ctrl-C in the Python package); nothing was written.
    #[error("interrupted; nothing was written")]
    Interrupted,
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub fn malformed(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Malformed {
            path: path.into(),
            msg: msg.into(),
        }
    }
    pub fn unsupported(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Unsupported {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
