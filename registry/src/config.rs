//! The registry's directory: keys, TLS, trusted EK CAs, the database and
//! `registry.toml`. `fluxnode-registry init` makes one; every other
//! command takes it with `--dir`.
//!
//! ```text
//! DIR/registry.toml     settings (listen address, store, profile, ...)
//! DIR/ca.pem            the CA nodes pin (baked into the image)
//! DIR/ca-key.pem        its key (0600; keep offline in production)
//! DIR/server.pem        the TLS certificate, signed by ca.pem
//! DIR/server-key.pem    its key (0600)
//! DIR/signing.key       ed25519 key signing tier certificates, hex (0600)
//! DIR/signing.pub       its public half, hex: give it to verifiers
//! DIR/admin.token       bearer token for policy changes over the API (0600)
//! DIR/ek-ca/            allow-listed EK CAs (PEM or DER, roots and intermediates)
//! DIR/registry.redb     the default store
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context as _, Result};
use ed25519_dalek::{SigningKey, VerifyingKey};
use fluxnode_protocol::ekcert::TrustStore;
use fluxnode_protocol::session::BenchProfile;
use serde::{Deserialize, Serialize};

use crate::service::Settings;

/// `registry.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Address to listen on.
    pub listen: String,
    /// `redb` (DIR/registry.redb) or a `postgres://` URL.
    pub store: String,
    /// Benchmark profile: `flux` or `quick`.
    pub profile: String,
    /// Heartbeat interval, seconds.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_interval_s: u64,
    /// Heartbeats missed before a node is offline.
    #[serde(default = "default_missed")]
    pub missed_heartbeats: u64,
    /// Evidence due within, seconds of the offer.
    #[serde(default = "default_session_ttl")]
    pub session_ttl_s: u64,
    /// Tier certificate validity, hours.
    #[serde(default = "default_cert_hours")]
    pub certificate_hours: u64,
    /// A tier table (TOML, hal's format) replacing Flux's.
    #[serde(default)]
    pub tier_policy: Option<PathBuf>,
}

fn default_heartbeat() -> u64 {
    60
}
fn default_missed() -> u64 {
    3
}
fn default_session_ttl() -> u64 {
    600
}
fn default_cert_hours() -> u64 {
    8
}

impl Default for FileConfig {
    fn default() -> Self {
        FileConfig {
            listen: "0.0.0.0:8443".into(),
            store: "redb".into(),
            profile: "flux".into(),
            heartbeat_interval_s: default_heartbeat(),
            missed_heartbeats: default_missed(),
            session_ttl_s: default_session_ttl(),
            certificate_hours: default_cert_hours(),
            tier_policy: None,
        }
    }
}

/// A registry directory.
#[derive(Debug, Clone)]
pub struct RegistryDir {
    /// Its path.
    pub root: PathBuf,
}

impl RegistryDir {
    /// The directory at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        RegistryDir { root: root.into() }
    }

    /// A file in it.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Reads `registry.toml`.
    pub fn config(&self) -> Result<FileConfig> {
        let p = self.path("registry.toml");
        let text = std::fs::read_to_string(&p).with_context(|| {
            format!(
                "reading {} (make the directory with `fluxnode-registry init --dir {}`)",
                p.display(),
                self.root.display()
            )
        })?;
        toml::from_str(&text).with_context(|| format!("parsing {}", p.display()))
    }

    /// Writes `registry.toml`.
    pub fn write_config(&self, c: &FileConfig) -> Result<()> {
        let p = self.path("registry.toml");
        let text = toml_string(c)?;
        std::fs::write(&p, text).with_context(|| format!("writing {}", p.display()))
    }

    /// The settings `registry.toml` describes.
    pub fn settings(&self, c: &FileConfig) -> Result<Settings> {
        let profile = BenchProfile::named(&c.profile).with_context(|| {
            format!(
                "profile {:?} in registry.toml: known are flux and quick",
                c.profile
            )
        })?;
        let tiers = match &c.tier_policy {
            Some(p) => {
                let p = if p.is_relative() {
                    self.root.join(p)
                } else {
                    p.clone()
                };
                let text = std::fs::read_to_string(&p)
                    .with_context(|| format!("reading {}", p.display()))?;
                fluxnode_hal::tier::Policy::from_toml(&text)
                    .with_context(|| format!("parsing {}", p.display()))?
            }
            None => fluxnode_hal::tier::Policy::flux(),
        };
        if c.heartbeat_interval_s == 0 || c.missed_heartbeats == 0 {
            bail!("registry.toml: heartbeat_interval_s and missed_heartbeats must be positive");
        }
        Ok(Settings {
            profile,
            session_ttl_ms: c.session_ttl_s.saturating_mul(1000),
            certificate_validity_ms: c.certificate_hours.saturating_mul(3_600_000),
            heartbeat_interval_s: c.heartbeat_interval_s,
            missed_heartbeats: c.missed_heartbeats,
            tiers,
            ..Settings::default()
        })
    }

    /// The tier-certificate signing key.
    pub fn signing_key(&self) -> Result<SigningKey> {
        let p = self.path("signing.key");
        let text =
            std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        let mut b = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut b)
            .with_context(|| format!("{}: not 64 hex digits", p.display()))?;
        Ok(SigningKey::from_bytes(&b))
    }

    /// The admin token, if the file exists.
    pub fn admin_token(&self) -> Result<Option<String>> {
        let p = self.path("admin.token");
        match std::fs::read_to_string(&p) {
            Ok(t) => Ok(Some(t.trim().to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// The allow-listed EK CAs: every file in `ek-ca/` is a root, every
    /// file in `ek-ca/intermediates/` an intermediate (PEM or DER).
    pub fn trust(&self) -> Result<TrustStore> {
        let d = self.path("ek-ca");
        let roots = read_all(&d)?;
        let inter = read_all(&d.join("intermediates"))?;
        if roots.is_empty() {
            tracing::warn!("{} holds no EK CA: every registration will be refused (add one with `fluxnode-registry trust add FILE`)", d.display());
        }
        let r: Vec<&[u8]> = roots.iter().map(Vec::as_slice).collect();
        let i: Vec<&[u8]> = inter.iter().map(Vec::as_slice).collect();
        TrustStore::from_blobs(&r, &i)
            .map_err(|e| anyhow::anyhow!("EK CAs in {}: {e}", d.display()))
    }

    /// The TLS server configuration.
    pub fn tls(&self) -> Result<Arc<rustls::ServerConfig>> {
        let (cp, kp) = (self.path("server.pem"), self.path("server-key.pem"));
        let certs = rustls_pemfile::certs(
            &mut std::fs::read(&cp)
                .with_context(|| format!("reading {}", cp.display()))?
                .as_slice(),
        )
        .collect::<std::result::Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cp.display()))?;
        let key = rustls_pemfile::private_key(
            &mut std::fs::read(&kp)
                .with_context(|| format!("reading {}", kp.display()))?
                .as_slice(),
        )
        .with_context(|| format!("parsing {}", kp.display()))?
        .with_context(|| format!("{} holds no private key", kp.display()))?;
        let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate and key do not fit together")?;
        Ok(Arc::new(cfg))
    }
}

fn toml_string(c: &FileConfig) -> Result<String> {
    // `toml` is built parse-only here; the file is simple enough to write by hand.
    let mut s =
        String::from("# fluxnode-registry settings (docs: README, \"Running the registry\").\n");
    s += &format!("listen = {:?}\n", c.listen);
    s += &format!(
        "# `redb` (registry.redb in this directory) or a postgres:// URL.\nstore = {:?}\n",
        c.store
    );
    s += &format!(
        "# Benchmark profile sessions prescribe: flux or quick.\nprofile = {:?}\n",
        c.profile
    );
    s += &format!("heartbeat_interval_s = {}\n", c.heartbeat_interval_s);
    s += &format!("missed_heartbeats = {}\n", c.missed_heartbeats);
    s += &format!("session_ttl_s = {}\n", c.session_ttl_s);
    s += &format!("certificate_hours = {}\n", c.certificate_hours);
    if let Some(p) = &c.tier_policy {
        s += &format!("tier_policy = {:?}\n", p.display().to_string());
    }
    Ok(s)
}

/// The public key of a `signing.pub` file (hex) or of a raw hex string.
pub fn verifying_key(arg: &str) -> Result<VerifyingKey> {
    let text = if Path::new(arg).is_file() {
        std::fs::read_to_string(arg).with_context(|| format!("reading {arg}"))?
    } else {
        arg.to_string()
    };
    let mut b = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut b)
        .with_context(|| format!("{arg}: a registry key is 64 hex digits (signing.pub)"))?;
    VerifyingKey::from_bytes(&b).with_context(|| format!("{arg}: not an ed25519 public key"))
}

fn read_all(d: &Path) -> Result<Vec<Vec<u8>>> {
    let mut out = Vec::new();
    if !d.is_dir() {
        return Ok(out);
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(d)
        .with_context(|| format!("listing {}", d.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    entries.sort();
    for p in entries {
        out.push(std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?);
    }
    Ok(out)
}
