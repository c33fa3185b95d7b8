//! cgroup v2: one cgroup per service under a base cgroup, with its limits.
//!
//! Where the kernel keeps a controller in a v1 hierarchy (the build hosts do)
//! the v2 file for it does not exist; init then says so, naming the service,
//! the limit and the reason, and runs the service without that limit.

use std::path::{Path, PathBuf};

use crate::config::Limits;

/// The base cgroup and what it can do.
#[derive(Debug)]
pub struct Cgroups {
    base: Option<PathBuf>,
    enabled: Vec<String>,
    why_not: Option<String>,
}

const WANTED: [&str; 3] = ["memory", "cpu", "pids"];

/// Enables `controllers` for a cgroup's children: in one write, as each
/// write to a non-empty subtree waits for the kernel to update every
/// process in it (an RCU grace period, milliseconds under emulation); one
/// at a time when the kernel refuses the set, so the others still apply.
fn enable(subtree_control: &Path, controllers: &[&str]) {
    let all: Vec<String> = controllers.iter().map(|c| format!("+{c}")).collect();
    if controllers.is_empty() || std::fs::write(subtree_control, all.join(" ")).is_ok() {
        return;
    }
    for c in all {
        let _ = std::fs::write(subtree_control, c);
    }
}

impl Cgroups {
    /// Prepares `<root>/<base>` (root is normally /sys/fs/cgroup).
    pub fn setup(root: &Path, base: &str) -> Self {
        let controllers = match std::fs::read_to_string(root.join("cgroup.controllers")) {
            Ok(c) => c,
            Err(e) => {
                let why = format!("cgroup2 is not mounted at {} ({e})", root.display());
                return Cgroups {
                    base: None,
                    enabled: Vec::new(),
                    why_not: Some(why),
                };
            }
        };
        let dir = root.join(base);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            let why = format!("cannot create {}: {e}", dir.display());
            return Cgroups {
                base: None,
                enabled: Vec::new(),
                why_not: Some(why),
            };
        }
        let offered: Vec<&str> = WANTED
            .into_iter()
            .filter(|c| controllers.split_whitespace().any(|x| x == *c))
            .collect();
        for level in [root, dir.as_path()] {
            enable(&level.join("cgroup.subtree_control"), &offered);
        }
        let enabled: Vec<String> = std::fs::read_to_string(dir.join("cgroup.subtree_control"))
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        let why_not = WANTED.iter().any(|c| !enabled.iter().any(|e| e == c)).then(|| {
            format!(
                "cgroup2 at {} offers controllers [{}]; the others are held by the kernel elsewhere (cgroup v1)",
                root.display(),
                controllers.trim()
            )
        });
        Cgroups {
            base: Some(dir),
            enabled,
            why_not,
        }
    }

    /// Creates the service's cgroup and writes its limits; returns the
    /// `cgroup.procs` path to join. Limits that cannot be applied are logged.
    pub fn prepare(&self, service: &str, limits: &Limits) -> Option<PathBuf> {
        let wanted: Vec<(&str, &str, String)> = [
            ("memory", "memory.max", limits.memory_max.clone()),
            ("cpu", "cpu.max", limits.cpu_max.clone()),
            ("pids", "pids.max", limits.pids_max.map(|p| p.to_string())),
        ]
        .into_iter()
        .filter_map(|(c, f, v)| v.map(|v| (c, f, v)))
        .collect();
        let Some(base) = &self.base else {
            for (_, file, value) in &wanted {
                tracing::warn!(
                    "service {service}: {file}={value} not applied: {}",
                    self.why_not.as_deref().unwrap_or("no cgroup2")
                );
            }
            return None;
        };
        let dir = base.join(service);
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(
                "service {service}: cannot create cgroup {}: {e}",
                dir.display()
            );
            return None;
        }
        for (controller, file, value) in wanted {
            if !self.enabled.iter().any(|e| e == controller) {
                tracing::warn!(
                    "service {service}: {file}={value} not applied: the {controller} controller is not available ({})",
                    self.why_not.as_deref().unwrap_or("unknown")
                );
                continue;
            }
            match std::fs::write(dir.join(file), &value) {
                Ok(()) => tracing::debug!("service {service}: {file}={value}"),
                Err(e) => tracing::warn!(
                    "service {service}: writing {}={value} failed: {e}",
                    dir.join(file).display()
                ),
            }
        }
        Some(dir.join("cgroup.procs"))
    }

    /// Removes a service's cgroup once its processes are gone (best effort).
    pub fn remove(&self, service: &str) {
        if let Some(base) = &self.base {
            let _ = std::fs::remove_dir(base.join(service));
        }
    }

    /// Removes the base cgroup and what is left under it (best effort).
    pub fn remove_all(&self) {
        if let Some(base) = &self.base {
            if let Ok(rd) = std::fs::read_dir(base) {
                for e in rd.flatten() {
                    if e.path().is_dir() {
                        let _ = std::fs::remove_dir(e.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(base);
        }
    }
}
