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
//!
//! PCR 12 and PCR 9 follow from the command line the UKI is started with
//! (and, for 9, its initrd), as the boot path fluxnode ships measures them
//! (verified against the guest's PCRs; docs/IMAGE.md "The measured image"):
//!
//! - PCR 12: systemd-boot 252 passes a type #2 entry's `.cmdline` (one
//!   trailing newline chomped) as the UKI's load options, UTF-16 with its
//!   NUL, and measures exactly those bytes into PCR 12 (`tpm_log_load_options`,
//!   `strsize16`); the stub, Secure Boot off and load options present,
//!   takes them as the command line instead of its `.cmdline` and measures
//!   them again, the same bytes. Two extends of one digest.
//! - PCR 9: the kernel's EFI stub (Linux 6.1) measures its load options
//!   (the stub hands it the same UTF-16 string with its NUL) and then the
//!   initrd it loads through the LoadFile2 protocol, which the stub serves
//!   from the `.initrd` section (`VirtualSize` bytes; nothing is appended
//!   while the ESP holds no credentials or system extensions).
//!
//! Both are taken as given here, so a loader that passes other load
//! options (a type #1 entry naming the same UKI) yields other values while
//! PCR 11 stays that of the UKI.

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

/// The load options a command line becomes: UTF-16LE with a NUL, as
/// systemd-boot converts an ASCII `.cmdline` (one byte, one code unit) and
/// as the stub and the kernel measure them. Refused unless every byte is
/// printable ASCII with no space at either end: systemd-boot converts byte
/// by byte while the stub turns control characters into spaces and chomps
/// trailing ones before it measures, so for any other string the two
/// measurements would differ in ways not modelled here (the build makes
/// its command lines single-spaced ASCII).
pub fn load_options(cmdline: &str) -> std::result::Result<Vec<u8>, String> {
    if cmdline.is_empty() {
        return Err("empty kernel command line (no load options to measure)".into());
    }
    if let Some(b) = cmdline.bytes().find(|b| !(0x20..0x7f).contains(b)) {
        return Err(format!(
            "kernel command line has byte {b:#04x}: only printable ASCII is predicted"
        ));
    }
    if cmdline.starts_with(' ') || cmdline.ends_with(' ') {
        return Err("kernel command line starts or ends with a space".into());
    }
    let mut v: Vec<u8> = cmdline.bytes().flat_map(|b| [b, 0]).collect();
    v.extend_from_slice(&[0, 0]);
    Ok(v)
}

/// The sha256-bank PCR 12 after systemd-boot started a UKI with `cmdline`
/// as its load options and systemd-stub took them: the digest of
/// [`load_options`] extended twice (no credentials on the ESP).
pub fn pcr12(cmdline: &str) -> std::result::Result<[u8; 32], String> {
    let d = Sha256::digest(load_options(cmdline)?);
    let mut pcr = [0u8; 32];
    extend(&mut pcr, &d);
    extend(&mut pcr, &d);
    Ok(pcr)
}

/// The sha256-bank PCR 9 after the kernel's EFI stub measured its load
/// options (`cmdline`, see [`load_options`]) and then `initrd`.
pub fn pcr9(cmdline: &str, initrd: &[u8]) -> std::result::Result<[u8; 32], String> {
    let mut pcr = [0u8; 32];
    extend(&mut pcr, &Sha256::digest(load_options(cmdline)?));
    extend(&mut pcr, &Sha256::digest(initrd));
    Ok(pcr)
}

/// The command line systemd-boot takes from a UKI's `.cmdline` section as
/// loaded: up to the first NUL, one trailing newline chomped.
pub fn section_cmdline(bytes: &[u8]) -> std::result::Result<String, String> {
    let s = bytes.split(|b| *b == 0).next().unwrap_or_default();
    let s = s.strip_suffix(b"\n").unwrap_or(s);
    String::from_utf8(s.to_vec()).map_err(|_| ".cmdline is not UTF-8".to_string())
}

/// What a UKI predicts for the sha256 bank when systemd-boot starts it as
/// a type #2 entry (its own `.cmdline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Predicted {
    /// The kernel's load options and initrd.
    pub pcr9: [u8; 32],
    /// The stub's measurement of the UKI's payload sections.
    pub pcr11: [u8; 32],
    /// The load options, measured by systemd-boot and by the stub.
    pub pcr12: [u8; 32],
}

/// [`Predicted`] for a UKI: PCR 11 from its sections, PCR 12 and 9 from its
/// `.cmdline` and `.initrd` sections as loaded.
pub fn predict(pe: &[u8]) -> std::result::Result<Predicted, String> {
    let table = sections(pe)?;
    let section = |name: &str| -> std::result::Result<Vec<u8>, String> {
        let s = find(&table, name)
            .filter(|s| s.virtual_size > 0)
            .ok_or_else(|| format!("the UKI has no {name} section"))?;
        loaded(pe, s)
    };
    let cmdline = section_cmdline(&section(".cmdline")?)?;
    let initrd = section(".initrd")?;
    Ok(Predicted {
        pcr9: pcr9(&cmdline, &initrd)?,
        pcr11: pcr11(pe)?,
        pcr12: pcr12(&cmdline)?,
    })
}

/// [`predict`] for a UKI file.
pub fn predict_file(path: &Path) -> Result<Predicted> {
    let pe = std::fs::read(path).map_err(io("reading", path))?;
    predict(&pe).map_err(|msg| ImageError::Format {
        path: path.into(),
        msg,
    })
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

    /// The command line of the main test image's slot a, and the PCR 12
    /// the guest read after systemd-boot 252 and systemd-stub 252 measured
    /// it (swtpm, `/sys/class/tpm/tpm0/pcr-sha256/12`).
    const GUEST_CMDLINE: &str = "console=ttyS0,115200 quiet panic=5 softlockup_panic=1 cryptomgr.notests fluxnode.timestamps fluxnode.slot=a fluxnode.roothash=d91e14fb71a965091ff3d87709e2f84786db532a5191ddce97b8f5b66c1b366b fluxnode.salt=4ccb90aa8bc5c09d811d49c0635e7994c3b020e6951948fd10c4efb22e2de947 fluxnode.datablocks=3110 fluxnode.diskuuid=4a4c6987-df32-47f8-8233-f4fc5f79253c fluxnode.espuuid=ba7d3d96-b368-49dc-b304-3afbd05cbed5 fluxnode.rootuuid=3a5ae598-49a3-4625-ad0f-61501831160e fluxnode.datauuid=84679ff8-5e3c-412e-8ab5-854eda6b6a03";
    const GUEST_PCR12: &str = "bac02ce1e76efaf27dfe80e65bdfec32f0aaed79405b108217b09163a1c33070";

    #[test]
    fn load_options_are_utf16le_with_a_nul() {
        assert_eq!(
            load_options("ab=1").unwrap(),
            b"a\x00b\x00=\x001\x00\x00\x00"
        );
        for bad in ["", " a", "a ", "a\tb", "a\nb", "caf\u{e9}", "a\u{7f}"] {
            assert!(load_options(bad).is_err(), "{bad:?}");
            assert!(pcr12(bad).is_err() && pcr9(bad, b"").is_err(), "{bad:?}");
        }
    }

    /// Known answers, computed independently (Python: hashlib over
    /// `cmdline.encode("utf-16-le") + b"\0\0"`), and the value a guest read.
    #[test]
    fn pcr12_and_pcr9_known_answers() {
        let c = "console=ttyS0 fluxnode.slot=a";
        assert_eq!(
            hex::encode(pcr12(c).unwrap()),
            "ae585e812a8fb6b05cad10c50048cecefefca38db0ab329c6f8568ecf96e5a6f"
        );
        assert_eq!(
            hex::encode(pcr9(c, b"070701 fluxnode initrd").unwrap()),
            "44de08c6fd536deeb76453f1d99e7ddf56e66a6cc20208b23a8415fd678c9687"
        );
        assert_eq!(hex::encode(pcr12(GUEST_CMDLINE).unwrap()), GUEST_PCR12);
        // One more word: another PCR 12 (and 9), as a loader entry would give.
        let evil = format!("{GUEST_CMDLINE} fluxnode.evil=1");
        assert_ne!(hex::encode(pcr12(&evil).unwrap()), GUEST_PCR12);
        assert_ne!(
            pcr9(&evil, b"x").unwrap(),
            pcr9(GUEST_CMDLINE, b"x").unwrap()
        );
        assert_ne!(pcr9(c, b"x").unwrap(), pcr9(c, b"y").unwrap());
    }

    #[test]
    fn section_cmdline_is_what_systemd_boot_passes() {
        assert_eq!(section_cmdline(b"a b\n").unwrap(), "a b");
        assert_eq!(section_cmdline(b"a b\0\0\0").unwrap(), "a b");
        assert_eq!(section_cmdline(b"a b").unwrap(), "a b");
        assert_eq!(section_cmdline(b"a b\n\n").unwrap(), "a b\n");
        assert!(section_cmdline(b"\xff").is_err());
    }

    #[test]
    fn predict_needs_cmdline_and_initrd() {
        let Ok(pe) = std::fs::read(crate::uki::STUB) else {
            fluxnode_testkit::skip(format!(
                "{} missing (Debian package systemd-boot-efi)",
                crate::uki::STUB
            ));
            return;
        };
        let e = predict(&pe).unwrap_err();
        assert!(e.contains(".cmdline"), "{e}");
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
        // PCR 12 and 9 from the sections are those of the inputs.
        let p = predict_file(&uki).unwrap();
        assert_eq!(hex::encode(p.pcr11), theirs);
        let cmdline = "console=ttyS0 fluxnode.slot=a fluxnode.roothash=00ff";
        assert_eq!(p.pcr12, pcr12(cmdline).unwrap());
        assert_eq!(p.pcr9, pcr9(cmdline, &initrd).unwrap());
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
