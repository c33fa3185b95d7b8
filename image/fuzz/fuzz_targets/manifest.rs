//! The manifest parser (the flasher reads manifests it did not write).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = fluxnode_image::Manifest::parse(s);
    }
});
