//! # fluxnode-netd
//!
//! The appliance's network service, started by init as a `notify` service:
//!
//! 1. brings `lo` up;
//! 2. picks the link: `fluxnode.net.iface=` / `interface =` if given, else
//!    the first wired link by ifindex ([`link`]);
//! 3. configures it by DHCPv4 ([`dhcp`]: discover, request, ARP check of
//!    the new address ([`arp`]), renew at T1, rebind at T2, drop the
//!    address at expiry or NAK, verify the lease when the carrier comes
//!    back) or statically ([`config`]), through a hand-written rtnetlink
//!    client ([`netlink`]);
//! 4. writes `/run/netd/resolv.conf` ([`resolv`]);
//! 5. reports `READY=1` over sd_notify ([`notify`]) once the kernel shows
//!    the address and a default route through the link — checked with a
//!    netlink dump, not assumed;
//! 6. on SIGTERM releases the lease (DHCPRELEASE), removes the address and
//!    exits 0.
//!
//! No async runtime: one thread, one `poll` over the DHCP sockets, a
//! netlink link-event socket and a signalfd ([`sys`]), with the DHCP state
//! machine free of I/O so its timers are unit-tested with a fake clock.
//! See docs/NETD.md.
#![deny(missing_docs)]

pub mod arp;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dhcp;
pub mod error;
pub mod guard;
pub mod link;
pub mod log;
pub mod netlink;
/// The sd_notify client, shared with the other daemons (`fluxnode-lowlevel`).
pub use fluxnode_lowlevel::notify;
pub mod resolv;
pub mod sys;

pub use daemon::{run, Paths};
pub use error::Error;
