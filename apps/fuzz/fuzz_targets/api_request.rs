//! The app daemon's API request parser (`fluxnode_apps::api::parse`):
//! whatever a local client sends, it returns a request or a reason, and a
//! request it accepts survives a round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = fluxnode_apps::api::parse(data) {
        let mut again = serde_json::to_vec(&r).expect("a parsed request serialises");
        again.push(b'\n');
        if again.len() <= fluxnode_apps::api::MAX_REQUEST {
            assert_eq!(fluxnode_apps::api::parse(&again).ok(), Some(r));
        }
    }
});
