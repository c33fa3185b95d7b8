#![no_main]
use libfuzzer_sys::fuzz_target;

// PCR selections (`sha256:0,1,7`).
fuzz_target!(|data: &[u8]| {
    let _ = String::from_utf8_lossy(data).parse::<fluxnode_hal::tpm::pcr::PcrSelection>();
});
