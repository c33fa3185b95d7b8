//! What the machine is: CPU, memory, disks, NICs, hypervisor, TPM and GPUs.
//!
//! Every read goes through [`Roots`] (default `/proc`, `/sys`, `/dev`), so the
//! tests point the same code at fixture trees under `hal/tests/data`. Facts
//! that cannot be read are left empty (`None`) rather than failing the whole
//! inventory: an operator wants the other 90 % of the answer.

pub mod cpu;
pub mod disk;
pub mod memory;
pub mod nic;
pub mod virt;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::gpu::GpuInventory;
#[cfg(feature = "tpm")]
use crate::tpm::TpmInfo;

/// Where to read the kernel's view of the hardware from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Roots {
    /// procfs (`/proc`).
    pub proc: PathBuf,
    /// sysfs (`/sys`).
    pub sys: PathBuf,
    /// device nodes (`/dev`).
    pub dev: PathBuf,
}

impl Default for Roots {
    fn default() -> Self {
        Roots {
            proc: "/proc".into(),
            sys: "/sys".into(),
            dev: "/dev".into(),
        }
    }
}

impl Roots {
    /// All three under one directory (`DIR/proc`, `DIR/sys`, `DIR/dev`): a fixture tree.
    pub fn under(dir: &Path) -> Self {
        Roots {
            proc: dir.join("proc"),
            sys: dir.join("sys"),
            dev: dir.join("dev"),
        }
    }
}

/// The whole inventory, as `fluxnode-hal probe --json` prints it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inventory {
    /// Processor.
    pub cpu: cpu::CpuInfo,
    /// Memory.
    pub memory: memory::MemInfo,
    /// Whole disks (no loop, ram or device-mapper devices).
    pub disks: Vec<disk::Disk>,
    /// The partition mounted at /var (or holding it), e.g. `vda4`.
    pub var_partition: Option<String>,
    /// Network interfaces (not `lo`).
    pub nics: Vec<nic::Nic>,
    /// Hypervisor and DMI facts.
    pub virtualization: virt::Virtualization,
    /// The TPM (without hal's `tpm` feature there is no TPM client and
    /// the inventory has no such field).
    #[cfg(feature = "tpm")]
    pub tpm: TpmInfo,
    /// NVIDIA GPUs through NVML.
    pub gpu: GpuInventory,
}

/// Options of a probe.
#[derive(Debug, Clone, Default)]
pub struct ProbeOptions {
    /// Where to read from.
    pub roots: Roots,
    /// TCTI to ask the TPM for its manufacturer and firmware; `None` picks
    /// `/dev/tpmrm0` or `/dev/tpm0` under `roots.dev` when they exist.
    pub tcti: Option<String>,
    /// Skip NVML (fixture runs).
    pub skip_gpu: bool,
}

/// Reads the whole inventory. Never fails: unreadable facts stay empty.
pub fn probe(opts: &ProbeOptions) -> Inventory {
    let roots = &opts.roots;
    let cpu = cpu::read(&roots.proc);
    let memory = memory::read(&roots.proc);
    let (disks, var_partition) = disk::read(roots);
    let nics = nic::read(&roots.sys);
    let virtualization = virt::read(roots, cpu.flags.hypervisor);
    #[cfg(feature = "tpm")]
    let tpm = crate::tpm::info::probe(roots, opts.tcti.as_deref());
    let gpu = if opts.skip_gpu {
        GpuInventory::skipped()
    } else {
        crate::gpu::probe()
    };
    Inventory {
        cpu,
        memory,
        disks,
        var_partition,
        nics,
        virtualization,
        #[cfg(feature = "tpm")]
        tpm,
        gpu,
    }
}

/// Reads a small sysfs/procfs text file, trimmed; `None` if absent or unreadable.
pub(crate) fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

/// Reads a decimal number from a sysfs file.
pub(crate) fn read_u64(path: &Path) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}
