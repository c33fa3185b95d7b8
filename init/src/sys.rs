//! Thin wrappers over the syscalls PID 1 needs.

use std::time::Duration;

/// Prints one line to the console and reboots after a delay, so that
/// boot counting can fall back to the other slot. Never returns.
pub fn fatal_reboot(why: &str) -> ! {
    let line = format!("fluxnode-init: FATAL: {why}; rebooting in 5 s\n");
    console_write(&line);
    std::thread::sleep(Duration::from_secs(5));
    // SAFETY: sync and reboot take no pointers.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    // reboot(2) only returns on error (not PID 1, no CAP_SYS_BOOT): stay alive.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Writes to /dev/console if it can be opened, else to stderr.
pub fn console_write(s: &str) {
    use std::io::Write;
    match std::fs::OpenOptions::new().write(true).open("/dev/console") {
        Ok(mut f) => {
            let _ = f.write_all(s.as_bytes());
        }
        Err(_) => {
            let _ = std::io::stderr().write_all(s.as_bytes());
        }
    }
}
