//! # fluxnode-ota
//!
//! The update client. Publishers sign versions into a TUF repository
//! (`fluxnode-image publish`); a node verifies the TUF metadata first, then
//! the update manifest it carries (`fluxnode_protocol::update`), then
//! streams each payload into the inactive slot, verifying every chunk
//! before it writes it, reusing what it already has, and recording its
//! progress so that a power cut costs nothing but time.
//!
//! - [`fetch`]: byte ranges over HTTP(S) or from a directory, with retries
//!   that resume a dropped connection.
//! - [`slot`]: the target and reference devices.
//! - [`install`]: one payload into one target, chunk by verified chunk.
//! - [`tuf`]: the repository's TUF metadata (tough) and the manifests it signs.
//! - [`daemon`]: the service: health of a new version, scheduled checks,
//!   waves, reboot policy.
//! - [`esp`]: boot entries (UKIs) on the ESP, installed atomically.
//! - [`updater`]: one update in order: refusals, root, UKI, journal, history.
//! - [`reconcile`]: what the daemon does at each boot (first boot of a new
//!   version, rollback, fall-back, resume), decided from facts alone.
//! - [`system`]: the running node: version, slots, ESP, security minimum.
//! - [`state`]: the journal of the update in flight and the history of
//!   attempts, on /var.
#![deny(missing_docs)]

pub mod api;
pub mod daemon;
pub mod esp;
pub mod fetch;
pub mod initctl;
pub mod install;
pub mod reconcile;
pub mod slot;
pub mod state;
pub mod system;
pub mod tuf;
pub mod updater;
