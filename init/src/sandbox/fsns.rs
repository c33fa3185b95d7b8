//! The service's own mount namespace: read-only and inaccessible paths, a
//! private /tmp, a private /dev with only the allowed device nodes.
//!
//! Everything is decided before the clone ([`Plan::new`]: which paths
//! exist, what kind of file each is, each device node's number, mode and
//! owner); the child only makes the system calls ([`Plan::apply`]).
//!
//! The namespace is a copy of init's with propagation set to "slave": a
//! mount made later in init's namespace (efivarfs, /var on a late disk)
//! still reaches the service, but nothing the child mounts leaks back.

use std::ffi::{CStr, CString};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// A device node to recreate in the private /dev.
#[derive(Debug)]
struct Node {
    path: CString,
    /// Type and permission bits, as stat gives them.
    mode: u32,
    rdev: u64,
    uid: u32,
    gid: u32,
}

#[derive(Debug)]
enum Op {
    /// Bind the path onto itself and make it (and what is below) read-only.
    ReadOnly(CString),
    /// An empty, read-only tmpfs with mode 000 over a directory.
    HideDir(CString),
    /// The empty 000 file bound over a file, read-only.
    HideFile(CString),
    /// A fresh tmpfs at /tmp.
    Tmp,
    /// A tmpfs at /dev with these directories and nodes, then read-only.
    Dev {
        dirs: Vec<CString>,
        nodes: Vec<Node>,
    },
}

/// The mounts of one service, ready for the child.
#[derive(Debug)]
pub struct Plan {
    ops: Vec<Op>,
    /// The empty, mode-000 file bound over inaccessible files.
    empty_file: CString,
}

/// The device nodes every private /dev has (as systemd's PrivateDevices).
pub const BASIC_DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
];

/// The links every private /dev has: (link, target).
const DEV_LINKS: &[(&CStr, &CStr)] = &[
    (c"/dev/fd", c"/proc/self/fd"),
    (c"/dev/stdin", c"/proc/self/fd/0"),
    (c"/dev/stdout", c"/proc/self/fd/1"),
    (c"/dev/stderr", c"/proc/self/fd/2"),
];

fn cpath(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL byte in a path"))
}

/// What the child's failure says about where it failed: the path.
pub type Failure<'a> = (std::io::Error, &'a CStr);

impl Plan {
    /// The plan for these settings, or `None` when the service needs no
    /// namespace of its own. Paths that do not exist are left out (there
    /// is nothing to protect or hide); so are allowed devices this machine
    /// does not have, and they are named in the debug log.
    pub fn new(
        read_only: &[PathBuf],
        inaccessible: &[PathBuf],
        private_tmp: bool,
        devices: Option<&[PathBuf]>,
        empty_file: &Path,
    ) -> std::io::Result<Option<Plan>> {
        let mut ops = Vec::new();
        for p in read_only {
            if p.exists() {
                ops.push(Op::ReadOnly(cpath(p)?));
            }
        }
        for p in inaccessible {
            match std::fs::symlink_metadata(p) {
                Ok(m) if m.is_dir() => ops.push(Op::HideDir(cpath(p)?)),
                Ok(_) => ops.push(Op::HideFile(cpath(p)?)),
                Err(_) => {}
            }
        }
        if private_tmp {
            ops.push(Op::Tmp);
        }
        if let Some(allowed) = devices {
            let (mut dirs, mut nodes) = (Vec::new(), Vec::new());
            let wanted = BASIC_DEVICES
                .iter()
                .map(Path::new)
                .chain(allowed.iter().map(PathBuf::as_path));
            for p in wanted {
                let m = match std::fs::metadata(p) {
                    Ok(m) if m.file_type().is_char_device() || m.file_type().is_block_device() => m,
                    Ok(_) => {
                        tracing::debug!(
                            "device_allow: {} is not a device node; left out",
                            p.display()
                        );
                        continue;
                    }
                    Err(e) => {
                        tracing::debug!("device_allow: {}: {e}; left out", p.display());
                        continue;
                    }
                };
                // Parent directories under /dev (e.g. /dev/net for /dev/net/tun).
                let mut parents: Vec<&Path> = p
                    .ancestors()
                    .skip(1)
                    .take_while(|a| *a != Path::new("/dev") && *a != Path::new("/"))
                    .collect();
                parents.reverse();
                for d in parents {
                    let c = cpath(d)?;
                    if !dirs.contains(&c) {
                        dirs.push(c);
                    }
                }
                let path = cpath(p)?;
                if nodes.iter().any(|n: &Node| n.path == path) {
                    continue;
                }
                nodes.push(Node {
                    path,
                    mode: m.mode(),
                    rdev: m.rdev(),
                    uid: m.uid(),
                    gid: m.gid(),
                });
            }
            ops.push(Op::Dev { dirs, nodes });
        }
        if ops.is_empty() {
            return Ok(None);
        }
        Ok(Some(Plan {
            ops,
            empty_file: cpath(empty_file)?,
        }))
    }

    /// In the child: a new mount namespace with the plan's mounts.
    ///
    /// # Safety
    /// Called in a freshly cloned child; only system calls on the plan's
    /// memory.
    pub unsafe fn apply(&self) -> Result<(), Failure<'_>> {
        let err = std::io::Error::last_os_error;
        // SAFETY: plain system calls on NUL-terminated strings the plan owns.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err((err(), c"/"));
            }
            // Mounts from init's namespace still arrive; ours stay here.
            if mount(None, c"/", None, libc::MS_REC | libc::MS_SLAVE, None) != 0 {
                return Err((err(), c"/"));
            }
            for op in &self.ops {
                match op {
                    Op::ReadOnly(p) => {
                        if mount(Some(p), p, None, libc::MS_BIND | libc::MS_REC, None) != 0
                            || make_read_only(p) != 0
                        {
                            return Err((err(), p));
                        }
                    }
                    Op::HideDir(p) => {
                        let flags =
                            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
                        if mount(
                            Some(c"tmpfs"),
                            p,
                            Some(c"tmpfs"),
                            flags,
                            Some(c"mode=000,size=4k"),
                        ) != 0
                        {
                            return Err((err(), p));
                        }
                    }
                    Op::HideFile(p) => {
                        if mount(Some(&self.empty_file), p, None, libc::MS_BIND, None) != 0
                            || remount_read_only(p, libc::MS_BIND) != 0
                        {
                            return Err((err(), p));
                        }
                    }
                    Op::Tmp => {
                        let p = c"/tmp";
                        let flags = libc::MS_NOSUID | libc::MS_NODEV;
                        if mount(Some(c"tmpfs"), p, Some(c"tmpfs"), flags, Some(c"mode=1777")) != 0
                        {
                            return Err((err(), p));
                        }
                    }
                    Op::Dev { dirs, nodes } => {
                        let dev = c"/dev";
                        let flags = libc::MS_NOSUID | libc::MS_NOEXEC;
                        if mount(
                            Some(c"tmpfs"),
                            dev,
                            Some(c"tmpfs"),
                            flags,
                            Some(c"mode=0755,size=64k"),
                        ) != 0
                        {
                            return Err((err(), dev));
                        }
                        for d in dirs {
                            if libc::mkdir(d.as_ptr(), 0o755) != 0 {
                                return Err((err(), d));
                            }
                        }
                        for n in nodes {
                            // mknod's mode is cut by the umask: chmod after.
                            if libc::mknod(n.path.as_ptr(), n.mode, n.rdev) != 0
                                || libc::chmod(n.path.as_ptr(), n.mode & 0o7777) != 0
                                || libc::chown(n.path.as_ptr(), n.uid, n.gid) != 0
                            {
                                return Err((err(), &n.path));
                            }
                        }
                        for (link, target) in DEV_LINKS {
                            if libc::symlink(target.as_ptr(), link.as_ptr()) != 0 {
                                return Err((err(), link));
                            }
                        }
                        // Nobody adds nodes later; writing to the nodes
                        // themselves is not affected by a read-only mount.
                        if remount_read_only(dev, 0) != 0 {
                            return Err((err(), dev));
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// mount(2) with optional strings.
unsafe fn mount(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: libc::c_ulong,
    data: Option<&CStr>,
) -> libc::c_int {
    let ptr = |s: Option<&CStr>| s.map_or(std::ptr::null(), CStr::as_ptr);
    // SAFETY: NUL-terminated strings or NULL.
    unsafe {
        libc::mount(
            ptr(source),
            target.as_ptr(),
            ptr(fstype),
            flags,
            ptr(data).cast(),
        )
    }
}

/// `struct mount_attr` of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;

/// Makes the mount at `p` and every mount below it read-only, keeping
/// their other flags (mount_setattr, Linux 5.12); on an older kernel, the
/// top mount only.
unsafe fn make_read_only(p: &CStr) -> libc::c_int {
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid path and a mount_attr of the size given.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            libc::AT_FDCWD,
            p.as_ptr(),
            AT_RECURSIVE,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ENOSYS) {
        return rc as libc::c_int;
    }
    // SAFETY: as above.
    unsafe { remount_read_only(p, libc::MS_BIND) }
}

/// Remounts `p` read-only, keeping nosuid/nodev/noexec: a bind remount
/// sets the mount's flags to exactly what it is given.
unsafe fn remount_read_only(p: &CStr, extra: libc::c_ulong) -> libc::c_int {
    // The kernel's `struct statfs` on x86-64 is 15 longs, `f_flags` the
    // 11th (libc's type hides it; glibc's statvfs may read /proc/mounts).
    let mut st = [0i64; 16];
    // SAFETY: statfs writes at most 120 bytes into the 128 we own.
    if unsafe { libc::syscall(libc::SYS_statfs, p.as_ptr(), st.as_mut_ptr()) } != 0 {
        return -1;
    }
    let keep = st[10] as libc::c_ulong
        & (libc::MS_NOSUID
            | libc::MS_NODEV
            | libc::MS_NOEXEC
            | libc::MS_NOATIME
            | libc::MS_NODIRATIME
            | libc::MS_RELATIME);
    // SAFETY: a valid path; no data.
    unsafe {
        mount(
            None,
            p,
            None,
            libc::MS_REMOUNT | libc::MS_RDONLY | extra | keep,
            None,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_plan_leaves_out_what_does_not_exist() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, "x").unwrap();
        let none = Plan::new(&[], &[], false, None, &file).unwrap();
        assert!(none.is_none());
        let missing = dir.path().join("missing");
        let p = Plan::new(
            &[dir.path().into(), missing.clone()],
            &[file.clone(), missing.clone(), dir.path().into()],
            true,
            Some(&[
                PathBuf::from("/dev/null"),
                PathBuf::from("/dev/nonexistent"),
            ]),
            &file,
        )
        .unwrap()
        .unwrap();
        let kinds: Vec<&str> = p
            .ops
            .iter()
            .map(|o| match o {
                Op::ReadOnly(_) => "ro",
                Op::HideDir(_) => "hide-dir",
                Op::HideFile(_) => "hide-file",
                Op::Tmp => "tmp",
                Op::Dev { .. } => "dev",
            })
            .collect();
        assert_eq!(kinds, ["ro", "hide-file", "hide-dir", "tmp", "dev"]);
        let Some(Op::Dev { nodes, .. }) = p.ops.last() else {
            unreachable!()
        };
        let names: Vec<&CStr> = nodes.iter().map(|n| n.path.as_c_str()).collect();
        // /dev/null once, though listed twice; the missing one left out.
        assert_eq!(names.iter().filter(|n| **n == c"/dev/null").count(), 1);
        assert!(!names.contains(&c"/dev/nonexistent"));
    }
}
