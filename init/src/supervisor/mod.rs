//! Stage 2: the supervisor loop.
//!
//! One thread, one `poll(2)`: the signalfd (SIGCHLD, SIGTERM, ...), the
//! sd_notify socket, the control socket and its open connections, and
//! every service's output pipe. Timers (backoff, stop timeouts, watchdogs,
//! boot-complete grace and timeout, control deadlines) set the poll
//! timeout. A single reaper (`waitpid(-1)`) collects every exit and routes
//! it by pid: supervised children get their exit status, the /var child
//! and the blessing child theirs, orphans are simply reaped — nothing
//! else in init ever waits, so nothing is stolen.
//!
//! Nothing in a turn waits on anything outside init: control clients are
//! read and written without blocking, under deadlines ([`crate::control::server`]);
//! a pipe is read at most [`crate::output::READ_BUDGET`] bytes per event;
//! blessing the boot (mounts, fsyncs) runs in a child process. So the loop
//! always comes back to feed the hardware watchdog.
//!
//! The transitions of a service live in [`crate::service`], those of the
//! boot in [`crate::boot`]; this module does the I/O they ask for.
//!
//! Each turn runs under `catch_unwind`: a bug in the handling of one event
//! is logged, `Supervisor::recover` re-derives what a half-done turn may
//! have left inconsistent, and the loop goes on; PID 1 never unwinds out.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use fluxnode_lowlevel::signals::SignalFd;

use crate::boot::{BootAction, BootPhase, Facts};
use crate::cgroup::Cgroups;
use crate::config::{BootComplete, ConfigError, InitConfig};
use crate::control::access::{Access, Group};
use crate::control::server::ControlServer;
use crate::notify::NotifySocket;
use crate::service::{Jitter, Service};
use crate::spawn::Context as SpawnContext;
use crate::sys::{self, ExitStatus, Mode};
use crate::watchdog::Feeder;

mod events;
mod requests;
mod services;

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
    /// init's private runtime directory (0700): control.sock. The notify
    /// socket is in a directory of its own next to it ([`Paths::notify_dir`]).
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

impl Paths {
    /// The notify socket's directory: `<run_dir>-notify` (0711), beside
    /// the private one, because services that are not root must reach it.
    pub fn notify_dir(&self) -> PathBuf {
        let mut name = self
            .run_dir
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_else(|| "fluxnode".into());
        name.push("-notify");
        self.run_dir.with_file_name(name)
    }
}

/// Creates `dir` if needed and sets its owner group and mode.
fn private_dir(dir: &Path, mode: u32, gid: Option<u32>) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        std::os::unix::fs::chown(dir, Some(0), Some(gid.unwrap_or(0)))?;
    }
    // (An init run by another user, in the foreground, keeps its own.)
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Resolves init.toml's control groups; an unknown group is logged and
/// left out (the socket is then root's only: the safe side).
fn control_access(config: &InitConfig) -> Access {
    let resolve = |key: &str, name: &Option<String>| {
        let name = name.as_ref()?;
        match crate::config::resolve_group(Path::new("/"), name) {
            Ok(gid) => Some(Group {
                name: name.clone(),
                gid,
            }),
            Err(e) => {
                tracing::error!("init.toml: {key}: {e}; left out");
                None
            }
        }
    };
    Access {
        group: resolve("control_group", &config.control_group),
        admin_group: resolve("control_admin_group", &config.control_admin_group),
    }
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

/// The supervisor: what it supervises, what it listens on, and where the
/// boot and the shutdown stand.
#[derive(Debug)]
pub struct Supervisor {
    /// Every service, each with its own state machine.
    services: Vec<Service>,
    /// Service name → position in `services`.
    index: BTreeMap<String, usize>,
    config: InitConfig,
    mode: Mode,
    // What the loop polls.
    signals: SignalFd,
    notify: NotifySocket,
    control: ControlServer,
    /// Who may ask the control socket what.
    access: Access,
    cgroups: Cgroups,
    /// Where cgroup2 is mounted: a service's cgroup relative to it is what
    /// /proc/PID/cgroup names.
    cgroup_root: PathBuf,
    /// What every spawn needs besides the service.
    spawn_ctx: SpawnContext,
    /// The hardware watchdog and its feeding schedule.
    watchdog: Feeder,
    /// Spread for backoff delays.
    jitter: Jitter,
    /// Set once an ordered shutdown has begun.
    shutdown: Option<ShutdownKind>,
    /// /var, prepared by stage 1's child.
    var: VarState,
    /// How far the boot has come.
    boot: BootPhase,
    /// When stage 2 started (monotonic ms): `boot_complete_timeout_s`
    /// counts from here.
    started_ms: u64,
    /// Service files init refused (unparsable, invalid, unknown user): the
    /// boot is never complete while any is, so an update that ships a
    /// broken one is not blessed and boot counting takes the node back.
    /// A refused file may have been the network's or another required one.
    refused_files: Vec<String>,
}

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

/// The pause after a caught panic, so a bug that panics every turn does
/// not spin a CPU (nor flood the console).
const PANIC_PAUSE_MS: u64 = 50;

/// Why a service's process never ran its program: at spawn, or reported
/// by the child before exec.
fn cannot_start(s: &Service, e: &std::io::Error) -> String {
    let argv0 = s.spec.cfg.argv.first().map(String::as_str).unwrap_or("");
    format!("cannot start {argv0}: {e}")
}

fn log_config_error(e: &ConfigError) {
    tracing::error!("{e}");
}

/// What one descriptor in the poll set stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Signals,
    Notify,
    ControlListener,
    ControlConn,
    Output(usize),
}

impl Supervisor {
    /// Loads config, opens sockets and devices. Config errors are logged and
    /// the services they concern left out; the rest still start.
    pub fn new(paths: &Paths, mode: Mode) -> std::io::Result<Self> {
        let signals = SignalFd::block(&SIGNALS)?;
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
        let refused_files = errors.iter().map(|e| e.to_string()).collect();
        // The control socket lives in a directory only root (and the
        // control group) can enter; the notify socket in one every service
        // can reach, as its messages are judged by their credentials.
        let access = control_access(&config);
        let group = access.socket_group();
        private_dir(
            &paths.run_dir,
            if group.is_some() { 0o710 } else { 0o700 },
            group,
        )?;
        let notify_dir = paths.notify_dir();
        private_dir(&notify_dir, 0o711, None)?;
        let notify = NotifySocket::bind(&notify_dir.join("notify.sock"))?;
        notify.open_to_all()?;
        let control = ControlServer::bind(&paths.run_dir.join("control.sock"), &access)?;
        let empty_file = paths.run_dir.join("inaccessible");
        crate::sandbox::make_empty_file(&empty_file)?;
        let spawn_ctx = SpawnContext {
            notify_socket: notify.path().to_path_buf(),
            empty_file,
            run_root: PathBuf::from("/run"),
        };
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
        let watchdog = match mode {
            Mode::Machine => Feeder::start(
                &paths.watchdog_dev,
                config.hardware_watchdog_s,
                sys::monotonic_ms(),
            ),
            _ => Feeder::Off,
        };
        let services: Vec<Service> = specs
            .into_iter()
            .map(|s| Service::new(s, config.log_lines, config.log_bytes))
            .collect();
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
            access,
            cgroups,
            cgroup_root,
            spawn_ctx,
            watchdog,
            jitter: Jitter::new(),
            shutdown: None,
            var: VarState::Ready,
            boot: BootPhase::Starting,
            started_ms: sys::monotonic_ms(),
            refused_files,
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
        let mut panics: u64 = 0;
        loop {
            let turn = std::panic::catch_unwind(AssertUnwindSafe(|| self.turn()));
            match turn {
                Ok(Some(kind)) => return kind,
                Ok(None) => {}
                Err(_) => {
                    panics += 1;
                    tracing::error!(
                        "internal error in the supervisor loop (a bug; {panics} so far); recovering"
                    );
                    std::thread::sleep(std::time::Duration::from_millis(PANIC_PAUSE_MS));
                    // Recovery itself must not unwind out of PID 1.
                    if std::panic::catch_unwind(AssertUnwindSafe(|| self.recover())).is_err() {
                        tracing::error!("internal error while recovering; going on");
                    }
                }
            }
        }
    }

    /// One turn: start what can start, wait for events, handle them.
    fn turn(&mut self) -> Option<ShutdownKind> {
        let now = sys::monotonic_ms();
        self.start_eligible(now);
        self.advance_boot(now);
        if let Some(kind) = self.shutdown {
            self.advance_shutdown();
            if self.services.iter().all(|s| s.pid().is_none()) {
                return Some(kind);
            }
        }
        self.poll_once(now);
        self.handle_timers(sys::monotonic_ms());
        None
    }

    /// After a caught panic: the turn stopped anywhere, so re-derive what
    /// it may have left half-done. The poll set and every timer are
    /// recomputed from the state at each turn already; what is not:
    ///
    /// - an exit reaped but not yet routed (its status is lost): any
    ///   tracked process that no longer exists is treated as ended;
    /// - exits not reaped yet (the SIGCHLD may have been read and dropped):
    ///   reap again;
    /// - control connections mid-request: closed (a client sees EOF);
    /// - the hardware watchdog's schedule: fed at the next healthy turn.
    fn recover(&mut self) {
        self.reap();
        let now = sys::monotonic_ms();
        let gone = |pid: i32| {
            // SAFETY: kill with signal 0 only checks that the pid exists.
            let rc = unsafe { libc::kill(pid, 0) };
            rc != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        };
        for i in 0..self.services.len() {
            if let Some(pid) = self.services[i].pid().filter(|&p| gone(p)) {
                tracing::error!(
                    "{}: process {pid} is gone and its exit status was lost",
                    self.services[i].name()
                );
                self.on_exit(i, ExitStatus::Code(-1), now);
            }
        }
        if let VarState::Pending(pid) = self.var {
            if gone(pid) {
                self.on_var_done(ExitStatus::Code(-1));
            }
        }
        if self.boot.blessing_pid().is_some_and(gone) {
            tracing::error!("the blessing child is gone and its result was lost");
            self.boot.blessing_done();
        }
        self.control.reset();
        self.watchdog.rearm(now);
    }

    // ---- the boot -------------------------------------------------------

    fn advance_boot(&mut self, now: u64) {
        let facts = Facts {
            now,
            var_ready: self.var == VarState::Ready,
            any_pending: self.services.iter().any(Service::is_pending),
            required_ready: self.refused_files.is_empty()
                && self
                    .services
                    .iter()
                    .filter(|s| s.spec.cfg.required)
                    .all(Service::is_ready),
            shutting_down: self.shutdown.is_some(),
            grace_ms: self.config.boot_complete_grace_ms,
            started: self.started_ms,
            timeout_ms: self.boot_timeout_ms(),
        };
        for action in self.boot.advance(facts) {
            match action {
                BootAction::WatchPowerButton => {
                    if self.mode == Mode::Machine {
                        crate::powerbutton::spawn_watcher();
                    }
                }
                BootAction::MountLate => {
                    // Not in foreground mode: that init made no mounts.
                    if self.mode != Mode::Foreground {
                        crate::mounts::mount_late();
                    }
                }
                BootAction::ReportStartup => self.report_startup(),
                BootAction::BootComplete => self.boot_complete(),
                BootAction::TimedOut => self.boot_timed_out(),
            }
        }
    }

    /// `boot_complete_timeout_s` in ms (0 = none).
    pub(super) fn boot_timeout_ms(&self) -> u64 {
        self.config.boot_complete_timeout_s.saturating_mul(1000)
    }

    /// What keeps the boot from completing, for the timeout's line.
    fn not_ready(&self) -> Vec<String> {
        let mut v: Vec<String> = Vec::new();
        if self.var != VarState::Ready {
            v.push("/var (not mounted yet)".into());
        }
        v.extend(
            self.services
                .iter()
                .filter(|s| s.spec.cfg.required && !s.is_ready())
                .map(|s| format!("{} ({})", s.name(), not_ready_word(&s.state))),
        );
        if !self.refused_files.is_empty() {
            v.push(format!(
                "{} refused service file(s)",
                self.refused_files.len()
            ));
        }
        if v.is_empty() {
            // Every required service is ready, but not yet for the grace.
            v.push(format!(
                "required services ready for less than {} ms",
                self.config.boot_complete_grace_ms
            ));
        }
        v
    }

    fn boot_timed_out(&mut self) {
        tracing::error!(
            "boot not complete within boot_complete_timeout_s = {} s of stage 2's start; not ready: {}; rebooting (a counted try: boot counting falls back to the other slot)",
            self.config.boot_complete_timeout_s,
            self.not_ready().join(", ")
        );
        if self.shutdown.is_none() {
            self.begin_shutdown(ShutdownKind::Reboot);
        }
    }

    fn report_startup(&self) {
        let failed: Vec<&str> = self
            .services
            .iter()
            .filter(|s| matches!(s.state, crate::service::State::Failed(_)))
            .map(|s| s.name())
            .collect();
        if !self.refused_files.is_empty() {
            tracing::error!(
                "{} service file(s) were refused: the boot will not be marked good \
                 (the previous slot takes over once its tries run out): {}",
                self.refused_files.len(),
                self.refused_files.join("; ")
            );
        }
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

    fn boot_complete(&mut self) {
        tracing::info!(
            "boot complete: required services ready for {} ms",
            self.config.boot_complete_grace_ms
        );
        if self.config.boot_complete != BootComplete::Bless {
            return;
        }
        // In a child: a vfat mount, maybe a module load, fsyncs and an
        // unmount take their time, and the loop must go on meanwhile.
        match crate::bless::spawn_child() {
            Ok(pid) => {
                tracing::debug!("blessing the boot in pid {pid}");
                self.boot.blessing(pid);
            }
            Err(e) => tracing::error!("blessing the boot failed: cannot start its child: {e}"),
        }
    }

    /// What is left once services are down: kill every other process,
    /// clean up cgroups, disarm the watchdog.
    pub fn finish(self) {
        tracing::info!("all services stopped; terminating remaining processes");
        sys::kill_all(libc::SIGTERM);
        wait_for_children(2000);
        sys::kill_all(libc::SIGKILL);
        wait_for_children(2000);
        self.cgroups.remove_all();
        self.watchdog.disarm();
        let _ = self.mode;
    }
}

/// How a required service that is not ready stands, in a few words.
fn not_ready_word(state: &crate::service::State) -> String {
    use crate::service::State;
    match state {
        State::Running { .. } => "running, not ready".into(),
        State::Failed(why) => format!("failed: {why}"),
        State::Exited(st) => format!("exited: {st}"),
        other => other.name().into(),
    }
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
