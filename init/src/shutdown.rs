//! The last steps of a machine: unmount, and reboot(2).

use std::path::Path;

use crate::supervisor::ShutdownKind;

/// Filesystems the kernel keeps to the end: not unmounted, only synced.
const KEEP: &[&str] = &["/", "/proc", "/sys", "/dev", "/run"];

/// Unmounts what can be unmounted (deepest first), remounts the rest read-only.
pub fn unmount_all() {
    let mounts = crate::mounts::current(Path::new("/proc"));
    for m in mounts.iter().rev() {
        let t = m.target.to_string_lossy();
        if KEEP.contains(&t.as_ref())
            || t.starts_with("/proc/")
            || t.starts_with("/sys/")
            || t.starts_with("/dev/")
        {
            continue;
        }
        let Ok(c) = std::ffi::CString::new(t.as_bytes()) else {
            continue;
        };
        // SAFETY: umount2 takes a valid C string.
        if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
            let err = std::io::Error::last_os_error();
            match crate::mounts::mount("", &m.target, "", libc::MS_REMOUNT | libc::MS_RDONLY, "") {
                Ok(()) => tracing::info!("{t} busy ({err}); remounted read-only"),
                Err(e) => {
                    tracing::warn!("cannot unmount {t} ({err}) nor remount it read-only ({e})")
                }
            }
        }
    }
    let _ = crate::mounts::mount(
        "",
        Path::new("/"),
        "",
        libc::MS_REMOUNT | libc::MS_RDONLY,
        "",
    );
}

/// Syncs, unmounts and reboots or powers off. Never returns.
pub fn final_step(kind: ShutdownKind) -> ! {
    // SAFETY: sync takes no arguments.
    unsafe { libc::sync() };
    unmount_all();
    // SAFETY: as above.
    unsafe { libc::sync() };
    let (word, cmd) = match kind {
        ShutdownKind::Poweroff => ("powering off", libc::RB_POWER_OFF),
        ShutdownKind::Reboot => ("rebooting", libc::RB_AUTOBOOT),
    };
    tracing::info!("{word}");
    // SAFETY: reboot takes a plain command.
    unsafe { libc::reboot(cmd) };
    tracing::error!(
        "reboot(2) failed: {}; halting here",
        std::io::Error::last_os_error()
    );
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}
