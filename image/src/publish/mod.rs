//! The publisher: a TUF repository of update manifests and payloads.
//!
//! The repository is a plain directory any web server or CDN can serve, in
//! tuftool's layout:
//!
//! ```text
//! REPO/metadata/1.root.json  2.root.json ...   every root version, kept
//! REPO/metadata/timestamp.json                 the only file rewritten in place
//! REPO/metadata/N.snapshot.json  N.targets.json  consistent snapshots
//! REPO/targets/<sha256>.<name>                 every target, never rewritten
//! ```
//!
//! Keys are ed25519, generated with ring, one PKCS#8 PEM file each in a
//! keystore directory (`<role>-<keyid prefix>.pem`, mode 0600); which role
//! a key signs for is what the current root says, not the file name.
//!
//! - [`keys`]: generating, reading and matching key files.
//! - [`trust`]: root metadata: the first root, rotations (signed by the old
//!   root's threshold and the new one's), the check a build runs on a
//!   `tuf_root` it bakes into an image.
//! - [`roles`]: reading the repository's current state, signing any role
//!   with an explicit key set and expiry (the API tests use to craft bad
//!   metadata), refreshing snapshot and timestamp, atomic writes.
//! - [`patch`]: zstd patches against an older payload, verified by
//!   decoding before they are published.
//! - [`release`]: `fluxnode-image publish`: a build's payloads, chunked and
//!   patched, an [`fluxnode_protocol::update::UpdateManifest`] as a target,
//!   everything signed with tough's `RepositoryEditor`.
//!
//! tough is async; every public function here is blocking and runs its own
//! current-thread tokio runtime ([`block_on`]).

pub mod keys;
pub mod patch;
pub mod release;
pub mod roles;
pub mod trust;

use std::path::{Path, PathBuf};

pub use keys::{KeyFile, Keystore};
pub use release::{publish, PublishOptions, Published};
pub use roles::{Expiry, Repo};
pub use trust::{init_repo, rotate_root, InitOptions, RotateOptions};

/// Why a publisher operation failed; each names the file or role involved.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
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
    /// A metadata, key or manifest file is malformed or does not verify.
    #[error("{path}: {msg}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        msg: String,
    },
    /// The keys at hand cannot sign a role as its root requires.
    #[error("{role}: {msg}")]
    Keys {
        /// The TUF role (root, targets, snapshot, timestamp).
        role: String,
        /// What is missing, and where keys are looked for.
        msg: String,
    },
    /// tough refused or failed an operation.
    #[error("{what}: {source}")]
    Tuf {
        /// What was being done.
        what: String,
        /// tough's error (boxed: it is large).
        source: Box<tough::error::Error>,
    },
    /// The request itself is wrong (options, versions).
    #[error("{0}")]
    Invalid(String),
}

/// The publisher's result type.
pub type Result<T> = std::result::Result<T, PublishError>;

pub(crate) fn io(
    what: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> PublishError {
    let path = path.into();
    move |source| PublishError::Io { what, path, source }
}

pub(crate) fn file_err(path: &Path, msg: impl Into<String>) -> PublishError {
    PublishError::File {
        path: path.into(),
        msg: msg.into(),
    }
}

pub(crate) fn tuf(what: impl Into<String>) -> impl FnOnce(tough::error::Error) -> PublishError {
    let what = what.into();
    move |source| PublishError::Tuf {
        what,
        source: Box::new(source),
    }
}

/// Runs a future to completion on a fresh current-thread runtime (tough's
/// editor and client are async; the publisher is a batch tool).
pub fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| PublishError::Invalid(format!("starting the async runtime: {e}")))?;
    Ok(rt.block_on(f))
}

/// Writes `data` to `path` through a temporary file in the same directory
/// and a rename: a reader sees the old file or the new one, never a part.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    f.write_all(data).map_err(io("writing", &tmp))?;
    f.sync_all().map_err(io("syncing", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("renaming into", path))
}
