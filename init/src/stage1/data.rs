//! The data partition: ext4, created on first boot (the image leaves it
//! blank), checked only when its superblock says it was not cleanly
//! unmounted or has errors, then mounted at /var of the new root.
//!
//! What is on it is read from its first MiB ([`classify`]): an ext4
//! superblock, another known signature ([`SIGNATURES`], probed as libblkid
//! does, at fixed offsets), nothing but zeros, or bytes nobody recognises.
//! Whether to format is [`decide`]d from that and from what proves the
//! partition ours and new: only the image's own data partition on the disk
//! the firmware booted from, never marked initialised, and all zeros. Every
//! other case that is not ext4 is refused with what to do.
//!
//! mke2fs and e2fsck live in the root filesystem (with their libraries), not
//! in the initramfs: stage 1 runs them chrooted into the freshly mounted
//! verity root, which keeps the initramfs to init and modules.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// How much of the partition is probed: every signature below lies in it.
pub const PROBE_BYTES: usize = 1 << 20;

/// What the partition holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataState {
    /// All zeros in the first MiB: never formatted (or wiped).
    Blank,
    /// ext4, cleanly unmounted (or its journal will replay on mount).
    Clean,
    /// ext4 that needs a check (not valid, or errors recorded).
    NeedsCheck,
    /// Another file system or volume format (its name): never formatted over.
    Foreign(&'static str),
    /// Not all zeros and no signature we know: never formatted over.
    Unknown,
}

/// One on-disk signature: a name, a byte offset, the magic bytes there.
#[derive(Debug, Clone, Copy)]
pub struct Signature {
    /// What it is (libblkid's name where it has one).
    pub name: &'static str,
    /// Byte offset from the partition's start.
    pub offset: usize,
    /// The bytes found there.
    pub magic: &'static [u8],
}

const fn sig(name: &'static str, offset: usize, magic: &'static [u8]) -> Signature {
    Signature {
        name,
        offset,
        magic,
    }
}

/// The signatures probed besides ext4's (0xEF53 at 1080), with the offsets
/// libblkid uses. A partition carrying any of them is never formatted.
pub const SIGNATURES: &[Signature] = &[
    sig("btrfs", 65600, b"_BHRfS_M"),
    sig("xfs", 0, b"XFSB"),
    sig("vfat", 54, b"FAT1"),
    sig("vfat", 82, b"FAT32   "),
    sig("vfat", 3, b"MSDOS"),
    sig("vfat", 3, b"MSWIN"),
    sig("vfat", 3, b"mkfs.fat"),
    sig("ntfs", 3, b"NTFS    "),
    sig("exfat", 3, b"EXFAT   "),
    sig("BitLocker", 3, b"-FVE-FS-"),
    sig("dos boot sector / partition table", 510, &[0x55, 0xAA]),
    sig("gpt", 512, b"EFI PART"),
    sig("crypto_LUKS", 0, b"LUKS\xba\xbe"),
    sig("crypto_LUKS (LUKS2 second header)", 16384, b"SKUL\xba\xbe"),
    sig("swap", 4086, b"SWAPSPACE2"),
    sig("swap", 4086, b"SWAP-SPACE"),
    sig("swap (64 KiB pages)", 65526, b"SWAPSPACE2"),
    sig("iso9660", 32769, b"CD001"),
    sig("udf", 32769, b"BEA01"),
    sig("LVM2_member", 0, b"LABELONE"),
    sig("LVM2_member", 512, b"LABELONE"),
    sig("LVM2_member", 1024, b"LABELONE"),
    sig("LVM2_member", 1536, b"LABELONE"),
    sig("squashfs", 0, b"hsqs"),
    sig("squashfs", 0, b"sqsh"),
    sig("erofs", 1024, &[0xE2, 0xE1, 0xF5, 0xE0]),
    sig("f2fs", 1024, &[0x10, 0x20, 0xF5, 0xF2]),
    sig("jfs", 32768, b"JFS1"),
    sig("reiserfs", 65588, b"ReIsEr"),
    sig("reiserfs", 8244, b"ReIsEr"),
    sig("linux_raid_member (1.1)", 0, &[0xFC, 0x4E, 0x2B, 0xA9]),
    sig("linux_raid_member (1.2)", 4096, &[0xFC, 0x4E, 0x2B, 0xA9]),
    sig(
        "bcachefs",
        4120,
        &[
            0xC6, 0x85, 0x73, 0xF6, 0x4E, 0x1A, 0x45, 0xCA, 0x82, 0x65, 0xF5, 0x7F, 0x48, 0xBA,
            0x6D, 0x81,
        ],
    ),
    sig("DM_verity_hash", 0, b"verity\0\0"),
    sig("DM_integrity", 0, b"integrt\0"),
    sig("bluestore", 0, b"bluestore block device"),
];

/// ZFS: the uberblock magic, in either byte order, anywhere in the first
/// label's uberblock ring (128-256 KiB, 1 KiB apart).
const ZFS_UBERBLOCK: u64 = 0x00ba_b10c;

const EXT4_MAGIC: u16 = 0xEF53;
const EXT4_VALID_FS: u16 = 1;
const EXT4_ERROR_FS: u16 = 2;

/// The known signatures (besides ext4) found in `head`.
pub fn signatures(head: &[u8]) -> Vec<&'static str> {
    let mut found: Vec<&'static str> = SIGNATURES
        .iter()
        .filter(|s| head.get(s.offset..s.offset + s.magic.len()) == Some(s.magic))
        .map(|s| s.name)
        .collect();
    let zfs = (128 * 1024..256 * 1024).step_by(1024).any(|o| {
        head.get(o..o + 8).is_some_and(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a) == ZFS_UBERBLOCK || u64::from_be_bytes(a) == ZFS_UBERBLOCK
        })
    });
    if zfs {
        found.push("zfs_member");
    }
    found.dedup();
    found
}

/// Classifies the first MiB of a partition (less when it is smaller).
pub fn classify(head: &[u8]) -> DataState {
    let u16_at = |o: usize| head.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    if u16_at(1024 + 0x38) == Some(EXT4_MAGIC) {
        let state = u16_at(1024 + 0x3a).unwrap_or(0);
        if state & EXT4_VALID_FS == 0 || state & EXT4_ERROR_FS != 0 {
            return DataState::NeedsCheck;
        }
        return DataState::Clean;
    }
    if let Some(name) = signatures(head).first() {
        return DataState::Foreign(name);
    }
    if head.iter().all(|&b| b == 0) {
        DataState::Blank
    } else {
        DataState::Unknown
    }
}

/// Reads the first MiB of `dev` (less when it is smaller) and classifies it.
pub fn inspect(dev: &Path) -> std::io::Result<DataState> {
    let mut f = std::fs::File::open(dev)?;
    let mut head = vec![0u8; PROBE_BYTES];
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

/// What proves the data partition ours: it is the image's data partition
/// (partition UUID and /var type GUID, [`super::bootdisk`]) on the disk
/// the firmware booted from, and whether it was ever initialised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Provenance {
    /// The boot loader named the disk (`LoaderDevicePartUUID`) and its disk
    /// GUID is the image's: a blank partition there is the image's own.
    pub new_allowed: bool,
    /// The GPT attribute bit [`super::gpt::ATTR_INITIALISED`] is set: /var
    /// was formatted here once.
    pub initialised: bool,
}

/// What to do with the data partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Grow it, format it as ext4, then mark it initialised.
    Format,
    /// e2fsck -p, then mount.
    Check,
    /// Mount.
    Mount,
}

/// Decides what to do with the data partition (`dev`, on disk `disk`), or
/// why not: the refusal is the FATAL line, and says what to do.
pub fn decide(state: DataState, p: Provenance, dev: &str, disk: &str) -> Result<Action, String> {
    match state {
        DataState::Clean => Ok(Action::Mount),
        DataState::NeedsCheck => Ok(Action::Check),
        DataState::Blank if p.initialised => Err(format!(
            "data partition {dev} was initialised (GPT attribute bit 56) but its first MiB is now zeros: its file system was overwritten; refusing to format it (restore /var from a backup, or to start afresh clear the bit: sfdisk --part-attrs /dev/{disk} N '' with N its partition number)"
        )),
        DataState::Blank if p.new_allowed => Ok(Action::Format),
        DataState::Blank => Err(format!(
            "data partition {dev} is blank, but the boot loader did not name the disk it booted from (no LoaderDevicePartUUID), or the disk GUID of {disk} is not the image's: refusing to format it (boot this disk through its own systemd-boot, or reflash it)"
        )),
        DataState::Foreign(what) => Err(format!(
            "data partition {dev} holds {what}, not ext4: refusing to format it (copy off what it holds, then zero its first MiB: dd if=/dev/zero of=/dev/{dev} bs=1M count=1)"
        )),
        DataState::Unknown => Err(format!(
            "data partition {dev} holds unrecognised data in its first MiB, no file system: refusing to format it (if nothing there is needed, zero it: dd if=/dev/zero of=/dev/{dev} bs=1M count=1)"
        )),
    }
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
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    fn sb(state: u16) -> Vec<u8> {
        let mut h = vec![0u8; PROBE_BYTES];
        h[1024 + 0x38..1024 + 0x3a].copy_from_slice(&EXT4_MAGIC.to_le_bytes());
        h[1024 + 0x3a..1024 + 0x3c].copy_from_slice(&state.to_le_bytes());
        h
    }

    fn with(offset: usize, magic: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; PROBE_BYTES];
        h[offset..offset + magic.len()].copy_from_slice(magic);
        h
    }

    #[test]
    fn classifies_superblocks() {
        assert_eq!(classify(&vec![0u8; PROBE_BYTES]), DataState::Blank);
        assert_eq!(classify(&sb(1)), DataState::Clean);
        assert_eq!(classify(&sb(0)), DataState::NeedsCheck);
        assert_eq!(classify(&sb(3)), DataState::NeedsCheck);
        let mut unknown = vec![0u8; 4096];
        unknown[10] = 1;
        assert_eq!(classify(&unknown), DataState::Unknown);
        // Operator bytes right at the end of the first MiB count.
        assert_eq!(classify(&with(PROBE_BYTES - 1, &[7])), DataState::Unknown);
        for short in [
            &[][..],
            &[0u8; 10][..],
            &[1u8; 1030][..],
            &[0x53u8; 1081][..],
        ] {
            let _ = classify(short);
        }
    }

    #[test]
    fn every_signature_in_the_table_is_found_alone() {
        for s in SIGNATURES {
            let h = with(s.offset, s.magic);
            assert_eq!(signatures(&h), vec![s.name], "{}", s.name);
            assert_eq!(classify(&h), DataState::Foreign(s.name), "{}", s.name);
            // One byte off is not the signature (and not blank).
            let mut off = h.clone();
            off[s.offset] ^= 0xFF;
            assert!(!signatures(&off).contains(&s.name), "{}", s.name);
            assert_eq!(classify(&off), DataState::Unknown, "{}", s.name);
            // Cut short before the magic ends: no match, no panic.
            assert!(
                signatures(&h[..s.offset + s.magic.len() - 1]).is_empty(),
                "{}",
                s.name
            );
        }
    }

    #[test]
    fn the_signatures_the_issue_names_are_probed() {
        let cases: [(&str, usize, &[u8]); 10] = [
            ("btrfs", 65600, b"_BHRfS_M"),
            ("xfs", 0, b"XFSB"),
            ("crypto_LUKS", 0, b"LUKS\xba\xbe"),
            ("swap", 4086, b"SWAPSPACE2"),
            ("iso9660", 32769, b"CD001"),
            ("LVM2_member", 512, b"LABELONE"),
            ("squashfs", 0, b"hsqs"),
            ("erofs", 1024, &0xE0F5_E1E2u32.to_le_bytes()),
            ("ntfs", 3, b"NTFS    "),
            ("vfat", 82, b"FAT32   "),
        ];
        for (name, at, magic) in cases {
            assert_eq!(
                classify(&with(at, magic)),
                DataState::Foreign(name),
                "{name}"
            );
        }
        // A btrfs: zeros in its first 64 KiB (where the old probe stopped).
        let h = with(65600, b"_BHRfS_M");
        assert!(h[..65536].iter().all(|&b| b == 0));
    }

    #[test]
    fn zfs_uberblocks_are_found_in_either_byte_order() {
        let le = with(128 * 1024 + 5 * 1024, &ZFS_UBERBLOCK.to_le_bytes());
        assert_eq!(classify(&le), DataState::Foreign("zfs_member"));
        let be = with(200 * 1024, &ZFS_UBERBLOCK.to_be_bytes());
        assert_eq!(classify(&be), DataState::Foreign("zfs_member"));
        // Not at a 1 KiB step: not an uberblock.
        let odd = with(200 * 1024 + 8, &ZFS_UBERBLOCK.to_le_bytes());
        assert_eq!(classify(&odd), DataState::Unknown);
    }

    #[test]
    fn only_a_provably_new_blank_partition_is_formatted() {
        let new = Provenance {
            new_allowed: true,
            initialised: false,
        };
        let d = |s, p| decide(s, p, "vda4", "vda");
        assert_eq!(d(DataState::Blank, new), Ok(Action::Format));
        assert_eq!(d(DataState::Clean, new), Ok(Action::Mount));
        assert_eq!(d(DataState::NeedsCheck, new), Ok(Action::Check));
        // Marked initialised, now blank: wiped, refused.
        let marked = Provenance {
            initialised: true,
            ..new
        };
        let e = d(DataState::Blank, marked).unwrap_err();
        assert!(
            e.contains("was initialised") && e.contains("refusing"),
            "{e}"
        );
        assert_eq!(d(DataState::Clean, marked), Ok(Action::Mount));
        // Not provably the booted disk's own: refused.
        let unsure = Provenance {
            new_allowed: false,
            initialised: false,
        };
        let e = d(DataState::Blank, unsure).unwrap_err();
        assert!(e.contains("LoaderDevicePartUUID"), "{e}");
        assert_eq!(d(DataState::Clean, unsure), Ok(Action::Mount));
        // Anything else is never formatted, whatever proves it ours.
        for s in [DataState::Foreign("btrfs"), DataState::Unknown] {
            for p in [new, marked, unsure] {
                let e = d(s, p).unwrap_err();
                assert!(
                    e.contains("refusing") && e.contains("dd if=/dev/zero"),
                    "{e}"
                );
            }
        }
    }
}
