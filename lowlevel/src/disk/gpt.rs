//! The GPT: reading a disk's table (stage 1 matches partitions by type and
//! partition GUID, [`super::bootdisk`]), growing the `data` partition to
//! the end of the disk on first boot, and setting the attribute bit that
//! records that /var was initialised ([`ATTR_INITIALISED`]).
//!
//! The image is a few hundred MiB; the disk it is flashed onto is usually
//! far larger, and everything past the image's end would be lost to /var.
//! Before formatting a blank `data`, stage 1 reads the GPT, and when `data`
//! is the last partition and the disk has room after it, extends it to the
//! last usable sector, rewrites both GPT copies (backup first, at the
//! disk's real end, so a power cut leaves one valid copy of the table at
//! every moment), and tells the kernel the new size (BLKPG).
//!
//! Only a blank `data` is grown: a formatted one is never touched here.
//! Setting an attribute bit rewrites both copies the same way (backup
//! first), leaving every partition's bounds as they are.
//! The parser takes the disk's bytes as they are (outside input); it has a
//! fuzz target (`init/fuzz`, `boot_files`, through init's re-export).

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

/// What stops a grow (the partition is then formatted at its size).
#[derive(Debug, thiserror::Error)]
pub enum GptError {
    /// The bytes are not a GPT this code can change safely.
    #[error("not a usable GPT: {0}")]
    Invalid(&'static str),
    /// Reading or writing the disk failed.
    #[error("{what} {dev}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The disk.
        dev: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The GPT header fields this code uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Header size in bytes (92 in every GPT written so far).
    pub size: u32,
    /// LBA of this header, and of the other copy.
    pub my_lba: u64,
    /// LBA of the other copy.
    pub alternate_lba: u64,
    /// First and last LBA partitions may use.
    pub first_usable: u64,
    /// Last usable LBA.
    pub last_usable: u64,
    /// Where this copy's partition entries start.
    pub entries_lba: u64,
    /// Number of entries, and the size of each.
    pub num_entries: u32,
    /// Entry size in bytes.
    pub entry_size: u32,
    /// The disk GUID (on-disk byte order).
    pub disk_guid: [u8; 16],
}

/// One partition entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Index in the table (0-based).
    pub index: usize,
    /// First and last LBA (inclusive).
    pub first_lba: u64,
    /// Last LBA (inclusive).
    pub last_lba: u64,
    /// The partition's name (UTF-16LE in the table).
    pub name: String,
    /// Partition type GUID (on-disk byte order; [`guid_string`] prints it).
    pub type_guid: [u8; 16],
    /// Unique partition GUID (on-disk byte order).
    pub uuid: [u8; 16],
    /// Attribute bits.
    pub attributes: u64,
}

/// The GPT attribute bit (type-specific range 48-63; the Discoverable
/// Partitions Specification uses 59, 60 and 63 for /var) that fluxnode sets
/// on the data partition once it holds /var's file system: a later boot
/// that finds the bit set and no file system refuses to format.
pub const ATTR_INITIALISED: u64 = 1 << 56;

/// A GUID as text (lowercase, `8-4-4-4-12`) from its on-disk bytes: the
/// first three groups are stored little-endian.
pub fn guid_string(b: &[u8; 16]) -> String {
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
        b[14], b[15]
    )
}

/// The on-disk bytes of a GUID written as text (either case); `None` when
/// it is not one.
pub fn parse_guid(s: &str) -> Option<[u8; 16]> {
    let groups: Vec<&str> = s.split('-').collect();
    let lens: Vec<usize> = groups.iter().map(|g| g.len()).collect();
    if lens != [8, 4, 4, 4, 12] {
        return None;
    }
    let hex: String = groups.concat();
    if !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let mut t = [0u8; 16];
    for (i, out) in t.iter_mut().enumerate() {
        *out = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some([
        t[3], t[2], t[1], t[0], t[5], t[4], t[7], t[6], t[8], t[9], t[10], t[11], t[12], t[13],
        t[14], t[15],
    ])
}

/// A planned grow: the bytes to write, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The partition grown (0-based index) and its new last LBA.
    pub index: usize,
    /// Its first LBA.
    pub first_lba: u64,
    /// Its old and new last LBA.
    pub old_last: u64,
    /// New last LBA.
    pub new_last: u64,
    /// (byte offset, bytes), in the order to write them: backup entries,
    /// backup header, primary entries, primary header.
    pub writes: Vec<(u64, Vec<u8>)>,
}

/// CRC-32 (IEEE 802.3, reflected), as the GPT uses.
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn guid_at(b: &[u8], at: usize) -> [u8; 16] {
    let mut g = [0u8; 16];
    g.copy_from_slice(&b[at..at + 16]);
    g
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Parses and checks a GPT header (the sector at LBA 1 or the last one).
pub fn parse_header(sector: &[u8]) -> Result<Header, GptError> {
    if sector.len() < 92 || &sector[0..8] != b"EFI PART" {
        return Err(GptError::Invalid("no GPT signature"));
    }
    let size = u32_at(sector, 12);
    if !(92..=512).contains(&size) || size as usize > sector.len() {
        return Err(GptError::Invalid("header size out of range"));
    }
    let mut copy = sector[..size as usize].to_vec();
    copy[16..20].fill(0);
    if crc32(&copy) != u32_at(sector, 16) {
        return Err(GptError::Invalid("header checksum mismatch"));
    }
    let h = Header {
        size,
        my_lba: u64_at(sector, 24),
        alternate_lba: u64_at(sector, 32),
        first_usable: u64_at(sector, 40),
        last_usable: u64_at(sector, 48),
        entries_lba: u64_at(sector, 72),
        num_entries: u32_at(sector, 80),
        entry_size: u32_at(sector, 84),
        disk_guid: guid_at(sector, 56),
    };
    if h.entry_size < 128 || !h.entry_size.is_multiple_of(8) || h.entry_size > 4096 {
        return Err(GptError::Invalid("entry size out of range"));
    }
    if h.num_entries == 0 || h.num_entries > 4096 {
        return Err(GptError::Invalid("entry count out of range"));
    }
    if h.first_usable > h.last_usable {
        return Err(GptError::Invalid("usable range is empty"));
    }
    Ok(h)
}

/// Bytes of the entry array.
fn entries_len(h: &Header) -> usize {
    h.num_entries as usize * h.entry_size as usize
}

/// Parses the entry array (checked against the header's CRC); unused
/// entries (zero type GUID) are left out.
pub fn parse_entries(
    h: &Header,
    header_sector: &[u8],
    bytes: &[u8],
) -> Result<Vec<Entry>, GptError> {
    let len = entries_len(h);
    if bytes.len() < len {
        return Err(GptError::Invalid("entry array cut short"));
    }
    if crc32(&bytes[..len]) != u32_at(header_sector, 88) {
        return Err(GptError::Invalid("entry array checksum mismatch"));
    }
    let mut out = Vec::new();
    for (index, e) in bytes[..len].chunks_exact(h.entry_size as usize).enumerate() {
        if e[0..16].iter().all(|&b| b == 0) {
            continue;
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        let (first_lba, last_lba) = (u64_at(e, 32), u64_at(e, 40));
        if first_lba > last_lba {
            return Err(GptError::Invalid("an entry ends before it starts"));
        }
        out.push(Entry {
            index,
            first_lba,
            last_lba,
            name: String::from_utf16_lossy(&units),
            type_guid: guid_at(e, 0),
            uuid: guid_at(e, 16),
            attributes: u64_at(e, 48),
        });
    }
    Ok(out)
}

fn header_bytes(template: &[u8], h: &Header, entries_crc: u32) -> Vec<u8> {
    let mut b = template[..h.size as usize].to_vec();
    b[24..32].copy_from_slice(&h.my_lba.to_le_bytes());
    b[32..40].copy_from_slice(&h.alternate_lba.to_le_bytes());
    b[48..56].copy_from_slice(&h.last_usable.to_le_bytes());
    b[72..80].copy_from_slice(&h.entries_lba.to_le_bytes());
    b[88..92].copy_from_slice(&entries_crc.to_le_bytes());
    b[16..20].fill(0);
    let crc = crc32(&b);
    b[16..20].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Plans growing the partition named `name`: [`plan_grow_at`] for the
/// first entry of that name (kept for the fuzz target and old callers).
pub fn plan_grow(
    header_sector: &[u8],
    entries: &[u8],
    disk_sectors: u64,
    sector: u64,
    name: &str,
    min_gain: u64,
) -> Result<Option<Plan>, GptError> {
    let h = parse_header(header_sector)?;
    let list = parse_entries(&h, header_sector, entries)?;
    let Some(part) = list.iter().find(|e| e.name == name) else {
        return Err(GptError::Invalid("no partition with that name"));
    };
    plan_grow_at(
        header_sector,
        entries,
        disk_sectors,
        sector,
        part.index,
        min_gain,
    )
}

/// Plans growing the partition at table index `index` to the disk's last
/// usable sector. `None` when there is nothing to do: it is not the last
/// partition, or the disk has less than `min_gain` sectors more for it.
/// `header_sector` is LBA 1, `entries` the primary entry array,
/// `disk_sectors` the disk's size in sectors of `sector` bytes.
pub fn plan_grow_at(
    header_sector: &[u8],
    entries: &[u8],
    disk_sectors: u64,
    sector: u64,
    index: usize,
    min_gain: u64,
) -> Result<Option<Plan>, GptError> {
    let (h, list, part) = primary_with(header_sector, entries, index)?;
    if list.iter().any(|e| e.first_lba > part.first_lba) {
        return Ok(None);
    }
    let entry_sectors = (entries_len(&h) as u64).div_ceil(sector);
    // The backup: entries right before the last sector, header in it.
    let Some(backup_header) = disk_sectors.checked_sub(1) else {
        return Err(GptError::Invalid("empty disk"));
    };
    let Some(backup_entries) = backup_header.checked_sub(entry_sectors) else {
        return Err(GptError::Invalid("disk smaller than its table"));
    };
    let new_last_usable = backup_entries - 1;
    if new_last_usable < part.last_lba.saturating_add(min_gain) || h.alternate_lba >= disk_sectors {
        return Ok(None);
    }
    let mut new_entries = entries[..entries_len(&h)].to_vec();
    let at = part.index * h.entry_size as usize + 40;
    new_entries[at..at + 8].copy_from_slice(&new_last_usable.to_le_bytes());
    let writes = rewrite(
        &h,
        header_sector,
        new_entries,
        sector,
        backup_header,
        new_last_usable,
        part.first_lba,
    )?;
    Ok(Some(Plan {
        index: part.index,
        first_lba: part.first_lba,
        old_last: part.last_lba,
        new_last: new_last_usable,
        writes,
    }))
}

/// Plans setting attribute `bits` on the partition at table index
/// `index`, both copies rewritten where they are (the backup at the
/// header's alternate LBA, its entries right before it, as every GPT tool
/// lays them out). `None` when the bits are set already.
pub fn plan_set_attributes(
    header_sector: &[u8],
    entries: &[u8],
    disk_sectors: u64,
    sector: u64,
    index: usize,
    bits: u64,
) -> Result<Option<Plan>, GptError> {
    let (h, list, part) = primary_with(header_sector, entries, index)?;
    if part.attributes & bits == bits {
        return Ok(None);
    }
    if h.alternate_lba >= disk_sectors || h.alternate_lba <= h.last_usable {
        return Err(GptError::Invalid(
            "the backup header is not past the partitions",
        ));
    }
    let first = list
        .iter()
        .map(|e| e.first_lba)
        .min()
        .unwrap_or(h.first_usable);
    let mut new_entries = entries[..entries_len(&h)].to_vec();
    let at = part.index * h.entry_size as usize + 48;
    new_entries[at..at + 8].copy_from_slice(&(part.attributes | bits).to_le_bytes());
    let writes = rewrite(
        &h,
        header_sector,
        new_entries,
        sector,
        h.alternate_lba,
        h.last_usable,
        first,
    )?;
    Ok(Some(Plan {
        index: part.index,
        first_lba: part.first_lba,
        old_last: part.last_lba,
        new_last: part.last_lba,
        writes,
    }))
}

/// The primary header, its entries, and the partition at table `index`:
/// what every plan that rewrites the table starts from.
fn primary_with(
    header_sector: &[u8],
    entries: &[u8],
    index: usize,
) -> Result<(Header, Vec<Entry>, Entry), GptError> {
    let h = parse_header(header_sector)?;
    if h.my_lba != 1 {
        return Err(GptError::Invalid("the primary header is not at LBA 1"));
    }
    let list = parse_entries(&h, header_sector, entries)?;
    let Some(part) = list.iter().find(|e| e.index == index).cloned() else {
        return Err(GptError::Invalid("no partition at that index"));
    };
    Ok((h, list, part))
}

/// The four writes that replace both copies of the table: backup entries
/// (right before `backup_header`), backup header, primary entries,
/// primary header. `first_part` is the first partition's LBA: the entry
/// arrays must end before it and after the partitions.
fn rewrite(
    h: &Header,
    header_sector: &[u8],
    new_entries: Vec<u8>,
    sector: u64,
    backup_header: u64,
    last_usable: u64,
    first_part: u64,
) -> Result<Vec<(u64, Vec<u8>)>, GptError> {
    let entry_sectors = (new_entries.len() as u64).div_ceil(sector);
    let Some(backup_entries) = backup_header.checked_sub(entry_sectors) else {
        return Err(GptError::Invalid("disk smaller than its table"));
    };
    if backup_entries <= last_usable {
        return Err(GptError::Invalid(
            "the backup entry array overlaps a partition",
        ));
    }
    // A table that reaches past the new backup would be overwritten.
    if h.entries_lba.saturating_add(entry_sectors) > first_part {
        return Err(GptError::Invalid("the entry array overlaps a partition"));
    }
    let Some(entries_at) = h.entries_lba.checked_mul(sector) else {
        return Err(GptError::Invalid("entry array beyond any disk"));
    };
    let entries_crc = crc32(&new_entries);
    let primary = Header {
        last_usable,
        alternate_lba: backup_header,
        ..h.clone()
    };
    let backup = Header {
        my_lba: backup_header,
        alternate_lba: 1,
        entries_lba: backup_entries,
        last_usable,
        ..h.clone()
    };
    let pad = |mut b: Vec<u8>| {
        b.resize(sector as usize, 0);
        b
    };
    Ok(vec![
        (backup_entries * sector, new_entries.clone()),
        (
            backup_header * sector,
            pad(header_bytes(header_sector, &backup, entries_crc)),
        ),
        (entries_at, new_entries),
        (
            sector,
            pad(header_bytes(header_sector, &primary, entries_crc)),
        ),
    ])
}

/// A disk's table as read: the primary header's sector, the entry array,
/// the parsed header and entries, and the disk's size.
#[derive(Debug, Clone)]
pub struct Table {
    /// The header's sector as on disk.
    pub header_sector: Vec<u8>,
    /// The entry array as on disk.
    pub entries_bytes: Vec<u8>,
    /// The header.
    pub header: Header,
    /// The used entries.
    pub entries: Vec<Entry>,
    /// Logical sector size in bytes.
    pub sector: u64,
    /// Size in sectors.
    pub sectors: u64,
}

fn blk_size(f: &std::fs::File) -> Option<(u64, u64)> {
    let mut bytes: u64 = 0;
    let mut ssz: libc::c_int = 0;
    // SAFETY: BLKGETSIZE64 writes a u64, BLKSSZGET an int, into locals.
    unsafe {
        if libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut bytes) != 0
            || libc::ioctl(f.as_raw_fd(), BLKSSZGET, &mut ssz) != 0
        {
            return None;
        }
    }
    Some((bytes, u64::try_from(ssz).unwrap_or(512).max(512)))
}

/// Reads the GPT of `f` (a block device, or in tests a regular file of
/// 512-byte sectors): the primary copy, or the backup when the primary is
/// damaged (as the kernel does; only the primary may then be written).
pub fn read_table(f: &std::fs::File, dev: &str) -> Result<Table, GptError> {
    let io = |what: &'static str| {
        let dev = dev.to_string();
        move |source| GptError::Io { what, dev, source }
    };
    let (bytes, sector) = match blk_size(f) {
        Some(s) => s,
        None => (f.metadata().map_err(io("asking the size of"))?.len(), 512),
    };
    let sectors = bytes / sector;
    let read_copy = |lba: u64| -> Result<Table, GptError> {
        let mut head = vec![0u8; sector as usize];
        let at = lba
            .checked_mul(sector)
            .ok_or(GptError::Invalid("header beyond any disk"))?;
        f.read_exact_at(&mut head, at)
            .map_err(io("reading the GPT of"))?;
        let header = parse_header(&head)?;
        if header.my_lba != lba {
            return Err(GptError::Invalid("the header is not where it says"));
        }
        let mut entries_bytes = vec![0u8; entries_len(&header)];
        let at = header
            .entries_lba
            .checked_mul(sector)
            .ok_or(GptError::Invalid("entry array beyond any disk"))?;
        f.read_exact_at(&mut entries_bytes, at)
            .map_err(io("reading the GPT entries of"))?;
        let entries = parse_entries(&header, &head, &entries_bytes)?;
        Ok(Table {
            header_sector: head,
            entries_bytes,
            header,
            entries,
            sector,
            sectors,
        })
    };
    match read_copy(1) {
        Ok(t) => Ok(t),
        Err(e) => match sectors.checked_sub(1) {
            Some(last) if last > 1 => read_copy(last).map_err(|_| e),
            _ => Err(e),
        },
    }
}

fn open_rw(disk: &Path) -> Result<std::fs::File, GptError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(disk)
        .map_err(|source| GptError::Io {
            what: "opening",
            dev: disk.display().to_string(),
            source,
        })
}

fn apply(f: &std::fs::File, dev: &str, plan: &Plan) -> Result<(), GptError> {
    let io = |what: &'static str| {
        let dev = dev.to_string();
        move |source| GptError::Io { what, dev, source }
    };
    for (off, data) in &plan.writes {
        f.write_all_at(data, *off)
            .map_err(io("writing the GPT of"))?;
        // Each copy on the disk before the next is touched.
        f.sync_all().map_err(io("syncing"))?;
    }
    Ok(())
}

/// Grows the partition at table index `index` of the disk at `disk` (a
/// /dev node) when it is the last one and the disk has at least 64 MiB more
/// for it. Returns (old, new) size in MiB when it grew.
pub fn grow(disk: &Path, index: usize) -> Result<Option<(u64, u64)>, GptError> {
    let dev = disk.display().to_string();
    let f = open_rw(disk)?;
    let t = read_table(&f, &dev)?;
    if t.header.my_lba != 1 {
        return Err(GptError::Invalid("the primary GPT is damaged"));
    }
    let min_gain = (64 << 20) / t.sector;
    let Some(plan) = plan_grow_at(
        &t.header_sector,
        &t.entries_bytes,
        t.sectors,
        t.sector,
        index,
        min_gain,
    )?
    else {
        return Ok(None);
    };
    apply(&f, &dev, &plan)?;
    resize_in_kernel(&f, &plan, t.sector).map_err(|source| GptError::Io {
        what: "telling the kernel the new size of",
        dev: dev.clone(),
        source,
    })?;
    let mib = |last: u64| ((last + 1 - plan.first_lba) * t.sector) >> 20;
    Ok(Some((mib(plan.old_last), mib(plan.new_last))))
}

/// Sets attribute `bits` on the partition at table index `index` of the
/// disk at `disk`; false when they were set already.
pub fn set_attributes(disk: &Path, index: usize, bits: u64) -> Result<bool, GptError> {
    let dev = disk.display().to_string();
    let f = open_rw(disk)?;
    let t = read_table(&f, &dev)?;
    if t.header.my_lba != 1 {
        return Err(GptError::Invalid("the primary GPT is damaged"));
    }
    let Some(plan) = plan_set_attributes(
        &t.header_sector,
        &t.entries_bytes,
        t.sectors,
        t.sector,
        index,
        bits,
    )?
    else {
        return Ok(false);
    };
    apply(&f, &dev, &plan)?;
    Ok(true)
}

// <linux/fs.h>: _IOR(0x12, 114, size_t) and _IO(0x12, 104); BLKPG _IO(0x12, 105).
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKSSZGET: libc::c_ulong = 0x1268;
const BLKPG: libc::c_ulong = 0x1269;
const BLKPG_RESIZE_PARTITION: libc::c_int = 3;

#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [u8; 64],
    volname: [u8; 64],
}

#[repr(C)]
struct BlkpgIoctlArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

fn resize_in_kernel(f: &std::fs::File, plan: &Plan, sector: u64) -> std::io::Result<()> {
    let as_i64 = |v: u64| i64::try_from(v).map_err(|_| std::io::Error::other("size out of range"));
    let mut part = BlkpgPartition {
        start: as_i64(plan.first_lba * sector)?,
        length: as_i64((plan.new_last + 1 - plan.first_lba) * sector)?,
        pno: i32::try_from(plan.index + 1).map_err(|_| std::io::Error::other("index"))?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let mut arg = BlkpgIoctlArg {
        op: BLKPG_RESIZE_PARTITION,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: arg points at a valid blkpg_partition for the call's duration.
    if unsafe { libc::ioctl(f.as_raw_fd(), BLKPG, &mut arg) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const S: u64 = 512;

    /// A disk of `sectors` with a GPT of 128 entries: `parts` as (name, first, last).
    fn disk(sectors: u64, parts: &[(&str, u64, u64)]) -> Vec<u8> {
        let mut d = vec![0u8; (sectors * S) as usize];
        let mut entries = vec![0u8; 128 * 128];
        for (i, (name, first, last)) in parts.iter().enumerate() {
            let e = &mut entries[i * 128..(i + 1) * 128];
            e[0] = 0xAF; // a type GUID
            e[16] = i as u8 + 1;
            e[32..40].copy_from_slice(&first.to_le_bytes());
            e[40..48].copy_from_slice(&last.to_le_bytes());
            for (j, u) in name.encode_utf16().enumerate() {
                e[56 + 2 * j..58 + 2 * j].copy_from_slice(&u.to_le_bytes());
            }
        }
        let crc = crc32(&entries);
        let mut h = vec![0u8; 92];
        h[0..8].copy_from_slice(b"EFI PART");
        h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
        h[12..16].copy_from_slice(&92u32.to_le_bytes());
        let hdr = Header {
            size: 92,
            my_lba: 1,
            alternate_lba: sectors - 1,
            first_usable: 34,
            last_usable: sectors - 34,
            entries_lba: 2,
            num_entries: 128,
            entry_size: 128,
            disk_guid: [0x5a; 16],
        };
        h[40..48].copy_from_slice(&hdr.first_usable.to_le_bytes());
        h[56..72].copy_from_slice(&hdr.disk_guid);
        h[80..84].copy_from_slice(&128u32.to_le_bytes());
        h[84..88].copy_from_slice(&128u32.to_le_bytes());
        let h = header_bytes(&h, &hdr, crc);
        d[S as usize..S as usize + 92].copy_from_slice(&h);
        d[2 * S as usize..2 * S as usize + entries.len()].copy_from_slice(&entries);
        d
    }

    fn apply(d: &mut Vec<u8>, plan: &Plan) {
        for (off, data) in &plan.writes {
            let off = *off as usize;
            if d.len() < off + data.len() {
                d.resize(off + data.len(), 0);
            }
            d[off..off + data.len()].copy_from_slice(data);
        }
    }

    fn plan(d: &[u8], sectors: u64, name: &str) -> Result<Option<Plan>, GptError> {
        plan_grow(&d[512..1024], &d[1024..1024 + 16384], sectors, S, name, 100)
    }

    #[test]
    fn grows_the_last_partition_to_the_end_and_moves_the_backup() {
        let parts = [("esp", 34, 1000), ("data", 1001, 2000)];
        let mut d = disk(2100, &parts);
        // Flashed onto a disk of 10000 sectors.
        d.resize(10000 * 512, 0);
        let p = plan(&d, 10000, "data").unwrap().unwrap();
        assert_eq!((p.index, p.old_last, p.new_last), (1, 2000, 10000 - 34));
        apply(&mut d, &p);
        // Both copies parse, agree, and point at each other.
        let prim = parse_header(&d[512..1024]).unwrap();
        let back_at = (prim.alternate_lba * S) as usize;
        let back = parse_header(&d[back_at..back_at + 512]).unwrap();
        assert_eq!(
            (prim.alternate_lba, back.my_lba, back.alternate_lba),
            (9999, 9999, 1)
        );
        assert_eq!(prim.last_usable, 9966);
        let be = (back.entries_lba * S) as usize;
        let got = parse_entries(&back, &d[back_at..back_at + 512], &d[be..be + 16384]).unwrap();
        assert_eq!(got[1].last_lba, 9966);
        assert_eq!(got[0].last_lba, 1000);
        let pe = parse_entries(&prim, &d[512..1024], &d[1024..1024 + 16384]).unwrap();
        assert_eq!(pe, got);
        // Grown once: nothing more to do.
        assert_eq!(plan(&d, 10000, "data").unwrap(), None);
    }

    #[test]
    fn leaves_alone_what_it_should_not_grow() {
        // Not the last partition.
        let d = disk(10000, &[("data", 34, 1000), ("root", 1001, 2000)]);
        assert_eq!(plan(&d, 10000, "data").unwrap(), None);
        // Too little to gain.
        let d = disk(2100, &[("data", 34, 2000)]);
        assert_eq!(plan(&d, 2100, "data").unwrap(), None);
        // No such partition, or a damaged table: an error, nothing written.
        assert!(plan(&d, 2100, "nope").is_err());
        let mut bad = d.clone();
        bad[1024 + 40] ^= 1;
        assert!(matches!(
            plan(&bad, 2100, "data"),
            Err(GptError::Invalid(_))
        ));
        let mut bad = d.clone();
        bad[512 + 48] ^= 1;
        assert!(matches!(
            plan(&bad, 2100, "data"),
            Err(GptError::Invalid(_))
        ));
    }

    #[test]
    fn sets_an_attribute_bit_in_both_copies_and_only_once() {
        let parts = [("esp", 34, 1000), ("data", 1001, 2000)];
        let mut d = disk(2100, &parts);
        let p = plan_set_attributes(
            &d[512..1024],
            &d[1024..1024 + 16384],
            2100,
            S,
            1,
            ATTR_INITIALISED,
        )
        .unwrap()
        .unwrap();
        apply(&mut d, &p);
        let prim = parse_header(&d[512..1024]).unwrap();
        let back_at = (prim.alternate_lba * S) as usize;
        let back = parse_header(&d[back_at..back_at + 512]).unwrap();
        let be = (back.entries_lba * S) as usize;
        let pe = parse_entries(&prim, &d[512..1024], &d[1024..1024 + 16384]).unwrap();
        let bk = parse_entries(&back, &d[back_at..back_at + 512], &d[be..be + 16384]).unwrap();
        assert_eq!(pe, bk);
        assert_eq!(pe[1].attributes, ATTR_INITIALISED);
        assert_eq!(pe[0].attributes, 0);
        // Bounds unchanged, and nothing to do a second time.
        assert_eq!((pe[1].first_lba, pe[1].last_lba), (1001, 2000));
        assert_eq!(prim.last_usable, 2100 - 34);
        assert_eq!(
            plan_set_attributes(
                &d[512..1024],
                &d[1024..1024 + 16384],
                2100,
                S,
                1,
                ATTR_INITIALISED
            )
            .unwrap(),
            None
        );
        // No entry at that index.
        assert!(plan_set_attributes(&d[512..1024], &d[1024..1024 + 16384], 2100, S, 7, 1).is_err());
    }

    #[test]
    fn reads_a_table_from_a_file_and_falls_back_to_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let parts = [("esp", 34, 1000), ("data", 1001, 2000)];
        let mut d = disk(2100, &parts);
        // Give it a backup copy, as every real table has.
        let p = plan_set_attributes(&d[512..1024], &d[1024..1024 + 16384], 2100, S, 0, 1)
            .unwrap()
            .unwrap();
        apply(&mut d, &p);
        let path = dir.path().join("disk");
        std::fs::write(&path, &d).unwrap();
        let t = read_table(&std::fs::File::open(&path).unwrap(), "disk").unwrap();
        assert_eq!(t.header.my_lba, 1);
        assert_eq!(t.entries.len(), 2);
        assert_eq!(t.header.disk_guid, [0x5a; 16]);
        assert_eq!(t.entries[0].attributes, 1);
        // Primary destroyed: the backup is read.
        d[512..1024].fill(0);
        std::fs::write(&path, &d).unwrap();
        let t = read_table(&std::fs::File::open(&path).unwrap(), "disk").unwrap();
        assert_eq!(t.header.my_lba, 2099);
        assert_eq!(t.entries.len(), 2);
        // Not a GPT at all.
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        assert!(read_table(&std::fs::File::open(&path).unwrap(), "disk").is_err());
    }

    #[test]
    fn guids_print_and_parse_in_mixed_endian() {
        let esp = "c12a7328-f81f-11d2-ba4b-00a0c93ec93b";
        let b = parse_guid(esp).unwrap();
        // The on-disk bytes of the ESP type, as every GPT holds them.
        assert_eq!(&b[..4], &[0x28, 0x73, 0x2a, 0xc1]);
        assert_eq!(guid_string(&b), esp);
        assert_eq!(parse_guid(&esp.to_uppercase()), Some(b));
        for bad in [
            "",
            "c12a7328",
            "c12a7328-f81f-11d2-ba4b-00a0c93ec93",
            "g12a7328-f81f-11d2-ba4b-00a0c93ec93b",
            "c12a7328f81f-11d2-ba4b-00a0c93ec93b-",
        ] {
            assert_eq!(parse_guid(bad), None, "{bad}");
        }
    }

    #[test]
    fn crc_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn odd_headers_are_refused_not_panicked_on() {
        for len in [0, 8, 91, 92, 512] {
            let mut b = vec![0u8; len];
            if len >= 8 {
                b[0..8].copy_from_slice(b"EFI PART");
            }
            assert!(parse_header(&b).is_err());
        }
        let _ = plan_grow(&[0u8; 512], &[], 0, 512, "data", 0);
    }
}
