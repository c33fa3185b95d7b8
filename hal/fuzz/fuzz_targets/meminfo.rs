#![no_main]
use libfuzzer_sys::fuzz_target;

// /proc/meminfo text.
fuzz_target!(|data: &[u8]| {
    let _ = fluxnode_hal::inventory::memory::parse(&String::from_utf8_lossy(data));
});
