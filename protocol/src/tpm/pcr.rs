//! PCR selections and the quote's PCR digest.
//!
//! TPM2_Quote signs only a digest of the selected PCRs: the node sends the
//! values, and the verifier recomputes the digest from them (SHA-256 over
//! the values concatenated in selection order: bank by bank as the quote
//! lists them, PCR index ascending within a bank) before comparing the
//! values with its policy.

use std::collections::BTreeSet;

use sha2::{Digest as _, Sha256};
use thiserror::Error;

use super::wire::{self, alg, Reader, WireError};
use crate::types::PcrValues;

/// TPMS_PCR_SELECTION: a bank and a bitmap of PCR indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelect {
    /// The bank's hash algorithm (TPM_ALG_ID).
    pub bank: u16,
    /// pcrSelect: bit `i % 8` of byte `i / 8` selects PCR `i`.
    pub bitmap: Vec<u8>,
}

impl PcrSelect {
    /// A selection of `indices` (each below 32) in `bank`, three bytes of
    /// bitmap (24 PCRs) or four when an index needs it.
    pub fn new(bank: u16, indices: &[u8]) -> Self {
        let len = if indices.iter().any(|&i| i >= 24) {
            4
        } else {
            3
        };
        let mut bitmap = vec![0u8; len];
        for &i in indices {
            if let Some(b) = bitmap.get_mut(usize::from(i / 8)) {
                *b |= 1 << (i % 8);
            }
        }
        PcrSelect { bank, bitmap }
    }

    /// The selected indices, ascending.
    pub fn indices(&self) -> impl Iterator<Item = u8> + '_ {
        self.bitmap.iter().enumerate().flat_map(|(byte, bits)| {
            (0..8u8).filter_map(move |bit| {
                // byte < PCR_SELECT_MAX (4) once parsed; saturate otherwise.
                let index = u8::try_from(byte).ok()?.checked_mul(8)?.checked_add(bit)?;
                (bits & (1 << bit) != 0).then_some(index)
            })
        })
    }

    /// Whether no PCR is selected.
    pub fn is_empty(&self) -> bool {
        self.bitmap.iter().all(|b| *b == 0)
    }
}

/// Reads a TPML_PCR_SELECTION.
pub(crate) fn parse_selection(r: &mut Reader<'_>) -> Result<Vec<PcrSelect>, WireError> {
    let count = r.u32("pcrSelect.count")?;
    let count = usize::try_from(count).unwrap_or(usize::MAX);
    if count > wire::MAX_PCR_BANKS {
        return Err(WireError::Oversized {
            field: "pcrSelect.count",
            size: count,
            max: wire::MAX_PCR_BANKS,
        });
    }
    let mut out = Vec::with_capacity(count);
    for _ in 0..count {
        let bank = r.u16("pcrSelections.hash")?;
        let size = usize::from(r.u8("pcrSelections.sizeofSelect")?);
        if size > wire::PCR_SELECT_MAX {
            return Err(WireError::Oversized {
                field: "pcrSelections.sizeofSelect",
                size,
                max: wire::PCR_SELECT_MAX,
            });
        }
        let bitmap = r.bytes("pcrSelections.pcrSelect", size)?.to_vec();
        out.push(PcrSelect { bank, bitmap });
    }
    Ok(out)
}

/// Why a quote's PCRs do not check.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PcrError {
    /// Only SHA-1 banks are quoted: SHA-1 collisions are practical.
    #[error("the quote selects only SHA-1 PCR banks")]
    Sha1Only,
    /// A bank other than SHA-256 is quoted; values are checked in SHA-256.
    #[error("the quote selects PCRs in bank {0:#06x}; only sha256 is accepted")]
    UnsupportedBank(u16),
    /// A PCR the policy requires is not in the quote.
    #[error("PCR {0} (sha256) is required but not quoted")]
    NotSelected(u8),
    /// The node claimed no value for a quoted PCR.
    #[error("no value claimed for quoted PCR {0} (sha256)")]
    ValueMissing(u8),
    /// The claimed values do not hash to the quoted digest.
    #[error("the claimed PCR values do not hash to the quoted PCR digest")]
    DigestMismatch,
}

/// Checks the selection: SHA-256 banks only (a SHA-1-only selection named
/// as such), covering every PCR in `required`.
pub fn check_selection(selection: &[PcrSelect], required: &[u8]) -> Result<(), PcrError> {
    let used: Vec<&PcrSelect> = selection.iter().filter(|s| !s.is_empty()).collect();
    if !used.is_empty() && used.iter().all(|s| s.bank == alg::SHA1) {
        return Err(PcrError::Sha1Only);
    }
    if let Some(s) = used.iter().find(|s| s.bank != alg::SHA256) {
        return Err(PcrError::UnsupportedBank(s.bank));
    }
    let covered: BTreeSet<u8> = used.iter().flat_map(|s| s.indices()).collect();
    match required.iter().find(|i| !covered.contains(i)) {
        Some(&i) => Err(PcrError::NotSelected(i)),
        None => Ok(()),
    }
}

/// SHA-256 over the claimed values of the selected PCRs in selection
/// order. Every selected bank must be SHA-256 (see [`check_selection`]).
pub fn pcr_digest(selection: &[PcrSelect], values: &PcrValues) -> Result<[u8; 32], PcrError> {
    let mut h = Sha256::new();
    for s in selection.iter().filter(|s| !s.is_empty()) {
        if s.bank != alg::SHA256 {
            return Err(PcrError::UnsupportedBank(s.bank));
        }
        for i in s.indices() {
            let v = values.sha256.get(&i).ok_or(PcrError::ValueMissing(i))?;
            h.update(v.0);
        }
    }
    Ok(h.finalize().into())
}

/// Recomputes the digest of the selected PCRs from `values` and compares
/// it with the quoted one.
pub fn check_digest(
    selection: &[PcrSelect],
    quoted: &[u8],
    values: &PcrValues,
) -> Result<(), PcrError> {
    if pcr_digest(selection, values)?.as_slice() == quoted {
        Ok(())
    } else {
        Err(PcrError::DigestMismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Sha256Digest;

    #[test]
    fn indices_come_back_ascending() {
        let s = PcrSelect::new(alg::SHA256, &[23, 0, 9, 11, 12]);
        assert_eq!(s.bitmap.len(), 3);
        assert_eq!(s.indices().collect::<Vec<_>>(), vec![0, 9, 11, 12, 23]);
        assert_eq!(PcrSelect::new(alg::SHA256, &[31]).bitmap.len(), 4);
    }

    #[test]
    fn digest_is_over_values_in_selection_order() {
        let mut v = PcrValues::default();
        v.sha256.insert(9, Sha256Digest([9; 32]));
        v.sha256.insert(11, Sha256Digest([11; 32]));
        let sel = [PcrSelect::new(alg::SHA256, &[11, 9])];
        let mut cat = vec![9u8; 32];
        cat.extend_from_slice(&[11; 32]);
        let want: [u8; 32] = Sha256::digest(&cat).into();
        assert_eq!(pcr_digest(&sel, &v), Ok(want));
        assert_eq!(check_digest(&sel, &want, &v), Ok(()));
        assert_eq!(
            check_digest(&sel, &[0; 32], &v),
            Err(PcrError::DigestMismatch)
        );
        let sel = [PcrSelect::new(alg::SHA256, &[9, 12])];
        assert_eq!(pcr_digest(&sel, &v), Err(PcrError::ValueMissing(12)));
    }

    #[test]
    fn selection_rules() {
        let sha1 = [PcrSelect::new(alg::SHA1, &[9, 11, 12])];
        assert_eq!(check_selection(&sha1, &[9]), Err(PcrError::Sha1Only));
        let mixed = [
            PcrSelect::new(alg::SHA1, &[9]),
            PcrSelect::new(alg::SHA256, &[9]),
        ];
        assert_eq!(
            check_selection(&mixed, &[9]),
            Err(PcrError::UnsupportedBank(alg::SHA1))
        );
        // An empty SHA-1 bitmap next to SHA-256 selects nothing: fine.
        let ok = [
            PcrSelect::new(alg::SHA1, &[]),
            PcrSelect::new(alg::SHA256, &[9, 11, 12]),
        ];
        assert_eq!(check_selection(&ok, &[9, 11, 12]), Ok(()));
        let short = [PcrSelect::new(alg::SHA256, &[9, 11])];
        assert_eq!(
            check_selection(&short, &[9, 11, 12]),
            Err(PcrError::NotSelected(12))
        );
    }
}
