//! The loop's overrun guard: a turn of netd's loop that takes longer than
//! it should is logged with what the loop was waiting for.
//!
//! Two ways a turn can overrun, and both left netd silent before:
//! - the wake-up comes late: `poll` returned well after the deadline it
//!   was given (a timer or clock problem);
//! - the work after a wake-up takes too long: something the loop called
//!   blocked (a send into a full queue did, see docs/NETD.md).
//!
//! The guard is free of I/O and clocks: the loop passes `Instant`s in, so
//! the tests drive it with made-up times.

use std::time::{Duration, Instant};

/// Past this, a late wake-up or a long turn is logged. Nothing in a turn
/// (a netlink dump, a few sends) takes more than a few ms even under TCG.
pub const OVERRUN: Duration = Duration::from_millis(500);

/// What overran, for the log line and the tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overrun {
    /// `poll` returned this long after the deadline it was given.
    LateWake {
        /// What the loop was waiting for.
        waiting_for: &'static str,
        /// How far past the deadline.
        late: Duration,
    },
    /// The work between a wake-up and the next wait took this long.
    LongTurn {
        /// What the loop had been waiting for when it woke.
        woke_from: &'static str,
        /// How long the turn took.
        took: Duration,
    },
}

/// Tracks one loop's waits; see the module docs.
#[derive(Debug, Default)]
pub struct LoopGuard {
    waiting_for: &'static str,
    deadline: Option<Instant>,
    woke_at: Option<Instant>,
    overruns: u64,
}

impl LoopGuard {
    /// The loop is about to wait for `what`, until `deadline` at the latest.
    pub fn waiting(&mut self, what: &'static str, deadline: Option<Instant>) {
        self.waiting_for = what;
        self.deadline = deadline;
    }

    /// `poll` returned at `now`.
    pub fn woke(&mut self, now: Instant) -> Option<Overrun> {
        self.woke_at = Some(now);
        let late = now.saturating_duration_since(self.deadline?);
        (late > OVERRUN).then(|| {
            self.report(Overrun::LateWake {
                waiting_for: self.waiting_for,
                late,
            })
        })
    }

    /// The loop has done its work and is about to wait again at `now`.
    pub fn before_wait(&mut self, now: Instant) -> Option<Overrun> {
        let took = now.saturating_duration_since(self.woke_at.take()?);
        (took > OVERRUN).then(|| {
            self.report(Overrun::LongTurn {
                woke_from: self.waiting_for,
                took,
            })
        })
    }

    /// How many overruns were seen so far.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    fn report(&mut self, o: Overrun) -> Overrun {
        self.overruns += 1;
        match o {
            Overrun::LateWake { waiting_for, late } => tracing::warn!(
                waiting_for,
                late_ms = late.as_millis() as u64,
                overruns = self.overruns,
                "loop overrun: woke late past its deadline"
            ),
            Overrun::LongTurn { woke_from, took } => tracing::warn!(
                woke_from,
                took_ms = took.as_millis() as u64,
                overruns = self.overruns,
                "loop overrun: a turn blocked (was waiting for {woke_from})"
            ),
        }
        o
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn on_time_turns_are_quiet() {
        let t0 = Instant::now();
        let mut g = LoopGuard::default();
        g.waiting("bound", Some(t0 + Duration::from_secs(4)));
        assert_eq!(g.woke(t0 + Duration::from_secs(4)), None);
        assert_eq!(g.before_wait(t0 + Duration::from_millis(4010)), None);
        // Woken early by a packet: also fine.
        g.waiting("renewing", Some(t0 + Duration::from_secs(60)));
        assert_eq!(g.woke(t0 + Duration::from_secs(5)), None);
        // No deadline at all.
        g.waiting("a stop (static)", None);
        assert_eq!(g.woke(t0 + Duration::from_secs(500)), None);
        assert_eq!(g.overruns(), 0);
    }

    #[test]
    fn a_late_wake_names_what_was_awaited() {
        let t0 = Instant::now();
        let mut g = LoopGuard::default();
        g.waiting("renewing", Some(t0));
        assert_eq!(
            g.woke(t0 + Duration::from_secs(3)),
            Some(Overrun::LateWake {
                waiting_for: "renewing",
                late: Duration::from_secs(3)
            })
        );
        assert_eq!(g.overruns(), 1);
    }

    #[test]
    fn a_blocked_turn_names_what_woke_it() {
        let t0 = Instant::now();
        let mut g = LoopGuard::default();
        assert_eq!(
            g.before_wait(t0),
            None,
            "the first wait has no turn before it"
        );
        g.waiting("renewing", Some(t0 + Duration::from_secs(1)));
        assert_eq!(g.woke(t0 + Duration::from_secs(1)), None);
        assert_eq!(
            g.before_wait(t0 + Duration::from_secs(12)),
            Some(Overrun::LongTurn {
                woke_from: "renewing",
                took: Duration::from_secs(11)
            })
        );
        // Counted once: the next wait starts a new turn.
        assert_eq!(g.before_wait(t0 + Duration::from_secs(13)), None);
        assert_eq!(g.overruns(), 1);
    }
}
