//! dm-verity through the device-mapper ioctls (Debian's kernel has no
//! dm-init, and there is no dmsetup in the initramfs): DM_DEV_CREATE,
//! DM_TABLE_LOAD with one `verity` target, DM_DEV_SUSPEND to resume.
//!
//! The hash tree sits in the same partition right after the data (the image
//! builder runs `veritysetup format --no-superblock --hash-offset=<data>`), so
//! the table is `1 DEV DEV 4096 4096 BLOCKS BLOCKS sha256 ROOT SALT`, plus
//! `1 restart_on_corruption` (issue 11 §6): a block that does not match the
//! tree is never handed to the reader, and the kernel restarts at once
//! (`device-mapper: verity: DEV: data block N is corrupted`, then `reboot:
//! Restarting system with command 'dm-verity device corrupted'`), whenever
//! the read happens, at boot or days later. The restart is a failed try for
//! systemd-boot's boot counting, so a slot not yet blessed falls back to the
//! other slot.
//!
//! [`create`] arms that mode only once a first read through the device has
//! verified: it starts the device in the default mode (a corrupt block
//! reads as an I/O error), reads block 0 (which checks the root hash against
//! the top of the tree on disk), and only then swaps in the table with
//! `restart_on_corruption`. A root that does not match its UKI at all (a
//! wrong root hash, an interrupted write of the slot) thus stays an I/O
//! error, and stage 1's mount reports it with the slot's name before it
//! reboots, instead of a restart with no reason from init on the console.

use std::path::Path;

/// Why the verity device could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum VerityError {
    /// The control node could not be opened.
    #[error("opening {path}: {source} (is dm-mod loaded?)")]
    Control {
        /// The path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// An ioctl failed.
    #[error("device-mapper {op} for {name}: {source}")]
    Ioctl {
        /// Which ioctl.
        op: &'static str,
        /// The dm device name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Bad parameters.
    #[error("bad verity parameters: {0}")]
    Params(String),
}

/// The verity parameters of a root partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityParams {
    /// `major:minor` of the partition holding data and hash tree.
    pub dev: String,
    /// 4 KiB data blocks.
    pub data_blocks: u64,
    /// Hex root hash.
    pub root_hash: String,
    /// Hex salt (or "-").
    pub salt: String,
}

/// What dm-verity does with a block that does not match the hash tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnCorruption {
    /// The read fails with EIO (the kernel's default; no optional argument).
    IoError,
    /// The kernel restarts at once (`restart_on_corruption`).
    Restart,
}

impl VerityParams {
    /// The dm table line (without start and length) as the root runs with
    /// it: `... sha256 ROOT SALT 1 restart_on_corruption`.
    pub fn table(&self) -> Result<String, VerityError> {
        self.table_with(OnCorruption::Restart)
    }

    /// The dm table line (without start and length) with `on` corruption.
    pub fn table_with(&self, on: OnCorruption) -> Result<String, VerityError> {
        let hex = |s: &str| {
            !s.is_empty() && s.len().is_multiple_of(2) && s.bytes().all(|b| b.is_ascii_hexdigit())
        };
        if self.root_hash.len() != 64 || !hex(&self.root_hash) {
            return Err(VerityError::Params(format!(
                "root hash {:?} is not 64 hex digits",
                self.root_hash
            )));
        }
        if self.salt != "-" && !hex(&self.salt) {
            return Err(VerityError::Params(format!(
                "salt {:?} is not hex",
                self.salt
            )));
        }
        if self.data_blocks == 0 {
            return Err(VerityError::Params("zero data blocks".into()));
        }
        // Optional arguments: their count, then each one.
        let optional = match on {
            OnCorruption::IoError => "",
            OnCorruption::Restart => " 1 restart_on_corruption",
        };
        Ok(format!(
            "1 {d} {d} 4096 4096 {n} {n} sha256 {h} {s}{optional}",
            d = self.dev,
            n = self.data_blocks,
            h = self.root_hash,
            s = self.salt
        ))
    }
}

const DM_IOCTL_SIZE: usize = 312;
const DM_TARGET_SPEC_SIZE: usize = 40;
const DM_READONLY_FLAG: u32 = 1;
const fn dm_ioctl_nr(nr: u64) -> u64 {
    (3 << 30) | ((DM_IOCTL_SIZE as u64) << 16) | (0xfd << 8) | nr
}
const DM_DEV_CREATE: u64 = dm_ioctl_nr(3);
const DM_DEV_SUSPEND: u64 = dm_ioctl_nr(6);
const DM_TABLE_LOAD: u64 = dm_ioctl_nr(9);

/// A `struct dm_ioctl` header (version 4.0.0) for device `name`, with
/// room for `extra` bytes after it.
pub fn header(name: &str, flags: u32, target_count: u32, extra: usize) -> Vec<u8> {
    let size = DM_IOCTL_SIZE + extra.max(16 * 1024);
    let mut b = vec![0u8; size];
    b[0..4].copy_from_slice(&4u32.to_ne_bytes());
    b[12..16].copy_from_slice(&(size as u32).to_ne_bytes());
    b[16..20].copy_from_slice(&(DM_IOCTL_SIZE as u32).to_ne_bytes());
    b[20..24].copy_from_slice(&target_count.to_ne_bytes());
    b[28..32].copy_from_slice(&flags.to_ne_bytes());
    let n = name.as_bytes();
    let n = &n[..n.len().min(127)];
    b[48..48 + n.len()].copy_from_slice(n);
    b
}

/// Appends one target spec (sector 0, `sectors` long) with `params`.
pub fn add_target(b: &mut [u8], sectors: u64, target: &str, params: &str) {
    let at = DM_IOCTL_SIZE;
    b[at..at + 8].copy_from_slice(&0u64.to_ne_bytes());
    b[at + 8..at + 16].copy_from_slice(&sectors.to_ne_bytes());
    let plen = params.len() + 1;
    let next = (DM_TARGET_SPEC_SIZE + plen).div_ceil(8) * 8;
    b[at + 20..at + 24].copy_from_slice(&(next as u32).to_ne_bytes());
    let t = target.as_bytes();
    b[at + 24..at + 24 + t.len().min(15)].copy_from_slice(&t[..t.len().min(15)]);
    let p = at + DM_TARGET_SPEC_SIZE;
    b[p..p + params.len()].copy_from_slice(params.as_bytes());
}

fn ioctl(
    fd: i32,
    req: u64,
    buf: &mut [u8],
    op: &'static str,
    name: &str,
) -> Result<(), VerityError> {
    // SAFETY: buf is a dm_ioctl buffer of data_size bytes that we own.
    let r = unsafe { libc::ioctl(fd, req as _, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(VerityError::Ioctl {
            op,
            name: name.into(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Creates the read-only verity device `name`; returns its (major, minor).
///
/// The device first runs in the default mode; once a read of its block 0
/// has verified (the root hash matches the tree on disk), the table with
/// `restart_on_corruption` replaces it. When that read fails the device is
/// left in the default mode, so the caller's first read (stage 1's mount)
/// fails with EIO and the caller says which slot would not verify.
pub fn create(control: &Path, name: &str, p: &VerityParams) -> Result<(u32, u32), VerityError> {
    let checking = p.table_with(OnCorruption::IoError)?;
    let armed = p.table()?;
    let ctl = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(control)
        .map_err(|source| VerityError::Control {
            path: control.display().to_string(),
            source,
        })?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&ctl);
    let mut b = header(name, 0, 0, 0);
    ioctl(fd, DM_DEV_CREATE, &mut b, "DM_DEV_CREATE", name)?;
    let mut dev = [0u8; 8];
    dev.copy_from_slice(&b[40..48]);
    let dev = u64::from_ne_bytes(dev);
    let (major, minor) = (
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t),
    );
    load(fd, name, p, &checking, "DM_TABLE_LOAD (verity)")?;
    // devtmpfs: /dev/dm-N next to /dev/mapper/control.
    let dev_dir = control
        .parent()
        .and_then(Path::parent)
        .unwrap_or(Path::new("/dev"));
    if first_block_verifies(&dev_dir.join(format!("dm-{minor}"))) {
        load(
            fd,
            name,
            p,
            &armed,
            "DM_TABLE_LOAD (verity, restart_on_corruption)",
        )?;
    }
    Ok((major, minor))
}

/// Loads `table` as the device's table and resumes it: the first load
/// makes it live; a later one replaces the live table (resuming a device
/// with an inactive table suspends it, swaps the tables and resumes).
fn load(
    fd: i32,
    name: &str,
    p: &VerityParams,
    table: &str,
    op: &'static str,
) -> Result<(), VerityError> {
    let mut b = header(name, DM_READONLY_FLAG, 1, table.len() + 64);
    add_target(&mut b, p.data_blocks * 8, "verity", table);
    ioctl(fd, DM_TABLE_LOAD, &mut b, op, name)?;
    let mut b = header(name, 0, 0, 0);
    ioctl(fd, DM_DEV_SUSPEND, &mut b, "DM_DEV_SUSPEND (resume)", name)
}

/// Whether the first 4 KiB block of `node` reads: dm-verity checks the
/// path from the root hash down to it. Exactly that block is read (no
/// read-ahead), and it stays in the page cache for the mount.
fn first_block_verifies(node: &Path) -> bool {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    // devtmpfs makes the node as the device is added; the wait is a guard.
    if !super::blockdev::wait_for_node(node, std::time::Duration::from_secs(5)) {
        return false;
    }
    let Ok(f) = std::fs::File::open(node) else {
        return false;
    };
    // SAFETY: fadvise on a descriptor we own; no pointers.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    let mut block = [0u8; 4096];
    f.read_exact_at(&mut block, 0).is_ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel_headers() {
        // From <linux/dm-ioctl.h> on x86-64.
        assert_eq!(DM_DEV_CREATE, 0xc138fd03);
        assert_eq!(DM_DEV_SUSPEND, 0xc138fd06);
        assert_eq!(DM_TABLE_LOAD, 0xc138fd09);
    }

    #[test]
    fn table_and_buffer_layout() {
        let p = VerityParams {
            dev: "254:2".into(),
            data_blocks: 100,
            root_hash: "ab".repeat(32),
            salt: "00ff".into(),
        };
        let t = p.table().unwrap();
        assert_eq!(
            t,
            format!(
                "1 254:2 254:2 4096 4096 100 100 sha256 {} 00ff 1 restart_on_corruption",
                "ab".repeat(32)
            )
        );
        // The checking table of `create`: no optional arguments.
        assert_eq!(
            p.table_with(OnCorruption::IoError).unwrap(),
            format!(
                "1 254:2 254:2 4096 4096 100 100 sha256 {} 00ff",
                "ab".repeat(32)
            )
        );
        let mut b = header("root", DM_READONLY_FLAG, 1, t.len() + 64);
        add_target(&mut b, 800, "verity", &t);
        assert_eq!(&b[48..52], b"root");
        assert_eq!(&b[312 + 24..312 + 30], b"verity");
        assert_eq!(u64::from_ne_bytes(b[320..328].try_into().unwrap()), 800);
        assert_eq!(&b[352..352 + t.len()], t.as_bytes());
        assert_eq!(b[352 + t.len()], 0);
        assert!(VerityParams {
            root_hash: "xyz".into(),
            ..p.clone()
        }
        .table()
        .is_err());
        assert!(VerityParams {
            salt: "0".into(),
            ..p
        }
        .table()
        .is_err());
    }
}
