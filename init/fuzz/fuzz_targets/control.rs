//! Control-socket requests come from any local client.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fluxnode_init::control::Request::parse(&String::from_utf8_lossy(data));
});
