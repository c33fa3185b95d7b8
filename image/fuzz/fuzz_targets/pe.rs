//! PE header pinning over arbitrary bytes: errors, never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut pe = data.to_vec();
    let _ = fluxnode_image::uki::pin_pe(&mut pe, 1);
});
