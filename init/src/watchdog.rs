//! The hardware watchdog (/dev/watchdog): armed at start, fed at a third of
//! its timeout, and disarmed with the magic close on a clean shutdown. If
//! init hangs, the machine resets and boot counting takes over.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

const WDIOC_KEEPALIVE: libc::c_ulong = 0x8004_5705;
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

/// An open watchdog.
#[derive(Debug)]
pub struct HardwareWatchdog {
    file: std::fs::File,
    /// The timeout the driver accepted, in seconds.
    pub timeout_s: u32,
}

impl HardwareWatchdog {
    /// Opens `path` and sets the timeout; `None` when there is no device.
    pub fn open(path: &Path, timeout_s: u32) -> Option<Self> {
        if timeout_s == 0 || !path.exists() {
            return None;
        }
        let file = match std::fs::OpenOptions::new().write(true).open(path) {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(
                    "cannot open {}: {e}; running without a hardware watchdog",
                    path.display()
                );
                return None;
            }
        };
        let mut t: libc::c_int = timeout_s as libc::c_int;
        // SAFETY: WDIOC_SETTIMEOUT reads and writes one int.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut t) };
        let timeout_s = if rc == 0 && t > 0 {
            t as u32
        } else {
            timeout_s
        };
        tracing::info!("hardware watchdog {} armed: {timeout_s} s", path.display());
        Some(HardwareWatchdog { file, timeout_s })
    }

    /// How often to feed it, in ms.
    pub fn feed_interval_ms(&self) -> u64 {
        u64::from(self.timeout_s) * 1000 / 3
    }

    /// Feeds it.
    pub fn feed(&self) {
        let mut dummy: libc::c_int = 0;
        // SAFETY: WDIOC_KEEPALIVE takes an int pointer.
        unsafe { libc::ioctl(self.file.as_raw_fd(), WDIOC_KEEPALIVE as _, &mut dummy) };
    }

    /// Magic close: write 'V' and close, so the driver disarms.
    pub fn disarm(mut self) {
        let _ = self.file.write_all(b"V");
    }
}
