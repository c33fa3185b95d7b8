//! A root slot as the installer sees it: a block device (or, in tests and
//! for image files, a regular file of fixed size) read and written at
//! offsets, synced with fdatasync.
//!
//! The target is opened with `O_EXCL` when it is a block device: the
//! kernel then refuses it while anything holds it (a mounted file system, a
//! dm-verity device on top of it), so the installer cannot write the slot
//! the system runs from even if it was handed the wrong path.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// A failure on a slot, naming it.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct SlotError {
    /// What was being done.
    pub what: &'static str,
    /// The device or file.
    pub path: PathBuf,
    /// The cause.
    #[source]
    pub source: std::io::Error,
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SlotError + 'a {
    move |source| SlotError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// An open slot.
#[derive(Debug)]
pub struct Slot {
    file: File,
    path: PathBuf,
    size: u64,
}

// BLKGETSIZE64 = _IOR(0x12, 114, size_t)
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

fn size_of(file: &File, path: &Path) -> Result<u64, SlotError> {
    let meta = file.metadata().map_err(err("reading the size of", path))?;
    if meta.file_type().is_block_device() {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which
        // points at a live, aligned u64.
        let rc = unsafe {
            libc::ioctl(
                std::os::fd::AsRawFd::as_raw_fd(file),
                BLKGETSIZE64,
                &mut size,
            )
        };
        if rc != 0 {
            return Err(SlotError {
                what: "reading the size of",
                path: path.to_path_buf(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(size)
    } else {
        Ok(meta.len())
    }
}

impl Slot {
    /// Opens a slot to write. A block device is opened exclusively.
    pub fn open_target(path: &Path) -> Result<Slot, SlotError> {
        let is_block = std::fs::metadata(path)
            .map_err(err("opening", path))?
            .file_type()
            .is_block_device();
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if is_block {
            opts.custom_flags(libc::O_EXCL | libc::O_CLOEXEC);
        }
        let file = opts.open(path).map_err(|e| SlotError {
            what: if e.raw_os_error() == Some(libc::EBUSY) {
                "refusing to write (it is in use: mounted or under dm-verity)"
            } else {
                "opening for writing"
            },
            path: path.to_path_buf(),
            source: e,
        })?;
        let size = size_of(&file, path)?;
        Ok(Slot {
            file,
            path: path.to_path_buf(),
            size,
        })
    }

    /// Opens a slot (or any file) to read.
    pub fn open_read(path: &Path) -> Result<Slot, SlotError> {
        let file = File::open(path).map_err(err("opening", path))?;
        let size = size_of(&file, path)?;
        Ok(Slot {
            file,
            path: path.to_path_buf(),
            size,
        })
    }

    /// Bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), SlotError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(err("reading", &self.path))
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), SlotError> {
        self.file
            .write_all_at(buf, offset)
            .map_err(err("writing", &self.path))
    }

    /// fdatasync: what was written is on the medium.
    pub fn sync(&self) -> Result<(), SlotError> {
        self.file.sync_data().map_err(err("syncing", &self.path))
    }
}

/// Bytes of a dm-verity hash tree (sha256, 4 KiB blocks, no superblock)
/// over `data_blocks` 4 KiB blocks, as `veritysetup format` lays it out.
/// A root payload is its erofs data blocks followed by this tree.
pub fn verity_tree_bytes(data_blocks: u64) -> u64 {
    let mut n = data_blocks;
    let mut total = 0u64;
    loop {
        n = n.div_ceil(128);
        total += n;
        if n <= 1 {
            break;
        }
    }
    total * 4096
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn verity_tree_matches_veritysetup() {
        // The image build's manifest: 3780 data blocks, a 15,609,856-byte
        // payload (veritysetup format), i.e. 31 hash blocks.
        assert_eq!(3780 * 4096 + verity_tree_bytes(3780), 15_609_856);
        assert_eq!(verity_tree_bytes(1), 4096);
        assert_eq!(verity_tree_bytes(128), 4096);
        assert_eq!(verity_tree_bytes(129), 3 * 4096);
    }

    #[test]
    fn files_read_and_write_at_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("slot");
        std::fs::write(&p, vec![0u8; 8192]).unwrap();
        let s = Slot::open_target(&p).unwrap();
        assert_eq!(s.size(), 8192);
        s.write_at(4096, b"hello").unwrap();
        s.sync().unwrap();
        let mut b = [0u8; 5];
        Slot::open_read(&p).unwrap().read_at(4096, &mut b).unwrap();
        assert_eq!(&b, b"hello");
        let e = Slot::open_read(&p)
            .unwrap()
            .read_at(8190, &mut b)
            .unwrap_err();
        assert!(e.to_string().contains("slot"), "{e}");
    }
}
