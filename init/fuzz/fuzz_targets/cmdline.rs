//! The kernel command line comes from the bootloader entry.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let c = fluxnode_init::cmdline::Cmdline::parse(&text);
    let _ = c.get("fluxnode.slot");
    let _ = c.flag("quiet");
    let _ = c.fluxnode_keys().count();
});
