//! Figures 2 and 3: simulated nodes against a real registry.
//!
//! The registry is `fluxnode_registry::server::start` on a directory made
//! by `pki::init` (its code path is the binary's: HTTPS on loopback, the
//! store named in `registry.toml`, the quick profile). Each simulated node
//! is a thread with a [`SoftTpm`] and the node's own
//! [`RegistryClient`], and does what a node does:
//!
//! 1. registration: `POST /v1/register` (EK certificate, EK, AK, node
//!    key), ActivateCredential in software, `POST /v1/activate`;
//! 2. a session: `POST /v1/sessions`, the bandwidth measurement (download
//!    then upload, the profile's bytes each way), a start quote, the
//!    synthetic benchmark ([`crate::synth`]: real chunk outputs, claimed
//!    figures), an end quote at least `bench_ms` of TPM clock later, `POST
//!    .../evidence`, the spot-check openings `POST .../openings`, the
//!    verdict.
//!
//! All nodes start registration together, then (once every node is
//! registered) all start their session together, each on a new connection
//! (a node's sessions are hours apart; its registration's connection would
//! have idled past the registry's keep-alive at the barrier). The evidence
//! goes on a new connection as well, as after a real node's benchmarks.
//! With `precompute`, every node also waits after its end quote until all
//! have one, so that the evidence and openings phases run without the load
//! generator's own benchmark work competing for the CPUs.
//!
//! The CPU split ([`CpuSplit`]) counts this process's threads by name:
//! run one load at a time in a process.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use ed25519_dalek::SigningKey;
use fluxnode_node::client::RegistryClient;
use fluxnode_protocol::messages::{
    ActivateRequest, Evidence, EvidenceOutcome, OpeningsRequest, RegisterRequest, SessionRequest,
    SessionVerdict,
};
use fluxnode_protocol::session::{self, BenchProfile, ImageInfo};
use fluxnode_protocol::types::{PcrValues, Sha256Digest};
use fluxnode_protocol::verdict::{extra_data, LABEL_END, LABEL_START};
use fluxnode_registry::config::{FileConfig, RegistryDir};
use fluxnode_registry::server::{self, Running};
use fluxnode_registry::store::{AllowedImage, Policy, Store as _};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::softnode::{Ak, AkKind, EkCa, EkPool, SoftTpm};
use crate::stats::{self, CpuSplit, Latency};
use crate::synth;

/// Where the registry keeps its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreChoice {
    /// `registry.redb` in the registry's directory.
    Redb,
    /// A private PostgreSQL cluster started for the run
    /// (`fluxnode_testkit::postgres::PgCluster`).
    Postgres,
    /// A PostgreSQL database at this URL (it must be empty: the EKs come
    /// from the key cache and a previous run registered them).
    Url(String),
}

impl std::str::FromStr for StoreChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "redb" => Ok(StoreChoice::Redb),
            "postgres" | "postgresql" | "pg" => Ok(StoreChoice::Postgres),
            u if u.starts_with("postgres://") || u.starts_with("postgresql://") => {
                Ok(StoreChoice::Url(u.to_string()))
            }
            other => Err(format!(
                "store {other:?}: use redb, postgres (a private cluster) or a postgres:// URL"
            )),
        }
    }
}

impl std::fmt::Display for StoreChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreChoice::Redb => f.write_str("redb"),
            StoreChoice::Postgres => f.write_str("postgres (private cluster, fsync off)"),
            StoreChoice::Url(_) => f.write_str("postgres (URL given)"),
        }
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Simulated nodes (one registration and one session each).
    pub nodes: usize,
    /// The registry's store.
    pub store: StoreChoice,
    /// The nodes' attestation keys.
    pub ak: AkKind,
    /// CPU events each synthetic report claims.
    pub cpu_events: u64,
    /// Wait for every node's end quote before sending any evidence.
    pub precompute: bool,
    /// Where the registry's directory is made (a temporary directory in it).
    pub work_dir: PathBuf,
    /// Progress on stderr.
    pub progress: bool,
}

/// One phase's latency, by name, in the order of the flow.
pub type Phases = Vec<(String, Latency)>;

/// What a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Simulated nodes.
    pub nodes: usize,
    /// The store, in words.
    pub store: String,
    /// The AK kind.
    pub ak: String,
    /// The profile's name.
    pub profile: String,
    /// Bytes each way of the bandwidth measurement, per session.
    pub bandwidth_bytes: u64,
    /// CPU events each report claims.
    pub cpu_events: u64,
    /// Whether the evidence waited for every end quote.
    pub precompute: bool,
    /// CPUs of this machine.
    pub cores: usize,
    /// Load average (1 min) before and after (after counts the run's own
    /// threads: a thousand nodes waiting on the registry).
    pub load_average: (Option<f64>, Option<f64>),
    /// Sessions accepted.
    pub accepted: usize,
    /// Verdicts that refused, by code.
    pub refused: BTreeMap<String, usize>,
    /// Nodes that failed before a verdict.
    pub failed: usize,
    /// The first few failures.
    pub errors: Vec<String>,
    /// Registration: wall seconds from the start until every node was registered.
    pub registration_wall_s: f64,
    /// Registrations per second.
    pub registrations_per_s: f64,
    /// Registration phases.
    pub registration: Phases,
    /// Sessions: wall seconds from the start until the last verdict.
    pub sessions_wall_s: f64,
    /// Sessions (verdicts) per second.
    pub sessions_per_s: f64,
    /// With `precompute`: wall seconds from the release of the evidence
    /// until the last verdict, and evidence-to-verdict per second.
    pub evidence_wall_s: Option<f64>,
    /// Evidence+openings completions per second (precompute only).
    pub evidence_per_s: Option<f64>,
    /// Session phases.
    pub session: Phases,
    /// CPU during registration.
    pub cpu_registration: CpuSplit,
    /// CPU during sessions.
    pub cpu_sessions: CpuSplit,
    /// CPU of the registry per registration, ms.
    pub registry_cpu_ms_per_registration: f64,
    /// CPU of the registry per session, ms.
    pub registry_cpu_ms_per_session: f64,
    /// CPU of the load generator per session, ms.
    pub loadgen_cpu_ms_per_session: f64,
    /// PostgreSQL's CPU (private cluster only), registration and sessions, s.
    pub postgres_cpu_s: Option<(f64, f64)>,
}

/// A counting semaphore: at most `cores` nodes compute synthetic outputs
/// at once (each needs a 1 MiB buffer; unbounded, 1,000 of them would
/// hold a GiB).
#[derive(Debug)]
struct Semaphore {
    free: Mutex<usize>,
    cv: Condvar,
}

impl Semaphore {
    fn new(n: usize) -> Self {
        Semaphore {
            free: Mutex::new(n.max(1)),
            cv: Condvar::new(),
        }
    }
    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        {
            let mut g = self.free.lock().unwrap_or_else(|p| p.into_inner());
            while *g == 0 {
                g = self.cv.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            *g -= 1;
        }
        let out = f();
        *self.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.cv.notify_one();
        out
    }
}

/// The registry under test and what it runs on.
struct Under {
    _tmp: tempfile::TempDir,
    running: Option<Running>,
    url: String,
    ca_pem: Vec<u8>,
    postmaster: Option<u32>,
    _pg: Option<fluxnode_testkit::postgres::PgCluster>,
}

impl Drop for Under {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            if let Err(e) = r.stop() {
                eprintln!("loadgen: the registry stopped with: {e:#}");
            }
        }
    }
}

/// The PCR values every simulated node claims (and the policy allows).
pub fn pcr_values() -> PcrValues {
    let mut v = PcrValues::default();
    for i in [9u8, 11, 12] {
        let d: [u8; 32] =
            Sha256::digest([b"fluxnode-loadgen pcr\0".as_slice(), &[i]].concat()).into();
        v.sha256.insert(i, Sha256Digest(d));
    }
    v
}

/// The image every simulated node runs.
pub fn image() -> ImageInfo {
    ImageInfo {
        version: "loadgen".into(),
        slot: "a".into(),
    }
}

fn start_registry(opts: &Options, ca: &EkCa) -> Result<Under> {
    std::fs::create_dir_all(&opts.work_dir)
        .with_context(|| format!("creating {}", opts.work_dir.display()))?;
    let tmp = tempfile::Builder::new()
        .prefix("loadgen-")
        .tempdir_in(&opts.work_dir)
        .context("a temporary directory for the registry")?;
    let (pg, store) = match &opts.store {
        StoreChoice::Redb => (None, "redb".to_string()),
        StoreChoice::Url(u) => (None, u.clone()),
        StoreChoice::Postgres => {
            let pg = fluxnode_testkit::postgres::PgCluster::try_start()
                .map_err(|e| anyhow::anyhow!("starting PostgreSQL: {e}"))?
                .context("PostgreSQL (initdb, pg_ctl) is not installed: apt-get install postgresql, or pass a postgres:// URL")?;
            let url = pg
                .new_database("loadgen")
                .map_err(|e| anyhow::anyhow!("creating the database: {e}"))?;
            (Some(pg), url)
        }
    };
    let postmaster = pg.as_ref().and_then(|pg| {
        std::fs::read_to_string(pg.dir().join("data/postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse::<u32>()
            .ok()
    });
    let cfg = FileConfig {
        listen: "127.0.0.1:0".into(),
        store: store.clone(),
        profile: "quick".into(),
        session_ttl_s: 3600,
        tier_policy: Some(PathBuf::from("tiers.toml")),
        ..FileConfig::default()
    };
    let dir = fluxnode_registry::pki::init(
        &tmp.path().join("registry"),
        &["127.0.0.1".into(), "localhost".into()],
        &cfg,
    )?;
    write(
        &dir,
        "tiers.toml",
        b"[[tier]]\nname = \"Loadgen\"\ncpu_eps = 1\n",
    )?;
    write(&dir, "ek-ca/loadgen-ca.pem", ca.pem().as_bytes())?;
    let mut policy = Policy::default();
    let img = image();
    policy.images.push(AllowedImage {
        version: img.version,
        slot: img.slot,
        pcrs: pcr_values().sha256,
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("a runtime to write the policy")?;
    if store == "redb" {
        let s = server::open_redb(&dir)?;
        rt.block_on(s.set_policy(&policy))?;
    } else {
        rt.block_on(async {
            let s = fluxnode_registry::store::postgres::PgStore::connect(&store).await?;
            s.set_policy(&policy).await
        })?;
    }
    drop(rt);
    let running = server::start(&dir, None)?;
    let url = format!("https://127.0.0.1:{}", running.addr.port());
    let ca_pem = std::fs::read(dir.path("ca.pem")).context("reading the registry's CA")?;
    Ok(Under {
        _tmp: tmp,
        running: Some(running),
        url,
        ca_pem,
        postmaster,
        _pg: pg,
    })
}

fn write(dir: &RegistryDir, name: &str, data: &[u8]) -> Result<()> {
    let p = dir.path(name);
    std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Times of one node's registration, ms.
#[derive(Debug, Clone, Copy, Default)]
struct RegTimes {
    register: f64,
    activate_credential: f64,
    activate: f64,
    total: f64,
}

/// Times of one node's session, ms.
#[derive(Debug, Clone, Copy, Default)]
struct SessTimes {
    open: f64,
    bandwidth: f64,
    bench: f64,
    synth_compute: f64,
    evidence: f64,
    openings: f64,
    total: f64,
}

#[derive(Debug, Default)]
struct NodeResult {
    reg: Option<RegTimes>,
    sess: Option<SessTimes>,
    verdict: Option<(bool, Option<String>)>,
    error: Option<String>,
}

/// A node ready to register.
struct Node {
    tpm: SoftTpm,
    key: SigningKey,
}

fn make_node(i: usize, pool: &EkPool, ca: &EkCa, opts: &Options) -> Result<Node> {
    let ek = pool.key(i)?;
    let ak = match opts.ak {
        AkKind::Ecc => Ak::ecc()?,
        AkKind::Rsa => Ak::rsa(pool.key(opts.nodes + i)?)?,
    };
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).context("reading the random source")?;
    // Each TPM's clock starts somewhere else, as real ones do.
    let tpm = SoftTpm::new(ek, ca, ak, 3_600_000 + (i as u64) * 7_919)?;
    Ok(Node {
        tpm,
        key: SigningKey::from_bytes(&seed),
    })
}

fn register(node: &Node, url: &str, ca_pem: &[u8]) -> Result<(RegistryClient, RegTimes)> {
    let client = RegistryClient::new(url, ca_pem, node.key.clone())?;
    let req = RegisterRequest {
        ek_certificate: node.tpm.ek_certificate().to_vec(),
        ek_public: node.tpm.ek_public().to_vec(),
        ak_public: node.tpm.ak().public().to_vec(),
        node_key: node.key.verifying_key().as_bytes().to_vec(),
        image: image(),
    };
    let t0 = Instant::now();
    let resp = client.register(&req)?;
    let t1 = Instant::now();
    let secret = node
        .tpm
        .activate_credential(&resp.id_object, &resp.encrypted_secret)?;
    let t2 = Instant::now();
    let client = client.as_node(&resp.node_id);
    client.activate(&ActivateRequest {
        node_id: resp.node_id.clone(),
        secret,
    })?;
    let t3 = Instant::now();
    Ok((
        client,
        RegTimes {
            register: ms(t1 - t0),
            activate_credential: ms(t2 - t1),
            activate: ms(t3 - t2),
            total: ms(t3 - t0),
        },
    ))
}

/// A session up to its end quote.
struct Prepared {
    evidence: Evidence,
    synth: synth::Synthetic,
    times: SessTimes,
    started: Instant,
}

fn prepare(
    node: &Node,
    client: &RegistryClient,
    opts: &Options,
    compute: &Semaphore,
) -> Result<Prepared> {
    let pcrs = pcr_values();
    let t0 = Instant::now();
    let offer = client.open_session(&SessionRequest {
        node_id: client.node_id().to_string(),
        boot_id: "loadgen-boot".into(),
        image: image(),
    })?;
    let t1 = Instant::now();
    if offer.profile.bandwidth_bytes > 0 {
        client.bandwidth(&offer)?;
    }
    let t2 = Instant::now();
    let tpm = &node.tpm;
    let start_clock = tpm.clock_ms();
    let start = tpm.quote_at(
        start_clock,
        &offer.pcrs,
        &pcrs,
        &extra_data(LABEL_START, &offer.nonce, &[0; 32]),
    )?;
    let synth = compute.run(|| synth::compute(&offer.profile, &offer.nonce, opts.cpu_events))?;
    let (_, text) = synth.report(&offer.session_id, &offer.nonce, &offer.profile, &image())?;
    let digest = session::report_digest(text.as_bytes());
    // The TPM clock must show the claimed time between the quotes.
    loop {
        let now = tpm.clock_ms();
        let due = start_clock + synth.bench_ms + 1;
        if now >= due {
            break;
        }
        std::thread::sleep(Duration::from_millis(due - now));
    }
    let end = tpm.quote(
        &offer.pcrs,
        &pcrs,
        &extra_data(LABEL_END, &offer.nonce, &digest),
    )?;
    let t3 = Instant::now();
    Ok(Prepared {
        evidence: Evidence {
            session_id: offer.session_id.clone(),
            start_quote: start,
            end_quote: end,
            pcrs,
            report: text,
            event_log: Vec::new(),
        },
        times: SessTimes {
            open: ms(t1 - t0),
            bandwidth: ms(t2 - t1),
            bench: ms(t3 - t2),
            synth_compute: synth.compute_ms,
            ..SessTimes::default()
        },
        synth,
        started: t0,
    })
}

fn finish(client: &RegistryClient, p: Prepared) -> Result<(SessTimes, SessionVerdict)> {
    let mut times = p.times;
    let t3 = Instant::now();
    let outcome = client.evidence(&p.evidence)?;
    let t4 = Instant::now();
    times.evidence = ms(t4 - t3);
    let verdict = match outcome {
        EvidenceOutcome::Verdict(v) => *v,
        EvidenceOutcome::SpotCheck(sc) => {
            let answer = p.synth.answer(&sc.challenge)?;
            let v = client.openings(&OpeningsRequest {
                session_id: p.evidence.session_id.clone(),
                answer,
            })?;
            times.openings = ms(t4.elapsed());
            v
        }
    };
    times.total = ms(p.started.elapsed());
    Ok((times, verdict))
}

/// Runs the load with EKs from `pool`.
pub fn run(opts: &Options, pool: &EkPool) -> Result<LoadReport> {
    let needed = match opts.ak {
        AkKind::Ecc => opts.nodes,
        AkKind::Rsa => 2 * opts.nodes,
    };
    if pool.capacity() < needed {
        bail!(
            "the EK pool holds {} keys, {needed} needed",
            pool.capacity()
        );
    }
    if opts.nodes == 0 {
        bail!("no nodes");
    }
    let load_before = stats::load_average();
    let ca = EkCa::new()?;
    let under = start_registry(opts, &ca)?;
    let profile = BenchProfile::quick();
    let say = |m: String| {
        if opts.progress {
            eprintln!("loadgen: {m}");
        }
    };
    say(format!(
        "registry at {} ({}); making {} simulated TPMs",
        under.url, opts.store, opts.nodes
    ));

    // Every simulated TPM first (EK from the pool, its certificate, the AK).
    let made: Vec<Result<Node>> = {
        let next = AtomicUsize::new(0);
        let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
        let slots: Vec<Mutex<Option<Result<Node>>>> =
            (0..opts.nodes).map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(slot) = slots.get(i) else { break };
                    let n = make_node(i, pool, &ca, opts);
                    *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(n);
                });
            }
        });
        slots
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .unwrap_or_else(|| Err(anyhow::anyhow!("node not made")))
            })
            .collect()
    };
    let nodes: Vec<Node> = made.into_iter().collect::<Result<_>>()?;

    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let compute = Arc::new(Semaphore::new(cores));
    let parties = opts.nodes + 1;
    let go = Arc::new(Barrier::new(parties));
    let registered = Arc::new(Barrier::new(parties));
    let quoted = opts.precompute.then(|| Arc::new(Barrier::new(parties)));
    let done_reg = Arc::new(AtomicUsize::new(0));
    let done_sess = Arc::new(AtomicUsize::new(0));
    let url = Arc::new(under.url.clone());
    let ca_pem = Arc::new(under.ca_pem.clone());
    let opts_shared = Arc::new(opts.clone());

    let mut handles = Vec::with_capacity(opts.nodes);
    for (i, node) in nodes.into_iter().enumerate() {
        let (go, registered, quoted) = (go.clone(), registered.clone(), quoted.clone());
        let (done_reg, done_sess) = (done_reg.clone(), done_sess.clone());
        let (url, ca_pem, opts, compute) = (
            url.clone(),
            ca_pem.clone(),
            opts_shared.clone(),
            compute.clone(),
        );
        let h = std::thread::Builder::new()
            .name(format!("node-{i}"))
            .stack_size(1 << 20)
            .spawn(move || {
                let mut r = NodeResult::default();
                go.wait();
                let reg = register(&node, &url, &ca_pem);
                done_reg.fetch_add(1, Ordering::Relaxed);
                registered.wait();
                // A session starts on a new connection, as a node's does
                // (its sessions are hours apart); the registration's would
                // have idled at the barrier, past the registry's keep-alive.
                let client = |id: &str| {
                    RegistryClient::new(&url, &ca_pem, node.key.clone()).map(|c| c.as_node(id))
                };
                let prepared = match reg {
                    Ok((registered, t)) => {
                        r.reg = Some(t);
                        client(registered.node_id())
                            .map_err(anyhow::Error::from)
                            .and_then(|c| prepare(&node, &c, &opts, &compute).map(|p| (c, p)))
                    }
                    Err(e) => Err(e.context("registration")),
                };
                if let Some(q) = &quoted {
                    q.wait();
                }
                // The evidence goes on a new connection too. The registry
                // closes a connection idle for 10 s (hyper's header read
                // timeout), and a node's benchmarks usually take longer:
                // its client then finds the pooled connection closed and
                // opens another. Here the benchmark wait is stretched by
                // 1,000 nodes sharing the CPUs to anywhere around 10 s, and
                // reusing the connection raced the registry's close (a
                // reset POST, reported in docs/BENCHMARKS.md).
                let prepared = prepared.and_then(|(c, p)| Ok((client(c.node_id())?, p)));
                match prepared.and_then(|(client, p)| finish(&client, p)) {
                    Ok((t, v)) => {
                        r.sess = Some(t);
                        r.verdict = Some((v.accepted, v.rejection.map(|x| x.code)));
                    }
                    Err(e) => r.error = Some(format!("node {i}: {e:#}")),
                }
                done_sess.fetch_add(1, Ordering::Relaxed);
                r
            })
            .context("spawning a node thread")?;
        handles.push(h);
    }

    // Progress every 10 s while the nodes run.
    let stop = Arc::new(AtomicBool::new(false));
    let reporter = opts.progress.then(|| {
        let (stop, done_reg, done_sess, n) = (
            stop.clone(),
            done_reg.clone(),
            done_sess.clone(),
            opts.nodes,
        );
        std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut last = Instant::now();
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                if last.elapsed() >= Duration::from_secs(10) {
                    last = Instant::now();
                    eprintln!(
                        "loadgen: {:>4.0} s: {}/{n} registered, {}/{n} sessions done",
                        t0.elapsed().as_secs_f64(),
                        done_reg.load(Ordering::Relaxed),
                        done_sess.load(Ordering::Relaxed)
                    );
                }
            }
        })
    });

    let pg_cpu = || under.postmaster.and_then(stats::process_tree_cpu_s);
    go.wait();
    let t_go = Instant::now();
    let cpu0 = CpuSplit::sample();
    let pg0 = pg_cpu();
    say(format!("{} nodes registering", opts.nodes));
    registered.wait();
    let t_reg = Instant::now();
    let cpu1 = CpuSplit::sample();
    let pg1 = pg_cpu();
    say(format!(
        "registered in {:.1} s; {} sessions running",
        (t_reg - t_go).as_secs_f64(),
        opts.nodes
    ));
    let t_quoted = quoted.as_ref().map(|q| {
        q.wait();
        say("every end quote made; evidence released".into());
        Instant::now()
    });
    let results: Vec<NodeResult> = handles
        .into_iter()
        .map(|h| {
            h.join().unwrap_or_else(|_| NodeResult {
                error: Some("a node thread panicked".into()),
                ..NodeResult::default()
            })
        })
        .collect();
    let t_end = Instant::now();
    let cpu2 = CpuSplit::sample();
    let pg2 = pg_cpu();
    stop.store(true, Ordering::Relaxed);
    if let Some(r) = reporter {
        let _ = r.join();
    }
    drop(under);

    let mut accepted = 0;
    let mut refused = BTreeMap::new();
    let mut errors = Vec::new();
    let mut failed = 0;
    for r in &results {
        match (&r.verdict, &r.error) {
            (Some((true, _)), _) => accepted += 1,
            (Some((false, code)), _) => {
                *refused
                    .entry(code.clone().unwrap_or_else(|| "(none)".into()))
                    .or_insert(0) += 1;
            }
            (None, e) => {
                failed += 1;
                if errors.len() < 10 {
                    errors.push(e.clone().unwrap_or_else(|| "no verdict".into()));
                }
            }
        }
    }
    let regs: Vec<RegTimes> = results.iter().filter_map(|r| r.reg).collect();
    let sess: Vec<SessTimes> = results.iter().filter_map(|r| r.sess).collect();
    let lat = |f: &dyn Fn(&SessTimes) -> f64| Latency::of(&sess.iter().map(f).collect::<Vec<_>>());
    let rlat = |f: &dyn Fn(&RegTimes) -> f64| Latency::of(&regs.iter().map(f).collect::<Vec<_>>());
    let registration = vec![
        ("register".to_string(), rlat(&|t| t.register)),
        (
            "activate_credential (node)".to_string(),
            rlat(&|t| t.activate_credential),
        ),
        ("activate".to_string(), rlat(&|t| t.activate)),
        ("registration (total)".to_string(), rlat(&|t| t.total)),
    ];
    let session = vec![
        ("open".to_string(), lat(&|t| t.open)),
        ("bandwidth".to_string(), lat(&|t| t.bandwidth)),
        ("bench (node)".to_string(), lat(&|t| t.bench)),
        ("  of which outputs".to_string(), lat(&|t| t.synth_compute)),
        ("evidence".to_string(), lat(&|t| t.evidence)),
        ("openings".to_string(), lat(&|t| t.openings)),
        ("session (total)".to_string(), lat(&|t| t.total)),
        (
            "session less bench".to_string(),
            lat(&|t| t.total - t.bench),
        ),
    ];
    let reg_wall = (t_reg - t_go).as_secs_f64();
    let sess_wall = (t_end - t_reg).as_secs_f64();
    let cpu_registration = cpu1.since(&cpu0);
    let cpu_sessions = cpu2.since(&cpu1);
    let per = |s: f64, n: usize| if n == 0 { 0.0 } else { s * 1000.0 / n as f64 };
    let evidence_wall_s = t_quoted.map(|t| (t_end - t).as_secs_f64());
    Ok(LoadReport {
        nodes: opts.nodes,
        store: opts.store.to_string(),
        ak: opts.ak.to_string(),
        profile: profile.name.clone(),
        bandwidth_bytes: profile.bandwidth_bytes,
        cpu_events: opts.cpu_events,
        precompute: opts.precompute,
        cores,
        load_average: (load_before, stats::load_average()),
        accepted,
        refused,
        failed,
        errors,
        registration_wall_s: reg_wall,
        registrations_per_s: regs.len() as f64 / reg_wall.max(1e-9),
        registration,
        sessions_wall_s: sess_wall,
        sessions_per_s: sess.len() as f64 / sess_wall.max(1e-9),
        evidence_wall_s,
        evidence_per_s: evidence_wall_s.map(|w| sess.len() as f64 / w.max(1e-9)),
        session,
        cpu_registration,
        cpu_sessions,
        registry_cpu_ms_per_registration: per(cpu_registration.registry_s, regs.len()),
        registry_cpu_ms_per_session: per(cpu_sessions.registry_s, sess.len()),
        loadgen_cpu_ms_per_session: per(cpu_sessions.loadgen_s, sess.len()),
        postgres_cpu_s: match (pg0, pg1, pg2) {
            (Some(a), Some(b), Some(c)) => Some((b - a, c - b)),
            _ => None,
        },
    })
}

/// The report as a table for people.
pub fn table(r: &LoadReport) -> String {
    let mut s = String::new();
    let la = |v: Option<f64>| v.map_or("?".to_string(), |v| format!("{v:.1}"));
    s += &format!(
        "store {}, profile {} ({} KiB each way of bandwidth), {} nodes, AK {}, {} CPU events claimed{}; {} cores, load average {} before the run\n",
        r.store,
        r.profile,
        r.bandwidth_bytes / 1024,
        r.nodes,
        r.ak,
        r.cpu_events,
        if r.precompute { ", evidence after every end quote" } else { "" },
        r.cores,
        la(r.load_average.0),
    );
    let refused: Vec<String> = r.refused.iter().map(|(c, n)| format!("{c} ×{n}")).collect();
    s += &format!(
        "accepted {}/{} (refused: {}; failed: {})\n",
        r.accepted,
        r.nodes,
        if refused.is_empty() {
            "none".into()
        } else {
            refused.join(", ")
        },
        r.failed
    );
    for e in &r.errors {
        s += &format!("  error: {e}\n");
    }
    let rows = |s: &mut String, phases: &Phases| {
        *s += &format!(
            "  {:<28} {:>9} {:>9} {:>9} {:>9}\n",
            "phase (ms)", "p50", "p99", "max", "mean"
        );
        for (name, l) in phases {
            *s += &format!(
                "  {:<28} {:>9.1} {:>9.1} {:>9.1} {:>9.1}\n",
                name, l.p50_ms, l.p99_ms, l.max_ms, l.mean_ms
            );
        }
    };
    s += &format!(
        "registration: {} nodes in {:.1} s = {:.1}/s; registry CPU {:.1} ms per registration\n",
        r.nodes, r.registration_wall_s, r.registrations_per_s, r.registry_cpu_ms_per_registration
    );
    rows(&mut s, &r.registration);
    s += &format!(
        "sessions: {} in {:.1} s = {:.1}/s{}\n",
        r.nodes,
        r.sessions_wall_s,
        r.sessions_per_s,
        match (r.evidence_wall_s, r.evidence_per_s) {
            (Some(w), Some(p)) => format!("; evidence to verdict for all: {w:.1} s = {p:.1}/s"),
            _ => String::new(),
        }
    );
    rows(&mut s, &r.session);
    s += &format!(
        "CPU during sessions: registry {:.1} s ({:.1} ms/session), load generator {:.1} s ({:.1} ms/session){}\n",
        r.cpu_sessions.registry_s,
        r.registry_cpu_ms_per_session,
        r.cpu_sessions.loadgen_s,
        r.loadgen_cpu_ms_per_session,
        r.postgres_cpu_s
            .map_or(String::new(), |(a, b)| format!(", PostgreSQL {b:.1} s (registration {a:.1} s)")),
    );
    s
}

/// The default work directory: `<target>/loadgen`.
pub fn default_work_dir() -> PathBuf {
    crate::softnode::default_key_dir()
        .parent()
        .map_or_else(|| Path::new("target").to_path_buf(), Path::to_path_buf)
        .join("loadgen")
}
