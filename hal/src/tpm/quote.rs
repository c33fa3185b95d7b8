//! Quotes: the TPM signs the current PCR digest together with the
//! verifier's qualifying data, using the AK.

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tss_esapi::abstraction::pcr;
use tss_esapi::structures::{AttestInfo, Data, SignatureScheme};
use tss_esapi::traits::Marshall;

use super::keys::AkBlob;
use super::pcr::PcrSelection;
use super::Tpm;
use crate::error::{Error, Result};

/// A quote, in the raw forms a verifier (or `tpm2_checkquote`) takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// TPMS_ATTEST as signed (`tpm2_checkquote -m`).
    #[serde(with = "hex::serde")]
    pub attest: Vec<u8>,
    /// TPMT_SIGNATURE (`tpm2_checkquote -s`).
    #[serde(with = "hex::serde")]
    pub signature: Vec<u8>,
    /// The selection quoted, tpm2-tools syntax (`tpm2_checkquote -l`).
    pub selection: String,
    /// PCR values read right after the quote, in selection order (bank,
    /// then index ascending), concatenated (`tpm2_checkquote -f`).
    #[serde(with = "hex::serde")]
    pub pcr_values: Vec<u8>,
    /// The same values, one per PCR.
    pub pcrs: Vec<PcrValue>,
    /// The qualifying data echoed in the quote (extraData).
    #[serde(with = "hex::serde")]
    pub extra_data: Vec<u8>,
    /// TPM clock (ms) at the quote, and its reset/restart counters: a
    /// verifier checks they move forward between quotes of one session.
    pub clock: u64,
    /// Reset count.
    pub reset_count: u32,
    /// Restart count.
    pub restart_count: u32,
}

/// One PCR value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PcrValue {
    /// Bank.
    pub bank: super::pcr::Bank,
    /// Index.
    pub index: u8,
    /// Value, hex.
    #[serde(with = "hex::serde")]
    pub value: Vec<u8>,
}

impl Tpm {
    /// Quotes `selection` with `qualifying_data` (at most 64 bytes; a nonce or
    /// H(label ‖ nonce ‖ H(report))) using the AK in `blob`.
    pub fn quote(
        &mut self,
        blob: &AkBlob,
        selection: &PcrSelection,
        qualifying_data: &[u8],
    ) -> Result<Quote> {
        // PCRs are read after the quote (TPM2_Quote returns only their
        // digest): if something extended one in between, the values would
        // not match the quote. Check, and quote again.
        for _ in 0..3 {
            let (consistent, q) = self.quote_once(blob, selection, qualifying_data)?;
            if consistent {
                return Ok(q);
            }
            tracing::info!("a PCR changed between Quote and PCR_Read; quoting again");
        }
        Err(Error::tpm(
            "Quote",
            "PCR values kept changing between TPM2_Quote and TPM2_PCR_Read (3 tries)",
        ))
    }

    fn quote_once(
        &mut self,
        blob: &AkBlob,
        selection: &PcrSelection,
        qualifying_data: &[u8],
    ) -> Result<(bool, Quote)> {
        let data = Data::try_from(qualifying_data.to_vec())
            .map_err(|e| Error::tpm("Quote (qualifying data too long, max 64 bytes)", e))?;
        let list = selection.to_tss()?;
        let (attest, signature) = self.with_ak(blob, |t, ak| {
            t.ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.quote(ak, data, SignatureScheme::Null, list.clone())
                })
                .map_err(|e| Error::tpm("Quote", e))
        })?;
        let pcr_data = pcr::read_all(&mut self.ctx, list).map_err(|e| Error::tpm("PCR_Read", e))?;
        let mut pcr_values = Vec::new();
        let mut pcrs = Vec::new();
        for (bank, idx) in &selection.0 {
            let b = pcr_data.pcr_bank(bank.alg()).ok_or_else(|| {
                Error::tpm("PCR_Read", format!("bank {} not returned", bank.name()))
            })?;
            for i in idx {
                let slot = tss_esapi::structures::PcrSlot::try_from(1u32 << i)
                    .map_err(|e| Error::tpm("PCR_Read", e))?;
                let d = b.get_digest(slot).ok_or_else(|| {
                    Error::tpm("PCR_Read", format!("{}:{i} not returned", bank.name()))
                })?;
                pcr_values.extend_from_slice(d.value());
                pcrs.push(PcrValue {
                    bank: *bank,
                    index: *i,
                    value: d.value().to_vec(),
                });
            }
        }
        // The AK signs with SHA-256, so the quote's pcrDigest is SHA-256
        // over the selected values in selection order.
        let consistent = match attest.attested() {
            AttestInfo::Quote { info } => {
                info.pcr_digest().value() == Sha256::digest(&pcr_values).as_slice()
            }
            _ => {
                return Err(Error::tpm(
                    "Quote",
                    "the TPM returned a non-quote attestation",
                ))
            }
        };
        let clock = attest.clock_info();
        let quote = Quote {
            extra_data: attest.extra_data().value().to_vec(),
            clock: clock.clock(),
            reset_count: clock.reset_count(),
            restart_count: clock.restart_count(),
            attest: attest
                .marshall()
                .map_err(|e| Error::tpm("Quote (marshal TPMS_ATTEST)", e))?,
            signature: signature
                .marshall()
                .map_err(|e| Error::tpm("Quote (marshal TPMT_SIGNATURE)", e))?,
            selection: selection.to_string(),
            pcr_values,
            pcrs,
        };
        Ok((consistent, quote))
    }
}

/// Attestations other than a quote that an AK can sign: what a verifier
/// must refuse when one is sent in a quote's place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherAttestation {
    /// TPM2_GetTime (TPM_ST_ATTEST_TIME).
    GetTime,
    /// TPM2_Certify of the AK itself (TPM_ST_ATTEST_CERTIFY).
    Certify,
}

impl Tpm {
    /// Signs `kind` with the AK over `qualifying_data`; returns TPMS_ATTEST
    /// and TPMT_SIGNATURE as the TPM gave them. For verifier tests: a quote
    /// verifier must refuse these by their type.
    pub fn attest_other(
        &mut self,
        blob: &AkBlob,
        kind: OtherAttestation,
        qualifying_data: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        use tss_esapi::interface_types::session_handles::AuthSession;
        let data = Data::try_from(qualifying_data.to_vec())
            .map_err(|e| Error::tpm("qualifying data too long (max 64 bytes)", e))?;
        let what = match kind {
            OtherAttestation::GetTime => "GetTime",
            OtherAttestation::Certify => "Certify",
        };
        let (attest, signature) = self.with_ak(blob, |t, ak| {
            let sessions = (
                Some(AuthSession::Password),
                Some(AuthSession::Password),
                None,
            );
            t.ctx
                .execute_with_sessions(sessions, |ctx| match kind {
                    OtherAttestation::GetTime => ctx.get_time(ak, data, SignatureScheme::Null),
                    OtherAttestation::Certify => {
                        ctx.certify(ak.into(), ak, data, SignatureScheme::Null)
                    }
                })
                .map_err(|e| Error::tpm(what, e))
        })?;
        Ok((
            attest.marshall().map_err(|e| Error::tpm(what, e))?,
            signature.marshall().map_err(|e| Error::tpm(what, e))?,
        ))
    }

    /// TPM2_Quote over `selection` without reading the PCRs back (a bank
    /// the TPM has not allocated has no values to read). For verifier
    /// tests; [`Tpm::quote`] is what a node uses.
    pub fn quote_raw(
        &mut self,
        blob: &AkBlob,
        selection: &PcrSelection,
        qualifying_data: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>)> {
        let data = Data::try_from(qualifying_data.to_vec())
            .map_err(|e| Error::tpm("Quote (qualifying data too long, max 64 bytes)", e))?;
        let list = selection.to_tss()?;
        let (attest, signature) = self.with_ak(blob, |t, ak| {
            t.ctx
                .execute_with_nullauth_session(|ctx| {
                    ctx.quote(ak, data, SignatureScheme::Null, list.clone())
                })
                .map_err(|e| Error::tpm("Quote", e))
        })?;
        Ok((
            attest.marshall().map_err(|e| Error::tpm("Quote", e))?,
            signature.marshall().map_err(|e| Error::tpm("Quote", e))?,
        ))
    }
}
