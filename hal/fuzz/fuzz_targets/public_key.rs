#![no_main]
use libfuzzer_sys::fuzz_target;

// TPM2B_PUBLIC sent by a node (the verifier computes name and attributes).
fuzz_target!(|data: &[u8]| {
    let _ = fluxnode_hal::tpm::keys::inspect_public(data);
});
