//! The firmware's measured-boot event log, read raw.
//!
//! The kernel exposes what UEFI measured into the PCRs before it ran as
//! `binary_bios_measurements` (TCG PC Client format). We hand the bytes on
//! unparsed: the verifier replays them against the quoted PCRs with its own
//! parser (or `tpm2_eventlog`), so the node's parser is never trusted.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Where Linux puts the log.
pub const DEFAULT_PATH: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";

/// The path under a sysfs root (`SYS/kernel/security/tpm0/...`).
pub fn path_under(sys_root: &Path) -> PathBuf {
    sys_root.join("kernel/security/tpm0/binary_bios_measurements")
}

/// Reads the log at `path`.
pub fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        let hint = if e.kind() == std::io::ErrorKind::NotFound {
            " (no firmware event log: securityfs not mounted, no TPM, or a firmware that does not log)"
        } else {
            ""
        };
        Error::Io { action: if hint.is_empty() { "reading" } else { "reading event log" }, path: path.to_path_buf(), source: std::io::Error::new(e.kind(), format!("{e}{hint}")) }
    })
}
