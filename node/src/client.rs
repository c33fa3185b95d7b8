//! The registry's HTTPS API as the node speaks it: the registry's CA is
//! pinned (baked into the image), every request after registration is
//! signed by the node key, and every failure says whether the registry
//! was unreachable (retry later) or refused (with its reason).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use fluxnode_protocol::auth::{self, HEADER_NODE, HEADER_SIGNATURE};
use fluxnode_protocol::messages::{
    ActivateRequest, ActivateResponse, ErrorBody, Evidence, EvidenceOutcome, Heartbeat,
    HeartbeatAck, NodeView, OpeningsRequest, RegisterRequest, RegisterResponse, SessionOffer,
    SessionRequest, SessionVerdict,
};
use fluxnode_protocol::types::Rejection;
use serde::de::DeserializeOwned;
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// Largest answer read from the registry, bytes.
const MAX_ANSWER: u64 = 4 << 20;

/// A failed call.
#[derive(Debug, Error)]
pub enum ClientError {
    /// No answer: network down, registry down, TLS failure. Retry later.
    #[error("registry unreachable at {url}: {why}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// The registry answered with a refusal.
    #[error("registry refused {url} (HTTP {status}, {}): {}", rejection.code, rejection.message)]
    Refused {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// Its reason.
        rejection: Rejection,
    },
    /// The answer made no sense.
    #[error("unexpected answer from {url}: {why}")]
    Protocol {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// The configuration (CA file) is unusable.
    #[error("{0}")]
    Config(String),
}

impl ClientError {
    /// The registry's reason code, when it refused.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Refused { rejection, .. } => Some(&rejection.code),
            _ => None,
        }
    }
}

/// Short for the results here.
pub type Result<T> = std::result::Result<T, ClientError>;

/// A raw answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: Vec<u8>,
}

/// The registry, as this node reaches it.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    agent: ureq::Agent,
    base: String,
    key: SigningKey,
    node_id: String,
}

fn tls_pinning(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        let c = c.map_err(|e| ClientError::Config(format!("registry CA: {e}")))?;
        roots
            .add(c)
            .map_err(|e| ClientError::Config(format!("registry CA: {e}")))?;
    }
    if roots.is_empty() {
        return Err(ClientError::Config(
            "the registry CA file holds no certificate".into(),
        ));
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ClientError::Config(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

impl RegistryClient {
    /// A client for the registry at `base` (`https://host:port`), trusting
    /// only the CA in `ca_pem`, signing with `key`.
    pub fn new(base: &str, ca_pem: &[u8], key: SigningKey) -> Result<Self> {
        // No connection reuse: a node's requests are seconds to hours
        // apart (the benchmarks run between two of them), and the registry
        // closes idle connections; a request sent on one just as it closes
        // would fail before any answer. A TLS handshake per request is
        // nothing at a node's rate.
        let agent = ureq::AgentBuilder::new()
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .tls_config(tls_pinning(ca_pem)?)
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(60))
            .timeout_write(Duration::from_secs(60))
            .build();
        Ok(RegistryClient {
            agent,
            base: base.trim_end_matches('/').to_string(),
            key,
            node_id: String::new(),
        })
    }

    /// The same client, speaking as `node_id`.
    pub fn as_node(mut self, node_id: &str) -> Self {
        self.node_id = node_id.to_string();
        self
    }

    /// The node id it speaks as.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `body` to `path`, signed, and returns the raw answer (any
    /// status). For tests that send what a real node never would.
    pub fn send(&self, method: &str, path: &str, body: &[u8]) -> Result<Answer> {
        let url = format!("{}{path}", self.base);
        let sig = auth::sign_request(&self.key, method, path, body);
        let req = self
            .agent
            .request(method, &url)
            .set(HEADER_NODE, &self.node_id)
            .set(HEADER_SIGNATURE, &sig)
            .set("content-type", "application/json");
        let r = if method == "GET" {
            req.call()
        } else {
            req.send_bytes(body)
        };
        let resp = match r {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(ureq::Error::Transport(t)) => {
                return Err(ClientError::Unreachable {
                    url,
                    why: t.to_string(),
                })
            }
        };
        let status = resp.status();
        let mut body = Vec::new();
        resp.into_reader()
            .take(MAX_ANSWER)
            .read_to_end(&mut body)
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                why: format!("reading the answer: {e}"),
            })?;
        Ok(Answer { status, body })
    }

    fn call<T: DeserializeOwned>(&self, method: &str, path: &str, body: &[u8]) -> Result<T> {
        let url = format!("{}{path}", self.base);
        let a = self.send(method, path, body)?;
        if (200..300).contains(&a.status) {
            serde_json::from_slice(&a.body).map_err(|e| ClientError::Protocol {
                url,
                why: e.to_string(),
            })
        } else {
            let rejection = serde_json::from_slice::<ErrorBody>(&a.body)
                .map(|b| b.error)
                .unwrap_or_else(|_| Rejection {
                    code: format!("http_{}", a.status),
                    message: String::from_utf8_lossy(&a.body).chars().take(300).collect(),
                });
            Err(ClientError::Refused {
                url,
                status: a.status,
                rejection,
            })
        }
    }

    fn post<B: serde::Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let b = serde_json::to_vec(body).map_err(|e| ClientError::Config(e.to_string()))?;
        self.call("POST", path, &b)
    }

    /// Registration, step 1.
    pub fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse> {
        self.post("/v1/register", req)
    }

    /// Registration, step 2.
    pub fn activate(&self, req: &ActivateRequest) -> Result<ActivateResponse> {
        self.post("/v1/activate", req)
    }

    /// A new session.
    pub fn open_session(&self, req: &SessionRequest) -> Result<SessionOffer> {
        self.post("/v1/sessions", req)
    }

    /// Lets the registry measure bandwidth: download its bytes, then upload
    /// as many. Returns (down, up) in Mb/s as the registry measured them.
    pub fn bandwidth(&self, offer: &SessionOffer) -> Result<(f64, f64)> {
        let id = &offer.session_id;
        let path = format!("/v1/sessions/{id}/download");
        let url = format!("{}{path}", self.base);
        let sig = auth::sign_request(&self.key, "GET", &path, b"");
        let unreachable = |why: String| ClientError::Unreachable {
            url: url.clone(),
            why,
        };
        let resp = match self
            .agent
            .get(&url)
            .set(HEADER_NODE, &self.node_id)
            .set(HEADER_SIGNATURE, &sig)
            .call()
        {
            Ok(r) => r,
            Err(ureq::Error::Status(status, r)) => {
                let body = r.into_string().unwrap_or_default();
                let rejection = serde_json::from_str::<ErrorBody>(&body)
                    .map(|b| b.error)
                    .unwrap_or(Rejection {
                        code: format!("http_{status}"),
                        message: body,
                    });
                return Err(ClientError::Refused {
                    url: url.clone(),
                    status,
                    rejection,
                });
            }
            Err(ureq::Error::Transport(t)) => return Err(unreachable(t.to_string())),
        };
        let got = std::io::copy(
            &mut resp.into_reader().take(offer.profile.bandwidth_bytes + 1),
            &mut std::io::sink(),
        )
        .map_err(|e| unreachable(format!("download: {e}")))?;
        if got != offer.profile.bandwidth_bytes {
            return Err(ClientError::Protocol {
                url,
                why: format!(
                    "downloaded {got} bytes, expected {}",
                    offer.profile.bandwidth_bytes
                ),
            });
        }
        let path = format!("/v1/sessions/{id}/upload");
        let url = format!("{}{path}", self.base);
        let sig = auth::sign_request(&self.key, "POST", &path, b"");
        let key: [u8; 32] =
            Sha256::digest([b"fluxnode/upload/v1\0".as_slice(), &offer.nonce].concat()).into();
        let reader = Random {
            rng: fluxnode_hal::seed::Xoshiro256::from_key(&key),
            left: offer.profile.bandwidth_bytes,
        };
        let r = self
            .agent
            .post(&url)
            .set(HEADER_NODE, &self.node_id)
            .set(HEADER_SIGNATURE, &sig)
            .set("content-type", "application/octet-stream")
            .set("content-length", &offer.profile.bandwidth_bytes.to_string())
            .send(reader);
        let v: serde_json::Value = match r {
            Ok(r) => r.into_json().map_err(|e| ClientError::Protocol {
                url: url.clone(),
                why: e.to_string(),
            })?,
            Err(ureq::Error::Status(status, r)) => {
                let rejection = r
                    .into_json::<ErrorBody>()
                    .map(|b| b.error)
                    .unwrap_or(Rejection {
                        code: format!("http_{status}"),
                        message: String::new(),
                    });
                return Err(ClientError::Refused {
                    url,
                    status,
                    rejection,
                });
            }
            Err(ureq::Error::Transport(t)) => {
                return Err(ClientError::Unreachable {
                    url,
                    why: t.to_string(),
                })
            }
        };
        Ok((
            v["down_mbps"].as_f64().unwrap_or(0.0),
            v["up_mbps"].as_f64().unwrap_or(0.0),
        ))
    }

    /// Sends the evidence.
    pub fn evidence(&self, ev: &Evidence) -> Result<EvidenceOutcome> {
        self.post(&format!("/v1/sessions/{}/evidence", ev.session_id), ev)
    }

    /// Sends the openings.
    pub fn openings(&self, req: &OpeningsRequest) -> Result<SessionVerdict> {
        self.post(&format!("/v1/sessions/{}/openings", req.session_id), req)
    }

    /// A heartbeat.
    pub fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatAck> {
        self.post("/v1/heartbeat", hb)
    }

    /// What the registry knows of a node.
    pub fn node_view(&self, node_id: &str) -> Result<NodeView> {
        self.call("GET", &format!("/v1/nodes/{node_id}"), b"")
    }
}

/// Random bytes to upload (incompressible, cheap to make).
struct Random {
    rng: fluxnode_hal::seed::Xoshiro256,
    left: u64,
}

impl Read for Random {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        self.rng.fill_bytes(&mut buf[..n]);
        self.left -= n as u64;
        Ok(n)
    }
}
