//! One attested benchmark session, on the node's side: quote, measure,
//! quote, send the evidence, open the chunks the registry asks for.
//!
//! The steps are separate functions so that the registry's tests can take
//! real evidence from a real (software) TPM and tamper with it on the way.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fluxnode_hal::bench::{cpu, disk, mem};
use fluxnode_hal::proof::ChunkSet;
use fluxnode_hal::tpm::keys::AkBlob;
use fluxnode_hal::tpm::pcr::{Bank, PcrSelection};
use fluxnode_hal::tpm::Tpm;
use fluxnode_protocol::messages::{
    Evidence, EvidenceOutcome, OpeningsRequest, SessionOffer, SessionVerdict,
};
use fluxnode_protocol::session::{
    self, BenchProfile, ChallengeAnswer, ImageInfo, Machine, SessionReport,
};
use fluxnode_protocol::types::{PcrValues, Sha256Digest, SignedQuote};
use fluxnode_protocol::verdict::{extra_data, LABEL_END, LABEL_START};
use thiserror::Error;

use crate::client::{ClientError, RegistryClient};

/// Why a session could not be run.
#[derive(Debug, Error)]
pub enum AttestError {
    /// The TPM or a benchmark failed.
    #[error("{what}: {source}")]
    Hal {
        /// What was being done.
        what: &'static str,
        /// The failure.
        source: fluxnode_hal::Error,
    },
    /// Talking to the registry failed.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The registry sent something unusable.
    #[error("the registry's offer is unusable: {0}")]
    Offer(String),
}

fn hal(what: &'static str) -> impl FnOnce(fluxnode_hal::Error) -> AttestError {
    move |source| AttestError::Hal { what, source }
}

/// What a node proves with.
#[derive(Debug)]
pub struct Prover<'a> {
    /// The TPM.
    pub tpm: &'a mut Tpm,
    /// The AK.
    pub ak: &'a AkBlob,
    /// A directory on the disk to measure (/var).
    pub bench_dir: PathBuf,
    /// The hardware.
    pub machine: Machine,
    /// The image.
    pub image: ImageInfo,
    /// Where the event log is (may be absent: then none is sent).
    pub event_log: Option<PathBuf>,
}

/// Evidence ready to send, and the chunk outputs to open later.
#[derive(Debug)]
pub struct Collected {
    /// The evidence.
    pub evidence: Evidence,
    /// The report it carries, parsed.
    pub report: SessionReport,
    /// CPU outputs.
    pub cpu: ChunkSet,
    /// Memory outputs.
    pub memory: ChunkSet,
    /// Disk outputs.
    pub disk: ChunkSet,
}

/// The machine as hal sees it.
pub fn machine() -> Machine {
    let inv = fluxnode_hal::inventory::probe(&Default::default());
    let facts = fluxnode_hal::tier::Facts::from(&inv, None);
    Machine {
        cores: inv.cpu.cores,
        threads: inv.cpu.threads,
        ram_bytes: inv.memory.total_bytes,
        ssd_bytes: (facts.ssd_gb.unwrap_or(0.0) * 1e9) as u64,
        cpu_model: inv.cpu.model.unwrap_or_default(),
    }
}

fn signed(q: &fluxnode_hal::tpm::quote::Quote) -> SignedQuote {
    SignedQuote {
        attest: q.attest.clone(),
        signature: q.signature.clone(),
    }
}

/// Runs the profile's benchmarks on the session's seed.
fn measure(
    profile: &BenchProfile,
    seed: fluxnode_hal::seed::Seed,
    machine: &Machine,
    bench_dir: &std::path::Path,
) -> Result<(cpu::CpuResult, mem::MemResult, disk::DiskResult), AttestError> {
    // The registry judges the figures; a spread bound here would only turn
    // a busy moment into a failed session.
    let cpu = cpu::run(&cpu::CpuParams {
        max_prime: profile.cpu_max_prime,
        threads: machine.threads.max(1) as usize,
        duration: Duration::from_millis(profile.cpu_ms),
        warmup: Duration::ZERO,
        max_cv_pct: f64::INFINITY,
        seed,
    })
    .map_err(hal("CPU benchmark"))?;
    let mut mp = mem::MemParams::default_with(seed);
    mp.bytes = profile.memory_bytes;
    mp.passes = profile.memory_passes as usize;
    mp.max_cv_pct = f64::INFINITY;
    let memory = mem::run(&mp).map_err(hal("memory benchmark"))?;
    let mut dp = disk::DiskParams::flux(bench_dir.to_path_buf(), seed);
    dp.block_bytes = profile.disk_block_bytes as usize;
    dp.count = profile.disk_count;
    dp.runs = profile.disk_runs as usize;
    dp.max_range_pct = f64::INFINITY;
    dp.iops_file_bytes = 0;
    let disk = disk::run(&dp).map_err(hal("disk benchmark"))?;
    Ok((cpu, memory, disk))
}

impl Prover<'_> {
    /// Quotes, measures the offer's profile, quotes again; the evidence is
    /// not sent.
    pub fn collect(&mut self, offer: &SessionOffer) -> Result<Collected, AttestError> {
        offer.profile.validate().map_err(AttestError::Offer)?;
        if offer.nonce.len() != 32 || offer.pcrs.iter().any(|&p| p > 23) {
            return Err(AttestError::Offer(
                "nonce is not 32 bytes or a PCR index is over 23".into(),
            ));
        }
        let sel = PcrSelection(vec![(Bank::Sha256, offer.pcrs.clone())]);
        let start = self
            .tpm
            .quote(
                self.ak,
                &sel,
                &extra_data(LABEL_START, &offer.nonce, &[0; 32]),
            )
            .map_err(hal("start quote"))?;
        let began = Instant::now();
        let seed = session::seed_of(&offer.nonce);
        let (mut cpu, mut memory, mut disk) =
            measure(&offer.profile, seed, &self.machine, &self.bench_dir)?;
        let bench_ms = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
        let missing = || AttestError::Offer("a benchmark kept no chunk outputs".into());
        let (cpu_chunks, mem_chunks, disk_chunks) = (
            cpu.chunks.take().ok_or_else(missing)?,
            memory.chunks.take().ok_or_else(missing)?,
            disk.chunks.take().ok_or_else(missing)?,
        );
        let report = SessionReport {
            session_id: offer.session_id.clone(),
            nonce: offer.nonce.clone(),
            profile: offer.profile.clone(),
            machine: self.machine.clone(),
            image: self.image.clone(),
            cpu,
            memory,
            disk,
            bench_ms,
        };
        let text = serde_json::to_string(&report).map_err(|e| AttestError::Offer(e.to_string()))?;
        let digest = session::report_digest(text.as_bytes());
        let end = self
            .tpm
            .quote(self.ak, &sel, &extra_data(LABEL_END, &offer.nonce, &digest))
            .map_err(hal("end quote"))?;
        let mut pcrs = PcrValues::default();
        for p in &end.pcrs {
            if let (Bank::Sha256, Ok(v)) = (p.bank, <[u8; 32]>::try_from(p.value.as_slice())) {
                pcrs.sha256.insert(p.index, Sha256Digest(v));
            }
        }
        let event_log = match &self.event_log {
            Some(p) if p.exists() => fluxnode_hal::tpm::eventlog::read(p).unwrap_or_default(),
            _ => Vec::new(),
        };
        Ok(Collected {
            evidence: Evidence {
                session_id: offer.session_id.clone(),
                start_quote: signed(&start),
                end_quote: signed(&end),
                pcrs,
                report: text,
                event_log,
            },
            report,
            cpu: cpu_chunks,
            memory: mem_chunks,
            disk: disk_chunks,
        })
    }
}

impl Collected {
    /// Opens the chunks `challenge` asks for.
    pub fn answer(&self, challenge: &session::Challenge) -> Result<ChallengeAnswer, AttestError> {
        Ok(ChallengeAnswer {
            cpu: self
                .cpu
                .open(&challenge.cpu)
                .map_err(hal("opening CPU chunks"))?,
            memory: self
                .memory
                .open(&challenge.memory)
                .map_err(hal("opening memory chunks"))?,
            disk: self
                .disk
                .open(&challenge.disk)
                .map_err(hal("opening disk chunks"))?,
        })
    }
}

/// How a session ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The registry's verdict.
    pub verdict: SessionVerdict,
    /// Milliseconds the benchmarks ran (0 when the session ended before).
    pub bench_ms: u64,
}

/// A whole session: offer, bandwidth, evidence, openings, verdict.
pub fn run_session(
    client: &RegistryClient,
    prover: &mut Prover<'_>,
    boot_id: &str,
) -> Result<Outcome, AttestError> {
    let offer = client.open_session(&fluxnode_protocol::messages::SessionRequest {
        node_id: client.node_id().to_string(),
        boot_id: boot_id.to_string(),
        image: prover.image.clone(),
    })?;
    if offer.profile.bandwidth_bytes > 0 {
        client.bandwidth(&offer)?;
    }
    let collected = prover.collect(&offer)?;
    let bench_ms = collected.report.bench_ms;
    let verdict = match client.evidence(&collected.evidence)? {
        EvidenceOutcome::Verdict(v) => *v,
        EvidenceOutcome::SpotCheck(sc) => {
            let answer = collected.answer(&sc.challenge)?;
            client.openings(&OpeningsRequest {
                session_id: offer.session_id,
                answer,
            })?
        }
    };
    Ok(Outcome { verdict, bench_ms })
}
