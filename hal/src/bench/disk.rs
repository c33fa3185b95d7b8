//! Disk: dd's `conv=fdatasync` write speed, and 4 KiB random-write IOPS.
//!
//! Sequential write, as `dd if=/dev/zero of=FILE bs=64k count=16k
//! conv=fdatasync` measures it: the clock starts after the file is opened,
//! runs through every `write(2)` of `bs` bytes and the final `fdatasync(2)`,
//! and MB/s is bytes / seconds / 10^6 (dd's MB). Flux's rule: three runs,
//! lowest dropped, the other two averaged. Our blocks hold seeded data, not
//! zeros, laid out so they cost what zeros cost (see [`DiskData`]); block
//! `i` is computed from the seed and `i` alone, so a verifier regenerates
//! any block.
//!
//! After the measured runs the file is written once more and read back, and
//! each block's SHA-256 is the chunk output, so the commitment covers what
//! reached the filesystem.
//!
//! IOPS, as `fio --rw=randwrite --bs=4k --direct=1 --ioengine=psync
//! --iodepth=1` measures it: a fresh file with its space reserved by
//! `fallocate(2)` (what fio does for a write job), then 4 KiB `pwrite(2)`s
//! through O_DIRECT, one at a time, at random aligned offsets that visit
//! every block once before any twice (fio's random map), for the given time.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::stats::range_pct;
use crate::error::{Error, Result};
use crate::proof::{ChunkSet, Commitment, Workload};
use crate::seed::Seed;

/// What to run.
#[derive(Debug, Clone)]
pub struct DiskParams {
    /// Directory on the filesystem to measure (a scratch file is made there).
    pub dir: PathBuf,
    /// dd's `bs`.
    pub block_bytes: usize,
    /// dd's `count`.
    pub count: u64,
    /// What the blocks hold.
    pub data: DiskData,
    /// Sequential runs (Flux: 3, lowest dropped).
    pub runs: usize,
    /// Refuse when the kept runs differ by more than this, percent of their mean.
    pub max_range_pct: f64,
    /// Size of the random-write file (0 skips the IOPS test).
    pub iops_file_bytes: u64,
    /// Random-write time.
    pub iops_duration: Duration,
    /// The seed.
    pub seed: Seed,
}

impl DiskParams {
    /// Flux's definition: bs=64k count=16k (1 GiB), 3 runs; IOPS over 256 MiB for 5 s.
    pub fn flux(dir: PathBuf, seed: Seed) -> Self {
        DiskParams {
            dir,
            block_bytes: 64 * 1024,
            count: 16 * 1024,
            data: DiskData::Sparse,
            runs: 3,
            max_range_pct: 30.0,
            iops_file_bytes: 256 << 20,
            iops_duration: Duration::from_secs(5),
            seed,
        }
    }
}

/// The disk figures.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DiskResult {
    /// The directory measured.
    pub dir: PathBuf,
    /// Bytes per sequential run.
    pub bytes: u64,
    /// What the blocks held.
    pub data: DiskData,
    /// MB/s (10^6 bytes) of each run, in order.
    pub runs_mbps: Vec<f64>,
    /// Seconds of each run.
    pub runs_s: Vec<f64>,
    /// Flux's figure: lowest run dropped, mean of the others.
    pub write_mbps: f64,
    /// Range of the kept runs, percent of their mean.
    pub range_pct: f64,
    /// 4 KiB random-write IOPS (O_DIRECT, queue depth 1), if measured.
    pub iops_4k: Option<f64>,
    /// Commitment to the blocks of the last run as read back.
    pub commitment: Commitment,
    /// The outputs.
    #[serde(skip)]
    pub chunks: Option<ChunkSet>,
}

/// What the written blocks hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiskData {
    /// Like dd's zeros, but each 4 KiB sector starts with a 32-byte tag
    /// derived from the seed (the rest is zero). Storage that compresses or
    /// skips zeros treats these blocks as it treats dd's, so the figure
    /// means what Flux's does, while every block still depends on the seed.
    #[default]
    Sparse,
    /// Every byte from the seed: incompressible. The honest figure on
    /// compressing storage (slower there than dd's zeros: 2-4x on the build
    /// VM, whose host compresses).
    Random,
}

const SECTOR: usize = 4096;
const TAG: usize = 32;

/// splitmix64's finaliser: a well-mixed 64-bit value.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Generates block `index` into `buf`.
#[derive(Debug)]
struct BlockGen {
    data: DiskData,
    key: u64,
    base: Vec<u64>,
}

impl BlockGen {
    fn new(seed: &Seed, data: DiskData, block_bytes: usize) -> Self {
        let k = seed.derive("disk-key", 0);
        let key = u64::from_le_bytes([k[0], k[1], k[2], k[3], k[4], k[5], k[6], k[7]]);
        let base = match data {
            DiskData::Sparse => Vec::new(),
            DiskData::Random => {
                let mut base = vec![0u64; block_bytes.div_ceil(8)];
                seed.rng("disk-base", block_bytes as u64)
                    .fill_u64(&mut base);
                base
            }
        };
        BlockGen { data, key, base }
    }

    fn fill(&self, index: u64, buf: &mut [u8]) {
        let block_key = mix(self.key ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        match self.data {
            DiskData::Sparse => {
                // dd reads each block from /dev/zero (the kernel clears the
                // buffer) before writing it; clearing ours costs the same, so
                // the two loops do the same work per block on a busy CPU.
                buf.fill(0);
                for (s, sector) in buf.chunks_mut(SECTOR).enumerate() {
                    let n = sector.len().min(TAG);
                    for (w, dst) in sector[..n].chunks_mut(8).enumerate() {
                        let v = mix(block_key
                            ^ ((s * TAG / 8 + w) as u64).wrapping_mul(0xd1b5_4a32_d192_ed03))
                        .to_le_bytes();
                        dst.copy_from_slice(&v[..dst.len()]);
                    }
                }
            }
            DiskData::Random => {
                for (dst, b) in buf.chunks_mut(8).zip(&self.base) {
                    let w = (b ^ block_key).to_le_bytes();
                    dst.copy_from_slice(&w[..dst.len()]);
                }
            }
        }
    }
}

/// The committed output of block `index`: SHA-256 of its bytes.
pub fn chunk_output(seed: &Seed, data: DiskData, block_bytes: u64, index: u64) -> Result<Vec<u8>> {
    if block_bytes == 0 || block_bytes > 64 << 20 {
        return Err(Error::Invalid(format!(
            "disk block size {block_bytes} out of range"
        )));
    }
    let mut buf = vec![0u8; block_bytes as usize];
    BlockGen::new(seed, data, block_bytes as usize).fill(index, &mut buf);
    Ok(Sha256::digest(&buf).to_vec())
}

/// One dd-style run: returns seconds from first write to end of fdatasync.
pub fn write_once(
    path: &Path,
    seed: &Seed,
    data: DiskData,
    block_bytes: usize,
    count: u64,
) -> Result<f64> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| Error::io("creating", path, e))?;
    let mut buf = vec![0u8; block_bytes];
    let gen = BlockGen::new(seed, data, block_bytes);
    let start = Instant::now();
    for i in 0..count {
        gen.fill(i, &mut buf);
        f.write_all(&buf)
            .map_err(|e| Error::io("writing", path, e))?;
    }
    f.sync_data().map_err(|e| Error::io("fdatasync", path, e))?;
    Ok(start.elapsed().as_secs_f64())
}

fn read_back(path: &Path, block_bytes: usize, count: u64) -> Result<Vec<Vec<u8>>> {
    let mut f = File::open(path).map_err(|e| Error::io("opening", path, e))?;
    let mut buf = vec![0u8; block_bytes];
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        f.read_exact(&mut buf)
            .map_err(|e| Error::io("reading back", path, e))?;
        out.push(Sha256::digest(&buf).to_vec());
    }
    Ok(out)
}

/// A page-aligned buffer for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

impl Aligned {
    fn new(len: usize) -> Result<Self> {
        let layout = std::alloc::Layout::from_size_align(len, 4096)
            .map_err(|e| Error::Invalid(e.to_string()))?;
        // SAFETY: layout has non-zero size (callers pass 4096).
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(Error::Invalid("out of memory for an aligned buffer".into()));
        }
        Ok(Aligned { ptr, layout })
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of layout.size() bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Random 4 KiB writes with O_DIRECT at queue depth 1 into a fallocated file
/// (as fio prepares it); returns IOPS.
pub fn random_write_iops(
    path: &Path,
    seed: &Seed,
    file_bytes: u64,
    duration: Duration,
) -> Result<f64> {
    const BS: u64 = 4096;
    let blocks = file_bytes / BS;
    if blocks == 0 {
        return Err(Error::Invalid(format!(
            "random-write file of {file_bytes} bytes is smaller than 4 KiB"
        )));
    }
    // Prepare the file as fio does for a write job without `overwrite`:
    // a fresh file, space reserved with fallocate(2), no data written. The
    // timed writes then land in allocated but unwritten extents, as fio's do.
    let _ = std::fs::remove_file(path);
    {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .map_err(|e| Error::io("creating", path, e))?;
        let len = i64::try_from(blocks * BS).map_err(|e| Error::Invalid(e.to_string()))?;
        // SAFETY: a valid open fd and a non-negative length.
        if unsafe { libc::fallocate(std::os::fd::AsRawFd::as_raw_fd(&f), 0, 0, len) } != 0 {
            // Filesystems without fallocate: fio falls back to ftruncate.
            f.set_len(blocks * BS)
                .map_err(|e| Error::io("sizing", path, e))?;
        }
    }
    let f = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| Error::io("opening with O_DIRECT", path, e))?;
    let mut buf = Aligned::new(BS as usize)?;
    let mut rng = seed.rng("iops", 0);
    rng.fill_bytes(buf.as_mut());
    let start = Instant::now();
    let mut ops = 0u64;
    while start.elapsed() < duration {
        let off = (rng.next_u64() % blocks) * BS;
        f.write_all_at(buf.as_mut(), off)
            .map_err(|e| Error::io("pwrite (O_DIRECT)", path, e))?;
        ops += 1;
    }
    Ok(ops as f64 / start.elapsed().as_secs_f64())
}

/// Removes the scratch file even when a run fails.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Flux's figure from runs: lowest dropped, mean of the rest (all of them if only one).
pub fn flux_figure(runs_mbps: &[f64]) -> (f64, Vec<f64>) {
    let mut v = runs_mbps.to_vec();
    v.sort_by(f64::total_cmp);
    if v.len() > 1 {
        v.remove(0);
    }
    let mean = if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    };
    (mean, v)
}

/// Runs the benchmark.
pub fn run(p: &DiskParams) -> Result<DiskResult> {
    if p.runs == 0 || p.count == 0 || p.block_bytes == 0 {
        return Err(Error::Invalid(
            "disk: runs, count and block size must be positive".into(),
        ));
    }
    let path = p
        .dir
        .join(format!(".fluxnode-hal-bench.{}", std::process::id()));
    let _guard = Scratch(path.clone());
    let bytes = p.block_bytes as u64 * p.count;
    let mut runs_s = Vec::new();
    for _ in 0..p.runs {
        runs_s.push(write_once(&path, &p.seed, p.data, p.block_bytes, p.count)?);
        // dd's runs each start from a fresh file; truncating the last run's
        // blocks inside the next measured open would cost it.
        let _ = std::fs::remove_file(&path);
    }
    // Commit to what reached the filesystem: one more (unmeasured) write, read back.
    write_once(&path, &p.seed, p.data, p.block_bytes, p.count)?;
    let outputs = read_back(&path, p.block_bytes, p.count)?;
    let runs_mbps: Vec<f64> = runs_s.iter().map(|s| bytes as f64 / s / 1e6).collect();
    let (write_mbps, kept) = flux_figure(&runs_mbps);
    let range = range_pct(&kept);
    if range > p.max_range_pct {
        return Err(Error::Unstable {
            bench: "disk write",
            spread: range,
            bound: p.max_range_pct,
            samples: runs_mbps,
        });
    }
    let iops_4k = if p.iops_file_bytes > 0 {
        Some(random_write_iops(
            &path,
            &p.seed,
            p.iops_file_bytes,
            p.iops_duration,
        )?)
    } else {
        None
    };
    let chunks = ChunkSet::new(
        Workload::Disk {
            block_bytes: p.block_bytes as u64,
            data: p.data,
        },
        p.seed,
        outputs,
    );
    Ok(DiskResult {
        dir: p.dir.clone(),
        bytes,
        data: p.data,
        runs_mbps,
        runs_s,
        write_mbps,
        range_pct: range,
        iops_4k,
        commitment: chunks.commitment.clone(),
        chunks: Some(chunks),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowest_run_is_dropped() {
        let (m, kept) = flux_figure(&[100.0, 200.0, 300.0]);
        assert_eq!(kept, vec![200.0, 300.0]);
        assert!((m - 250.0).abs() < 1e-9);
    }
}
