//! Hardware-matched drivers: the initramfs carries the disk drivers of many
//! machines (virtio, NVMe, AHCI, SCSI disks), but stage 1 loads only those
//! whose `modules.alias` patterns match a device present in sysfs, as udev
//! would. Under TCG each module load costs tens of milliseconds (the kernel
//! checks its signature), so not loading AHCI on a virtio machine matters.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::path::Path;

/// Buses (and classes) whose devices can need a driver of ours.
const BUSES: &[&str] = &[
    "bus/pci",
    "bus/virtio",
    "bus/scsi",
    "bus/platform",
    "bus/acpi",
    "class/input",
];

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
        let dir = if bus.starts_with("bus/") {
            sys.join(bus).join("devices")
        } else {
            sys.join(bus)
        };
        let Ok(rd) = std::fs::read_dir(dir) else {
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

/// The modules of `list` to load: those with no alias at all (file systems,
/// helpers) and those whose aliases match a present device.
pub fn needed(
    list: &[String],
    aliases: &[(String, String)],
    modaliases: &BTreeSet<String>,
) -> Vec<String> {
    list.iter()
        .filter(|m| {
            let m = m.replace('-', "_");
            let mut pats = aliases.iter().filter(|(_, am)| *am == m).peekable();
            pats.peek().is_none() || pats.any(|(p, _)| modaliases.iter().any(|d| glob(p, d)))
        })
        .cloned()
        .collect()
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
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
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
    fn needed_keeps_aliasless_and_matching_modules() {
        let aliases = parse_alias(
            "alias pci:v00008086d000025ABsv*sd*bc*sc*i* i6300esb\nalias acpi*:PNP0C0C:* button\n",
        );
        let devs: BTreeSet<String> = ["acpi:PNP0C0C:".to_string()].into();
        let list: Vec<String> = ["vfat", "i6300esb", "button"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            needed(&list, &aliases, &devs),
            vec!["vfat".to_string(), "button".to_string()]
        );
    }

    #[test]
    fn reads_fake_sysfs() {
        let d = tempfile::tempdir().unwrap();
        let dev = d.path().join("bus/pci/devices/0000:00:01.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::write(dev.join("modalias"), "pci:v1\n").unwrap();
        assert_eq!(device_modaliases(d.path()), ["pci:v1".to_string()].into());
    }
}
