//! What the node can still promise: its capacity minus what is placed.
//!
//! The node's capacity is what its tier guarantees (or, unranked, what the
//! machine has) less what the node keeps for itself. A spec that does not
//! fit is refused with the resource that is short and by how much, so the
//! publisher knows what to shrink and the operator knows what is full.

use std::fmt;

use crate::spec::{AppSpec, Protocol, Resources};

/// What apps may use on this node, in total.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Capacity {
    /// CPU, thousandths of a core.
    pub cpu_milli: u64,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// Disk, MiB.
    pub disk_mib: u64,
    /// Processes and threads.
    pub pids: u64,
}

/// What the node keeps for itself (init, the daemons, the page cache the
/// update client needs, the image store's headroom).
pub const RESERVED: Capacity = Capacity {
    cpu_milli: 250,
    memory_mib: 256,
    disk_mib: 1024,
    pids: 1024,
};

impl Capacity {
    /// The capacity left for apps on a machine with these totals (the tier's
    /// guarantee or the hardware's, whichever is smaller), less [`RESERVED`].
    pub fn for_machine(threads: u64, memory_mib: u64, disk_mib: u64) -> Capacity {
        Capacity {
            cpu_milli: (threads * 1000).saturating_sub(RESERVED.cpu_milli),
            memory_mib: memory_mib.saturating_sub(RESERVED.memory_mib),
            disk_mib: disk_mib.saturating_sub(RESERVED.disk_mib),
            pids: 32_768u64.saturating_sub(RESERVED.pids),
        }
    }

    /// This capacity, held to what the node's tier guarantees: a ranked
    /// node promises the network its tier, not its hardware, so a
    /// resource the tier names is the lower of the two (the tier's total
    /// less [`RESERVED`]); one it does not name stays the machine's.
    pub fn within(self, g: &Guarantee) -> Capacity {
        let lim = |have: u64, total: Option<u64>, reserved: u64| {
            total.map_or(have, |t| have.min(t.saturating_sub(reserved)))
        };
        Capacity {
            cpu_milli: lim(
                self.cpu_milli,
                g.threads.map(|t| t.saturating_mul(1000)),
                RESERVED.cpu_milli,
            ),
            memory_mib: lim(self.memory_mib, g.memory_mib, RESERVED.memory_mib),
            disk_mib: lim(self.disk_mib, g.disk_mib, RESERVED.disk_mib),
            pids: self.pids,
        }
    }
}

/// What a tier guarantees, as totals like a machine's; `None` where the
/// tier names no figure.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Guarantee {
    /// The tier's name.
    pub tier: String,
    /// Hardware threads.
    pub threads: Option<u64>,
    /// Memory, MiB.
    pub memory_mib: Option<u64>,
    /// Disk, MiB.
    pub disk_mib: Option<u64>,
}

/// A resource an app asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    /// CPU.
    Cpu,
    /// Memory.
    Memory,
    /// Disk.
    Disk,
    /// Processes.
    Pids,
}

impl Resource {
    fn show(&self, v: u64) -> String {
        match self {
            Resource::Cpu => format!("{} cores", v as f64 / 1000.0),
            Resource::Memory | Resource::Disk => format!("{v} MiB"),
            Resource::Pids => format!("{v} pids"),
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
            Resource::Disk => "disk",
            Resource::Pids => "pids",
        })
    }
}

/// Why a spec does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FitError {
    /// A resource is short.
    #[error("not enough {resource}: the app asks for {}, {} is free of {}; short by {}",
        resource.show(*need), resource.show(*free), resource.show(*total), resource.show(need - free))]
    Short {
        /// Which.
        resource: Resource,
        /// What the app asks for.
        need: u64,
        /// What is free.
        free: u64,
        /// The node's capacity for apps.
        total: u64,
    },
    /// A node port is published by another app already.
    #[error("node port {port}/{protocol} is already published by app {by:?}")]
    PortTaken {
        /// The port.
        port: u16,
        /// tcp or udp.
        protocol: Protocol,
        /// The app that has it.
        by: String,
    },
}

/// Checks that `spec` fits beside `placed` (which must not include an
/// older version of `spec` itself: a redeploy passes the others).
pub fn fit(capacity: &Capacity, placed: &[&AppSpec], spec: &AppSpec) -> Result<(), FitError> {
    let used = placed.iter().fold(
        Capacity {
            cpu_milli: 0,
            memory_mib: 0,
            disk_mib: 0,
            pids: 0,
        },
        |acc, s| add(acc, &s.resources),
    );
    let r = &spec.resources;
    let asks = [
        (
            Resource::Cpu,
            r.cpu_milli(),
            capacity.cpu_milli,
            used.cpu_milli,
        ),
        (
            Resource::Memory,
            r.memory_mib,
            capacity.memory_mib,
            used.memory_mib,
        ),
        (Resource::Disk, r.disk_mib, capacity.disk_mib, used.disk_mib),
        (Resource::Pids, u64::from(r.pids), capacity.pids, used.pids),
    ];
    for (resource, need, total, used) in asks {
        let free = total.saturating_sub(used);
        if need > free {
            return Err(FitError::Short {
                resource,
                need,
                free,
                total,
            });
        }
    }
    for p in &spec.ports {
        for other in placed {
            if other
                .ports
                .iter()
                .any(|q| q.node == p.node && q.protocol == p.protocol)
            {
                return Err(FitError::PortTaken {
                    port: p.node,
                    protocol: p.protocol,
                    by: other.name.clone(),
                });
            }
        }
    }
    Ok(())
}

fn add(acc: Capacity, r: &Resources) -> Capacity {
    Capacity {
        cpu_milli: acc.cpu_milli + r.cpu_milli(),
        memory_mib: acc.memory_mib + r.memory_mib,
        disk_mib: acc.disk_mib + r.disk_mib,
        pids: acc.pids + u64::from(r.pids),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_tier_caps_what_it_names_and_leaves_the_rest_to_the_machine() {
        let machine = Capacity::for_machine(16, 65_536, 2_000_000);
        let cumulus = Guarantee {
            tier: "Cumulus".into(),
            threads: Some(4),
            memory_mib: Some(7_629),
            disk_mib: None,
        };
        let c = machine.within(&cumulus);
        assert_eq!(c.cpu_milli, 4_000 - RESERVED.cpu_milli);
        assert_eq!(c.memory_mib, 7_629 - RESERVED.memory_mib);
        assert_eq!(c.disk_mib, machine.disk_mib, "the tier names no disk");
        assert_eq!(c.pids, machine.pids);
        // A machine smaller than its tier keeps its own figures.
        let small = Capacity::for_machine(2, 4_096, 10_000);
        assert_eq!(small.within(&cumulus), small);
        // A tier of zeros leaves nothing, without underflow.
        let none = Guarantee {
            tier: "Zero".into(),
            threads: Some(0),
            memory_mib: Some(0),
            disk_mib: Some(u64::MAX),
        };
        let z = machine.within(&none);
        assert_eq!((z.cpu_milli, z.memory_mib), (0, 0));
        assert_eq!(z.disk_mib, machine.disk_mib);
    }

    fn app(name: &str, cpu: f64, mem: u64, port: u16) -> AppSpec {
        AppSpec::parse(&format!(
            "name = \"{name}\"\nimage = \"x\"\n[resources]\ncpu = {cpu}\nmemory_mib = {mem}\ndisk_mib = 10\n\
             [[ports]]\ncontainer = 80\nnode = {port}\n"
        ))
        .unwrap()
    }

    #[test]
    fn a_spec_that_does_not_fit_says_what_is_short_and_by_how_much() {
        let cap = Capacity::for_machine(2, 1024, 10_000);
        assert_eq!(cap.cpu_milli, 1750);
        let a = app("a", 1.5, 256, 30000);
        fit(&cap, &[], &a).unwrap();
        let b = app("b", 0.5, 256, 30001);
        let e = fit(&cap, &[&a], &b).unwrap_err();
        assert_eq!(
            e,
            FitError::Short {
                resource: Resource::Cpu,
                need: 500,
                free: 250,
                total: 1750
            }
        );
        assert_eq!(
            e.to_string(),
            "not enough cpu: the app asks for 0.5 cores, 0.25 cores is free of 1.75 cores; short by 0.25 cores"
        );
        let c = app("c", 0.25, 600, 30001);
        let e = fit(&cap, &[&a], &c).unwrap_err();
        assert_eq!(
            e.to_string(),
            "not enough memory: the app asks for 600 MiB, 512 MiB is free of 768 MiB; short by 88 MiB"
        );
    }

    #[test]
    fn a_node_port_cannot_be_published_twice() {
        let cap = Capacity::for_machine(8, 8192, 100_000);
        let a = app("a", 1.0, 64, 30000);
        let b = app("b", 1.0, 64, 30000);
        assert_eq!(
            fit(&cap, &[&a], &b).unwrap_err().to_string(),
            "node port 30000/tcp is already published by app \"a\""
        );
    }
}
