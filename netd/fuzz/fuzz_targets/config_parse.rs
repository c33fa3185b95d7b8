//! The kernel command line and the config file are operator input: the
//! parser returns a config or an error, never a panic.
#![no_main]

use std::path::Path;

use fluxnode_netd::config::from_texts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let (file, cmdline) = text.split_once('\u{1}').unwrap_or(("", &text));
    let _ = from_texts(Some((Path::new("netd.toml"), file)), cmdline);
    let _ = from_texts(None, cmdline);
});
