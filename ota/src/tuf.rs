//! The TUF side: load and verify the repository's metadata with `tough`
//! (signatures, thresholds, expiry, version rollback of every role, root
//! rotation from the root baked into the image), then read the update
//! manifests it signs.
//!
//! TUF is checked before anything else: no manifest is parsed, and no
//! payload byte fetched, from a repository whose metadata did not verify.
//! `tough` keeps the newest metadata it accepted in a datastore on /var;
//! metadata older than that (a replay) is refused even when its
//! signatures are good.
//!
//! A payload is named twice, and both must agree: as a TUF target (length
//! and sha256 in the signed targets metadata) and in the signed manifest
//! (size, sha256 and every chunk). The chunk hashes are what the installer
//! checks as it writes.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fluxnode_protocol::update::{self, ManifestError, UpdateManifest};
use sha2::{Digest, Sha256};
use tough::{RepositoryLoader, TargetName, Transport, TransportError, TransportErrorKind};
use url::Url;

/// Largest metadata file fetched (bytes); tough applies its own, smaller
/// limits per role on top.
const MAX_METADATA: u64 = 16 << 20;

/// Where a repository is and what the node trusts.
#[derive(Debug, Clone)]
pub struct RepoConfig {
    /// Base URL of the metadata (`…/metadata/`), `http(s)://` or `file://`.
    pub metadata_url: Url,
    /// Base URL of the targets (`…/targets/`).
    pub targets_url: Url,
    /// The trusted root metadata baked into the image (`root.json`).
    pub trusted_root: PathBuf,
    /// Where tough keeps the newest metadata it accepted (on /var).
    pub datastore: PathBuf,
    /// Read timeout for metadata requests.
    pub timeout: Duration,
}

impl RepoConfig {
    /// A repository at `base` (with `metadata/` and `targets/` under it,
    /// tuftool's layout), a trusted root and a datastore.
    pub fn at(base: &Url, trusted_root: &Path, datastore: &Path) -> Result<RepoConfig, TufError> {
        let mut base = base.clone();
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let join = |s: &str| {
            base.join(s).map_err(|e| TufError::Config {
                what: base.to_string(),
                why: e.to_string(),
            })
        };
        Ok(RepoConfig {
            metadata_url: join("metadata/")?,
            targets_url: join("targets/")?,
            trusted_root: trusted_root.to_path_buf(),
            datastore: datastore.to_path_buf(),
            timeout: Duration::from_secs(30),
        })
    }

    /// A repository given as a URL (`https://…`, `http://…`) or a local
    /// directory path.
    pub fn from_source(
        source: &str,
        trusted_root: &Path,
        datastore: &Path,
    ) -> Result<RepoConfig, TufError> {
        let url = if source.contains("://") {
            Url::parse(source).map_err(|e| TufError::Config {
                what: source.to_string(),
                why: e.to_string(),
            })?
        } else {
            let abs = std::path::absolute(source).map_err(|e| TufError::Config {
                what: source.to_string(),
                why: e.to_string(),
            })?;
            Url::from_directory_path(&abs).map_err(|()| TufError::Config {
                what: source.to_string(),
                why: "not an absolute directory path".into(),
            })?
        };
        RepoConfig::at(&url, trusted_root, datastore)
    }
}

/// What went wrong with the repository.
#[derive(Debug, thiserror::Error)]
pub enum TufError {
    /// A bad setting.
    #[error("repository {what}: {why}")]
    Config {
        /// The setting.
        what: String,
        /// Why.
        why: String,
    },
    /// The trusted root could not be read.
    #[error("reading the trusted root {path}: {source}")]
    TrustedRoot {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The metadata did not verify (or could not be fetched).
    #[error("TUF metadata from {url} refused: {why}")]
    Metadata {
        /// The metadata URL.
        url: String,
        /// tough's reason, with its chain of causes.
        why: String,
    },
    /// A manifest target that does not parse or validate.
    #[error("update manifest {target}: {source}")]
    Manifest {
        /// The target.
        target: String,
        /// Cause.
        #[source]
        source: ManifestError,
    },
    /// A payload the manifest names is not a TUF target, or differs.
    #[error("update manifest {target}: payload {payload} {why}")]
    Payload {
        /// The manifest target.
        target: String,
        /// The payload target.
        payload: String,
        /// What differs.
        why: String,
    },
    /// The asked version is not in the repository.
    #[error("version {0} is not in the repository")]
    NoSuchVersion(String),
}

impl TufError {
    /// Stable code for `--json`.
    pub fn code(&self) -> &'static str {
        let why = match self {
            TufError::Metadata { why, .. } => why.as_str(),
            TufError::Config { .. } | TufError::TrustedRoot { .. } => return "config",
            TufError::Manifest { .. } => return "bad_manifest",
            TufError::Payload { .. } => return "bad_manifest",
            TufError::NoSuchVersion(_) => return "no_such_version",
        };
        let w = why.to_ascii_lowercase();
        if w.contains("expired") {
            "metadata_expired"
        } else if w.contains("threshold") || w.contains("signature") {
            "metadata_signature"
        } else if w.contains("older") || w.contains("rollback") || w.contains("version") {
            "metadata_rollback"
        } else if w.contains("transport") || w.contains("fetch") || w.contains("unreachable") {
            "unreachable"
        } else {
            "metadata_invalid"
        }
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// tough's transport over ureq (blocking calls on tokio's blocking pool)
/// and local files, each body bounded.
#[derive(Debug, Clone)]
pub struct UreqTransport {
    agent: ureq::Agent,
}

impl UreqTransport {
    /// With a read timeout.
    pub fn new(timeout: Duration) -> UreqTransport {
        UreqTransport {
            agent: ureq::AgentBuilder::new()
                .timeout_connect(timeout)
                .timeout_read(timeout)
                .redirects(0)
                .build(),
        }
    }
}

fn fetch_blocking(agent: &ureq::Agent, url: &Url) -> Result<Vec<u8>, TransportError> {
    let mut out = Vec::new();
    if url.scheme() == "file" {
        let path = url
            .to_file_path()
            .map_err(|()| TransportError::new(TransportErrorKind::Other, url.clone()))?;
        let f = std::fs::File::open(&path).map_err(|e| {
            let kind = if e.kind() == std::io::ErrorKind::NotFound {
                TransportErrorKind::FileNotFound
            } else {
                TransportErrorKind::Other
            };
            TransportError::new_with_cause(kind, url.clone(), e)
        })?;
        f.take(MAX_METADATA).read_to_end(&mut out).map_err(|e| {
            TransportError::new_with_cause(TransportErrorKind::Other, url.clone(), e)
        })?;
        return Ok(out);
    }
    if !matches!(url.scheme(), "http" | "https") {
        return Err(TransportError::new(
            TransportErrorKind::UnsupportedUrlScheme,
            url.clone(),
        ));
    }
    match agent.request_url("GET", url).call() {
        Ok(resp) => {
            resp.into_reader()
                .take(MAX_METADATA)
                .read_to_end(&mut out)
                .map_err(|e| {
                    TransportError::new_with_cause(TransportErrorKind::Other, url.clone(), e)
                })?;
            Ok(out)
        }
        Err(ureq::Error::Status(404 | 403 | 410, _)) => Err(TransportError::new(
            TransportErrorKind::FileNotFound,
            url.clone(),
        )),
        Err(e) => Err(TransportError::new_with_cause(
            TransportErrorKind::Other,
            url.clone(),
            e,
        )),
    }
}

#[tough::async_trait]
impl Transport for UreqTransport {
    async fn fetch(
        &self,
        url: Url,
    ) -> Result<
        std::pin::Pin<
            Box<dyn futures_util::Stream<Item = Result<tough::Bytes, TransportError>> + Send>,
        >,
        TransportError,
    > {
        let agent = self.agent.clone();
        let u = url.clone();
        let body = tokio::task::spawn_blocking(move || fetch_blocking(&agent, &u))
            .await
            .map_err(|e| {
                TransportError::new_with_cause(TransportErrorKind::Other, url.clone(), e)
            })??;
        let stream = futures_util::stream::once(async move { Ok(tough::Bytes::from(body)) });
        Ok(Box::pin(stream))
    }
}

/// One version offered by the repository, verified.
#[derive(Debug, Clone)]
pub struct Offer {
    /// The manifest's TUF target name.
    pub target: String,
    /// sha256 of the manifest bytes (hex): the journal's key.
    pub manifest_sha256: String,
    /// The manifest.
    pub manifest: UpdateManifest,
    /// URL of every payload and patch target, by target name.
    pub urls: std::collections::BTreeMap<String, Url>,
}

impl Offer {
    /// The URL of a target the manifest names.
    pub fn url(&self, target: &str) -> Option<&Url> {
        self.urls.get(target)
    }
}

/// A verified repository.
#[derive(Debug)]
pub struct Verified {
    repo: tough::Repository,
    cfg: RepoConfig,
    /// Versions of the signed metadata (root, targets, snapshot, timestamp).
    pub versions: [u64; 4],
}

fn runtime() -> Result<tokio::runtime::Runtime, TufError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| TufError::Config {
            what: "tokio runtime".into(),
            why: e.to_string(),
        })
}

/// Loads and verifies the repository's metadata (TUF client workflow:
/// root updates from the trusted root, timestamp, snapshot, targets).
pub fn load(cfg: &RepoConfig) -> Result<Verified, TufError> {
    let root = std::fs::read(&cfg.trusted_root).map_err(|source| TufError::TrustedRoot {
        path: cfg.trusted_root.clone(),
        source,
    })?;
    std::fs::create_dir_all(&cfg.datastore).map_err(|e| TufError::Config {
        what: cfg.datastore.display().to_string(),
        why: e.to_string(),
    })?;
    let rt = runtime()?;
    let loader = RepositoryLoader::new(&root, cfg.metadata_url.clone(), cfg.targets_url.clone())
        .transport(UreqTransport::new(cfg.timeout))
        .datastore(cfg.datastore.clone());
    let repo = rt.block_on(loader.load()).map_err(|e| TufError::Metadata {
        url: cfg.metadata_url.to_string(),
        why: chain(&e),
    })?;
    let versions = [
        repo.root().signed.version.get(),
        repo.targets().signed.version.get(),
        repo.snapshot().signed.version.get(),
        repo.timestamp().signed.version.get(),
    ];
    Ok(Verified {
        repo,
        cfg: cfg.clone(),
        versions,
    })
}

/// Target names of update manifests: `fluxnode-<version>.manifest.json`.
pub fn manifest_target(version: &str) -> String {
    format!("fluxnode-{version}.manifest.json")
}

impl Verified {
    /// The versions the repository offers, newest first.
    pub fn versions_offered(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .repo
            .all_targets()
            .filter_map(|(name, _)| {
                name.raw()
                    .strip_prefix("fluxnode-")
                    .and_then(|r| r.strip_suffix(".manifest.json"))
                    .map(str::to_string)
            })
            .collect();
        v.sort_by(|a, b| update::cmp_versions(b, a));
        v
    }

    fn url_of(&self, name: &str) -> Result<Url, String> {
        let tn = TargetName::new(name).map_err(|e| e.to_string())?;
        let t = self
            .repo
            .targets()
            .signed
            .find_target(&tn)
            .map_err(|_| "is not a signed TUF target".to_string())?;
        let file = if self.repo.root().signed.consistent_snapshot {
            format!("{}.{}", hex::encode(&*t.hashes.sha256), name)
        } else {
            name.to_string()
        };
        self.cfg.targets_url.join(&file).map_err(|e| e.to_string())
    }

    fn target_info(&self, name: &str) -> Option<(u64, String)> {
        let tn = TargetName::new(name).ok()?;
        let t = self.repo.targets().signed.find_target(&tn).ok()?;
        Some((t.length, hex::encode(&*t.hashes.sha256)))
    }

    /// The verified offer of `version` (the newest when `None`).
    pub fn offer(&self, version: Option<&str>) -> Result<Offer, TufError> {
        let version = match version {
            Some(v) => v.to_string(),
            None => self
                .versions_offered()
                .into_iter()
                .next()
                .ok_or_else(|| TufError::NoSuchVersion("(any)".into()))?,
        };
        let target = manifest_target(&version);
        let tn = TargetName::new(target.as_str())
            .map_err(|_| TufError::NoSuchVersion(version.clone()))?;
        let rt = runtime()?;
        let bytes = rt
            .block_on(async {
                use futures_util::TryStreamExt;
                let Some(stream) = self.repo.read_target(&tn).await? else {
                    return Ok(None);
                };
                // tough bounds the stream by the signed length and checks
                // its sha256 at the end.
                let v: Vec<u8> = stream
                    .try_fold(Vec::new(), |mut acc, b| async move {
                        acc.extend_from_slice(&b);
                        Ok(acc)
                    })
                    .await?;
                Ok::<_, tough::error::Error>(Some(v))
            })
            .map_err(|e| TufError::Metadata {
                url: self.cfg.targets_url.to_string(),
                why: chain(&e),
            })?
            .ok_or_else(|| TufError::NoSuchVersion(version.clone()))?;
        let manifest = UpdateManifest::parse(&bytes).map_err(|source| TufError::Manifest {
            target: target.clone(),
            source,
        })?;
        if manifest.version != version {
            return Err(TufError::Payload {
                target: target.clone(),
                payload: target.clone(),
                why: format!("names version {}, not {version}", manifest.version),
            });
        }
        let mut urls = std::collections::BTreeMap::new();
        let mut named: Vec<(&str, u64, &str)> = vec![(
            &manifest.root.target,
            manifest.root.size,
            &manifest.root.sha256,
        )];
        for u in &manifest.ukis {
            named.push((&u.payload.target, u.payload.size, &u.payload.sha256));
        }
        let patches = manifest
            .root
            .patches
            .iter()
            .chain(manifest.ukis.iter().flat_map(|u| u.payload.patches.iter()));
        for p in patches {
            named.push((&p.target, p.size, &p.sha256));
        }
        for (name, size, sha) in named {
            let bad = |why: String| TufError::Payload {
                target: target.clone(),
                payload: name.to_string(),
                why,
            };
            let (len, tsha) = self
                .target_info(name)
                .ok_or_else(|| bad("is not a signed TUF target".into()))?;
            if len != size || tsha != sha {
                return Err(bad(format!(
                    "differs between the manifest ({size} bytes, {sha}) and the TUF targets ({len} bytes, {tsha})"
                )));
            }
            urls.insert(name.to_string(), self.url_of(name).map_err(bad)?);
        }
        Ok(Offer {
            target,
            manifest_sha256: hex::encode(Sha256::digest(&bytes)),
            manifest,
            urls,
        })
    }
}
