//! # fluxnode-ota
//!
//! The update client (work in progress, issue 13).
#![deny(missing_docs)]
