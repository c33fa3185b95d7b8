//! Virtualization: the CPU's `hypervisor` flag and the DMI vendor.

use serde::{Deserialize, Serialize};

use super::{read_trimmed, Roots};

/// Whether and where the machine is virtualized.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Virtualization {
    /// The CPU reports the `hypervisor` flag.
    pub hypervisor: bool,
    /// `/sys/class/dmi/id/sys_vendor` (e.g. "QEMU", "Dell Inc.").
    pub dmi_vendor: Option<String>,
    /// `/sys/class/dmi/id/product_name`.
    pub dmi_product: Option<String>,
}

/// Reads the DMI fields.
pub fn read(roots: &Roots, hypervisor_flag: bool) -> Virtualization {
    let dmi = roots.sys.join("class/dmi/id");
    Virtualization {
        hypervisor: hypervisor_flag,
        dmi_vendor: read_trimmed(&dmi.join("sys_vendor")).filter(|s| !s.is_empty()),
        dmi_product: read_trimmed(&dmi.join("product_name")).filter(|s| !s.is_empty()),
    }
}
