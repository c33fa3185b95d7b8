//! What the agent keeps on /var (`/var/lib/fluxnode` by default), each
//! file written atomically and durably so a power cut leaves the old
//! version or the new one, never a torn one:
//!
//! ```text
//! node.key               ed25519 node key, hex (0600)
//! ak.json                the AK wrapped by this TPM's EK (0600)
//! agent.json             the agent's state (below)
//! tier-certificate.json  the current tier certificate
//! ```

use std::path::{Path, PathBuf};

use fluxnode_protocol::cert::TierCertificate;
use fluxnode_protocol::messages::SessionVerdict;
use serde::{Deserialize, Serialize};

/// The agent's state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentState {
    /// Registered as this node.
    pub node_id: Option<String>,
    /// When (Unix ms).
    pub registered_at_ms: Option<u64>,
    /// The registry URL it registered with.
    pub registry: String,
    /// Boot id of the last accepted session (a new boot attests again).
    pub attested_boot_id: Option<String>,
    /// The last verdict.
    pub last_verdict: Option<SessionVerdict>,
    /// When it came (Unix ms).
    pub last_verdict_ms: Option<u64>,
    /// The last failure to reach or use the registry.
    pub last_error: Option<String>,
    /// Whether the last call reached the registry.
    pub registry_reachable: Option<bool>,
    /// The next attested session is due at (Unix ms).
    pub next_session_ms: Option<u64>,
    /// Heartbeat sequence number last sent.
    pub heartbeat_seq: u64,
    /// Last heartbeat answered (Unix ms).
    pub last_heartbeat_ms: Option<u64>,
    /// Uptime as the registry recorded it at the last heartbeat, s.
    pub registry_uptime_s: Option<u64>,
}

/// The agent's directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    /// Its path.
    pub root: PathBuf,
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    fluxnode_lowlevel::secret::write_secret(path, bytes).map_err(|e| e.source)
}

impl StateDir {
    /// The directory (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        StateDir { root: root.into() }
    }

    /// A file in it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// The agent state; default when none was written yet. A state file
    /// that does not parse is kept aside (`agent.json.bad`) and replaced:
    /// the agent registers or attests again rather than stopping.
    pub fn load(&self) -> AgentState {
        let p = self.path("agent.json");
        match std::fs::read(&p) {
            Ok(b) => match serde_json::from_slice(&b) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("{}: {e}; starting from a fresh state", p.display());
                    let _ = std::fs::rename(&p, self.path("agent.json.bad"));
                    AgentState::default()
                }
            },
            Err(_) => AgentState::default(),
        }
    }

    /// Saves the agent state.
    pub fn save(&self, s: &AgentState) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        let b = serde_json::to_vec_pretty(s).map_err(std::io::Error::other)?;
        write_atomic(&self.path("agent.json"), &b)
    }

    /// Saves the tier certificate.
    pub fn save_certificate(&self, c: &TierCertificate) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.root)?;
        let b = serde_json::to_vec_pretty(c).map_err(std::io::Error::other)?;
        write_atomic(&self.path("tier-certificate.json"), &b)
    }

    /// The tier certificate, if any.
    pub fn certificate(&self) -> Option<TierCertificate> {
        let b = std::fs::read(self.path("tier-certificate.json")).ok()?;
        serde_json::from_slice(&b).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_round_trips_and_survives_garbage() -> std::io::Result<()> {
        let d = tempfile::tempdir()?;
        let sd = StateDir::new(d.path().join("st"));
        assert_eq!(sd.load(), AgentState::default());
        let s = AgentState {
            node_id: Some("ab".repeat(16)),
            heartbeat_seq: 7,
            ..AgentState::default()
        };
        sd.save(&s)?;
        assert_eq!(sd.load(), s);
        std::fs::write(sd.path("agent.json"), b"{not json")?;
        assert_eq!(sd.load(), AgentState::default());
        assert!(sd.path("agent.json.bad").exists());
        Ok(())
    }
}
