//! # fluxnode-tests
//!
//! The QEMU harness of the boot tests: it builds the static appliance
//! binaries and the test images on demand ([`fixture`]), and boots them
//! under QEMU (TCG, q35, OVMF, swtpm, user networking) with the serial
//! console captured to a file ([`qemu`]). The boot tests themselves are in
//! `tests/boot.rs`, one test binary, so that all tests share the images and
//! independent boots run in parallel. The update tests' world (a TUF
//! repository, versions built to update to, nginx, power cuts) is in
//! [`update`], shared with `cargo xtask torture ota`. The Yocto layer's
//! Rust-side checks and its Python environment are in [`yocto`].
#![deny(missing_docs)]

pub mod disk;
pub mod efivars;
pub mod fixture;
pub mod qemu;
pub mod shared;
pub mod update;
pub mod yocto;
