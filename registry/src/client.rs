//! The CLI's view of a running registry: its own HTTPS API, trusting the
//! directory's CA. Commands that read or change state go through the
//! running server when there is one (a redb file is held open by it, and
//! with PostgreSQL every instance should see the change at once).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::de::DeserializeOwned;

use crate::config::RegistryDir;

/// A client of the registry at `base` (`https://host:port`).
#[derive(Debug)]
pub struct AdminClient {
    agent: ureq::Agent,
    base: String,
    token: Option<String>,
}

/// Why a call failed: the server is not there, or it answered with an error.
#[derive(Debug)]
pub enum CallError {
    /// Nothing answered (connection refused, timeout, TLS).
    Unreachable(String),
    /// It answered with an error body.
    Refused(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Unreachable(m) | CallError::Refused(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CallError {}

/// A TLS client configuration that trusts only the CA in `ca_pem`.
pub fn tls_trusting(ca_pem: &[u8]) -> Result<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &ca_pem[..]) {
        roots
            .add(c.context("parsing the CA certificate")?)
            .context("adding the CA certificate")?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("TLS protocol versions")?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(cfg))
}

impl AdminClient {
    /// A client for the registry in `dir`, at `base` or at registry.toml's
    /// address (0.0.0.0 reached as 127.0.0.1).
    pub fn for_dir(dir: &RegistryDir, base: Option<&str>) -> Result<Self> {
        let ca = std::fs::read(dir.path("ca.pem"))
            .with_context(|| format!("reading {}", dir.path("ca.pem").display()))?;
        let base = match base {
            Some(b) => b.trim_end_matches('/').to_string(),
            None => {
                let listen = dir.config()?.listen;
                let port = listen.rsplit(':').next().unwrap_or("8443");
                format!("https://127.0.0.1:{port}")
            }
        };
        let agent = ureq::AgentBuilder::new()
            .tls_config(tls_trusting(&ca)?)
            .timeout_connect(Duration::from_secs(3))
            .timeout(Duration::from_secs(30))
            .build();
        Ok(AdminClient {
            agent,
            base,
            token: dir.admin_token()?,
        })
    }

    fn map(&self, url: &str, e: ureq::Error) -> CallError {
        match e {
            ureq::Error::Status(code, r) => {
                let body = r.into_string().unwrap_or_default();
                CallError::Refused(format!("{url}: HTTP {code}: {body}"))
            }
            ureq::Error::Transport(t) => CallError::Unreachable(format!("{url}: {t}")),
        }
    }

    /// GETs and parses JSON.
    pub fn get<T: DeserializeOwned>(&self, path: &str) -> std::result::Result<T, CallError> {
        let url = format!("{}{path}", self.base);
        let r = self.agent.get(&url).call().map_err(|e| self.map(&url, e))?;
        r.into_json()
            .map_err(|e| CallError::Refused(format!("{url}: {e}")))
    }

    /// PUTs JSON with the admin token.
    pub fn put<B: serde::Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> std::result::Result<T, CallError> {
        let url = format!("{}{path}", self.base);
        let token = self.token.as_deref().unwrap_or("");
        let r = self
            .agent
            .put(&url)
            .set("authorization", &format!("Bearer {token}"))
            .send_json(body)
            .map_err(|e| self.map(&url, e))?;
        r.into_json()
            .map_err(|e| CallError::Refused(format!("{url}: {e}")))
    }
}
