//! One supervised service: its state machine and its captured output.
//!
//! Every transition of a service is a method here, free of I/O: the
//! supervisor feeds in what happened (an exit, a timer, a notification, a
//! request) and the time, and acts on what comes back (send a signal, log,
//! escalate). So the restart policy, the backoff and the start limit are
//! unit-tested below without processes or a namespace.
//!
//! ```text
//!  Waiting ──deps ready──▶ Running{ready:false} ──READY=1──▶ Running{ready:true}
//!     ▲                        │ exit                            │ exit
//!     │ backoff over           ▼                                 ▼
//!  Backoff ◀──restart policy── (decide) ──no restart──▶ Exited / Done / Failed
//!                              start limit hit ──────▶ Failed (+ escalation)
//!  Running ──stop──▶ Stopping ──exit──▶ Stopped (or Waiting on restart)
//! ```

use std::collections::VecDeque;

use crate::config::{Backoff, Restart, ServiceSpec, ServiceType};
use crate::notify::Notification;
use crate::output::{LogRing, OutputPipe};
use crate::sys::ExitStatus;

/// What happens when a stopping service has exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterStop {
    /// Stay stopped.
    Stay,
    /// Start again (ctl restart).
    Restart,
}

/// Where a service is.
#[derive(Debug, Clone, PartialEq)]
pub enum State {
    /// Not started yet: waiting for its dependencies.
    Waiting,
    /// Its process runs.
    Running {
        /// Main pid (and process group).
        pid: i32,
        /// Ready (spawned for simple, READY=1 for notify).
        ready: bool,
        /// When it started (monotonic ms).
        since_ms: u64,
    },
    /// Asked to stop; SIGKILL at the deadline.
    Stopping {
        /// Main pid.
        pid: i32,
        /// When to send SIGKILL.
        deadline_ms: u64,
        /// SIGKILL already sent.
        killed: bool,
        /// What next.
        then: AfterStop,
    },
    /// Waiting out the backoff before a restart.
    Backoff {
        /// When to start again.
        until_ms: u64,
    },
    /// A oneshot that finished with status 0.
    Done,
    /// Ended and not restarted by policy.
    Exited(ExitStatus),
    /// Given up: start limit, failed dependency, cannot spawn.
    Failed(String),
    /// Stopped on request or at shutdown.
    Stopped,
}

impl State {
    /// A short name for status output.
    pub fn name(&self) -> &'static str {
        match self {
            State::Waiting => "waiting",
            State::Running { ready: true, .. } => "running",
            State::Running { ready: false, .. } => "starting",
            State::Stopping { .. } => "stopping",
            State::Backoff { .. } => "backoff",
            State::Done => "done",
            State::Exited(_) => "exited",
            State::Failed(_) => "failed",
            State::Stopped => "stopped",
        }
    }
}

/// A service and its bookkeeping.
#[derive(Debug)]
pub struct Service {
    /// The validated config.
    pub spec: ServiceSpec,
    /// Its state.
    pub state: State,
    /// Recent start times (ms), for the start limit.
    pub starts: VecDeque<u64>,
    /// Consecutive failures, for the backoff.
    pub failures: u32,
    /// Times restarted.
    pub restarts: u32,
    /// The last STATUS= text.
    pub status_text: String,
    /// When the software watchdog fires (ms).
    pub watchdog_deadline: Option<u64>,
    /// The watchdog fired for the current process.
    pub watchdog_fired: bool,
    /// Output pipes still open: the current process's, and older ones that
    /// orphaned descendants still write to (kept until EOF, so their last
    /// words are logged and they do not die of SIGPIPE).
    pub outputs: Vec<OutputPipe>,
    /// The last lines it printed, bounded in lines and bytes.
    pub log: LogRing,
    /// The cgroup.procs path it joins.
    pub cgroup_procs: Option<std::path::PathBuf>,
    /// Where its current process reports a failure before exec
    /// ([`crate::spawn::failure_before_exec`]), read when it exits.
    pub exec_report: Option<std::os::fd::OwnedFd>,
}

/// A run this long resets the backoff: the service was healthy.
pub const STABLE_RUN_MS: u64 = 10_000;

/// What became of a service whose process ended ([`Service::exited`]),
/// for the supervisor to log and act on. The state is already updated.
#[derive(Debug, Clone, PartialEq)]
pub enum ExitOutcome {
    /// It was being stopped; it is now stopped (or waiting, on a restart).
    Stopped,
    /// A oneshot finished with status 0.
    Finished,
    /// Ended and stays ended by policy (`why` says how it ended).
    Exited(String),
    /// Restarts after `delay_ms`. `failure` is the consecutive failure
    /// count when the run failed; `None` for a clean exit under
    /// `restart = "always"`, which does not grow the backoff.
    Restarting {
        /// How the run ended.
        why: String,
        /// The delay before the next start.
        delay_ms: u64,
        /// The failure count, for failures.
        failure: Option<u32>,
    },
    /// Failed for good (no restart by policy, or shutting down): the
    /// supervisor marks it failed and escalates if it is required.
    GiveUp(String),
    /// Not running: nothing to do (an exit already accounted for).
    NotRunning,
}

/// What a timer did to a service ([`Service::on_timer`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerAction {
    /// The backoff is over: it waits for its dependencies again.
    BackoffOver,
    /// It did not stop in time: SIGKILL its group.
    KillAfterStopTimeout(i32),
    /// It missed its software watchdog: SIGKILL its group.
    WatchdogMissed(i32),
}

/// The restart decision for a run that ended, with no I/O.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEnd {
    /// How it ended.
    pub status: ExitStatus,
    /// It never reached its program (a failure before exec).
    pub not_started: bool,
    /// init is shutting down: nothing restarts.
    pub shutting_down: bool,
}

impl Service {
    /// A new, waiting service keeping `log_lines` lines and `log_bytes`
    /// bytes of output.
    pub fn new(spec: ServiceSpec, log_lines: usize, log_bytes: usize) -> Self {
        Service {
            spec,
            state: State::Waiting,
            starts: VecDeque::new(),
            failures: 0,
            restarts: 0,
            status_text: String::new(),
            watchdog_deadline: None,
            watchdog_fired: false,
            outputs: Vec::new(),
            log: LogRing::new(log_lines, log_bytes),
            cgroup_procs: None,
            exec_report: None,
        }
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Ready: dependents that `require` it may start.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Running { ready: true, .. } | State::Done)
    }

    /// Settled: dependents ordered `after` it may start.
    pub fn is_settled(&self) -> bool {
        self.is_ready()
            || matches!(
                self.state,
                State::Exited(_) | State::Failed(_) | State::Stopped
            )
    }

    /// Still on its way up: counts against "all services ready".
    pub fn is_pending(&self) -> bool {
        matches!(
            self.state,
            State::Waiting | State::Backoff { .. } | State::Running { ready: false, .. }
        )
    }

    /// Has a process.
    pub fn pid(&self) -> Option<i32> {
        match self.state {
            State::Running { pid, .. } | State::Stopping { pid, .. } => Some(pid),
            _ => None,
        }
    }

    /// Ready as soon as it is spawned.
    pub fn ready_on_spawn(&self) -> bool {
        self.spec.cfg.kind == ServiceType::Simple
    }

    /// Drops start times older than the start-limit interval; true when one
    /// more start would exceed the limit. Every start counts, whatever the
    /// previous run's exit status, as with systemd's StartLimitBurst.
    pub fn start_limit_hit(&mut self, now_ms: u64) -> bool {
        let window = self.spec.cfg.start_limit.interval_s * 1000;
        while self
            .starts
            .front()
            .is_some_and(|&t| now_ms.saturating_sub(t) >= window)
        {
            self.starts.pop_front();
        }
        self.starts.len() >= self.spec.cfg.start_limit.burst as usize
    }

    /// Its process `pid` was created at `now`.
    pub fn spawned(&mut self, now: u64, pid: i32) {
        self.starts.push_back(now);
        self.watchdog_fired = false;
        self.watchdog_deadline =
            (self.spec.cfg.watchdog_ms > 0).then(|| now + self.spec.cfg.watchdog_ms);
        self.state = State::Running {
            pid,
            ready: self.ready_on_spawn(),
            since_ms: now,
        };
    }

    /// Its process could not be created: a failed start (it counts toward
    /// the start limit, and restarts per policy like a failed run).
    pub fn spawn_failed(
        &mut self,
        now: u64,
        why: String,
        shutting_down: bool,
        rand01: f64,
    ) -> ExitOutcome {
        self.starts.push_back(now);
        self.after_failure(now, why, shutting_down, rand01)
    }

    /// Its process ended at `now`: the next state by its restart policy.
    /// `why` overrides the description of the end (a failure before exec).
    pub fn exited(
        &mut self,
        now: u64,
        end: RunEnd,
        why: Option<String>,
        rand01: f64,
    ) -> ExitOutcome {
        self.watchdog_deadline = None;
        match self.state.clone() {
            State::Stopping { then, .. } => {
                self.state = if then == AfterStop::Restart && !end.shutting_down {
                    State::Waiting
                } else {
                    State::Stopped
                };
                ExitOutcome::Stopped
            }
            State::Running { since_ms, .. } => {
                if now.saturating_sub(since_ms) >= STABLE_RUN_MS {
                    self.failures = 0;
                }
                let failed = !end.status.success() || self.watchdog_fired || end.not_started;
                let why = why.unwrap_or_else(|| {
                    if self.watchdog_fired {
                        format!("missed its watchdog ({})", end.status)
                    } else if end.status == ExitStatus::Signal(libc::SIGSYS)
                        && self.spec.sandbox.seccomp.is_some()
                    {
                        // The kernel does not say which call; with auditing
                        // on, dmesg does (type=1326, syscall=N).
                        format!(
                            "was killed by seccomp ({}, SIGSYS): it made a system call its system_call_filter does not allow",
                            end.status
                        )
                    } else {
                        format!("exited ({})", end.status)
                    }
                });
                if failed {
                    return self.after_failure(now, why, end.shutting_down, rand01);
                }
                if self.spec.cfg.kind == ServiceType::Oneshot {
                    self.state = State::Done;
                    return ExitOutcome::Finished;
                }
                if self.spec.cfg.restart == Restart::Always && !end.shutting_down {
                    // A clean exit is not a failure: restart after the base
                    // delay (systemd's RestartSec), the backoff unchanged.
                    let delay_ms = self.spec.cfg.backoff.initial_ms;
                    self.restarts += 1;
                    self.state = State::Backoff {
                        until_ms: now + delay_ms,
                    };
                    return ExitOutcome::Restarting {
                        why,
                        delay_ms,
                        failure: None,
                    };
                }
                self.state = State::Exited(end.status);
                ExitOutcome::Exited(why)
            }
            _ => ExitOutcome::NotRunning,
        }
    }

    /// A failed run or start: restart after the backoff, or give up.
    fn after_failure(
        &mut self,
        now: u64,
        why: String,
        shutting_down: bool,
        rand01: f64,
    ) -> ExitOutcome {
        if self.spec.cfg.restart == Restart::Never || shutting_down {
            return ExitOutcome::GiveUp(why);
        }
        self.failures += 1;
        let delay_ms = backoff_delay_ms(&self.spec.cfg.backoff, self.failures, rand01);
        self.restarts += 1;
        self.state = State::Backoff {
            until_ms: now + delay_ms,
        };
        ExitOutcome::Restarting {
            why,
            delay_ms,
            failure: Some(self.failures),
        }
    }

    /// Marks it failed for good.
    pub fn fail(&mut self, why: String) {
        self.state = State::Failed(why);
        self.watchdog_deadline = None;
    }

    /// Asks it to stop at `now`: the pid to signal, if it runs. A service
    /// not running stays stopped, or waits to start again on a restart.
    pub fn stop(&mut self, now: u64, then: AfterStop) -> Option<i32> {
        match self.state {
            State::Running { pid, .. } => {
                self.state = State::Stopping {
                    pid,
                    deadline_ms: now + self.spec.cfg.stop.timeout_ms,
                    killed: false,
                    then,
                };
                Some(pid)
            }
            State::Stopping { .. } => None,
            _ => {
                self.state = if then == AfterStop::Restart {
                    State::Waiting
                } else {
                    State::Stopped
                };
                None
            }
        }
    }

    /// Shutdown has begun: what has not started never will.
    pub fn cancel_pending_start(&mut self) {
        if matches!(self.state, State::Waiting | State::Backoff { .. }) {
            self.state = State::Stopped;
        }
    }

    /// An operator's start or restart of a service without a process is a
    /// fresh start: a failed service gets its start limit and backoff back.
    pub fn operator_start(&mut self) {
        self.state = State::Waiting;
        self.starts.clear();
        self.failures = 0;
    }

    /// The timers that are due at `now`, applied.
    pub fn on_timer(&mut self, now: u64) -> Option<TimerAction> {
        match self.state {
            State::Backoff { until_ms } if now >= until_ms => {
                self.state = State::Waiting;
                Some(TimerAction::BackoffOver)
            }
            State::Stopping {
                pid,
                deadline_ms,
                killed: false,
                then,
            } if now >= deadline_ms => {
                self.state = State::Stopping {
                    pid,
                    deadline_ms,
                    killed: true,
                    then,
                };
                Some(TimerAction::KillAfterStopTimeout(pid))
            }
            State::Running { pid, .. } => match self.watchdog_deadline {
                Some(w) if now >= w && !self.watchdog_fired => {
                    self.watchdog_fired = true;
                    self.watchdog_deadline = None;
                    Some(TimerAction::WatchdogMissed(pid))
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// Its next timer, if any.
    pub fn next_deadline(&self) -> Option<u64> {
        match self.state {
            State::Backoff { until_ms } => Some(until_ms),
            State::Stopping {
                deadline_ms,
                killed: false,
                ..
            } => Some(deadline_ms),
            State::Running { .. } => self.watchdog_deadline,
            _ => None,
        }
    }

    /// An sd_notify message arrived at `now`; true when it changed
    /// readiness (for the log).
    pub fn notified(&mut self, n: &Notification, now: u64) -> bool {
        match n {
            Notification::Ready => {
                if let State::Running { ready, .. } = &mut self.state {
                    if !*ready {
                        *ready = true;
                        return true;
                    }
                }
            }
            Notification::Status(t) => self.status_text.clone_from(t),
            Notification::Watchdog => {
                if self.spec.cfg.watchdog_ms > 0 {
                    self.watchdog_deadline = Some(now + self.spec.cfg.watchdog_ms);
                }
            }
            Notification::WatchdogTrigger => self.watchdog_deadline = Some(now),
            Notification::Stopping | Notification::Reloading => {}
        }
        false
    }
}

/// Whether service `i` may start, from its dependencies and /var.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deps {
    /// Not yet.
    Wait,
    /// Now.
    Go,
    /// A required dependency failed or is missing: it never will.
    Broken(String),
}

/// [`Deps`] of `services[i]`; `index` maps names to positions.
pub fn deps_state(
    services: &[Service],
    index: &std::collections::BTreeMap<String, usize>,
    i: usize,
    var_ready: bool,
) -> Deps {
    let Some(cfg) = services.get(i).map(|s| &s.spec.cfg) else {
        return Deps::Wait;
    };
    if !cfg.early && !var_ready {
        return Deps::Wait;
    }
    for d in &cfg.requires {
        let Some(dep) = index.get(d).and_then(|&j| services.get(j)) else {
            return Deps::Broken(d.clone());
        };
        if matches!(
            dep.state,
            State::Failed(_) | State::Exited(_) | State::Stopped
        ) {
            return Deps::Broken(d.clone());
        }
        if !dep.is_ready() {
            return Deps::Wait;
        }
    }
    for d in &cfg.after {
        if let Some(dep) = index.get(d).and_then(|&j| services.get(j)) {
            if !dep.is_settled() {
                return Deps::Wait;
            }
        }
    }
    Deps::Go
}

/// The delay before restart number `failures` (1-based), with jitter from `rand01`.
pub fn backoff_delay_ms(b: &Backoff, failures: u32, rand01: f64) -> u64 {
    let exp = failures.saturating_sub(1).min(64) as i32;
    let base = (b.initial_ms as f64 * b.factor.powi(exp)).min(b.max_ms as f64);
    let spread = base * b.jitter * (2.0 * rand01 - 1.0);
    (base + spread).max(0.0).min(b.max_ms as f64) as u64
}

/// A small xorshift generator for jitter (no need for a crypto RNG here).
#[derive(Debug)]
pub struct Jitter(u64);

impl Jitter {
    /// Seeded from the clock and pid.
    pub fn new() -> Self {
        let seed = crate::sys::monotonic_ms()
            ^ (u64::from(std::process::id()) << 32)
            ^ 0x9E37_79B9_7F4A_7C15;
        Jitter(seed | 1)
    }
    /// A number in [0, 1).
    pub fn next01(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Default for Jitter {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use std::path::Path;

    fn svc(extra: &str) -> Service {
        let spec = crate::config::parse_service(
            "svc",
            Path::new("/etc/svc.toml"),
            &format!("argv = [\"/bin/true\"]\n{extra}\n[backoff]\ninitial_ms = 100\nfactor = 2.0\njitter = 0.0\nmax_ms = 10000\n"),
            Path::new("/"),
        )
        .unwrap();
        Service::new(spec, 10, 1024)
    }

    const CLEAN: RunEnd = RunEnd {
        status: ExitStatus::Code(0),
        not_started: false,
        shutting_down: false,
    };
    const CRASH: RunEnd = RunEnd {
        status: ExitStatus::Code(3),
        ..CLEAN
    };

    /// Runs `s` from `t` for `ms` and ends it with `end`.
    fn run(s: &mut Service, t: u64, ms: u64, end: RunEnd) -> ExitOutcome {
        s.spawned(t, 42);
        s.exited(t + ms, end, None, 0.5)
    }

    #[test]
    fn a_clean_exit_under_always_restarts_without_growing_the_backoff() {
        let mut s = svc("restart = \"always\"");
        for k in 0..4u64 {
            let t = k * 1000;
            let out = run(&mut s, t, 10, CLEAN);
            assert_eq!(
                out,
                ExitOutcome::Restarting {
                    why: "exited (exit status 0)".into(),
                    delay_ms: 100,
                    failure: None
                }
            );
            assert_eq!(s.state, State::Backoff { until_ms: t + 110 });
            assert_eq!(s.failures, 0);
        }
        assert_eq!(s.restarts, 4);
        // A crash after clean exits starts the backoff at its beginning.
        let out = run(&mut s, 9000, 10, CRASH);
        assert!(
            matches!(
                out,
                ExitOutcome::Restarting {
                    delay_ms: 100,
                    failure: Some(1),
                    ..
                }
            ),
            "{out:?}"
        );
    }

    #[test]
    fn crashes_grow_the_backoff_and_a_stable_run_resets_it() {
        let mut s = svc("restart = \"on-failure\"");
        let delays: Vec<u64> = (0..4)
            .map(|k| match run(&mut s, k * 1000, 10, CRASH) {
                ExitOutcome::Restarting { delay_ms, .. } => delay_ms,
                o => panic!("{o:?}"),
            })
            .collect();
        assert_eq!(delays, [100, 200, 400, 800]);
        let out = run(&mut s, 10_000, STABLE_RUN_MS, CRASH);
        assert!(
            matches!(
                out,
                ExitOutcome::Restarting {
                    delay_ms: 100,
                    failure: Some(1),
                    ..
                }
            ),
            "{out:?}"
        );
    }

    #[test]
    fn every_start_counts_toward_the_start_limit_as_with_systemd() {
        // systemd's StartLimitBurst counts starts, clean exit or not.
        let mut s = svc("restart = \"always\"\n[start_limit]\nburst = 3\ninterval_s = 10");
        for k in 0..3 {
            assert!(!s.start_limit_hit(k * 200));
            run(&mut s, k * 200, 10, CLEAN);
        }
        assert!(s.start_limit_hit(600));
        // Outside the interval the old starts no longer count.
        assert!(!s.start_limit_hit(10_100));
    }

    #[test]
    fn policies_without_restart() {
        let mut s = svc("restart = \"on-failure\"");
        assert_eq!(
            run(&mut s, 0, 5, CLEAN),
            ExitOutcome::Exited("exited (exit status 0)".into())
        );
        assert_eq!(s.state, State::Exited(ExitStatus::Code(0)));
        let mut s = svc("restart = \"never\"");
        assert_eq!(
            run(&mut s, 0, 5, CRASH),
            ExitOutcome::GiveUp("exited (exit status 3)".into())
        );
        let mut s = svc("type = \"oneshot\"\nrestart = \"always\"");
        assert_eq!(run(&mut s, 0, 5, CLEAN), ExitOutcome::Finished);
        assert!(s.is_ready());
        // Nothing restarts during shutdown.
        let mut s = svc("restart = \"always\"");
        let end = RunEnd {
            shutting_down: true,
            ..CLEAN
        };
        assert!(matches!(run(&mut s, 0, 5, end), ExitOutcome::Exited(_)));
        let end = RunEnd {
            shutting_down: true,
            ..CRASH
        };
        assert!(matches!(run(&mut s, 0, 5, end), ExitOutcome::GiveUp(_)));
        // A failure before exec is a failure whatever the code.
        let mut s = svc("restart = \"on-failure\"");
        s.spawned(0, 7);
        let end = RunEnd {
            not_started: true,
            ..CLEAN
        };
        let out = s.exited(1, end, Some("cannot start /bin/true: x".into()), 0.5);
        assert!(
            matches!(out, ExitOutcome::Restarting { ref why, .. } if why == "cannot start /bin/true: x"),
            "{out:?}"
        );
    }

    #[test]
    fn stop_timeout_and_watchdog_timers() {
        let mut s = svc("watchdog_ms = 300\n[stop]\ntimeout_ms = 500");
        s.spawned(0, 9);
        assert_eq!(s.next_deadline(), Some(300));
        assert_eq!(s.on_timer(299), None);
        s.notified(&Notification::Watchdog, 200);
        assert_eq!(s.on_timer(300), None);
        assert_eq!(s.on_timer(500), Some(TimerAction::WatchdogMissed(9)));
        assert_eq!(s.on_timer(600), None, "fires once");
        let out = s.exited(
            600,
            RunEnd {
                status: ExitStatus::Signal(9),
                ..CLEAN
            },
            None,
            0.5,
        );
        assert!(
            matches!(out, ExitOutcome::Restarting { ref why, .. } if why.starts_with("missed its watchdog")),
            "{out:?}"
        );
        assert_eq!(s.on_timer(10_000), Some(TimerAction::BackoffOver));
        assert_eq!(s.state, State::Waiting);
        s.spawned(20_000, 10);
        assert_eq!(s.stop(20_000, AfterStop::Restart), Some(10));
        assert_eq!(s.on_timer(20_499), None);
        assert_eq!(
            s.on_timer(20_500),
            Some(TimerAction::KillAfterStopTimeout(10))
        );
        assert_eq!(s.on_timer(20_600), None);
        assert_eq!(s.exited(20_700, CRASH, None, 0.5), ExitOutcome::Stopped);
        assert_eq!(
            s.state,
            State::Waiting,
            "restarted by request, not by policy"
        );
    }

    #[test]
    fn readiness_by_notification() {
        let mut s = svc("type = \"notify\"");
        s.spawned(0, 5);
        assert!(s.is_pending() && !s.is_ready());
        assert!(s.notified(&Notification::Ready, 1));
        assert!(!s.notified(&Notification::Ready, 2));
        assert!(s.is_ready() && !s.is_pending());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff {
            initial_ms: 100,
            max_ms: 1000,
            factor: 2.0,
            jitter: 0.0,
        };
        let d: Vec<u64> = (1..=6).map(|n| backoff_delay_ms(&b, n, 0.5)).collect();
        assert_eq!(d, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_in_band() {
        let b = Backoff {
            initial_ms: 1000,
            max_ms: 100_000,
            factor: 2.0,
            jitter: 0.2,
        };
        let mut j = Jitter::new();
        for _ in 0..1000 {
            let d = backoff_delay_ms(&b, 1, j.next01());
            assert!((800..=1200).contains(&d), "{d}");
        }
    }
}
