#![no_main]
use libfuzzer_sys::fuzz_target;

// The tier policy TOML, then a classification with it.
fuzz_target!(|data: &[u8]| {
    if let Ok(p) = fluxnode_hal::tier::Policy::from_toml(&String::from_utf8_lossy(data)) {
        let _ = fluxnode_hal::tier::classify(&p, &fluxnode_hal::tier::Facts::default());
    }
});
