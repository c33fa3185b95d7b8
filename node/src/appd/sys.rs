//! The few raw calls the app daemon makes itself: the overlay mount for an
//! app's root and its unmount.

use std::ffi::CString;
use std::path::Path;

fn cstr(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL in a path"))
}

/// Mounts an overlay at `target` with `options` (nosuid, nodev).
///
/// Overlayfs writes to its upper layer with the credentials of whoever
/// mounted it (the daemon), but without CAP_SYS_RESOURCE: the kernel
/// lowers it in those credentials ("never override disk quota limits",
/// `ovl_fill_super`), so an app's writes through its root count against
/// its project quota. The QEMU test fills an app's root to prove it.
pub fn mount_overlay(target: &Path, options: &str) -> std::io::Result<()> {
    let target = cstr(target)?;
    let data = CString::new(options)
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "a NUL in options"))?;
    // SAFETY: valid C strings for the call's duration.
    let r = unsafe {
        libc::mount(
            c"overlay".as_ptr(),
            target.as_ptr(),
            c"overlay".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches whatever is mounted at `target` (nothing mounted is fine).
pub fn unmount(target: &Path) {
    if let Ok(t) = cstr(target) {
        // SAFETY: a valid C string; errors (not mounted) are ignored.
        unsafe {
            libc::umount2(t.as_ptr(), libc::MNT_DETACH);
        }
    }
}
