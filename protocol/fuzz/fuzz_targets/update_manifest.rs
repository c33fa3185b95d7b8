#![no_main]
use libfuzzer_sys::fuzz_target;

use fluxnode_protocol::update::{self, NodeFacts, UpdateManifest, Waves};

// The update manifest a node reads after TUF verified it: a compromised
// or buggy publisher must still not make the parser or the checks panic,
// allocate without bound, or loop.
fuzz_target!(|data: &[u8]| {
    if let Ok(m) = UpdateManifest::parse(data) {
        let node = NodeFacts {
            running_version: "0.1.0",
            compatible: "fluxnode-x86_64-uefi-ab1",
            slot_size: 128 << 20,
            min_security_version: 1,
        };
        let _ = update::check_installable(&m, &node, false);
        let _ = Waves(&m).start_at(update::wave_position(data));
        let total: u64 = m.root.spans().map(|(_, c)| u64::from(c.len)).sum();
        assert_eq!(total, m.root.size);
        let _ = m.uki_for("a");
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let (a, b) = s.split_at(s.len() / 2);
        let _ = update::cmp_versions(a, b);
    }
});
