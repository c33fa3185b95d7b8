//! Marks the current boot good: systemd-boot boot counting (issue 3).
//!
//! systemd-boot boots a UKI named `NAME+LEFT[-DONE].efi`, renames it to
//! count the try, and exports its ESP path in the EFI variable
//! `LoaderBootCountPath`. Once stage 2's boot-complete condition holds, we
//! read that variable, rename the file to `NAME.efi` (no counter: "good"
//! forever), and fsync the file, the directory and the file system. This is
//! what systemd-bless-boot does; doing it in init keeps systemd off the image.
//!
//! The ESP is the one systemd-boot was loaded from: the partition whose
//! GPT partition UUID is `LoaderDevicePartUUID` and whose type is the ESP's
//! (never a partition merely named `esp`, on whatever disk:
//! [`crate::stage1::bootdisk`]). It is mounted under /run just for the
//! rename, unless it is already mounted. When two disks carry that UUID (a
//! copy of the boot disk is attached) nothing is renamed.

use std::path::{Path, PathBuf};

use crate::stage1::bootdisk;

/// The EFI variable systemd-boot sets for a counted entry.
pub const BOOT_COUNT_VAR: &str = "LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// Why blessing failed.
#[derive(Debug, thiserror::Error)]
pub enum BlessError {
    /// The EFI variable is unreadable or malformed.
    #[error("reading {path}: {msg}")]
    Variable {
        /// The variable's file.
        path: PathBuf,
        /// What went wrong.
        msg: String,
    },
    /// The ESP the boot loader names is not found, or not only once.
    #[error("the ESP systemd-boot was loaded from: {0}")]
    EspLookup(String),
    /// Mounting, renaming or syncing failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Where blessing looks (tests point these at temp dirs).
#[derive(Debug, Clone)]
pub struct BlessPaths {
    /// efivarfs (`/sys/firmware/efi/efivars`).
    pub efivars: PathBuf,
    /// sysfs (`/sys`).
    pub sys: PathBuf,
    /// devtmpfs (`/dev`).
    pub dev: PathBuf,
    /// Where to mount the ESP when it is not mounted (`/run/fluxnode/esp`).
    pub mountpoint: PathBuf,
    /// An already mounted ESP to use instead of mounting (tests).
    pub esp_root: Option<PathBuf>,
}

impl Default for BlessPaths {
    fn default() -> Self {
        BlessPaths {
            efivars: "/sys/firmware/efi/efivars".into(),
            sys: "/sys".into(),
            dev: "/dev".into(),
            mountpoint: "/run/fluxnode/esp".into(),
            esp_root: None,
        }
    }
}

/// Blesses the current boot; `Ok(None)` when there is nothing to bless
/// (no boot counter on this entry, or not booted by systemd-boot).
pub fn bless_current_boot() -> Result<Option<String>, BlessError> {
    bless_with(&BlessPaths::default())
}

/// The hidden argument that makes `fluxnode-init` the blessing child.
pub const CHILD_ARG: &str = "__bless";

/// Starts the blessing child, init's own binary with [`CHILD_ARG`], and
/// returns its pid. The supervisor's loop goes on meanwhile (a vfat mount,
/// maybe a module load, fsyncs and an unmount take their time) and its
/// reaper collects the child like any other. A fresh exec rather than a
/// bare fork: init has threads (the power-button watcher), and the forked
/// copy of a threaded process may only make async-signal-safe calls, while
/// blessing allocates, mounts and loads modules.
pub fn spawn_child() -> std::io::Result<i32> {
    let child = std::process::Command::new("/proc/self/exe")
        .arg(CHILD_ARG)
        .stdin(std::process::Stdio::null())
        .spawn()?;
    // Dropping the handle neither waits nor kills: init's reaper does.
    Ok(child.id() as i32)
}

/// The blessing child's work; its exit code (0: blessed or nothing to
/// bless, 1: failed). It logs the outcome itself, to init's console.
pub fn child_main() -> i32 {
    match bless_current_boot() {
        Ok(Some(path)) => {
            tracing::info!("boot blessed: {path}");
            0
        }
        Ok(None) => {
            tracing::info!("nothing to bless: this boot entry has no counter");
            0
        }
        Err(e) => {
            tracing::error!("blessing the boot failed: {e}");
            1
        }
    }
}

/// Decodes an efivarfs file: 4 bytes of attributes, then UTF-16LE, NUL-terminated.
pub fn decode_efi_string(raw: &[u8]) -> Option<String> {
    let body = raw.get(4..)?;
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units).ok()
}

/// `fluxnode-1.0-a+2-1.efi` → `fluxnode-1.0-a.efi`; `None` without a counter.
pub fn strip_counter(file: &str) -> Option<String> {
    let (stem, ext) = match file.rsplit_once('.') {
        Some((s, e)) => (s, format!(".{e}")),
        None => (file, String::new()),
    };
    let (base, counter) = stem.rsplit_once('+')?;
    let (left, done) = match counter.split_once('-') {
        Some((l, d)) => (l, Some(d)),
        None => (counter, None),
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if base.is_empty() || !digits(left) || done.is_some_and(|d| !digits(d)) {
        return None;
    }
    Some(format!("{base}{ext}"))
}

fn ensure_efivarfs(efivars: &Path) {
    let empty = std::fs::read_dir(efivars)
        .map(|mut r| r.next().is_none())
        .unwrap_or(true);
    if empty && efivars.parent().is_some_and(Path::exists) {
        let _ = crate::stage1::mount(
            "efivarfs",
            &efivars.to_string_lossy(),
            "efivarfs",
            // Read-only, as in mounts.rs: blessing only reads variables.
            libc::MS_NOSUID | libc::MS_NOEXEC | libc::MS_NODEV | libc::MS_RDONLY,
            "",
        );
    }
}

/// [`bless_current_boot`] with explicit paths.
pub fn bless_with(p: &BlessPaths) -> Result<Option<String>, BlessError> {
    if p.esp_root.is_none() {
        ensure_efivarfs(&p.efivars);
    }
    let var = p.efivars.join(BOOT_COUNT_VAR);
    let raw = match std::fs::read(&var) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(BlessError::Variable {
                path: var,
                msg: e.to_string(),
            })
        }
    };
    let esp_path = decode_efi_string(&raw).ok_or_else(|| BlessError::Variable {
        path: var.clone(),
        msg: "not a UTF-16 string".into(),
    })?;
    let rel: Vec<&str> = esp_path
        .split(['\\', '/'])
        .filter(|c| !c.is_empty())
        .collect();
    if rel.is_empty() || rel.contains(&"..") {
        return Err(BlessError::Variable {
            path: var,
            msg: format!("odd path {esp_path:?}"),
        });
    }
    let file = rel[rel.len() - 1];
    let Some(new_file) = strip_counter(file) else {
        return Ok(None);
    };
    let (root, mounted) = match &p.esp_root {
        Some(r) => (r.clone(), false),
        None => (mount_esp(p)?, true),
    };
    let res = rename_synced(&root, &rel, &new_file);
    if mounted {
        umount(&root);
    }
    res?;
    let mut shown: Vec<&str> = rel[..rel.len() - 1].to_vec();
    shown.push(&new_file);
    Ok(Some(format!("/{}", shown.join("/"))))
}

fn mount_esp(p: &BlessPaths) -> Result<PathBuf, BlessError> {
    let esp = match bootdisk::anchor_from(&p.efivars) {
        bootdisk::Anchor::Loader(u) => u,
        bootdisk::Anchor::ImageOnly => {
            return Err(BlessError::EspLookup(format!(
                "no {} in {}",
                bootdisk::LOADER_DEVICE_PART_UUID,
                p.efivars.display()
            )))
        }
    };
    let part = bootdisk::find_esp(&p.sys, &p.dev, &esp)
        .map_err(BlessError::EspLookup)?
        .ok_or_else(|| {
            BlessError::EspLookup(format!(
                "no disk has partition {} of the ESP type",
                crate::stage1::gpt::guid_string(&esp)
            ))
        })?;
    let node = part.node(&p.dev);
    std::fs::create_dir_all(&p.mountpoint).map_err(|source| BlessError::Io {
        what: "creating",
        path: p.mountpoint.clone(),
        source,
    })?;
    let try_mount = || {
        crate::stage1::mount(
            &node.to_string_lossy(),
            &p.mountpoint.to_string_lossy(),
            "vfat",
            libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            "",
        )
    };
    if try_mount().is_err() {
        // vfat may not be loaded yet (it is a late module): load it and retry.
        let _ = crate::stage1::modules::load_modules(
            &["vfat".into(), "nls_cp437".into(), "nls_ascii".into()],
            Path::new("/"),
        );
        try_mount().map_err(|e| BlessError::Io {
            what: "mounting the ESP on",
            path: p.mountpoint.clone(),
            source: std::io::Error::other(e),
        })?;
    }
    Ok(p.mountpoint.clone())
}

fn umount(path: &Path) {
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), 0) };
    }
}

fn rename_synced(root: &Path, rel: &[&str], new_file: &str) -> Result<(), BlessError> {
    let mut dir = root.to_path_buf();
    for c in &rel[..rel.len() - 1] {
        dir.push(c);
    }
    let from = dir.join(rel[rel.len() - 1]);
    let to = dir.join(new_file);
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BlessError::Io { what, path, source }
    };
    std::fs::rename(&from, &to).map_err(io("renaming", &from))?;
    std::fs::File::open(&to)
        .and_then(|f| f.sync_all())
        .map_err(io("syncing", &to))?;
    let d = std::fs::File::open(&dir).map_err(io("opening", &dir))?;
    d.sync_all().map_err(io("syncing", &dir))?;
    // SAFETY: a valid fd.
    unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&d)) };
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn efi_string(s: &str) -> Vec<u8> {
        let mut v = vec![7, 0, 0, 0];
        for u in s.encode_utf16().chain([0]) {
            v.extend_from_slice(&u.to_le_bytes());
        }
        v
    }

    #[test]
    fn strips_counters() {
        assert_eq!(
            strip_counter("fluxnode-0.1.0-a+3.efi").as_deref(),
            Some("fluxnode-0.1.0-a.efi")
        );
        assert_eq!(
            strip_counter("fluxnode-0.1.0-a+2-1.efi").as_deref(),
            Some("fluxnode-0.1.0-a.efi")
        );
        assert_eq!(
            strip_counter("fluxnode-0.1.0-a+0-3.efi").as_deref(),
            Some("fluxnode-0.1.0-a.efi")
        );
        assert_eq!(strip_counter("fluxnode-0.1.0-a.efi"), None);
        for odd in [
            "",
            "+",
            "+1",
            "a+",
            "a+x.efi",
            "a+1-.efi",
            "a+1-x.efi",
            ".efi",
            "+.efi",
        ] {
            assert_eq!(strip_counter(odd), None, "{odd}");
        }
    }

    #[test]
    fn blesses_a_counted_entry_on_a_fake_esp() {
        let d = tempfile::tempdir().unwrap();
        let efivars = d.path().join("efivars");
        let esp = d.path().join("esp");
        std::fs::create_dir_all(&efivars).unwrap();
        std::fs::create_dir_all(esp.join("EFI/Linux")).unwrap();
        std::fs::write(esp.join("EFI/Linux/fluxnode-1-a+2-1.efi"), b"uki").unwrap();
        let p = BlessPaths {
            efivars: efivars.clone(),
            esp_root: Some(esp.clone()),
            ..BlessPaths::default()
        };
        // No variable: nothing to bless.
        assert_eq!(bless_with(&p).unwrap(), None);
        std::fs::write(
            efivars.join(BOOT_COUNT_VAR),
            efi_string("\\EFI\\Linux\\fluxnode-1-a+2-1.efi"),
        )
        .unwrap();
        assert_eq!(
            bless_with(&p).unwrap().as_deref(),
            Some("/EFI/Linux/fluxnode-1-a.efi")
        );
        assert_eq!(
            std::fs::read(esp.join("EFI/Linux/fluxnode-1-a.efi")).unwrap(),
            b"uki"
        );
        assert!(!esp.join("EFI/Linux/fluxnode-1-a+2-1.efi").exists());
        // A blessed entry's path has no counter.
        std::fs::write(
            efivars.join(BOOT_COUNT_VAR),
            efi_string("\\EFI\\Linux\\fluxnode-1-a.efi"),
        )
        .unwrap();
        assert_eq!(bless_with(&p).unwrap(), None);
        // Garbage in the variable.
        std::fs::write(efivars.join(BOOT_COUNT_VAR), [1u8, 2]).unwrap();
        assert!(bless_with(&p).is_err());
        std::fs::write(efivars.join(BOOT_COUNT_VAR), efi_string("\\..\\x+1.efi")).unwrap();
        assert!(bless_with(&p).is_err());
    }

    #[test]
    fn decodes_odd_variables() {
        for raw in [
            &[][..],
            &[0u8; 4][..],
            &[0, 0, 0, 0, 0x00, 0xd8][..],
            &[1, 2, 3, 4, 65][..],
        ] {
            let _ = decode_efi_string(raw);
        }
        assert_eq!(decode_efi_string(&efi_string("ab")).as_deref(), Some("ab"));
    }
}
