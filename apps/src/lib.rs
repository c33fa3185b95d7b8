//! # fluxnode-apps
//!
//! Apps on the node: what a publisher asks for, whether it fits, and the
//! image it runs, fetched and unpacked without trusting a byte of it.
//! The node daemon (`fluxnode-node`) drives these; nothing here starts a
//! process, and only [`pull`] talks to the network.
//!
//! - [`spec`]: the app spec (TOML or JSON), validated field by field.
//! - [`api`]: the app daemon's local API requests, parsed and bounded.
//! - [`cgroup`]: the apps' parent group capped at the capacity; the kernel's counters per app.
//! - [`capacity`]: the node's capacity for apps, and why a spec does not fit.
//! - [`reference`]: image references and SHA-256 digests.
//! - [`store`]: the content-addressed blob store on /var: verified while
//!   written, resumable, garbage-collected.
//! - [`network`]: the bridge, veth names, addresses and the nftables ruleset.
//! - [`pull`]: images from any OCI distribution registry into the store.
//! - [`rootfs`]: layers unpacked once, checked against their diff_ids; the overlay options.
//! - [`runtime`]: the OCI runtime spec an app runs under (crun's config.json).
//! - [`seccomp`]: Debian's default seccomp profile, cut for an app's capabilities.
//! - [`unpack`]: one layer into its own directory, refusing escapes and
//!   devices, OCI whiteouts turned into overlayfs ones.
#![deny(missing_docs)]

pub mod api;
pub mod capacity;
pub mod cgroup;
pub mod network;
pub mod pull;
pub mod reference;
pub mod rootfs;
pub mod runtime;
pub mod seccomp;
pub mod spec;
pub mod store;
pub mod unpack;
