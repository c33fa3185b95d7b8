//! Pulling an image from an OCI distribution registry into the [`Store`].
//!
//! A small client of the distribution API over `ureq` (the HTTP client
//! the node agent already links; see docs/APPS.md for why not
//! `oci-client`): manifests and indexes with the OCI and Docker media
//! types, anonymous or token auth (the `WWW-Authenticate: Bearer` dance,
//! with basic credentials when given), redirects to blob storage without
//! leaking the token to another host.
//!
//! Nothing is trusted before it is hashed:
//! - a manifest is read whole (at most [`MAX_MANIFEST`] bytes) and its
//!   digest checked against the pinned one, or the registry's
//!   `Docker-Content-Digest` when pulled by tag;
//! - every blob is verified while it streams into the store, against the
//!   digest and size its descriptor declares, and only then renamed in;
//! - a dropped connection resumes with a range request from what the
//!   store already has, a few times; a reboot resumes the same way, since
//!   the partial file is on /var.
//!
//! A multi-arch index resolves to linux/amd64.

use std::time::Duration;

use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};

use crate::reference::{Digest, Reference};
use crate::store::{Store, StoreError};

/// The largest manifest or index read.
pub const MAX_MANIFEST: u64 = 4 << 20;
/// The largest image config read.
pub const MAX_CONFIG: u64 = 8 << 20;
/// The most layers an image may have: the overlay mount's options (one
/// page) hold about 40 of the store's layer paths.
pub const MAX_LAYERS: usize = 40;

/// How many times one blob download is resumed after a dropped connection.
pub const RESUMES: u32 = 5;

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
application/vnd.oci.image.manifest.v1+json, \
application/vnd.docker.distribution.manifest.list.v2+json, \
application/vnd.docker.distribution.manifest.v2+json";

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry answered with an error status.
    #[error("{url}: HTTP {status}{}", hint(*status))]
    Status {
        /// The request.
        url: String,
        /// The status.
        status: u16,
    },
    /// The registry could not be reached or the connection failed.
    #[error("{url}: {why}")]
    Transport {
        /// The request.
        url: String,
        /// What failed.
        why: String,
    },
    /// Token auth failed.
    #[error("{url}: authentication failed: {why}")]
    Auth {
        /// The request.
        url: String,
        /// What failed.
        why: String,
    },
    /// A manifest, index or config is not what the spec says.
    #[error("{url}: {why}")]
    Manifest {
        /// Where it came from.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The image has no linux/amd64 variant.
    #[error("{reference}: no linux/amd64 image in the index (it has: {available})")]
    Platform {
        /// The image.
        reference: String,
        /// The platforms it does have.
        available: String,
    },
    /// The store refused or failed (a digest or size mismatch among them).
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn hint(status: u16) -> &'static str {
    match status {
        401 | 403 => " (the registry wants credentials this node does not have for the image)",
        404 => " (no such repository, tag or blob: check the image reference)",
        429 => " (the registry is rate-limiting this node: try again later)",
        500..=599 => " (the registry failed: try again later)",
        _ => "",
    }
}

/// Progress of a pull, for a CLI or a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// A blob starts (or resumes at `from`).
    Blob {
        /// The blob.
        digest: Digest,
        /// Bytes already in the store from an earlier try.
        from: u64,
        /// Its size.
        size: u64,
    },
    /// Bytes of the current blob are in.
    Bytes {
        /// The blob.
        digest: Digest,
        /// Bytes written so far.
        done: u64,
        /// Its size.
        size: u64,
    },
    /// A blob was already in the store.
    Present {
        /// The blob.
        digest: Digest,
    },
    /// A connection dropped; the blob is resumed.
    Resume {
        /// The blob.
        digest: Digest,
        /// Where it resumes.
        at: u64,
        /// Why.
        why: String,
    },
}

/// An image in the store: its manifest's digest and what it references.
#[derive(Debug, Clone)]
pub struct Image {
    /// The manifest (not the index) digest.
    pub manifest: Digest,
    /// The config blob.
    pub config: Digest,
    /// Layer blobs, bottom first.
    pub layers: Vec<Digest>,
    /// The uncompressed digests the config declares, bottom first.
    pub diff_ids: Vec<Digest>,
    /// The config itself (entrypoint, cmd, env, user, working dir).
    pub config_json: ImageConfiguration,
}

impl Image {
    /// Reads an image back from the store by its manifest digest (after a
    /// reboot, with no network).
    pub fn load(store: &Store, manifest: &Digest) -> Result<Image, PullError> {
        let at = format!("store:{manifest}");
        let bytes = store.read(manifest, MAX_MANIFEST)?;
        let m: ImageManifest = parse_json(&bytes, &at)?;
        let config = descriptor_digest(m.config(), &at)?;
        let layers = m
            .layers()
            .iter()
            .map(|l| descriptor_digest(l, &at))
            .collect::<Result<Vec<_>, _>>()?;
        let cbytes = store.read(&config, MAX_CONFIG)?;
        let config_json: ImageConfiguration = parse_json(&cbytes, &at)?;
        let diff_ids = config_json
            .rootfs()
            .diff_ids()
            .iter()
            .map(|d| Digest::parse(d).map_err(|e| manifest_err(&at, e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        if diff_ids.len() != layers.len() {
            return Err(manifest_err(
                &at,
                format!(
                    "{} layers but {} diff_ids in the config",
                    layers.len(),
                    diff_ids.len()
                ),
            ));
        }
        Ok(Image {
            manifest: *manifest,
            config,
            layers,
            diff_ids,
            config_json,
        })
    }

    /// Every blob the image needs kept (for garbage collection).
    pub fn blobs(&self) -> impl Iterator<Item = Digest> + '_ {
        [self.manifest, self.config]
            .into_iter()
            .chain(self.layers.iter().copied())
    }
}

fn manifest_err(url: &str, why: impl Into<String>) -> PullError {
    PullError::Manifest {
        url: url.to_string(),
        why: why.into(),
    }
}

fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8], url: &str) -> Result<T, PullError> {
    serde_json::from_slice(bytes)
        .map_err(|e| manifest_err(url, format!("not a valid document: {e}")))
}

fn descriptor_digest(d: &Descriptor, url: &str) -> Result<Digest, PullError> {
    Digest::parse(d.digest().as_ref()).map_err(|e| manifest_err(url, e.to_string()))
}

/// Credentials for a registry.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password or token.
    pub password: String,
}

/// Pulls images into a store.
#[derive(Debug)]
pub struct Puller<'a> {
    store: &'a Store,
    agent: ureq::Agent,
    /// Registries spoken to over plain HTTP (a local test registry).
    insecure: Vec<String>,
    creds: Option<Credentials>,
    /// The `Authorization` value the registry accepted, for this pull's
    /// registry only (cleared at each pull, never sent to another origin).
    token: Option<String>,
    /// The most bytes one image's blobs may take, all together.
    max_total: u64,
}

impl<'a> Puller<'a> {
    /// A puller into `store`. `insecure` lists the registries (`host:port`)
    /// reached over plain HTTP; every other one is HTTPS.
    pub fn new(store: &'a Store, insecure: Vec<String>, creds: Option<Credentials>) -> Puller<'a> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            // A server that goes silent mid-blob is dropped after this long
            // and the blob resumed.
            .timeout_read(Duration::from_secs(30))
            .timeout_write(Duration::from_secs(30))
            .redirects(0)
            .user_agent(concat!("fluxnode/", env!("CARGO_PKG_VERSION")))
            .build();
        Puller {
            store,
            agent,
            insecure,
            creds,
            token: None,
            max_total: 64 << 30,
        }
    }

    /// Caps the bytes one image's blobs may take (the node passes what its
    /// disk can spare); an image that declares more is refused before any
    /// layer is fetched.
    pub fn with_max_total(mut self, bytes: u64) -> Self {
        self.max_total = bytes;
        self
    }

    fn insecure(&self, r: &Reference) -> bool {
        self.insecure.iter().any(|i| i == &r.registry)
    }

    fn base(&self, r: &Reference) -> String {
        let scheme = if self.insecure.iter().any(|i| i == &r.registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}/v2/{}", r.api_host(), r.repository)
    }

    /// Pulls `r` (manifest, config, every layer) into the store and
    /// returns the image. Blobs already present are not fetched again.
    pub fn pull(
        &mut self,
        r: &Reference,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Image, PullError> {
        let base = self.base(r);
        self.token = None;
        let (digest, bytes) = self.manifest(r, &base, &r.manifest_ref(), r.digest)?;
        let value: serde_json::Value = parse_json(&bytes, &base)?;
        let is_index = value.get("manifests").is_some();
        let (digest, bytes) = if is_index {
            let index: ImageIndex = parse_json(&bytes, &base)?;
            self.store.put(&digest, &bytes)?;
            let chosen = pick_amd64(&index).ok_or_else(|| PullError::Platform {
                reference: r.to_string(),
                available: platforms(&index),
            })?;
            let want = descriptor_digest(chosen, &base)?;
            self.manifest(r, &base, &want.to_string(), Some(want))?
        } else {
            (digest, bytes)
        };
        let m: ImageManifest = parse_json(&bytes, &base)?;
        self.store.put(&digest, &bytes)?;
        let cfg = m.config();
        if cfg.size() > MAX_CONFIG {
            return Err(manifest_err(
                &base,
                format!("the config is {} bytes; at most {MAX_CONFIG}", cfg.size()),
            ));
        }
        if m.layers().len() > MAX_LAYERS {
            return Err(manifest_err(
                &base,
                format!(
                    "the image has {} layers; at most {MAX_LAYERS} are run on a node",
                    m.layers().len()
                ),
            ));
        }
        let total = m
            .layers()
            .iter()
            .try_fold(cfg.size(), |t, l| t.checked_add(l.size()))
            .unwrap_or(u64::MAX);
        if total > self.max_total {
            return Err(manifest_err(
                &base,
                format!(
                    "the image's blobs take {total} bytes; this node accepts at most {}",
                    self.max_total
                ),
            ));
        }
        self.blob(r, &base, cfg, progress)?;
        for l in m.layers() {
            self.blob(r, &base, l, progress)?;
        }
        Image::load(self.store, &digest)
    }

    /// Fetches a manifest or index, verified against `pinned` or the
    /// registry's own digest header.
    fn manifest(
        &mut self,
        r: &Reference,
        base: &str,
        reference: &str,
        pinned: Option<Digest>,
    ) -> Result<(Digest, Vec<u8>), PullError> {
        let url = format!("{base}/manifests/{reference}");
        let resp = self.get(r, &url, &[("Accept", ACCEPT)])?;
        let header = resp.header("Docker-Content-Digest").map(str::to_string);
        let mut bytes = Vec::new();
        use std::io::Read as _;
        resp.into_reader()
            .take(MAX_MANIFEST + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| PullError::Transport {
                url: url.clone(),
                why: e.to_string(),
            })?;
        if bytes.len() as u64 > MAX_MANIFEST {
            return Err(manifest_err(
                &url,
                format!("larger than {MAX_MANIFEST} bytes"),
            ));
        }
        let got = Digest::of(&bytes);
        let expected = match (pinned, header) {
            (Some(p), _) => Some(p),
            (None, Some(h)) => {
                Some(Digest::parse(&h).map_err(|e| manifest_err(&url, e.to_string()))?)
            }
            (None, None) => None,
        };
        if let Some(e) = expected {
            if e != got {
                return Err(StoreError::DigestMismatch {
                    expected: e,
                    got,
                    size: bytes.len() as u64,
                }
                .into());
            }
        }
        Ok((got, bytes))
    }

    /// Fetches one blob into the store, resuming after dropped connections.
    fn blob(
        &mut self,
        r: &Reference,
        base: &str,
        d: &Descriptor,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), PullError> {
        let digest = descriptor_digest(d, base)?;
        if self.store.has(&digest) {
            progress(Progress::Present { digest });
            return Ok(());
        }
        let size = d.size();
        let url = format!("{base}/blobs/{digest}");
        let mut w = self.store.begin(&digest, size)?;
        progress(Progress::Blob {
            digest,
            from: w.offset(),
            size,
        });
        let mut resumes = 0;
        if w.offset() == size {
            // A power cut between the last write and the rename: the bytes
            // may all be here. Check them; a mismatch removed the partial.
            match w.commit() {
                Ok(()) => return Ok(()),
                Err(StoreError::DigestMismatch { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            w = self.store.begin(&digest, size)?;
        }
        loop {
            let from = w.offset();
            let range = format!("bytes={from}-");
            let headers: Vec<(&str, &str)> = if from > 0 {
                vec![("Range", &range)]
            } else {
                vec![]
            };
            let failed = match self.get(r, &url, &headers) {
                Ok(resp) => {
                    if from > 0 && !content_range_starts_at(&resp, from) {
                        // The whole blob again (200), or another range than
                        // asked: start over from byte 0 of this body only
                        // if it is the whole blob; else ask again without
                        // a range.
                        w.restart()?;
                        if resp.status() == 206 {
                            resumes += 1;
                            if resumes > RESUMES {
                                return Err(manifest_err(
                                    &url,
                                    "the registry keeps answering another range than asked",
                                ));
                            }
                            continue;
                        }
                    }
                    match copy_into(resp, &mut w, &digest, progress) {
                        Ok(()) => None,
                        Err(CopyError::Store(e)) => return Err(e.into()),
                        Err(CopyError::Io(e)) => Some(e.to_string()),
                    }
                }
                Err(PullError::Transport { why, .. }) => Some(why),
                Err(PullError::Status { status: 416, .. }) if from > 0 => {
                    // What we hold is not a prefix the server knows: refetch.
                    w.restart()?;
                    Some("the registry refused the range (416)".to_string())
                }
                Err(e) => return Err(e),
            };
            match failed {
                None if w.offset() == size => break,
                None => {
                    // The body ended early without an error (a proxy that
                    // closed cleanly): resume like a drop.
                    if resumes >= RESUMES {
                        return Err(StoreError::SizeMismatch {
                            digest,
                            declared: size,
                            got: w.offset(),
                        }
                        .into());
                    }
                }
                Some(why) => {
                    if resumes >= RESUMES {
                        return Err(PullError::Transport {
                            url,
                            why: format!("{why} (gave up after {RESUMES} resumes)"),
                        });
                    }
                    progress(Progress::Resume {
                        digest,
                        at: w.offset(),
                        why,
                    });
                }
            }
            resumes += 1;
            let _ = w.sync();
            std::thread::sleep(Duration::from_millis(200 << resumes.min(4)));
        }
        w.commit()?;
        Ok(())
    }

    /// A GET with auth and redirects handled.
    fn get(
        &mut self,
        r: &Reference,
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<ureq::Response, PullError> {
        let mut target = url.to_string();
        let mut same_host = true;
        let mut authed_once = false;
        for _ in 0..6 {
            let mut req = self.agent.get(&target);
            for (k, v) in headers {
                req = req.set(k, v);
            }
            if same_host {
                if let Some(t) = &self.token {
                    req = req.set("Authorization", t);
                }
            }
            let resp = match req.call() {
                Ok(resp) => resp,
                Err(ureq::Error::Status(401, resp)) if same_host && !authed_once => {
                    let challenge = resp
                        .header("WWW-Authenticate")
                        .unwrap_or_default()
                        .to_string();
                    self.token = Some(self.authenticate(r, &target, &challenge)?);
                    authed_once = true;
                    continue;
                }
                Err(ureq::Error::Status(s, resp)) if (300..400).contains(&s) => resp,
                Err(ureq::Error::Status(status, _)) => {
                    return Err(PullError::Status {
                        url: target,
                        status,
                    });
                }
                Err(ureq::Error::Transport(t)) => {
                    return Err(PullError::Transport {
                        url: target,
                        why: t.to_string(),
                    })
                }
            };
            if (300..400).contains(&resp.status()) {
                let loc = resp.header("Location").unwrap_or_default().to_string();
                let next = url::Url::parse(&target)
                    .and_then(|u| u.join(&loc))
                    .map_err(|e| manifest_err(&target, format!("bad redirect {loc:?}: {e}")))?;
                if let Err(why) = redirect_allowed(&target, &next) {
                    return Err(manifest_err(
                        &target,
                        format!("redirect to {next} refused: {why}"),
                    ));
                }
                // Scheme, host and port: a redirect to plain HTTP, or to
                // blob storage elsewhere, gets no Authorization header.
                let origin = |s: &str| {
                    url::Url::parse(s)
                        .ok()
                        .map(|u| u.origin().ascii_serialization())
                };
                same_host = same_host && origin(next.as_str()) == origin(url);
                target = next.to_string();
                continue;
            }
            return Ok(resp);
        }
        Err(manifest_err(url, "more than 5 redirects"))
    }

    /// Answers a `WWW-Authenticate` challenge; returns the `Authorization`
    /// header's value for the requests that follow.
    fn authenticate(&self, r: &Reference, url: &str, challenge: &str) -> Result<String, PullError> {
        let auth_err = |why: String| PullError::Auth {
            url: url.to_string(),
            why,
        };
        let (scheme, params) = parse_challenge(challenge).ok_or_else(|| {
            auth_err(format!(
                "the registry asked for auth with an unreadable challenge {challenge:?}"
            ))
        })?;
        if scheme.eq_ignore_ascii_case("basic") {
            let Some(c) = &self.creds else {
                return Err(auth_err(
                    "the registry wants a user and password; none are configured".into(),
                ));
            };
            // Basic: every request carries the credentials themselves.
            return Ok(format!(
                "Basic {}",
                base64_lite::encode(&format!("{}:{}", c.user, c.password))
            ));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(auth_err(format!("unsupported auth scheme {scheme:?}")));
        }
        let realm = params
            .iter()
            .find(|(k, _)| k == "realm")
            .map(|(_, v)| v.clone())
            .ok_or_else(|| auth_err("the challenge has no realm".into()))?;
        let mut token_url =
            url::Url::parse(&realm).map_err(|e| auth_err(format!("realm {realm:?}: {e}")))?;
        if token_url.scheme() != "https" && !self.insecure(r) {
            return Err(auth_err(format!(
                "the token realm {realm:?} is not HTTPS; credentials and tokens are only sent over HTTPS"
            )));
        }
        {
            let mut q = token_url.query_pairs_mut();
            if let Some((_, s)) = params.iter().find(|(k, _)| k == "service") {
                q.append_pair("service", s);
            }
            let scope = params
                .iter()
                .find(|(k, _)| k == "scope")
                .map(|(_, v)| v.clone())
                .unwrap_or_else(|| format!("repository:{}:pull", r.repository));
            q.append_pair("scope", &scope);
        }
        let mut req = self.agent.get(token_url.as_str());
        if let Some(c) = &self.creds {
            let basic = base64_lite::encode(&format!("{}:{}", c.user, c.password));
            req = req.set("Authorization", &format!("Basic {basic}"));
        }
        let resp = req
            .call()
            .map_err(|e| auth_err(format!("{token_url}: {e}")))?;
        let mut body = Vec::new();
        use std::io::Read as _;
        resp.into_reader()
            .take(64 * 1024)
            .read_to_end(&mut body)
            .map_err(|e| auth_err(e.to_string()))?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| auth_err(format!("token answer: {e}")))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .filter(|t| !t.is_empty() && t.len() < 16 * 1024 && !t.contains(['\r', '\n']))
            .map(|t| format!("Bearer {t}"))
            .ok_or_else(|| auth_err("the token answer holds no token".into()))
    }
}

/// A tiny base64 for one Basic header (no extra crate for 10 lines).
mod base64_lite {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    pub fn encode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = String::with_capacity(b.len().div_ceil(3) * 4);
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..4 {
                if i <= c.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

enum CopyError {
    Io(std::io::Error),
    Store(StoreError),
}

fn copy_into(
    resp: ureq::Response,
    w: &mut crate::store::BlobWriter,
    digest: &Digest,
    progress: &mut dyn FnMut(Progress),
) -> Result<(), CopyError> {
    use std::io::Read as _;
    let mut reader = resp.into_reader();
    let mut buf = vec![0u8; 64 * 1024];
    let mut since_sync = 0u64;
    let mut since_report = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(CopyError::Io)?;
        if n == 0 {
            return Ok(());
        }
        w.write_all(&buf[..n]).map_err(CopyError::Store)?;
        since_sync += n as u64;
        since_report += n as u64;
        if since_sync >= 8 << 20 {
            w.sync().map_err(CopyError::Store)?;
            since_sync = 0;
        }
        if since_report >= 1 << 20 || w.offset() == w.size() {
            progress(Progress::Bytes {
                digest: *digest,
                done: w.offset(),
                size: w.size(),
            });
            since_report = 0;
        }
    }
}

/// Whether a response carries the bytes from `from` on: a 206 whose
/// `Content-Range` starts there.
fn content_range_starts_at(resp: &ureq::Response, from: u64) -> bool {
    resp.status() == 206
        && resp
            .header("Content-Range")
            .and_then(|v| v.trim().strip_prefix("bytes "))
            .and_then(|v| v.split_once('-'))
            .and_then(|(start, _)| start.trim().parse::<u64>().ok())
            == Some(from)
}

/// The linux/amd64 manifest of an index (the first, when several).
fn pick_amd64(index: &ImageIndex) -> Option<&Descriptor> {
    index.manifests().iter().find(|m| {
        m.platform().as_ref().is_some_and(|p| {
            p.os().to_string() == "linux" && p.architecture().to_string() == "amd64"
        })
    })
}

fn platforms(index: &ImageIndex) -> String {
    let v: Vec<String> = index
        .manifests()
        .iter()
        .filter_map(|m| m.platform().as_ref())
        .map(|p| format!("{}/{}", p.os(), p.architecture()))
        .collect();
    if v.is_empty() {
        "none declared".into()
    } else {
        v.join(", ")
    }
}

/// May a registry's redirect from `from` lead to `to`? A registry is
/// outside input: it must not turn the node's pull into a request to the
/// node itself, to link-local services, or to the apps' network, nor
/// downgrade HTTPS to plain HTTP.
pub fn redirect_allowed(from: &str, to: &url::Url) -> Result<(), String> {
    let from = url::Url::parse(from).map_err(|e| e.to_string())?;
    match to.scheme() {
        "https" => {}
        "http" if from.scheme() == "http" => {}
        "http" => return Err("HTTPS to plain HTTP".into()),
        other => return Err(format!("scheme {other}")),
    }
    let ip = match to.host() {
        Some(url::Host::Ipv4(a)) => Some(std::net::IpAddr::V4(a)),
        Some(url::Host::Ipv6(a)) => Some(std::net::IpAddr::V6(a)),
        Some(url::Host::Domain(d)) if d.eq_ignore_ascii_case("localhost") => {
            return Err("localhost".into())
        }
        Some(url::Host::Domain(_)) => None,
        None => return Err("no host".into()),
    };
    let same_host = from.host() == to.host();
    if let (Some(ip), false) = (ip, same_host) {
        let bad = match ip {
            std::net::IpAddr::V4(a) => {
                a.is_loopback()
                    || a.is_link_local()
                    || a.is_unspecified()
                    || a.is_broadcast()
                    || (a.octets()[0] == 10 && a.octets()[1] == 88)
            }
            std::net::IpAddr::V6(a) => {
                a.is_loopback() || a.is_unspecified() || (a.segments()[0] & 0xffc0) == 0xfe80
            }
        };
        if bad {
            return Err(format!(
                "{ip} is the node's own, link-local or the apps' network"
            ));
        }
    }
    Ok(())
}

/// `Bearer realm="x",service="y"` → ("Bearer", [(realm, x), (service, y)]).
pub fn parse_challenge(h: &str) -> Option<(String, Vec<(String, String)>)> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(' ').unwrap_or((h, ""));
    if scheme.is_empty() || h.len() > 4096 {
        return None;
    }
    let mut params = Vec::new();
    let mut s = rest.trim();
    while !s.is_empty() {
        let (k, after) = s.split_once('=')?;
        let k = k.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (v, next) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (q[..end].to_string(), &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        params.push((k, v));
        s = next.trim_start().trim_start_matches(',').trim_start();
    }
    Some((scheme.to_string(), params))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn redirects_stay_off_the_node_and_off_plain_http() {
        let u = |s: &str| url::Url::parse(s).unwrap();
        let from = "https://registry.example/v2/x/blobs/sha256:1";
        assert!(redirect_allowed(from, &u("https://cdn.example/blob?sig=1")).is_ok());
        assert!(redirect_allowed(from, &u("https://192.168.1.5/blob")).is_ok());
        for bad in [
            "http://cdn.example/blob",
            "https://127.0.0.1/x",
            "https://localhost/x",
            "https://169.254.169.254/latest/meta-data",
            "https://10.88.0.7:8080/",
            "https://[::1]/x",
            "file:///etc/passwd",
        ] {
            assert!(redirect_allowed(from, &u(bad)).is_err(), "{bad}");
        }
        // A local registry on plain HTTP may redirect within itself.
        let local = "http://127.0.0.1:5000/v2/x/blobs/sha256:1";
        assert!(redirect_allowed(local, &u("http://127.0.0.1:5000/y")).is_ok());
    }

    #[test]
    fn challenges_are_read_as_registries_write_them() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(s, "Bearer");
        assert_eq!(
            p,
            vec![
                ("realm".into(), "https://auth.example/token".into()),
                ("service".into(), "registry.example".into()),
                ("scope".into(), "repository:a/b:pull,push".into()),
            ]
        );
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }

    #[test]
    fn basic_credentials_are_base64() {
        assert_eq!(base64_lite::encode("user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64_lite::encode("ab"), "YWI=");
        assert_eq!(base64_lite::encode("a"), "YQ==");
    }
}
