//! TPMS_ATTEST (TPM 2.0 Part 2, 10.12.12): what a TPM signs with a
//! restricted key. Only the TPM itself can produce a signed structure
//! starting with TPM_GENERATED_VALUE: a restricted key refuses to sign
//! outside data that starts with it, which is why the magic matters.

use std::fmt;

use thiserror::Error;

use super::pcr::PcrSelect;
use super::wire::{self, Reader, WireError};

/// TPM_GENERATED_VALUE.
pub const TPM_GENERATED_VALUE: u32 = 0xff54_4347;

/// Why bytes are not a usable TPMS_ATTEST.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AttestError {
    /// Not TPM_GENERATED_VALUE: the TPM did not make this structure.
    #[error("magic is {0:#010x}, not TPM_GENERATED_VALUE 0xff544347")]
    BadMagic(u32),
    /// A TPM_ST that is no attestation type.
    #[error("unknown attestation type {0:#06x}")]
    UnknownType(u16),
    /// An attestation of another kind (a certification, the time, ...)
    /// where a quote was expected.
    #[error("the attestation is {0}, not a quote")]
    NotAQuote(AttestType),
    /// A field's length or value.
    #[error("malformed TPMS_ATTEST: {0}")]
    Wire(#[from] WireError),
}

/// TPMI_ST_ATTEST: which command produced the attestation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttestType {
    /// TPM_ST_ATTEST_NV (0x8014, NV_Certify).
    Nv,
    /// TPM_ST_ATTEST_COMMAND_AUDIT (0x8015, GetCommandAuditDigest).
    CommandAudit,
    /// TPM_ST_ATTEST_SESSION_AUDIT (0x8016, GetSessionAuditDigest).
    SessionAudit,
    /// TPM_ST_ATTEST_CERTIFY (0x8017, Certify).
    Certify,
    /// TPM_ST_ATTEST_QUOTE (0x8018, Quote).
    Quote,
    /// TPM_ST_ATTEST_TIME (0x8019, GetTime).
    Time,
    /// TPM_ST_ATTEST_CREATION (0x801A, CertifyCreation).
    Creation,
    /// TPM_ST_ATTEST_NV_DIGEST (0x801C, NV_Certify of a digest).
    NvDigest,
}

impl AttestType {
    /// From the TPM_ST value.
    pub fn from_tag(tag: u16) -> Option<Self> {
        Some(match tag {
            0x8014 => AttestType::Nv,
            0x8015 => AttestType::CommandAudit,
            0x8016 => AttestType::SessionAudit,
            0x8017 => AttestType::Certify,
            0x8018 => AttestType::Quote,
            0x8019 => AttestType::Time,
            0x801A => AttestType::Creation,
            0x801C => AttestType::NvDigest,
            _ => return None,
        })
    }

    /// The TPM_ST value.
    pub fn tag(self) -> u16 {
        match self {
            AttestType::Nv => 0x8014,
            AttestType::CommandAudit => 0x8015,
            AttestType::SessionAudit => 0x8016,
            AttestType::Certify => 0x8017,
            AttestType::Quote => 0x8018,
            AttestType::Time => 0x8019,
            AttestType::Creation => 0x801A,
            AttestType::NvDigest => 0x801C,
        }
    }
}

impl fmt::Display for AttestType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            AttestType::Nv => "an NV certification (TPM_ST_ATTEST_NV)",
            AttestType::CommandAudit => "a command audit (TPM_ST_ATTEST_COMMAND_AUDIT)",
            AttestType::SessionAudit => "a session audit (TPM_ST_ATTEST_SESSION_AUDIT)",
            AttestType::Certify => "a key certification (TPM_ST_ATTEST_CERTIFY)",
            AttestType::Quote => "a quote (TPM_ST_ATTEST_QUOTE)",
            AttestType::Time => "a time attestation (TPM_ST_ATTEST_TIME, GetTime)",
            AttestType::Creation => "a creation certification (TPM_ST_ATTEST_CREATION)",
            AttestType::NvDigest => "an NV digest certification (TPM_ST_ATTEST_NV_DIGEST)",
        };
        f.write_str(name)
    }
}

/// TPMS_CLOCK_INFO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockInfo {
    /// Milliseconds the TPM has been powered since it was manufactured (or
    /// its clock last set); moves only forward while resetCount holds.
    pub clock: u64,
    /// TPM resets (reboots) so far.
    pub reset_count: u32,
    /// TPM restarts (resume from hibernation) since the last reset.
    pub restart_count: u32,
    /// Whether `clock` is known never to have gone backwards.
    pub safe: bool,
}

/// TPMS_QUOTE_INFO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    /// The PCRs quoted, bank by bank in the TPM's order.
    pub selection: Vec<PcrSelect>,
    /// The hash (with the signing scheme's algorithm) of the selected PCR
    /// values.
    pub pcr_digest: Vec<u8>,
}

/// What the attestation states, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attested {
    /// A quote, parsed.
    Quote(QuoteInfo),
    /// Another kind, not parsed further (this crate verifies quotes only).
    Other(AttestType),
}

/// A parsed TPMS_ATTEST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attest {
    /// qualifiedSigner (TPM2B_NAME).
    pub qualified_signer: Vec<u8>,
    /// extraData (TPM2B_DATA): the verifier's qualifying data.
    pub extra_data: Vec<u8>,
    /// clockInfo.
    pub clock: ClockInfo,
    /// firmwareVersion.
    pub firmware_version: u64,
    /// attested.
    pub attested: Attested,
}

impl Attest {
    /// Parses a TPMS_ATTEST. The magic is checked first; a quote's body is
    /// parsed to its last byte and nothing may follow it. Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Self, AttestError> {
        let mut r = Reader::new(bytes);
        let magic = r.u32("magic")?;
        if magic != TPM_GENERATED_VALUE {
            return Err(AttestError::BadMagic(magic));
        }
        let tag = r.u16("type")?;
        let kind = AttestType::from_tag(tag).ok_or(AttestError::UnknownType(tag))?;
        let qualified_signer = r.tpm2b("qualifiedSigner", wire::MAX_NAME)?.to_vec();
        let extra_data = r.tpm2b("extraData", wire::MAX_DIGEST)?.to_vec();
        let clock = r.u64("clockInfo.clock")?;
        let reset_count = r.u32("clockInfo.resetCount")?;
        let restart_count = r.u32("clockInfo.restartCount")?;
        let safe = match r.u8("clockInfo.safe")? {
            0 => false,
            1 => true,
            v => {
                return Err(WireError::BadValue {
                    field: "clockInfo.safe",
                    value: u64::from(v),
                }
                .into())
            }
        };
        let firmware_version = r.u64("firmwareVersion")?;
        let attested = match kind {
            AttestType::Quote => {
                let selection = super::pcr::parse_selection(&mut r)?;
                let pcr_digest = r.tpm2b("pcrDigest", wire::MAX_DIGEST)?.to_vec();
                r.finish("TPMS_ATTEST")?;
                Attested::Quote(QuoteInfo {
                    selection,
                    pcr_digest,
                })
            }
            other => Attested::Other(other),
        };
        Ok(Attest {
            qualified_signer,
            extra_data,
            clock: ClockInfo {
                clock,
                reset_count,
                restart_count,
                safe,
            },
            firmware_version,
            attested,
        })
    }

    /// The quote, or which other kind of attestation this is.
    pub fn quote(&self) -> Result<&QuoteInfo, AttestError> {
        match &self.attested {
            Attested::Quote(q) => Ok(q),
            Attested::Other(kind) => Err(AttestError::NotAQuote(*kind)),
        }
    }

    /// The type.
    pub fn kind(&self) -> AttestType {
        match self.attested {
            Attested::Quote(_) => AttestType::Quote,
            Attested::Other(kind) => kind,
        }
    }
}

/// Builds TPMS_ATTEST bytes (tests and the fuzz corpus; a verifier never
/// marshals one).
#[doc(hidden)]
pub fn marshal(attest: &Attest) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&TPM_GENERATED_VALUE.to_be_bytes());
    out.extend_from_slice(&attest.kind().tag().to_be_bytes());
    push_2b(&mut out, &attest.qualified_signer);
    push_2b(&mut out, &attest.extra_data);
    out.extend_from_slice(&attest.clock.clock.to_be_bytes());
    out.extend_from_slice(&attest.clock.reset_count.to_be_bytes());
    out.extend_from_slice(&attest.clock.restart_count.to_be_bytes());
    out.push(u8::from(attest.clock.safe));
    out.extend_from_slice(&attest.firmware_version.to_be_bytes());
    if let Attested::Quote(q) = &attest.attested {
        out.extend_from_slice(&(q.selection.len() as u32).to_be_bytes());
        for s in &q.selection {
            out.extend_from_slice(&s.bank.to_be_bytes());
            out.push(s.bitmap.len() as u8);
            out.extend_from_slice(&s.bitmap);
        }
        push_2b(&mut out, &q.pcr_digest);
    }
    out
}

fn push_2b(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u16).to_be_bytes());
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tpm::wire::alg;

    fn sample() -> Attest {
        Attest {
            qualified_signer: vec![0, 0x0b, 1, 2, 3],
            extra_data: vec![7; 32],
            clock: ClockInfo {
                clock: 1000,
                reset_count: 2,
                restart_count: 0,
                safe: true,
            },
            firmware_version: 0x2019_0102,
            attested: Attested::Quote(QuoteInfo {
                selection: vec![PcrSelect::new(alg::SHA256, &[0, 11, 23])],
                pcr_digest: vec![9; 32],
            }),
        }
    }

    #[test]
    fn round_trips() {
        let a = sample();
        assert_eq!(Attest::parse(&marshal(&a)), Ok(a));
    }

    #[test]
    fn bad_magic_is_named() {
        let mut b = marshal(&sample());
        b[0] = 0;
        assert_eq!(Attest::parse(&b), Err(AttestError::BadMagic(0x0054_4347)));
    }

    #[test]
    fn other_kinds_are_named_not_quotes() {
        for (tag, kind) in [
            (0x8017u16, AttestType::Certify),
            (0x8019, AttestType::Time),
            (0x8016, AttestType::SessionAudit),
            (0x8015, AttestType::CommandAudit),
            (0x8014, AttestType::Nv),
        ] {
            let mut b = marshal(&sample());
            b[4..6].copy_from_slice(&tag.to_be_bytes());
            let a = Attest::parse(&b).map_err(|e| e.to_string());
            assert_eq!(a.as_ref().map(Attest::kind), Ok(kind));
            let err = a.ok().map(|a| a.quote().map(|_| ()));
            assert_eq!(err, Some(Err(AttestError::NotAQuote(kind))));
        }
        let mut b = marshal(&sample());
        b[4..6].copy_from_slice(&0x8001u16.to_be_bytes());
        assert_eq!(Attest::parse(&b), Err(AttestError::UnknownType(0x8001)));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let b = marshal(&sample());
        for n in 0..b.len() {
            assert!(Attest::parse(&b[..n]).is_err(), "prefix {n} parsed");
        }
    }

    #[test]
    fn trailing_and_oversized_fields_are_errors() {
        let mut b = marshal(&sample());
        b.push(0);
        assert!(matches!(
            Attest::parse(&b),
            Err(AttestError::Wire(WireError::Trailing { count: 1, .. }))
        ));
        // extraData larger than TPM2B_DATA allows.
        let mut a = sample();
        a.extra_data = vec![0; 65];
        assert!(matches!(
            Attest::parse(&marshal(&a)),
            Err(AttestError::Wire(WireError::Oversized {
                field: "extraData",
                ..
            }))
        ));
        // 17 PCR banks.
        let mut a = sample();
        if let Attested::Quote(q) = &mut a.attested {
            q.selection = vec![PcrSelect::new(alg::SHA256, &[1]); 17];
        }
        assert!(matches!(
            Attest::parse(&marshal(&a)),
            Err(AttestError::Wire(WireError::Oversized { .. }))
        ));
        // safe must be YES or NO.
        let mut b = marshal(&sample());
        let safe_at = 4 + 2 + 2 + 5 + 2 + 32 + 8 + 4 + 4;
        b[safe_at] = 2;
        assert!(matches!(
            Attest::parse(&b),
            Err(AttestError::Wire(WireError::BadValue { .. }))
        ));
    }
}
