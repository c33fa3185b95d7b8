#![no_main]
use libfuzzer_sys::fuzz_target;

use fluxnode_apps::unpack::{unpack_layer, Options, Ownership};

// A layer blob straight from a registry: any bytes, compressed or not.
// Unpacking must refuse or succeed, never panic, and never write outside
// its directory (checked: the sibling stays empty).
fuzz_target!(|data: &[u8]| {
    let Ok(tmp) = tempfile::tempdir() else { return };
    let dest = tmp.path().join("layer");
    let outside = tmp.path().join("outside");
    if std::fs::create_dir(&dest).is_err() || std::fs::create_dir(&outside).is_err() {
        return;
    }
    let opts = Options {
        max_bytes: 1 << 20,
        max_entries: 1000,
        ownership: Ownership::Ignore,
    };
    let _ = unpack_layer(data, &dest, &opts);
    let escaped = std::fs::read_dir(&outside).map(|d| d.count()).unwrap_or(0);
    assert_eq!(escaped, 0, "the layer wrote outside its directory");
});
