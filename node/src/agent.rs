//! The agent: an explicit state machine driven by one loop.
//!
//! ```text
//!  Unregistered ──register+activate──▶ Registered ──session──▶ Ranked
//!        ▲  │ unreachable/refused: back off           │  every 6 h ± jitter,
//!        └──┘                                         │  and on a new boot
//!                                 heartbeats every interval once registered
//! ```
//!
//! Nothing here exits on a registry failure: an unreachable registry is
//! retried with exponential backoff (5 s doubling to 5 min, with jitter),
//! a refusal is recorded with its reason for `fluxnode status` and retried
//! later. State is saved after every step, atomically, so a power cut or a
//! restart loses at most the step in flight.

use std::path::PathBuf;
use std::time::Duration;

use fluxnode_hal::tpm::Tpm;
use fluxnode_protocol::messages::Heartbeat;
use fluxnode_protocol::session::ImageInfo;

use crate::attest::{self, AttestError, Prover};
use crate::client::{ClientError, RegistryClient};
use crate::ota_link::{Activity, OtaLink};
use crate::register::{self, Identity, RegisterError};
use crate::state::{AgentState, StateDir};

/// How the agent runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The registry, `https://host:port`.
    pub registry: String,
    /// The registry's CA, PEM (pinned).
    pub ca_pem: Vec<u8>,
    /// State directory on /var.
    pub state_dir: PathBuf,
    /// Directory whose disk is benchmarked.
    pub bench_dir: PathBuf,
    /// TPM TCTI.
    pub tcti: String,
    /// Sessions every this long.
    pub session_interval: Duration,
    /// ± this much, random.
    pub jitter: Duration,
    /// Retry a refused session after this long.
    pub retry_refused: Duration,
    /// Heartbeat interval until the registry names one.
    pub heartbeat: Duration,
    /// The image.
    pub image: ImageInfo,
    /// The kernel's boot id.
    pub boot_id: String,
    /// The event log.
    pub event_log: Option<PathBuf>,
    /// The update client's local API, told when the node is busy or idle
    /// ([`crate::ota_link`]); `None`: no update client to tell.
    pub ota_socket: Option<PathBuf>,
}

/// Unix ms now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn jitter_ms(span: Duration) -> i64 {
    let mut b = [0u8; 8];
    if getrandom::getrandom(&mut b).is_err() {
        return 0;
    }
    let span = i64::try_from(span.as_millis()).unwrap_or(i64::MAX).max(1);
    (u64::from_le_bytes(b) % (2 * span as u64)) as i64 - span
}

/// Exponential backoff with jitter.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
}

impl Backoff {
    /// 5 s doubling up to 5 min.
    pub fn new() -> Self {
        Backoff {
            next: Duration::from_secs(5),
            min: Duration::from_secs(5),
            max: Duration::from_secs(300),
        }
    }

    /// The wait before the next try (and doubles the one after).
    pub fn fail(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        let j = jitter_ms(d / 5);
        Duration::from_millis((i64::try_from(d.as_millis()).unwrap_or(0) + j).max(0) as u64)
    }

    /// Back to the shortest wait.
    pub fn reset(&mut self) {
        self.next = self.min;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// The agent.
#[derive(Debug)]
pub struct Agent {
    cfg: Config,
    dir: StateDir,
    state: AgentState,
    client: RegistryClient,
    tpm: Tpm,
    id: Identity,
    backoff: Backoff,
    retry_at_ms: u64,
    heartbeat_interval: Duration,
    next_heartbeat_ms: u64,
    ota: OtaLink,
}

fn unreachable(e: &ClientError) -> bool {
    matches!(e, ClientError::Unreachable { .. })
}

impl Agent {
    /// Opens the TPM, loads or makes the identity, loads the state.
    pub fn new(cfg: Config) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let dir = StateDir::new(&cfg.state_dir);
        let mut tpm =
            Tpm::open(&cfg.tcti).with_context(|| format!("opening the TPM at {}", cfg.tcti))?;
        let id = register::load_or_create(&dir, &mut tpm)
            .with_context(|| format!("node identity in {}", dir.root.display()))?;
        let mut state = dir.load();
        if state.node_id.is_some() && state.registry != cfg.registry {
            tracing::info!(old = %state.registry, new = %cfg.registry, "registry changed; registering again");
            state = AgentState::default();
        }
        let client = RegistryClient::new(&cfg.registry, &cfg.ca_pem, id.key.clone())
            .with_context(|| format!("registry client for {}", cfg.registry))?;
        let client = match &state.node_id {
            Some(n) => client.as_node(n),
            None => client,
        };
        let heartbeat_interval = cfg.heartbeat;
        let ota = OtaLink::new(cfg.ota_socket.clone());
        Ok(Agent {
            cfg,
            dir,
            state,
            client,
            tpm,
            id,
            backoff: Backoff::new(),
            retry_at_ms: 0,
            heartbeat_interval,
            next_heartbeat_ms: 0,
            ota,
        })
    }

    /// The current state.
    pub fn state(&self) -> &AgentState {
        &self.state
    }

    fn save(&self) {
        if let Err(e) = self.dir.save(&self.state) {
            tracing::warn!("saving {}: {e}", self.dir.path("agent.json").display());
        }
    }

    fn failed(&mut self, what: &str, e: &dyn std::fmt::Display, reached: bool) {
        let wait = self.backoff.fail();
        tracing::warn!("{what}: {e}; next try in {} s", wait.as_secs());
        self.state.last_error = Some(format!("{what}: {e}"));
        self.state.registry_reachable = Some(reached);
        self.retry_at_ms = now_ms() + u64::try_from(wait.as_millis()).unwrap_or(0);
        self.save();
    }

    /// Does whatever is due now; returns how long to wait before calling again.
    pub fn step(&mut self) -> Duration {
        let now = now_ms();
        if now >= self.retry_at_ms {
            if self.state.node_id.is_none() {
                self.try_register();
            } else if self.session_due(now) {
                // A reboot for an update would waste the session.
                self.ota.say(Activity::Busy);
                self.try_session();
            }
        }
        // Between steps nothing of the agent's would be disturbed (apps
        // will be the other reason to be busy).
        self.ota.say(Activity::Idle);
        if self.state.node_id.is_some() && now_ms() >= self.next_heartbeat_ms {
            self.try_heartbeat();
        }
        let now = now_ms();
        let work_at = match &self.state.node_id {
            None => self.retry_at_ms,
            Some(_)
                if self.state.attested_boot_id.as_deref() != Some(self.cfg.boot_id.as_str()) =>
            {
                self.retry_at_ms
            }
            Some(_) => self
                .retry_at_ms
                .max(self.state.next_session_ms.unwrap_or(0)),
        };
        let wake = if self.state.node_id.is_some() {
            work_at.min(self.next_heartbeat_ms)
        } else {
            work_at
        };
        Duration::from_millis(wake.saturating_sub(now).max(1000))
    }

    fn session_due(&self, now: u64) -> bool {
        self.state.attested_boot_id.as_deref() != Some(self.cfg.boot_id.as_str())
            || self.state.next_session_ms.is_none_or(|t| now >= t)
    }

    fn try_register(&mut self) {
        tracing::info!(registry = %self.cfg.registry, "registering");
        match register::register(&self.client, &mut self.tpm, &self.id, &self.cfg.image) {
            Ok(node_id) => {
                self.backoff.reset();
                self.client = self.client.clone().as_node(&node_id);
                self.state.node_id = Some(node_id);
                self.state.registered_at_ms = Some(now_ms());
                self.state.registry = self.cfg.registry.clone();
                self.state.registry_reachable = Some(true);
                self.state.last_error = None;
                self.save();
            }
            Err(RegisterError::Client(e)) => {
                let reached = !unreachable(&e);
                self.failed("registration", &e, reached);
            }
            Err(e) => self.failed("registration", &e, false),
        }
    }

    fn try_session(&mut self) {
        tracing::info!("running an attested benchmark session");
        let mut prover = Prover {
            tpm: &mut self.tpm,
            ak: &self.id.ak,
            bench_dir: self.cfg.bench_dir.clone(),
            machine: attest::machine(),
            image: self.cfg.image.clone(),
            event_log: self.cfg.event_log.clone(),
        };
        match attest::run_session(&self.client, &mut prover, &self.cfg.boot_id) {
            Ok(attest::Outcome {
                verdict: v,
                bench_ms,
            }) => {
                self.backoff.reset();
                let now = now_ms();
                self.state.registry_reachable = Some(true);
                self.state.last_verdict_ms = Some(now);
                // This boot has had its session, whatever the verdict: the
                // next one follows the schedule.
                self.state.attested_boot_id = Some(self.cfg.boot_id.clone());
                let wait = if v.accepted {
                    if let Some(c) = &v.certificate {
                        if let Err(e) = self.dir.save_certificate(c) {
                            tracing::warn!("saving the tier certificate: {e}");
                        }
                    }
                    self.state.last_error = None;
                    tracing::info!(
                        tier = v.tier.as_deref().unwrap_or("none"),
                        bench_ms,
                        "session accepted"
                    );
                    self.cfg.session_interval
                } else {
                    let why = v
                        .rejection
                        .as_ref()
                        .map(|r| format!("{}: {}", r.code, r.message))
                        .unwrap_or_default();
                    tracing::warn!(bench_ms, "session refused: {why}");
                    self.state.last_error = Some(format!("session refused: {why}"));
                    self.cfg.retry_refused
                };
                let j = jitter_ms(self.cfg.jitter);
                let next = i64::try_from(now + u64::try_from(wait.as_millis()).unwrap_or(0))
                    .unwrap_or(i64::MAX)
                    + j;
                self.state.next_session_ms = Some(next.max(0) as u64);
                self.state.last_verdict = Some(v);
                self.save();
            }
            Err(AttestError::Client(e)) if e.code() == Some("node_unknown") => {
                // The registry forgot us (new database): register again.
                tracing::warn!("the registry does not know this node; registering again");
                self.state.node_id = None;
                self.failed("session", &e, true);
            }
            Err(AttestError::Client(e)) => {
                let reached = !unreachable(&e);
                self.failed("session", &e, reached);
            }
            Err(e) => self.failed("session", &e, true),
        }
    }

    fn try_heartbeat(&mut self) {
        let Some(node_id) = self.state.node_id.clone() else {
            return;
        };
        self.state.heartbeat_seq += 1;
        let hb = Heartbeat {
            node_id,
            boot_id: self.cfg.boot_id.clone(),
            seq: self.state.heartbeat_seq,
        };
        let now = now_ms();
        match self.client.heartbeat(&hb) {
            Ok(ack) => {
                self.heartbeat_interval = Duration::from_secs(ack.interval_s.clamp(5, 3600));
                self.state.last_heartbeat_ms = Some(now);
                self.state.registry_uptime_s = Some(ack.uptime_s);
                self.state.registry_reachable = Some(true);
            }
            Err(e) => {
                tracing::debug!("heartbeat: {e}");
                self.state.registry_reachable = Some(!unreachable(&e));
            }
        }
        self.next_heartbeat_ms =
            now + u64::try_from(self.heartbeat_interval.as_millis()).unwrap_or(60_000);
        self.save();
    }
}

/// The kernel's boot id (a new one on every boot).
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The image: version from /etc/os-release (IMAGE_VERSION), slot from the
/// kernel command line (`fluxnode.slot=`).
pub fn image_info() -> ImageInfo {
    let version = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("IMAGE_VERSION=")
                    .map(|v| v.trim_matches('"').to_string())
            })
        })
        .unwrap_or_else(|| "unknown".into());
    let slot = std::fs::read_to_string("/proc/cmdline")
        .ok()
        .and_then(|c| {
            c.split_whitespace()
                .find_map(|w| w.strip_prefix("fluxnode.slot=").map(str::to_string))
        })
        .unwrap_or_else(|| "-".into());
    ImageInfo { version, slot }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter_and_resets() {
        let mut b = Backoff::new();
        let first = b.fail();
        assert!((4_000..=6_000).contains(&first.as_millis()), "{first:?}");
        let mut last = first;
        for _ in 0..10 {
            last = b.fail();
        }
        assert!((240_000..=360_000).contains(&last.as_millis()), "{last:?}");
        b.reset();
        assert!(b.fail() <= Duration::from_secs(6));
    }
}
