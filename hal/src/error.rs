//! The crate's error type: one variant per kind of failure, each carrying
//! what failed (the path, the device, the TPM command) so that the message
//! alone tells an operator what to look at.

use std::path::PathBuf;

/// Everything that can go wrong in the hardware layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading or writing a file failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What we were doing ("reading", "writing", "syncing", ...).
        action: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file had content we could not understand.
    #[error("parsing {what}: {reason}")]
    Parse {
        /// What was being parsed (a path or a format name).
        what: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A benchmark's runs disagreed by more than the stated bound, so no
    /// figure is reported.
    #[error("{bench}: runs disagree by {spread:.1}% (bound {bound:.1}%): samples {samples:?}; the machine was busy or throttling, run again on an idle machine")]
    Unstable {
        /// Which benchmark.
        bench: &'static str,
        /// The measured spread, in percent.
        spread: f64,
        /// The bound, in percent.
        bound: f64,
        /// The per-run figures.
        samples: Vec<f64>,
    },
    /// Arguments that make no sense (zero threads, an empty range ...).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// A proof or chunk opening failed to verify.
    #[error("proof rejected: {0}")]
    Rejected(String),
    /// A TPM command failed.
    #[error("tpm {command} failed: {reason}")]
    Tpm {
        /// The TPM command or step (e.g. "Quote", "ActivateCredential").
        command: &'static str,
        /// What the TSS said.
        reason: String,
    },
    /// The GPU compute benchmark could not run.
    #[error("gpu: {0}")]
    Gpu(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An I/O error on `path`.
    pub fn io(action: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.into(),
            source,
        }
    }

    /// A parse error in `what`.
    pub fn parse(what: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Parse {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// A TPM failure in `command`.
    pub fn tpm(command: &'static str, reason: impl std::fmt::Display) -> Self {
        Error::Tpm {
            command,
            reason: reason.to_string(),
        }
    }
}
