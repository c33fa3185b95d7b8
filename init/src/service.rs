//! One supervised service: its state machine and its captured output.
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
use std::os::fd::OwnedFd;

use crate::config::{Backoff, ServiceSpec, ServiceType};
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
    /// The ring buffer of output lines.
    pub log: VecDeque<String>,
    /// The cgroup.procs path it joins.
    pub cgroup_procs: Option<std::path::PathBuf>,
    /// Where its current process reports a failure before exec
    /// ([`crate::spawn::failure_before_exec`]), read when it exits.
    pub exec_report: Option<std::os::fd::OwnedFd>,
}

/// The read end of a service's stdout+stderr pipe.
#[derive(Debug)]
pub struct OutputPipe {
    /// Non-blocking read end.
    pub fd: OwnedFd,
    /// Bytes of an unfinished line.
    pub partial: Vec<u8>,
}

/// A run this long resets the backoff: the service was healthy.
pub const STABLE_RUN_MS: u64 = 10_000;
/// The longest line kept whole; longer output is split.
pub const MAX_LINE: usize = 4096;

impl Service {
    /// A new, waiting service.
    pub fn new(spec: ServiceSpec) -> Self {
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
            log: VecDeque::new(),
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

    /// Keeps a line in the ring buffer (`cap` lines at most).
    pub fn keep_line(&mut self, line: String, cap: usize) {
        if self.log.len() >= cap.max(1) {
            self.log.pop_front();
        }
        self.log.push_back(line);
    }

    /// Drops start times older than the start-limit interval; true when one
    /// more start would exceed the limit.
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
    use super::*;

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
