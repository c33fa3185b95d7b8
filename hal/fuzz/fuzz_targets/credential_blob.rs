#![no_main]
use libfuzzer_sys::fuzz_target;

// tpm2_makecredential output files.
fuzz_target!(|data: &[u8]| {
    let _ = fluxnode_hal::tpm::credential::CredentialBlob::from_tpm2_tools(data);
});
