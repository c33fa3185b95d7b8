//! The early mounts, from a table; and reading /proc/self/mountinfo.
//!
//! Each entry is mounted only if its mount point is not a mount point
//! already, so stage 2 works whether stage 1 moved its mounts over or not,
//! and in a test namespace that inherited the host's. Mount points are
//! never created on a read-only root: a missing one is skipped and logged.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct MountEntry {
    /// Source (device or name).
    pub source: &'static str,
    /// Where.
    pub target: &'static str,
    /// Filesystem type.
    pub fstype: &'static str,
    /// MS_* flags.
    pub flags: libc::c_ulong,
    /// Filesystem options.
    pub data: &'static str,
    /// Mount only when this path exists (firmware or kernel support).
    pub only_if: Option<&'static str>,
}

const NOSUID_NODEV_NOEXEC: libc::c_ulong = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;

/// What stage 2 mounts first, in order.
pub const EARLY_MOUNTS: &[MountEntry] = &[
    MountEntry {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        only_if: None,
    },
    MountEntry {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        only_if: None,
    },
    MountEntry {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: libc::MS_NOSUID,
        data: "mode=0755",
        only_if: None,
    },
    MountEntry {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: libc::MS_NOSUID | libc::MS_NOEXEC,
        data: "gid=5,mode=620,ptmxmode=000",
        only_if: None,
    },
    // The tmpfs mounts are bounded in size and inodes (a service filling
    // one must not take the node's memory) and noexec: nothing on the node
    // runs programs from them. The container store gets a mount of its own.
    MountEntry {
        source: "tmpfs",
        target: "/dev/shm",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "mode=1777,size=10%,nr_inodes=4096",
        only_if: None,
    },
    MountEntry {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "mode=0755,size=10%,nr_inodes=16384",
        only_if: None,
    },
    MountEntry {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "mode=1777,size=25%,nr_inodes=16384",
        only_if: None,
    },
    MountEntry {
        source: "cgroup2",
        target: "/sys/fs/cgroup",
        fstype: "cgroup2",
        flags: NOSUID_NODEV_NOEXEC,
        data: "nsdelegate",
        only_if: Some("/sys/fs/cgroup"),
    },
];

/// What stage 2 mounts once /var is ready (at once without a /var child):
/// nothing before blessing needs them, and their module may still be
/// loading (efivarfs); mounting efivarfs reads every EFI variable through
/// the firmware, ~20 ms under TCG, off the path to the first services.
pub const LATE_MOUNTS: &[MountEntry] = &[
    // Read-only: nothing on the node writes EFI variables (blessing renames
    // files on the ESP and only reads variables), and a writable efivarfs
    // lets root brick some firmware by deleting variables.
    MountEntry {
        source: "efivarfs",
        target: "/sys/firmware/efi/efivars",
        fstype: "efivarfs",
        flags: NOSUID_NODEV_NOEXEC | libc::MS_RDONLY,
        data: "",
        only_if: Some("/sys/firmware/efi/efivars"),
    },
    MountEntry {
        source: "securityfs",
        target: "/sys/kernel/security",
        fstype: "securityfs",
        flags: NOSUID_NODEV_NOEXEC,
        data: "",
        only_if: Some("/sys/kernel/security"),
    },
];

/// One mount from mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// The mount point.
    pub target: PathBuf,
    /// Filesystem type.
    pub fstype: String,
    /// The source.
    pub source: String,
    /// Per-mount options (`ro`, `rw`, ...).
    pub options: String,
}

/// Parses /proc/self/mountinfo text. Lines that do not parse are skipped:
/// the kernel writes this file, but a parser of it must still not panic.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let l: Vec<&str> = left.split(' ').collect();
            let r: Vec<&str> = right.split(' ').collect();
            Some(MountInfo {
                target: PathBuf::from(unescape(l.get(4)?)),
                options: l.get(5)?.to_string(),
                fstype: r.first()?.to_string(),
                source: unescape(r.get(1)?),
            })
        })
        .collect()
}

/// Undoes the kernel's octal escapes (`\040` for a space). An escape whose
/// value does not fit a byte is kept as written.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && b.len() >= i + 4 {
            let digits = &b[i + 1..i + 4];
            if digits.iter().all(|d| (b'0'..=b'7').contains(d)) {
                let v = digits.iter().fold(0u32, |a, d| a * 8 + u32::from(d - b'0'));
                if let Ok(byte) = u8::try_from(v) {
                    out.push(byte);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The current mounts (empty when /proc is not mounted).
pub fn current(proc_root: &Path) -> Vec<MountInfo> {
    std::fs::read_to_string(proc_root.join("self/mountinfo"))
        .map(|t| parse_mountinfo(&t))
        .unwrap_or_default()
}

/// mount(2).
pub fn mount(
    source: &str,
    target: &Path,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> std::io::Result<()> {
    let c = |s: &str| {
        CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (src, tgt, fs, dat) = (
        c(source)?,
        c(&target.to_string_lossy())?,
        c(fstype)?,
        c(data)?,
    );
    let data_ptr = if data.is_empty() {
        std::ptr::null()
    } else {
        dat.as_ptr().cast()
    };
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fs.as_ptr(), flags, data_ptr) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Mounts [`EARLY_MOUNTS`]; returns what it mounted.
pub fn mount_early() -> Vec<&'static str> {
    mount_table(EARLY_MOUNTS)
}

/// Mounts [`LATE_MOUNTS`]; returns what it mounted.
pub fn mount_late() -> Vec<&'static str> {
    mount_table(LATE_MOUNTS)
}

/// Mounts a table; returns what it mounted. Failures are logged and skipped.
fn mount_table(table: &'static [MountEntry]) -> Vec<&'static str> {
    let mut done = Vec::new();
    // Read once (again after mounting /proc, if it was not there): only
    // this loop mounts meanwhile, and it knows what it did.
    let mut mounted: Vec<PathBuf> = current(Path::new("/proc"))
        .into_iter()
        .map(|m| m.target)
        .collect();
    for e in table {
        if let Some(p) = e.only_if {
            if !Path::new(p).exists() {
                tracing::debug!("skipping {}: {p} does not exist", e.target);
                continue;
            }
        }
        if mounted.iter().any(|m| m == Path::new(e.target)) {
            continue;
        }
        if !Path::new(e.target).is_dir() {
            if let Err(err) = std::fs::create_dir_all(e.target) {
                tracing::warn!(
                    "cannot mount {} ({}): no mount point, and creating it failed: {err}",
                    e.target,
                    e.fstype
                );
                continue;
            }
        }
        match mount(e.source, Path::new(e.target), e.fstype, e.flags, e.data) {
            Ok(()) => {
                done.push(e.target);
                mounted.push(PathBuf::from(e.target));
                if e.fstype == "proc" {
                    // Now readable: what else was mounted before us.
                    mounted.extend(current(Path::new("/proc")).into_iter().map(|m| m.target));
                }
            }
            Err(err) => tracing::warn!("mount {} on {} failed: {err}", e.fstype, e.target),
        }
    }
    done
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn parses_kernel_lines() {
        let t = "22 1 0:21 / /proc rw,nosuid - proc proc rw\n\
                 30 22 0:5 / /mnt/with\\040space ro,relatime shared:2 - ext4 /dev/vd\\134a rw\n\
                 garbage\n";
        let m = parse_mountinfo(t);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].target, PathBuf::from("/proc"));
        assert_eq!(m[1].target, PathBuf::from("/mnt/with space"));
        assert_eq!(m[1].source, "/dev/vd\\a");
        assert_eq!(m[1].options, "ro,relatime");
        assert_eq!(m[1].fstype, "ext4");
    }

    #[test]
    fn escapes_out_of_byte_range_are_kept() {
        assert_eq!(unescape("a\\777b"), "a\\777b");
        assert_eq!(unescape("\\"), "\\");
        assert_eq!(unescape("\\04"), "\\04");
        assert_eq!(unescape("x\\101"), "xA");
    }

    #[test]
    fn nasty_lines_do_not_panic() {
        for t in [
            "",
            " - ",
            "a b c d",
            "1 2 3 4 5 6 - ",
            "\\\\\\ - \\",
            "1 2 3 4 \\7 6 - x \\77",
        ] {
            let _ = parse_mountinfo(t);
        }
    }

    /// What an attacker inside a service can do with the shared tmpfs
    /// mounts is bounded: size and inode limits, no exec, no devices, no
    /// setuid; efivarfs is read-only.
    #[test]
    fn shared_tmpfs_mounts_are_bounded_and_noexec() {
        for target in ["/dev/shm", "/run", "/tmp"] {
            let e = EARLY_MOUNTS
                .iter()
                .find(|e| e.target == target)
                .unwrap_or_else(|| panic!("{target} is not in the table"));
            assert_eq!(
                e.flags & NOSUID_NODEV_NOEXEC,
                NOSUID_NODEV_NOEXEC,
                "{target}"
            );
            assert!(
                e.data.contains("size=") && e.data.contains("nr_inodes="),
                "{target}: {}",
                e.data
            );
        }
        let efi = LATE_MOUNTS
            .iter()
            .find(|e| e.fstype == "efivarfs")
            .unwrap_or_else(|| panic!("no efivarfs"));
        assert_ne!(efi.flags & libc::MS_RDONLY, 0);
    }
}
