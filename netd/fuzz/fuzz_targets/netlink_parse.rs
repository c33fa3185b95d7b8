//! Kernel replies go through the netlink splitters and readers: no panics
//! on any byte string.
#![no_main]

use fluxnode_netd::netlink::{parse_address, parse_link, parse_route, split_attrs, split_messages};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(msgs) = split_messages(data) {
        for m in msgs {
            let _ = (parse_link(m.payload), parse_address(m.payload), parse_route(m.payload));
        }
    }
    let _ = split_attrs(data, 0);
});
