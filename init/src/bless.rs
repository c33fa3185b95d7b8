//! Marks the current boot good: systemd-boot boot counting (issue 3).
//!
//! Reads `LoaderBootCountPath` from efivarfs and renames that UKI without its
//! `+LEFT-DONE` counter, then fsyncs the ESP.

/// Why blessing failed.
#[derive(Debug, thiserror::Error)]
pub enum BlessError {
    /// Not implemented yet.
    #[error("blessing is not implemented in this build")]
    Unimplemented,
}

/// Blesses the current boot; `Ok(None)` when there is nothing to bless
/// (no boot counter on this entry, or not booted by systemd-boot).
pub fn bless_current_boot() -> Result<Option<String>, BlessError> {
    Err(BlessError::Unimplemented)
}
