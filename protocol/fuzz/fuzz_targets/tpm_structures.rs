#![no_main]
use libfuzzer_sys::fuzz_target;

use fluxnode_protocol::tpm::attest::Attest;
use fluxnode_protocol::tpm::public::Public;
use fluxnode_protocol::tpm::signature::{AttestationKey, Signature};

// Everything a node sends the verifier as TPM bytes: TPMS_ATTEST,
// TPMT_PUBLIC / TPM2B_PUBLIC, TPMT_SIGNATURE. None of it may panic.
fuzz_target!(|data: &[u8]| {
    if let Ok(a) = Attest::parse(data) {
        let _ = a.quote();
    }
    let _ = Public::from_tpmt(data);
    let _ = Public::from_tpm2b(data);
    let _ = Signature::parse(data);
    if let Ok(ak) = AttestationKey::from_tpmt(data) {
        let _ = ak.verify(data, data);
    }
});
