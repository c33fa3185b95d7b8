#![no_main]
use libfuzzer_sys::fuzz_target;

// EK certificates read from TPM NV.
fuzz_target!(|data: &[u8]| {
    let _ = fluxnode_hal::tpm::keys::describe_certificate(data);
});
