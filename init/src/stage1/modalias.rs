//! Hardware-matched drivers: the initramfs carries the disk drivers of many
//! machines (virtio, NVMe, AHCI, SCSI disks), but stage 1 loads only those
//! whose `modules.alias` patterns match a device present in sysfs, as udev
//! would. Under TCG each module load costs tens of milliseconds (the kernel
//! checks its signature), so not loading AHCI on a virtio machine matters.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::path::Path;

/// Buses whose devices can need a disk driver.
const BUSES: &[&str] = &["pci", "virtio", "scsi", "platform", "acpi"];

/// Parses modules.alias lines: (pattern, module).
pub fn parse_alias(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            match (w.next(), w.next(), w.next()) {
                (Some("alias"), Some(p), Some(m)) => Some((p.to_string(), m.replace('-', "_"))),
                _ => None,
            }
        })
        .collect()
}

/// The modalias of every device on the buses that matter.
pub fn device_modaliases(sys: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for bus in BUSES {
        let Ok(rd) = std::fs::read_dir(sys.join("bus").join(bus).join("devices")) else {
            continue;
        };
        for e in rd.flatten() {
            if let Ok(m) = std::fs::read_to_string(e.path().join("modalias")) {
                let m = m.trim();
                if !m.is_empty() {
                    out.insert(m.to_string());
                }
            }
        }
    }
    out
}

/// shell-style glob match (what modprobe uses for aliases).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (Ok(p), Ok(t)) = (CString::new(pattern), CString::new(text)) else {
        return false;
    };
    // SAFETY: two NUL-terminated strings.
    unsafe { libc::fnmatch(p.as_ptr(), t.as_ptr(), 0) == 0 }
}

/// The modules among `candidates` that some device in `modaliases` needs.
pub fn matching(
    aliases: &[(String, String)],
    modaliases: &BTreeSet<String>,
    candidates: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (pat, module) in aliases {
        if candidates.contains(module)
            && !out.contains(module)
            && modaliases.iter().any(|m| glob(pat, m))
        {
            out.insert(module.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_like_modprobe() {
        let aliases = parse_alias(
            "alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci\nalias virtio:d00000002v* virtio_blk\nalias pci:v*d*sv*sd*bc01sc06i01* ahci\nalias scsi:t-0x00* sd_mod\nbogus line\n",
        );
        assert_eq!(aliases.len(), 4);
        let devs: BTreeSet<String> = [
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00".to_string(),
            "virtio:d00000002v00001AF4".to_string(),
        ]
        .into();
        let cands: BTreeSet<String> = ["virtio_pci", "virtio_blk", "ahci", "sd_mod"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let m = matching(&aliases, &devs, &cands);
        assert_eq!(
            m,
            ["virtio_blk", "virtio_pci"]
                .iter()
                .map(|s| s.to_string())
                .collect()
        );
        assert!(!glob("a[", "a"));
        assert!(glob("scsi:t-0x00*", "scsi:t-0x00"));
    }

    #[test]
    fn reads_fake_sysfs() {
        let d = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let dev = d.path().join("bus/pci/devices/0000:00:01.0");
        std::fs::create_dir_all(&dev).unwrap_or_else(|e| unreachable!("{e}"));
        std::fs::write(dev.join("modalias"), "pci:v1\n").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(device_modaliases(d.path()), ["pci:v1".to_string()].into());
    }
}
