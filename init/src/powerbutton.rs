//! Watches input devices for KEY_POWER (the ACPI power button; QEMU's
//! `system_powerdown` presses it) and asks init for an ordered poweroff by
//! sending PID 1 itself SIGTERM.
//!
//! The `button` and `evdev` modules are late modules, so the event devices
//! may appear after stage 2 starts: the watcher rescans /dev/input every
//! 2 s and reads each new device on a thread of its own.

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;
/// sizeof(struct input_event) on 64-bit.
const EVENT_SIZE: usize = 24;

/// True when `ev` (one struct input_event) is a KEY_POWER press.
pub fn is_power_press(ev: &[u8]) -> bool {
    if ev.len() < EVENT_SIZE {
        return false;
    }
    let ty = u16::from_ne_bytes([ev[16], ev[17]]);
    let code = u16::from_ne_bytes([ev[18], ev[19]]);
    let value = i32::from_ne_bytes([ev[20], ev[21], ev[22], ev[23]]);
    ty == EV_KEY && code == KEY_POWER && value == 1
}

/// Starts the watcher thread. It never stops; it costs one blocked thread per input device.
pub fn spawn_watcher() {
    let _ = std::thread::Builder::new()
        .name("powerbutton".into())
        .spawn(|| {
            watch(Path::new("/dev/input"), &|| {
                // SAFETY: kill on our own pid.
                unsafe { libc::kill(libc::getpid(), libc::SIGTERM) };
            })
        });
}

fn watch(dir: &Path, on_press: &(dyn Fn() + Sync)) {
    let mut seen: BTreeSet<PathBuf> = BTreeSet::new();
    std::thread::scope(|s| loop {
        if let Ok(rd) = std::fs::read_dir(dir) {
            for e in rd.flatten() {
                let p = e.path();
                let is_event = p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("event"));
                if is_event && seen.insert(p.clone()) {
                    s.spawn(move || read_device(&p, on_press));
                }
            }
        }
        std::thread::sleep(Duration::from_secs(2));
    })
}

fn read_device(path: &Path, on_press: &(dyn Fn() + Sync)) {
    let Ok(mut f) = std::fs::File::open(path) else {
        return;
    };
    let mut buf = [0u8; EVENT_SIZE * 16];
    loop {
        match f.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                if buf[..n].chunks_exact(EVENT_SIZE).any(is_power_press) {
                    crate::sys::console_write("fluxnode-init: power button pressed\n");
                    on_press();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn event(ty: u16, code: u16, value: i32) -> Vec<u8> {
        let mut e = vec![0u8; 16];
        e.extend_from_slice(&ty.to_ne_bytes());
        e.extend_from_slice(&code.to_ne_bytes());
        e.extend_from_slice(&value.to_ne_bytes());
        e
    }

    #[test]
    fn recognizes_power_press_only() {
        assert!(is_power_press(&event(1, 116, 1)));
        assert!(!is_power_press(&event(1, 116, 0)));
        assert!(!is_power_press(&event(1, 115, 1)));
        assert!(!is_power_press(&event(0, 116, 1)));
        assert!(!is_power_press(&[0u8; 5]));
    }

    #[test]
    fn reads_presses_from_a_device_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("event0");
        let mut data = event(1, 30, 1);
        data.extend(event(1, 116, 1));
        std::fs::write(&p, data).unwrap();
        let hits = std::sync::atomic::AtomicUsize::new(0);
        read_device(&p, &|| {
            hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
