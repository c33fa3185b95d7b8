//! Least privilege for services: what a service may do, decided by its
//! file and applied in the child between clone and exec.
//!
//! A service asks for what it needs; the defaults give it little:
//!
//! | key | default | how it is enforced |
//! |---|---|---|
//! | `capabilities` | `[]` | the bounding set is cut to these before exec; with a `user` other than root they are also raised as ambient capabilities ([`caps`]) |
//! | `no_new_privileges` | `true` | `PR_SET_NO_NEW_PRIVS`: setuid binaries and file capabilities give nothing |
//! | `system_call_filter` | `["@system-service"]` | a seccomp allow-list; any other call kills the process with SIGSYS ([`seccomp`]) |
//! | `read_only_paths`, `inaccessible_paths`, `private_tmp`, `device_allow` | none | a mount namespace of its own ([`fsns`]) |
//!
//! Everything the child needs is made before the clone (the BPF program
//! when the file is read, the mount plan at each start): init has other
//! threads, so the child may only make system calls on memory prepared
//! for it.

pub mod caps;
pub mod fsns;
pub mod seccomp;

use std::path::{Path, PathBuf};

use crate::config::ServiceFile;

/// A service's privileges, resolved from its file.
#[derive(Debug, Clone, PartialEq)]
pub struct Sandbox {
    /// The capabilities it keeps (bounding set; ambient for non-root).
    pub capabilities: u64,
    /// `PR_SET_NO_NEW_PRIVS`.
    pub no_new_privileges: bool,
    /// The seccomp program, unless the filter is `@all`.
    pub seccomp: Option<seccomp::Program>,
    /// Bound read-only in its mount namespace.
    pub read_only: Vec<PathBuf>,
    /// Hidden in its mount namespace.
    pub inaccessible: Vec<PathBuf>,
    /// A fresh tmpfs at /tmp.
    pub private_tmp: bool,
    /// `Some`: a private /dev with these nodes (and the basic ones).
    pub devices: Option<Vec<PathBuf>>,
}

impl Default for Sandbox {
    /// The defaults of a service file that says nothing.
    fn default() -> Self {
        let allowed = seccomp::resolve(&[seccomp::DEFAULT_GROUP.into()]).unwrap_or_default();
        Sandbox {
            capabilities: 0,
            no_new_privileges: true,
            seccomp: Some(seccomp::build(&allowed)),
            read_only: Vec::new(),
            inaccessible: Vec::new(),
            private_tmp: false,
            devices: None,
        }
    }
}

/// A bad sandbox key: (the key, what is wrong).
pub type KeyError = (&'static str, String);

fn absolute(key: &'static str, paths: &[PathBuf]) -> Result<(), KeyError> {
    match paths.iter().find(|p| !p.is_absolute()) {
        Some(p) => Err((
            key,
            format!("{key}: {} is not an absolute path", p.display()),
        )),
        None => Ok(()),
    }
}

impl Sandbox {
    /// Resolves and checks the file's sandbox keys.
    pub fn from_file(cfg: &ServiceFile) -> Result<Sandbox, KeyError> {
        let capabilities = caps::mask(&cfg.capabilities).map_err(|bad| {
            (
                "capabilities",
                format!(
                    "unknown capability {bad:?}; names are as in capabilities(7), e.g. \"CAP_NET_ADMIN\""
                ),
            )
        })?;
        let seccomp = if cfg.system_call_filter.iter().any(|e| e == seccomp::ALL) {
            None
        } else {
            let allowed = seccomp::resolve(&cfg.system_call_filter).map_err(|bad| {
                (
                    "system_call_filter",
                    format!(
                        "system_call_filter: unknown group or system call {bad:?} (groups: {})",
                        seccomp::GROUPS
                            .iter()
                            .map(|(g, _)| *g)
                            .chain([seccomp::DEFAULT_GROUP, seccomp::ALL])
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
            Some(seccomp::build(&allowed))
        };
        absolute("read_only_paths", &cfg.read_only_paths)?;
        absolute("inaccessible_paths", &cfg.inaccessible_paths)?;
        if let Some(devs) = &cfg.device_allow {
            if let Some(d) = devs.iter().find(|d| !d.starts_with("/dev/")) {
                return Err((
                    "device_allow",
                    format!("device_allow: {} is not under /dev", d.display()),
                ));
            }
        }
        Ok(Sandbox {
            capabilities,
            no_new_privileges: cfg.no_new_privileges,
            seccomp,
            read_only: cfg.read_only_paths.clone(),
            inaccessible: cfg.inaccessible_paths.clone(),
            private_tmp: cfg.private_tmp,
            devices: cfg.device_allow.clone(),
        })
    }

    /// The mount plan for a start, or `None` without mount settings.
    pub fn mount_plan(&self, empty_file: &Path) -> std::io::Result<Option<fsns::Plan>> {
        fsns::Plan::new(
            &self.read_only,
            &self.inaccessible,
            self.private_tmp,
            self.devices.as_deref(),
            empty_file,
        )
    }
}

/// Creates `/run/<dir>` (systemd's `RuntimeDirectory=`) for a service:
/// mode 0755, owned by its user and group, so a service that is not root
/// has somewhere to write. Kept across restarts.
pub fn runtime_directory(
    run_root: &Path,
    dir: &str,
    ids: Option<(u32, u32)>,
) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = run_root.join(dir);
    std::fs::create_dir_all(&path)?;
    let (uid, gid) = ids.unwrap_or((0, 0));
    std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// The file inaccessible paths that are files are bound over: empty,
/// mode 000, in init's private run directory.
pub fn make_empty_file(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    // Replaced, not rewritten: a mode-000 file left by an earlier run
    // cannot be opened by an init that is not root.
    let _ = std::fs::remove_file(path);
    std::fs::write(path, b"")?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o000))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn runtime_directory_is_made_for_its_owner() {
        use std::os::unix::fs::MetadataExt;
        let root = tempfile::tempdir().unwrap();
        let p = runtime_directory(root.path(), "netd", Some((0, 0))).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.mode() & 0o7777, 0o755);
        // Again: an existing one is fine.
        runtime_directory(root.path(), "netd", None).unwrap();
    }
}
