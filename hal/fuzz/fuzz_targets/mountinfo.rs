#![no_main]
use libfuzzer_sys::fuzz_target;

// /proc/self/mountinfo text.
fuzz_target!(|data: &[u8]| {
    let _ = fluxnode_hal::inventory::disk::device_of(&String::from_utf8_lossy(data), "/var");
});
