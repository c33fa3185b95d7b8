//! Which disk is the system's own, and which of its partitions are ours.
//!
//! Stage 1 and blessing look only at the disk the system booted from, and
//! on it only at partitions with the Discoverable Partitions type GUID and
//! the image's own partition UUID (both from the GPT, read here): never at
//! GPT names, never at another disk. A second disk, a USB stick with an
//! attacker's `data`, or a decoy `root_a`/`esp` is thus never mounted,
//! grown or formatted.
//!
//! The boot disk is the one holding the ESP that systemd-boot says it was
//! started from: the EFI variable `LoaderDevicePartUUID` ([`Anchor::Loader`],
//! read in stage 1 from efivarfs, mounted read-only just for that). Without
//! the variable (the UKI started by other means), the boot disk is the one
//! disk carrying the image's root partition UUID ([`Anchor::ImageOnly`]),
//! and nothing is formatted. When two disks carry that ESP (or root)
//! partition UUID, a copy of the boot disk is attached: nothing tells which
//! one the firmware read, so stage 1 refuses to go on ([`pick`]'s error).
//!
//! The image's UUIDs come from the UKI's command line (`fluxnode.diskuuid=`,
//! `fluxnode.espuuid=`, `fluxnode.rootuuid=` for the slot, `fluxnode.datauuid=`),
//! which the image builder writes next to the slot and the root hash.

use std::path::{Path, PathBuf};

use super::blockdev::{self, BlockDev};
use super::gpt::{self, Entry};
use crate::cmdline::Cmdline;

/// EFI System Partition.
pub const TYPE_ESP: &str = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
/// Root partition, x86-64 (erofs with its verity hash tree appended).
pub const TYPE_ROOT_X86_64: &str = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709";
/// /var.
pub const TYPE_VAR: &str = "4d21b016-b534-45c2-a9fb-5c16e091fd2d";

/// systemd-boot's variable naming the partition UUID of the ESP it was
/// loaded from.
pub const LOADER_DEVICE_PART_UUID: &str =
    "LoaderDevicePartUUID-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f";

/// The image's disk GUID and partition UUIDs, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// The GPT disk GUID.
    pub disk: [u8; 16],
    /// The ESP's partition UUID.
    pub esp: [u8; 16],
    /// The booted slot's root partition UUID.
    pub root: [u8; 16],
    /// The data partition's UUID.
    pub data: [u8; 16],
}

impl Expected {
    /// Reads `fluxnode.diskuuid=`, `fluxnode.espuuid=`, `fluxnode.rootuuid=`
    /// and `fluxnode.datauuid=`.
    pub fn from_cmdline(c: &Cmdline) -> Result<Expected, String> {
        let get = |key: &str| {
            let v = c
                .get(key)
                .ok_or_else(|| format!("no {key}= on the kernel command line"))?;
            gpt::parse_guid(v).ok_or_else(|| format!("{key}={v:?} is not a GUID"))
        };
        Ok(Expected {
            disk: get("fluxnode.diskuuid")?,
            esp: get("fluxnode.espuuid")?,
            root: get("fluxnode.rootuuid")?,
            data: get("fluxnode.datauuid")?,
        })
    }
}

/// How the boot disk is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Anchor {
    /// systemd-boot named the ESP it was loaded from (its partition UUID).
    Loader([u8; 16]),
    /// No boot loader variable: the one disk carrying the image's root.
    ImageOnly,
}

impl Anchor {
    /// How it reads in messages.
    pub fn describe(&self) -> String {
        match self {
            Anchor::Loader(u) => format!("ESP {} (LoaderDevicePartUUID)", gpt::guid_string(u)),
            Anchor::ImageOnly => {
                "no LoaderDevicePartUUID: the disk with this image's root partition UUID".into()
            }
        }
    }
}

/// One disk's GPT as seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// Kernel name (`vda`).
    pub name: String,
    /// GPT disk GUID.
    pub guid: [u8; 16],
    /// Used entries.
    pub entries: Vec<Entry>,
}

impl Disk {
    fn has(&self, uuid: &[u8; 16], type_guid: &str) -> bool {
        let ty = gpt::parse_guid(type_guid);
        self.entries
            .iter()
            .any(|e| &e.uuid == uuid && Some(e.type_guid) == ty)
    }

    /// The entry with partition UUID `uuid`, which must have type
    /// `type_guid` and be the only one with that UUID on the disk.
    pub fn entry(&self, uuid: &[u8; 16], type_guid: &str, what: &str) -> Result<&Entry, String> {
        let mut it = self.entries.iter().filter(|e| &e.uuid == uuid);
        let e = it.next().ok_or_else(|| {
            format!(
                "the boot disk {} has no {what} partition (UUID {})",
                self.name,
                gpt::guid_string(uuid)
            )
        })?;
        if it.next().is_some() {
            return Err(format!(
                "the boot disk {} has two partitions with UUID {}",
                self.name,
                gpt::guid_string(uuid)
            ));
        }
        if Some(e.type_guid) != gpt::parse_guid(type_guid) {
            return Err(format!(
                "partition {} of {} has the {what} UUID but type {}, not {type_guid}",
                e.index + 1,
                self.name,
                gpt::guid_string(&e.type_guid)
            ));
        }
        Ok(e)
    }
}

/// Picks the boot disk among `disks`: `Ok(None)` while none is seen yet
/// (drivers still probing); an error when two disks match (a copy of the
/// boot disk is attached) — no disk is then used.
pub fn pick<'a>(
    disks: &'a [Disk],
    anchor: &Anchor,
    exp: &Expected,
) -> Result<Option<&'a Disk>, String> {
    let (what, carriers): (String, Vec<&Disk>) = match anchor {
        Anchor::Loader(esp) => (
            format!(
                "the ESP the firmware booted from ({})",
                gpt::guid_string(esp)
            ),
            disks.iter().filter(|d| d.has(esp, TYPE_ESP)).collect(),
        ),
        Anchor::ImageOnly => (
            format!(
                "this image's root partition ({})",
                gpt::guid_string(&exp.root)
            ),
            disks
                .iter()
                .filter(|d| d.has(&exp.root, TYPE_ROOT_X86_64))
                .collect(),
        ),
    };
    match carriers.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        many => {
            let names: Vec<&str> = many.iter().map(|d| d.name.as_str()).collect();
            Err(format!(
                "{} disks ({}) carry {what}: a copy of the boot disk is attached, and nothing tells which one the firmware booted from; using neither (detach the copy, or wipe its partition table, and reboot)",
                names.len(),
                names.join(", ")
            ))
        }
    }
}

/// Reads the GPT of every partitioned disk in `sys` through its node in
/// `dev`. Disks without a readable GPT (MBR, node not there yet) are left
/// out: they are not ours, or not yet.
pub fn scan(sys: &Path, dev: &Path) -> Vec<Disk> {
    blockdev::partitioned_disks(sys)
        .into_iter()
        .filter_map(|name| {
            let node = dev.join(&name);
            let f = std::fs::File::open(&node).ok()?;
            let t = gpt::read_table(&f, &name).ok()?;
            Some(Disk {
                name,
                guid: t.header.disk_guid,
                entries: t.entries,
            })
        })
        .collect()
}

/// A partition found on the boot disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The boot disk (`vda`).
    pub disk: String,
    /// Its disk GUID is the image's.
    pub disk_is_images: bool,
    /// The partition's GPT entry.
    pub entry: Entry,
    /// The partition as sysfs shows it.
    pub dev: BlockDev,
}

/// Finds the partition `uuid` of type `type_guid` on the boot disk now:
/// `Ok(None)` while the disk (or its partition's device) is not there yet.
pub fn find(
    sys: &Path,
    dev: &Path,
    anchor: &Anchor,
    exp: &Expected,
    uuid: &[u8; 16],
    type_guid: &str,
    what: &str,
) -> Result<Option<Found>, String> {
    let disks = scan(sys, dev);
    let Some(disk) = pick(&disks, anchor, exp)? else {
        return Ok(None);
    };
    let entry = disk.entry(uuid, type_guid, what)?.clone();
    let Some(part) = blockdev::partition_of(sys, &disk.name, entry.index + 1) else {
        return Ok(None);
    };
    Ok(Some(Found {
        disk: disk.name.clone(),
        disk_is_images: disk.guid == exp.disk,
        entry,
        dev: part,
    }))
}

/// The ESP with partition UUID `esp` (as `LoaderDevicePartUUID` names it):
/// `Ok(None)` when no disk has it; an error when two do (blessing then
/// renames nothing).
pub fn find_esp(sys: &Path, dev: &Path, esp: &[u8; 16]) -> Result<Option<BlockDev>, String> {
    let disks = scan(sys, dev);
    let exp = Expected {
        disk: [0; 16],
        esp: *esp,
        root: [0; 16],
        data: [0; 16],
    };
    let Some(d) = pick(&disks, &Anchor::Loader(*esp), &exp)? else {
        return Ok(None);
    };
    let e = d.entry(esp, TYPE_ESP, "ESP")?;
    Ok(blockdev::partition_of(sys, &d.name, e.index + 1))
}

/// A device found by [`locate_slots`]: its node and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located {
    /// Kernel name (`vda3`).
    pub devname: String,
    /// The node under the `dev` given (`/dev/vda3`).
    pub node: PathBuf,
    /// Size in bytes, as the kernel sees it.
    pub size: u64,
}

/// A partition found by [`locate_slots`]: the device and its GPT entry
/// (index, partition UUID, name, bounds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocatedPart {
    /// The partition's device.
    pub dev: Located,
    /// Its GPT entry on the boot disk.
    pub entry: Entry,
}

/// What the update client writes to, found the way stage 1 finds the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slots {
    /// The boot disk (the one holding the ESP systemd-boot was loaded from).
    pub disk: Located,
    /// That ESP.
    pub esp: LocatedPart,
    /// The root partition this system runs from (root x86-64 type, the
    /// running slot's partition UUID).
    pub running: LocatedPart,
    /// The one other root x86-64 partition on the boot disk: the slot an
    /// update is written to.
    pub other: LocatedPart,
}

fn located(dev: &Path, b: &BlockDev) -> Located {
    Located {
        devname: b.devname.clone(),
        node: b.node(dev),
        size: b.bytes(),
    }
}

/// Finds the boot disk, its ESP, the running root partition
/// (`running_root`: its partition UUID, `fluxnode.rootuuid=` of the booted
/// UKI) and the other root slot, with the same rules as stage 1: the boot
/// disk is the one holding the ESP named by `LoaderDevicePartUUID` in the
/// (mounted) efivarfs at `efivars`; partitions are matched by type GUID
/// and partition UUID, never by name; nothing on another disk counts.
///
/// Refused (an error saying why): no `LoaderDevicePartUUID` (not booted
/// through systemd-boot, whose boot counting an update relies on); no
/// disk, or two disks, carrying that ESP (a copy of the boot disk is
/// attached); the running root not on the boot disk, or not of the root
/// type, or twice; not exactly one other root x86-64 partition; a
/// partition without its device in sysfs.
pub fn locate_slots(
    sys: &Path,
    dev: &Path,
    efivars: &Path,
    running_root: &[u8; 16],
) -> Result<Slots, String> {
    let esp = match anchor_from(efivars) {
        Anchor::Loader(u) => u,
        Anchor::ImageOnly => {
            return Err(format!(
                "no {LOADER_DEVICE_PART_UUID} in {}: the system was not booted through systemd-boot, whose boot counting an update needs",
                efivars.display()
            ))
        }
    };
    let disks = scan(sys, dev);
    let exp = Expected {
        disk: [0; 16],
        esp,
        root: *running_root,
        data: [0; 16],
    };
    let disk = pick(&disks, &Anchor::Loader(esp), &exp)?.ok_or_else(|| {
        format!(
            "no disk carries the ESP systemd-boot was loaded from ({})",
            gpt::guid_string(&esp)
        )
    })?;
    let part = |e: &Entry, what: &str| -> Result<LocatedPart, String> {
        let b = blockdev::partition_of(sys, &disk.name, e.index + 1).ok_or_else(|| {
            format!(
                "the {what} partition (number {} of {}) has no device in sysfs",
                e.index + 1,
                disk.name
            )
        })?;
        Ok(LocatedPart {
            dev: located(dev, &b),
            entry: e.clone(),
        })
    };
    let esp_part = part(disk.entry(&esp, TYPE_ESP, "ESP")?, "ESP")?;
    let running = part(
        disk.entry(running_root, TYPE_ROOT_X86_64, "running root")?,
        "running root",
    )?;
    let root_type = gpt::parse_guid(TYPE_ROOT_X86_64);
    let others: Vec<&Entry> = disk
        .entries
        .iter()
        .filter(|e| Some(e.type_guid) == root_type && &e.uuid != running_root)
        .collect();
    let other = match others.as_slice() {
        [one] => part(one, "other root")?,
        _ => {
            return Err(format!(
                "the boot disk {} has {} root x86-64 partitions besides the running one ({}), not exactly one: no other slot to update",
                disk.name,
                others.len(),
                running.dev.devname
            ))
        }
    };
    let whole = blockdev::disk(sys, &disk.name)
        .ok_or_else(|| format!("the boot disk {} has no device in sysfs", disk.name))?;
    Ok(Slots {
        disk: located(dev, &whole),
        esp: esp_part,
        running,
        other,
    })
}

/// Decodes an efivarfs file holding a GUID string: 4 bytes of attributes,
/// then UTF-16LE, NUL-terminated.
pub fn decode_guid_var(raw: &[u8]) -> Option<[u8; 16]> {
    let units: Vec<u16> = raw
        .get(4..)?
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    gpt::parse_guid(String::from_utf16(&units).ok()?.trim())
}

/// The anchor from `LoaderDevicePartUUID` in the efivarfs at `efivars`
/// (already mounted).
pub fn anchor_from(efivars: &Path) -> Anchor {
    std::fs::read(efivars.join(LOADER_DEVICE_PART_UUID))
        .ok()
        .and_then(|raw| decode_guid_var(&raw))
        .map_or(Anchor::ImageOnly, Anchor::Loader)
}

/// Stage 1: mounts efivarfs read-only on `efivars` (when it is there and
/// not mounted), reads the anchor, and unmounts again, so stage 2 mounts
/// it as it always did.
pub fn read_anchor(efivars: &Path) -> Anchor {
    if !efivars.is_dir() {
        return Anchor::ImageOnly;
    }
    let Ok(target) = std::ffi::CString::new(efivars.as_os_str().as_encoded_bytes()) else {
        return Anchor::ImageOnly;
    };
    let fs = c"efivarfs";
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let mounted = unsafe {
        libc::mount(
            fs.as_ptr(),
            target.as_ptr(),
            fs.as_ptr(),
            libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
            std::ptr::null(),
        )
    } == 0;
    let anchor = anchor_from(efivars);
    if mounted {
        // SAFETY: a NUL-terminated path.
        unsafe { libc::umount2(target.as_ptr(), 0) };
    }
    anchor
}

/// Where stage 1 reads efivarfs.
pub fn efivars_dir() -> PathBuf {
    PathBuf::from("/sys/firmware/efi/efivars")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn g(s: &str) -> [u8; 16] {
        gpt::parse_guid(s).unwrap()
    }

    fn expected() -> Expected {
        Expected {
            disk: g("11111111-0000-4000-8000-000000000000"),
            esp: g("22222222-0000-4000-8000-000000000000"),
            root: g("33333333-0000-4000-8000-000000000000"),
            data: g("44444444-0000-4000-8000-000000000000"),
        }
    }

    fn entry(index: usize, ty: &str, uuid: [u8; 16], name: &str) -> Entry {
        Entry {
            index,
            first_lba: 2048 * (index as u64 + 1),
            last_lba: 2048 * (index as u64 + 2) - 1,
            name: name.into(),
            type_guid: g(ty),
            uuid,
            attributes: 0,
        }
    }

    /// The image's layout on a disk named `name`.
    fn ours(name: &str) -> Disk {
        let e = expected();
        Disk {
            name: name.into(),
            guid: e.disk,
            entries: vec![
                entry(0, TYPE_ESP, e.esp, "esp"),
                entry(1, TYPE_ROOT_X86_64, e.root, "root_a"),
                entry(
                    2,
                    TYPE_ROOT_X86_64,
                    g("55555555-0000-4000-8000-000000000000"),
                    "root_b",
                ),
                entry(3, TYPE_VAR, e.data, "data"),
            ],
        }
    }

    /// A disk with the image's names and types but its own UUIDs.
    fn decoy(name: &str) -> Disk {
        Disk {
            name: name.into(),
            guid: g("99999999-0000-4000-8000-000000000000"),
            entries: vec![
                entry(
                    0,
                    TYPE_VAR,
                    g("99999999-0000-4000-8000-000000000001"),
                    "data",
                ),
                entry(
                    1,
                    TYPE_ROOT_X86_64,
                    g("99999999-0000-4000-8000-000000000002"),
                    "root_a",
                ),
                entry(
                    2,
                    TYPE_ESP,
                    g("99999999-0000-4000-8000-000000000003"),
                    "esp",
                ),
            ],
        }
    }

    #[test]
    fn the_loader_named_disk_wins_over_names_and_sort_order() {
        let e = expected();
        let disks = vec![decoy("nvme0n1"), decoy("sda"), ours("vda")];
        let a = Anchor::Loader(e.esp);
        let d = pick(&disks, &a, &e).unwrap().unwrap();
        assert_eq!(d.name, "vda");
        assert_eq!(d.entry(&e.data, TYPE_VAR, "data").unwrap().index, 3);
        assert_eq!(d.entry(&e.root, TYPE_ROOT_X86_64, "root").unwrap().index, 1);
        // Without the variable: the one disk with the image's root UUID.
        let d = pick(&disks, &Anchor::ImageOnly, &e).unwrap().unwrap();
        assert_eq!(d.name, "vda");
        // The loader named a disk that is not here (yet): keep waiting.
        assert_eq!(pick(&[decoy("nvme0n1")], &a, &e).unwrap(), None);
        assert_eq!(
            pick(&[decoy("nvme0n1")], &Anchor::ImageOnly, &e).unwrap(),
            None
        );
        // A decoy's own ESP named by the loader: that disk is the boot disk,
        // but it has none of the image's partitions.
        let other = Anchor::Loader(g("99999999-0000-4000-8000-000000000003"));
        let disks = vec![decoy("nvme0n1"), ours("vda")];
        let d = pick(&disks, &other, &e).unwrap().unwrap();
        assert_eq!(d.name, "nvme0n1");
        assert!(d.entry(&e.root, TYPE_ROOT_X86_64, "root").is_err());
    }

    #[test]
    fn a_cloned_disk_is_refused_not_guessed() {
        let e = expected();
        let disks = vec![ours("nvme0n1"), ours("vda")];
        for a in [Anchor::Loader(e.esp), Anchor::ImageOnly] {
            let err = pick(&disks, &a, &e).unwrap_err();
            assert!(
                err.contains("nvme0n1, vda") && err.contains("copy"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_uuid_with_the_wrong_type_or_twice_is_an_error() {
        let e = expected();
        let mut d = ours("vda");
        d.entries[3].type_guid = g(TYPE_ROOT_X86_64);
        assert!(d
            .entry(&e.data, TYPE_VAR, "data")
            .unwrap_err()
            .contains("type"));
        let mut d = ours("vda");
        d.entries.push(entry(4, TYPE_VAR, e.data, "data2"));
        assert!(d
            .entry(&e.data, TYPE_VAR, "data")
            .unwrap_err()
            .contains("two"));
        // An ESP UUID on a partition of another type does not anchor.
        let mut d = ours("vda");
        d.entries[0].type_guid = g(TYPE_VAR);
        assert_eq!(pick(&[d], &Anchor::Loader(e.esp), &e).unwrap(), None);
    }

    #[test]
    fn reads_the_command_line_and_the_variable() {
        let c = Cmdline::parse(
            "fluxnode.diskuuid=11111111-0000-4000-8000-000000000000 fluxnode.espuuid=22222222-0000-4000-8000-000000000000 fluxnode.rootuuid=33333333-0000-4000-8000-000000000000 fluxnode.datauuid=44444444-0000-4000-8000-000000000000",
        );
        assert_eq!(Expected::from_cmdline(&c).unwrap(), expected());
        assert!(
            Expected::from_cmdline(&Cmdline::parse("fluxnode.diskuuid=x"))
                .unwrap_err()
                .contains("fluxnode.diskuuid")
        );
        let d = tempfile::tempdir().unwrap();
        assert_eq!(anchor_from(d.path()), Anchor::ImageOnly);
        // systemd-boot writes it in upper case.
        let mut raw = vec![6, 0, 0, 0];
        for u in "22222222-0000-4000-8000-000000000000"
            .to_uppercase()
            .encode_utf16()
            .chain([0])
        {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        std::fs::write(d.path().join(LOADER_DEVICE_PART_UUID), &raw).unwrap();
        assert_eq!(anchor_from(d.path()), Anchor::Loader(expected().esp));
        for bad in [&[][..], &[6, 0, 0, 0][..], &[6, 0, 0, 0, 0x41, 0][..]] {
            assert_eq!(decode_guid_var(bad), None);
        }
    }

    /// A synthetic 4 MiB disk image: a GPT (primary only) with `parts` as
    /// (type, uuid, name), 1 MiB each from LBA 2048.
    fn gpt_disk(guid: [u8; 16], parts: &[(&str, [u8; 16], &str)]) -> Vec<u8> {
        let mut d = vec![0u8; 4 << 20];
        let mut entries = vec![0u8; 128 * 128];
        for (i, (ty, uuid, name)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[0..16].copy_from_slice(&g(ty));
            e[16..32].copy_from_slice(uuid);
            let first = 2048 + 2048 * i as u64;
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&(first + 2047).to_le_bytes());
            for (j, u) in name.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        h[24..32].copy_from_slice(&1u64.to_le_bytes());
        h[32..40].copy_from_slice(&8191u64.to_le_bytes());
        h[40..48].copy_from_slice(&34u64.to_le_bytes());
        h[48..56].copy_from_slice(&8158u64.to_le_bytes());
        h[56..72].copy_from_slice(&guid);
        h[72..80].copy_from_slice(&2u64.to_le_bytes());
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        h[88..92].copy_from_slice(&gpt::crc32(&entries).to_le_bytes());
        let crc = gpt::crc32(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        d[512..604].copy_from_slice(&h);
        d[1024..1024 + entries.len()].copy_from_slice(&entries);
        d
    }

    /// A fake sysfs and /dev with `disks` as (name, partition count, image).
    fn machine(disks: &[(&str, usize, Vec<u8>)]) -> tempfile::TempDir {
        let t = tempfile::tempdir().unwrap();
        let class = t.path().join("sys/class/block");
        std::fs::create_dir_all(&class).unwrap();
        std::fs::create_dir_all(t.path().join("dev")).unwrap();
        for (disk, n, img) in disks {
            std::fs::write(t.path().join("dev").join(disk), img).unwrap();
            let real = t.path().join("sys/devices/pci/block").join(disk);
            std::fs::create_dir_all(&real).unwrap();
            std::fs::write(
                real.join("uevent"),
                format!("DEVNAME={disk}\nDEVTYPE=disk\n"),
            )
            .unwrap();
            std::fs::write(real.join("dev"), "259:0\n").unwrap();
            std::fs::write(real.join("size"), "8192\n").unwrap();
            std::os::unix::fs::symlink(&real, class.join(disk)).unwrap();
            for i in 1..=*n {
                let sep = if disk.ends_with(|c: char| c.is_ascii_digit()) {
                    "p"
                } else {
                    ""
                };
                let name = format!("{disk}{sep}{i}");
                let p = real.join(&name);
                std::fs::create_dir_all(&p).unwrap();
                std::fs::write(p.join("partition"), format!("{i}\n")).unwrap();
                std::fs::write(p.join("uevent"), format!("DEVNAME={name}\nPARTNAME=data\n"))
                    .unwrap();
                std::fs::write(p.join("dev"), format!("259:{i}\n")).unwrap();
                std::fs::write(p.join("size"), "2048\n").unwrap();
                std::os::unix::fs::symlink(&p, class.join(&name)).unwrap();
            }
        }
        t
    }

    #[test]
    fn finds_the_data_partition_on_synthetic_gpts_of_the_boot_disk_only() {
        let e = expected();
        let ours = gpt_disk(
            e.disk,
            &[
                (TYPE_ESP, e.esp, "esp"),
                (TYPE_ROOT_X86_64, e.root, "root_a"),
                (
                    TYPE_ROOT_X86_64,
                    g("55555555-0000-4000-8000-000000000000"),
                    "root_b",
                ),
                (TYPE_VAR, e.data, "data"),
            ],
        );
        // Issue 11's decoy: `data` first, on a disk that sorts first.
        let decoy = gpt_disk(
            g("99999999-0000-4000-8000-000000000000"),
            &[
                (TYPE_VAR, g("99999999-0000-4000-8000-000000000001"), "data"),
                (
                    TYPE_ROOT_X86_64,
                    g("99999999-0000-4000-8000-000000000002"),
                    "root_a",
                ),
                (TYPE_ESP, g("99999999-0000-4000-8000-000000000003"), "esp"),
            ],
        );
        let mbr = vec![0u8; 1 << 20];
        let m = machine(&[
            ("nvme0n1", 3, decoy.clone()),
            ("sda", 1, mbr),
            ("vda", 4, ours.clone()),
        ]);
        let (sys, dev) = (m.path().join("sys"), m.path().join("dev"));
        let scanned = scan(&sys, &dev);
        let names: Vec<&str> = scanned.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "vda"], "sda has no GPT");
        for a in [Anchor::Loader(e.esp), Anchor::ImageOnly] {
            let f = find(&sys, &dev, &a, &e, &e.data, TYPE_VAR, "data")
                .unwrap()
                .unwrap();
            assert_eq!((f.disk.as_str(), f.dev.devname.as_str()), ("vda", "vda4"));
            assert!(f.disk_is_images);
            let f = find(&sys, &dev, &a, &e, &e.root, TYPE_ROOT_X86_64, "root")
                .unwrap()
                .unwrap();
            assert_eq!(f.dev.devname, "vda2");
        }
        assert_eq!(
            find_esp(&sys, &dev, &e.esp).unwrap().unwrap().devname,
            "vda1"
        );
        // The boot disk not there (yet): nothing, and never the decoy.
        let m = machine(&[("nvme0n1", 3, decoy)]);
        let (sys, dev) = (m.path().join("sys"), m.path().join("dev"));
        assert_eq!(
            find(
                &sys,
                &dev,
                &Anchor::Loader(e.esp),
                &e,
                &e.data,
                TYPE_VAR,
                "data"
            )
            .unwrap(),
            None
        );
        assert_eq!(find_esp(&sys, &dev, &e.esp).unwrap(), None);
        // A clone: refused by both stage 1 and blessing.
        let m = machine(&[("nvme0n1", 4, ours.clone()), ("vda", 4, ours)]);
        let (sys, dev) = (m.path().join("sys"), m.path().join("dev"));
        let err = find(
            &sys,
            &dev,
            &Anchor::Loader(e.esp),
            &e,
            &e.data,
            TYPE_VAR,
            "data",
        )
        .unwrap_err();
        assert!(err.contains("nvme0n1, vda"), "{err}");
        assert!(find_esp(&sys, &dev, &e.esp).is_err());
    }

    /// An efivarfs directory with `LoaderDevicePartUUID` = `esp`.
    fn efivars_with(esp: &str) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        let mut raw = vec![6, 0, 0, 0];
        for u in esp.to_uppercase().encode_utf16().chain([0]) {
            raw.extend_from_slice(&u.to_le_bytes());
        }
        std::fs::write(d.path().join(LOADER_DEVICE_PART_UUID), raw).unwrap();
        d
    }

    #[test]
    fn locates_the_esp_and_both_root_slots_on_the_boot_disk_only() {
        let e = expected();
        let root_b = g("55555555-0000-4000-8000-000000000000");
        let layout = |extra: &[(&'static str, [u8; 16], &'static str)]| {
            let mut parts = vec![
                (TYPE_ESP, e.esp, "esp"),
                (TYPE_ROOT_X86_64, e.root, "root_a"),
                (TYPE_ROOT_X86_64, root_b, "root_b"),
                (TYPE_VAR, e.data, "data"),
            ];
            parts.extend_from_slice(extra);
            gpt_disk(e.disk, &parts)
        };
        // A decoy that sorts first, with root partitions of its own.
        let decoy = gpt_disk(
            g("99999999-0000-4000-8000-000000000000"),
            &[
                (
                    TYPE_ROOT_X86_64,
                    g("99999999-0000-4000-8000-000000000001"),
                    "root_a",
                ),
                (
                    TYPE_ROOT_X86_64,
                    g("99999999-0000-4000-8000-000000000002"),
                    "root_b",
                ),
                (TYPE_ESP, g("99999999-0000-4000-8000-000000000003"), "esp"),
            ],
        );
        let vars = efivars_with("22222222-0000-4000-8000-000000000000");
        let m = machine(&[("nvme0n1", 3, decoy.clone()), ("vda", 4, layout(&[]))]);
        let (sys, dev) = (m.path().join("sys"), m.path().join("dev"));
        let s = locate_slots(&sys, &dev, vars.path(), &e.root).unwrap();
        assert_eq!(
            s.disk,
            Located {
                devname: "vda".into(),
                node: dev.join("vda"),
                size: 8192 * 512
            }
        );
        assert_eq!(s.esp.dev.node, dev.join("vda1"));
        assert_eq!(s.esp.entry.uuid, e.esp);
        assert_eq!(s.running.dev.node, dev.join("vda2"));
        assert_eq!(s.running.dev.size, 2048 * 512);
        assert_eq!(s.running.entry.uuid, e.root);
        assert_eq!(s.other.dev.node, dev.join("vda3"));
        assert_eq!(s.other.entry.uuid, root_b);
        assert_eq!(s.other.entry.name, "root_b");
        // Running from slot b: the other slot is a.
        let s = locate_slots(&sys, &dev, vars.path(), &root_b).unwrap();
        assert_eq!(
            (s.running.dev.devname.as_str(), s.other.dev.devname.as_str()),
            ("vda3", "vda2")
        );
        // The running root must be a root partition of the boot disk.
        for bad in [e.data, g("99999999-0000-4000-8000-000000000001")] {
            assert!(locate_slots(&sys, &dev, vars.path(), &bad).is_err());
        }
        // Not booted through systemd-boot: refused, not guessed.
        let none = tempfile::tempdir().unwrap();
        let err = locate_slots(&sys, &dev, none.path(), &e.root).unwrap_err();
        assert!(err.contains("LoaderDevicePartUUID"), "{err}");
        // The boot disk is not there: the decoy's slots are never offered.
        let m = machine(&[("nvme0n1", 3, decoy)]);
        let (sys, dev) = (m.path().join("sys"), m.path().join("dev"));
        let err = locate_slots(&sys, &dev, vars.path(), &e.root).unwrap_err();
        assert!(err.contains("no disk carries the ESP"), "{err}");
        // A copy of the boot disk attached: neither.
        let m = machine(&[("nvme0n1", 4, layout(&[])), ("vda", 4, layout(&[]))]);
        let (sys, dev) = (m.path().join("sys"), m.path().join("dev"));
        let err = locate_slots(&sys, &dev, vars.path(), &e.root).unwrap_err();
        assert!(err.contains("nvme0n1, vda"), "{err}");
        // Not exactly one other root slot: a third, or none.
        let third = g("66666666-0000-4000-8000-000000000000");
        let m = machine(&[("vda", 5, layout(&[(TYPE_ROOT_X86_64, third, "root_c")]))]);
        let (sys, dev) = (m.path().join("sys"), m.path().join("dev"));
        let err = locate_slots(&sys, &dev, vars.path(), &e.root).unwrap_err();
        assert!(
            err.contains("has 2 root x86-64 partitions besides"),
            "{err}"
        );
        let single = gpt_disk(
            e.disk,
            &[
                (TYPE_ESP, e.esp, "esp"),
                (TYPE_ROOT_X86_64, e.root, "root_a"),
            ],
        );
        let m = machine(&[("vda", 2, single)]);
        let (sys, dev) = (m.path().join("sys"), m.path().join("dev"));
        let err = locate_slots(&sys, &dev, vars.path(), &e.root).unwrap_err();
        assert!(err.contains("has 0 root"), "{err}");
        // The other slot's partition not (yet) in sysfs.
        let m = machine(&[("vda", 2, layout(&[]))]);
        let (sys, dev) = (m.path().join("sys"), m.path().join("dev"));
        let err = locate_slots(&sys, &dev, vars.path(), &e.root).unwrap_err();
        assert!(
            err.contains("other root partition (number 3 of vda)"),
            "{err}"
        );
    }
}
