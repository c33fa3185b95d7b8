//! GPU: dense matrix multiply throughput (TFLOP/s) through cuBLAS SGEMM.
//!
//! The CUDA driver and cuBLAS are loaded at run time (`cudarc` with dynamic
//! loading), so the build needs no CUDA and a machine without a driver gets
//! a clean "no CUDA driver" error. The compute path is behind the
//! `gpu-compute` cargo feature, on in the appliance build.
//!
//! Seeded: A and B are n×n matrices of small integers (−2..=2) generated row
//! by row from the seed. Every product sum is then an integer below 2^24,
//! exact in f32 (and in TF32) whatever the summation order, so a verifier
//! recomputes any band of rows of C = A·B on a CPU and gets the same bits.
//! Chunk `i` is SHA-256 of rows `i·rows ..` of C as little-endian i32.
//!
//! Not yet run on real GPU hardware: no machine with an NVIDIA GPU was
//! available when this was written (see docs/HAL.md).

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[cfg(feature = "gpu-compute")]
use super::stats::Spread;
use crate::error::{Error, Result};
use crate::proof::Commitment;
#[cfg(feature = "gpu-compute")]
use crate::proof::{ChunkSet, Workload};
use crate::seed::Seed;

/// What to run.
#[derive(Debug, Clone)]
pub struct GpuParams {
    /// Matrix order.
    pub n: u64,
    /// Rows of C per committed chunk.
    pub rows: u64,
    /// Timed multiplications.
    pub iterations: usize,
    /// Refuse when per-iteration throughput varies by more than this CV, percent.
    pub max_cv_pct: f64,
    /// Device ordinal.
    pub device: usize,
    /// The seed.
    pub seed: Seed,
}

impl GpuParams {
    /// Defaults: n = 8192, 64 rows per chunk, 20 iterations, 10 % bound, GPU 0.
    pub fn default_with(seed: Seed) -> Self {
        GpuParams {
            n: 8192,
            rows: 64,
            iterations: 20,
            max_cv_pct: 10.0,
            device: 0,
            seed,
        }
    }
}

/// The GPU compute figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GpuResult {
    /// Device ordinal.
    pub device: usize,
    /// Matrix order.
    pub n: u64,
    /// FP32 TFLOP/s (2·n³ per multiply), mean over iterations.
    pub tflops: f64,
    /// Per-iteration TFLOP/s, mean, stddev, CV.
    pub iterations: super::stats::Spread,
    /// Commitment to the bands of C.
    pub commitment: Commitment,
    /// The outputs.
    #[serde(skip)]
    pub chunks: Option<crate::proof::ChunkSet>,
}

/// Row `r` of A (`label` "gpu-a") or B ("gpu-b"): n integers in −2..=2.
pub fn matrix_row(seed: &Seed, label: &str, r: u64, n: u64) -> Vec<i32> {
    let mut rng = seed.rng(label, r);
    (0..n).map(|_| (rng.next_u64() % 5) as i32 - 2).collect()
}

fn hash_rows(rows: &[Vec<i32>]) -> Vec<u8> {
    let mut h = Sha256::new();
    for row in rows {
        for v in row {
            h.update(v.to_le_bytes());
        }
    }
    h.finalize().to_vec()
}

/// Recomputes chunk `index` (rows `index·rows ..` of C) on the CPU.
pub fn chunk_output(seed: &Seed, n: u64, rows: u64, index: u64) -> Result<Vec<u8>> {
    if n == 0 || n > 32768 || rows == 0 || index.saturating_mul(rows) >= n {
        return Err(Error::Invalid(format!(
            "gpu chunk {index} (n {n}, rows {rows}) out of range"
        )));
    }
    let r0 = index * rows;
    let r1 = (r0 + rows).min(n);
    let a: Vec<Vec<i32>> = (r0..r1).map(|r| matrix_row(seed, "gpu-a", r, n)).collect();
    let mut c = vec![vec![0i32; n as usize]; (r1 - r0) as usize];
    for k in 0..n {
        let b = matrix_row(seed, "gpu-b", k, n);
        for (arow, crow) in a.iter().zip(c.iter_mut()) {
            let f = arow[k as usize];
            if f != 0 {
                for (cj, bj) in crow.iter_mut().zip(&b) {
                    *cj += f * bj;
                }
            }
        }
    }
    Ok(hash_rows(&c))
}

/// Runs the benchmark (needs the `gpu-compute` feature and a CUDA driver).
#[cfg(not(feature = "gpu-compute"))]
pub fn run(_p: &GpuParams) -> Result<GpuResult> {
    Err(Error::Gpu("this build has no GPU compute (cargo feature gpu-compute is off); the inventory still lists GPUs".into()))
}

/// Runs the benchmark (needs a CUDA driver and cuBLAS at run time).
#[cfg(feature = "gpu-compute")]
pub fn run(p: &GpuParams) -> Result<GpuResult> {
    use cudarc::cublas::{sys::cublasOperation_t, CudaBlas, Gemm, GemmConfig};
    use cudarc::driver::CudaContext;
    use std::time::Instant;

    // SAFETY: these only try to dlopen the libraries; cudarc would panic on
    // first use if they were missing, so we ask first.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err(Error::Gpu(
            "no CUDA driver (libcuda.so could not be loaded)".into(),
        ));
    }
    if !unsafe { cudarc::cublas::sys::is_culib_present() } {
        return Err(Error::Gpu(
            "no cuBLAS (libcublas.so could not be loaded); install the CUDA runtime libraries"
                .into(),
        ));
    }
    let n = usize::try_from(p.n).map_err(|e| Error::Invalid(e.to_string()))?;
    let ni = i32::try_from(p.n).map_err(|e| Error::Invalid(format!("n {}: {e}", p.n)))?;
    if p.iterations == 0 || p.rows == 0 {
        return Err(Error::Invalid(
            "gpu: iterations and rows must be positive".into(),
        ));
    }
    let gpu = |what: &str, e: &dyn std::fmt::Display| Error::Gpu(format!("{what}: {e}"));
    let ctx = CudaContext::new(p.device).map_err(|e| gpu("opening the CUDA device", &e))?;
    let stream = ctx.default_stream();
    let blas = CudaBlas::new(stream.clone()).map_err(|e| gpu("creating the cuBLAS handle", &e))?;
    let flat = |label: &str| -> Vec<f32> {
        (0..p.n)
            .flat_map(|r| matrix_row(&p.seed, label, r, p.n))
            .map(|v| v as f32)
            .collect()
    };
    let (a, b) = (flat("gpu-a"), flat("gpu-b"));
    let a_d = stream
        .memcpy_stod(&a)
        .map_err(|e| gpu("copying A to the GPU", &e))?;
    let b_d = stream
        .memcpy_stod(&b)
        .map_err(|e| gpu("copying B to the GPU", &e))?;
    let mut c_d = stream
        .alloc_zeros::<f32>(n * n)
        .map_err(|e| gpu("allocating C", &e))?;
    // Row-major X is column-major Xᵀ: computing Cᵀ = Bᵀ·Aᵀ column-major
    // leaves row-major C in c_d.
    let cfg = GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: ni,
        n: ni,
        k: ni,
        alpha: 1.0f32,
        lda: ni,
        ldb: ni,
        beta: 0.0f32,
        ldc: ni,
    };
    let once = |c: &mut cudarc::driver::CudaSlice<f32>| -> Result<f64> {
        let t = Instant::now();
        // SAFETY: all three buffers hold n·n f32 and the config says n×n.
        unsafe { blas.gemm(cfg, &b_d, &a_d, c) }.map_err(|e| gpu("sgemm", &e))?;
        stream.synchronize().map_err(|e| gpu("synchronizing", &e))?;
        Ok(t.elapsed().as_secs_f64())
    };
    once(&mut c_d)?; // warm-up: clocks, cuBLAS heuristics
    let flop = 2.0 * (p.n as f64).powi(3);
    let mut samples = Vec::with_capacity(p.iterations);
    for _ in 0..p.iterations {
        samples.push(flop / once(&mut c_d)? / 1e12);
    }
    let iterations = Spread::of(&samples).require_cv("gpu sgemm", p.max_cv_pct)?;
    let c = stream
        .memcpy_dtov(&c_d)
        .map_err(|e| gpu("copying C back", &e))?;
    let rows = p.rows as usize;
    let outputs: Vec<Vec<u8>> = c
        .chunks(n * rows)
        .map(|band| {
            hash_rows(
                &band
                    .chunks(n)
                    .map(|row| row.iter().map(|v| *v as i32).collect())
                    .collect::<Vec<_>>(),
            )
        })
        .collect();
    let chunks = ChunkSet::new(
        Workload::Gpu {
            n: p.n,
            rows: p.rows,
        },
        p.seed,
        outputs,
    );
    Ok(GpuResult {
        device: p.device,
        n: p.n,
        tflops: iterations.mean,
        iterations,
        commitment: chunks.commitment.clone(),
        chunks: Some(chunks),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_reference_matches_a_naive_product() {
        let seed = Seed([3; 32]);
        let n = 16u64;
        let a: Vec<Vec<i32>> = (0..n).map(|r| matrix_row(&seed, "gpu-a", r, n)).collect();
        let b: Vec<Vec<i32>> = (0..n).map(|r| matrix_row(&seed, "gpu-b", r, n)).collect();
        let c: Vec<Vec<i32>> = (4..8)
            .map(|i: usize| {
                (0..n as usize)
                    .map(|j| (0..n as usize).map(|k| a[i][k] * b[k][j]).sum())
                    .collect()
            })
            .collect();
        assert_eq!(chunk_output(&seed, n, 4, 1).ok(), Some(hash_rows(&c)));
        assert!(chunk_output(&seed, n, 4, 4).is_err());
    }
}
