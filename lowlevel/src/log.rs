//! A small `tracing` subscriber: one line per event, written in one call.
//!
//! Why our own: `tracing-subscriber` with its formatter costs hundreds of
//! KiB of code, and PID 1's resident memory tracks the code it touches.
//! fluxnode's daemons log to stderr, which init captures line by line and
//! stamps with the service's name, so a line carries only a level, the
//! message and the fields: no time, no colour, no spans.
//!
//! A line is `{prefix}{level}{message}{ fields}`, for example
//! `WARN  lease lost interface=eth0 reason="nak from 10.0.2.2"`.
//! A field's value is written as it is unless it would be ambiguous
//! (empty, or holding a space, a quote, a `=` or a control character);
//! then it is written quoted and escaped.
//!
//! What differs between daemons is a parameter: the [`Sink`] (init writes
//! to a console that must never block it; netd to stderr), the prefix,
//! and how levels are labelled ([`Labels`]). The level can change at run
//! time through a [`DebugSwitch`] (init flips it on SIGUSR2).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Event, Interest, Level, LevelFilter, Metadata, Subscriber};

/// The subscriber could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A global subscriber was installed before; the first one stays.
    #[error("a global tracing subscriber is already installed")]
    AlreadySet,
}

/// Where finished lines go.
pub trait Sink: Send + Sync + 'static {
    /// Writes one line; `line` has no newline at its end.
    fn write_line(&self, line: &str);
}

/// Writes each line to stderr with one `write(2)`, so lines from
/// several processes sharing the descriptor do not interleave. Errors
/// are dropped: there is nowhere left to report them.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stderr;

impl Sink for Stderr {
    fn write_line(&self, line: &str) {
        let _ = write_stderr_line(line);
    }
}

/// Writes `line` and a newline to stderr in one call; for sinks that
/// add to what [`Stderr`] does (init counts lines a full console drops).
pub fn write_stderr_line(line: &str) -> std::io::Result<()> {
    let mut buf = String::with_capacity(line.len() + 1);
    buf.push_str(line);
    buf.push('\n');
    std::io::stderr().lock().write_all(buf.as_bytes())
}

/// Whether debug events are written, changeable while running.
#[derive(Debug, Default)]
pub struct DebugSwitch(AtomicBool);

impl DebugSwitch {
    /// A switch, on or off. `const` so that it can be a `static`.
    pub const fn new(on: bool) -> Self {
        DebugSwitch(AtomicBool::new(on))
    }

    /// Turns debug events on or off.
    pub fn set(&self, on: bool) {
        self.0.store(on, Ordering::Relaxed);
    }

    /// Whether debug events are on.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Flips the switch; returns the new state.
    pub fn toggle(&self) -> bool {
        !self.0.fetch_xor(true, Ordering::Relaxed)
    }
}

/// How a line names its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labels {
    /// Every level, padded to one width: `INFO  `, `WARN  `, `DEBUG `.
    /// For a service's stderr, where the reader filters by level.
    Padded,
    /// Nothing for INFO, `ERROR `/`WARN ` in capitals and `debug `/`trace `
    /// in lower case: for a console a person reads, where the ordinary
    /// lines should be quiet and problems should stand out.
    QuietInfo,
}

impl Labels {
    fn label(self, level: Level) -> &'static str {
        match (self, level) {
            (Labels::Padded, Level::ERROR) => "ERROR ",
            (Labels::Padded, Level::WARN) => "WARN  ",
            (Labels::Padded, Level::INFO) => "INFO  ",
            (Labels::Padded, Level::DEBUG) => "DEBUG ",
            (Labels::Padded, _) => "TRACE ",
            (Labels::QuietInfo, Level::ERROR) => "ERROR ",
            (Labels::QuietInfo, Level::WARN) => "WARN ",
            (Labels::QuietInfo, Level::INFO) => "",
            (Labels::QuietInfo, Level::DEBUG) => "debug ",
            (Labels::QuietInfo, _) => "trace ",
        }
    }
}

/// The subscriber: INFO and above always, DEBUG and TRACE while the
/// switch is on.
#[derive(Debug)]
pub struct LineLogger<S> {
    prefix: &'static str,
    labels: Labels,
    debug: &'static DebugSwitch,
    sink: S,
}

impl<S: Sink> LineLogger<S> {
    /// A logger writing `{prefix}{level}{message}{fields}` lines to `sink`.
    pub fn new(prefix: &'static str, labels: Labels, debug: &'static DebugSwitch, sink: S) -> Self {
        LineLogger {
            prefix,
            labels,
            debug,
            sink,
        }
    }

    /// Installs the logger for the whole process. Only the first call
    /// succeeds; a later one is refused and changes nothing.
    pub fn install(self) -> Result<(), LogError> {
        tracing_core::dispatcher::set_global_default(tracing_core::Dispatch::new(self))
            .map_err(|_| LogError::AlreadySet)
    }

    /// The line for `event`, without the newline.
    fn line(&self, event: &Event<'_>) -> String {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let label = self.labels.label(*event.metadata().level());
        let mut line = String::with_capacity(
            self.prefix.len() + label.len() + fields.message.len() + fields.rest.len(),
        );
        line.push_str(self.prefix);
        line.push_str(label);
        line.push_str(&fields.message);
        line.push_str(&fields.rest);
        line
    }
}

/// An event's message and its other fields, as ` name=value` pairs.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

/// True when `v` cannot stand unquoted after `name=` in a line that is
/// split on spaces.
fn needs_quotes(v: &str) -> bool {
    v.is_empty()
        || v.chars()
            .any(|c| c == ' ' || c == '"' || c == '=' || c.is_control())
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else if needs_quotes(value) {
            let _ = write!(self.rest, " {}={value:?}", field.name());
        } else {
            let _ = write!(self.rest, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            // `%x` fields arrive here as Display; quote them when needed.
            let s = format!("{value:?}");
            self.record_str(field, &s);
        }
    }
}

impl<S: Sink> Subscriber for LineLogger<S> {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if *meta.level() <= Level::INFO {
            Interest::always()
        } else {
            // Ask `enabled` each time, so flipping the switch takes
            // effect at once.
            Interest::sometimes()
        }
    }

    fn enabled(&self, meta: &Metadata<'_>) -> bool {
        *meta.level() <= Level::INFO || self.debug.get()
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        // The switch may turn on later: the hint must allow it.
        Some(LevelFilter::TRACE)
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        self.sink.write_line(&self.line(event));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<String>>>);

    impl Sink for Lines {
        fn write_line(&self, line: &str) {
            self.0.lock().unwrap().push(line.to_string());
        }
    }

    fn capture(labels: Labels, debug: &'static DebugSwitch, f: impl FnOnce()) -> Vec<String> {
        let lines = Lines::default();
        let logger = LineLogger::new("p: ", labels, debug, lines.clone());
        tracing::subscriber::with_default(logger, f);
        let out = lines.0.lock().unwrap().clone();
        out
    }

    #[test]
    fn message_then_fields() {
        static OFF: DebugSwitch = DebugSwitch::new(false);
        let err = std::io::Error::other("no route");
        let lines = capture(Labels::Padded, &OFF, || {
            tracing::info!(iface = "eth0", t1_s = 60, "lease acknowledged");
            tracing::warn!(error = %err, why = "", "lost");
            tracing::error!(path = ?"/a b", "x");
            tracing::debug!("not shown");
        });
        assert_eq!(
            lines,
            vec![
                "p: INFO  lease acknowledged iface=eth0 t1_s=60",
                "p: WARN  lost error=\"no route\" why=\"\"",
                "p: ERROR x path=\"\\\"/a b\\\"\"",
            ]
        );
    }

    #[test]
    fn quiet_labels_and_the_debug_switch() {
        static SWITCH: DebugSwitch = DebugSwitch::new(false);
        let lines = capture(Labels::QuietInfo, &SWITCH, || {
            tracing::info!("started");
            tracing::debug!("hidden");
            assert!(SWITCH.toggle());
            tracing::debug!(n = 1, "shown");
            tracing::warn!("careful");
            SWITCH.set(false);
            tracing::trace!("hidden again");
        });
        assert_eq!(
            lines,
            vec!["p: started", "p: debug shown n=1", "p: WARN careful"]
        );
        assert!(!SWITCH.get());
    }

    #[test]
    fn values_are_quoted_only_when_ambiguous() {
        for (v, quoted) in [
            ("eth0", false),
            ("10.0.2.15/24", false),
            ("", true),
            ("a b", true),
            ("a=b", true),
            ("a\"b", true),
            ("a\nb", true),
        ] {
            assert_eq!(needs_quotes(v), quoted, "{v:?}");
        }
    }
}
