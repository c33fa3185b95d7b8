//! Network interfaces, from `/sys/class/net`.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::read_trimmed;

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    /// Interface name.
    pub name: String,
    /// Kernel driver (`DRIVER=` of the device's uevent); `None` for virtual interfaces.
    pub driver: Option<String>,
    /// Link speed in Mb/s; `None` when the link is down or the driver does not say.
    pub speed_mbps: Option<u64>,
    /// MAC address.
    pub mac: Option<String>,
    /// `operstate` (up, down, unknown).
    pub state: Option<String>,
}

/// Reads every interface except `lo`.
pub fn read(sys_root: &Path) -> Vec<Nic> {
    let dir = sys_root.join("class/net");
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut names: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.retain(|n| n != "lo");
    names.sort();
    names
        .into_iter()
        .map(|name| {
            let d = dir.join(&name);
            let driver = std::fs::read_to_string(d.join("device/uevent"))
                .ok()
                .and_then(|u| {
                    u.lines()
                        .find_map(|l| l.strip_prefix("DRIVER=").map(str::to_string))
                });
            // `speed` reads -1 or fails with EINVAL when the link is down.
            let speed_mbps = read_trimmed(&d.join("speed"))
                .and_then(|s| s.parse::<i64>().ok())
                .and_then(|s| u64::try_from(s).ok());
            Nic {
                driver,
                speed_mbps,
                mac: read_trimmed(&d.join("address")),
                state: read_trimmed(&d.join("operstate")),
                name,
            }
        })
        .collect()
}
