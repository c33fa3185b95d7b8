//! The TOML image spec parser: any text, no panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = fluxnode_image::spec::parse_for_fuzz(s);
    }
});
