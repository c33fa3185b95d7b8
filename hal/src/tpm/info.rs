//! placeholder
use serde::{Deserialize, Serialize};
/// TPM facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmInfo {
    /// present
    pub present: bool,
    /// v
    pub version: Option<String>,
    /// m
    pub manufacturer: Option<String>,
    /// f
    pub firmware: Option<String>,
    /// d
    pub device: Option<String>,
    /// e
    pub error: Option<String>,
}
/// probe
pub fn probe(_r: &crate::inventory::Roots, _t: Option<&str>) -> TpmInfo {
    TpmInfo::default()
}
