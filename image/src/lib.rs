//! # fluxnode-image
//!
//! Builds fluxnode's disk image and flashes it.
//!
//! The image is a GPT disk: `esp` (FAT32 with systemd-boot and one unified
//! kernel image per populated slot), `root_a` and `root_b` (erofs, lz4hc,
//! with the dm-verity hash tree appended), and `data` (blank; stage 1 formats
//! it ext4 on first boot and mounts it at /var). What goes in is described by
//! a TOML spec under `image/spec/` ([`spec`]); the kernel is Debian's,
//! downloaded with apt into a cache ([`kernel`]); modules are resolved from
//! its modules.dep ([`modules`]); every step pins timestamps, uuids and
//! salts, so two builds from the same inputs are bit-identical.
//!
//! The build writes into a temporary directory next to the output and
//! renames it into place at the end ([`build`]): a failed build leaves
//! nothing behind. [`flash`] writes an image to a device or file, checking
//! each chunk against the manifest first and reading everything back.
//! [`publish`] signs a build's update payloads into a TUF repository.
#![deny(missing_docs)]

pub mod build;
pub mod cpio;
pub mod disk;
pub mod error;
pub mod esp;
pub mod flash;
pub mod initramfs;
pub mod kernel;
pub mod libs;
pub mod manifest;
pub mod measure;
pub mod modules;
pub mod publish;
pub mod rootfs;
pub mod spec;
pub mod tools;
pub mod uki;

pub use build::{build, BuildOptions, Built, SlotB};
pub use error::{ImageError, Result};
pub use manifest::Manifest;
