//! What netd believes of a DHCP server's answer, and what it refuses.
//!
//! Whoever answers on port 67 is outside input: a broken server, or a
//! rogue one on the same LAN. The parser ([`super::packet`]) makes sure a
//! message is well formed; this module decides whether its values make
//! sense before any of them reaches the kernel. It is pure: a message in,
//! a checked [`Offered`] (or the [`Refused`] reason) out, and the client
//! ([`super::client`]) decides what a refusal means in its state.
//!
//! Two kinds of refusal:
//! - **fatal** ([`check`] returns `Err`): the lease itself is nonsense —
//!   an address that is not a host's unicast address, a subnet mask that
//!   is malformed, non-contiguous or shorter than /8, an address that is
//!   its subnet's network or broadcast address, a missing or unusable
//!   server identifier, or routers offered of which none is usable. The
//!   whole offer (or ACK) is refused;
//! - **dropped** ([`Offered::dropped`]): one router, DNS server, option 121
//!   route or the MTU is refused and the rest of the lease is used.
//!
//! Option 121 (classless static routes, RFC 3442) is opt-in: a DHCP server
//! that can install routes can steer traffic around a VPN (TunnelVision,
//! CVE-2024-3661: `0.0.0.0/1` and `128.0.0.0/1` via the attacker, more
//! specific than a VPN's default route). When on, routes are still
//! filtered by [`check_route`]. docs/NETD.md ("What netd refuses") gives
//! the reasons for every rule.

use std::net::Ipv4Addr;
use std::ops::RangeInclusive;

use super::packet::{classless_routes, mask_to_prefix, opt, ClasslessRoute, Message};

/// MTUs taken from a server: IPv4's 576-byte minimum datagram up to jumbo
/// frames. A smaller value would cripple the link; a server sending one is
/// wrong or hostile.
pub const MTU_RANGE: RangeInclusive<u16> = 576..=9216;

/// The shortest prefix taken for the link (subnet mask) and for an option
/// 121 route other than the default route. Shorter ones put (or route) a
/// large share of the address space through whatever the server names.
pub const MIN_PREFIX: u8 = 8;

/// A value from a server that netd does not use, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// `yiaddr` is not an address a host may hold.
    #[error("address {address} is {why}")]
    Address {
        /// The address offered.
        address: Ipv4Addr,
        /// Why not.
        why: &'static str,
    },
    /// Option 1 is not 4 bytes.
    #[error("subnet mask option is {len} bytes, not 4")]
    MaskLength {
        /// Its length.
        len: usize,
    },
    /// Option 1 is not a usable mask.
    #[error("subnet mask {mask} is {why}")]
    Mask {
        /// The mask sent.
        mask: Ipv4Addr,
        /// Why not.
        why: &'static str,
    },
    /// No option 54: replies cannot be matched to the server.
    #[error("no server identifier (option 54)")]
    NoServerId,
    /// Option 54 is not a unicast address.
    #[error("server identifier {server} is {why}")]
    ServerId {
        /// The identifier sent.
        server: Ipv4Addr,
        /// Why not.
        why: &'static str,
    },
    /// A router (option 3) that cannot be one.
    #[error("router {router} is {why}")]
    Router {
        /// The router.
        router: Ipv4Addr,
        /// Why not.
        why: &'static str,
    },
    /// Routers were offered, and none is usable: the lease would have no
    /// default route and the node would never be ready.
    #[error("none of the routers offered is usable")]
    NoRouter,
    /// A DNS server (option 6) that cannot be one.
    #[error("dns server {server} is {why}")]
    Dns {
        /// The server.
        server: Ipv4Addr,
        /// Why not.
        why: &'static str,
    },
    /// Option 26 outside [`MTU_RANGE`] or not 2 bytes.
    #[error("mtu option {value:?} is not a 2-byte value in 576..=9216")]
    Mtu {
        /// The option's bytes.
        value: Vec<u8>,
    },
    /// Option 121 does not follow RFC 3442's layout; all of it is void.
    #[error("classless static routes (option 121) malformed; all of them ignored")]
    RoutesMalformed,
    /// One option 121 route.
    #[error("classless route {}/{} via {}: {why}", route.dst, route.prefix, route.gateway)]
    Route {
        /// The route.
        route: ClasslessRoute,
        /// Why not.
        why: &'static str,
    },
    /// One option 121 route whose router cannot be one.
    #[error("classless route {}/{} via {}: its router is {why}", route.dst, route.prefix, route.gateway)]
    RouteRouter {
        /// The route.
        route: ClasslessRoute,
        /// Why its router is not usable.
        why: &'static str,
    },
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// Whether `a/ap` and `b/bp` share an address (one holds the other).
fn overlaps(a: Ipv4Addr, ap: u8, b: Ipv4Addr, bp: u8) -> bool {
    let m = mask(ap.min(bp));
    u32::from(a) & m == u32::from(b) & m
}

/// Why `a` cannot be a host's unicast address, when it cannot.
pub fn not_unicast(a: Ipv4Addr) -> Option<&'static str> {
    Some(match a.octets()[0] {
        _ if a.is_unspecified() => "unspecified (0.0.0.0)",
        0 => "in 0.0.0.0/8 (this network, never a host's address)",
        127 => "loopback (127.0.0.0/8)",
        224..=239 => "multicast (224.0.0.0/4)",
        _ if a.is_broadcast() => "the limited broadcast address",
        240..=255 => "reserved (240.0.0.0/4, class E)",
        _ => return None,
    })
}

/// The prefix a classful network gave an address, for servers that send
/// no mask. Only meaningful for unicast addresses (class A, B or C).
pub fn classful_prefix(a: Ipv4Addr) -> u8 {
    match a.octets()[0] {
        0..=127 => 8,
        128..=191 => 16,
        _ => 24,
    }
}

/// The link's subnet as the lease sets it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// Our address.
    pub address: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
}

impl Subnet {
    fn contains(&self, a: Ipv4Addr) -> bool {
        overlaps(self.address, self.prefix, a, 32)
    }

    /// The network and broadcast addresses, when the subnet has them
    /// (not /31 nor /32, RFC 3021).
    fn edges(&self) -> Option<(Ipv4Addr, Ipv4Addr)> {
        let m = mask(self.prefix);
        (self.prefix <= 30).then(|| {
            let a = u32::from(self.address);
            (Ipv4Addr::from(a & m), Ipv4Addr::from(a | !m))
        })
    }

    /// Why `a` cannot be our own address in this subnet, when it cannot.
    fn not_ours(&self) -> Option<&'static str> {
        match self.edges() {
            Some((net, _)) if net == self.address => Some("the network address of its subnet"),
            Some((_, bcast)) if bcast == self.address => {
                Some("the broadcast address of its subnet")
            }
            _ => None,
        }
    }

    /// Why `a` cannot be another host we talk to (router, DNS server),
    /// when it cannot.
    pub fn not_a_peer(&self, a: Ipv4Addr) -> Option<&'static str> {
        not_unicast(a).or_else(|| match self.edges() {
            _ if a == self.address => Some("our own address"),
            Some((net, _)) if a == net => Some("the network address of our subnet"),
            Some((_, bcast)) if a == bcast => Some("the broadcast address of our subnet"),
            _ => None,
        })
    }
}

/// Blocks no option 121 route may touch: traffic for them never goes to
/// a router on the link.
const NEVER_ROUTED: [(Ipv4Addr, u8, &str); 4] = [
    (
        Ipv4Addr::new(0, 0, 0, 0),
        8,
        "overlaps 0.0.0.0/8 (this network)",
    ),
    (
        Ipv4Addr::new(127, 0, 0, 0),
        8,
        "overlaps loopback 127.0.0.0/8",
    ),
    (
        Ipv4Addr::new(224, 0, 0, 0),
        4,
        "overlaps multicast 224.0.0.0/4",
    ),
    (
        Ipv4Addr::new(240, 0, 0, 0),
        4,
        "overlaps reserved 240.0.0.0/4",
    ),
];

/// Whether one option 121 route may be installed on a link set up as
/// `link`; the reason when not.
///
/// - `0.0.0.0/0` is the default route (RFC 3442: it replaces option 3);
///   its router must be a usable peer, never `0.0.0.0` (an on-link
///   default would put every destination on the link).
/// - Any other prefix shorter than [`MIN_PREFIX`] is refused: such routes
///   together replace the default route (`0.0.0.0/1` + `128.0.0.0/1` is
///   TunnelVision).
/// - A route touching 0/8, 127/8, 224/4 or 240/4 is refused.
/// - A route equal to or inside the link's own subnet is refused: with a
///   router it would send our neighbours' traffic through it, on-link it
///   adds nothing, and one equal to the subnet would replace the kernel's
///   own prefix route. A route that covers the subnet (10.0.0.0/8 on a
///   10.1.2.0/24 link) is taken: the longer prefix route keeps the
///   subnet on the link.
/// - The router must be a usable peer (not loopback, multicast,
///   broadcast, our own address, ...).
pub fn check_route(r: &ClasslessRoute, link: Subnet) -> Result<(), Refused> {
    let refuse = |why| Refused::Route { route: *r, why };
    if r.prefix == 0 {
        if r.gateway.is_unspecified() {
            return Err(refuse(
                "a default route without a router would put every destination on the link",
            ));
        }
    } else if r.prefix < MIN_PREFIX {
        return Err(refuse("shorter than /8: such routes together replace the default route (0.0.0.0/1 + 128.0.0.0/1 is the TunnelVision attack, CVE-2024-3661)"));
    } else if let Some((_, _, why)) = NEVER_ROUTED
        .iter()
        .find(|(net, p, _)| overlaps(r.dst, r.prefix, *net, *p))
    {
        return Err(refuse(why));
    } else if r.prefix >= link.prefix && link.contains(r.dst) {
        return Err(refuse(
            "inside the link's own subnet: it would take over addresses that are on the link",
        ));
    }
    match link.not_a_peer(r.gateway) {
        Some(why) if !r.gateway.is_unspecified() => Err(Refused::RouteRouter { route: *r, why }),
        _ => Ok(()),
    }
}

/// A server's answer, checked: what the client may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    /// Our address (`yiaddr`).
    pub address: Ipv4Addr,
    /// Prefix length (from option 1, classful when absent).
    pub prefix: u8,
    /// The server identifier (option 54).
    pub server: Ipv4Addr,
    /// The usable routers (option 3).
    pub routers: Vec<Ipv4Addr>,
    /// The default gateway: option 121's default route when one was taken
    /// (RFC 3442), else the first usable router.
    pub gateway: Option<Ipv4Addr>,
    /// The option 121 routes taken, the default route aside.
    pub routes: Vec<ClasslessRoute>,
    /// The usable DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// The MTU, when in [`MTU_RANGE`].
    pub mtu: Option<u16>,
    /// What was left out, and why; the rest is used.
    pub dropped: Vec<Refused>,
    /// Option 121 was sent but classless routes are off.
    pub classless_ignored: bool,
}

/// Checks a server's OFFER or ACK. `classless` says whether option 121
/// is taken at all. `Err` refuses the whole message.
pub fn check(m: &Message, classless: bool) -> Result<Offered, Refused> {
    let address = m.yiaddr;
    if let Some(why) = not_unicast(address) {
        return Err(Refused::Address { address, why });
    }
    let prefix =
        match m.options.get(&opt::SUBNET_MASK).map(Vec::as_slice) {
            // RFC 2131 leaves the mask optional; a class A/B/C default is
            // what hosts assumed before masks existed, and never /0 since the
            // address is unicast.
            None => classful_prefix(address),
            Some([a, b, c, d]) => {
                let mask = Ipv4Addr::new(*a, *b, *c, *d);
                match mask_to_prefix(mask) {
                    None => {
                        return Err(Refused::Mask {
                            mask,
                            why: "not contiguous",
                        })
                    }
                    Some(0) => {
                        return Err(Refused::Mask {
                            mask,
                            why: "zero: an on-link /0 would put every destination on the link",
                        })
                    }
                    Some(p) if p < MIN_PREFIX => return Err(Refused::Mask {
                        mask,
                        why: "shorter than /8: that much of the address space would be on the link",
                    }),
                    Some(p) => p,
                }
            }
            Some(other) => return Err(Refused::MaskLength { len: other.len() }),
        };
    let link = Subnet { address, prefix };
    if let Some(why) = link.not_ours() {
        return Err(Refused::Address { address, why });
    }
    let server = m.option_ip(opt::SERVER_ID).ok_or(Refused::NoServerId)?;
    if let Some(why) = not_unicast(server) {
        return Err(Refused::ServerId { server, why });
    }
    let mut dropped = Vec::new();
    let offered = m.option_ips(opt::ROUTER);
    let mut routers = Vec::new();
    for router in offered.iter().copied() {
        match link.not_a_peer(router) {
            Some(why) => dropped.push(Refused::Router { router, why }),
            None if !routers.contains(&router) => routers.push(router),
            None => {}
        }
    }
    let mut dns = Vec::new();
    for server in m.option_ips(opt::DNS) {
        match link.not_a_peer(server) {
            Some(why) => dropped.push(Refused::Dns { server, why }),
            None if !dns.contains(&server) => dns.push(server),
            None => {}
        }
    }
    let mtu = match m.options.get(&opt::MTU).map(Vec::as_slice) {
        None => None,
        Some(&[a, b]) if MTU_RANGE.contains(&u16::from_be_bytes([a, b])) => {
            Some(u16::from_be_bytes([a, b]))
        }
        Some(value) => {
            dropped.push(Refused::Mtu {
                value: value.to_vec(),
            });
            None
        }
    };
    let raw_routes = m.options.get(&opt::CLASSLESS_ROUTES);
    let mut default = None;
    let mut routes = Vec::new();
    if let (Some(v), true) = (raw_routes, classless) {
        match classless_routes(v) {
            None => dropped.push(Refused::RoutesMalformed),
            Some(all) => {
                for route in all {
                    if let Err(refused) = check_route(&route, link) {
                        dropped.push(refused);
                    } else if route.prefix == 0 {
                        default = default.or(Some(route.gateway));
                    } else if !routes
                        .iter()
                        .any(|r: &ClasslessRoute| (r.dst, r.prefix) == (route.dst, route.prefix))
                    {
                        routes.push(route);
                    }
                }
            }
        }
    }
    // RFC 3442: option 121's default route replaces option 3. Without one
    // (none sent, or refused above) option 3's router is used: a strict
    // reading would leave no default route at all once 0/1 + 128/1 are
    // refused, and servers that send 121 without a default (expecting
    // option 3 to give it) are common.
    let gateway = default.or_else(|| routers.first().copied());
    if gateway.is_none() && !offered.is_empty() {
        return Err(Refused::NoRouter);
    }
    Ok(Offered {
        address,
        prefix,
        server,
        routers,
        gateway,
        routes,
        dns,
        mtu,
        dropped,
        classless_ignored: raw_routes.is_some() && !classless,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::super::packet::{MessageType, OP_REPLY};
    use super::*;

    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 9, 20);
    const GW: Ipv4Addr = Ipv4Addr::new(10, 213, 9, 1);
    const LINK: Subnet = Subnet {
        address: ADDR,
        prefix: 24,
    };

    fn ack() -> Message {
        let mut m = Message::request(MessageType::Ack, 1, [2, 0, 0, 0, 0, 7]);
        m.op = OP_REPLY;
        m.yiaddr = ADDR;
        m.set(opt::SUBNET_MASK, [255, 255, 255, 0]);
        m.set(opt::ROUTER, GW.octets());
        m.set(opt::SERVER_ID, GW.octets());
        m
    }

    fn route(dst: [u8; 4], prefix: u8, gw: [u8; 4]) -> ClasslessRoute {
        ClasslessRoute {
            dst: Ipv4Addr::from(dst),
            prefix,
            gateway: Ipv4Addr::from(gw),
        }
    }

    #[test]
    fn addresses_a_host_cannot_hold() {
        for (a, ok) in [
            ([10, 0, 0, 1], true),
            ([0, 0, 0, 0], false),
            ([0, 1, 2, 3], false),
            ([127, 0, 0, 1], false),
            ([224, 0, 0, 1], false),
            ([239, 255, 255, 250], false),
            ([240, 0, 0, 1], false),
            ([255, 255, 255, 255], false),
            ([223, 255, 255, 254], true),
        ] {
            assert_eq!(not_unicast(Ipv4Addr::from(a)).is_none(), ok, "{a:?}");
        }
    }

    #[test]
    fn the_edges_of_a_subnet_are_nobody() {
        let net = Ipv4Addr::new(10, 213, 9, 0);
        let bcast = Ipv4Addr::new(10, 213, 9, 255);
        assert!(LINK.not_a_peer(net).is_some());
        assert!(LINK.not_a_peer(bcast).is_some());
        assert!(LINK.not_a_peer(ADDR).is_some());
        assert!(LINK.not_a_peer(GW).is_none());
        assert!(LINK.not_a_peer(Ipv4Addr::new(192, 0, 2, 1)).is_none());
        // /31 and /32 have no network or broadcast address (RFC 3021).
        let p2p = Subnet {
            address: Ipv4Addr::new(10, 0, 0, 0),
            prefix: 31,
        };
        assert_eq!(p2p.not_ours(), None);
        assert!(p2p.not_a_peer(Ipv4Addr::new(10, 0, 0, 1)).is_none());
    }

    #[test]
    fn route_rules() {
        let ok = |r| check_route(&r, LINK).is_ok();
        assert!(ok(route([0, 0, 0, 0], 0, [10, 213, 9, 254])));
        assert!(!ok(route([0, 0, 0, 0], 0, [0, 0, 0, 0])), "on-link default");
        assert!(!ok(route([0, 0, 0, 0], 0, [127, 0, 0, 1])));
        assert!(!ok(route([0, 0, 0, 0], 1, [10, 213, 9, 1])), "TunnelVision");
        assert!(
            !ok(route([128, 0, 0, 0], 1, [10, 213, 9, 1])),
            "TunnelVision"
        );
        assert!(!ok(route([64, 0, 0, 0], 7, [10, 213, 9, 1])));
        assert!(!ok(route([127, 0, 0, 0], 8, [10, 213, 9, 1])));
        assert!(!ok(route([127, 1, 0, 0], 16, [0, 0, 0, 0])));
        assert!(!ok(route([0, 0, 0, 0], 8, [10, 213, 9, 1])));
        assert!(!ok(route([224, 0, 0, 0], 4, [10, 213, 9, 1])));
        assert!(!ok(route([239, 1, 0, 0], 16, [10, 213, 9, 1])));
        assert!(!ok(route([240, 0, 0, 0], 8, [10, 213, 9, 1])));
        // The link's own subnet: equal or inside, with or without a router.
        assert!(!ok(route([10, 213, 9, 0], 24, [10, 213, 9, 1])));
        assert!(!ok(route([10, 213, 9, 128], 25, [10, 213, 9, 1])));
        assert!(!ok(route([10, 213, 9, 20], 32, [0, 0, 0, 0])));
        // Covering it is fine: the kernel's /24 stays the longer match.
        assert!(ok(route([10, 0, 0, 0], 8, [10, 213, 9, 1])));
        assert!(ok(route([10, 99, 0, 0], 16, [10, 213, 9, 2])));
        assert!(ok(route([192, 168, 5, 128], 25, [0, 0, 0, 0])));
        // Bad routers.
        assert!(
            !ok(route([10, 99, 0, 0], 16, [10, 213, 9, 20])),
            "ourselves"
        );
        assert!(!ok(route([10, 99, 0, 0], 16, [10, 213, 9, 255])));
        assert!(!ok(route([10, 99, 0, 0], 16, [224, 0, 0, 1])));
        assert!(!ok(route([10, 99, 0, 0], 16, [255, 255, 255, 255])));
    }

    #[test]
    fn a_plain_lease_passes_whole() {
        let o = check(&ack(), false).unwrap();
        assert_eq!(
            (o.address, o.prefix, o.server, o.gateway),
            (ADDR, 24, GW, Some(GW))
        );
        assert_eq!(o.dropped, vec![]);
        assert!(!o.classless_ignored);
    }

    #[test]
    fn masks_are_checked() {
        for (mask, want) in [
            (&[255u8, 255, 255, 255][..], Ok(32)),
            (&[255, 255, 255, 254][..], Ok(31)),
            (&[255, 0, 0, 0][..], Ok(8)),
            (&[0, 0, 0, 0][..], Err(())),
            (&[254, 0, 0, 0][..], Err(())),
            (&[255, 0, 255, 0][..], Err(())),
            (&[255, 255, 255][..], Err(())),
        ] {
            let mut m = ack();
            m.set(opt::SUBNET_MASK, mask);
            if mask == [255, 255, 255, 255] || mask == [255, 255, 255, 254] {
                m.set(opt::ROUTER, [10, 213, 9, 1]);
            }
            assert_eq!(
                check(&m, false).map(|o| o.prefix).map_err(|_| ()),
                want,
                "{mask:?}"
            );
        }
        // No mask: classful, never /0.
        let mut m = ack();
        m.options.remove(&opt::SUBNET_MASK);
        assert_eq!(check(&m, false).unwrap().prefix, 8);
        m.yiaddr = Ipv4Addr::new(192, 168, 1, 9);
        m.set(opt::ROUTER, [192, 168, 1, 1]);
        assert_eq!(check(&m, false).unwrap().prefix, 24);
    }

    #[test]
    fn classless_routes_are_filtered_and_the_default_falls_back_to_option_3() {
        let mut m = ack();
        // 0/1 + 128/1 (TunnelVision), 127/8, and a good 10.99/16.
        m.set(
            opt::CLASSLESS_ROUTES,
            [
                1, 0, 10, 213, 9, 1, 1, 128, 10, 213, 9, 1, 8, 127, 10, 213, 9, 1, 16, 10, 99, 10,
                213, 9, 2,
            ],
        );
        let o = check(&m, true).unwrap();
        assert_eq!(o.routes, vec![route([10, 99, 0, 0], 16, [10, 213, 9, 2])]);
        assert_eq!(o.gateway, Some(GW), "option 3, with no 121 default left");
        assert_eq!(o.dropped.len(), 3);
        assert!(o.dropped[0].to_string().contains("TunnelVision"));
        // Off: nothing taken, and said so.
        let o = check(&m, false).unwrap();
        assert!(o.routes.is_empty() && o.classless_ignored);
    }
}
