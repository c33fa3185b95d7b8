//! Disks, from `/sys/block`, and which partition holds /var (from
//! `/proc/self/mountinfo`).
//!
//! The bus is told by the kernel name (`nvme*`, `vd*`, `mmcblk*`) and, for
//! SCSI-style `sd*` names, by the sysfs device path (`/ata` → SATA, `/usb` →
//! USB, `virtio` → virtio-scsi) or the SCSI vendor libata reports ("ATA").

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{read_trimmed, read_u64, Roots};

/// How a disk is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bus {
    /// NVMe.
    Nvme,
    /// SATA (libata).
    Sata,
    /// virtio-blk (`vd*`).
    Virtio,
    /// virtio-scsi.
    VirtioScsi,
    /// USB mass storage.
    Usb,
    /// SD/eMMC.
    Mmc,
    /// Other SCSI.
    Scsi,
    /// Xen block front end.
    Xen,
    /// Anything else.
    Other,
}

/// One partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Kernel name, e.g. `vda4`.
    pub name: String,
    /// Size in bytes.
    pub size_bytes: u64,
}

/// One whole disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Kernel name, e.g. `nvme0n1`.
    pub name: String,
    /// Model string, if the device reports one.
    pub model: Option<String>,
    /// Size in bytes.
    pub size_bytes: u64,
    /// Spinning disk (`queue/rotational`).
    pub rotational: bool,
    /// How it is attached.
    pub bus: Bus,
    /// Its partitions.
    pub partitions: Vec<Partition>,
    /// True when /var lives on this disk.
    pub holds_var: bool,
}

const SKIP: &[&str] = &["loop", "ram", "zram", "dm-", "sr", "fd", "md", "nbd"];

/// Reads every whole disk, and the partition holding /var.
pub fn read(roots: &Roots) -> (Vec<Disk>, Option<String>) {
    let block = roots.sys.join("block");
    let mut names: Vec<String> = match std::fs::read_dir(&block) {
        Ok(rd) => rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
        Err(e) => {
            tracing::warn!("reading {}: {e}", block.display());
            Vec::new()
        }
    };
    names.retain(|n| !SKIP.iter().any(|p| n.starts_with(p)));
    names.sort();

    let var_dev = std::fs::read_to_string(roots.proc.join("self/mountinfo"))
        .ok()
        .and_then(|t| device_of(&t, "/var"));

    let mut var_partition = None;
    let mut disks = Vec::new();
    for name in names {
        let dir = block.join(&name);
        let mut partitions = Vec::new();
        let mut holds_var = false;
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut parts: Vec<String> = rd
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|p| p.starts_with(&name) && dir.join(p).join("partition").exists())
                .collect();
            parts.sort();
            for p in parts {
                let pdir = dir.join(&p);
                if var_dev.is_some() && read_trimmed(&pdir.join("dev")) == var_dev {
                    holds_var = true;
                    var_partition = Some(p.clone());
                }
                partitions.push(Partition {
                    size_bytes: read_u64(&pdir.join("size")).unwrap_or(0) * 512,
                    name: p,
                });
            }
        }
        if var_dev.is_some() && read_trimmed(&dir.join("dev")) == var_dev {
            holds_var = true;
            var_partition = Some(name.clone());
        }
        disks.push(Disk {
            model: read_trimmed(&dir.join("device/model")).filter(|m| !m.is_empty()),
            size_bytes: read_u64(&dir.join("size")).unwrap_or(0) * 512,
            rotational: read_u64(&dir.join("queue/rotational")) == Some(1),
            bus: bus_of(&name, &dir),
            partitions,
            holds_var,
            name,
        });
    }
    (disks, var_partition)
}

fn bus_of(name: &str, dir: &Path) -> Bus {
    if name.starts_with("nvme") {
        return Bus::Nvme;
    }
    if name.starts_with("vd") {
        return Bus::Virtio;
    }
    if name.starts_with("mmcblk") {
        return Bus::Mmc;
    }
    if name.starts_with("xvd") {
        return Bus::Xen;
    }
    if name.starts_with("sd") {
        // /sys/block/sda is a link into /sys/devices/...; its path tells the bus.
        let real = std::fs::canonicalize(dir)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        // libata reports its disks with SCSI vendor "ATA".
        let vendor = read_trimmed(&dir.join("device/vendor")).unwrap_or_default();
        return if real.contains("/usb") {
            Bus::Usb
        } else if real.contains("/ata") || vendor == "ATA" {
            Bus::Sata
        } else if real.contains("virtio") {
            Bus::VirtioScsi
        } else {
            Bus::Scsi
        };
    }
    Bus::Other
}

/// The `major:minor` of the filesystem that holds `path`, from the text of
/// `/proc/self/mountinfo` (the longest mount point that is a prefix of
/// `path`). Total: malformed lines are skipped.
pub fn device_of(mountinfo: &str, path: &str) -> Option<String> {
    let mut best: Option<(usize, String)> = None;
    for line in mountinfo.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(devno), Some(mnt)) = (f.get(2), f.get(4)) else {
            continue;
        };
        let covers = *mnt == "/"
            || path == *mnt
            || path.strip_prefix(mnt).is_some_and(|r| r.starts_with('/'));
        if covers && best.as_ref().is_none_or(|(len, _)| mnt.len() >= *len) {
            best = Some((mnt.len(), devno.to_string()));
        }
    }
    best.map(|(_, d)| d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn var_on_its_own_mount_wins_over_root() {
        let mi = "22 1 254:2 / / rw - erofs /dev/dm-0 ro\n30 22 254:4 / /var rw - ext4 /dev/vda4 rw\n31 22 0:5 / /variable rw - tmpfs x rw\n";
        assert_eq!(device_of(mi, "/var").as_deref(), Some("254:4"));
        assert_eq!(
            device_of("22 1 8:1 / / rw - ext4 /dev/sda1 rw\n", "/var").as_deref(),
            Some("8:1")
        );
    }

    #[test]
    fn nasty_mountinfo_does_not_panic() {
        for t in ["", "a b", "1 2 3 4", "\n\n 1 2 3 4 5 6", "x x x x /var/x"] {
            let _ = device_of(t, "/var");
        }
    }
}
