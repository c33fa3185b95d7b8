//! Storage behind one trait, two real backends:
//!
//! - [`redb::RedbStore`] (default): one crash-safe file, one registry.
//! - [`postgres::PgStore`]: PostgreSQL, for several registry instances
//!   behind a load balancer.
//!
//! Everything that must happen once happens in the store, never in a
//! process's memory: a session moves from state to state by
//! compare-and-swap on its version, a registration's pending credential is
//! taken once, an EK binds one node, a heartbeat's sequence only grows.
//! Two instances sharing a database therefore agree on all of it.

pub mod postgres;
pub mod redb;

use std::future::Future;

use fluxnode_protocol::messages::VerdictRecord;
use fluxnode_protocol::session::BenchProfile;
use fluxnode_protocol::types::{PcrValues, Sha256Digest, SignedQuote};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// A storage failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The backend failed (I/O, connection, SQL).
    #[error("storage ({backend}): {message}")]
    Backend {
        /// `redb` or `postgres`.
        backend: &'static str,
        /// What failed.
        message: String,
    },
    /// A stored record does not parse (written by another version?).
    #[error("stored record {key} does not parse: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// Why.
        message: String,
    },
}

/// Short for the results here.
pub type Result<T> = std::result::Result<T, StoreError>;

/// A registration waiting for its credential to be activated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The node id the EK gives.
    pub node_id: String,
    /// SHA-256 of the secret put in the credential (the secret itself is
    /// not kept).
    pub secret_sha256: Sha256Digest,
    /// Not activatable after (Unix ms).
    pub expires_at_ms: u64,
    /// The node record to insert once activated.
    pub node: NodeRecord,
}

/// A registered node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node id.
    pub node_id: String,
    /// SHA-256 of the EK's public area (unique: one EK, one node).
    pub ek_sha256: Sha256Digest,
    /// The EK's TPM2B_PUBLIC, hex.
    pub ek_public: String,
    /// The EK certificate, hex DER.
    pub ek_certificate: String,
    /// Who issued the EK certificate.
    pub ek_issuer: String,
    /// The AK's TPMT_PUBLIC, hex.
    pub ak_public: String,
    /// The AK's name, hex.
    pub ak_name: String,
    /// The node key, hex.
    pub node_key: String,
    /// Registered (Unix ms).
    pub registered_at_ms: u64,
}

/// Where a node stands: what changes after registration.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NodeStanding {
    /// Current tier.
    pub tier: Option<String>,
    /// The current certificate, JSON ([`fluxnode_protocol::cert::TierCertificate`]).
    pub certificate: Option<fluxnode_protocol::cert::TierCertificate>,
    /// Image of the last accepted session.
    pub image: Option<fluxnode_protocol::session::ImageInfo>,
    /// PCR 11 of the last accepted session, hex.
    pub pcr11: Option<String>,
    /// Last heartbeat (Unix ms).
    pub last_seen_ms: Option<u64>,
    /// Last heartbeat's sequence number.
    pub last_seq: u64,
    /// Last heartbeat's boot id.
    pub boot_id: String,
    /// Uptime credited from heartbeats, ms.
    pub uptime_ms: u64,
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Issued; evidence not yet received.
    Offered,
    /// Evidence accepted so far; the spot-check is out.
    Challenged,
    /// Finished, with a verdict (accepted or not). Never used again.
    Closed,
}

/// The registry's own bandwidth measurement of a session.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Bandwidth {
    /// When the download began (Unix ms).
    pub download_started_ms: Option<u64>,
    /// Download, Mb/s (until the node's upload request arrived).
    pub down_mbps: Option<f64>,
    /// Upload, Mb/s (request body received).
    pub up_mbps: Option<f64>,
}

impl Bandwidth {
    /// The figure that counts: the slower direction, if both were measured.
    pub fn mbps(&self) -> Option<f64> {
        Some(self.down_mbps?.min(self.up_mbps?))
    }
}

/// Evidence kept with its session (and, after the verdict, with the node).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredEvidence {
    /// Start quote.
    pub start_quote: SignedQuote,
    /// End quote.
    pub end_quote: SignedQuote,
    /// Claimed PCR values.
    pub pcrs: PcrValues,
    /// The report as sent.
    pub report: String,
    /// The event log, hex.
    pub event_log: String,
    /// Received (Unix ms).
    pub received_at_ms: u64,
    /// The spot-check challenge nonce, hex.
    pub challenge_nonce: String,
}

/// A session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// Session id.
    pub session_id: String,
    /// The node it was issued to.
    pub node_id: String,
    /// Nonce, hex.
    pub nonce: String,
    /// Required PCRs.
    pub pcrs: Vec<u8>,
    /// The profile.
    pub profile: BenchProfile,
    /// The image the node said it runs when it asked.
    pub image: fluxnode_protocol::session::ImageInfo,
    /// Issued (Unix ms).
    pub issued_at_ms: u64,
    /// Evidence due before (Unix ms).
    pub expires_at_ms: u64,
    /// State.
    pub state: SessionState,
    /// Bumped on every change; a change applies only to the version read.
    pub version: u64,
    /// The registry's bandwidth measurement.
    pub bandwidth: Bandwidth,
    /// The evidence, once received.
    pub evidence: Option<StoredEvidence>,
}

/// An allowed image: the PCR values one released build produces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllowedImage {
    /// Version from the manifest.
    pub version: String,
    /// Boot slot (`a`/`b`).
    pub slot: String,
    /// The values every quote of this image shows, by PCR index. A quote
    /// matches the image when every one of them is equal.
    pub pcrs: std::collections::BTreeMap<u8, Sha256Digest>,
}

/// The verifier's policy, kept in the store so every instance applies the same.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// SHA-256 PCRs every quote must cover.
    pub required_pcrs: Vec<u8>,
    /// Allowed images.
    pub images: Vec<AllowedImage>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            required_pcrs: vec![9, 11, 12],
            images: Vec::new(),
        }
    }
}

/// What a heartbeat did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// Recorded; uptime now this many ms.
    Recorded {
        /// Uptime credited, ms.
        uptime_ms: u64,
    },
    /// The sequence number did not grow: a replay.
    Stale {
        /// The last sequence number recorded.
        last_seq: u64,
    },
    /// No such node.
    UnknownNode,
}

/// How much uptime a heartbeat credits: the time since the last one,
/// when that one came within `grace_ms` (a node that was silent longer
/// was offline in between and gets nothing for the gap).
pub fn credit(last_seen_ms: Option<u64>, now_ms: u64, grace_ms: u64) -> u64 {
    match last_seen_ms {
        Some(last) if now_ms >= last && now_ms - last <= grace_ms => now_ms - last,
        _ => 0,
    }
}

/// The storage every registry instance shares.
pub trait Store: Send + Sync + 'static {
    /// Keeps a pending registration (replacing one for the same node).
    fn put_pending(&self, p: &Pending) -> impl Future<Output = Result<()>> + Send;
    /// Takes (removes and returns) the pending registration of a node: a
    /// credential is tried once.
    fn take_pending(&self, node_id: &str) -> impl Future<Output = Result<Option<Pending>>> + Send;
    /// Inserts a node. `Ok(false)` when its id or EK is already registered.
    fn insert_node(&self, n: &NodeRecord) -> impl Future<Output = Result<bool>> + Send;
    /// A node.
    fn node(&self, node_id: &str) -> impl Future<Output = Result<Option<NodeRecord>>> + Send;
    /// Every node, by id.
    fn nodes(&self) -> impl Future<Output = Result<Vec<NodeRecord>>> + Send;
    /// A node's standing (default when none yet).
    fn standing(&self, node_id: &str) -> impl Future<Output = Result<NodeStanding>> + Send;
    /// Records a verdict; when `standing` is given, the node's tier,
    /// certificate, image and PCR 11 change to its.
    fn record_verdict(
        &self,
        node_id: &str,
        verdict: &VerdictRecord,
        accepted: Option<(
            Option<String>,
            Option<fluxnode_protocol::cert::TierCertificate>,
        )>,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The newest `limit` verdicts of a node, newest first.
    fn verdicts(
        &self,
        node_id: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<VerdictRecord>>> + Send;
    /// Records a heartbeat atomically: the sequence must grow; uptime is
    /// credited per [`credit`].
    fn heartbeat(
        &self,
        node_id: &str,
        seq: u64,
        boot_id: &str,
        now_ms: u64,
        grace_ms: u64,
    ) -> impl Future<Output = Result<HeartbeatOutcome>> + Send;
    /// Inserts a new session.
    fn put_session(&self, s: &SessionRecord) -> impl Future<Output = Result<()>> + Send;
    /// A session.
    fn session(&self, id: &str) -> impl Future<Output = Result<Option<SessionRecord>>> + Send;
    /// Replaces a session if its stored version is still `expected_version`
    /// (the new record carries `expected_version + 1`). `Ok(false)`: someone
    /// else changed it first; the caller lost.
    fn swap_session(
        &self,
        s: &SessionRecord,
        expected_version: u64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Sessions of a node still open (offered or challenged, not expired at `now_ms`).
    fn open_sessions(
        &self,
        node_id: &str,
        now_ms: u64,
    ) -> impl Future<Output = Result<usize>> + Send;
    /// The policy.
    fn policy(&self) -> impl Future<Output = Result<Policy>> + Send;
    /// Replaces the policy.
    fn set_policy(&self, p: &Policy) -> impl Future<Output = Result<()>> + Send;
}

pub(crate) fn to_json<T: Serialize>(v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|e| StoreError::Corrupt {
        key: "(encoding)".into(),
        message: e.to_string(),
    })
}

pub(crate) fn from_json<T: serde::de::DeserializeOwned>(key: &str, b: &[u8]) -> Result<T> {
    serde_json::from_slice(b).map_err(|e| StoreError::Corrupt {
        key: key.to_string(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uptime_credit() {
        assert_eq!(credit(None, 1_000, 180_000), 0);
        assert_eq!(credit(Some(1_000), 61_000, 180_000), 60_000);
        assert_eq!(credit(Some(1_000), 500_000, 180_000), 0);
        assert_eq!(credit(Some(5_000), 1_000, 180_000), 0);
    }
}
