#![no_main]
use libfuzzer_sys::fuzz_target;

use fluxnode_ota::esp::Entry;
use fluxnode_ota::state::{Attempt, Progress};

// What the update client reads back from /var and the ESP after a power
// cut or at the hands of someone with the disk: the journal, the history,
// and boot entry names; and the local API's request lines. Damage must be
// an error, never a panic.
fuzz_target!(|data: &[u8]| {
    if let Ok(p) = serde_json::from_slice::<Progress>(data) {
        let n = (data.len() % 70_000) + 1;
        let b = p.done_bitmap(n);
        assert!(b.count() <= n);
        let _ = p.is_done(usize::MAX / 2);
    }
    let _ = serde_json::from_slice::<Vec<Attempt>>(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = fluxnode_ota::api::Request::parse(s);
        if let Some(e) = Entry::parse(s) {
            assert!(e.file == s && !e.version.is_empty());
        }
    }
});
