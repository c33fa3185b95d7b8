//! The CPU, from `/proc/cpuinfo`.
//!
//! Physical cores are counted as distinct (`physical id`, `core id`) pairs,
//! threads as `processor` entries: the two numbers Flux's tier table asks for.

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// CPU facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuInfo {
    /// `model name` of the first processor.
    pub model: Option<String>,
    /// Physical cores (all sockets).
    pub cores: u32,
    /// Hardware threads (logical CPUs).
    pub threads: u32,
    /// Sockets.
    pub sockets: u32,
    /// The flags that matter for workloads.
    pub flags: CpuFlags,
}

/// The CPU flags workloads care about.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuFlags {
    /// AVX2.
    pub avx2: bool,
    /// AVX-512 foundation (`avx512f`).
    pub avx512: bool,
    /// AES-NI.
    pub aes: bool,
    /// SHA extensions (`sha_ni`).
    pub sha: bool,
    /// Running under a hypervisor (`hypervisor`).
    pub hypervisor: bool,
}

/// Reads `PROC/cpuinfo`; an unreadable file gives empty facts.
pub fn read(proc_root: &Path) -> CpuInfo {
    match std::fs::read_to_string(proc_root.join("cpuinfo")) {
        Ok(text) => parse(&text),
        Err(e) => {
            tracing::warn!("reading {}/cpuinfo: {e}", proc_root.display());
            CpuInfo::default()
        }
    }
}

/// Parses the text of `/proc/cpuinfo`. Total: any input gives an answer.
pub fn parse(text: &str) -> CpuInfo {
    let mut info = CpuInfo::default();
    let mut cores = BTreeSet::new();
    let mut sockets = BTreeSet::new();
    let mut cpu_cores_field: Option<u32> = None;
    let (mut phys, mut core): (Option<String>, Option<String>) = (None, None);
    let mut flags: Option<String> = None;

    let mut flush = |phys: &mut Option<String>, core: &mut Option<String>| {
        if let (Some(p), Some(c)) = (phys.take(), core.take()) {
            cores.insert((p, c));
        }
    };
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            if line.trim().is_empty() {
                flush(&mut phys, &mut core);
            }
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        match key {
            "processor" => info.threads = info.threads.saturating_add(1),
            "model name" if info.model.is_none() => info.model = Some(value.to_string()),
            "physical id" => {
                sockets.insert(value.to_string());
                phys = Some(value.to_string());
            }
            "core id" => core = Some(value.to_string()),
            "cpu cores" => cpu_cores_field = value.parse().ok(),
            "flags" if flags.is_none() => flags = Some(value.to_string()),
            _ => {}
        }
    }
    flush(&mut phys, &mut core);

    info.sockets = u32::try_from(sockets.len())
        .unwrap_or(u32::MAX)
        .max(u32::from(info.threads > 0));
    info.cores = if !cores.is_empty() {
        u32::try_from(cores.len()).unwrap_or(u32::MAX)
    } else if let Some(per_socket) = cpu_cores_field {
        per_socket.saturating_mul(info.sockets)
    } else {
        // No topology (some VMs, other architectures): one core per thread.
        info.threads
    };
    if let Some(flags) = flags {
        for f in flags.split_whitespace() {
            match f {
                "avx2" => info.flags.avx2 = true,
                "avx512f" => info.flags.avx512 = true,
                "aes" => info.flags.aes = true,
                "sha_ni" => info.flags.sha = true,
                "hypervisor" => info.flags.hypervisor = true,
                _ => {}
            }
        }
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_threads_per_core() {
        let one = |n: u32, core: u32| {
            format!(
                "processor\t: {n}\nmodel name\t: Test CPU\nphysical id\t: 0\ncore id\t\t: {core}\ncpu cores\t: 2\nflags\t\t: fpu avx2 aes sha_ni\n\n"
            )
        };
        let text = [one(0, 0), one(1, 1), one(2, 0), one(3, 1)].concat();
        let c = parse(&text);
        assert_eq!((c.cores, c.threads, c.sockets), (2, 4, 1));
        assert!(
            c.flags.avx2 && c.flags.aes && c.flags.sha && !c.flags.avx512 && !c.flags.hypervisor
        );
        assert_eq!(c.model.as_deref(), Some("Test CPU"));
    }

    #[test]
    fn nasty_inputs_do_not_panic() {
        for t in [
            "",
            ":",
            "processor",
            "processor:\n\n\n",
            "flags: \u{0}\u{ffff}",
            "core id: 1\nphysical id: 9",
        ] {
            let _ = parse(t);
        }
    }
}
