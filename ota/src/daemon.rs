//! `fluxnode-ota daemon`: the service init starts on every boot.
//!
//! At start it reconciles ([`crate::reconcile`]): on the first boot of a
//! new version it holds back its readiness (and so init's blessing of the
//! boot) until the version's health checks pass; a version that fails
//! them has its entry marked bad and the node reboots into the old one.
//! Then it says ready and checks the repository on schedule: a newer,
//! installable version whose wave has come is installed into the other
//! slot, and the node reboots when the reboot policy allows.
//!
//! Health, for a new version: the update client itself works (its state
//! directory takes writes, the trusted root reads), and the node agent,
//! when one is configured, is registered and has exchanged a heartbeat or
//! a session with the registry since this boot began. init's own
//! boot-complete condition comes on top: init blesses only once every
//! required service, this one included, is ready.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use crate::api::Api;
use crate::esp::Esp;
use crate::fetch::{FetchPolicy, Fetcher};
use crate::reconcile::{self, Decision, Facts};
use crate::state::{self, Attempt, Outcome, Phase, StateDir};
use crate::system::{self, Paths};
use crate::tuf::{self, RepoConfig};
use crate::updater::{self, Options, System};

/// When the node may reboot into an installed update.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case", tag = "when")]
pub enum RebootPolicy {
    /// At once.
    Now,
    /// Inside a daily window, UTC, minutes since midnight (start < end, or
    /// across midnight when start > end).
    Window {
        /// Start, minutes since 00:00 UTC.
        start_min: u32,
        /// End, minutes since 00:00 UTC.
        end_min: u32,
    },
    /// When the node agent says the node is idle (`idle` on the local
    /// API, `api.rs`), or after `max_wait_s` at the latest (default one
    /// day): a silent agent delays an update, it never stops it.
    Idle {
        /// The longest wait for the agent, seconds.
        #[serde(default = "default_idle_wait")]
        max_wait_s: u64,
    },
    /// Never by itself: the operator reboots.
    Manual,
}

fn default_idle_wait() -> u64 {
    86_400
}

impl RebootPolicy {
    /// Whether a reboot is allowed at `unix` seconds.
    pub fn allows(&self, unix: u64) -> bool {
        match self {
            RebootPolicy::Now => true,
            // Decided by the agent (`wait_and_reboot`), not the clock.
            RebootPolicy::Manual | RebootPolicy::Idle { .. } => false,
            RebootPolicy::Window { start_min, end_min } => {
                let m = ((unix / 60) % 1440) as u32;
                if start_min <= end_min {
                    (*start_min..*end_min).contains(&m)
                } else {
                    m >= *start_min || m < *end_min
                }
            }
        }
    }
}

/// The daemon's settings (`/etc/fluxnode/ota.toml`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// The repository (URL or directory); none: the daemon only reconciles.
    #[serde(default)]
    pub repository: Option<String>,
    /// The trusted root metadata.
    #[serde(default = "default_root")]
    pub trusted_root: PathBuf,
    /// The state directory.
    #[serde(default = "default_state")]
    pub state_dir: PathBuf,
    /// Seconds between repository checks.
    #[serde(default = "default_interval")]
    pub check_interval_s: u64,
    /// Seconds after start before the first check.
    #[serde(default = "default_first")]
    pub first_check_s: u64,
    /// How long a new version's health checks may take.
    #[serde(default = "default_health")]
    pub health_timeout_s: u64,
    /// How long init may take to bless a new version's boot once its
    /// health checks passed (every required service ready for init's
    /// grace period); past it the version failed: marked bad, rebooted.
    #[serde(default = "default_bless")]
    pub bless_timeout_s: u64,
    /// When to reboot into an installed update.
    #[serde(default = "default_reboot")]
    pub reboot: RebootPolicy,
    /// The node agent's status command (JSON on stdout); empty: no agent check.
    #[serde(default = "default_agent")]
    pub agent_status: Vec<String>,
    /// The identity that places this node in a wave (default: /etc/machine-id).
    #[serde(default)]
    pub wave_identity: Option<String>,
    /// Ignore waves (install as soon as a version is offered).
    #[serde(default)]
    pub ignore_waves: bool,
    /// The command that raises the TPM's minimum security version.
    #[serde(default = "default_raise")]
    pub raise_command: Vec<String>,
}

fn default_root() -> PathBuf {
    "/usr/lib/fluxnode/tuf/root.json".into()
}
fn default_state() -> PathBuf {
    "/var/lib/fluxnode/ota".into()
}
fn default_interval() -> u64 {
    6 * 3600
}
fn default_first() -> u64 {
    120
}
fn default_health() -> u64 {
    600
}
fn default_bless() -> u64 {
    600
}
fn default_reboot() -> RebootPolicy {
    RebootPolicy::Now
}
fn default_agent() -> Vec<String> {
    ["/usr/bin/fluxnode", "status", "--json", "--offline"]
        .map(String::from)
        .to_vec()
}
fn default_raise() -> Vec<String> {
    [
        "/usr/bin/fluxnode-hal",
        "tpm",
        "secver",
        "--json",
        "--raise",
    ]
    .map(String::from)
    .to_vec()
}

impl Default for DaemonConfig {
    fn default() -> Self {
        DaemonConfig {
            repository: None,
            trusted_root: default_root(),
            state_dir: default_state(),
            check_interval_s: default_interval(),
            first_check_s: default_first(),
            health_timeout_s: default_health(),
            bless_timeout_s: default_bless(),
            reboot: default_reboot(),
            agent_status: default_agent(),
            wave_identity: None,
            ignore_waves: false,
            raise_command: default_raise(),
        }
    }
}

impl DaemonConfig {
    /// Reads the configuration; a missing file is the defaults.
    pub fn read(path: &Path) -> Result<DaemonConfig, String> {
        match std::fs::read_to_string(path) {
            Ok(t) => toml::from_str(&t).map_err(|e| format!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DaemonConfig::default()),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }

    /// The wave identity: configured, else the machine id.
    pub fn identity(&self) -> String {
        self.wave_identity.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/machine-id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        })
    }
}

/// What the agent's `status --json` tells the health check.
#[derive(Debug, Deserialize)]
struct AgentStatus {
    #[serde(default)]
    node_id: Option<String>,
    #[serde(default)]
    registry: String,
    #[serde(default)]
    last_heartbeat_ms: Option<u64>,
    #[serde(default)]
    last_verdict_ms: Option<u64>,
}

/// One look at the agent: `Ok(true)` healthy, `Ok(false)` not yet,
/// `Err` with the reason when it cannot be asked.
fn agent_healthy(argv: &[String], boot_ms: u64) -> Result<(bool, String), String> {
    let Some((prog, args)) = argv.split_first() else {
        return Ok((true, "no agent check configured".into()));
    };
    if !Path::new(prog).exists() {
        return Ok((true, format!("{prog} is not in this image: no agent check")));
    }
    let out = std::process::Command::new(prog)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running {prog}: {e}"))?;
    let st: AgentStatus =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("{prog} status: {e}"))?;
    if st.registry.is_empty() {
        return Ok((
            true,
            "the agent has no registry configured: no agent check".into(),
        ));
    }
    let Some(id) = st.node_id else {
        return Ok((
            false,
            format!("the agent is not registered with {} yet", st.registry),
        ));
    };
    let last = st.last_heartbeat_ms.max(st.last_verdict_ms).unwrap_or(0);
    if last >= boot_ms {
        Ok((
            true,
            format!(
                "node {id} is registered and heard from {} this boot",
                st.registry
            ),
        ))
    } else {
        Ok((
            false,
            format!(
                "node {id} has not reached {} since this boot began",
                st.registry
            ),
        ))
    }
}

fn boot_ms() -> u64 {
    let up = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    now.saturating_sub((up * 1000.0) as u64)
}

/// The outside world the daemon acts on (tests give their own).
pub trait Host {
    /// Tells init this service is ready (READY=1) with a status line.
    fn ready(&mut self, status: &str);
    /// A status line for `fluxnode-init ctl status`.
    fn status(&mut self, status: &str);
    /// An ordered reboot (init: SIGINT to PID 1).
    fn reboot(&mut self, why: &str);
}

/// The real host: sd_notify to init, SIGINT to PID 1.
#[derive(Debug)]
pub struct InitHost<F: FnMut(&str, bool)> {
    /// Sends a notification: (status line, ready).
    pub notify: F,
}

impl<F: FnMut(&str, bool)> Host for InitHost<F> {
    fn ready(&mut self, status: &str) {
        (self.notify)(status, true);
    }
    fn status(&mut self, status: &str) {
        (self.notify)(status, false);
    }
    fn reboot(&mut self, why: &str) {
        tracing::warn!("rebooting: {why}");
        // SAFETY: kill(2) with a constant pid and signal.
        unsafe { libc::kill(1, libc::SIGINT) };
    }
}

const FALLBACK_MARKER: &str = "fallback-reported";

/// Runs the daemon until the process is stopped.
pub fn run(cfg: &DaemonConfig, paths: &Paths, host: &mut dyn Host) -> ! {
    let state = match StateDir::open(&cfg.state_dir) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::error!("state directory unusable: {e}");
            None
        }
    };
    let found = system::detect(paths);
    let (Some(state), Ok(found)) = (state, found) else {
        host.ready("updates unavailable: see the log");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    };
    if let Some(n) = &found.tpm_note {
        tracing::warn!("{n}");
    }
    let sys = found.system.clone();
    let api = Api::default();
    publish_status(&api, &state, &sys);
    if let Err(e) = api.spawn(&paths.api_socket) {
        tracing::warn!(
            "the local API {} is unavailable: {e}",
            paths.api_socket.display()
        );
    }
    start_of_boot(cfg, &state, &sys, paths, host);
    publish_status(&api, &state, &sys);
    warm_indexes(&state, &sys);
    let mut next = Instant::now() + Duration::from_secs(cfg.first_check_s);
    loop {
        let now = Instant::now();
        if now < next && !api.take_check() {
            api.sleep((next - now).min(Duration::from_secs(60)));
            continue;
        }
        next = Instant::now() + Duration::from_secs(cfg.check_interval_s.max(60));
        // Facts can change (a bless just happened): read them again.
        let sys = match system::detect(paths) {
            Ok(f) => f.system,
            Err(e) => {
                tracing::error!("{e}");
                continue;
            }
        };
        publish_status(&api, &state, &sys);
        // Nothing is installed before init blesses this boot (the other
        // slot is its fallback): wait for the blessing, not a whole interval.
        if !sys.blessed && cfg.repository.is_some() {
            next = Instant::now() + Duration::from_secs(2);
            continue;
        }
        match check_and_install(cfg, &state, &sys) {
            Ok(Some(r)) => {
                tracing::info!(
                    "installed {} into slot {} as {}: downloaded {} of {} bytes in {} ms{}",
                    r.version,
                    r.slot,
                    r.entry,
                    r.downloaded,
                    r.payload_bytes,
                    r.duration_ms,
                    if r.resumed { " (resumed)" } else { "" }
                );
                host.status(&format!(
                    "{} installed into slot {}; waiting to reboot",
                    r.version, r.slot
                ));
                publish_status(&api, &state, &sys);
                wait_and_reboot(cfg, host, &api, &r.version, Duration::from_secs(60));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!("update check: {e}"),
        }
    }
}

/// Indexes the running root (and UKI) once per version, in the
/// background: an install then reuses the running slot's chunks without
/// reading it first.
fn warm_indexes(state: &StateDir, sys: &System) {
    let (state, sys) = (state.clone(), sys.clone());
    let spawned = std::thread::Builder::new()
        .name("index".into())
        .spawn(move || {
            // SAFETY: setpriority on this thread (who 0) only.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
            let t0 = Instant::now();
            let Ok(root) = crate::slot::Slot::open_read(&sys.running_root) else {
                return;
            };
            let r = crate::install::Reference {
                version: &sys.running_version,
                kind: "root",
                slot: &root,
                len: sys.running_root_len,
            };
            match crate::install::warm_index(&r, state.path()) {
                Ok(n) => tracing::debug!("running root indexed: {n} chunks in {:?}", t0.elapsed()),
                Err(e) => tracing::warn!("indexing the running root: {e}"),
            }
            if let Ok(Some(e)) = Esp::at(&sys.esp).entry_of(&sys.running_slot) {
                if let Ok(uki) = crate::slot::Slot::open_read(&Esp::at(&sys.esp).path(&e)) {
                    let r = crate::install::Reference {
                        version: &sys.running_version,
                        kind: "uki",
                        slot: &uki,
                        len: uki.size(),
                    };
                    let _ = crate::install::warm_index(&r, state.path());
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("indexing thread: {e}");
    }
}

/// Reboots into `version` when the policy says so; `poll` is how often
/// the policy is looked at again (the API wakes it sooner).
pub fn wait_and_reboot(
    cfg: &DaemonConfig,
    host: &mut dyn Host,
    api: &Api,
    version: &str,
    poll: Duration,
) {
    api.with(|s| s.waiting = Some(version.to_string()));
    let t0 = Instant::now();
    loop {
        if cfg.reboot.allows(state::now()) {
            host.reboot(&format!("to run {version}"));
            return;
        }
        match cfg.reboot {
            RebootPolicy::Manual => {
                tracing::info!("{version} is installed; reboot to run it (reboot policy: manual)");
                return;
            }
            RebootPolicy::Idle { max_wait_s } => {
                if api.idle() {
                    host.reboot(&format!(
                        "to run {version}: the node agent says the node is idle"
                    ));
                    return;
                }
                if t0.elapsed() >= Duration::from_secs(max_wait_s) {
                    host.reboot(&format!(
                        "to run {version}: the node agent has not said idle in {max_wait_s} s"
                    ));
                    return;
                }
            }
            _ => {}
        }
        api.sleep(poll);
    }
}

/// Publishes what `status` on the local API shows.
fn publish_status(api: &Api, state: &StateDir, sys: &System) {
    let v = serde_json::json!({
        "running": sys.running_version,
        "slot": sys.running_slot,
        "blessed": sys.blessed,
        "in_flight": state.progress().ok().flatten(),
        "last_attempt": state.history().ok().and_then(|h| h.last().cloned()),
    });
    api.with(|s| s.status = v.to_string());
}

/// The reconciliation at start (see the module).
pub fn start_of_boot(
    cfg: &DaemonConfig,
    state: &StateDir,
    sys: &System,
    paths: &Paths,
    host: &mut dyn Host,
) {
    let esp = Esp::at(&sys.esp);
    let entries = esp.entries().unwrap_or_default();
    let progress = state.progress().ok().flatten();
    let reported = std::fs::read_to_string(state.path().join(FALLBACK_MARKER)).ok();
    let decision = reconcile::decide(&Facts {
        running_version: &sys.running_version,
        running_slot: &sys.running_slot,
        progress: progress.as_ref(),
        entries: &entries,
        reported_fallback: reported.as_deref().map(str::trim),
    });
    tracing::info!("at start: {decision:?}");
    match decision {
        Decision::Normal | Decision::Resume { .. } => host.ready("up to date"),
        Decision::RolledBack { version, reason } => {
            tracing::error!(
                "{version} failed; back on {} in slot {}: {reason}",
                sys.running_version,
                sys.running_slot
            );
            record_end(
                state,
                progress.as_ref(),
                &version,
                Outcome::RolledBack,
                &reason,
            );
            let _ = state.clear_progress();
            // The failed version's exhausted entry stays on the ESP until
            // the next install; it is this rollback, not a later fall-back.
            if let Some(e) = entries
                .iter()
                .find(|e| e.version == version && e.slot != sys.running_slot)
            {
                let _ = state::write_atomic(&state.path().join(FALLBACK_MARKER), e.file.as_bytes());
            }
            host.ready(&format!("rolled back from {version}"));
        }
        Decision::FellBack { entry, version } => {
            let reason = format!(
                "{version} ({entry}) failed {} boots in a row; fell back to {} in slot {}",
                Esp::at(&sys.esp)
                    .entries()
                    .ok()
                    .and_then(|e| e.into_iter().find(|x| x.file == entry))
                    .map_or(3, |e| e.done),
                sys.running_version,
                sys.running_slot
            );
            let _ = state.record(&Attempt {
                from: version.clone(),
                to: sys.running_version.clone(),
                started_at: state::now(),
                ended_at: state::now(),
                downloaded: 0,
                payload_bytes: 0,
                outcome: Outcome::FellBack,
                reason: format!("fell_back: {reason}"),
            });
            let _ = state::write_atomic(&state.path().join(FALLBACK_MARKER), entry.as_bytes());
            tracing::error!("{reason}");
            host.ready(&format!("fell back from {version}"));
        }
        Decision::FirstBoot { version } => first_boot(cfg, state, sys, paths, host, &version),
    }
}

fn record_end(
    state: &StateDir,
    p: Option<&state::Progress>,
    version: &str,
    outcome: Outcome,
    reason: &str,
) {
    let _ = state.record(&Attempt {
        from: p.map(|p| p.from_version.clone()).unwrap_or_default(),
        to: version.to_string(),
        started_at: p.map_or(0, |p| p.started_at),
        ended_at: state::now(),
        downloaded: p.map_or(0, |p| p.downloaded),
        payload_bytes: 0,
        outcome,
        reason: format!(
            "{}: {reason}",
            match outcome {
                Outcome::RolledBack => "rolled_back",
                Outcome::Success => "ok",
                _ => "ended",
            }
        ),
    });
}

/// The file an operator's `fluxnode-ota commit` leaves for the daemon.
pub const COMMIT_REQUEST: &str = "commit-requested";

fn first_boot(
    cfg: &DaemonConfig,
    state: &StateDir,
    sys: &System,
    paths: &Paths,
    host: &mut dyn Host,
    version: &str,
) {
    let mut progress = state.progress().ok().flatten();
    if let Some(p) = progress.as_mut() {
        p.phase = Phase::Booted;
        let _ = state.save_progress(p);
    }
    host.status(&format!("first boot of {version}: health checks"));
    let t0 = Instant::now();
    let boot = boot_ms();
    let verdict: Result<String, String> = loop {
        if state.path().join(COMMIT_REQUEST).exists() {
            let _ = std::fs::remove_file(state.path().join(COMMIT_REQUEST));
            break Ok("committed by the operator".into());
        }
        // The client itself: its state takes writes, its root reads.
        if let Err(e) = state::write_atomic(&state.path().join("health-probe"), b"ok") {
            break Err(format!("the update client cannot write its state: {e}"));
        }
        if cfg.repository.is_some() {
            if let Err(e) = std::fs::read(&cfg.trusted_root) {
                break Err(format!(
                    "the trusted root {} is unreadable: {e}",
                    cfg.trusted_root.display()
                ));
            }
        }
        match agent_healthy(&cfg.agent_status, boot) {
            Ok((true, why)) => break Ok(why),
            Ok((false, why)) | Err(why) => {
                if t0.elapsed() >= Duration::from_secs(cfg.health_timeout_s) {
                    break Err(format!(
                        "health checks timed out after {} s: {why}",
                        cfg.health_timeout_s
                    ));
                }
                host.status(&format!("first boot of {version}: waiting: {why}"));
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    };
    let verdict = verdict.and_then(|why| {
        tracing::info!("{version} is healthy: {why}");
        host.ready(&format!(
            "{version} healthy; waiting for init to bless the boot"
        ));
        // init blesses once every required service has been ready for its
        // grace period; a required service that never gets ready keeps
        // the boot unblessed, and the version has failed.
        let until = Instant::now() + Duration::from_secs(cfg.bless_timeout_s);
        while !paths.blessed_marker.exists() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(500));
        }
        if paths.blessed_marker.exists() {
            Ok(why)
        } else {
            Err(format!(
                "init did not bless the boot within {} s: {}",
                cfg.bless_timeout_s,
                crate::initctl::not_ready(&paths.control_socket)
            ))
        }
    });
    match verdict {
        Ok(_) => {
            on_blessed(cfg, state, sys, version, progress.as_ref());
            host.status(&format!("{version} blessed"));
        }
        Err(why) => {
            tracing::error!("{version} failed its health checks: {why}");
            record_end(
                state,
                progress.as_ref(),
                version,
                Outcome::RolledBack,
                &format!("health: {why}"),
            );
            let _ = state.clear_progress();
            let esp = Esp::at(&sys.esp);
            if let Ok(Some(e)) = esp.entry_of(&sys.running_slot) {
                match esp.mark_bad(&e) {
                    // Its exhausted entry is this failure, already
                    // recorded: not a fall-back to report on the next boot.
                    Ok(bad) => {
                        let _ = state::write_atomic(
                            &state.path().join(FALLBACK_MARKER),
                            bad.file.as_bytes(),
                        );
                    }
                    Err(err) => tracing::error!("marking {} bad: {err}", e.file),
                }
            }
            host.reboot(&format!(
                "{version} failed its health checks: back to the old version"
            ));
        }
    }
}

/// A new version passed and was blessed: record the success, raise the
/// security minimum when its manifest says so, remove superseded entries.
pub fn on_blessed(
    cfg: &DaemonConfig,
    state: &StateDir,
    sys: &System,
    version: &str,
    p: Option<&state::Progress>,
) {
    let manifest = std::fs::read(state.path().join(updater::MANIFEST_FILE))
        .ok()
        .and_then(|b| fluxnode_protocol::update::UpdateManifest::parse(&b).ok())
        .filter(|m| m.version == version);
    let mut note = String::new();
    if let Some(m) = manifest.as_ref().filter(|m| m.raise_security_version) {
        match raise(cfg, m.security_version) {
            Ok(()) => {
                note = format!("; security minimum raised to {}", m.security_version);
                // Older entries can no longer boot: remove them.
                let esp = Esp::at(&sys.esp);
                for e in esp.entries().unwrap_or_default() {
                    if e.slot != sys.running_slot {
                        let _ = esp.remove_slot(&e.slot);
                    }
                }
            }
            Err(e) => {
                tracing::error!(
                    "raising the security minimum to {}: {e}",
                    m.security_version
                );
                note = format!("; raising the security minimum failed: {e}");
            }
        }
    }
    record_end(
        state,
        p,
        version,
        Outcome::Success,
        &format!("blessed{note}"),
    );
    let _ = state.clear_progress();
    // Said once it is on /var: a cut before this point leaves the journal
    // at `booted`, and the next boot runs the checks again and records it.
    tracing::info!("update to {version} succeeded: blessed{note}");
}

fn raise(cfg: &DaemonConfig, to: u64) -> Result<(), String> {
    let Some((prog, args)) = cfg.raise_command.split_first() else {
        return Err("no raise command configured".into());
    };
    let out = std::process::Command::new(prog)
        .args(args)
        .arg(to.to_string())
        .output()
        .map_err(|e| format!("running {prog}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{prog}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// One scheduled check: install the newest version when it is newer,
/// installable, and this node's wave has come. `Ok(None)`: nothing to do.
pub fn check_and_install(
    cfg: &DaemonConfig,
    state: &StateDir,
    sys: &System,
) -> Result<Option<updater::Report>, String> {
    let Some(source) = &cfg.repository else {
        return Ok(None);
    };
    let repo = RepoConfig::from_source(source, &cfg.trusted_root, &cfg.state_dir.join("tuf"))
        .map_err(|e| e.to_string())?;
    let verified = tuf::load(&repo).map_err(|e| e.to_string())?;
    let offer = verified.offer(None).map_err(|e| e.to_string())?;
    let m = &offer.manifest;
    if fluxnode_protocol::update::cmp_versions(&m.version, &sys.running_version)
        != std::cmp::Ordering::Greater
    {
        return Ok(None);
    }
    // A version that already failed on this node is not retried by itself.
    if state.history().unwrap_or_default().iter().any(|a| {
        (a.outcome == Outcome::RolledBack && a.to == m.version)
            || (a.outcome == Outcome::FellBack && a.from == m.version)
    }) {
        tracing::info!(
            "{} failed on this node before: not installing it again (install it by hand to retry)",
            m.version
        );
        return Ok(None);
    }
    if !cfg.ignore_waves {
        let pos = fluxnode_protocol::update::wave_position(cfg.identity().as_bytes());
        let start = fluxnode_protocol::update::Waves(m).start_at(pos);
        if state::now() < start {
            tracing::info!(
                "{} is offered; this node's wave (position {pos}) starts in {} s",
                m.version,
                start - state::now()
            );
            return Ok(None);
        }
    }
    tracing::info!(
        "installing {} over {} into the other slot (from {source})",
        m.version,
        sys.running_version
    );
    let mut fetch = Fetcher::new(FetchPolicy::default());
    let mut last = Instant::now();
    let mut report = |what: &str, done: u64, total: u64| {
        if last.elapsed() >= Duration::from_secs(5) {
            last = Instant::now();
            tracing::info!("{what}: {done} of {total} bytes");
        }
    };
    updater::install(
        sys,
        &offer,
        state,
        &mut fetch,
        &Options::default(),
        &mut report,
    )
    .map(Some)
    .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn the_shipped_settings_parse() {
        let c: DaemonConfig =
            toml::from_str(include_str!("../../image/services/ota/config.toml")).unwrap();
        assert_eq!(c.repository, None, "the shipped image names no repository");
        assert_eq!(c.reboot, RebootPolicy::Now);
        let demo: DaemonConfig =
            toml::from_str(include_str!("../../image/services/demo/ota.toml")).unwrap();
        assert_eq!(demo.reboot, RebootPolicy::Idle { max_wait_s: 600 });
        assert!(demo.repository.is_some());
    }

    #[test]
    fn reboot_windows() {
        let w = RebootPolicy::Window {
            start_min: 120,
            end_min: 240,
        };
        assert!(!w.allows(60 * 119));
        assert!(w.allows(60 * 120));
        assert!(!w.allows(60 * 240));
        assert!(w.allows(86_400 + 60 * 200), "every day");
        let night = RebootPolicy::Window {
            start_min: 23 * 60,
            end_min: 60,
        };
        assert!(
            night.allows(60 * (23 * 60 + 30)) && night.allows(60 * 30) && !night.allows(60 * 120)
        );
        assert!(RebootPolicy::Now.allows(0) && !RebootPolicy::Manual.allows(0));
    }

    #[test]
    fn config_parses_with_defaults_and_refuses_unknown_keys() {
        let c: DaemonConfig = toml::from_str("repository = \"https://u.example/r\"\nreboot = { when = \"window\", start_min = 120, end_min = 240 }\n").unwrap();
        assert_eq!(c.check_interval_s, 6 * 3600);
        assert_eq!(
            c.reboot,
            RebootPolicy::Window {
                start_min: 120,
                end_min: 240
            }
        );
        assert!(toml::from_str::<DaemonConfig>("repositry = \"x\"").is_err());
    }

    #[test]
    fn the_agent_check_reads_the_status_json() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("status");
        let write = |body: &str| {
            std::fs::write(&script, format!("#!/bin/sh\ncat <<'EOF'\n{body}\nEOF\n")).unwrap();
            let mut perm = std::fs::metadata(&script).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
            std::fs::set_permissions(&script, perm).unwrap();
        };
        let argv = vec![script.display().to_string()];
        write(r#"{"registry":"","node_id":null}"#);
        assert!(
            agent_healthy(&argv, 1000).unwrap().0,
            "no registry: nothing to check"
        );
        write(r#"{"registry":"https://r","node_id":null}"#);
        assert!(!agent_healthy(&argv, 1000).unwrap().0);
        write(r#"{"registry":"https://r","node_id":"n1","last_heartbeat_ms":500}"#);
        assert!(
            !agent_healthy(&argv, 1000).unwrap().0,
            "a heartbeat from before this boot does not count"
        );
        write(
            r#"{"registry":"https://r","node_id":"n1","last_heartbeat_ms":500,"last_verdict_ms":2000}"#,
        );
        assert!(agent_healthy(&argv, 1000).unwrap().0);
        write("not json");
        assert!(agent_healthy(&argv, 1000).is_err());
        assert!(
            agent_healthy(&["/nonexistent/fluxnode".into()], 0)
                .unwrap()
                .0,
            "no agent in the image"
        );
    }
}
