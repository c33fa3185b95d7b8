//! Tier classification: inventory + benchmark results + a policy → the
//! highest tier met, and for each tier missed exactly what fell short.
//!
//! The policy is TOML, one `[[tier]]` table per tier, lowest first; a tier
//! sets any of the requirement keys below, and leaves out those it does not
//! care about. [`DEFAULT_POLICY`] is Flux's published table.
//!
//! Units: RAM and SSD in GB of 10^9 bytes (RAM is `MemTotal`; SSD is the sum
//! of the non-rotational disks, virtual disks counted whatever their flag
//! says), CPU in sysbench events per second (all
//! threads), disk write in dd's MB/s (10^6 bytes), bandwidth in Mb/s. The
//! hardware layer measures no network: bandwidth comes from the node, and a
//! requirement whose fact was not measured is reported as such and counts as
//! not met.

use serde::{Deserialize, Serialize};

use crate::bench::BenchReport;
use crate::error::{Error, Result};
use crate::inventory::disk::Bus;
use crate::inventory::Inventory;

/// Flux's tier table (DESIGN.md), the default policy.
pub const DEFAULT_POLICY: &str = r#"# Flux's published minimums. Lowest tier first.
[[tier]]
name = "Cumulus"
cores = 2
threads = 4
ram_gb = 8
ssd_gb = 220
cpu_eps = 240
disk_write_mbps = 180
bandwidth_mbps = 25

[[tier]]
name = "Nimbus"
cores = 4
threads = 8
ram_gb = 32
ssd_gb = 440
cpu_eps = 640
disk_write_mbps = 180
bandwidth_mbps = 50

[[tier]]
name = "Stratus"
cores = 8
threads = 16
ram_gb = 64
ssd_gb = 880
cpu_eps = 1520
disk_write_mbps = 400
bandwidth_mbps = 100
"#;

/// One tier's minimums; absent keys are not required.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// Tier name.
    pub name: String,
    /// Physical cores.
    pub cores: Option<f64>,
    /// Hardware threads.
    pub threads: Option<f64>,
    /// RAM, GB.
    pub ram_gb: Option<f64>,
    /// SSD, GB.
    pub ssd_gb: Option<f64>,
    /// sysbench CPU events per second, all threads.
    pub cpu_eps: Option<f64>,
    /// dd write speed, MB/s.
    pub disk_write_mbps: Option<f64>,
    /// Network bandwidth, Mb/s.
    pub bandwidth_mbps: Option<f64>,
}

/// A tier policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    /// Tiers, lowest first.
    pub tier: Vec<Tier>,
}

impl Policy {
    /// Parses a policy. Outside input: any text gives a policy or an error.
    pub fn from_toml(text: &str) -> Result<Self> {
        let p: Policy =
            toml::from_str(text).map_err(|e| Error::parse("tier policy", e.to_string()))?;
        if p.tier.is_empty() {
            return Err(Error::parse("tier policy", "no [[tier]] tables"));
        }
        for t in &p.tier {
            for (k, v) in t.requirements() {
                if !v.is_finite() || v < 0.0 {
                    return Err(Error::parse(
                        "tier policy",
                        format!("tier {}: {k} = {v} is not a non-negative number", t.name),
                    ));
                }
            }
        }
        Ok(p)
    }

    /// Flux's table.
    pub fn flux() -> Self {
        // The constant is tested to parse; an empty policy is the fallback.
        Self::from_toml(DEFAULT_POLICY).unwrap_or(Policy { tier: Vec::new() })
    }
}

impl Tier {
    fn requirements(&self) -> Vec<(&'static str, f64)> {
        [
            ("cores", self.cores),
            ("threads", self.threads),
            ("ram_gb", self.ram_gb),
            ("ssd_gb", self.ssd_gb),
            ("cpu_eps", self.cpu_eps),
            ("disk_write_mbps", self.disk_write_mbps),
            ("bandwidth_mbps", self.bandwidth_mbps),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|v| (k, v)))
        .collect()
    }
}

/// The facts a policy is checked against; `None` = not measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Facts {
    /// Physical cores.
    pub cores: Option<f64>,
    /// Hardware threads.
    pub threads: Option<f64>,
    /// RAM, GB.
    pub ram_gb: Option<f64>,
    /// SSD, GB.
    pub ssd_gb: Option<f64>,
    /// CPU EPS, all threads.
    pub cpu_eps: Option<f64>,
    /// Disk write, MB/s.
    pub disk_write_mbps: Option<f64>,
    /// Bandwidth, Mb/s.
    pub bandwidth_mbps: Option<f64>,
}

impl Facts {
    /// Gathers facts from an inventory and (optionally) benchmark results.
    pub fn from(inv: &Inventory, bench: Option<&BenchReport>) -> Self {
        // A virtual disk's rotational flag is the hypervisor's default (QEMU
        // says "rotational" for virtio-blk) and says nothing about the
        // storage behind it: those count, and the disk-write threshold is
        // what screens slow storage.
        let ssd: u64 = inv
            .disks
            .iter()
            .filter(|d| !d.rotational || matches!(d.bus, Bus::Virtio | Bus::VirtioScsi | Bus::Xen))
            .map(|d| d.size_bytes)
            .sum();
        Facts {
            cores: (inv.cpu.cores > 0).then_some(f64::from(inv.cpu.cores)),
            threads: (inv.cpu.threads > 0).then_some(f64::from(inv.cpu.threads)),
            ram_gb: (inv.memory.total_bytes > 0).then_some(inv.memory.total_bytes as f64 / 1e9),
            ssd_gb: Some(ssd as f64 / 1e9),
            cpu_eps: bench.and_then(|b| b.cpu.as_ref()).map(|c| c.eps),
            disk_write_mbps: bench.and_then(|b| b.disk.as_ref()).map(|d| d.write_mbps),
            bandwidth_mbps: None,
        }
    }

    fn get(&self, key: &str) -> Option<f64> {
        match key {
            "cores" => self.cores,
            "threads" => self.threads,
            "ram_gb" => self.ram_gb,
            "ssd_gb" => self.ssd_gb,
            "cpu_eps" => self.cpu_eps,
            "disk_write_mbps" => self.disk_write_mbps,
            "bandwidth_mbps" => self.bandwidth_mbps,
            _ => None,
        }
    }
}

/// One requirement a tier missed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shortfall {
    /// The policy key (`cpu_eps`, ...).
    pub requirement: String,
    /// The minimum.
    pub required: f64,
    /// The measured value, `None` if not measured.
    pub actual: Option<f64>,
    /// required − actual (the whole minimum when not measured).
    pub short_by: f64,
    /// One line for humans.
    pub text: String,
}

/// The verdict for one tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierVerdict {
    /// Tier name.
    pub name: String,
    /// Every requirement met.
    pub met: bool,
    /// What fell short.
    pub shortfalls: Vec<Shortfall>,
}

/// The classification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    /// The highest tier met, if any.
    pub tier: Option<String>,
    /// Every tier, in policy order.
    pub tiers: Vec<TierVerdict>,
    /// The facts used.
    pub facts: Facts,
}

fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// Classifies `facts` under `policy`.
pub fn classify(policy: &Policy, facts: &Facts) -> Classification {
    let tiers: Vec<TierVerdict> = policy
        .tier
        .iter()
        .map(|t| {
            let shortfalls: Vec<Shortfall> = t
                .requirements()
                .into_iter()
                .filter_map(|(key, required)| match facts.get(key) {
                    Some(actual) if actual >= required => None,
                    Some(actual) => Some(Shortfall {
                        requirement: key.into(),
                        required,
                        actual: Some(actual),
                        short_by: required - actual,
                        text: format!(
                            "{key}: {} < {} (short by {})",
                            fmt_num(actual),
                            fmt_num(required),
                            fmt_num(required - actual)
                        ),
                    }),
                    None => Some(Shortfall {
                        requirement: key.into(),
                        required,
                        actual: None,
                        short_by: required,
                        text: format!("{key}: not measured (needs {})", fmt_num(required)),
                    }),
                })
                .collect();
            TierVerdict {
                name: t.name.clone(),
                met: shortfalls.is_empty(),
                shortfalls,
            }
        })
        .collect();
    let tier = tiers.iter().rev().find(|v| v.met).map(|v| v.name.clone());
    Classification {
        tier,
        tiers,
        facts: facts.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_policy_parses() {
        assert_eq!(Policy::flux().tier.len(), 3);
    }

    #[test]
    fn nasty_policies_are_errors_not_panics() {
        for t in [
            "",
            "[[tier]]",
            "tier = 3",
            "[[tier]]\nname = \"x\"\ncpu_eps = -1",
            "[[tier]]\nname=\"x\"\nbogus = 1",
            "[[tier]]\nname = \"x\"\ncpu_eps = nan",
            "\u{0}",
        ] {
            assert!(Policy::from_toml(t).is_err(), "{t:?} accepted");
        }
    }
}
