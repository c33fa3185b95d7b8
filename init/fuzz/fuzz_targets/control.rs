//! Control-socket requests come from any local client, in any pieces.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fluxnode_init::control::Request::parse(&String::from_utf8_lossy(data));
    // What the server makes of the bytes so far, open or closed.
    for eof in [false, true] {
        let _ = fluxnode_init::control::protocol::received(data, eof);
    }
});
