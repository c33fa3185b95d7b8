//! Starting, failing, stopping: the supervisor's side of each service's
//! transitions. The decisions are [`crate::service`]'s; here are the
//! signals, cgroups, logs and escalations they call for.

use super::{cannot_start, ShutdownKind, Supervisor, VarState};
use crate::config::FailureAction;
use crate::output::OutputPipe;
use crate::service::{deps_state, AfterStop, Deps, ExitOutcome, Service, State, TimerAction};
use crate::sys;

impl Supervisor {
    pub(super) fn start_eligible(&mut self, now: u64) {
        if self.shutdown.is_some() {
            return;
        }
        let var_ready = self.var == VarState::Ready;
        loop {
            let mut changed = false;
            for i in 0..self.services.len() {
                if self.services[i].state != State::Waiting {
                    continue;
                }
                match deps_state(&self.services, &self.index, i, var_ready) {
                    Deps::Wait => {}
                    Deps::Go => {
                        self.start(i, now);
                        changed = true;
                    }
                    Deps::Broken(dep) => {
                        self.fail(i, format!("required dependency {dep} failed"));
                        changed = true;
                    }
                }
            }
            if !changed {
                return;
            }
        }
    }

    pub(super) fn start(&mut self, i: usize, now: u64) {
        if self.services[i].start_limit_hit(now) {
            let s = &self.services[i];
            let why = format!(
                "start limit hit: {} starts within {} s",
                s.spec.cfg.start_limit.burst, s.spec.cfg.start_limit.interval_s
            );
            self.fail(i, why);
            return;
        }
        let name = self.services[i].name().to_string();
        let procs = self
            .cgroups
            .prepare(&name, &self.services[i].spec.cfg.limits);
        let s = &mut self.services[i];
        s.cgroup_procs = procs;
        match crate::spawn::spawn(&s.spec, &self.spawn_ctx, s.cgroup_procs.as_deref()) {
            Ok(sp) => {
                s.outputs.push(OutputPipe::new(sp.output));
                s.exec_report = Some(sp.exec_report);
                s.spawned(now, sp.pid);
                tracing::info!("started {name} (pid {})", sp.pid);
                if s.is_ready() {
                    tracing::debug!("{name} is ready");
                }
            }
            Err(e) => {
                let why = cannot_start(s, &e);
                let out = s.spawn_failed(now, why, self.shutdown.is_some(), self.jitter.next01());
                self.apply_exit(i, out);
            }
        }
    }

    /// Logs and acts on what became of a service after its run ended.
    pub(super) fn apply_exit(&mut self, i: usize, out: ExitOutcome) {
        let name = self.services[i].name().to_string();
        match out {
            ExitOutcome::Stopped | ExitOutcome::NotRunning => {}
            ExitOutcome::Finished => tracing::info!("{name} finished"),
            ExitOutcome::Exited(why) => tracing::info!("{name} {why}"),
            ExitOutcome::Restarting {
                why,
                delay_ms,
                failure: Some(n),
            } => tracing::warn!("{name} {why}; restarting in {delay_ms} ms (failure {n})"),
            ExitOutcome::Restarting {
                why,
                delay_ms,
                failure: None,
            } => tracing::info!("{name} {why}; restart = always: restarting in {delay_ms} ms"),
            ExitOutcome::GiveUp(why) => self.fail(i, why),
        }
    }

    /// Gives up on a service; escalates if it is required.
    pub(super) fn fail(&mut self, i: usize, why: String) {
        let s = &mut self.services[i];
        tracing::error!("{} failed: {why}", s.name());
        s.fail(why.clone());
        self.cgroups.remove(&s.spec.name);
        if s.spec.cfg.required && self.shutdown.is_none() {
            let name = s.name().to_string();
            match s.spec.cfg.failure_action {
                FailureAction::Reboot => {
                    tracing::error!(
                        "escalation: required service {name} failed for good ({why}); rebooting"
                    );
                    self.begin_shutdown(ShutdownKind::Reboot);
                }
                FailureAction::Poweroff => {
                    tracing::error!(
                        "escalation: required service {name} failed for good ({why}); powering off"
                    );
                    self.begin_shutdown(ShutdownKind::Poweroff);
                }
                FailureAction::None => {
                    tracing::error!("required service {name} failed for good ({why}); failure_action is none, carrying on");
                }
            }
        }
    }

    pub(super) fn handle_timers(&mut self, now: u64) {
        self.watchdog.tick(now);
        self.control.expire(now);
        for s in &mut self.services {
            match s.on_timer(now) {
                None | Some(TimerAction::BackoffOver) => {}
                Some(TimerAction::KillAfterStopTimeout(pid)) => {
                    tracing::warn!(
                        "{} did not stop within {} ms; sending SIGKILL",
                        s.spec.name,
                        s.spec.cfg.stop.timeout_ms
                    );
                    sys::kill_group(pid, libc::SIGKILL);
                }
                Some(TimerAction::WatchdogMissed(pid)) => {
                    tracing::warn!(
                        "{} missed its watchdog (no WATCHDOG=1 within {} ms); killing it",
                        s.spec.name,
                        s.spec.cfg.watchdog_ms
                    );
                    sys::kill_group(pid, libc::SIGKILL);
                }
            }
        }
    }

    pub(super) fn stop(&mut self, i: usize, then: AfterStop) {
        let s = &mut self.services[i];
        if let Some(pid) = s.stop(sys::monotonic_ms(), then) {
            tracing::info!("stopping {} (pid {pid})", s.spec.name);
            sys::kill_group(pid, s.spec.stop_signal);
            // Also the main pid itself, in case it left its group.
            // SAFETY: kill takes plain integers.
            unsafe { libc::kill(pid, s.spec.stop_signal) };
        }
    }

    pub(super) fn begin_shutdown(&mut self, kind: ShutdownKind) {
        self.shutdown = Some(kind);
        self.services
            .iter_mut()
            .for_each(Service::cancel_pending_start);
    }

    /// Stops each running service once nothing that depends on it still runs.
    pub(super) fn advance_shutdown(&mut self) {
        for i in 0..self.services.len() {
            if !matches!(self.services[i].state, State::Running { .. }) {
                continue;
            }
            let name = self.services[i].name().to_string();
            let dependents_alive = self.services.iter().any(|d| {
                d.pid().is_some()
                    && (d.spec.cfg.after.contains(&name) || d.spec.cfg.requires.contains(&name))
            });
            if !dependents_alive {
                self.stop(i, AfterStop::Stay);
            }
        }
    }
}
