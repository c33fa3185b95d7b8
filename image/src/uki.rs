//! Unified kernel images: systemd's EFI stub with `.osrel`, `.cmdline`,
//! `.linux` and `.initrd` sections added by objcopy (ukify is not in
//! bookworm). objcopy stamps the build time into the PE header; we pin it
//! and recompute the PE checksum, so the UKI is reproducible.

use std::path::Path;

use crate::error::{io, ImageError, Result};
use crate::tools;

/// The stub systemd-boot-efi installs.
pub const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

/// Builds a UKI at `out` from the parts.
#[allow(clippy::too_many_arguments)]
pub fn build(
    stub: &Path,
    osrel: &str,
    cmdline: &str,
    vmlinuz: &Path,
    initrd: &[u8],
    work: &Path,
    out: &Path,
    epoch: u64,
) -> Result<()> {
    let w = |name: &str, data: &[u8]| -> Result<std::path::PathBuf> {
        let p = work.join(name);
        std::fs::write(&p, data).map_err(io("writing", &p))?;
        Ok(p)
    };
    let osrel_p = w("osrel", osrel.as_bytes())?;
    let cmdline_p = w("cmdline", cmdline.as_bytes())?;
    let initrd_p = w("initrd", initrd)?;
    let linux_len = std::fs::metadata(vmlinuz)
        .map_err(io("reading", vmlinuz))?
        .len();
    let linux_vma: u64 = 0x200_0000;
    let initrd_vma = (linux_vma + linux_len).div_ceil(0x10_0000) * 0x10_0000;
    let sec = |name: &str, p: &Path, vma: u64| {
        vec![
            "--add-section".to_string(),
            format!("{name}={}", p.display()),
            "--change-section-vma".to_string(),
            format!("{name}={vma:#x}"),
        ]
    };
    let mut c = tools::cmd("objcopy")?;
    c.args(sec(".osrel", &osrel_p, 0x20000))
        .args(sec(".cmdline", &cmdline_p, 0x30000))
        .args(sec(".linux", vmlinuz, linux_vma))
        .args(sec(".initrd", &initrd_p, initrd_vma))
        .arg(stub)
        .arg(out);
    tools::run(&mut c)?;
    let mut pe = std::fs::read(out).map_err(io("reading", out))?;
    pin_pe(&mut pe, epoch as u32).map_err(|msg| ImageError::Format {
        path: out.into(),
        msg,
    })?;
    std::fs::write(out, pe).map_err(io("writing", out))
}

/// Sets the PE TimeDateStamp to `stamp` and recomputes the checksum.
pub fn pin_pe(pe: &mut [u8], stamp: u32) -> std::result::Result<(), String> {
    let rd = |pe: &[u8], o: usize| -> std::result::Result<u32, String> {
        pe.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| "truncated PE header".into())
    };
    if pe.get(0..2) != Some(b"MZ") {
        return Err("not a PE file (no MZ)".into());
    }
    let lfanew = rd(pe, 0x3c)? as usize;
    if pe.get(lfanew..lfanew + 4) != Some(b"PE\0\0") {
        return Err("not a PE file (no PE signature)".into());
    }
    let ts = lfanew + 8;
    let ck = lfanew + 24 + 64;
    if pe.len() < ck + 4 {
        return Err("truncated PE optional header".into());
    }
    pe[ts..ts + 4].copy_from_slice(&stamp.to_le_bytes());
    pe[ck..ck + 4].copy_from_slice(&[0; 4]);
    let sum = pe_checksum(pe, ck);
    pe[ck..ck + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// The PE image checksum (as IMAGEHLP's CheckSumMappedFile computes it).
pub fn pe_checksum(pe: &[u8], ck_off: usize) -> u32 {
    let mut sum: u64 = 0;
    let mut i = 0;
    while i < pe.len() {
        if i == ck_off {
            i += 4;
            continue;
        }
        let lo = pe[i] as u64;
        let hi = pe.get(i + 1).copied().unwrap_or(0) as u64;
        sum += lo | (hi << 8);
        sum = (sum & 0xffff) + (sum >> 16);
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    (sum as u32).wrapping_add(pe.len() as u32)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn pins_stamp_and_checksum_of_the_real_stub() {
        let Ok(mut pe) = std::fs::read(STUB) else {
            fluxnode_testkit::skip(format!("{STUB} missing (Debian package systemd-boot-efi)"));
            return;
        };
        let lfanew = u32::from_le_bytes(pe[0x3c..0x40].try_into().unwrap()) as usize;
        let orig_ck = u32::from_le_bytes(pe[lfanew + 88..lfanew + 92].try_into().unwrap());
        if orig_ck != 0 {
            // The stub ships a valid checksum: ours must agree with it.
            assert_eq!(pe_checksum(&pe, lfanew + 88), orig_ck);
        }
        pin_pe(&mut pe, 1234).unwrap();
        assert_eq!(
            u32::from_le_bytes(pe[lfanew + 8..lfanew + 12].try_into().unwrap()),
            1234
        );
        let a = pe.clone();
        pin_pe(&mut pe, 1234).unwrap();
        assert_eq!(a, pe);
    }

    #[test]
    fn rejects_garbage() {
        for bad in [&b""[..], b"MZ", b"MZ\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\xff\xff\xff\xff"] {
            assert!(pin_pe(&mut bad.to_vec(), 1).is_err());
        }
    }
}
