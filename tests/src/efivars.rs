//! Setting a UEFI variable in a stopped machine's OVMF variable store, from
//! the host: what a root process on the node does with `bootctl
//! set-oneshot` (the appliance keeps efivarfs read-only, so the tests play
//! that attacker from outside). The store is edk2's authenticated variable
//! format: a firmware volume header, a variable store header, then
//! variables (a 60-byte header, the UTF-16 name, the data) each aligned to
//! 4 bytes, and 0xFF after the last. A new variable is appended; an older
//! live one of the same name and vendor is marked deleted, as the firmware
//! itself does.

use std::path::Path;

/// systemd-boot's vendor GUID (4a67b082-0a4c-41cf-b6c7-440b29bb8c4f), as stored.
pub const LOADER_GUID: [u8; 16] = guid(
    0x4a67_b082,
    0x0a4c,
    0x41cf,
    [0xb6, 0xc7, 0x44, 0x0b, 0x29, 0xbb, 0x8c, 0x4f],
);

/// edk2's authenticated variable store GUID (aaf32c78-947b-439a-a180-2e144ec37792).
const AUTH_STORE: [u8; 16] = guid(
    0xaaf3_2c78,
    0x947b,
    0x439a,
    [0xa1, 0x80, 0x2e, 0x14, 0x4e, 0xc3, 0x77, 0x92],
);

const HEADER: usize = 60;
const VAR_ADDED: u8 = 0x3F;
const VAR_DELETED: u8 = 0xFD;
/// Non-volatile, boot-service and runtime access.
const ATTRS: u32 = 0x7;

const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn utf16z(s: &str) -> Vec<u8> {
    s.encode_utf16()
        .chain(std::iter::once(0))
        .flat_map(u16::to_le_bytes)
        .collect()
}

/// Sets variable `name` of `vendor` to `data` in the store `fd` (in place).
pub fn set(fd: &[u8], vendor: [u8; 16], name: &str, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut b = fd.to_vec();
    if b.get(40..44) != Some(b"_FVH") {
        return Err("not a firmware volume (no _FVH)".into());
    }
    let hl = usize::from(u16_at(&b, 48).ok_or("short header")?);
    if b.get(hl..hl + 16) != Some(&AUTH_STORE[..]) {
        return Err("not an authenticated variable store".into());
    }
    let store_end = hl + u32_at(&b, hl + 16).ok_or("short store header")? as usize;
    let wname = utf16z(name);
    let mut off = (hl + 28 + 3) & !3;
    while u16_at(&b, off) == Some(0x55AA) {
        let ns = u32_at(&b, off + 36).ok_or("short variable")? as usize;
        let ds = u32_at(&b, off + 40).ok_or("short variable")? as usize;
        if b[off + 2] == VAR_ADDED
            && b.get(off + 44..off + 60) == Some(&vendor[..])
            && b.get(off + HEADER..off + HEADER + ns) == Some(&wname[..])
        {
            b[off + 2] &= VAR_DELETED;
        }
        off = (off + HEADER + ns + ds + 3) & !3;
    }
    let need = HEADER + wname.len() + data.len();
    let free = b
        .get(off..(off + need).min(store_end))
        .is_some_and(|r| r.len() == need && r.iter().all(|&x| x == 0xFF));
    if !free {
        return Err(format!("no room for {name} at 0x{off:x} in the store"));
    }
    let mut h = vec![0u8; HEADER];
    h[0..2].copy_from_slice(&0x55AAu16.to_le_bytes());
    h[2] = VAR_ADDED;
    h[4..8].copy_from_slice(&ATTRS.to_le_bytes());
    h[36..40].copy_from_slice(&(wname.len() as u32).to_le_bytes());
    h[40..44].copy_from_slice(&(data.len() as u32).to_le_bytes());
    h[44..60].copy_from_slice(&vendor);
    b[off..off + HEADER].copy_from_slice(&h);
    b[off + HEADER..off + HEADER + wname.len()].copy_from_slice(&wname);
    b[off + HEADER + wname.len()..off + need].copy_from_slice(data);
    Ok(b)
}

/// `bootctl set-oneshot ENTRY` on the stopped machine's variable file.
pub fn set_oneshot(vars: &Path, entry: &str) -> Result<(), String> {
    let fd = std::fs::read(vars).map_err(|e| format!("{}: {e}", vars.display()))?;
    let out = set(&fd, LOADER_GUID, "LoaderEntryOneShot", &utf16z(entry))
        .map_err(|e| format!("{}: {e}", vars.display()))?;
    std::fs::write(vars, out).map_err(|e| format!("{}: {e}", vars.display()))
}

/// The live variables of a store: (name, data).
pub fn list(fd: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut v = Vec::new();
    let Some(hl) = u16_at(fd, 48).map(usize::from) else {
        return v;
    };
    let mut off = (hl + 28 + 3) & !3;
    while u16_at(fd, off) == Some(0x55AA) {
        let (Some(ns), Some(ds)) = (u32_at(fd, off + 36), u32_at(fd, off + 40)) else {
            break;
        };
        let (ns, ds) = (ns as usize, ds as usize);
        if fd[off + 2] == VAR_ADDED {
            let name: Vec<u16> = fd
                .get(off + HEADER..off + HEADER + ns)
                .unwrap_or_default()
                .chunks_exact(2)
                .map(|c| u16::from_le_bytes([c[0], c[1]]))
                .take_while(|&c| c != 0)
                .collect();
            let data = fd
                .get(off + HEADER + ns..off + HEADER + ns + ds)
                .unwrap_or_default()
                .to_vec();
            v.push((String::from_utf16_lossy(&name), data));
        }
        off = (off + HEADER + ns + ds + 3) & !3;
    }
    v
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sets_and_replaces_a_variable_in_ovmfs_store() {
        let Ok(fd) = std::fs::read(crate::qemu::OVMF_VARS) else {
            eprintln!(
                "skipped: no {} (Debian package ovmf)",
                crate::qemu::OVMF_VARS
            );
            return;
        };
        let one = set(&fd, LOADER_GUID, "LoaderEntryOneShot", &utf16z("a.efi")).unwrap();
        let two = set(&one, LOADER_GUID, "LoaderEntryOneShot", &utf16z("b.efi")).unwrap();
        let live: Vec<_> = list(&two)
            .into_iter()
            .filter(|(n, _)| n == "LoaderEntryOneShot")
            .collect();
        assert_eq!(
            live,
            vec![("LoaderEntryOneShot".to_string(), utf16z("b.efi"))]
        );
        assert_eq!(two.len(), fd.len());
        assert!(set(&fd[..100], LOADER_GUID, "x", b"").is_err());
    }
}
