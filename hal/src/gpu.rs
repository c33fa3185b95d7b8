//! NVIDIA GPUs through NVML (`nvml-wrapper`).
//!
//! NVML is `dlopen`ed at run time, so the binary builds and runs on machines
//! without the NVIDIA driver. A missing driver, and a driver with zero GPUs,
//! are facts of the inventory (`status`), never errors: most nodes have no
//! GPU, and the probe must still exit 0 on them.

use nvml_wrapper::error::NvmlError;
use nvml_wrapper::Nvml;
use serde::{Deserialize, Serialize};

/// What the inventory says when `libnvidia-ml` cannot be loaded.
pub const NO_DRIVER: &str = "no NVIDIA driver found";
/// What the inventory says when the driver is there but sees no GPU.
pub const NO_GPUS: &str = "NVIDIA driver found, no GPUs";

/// The GPU part of the inventory.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GpuInventory {
    /// True when NVML loaded and initialised.
    pub driver_found: bool,
    /// One line for humans: [`NO_DRIVER`], [`NO_GPUS`], "N GPUs", or why NVML failed.
    pub status: String,
    /// Driver version (e.g. "550.54.15").
    pub driver_version: Option<String>,
    /// CUDA version the driver supports, e.g. "12.4".
    pub cuda_version: Option<String>,
    /// The GPUs.
    pub gpus: Vec<Gpu>,
}

impl GpuInventory {
    /// The inventory of a probe that was told not to look.
    pub fn skipped() -> Self {
        GpuInventory {
            status: "not probed".into(),
            ..Default::default()
        }
    }
}

/// One GPU. Fields the device does not support stay `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    /// Index in NVML's enumeration.
    pub index: u32,
    /// Product name.
    pub name: Option<String>,
    /// GPU UUID.
    pub uuid: Option<String>,
    /// Total memory in bytes.
    pub memory_bytes: Option<u64>,
    /// Compute capability, e.g. "9.0".
    pub compute_capability: Option<String>,
    /// Current PCIe generation.
    pub pcie_gen: Option<u32>,
    /// Current PCIe link width (lanes).
    pub pcie_width: Option<u32>,
    /// Maximum PCIe generation.
    pub pcie_gen_max: Option<u32>,
    /// Maximum PCIe link width.
    pub pcie_width_max: Option<u32>,
    /// Power management limit in watts.
    pub power_limit_w: Option<f64>,
    /// MIG mode currently enabled.
    pub mig_enabled: Option<bool>,
    /// Confidential computing enabled on the system (Hopper and later).
    pub confidential_computing: Option<bool>,
}

fn opt<T>(what: &str, r: Result<T, NvmlError>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(NvmlError::NotSupported) => None,
        Err(e) => {
            tracing::debug!("nvml {what}: {e}");
            None
        }
    }
}

/// Asks NVML. Never fails.
pub fn probe() -> GpuInventory {
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(NvmlError::LibloadingError(_))
        | Err(NvmlError::LibraryNotFound)
        | Err(NvmlError::DriverNotLoaded) => {
            return GpuInventory {
                status: NO_DRIVER.into(),
                ..Default::default()
            }
        }
        Err(e) => {
            return GpuInventory {
                status: format!("{NO_DRIVER}: nvml failed to initialise: {e}"),
                ..Default::default()
            }
        }
    };
    let driver_version = opt("driver version", nvml.sys_driver_version());
    let cuda_version = opt("cuda version", nvml.sys_cuda_driver_version())
        .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
    let count = opt("device count", nvml.device_count()).unwrap_or(0);
    let mut gpus = Vec::new();
    for index in 0..count {
        let d = match nvml.device_by_index(index) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!("nvml device {index}: {e}");
                continue;
            }
        };
        gpus.push(Gpu {
            index,
            name: opt("name", d.name()),
            uuid: opt("uuid", d.uuid()),
            memory_bytes: opt("memory", d.memory_info()).map(|m| m.total),
            compute_capability: opt("compute capability", d.cuda_compute_capability())
                .map(|c| format!("{}.{}", c.major, c.minor)),
            pcie_gen: opt("pcie gen", d.current_pcie_link_gen()),
            pcie_width: opt("pcie width", d.current_pcie_link_width()),
            pcie_gen_max: opt("max pcie gen", d.max_pcie_link_gen()),
            pcie_width_max: opt("max pcie width", d.max_pcie_link_width()),
            power_limit_w: opt("power limit", d.power_management_limit())
                .map(|mw| f64::from(mw) / 1000.0),
            mig_enabled: opt("mig mode", d.mig_mode()).map(|m| m.current == 1),
            confidential_computing: opt("confidential computing", d.is_cc_enabled()),
        });
    }
    let status = if gpus.is_empty() {
        NO_GPUS.to_string()
    } else {
        format!("{} GPU(s)", gpus.len())
    };
    GpuInventory {
        driver_found: true,
        status,
        driver_version,
        cuda_version,
        gpus,
    }
}
