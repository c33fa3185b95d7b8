//! Disk limits: ext4 project quotas on /var. Each app is one project (its
//! writable layer and its volumes); a write past its limit gets EDQUOT.
//! Why project quotas and not a filesystem image per app: docs/APPS.md.
//!
//! Stage 1 formats /var with `-O quota,project -I 256`, so the kernel keeps
//! project usage from the first mount; [`enable`] turns enforcement on
//! (what `quotaon -P` does on such a filesystem).

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// A quota step failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct QuotaError {
    /// What was being done.
    pub what: &'static str,
    /// The file or mount.
    pub path: PathBuf,
    /// What the kernel said.
    pub source: std::io::Error,
}

const SYS_QUOTACTL_FD: libc::c_long = 443;
const PRJQUOTA: u32 = 2;
const Q_QUOTAON: u32 = 0x80_0002;
const Q_SETQUOTA: u32 = 0x80_0008;
const Q_GETQUOTA: u32 = 0x80_0007;
const QFMT_VFS_V1: u32 = 4;
const QIF_BLIMITS: u32 = 1;
const QIF_ILIMITS: u32 = 4;
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;
const FS_XFLAG_PROJINHERIT: u32 = 0x200;

fn qcmd(cmd: u32, kind: u32) -> u32 {
    (cmd << 8) | (kind & 0xff)
}

#[repr(C)]
#[derive(Default)]
struct IfDqblk {
    bhardlimit: u64,
    bsoftlimit: u64,
    curspace: u64,
    ihardlimit: u64,
    isoftlimit: u64,
    curinodes: u64,
    btime: u64,
    itime: u64,
    valid: u32,
}

#[repr(C)]
#[derive(Default)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

fn err(what: &'static str, path: &Path) -> QuotaError {
    QuotaError {
        what,
        path: path.to_path_buf(),
        source: std::io::Error::last_os_error(),
    }
}

fn open(path: &Path, what: &'static str) -> Result<std::fs::File, QuotaError> {
    std::fs::File::open(path).map_err(|source| QuotaError {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn quotactl(mount: &Path, cmd: u32, id: u32, addr: *mut libc::c_void) -> Result<(), QuotaError> {
    let f = open(mount, "opening")?;
    // SAFETY: quotactl_fd(fd, cmd, id, addr) with a valid fd and, for the
    // commands used here, `addr` null or pointing at a live if_dqblk.
    let r = unsafe {
        libc::syscall(
            SYS_QUOTACTL_FD,
            f.as_raw_fd(),
            qcmd(cmd, PRJQUOTA),
            id,
            addr,
        )
    };
    if r < 0 {
        return Err(err("quotactl on", mount));
    }
    Ok(())
}

/// Turns project quota enforcement on for the filesystem holding `mount`.
/// Already on is fine.
pub fn enable(mount: &Path) -> Result<(), QuotaError> {
    match quotactl(mount, Q_QUOTAON, QFMT_VFS_V1, std::ptr::null_mut()) {
        Err(e) if e.source.raw_os_error() == Some(libc::EBUSY) => Ok(()),
        Err(e) if e.source.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// Inodes per MiB of quota (and at least [`MIN_INODES`]): empty files,
/// links and FIFOs use no data blocks, so a block limit alone would let
/// an app exhaust /var's inodes.
pub const INODES_PER_MIB: u64 = 256;
/// The fewest inodes an app may have.
pub const MIN_INODES: u64 = 16_384;

/// Sets project `id`'s limits: `mib` MiB, and inodes in proportion (0
/// lifts both).
pub fn set_limit(mount: &Path, id: u32, mib: u64) -> Result<(), QuotaError> {
    let inodes = if mib == 0 {
        0
    } else {
        (mib * INODES_PER_MIB).max(MIN_INODES)
    };
    let mut q = IfDqblk {
        // In 1 KiB blocks.
        bhardlimit: mib * 1024,
        bsoftlimit: mib * 1024,
        ihardlimit: inodes,
        isoftlimit: inodes,
        valid: QIF_BLIMITS | QIF_ILIMITS,
        ..Default::default()
    };
    quotactl(mount, Q_SETQUOTA, id, (&mut q as *mut IfDqblk).cast())
}

/// Project `id`'s usage in bytes and its hard limit in bytes (0: none).
pub fn usage(mount: &Path, id: u32) -> Result<(u64, u64), QuotaError> {
    let mut q = IfDqblk::default();
    quotactl(mount, Q_GETQUOTA, id, (&mut q as *mut IfDqblk).cast())?;
    Ok((q.curspace, q.bhardlimit * 1024))
}

/// Puts directory `dir` into project `id`, inherited by everything
/// created below it from now on.
pub fn assign(dir: &Path, id: u32) -> Result<(), QuotaError> {
    let f = open(dir, "opening")?;
    let mut x = FsXattr::default();
    // SAFETY: the ioctls read/write one fsxattr through a valid pointer.
    if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FSGETXATTR, &mut x as *mut FsXattr) } < 0 {
        return Err(err("reading the project of", dir));
    }
    if x.projid == id && x.xflags & FS_XFLAG_PROJINHERIT != 0 {
        return Ok(());
    }
    x.projid = id;
    x.xflags |= FS_XFLAG_PROJINHERIT;
    // SAFETY: as above.
    if unsafe { libc::ioctl(f.as_raw_fd(), FS_IOC_FSSETXATTR, &x as *const FsXattr) } < 0 {
        return Err(err("setting the project of", dir));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn layouts_match_the_kernel_abi() {
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
        assert_eq!(std::mem::size_of::<IfDqblk>(), 72);
        assert_eq!(qcmd(Q_SETQUOTA, PRJQUOTA), 0x8000_0802);
    }
}
