//! Synthetic but consistent benchmark results for a session: the chunk
//! outputs are real (computed from the session's seed with hal's own
//! `chunk_output` functions, so every opening recomputes), only the
//! figures are made up, and made up so that `session::check_report`
//! accepts them:
//!
//! - CPU: `events` events (20 by default) in exactly the profile's
//!   `cpu_ms` on one thread, eps = events / duration (a slow machine);
//! - memory: every 1 MiB chunk of the profile's buffer, 10 GB/s each way;
//! - disk: every block of the profile's run (Sparse data, as the node
//!   writes), each run claimed to take [`DISK_RUN_S`];
//! - `bench_ms` = the CPU time plus the disk runs: the TPM clock must show
//!   at least that between the two quotes, so the simulated node waits
//!   that long between them.
//!
//! Producing the outputs costs the load generator real CPU (see
//! [`Synthetic::compute_ms`]): with the quick profile 16 memory chunks
//! (16 MiB of generator output), 256 disk blocks (16 MiB hashed) and the
//! claimed CPU events.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, Result};
use fluxnode_hal::bench::cpu::{self, CpuResult};
use fluxnode_hal::bench::disk::{self, DiskData, DiskResult};
use fluxnode_hal::bench::mem::{self, MemResult};
use fluxnode_hal::bench::stats::Spread;
use fluxnode_hal::proof::{ChunkSet, Workload};
use fluxnode_protocol::session::{
    self, BenchProfile, Challenge, ChallengeAnswer, ImageInfo, Machine, SessionReport,
};

/// Seconds each disk run is claimed to take.
pub const DISK_RUN_S: f64 = 0.05;
/// Memory bandwidth claimed each way, GB/s.
pub const MEMORY_GBPS: f64 = 10.0;

/// A session's synthetic results and the outputs to open.
#[derive(Debug, Clone)]
pub struct Synthetic {
    /// CPU result.
    pub cpu: CpuResult,
    /// Memory result.
    pub memory: MemResult,
    /// Disk result.
    pub disk: DiskResult,
    /// What the report claims between the quotes, ms.
    pub bench_ms: u64,
    /// CPU outputs.
    pub cpu_set: ChunkSet,
    /// Memory outputs.
    pub memory_set: ChunkSet,
    /// Disk outputs.
    pub disk_set: ChunkSet,
    /// Milliseconds this process spent computing the outputs.
    pub compute_ms: f64,
}

/// The machine a simulated node claims: one core, one thread, enough RAM
/// for the profile's buffer.
pub fn machine(profile: &BenchProfile) -> Machine {
    Machine {
        cores: 1,
        threads: 1,
        ram_bytes: profile.memory_bytes.max(1 << 30),
        ssd_bytes: 64_000_000_000,
        cpu_model: "fluxnode-loadgen simulated node".into(),
    }
}

/// Computes the outputs of the session with `nonce` under `profile`,
/// claiming `cpu_events` CPU events (at least 1).
pub fn compute(profile: &BenchProfile, nonce: &[u8], cpu_events: u64) -> Result<Synthetic> {
    let t0 = Instant::now();
    let seed = session::seed_of(nonce);
    let events = cpu_events.max(1);

    let cpu_outputs: Vec<Vec<u8>> = (0..events)
        .map(|i| cpu::chunk_output(&seed, profile.cpu_max_prime, i))
        .collect();
    let cpu_set = ChunkSet::new(
        Workload::Cpu {
            max_prime: profile.cpu_max_prime,
        },
        seed,
        cpu_outputs,
    );
    let duration_s = profile.cpu_ms as f64 / 1000.0;
    let eps = events as f64 / duration_s;
    let cpu = CpuResult {
        threads: 1,
        max_prime: profile.cpu_max_prime,
        events,
        duration_s,
        eps,
        cpu_time_s: duration_s,
        cpu_share: 1.0,
        intervals: Spread::of(&[eps]),
        commitment: cpu_set.commitment.clone(),
        chunks: None,
    };

    let chunks = profile.memory_bytes / mem::CHUNK_BYTES;
    let mem_outputs = (0..chunks)
        .map(|i| mem::chunk_output(&seed, mem::CHUNK_BYTES, i))
        .collect::<fluxnode_hal::Result<Vec<_>>>()
        .context("memory chunk outputs")?;
    let memory_set = ChunkSet::new(
        Workload::Memory {
            chunk_bytes: mem::CHUNK_BYTES,
        },
        seed,
        mem_outputs,
    );
    let passes = vec![MEMORY_GBPS; profile.memory_passes.max(1) as usize];
    let memory = MemResult {
        buffer_bytes: profile.memory_bytes,
        read_gbps: MEMORY_GBPS,
        write_gbps: MEMORY_GBPS,
        read_passes: Spread::of(&passes),
        write_passes: Spread::of(&passes),
        total_bytes: profile.memory_bytes.max(1 << 30),
        usable_bytes: profile.memory_bytes.max(1 << 30),
        commitment: memory_set.commitment.clone(),
        chunks: None,
    };

    let data = DiskData::Sparse;
    let disk_outputs = (0..profile.disk_count)
        .map(|i| disk::chunk_output(&seed, data, profile.disk_block_bytes, i))
        .collect::<fluxnode_hal::Result<Vec<_>>>()
        .context("disk block outputs")?;
    let disk_set = ChunkSet::new(
        Workload::Disk {
            block_bytes: profile.disk_block_bytes,
            data,
        },
        seed,
        disk_outputs,
    );
    let bytes = profile.disk_block_bytes.saturating_mul(profile.disk_count);
    let runs = profile.disk_runs.max(1) as usize;
    let mbps = bytes as f64 / 1e6 / DISK_RUN_S;
    let runs_mbps = vec![mbps; runs];
    let (write_mbps, _) = disk::flux_figure(&runs_mbps);
    let disk = DiskResult {
        dir: PathBuf::from("/var/lib/fluxnode/bench"),
        bytes,
        data,
        runs_mbps,
        runs_s: vec![DISK_RUN_S; runs],
        write_mbps,
        range_pct: 0.0,
        iops_4k: None,
        commitment: disk_set.commitment.clone(),
        chunks: None,
    };

    let bench_ms = profile.cpu_ms + (DISK_RUN_S * 1000.0 * runs as f64).ceil() as u64;
    Ok(Synthetic {
        cpu,
        memory,
        disk,
        bench_ms,
        cpu_set,
        memory_set,
        disk_set,
        compute_ms: t0.elapsed().as_secs_f64() * 1000.0,
    })
}

impl Synthetic {
    /// The report of session `session_id` with `nonce`, as JSON text (the
    /// bytes the end quote binds).
    pub fn report(
        &self,
        session_id: &str,
        nonce: &[u8],
        profile: &BenchProfile,
        image: &ImageInfo,
    ) -> Result<(SessionReport, String)> {
        let report = SessionReport {
            session_id: session_id.to_string(),
            nonce: nonce.to_vec(),
            profile: profile.clone(),
            machine: machine(profile),
            image: image.clone(),
            cpu: self.cpu.clone(),
            memory: self.memory.clone(),
            disk: self.disk.clone(),
            bench_ms: self.bench_ms,
        };
        let text = serde_json::to_string(&report).context("encoding the report")?;
        Ok((report, text))
    }

    /// Opens the chunks `challenge` asks for.
    pub fn answer(&self, challenge: &Challenge) -> Result<ChallengeAnswer> {
        Ok(ChallengeAnswer {
            cpu: self
                .cpu_set
                .open(&challenge.cpu)
                .context("opening CPU chunks")?,
            memory: self
                .memory_set
                .open(&challenge.memory)
                .context("opening memory chunks")?,
            disk: self
                .disk_set
                .open(&challenge.disk)
                .context("opening disk chunks")?,
        })
    }
}
