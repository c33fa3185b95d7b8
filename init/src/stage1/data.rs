//! The data partition: ext4, created on first boot (the image leaves it
//! blank), checked only when its superblock says it was not cleanly
//! unmounted or has errors, then mounted at /var of the new root.
//!
//! mke2fs and e2fsck live in the root filesystem (with their libraries), not
//! in the initramfs: stage 1 runs them chrooted into the freshly mounted
//! verity root, which keeps the initramfs to init and modules.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// What the partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataState {
    /// All zeros where a file system would start: never formatted.
    Blank,
    /// ext4, cleanly unmounted (or its journal will replay on mount).
    Clean,
    /// ext4 that needs a check (not valid, or errors recorded).
    NeedsCheck,
    /// Something that is not ext4 and not blank: refuse to format it.
    Foreign,
}

const EXT4_MAGIC: u16 = 0xEF53;
const EXT4_VALID_FS: u16 = 1;
const EXT4_ERROR_FS: u16 = 2;

/// Classifies the first 64 KiB of a partition.
pub fn classify(head: &[u8]) -> DataState {
    let sb = &head[head.len().min(1024)..];
    let u16_at = |o: usize| sb.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if u16_at(0x38) == Some(EXT4_MAGIC) {
        let state = u16_at(0x3a).unwrap_or(0);
        if state & EXT4_VALID_FS == 0 || state & EXT4_ERROR_FS != 0 {
            return DataState::NeedsCheck;
        }
        return DataState::Clean;
    }
    if head.iter().all(|&b| b == 0) {
        DataState::Blank
    } else {
        DataState::Foreign
    }
}

/// Reads the first 64 KiB of `dev` and classifies it.
pub fn inspect(dev: &Path) -> std::io::Result<DataState> {
    let mut f = std::fs::File::open(dev)?;
    let mut head = vec![0u8; 65536];
    let mut got = 0;
    while got < head.len() {
        let n = f.read(&mut head[got..])?;
        if n == 0 {
            break;
        }
        got += n;
    }
    head.truncate(got);
    Ok(classify(&head))
}

/// Runs `argv` chrooted into `root`; returns its exit code.
pub fn run_in(root: &Path, argv: &[&str]) -> std::io::Result<i32> {
    let root = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    let mut c = Command::new(argv[0]);
    c.args(&argv[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    // SAFETY: chroot and chdir are async-signal-safe; root outlives the call.
    unsafe {
        c.pre_exec(move || {
            if libc::chroot(root.as_ptr()) != 0 || libc::chdir(c"/".as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let st = c.status()?;
    Ok(st
        .code()
        .unwrap_or(128 + std::os::unix::process::ExitStatusExt::signal(&st).unwrap_or(0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sb(state: u16) -> Vec<u8> {
        let mut h = vec![0u8; 4096];
        h[1024 + 0x38..1024 + 0x3a].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        h[1024 + 0x3a..1024 + 0x3c].copy_from_slice(&state.to_le_bytes());
        h
    }

    #[test]
    fn classifies_superblocks() {
        assert_eq!(classify(&vec![0u8; 65536]), DataState::Blank);
        assert_eq!(classify(&sb(1)), DataState::Clean);
        assert_eq!(classify(&sb(0)), DataState::NeedsCheck);
        assert_eq!(classify(&sb(3)), DataState::NeedsCheck);
        let mut foreign = vec![0u8; 4096];
        foreign[10] = 1;
        assert_eq!(classify(&foreign), DataState::Foreign);
        for short in [&[][..], &[0u8; 10][..], &[1u8; 1030][..]] {
            let _ = classify(short);
        }
    }
}
