//! The PCR 11 value a UKI produces when systemd-stub boots it (issue 12).
//!
//! systemd-stub 252 (Debian 12's, the one [`crate::uki::STUB`] names)
//! measures the "payload" sections of its own PE image into PCR 11 before
//! it uses them: for each section of `unified_sections[]` in that order
//! (`.linux`, `.osrel`, `.cmdline`, `.initrd`, `.splash`, `.dtb`,
//! `.pcrsig`, `.pcrpkey`), except `.pcrsig`, and only when present with a
//! non-zero size, it extends PCR 11 with the SHA-256 of the section's name
//! including its trailing NUL, then with the SHA-256 of the section as
//! loaded (`VirtualSize` bytes at its `VirtualAddress`: the raw data, zero
//! filled past `SizeOfRawData`). It finds a section by comparing the first
//! `strlen(name)` bytes of the 8-byte PE name field, the last match
//! winning. A PCR extend is `new = SHA-256(old || digest)` from 32 zero
//! bytes; nothing else (no phase strings: that is
//! `systemd-measure --phase=`, empty) goes into PCR 11 before userspace.
//!
//! The value is what `systemd-measure calculate --bank=sha256 --phase=`
//! prints for the same sections; the `agrees_with_systemd_measure` test
//! checks that over a UKI built by [`crate::uki::build`].

use std::path::Path;

use sha2::{Digest, Sha256};

use crate::error::{io, ImageError, Result};

/// The stub's `unified_sections[]` (systemd 252), in measuring order, and
/// whether each is measured (`.pcrsig` signs the result, so it is not).
pub const UNIFIED_SECTIONS: [(&str, bool); 8] = [
    (".linux", true),
    (".osrel", true),
    (".cmdline", true),
    (".initrd", true),
    (".splash", true),
    (".dtb", true),
    (".pcrsig", false),
    (".pcrpkey", true),
];

/// One PE section header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// The 8-byte name field.
    pub name: [u8; 8],
    /// VirtualSize: bytes of the section in memory.
    pub virtual_size: u32,
    /// VirtualAddress (RVA).
    pub virtual_address: u32,
    /// SizeOfRawData: bytes in the file (padded to FileAlignment).
    pub raw_size: u32,
    /// PointerToRawData: file offset.
    pub raw_offset: u32,
}

fn u16_at(pe: &[u8], o: usize) -> std::result::Result<u16, String> {
    pe.get(o..o + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or_else(|| format!("truncated PE at {o:#x}"))
}

fn u32_at(pe: &[u8], o: usize) -> std::result::Result<u32, String> {
    pe.get(o..o + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| format!("truncated PE at {o:#x}"))
}

/// The section table of a PE image.
pub fn sections(pe: &[u8]) -> std::result::Result<Vec<Section>, String> {
    if pe.get(0..2) != Some(b"MZ") {
        return Err("not a PE file (no MZ)".into());
    }
    let lfanew = u32_at(pe, 0x3c)? as usize;
    if pe.get(lfanew..lfanew + 4) != Some(b"PE\0\0") {
        return Err("not a PE file (no PE signature)".into());
    }
    let coff = lfanew + 4;
    let n = u16_at(pe, coff + 2)? as usize;
    let opt_size = u16_at(pe, coff + 16)? as usize;
    let table = coff + 20 + opt_size;
    (0..n)
        .map(|i| {
            let o = table + i * 40;
            let raw = pe
                .get(o..o + 40)
                .ok_or_else(|| format!("truncated section table (section {i})"))?;
            let mut name = [0u8; 8];
            name.copy_from_slice(&raw[..8]);
            Ok(Section {
                name,
                virtual_size: u32_at(raw, 8)?,
                virtual_address: u32_at(raw, 12)?,
                raw_size: u32_at(raw, 16)?,
                raw_offset: u32_at(raw, 20)?,
            })
        })
        .collect()
}

/// The section the stub would take for `name` (prefix match on the name
/// field, the last one winning), if any.
pub fn find<'a>(table: &'a [Section], name: &str) -> Option<&'a Section> {
    let n = name.as_bytes();
    table
        .iter()
        .rev()
        .find(|s| n.len() <= 8 && s.name[..n.len()] == *n)
}

/// A section's bytes as the firmware loads them: `VirtualSize` bytes, the
/// file's raw data first, zeros past it.
pub fn loaded(pe: &[u8], s: &Section) -> std::result::Result<Vec<u8>, String> {
    let from_file = s.virtual_size.min(s.raw_size) as usize;
    let start = s.raw_offset as usize;
    let raw = pe.get(start..start + from_file).ok_or_else(|| {
        format!(
            "section {} runs past the end of the file",
            String::from_utf8_lossy(&s.name)
        )
    })?;
    let mut v = raw.to_vec();
    v.resize(s.virtual_size as usize, 0);
    Ok(v)
}

/// `SHA-256(pcr || digest)`.
pub fn extend(pcr: &mut [u8; 32], digest: &[u8]) {
    let mut h = Sha256::new();
    h.update(&pcr[..]);
    h.update(digest);
    pcr.copy_from_slice(&h.finalize());
}

/// The sha256 bank's PCR 11 after systemd-stub 252 measured this UKI.
pub fn pcr11(pe: &[u8]) -> std::result::Result<[u8; 32], String> {
    let table = sections(pe)?;
    let mut pcr = [0u8; 32];
    for (name, measured) in UNIFIED_SECTIONS {
        if !measured {
            continue;
        }
        let Some(s) = find(&table, name).filter(|s| s.virtual_size > 0) else {
            continue;
        };
        let mut with_nul = name.as_bytes().to_vec();
        with_nul.push(0);
        extend(&mut pcr, &Sha256::digest(&with_nul));
        extend(&mut pcr, &Sha256::digest(loaded(pe, s)?));
    }
    Ok(pcr)
}

/// [`pcr11`] of a UKI file, hex.
pub fn pcr11_file(path: &Path) -> Result<String> {
    let pe = std::fs::read(path).map_err(io("reading", path))?;
    pcr11(&pe)
        .map(hex::encode)
        .map_err(|msg| ImageError::Format {
            path: path.into(),
            msg,
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::process::Command;

    const MEASURE: &str = "/usr/lib/systemd/systemd-measure";

    #[test]
    fn extend_is_sha256_of_old_and_digest() {
        let mut pcr = [0u8; 32];
        let d = Sha256::digest(b".linux\0");
        extend(&mut pcr, &d);
        let mut both = vec![0u8; 32];
        both.extend_from_slice(&d);
        assert_eq!(pcr[..], Sha256::digest(&both)[..]);
    }

    #[test]
    fn the_bare_stub_measures_nothing() {
        let Ok(pe) = std::fs::read(crate::uki::STUB) else {
            fluxnode_testkit::skip(format!(
                "{} missing (Debian package systemd-boot-efi)",
                crate::uki::STUB
            ));
            return;
        };
        let t = sections(&pe).unwrap();
        assert!(find(&t, ".sdmagic").is_some(), "{t:?}");
        assert_eq!(pcr11(&pe).unwrap(), [0u8; 32]);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [&b""[..], b"MZ", &[0u8; 64][..]] {
            assert!(pcr11(bad).is_err());
        }
        let mut pe = vec![0u8; 0x48];
        pe[0..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x40;
        pe[0x40..0x44].copy_from_slice(b"PE\0\0");
        assert!(pcr11(&pe).is_err(), "truncated COFF header");
    }

    fn section_file(uki: &Path, name: &str, out: &Path) {
        let st = Command::new("objcopy")
            .args(["-O", "binary", &format!("--only-section={name}")])
            .arg(uki)
            .arg(out)
            .status()
            .unwrap();
        assert!(st.success(), "objcopy --only-section={name}");
    }

    /// A UKI from [`crate::uki::build`] (a fake kernel: the stub and
    /// systemd-measure only hash it), then our value against
    /// `systemd-measure calculate` over its sections as objcopy extracts them.
    #[test]
    fn agrees_with_systemd_measure() {
        if !Path::new(MEASURE).exists() {
            fluxnode_testkit::skip(format!("{MEASURE} missing (Debian package systemd)"));
            return;
        }
        if !Path::new(crate::uki::STUB).exists() {
            fluxnode_testkit::skip(format!(
                "{} missing (Debian package systemd-boot-efi)",
                crate::uki::STUB
            ));
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let vmlinuz = d.path().join("vmlinuz");
        // Odd sizes, so that every section is padded in the file.
        let kernel: Vec<u8> = (0..300_001u32).map(|i| (i * 7 + i / 251) as u8).collect();
        std::fs::write(&vmlinuz, kernel).unwrap();
        let initrd: Vec<u8> = (0..70_003u32).map(|i| (i % 253) as u8).collect();
        let uki = d.path().join("uki.efi");
        crate::uki::build(
            Path::new(crate::uki::STUB),
            "IMAGE_ID=fluxnode\nIMAGE_VERSION=t1\n",
            "console=ttyS0 fluxnode.slot=a fluxnode.roothash=00ff",
            &vmlinuz,
            &initrd,
            d.path(),
            &uki,
            1_700_000_000,
        )
        .unwrap();
        let pe = std::fs::read(&uki).unwrap();
        let table = sections(&pe).unwrap();
        let mut args = vec![
            "calculate".to_string(),
            "--bank=sha256".into(),
            "--phase=".into(),
        ];
        for name in [".linux", ".initrd", ".cmdline", ".osrel"] {
            let s = find(&table, name).unwrap();
            assert!(s.raw_size > s.virtual_size, "{name} is padded: {s:?}");
            let f = d.path().join(format!("S{name}"));
            section_file(&uki, name, &f);
            assert_eq!(
                std::fs::read(&f).unwrap(),
                loaded(&pe, s).unwrap(),
                "objcopy's {name} is what the firmware loads"
            );
            args.push(format!("--{}={}", &name[1..], f.display()));
        }
        let out = Command::new(MEASURE).args(&args).output().unwrap();
        assert!(
            out.status.success(),
            "systemd-measure {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let theirs = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("11:sha256="))
            .unwrap_or_else(|| panic!("no 11:sha256= in {text:?}"))
            .to_lowercase();
        assert_eq!(pcr11_file(&uki).unwrap(), theirs);
        assert_ne!(theirs, hex::encode([0u8; 32]));
        // The command line is covered: another one, another value.
        let other = d.path().join("other.efi");
        crate::uki::build(
            Path::new(crate::uki::STUB),
            "IMAGE_ID=fluxnode\nIMAGE_VERSION=t1\n",
            "console=ttyS0 fluxnode.slot=a fluxnode.roothash=00fe",
            &vmlinuz,
            &initrd,
            d.path(),
            &other,
            1_700_000_000,
        )
        .unwrap();
        assert_ne!(pcr11_file(&other).unwrap(), theirs);
    }
}
