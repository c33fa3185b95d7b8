//! Memory: sequential bandwidth and the size actually usable.
//!
//! A buffer is filled from the seed (1 MiB chunks, each from its own
//! generator) and its chunk outputs committed; then read passes (summing
//! every 64-bit word) and write passes (storing every word) sweep it
//! sequentially. GB/s is 10^9 bytes per second, the median over passes.
//! "Usable" is the kernel's `MemAvailable` at the time of the run, and the
//! buffer itself proves that much was allocated and touched.

use std::path::Path;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::stats::{median, Spread};
use crate::error::{Error, Result};
use crate::proof::{ChunkSet, Commitment, Workload};
use crate::seed::Seed;

/// Bytes per committed chunk.
pub const CHUNK_BYTES: u64 = 1 << 20;

/// What to run.
#[derive(Debug, Clone)]
pub struct MemParams {
    /// Buffer size in bytes (a multiple of 1 MiB).
    pub bytes: u64,
    /// Read passes, and as many write passes.
    pub passes: usize,
    /// Refuse when the read passes vary by more than this coefficient of variation, percent.
    pub max_cv_pct: f64,
    /// procfs root, for `MemAvailable`.
    pub proc_root: std::path::PathBuf,
    /// The seed.
    pub seed: Seed,
}

impl MemParams {
    /// Defaults: 512 MiB, 5 passes each way, 20 % bound.
    pub fn default_with(seed: Seed) -> Self {
        MemParams {
            bytes: 512 << 20,
            passes: 5,
            max_cv_pct: 20.0,
            proc_root: "/proc".into(),
            seed,
        }
    }
}

/// The memory figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemResult {
    /// Bytes swept.
    pub buffer_bytes: u64,
    /// Median read bandwidth, GB/s.
    pub read_gbps: f64,
    /// Median write bandwidth, GB/s.
    pub write_gbps: f64,
    /// Read passes and their spread.
    pub read_passes: Spread,
    /// Write passes and their spread.
    pub write_passes: Spread,
    /// `MemTotal`, bytes.
    pub total_bytes: u64,
    /// `MemAvailable` at the time of the run, bytes.
    pub usable_bytes: u64,
    /// Commitment to the buffer's chunks.
    pub commitment: Commitment,
    /// The outputs.
    #[serde(skip)]
    pub chunks: Option<ChunkSet>,
}

fn fold(words: &[u64]) -> u64 {
    // Order-sensitive: a chunk with words swapped gives another value.
    words.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, w| {
        (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(5)
    })
}

/// The committed output of chunk `index` of `chunk_bytes` bytes.
pub fn chunk_output(seed: &Seed, chunk_bytes: u64, index: u64) -> Result<Vec<u8>> {
    if chunk_bytes == 0 || !chunk_bytes.is_multiple_of(8) || chunk_bytes > 64 << 20 {
        return Err(Error::Invalid(format!(
            "memory chunk size {chunk_bytes} out of range"
        )));
    }
    let mut words = vec![0u64; (chunk_bytes / 8) as usize];
    seed.rng("memory", index).fill_u64(&mut words);
    Ok(fold(&words).to_le_bytes().to_vec())
}

#[inline(never)]
fn read_pass(buf: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut it = buf.chunks_exact(8);
    for c in &mut it {
        for k in 0..8 {
            acc[k] = acc[k].wrapping_add(c[k]);
        }
    }
    it.remainder()
        .iter()
        .fold(acc.iter().fold(0u64, |a, b| a.wrapping_add(*b)), |a, b| {
            a.wrapping_add(*b)
        })
}

#[inline(never)]
fn write_pass(buf: &mut [u64], v: u64) {
    buf.fill(v);
}

/// Runs the benchmark.
pub fn run(p: &MemParams) -> Result<MemResult> {
    if p.bytes == 0 || !p.bytes.is_multiple_of(CHUNK_BYTES) || p.passes == 0 {
        return Err(Error::Invalid(format!(
            "memory: buffer {} bytes must be a positive multiple of 1 MiB, passes > 0",
            p.bytes
        )));
    }
    let info = crate::inventory::memory::read(Path::new(&p.proc_root));
    let words_per_chunk = (CHUNK_BYTES / 8) as usize;
    let total_words = usize::try_from(p.bytes / 8).map_err(|e| Error::Invalid(e.to_string()))?;
    let mut buf: Vec<u64> = Vec::new();
    buf.try_reserve_exact(total_words)
        .map_err(|e| Error::Invalid(format!("memory: cannot allocate {} bytes: {e}", p.bytes)))?;
    buf.resize(total_words, 0);
    let mut outputs = Vec::new();
    for (i, chunk) in buf.chunks_mut(words_per_chunk).enumerate() {
        p.seed.rng("memory", i as u64).fill_u64(chunk);
        outputs.push(fold(chunk).to_le_bytes().to_vec());
    }
    let gb = p.bytes as f64 / 1e9;
    let mut reads = Vec::new();
    let mut sink = 0u64;
    for _ in 0..p.passes {
        let t = Instant::now();
        sink = sink.wrapping_add(std::hint::black_box(read_pass(std::hint::black_box(&buf))));
        reads.push(gb / t.elapsed().as_secs_f64());
    }
    let mut writes = Vec::new();
    for k in 0..p.passes {
        let t = Instant::now();
        write_pass(std::hint::black_box(&mut buf), sink ^ k as u64);
        std::hint::black_box(&buf);
        writes.push(gb / t.elapsed().as_secs_f64());
    }
    let read_passes = Spread::of(&reads).require_cv("memory read", p.max_cv_pct)?;
    let write_passes = Spread::of(&writes);
    let chunks = ChunkSet::new(
        Workload::Memory {
            chunk_bytes: CHUNK_BYTES,
        },
        p.seed,
        outputs,
    );
    Ok(MemResult {
        buffer_bytes: p.bytes,
        read_gbps: median(&reads),
        write_gbps: median(&writes),
        read_passes,
        write_passes,
        total_bytes: info.total_bytes,
        usable_bytes: info.available_bytes,
        commitment: chunks.commitment.clone(),
        chunks: Some(chunks),
    })
}
