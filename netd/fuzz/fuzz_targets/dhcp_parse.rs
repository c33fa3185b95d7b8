//! Any datagram on port 68 goes through `Message::parse` (and any packet
//! the packet socket sees through `udp_payload` first): it must never
//! panic, and whatever parses must re-encode into something that parses to
//! the same options. Whatever parses then goes through the lease check
//! (`dhcp::check`), which must never panic either and must never let
//! through what it exists to refuse: a non-unicast address, a prefix
//! under /8, a default route without a router, a short option 121 route.
#![no_main]

use fluxnode_netd::dhcp::check::{check, not_unicast, MIN_PREFIX};
use fluxnode_netd::dhcp::packet::{classless_routes, Message};
use fluxnode_netd::arp;
use fluxnode_netd::dhcp::socket::udp_payload;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = classless_routes(data);
    let _ = arp::parse(data);
    // Raw packets from the packet socket: IPv4 + UDP unwrapping, then DHCP.
    if let Some(p) = udp_payload(data) {
        let _ = Message::parse(p);
    }
    if let Ok(m) = Message::parse(data) {
        let again = Message::parse(&m.encode()).expect("re-encoded message parses");
        assert_eq!(again.xid, m.xid);
        assert_eq!(again.options.get(&53), m.options.get(&53));
        let _ = (m.message_type(), m.option_ips(3), m.option_u32(51), m.option_text(56));
        if let Some(v) = m.options.get(&121) {
            let _ = classless_routes(v);
        }
        for classless in [false, true] {
            let Ok(o) = check(&m, classless) else {
                continue;
            };
            assert!(not_unicast(o.address).is_none());
            assert!(not_unicast(o.server).is_none());
            assert!(o.prefix >= MIN_PREFIX && o.prefix <= 32);
            assert!(o.gateway.is_none_or(|g| not_unicast(g).is_none() && g != o.address));
            assert!(o.dns.iter().all(|d| not_unicast(*d).is_none()));
            assert!(classless || o.routes.is_empty());
            assert!(o.routes.iter().all(|r| r.prefix >= MIN_PREFIX));
        }
    }
});
