//! How far the boot has come, as stage 2 sees it: one explicit state
//! machine instead of a handful of flags.
//!
//! ```text
//!  Starting ──first turn──▶ AwaitingVar ──/var ready──▶ Up ──required ready
//!  (watch the power button)             (late mounts)       for the grace──▶ Blessing{pid} ──▶ Complete
//!                                                                        └──(no bless)────────▶ Complete
//! ```
//!
//! Alongside the phase, once /var is ready, init reports "all services
//! ready" the first time nothing is still on its way up. That can come
//! before or after boot-complete (which looks at required services only),
//! so it is a field of the phases after /var rather than a phase of its
//! own.
//!
//! A boot that never gets there (a required service that never becomes
//! ready, a /var child that hangs) is ended when `boot_complete_timeout_s`
//! is set: [`BootAction::TimedOut`] once that long has passed since stage 2
//! started without boot-complete, and the supervisor reboots in order.
//! The reboot is a try that systemd-boot counted: a slot that never
//! completes runs out of tries like one that crashes.
//!
//! [`BootPhase::advance`] does no I/O: it is fed facts and answers with
//! actions ([`BootAction`]) that the supervisor carries out, the shape of
//! netd's DHCP client.

/// What the supervisor knows this turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Facts {
    /// Now (monotonic ms).
    pub now: u64,
    /// /var is mounted (or nobody mounts it for us).
    pub var_ready: bool,
    /// Some service is still on its way up (waiting, in backoff, not ready).
    pub any_pending: bool,
    /// Every required service is ready.
    pub required_ready: bool,
    /// An ordered shutdown is under way.
    pub shutting_down: bool,
    /// How long required services must stay ready.
    pub grace_ms: u64,
    /// When stage 2 started (monotonic ms).
    pub started: u64,
    /// Boot-complete must hold within this long of `started` (0 = no limit).
    pub timeout_ms: u64,
}

impl Facts {
    /// When the boot-complete timeout falls due, if there is one.
    fn timeout_at(&self) -> Option<u64> {
        (self.timeout_ms > 0).then(|| self.started.saturating_add(self.timeout_ms))
    }
}

/// Something to do, from [`BootPhase::advance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootAction {
    /// Start the power-button watcher (after the first services: a
    /// thread's start is ~5 ms under TCG).
    WatchPowerButton,
    /// Mount what needs /var (efivarfs, securityfs: see `mounts::LATE_MOUNTS`).
    MountLate,
    /// Log "all services ready" (or which failed).
    ReportStartup,
    /// Boot is complete: log it and run the boot-complete action.
    BootComplete,
    /// Boot-complete did not hold within `timeout_ms` of stage 2's start:
    /// say what is not ready and reboot in order (the supervisor's
    /// shutdown then stops further actions).
    TimedOut,
}

/// The phase of the boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootPhase {
    /// Before the first turn: no service spawned yet.
    Starting,
    /// The first services are spawned; /var is not ready, so only `early`
    /// services run.
    AwaitingVar,
    /// /var is ready; waiting for the required services to be ready for
    /// the grace period.
    Up {
        /// "all services ready" was logged.
        startup_reported: bool,
        /// Since when every required service has been ready.
        required_ready_since: Option<u64>,
    },
    /// Boot complete; the child marking the boot good runs.
    Blessing {
        /// The child's pid.
        pid: i32,
        /// "all services ready" was logged.
        startup_reported: bool,
    },
    /// Boot complete, blessed or with nothing to bless.
    Complete {
        /// "all services ready" was logged.
        startup_reported: bool,
    },
}

impl BootPhase {
    /// Moves on by `f`; the actions due, in order.
    pub fn advance(&mut self, f: Facts) -> Vec<BootAction> {
        let mut actions = Vec::new();
        if *self == BootPhase::Starting {
            actions.push(BootAction::WatchPowerButton);
            *self = BootPhase::AwaitingVar;
        }
        if !f.shutting_down && !self.is_complete() && f.timeout_at().is_some_and(|t| f.now >= t) {
            actions.push(BootAction::TimedOut);
            return actions;
        }
        if *self == BootPhase::AwaitingVar {
            if !f.var_ready {
                return actions;
            }
            actions.push(BootAction::MountLate);
            *self = BootPhase::Up {
                startup_reported: false,
                required_ready_since: None,
            };
        }
        if f.shutting_down {
            return actions;
        }
        if let Some(reported) = self.startup_reported_mut() {
            if !*reported && !f.any_pending {
                *reported = true;
                actions.push(BootAction::ReportStartup);
            }
        }
        if let BootPhase::Up {
            startup_reported,
            required_ready_since,
        } = *self
        {
            match (f.required_ready, required_ready_since) {
                (false, _) => {
                    *self = BootPhase::Up {
                        startup_reported,
                        required_ready_since: None,
                    }
                }
                (true, None) => {
                    *self = BootPhase::Up {
                        startup_reported,
                        required_ready_since: Some(f.now),
                    }
                }
                (true, Some(since)) if f.now >= since + f.grace_ms => {
                    *self = BootPhase::Complete { startup_reported };
                    actions.push(BootAction::BootComplete);
                }
                _ => {}
            }
        }
        actions
    }

    fn startup_reported_mut(&mut self) -> Option<&mut bool> {
        match self {
            BootPhase::Up {
                startup_reported, ..
            }
            | BootPhase::Blessing {
                startup_reported, ..
            }
            | BootPhase::Complete { startup_reported } => Some(startup_reported),
            BootPhase::Starting | BootPhase::AwaitingVar => None,
        }
    }

    /// The blessing child `pid` was started (right after boot-complete).
    pub fn blessing(&mut self, pid: i32) {
        if let BootPhase::Complete { startup_reported } = *self {
            *self = BootPhase::Blessing {
                pid,
                startup_reported,
            };
        }
    }

    /// The blessing child's pid, while it runs.
    pub fn blessing_pid(&self) -> Option<i32> {
        match *self {
            BootPhase::Blessing { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// The blessing child has ended (reaped, or lost).
    pub fn blessing_done(&mut self) {
        if let BootPhase::Blessing {
            startup_reported, ..
        } = *self
        {
            *self = BootPhase::Complete { startup_reported };
        }
    }

    /// Boot-complete has been reached.
    pub fn is_complete(&self) -> bool {
        matches!(
            self,
            BootPhase::Blessing { .. } | BootPhase::Complete { .. }
        )
    }

    /// When boot-complete falls due, if it is counting down.
    pub fn next_deadline(&self, grace_ms: u64) -> Option<u64> {
        match *self {
            BootPhase::Up {
                required_ready_since: Some(since),
                ..
            } => Some(since + grace_ms),
            _ => None,
        }
    }

    /// When the boot-complete timeout falls due (`timeout_ms` after
    /// `started`; 0 = none), while boot-complete has not been reached.
    pub fn timeout_deadline(&self, started: u64, timeout_ms: u64) -> Option<u64> {
        (timeout_ms > 0 && !self.is_complete()).then(|| started.saturating_add(timeout_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(now: u64) -> Facts {
        Facts {
            now,
            var_ready: true,
            any_pending: true,
            required_ready: false,
            shutting_down: false,
            grace_ms: 100,
            started: 0,
            timeout_ms: 0,
        }
    }

    #[test]
    fn a_boot_goes_through_every_phase() {
        let mut p = BootPhase::Starting;
        let a = p.advance(Facts {
            var_ready: false,
            ..facts(0)
        });
        assert_eq!(a, [BootAction::WatchPowerButton]);
        assert_eq!(p, BootPhase::AwaitingVar);
        assert!(p
            .advance(Facts {
                var_ready: false,
                ..facts(5)
            })
            .is_empty());
        assert_eq!(p.advance(facts(10)), [BootAction::MountLate]);
        assert_eq!(
            p.advance(Facts {
                required_ready: true,
                ..facts(20)
            }),
            []
        );
        assert_eq!(p.next_deadline(100), Some(120));
        // Readiness lost restarts the grace period.
        p.advance(facts(50));
        assert_eq!(p.next_deadline(100), None);
        let ready = |now| Facts {
            required_ready: true,
            ..facts(now)
        };
        p.advance(ready(60));
        assert!(p.advance(ready(159)).is_empty());
        assert_eq!(p.advance(ready(160)), [BootAction::BootComplete]);
        assert!(p.is_complete());
        p.blessing(77);
        assert_eq!(p.blessing_pid(), Some(77));
        // Startup is reported once, whenever nothing is pending, even after
        // boot-complete.
        let settled = |now| Facts {
            any_pending: false,
            ..ready(now)
        };
        assert_eq!(p.advance(settled(200)), [BootAction::ReportStartup]);
        assert!(p.advance(settled(300)).is_empty());
        p.blessing_done();
        assert_eq!(
            p,
            BootPhase::Complete {
                startup_reported: true
            }
        );
    }

    #[test]
    fn nothing_is_reported_or_completed_while_shutting_down() {
        let mut p = BootPhase::Starting;
        let f = Facts {
            shutting_down: true,
            any_pending: false,
            required_ready: true,
            ..facts(0)
        };
        assert_eq!(
            p.advance(f),
            [BootAction::WatchPowerButton, BootAction::MountLate]
        );
        assert!(p.advance(Facts { now: 10_000, ..f }).is_empty());
        assert!(!p.is_complete());
    }

    #[test]
    fn no_timeout_by_default() {
        let mut p = BootPhase::Starting;
        p.advance(facts(0));
        assert_eq!(p.timeout_deadline(0, 0), None);
        // Never ready, for a very long time: nothing happens.
        assert!(p.advance(facts(u64::MAX / 2)).is_empty());
        assert!(!p.is_complete());
    }

    #[test]
    fn a_boot_that_never_completes_times_out_once_due() {
        let timed = |now| Facts {
            started: 1_000,
            timeout_ms: 900_000,
            ..facts(now)
        };
        let mut p = BootPhase::Starting;
        p.advance(timed(1_000));
        assert_eq!(p.timeout_deadline(1_000, 900_000), Some(901_000));
        // Required services ready, but not for the grace period yet.
        assert!(p
            .advance(Facts {
                required_ready: true,
                ..timed(900_950)
            })
            .is_empty());
        assert!(p.advance(timed(900_999)).is_empty());
        assert_eq!(p.advance(timed(901_000)), [BootAction::TimedOut]);
        // The supervisor is rebooting now: nothing more, ever.
        let down = |now| Facts {
            shutting_down: true,
            ..timed(now)
        };
        assert!(p.advance(down(901_001)).is_empty());
        assert!(p.advance(down(2_000_000)).is_empty());
    }

    #[test]
    fn the_timeout_counts_while_var_is_awaited_too() {
        let mut p = BootPhase::Starting;
        let f = |now| Facts {
            var_ready: false,
            timeout_ms: 50,
            ..facts(now)
        };
        assert_eq!(p.advance(f(0)), [BootAction::WatchPowerButton]);
        assert!(p.advance(f(49)).is_empty());
        assert_eq!(p.advance(f(50)), [BootAction::TimedOut]);
        assert_eq!(p, BootPhase::AwaitingVar);
    }

    #[test]
    fn a_complete_boot_never_times_out() {
        let timed = |now| Facts {
            required_ready: true,
            timeout_ms: 1_000,
            ..facts(now)
        };
        let mut p = BootPhase::Starting;
        p.advance(timed(0));
        p.advance(timed(10));
        assert_eq!(p.advance(timed(110)), [BootAction::BootComplete]);
        assert_eq!(p.timeout_deadline(0, 1_000), None);
        // Readiness lost after boot-complete: still complete, no timeout.
        assert!(!p
            .advance(Facts {
                required_ready: false,
                ..timed(5_000)
            })
            .contains(&BootAction::TimedOut));
        p.blessing(9);
        assert!(p.advance(timed(9_000)).is_empty());
        assert_eq!(p.timeout_deadline(0, 1_000), None);
    }
}
