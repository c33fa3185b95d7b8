//! The messages of the registration, session and heartbeat exchanges, as
//! JSON bodies of HTTPS requests. docs/PROTOCOL.md gives the sequence.
//!
//! Every request after registration is signed by the node key
//! ([`crate::auth`]); the signature covers the exact body bytes.

use fluxnode_hal::tier::Classification;
use serde::{Deserialize, Serialize};

use crate::cert::TierCertificate;
use crate::session::{BenchProfile, Challenge, ChallengeAnswer, ImageInfo};
use crate::types::{PcrValues, Rejection, SignedQuote};

/// Largest request body the registry reads, bytes (evidence with an event
/// log is the largest message).
pub const MAX_BODY_BYTES: usize = 2 << 20;
/// Largest event log accepted, bytes.
pub const MAX_EVENT_LOG_BYTES: usize = 1 << 20;
/// Largest EK certificate accepted, bytes.
pub const MAX_EK_CERT_BYTES: usize = 16 << 10;
/// Largest TPM public area accepted, bytes.
pub const MAX_PUBLIC_BYTES: usize = 1 << 10;

/// `POST /v1/register`: who the node is. Signed by the node key inside it
/// (proof of possession; there is no node id yet).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// EK certificate, DER.
    #[serde(with = "hex::serde")]
    pub ek_certificate: Vec<u8>,
    /// The EK's TPM2B_PUBLIC.
    #[serde(with = "hex::serde")]
    pub ek_public: Vec<u8>,
    /// The AK's TPMT_PUBLIC.
    #[serde(with = "hex::serde")]
    pub ak_public: Vec<u8>,
    /// The node key, ed25519 public key (32 bytes).
    #[serde(with = "hex::serde")]
    pub node_key: Vec<u8>,
    /// The image the node runs, as it says.
    pub image: ImageInfo,
}

/// The answer to a registration: a credential only the TPM holding the EK,
/// with the AK loaded, can open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// The node's id: hex of the first 16 bytes of SHA-256(EK TPM2B_PUBLIC).
    pub node_id: String,
    /// TPM2B_ID_OBJECT contents.
    #[serde(with = "hex::serde")]
    pub id_object: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET contents.
    #[serde(with = "hex::serde")]
    pub encrypted_secret: Vec<u8>,
    /// The activation must arrive before this (Unix ms).
    pub expires_at_ms: u64,
}

/// `POST /v1/activate`: the secret ActivateCredential recovered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActivateRequest {
    /// The node.
    pub node_id: String,
    /// The recovered secret.
    #[serde(with = "hex::serde")]
    pub secret: Vec<u8>,
}

/// The node is registered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActivateResponse {
    /// The node.
    pub node_id: String,
    /// When (Unix ms).
    pub registered_at_ms: u64,
}

/// `POST /v1/sessions`: ask for an attested benchmark session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    /// The node.
    pub node_id: String,
    /// The kernel's boot id (a new boot slot or reboot asks again).
    pub boot_id: String,
    /// The image the node runs.
    pub image: ImageInfo,
}

/// A session: what to measure and how to bind it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionOffer {
    /// Session id.
    pub session_id: String,
    /// Fresh 32 bytes; the seed is [`crate::session::seed_of`] of it.
    #[serde(with = "hex::serde")]
    pub nonce: Vec<u8>,
    /// The SHA-256 PCRs both quotes must cover.
    pub pcrs: Vec<u8>,
    /// What to run.
    pub profile: BenchProfile,
    /// Issued (Unix ms, the registry's clock).
    pub issued_at_ms: u64,
    /// The evidence must arrive before this (Unix ms).
    pub expires_at_ms: u64,
}

/// `POST /v1/sessions/{id}/evidence`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// The session.
    pub session_id: String,
    /// Quote with extraData H(start label ‖ nonce ‖ 0^32).
    pub start_quote: SignedQuote,
    /// Quote with extraData H(end label ‖ nonce ‖ H(report)).
    pub end_quote: SignedQuote,
    /// The PCR values both quotes cover.
    pub pcrs: PcrValues,
    /// [`crate::session::SessionReport`] as JSON text; hashed as sent.
    pub report: String,
    /// The TCG event log (binary_bios_measurements), for the record.
    #[serde(with = "hex::serde")]
    pub event_log: Vec<u8>,
}

/// The registry's answer to evidence: which chunks to open.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SpotCheck {
    /// The session.
    pub session_id: String,
    /// Chunk indices per workload.
    pub challenge: Challenge,
}

/// `POST /v1/sessions/{id}/openings`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpeningsRequest {
    /// The session.
    pub session_id: String,
    /// The openings.
    pub answer: ChallengeAnswer,
}

/// The end of a session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionVerdict {
    /// The session.
    pub session_id: String,
    /// Every check passed.
    pub accepted: bool,
    /// Why not.
    pub rejection: Option<Rejection>,
    /// The tier assigned (`None`: accepted, but below the lowest tier).
    pub tier: Option<String>,
    /// Each tier against the figures: what fell short.
    pub classification: Option<Classification>,
    /// The registry's own bandwidth measurement, Mb/s.
    pub bandwidth_mbps: Option<f64>,
    /// The certificate, when accepted.
    pub certificate: Option<TierCertificate>,
}

/// `POST /v1/heartbeat`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The node.
    pub node_id: String,
    /// The kernel's boot id.
    pub boot_id: String,
    /// Strictly increasing per node (a replayed heartbeat is refused).
    pub seq: u64,
}

/// The answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeartbeatAck {
    /// Send the next one within this many seconds.
    pub interval_s: u64,
    /// Uptime the registry has recorded, seconds.
    pub uptime_s: u64,
}

/// `GET /v1/nodes/{id}`: what the registry knows of a node; what
/// `fluxnode status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// The node.
    pub node_id: String,
    /// `online` or `offline`.
    pub state: String,
    /// Current tier, if any.
    pub tier: Option<String>,
    /// The image of the last accepted session.
    pub image: Option<ImageInfo>,
    /// PCR 11 of the last accepted session.
    pub pcr11: Option<String>,
    /// Registered (Unix ms).
    pub registered_at_ms: u64,
    /// Last heartbeat (Unix ms).
    pub last_seen_ms: Option<u64>,
    /// Uptime recorded from heartbeats, seconds.
    pub uptime_s: u64,
    /// The most recent verdicts, newest first.
    pub verdicts: Vec<VerdictRecord>,
    /// The current certificate.
    pub certificate: Option<TierCertificate>,
}

/// One verdict as the registry keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VerdictRecord {
    /// The session.
    pub session_id: String,
    /// When (Unix ms).
    pub at_ms: u64,
    /// Accepted or not.
    pub accepted: bool,
    /// Why not.
    pub rejection: Option<Rejection>,
    /// Tier assigned.
    pub tier: Option<String>,
    /// What fell short of each tier.
    pub classification: Option<Classification>,
    /// The registry's bandwidth measurement, Mb/s.
    pub bandwidth_mbps: Option<f64>,
    /// The image the quotes proved.
    pub image: Option<ImageInfo>,
    /// PCR 11 quoted.
    pub pcr11: Option<String>,
}

/// An error body: every 4xx and 5xx carries one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: Rejection,
}

/// The answer to evidence: a spot-check to answer, or (when a check
/// already failed) the verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "next", rename_all = "snake_case")]
pub enum EvidenceOutcome {
    /// Open these chunks.
    SpotCheck(SpotCheck),
    /// The session is over.
    Verdict(Box<SessionVerdict>),
}
