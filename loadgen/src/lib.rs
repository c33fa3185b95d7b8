//! # fluxnode-loadgen
//!
//! The registry's figures (issue 12, docs/BENCHMARKS.md "Registry"):
//!
//! - [`verify`]: verifications per second on one core, on recorded
//!   evidence (quote pairs, report checks, spot-check openings);
//! - [`sessions`]: simulated nodes, each with a software TPM
//!   ([`softnode`]), registering and running a whole session against a
//!   real registry over HTTPS on loopback, with redb or PostgreSQL: p50/p99
//!   latency per phase, sessions per second, CPU per session.
//!
//! The simulated nodes sign synthetic quotes with software keys, over
//! synthetic reports whose chunk outputs are real ([`synth`]); the
//! registry's code path is the one real nodes use.
#![deny(missing_docs)]

pub mod sessions;
pub mod softnode;
pub mod stats;
pub mod synth;
pub mod verify;
