//! The loop's events: the poll set, signals, reaping, service output and
//! sd_notify messages.

use std::os::fd::RawFd;

use super::{cannot_start, ShutdownKind, Source, Supervisor, VarState};
use crate::control::status;
use crate::output::PipeState;
use crate::service::{RunEnd, Service, State};
use crate::sys::{self, ExitStatus};

impl Supervisor {
    pub(super) fn next_deadline(&self) -> Option<u64> {
        self.services
            .iter()
            .filter_map(Service::next_deadline)
            .chain(self.watchdog.next_deadline())
            .chain(self.boot.next_deadline(self.config.boot_complete_grace_ms))
            .chain(
                self.boot
                    .timeout_deadline(self.started_ms, self.boot_timeout_ms())
                    .filter(|_| self.shutdown.is_none()),
            )
            .chain(self.control.next_deadline())
            .min()
    }

    /// The poll set, rebuilt from the state at every turn (never stale,
    /// also after a caught panic).
    pub(super) fn poll_set(&self, now: u64) -> (Vec<libc::pollfd>, Vec<Source>) {
        let pollin = |fd: RawFd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        let mut fds = vec![pollin(self.signals.fd()), pollin(self.notify.raw())];
        let mut sources = vec![Source::Signals, Source::Notify];
        if let Some(fd) = self.control.listener_fd(now) {
            fds.push(pollin(fd));
            sources.push(Source::ControlListener);
        }
        for c in self.control.interests() {
            fds.push(libc::pollfd {
                fd: c.fd,
                events: c.events,
                revents: 0,
            });
            sources.push(Source::ControlConn);
        }
        for (i, s) in self.services.iter().enumerate() {
            for o in &s.outputs {
                fds.push(pollin(o.raw()));
                sources.push(Source::Output(i));
            }
        }
        (fds, sources)
    }

    pub(super) fn poll_once(&mut self, now: u64) {
        let timeout = self
            .next_deadline()
            .map(|d| d.saturating_sub(now).min(60_000) as i32)
            .unwrap_or(60_000);
        let (mut fds, sources) = self.poll_set(now);
        // SAFETY: `fds` is a live array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n <= 0 {
            return;
        }
        let now = sys::monotonic_ms();
        let mut signals = false;
        for (p, src) in fds.iter().zip(&sources) {
            if p.revents == 0 {
                continue;
            }
            match *src {
                Source::Signals => signals = true,
                Source::Notify => self.read_notify(),
                Source::ControlListener => self.control.accept(now),
                Source::ControlConn => self.control.ready_fd(p.fd),
                Source::Output(i) => self.read_output(i, Some(p.fd)),
            }
        }
        self.handle_requests(now);
        // Signals last: an exit is handled after the output before it.
        if signals {
            // An error here (none is expected from a signalfd) must not
            // stop PID 1: log it and go on; a signal not read now stays
            // pending and is read at the next turn.
            match self.signals.read_all() {
                Ok(sigs) => {
                    for sig in sigs {
                        self.on_signal(sig);
                    }
                }
                Err(e) => tracing::error!("reading the signalfd failed: {e}"),
            }
        }
    }

    pub(super) fn on_signal(&mut self, sig: i32) {
        match sig {
            libc::SIGCHLD => self.reap(),
            libc::SIGTERM | libc::SIGPWR => {
                self.request_shutdown(ShutdownKind::Poweroff, "SIGTERM")
            }
            libc::SIGINT => self.request_shutdown(ShutdownKind::Reboot, "SIGINT (Ctrl-Alt-Del)"),
            libc::SIGUSR1 => {
                for line in status::text(&self.services).lines() {
                    tracing::info!("{line}");
                }
            }
            libc::SIGUSR2 => {
                let on = crate::log::toggle_debug();
                tracing::info!("debug logging {}", if on { "on" } else { "off" });
            }
            libc::SIGHUP => {
                tracing::info!("SIGHUP ignored: service files are read at boot; use ctl restart")
            }
            _ => {}
        }
    }

    pub(super) fn request_shutdown(&mut self, kind: ShutdownKind, why: &str) {
        if self.shutdown.is_some() {
            tracing::info!("{why}: shutdown already in progress");
            return;
        }
        tracing::info!(
            "{why}: {}",
            if kind == ShutdownKind::Reboot {
                "reboot requested"
            } else {
                "poweroff requested"
            }
        );
        self.begin_shutdown(kind);
    }

    pub(super) fn reap(&mut self) {
        while let Some((pid, status)) = sys::reap_one() {
            match self.services.iter().position(|s| s.pid() == Some(pid)) {
                Some(i) => self.on_exit(i, status, sys::monotonic_ms()),
                None if self.var == VarState::Pending(pid) => self.on_var_done(status),
                None if self.boot.blessing_pid() == Some(pid) => self.on_blessing_done(status),
                None => tracing::debug!("reaped orphan {pid} ({status})"),
            }
        }
    }

    pub(super) fn on_var_done(&mut self, status: ExitStatus) {
        if status.success() {
            self.var = VarState::Ready;
            tracing::info!("/var is ready (t={:.3} s)", crate::sys::uptime());
            return;
        }
        self.var = VarState::Failed;
        // Its own line above says what failed. Rebooting lets boot counting
        // fall back, as a failure in stage 1 itself would.
        tracing::error!("/var could not be prepared ({status}); rebooting");
        if self.shutdown.is_none() {
            self.begin_shutdown(ShutdownKind::Reboot);
        }
    }

    pub(super) fn on_blessing_done(&mut self, status: ExitStatus) {
        // The child logged what it did; only a failure needs saying here.
        if !status.success() {
            tracing::error!("blessing the boot failed ({status})");
        }
        self.boot.blessing_done();
    }

    pub(super) fn on_exit(&mut self, i: usize, status: ExitStatus, now: u64) {
        self.read_output(i, None);
        let name = self.services[i].name().to_string();
        self.cgroups.remove(&name);
        // Set when the process never reached its program.
        let not_started = self.services[i]
            .exec_report
            .take()
            .and_then(|r| crate::spawn::failure_before_exec(&r))
            .map(|e| cannot_start(&self.services[i], &e));
        if matches!(self.services[i].state, State::Stopping { .. }) {
            tracing::info!("stopped {name} ({status})");
        }
        let end = RunEnd {
            status,
            not_started: not_started.is_some(),
            shutting_down: self.shutdown.is_some(),
        };
        let rand01 = self.jitter.next01();
        let out = self.services[i].exited(now, end, not_started, rand01);
        self.apply_exit(i, out);
    }

    /// Reads what is available on service `i`'s pipe `only` (or all its
    /// pipes), at most a budget per pipe, logging whole lines; a pipe at
    /// EOF is closed.
    pub(super) fn read_output(&mut self, i: usize, only: Option<RawFd>) {
        let Some(s) = self.services.get_mut(i) else {
            return;
        };
        let name = &s.spec.name;
        let log = &mut s.log;
        let mut on_line = |line: &[u8]| {
            crate::log::write_line(&format!("{name}: {}", String::from_utf8_lossy(line)));
            log.push(line);
        };
        s.outputs.retain_mut(|o| {
            if only.is_some_and(|fd| fd != o.raw()) {
                return true;
            }
            o.drain(&mut on_line) == PipeState::Open
        });
    }

    pub(super) fn read_notify(&mut self) {
        // Bounded like everything else in a turn: the rest waits a turn.
        for _ in 0..64 {
            let Some(d) = self.notify.recv() else {
                return;
            };
            let (Some(pid), Some(uid)) = (d.pid, d.uid) else {
                continue;
            };
            let Some(i) = self.notify_sender(pid, uid) else {
                continue;
            };
            // What the service wrote before this message is logged before
            // what init says of it ("X is ready"), as its output is before
            // its exit: the notify socket comes first in the poll set, so
            // without this a line written just before READY=1 could come
            // after the ready line.
            self.read_output(i, None);
            let s = &mut self.services[i];
            let now = sys::monotonic_ms();
            for n in crate::notify::parse(&d.msg) {
                if s.notified(&n, now) {
                    tracing::info!("{} is ready", s.spec.name);
                }
                match n {
                    crate::notify::Notification::Stopping => {
                        tracing::info!("{} is stopping", s.spec.name)
                    }
                    crate::notify::Notification::Reloading => {
                        tracing::info!("{} is reloading", s.spec.name)
                    }
                    _ => {}
                }
            }
        }
    }

    /// The service a notify message from `pid` (with `uid`, both vouched
    /// for by the kernel) may speak for, if any; a refusal is logged.
    ///
    /// The pid is the main pid of a service, or (with `notify_access =
    /// "all"`) a process in its cgroup, or in its process group where it
    /// has no cgroup. A process can claim another's pid only with
    /// CAP_SYS_ADMIN, which services do not get unless they ask; the uid
    /// must then still be the service's own, which a forger cannot fake
    /// without CAP_SETUID as well.
    fn notify_sender(&self, pid: i32, uid: u32) -> Option<usize> {
        let main = self.services.iter().position(|s| s.pid() == Some(pid));
        let i = main.or_else(|| self.service_of_process(pid));
        let Some(i) = i else {
            tracing::debug!("notify from pid {pid}, which belongs to no service: ignored");
            return None;
        };
        let s = &self.services[i];
        if main.is_none() && s.spec.cfg.notify_access == crate::config::NotifyAccess::Main {
            tracing::warn!(
                "{}: notify from pid {pid} ignored: notify_access = \"main\" and its main pid is {}",
                s.spec.name,
                s.pid().unwrap_or(0)
            );
            return None;
        }
        let want = s.spec.ids.map_or(0, |(u, _)| u);
        if uid != want {
            tracing::warn!(
                "{}: notify claiming to come from its pid {pid} ignored: sent by uid {uid}, and {} runs as uid {want}",
                s.spec.name,
                s.spec.name
            );
            return None;
        }
        Some(i)
    }

    /// The running service whose cgroup holds `pid`, or, for services
    /// without a cgroup, whose process group it is in.
    fn service_of_process(&self, pid: i32) -> Option<usize> {
        let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok();
        let rel = cgroup
            .as_deref()
            .and_then(|c| c.lines().find_map(|l| l.strip_prefix("0::")))
            .map(std::path::Path::new);
        let by_cgroup = self.services.iter().position(|s| {
            s.pid().is_some()
                && s.cgroup_procs
                    .as_deref()
                    .and_then(std::path::Path::parent)
                    .and_then(|dir| dir.strip_prefix(&self.cgroup_root).ok())
                    .zip(rel)
                    .is_some_and(|(mine, theirs)| theirs.strip_prefix("/").ok() == Some(mine))
        });
        if by_cgroup.is_some() {
            return by_cgroup;
        }
        // SAFETY: getpgid takes a plain pid.
        let pgid = unsafe { libc::getpgid(pid) };
        self.services
            .iter()
            .position(|s| pgid > 0 && s.pid() == Some(pgid) && s.cgroup_procs.is_none())
    }
}
