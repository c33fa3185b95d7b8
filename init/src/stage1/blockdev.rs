//! Finding partitions by GPT name: the kernel exports it as PARTNAME in
//! each block device's uevent, so no udev and no GPT parsing is needed.

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
}

/// Looks in `sys`/class/block for the partition whose PARTNAME is `name`.
pub fn find_by_partname(sys: &Path, name: &str) -> Option<BlockDev> {
    let dir = sys.join("class/block");
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for e in entries {
        let Ok(uevent) = std::fs::read_to_string(e.join("uevent")) else {
            continue;
        };
        let mut devname = None;
        let mut partname = None;
        for line in uevent.lines() {
            if let Some(v) = line.strip_prefix("DEVNAME=") {
                devname = Some(v.to_string());
            } else if let Some(v) = line.strip_prefix("PARTNAME=") {
                partname = Some(v.to_string());
            }
        }
        if partname.as_deref() == Some(name) {
            let devname = devname?;
            let majmin = std::fs::read_to_string(e.join("dev"))
                .ok()?
                .trim()
                .to_string();
            let sectors = std::fs::read_to_string(e.join("size"))
                .ok()?
                .trim()
                .parse()
                .ok()?;
            return Some(BlockDev {
                devname,
                majmin,
                sectors,
            });
        }
    }
    None
}

/// Polls until the partition appears (drivers probe asynchronously).
pub fn wait_for_partname(sys: &Path, name: &str, timeout: Duration) -> Option<BlockDev> {
    let t0 = Instant::now();
    loop {
        if let Some(d) = find_by_partname(sys, name) {
            return Some(d);
        }
        if t0.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
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
    fn finds_partition_in_fake_sysfs() {
        let d = tempfile::tempdir().unwrap();
        for (dev, part, mm) in [
            ("vda", None, "254:0"),
            ("vda1", Some("esp"), "254:1"),
            ("vda2", Some("root_a"), "254:2"),
        ] {
            let p = d.path().join("class/block").join(dev);
            std::fs::create_dir_all(&p).unwrap();
            let mut u = format!("MAJOR=254\nDEVNAME={dev}\nDEVTYPE=partition\n");
            if let Some(n) = part {
                u.push_str(&format!("PARTN=1\nPARTNAME={n}\n"));
            }
            std::fs::write(p.join("uevent"), u).unwrap();
            std::fs::write(p.join("dev"), format!("{mm}\n")).unwrap();
            std::fs::write(p.join("size"), "2048\n").unwrap();
        }
        let b = find_by_partname(d.path(), "root_a").unwrap();
        assert_eq!(
            b,
            BlockDev {
                devname: "vda2".into(),
                majmin: "254:2".into(),
                sectors: 2048
            }
        );
        assert!(find_by_partname(d.path(), "root_b").is_none());
        assert!(wait_for_partname(d.path(), "nope", Duration::from_millis(30)).is_none());
    }
}
