//! CPU: sysbench's `cpu` test, events per second.
//!
//! One sysbench event tests every number `c` in `3..max_prime` for primality
//! by trial division with 64-bit integers, dividing by `l = 2, 3, …` while
//! `l <= sqrt(c)` (sqrt in double precision), and counts the primes. We run
//! exactly that loop, on as many threads as asked, until the time is up;
//! each thread finishes the event it started, as sysbench's do, and EPS is
//! events / elapsed seconds.
//!
//! Seeded: event `i` tests the window `3+o .. max_prime+o`, where
//! `o < 256` is derived from the seed and `i`. The shift changes an event's
//! cost by well under 1 % (the few numbers added near `max_prime` against
//! those dropped near 3), but makes every event's output (prime count and
//! the sum of the divisors where trial division stopped) depend on the seed,
//! so outputs cannot be produced before the seed is known and a verifier can
//! recompute any event.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::stats::Spread;
use crate::error::{Error, Result};
use crate::proof::{ChunkSet, Commitment, Workload};
use crate::seed::Seed;

/// sysbench's `--cpu-max-prime` in Flux's tier definition.
pub const FLUX_MAX_PRIME: u64 = 60_000;
/// Largest seed-derived window shift.
pub const MAX_SHIFT: u64 = 256;

/// What to run.
#[derive(Debug, Clone)]
pub struct CpuParams {
    /// `--cpu-max-prime`.
    pub max_prime: u64,
    /// Worker threads (sysbench `--threads`).
    pub threads: usize,
    /// Measured time (sysbench `--time`).
    pub duration: Duration,
    /// Time run first and thrown away, so the figure is taken at steady
    /// state (clocks up, caches warm).
    pub warmup: Duration,
    /// Refuse the figure when the per-interval EPS varies by more than this
    /// coefficient of variation, percent.
    pub max_cv_pct: f64,
    /// The seed.
    pub seed: Seed,
}

impl CpuParams {
    /// Flux's definition: max prime 60000, 20 s, all threads, 1 s warm-up, 15 % bound.
    pub fn flux(threads: usize, seed: Seed) -> Self {
        CpuParams {
            max_prime: FLUX_MAX_PRIME,
            threads,
            duration: Duration::from_secs(20),
            warmup: Duration::from_secs(1),
            max_cv_pct: 15.0,
            seed,
        }
    }
}

/// One CPU figure.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CpuResult {
    /// Threads used.
    pub threads: usize,
    /// `--cpu-max-prime`.
    pub max_prime: u64,
    /// Events completed.
    pub events: u64,
    /// Measured seconds (until the last thread finished its last event).
    pub duration_s: f64,
    /// Events per second: the figure the tier table compares.
    pub eps: f64,
    /// CPU seconds the worker threads got (all threads together).
    pub cpu_time_s: f64,
    /// Share of the machine the threads got: `cpu_time_s / (threads × duration_s)`.
    /// Well under 1 means other work competed and the EPS understates the hardware.
    pub cpu_share: f64,
    /// EPS in each interval of the measured time, and their spread.
    pub intervals: Spread,
    /// Commitment to every event's output.
    pub commitment: Commitment,
    /// The outputs (not printed; `fluxnode-hal bench --chunks DIR` saves them).
    #[serde(skip)]
    pub chunks: Option<ChunkSet>,
}

/// `c % l` with a 64-bit `div`, as sysbench's C compiled by GCC does it.
///
/// LLVM would otherwise test whether both operands fit in 32 bits and use
/// the cheaper 32-bit `div` (its "bypass slow division"): on the AMD EPYC of
/// the build machine that made our events 13 % cheaper than sysbench's, so
/// the figures would no longer mean the same thing.
#[inline(always)]
fn rem64(c: u64, l: u64) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        let rem: u64;
        // SAFETY: callers pass l >= 2 (no division by zero, and the quotient
        // fits since rdx = 0); `div` reads rax:rdx and writes rax and rdx only.
        unsafe {
            core::arch::asm!(
                "div {l}",
                l = in(reg) l,
                inout("rax") c => _,
                inout("rdx") 0u64 => rem,
                options(pure, nomem, nostack),
            );
        }
        rem
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        c % l
    }
}

/// The trial-division loop of one event over `3+shift .. max_prime+shift`.
/// Returns (primes found, sum of the divisors where each test stopped).
///
/// Conversions go through `i64` (`cvtsi2sd`), as GCC compiles sysbench's
/// `(double)c`; the numbers are far below 2^63.
#[inline(never)]
pub fn event(max_prime: u64, shift: u64) -> (u64, u64) {
    let (mut n, mut stops) = (0u64, 0u64);
    let mut c = 3 + shift;
    let end = max_prime + shift;
    while c < end {
        let t = (c as i64 as f64).sqrt();
        let mut l: u64 = 2;
        // GCC turns the first test, `c % 2`, into a bit test in sysbench's
        // binary; the rest are 64-bit divisions.
        if t >= 2.0 && c & 1 == 1 {
            l = 3;
            while (l as i64 as f64) <= t {
                if rem64(c, l) == 0 {
                    break;
                }
                l += 1;
            }
        }
        if (l as i64 as f64) > t {
            n += 1;
        }
        stops = stops.wrapping_add(l);
        c += 1;
    }
    (n, stops)
}

fn shift_of(seed: &Seed, index: u64) -> u64 {
    let k = seed.derive("cpu", index);
    u64::from(u16::from_le_bytes([k[0], k[1]])) % MAX_SHIFT
}

/// The committed output of event `index`: primes found and divisor sum, little-endian.
pub fn chunk_output(seed: &Seed, max_prime: u64, index: u64) -> Vec<u8> {
    let (n, stops) = event(max_prime, shift_of(seed, index));
    let mut out = n.to_le_bytes().to_vec();
    out.extend_from_slice(&stops.to_le_bytes());
    out
}

/// A finished event: index, output, seconds since start.
type Done = (u64, Vec<u8>, f64);

struct Run {
    outputs: Vec<Done>,
    elapsed: f64,
    cpu_s: f64,
}

/// CPU time of the calling thread, seconds.
fn thread_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn run_for(p: &CpuParams, duration: Duration) -> Run {
    let next = AtomicU64::new(0);
    let start = Instant::now();
    let deadline = start + duration;
    let per_thread: Vec<(Vec<Done>, f64)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..p.threads)
            .map(|_| {
                s.spawn(|| {
                    let cpu0 = thread_cpu_s();
                    let mut done = Vec::new();
                    while Instant::now() < deadline {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let out = chunk_output(&p.seed, p.max_prime, i);
                        done.push((i, out, start.elapsed().as_secs_f64()));
                    }
                    (done, thread_cpu_s() - cpu0)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_s = per_thread.iter().map(|t| t.1).sum();
    let mut outputs: Vec<_> = per_thread.into_iter().flat_map(|t| t.0).collect();
    outputs.sort_by_key(|o| o.0);
    Run {
        outputs,
        elapsed,
        cpu_s,
    }
}

/// Runs the benchmark.
pub fn run(p: &CpuParams) -> Result<CpuResult> {
    if p.threads == 0 || p.max_prime < 4 || p.duration.is_zero() {
        return Err(Error::Invalid(format!(
            "cpu: threads {} max_prime {} duration {:?}",
            p.threads, p.max_prime, p.duration
        )));
    }
    if !p.warmup.is_zero() {
        let _ = run_for(p, p.warmup);
    }
    let run = run_for(p, p.duration);
    let events = run.outputs.len() as u64;
    // Every claimed index was finished, so indices are 0..events.
    if run.outputs.iter().enumerate().any(|(i, o)| o.0 != i as u64) {
        return Err(Error::Invalid(
            "cpu: event indices are not contiguous".into(),
        ));
    }
    // Intervals of about a second over the whole measured time (events that
    // finished after the deadline belong to the last one).
    let n_int = (run.elapsed.round() as usize).clamp(2, 20);
    let width = run.elapsed / n_int as f64;
    let mut counts = vec![0u64; n_int];
    for (_, _, t) in &run.outputs {
        let b = ((t / width) as usize).min(n_int - 1);
        counts[b] += 1;
    }
    let samples: Vec<f64> = counts.iter().map(|c| *c as f64 / width).collect();
    let intervals = Spread::of(&samples).require_cv("cpu", p.max_cv_pct)?;
    let outputs: Vec<Vec<u8>> = run.outputs.into_iter().map(|o| o.1).collect();
    let chunks = ChunkSet::new(
        Workload::Cpu {
            max_prime: p.max_prime,
        },
        p.seed,
        outputs,
    );
    Ok(CpuResult {
        threads: p.threads,
        max_prime: p.max_prime,
        events,
        duration_s: run.elapsed,
        eps: events as f64 / run.elapsed,
        cpu_time_s: run.cpu_s,
        cpu_share: run.cpu_s / (p.threads as f64 * run.elapsed),
        intervals,
        commitment: chunks.commitment.clone(),
        chunks: Some(chunks),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unshifted_event_counts_primes_below_max() {
        // pi(100) = 25 primes below 100; 2 is not tested (c starts at 3).
        assert_eq!(event(100, 0).0, 24);
        assert_eq!(event(60_000, 0).0, 6056);
    }
}
