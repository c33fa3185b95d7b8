//! # fluxnode-node
//!
//! The node daemon and the `fluxnode` CLI. The agent proves the node's
//! tier to the registry: on first boot it makes a node key, provisions the
//! AK through hal, registers and activates the credential; then it runs an
//! attested benchmark session (every 6 h with jitter, and on every new
//! boot), keeps the tier certificate on /var, and sends heartbeats.
//! `fluxnode status` answers "why am I not ranked?".
//!
//! - [`client`]: the registry's API, CA pinned, requests signed.
//! - [`attest`]: one attested session, step by step.
//! - [`register`]: identity (node key, AK) and registration.
//! - [`agent`]: the daemon's state machine and loop.
//! - [`state`]: what the agent keeps on /var, written atomically.
//! - [`status`]: `fluxnode status`.
//! - [`apps`]: apps on /var, this machine's capacity, `fluxnode app check` and `pull`.
//! - [`appd`]: the app daemon: runs the placed apps under crun, isolated and
//!   limited, supervised; its local API.
//! - [`ota_link`]: tells the update client when the node is busy or idle.
#![deny(missing_docs)]

pub mod agent;
pub mod appd;
pub mod apps;
pub mod attest;
pub mod client;
pub mod ota_link;
pub mod register;
pub mod state;
pub mod status;
