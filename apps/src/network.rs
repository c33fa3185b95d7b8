//! Apps' networking: one bridge, one veth per app, and the nftables
//! ruleset that publishes ports and keeps apps away from the node and from
//! each other. Pure: this module computes names, addresses and the
//! ruleset's text; the node applies them (netlink, `nft -f`).
//!
//! The model:
//! - the node has a bridge `fnapps0` at 10.88.0.1/16; app number N gets a
//!   veth `fna<N>` on the bridge and `eth0` = 10.88.N/16 (N from 2) in its
//!   own network namespace, default route via 10.88.0.1;
//! - every app port on the bridge is *isolated* (the bridge's `isolated`
//!   flag): isolated ports cannot talk to each other at layer 2, so one
//!   app cannot reach another's ports, published or not, by its bridge
//!   address;
//! - outbound traffic is masqueraded out of the node's uplink;
//! - a published port is a DNAT from the node's addresses (not from the
//!   bridge) to the app's address and container port;
//! - the node itself accepts nothing from the bridge but replies to
//!   connections it made: an app cannot reach the node's own TCP/UDP
//!   services (the agent, the update client) by 10.88.0.1 or any node
//!   address. The node's Unix sockets (init's control socket, ota.sock)
//!   are not in the app's mount namespace at all.
//!
//! Why veth + bridge + nftables and not pasta: docs/APPS.md. The ruleset
//! was loaded twice over (the reload path) with Debian's `nft` in a fresh
//! network namespace on the build host; the QEMU tests load it for real.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::spec::Protocol;

/// The bridge.
pub const BRIDGE: &str = "fnapps0";
/// The nftables table the node owns (replaced whole on every change).
pub const TABLE: &str = "fluxnode_apps";
/// The bridge's address: the apps' gateway.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
/// The apps' subnet.
pub const SUBNET: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 0);
/// The apps' subnet prefix length.
pub const PREFIX: u8 = 16;
/// Connections one app may have open through the node at once.
pub const MAX_CONNS_PER_APP: u32 = 4096;
/// The most apps with an address (10.88.0.2 .. 10.88.255.254).
pub const MAX_APPS: u32 = 65_533;

/// App number `n`'s address (n from 0).
pub fn address(n: u32) -> Option<Ipv4Addr> {
    if n >= MAX_APPS {
        return None;
    }
    let host = n + 2;
    Some(Ipv4Addr::new(
        10,
        88,
        (host >> 8) as u8,
        (host & 0xff) as u8,
    ))
}

/// App number `n`'s host-side veth (IFNAMSIZ allows 15 characters).
pub fn veth(n: u32) -> String {
    format!("fna{n}")
}

/// One published port of one app, as the ruleset needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// The app (for the rule's comment).
    pub app: String,
    /// Its address.
    pub addr: Ipv4Addr,
    /// The node port.
    pub node: u16,
    /// The container port.
    pub container: u16,
    /// tcp or udp.
    pub protocol: Protocol,
}

/// The whole table, to load with `nft -f` (it deletes and recreates the
/// table in one transaction, so a reload never leaves a half ruleset).
pub fn ruleset(published: &[Published]) -> String {
    let mut dnat = String::new();
    for p in published {
        // App names are [a-z0-9-]: safe inside a quoted comment.
        let _ = writeln!(
            dnat,
            "        iifname != \"{BRIDGE}\" {proto} dport {node} dnat ip to {addr}:{container} comment \"{app}\"",
            proto = p.protocol,
            node = p.node,
            addr = p.addr,
            container = p.container,
            app = p.app,
        );
    }
    let lines = [
        format!("table inet {TABLE}"),
        format!("delete table inet {TABLE}"),
        format!("table inet {TABLE} {{"),
        // Connections each app may hold open through the node: one app
        // must not fill the kernel's connection-tracking table for all.
        "    set conns {".into(),
        "        type ipv4_addr; size 65535; flags dynamic;".into(),
        "    }".into(),
        "    chain prerouting {".into(),
        "        type nat hook prerouting priority dstnat; policy accept;".into(),
        format!("{dnat}    }}"),
        "    chain postrouting {".into(),
        "        type nat hook postrouting priority srcnat; policy accept;".into(),
        format!("        ip saddr {SUBNET}/{PREFIX} oifname != \"{BRIDGE}\" masquerade"),
        "    }".into(),
        "    chain input {".into(),
        "        type filter hook input priority filter; policy accept;".into(),
        format!("        iifname \"{BRIDGE}\" ct state established,related accept"),
        format!("        iifname \"{BRIDGE}\" drop"),
        "    }".into(),
        "    chain forward {".into(),
        "        type filter hook forward priority filter; policy accept;".into(),
        format!("        iifname \"{BRIDGE}\" oifname \"{BRIDGE}\" drop"),
        format!("        iifname \"{BRIDGE}\" ct state new add @conns {{ ip saddr ct count over {MAX_CONNS_PER_APP} }} drop"),
        // The node routes for its apps only, not between its other links.
        format!("        iifname != \"{BRIDGE}\" oifname != \"{BRIDGE}\" drop"),
        format!("        oifname \"{BRIDGE}\" ct state established,related accept"),
        format!("        oifname \"{BRIDGE}\" ct status dnat accept"),
        format!("        oifname \"{BRIDGE}\" drop"),
        "    }".into(),
        // Of the node's own processes, only root's (the app daemon's
        // health checks) reach apps directly; the node's other users
        // (netd, ...) do not.
        "    chain output {".into(),
        "        type filter hook output priority filter; policy accept;".into(),
        format!("        oifname \"{BRIDGE}\" meta skuid != 0 drop"),
        "    }".into(),
        "}".into(),
    ];
    let mut out = lines.join("\n");
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn addresses_and_names_are_stable_and_bounded() {
        assert_eq!(address(0), Some(Ipv4Addr::new(10, 88, 0, 2)));
        assert_eq!(address(254), Some(Ipv4Addr::new(10, 88, 1, 0)));
        assert_eq!(address(MAX_APPS - 1), Some(Ipv4Addr::new(10, 88, 255, 254)));
        assert_eq!(address(MAX_APPS), None);
        assert!(veth(MAX_APPS).len() <= 15);
    }

    #[test]
    fn the_ruleset_publishes_ports_and_closes_the_node() {
        let r = ruleset(&[Published {
            app: "web".into(),
            addr: address(0).unwrap(),
            node: 30080,
            container: 8080,
            protocol: Protocol::Tcp,
        }]);
        assert!(
            r.starts_with("table inet fluxnode_apps\ndelete table inet fluxnode_apps\n"),
            "{r}"
        );
        assert!(
            r.contains(
                "iifname != \"fnapps0\" tcp dport 30080 dnat ip to 10.88.0.2:8080 comment \"web\""
            ),
            "{r}"
        );
        assert!(
            r.contains("iifname \"fnapps0\" drop"),
            "apps reach nothing on the node"
        );
        assert!(
            r.contains("oifname \"fnapps0\" ct status dnat accept"),
            "published ports pass"
        );
        assert!(
            r.contains("oifname \"fnapps0\" drop"),
            "nothing else reaches an app"
        );
        // No published port: still a complete table.
        assert!(ruleset(&[]).contains("chain prerouting"));
        assert!(r.contains("ct count over 4096"), "{r}");
        assert!(
            r.contains("iifname != \"fnapps0\" oifname != \"fnapps0\" drop"),
            "not a router between the node's other links"
        );
        assert!(
            r.contains("oifname \"fnapps0\" meta skuid != 0 drop"),
            "{r}"
        );
        assert!(
            r.contains("ip saddr 10.88.0.0/16 oifname != \"fnapps0\" masquerade"),
            "{r}"
        );
    }
}
