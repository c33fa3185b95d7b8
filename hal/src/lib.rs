//! fluxnode-hal: the hardware facts of a node, the tier benchmarks, and its TPM.
//!
//! Everything a node says about itself to the network comes from here:
//!
//! - [`inventory`] reads what the machine *is* (CPU, memory, disks, NICs,
//!   hypervisor, TPM, GPUs) from sysfs/procfs. Every read takes its root
//!   directory as a parameter so tests run against fixture trees.
//! - [`bench`] measures what the machine *does*, the way Flux's tier
//!   thresholds are defined: sysbench's `cpu` events per second, dd's
//!   `conv=fdatasync` write speed, plus 4 KiB random-write IOPS, memory
//!   bandwidth and (with the `gpu-compute` feature) GPU SGEMM throughput.
//!   All data a benchmark touches derives from a 32-byte seed, and every
//!   result carries a Merkle commitment ([`merkle`]) over its chunk outputs
//!   that a verifier spot-checks by recomputing a few chunks ([`proof`]).
//! - [`tier`] turns inventory + results + a TOML policy into the highest tier
//!   met and, for every tier missed, which requirement fell short by how much.
//! - [`tpm`] speaks to the TPM through `tss-esapi`: EK certificate, EK and a
//!   restricted signing AK, quotes, the firmware event log and
//!   ActivateCredential.
//! - [`gpu`] asks NVML (loaded at run time) about NVIDIA GPUs; no driver is a
//!   fact, not an error.
//!
//! The crate has no network code and no upward dependencies: `init`, `node`
//! and `ota` build on it.

#![deny(missing_docs)]

pub mod bench;
pub mod error;
pub mod gpu;
pub mod inventory;
pub mod merkle;
pub mod proof;
pub mod seed;
pub mod tier;
#[cfg(feature = "tpm")]
pub mod tpm;

pub use error::{Error, Result};
