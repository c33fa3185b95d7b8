//! Logging: the shared line logger of `fluxnode-lowlevel`, writing to
//! stderr — for PID 1 that is /dev/console, where the kernel opened it.
//!
//! The line format (`fluxnode-init: ` prefix, quiet INFO labels) and the
//! debug switch are the shared logger's; what stays here is the console:
//! optional uptime stamps, and non-blocking writes whose dropped lines are
//! counted ([`write_line`], also used for services' output lines). Each
//! line is written with one write(2), so lines from init never interleave.
//! SIGUSR2 toggles debug output at run time ([`toggle_debug`]).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use fluxnode_lowlevel::log::{DebugSwitch, Labels, LineLogger, Sink};

static DEBUG: DebugSwitch = DebugSwitch::new(false);
static TIMESTAMPS: AtomicBool = AtomicBool::new(false);

/// The prefix of every line init writes.
pub const PREFIX: &str = "fluxnode-init: ";

/// Installs the subscriber; `debug` enables debug-level events.
pub fn init(debug: bool) {
    DEBUG.set(debug);
    // A second call (stage 2 calls it again once it has read the command
    // line) only changes the switch: the first logger stays installed.
    let _ = LineLogger::new(PREFIX, Labels::QuietInfo, &DEBUG, Console).install();
}

/// Stamps every console line (init's and services') with the seconds since
/// the kernel started, as dmesg does: `fluxnode.timestamps` on the kernel
/// command line, for reading a boot's timeline off the serial console.
pub fn set_timestamps(on: bool) {
    TIMESTAMPS.store(on, Ordering::Relaxed);
}

/// Flips debug output; returns the new state.
pub fn toggle_debug() -> bool {
    DEBUG.toggle()
}

static DROPPED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Makes console writes non-blocking (or blocking again). PID 1 must not
/// stall behind a slow serial console because a service is chatty: when
/// the console cannot take a line, the line is dropped from the console
/// (it stays in the service's ring buffer) and counted.
pub fn set_console_nonblocking(on: bool) {
    // SAFETY: fcntl on fd 2, which the kernel opened for PID 1.
    unsafe {
        let flags = libc::fcntl(2, libc::F_GETFL);
        if flags >= 0 {
            let flags = if on {
                flags | libc::O_NONBLOCK
            } else {
                flags & !libc::O_NONBLOCK
            };
            libc::fcntl(2, libc::F_SETFL, flags);
        }
    }
    if !on {
        let n = DROPPED.swap(0, Ordering::Relaxed);
        if n > 0 {
            write_line(&format!(
                "{PREFIX}{n} console lines were dropped (console too slow)"
            ));
        }
    }
}

/// Writes `line` (no newline) to stderr in one call.
pub fn write_line(line: &str) {
    let mut buf = String::with_capacity(line.len() + 16);
    if TIMESTAMPS.load(Ordering::Relaxed) {
        let _ = write!(buf, "[{:12.6}] ", crate::sys::uptime());
    }
    buf.push_str(line);
    buf.push('\n');
    if let Err(e) = std::io::stderr().write_all(buf.as_bytes()) {
        if e.kind() == std::io::ErrorKind::WouldBlock {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The console as the shared logger's output: [`write_line`].
struct Console;

impl Sink for Console {
    fn write_line(&self, line: &str) {
        write_line(line);
    }
}
