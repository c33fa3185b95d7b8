//! # fluxnode-registry
//!
//! The network side of fluxnode: nodes register by their TPM (EK
//! certificate chained to an allow-listed CA, AK bound by
//! MakeCredential/ActivateCredential), then run attested benchmark
//! sessions; the registry verifies the evidence with
//! [`fluxnode_protocol`]'s pure checks, measures bandwidth itself, ranks
//! the node with hal's tier policy and signs a tier certificate anyone can
//! check offline.
//!
//! - [`service`]: what each request does, independent of HTTP.
//! - [`http`]: the HTTPS API and its hardened accept loop.
//! - [`store`]: storage behind one trait (redb, PostgreSQL).
//! - [`config`]: the registry directory and `registry.toml`.
//! - [`pki`]: `init` (CA, TLS certificate, signing key).
//! - [`policy`]: allowed images from release manifests.
//! - [`client`]: the CLI's view of a running registry.
//! - [`server`]: start and stop a registry from its directory.
//! - [`demo`]: the registry the demo and the QEMU test run for a guest.
#![deny(missing_docs)]

pub mod client;
pub mod config;
pub mod demo;
pub mod http;
pub mod pki;
pub mod policy;
pub mod server;
pub mod service;
pub mod store;
