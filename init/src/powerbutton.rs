//! Watches input devices for KEY_POWER (the ACPI power button) and asks
//! init for an ordered poweroff (issue 3).

/// Starts the watcher thread where input devices exist. Does nothing yet.
pub fn spawn_watcher() {}
