//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;

/// The full path of `prog` on PATH.
pub fn which(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Makes sure `prog` exists, installing Debian package `pkg` if we are root.
/// Returns false (after printing why) when it cannot.
pub fn ensure_tool(prog: &str, pkg: &str) -> bool {
    if which(prog).is_some() {
        return true;
    }
    if is_root() && which("apt-get").is_some() {
        eprintln!("installing {pkg} for {prog}");
        let _ = Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", pkg])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status();
    }
    if which(prog).is_some() {
        return true;
    }
    fluxnode_testkit::skip(format!(
        "{prog} is missing and could not be installed (apt-get install {pkg} as root)"
    ));
    false
}

/// The built `fluxnode-hal` binary.
pub fn hal_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_fluxnode-hal"))
}

/// A scratch directory on the workspace's filesystem.
pub fn scratch() -> tempfile::TempDir {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/hal-tests");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}
