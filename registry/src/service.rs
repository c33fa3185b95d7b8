//! What the registry does with each request, independent of HTTP: the
//! registration with credential activation, the session state machine
//! (offered → challenged → closed, each step a compare-and-swap in the
//! store), the verdict in the order docs/PROTOCOL.md gives, heartbeats.
//!
//! Every refusal is an [`ApiError`] with an HTTP status, a stable code and
//! a message that says what to do. A session whose evidence fails a check
//! is not an error: it ends with a verdict that names the check.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use fluxnode_hal::tier::{self, Classification};
use fluxnode_protocol::auth::{self, AuthError};
use fluxnode_protocol::cert::{self, CertBody, TierCertificate};
use fluxnode_protocol::ekcert::{self, TrustStore};
use fluxnode_protocol::messages::{
    ActivateRequest, ActivateResponse, Evidence, EvidenceOutcome, Heartbeat, HeartbeatAck,
    NodeView, OpeningsRequest, RegisterRequest, RegisterResponse, SessionOffer, SessionRequest,
    SessionVerdict, SpotCheck, VerdictRecord, MAX_EK_CERT_BYTES, MAX_EVENT_LOG_BYTES,
    MAX_PUBLIC_BYTES,
};
use fluxnode_protocol::session::{
    self, BenchProfile, Challenge, ImageInfo, ReportError, SessionReport, SessionTerms,
};
use fluxnode_protocol::tpm::makecredential;
use fluxnode_protocol::tpm::signature::AttestationKey;
use fluxnode_protocol::types::{PcrPolicy, Rejection, Sha256Digest};
use fluxnode_protocol::verdict::{self, ClockTolerance, Expected, LABEL_END, LABEL_START};
use sha2::{Digest as _, Sha256};

use crate::store::{
    HeartbeatOutcome, NodeRecord, Pending, Policy, SessionRecord, SessionState, Store,
    StoredEvidence,
};

/// A refusal, as HTTP will carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Stable code.
    pub code: String,
    /// What went wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// A refusal.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }

    fn bad(code: &str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// As a wire rejection.
    pub fn rejection(&self) -> Rejection {
        Rejection {
            code: self.code.clone(),
            message: self.message.clone(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({}): {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<crate::store::StoreError> for ApiError {
    fn from(e: crate::store::StoreError) -> Self {
        tracing::error!("{e}");
        ApiError::new(503, "storage_unavailable", format!("{e}; try again later"))
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        ApiError::new(401, e.code(), e.to_string())
    }
}

/// Short for the results here.
pub type ApiResult<T> = Result<T, ApiError>;

/// What the HTTP layer saw of a bandwidth upload.
#[derive(Debug, Clone, Copy)]
pub struct Upload {
    /// Bytes received.
    pub body_len: u64,
    /// When the request arrived (Unix ms): ends the download.
    pub arrived_ms: u64,
    /// Milliseconds spent receiving the body.
    pub body_ms: f64,
}

/// How the registry behaves.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The benchmark profile sessions prescribe.
    pub profile: BenchProfile,
    /// Time a node has from the offer to its evidence, ms.
    pub session_ttl_ms: u64,
    /// Time a node has from the spot-check to its openings, ms.
    pub openings_ttl_ms: u64,
    /// Time a node has to activate its credential, ms.
    pub activation_ttl_ms: u64,
    /// Validity of a tier certificate, ms.
    pub certificate_validity_ms: u64,
    /// Heartbeat interval asked of nodes, s.
    pub heartbeat_interval_s: u64,
    /// Heartbeats missed before a node counts as offline.
    pub missed_heartbeats: u64,
    /// Sessions one node may have open at once.
    pub max_open_sessions: usize,
    /// Allowance of the TPM clock checks.
    pub tolerance: ClockTolerance,
    /// The tier table.
    pub tiers: tier::Policy,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            profile: BenchProfile::flux(),
            session_ttl_ms: 10 * 60_000,
            openings_ttl_ms: 60_000,
            activation_ttl_ms: 5 * 60_000,
            certificate_validity_ms: 8 * 3_600_000,
            heartbeat_interval_s: 60,
            missed_heartbeats: 3,
            max_open_sessions: 2,
            tolerance: ClockTolerance::default(),
            tiers: tier::Policy::flux(),
        }
    }
}

/// The registry: storage, keys, trust and settings.
#[derive(Debug)]
pub struct Registry<S> {
    /// Storage.
    pub store: S,
    /// Signs tier certificates.
    pub key: SigningKey,
    /// CAs whose EK certificates are accepted.
    pub trust: TrustStore,
    /// Settings.
    pub settings: Settings,
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn random<const N: usize>() -> ApiResult<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).map_err(|e| {
        ApiError::new(
            503,
            "no_randomness",
            format!("the kernel's random source failed: {e}"),
        )
    })?;
    Ok(b)
}

/// The TPM2B_PUBLIC form of a public area sent as TPMT_PUBLIC or
/// TPM2B_PUBLIC (the forms `makecredential::ek_public_from_bytes` accepts,
/// told apart the same way).
fn canonical_tpm2b(public: &[u8]) -> Vec<u8> {
    let is_tpm2b = public.len() >= 2
        && usize::from(u16::from_be_bytes([public[0], public[1]])) == public.len() - 2;
    if is_tpm2b {
        public.to_vec()
    } else {
        let mut v = u16::try_from(public.len())
            .unwrap_or(u16::MAX)
            .to_be_bytes()
            .to_vec();
        v.extend_from_slice(public);
        v
    }
}

/// Names people read back (image version, slot, boot id) are short and printable.
fn check_label(what: &str, s: &str, max: usize) -> ApiResult<()> {
    if s.len() > max || s.chars().any(|c| c.is_control()) {
        return Err(ApiError::bad(
            "body_malformed",
            format!("{what} must be at most {max} bytes of printable text"),
        ));
    }
    Ok(())
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl<S: Store> Registry<S> {
    async fn authenticated(
        &self,
        node_id: &str,
        method: &str,
        path: &str,
        body: &[u8],
        signature: &str,
    ) -> ApiResult<NodeRecord> {
        if !auth::is_node_id(node_id) {
            return Err(ApiError::bad(
                "node_id_malformed",
                "a node id is 32 lowercase hex digits",
            ));
        }
        let node = self.store.node(node_id).await?.ok_or_else(|| {
            ApiError::new(
                404,
                "node_unknown",
                format!("node {node_id} is not registered; register first"),
            )
        })?;
        let key_bytes = hex::decode(&node.node_key).unwrap_or_default();
        let key = auth::node_key(&key_bytes)?;
        auth::verify_request(&key, method, path, body, signature)?;
        Ok(node)
    }

    /// `POST /v1/register`.
    pub async fn register(&self, body: &[u8], signature: &str) -> ApiResult<RegisterResponse> {
        let req: RegisterRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad("body_malformed", format!("registration: {e}")))?;
        if req.ek_certificate.len() > MAX_EK_CERT_BYTES
            || req.ek_public.len() > MAX_PUBLIC_BYTES
            || req.ak_public.len() > MAX_PUBLIC_BYTES
        {
            return Err(ApiError::new(
                413,
                "field_too_large",
                "EK certificate or public area over its bound",
            ));
        }
        let key = auth::node_key(&req.node_key)?;
        auth::verify_request(&key, "POST", "/v1/register", body, signature)?;
        check_label("image.version", &req.image.version, 64)?;
        check_label("image.slot", &req.image.slot, 8)?;

        let ak = AttestationKey::from_tpmt(&req.ak_public).map_err(|e| {
            ApiError::new(422, "ak_refused", format!("attestation key refused: {e}"))
        })?;
        let now = now_ms();
        let ek_cert = ekcert::verify_ek_certificate(
            &req.ek_certificate,
            &req.ek_public,
            &self.trust,
            i64::try_from(now / 1000).unwrap_or(i64::MAX),
        )
        .map_err(|e| ApiError::new(422, e.code(), e.to_string()))?;

        // One EK, one node, whichever encoding it came in: the id is taken
        // over the TPM2B_PUBLIC form (a TPMT_PUBLIC gets its size prefix).
        let ek_tpm2b = canonical_tpm2b(&req.ek_public);
        let node_id = auth::node_id_of(&ek_tpm2b);
        let ek_sha256 = Sha256Digest(Sha256::digest(&ek_tpm2b).into());
        if self.store.node(&node_id).await?.is_some() {
            return Err(ApiError::new(
                409,
                "ek_already_registered",
                format!("this EK is already bound to node {node_id}; one TPM is one node"),
            ));
        }
        let secret: [u8; 32] = random()?;
        let seed: [u8; 32] = random()?;
        let ak_name = ak.public().name.clone();
        let credential = makecredential::make_credential(
            &req.ek_public,
            &ak_name,
            &secret,
            &seed,
            &mut rsa::rand_core::OsRng,
        )
        .map_err(|e| {
            ApiError::new(
                422,
                e.code(),
                format!("cannot make a credential for this EK: {e}"),
            )
        })?;
        let expires_at_ms = now + self.settings.activation_ttl_ms;
        self.store
            .put_pending(&Pending {
                node_id: node_id.clone(),
                secret_sha256: Sha256Digest(Sha256::digest(secret).into()),
                expires_at_ms,
                node: NodeRecord {
                    node_id: node_id.clone(),
                    ek_sha256,
                    ek_public: hex::encode(&req.ek_public),
                    ek_certificate: hex::encode(&req.ek_certificate),
                    ek_issuer: ek_cert.issuer,
                    ak_public: hex::encode(&req.ak_public),
                    ak_name: hex::encode(&ak_name),
                    node_key: hex::encode(&req.node_key),
                    registered_at_ms: 0,
                },
            })
            .await?;
        tracing::info!(node = %node_id, "registration: credential issued");
        Ok(RegisterResponse {
            node_id,
            id_object: credential.id_object,
            encrypted_secret: credential.encrypted_secret,
            expires_at_ms,
        })
    }

    /// `POST /v1/activate`.
    pub async fn activate(&self, body: &[u8], signature: &str) -> ApiResult<ActivateResponse> {
        let req: ActivateRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad("body_malformed", format!("activation: {e}")))?;
        if !auth::is_node_id(&req.node_id) {
            return Err(ApiError::bad(
                "node_id_malformed",
                "a node id is 32 lowercase hex digits",
            ));
        }
        let pending = self
            .store
            .take_pending(&req.node_id)
            .await?
            .ok_or_else(|| {
                ApiError::new(
                    404,
                    "no_pending_registration",
                    "no registration waits for activation; register again",
                )
            })?;
        let key = auth::node_key(&hex::decode(&pending.node.node_key).unwrap_or_default())?;
        if let Err(e) = auth::verify_request(&key, "POST", "/v1/activate", body, signature) {
            // Not the registering node: leave its registration in place.
            self.store.put_pending(&pending).await?;
            return Err(e.into());
        }
        let now = now_ms();
        if now > pending.expires_at_ms {
            return Err(ApiError::new(
                410,
                "registration_expired",
                "the credential expired; register again",
            ));
        }
        if !ct_eq(&Sha256::digest(&req.secret), &pending.secret_sha256.0) {
            tracing::warn!(node = %req.node_id, "activation failed: wrong secret");
            return Err(ApiError::new(
                403,
                "activation_failed",
                "the secret does not match the credential: the AK is not in the TPM that holds this EK",
            ));
        }
        let mut node = pending.node;
        node.registered_at_ms = now;
        if !self.store.insert_node(&node).await? {
            return Err(ApiError::new(
                409,
                "ek_already_registered",
                format!(
                    "this EK is already bound to node {}; one TPM is one node",
                    node.node_id
                ),
            ));
        }
        tracing::info!(node = %node.node_id, "registered");
        Ok(ActivateResponse {
            node_id: node.node_id,
            registered_at_ms: now,
        })
    }

    /// `POST /v1/sessions`.
    pub async fn open_session(
        &self,
        node_id: &str,
        body: &[u8],
        signature: &str,
    ) -> ApiResult<SessionOffer> {
        let node = self
            .authenticated(node_id, "POST", "/v1/sessions", body, signature)
            .await?;
        let req: SessionRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad("body_malformed", format!("session request: {e}")))?;
        check_label("image.version", &req.image.version, 64)?;
        check_label("image.slot", &req.image.slot, 8)?;
        check_label("boot_id", &req.boot_id, 64)?;
        if req.node_id != node.node_id {
            return Err(ApiError::bad(
                "node_id_mismatch",
                "the body names another node than the header",
            ));
        }
        let now = now_ms();
        if self.store.open_sessions(node_id, now).await? >= self.settings.max_open_sessions {
            return Err(ApiError::new(
                429,
                "too_many_sessions",
                format!(
                    "at most {} open sessions per node; finish or let one expire",
                    self.settings.max_open_sessions
                ),
            ));
        }
        let nonce: [u8; 32] = random()?;
        let id: [u8; 16] = random()?;
        let policy = self.store.policy().await?;
        let rec = SessionRecord {
            session_id: hex::encode(id),
            node_id: node.node_id,
            nonce: hex::encode(nonce),
            pcrs: policy.required_pcrs,
            profile: self.settings.profile.clone(),
            image: req.image,
            issued_at_ms: now,
            expires_at_ms: now + self.settings.session_ttl_ms,
            state: SessionState::Offered,
            version: 0,
            bandwidth: Default::default(),
            evidence: None,
        };
        self.store.put_session(&rec).await?;
        Ok(SessionOffer {
            session_id: rec.session_id,
            nonce: nonce.to_vec(),
            pcrs: rec.pcrs,
            profile: rec.profile,
            issued_at_ms: rec.issued_at_ms,
            expires_at_ms: rec.expires_at_ms,
        })
    }

    /// A session of this node, in `state`, not expired.
    async fn live_session(
        &self,
        node_id: &str,
        session_id: &str,
        state: SessionState,
    ) -> ApiResult<SessionRecord> {
        let s = match self.store.session(session_id).await? {
            Some(s) if s.node_id == node_id => s,
            _ => {
                return Err(ApiError::new(
                    404,
                    "session_unknown",
                    format!("no session {session_id} for this node"),
                ))
            }
        };
        if s.state != state {
            return Err(ApiError::new(
                409,
                "session_used",
                format!("session {session_id} is {:?}, not {state:?}: a session is used once; ask for a new one", s.state),
            ));
        }
        if now_ms() > s.expires_at_ms {
            return Err(ApiError::new(
                410,
                "session_expired",
                format!("session {session_id} expired; ask for a new one"),
            ));
        }
        Ok(s)
    }

    /// Stores a session change; losing the race means someone else used it.
    async fn swap(&self, s: &SessionRecord, version: u64) -> ApiResult<()> {
        if self.store.swap_session(s, version).await? {
            Ok(())
        } else {
            Err(ApiError::new(
                409,
                "session_used",
                format!("session {} was used concurrently", s.session_id),
            ))
        }
    }

    /// `GET /v1/sessions/{id}/download`: the bytes to download; the clock starts now.
    pub async fn bandwidth_download(
        &self,
        node_id: &str,
        session_id: &str,
        path: &str,
        signature: &str,
    ) -> ApiResult<(u64, [u8; 32])> {
        self.authenticated(node_id, "GET", path, b"", signature)
            .await?;
        let mut s = self
            .live_session(node_id, session_id, SessionState::Offered)
            .await?;
        if s.bandwidth.download_started_ms.is_some() {
            return Err(ApiError::new(
                409,
                "bandwidth_measured",
                "bandwidth is measured once per session",
            ));
        }
        let v = s.version;
        s.bandwidth.download_started_ms = Some(now_ms());
        self.swap(&s, v).await?;
        let key: [u8; 32] =
            Sha256::digest([b"fluxnode/bandwidth/v1\0".as_slice(), s.nonce.as_bytes()].concat())
                .into();
        Ok((s.profile.bandwidth_bytes, key))
    }

    /// `POST /v1/sessions/{id}/upload`, after the body was read: `arrived_ms`
    /// when the request came (ends the download), `body_ms` reading the body.
    pub async fn bandwidth_upload(
        &self,
        node_id: &str,
        session_id: &str,
        path: &str,
        signature: &str,
        upload: Upload,
    ) -> ApiResult<(f64, f64)> {
        let Upload {
            body_len,
            arrived_ms,
            body_ms,
        } = upload;
        // The body is random bytes: signing it would measure the node's CPU.
        // The signature covers the length instead, as the path's query.
        self.authenticated(node_id, "POST", path, b"", signature)
            .await?;
        let mut s = self
            .live_session(node_id, session_id, SessionState::Offered)
            .await?;
        let started = s
            .bandwidth
            .download_started_ms
            .ok_or_else(|| ApiError::new(409, "bandwidth_order", "download first, then upload"))?;
        if s.bandwidth.up_mbps.is_some() {
            return Err(ApiError::new(
                409,
                "bandwidth_measured",
                "bandwidth is measured once per session",
            ));
        }
        let bytes = s.profile.bandwidth_bytes;
        if body_len != bytes {
            return Err(ApiError::bad(
                "bandwidth_size",
                format!("upload {bytes} bytes, not {body_len}"),
            ));
        }
        let mbps = |ms: f64| bytes as f64 * 8.0 / 1e6 / (ms.max(0.1) / 1000.0);
        let down = mbps(arrived_ms.saturating_sub(started) as f64);
        let up = mbps(body_ms);
        let v = s.version;
        s.bandwidth.down_mbps = Some(down);
        s.bandwidth.up_mbps = Some(up);
        self.swap(&s, v).await?;
        Ok((down, up))
    }

    /// `POST /v1/sessions/{id}/evidence`.
    pub async fn evidence(
        &self,
        node_id: &str,
        session_id: &str,
        body: &[u8],
        signature: &str,
    ) -> ApiResult<EvidenceOutcome> {
        let path = format!("/v1/sessions/{session_id}/evidence");
        let node = self
            .authenticated(node_id, "POST", &path, body, signature)
            .await?;
        let ev: Evidence = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad("body_malformed", format!("evidence: {e}")))?;
        if ev.session_id != session_id {
            return Err(ApiError::bad(
                "session_mismatch",
                "the body names another session than the path",
            ));
        }
        if ev.event_log.len() > MAX_EVENT_LOG_BYTES {
            return Err(ApiError::new(
                413,
                "field_too_large",
                "event log over 1 MiB",
            ));
        }
        let mut s = self
            .live_session(node_id, session_id, SessionState::Offered)
            .await?;
        let version = s.version;
        let received = now_ms();
        let policy = self.store.policy().await?;
        let checked = self.check_evidence(&node, &s, &ev, &policy, received);
        s.evidence = Some(StoredEvidence {
            start_quote: ev.start_quote,
            end_quote: ev.end_quote,
            pcrs: ev.pcrs,
            report: ev.report,
            event_log: hex::encode(&ev.event_log),
            received_at_ms: received,
            challenge_nonce: String::new(),
        });
        match checked {
            Err(rejection) => {
                s.state = SessionState::Closed;
                self.swap(&s, version).await?;
                let v = self.reject(&s, rejection).await?;
                Ok(EvidenceOutcome::Verdict(Box::new(v)))
            }
            Ok(report) => {
                let cn: [u8; 32] = random()?;
                let challenge = Challenge::draw(&cn, &report);
                if let Some(e) = s.evidence.as_mut() {
                    e.challenge_nonce = hex::encode(cn);
                }
                s.state = SessionState::Challenged;
                s.expires_at_ms = received + self.settings.openings_ttl_ms;
                self.swap(&s, version).await?;
                Ok(EvidenceOutcome::SpotCheck(SpotCheck {
                    session_id: s.session_id,
                    challenge,
                }))
            }
        }
    }

    /// The checks of the evidence, in order (docs/PROTOCOL.md).
    fn check_evidence(
        &self,
        node: &NodeRecord,
        s: &SessionRecord,
        ev: &Evidence,
        policy: &Policy,
        received_ms: u64,
    ) -> Result<SessionReport, Rejection> {
        let nonce = hex::decode(&s.nonce).unwrap_or_default();
        let digest = session::report_digest(ev.report.as_bytes());
        let pcr_policy = PcrPolicy {
            required: s.pcrs.clone(),
            allowed: BTreeMap::new(),
        };
        // The claimed duration comes from the report; an unparsable report
        // claims nothing, and is refused after the quotes' own checks.
        let parsed = SessionReport::parse(ev.report.as_bytes());
        let claimed = parsed.as_ref().map_or(0, |r| r.bench_ms);
        let ak = hex::decode(&node.ak_public).unwrap_or_default();
        let expected = Expected {
            start_extra_data: verdict::extra_data(LABEL_START, &nonce, &[0; 32]),
            end_extra_data: verdict::extra_data(LABEL_END, &nonce, &digest),
            policy: &pcr_policy,
            claimed_pcrs: &ev.pcrs,
            claimed_duration_ms: claimed,
            observed_wall_ms: received_ms.saturating_sub(s.issued_at_ms),
            tolerance: self.settings.tolerance,
        };
        // Quote checks up to the PCR digest, then the image policy, then clocks.
        let ak_key = AttestationKey::from_tpmt(&ak)
            .map_err(|e| verdict::Verdict::AkRefused(e).to_rejection())?;
        let start = verdict::check_quote(
            verdict::Which::Start,
            &ev.start_quote,
            &ak_key,
            &expected.start_extra_data,
            &expected,
        )
        .map_err(|v| v.to_rejection())?;
        let end = verdict::check_quote(
            verdict::Which::End,
            &ev.end_quote,
            &ak_key,
            &expected.end_extra_data,
            &expected,
        )
        .map_err(|v| v.to_rejection())?;
        crate::policy::check_image(policy, &ev.pcrs)?;
        let elapsed =
            verdict::check_clocks(&start.clock, &end.clock).map_err(|v| v.to_rejection())?;
        verdict::check_elapsed(elapsed, &expected).map_err(|v| v.to_rejection())?;
        let report = parsed.map_err(|e| rejection_of(&e))?;
        session::check_report(
            &report,
            &SessionTerms {
                session_id: &s.session_id,
                nonce: &nonce,
                profile: &s.profile,
            },
        )
        .map_err(|e| rejection_of(&e))?;
        if s.profile.bandwidth_bytes > 0 && s.bandwidth.mbps().is_none() {
            return Err(Rejection {
                code: "bandwidth_not_measured".into(),
                message: "the session's bandwidth measurement (download, then upload) did not happen; the registry measures it itself".into(),
            });
        }
        Ok(report)
    }

    async fn reject(&self, s: &SessionRecord, rejection: Rejection) -> ApiResult<SessionVerdict> {
        tracing::info!(node = %s.node_id, session = %s.session_id, code = %rejection.code, "session rejected: {}", rejection.message);
        let rec = VerdictRecord {
            session_id: s.session_id.clone(),
            at_ms: now_ms(),
            accepted: false,
            rejection: Some(rejection.clone()),
            tier: None,
            classification: None,
            bandwidth_mbps: s.bandwidth.mbps(),
            image: Some(s.image.clone()),
            pcr11: s
                .evidence
                .as_ref()
                .and_then(|e| e.pcrs.sha256.get(&11))
                .map(ToString::to_string),
        };
        self.store.record_verdict(&s.node_id, &rec, None).await?;
        Ok(SessionVerdict {
            session_id: s.session_id.clone(),
            accepted: false,
            rejection: Some(rejection),
            tier: None,
            classification: None,
            bandwidth_mbps: rec.bandwidth_mbps,
            certificate: None,
        })
    }

    /// `POST /v1/sessions/{id}/openings`.
    pub async fn openings(
        &self,
        node_id: &str,
        session_id: &str,
        body: &[u8],
        signature: &str,
    ) -> ApiResult<SessionVerdict> {
        let path = format!("/v1/sessions/{session_id}/openings");
        let node = self
            .authenticated(node_id, "POST", &path, body, signature)
            .await?;
        let req: OpeningsRequest = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad("body_malformed", format!("openings: {e}")))?;
        let mut s = self
            .live_session(node_id, session_id, SessionState::Challenged)
            .await?;
        let version = s.version;
        s.state = SessionState::Closed;
        self.swap(&s, version).await?;
        let Some(ev) = s.evidence.clone() else {
            return Err(ApiError::new(
                500,
                "internal",
                "challenged session without evidence",
            ));
        };
        let report = match SessionReport::parse(ev.report.as_bytes()) {
            Ok(r) => r,
            Err(e) => return self.reject(&s, rejection_of(&e)).await,
        };
        let cn = hex::decode(&ev.challenge_nonce).unwrap_or_default();
        let challenge = Challenge::draw(&cn, &report);
        if let Err(e) = session::check_openings(&report, &challenge, &req.answer) {
            return self.reject(&s, rejection_of(&e)).await;
        }
        let bandwidth = s.bandwidth.mbps();
        let facts = report.facts(bandwidth);
        let classification: Classification = tier::classify(&self.settings.tiers, &facts);
        let now = now_ms();
        let pcr11 = ev.pcrs.sha256.get(&11).map(ToString::to_string);
        let certificate: TierCertificate = cert::issue(
            CertBody {
                version: 1,
                node_id: node.node_id.clone(),
                ek_sha256: node.ek_sha256.to_string(),
                ak_name: node.ak_name.clone(),
                tier: classification.tier.clone(),
                facts,
                image: report.image.clone(),
                pcr11: pcr11.clone().unwrap_or_default(),
                session_id: s.session_id.clone(),
                issued_at_ms: now,
                expires_at_ms: now + self.settings.certificate_validity_ms,
                key_id: String::new(),
            },
            &self.key,
        )
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
        let image: ImageInfo = report.image.clone();
        let rec = VerdictRecord {
            session_id: s.session_id.clone(),
            at_ms: now,
            accepted: true,
            rejection: None,
            tier: classification.tier.clone(),
            classification: Some(classification.clone()),
            bandwidth_mbps: bandwidth,
            image: Some(image),
            pcr11,
        };
        self.store
            .record_verdict(
                &node.node_id,
                &rec,
                Some((classification.tier.clone(), Some(certificate.clone()))),
            )
            .await?;
        tracing::info!(node = %node.node_id, tier = ?classification.tier, "session accepted");
        Ok(SessionVerdict {
            session_id: s.session_id,
            accepted: true,
            rejection: None,
            tier: classification.tier.clone(),
            classification: Some(classification),
            bandwidth_mbps: bandwidth,
            certificate: Some(certificate),
        })
    }

    /// `POST /v1/heartbeat`.
    pub async fn heartbeat(
        &self,
        node_id: &str,
        body: &[u8],
        signature: &str,
    ) -> ApiResult<HeartbeatAck> {
        self.authenticated(node_id, "POST", "/v1/heartbeat", body, signature)
            .await?;
        let hb: Heartbeat = serde_json::from_slice(body)
            .map_err(|e| ApiError::bad("body_malformed", format!("heartbeat: {e}")))?;
        if hb.node_id != node_id || hb.boot_id.len() > 64 {
            return Err(ApiError::bad(
                "body_malformed",
                "heartbeat for another node, or a boot id over 64 bytes",
            ));
        }
        let grace = self.settings.heartbeat_interval_s * 1000 * self.settings.missed_heartbeats;
        match self
            .store
            .heartbeat(node_id, hb.seq, &hb.boot_id, now_ms(), grace)
            .await?
        {
            HeartbeatOutcome::Recorded { uptime_ms } => Ok(HeartbeatAck {
                interval_s: self.settings.heartbeat_interval_s,
                uptime_s: uptime_ms / 1000,
            }),
            HeartbeatOutcome::Stale { last_seq } => Err(ApiError::new(
                409,
                "heartbeat_replayed",
                format!(
                    "sequence {} is not above the last one recorded ({last_seq})",
                    hb.seq
                ),
            )),
            HeartbeatOutcome::UnknownNode => {
                Err(ApiError::new(404, "node_unknown", "register first"))
            }
        }
    }

    /// `GET /v1/nodes/{id}`.
    pub async fn node_view(&self, node_id: &str) -> ApiResult<NodeView> {
        if !auth::is_node_id(node_id) {
            return Err(ApiError::bad(
                "node_id_malformed",
                "a node id is 32 lowercase hex digits",
            ));
        }
        let node = self.store.node(node_id).await?.ok_or_else(|| {
            ApiError::new(
                404,
                "node_unknown",
                format!("node {node_id} is not registered"),
            )
        })?;
        let st = self.store.standing(node_id).await?;
        let verdicts = self.store.verdicts(node_id, 10).await?;
        Ok(NodeView {
            node_id: node.node_id,
            state: self.online_state(st.last_seen_ms).into(),
            tier: st.tier,
            image: st.image,
            pcr11: st.pcr11,
            registered_at_ms: node.registered_at_ms,
            last_seen_ms: st.last_seen_ms,
            uptime_s: st.uptime_ms / 1000,
            verdicts,
            certificate: st.certificate,
        })
    }

    /// `online` when the last heartbeat is within the missed-heartbeat window.
    pub fn online_state(&self, last_seen_ms: Option<u64>) -> &'static str {
        let window = self.settings.heartbeat_interval_s * 1000 * self.settings.missed_heartbeats;
        match last_seen_ms {
            Some(t) if now_ms().saturating_sub(t) <= window => "online",
            _ => "offline",
        }
    }

    /// Every node's view.
    pub async fn node_views(&self) -> ApiResult<Vec<NodeView>> {
        let mut out = Vec::new();
        for n in self.store.nodes().await? {
            out.push(self.node_view(&n.node_id).await?);
        }
        Ok(out)
    }
}

fn rejection_of(e: &ReportError) -> Rejection {
    Rejection {
        code: e.code().into(),
        message: e.to_string(),
    }
}
