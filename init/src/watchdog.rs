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

/// How long to look for a late watchdog device, and how often.
pub const SEARCH_MS: u64 = 60_000;
/// How often to look.
pub const SEARCH_STEP_MS: u64 = 2_000;

/// The hardware watchdog through the life of stage 2.
#[derive(Debug)]
pub enum Feeder {
    /// None to feed: not a machine, switched off, or none was found.
    Off,
    /// Not found yet: its driver may be a module that a service loads after
    /// init has started. Looked for every [`SEARCH_STEP_MS`] until `until_ms`.
    Searching {
        /// The device path.
        dev: std::path::PathBuf,
        /// The timeout to set once found.
        timeout_s: u32,
        /// When to give up.
        until_ms: u64,
        /// When to look next.
        next_ms: u64,
    },
    /// Open and armed.
    Armed {
        /// The device.
        wd: HardwareWatchdog,
        /// When to feed it next.
        next_feed_ms: u64,
    },
}

impl Feeder {
    /// Opens `dev` (or starts looking for it); `Off` for `timeout_s` 0.
    pub fn start(dev: &Path, timeout_s: u32, now: u64) -> Feeder {
        if timeout_s == 0 {
            return Feeder::Off;
        }
        match HardwareWatchdog::open(dev, timeout_s) {
            Some(wd) => Feeder::Armed {
                wd,
                next_feed_ms: now,
            },
            None => Feeder::Searching {
                dev: dev.to_path_buf(),
                timeout_s,
                until_ms: now + SEARCH_MS,
                next_ms: now + SEARCH_STEP_MS,
            },
        }
    }

    /// When it next needs the loop.
    pub fn next_deadline(&self) -> Option<u64> {
        match self {
            Feeder::Off => None,
            Feeder::Searching { next_ms, .. } => Some(*next_ms),
            Feeder::Armed { next_feed_ms, .. } => Some(*next_feed_ms),
        }
    }

    /// Feeds it, or looks for it, when due.
    pub fn tick(&mut self, now: u64) {
        match self {
            Feeder::Off => {}
            Feeder::Searching {
                dev,
                timeout_s,
                until_ms,
                next_ms,
            } => {
                if now < *next_ms {
                    return;
                }
                if let Some(wd) = HardwareWatchdog::open(dev, *timeout_s) {
                    wd.feed();
                    let next_feed_ms = now + wd.feed_interval_ms();
                    *self = Feeder::Armed { wd, next_feed_ms };
                } else if now >= *until_ms {
                    tracing::info!(
                        "no hardware watchdog at {}: running without one",
                        dev.display()
                    );
                    *self = Feeder::Off;
                } else {
                    *next_ms = now + SEARCH_STEP_MS;
                }
            }
            Feeder::Armed { wd, next_feed_ms } => {
                if now >= *next_feed_ms {
                    wd.feed();
                    *next_feed_ms = now + wd.feed_interval_ms();
                }
            }
        }
    }

    /// After a caught panic: feed at the next healthy turn. Not here: a
    /// loop that panics every turn should let the watchdog reset the
    /// machine, and boot counting fall back.
    pub fn rearm(&mut self, now: u64) {
        if let Feeder::Armed { next_feed_ms, .. } = self {
            *next_feed_ms = (*next_feed_ms).min(now);
        }
    }

    /// Disarms it with the magic close (a clean shutdown).
    pub fn disarm(self) {
        if let Feeder::Armed { wd, .. } = self {
            wd.disarm();
        }
    }
}
