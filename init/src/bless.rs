//! Marks the current boot good: systemd-boot boot counting (issues 3, 13).
//!
//! systemd-boot boots a UKI named `NAME+LEFT[-DONE].efi`, renames it to
//! count the try, and exports its ESP path in the EFI variable
//! `LoaderBootCountPath`. Once stage 2's boot-complete condition holds, we
//! read that variable and **re-arm** the entry: rename it to `NAME+3.efi`,
//! three fresh tries ([`TRIES`]), and fsync the file, the directory and
//! the file system.
//!
//! Why not `NAME.efi` (no counter, "good for ever", what
//! systemd-bless-boot does): a slot that was good and then goes bad (a
//! disk block that rots under dm-verity, a device that now fails its
//! driver) would have no counter left to run out, and would boot itself
//! again and again. Re-armed, a blessed slot that fails three boots in a
//! row reaches `+0` and systemd-boot boots the other slot.
//!
//! An entry with no counter at all (an image flashed with a counter-less
//! UKI; systemd-boot then sets no `LoaderBootCountPath`) is found through
//! `LoaderEntrySelected` (the entry id, for a UKI its file name) in
//! `EFI/Linux` and **armed** the same way, `NAME+3.efi`.
//!
//! After a bless or an arm, [`BlessPaths::marker`]
//! (`/run/fluxnode/blessed`) holds the entry's new ESP path, one line:
//! the update client reads it to know this boot was blessed.
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

/// The EFI variable naming the entry systemd-boot booted (its id: for a
/// UKI in `EFI/Linux`, the file name).
pub const ENTRY_SELECTED_VAR: &str = "LoaderEntrySelected-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// The tries a blessed (or newly armed) entry gets: `NAME+3.efi`.
pub const TRIES: u32 = 3;

/// Where systemd-boot's type #2 entries (UKIs) live on the ESP.
const UKI_DIR: [&str; 2] = ["EFI", "Linux"];

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
    /// Written after a bless or an arm: the entry's new ESP path, one line
    /// (`/run/fluxnode/blessed`; the update client reads it).
    pub marker: PathBuf,
}

impl Default for BlessPaths {
    fn default() -> Self {
        BlessPaths {
            efivars: "/sys/firmware/efi/efivars".into(),
            sys: "/sys".into(),
            dev: "/dev".into(),
            mountpoint: "/run/fluxnode/esp".into(),
            esp_root: None,
            marker: "/run/fluxnode/blessed".into(),
        }
    }
}

/// What blessing did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Blessed {
    /// The counted entry was renamed to `NAME+3.efi`; its ESP path.
    Rearmed(String),
    /// An entry without a counter was renamed to `NAME+3.efi`; its ESP path.
    Armed(String),
    /// Nothing renamed, and why (not booted by systemd-boot; a type #1
    /// entry; no such UKI in `EFI/Linux`).
    Nothing(String),
}

/// Blesses the current boot: re-arms (or arms) its entry.
pub fn bless_current_boot() -> Result<Blessed, BlessError> {
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
        Ok(Blessed::Rearmed(path)) => {
            tracing::info!("boot blessed: {path} (re-armed with {TRIES} tries)");
            0
        }
        Ok(Blessed::Armed(path)) => {
            tracing::info!(
                "boot blessed: {path} (armed with {TRIES} tries: the entry had no counter)"
            );
            0
        }
        Ok(Blessed::Nothing(why)) => {
            tracing::info!("nothing to bless: {why}");
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

/// `NAME+L-D.efi` or `NAME.efi` → `NAME+3.efi` ([`TRIES`]).
pub fn armed_name(file: &str) -> String {
    let base = strip_counter(file).unwrap_or_else(|| file.to_string());
    match base.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}+{TRIES}.{ext}"),
        _ => format!("{base}+{TRIES}"),
    }
}

/// The one file in `names` that is the entry `id` (`LoaderEntrySelected`),
/// counters left out on both sides and case ignored (FAT ignores it, and
/// systemd-boot lowercases ids): `Ok(None)` when none is, an error when
/// several are.
pub fn find_entry<'a>(id: &str, names: &'a [String]) -> Result<Option<&'a String>, String> {
    let key = |n: &str| strip_counter(n).unwrap_or_else(|| n.to_string());
    let want = key(id);
    let found: Vec<&String> = names
        .iter()
        .filter(|n| key(n).eq_ignore_ascii_case(&want))
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => Err(format!(
            "{} files in /EFI/Linux are entry {id:?}: {}",
            many.len(),
            many.iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Reads an efivarfs string variable: `Ok(None)` when it is not set.
fn read_string_var(efivars: &Path, name: &str) -> Result<Option<String>, BlessError> {
    let var = efivars.join(name);
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
    decode_efi_string(&raw)
        .map(Some)
        .ok_or_else(|| BlessError::Variable {
            path: var,
            msg: "not a UTF-16 string".into(),
        })
}

/// [`bless_current_boot`] with explicit paths.
pub fn bless_with(p: &BlessPaths) -> Result<Blessed, BlessError> {
    if p.esp_root.is_none() {
        ensure_efivarfs(&p.efivars);
    }
    if let Some(esp_path) = read_string_var(&p.efivars, BOOT_COUNT_VAR)? {
        let rel: Vec<String> = esp_path
            .split(['\\', '/'])
            .filter(|c| !c.is_empty())
            .map(String::from)
            .collect();
        if rel.is_empty() || rel.iter().any(|c| c == "..") {
            return Err(BlessError::Variable {
                path: p.efivars.join(BOOT_COUNT_VAR),
                msg: format!("odd path {esp_path:?}"),
            });
        }
        return with_esp(p, |root| {
            let shown = rename_to_armed(root, &rel)?;
            Ok(Blessed::Rearmed(shown))
        })
        .and_then(|b| mark(p, b));
    }
    // No counter on this entry: find it by its id and arm it.
    let Some(id) = read_string_var(&p.efivars, ENTRY_SELECTED_VAR)? else {
        return Ok(Blessed::Nothing(
            "not booted by systemd-boot (no LoaderBootCountPath, no LoaderEntrySelected)".into(),
        ));
    };
    if id.is_empty() || id.contains(['/', '\\']) || id == ".." {
        return Err(BlessError::Variable {
            path: p.efivars.join(ENTRY_SELECTED_VAR),
            msg: format!("odd entry id {id:?}"),
        });
    }
    with_esp(p, |root| {
        let dir = UKI_DIR.iter().fold(root.to_path_buf(), |d, c| d.join(c));
        let names: Vec<String> = match std::fs::read_dir(&dir) {
            Ok(rd) => rd
                .flatten()
                .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => {
                return Err(BlessError::Io {
                    what: "listing",
                    path: dir,
                    source,
                })
            }
        };
        let found = find_entry(&id, &names).map_err(|msg| BlessError::Variable {
            path: p.efivars.join(ENTRY_SELECTED_VAR),
            msg,
        })?;
        let Some(file) = found else {
            return Ok(Blessed::Nothing(format!(
                "entry {id:?} has no counter and is not a UKI in /EFI/Linux (a type #1 entry?)"
            )));
        };
        let rel: Vec<String> = UKI_DIR
            .iter()
            .map(|c| c.to_string())
            .chain([file.clone()])
            .collect();
        Ok(Blessed::Armed(rename_to_armed(root, &rel)?))
    })
    .and_then(|b| mark(p, b))
}

/// Runs `f` on the ESP: the test's directory, or the ESP mounted for it
/// (and unmounted after).
fn with_esp(
    p: &BlessPaths,
    f: impl FnOnce(&Path) -> Result<Blessed, BlessError>,
) -> Result<Blessed, BlessError> {
    match &p.esp_root {
        Some(r) => f(r),
        None => {
            let root = mount_esp(p)?;
            let res = f(&root);
            umount(&root);
            res
        }
    }
}

/// Renames `rel` (components under the ESP) to its armed name, synced;
/// the new ESP path (`/EFI/Linux/NAME+3.efi`).
fn rename_to_armed(root: &Path, rel: &[String]) -> Result<String, BlessError> {
    let (file, dirs) = rel.split_last().ok_or_else(|| BlessError::Variable {
        path: root.to_path_buf(),
        msg: "an empty entry path".into(),
    })?;
    let new_file = armed_name(file);
    let dir = dirs.iter().fold(root.to_path_buf(), |d, c| d.join(c));
    rename_synced(&dir, file, &new_file)?;
    let mut shown: Vec<&str> = dirs.iter().map(String::as_str).collect();
    shown.push(&new_file);
    Ok(format!("/{}", shown.join("/")))
}

/// Writes [`BlessPaths::marker`] after a bless or an arm.
fn mark(p: &BlessPaths, b: Blessed) -> Result<Blessed, BlessError> {
    let path = match &b {
        Blessed::Rearmed(path) | Blessed::Armed(path) => path,
        Blessed::Nothing(_) => return Ok(b),
    };
    write_marker(&p.marker, path)?;
    Ok(b)
}

/// Writes `path` and a newline to `marker`, mode 0644, whole or not at all
/// (a temporary file renamed over it).
fn write_marker(marker: &Path, path: &str) -> Result<(), BlessError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |what: &'static str, at: &Path| {
        let at = at.to_path_buf();
        move |source| BlessError::Io {
            what,
            path: at,
            source,
        }
    };
    let mut tmp = marker.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(&tmp)
        .map_err(io("creating", &tmp))?;
    f.write_all(format!("{path}\n").as_bytes())
        .map_err(io("writing", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, marker).map_err(io("renaming into place", marker))
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

fn rename_synced(dir: &Path, from: &str, to: &str) -> Result<(), BlessError> {
    let from = dir.join(from);
    let to = dir.join(to);
    let io = |what: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| BlessError::Io { what, path, source }
    };
    if from != to {
        std::fs::rename(&from, &to).map_err(io("renaming", &from))?;
    }
    std::fs::File::open(&to)
        .and_then(|f| f.sync_all())
        .map_err(io("syncing", &to))?;
    let d = std::fs::File::open(dir).map_err(io("opening", dir))?;
    d.sync_all().map_err(io("syncing", dir))?;
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
    fn armed_names_have_three_fresh_tries() {
        for (from, to) in [
            ("fluxnode-0.1.0-a+2-1.efi", "fluxnode-0.1.0-a+3.efi"),
            ("fluxnode-0.1.0-a+0-3.efi", "fluxnode-0.1.0-a+3.efi"),
            ("fluxnode-0.1.0-a+3.efi", "fluxnode-0.1.0-a+3.efi"),
            ("fluxnode-0.1.0-a.efi", "fluxnode-0.1.0-a+3.efi"),
            ("x", "x+3"),
        ] {
            assert_eq!(armed_name(from), to, "{from}");
        }
    }

    #[test]
    fn finds_the_selected_entry_whatever_its_counter_and_case() {
        let names: Vec<String> = [
            "fluxnode-0.1.0-a.efi",
            "fluxnode-0.2.0-b+0-3.efi",
            "other.efi",
        ]
        .map(String::from)
        .to_vec();
        let f = |id| find_entry(id, &names).unwrap().map(String::as_str);
        assert_eq!(f("fluxnode-0.1.0-a.efi"), Some("fluxnode-0.1.0-a.efi"));
        assert_eq!(f("FLUXNODE-0.1.0-A.EFI"), Some("fluxnode-0.1.0-a.efi"));
        // Out of tries, booted anyway (the last entry left): the id may
        // carry the counter or not.
        assert_eq!(f("fluxnode-0.2.0-b.efi"), Some("fluxnode-0.2.0-b+0-3.efi"));
        assert_eq!(
            f("fluxnode-0.2.0-b+0-3.efi"),
            Some("fluxnode-0.2.0-b+0-3.efi")
        );
        assert_eq!(f("evil.conf"), None);
        assert_eq!(f("fluxnode-0.1.0"), None);
        let twice: Vec<String> = ["a.efi", "a+1-2.efi"].map(String::from).to_vec();
        assert!(find_entry("a.efi", &twice).unwrap_err().contains("2 files"));
    }

    /// A fake efivarfs, ESP and /run, with `files` in EFI/Linux.
    fn fake(files: &[&str]) -> (tempfile::TempDir, BlessPaths) {
        let d = tempfile::tempdir().unwrap();
        let efivars = d.path().join("efivars");
        let esp = d.path().join("esp");
        std::fs::create_dir_all(&efivars).unwrap();
        std::fs::create_dir_all(esp.join("EFI/Linux")).unwrap();
        for f in files {
            std::fs::write(esp.join("EFI/Linux").join(f), f.as_bytes()).unwrap();
        }
        let p = BlessPaths {
            efivars,
            esp_root: Some(esp),
            marker: d.path().join("blessed"),
            ..BlessPaths::default()
        };
        (d, p)
    }

    fn listing(p: &BlessPaths) -> Vec<String> {
        let dir = p.esp_root.as_ref().unwrap().join("EFI/Linux");
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn re_arms_a_counted_entry_on_a_fake_esp() {
        let (_d, p) = fake(&["fluxnode-1-a+2-1.efi", "fluxnode-2-b+0-3.efi"]);
        // No variable at all: not booted by systemd-boot; nothing marked.
        assert!(matches!(bless_with(&p).unwrap(), Blessed::Nothing(_)));
        assert!(!p.marker.exists());
        std::fs::write(
            p.efivars.join(BOOT_COUNT_VAR),
            efi_string("\\EFI\\Linux\\fluxnode-1-a+2-1.efi"),
        )
        .unwrap();
        assert_eq!(
            bless_with(&p).unwrap(),
            Blessed::Rearmed("/EFI/Linux/fluxnode-1-a+3.efi".into())
        );
        assert_eq!(listing(&p), ["fluxnode-1-a+3.efi", "fluxnode-2-b+0-3.efi"]);
        assert_eq!(
            std::fs::read(
                p.esp_root
                    .as_ref()
                    .unwrap()
                    .join("EFI/Linux/fluxnode-1-a+3.efi")
            )
            .unwrap(),
            b"fluxnode-1-a+2-1.efi"
        );
        assert_eq!(
            std::fs::read_to_string(&p.marker).unwrap(),
            "/EFI/Linux/fluxnode-1-a+3.efi\n"
        );
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(
            std::fs::metadata(&p.marker).unwrap().permissions().mode() & 0o777,
            0o644
        );
        // The next boot: systemd-boot counted a try; re-armed again.
        std::fs::rename(
            p.esp_root
                .as_ref()
                .unwrap()
                .join("EFI/Linux/fluxnode-1-a+3.efi"),
            p.esp_root
                .as_ref()
                .unwrap()
                .join("EFI/Linux/fluxnode-1-a+2-1.efi"),
        )
        .unwrap();
        assert_eq!(
            bless_with(&p).unwrap(),
            Blessed::Rearmed("/EFI/Linux/fluxnode-1-a+3.efi".into())
        );
        // The entry is gone (removed under us): an error, and no marker
        // for it.
        std::fs::remove_file(&p.marker).unwrap();
        std::fs::write(
            p.efivars.join(BOOT_COUNT_VAR),
            efi_string("\\EFI\\Linux\\fluxnode-9-a+2-1.efi"),
        )
        .unwrap();
        assert!(bless_with(&p).is_err());
        assert!(!p.marker.exists());
        // Garbage in the variable.
        std::fs::write(p.efivars.join(BOOT_COUNT_VAR), [1u8, 2]).unwrap();
        assert!(bless_with(&p).is_err());
        std::fs::write(p.efivars.join(BOOT_COUNT_VAR), efi_string("\\..\\x+1.efi")).unwrap();
        assert!(bless_with(&p).is_err());
    }

    #[test]
    fn arms_an_entry_without_a_counter_through_loader_entry_selected() {
        let (_d, p) = fake(&["fluxnode-1-a.efi", "fluxnode-2-b+0-3.efi"]);
        std::fs::write(
            p.efivars.join(ENTRY_SELECTED_VAR),
            efi_string("fluxnode-1-a.efi"),
        )
        .unwrap();
        assert_eq!(
            bless_with(&p).unwrap(),
            Blessed::Armed("/EFI/Linux/fluxnode-1-a+3.efi".into())
        );
        assert_eq!(listing(&p), ["fluxnode-1-a+3.efi", "fluxnode-2-b+0-3.efi"]);
        assert_eq!(
            std::fs::read_to_string(&p.marker).unwrap(),
            "/EFI/Linux/fluxnode-1-a+3.efi\n"
        );
        // Both slots out of tries, the first booted anyway (systemd-boot
        // counts nothing at +0): it passed, so it gets its tries back.
        let (_d, p) = fake(&["fluxnode-1-a+0-3.efi", "fluxnode-2-b+0-3.efi"]);
        std::fs::write(
            p.efivars.join(ENTRY_SELECTED_VAR),
            efi_string("fluxnode-2-b+0-3.efi"),
        )
        .unwrap();
        assert_eq!(
            bless_with(&p).unwrap(),
            Blessed::Armed("/EFI/Linux/fluxnode-2-b+3.efi".into())
        );
        assert_eq!(listing(&p), ["fluxnode-1-a+0-3.efi", "fluxnode-2-b+3.efi"]);
        // A type #1 entry (loader/entries/*.conf): nothing in EFI/Linux is
        // touched and nothing is marked.
        let (_d, p) = fake(&["fluxnode-1-a.efi"]);
        std::fs::write(p.efivars.join(ENTRY_SELECTED_VAR), efi_string("evil.conf")).unwrap();
        match bless_with(&p).unwrap() {
            Blessed::Nothing(why) => assert!(why.contains("evil.conf"), "{why}"),
            b => panic!("{b:?}"),
        }
        assert_eq!(listing(&p), ["fluxnode-1-a.efi"]);
        assert!(!p.marker.exists());
        // An id that is a path: refused.
        std::fs::write(
            p.efivars.join(ENTRY_SELECTED_VAR),
            efi_string("..\\fluxnode-1-a.efi"),
        )
        .unwrap();
        assert!(bless_with(&p).is_err());
        assert_eq!(listing(&p), ["fluxnode-1-a.efi"]);
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
