#![no_main]
use libfuzzer_sys::fuzz_target;

// /proc/cpuinfo text: any input gives facts, never a panic.
fuzz_target!(|data: &[u8]| {
    let _ = fluxnode_hal::inventory::cpu::parse(&String::from_utf8_lossy(data));
});
