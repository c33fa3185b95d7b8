//! Block devices as sysfs shows them: the whole disks that have
//! partitions, and a disk's partition by number. Which disk and which
//! partition are ours is decided from their GPT ([`super::bootdisk`]), not
//! from names: a GPT name (PARTNAME) is whatever any disk says it is.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A block device as sysfs describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockDev {
    /// Kernel name (`vda2`).
    pub devname: String,
    /// `major:minor`.
    pub majmin: String,
    /// Size in 512-byte sectors.
    pub sectors: u64,
}

impl BlockDev {
    /// `/dev/<devname>` under `dev`.
    pub fn node(&self, dev: &Path) -> PathBuf {
        dev.join(&self.devname)
    }

    /// Its size in bytes (sysfs counts 512-byte sectors, whatever the
    /// disk's logical block size).
    pub fn bytes(&self) -> u64 {
        self.sectors.saturating_mul(512)
    }
}

fn read_dev(dir: &Path) -> Option<BlockDev> {
    let uevent = std::fs::read_to_string(dir.join("uevent")).ok()?;
    let devname = uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))?
        .to_string();
    let majmin = std::fs::read_to_string(dir.join("dev"))
        .ok()?
        .trim()
        .to_string();
    let sectors = std::fs::read_to_string(dir.join("size"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(BlockDev {
        devname,
        majmin,
        sectors,
    })
}

/// The whole disks in `sys`/class/block on which the kernel found
/// partitions, sorted by name.
pub fn partitioned_disks(sys: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(sys.join("class/block")) else {
        return Vec::new();
    };
    let mut disks: Vec<String> = rd
        .flatten()
        .filter(|e| e.path().join("partition").exists())
        .filter_map(|e| parent_disk(sys, &e.file_name().to_string_lossy()))
        .collect();
    disks.sort();
    disks.dedup();
    disks
}

/// Partition number `partno` (1-based: GPT entry index + 1) of `disk`.
pub fn partition_of(sys: &Path, disk: &str, partno: usize) -> Option<BlockDev> {
    let dir = std::fs::canonicalize(sys.join("class/block").join(disk)).ok()?;
    let mut subs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    subs.sort();
    subs.into_iter()
        .find(|p| {
            std::fs::read_to_string(p.join("partition"))
                .ok()
                .and_then(|n| n.trim().parse::<usize>().ok())
                == Some(partno)
        })
        .and_then(|p| read_dev(&p))
}

/// The whole disk `disk` (`vda`) as sysfs shows it.
pub fn disk(sys: &Path, disk: &str) -> Option<BlockDev> {
    let dir = std::fs::canonicalize(sys.join("class/block").join(disk)).ok()?;
    if dir.join("partition").exists() {
        return None;
    }
    read_dev(&dir)
}

/// The disk a partition is on (`vda` for `vda4`), from sysfs.
pub fn parent_disk(sys: &Path, partition: &str) -> Option<String> {
    let real = std::fs::canonicalize(sys.join("class/block").join(partition)).ok()?;
    if !real.join("partition").exists() {
        return None;
    }
    let disk = real.parent()?.file_name()?.to_str()?.to_string();
    Some(disk)
}

/// Waits for a device node to appear (devtmpfs creates it asynchronously).
pub fn wait_for_node(node: &Path, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while !node.exists() {
        if t0.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn parent_disk_follows_the_sysfs_link() {
        let d = tempfile::tempdir().unwrap();
        let real = d.path().join("devices/pci0000:00/virtio2/block/vda");
        std::fs::create_dir_all(real.join("vda4")).unwrap();
        std::fs::write(real.join("vda4/partition"), "4\n").unwrap();
        std::fs::create_dir_all(d.path().join("class/block")).unwrap();
        std::os::unix::fs::symlink(real.join("vda4"), d.path().join("class/block/vda4")).unwrap();
        std::os::unix::fs::symlink(&real, d.path().join("class/block/vda")).unwrap();
        assert_eq!(parent_disk(d.path(), "vda4").as_deref(), Some("vda"));
        // A whole disk has no parent disk; an unknown name neither.
        assert_eq!(parent_disk(d.path(), "vda"), None);
        assert_eq!(parent_disk(d.path(), "nvme9n9p9"), None);
    }

    #[test]
    fn lists_partitioned_disks_and_finds_partitions_by_number() {
        let d = tempfile::tempdir().unwrap();
        let class = d.path().join("class/block");
        std::fs::create_dir_all(&class).unwrap();
        for (disk, parts) in [("vda", 4), ("nvme0n1", 1), ("loop0", 0)] {
            let real = d.path().join("devices/x/block").join(disk);
            std::fs::create_dir_all(&real).unwrap();
            std::fs::write(
                real.join("uevent"),
                format!("DEVNAME={disk}\nDEVTYPE=disk\n"),
            )
            .unwrap();
            std::fs::write(real.join("dev"), "254:0\n").unwrap();
            std::fs::write(real.join("size"), "8192\n").unwrap();
            std::os::unix::fs::symlink(&real, class.join(disk)).unwrap();
            for n in 1..=parts {
                let name = if disk.starts_with("nvme") {
                    format!("{disk}p{n}")
                } else {
                    format!("{disk}{n}")
                };
                let p = real.join(&name);
                std::fs::create_dir_all(&p).unwrap();
                std::fs::write(p.join("partition"), format!("{n}\n")).unwrap();
                std::fs::write(
                    p.join("uevent"),
                    format!("MAJOR=254\nDEVNAME={name}\nDEVTYPE=partition\nPARTN={n}\n"),
                )
                .unwrap();
                std::fs::write(p.join("dev"), format!("254:{n}\n")).unwrap();
                std::fs::write(p.join("size"), "2048\n").unwrap();
                std::os::unix::fs::symlink(&p, class.join(&name)).unwrap();
            }
        }
        assert_eq!(partitioned_disks(d.path()), vec!["nvme0n1", "vda"]);
        assert_eq!(
            partition_of(d.path(), "vda", 4),
            Some(BlockDev {
                devname: "vda4".into(),
                majmin: "254:4".into(),
                sectors: 2048
            })
        );
        assert_eq!(
            partition_of(d.path(), "nvme0n1", 1).map(|b| b.devname),
            Some("nvme0n1p1".into())
        );
        assert_eq!(partition_of(d.path(), "vda", 5), None);
        assert_eq!(
            disk(d.path(), "vda"),
            Some(BlockDev {
                devname: "vda".into(),
                majmin: "254:0".into(),
                sectors: 8192
            })
        );
        // A partition is not a whole disk; an unknown name is nothing.
        assert_eq!(disk(d.path(), "vda4"), None);
        assert_eq!(disk(d.path(), "sdz"), None);
        assert_eq!(partition_of(d.path(), "sda", 1), None);
    }
}
