//! One error type for the image builder and the flasher; every variant names
//! the file, tool or device involved and, where it can, what to do about it.

use std::path::PathBuf;

/// Why building or flashing an image failed.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A host tool is missing.
    #[error(
        "missing tool `{tool}`: install the Debian package `{package}` (or run `cargo xtask deps`)"
    )]
    MissingTool {
        /// The program name.
        tool: String,
        /// The Debian package that provides it.
        package: String,
    },
    /// A tool ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    ToolFailed {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// The tail of its standard error.
        stderr: String,
    },
    /// Reading or writing a file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The image spec is malformed.
    #[error("image spec {path}: {msg}")]
    Spec {
        /// The spec file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// A file the spec names does not exist.
    #[error("{what} {path} does not exist{hint}")]
    Missing {
        /// What kind of file.
        what: &'static str,
        /// The path looked for.
        path: PathBuf,
        /// What to do.
        hint: String,
    },
    /// The kernel package could not be resolved or fetched.
    #[error("kernel package `{package}`: {msg}")]
    Kernel {
        /// The package name.
        package: String,
        /// What went wrong.
        msg: String,
    },
    /// A kernel module is unknown to the kernel's modules.dep.
    #[error(
        "kernel module `{0}` is neither in modules.dep nor built in; check the spec's module lists"
    )]
    UnknownModule(String),
    /// Something does not fit into its partition.
    #[error("{what} needs {need_mib:.1} MiB but the spec gives it {have_mib} MiB: raise `{key}` in the spec")]
    TooBig {
        /// What does not fit.
        what: String,
        /// Size needed.
        need_mib: f64,
        /// Size available.
        have_mib: u64,
        /// The spec key to raise.
        key: &'static str,
    },
    /// A malformed input file (PE, ELF, manifest).
    #[error("{path}: {msg}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// Flashing was refused for safety.
    #[error("refusing to flash {device}: {why}")]
    Refused {
        /// The target.
        device: PathBuf,
        /// Why.
        why: String,
    },
    /// Read-back or chunk verification failed.
    #[error("verification failed on {path} at byte {offset}: {msg}")]
    Verify {
        /// The file or device.
        path: PathBuf,
        /// Where.
        offset: u64,
        /// What differs.
        msg: String,
    },
}

/// The crate's result type.
pub type Result<T> = std::result::Result<T, ImageError>;

/// Helper: wrap an io error with what and where.
pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { what, path, source }
}
