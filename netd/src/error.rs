//! The crate's error type: one variant per failure site, with context.

use std::io;

use crate::config::ConfigError;
use crate::netlink::NetlinkError;
use crate::notify::NotifyError;

/// Why netd stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A netlink request failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// `NOTIFY_SOCKET` / `WATCHDOG_USEC` are unusable.
    #[error(transparent)]
    Notify(#[from] NotifyError),
    /// Blocking signals or opening the signalfd failed.
    #[error("cannot set up signal handling: {0}")]
    Signals(#[source] io::Error),
    /// Waiting on descriptors failed.
    #[error("poll failed: {0}")]
    Poll(#[source] io::Error),
    /// The DHCP socket could not be opened or read.
    #[error("dhcp socket on {iface}: {source} (is another DHCP client running on port 68?)")]
    DhcpSocket {
        /// The link.
        iface: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// DHCP needs an Ethernet address.
    #[error(
        "link {iface} has no 6-byte hardware address; DHCP needs one (use fluxnode.net=static:...)"
    )]
    NoMac {
        /// The link.
        iface: String,
    },
}
