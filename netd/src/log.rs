//! Logging: one line per event on stderr, through the subscriber shared
//! with init (`fluxnode_lowlevel::log`).
//!
//! Our init captures a service's stderr line by line and stamps it, so
//! netd prints only the level, the message and the fields — no time, no
//! colour — and the full `tracing-subscriber` stack stays out of the binary.
//! Levels are padded labels (`INFO  lease acknowledged address=...`), which
//! read well in init's per-service log.

use fluxnode_lowlevel::log::{DebugSwitch, Labels, LineLogger, Stderr};

static DEBUG: DebugSwitch = DebugSwitch::new(false);

/// Installs the subscriber for the process; `verbose` adds debug events.
/// A second call changes only whether debug events are written.
pub fn init(verbose: bool) {
    DEBUG.set(verbose);
    // Refused only when a subscriber is already installed: that one stays.
    let _ = LineLogger::new("", Labels::Padded, &DEBUG, Stderr).install();
}
