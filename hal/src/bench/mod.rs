//! Tier benchmarks, measured the way Flux's tier thresholds are defined.
//!
//! - [`cpu`]: sysbench's `cpu` test (events per second at `--cpu-max-prime`).
//! - [`disk`]: `dd if=/dev/zero bs=64k count=16k conv=fdatasync`, three runs,
//!   lowest dropped, mean of two; plus 4 KiB random-write IOPS with O_DIRECT.
//! - [`mem`]: sequential read and write bandwidth, and usable memory.
//! - [`gpu`]: SGEMM throughput through cuBLAS (feature `gpu-compute`).
//!
//! Every benchmark takes a [`Seed`](crate::seed::Seed) and commits to its
//! chunk outputs ([`crate::proof`]). Every figure comes with its duration and
//! spread, and is refused ([`Error::Unstable`](crate::Error::Unstable)) when
//! its runs disagree by more than the stated bound.

pub mod cpu;
pub mod disk;
pub mod gpu;
pub mod mem;
pub mod stats;

use serde::{Deserialize, Serialize};

/// Everything one `fluxnode-hal bench` run measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BenchReport {
    /// CPU, all threads.
    pub cpu: Option<cpu::CpuResult>,
    /// CPU, one thread.
    pub cpu_single: Option<cpu::CpuResult>,
    /// Memory.
    pub memory: Option<mem::MemResult>,
    /// Disk.
    pub disk: Option<disk::DiskResult>,
    /// GPU compute.
    pub gpu: Option<gpu::GpuResult>,
    /// Wall time of the whole run, seconds.
    pub wall_s: f64,
}
