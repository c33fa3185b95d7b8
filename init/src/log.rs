//! Logging: a small `tracing` subscriber that writes one line per event to
//! stderr — for PID 1 that is /dev/console, where the kernel opened it.
//!
//! Why our own: `tracing-subscriber` with its formatter costs hundreds of KiB
//! of code, and init's resident memory tracks the code it touches. Each
//! event is written with one write(2), so lines from init never interleave.
//! SIGUSR2 toggles debug output at run time ([`toggle_debug`]).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Event, Interest, Level, Metadata, Subscriber};

static DEBUG: AtomicBool = AtomicBool::new(false);
static TIMESTAMPS: AtomicBool = AtomicBool::new(false);

/// The prefix of every line init writes.
pub const PREFIX: &str = "fluxnode-init: ";

/// Installs the subscriber; `debug` enables debug-level events.
pub fn init(debug: bool) {
    DEBUG.store(debug, Ordering::Relaxed);
    let _ = tracing::subscriber::set_global_default(ConsoleLog);
}

/// Stamps every console line (init's and services') with the seconds since
/// the kernel started, as dmesg does: `fluxnode.timestamps` on the kernel
/// command line, for reading a boot's timeline off the serial console.
pub fn set_timestamps(on: bool) {
    TIMESTAMPS.store(on, Ordering::Relaxed);
}

/// Flips debug output; returns the new state.
pub fn toggle_debug() -> bool {
    !DEBUG.fetch_xor(true, Ordering::Relaxed)
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

struct ConsoleLog;

struct Fields(String);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.insert_str(0, value);
        } else {
            let _ = write!(self.0, " {}={}", field.name(), value);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let s = format!("{value:?}");
            self.0.insert_str(0, &s);
        } else {
            let _ = write!(self.0, " {}={:?}", field.name(), value);
        }
    }
}

impl Subscriber for ConsoleLog {
    fn register_callsite(&self, _: &'static Metadata<'static>) -> Interest {
        // "sometimes": ask `enabled` each time, so SIGUSR2 takes effect at once.
        Interest::sometimes()
    }
    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        *meta.level() <= Level::INFO || DEBUG.load(Ordering::Relaxed)
    }
    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }
    fn record(&self, _: &Id, _: &Record<'_>) {}
    fn record_follows_from(&self, _: &Id, _: &Id) {}
    fn event(&self, event: &Event<'_>) {
        let mut f = Fields(String::new());
        event.record(&mut f);
        let level = match *event.metadata().level() {
            Level::ERROR => "ERROR ",
            Level::WARN => "WARN ",
            Level::DEBUG => "debug ",
            Level::TRACE => "trace ",
            _ => "",
        };
        write_line(&format!("{PREFIX}{level}{}", f.0));
    }
    fn enter(&self, _: &Id) {}
    fn exit(&self, _: &Id) {}
}
