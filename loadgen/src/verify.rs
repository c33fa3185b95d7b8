//! Figure 1: verifications per second on one core, on evidence recorded
//! once before the timed loops.
//!
//! The evidence is a whole session's as the registry receives it: two
//! quotes signed by a software AK (ECDSA P-256 or RSASSA-2048; real nodes'
//! AKs from hal are RSA), the claimed PCR values, the report's JSON text,
//! and the spot-check answer to a challenge drawn from it. Each loop runs
//! the registry's own pure checks, in one thread:
//!
//! - **quote pair**: `verdict::check_quote_pair` (parse the AK, then for
//!   each quote: parse, verify the signature, type, extraData, PCR
//!   selection and digest; policy; clocks; elapsed time);
//! - **report**: SHA-256 of the report text, `SessionReport::parse`,
//!   `session::check_report`;
//! - **evidence**: both, as the registry checks one evidence body;
//! - **openings**: `session::check_openings` (recomputes every opened
//!   chunk from the seed and checks its Merkle path), reported separately
//!   because its cost is the profile's: CPU events at `cpu_max_prime`,
//!   1 MiB memory chunks, disk blocks.
//!
//! Rates are given per wall-clock second and per CPU second of the
//! measuring thread; on a shared machine the second is the per-core figure.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{bail, Context as _, Result};
use fluxnode_protocol::session::{
    self, BenchProfile, Challenge, ChallengeAnswer, SessionReport, SessionTerms,
};
use fluxnode_protocol::types::{PcrPolicy, PcrValues, SignedQuote};
use fluxnode_protocol::verdict::{
    check_quote_pair, extra_data, ClockTolerance, Expected, LABEL_END, LABEL_START,
};
use serde::Serialize;

use crate::sessions::{image, pcr_values};
use crate::softnode::{Ak, AkKind, EkCa, EkPool, SoftTpm};
use crate::synth;

/// One session's evidence, recorded.
#[derive(Debug)]
pub struct Recorded {
    ak_public: Vec<u8>,
    start: SignedQuote,
    end: SignedQuote,
    pcrs: PcrValues,
    policy: PcrPolicy,
    report: String,
    nonce: Vec<u8>,
    session_id: String,
    profile: BenchProfile,
    bench_ms: u64,
    challenge: Challenge,
    answer: ChallengeAnswer,
    synth_compute_ms: f64,
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut b = [0u8; N];
    getrandom::getrandom(&mut b).context("reading the random source")?;
    Ok(b)
}

/// Records a session's evidence under `profile`, with an AK of `kind`
/// (an RSA AK's key comes from `pool`).
pub fn record(
    kind: AkKind,
    profile: &BenchProfile,
    cpu_events: u64,
    pool: &EkPool,
) -> Result<Recorded> {
    let ak = match kind {
        AkKind::Ecc => Ak::ecc()?,
        AkKind::Rsa => Ak::rsa(pool.key(1)?)?,
    };
    let ca = EkCa::new()?;
    let tpm = SoftTpm::new(pool.key(0)?, &ca, ak, 5_000_000)?;
    let nonce = random::<32>()?.to_vec();
    let session_id = hex::encode(random::<16>()?);
    let pcrs = pcr_values();
    let indices: Vec<u8> = pcrs.sha256.keys().copied().collect();
    let synth = synth::compute(profile, &nonce, cpu_events)?;
    let (_, report) = synth.report(&session_id, &nonce, profile, &image())?;
    let digest = session::report_digest(report.as_bytes());
    let t0 = 5_000_000;
    let start = tpm.quote_at(
        t0,
        &indices,
        &pcrs,
        &extra_data(LABEL_START, &nonce, &[0; 32]),
    )?;
    let end = tpm.quote_at(
        t0 + synth.bench_ms + 20,
        &indices,
        &pcrs,
        &extra_data(LABEL_END, &nonce, &digest),
    )?;
    let mut policy = PcrPolicy {
        required: indices,
        ..PcrPolicy::default()
    };
    if let Some(v) = pcrs.sha256.get(&11) {
        policy.allowed.insert(11, vec![*v]);
    }
    let parsed = SessionReport::parse(report.as_bytes())?;
    let challenge = Challenge::draw(&random::<32>()?, &parsed);
    let answer = synth.answer(&challenge)?;
    Ok(Recorded {
        ak_public: tpm.ak().public().to_vec(),
        start,
        end,
        pcrs,
        policy,
        report,
        nonce,
        session_id,
        profile: profile.clone(),
        bench_ms: synth.bench_ms,
        challenge,
        answer,
        synth_compute_ms: synth.compute_ms,
    })
}

impl Recorded {
    fn expected(&self) -> Expected<'_> {
        let digest = session::report_digest(self.report.as_bytes());
        Expected {
            start_extra_data: extra_data(LABEL_START, &self.nonce, &[0; 32]),
            end_extra_data: extra_data(LABEL_END, &self.nonce, &digest),
            policy: &self.policy,
            claimed_pcrs: &self.pcrs,
            claimed_duration_ms: self.bench_ms,
            observed_wall_ms: self.bench_ms + 1_000,
            tolerance: ClockTolerance::default(),
        }
    }

    fn terms(&self) -> SessionTerms<'_> {
        SessionTerms {
            session_id: &self.session_id,
            nonce: &self.nonce,
            profile: &self.profile,
        }
    }

    /// The quote pair's checks (what the registry runs on evidence).
    pub fn check_quotes(&self) -> Result<()> {
        check_quote_pair(&self.start, &self.end, &self.ak_public, &self.expected())
            .map(|_| ())
            .map_err(|v| anyhow::anyhow!("quote pair refused: {} ({v})", v.code()))
    }

    /// The report's checks: digest, parse, check_report.
    pub fn check_report(&self) -> Result<()> {
        let _digest = session::report_digest(self.report.as_bytes());
        let r = SessionReport::parse(self.report.as_bytes())?;
        session::check_report(&r, &self.terms())
            .map_err(|e| anyhow::anyhow!("report refused: {} ({e})", e.code()))
    }

    /// The spot-check's recomputation.
    pub fn check_openings(&self) -> Result<()> {
        let r = SessionReport::parse(self.report.as_bytes())?;
        session::check_openings(&r, &self.challenge, &self.answer)
            .map_err(|e| anyhow::anyhow!("openings refused: {} ({e})", e.code()))
    }
}

/// One loop's rate.
#[derive(Debug, Clone, Serialize)]
pub struct Rate {
    /// Iterations.
    pub iterations: usize,
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// CPU seconds of the measuring thread.
    pub cpu_s: f64,
    /// Iterations per wall-clock second.
    pub per_s: f64,
    /// Iterations per CPU second: per core.
    pub per_cpu_s: f64,
    /// Mean microseconds per iteration (CPU time).
    pub us_each: f64,
}

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

fn time(iterations: usize, mut f: impl FnMut() -> Result<()>) -> Result<Rate> {
    // Warm caches and lazily initialised tables first.
    for _ in 0..iterations.clamp(1, 10) {
        f()?;
    }
    let (w0, c0) = (Instant::now(), thread_cpu_s());
    for _ in 0..iterations {
        f()?;
    }
    let wall_s = w0.elapsed().as_secs_f64();
    let cpu_s = thread_cpu_s() - c0;
    let n = iterations as f64;
    Ok(Rate {
        iterations,
        wall_s,
        cpu_s,
        per_s: n / wall_s.max(1e-9),
        per_cpu_s: n / cpu_s.max(1e-9),
        us_each: cpu_s * 1e6 / n.max(1.0),
    })
}

/// The rates of one AK kind and profile.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// The AK.
    pub ak: String,
    /// The profile.
    pub profile: String,
    /// Spot-checks per workload.
    pub spot_checks: u32,
    /// CPU events the report claims.
    pub cpu_events: u64,
    /// Quote pairs (two signatures each).
    pub quote_pair: Rate,
    /// Report checks.
    pub report: Rate,
    /// Quote pair and report: one evidence body.
    pub evidence: Rate,
    /// Spot-check recomputation.
    pub openings: Rate,
    /// What the load generator spent making the session's synthetic chunk
    /// outputs once (what each simulated node pays per session), ms.
    pub synth_compute_ms: f64,
}

/// Measures `iterations` of each evidence check and `openings_iterations`
/// of the openings, on evidence recorded with an AK of `kind`.
pub fn measure(
    kind: AkKind,
    profile: &BenchProfile,
    cpu_events: u64,
    iterations: usize,
    openings_iterations: usize,
    pool: &EkPool,
) -> Result<Figures> {
    let rec = record(kind, profile, cpu_events, pool)?;
    // The recorded evidence must pass, or the figures mean nothing.
    rec.check_quotes()?;
    rec.check_report()?;
    rec.check_openings()?;
    let quote_pair = time(iterations, || rec.check_quotes())?;
    let report = time(iterations, || rec.check_report())?;
    let evidence = time(iterations, || {
        rec.check_quotes()?;
        rec.check_report()
    })?;
    let openings = time(openings_iterations, || rec.check_openings())?;
    Ok(Figures {
        ak: kind.to_string(),
        profile: profile.name.clone(),
        spot_checks: profile.spot_checks,
        cpu_events,
        quote_pair,
        report,
        evidence,
        openings,
        synth_compute_ms: rec.synth_compute_ms,
    })
}

/// The figures as a table.
pub fn table(all: &[Figures]) -> String {
    let mut s = format!(
        "{:<12} {:<8} {:<34} {:>10} {:>12} {:>10}\n",
        "AK", "profile", "check (one thread)", "per s", "per CPU s", "µs each"
    );
    let mut notes = String::new();
    for f in all {
        let note = format!(
            "{} profile, {} CPU events: making one session's chunk outputs took the load generator {:.1} ms\n",
            f.profile, f.cpu_events, f.synth_compute_ms
        );
        if !notes.contains(&note) {
            notes += &note;
        }
        let rows: BTreeMap<u8, (String, &Rate)> = [
            (0, ("quote pair (2 signatures)".to_string(), &f.quote_pair)),
            (1, ("report (digest, parse, check)".to_string(), &f.report)),
            (
                2,
                ("evidence (quote pair + report)".to_string(), &f.evidence),
            ),
            (
                3,
                (
                    format!("openings ({} per workload)", f.spot_checks),
                    &f.openings,
                ),
            ),
        ]
        .into_iter()
        .collect();
        for (name, r) in rows.values() {
            s += &format!(
                "{:<12} {:<8} {:<34} {:>10.0} {:>12.0} {:>10.1}\n",
                f.ak, f.profile, name, r.per_s, r.per_cpu_s, r.us_each
            );
        }
    }
    s + &notes
}

/// Checks `kinds` is not empty.
pub fn kinds(arg: &str) -> Result<Vec<AkKind>> {
    let v: Vec<AkKind> = match arg {
        "both" => vec![AkKind::Ecc, AkKind::Rsa],
        one => vec![one.parse().map_err(|e: String| anyhow::anyhow!(e))?],
    };
    if v.is_empty() {
        bail!("no AK kind");
    }
    Ok(v)
}
