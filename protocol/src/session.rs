//! An attested benchmark session's report: what the node ran, what it
//! measured, and the checks the registry makes of it beyond the quotes
//! (the report belongs to the session, the figures are physically
//! possible, the spot-check openings recompute).
//!
//! The report travels as JSON text inside the evidence. The registry
//! hashes exactly the bytes it received (the end quote's extraData binds
//! that hash), then parses them: no canonical re-encoding is needed, and
//! none could be got wrong.

use std::fmt;

use fluxnode_hal::bench::{cpu::CpuResult, disk::DiskResult, mem::MemResult};
use fluxnode_hal::proof::{self, Commitment, Openings, Workload};
use fluxnode_hal::seed::Seed;
use fluxnode_hal::tier::Facts;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// Largest report accepted, bytes of JSON.
pub const MAX_REPORT_BYTES: usize = 256 * 1024;
/// Most chunks one spot-check asks for, per workload.
pub const MAX_SPOT_CHECKS: u32 = 64;

/// The benchmark parameters a session prescribes. The registry picks
/// them; the node runs exactly these and echoes them in its report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BenchProfile {
    /// A name for people (`flux`, `quick`).
    pub name: String,
    /// sysbench's `--cpu-max-prime`.
    pub cpu_max_prime: u64,
    /// Measured CPU time, milliseconds (sysbench's `--time`).
    pub cpu_ms: u64,
    /// Memory buffer swept, bytes (a multiple of 1 MiB).
    pub memory_bytes: u64,
    /// Memory passes each way.
    pub memory_passes: u32,
    /// dd's `bs`.
    pub disk_block_bytes: u64,
    /// dd's `count`.
    pub disk_count: u64,
    /// Sequential disk runs (Flux: 3, lowest dropped).
    pub disk_runs: u32,
    /// Bytes each way for the registry's own bandwidth measurement.
    pub bandwidth_bytes: u64,
    /// Chunks the registry opens per workload.
    pub spot_checks: u32,
}

impl BenchProfile {
    /// Flux's tier definition: max prime 60000 for 20 s, dd with bs=64k
    /// count=16k three times, 512 MiB of memory, 25 MB each way of
    /// bandwidth, 16 chunks opened per workload.
    pub fn flux() -> Self {
        BenchProfile {
            name: "flux".into(),
            cpu_max_prime: 60_000,
            cpu_ms: 20_000,
            memory_bytes: 512 << 20,
            memory_passes: 5,
            disk_block_bytes: 64 << 10,
            disk_count: 16 << 10,
            disk_runs: 3,
            bandwidth_bytes: 25_000_000,
            spot_checks: 16,
        }
    }

    /// A short profile for tests and demos: about three seconds of work.
    /// The figures mean less; the protocol is the same.
    pub fn quick() -> Self {
        BenchProfile {
            name: "quick".into(),
            cpu_max_prime: 10_000,
            cpu_ms: 1_000,
            memory_bytes: 16 << 20,
            memory_passes: 2,
            disk_block_bytes: 64 << 10,
            disk_count: 256,
            disk_runs: 1,
            bandwidth_bytes: 1 << 20,
            spot_checks: 4,
        }
    }

    /// Looks a profile up by name.
    pub fn named(name: &str) -> Option<Self> {
        match name {
            "flux" => Some(Self::flux()),
            "quick" => Some(Self::quick()),
            _ => None,
        }
    }

    /// Refuses parameters that would make a node (or the registry's
    /// recomputation) work without bound, or that mean nothing.
    pub fn validate(&self) -> Result<(), String> {
        let within = |what: &str, v: u64, lo: u64, hi: u64| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{what} = {v} is outside {lo}..={hi}"))
            }
        };
        within(
            "cpu_max_prime",
            self.cpu_max_prime,
            100,
            proof::MAX_PRIME_LIMIT,
        )?;
        within("cpu_ms", self.cpu_ms, 100, 120_000)?;
        within("memory_bytes", self.memory_bytes, 1 << 20, 64 << 30)?;
        if !self.memory_bytes.is_multiple_of(1 << 20) {
            return Err("memory_bytes must be a multiple of 1 MiB".into());
        }
        within("memory_passes", self.memory_passes.into(), 1, 100)?;
        within("disk_block_bytes", self.disk_block_bytes, 512, 16 << 20)?;
        within("disk_count", self.disk_count, 1, 1 << 24)?;
        within("disk_runs", self.disk_runs.into(), 1, 10)?;
        within("bandwidth_bytes", self.bandwidth_bytes, 0, 1 << 30)?;
        within(
            "spot_checks",
            self.spot_checks.into(),
            1,
            MAX_SPOT_CHECKS.into(),
        )?;
        Ok(())
    }
}

/// The benchmark seed of a session: SHA-256("fluxnode/seed/v1\0" ‖ nonce).
/// Derived, not sent separately, so a node cannot run on a seed of its
/// choosing and the registry needs to keep nothing but the nonce.
pub fn seed_of(nonce: &[u8]) -> Seed {
    let mut h = Sha256::new();
    h.update(b"fluxnode/seed/v1\0");
    h.update(nonce);
    Seed(h.finalize().into())
}

/// What the node says about its hardware (not measured by a benchmark:
/// the registry checks it only for plausibility against the figures).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Machine {
    /// Physical cores.
    pub cores: u32,
    /// Hardware threads.
    pub threads: u32,
    /// RAM, bytes.
    pub ram_bytes: u64,
    /// Solid-state storage, bytes.
    pub ssd_bytes: u64,
    /// CPU model, as /proc/cpuinfo says.
    pub cpu_model: String,
}

/// The image a node runs, as it says (PCR 11 is what proves it).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Version string from the image's manifest.
    pub version: String,
    /// Boot slot, `a` or `b`.
    pub slot: String,
}

/// What a node measured in a session: the JSON the end quote binds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionReport {
    /// The session this report belongs to.
    pub session_id: String,
    /// The session's nonce, hex.
    #[serde(with = "hex::serde")]
    pub nonce: Vec<u8>,
    /// The profile run (must be the session's).
    pub profile: BenchProfile,
    /// The hardware.
    pub machine: Machine,
    /// The image.
    pub image: ImageInfo,
    /// CPU, all threads.
    pub cpu: CpuResult,
    /// Memory.
    pub memory: MemResult,
    /// Disk.
    pub disk: DiskResult,
    /// Wall time of the benchmarks between the two quotes, milliseconds:
    /// the TPM clock must show at least this much.
    pub bench_ms: u64,
}

impl SessionReport {
    /// Parses a report as received. Outside input: any bytes give a report
    /// or an error.
    pub fn parse(bytes: &[u8]) -> Result<Self, ReportError> {
        if bytes.len() > MAX_REPORT_BYTES {
            return Err(ReportError::Malformed(format!(
                "{} bytes, more than the {MAX_REPORT_BYTES} allowed",
                bytes.len()
            )));
        }
        serde_json::from_slice(bytes).map_err(|e| ReportError::Malformed(e.to_string()))
    }

    /// The figures the tier policy reads (bandwidth is the registry's own
    /// measurement, passed in; a node's self-report never counts).
    pub fn facts(&self, bandwidth_mbps: Option<f64>) -> Facts {
        Facts {
            cores: Some(f64::from(self.machine.cores)),
            threads: Some(f64::from(self.machine.threads)),
            ram_gb: Some(self.machine.ram_bytes as f64 / 1e9),
            ssd_gb: Some(self.machine.ssd_bytes as f64 / 1e9),
            cpu_eps: Some(self.cpu.eps),
            disk_write_mbps: Some(self.disk.write_mbps),
            bandwidth_mbps,
        }
    }

    /// The commitments, by workload.
    pub fn commitments(&self) -> [(&'static str, &Commitment); 3] {
        [
            ("cpu", &self.cpu.commitment),
            ("memory", &self.memory.commitment),
            ("disk", &self.disk.commitment),
        ]
    }
}

/// SHA-256 of the report bytes exactly as sent: the end quote binds this.
pub fn report_digest(report_json: &[u8]) -> [u8; 32] {
    Sha256::digest(report_json).into()
}

/// Why a report is refused.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ReportError {
    /// Not a report.
    #[error("the report does not parse: {0}")]
    Malformed(String),
    /// A field does not match the session.
    #[error("the report's {field} does not match the session's")]
    SessionMismatch {
        /// Which field.
        field: &'static str,
    },
    /// A commitment's workload, seed or size is not what the session prescribed.
    #[error("the {workload} commitment does not match the session: {why}")]
    CommitmentMismatch {
        /// cpu, memory or disk.
        workload: &'static str,
        /// What differs.
        why: String,
    },
    /// A figure no real machine produces.
    #[error("implausible {figure}: {why}")]
    Implausible {
        /// Which figure.
        figure: &'static str,
        /// Why.
        why: String,
    },
    /// The spot-check openings fail.
    #[error("spot-check of the {workload} benchmark failed: {why}")]
    OpeningInvalid {
        /// cpu, memory or disk.
        workload: &'static str,
        /// Why.
        why: String,
    },
}

impl ReportError {
    /// Stable code, as for [`crate::verdict::Verdict::code`].
    pub fn code(&self) -> &'static str {
        match self {
            ReportError::Malformed(_) => "report_malformed",
            ReportError::SessionMismatch { .. } => "report_session_mismatch",
            ReportError::CommitmentMismatch { .. } => "report_commitment_mismatch",
            ReportError::Implausible { .. } => "implausible_figure",
            ReportError::OpeningInvalid { .. } => "opening_invalid",
        }
    }
}

/// The session as the registry issued it: what a report must match.
#[derive(Debug, Clone, Copy)]
pub struct SessionTerms<'a> {
    /// Session id.
    pub session_id: &'a str,
    /// Its nonce.
    pub nonce: &'a [u8],
    /// Its profile.
    pub profile: &'a BenchProfile,
}

/// Events per second one hardware thread can reach at `max_prime`.
///
/// One event divides every odd candidate below `max_prime` by trial
/// division up to its square root: about (2/3)·P^1.5 / ln P divisions for
/// the primes, which dominate. At 60 000 that is ~9·10^5 divisions; a
/// 64-bit `div` takes at least ~10 cycles, so a 6 GHz core manages under
/// 700 events/s. The bound is four times that (2 800/s), scaled by P^1.5
/// for other P, but never below the 60 000 figure and, for tiny P (where
/// loop overhead rules), never above 50 000 · 60 000 / P.
pub fn max_eps_per_thread(max_prime: u64) -> f64 {
    let p = max_prime.max(100) as f64;
    let at_60k = 2_800.0;
    (at_60k * (60_000f64 / p).powf(1.5))
        .min(50_000.0 * (60_000f64 / p))
        .max(at_60k)
}

/// Most memory bandwidth one machine shows, GB/s (HBM3e-class parts reach
/// ~5 TB/s on a GPU; host memory tops out far below that).
pub const MAX_MEMORY_GBPS: f64 = 2_000.0;
/// Most sequential write speed, MB/s (a PCIe 5.0 x16 array is ~60 GB/s).
pub const MAX_DISK_MBPS: f64 = 100_000.0;
/// Most hardware threads one node has.
pub const MAX_THREADS: u32 = 4_096;

fn finite_nonneg(figure: &'static str, v: f64) -> Result<f64, ReportError> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(ReportError::Implausible {
            figure,
            why: format!("{v} is not a finite, non-negative number"),
        })
    }
}

fn close(a: f64, b: f64, rel: f64) -> bool {
    (a - b).abs() <= rel * a.abs().max(b.abs()) + 1e-9
}

/// Checks a report against its session: the session id, nonce and profile
/// are the session's; each commitment is over the session's seed with the
/// profile's parameters and the size the figures imply; and the figures
/// are physically possible and consistent with each other.
pub fn check_report(report: &SessionReport, terms: &SessionTerms<'_>) -> Result<(), ReportError> {
    let mismatch = |field| Err(ReportError::SessionMismatch { field });
    if report.session_id != terms.session_id {
        return mismatch("session_id");
    }
    if report.nonce != terms.nonce {
        return mismatch("nonce");
    }
    if &report.profile != terms.profile {
        return mismatch("profile");
    }
    let p = terms.profile;
    let seed = seed_of(terms.nonce);
    let commit = |workload: &'static str, c: &Commitment, want: Workload, chunks: u64| {
        let why = if c.seed != seed {
            Some("seed is not the session's".to_string())
        } else if c.workload != want {
            Some(format!("workload {:?}, expected {want:?}", c.workload))
        } else if c.chunks != chunks {
            Some(format!("{} chunks, the figures imply {chunks}", c.chunks))
        } else {
            None
        };
        match why {
            Some(why) => Err(ReportError::CommitmentMismatch { workload, why }),
            None => Ok(()),
        }
    };

    // CPU.
    let cpu = &report.cpu;
    let threads = report.machine.threads;
    if threads == 0
        || threads > MAX_THREADS
        || report.machine.cores == 0
        || report.machine.cores > threads
    {
        return Err(ReportError::Implausible {
            figure: "machine",
            why: format!("{} cores, {threads} threads", report.machine.cores),
        });
    }
    if cpu.threads != threads as usize {
        return Err(ReportError::Implausible {
            figure: "cpu_eps",
            why: format!("ran {} threads on a machine of {threads}", cpu.threads),
        });
    }
    if cpu.max_prime != p.cpu_max_prime {
        return mismatch("cpu.max_prime");
    }
    commit(
        "cpu",
        &cpu.commitment,
        Workload::Cpu {
            max_prime: p.cpu_max_prime,
        },
        cpu.events,
    )?;
    let eps = finite_nonneg("cpu_eps", cpu.eps)?;
    let dur = finite_nonneg("cpu duration", cpu.duration_s)?;
    if dur * 1000.0 + 50.0 < p.cpu_ms as f64 * 0.95 {
        return Err(ReportError::Implausible {
            figure: "cpu duration",
            why: format!("{dur:.3} s measured, the profile asks for {} ms", p.cpu_ms),
        });
    }
    if cpu.events == 0 || !close(eps, cpu.events as f64 / dur.max(1e-9), 0.02) {
        return Err(ReportError::Implausible {
            figure: "cpu_eps",
            why: format!("{eps} events/s is not {} events in {dur} s", cpu.events),
        });
    }
    let max = max_eps_per_thread(p.cpu_max_prime) * f64::from(threads);
    if eps > max {
        return Err(ReportError::Implausible {
            figure: "cpu_eps",
            why: format!(
                "{eps:.0} events/s at max prime {} is more than {max:.0}, what {threads} threads of the fastest CPU could do",
                p.cpu_max_prime
            ),
        });
    }

    // Memory.
    let mem = &report.memory;
    if mem.buffer_bytes != p.memory_bytes {
        return mismatch("memory.buffer_bytes");
    }
    commit(
        "memory",
        &mem.commitment,
        Workload::Memory {
            chunk_bytes: fluxnode_hal::bench::mem::CHUNK_BYTES,
        },
        p.memory_bytes / fluxnode_hal::bench::mem::CHUNK_BYTES,
    )?;
    for (figure, v) in [
        ("memory read", mem.read_gbps),
        ("memory write", mem.write_gbps),
    ] {
        if finite_nonneg(figure, v)? > MAX_MEMORY_GBPS {
            return Err(ReportError::Implausible {
                figure,
                why: format!("{v:.0} GB/s is more than {MAX_MEMORY_GBPS} GB/s"),
            });
        }
    }
    if report.machine.ram_bytes < p.memory_bytes {
        return Err(ReportError::Implausible {
            figure: "ram",
            why: format!(
                "{} bytes of RAM cannot hold the {}-byte buffer the benchmark swept",
                report.machine.ram_bytes, p.memory_bytes
            ),
        });
    }

    // Disk.
    let disk = &report.disk;
    let want_bytes = p.disk_block_bytes.saturating_mul(p.disk_count);
    if disk.bytes != want_bytes {
        return mismatch("disk.bytes");
    }
    commit(
        "disk",
        &disk.commitment,
        Workload::Disk {
            block_bytes: p.disk_block_bytes,
            data: disk.data,
        },
        p.disk_count,
    )?;
    if disk.runs_mbps.len() != p.disk_runs as usize || disk.runs_s.len() != p.disk_runs as usize {
        return mismatch("disk runs");
    }
    for (&mbps, &s) in disk.runs_mbps.iter().zip(&disk.runs_s) {
        finite_nonneg("disk_write_mbps", mbps)?;
        finite_nonneg("disk run time", s)?;
        if s <= 0.0 || !close(mbps, want_bytes as f64 / 1e6 / s, 0.02) {
            return Err(ReportError::Implausible {
                figure: "disk_write_mbps",
                why: format!("a run of {mbps} MB/s is not {want_bytes} bytes in {s} s"),
            });
        }
        if mbps > MAX_DISK_MBPS {
            return Err(ReportError::Implausible {
                figure: "disk_write_mbps",
                why: format!("{mbps:.0} MB/s is more than {MAX_DISK_MBPS} MB/s"),
            });
        }
    }
    let (figure, _) = fluxnode_hal::bench::disk::flux_figure(&disk.runs_mbps);
    if !close(figure, disk.write_mbps, 0.001) {
        return Err(ReportError::Implausible {
            figure: "disk_write_mbps",
            why: format!(
                "{} MB/s is not the runs' figure (lowest dropped, mean of the rest: {figure})",
                disk.write_mbps
            ),
        });
    }

    // The benchmarks fit in the time claimed between the quotes.
    let measured_ms = dur * 1000.0 + disk.runs_s.iter().sum::<f64>() * 1000.0;
    if (report.bench_ms as f64) + 50.0 < measured_ms {
        return Err(ReportError::Implausible {
            figure: "bench_ms",
            why: format!(
                "{} ms claimed between the quotes, but the CPU and disk runs alone took {measured_ms:.0} ms",
                report.bench_ms
            ),
        });
    }
    Ok(())
}

/// The chunks the registry asks to see, per workload, drawn from a fresh
/// challenge nonce it makes only after the end quote has bound the
/// commitments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// CPU event indices.
    pub cpu: Vec<u64>,
    /// Memory chunk indices.
    pub memory: Vec<u64>,
    /// Disk block indices.
    pub disk: Vec<u64>,
}

impl Challenge {
    /// The challenge for `report` from the registry's `challenge_nonce`.
    pub fn draw(challenge_nonce: &[u8], report: &SessionReport) -> Self {
        let k = report.profile.spot_checks.min(MAX_SPOT_CHECKS) as usize;
        Challenge {
            cpu: proof::challenge(challenge_nonce, &report.cpu.commitment, k),
            memory: proof::challenge(challenge_nonce, &report.memory.commitment, k),
            disk: proof::challenge(challenge_nonce, &report.disk.commitment, k),
        }
    }
}

/// The node's answer to a [`Challenge`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChallengeAnswer {
    /// CPU openings.
    pub cpu: Openings,
    /// Memory openings.
    pub memory: Openings,
    /// Disk openings.
    pub disk: Openings,
}

/// Recomputes every opened chunk from the seed and checks it sits under
/// the committed root at the index asked.
pub fn check_openings(
    report: &SessionReport,
    challenge: &Challenge,
    answer: &ChallengeAnswer,
) -> Result<(), ReportError> {
    for (workload, commitment, asked, got) in [
        ("cpu", &report.cpu.commitment, &challenge.cpu, &answer.cpu),
        (
            "memory",
            &report.memory.commitment,
            &challenge.memory,
            &answer.memory,
        ),
        (
            "disk",
            &report.disk.commitment,
            &challenge.disk,
            &answer.disk,
        ),
    ] {
        if got.openings.len() > MAX_SPOT_CHECKS as usize {
            return Err(ReportError::OpeningInvalid {
                workload,
                why: format!("{} openings, at most {MAX_SPOT_CHECKS}", got.openings.len()),
            });
        }
        proof::check(got, Some(commitment), Some(asked)).map_err(|e| {
            ReportError::OpeningInvalid {
                workload,
                why: e.to_string(),
            }
        })?;
    }
    Ok(())
}

impl fmt::Display for ImageInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (slot {})", self.version, self.slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_validate() {
        assert_eq!(BenchProfile::flux().validate(), Ok(()));
        assert_eq!(BenchProfile::quick().validate(), Ok(()));
        let mut p = BenchProfile::quick();
        p.cpu_max_prime = u64::MAX;
        assert!(p.validate().is_err());
        let mut p = BenchProfile::quick();
        p.memory_bytes += 1;
        assert!(p.validate().is_err());
    }

    #[test]
    fn seed_depends_on_the_nonce() {
        assert_ne!(seed_of(&[1; 32]), seed_of(&[2; 32]));
        assert_eq!(seed_of(&[1; 32]), seed_of(&[1; 32]));
    }

    #[test]
    fn eps_bound_is_monotonic_and_generous() {
        // sysbench on a fast desktop core does ~150 events/s at 60 000.
        assert!(max_eps_per_thread(60_000) > 1_000.0);
        assert!(max_eps_per_thread(10_000) > max_eps_per_thread(60_000));
        assert!(max_eps_per_thread(1_000_000) >= max_eps_per_thread(60_000));
    }

    #[test]
    fn nasty_reports_are_errors_not_panics() {
        for t in ["", "{}", "[]", "null", "{\"session_id\":1}"] {
            assert!(SessionReport::parse(t.as_bytes()).is_err());
        }
        let big = vec![b' '; MAX_REPORT_BYTES + 1];
        assert!(matches!(
            SessionReport::parse(&big),
            Err(ReportError::Malformed(_))
        ));
    }
}
