//! The system's own disk: its GPT, its block devices, and which disk and
//! partitions are the image's.
//!
//! Stage 1 (init) finds the root and /var here; blessing (init's stage 2)
//! finds the ESP; the update client (`fluxnode-ota`) finds the boot disk,
//! the ESP and both root slots ([`bootdisk::locate_slots`]). One copy of
//! the rules, so the updater never writes to a partition stage 1 would
//! not have booted from:
//!
//! - [`gpt`]: reading a disk's GPT (both CRCs checked, the backup copy when
//!   the primary is damaged), growing the data partition, setting its
//!   attribute bits;
//! - [`blockdev`]: block devices as sysfs shows them;
//! - [`bootdisk`]: the boot disk, named by systemd-boot's
//!   `LoaderDevicePartUUID`, and on it the partitions matched by type GUID
//!   and partition UUID, never by name.
//!
//! std and libc only: stage 1 links this statically.

pub mod blockdev;
pub mod bootdisk;
pub mod gpt;
