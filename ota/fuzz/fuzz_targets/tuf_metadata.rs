#![no_main]
use libfuzzer_sys::fuzz_target;

use tough::schema::{Root, Signed, Snapshot, Targets, Timestamp};

// The TUF metadata a repository (or whoever sits between it and the node)
// sends: every role's JSON as tough parses it, then the signature checks
// the client makes against the parsed root. None of it may panic or run
// unbounded. (tough is the parser; this target holds it to our rules.)
fuzz_target!(|data: &[u8]| {
    let root = serde_json::from_slice::<Signed<Root>>(data).ok();
    let _ = serde_json::from_slice::<Signed<Timestamp>>(data);
    let _ = serde_json::from_slice::<Signed<Snapshot>>(data);
    let targets = serde_json::from_slice::<Signed<Targets>>(data).ok();
    if let Some(root) = &root {
        let _ = root.signed.verify_role(root);
        if let Some(t) = &targets {
            let _ = root.signed.verify_role(t);
        }
    }
});
