//! TPM 2.0 structures as a verifier receives them, parsed and checked
//! without a TPM: TPMS_ATTEST, TPMT_PUBLIC, TPMT_SIGNATURE, PCR selections.

pub mod attest;
pub mod makecredential;
pub mod pcr;
pub mod public;
pub mod signature;
pub mod wire;
