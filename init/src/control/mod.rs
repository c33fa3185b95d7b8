//! The control socket (`/run/fluxnode/control.sock`) and its client,
//! `fluxnode-init ctl`.
//!
//! - [`protocol`]: the request and answer format, no I/O;
//! - [`server`]: init's side, non-blocking, with deadlines and a bound on
//!   open connections so no client can hold PID 1's loop;
//! - [`access`]: who may ask what (the socket's modes, `SO_PEERCRED`);
//! - [`status`]: what `status` answers;
//! - [`client`]: `fluxnode-init ctl`.

pub mod access;
pub mod client;
pub mod protocol;
pub mod server;
pub mod status;

pub use client::{call, ctl_main};
pub use protocol::{Request, MAX_REQUEST};
