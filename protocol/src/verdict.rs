//! The registry's checks of an attested benchmark session's two quotes,
//! in order, and the reason for the first that fails.
//!
//! Order (issue 12): signature and magic; the attestation is a quote;
//! extraData; PCR digest against the claimed values, then the values
//! against policy; clock monotonic with equal reset/restart counts between
//! the start and end quotes; elapsed TPM clock consistent with the claimed
//! duration. Each [`Verdict`] has a stable [`Verdict::code`] for machines
//! and a `Display` message for people.

use std::fmt;

use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::tpm::attest::{Attest, AttestError, AttestType, ClockInfo};
use crate::tpm::pcr::{self, PcrError};
use crate::tpm::signature::{AttestationKey, SignatureError};
use crate::types::{PcrPolicy, PcrValues, Rejection, SignedQuote};

/// extraData of the quote taken when a benchmark session starts.
pub const LABEL_START: &[u8] = b"fluxnode/bench/start/v1";
/// extraData of the quote taken when a benchmark session ends.
pub const LABEL_END: &[u8] = b"fluxnode/bench/end/v1";

/// The qualifying data that binds a quote to a session and a report:
/// SHA-256(label ‖ nonce ‖ report_digest). Labels are fixed constants and
/// the report digest is 32 bytes, so the concatenation is unambiguous for
/// a nonce of any length.
pub fn extra_data(label: &[u8], nonce: &[u8], report_digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(label);
    h.update(nonce);
    h.update(report_digest);
    h.finalize().into()
}

/// Which quote of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The quote at the start of the session.
    Start,
    /// The quote at the end.
    End,
}

impl fmt::Display for Which {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Which::Start => "start",
            Which::End => "end",
        })
    }
}

/// Why a session's quotes are refused, in the order the checks run.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Verdict {
    /// The attestation key is unusable (attributes, size, curve).
    #[error("attestation key refused: {0}")]
    AkRefused(SignatureError),
    /// The attest bytes do not parse.
    #[error("{which} quote: {error}")]
    AttestMalformed {
        /// Which quote.
        which: Which,
        /// Why.
        error: AttestError,
    },
    /// Not TPM_GENERATED_VALUE: the TPM did not produce this structure.
    #[error("{which} quote: magic {found:#010x} is not TPM_GENERATED_VALUE")]
    BadMagic {
        /// Which quote.
        which: Which,
        /// The magic found.
        found: u32,
    },
    /// The signature uses SHA-1.
    #[error("{which} quote: signed with SHA-1")]
    SignatureSha1 {
        /// Which quote.
        which: Which,
    },
    /// The signature does not parse or its scheme/hash is not accepted.
    #[error("{which} quote: {error}")]
    SignatureMalformed {
        /// Which quote.
        which: Which,
        /// Why.
        error: SignatureError,
    },
    /// The signature is not the attestation key's.
    #[error("{which} quote: the signature does not verify with the attestation key")]
    SignatureInvalid {
        /// Which quote.
        which: Which,
    },
    /// Another kind of attestation (GetTime, Certify, ...) sent as a quote.
    #[error("{which} quote: the attestation is {kind}, not a quote")]
    NotAQuote {
        /// Which quote.
        which: Which,
        /// What it is.
        kind: AttestType,
    },
    /// extraData is not the session's binding.
    #[error("{which} quote: extraData is not H(label ‖ nonce ‖ report digest) of this session")]
    ExtraDataMismatch {
        /// Which quote.
        which: Which,
    },
    /// Only SHA-1 PCR banks quoted.
    #[error("{which} quote: only SHA-1 PCR banks are quoted")]
    PcrSelectionSha1Only {
        /// Which quote.
        which: Which,
    },
    /// A bank other than SHA-256 quoted.
    #[error("{which} quote: PCR bank {bank:#06x} quoted; only sha256 is accepted")]
    PcrBankUnsupported {
        /// Which quote.
        which: Which,
        /// The bank.
        bank: u16,
    },
    /// A PCR the policy requires is not quoted.
    #[error("{which} quote: required PCR sha256:{index} is not quoted")]
    PcrNotSelected {
        /// Which quote.
        which: Which,
        /// The PCR.
        index: u8,
    },
    /// No value claimed for a quoted PCR.
    #[error("{which} quote: no value claimed for quoted PCR sha256:{index}")]
    PcrValueMissing {
        /// Which quote.
        which: Which,
        /// The PCR.
        index: u8,
    },
    /// The claimed values do not hash to the quoted digest.
    #[error("{which} quote: the claimed PCR values do not match the quoted PCR digest")]
    PcrDigestMismatch {
        /// Which quote.
        which: Which,
    },
    /// A claimed (and quoted) PCR value is not one the policy allows.
    #[error("PCR sha256:{index} = {value} is not an allowed value")]
    PcrValueNotAllowed {
        /// The PCR.
        index: u8,
        /// The value claimed, hex, or "(none)".
        value: String,
    },
    /// The TPM was reset (rebooted) between the quotes.
    #[error("TPM reset count changed from {start} to {end} during the session")]
    ResetCountChanged {
        /// At the start.
        start: u32,
        /// At the end.
        end: u32,
    },
    /// The TPM was restarted (resumed) between the quotes.
    #[error("TPM restart count changed from {start} to {end} during the session")]
    RestartCountChanged {
        /// At the start.
        start: u32,
        /// At the end.
        end: u32,
    },
    /// The end quote's clock is before the start quote's.
    #[error("TPM clock went backwards: {start} ms at start, {end} ms at end")]
    ClockBackwards {
        /// At the start.
        start: u64,
        /// At the end.
        end: u64,
    },
    /// Less TPM time passed than the session claims to have taken.
    #[error("TPM clock advanced {elapsed_ms} ms, less than the claimed {claimed_ms} ms")]
    ElapsedTooShort {
        /// TPM clock difference.
        elapsed_ms: u64,
        /// The node's claim.
        claimed_ms: u64,
    },
    /// More TPM time passed than the verifier saw pass between issuing
    /// the nonce and receiving the result.
    #[error(
        "TPM clock advanced {elapsed_ms} ms, more than the {observed_ms} ms the verifier observed"
    )]
    ElapsedTooLong {
        /// TPM clock difference.
        elapsed_ms: u64,
        /// The verifier's wall clock.
        observed_ms: u64,
    },
}

impl Verdict {
    /// A stable, machine-readable code (`snake_case`); never reused for
    /// another meaning.
    pub fn code(&self) -> &'static str {
        match self {
            Verdict::AkRefused(_) => "ak_refused",
            Verdict::AttestMalformed { .. } => "attest_malformed",
            Verdict::BadMagic { .. } => "bad_magic",
            Verdict::SignatureSha1 { .. } => "signature_sha1",
            Verdict::SignatureMalformed { .. } => "signature_malformed",
            Verdict::SignatureInvalid { .. } => "signature_invalid",
            Verdict::NotAQuote { .. } => "not_a_quote",
            Verdict::ExtraDataMismatch { .. } => "extra_data_mismatch",
            Verdict::PcrSelectionSha1Only { .. } => "pcr_selection_sha1_only",
            Verdict::PcrBankUnsupported { .. } => "pcr_bank_unsupported",
            Verdict::PcrNotSelected { .. } => "pcr_not_selected",
            Verdict::PcrValueMissing { .. } => "pcr_value_missing",
            Verdict::PcrDigestMismatch { .. } => "pcr_digest_mismatch",
            Verdict::PcrValueNotAllowed { .. } => "pcr_value_not_allowed",
            Verdict::ResetCountChanged { .. } => "reset_count_changed",
            Verdict::RestartCountChanged { .. } => "restart_count_changed",
            Verdict::ClockBackwards { .. } => "clock_backwards",
            Verdict::ElapsedTooShort { .. } => "elapsed_too_short",
            Verdict::ElapsedTooLong { .. } => "elapsed_too_long",
        }
    }

    /// As the registry sends it.
    pub fn to_rejection(&self) -> Rejection {
        Rejection {
            code: self.code().to_string(),
            message: self.to_string(),
        }
    }
}

/// How far the TPM clock may disagree with the durations compared with it:
/// a fixed allowance plus a share of the duration (TPM clocks drift, and
/// the quotes are taken a little before and after the measured work).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockTolerance {
    /// Fixed allowance, milliseconds.
    pub ms: u64,
    /// Relative allowance, percent of the duration compared.
    pub percent: u64,
}

impl Default for ClockTolerance {
    fn default() -> Self {
        ClockTolerance {
            ms: 100,
            percent: 2,
        }
    }
}

impl ClockTolerance {
    fn slack(&self, duration_ms: u64) -> u64 {
        self.ms
            .saturating_add(duration_ms.saturating_mul(self.percent) / 100)
    }
}

/// What the verifier expects of a session's quotes.
#[derive(Debug, Clone)]
pub struct Expected<'a> {
    /// extraData of the start quote ([`extra_data`] with [`LABEL_START`]).
    pub start_extra_data: [u8; 32],
    /// extraData of the end quote ([`extra_data`] with [`LABEL_END`]).
    pub end_extra_data: [u8; 32],
    /// The PCRs to cover and the values allowed.
    pub policy: &'a PcrPolicy,
    /// The PCR values the node claims (the same for both quotes: the
    /// measured boot does not change during a session).
    pub claimed_pcrs: &'a PcrValues,
    /// How long the node says the benchmark took.
    pub claimed_duration_ms: u64,
    /// How long the verifier saw pass between issuing the nonce and
    /// receiving the end quote.
    pub observed_wall_ms: u64,
    /// Allowance for both duration comparisons.
    pub tolerance: ClockTolerance,
}

/// What a session's accepted quotes established.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    /// The start quote's clock.
    pub start: ClockInfo,
    /// The end quote's clock.
    pub end: ClockInfo,
    /// TPM milliseconds between the quotes.
    pub elapsed_ms: u64,
}

/// Runs every check on a session's start and end quotes, in order, and
/// returns the first failure.
pub fn check_quote_pair(
    start: &SignedQuote,
    end: &SignedQuote,
    ak_tpmt_public: &[u8],
    expected: &Expected<'_>,
) -> Result<Accepted, Verdict> {
    let ak = AttestationKey::from_tpmt(ak_tpmt_public).map_err(Verdict::AkRefused)?;
    let s = check_quote(
        Which::Start,
        start,
        &ak,
        &expected.start_extra_data,
        expected,
    )?;
    let e = check_quote(Which::End, end, &ak, &expected.end_extra_data, expected)?;
    check_policy(expected.policy, expected.claimed_pcrs)?;
    let elapsed_ms = check_clocks(&s.clock, &e.clock)?;
    check_elapsed(elapsed_ms, expected)?;
    Ok(Accepted {
        start: s.clock,
        end: e.clock,
        elapsed_ms,
    })
}

/// Checks one quote: magic, signature, type, extraData, PCR selection and
/// digest. Returns the parsed attestation.
pub fn check_quote(
    which: Which,
    quote: &SignedQuote,
    ak: &AttestationKey,
    extra_data: &[u8],
    expected: &Expected<'_>,
) -> Result<Attest, Verdict> {
    let attest = Attest::parse(&quote.attest).map_err(|error| match error {
        AttestError::BadMagic(found) => Verdict::BadMagic { which, found },
        error => Verdict::AttestMalformed { which, error },
    })?;
    ak.verify(&quote.attest, &quote.signature)
        .map_err(|error| match error {
            SignatureError::Sha1 => Verdict::SignatureSha1 { which },
            SignatureError::Invalid => Verdict::SignatureInvalid { which },
            error => Verdict::SignatureMalformed { which, error },
        })?;
    let info = attest.quote().map_err(|_| Verdict::NotAQuote {
        which,
        kind: attest.kind(),
    })?;
    if attest.extra_data != extra_data {
        return Err(Verdict::ExtraDataMismatch { which });
    }
    let pcr_verdict = |e: PcrError| match e {
        PcrError::Sha1Only => Verdict::PcrSelectionSha1Only { which },
        PcrError::UnsupportedBank(bank) => Verdict::PcrBankUnsupported { which, bank },
        PcrError::NotSelected(index) => Verdict::PcrNotSelected { which, index },
        PcrError::ValueMissing(index) => Verdict::PcrValueMissing { which, index },
        PcrError::DigestMismatch => Verdict::PcrDigestMismatch { which },
    };
    pcr::check_selection(&info.selection, &expected.policy.covered()).map_err(pcr_verdict)?;
    pcr::check_digest(&info.selection, &info.pcr_digest, expected.claimed_pcrs)
        .map_err(pcr_verdict)?;
    Ok(attest)
}

/// Checks the claimed values of the pinned PCRs against the allowed ones.
pub fn check_policy(policy: &PcrPolicy, claimed: &PcrValues) -> Result<(), Verdict> {
    for (&index, allowed) in &policy.allowed {
        match claimed.sha256.get(&index) {
            Some(v) if allowed.contains(v) => {}
            v => {
                return Err(Verdict::PcrValueNotAllowed {
                    index,
                    value: v.map_or_else(|| "(none)".to_string(), ToString::to_string),
                })
            }
        }
    }
    Ok(())
}

/// Same reset and restart counts, clock not going backwards; the elapsed
/// TPM milliseconds.
pub fn check_clocks(start: &ClockInfo, end: &ClockInfo) -> Result<u64, Verdict> {
    if start.reset_count != end.reset_count {
        return Err(Verdict::ResetCountChanged {
            start: start.reset_count,
            end: end.reset_count,
        });
    }
    if start.restart_count != end.restart_count {
        return Err(Verdict::RestartCountChanged {
            start: start.restart_count,
            end: end.restart_count,
        });
    }
    end.clock
        .checked_sub(start.clock)
        .ok_or(Verdict::ClockBackwards {
            start: start.clock,
            end: end.clock,
        })
}

/// The elapsed TPM time covers the claimed duration and fits in the time
/// the verifier observed, each within the tolerance.
pub fn check_elapsed(elapsed_ms: u64, expected: &Expected<'_>) -> Result<(), Verdict> {
    let t = &expected.tolerance;
    let claimed = expected.claimed_duration_ms;
    if elapsed_ms.saturating_add(t.slack(claimed)) < claimed {
        return Err(Verdict::ElapsedTooShort {
            elapsed_ms,
            claimed_ms: claimed,
        });
    }
    let observed = expected.observed_wall_ms;
    if elapsed_ms > observed.saturating_add(t.slack(observed)) {
        return Err(Verdict::ElapsedTooLong {
            elapsed_ms,
            observed_ms: observed,
        });
    }
    Ok(())
}
