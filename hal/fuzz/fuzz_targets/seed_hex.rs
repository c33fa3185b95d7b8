#![no_main]
use libfuzzer_sys::fuzz_target;

// Seeds given on the command line or in JSON.
fuzz_target!(|data: &[u8]| {
    let _ = String::from_utf8_lossy(data).parse::<fluxnode_hal::seed::Seed>();
});
