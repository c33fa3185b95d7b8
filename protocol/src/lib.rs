//! # fluxnode-protocol
//!
//! Wire types shared by the node and the registry, and every verification
//! the registry makes, as pure functions: no I/O, no clock, no TPM. That
//! is what lets them be unit-tested with hand-built TPM structures,
//! fuzzed, and cross-checked against a real (software) TPM.
//!
//! - [`tpm`]: TPMS_ATTEST, TPMT_PUBLIC and TPMT_SIGNATURE parsers (every
//!   length bounded, a typed error per failure, no panics), signature
//!   verification (RSASSA-SHA256 RSA ≥ 2048, ECDSA P-256 SHA-256) and the
//!   PCR digest.
//! - [`verdict`]: the checks of an attested benchmark session's quotes, in
//!   order, each failure a [`verdict::Verdict`] with a stable code.
//! - [`types`]: the JSON wire types of quotes and policy.
//! - [`messages`]: the request and response bodies of registration,
//!   sessions and heartbeats.
//! - [`session`]: the benchmark profile a session prescribes, the node's
//!   report, and its checks (belongs to the session, physically possible,
//!   spot-check openings recompute).
//! - [`auth`]: node keys (ed25519) and request signatures.
//! - [`cert`]: tier certificates, issued and checked offline.
//! - [`ekcert`]: EK certificates, chained to allow-listed TPM vendor CAs.
//! - [`update`]: the signed update manifest (versions, chunks, patches,
//!   waves) and the checks a node makes before installing.
//!
//! docs/PROTOCOL.md describes the verification order and the codes.
#![deny(missing_docs)]

pub mod auth;
pub mod cert;
pub mod ekcert;
pub mod messages;
pub mod session;
pub mod tpm;
pub mod types;
pub mod update;
pub mod verdict;
