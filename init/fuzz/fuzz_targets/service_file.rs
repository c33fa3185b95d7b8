//! Service files are written by image builders and operators: any text must
//! give a service or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = fluxnode_init::config::parse_service("fuzz", Path::new("/fuzz.toml"), text, Path::new("/"));
        let _: Result<fluxnode_init::config::InitConfig, _> = toml::from_str(text);
    }
});
