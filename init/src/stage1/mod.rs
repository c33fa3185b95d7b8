//! Stage 1: runs as `/init` in the initramfs. Owned by the image work (issue 3).
//!
//! Entry: [`run`] is called by `lib.rs` when PID 1 finds `/etc/initrd-release`.
//! On success it switch_roots and execs stage 2 (`/sbin/init` in the new root);
//! on failure it prints one line to the console and reboots after a delay.

/// Runs stage 1. Never returns.
pub fn run() -> ! {
    crate::sys::fatal_reboot("stage 1 is not implemented in this build")
}
