//! /proc/self/mountinfo escapes paths with octal; a path can hold anything.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = fluxnode_init::mounts::parse_mountinfo(&String::from_utf8_lossy(data));
});
