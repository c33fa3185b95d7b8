//! Writing key and identity files: mode 0600, atomically, durably.
//!
//! A key file written with `std::fs::write` gets the process umask (0644
//! for most daemons: readable by every local user) and, renamed into place
//! without fsync, can come back empty or missing after a power cut: the
//! rename reaches the disk before the data. [`write_secret`] does it the
//! way a key must be written: a fresh temp file in the same directory,
//! created 0600 with `O_EXCL` (no one else's file or link is ever opened),
//! written and fsynced, renamed over the target, and the directory fsynced
//! so the rename itself survives.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// A failed step of [`write_secret`], naming the file.
#[derive(Debug, thiserror::Error)]
#[error("{what} {}: {source}", path.display())]
pub struct SecretError {
    /// The step: "creating", "writing", "syncing", "renaming into", ...
    pub what: &'static str,
    /// The file or directory it concerned.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SecretError + 'a {
    move |source| SecretError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes `bytes` to `path` with mode 0600, replacing it atomically: a
/// reader (or the next boot) sees the old file or the new one, whole.
pub fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), SecretError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.unwrap_or_else(|| "secret".into()),
        std::process::id()
    ));
    // A temp file left by a crashed writer with our pid is ours to replace.
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(&tmp)
        .map_err(err("creating", &tmp))?;
    let written = (|| {
        // The mode given to open is masked by the umask; 0600 is what we want
        // whatever the umask, so set it explicitly.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(err("setting mode 0600 on", &tmp))?;
        f.write_all(bytes).map_err(err("writing", &tmp))?;
        f.sync_all().map_err(err("syncing", &tmp))?;
        std::fs::rename(&tmp, path).map_err(err("renaming into", path))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(err("syncing directory", dir))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_0600_replacing_a_readable_file_and_leaves_no_temp() {
        let dir = std::env::temp_dir().join(format!("secret-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("ak.json");
        std::fs::write(&key, b"old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_secret(&key, b"new key").unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), b"new key");
        assert_eq!(mode(&key), 0o600);
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "a temp file was left: {left:?}");
        // A fresh file too.
        let fresh = dir.join("node.key");
        write_secret(&fresh, b"k").unwrap();
        assert_eq!(mode(&fresh), 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error_naming_the_file() {
        let e = write_secret(Path::new("/nonexistent-fluxnode-dir/ak.json"), b"x").unwrap_err();
        assert_eq!(e.what, "creating");
        assert!(e.to_string().contains("/nonexistent-fluxnode-dir/"), "{e}");
    }
}
