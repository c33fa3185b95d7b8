//! Stage 2: the supervisor loop.
//!
//! One thread, one `poll(2)`: the signalfd (SIGCHLD, SIGTERM, ...), the
//! sd_notify socket, the control socket and every service's output pipe.
//! Timers (backoff, stop timeouts, watchdogs, boot-complete grace) set the
//! poll timeout. A single reaper (`waitpid(-1)`) collects every exit and
//! routes it by pid: supervised children get their exit status, orphans are
//! simply reaped — nothing else in init ever waits, so nothing is stolen.
//!
//! Each turn of the loop runs under `catch_unwind`: a bug in the handling of
//! one event is logged and the loop goes on; PID 1 never unwinds out.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use crate::cgroup::Cgroups;
use crate::config::{BootComplete, ConfigError, FailureAction, InitConfig, Restart, ServiceType};
use crate::control::{self, json_str, Request};
use crate::notify::{Notification, NotifySocket};
use crate::service::{
    backoff_delay_ms, AfterStop, Jitter, Service, State, MAX_LINE, STABLE_RUN_MS,
};
use crate::sys::{self, ExitStatus, Mode, SignalFd};
use crate::watchdog::HardwareWatchdog;

/// How the machine ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShutdownKind {
    /// reboot(2) with RB_POWER_OFF.
    Poweroff,
    /// reboot(2) with RB_AUTOBOOT.
    Reboot,
}

/// Where stage 2 finds its files.
#[derive(Debug, Clone)]
pub struct Paths {
    /// init.toml.
    pub init_config: PathBuf,
    /// Service directory (overrides init.toml's when set).
    pub services_dir: Option<PathBuf>,
    /// Runtime directory: control.sock, notify.sock.
    pub run_dir: PathBuf,
    /// The hardware watchdog device.
    pub watchdog_dev: PathBuf,
    /// The cgroup2 mount.
    pub cgroup_root: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            init_config: "/etc/fluxnode/init.toml".into(),
            services_dir: None,
            run_dir: "/run/fluxnode".into(),
            watchdog_dev: "/dev/watchdog".into(),
            cgroup_root: "/sys/fs/cgroup".into(),
        }
    }
}

/// The supervisor.
#[derive(Debug)]
pub struct Supervisor {
    services: Vec<Service>,
    index: BTreeMap<String, usize>,
    config: InitConfig,
    mode: Mode,
    signals: SignalFd,
    notify: NotifySocket,
    control: UnixListener,
    cgroups: Cgroups,
    hw_watchdog: Option<HardwareWatchdog>,
    hw_next_feed_ms: u64,
    /// Until then, look for /dev/watchdog again every few seconds: its driver
    /// may be a module that a service loads after init has started.
    hw_watchdog_search: Option<(PathBuf, u64)>,
    jitter: Jitter,
    shutdown: Option<ShutdownKind>,
    startup_reported: bool,
    required_ready_since: Option<u64>,
    boot_completed: bool,
    var: VarState,
    late_mounted: bool,
    /// Whether the power button watcher has been started (machine only).
    button_watched: bool,
}

/// /var, which stage 1's child mounts in the background (`stage1::var`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarState {
    /// Mounted, or nobody mounts it for us (tests, a system without stage 1).
    Ready,
    /// The child with this pid is still at work.
    Pending(i32),
    /// The child failed; init reboots.
    Failed,
}

/// How long to look for a late watchdog device, and how often.
const WATCHDOG_SEARCH_MS: u64 = 60_000;
const WATCHDOG_SEARCH_STEP_MS: u64 = 2_000;

/// Signals init handles through its signalfd.
pub const SIGNALS: [i32; 7] = [
    libc::SIGCHLD,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGPWR,
];

/// Why a service's process never ran its program: at spawn, or reported
/// by the child before exec.
fn cannot_start(s: &Service, e: &std::io::Error) -> String {
    let argv0 = s.spec.cfg.argv.first().map(String::as_str).unwrap_or("");
    format!("cannot start {argv0}: {e}")
}

fn log_config_error(e: &ConfigError) {
    tracing::error!("{e}");
}

impl Supervisor {
    /// Loads config, opens sockets and devices. Config errors are logged and
    /// the services they concern left out; the rest still start.
    pub fn new(paths: &Paths, mode: Mode) -> std::io::Result<Self> {
        let signals = SignalFd::new(&SIGNALS)?;
        let config = InitConfig::load(&paths.init_config).unwrap_or_else(|e| {
            log_config_error(&e);
            InitConfig::default()
        });
        let dir = paths
            .services_dir
            .clone()
            .unwrap_or_else(|| config.services_dir.clone());
        let (specs, errors) = crate::config::load_dir(&dir, Path::new("/"));
        errors.iter().for_each(log_config_error);
        std::fs::create_dir_all(&paths.run_dir)?;
        let notify = NotifySocket::bind(&paths.run_dir.join("notify.sock"))?;
        let control_path = paths.run_dir.join("control.sock");
        let _ = std::fs::remove_file(&control_path);
        let control = UnixListener::bind(&control_path)?;
        control.set_nonblocking(true)?;
        let base = match mode {
            Mode::Machine => "fluxnode".to_string(),
            // A test namespace shares the host's cgroup2 tree: a unique name.
            _ => format!(
                "fluxnode-test-{}",
                std::fs::metadata("/proc/self/ns/pid")
                    .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                    .unwrap_or(0)
            ),
        };
        // Where cgroup2 really is: /sys/fs/cgroup on a unified system, or
        // e.g. /sys/fs/cgroup/unified on a hybrid host (tests run there).
        let cgroup_root = crate::mounts::current(Path::new("/proc"))
            .into_iter()
            .find(|m| m.fstype == "cgroup2")
            .map(|m| m.target)
            .unwrap_or_else(|| paths.cgroup_root.clone());
        let cgroups = Cgroups::setup(&cgroup_root, &base);
        let hw_watchdog = match mode {
            Mode::Machine => {
                HardwareWatchdog::open(&paths.watchdog_dev, config.hardware_watchdog_s)
            }
            _ => None,
        };
        // Without a watchdog yet, keep looking: its driver may be a late module.
        let hw_watchdog_search =
            (mode == Mode::Machine && hw_watchdog.is_none() && config.hardware_watchdog_s > 0)
                .then(|| {
                    (
                        paths.watchdog_dev.clone(),
                        sys::monotonic_ms() + WATCHDOG_SEARCH_MS,
                    )
                });
        let services: Vec<Service> = specs.into_iter().map(Service::new).collect();
        let index = services
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name().to_string(), i))
            .collect();
        tracing::info!("{} services loaded", services.len());
        Ok(Supervisor {
            services,
            index,
            config,
            mode,
            signals,
            notify,
            control,
            cgroups,
            hw_watchdog,
            hw_next_feed_ms: 0,
            hw_watchdog_search,
            jitter: Jitter::new(),
            shutdown: None,
            startup_reported: false,
            required_ready_since: None,
            boot_completed: false,
            var: VarState::Ready,
            late_mounted: mode == Mode::Foreground,
            button_watched: mode != Mode::Machine,
        })
    }

    /// Holds back the services that need /var (all but `early` ones),
    /// "all services ready" and boot-complete until the child `pid` (stage
    /// 1's, now init's) has mounted it and exited 0.
    pub fn await_var(&mut self, pid: i32) {
        tracing::debug!("/var is being prepared by pid {pid}");
        self.var = VarState::Pending(pid);
        // It may have finished already: its SIGCHLD then went to stage 1,
        // which ignored it, and only the zombie is left.
        self.reap();
    }

    /// Runs until every service has stopped after a shutdown request.
    pub fn run(&mut self) -> ShutdownKind {
        loop {
            let turn = std::panic::catch_unwind(AssertUnwindSafe(|| self.turn()));
            match turn {
                Ok(Some(kind)) => return kind,
                Ok(None) => {}
                Err(_) => {
                    tracing::error!("internal error in the supervisor loop (a bug); continuing");
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            }
        }
    }

    /// One turn: start what can start, wait for events, handle them.
    fn turn(&mut self) -> Option<ShutdownKind> {
        let now = sys::monotonic_ms();
        self.start_eligible(now);
        if !self.button_watched {
            // After the first services: a thread's start is ~5 ms under TCG.
            self.button_watched = true;
            crate::powerbutton::spawn_watcher();
        }
        if !self.late_mounted && self.var == VarState::Ready {
            // After the first services are spawned: see LATE_MOUNTS.
            self.late_mounted = true;
            crate::mounts::mount_late();
        }
        self.report_startup();
        self.check_boot_complete(now);
        if let Some(kind) = self.shutdown {
            self.advance_shutdown(now);
            if self.services.iter().all(|s| s.pid().is_none()) {
                return Some(kind);
            }
        }
        self.poll_once(now);
        self.handle_timers(sys::monotonic_ms());
        None
    }

    // ---- starting -------------------------------------------------------

    fn start_eligible(&mut self, now: u64) {
        if self.shutdown.is_some() {
            return;
        }
        loop {
            let mut changed = false;
            for i in 0..self.services.len() {
                if self.services[i].state != State::Waiting {
                    continue;
                }
                match self.deps_state(i) {
                    Deps::Wait => {}
                    Deps::Go => {
                        self.start(i, now);
                        changed = true;
                    }
                    Deps::Broken(dep) => {
                        let why = format!("required dependency {dep} failed");
                        self.fail(i, why);
                        changed = true;
                    }
                }
            }
            if !changed {
                return;
            }
        }
    }

    fn deps_state(&self, i: usize) -> Deps {
        let cfg = &self.services[i].spec.cfg;
        if !cfg.early && self.var != VarState::Ready {
            return Deps::Wait;
        }
        for d in &cfg.requires {
            let Some(&j) = self.index.get(d) else {
                return Deps::Broken(d.clone());
            };
            let dep = &self.services[j];
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
            if let Some(&j) = self.index.get(d) {
                if !self.services[j].is_settled() {
                    return Deps::Wait;
                }
            }
        }
        Deps::Go
    }

    fn start(&mut self, i: usize, now: u64) {
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
        match crate::spawn::spawn(&s.spec, self.notify.path(), s.cgroup_procs.as_deref()) {
            Ok(sp) => {
                s.starts.push_back(now);
                s.outputs.push(crate::service::OutputPipe {
                    fd: sp.output,
                    partial: Vec::new(),
                });
                s.exec_report = Some(sp.exec_report);
                s.watchdog_fired = false;
                s.watchdog_deadline =
                    (s.spec.cfg.watchdog_ms > 0).then(|| now + s.spec.cfg.watchdog_ms);
                let ready = s.ready_on_spawn();
                s.state = State::Running {
                    pid: sp.pid,
                    ready,
                    since_ms: now,
                };
                tracing::info!("started {name} (pid {})", sp.pid);
                if ready {
                    tracing::debug!("{name} is ready");
                }
            }
            Err(e) => {
                s.starts.push_back(now);
                let why = cannot_start(s, &e);
                self.after_failure(i, now, why);
            }
        }
    }

    /// A failed run (or failed spawn): restart per policy or give up.
    fn after_failure(&mut self, i: usize, now: u64, why: String) {
        let s = &mut self.services[i];
        if s.spec.cfg.restart == Restart::Never || self.shutdown.is_some() {
            self.fail(i, why);
            return;
        }
        s.failures += 1;
        let delay = backoff_delay_ms(&s.spec.cfg.backoff, s.failures, self.jitter.next01());
        s.restarts += 1;
        s.state = State::Backoff {
            until_ms: now + delay,
        };
        tracing::warn!(
            "{} {why}; restarting in {delay} ms (failure {})",
            s.name(),
            s.failures
        );
    }

    /// Gives up on a service; escalates if it is required.
    fn fail(&mut self, i: usize, why: String) {
        let s = &mut self.services[i];
        tracing::error!("{} failed: {why}", s.name());
        s.state = State::Failed(why.clone());
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

    // ---- events ---------------------------------------------------------

    fn poll_once(&mut self, now: u64) {
        let timeout = self
            .next_deadline()
            .map(|d| d.saturating_sub(now).min(60_000) as i32)
            .unwrap_or(60_000);
        let mut fds = vec![
            libc::pollfd {
                fd: self.signals.raw(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.notify.raw(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.control.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let mut owners = Vec::new();
        for (i, s) in self.services.iter().enumerate() {
            for o in &s.outputs {
                fds.push(libc::pollfd {
                    fd: o.fd.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                owners.push((i, o.fd.as_raw_fd()));
            }
        }
        // SAFETY: `fds` is a live array of pollfd of the given length.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        if n <= 0 {
            return;
        }
        for (k, &(i, fd)) in owners.iter().enumerate() {
            if fds[3 + k].revents != 0 {
                self.read_output(i, Some(fd));
            }
        }
        if fds[1].revents != 0 {
            self.read_notify();
        }
        if fds[2].revents != 0 {
            self.accept_control();
        }
        if fds[0].revents != 0 {
            for sig in self.signals.read_all() {
                self.on_signal(sig);
            }
        }
    }

    fn on_signal(&mut self, sig: i32) {
        match sig {
            libc::SIGCHLD => self.reap(),
            libc::SIGTERM | libc::SIGPWR => {
                self.request_shutdown(ShutdownKind::Poweroff, "SIGTERM")
            }
            libc::SIGINT => self.request_shutdown(ShutdownKind::Reboot, "SIGINT (Ctrl-Alt-Del)"),
            libc::SIGUSR1 => {
                for line in self.status_text().lines() {
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

    fn request_shutdown(&mut self, kind: ShutdownKind, why: &str) {
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

    fn reap(&mut self) {
        while let Some((pid, status)) = sys::reap_one() {
            match self.services.iter().position(|s| s.pid() == Some(pid)) {
                Some(i) => self.on_exit(i, status),
                None if self.var == VarState::Pending(pid) => self.on_var_done(status),
                None => tracing::debug!("reaped orphan {pid} ({status})"),
            }
        }
    }

    fn on_var_done(&mut self, status: ExitStatus) {
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

    fn on_exit(&mut self, i: usize, status: ExitStatus) {
        let now = sys::monotonic_ms();
        self.read_output(i, None);
        let name = self.services[i].name().to_string();
        self.services[i].watchdog_deadline = None;
        self.cgroups.remove(&name);
        // Set when the process never reached its program.
        let not_started = self.services[i]
            .exec_report
            .take()
            .and_then(|r| crate::spawn::failure_before_exec(&r))
            .map(|e| cannot_start(&self.services[i], &e));
        match self.services[i].state.clone() {
            State::Stopping { then, .. } => {
                tracing::info!("stopped {name} ({status})");
                self.services[i].state = if then == AfterStop::Restart {
                    State::Waiting
                } else {
                    State::Stopped
                };
            }
            State::Running { since_ms, .. } => {
                let s = &mut self.services[i];
                if now.saturating_sub(since_ms) >= STABLE_RUN_MS {
                    s.failures = 0;
                }
                let failed = !status.success() || s.watchdog_fired || not_started.is_some();
                let why = if let Some(why) = not_started {
                    why
                } else if s.watchdog_fired {
                    format!("missed its watchdog ({status})")
                } else {
                    format!("exited ({status})")
                };
                if s.spec.cfg.kind == ServiceType::Oneshot && !failed {
                    tracing::info!("{name} finished");
                    s.state = State::Done;
                } else if failed
                    || (s.spec.cfg.restart == Restart::Always && self.shutdown.is_none())
                {
                    self.after_failure(i, now, why);
                } else {
                    tracing::info!("{name} {why}");
                    s.state = State::Exited(status);
                }
            }
            _ => {}
        }
    }

    /// Reads what is available on service `i`'s pipe `only` (or all its
    /// pipes), logging whole lines; a pipe at EOF is closed.
    fn read_output(&mut self, i: usize, only: Option<i32>) {
        let cap = self.config.log_lines;
        let s = &mut self.services[i];
        let name = s.spec.name.clone();
        let mut lines = Vec::new();
        s.outputs.retain_mut(|o| {
            if only.is_some_and(|fd| fd != o.fd.as_raw_fd()) {
                return true;
            }
            let open = drain_pipe(o, &mut lines);
            if !open && !o.partial.is_empty() {
                lines.push(String::from_utf8_lossy(&std::mem::take(&mut o.partial)).into_owned());
            }
            open
        });
        for text in lines {
            crate::log::write_line(&format!("{name}: {text}"));
            s.keep_line(text, cap);
        }
    }

    fn read_notify(&mut self) {
        while let Some((pid, msg, _barrier_fds)) = self.notify.recv() {
            let Some(pid) = pid else { continue };
            // The main pid, or any process of its group (systemd-notify forks).
            // SAFETY: getpgid takes a plain pid.
            let pgid = unsafe { libc::getpgid(pid) };
            let Some(i) = self
                .services
                .iter()
                .position(|s| s.pid() == Some(pid) || (pgid > 0 && s.pid() == Some(pgid)))
            else {
                tracing::debug!("notify from unknown pid {pid} ignored");
                continue;
            };
            let now = sys::monotonic_ms();
            for n in crate::notify::parse(&msg) {
                let s = &mut self.services[i];
                match n {
                    Notification::Ready => {
                        if let State::Running { ready, .. } = &mut s.state {
                            if !*ready {
                                *ready = true;
                                tracing::info!("{} is ready", s.spec.name);
                            }
                        }
                    }
                    Notification::Status(t) => s.status_text = t,
                    Notification::Watchdog => {
                        if s.spec.cfg.watchdog_ms > 0 {
                            s.watchdog_deadline = Some(now + s.spec.cfg.watchdog_ms);
                        }
                    }
                    Notification::WatchdogTrigger => s.watchdog_deadline = Some(now),
                    Notification::Stopping => tracing::info!("{} is stopping", s.spec.name),
                    Notification::Reloading => tracing::info!("{} is reloading", s.spec.name),
                }
            }
        }
    }

    fn accept_control(&mut self) {
        while let Ok((stream, _)) = self.control.accept() {
            let result = match control::read_request(&stream) {
                Ok(req) => self.handle_request(req),
                Err(e) => Err(e),
            };
            control::answer(&stream, result);
        }
    }

    fn handle_request(&mut self, req: Request) -> Result<String, String> {
        let restart = matches!(req, Request::Restart(_));
        let find = |this: &Self, name: &str| {
            this.index
                .get(name)
                .copied()
                .ok_or_else(|| format!("no service named {name:?}"))
        };
        match req {
            Request::Status => Ok(self.status_text()),
            Request::StatusJson => Ok(self.status_json()),
            Request::Logs(n) => {
                let i = find(self, &n)?;
                Ok(self.services[i]
                    .log
                    .iter()
                    .map(|l| format!("{l}\n"))
                    .collect())
            }
            Request::Stop(n) => {
                let i = find(self, &n)?;
                self.stop(i, AfterStop::Stay);
                Ok(format!("stopping {n}\n"))
            }
            Request::Restart(n) | Request::Start(n) => {
                let i = find(self, &n)?;
                if self.shutdown.is_some() {
                    return Err("shutting down".into());
                }
                if self.services[i].pid().is_some() {
                    if restart {
                        self.stop(i, AfterStop::Restart);
                    }
                } else {
                    // An operator's start or restart is a fresh start: a
                    // failed service gets its start limit and backoff back.
                    let s = &mut self.services[i];
                    s.state = State::Waiting;
                    s.starts.clear();
                    s.failures = 0;
                }
                Ok(format!(
                    "{} {n}\n",
                    if restart { "restarting" } else { "starting" }
                ))
            }
            Request::Reboot => {
                self.request_shutdown(ShutdownKind::Reboot, "ctl reboot");
                Ok("rebooting\n".into())
            }
            Request::Poweroff => {
                self.request_shutdown(ShutdownKind::Poweroff, "ctl poweroff");
                Ok("powering off\n".into())
            }
        }
    }

    fn status_text(&self) -> String {
        let mut o = String::new();
        for s in &self.services {
            let pid = s.pid().map(|p| p.to_string()).unwrap_or_else(|| "-".into());
            let extra = match &s.state {
                State::Failed(w) => format!(" ({w})"),
                State::Exited(st) => format!(" ({st})"),
                _ => String::new(),
            };
            o.push_str(&format!(
                "{:<20} {:<9} pid {:<7} restarts {:<3}{}{}{}\n",
                s.spec.name,
                s.state.name(),
                pid,
                s.restarts,
                if s.spec.cfg.required { " required" } else { "" },
                extra,
                if s.status_text.is_empty() {
                    String::new()
                } else {
                    format!(" status: {}", s.status_text)
                }
            ));
        }
        o
    }

    fn status_json(&self) -> String {
        let items: Vec<String> = self
            .services
            .iter()
            .map(|s| {
                let reason = match &s.state {
                    State::Failed(w) => json_str(w),
                    State::Exited(st) => json_str(&st.to_string()),
                    _ => "null".into(),
                };
                format!(
                    "{{\"name\":{},\"state\":\"{}\",\"pid\":{},\"ready\":{},\"restarts\":{},\"required\":{},\"status\":{},\"reason\":{}}}",
                    json_str(&s.spec.name),
                    s.state.name(),
                    s.pid().map(|p| p.to_string()).unwrap_or_else(|| "null".into()),
                    s.is_ready(),
                    s.restarts,
                    s.spec.cfg.required,
                    json_str(&s.status_text),
                    reason
                )
            })
            .collect();
        format!(
            "{{\"boot_complete\":{},\"shutting_down\":{},\"services\":[{}]}}\n",
            self.boot_completed,
            self.shutdown.is_some(),
            items.join(",")
        )
    }

    // ---- timers ---------------------------------------------------------

    fn next_deadline(&self) -> Option<u64> {
        let mut d: Option<u64> = None;
        let mut take = |t: u64| d = Some(d.map_or(t, |x: u64| x.min(t)));
        for s in &self.services {
            match s.state {
                State::Backoff { until_ms } => take(until_ms),
                State::Stopping {
                    deadline_ms,
                    killed: false,
                    ..
                } => take(deadline_ms),
                _ => {}
            }
            if let (Some(w), State::Running { .. }) = (s.watchdog_deadline, &s.state) {
                take(w);
            }
        }
        if self.hw_watchdog.is_some() || self.hw_watchdog_search.is_some() {
            take(self.hw_next_feed_ms);
        }
        if let (Some(since), false) = (self.required_ready_since, self.boot_completed) {
            take(since + self.config.boot_complete_grace_ms);
        }
        d
    }

    fn handle_timers(&mut self, now: u64) {
        if let Some((dev, until)) = &self.hw_watchdog_search {
            if now >= self.hw_next_feed_ms {
                self.hw_watchdog = HardwareWatchdog::open(dev, self.config.hardware_watchdog_s);
                self.hw_next_feed_ms = now + WATCHDOG_SEARCH_STEP_MS;
                if self.hw_watchdog.is_some() || now >= *until {
                    if self.hw_watchdog.is_none() {
                        tracing::info!(
                            "no hardware watchdog at {}: running without one",
                            dev.display()
                        );
                    }
                    self.hw_watchdog_search = None;
                    self.hw_next_feed_ms = now;
                }
            }
        }
        if let Some(w) = &self.hw_watchdog {
            if now >= self.hw_next_feed_ms {
                w.feed();
                self.hw_next_feed_ms = now + w.feed_interval_ms();
            }
        }
        for i in 0..self.services.len() {
            let s = &mut self.services[i];
            match s.state {
                State::Backoff { until_ms } if now >= until_ms => {
                    s.state = State::Waiting;
                }
                State::Stopping {
                    pid,
                    deadline_ms,
                    killed: false,
                    then,
                } if now >= deadline_ms => {
                    tracing::warn!(
                        "{} did not stop within {} ms; sending SIGKILL",
                        s.spec.name,
                        s.spec.cfg.stop.timeout_ms
                    );
                    sys::kill_group(pid, libc::SIGKILL);
                    s.state = State::Stopping {
                        pid,
                        deadline_ms,
                        killed: true,
                        then,
                    };
                }
                State::Running { pid, .. } => {
                    if let Some(w) = s.watchdog_deadline {
                        if now >= w && !s.watchdog_fired {
                            tracing::warn!(
                                "{} missed its watchdog (no WATCHDOG=1 within {} ms); killing it",
                                s.spec.name,
                                s.spec.cfg.watchdog_ms
                            );
                            s.watchdog_fired = true;
                            s.watchdog_deadline = None;
                            sys::kill_group(pid, libc::SIGKILL);
                        }
                    }
                }
                _ => {}
            }
        }
    }

    // ---- startup and boot complete ---------------------------------------

    fn report_startup(&mut self) {
        if self.startup_reported || self.shutdown.is_some() {
            return;
        }
        let pending = self.services.iter().any(|s| {
            matches!(
                s.state,
                State::Waiting | State::Backoff { .. } | State::Running { ready: false, .. }
            )
        });
        if pending || self.var != VarState::Ready {
            return;
        }
        self.startup_reported = true;
        let failed: Vec<&str> = self
            .services
            .iter()
            .filter(|s| matches!(s.state, State::Failed(_)))
            .map(|s| s.name())
            .collect();
        if failed.is_empty() {
            tracing::info!(
                "all services ready ({} services, t={:.3} s)",
                self.services.len(),
                crate::sys::uptime()
            );
        } else {
            tracing::warn!("startup finished; failed services: {}", failed.join(", "));
        }
    }

    fn check_boot_complete(&mut self, now: u64) {
        if self.boot_completed || self.shutdown.is_some() {
            return;
        }
        let ok = self.var == VarState::Ready
            && self
                .services
                .iter()
                .filter(|s| s.spec.cfg.required)
                .all(Service::is_ready);
        match (ok, self.required_ready_since) {
            (false, _) => self.required_ready_since = None,
            (true, None) => self.required_ready_since = Some(now),
            (true, Some(since)) if now >= since + self.config.boot_complete_grace_ms => {
                self.boot_completed = true;
                tracing::info!(
                    "boot complete: required services ready for {} ms",
                    self.config.boot_complete_grace_ms
                );
                if self.config.boot_complete == BootComplete::Bless {
                    match crate::bless::bless_current_boot() {
                        Ok(Some(path)) => tracing::info!("boot blessed: {path}"),
                        Ok(None) => {
                            tracing::info!("nothing to bless: this boot entry has no counter")
                        }
                        Err(e) => tracing::error!("blessing the boot failed: {e}"),
                    }
                }
            }
            _ => {}
        }
    }

    // ---- stopping -------------------------------------------------------

    fn stop(&mut self, i: usize, then: AfterStop) {
        let now = sys::monotonic_ms();
        let s = &mut self.services[i];
        match s.state {
            State::Running { pid, .. } => {
                tracing::info!("stopping {} (pid {pid})", s.spec.name);
                sys::kill_group(pid, s.spec.stop_signal);
                // Also the main pid itself, in case it left its group.
                // SAFETY: kill takes plain integers.
                unsafe { libc::kill(pid, s.spec.stop_signal) };
                s.state = State::Stopping {
                    pid,
                    deadline_ms: now + s.spec.cfg.stop.timeout_ms,
                    killed: false,
                    then,
                };
            }
            State::Stopping { .. } => {}
            _ => {
                s.state = if then == AfterStop::Restart {
                    State::Waiting
                } else {
                    State::Stopped
                };
            }
        }
    }

    fn begin_shutdown(&mut self, kind: ShutdownKind) {
        self.shutdown = Some(kind);
        for s in &mut self.services {
            if matches!(s.state, State::Waiting | State::Backoff { .. }) {
                s.state = State::Stopped;
            }
        }
    }

    /// Stops each running service once nothing that depends on it still runs.
    fn advance_shutdown(&mut self, _now: u64) {
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

    /// What is left once services are down: kill every other process,
    /// clean up cgroups, disarm the watchdog.
    pub fn finish(mut self) {
        tracing::info!("all services stopped; terminating remaining processes");
        sys::kill_all(libc::SIGTERM);
        wait_for_children(2000);
        sys::kill_all(libc::SIGKILL);
        wait_for_children(2000);
        self.cgroups.remove_all();
        if let Some(w) = self.hw_watchdog.take() {
            w.disarm();
        }
        let _ = self.mode;
    }
}

/// Reads a pipe until it would block; whole lines go to `lines`.
/// Returns false at EOF.
fn drain_pipe(o: &mut crate::service::OutputPipe, lines: &mut Vec<String>) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: read into a stack buffer of the given size.
        let n = unsafe { libc::read(o.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return false;
        }
        if n < 0 {
            let e = std::io::Error::last_os_error().raw_os_error();
            // Would block (or interrupted): still open. Anything else: give it up.
            return matches!(e, Some(libc::EAGAIN) | Some(libc::EINTR));
        }
        o.partial.extend_from_slice(&buf[..n as usize]);
        while let Some(pos) = o
            .partial
            .iter()
            .position(|&b| b == b'\n')
            .or((o.partial.len() >= MAX_LINE).then_some(MAX_LINE))
        {
            let line: Vec<u8> = o.partial.drain(..pos).collect();
            if o.partial.first() == Some(&b'\n') {
                o.partial.remove(0);
            }
            lines.push(
                String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string(),
            );
        }
    }
}

enum Deps {
    Wait,
    Go,
    Broken(String),
}

/// Reaps children until none is left or `ms` pass.
fn wait_for_children(ms: u64) {
    let end = sys::monotonic_ms() + ms;
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes only into `status`.
        let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
        if pid < 0 {
            return; // ECHILD: nobody left
        }
        if pid == 0 {
            if sys::monotonic_ms() >= end {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}
