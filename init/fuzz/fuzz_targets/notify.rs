//! sd_notify datagrams come from any service.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fluxnode_init::notify::parse(data);
});
