//! dm-verity through the device-mapper ioctls (Debian's kernel has no
//! dm-init, and there is no dmsetup in the initramfs): DM_DEV_CREATE,
//! DM_TABLE_LOAD with one `verity` target, DM_DEV_SUSPEND to resume.
//!
//! The hash tree sits in the same partition right after the data (the image
//! builder runs `veritysetup format --no-superblock --hash-offset=<data>`), so
//! the table is `1 DEV DEV 4096 4096 BLOCKS BLOCKS sha256 ROOT SALT`. Any
//! block that does not match the tree reads as an I/O error: tampered code
//! is never executed.

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

impl VerityParams {
    /// The dm table line (without start and length).
    pub fn table(&self) -> Result<String, VerityError> {
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
        Ok(format!(
            "1 {d} {d} 4096 4096 {n} {n} sha256 {h} {s}",
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
pub fn create(control: &Path, name: &str, p: &VerityParams) -> Result<(u32, u32), VerityError> {
    let table = p.table()?;
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
    let mut b = header(name, DM_READONLY_FLAG, 1, table.len() + 64);
    add_target(&mut b, p.data_blocks * 8, "verity", &table);
    ioctl(fd, DM_TABLE_LOAD, &mut b, "DM_TABLE_LOAD (verity)", name)?;
    let mut b = header(name, 0, 0, 0);
    ioctl(fd, DM_DEV_SUSPEND, &mut b, "DM_DEV_SUSPEND (resume)", name)?;
    Ok((
        libc::major(dev as libc::dev_t),
        libc::minor(dev as libc::dev_t),
    ))
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
