//! The TPM part of the inventory: present, version, manufacturer, firmware.
//!
//! Presence and version come from sysfs (`/sys/class/tpm/tpm0`) and the
//! device nodes; manufacturer and firmware from the TPM itself
//! (TPM2_GetCapability), which needs it to answer. A TPM that is there but
//! does not answer is reported with `error`, never as a failed probe.

use serde::{Deserialize, Serialize};
use tss_esapi::constants::PropertyTag;

use super::Tpm;
use crate::inventory::{read_trimmed, Roots};

/// TPM facts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmInfo {
    /// A TPM was found (sysfs, a device node, or an explicit TCTI that answered).
    pub present: bool,
    /// "2.0" or "1.2".
    pub version: Option<String>,
    /// Manufacturer ID as its four ASCII letters (e.g. "IBM" for swtpm, "INTC", "IFX", "STM").
    pub manufacturer: Option<String>,
    /// Vendor string (TPM_PT_VENDOR_STRING_1..4).
    pub vendor: Option<String>,
    /// Firmware version, "major.minor.x.y" from TPM_PT_FIRMWARE_VERSION_1/2.
    pub firmware: Option<String>,
    /// The device node or TCTI used to ask it.
    pub device: Option<String>,
    /// Why the TPM could not be asked, if it could not.
    pub error: Option<String>,
}

fn ascii4(v: u32) -> String {
    v.to_be_bytes()
        .iter()
        .filter(|b| b.is_ascii_graphic())
        .map(|b| char::from(*b))
        .collect()
}

/// Reads manufacturer, vendor string and firmware from an open TPM.
pub fn properties(
    tpm: &mut Tpm,
) -> crate::Result<(Option<String>, Option<String>, Option<String>)> {
    let mut get = |tag| {
        tpm.ctx
            .get_tpm_property(tag)
            .map_err(|e| crate::Error::tpm("GetCapability", e))
    };
    let manufacturer = get(PropertyTag::Manufacturer)?.map(ascii4);
    let mut vendor = String::new();
    for tag in [
        PropertyTag::VendorString1,
        PropertyTag::VendorString2,
        PropertyTag::VendorString3,
        PropertyTag::VendorString4,
    ] {
        if let Some(v) = get(tag)? {
            vendor.push_str(&ascii4(v));
        }
    }
    let fw1 = get(PropertyTag::FirmwareVersion1)?;
    let fw2 = get(PropertyTag::FirmwareVersion2)?;
    let firmware = fw1.map(|a| {
        let b = fw2.unwrap_or(0);
        format!("{}.{}.{}.{}", a >> 16, a & 0xffff, b >> 16, b & 0xffff)
    });
    Ok((
        manufacturer,
        (!vendor.is_empty()).then_some(vendor),
        firmware,
    ))
}

/// Probes the TPM. `tcti`, if given, is asked even without sysfs traces
/// (swtpm in tests); otherwise `/dev/tpmrm0`, then `/dev/tpm0`, under `roots.dev`.
pub fn probe(roots: &Roots, tcti: Option<&str>) -> TpmInfo {
    let class = roots.sys.join("class/tpm/tpm0");
    let mut info = TpmInfo::default();
    if class.exists() {
        info.present = true;
        info.version = read_trimmed(&class.join("tpm_version_major")).map(|v| match v.as_str() {
            "2" => "2.0".to_string(),
            "1" => "1.2".to_string(),
            other => other.to_string(),
        });
    }
    let node = ["tpmrm0", "tpm0"]
        .iter()
        .map(|n| roots.dev.join(n))
        .find(|p| p.exists());
    if node.is_some() {
        info.present = true;
    }
    let tcti = match (tcti, &node) {
        (Some(t), _) => t.to_string(),
        (None, Some(p)) => format!("device:{}", p.display()),
        (None, None) => return info,
    };
    if info.version.as_deref() == Some("1.2") {
        info.error = Some("TPM 1.2 is not supported (need TPM 2.0)".into());
        return info;
    }
    info.device = Some(tcti.clone());
    match Tpm::open(&tcti).and_then(|mut t| properties(&mut t)) {
        Ok((m, v, f)) => {
            info.present = true;
            info.version.get_or_insert_with(|| "2.0".to_string());
            (info.manufacturer, info.vendor, info.firmware) = (m, v, f);
        }
        Err(e) => info.error = Some(e.to_string()),
    }
    info
}
