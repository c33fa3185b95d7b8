//! A tiny `tracing` subscriber: one line per event on stderr.
//!
//! Our init captures a service's stderr line by line and stamps it, so
//! netd prints only the level, the message and the fields — no time, no
//! colour — and the full `tracing-subscriber` stack stays out of the binary.

use std::fmt::Write as _;
use std::io::Write as _;

use tracing_core::field::{Field, Visit};
use tracing_core::span::{Attributes, Id, Record};
use tracing_core::{Event, Level, LevelFilter, Metadata, Subscriber};

#[derive(Debug)]
struct Stderr {
    max: Level,
}

#[derive(Default)]
struct Line {
    message: String,
    fields: String,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }
}

/// Formats one event's fields as `message k=v ...`.
fn format_event(event: &Event<'_>) -> String {
    let mut line = Line::default();
    event.record(&mut line);
    format!("{}{}", line.message, line.fields)
}

impl Subscriber for Stderr {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        *metadata.level() <= self.max
    }

    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::from_level(self.max))
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let level = event.metadata().level().as_str();
        let _ = writeln!(
            std::io::stderr().lock(),
            "{level:<5} {}",
            format_event(event)
        );
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

/// Installs the subscriber for the process; `verbose` adds debug events.
/// A second call is ignored.
pub fn init(verbose: bool) {
    let max = if verbose { Level::DEBUG } else { Level::INFO };
    let _ =
        tracing_core::dispatcher::set_global_default(tracing_core::Dispatch::new(Stderr { max }));
}
