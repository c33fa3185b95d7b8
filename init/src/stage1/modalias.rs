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
    device_modaliases_on(sys, BUSES.iter().map(|b| b.to_string()))
}

/// The sysfs directories (`bus/pci`, `class/input`) whose devices the
/// patterns of `aliases` can match, from each pattern's prefix: stage 1's
/// disk and NIC drivers only ever match PCI, virtio and SCSI devices, and
/// reading the modalias of every ACPI and platform device as well cost
/// ~0.1 s of its critical path under TCG.
pub fn buses_for(aliases: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for (pat, _) in aliases {
        let prefix = pat.split(':').next().unwrap_or("").trim_end_matches('*');
        if prefix.is_empty()
            || !prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let dir = if prefix == "input" {
            "class/input".to_string()
        } else {
            format!("bus/{prefix}")
        };
        if !out.contains(&dir) {
            out.push(dir);
        }
    }
    out
}

/// The modalias of every device under the given sysfs directories
/// (`bus/X` means its `devices/`).
pub fn device_modaliases_on(
    sys: &Path,
    buses: impl IntoIterator<Item = String>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for bus in buses {
        let dir = if bus.starts_with("bus/") {
            sys.join(&bus).join("devices")
        } else {
            sys.join(&bus)
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

/// The virtio devices that virtio PCI functions will show once virtio_pci
/// binds them, as `virtio:` modaliases, by the virtio spec's PCI IDs
/// (vendor 0x1AF4; device 0x1040 + type, or a transitional 0x1000-0x103F
/// with the type as subsystem device). Matching these up front lets the
/// disk's driver (virtio_blk) load alongside virtio_pci instead of after
/// it: the driver is registered when its device appears, and probes it at
/// once.
pub fn virtio_children(modaliases: &BTreeSet<String>) -> BTreeSet<String> {
    let hex = |s: &str, tag: &str| -> Option<u32> {
        let at = s.find(tag)? + tag.len();
        u32::from_str_radix(s.get(at..at + 8)?, 16).ok()
    };
    modaliases
        .iter()
        .filter_map(|m| {
            let m = m.strip_prefix("pci:")?;
            if hex(m, "v")? != 0x1AF4 {
                return None;
            }
            let ty = match hex(m, "d")? {
                d @ 0x1040..=0x107F => d - 0x1040,
                0x1000..=0x103F => hex(m, "sd")?,
                _ => return None,
            };
            (ty != 0).then(|| format!("virtio:d{ty:08X}v00001AF4"))
        })
        .collect()
}

/// The literal start of a glob pattern (up to its first `*`, `?` or `[`):
/// a device whose modalias does not start with it cannot match, and the
/// check is far cheaper than fnmatch.
fn literal_prefix(pattern: &str) -> &str {
    let end = pattern.find(['*', '?', '[']).unwrap_or(pattern.len());
    &pattern[..end]
}

/// shell-style glob match (what modprobe uses for aliases).
pub fn glob(pattern: &str, text: &str) -> bool {
    let (Ok(p), Ok(t)) = (CString::new(pattern), CString::new(text)) else {
        return false;
    };
    // SAFETY: two NUL-terminated strings.
    unsafe { libc::fnmatch(p.as_ptr(), t.as_ptr(), 0) == 0 }
}

/// The modules of `list` to load: those with no device alias at all (file
/// systems, netfilter, helpers) and those whose aliases match a present device.
pub fn needed(
    list: &[String],
    aliases: &[(String, String)],
    modaliases: &BTreeSet<String>,
) -> Vec<String> {
    list.iter()
        .filter(|m| {
            let m = m.replace('-', "_");
            // Only device patterns (`pci:...`, `acpi*:...`) gate a module;
            // names like `fs-overlay` or `rtnl-link-veth` are what the
            // kernel asks modprobe for, not hardware.
            let mut pats = aliases
                .iter()
                .filter(|(p, am)| *am == m && p.contains(':'))
                .peekable();
            pats.peek().is_none()
                || pats.any(|(p, _)| {
                    let lit = literal_prefix(p);
                    modaliases.iter().any(|d| d.starts_with(lit) && glob(p, d))
                })
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
        let lit = literal_prefix(pat);
        if candidates.contains(module)
            && !out.contains(module)
            && modaliases
                .iter()
                .any(|m| m.starts_with(lit) && glob(pat, m))
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
            "alias pci:v00008086d000025ABsv*sd*bc*sc*i* i6300esb\nalias acpi*:PNP0C0C:* button\n\
             alias fs-overlay overlay\nalias rtnl-link-veth veth\n",
        );
        let devs: BTreeSet<String> = ["acpi:PNP0C0C:".to_string()].into();
        // overlay and veth have aliases, but not for hardware: they load.
        let list: Vec<String> = ["vfat", "i6300esb", "button", "overlay", "veth"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            needed(&list, &aliases, &devs),
            ["vfat", "button", "overlay", "veth"].map(String::from)
        );
    }

    #[test]
    fn buses_from_alias_prefixes() {
        let aliases = parse_alias(
            "alias pci:v*d* a\nalias virtio:d00000002v* b\nalias pci:v1* c\nalias input:b0019* d\nalias acpi*:PNP0C0C:* e\nalias *:x f\nalias ../x:y g\n",
        );
        assert_eq!(
            buses_for(&aliases),
            ["bus/pci", "bus/virtio", "class/input", "bus/acpi"].map(String::from)
        );
        assert_eq!(literal_prefix("pci:v00001AF4d*sv*"), "pci:v00001AF4d");
        assert_eq!(literal_prefix("abc"), "abc");
    }

    #[test]
    fn predicts_virtio_devices_from_pci_ids() {
        let pci: BTreeSet<String> = [
            // transitional block device: the type is the subsystem device
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
            // modern network device: 0x1040 + 1
            "pci:v00001AF4d00001041sv00001AF4sd00001100bc02sc00i00",
            // not virtio
            "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00",
            // virtio vendor, not a virtio function id
            "pci:v00001AF4d00001110sv00001AF4sd00001100bc05sc00i00",
            "pci:v00001AF4d0000",
        ]
        .map(String::from)
        .into();
        let want: BTreeSet<String> = ["virtio:d00000002v00001AF4", "virtio:d00000001v00001AF4"]
            .map(String::from)
            .into();
        assert_eq!(virtio_children(&pci), want);
        let aliases = parse_alias("alias virtio:d00000002v* virtio_blk\n");
        let cands: BTreeSet<String> = ["virtio_blk".to_string()].into();
        assert_eq!(matching(&aliases, &virtio_children(&pci), &cands), cands);
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
