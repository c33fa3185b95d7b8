//! cgroup v2 for apps: the parent group that caps all apps together at the
//! node's capacity, and what the kernel reports about each app (OOM kills,
//! pids refusals, CPU use and throttling).
//!
//! crun writes each app's own limits from the runtime spec
//! ([`crate::runtime`]). The node adds the parent, `fluxnode/apps`, with
//! the capacity as its limits, so the apps together can never take the
//! node's reserve, whatever one app's spec says.
//!
//! Paths are parameters: tests run against a directory of plain files laid
//! out as cgroupfs is.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crate::capacity::Capacity;
use crate::runtime::CPU_PERIOD_US;

/// The group every app's group is under, relative to the cgroup2 root.
pub const APPS_GROUP: &str = "fluxnode/apps";

/// A cgroup operation failed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct CgroupError {
    /// The cgroup file or directory.
    pub path: PathBuf,
    /// What the kernel said.
    pub source: io::Error,
}

fn write(path: PathBuf, value: &str) -> Result<(), CgroupError> {
    fs::write(&path, value).map_err(|source| CgroupError { path, source })
}

/// Creates `root/fluxnode/apps` with the controllers apps need enabled on
/// the way down, and caps it at `cap`.
pub fn setup_parent(root: &Path, cap: &Capacity) -> Result<PathBuf, CgroupError> {
    let mut dir = root.to_path_buf();
    for part in APPS_GROUP.split('/') {
        // Enable the controllers for the children of `dir` before
        // descending: cgroup v2 only offers a child what its parent's
        // subtree_control lists.
        write(dir.join("cgroup.subtree_control"), "+cpu +memory +pids +io")?;
        dir.push(part);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(source) => return Err(CgroupError { path: dir, source }),
        }
    }
    write(dir.join("cgroup.subtree_control"), "+cpu +memory +pids +io")?;
    write(
        dir.join("cpu.max"),
        &format!("{} {CPU_PERIOD_US}", cap.cpu_milli * CPU_PERIOD_US / 1000),
    )?;
    write(
        dir.join("memory.max"),
        &(cap.memory_mib * 1024 * 1024).to_string(),
    )?;
    write(dir.join("memory.swap.max"), "0")?;
    write(dir.join("pids.max"), &cap.pids.to_string())?;
    Ok(dir)
}

/// What the kernel says about one app's group.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Report {
    /// Processes killed by the OOM killer inside the group.
    pub oom_kills: u64,
    /// Times memory.max was hit.
    pub memory_max_hits: u64,
    /// Forks refused at pids.max.
    pub pids_refused: u64,
    /// CPU time used, µs.
    pub cpu_usage_us: u64,
    /// Periods in which the group was throttled at cpu.max.
    pub cpu_throttled: u64,
    /// Memory in use now, bytes.
    pub memory_current: u64,
    /// Processes now.
    pub pids_current: u64,
}

/// Reads `key value` lines (memory.events, pids.events, cpu.stat): the
/// value of `key`, 0 when absent or unreadable.
fn keyed(text: &str, key: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0)
}

fn read_small(p: &Path) -> String {
    // cgroup files are a few hundred bytes; bound the read all the same.
    use io::Read as _;
    let mut s = String::new();
    if let Ok(f) = fs::File::open(p) {
        let _ = f.take(64 * 1024).read_to_string(&mut s);
    }
    s
}

/// Reads an app's group (`dir`, e.g. `/sys/fs/cgroup/fluxnode/apps/web`).
pub fn report(dir: &Path) -> Report {
    let mem = read_small(&dir.join("memory.events"));
    let pids = read_small(&dir.join("pids.events"));
    let cpu = read_small(&dir.join("cpu.stat"));
    let num = |f: &str| read_small(&dir.join(f)).trim().parse().unwrap_or(0);
    Report {
        oom_kills: keyed(&mem, "oom_kill"),
        memory_max_hits: keyed(&mem, "max"),
        pids_refused: keyed(&pids, "max"),
        cpu_usage_us: keyed(&cpu, "usage_usec"),
        cpu_throttled: keyed(&cpu, "nr_throttled"),
        memory_current: num("memory.current"),
        pids_current: num("pids.current"),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_parent_caps_all_apps_at_the_capacity() {
        let t = tempfile::tempdir().unwrap();
        let cap = Capacity {
            cpu_milli: 1750,
            memory_mib: 768,
            disk_mib: 1000,
            pids: 4096,
        };
        let dir = setup_parent(t.path(), &cap).unwrap();
        assert_eq!(dir, t.path().join("fluxnode/apps"));
        let r = |f: &str| fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(r("cpu.max"), "175000 100000");
        assert_eq!(r("memory.max"), (768u64 << 20).to_string());
        assert_eq!(r("memory.swap.max"), "0");
        assert_eq!(r("pids.max"), "4096");
        for d in [
            t.path().to_path_buf(),
            t.path().join("fluxnode"),
            dir.clone(),
        ] {
            assert_eq!(
                fs::read_to_string(d.join("cgroup.subtree_control")).unwrap(),
                "+cpu +memory +pids +io"
            );
        }
        // Again: an existing group is fine.
        setup_parent(t.path(), &cap).unwrap();
    }

    #[test]
    fn the_kernels_counters_are_read() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path();
        fs::write(
            d.join("memory.events"),
            "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        fs::write(d.join("pids.events"), "max 37\n").unwrap();
        fs::write(d.join("cpu.stat"), "usage_usec 5000000\nuser_usec 4000000\nsystem_usec 1000000\nnr_periods 100\nnr_throttled 40\nthrottled_usec 9\n").unwrap();
        fs::write(d.join("memory.current"), "4096\n").unwrap();
        let r = report(d);
        assert_eq!(
            r,
            Report {
                oom_kills: 1,
                memory_max_hits: 12,
                pids_refused: 37,
                cpu_usage_us: 5_000_000,
                cpu_throttled: 40,
                memory_current: 4096,
                pids_current: 0,
            }
        );
    }
}
