//! The anti-rollback check of stage 1: a slot whose security version is
//! below this node's minimum does not boot.
//!
//! The UKI's command line carries the slot's security version
//! (`fluxnode.secver=N`, written by the image builder); the node's minimum
//! is in a TPM NV index ([`fluxnode_lowlevel::tpmnv`], read with the raw
//! client: stage 1 has no TPM software stack). When `N` is below the
//! minimum, stage 1 stops with one FATAL line before the root is mounted,
//! and reboots: the try is counted, and boot counting moves on to the
//! other slot.
//!
//! The policy, one pure function ([`decide`]):
//!
//! | what the TPM says | stage 1 |
//! |---|---|
//! | no `fluxnode.secver=` on the command line | nothing read, nothing enforced |
//! | the index is not defined | nothing enforced (no minimum yet) |
//! | minimum `M`, `N >= M` | boots |
//! | minimum `M`, `N < M` | FATAL: an old, superseded version |
//! | an index at the handle that is not ours ([`NvError::Foreign`]) | FATAL: tampering |
//! | no TPM device, or the TPM fails | one warning line, boots (fail open) |
//!
//! Why fail open: a node without a TPM cannot attest anyway (the registry
//! refuses it), so a minimum it cannot read protects nothing there; and a
//! flaky TPM must not brick the node, with both slots refusing alike.
//! `TPM_RC_RETRY`, `TPM_RC_YIELDED` and `TPM_RC_TESTING` are retried a few
//! times first ([`retryable`]).
//!
//! Cost: the read (two TPM commands when the index exists, one when it
//! does not) runs on a thread of its own alongside module loading, and is
//! joined just before the root is created. A machine whose firmware
//! announces no TPM 2.0 (no ACPI `TPM2` table, nothing in
//! `/sys/class/tpm`) is not waited for; one that does gets up to
//! [`DEVICE_WAIT`] for the device node (the driver is built in, but its
//! probe may be deferred).

use std::path::Path;
use std::time::{Duration, Instant};

use fluxnode_lowlevel::tpmnv::{self, NvError, MIN_SECURITY_VERSION_INDEX};

use crate::cmdline::Cmdline;

/// The command-line key of the slot's security version.
pub const KEY: &str = "fluxnode.secver";

/// How long to wait for the TPM's device node when the firmware says
/// there is a TPM.
pub const DEVICE_WAIT: Duration = Duration::from_secs(2);

/// How many times a command answered with a "try again" code is sent.
pub const ATTEMPTS: u32 = 8;

/// The pause between those tries.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

/// `TPM_RC_YIELDED` (`RC_WARN + 0x008`): the TPM suspended the command.
pub const TPM_RC_YIELDED: u32 = 0x908;
/// `TPM_RC_TESTING` (`RC_WARN + 0x00A`): the TPM is testing itself.
pub const TPM_RC_TESTING: u32 = 0x90A;
/// `TPM_RC_RETRY` (`RC_WARN + 0x022`): the TPM was busy; send it again.
pub const TPM_RC_RETRY: u32 = 0x922;

/// The slot's security version from the command line: `Ok(None)` when it
/// carries none (an image built before anti-rollback), an error when the
/// value is not a number (the UKI is broken: refused like any other bad
/// parameter).
pub fn slot_security_version(c: &Cmdline) -> Result<Option<u64>, String> {
    match c.get(KEY) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{KEY}={v:?} is not a security version (a number)")),
    }
}

/// What reading the node's minimum gave.
#[derive(Debug)]
pub enum TpmRead {
    /// No TPM device node (`/dev/tpmrm0`, `/dev/tpm0`).
    NoDevice,
    /// The index is not defined: no minimum yet.
    NoIndex,
    /// The minimum the index holds.
    Minimum(u64),
    /// Opening or talking to the TPM failed, or reading the index did.
    Failed(NvError),
}

/// What stage 1 does about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Boot; the words for stage 1's summary line.
    Boot(String),
    /// Boot, after printing this warning (fail open).
    Warn(String),
    /// Refuse to boot: this FATAL reason (stage 1 reboots).
    Refuse(String),
}

/// The policy: what a slot of security version `slot` does given `read`.
pub fn decide(slot: u64, read: &TpmRead) -> Decision {
    let index = format!("TPM NV index 0x{MIN_SECURITY_VERSION_INDEX:08X}");
    match read {
        TpmRead::NoIndex => Decision::Boot(format!(
            "security version {slot} (no minimum in the TPM)"
        )),
        TpmRead::Minimum(min) if slot < *min => Decision::Refuse(format!(
            "this slot's security version {slot} is below this node's minimum {min} ({index}): an old, superseded version refuses to run; boot counting moves on to the other slot"
        )),
        TpmRead::Minimum(min) => Decision::Boot(format!(
            "security version {slot} (node minimum {min})"
        )),
        TpmRead::Failed(e @ NvError::Foreign { .. }) => Decision::Refuse(format!(
            "{e}: the node's anti-rollback index was replaced by another (tampering?); refusing to boot any slot until it is restored"
        )),
        TpmRead::NoDevice => Decision::Warn(format!(
            "warning: stage 1: no TPM device (/dev/tpmrm0, /dev/tpm0): this slot's security version {slot} is not checked against a minimum (fail open: see docs/INIT.md)"
        )),
        TpmRead::Failed(e) => Decision::Warn(format!(
            "warning: stage 1: reading this node's minimum security version from the TPM failed ({e}): this slot's security version {slot} is not checked (fail open: see docs/INIT.md)"
        )),
    }
}

/// True for a TPM answer that means "send it again".
pub fn retryable(e: &NvError) -> bool {
    matches!(
        e.response_code(),
        Some(TPM_RC_RETRY | TPM_RC_TESTING | TPM_RC_YIELDED)
    )
}

/// Runs `read` up to [`ATTEMPTS`] times while it fails with a
/// [`retryable`] code, pausing `pause` between tries.
pub fn with_retries<T>(
    pause: Duration,
    mut read: impl FnMut() -> Result<T, NvError>,
) -> Result<T, NvError> {
    let mut tries = 1;
    loop {
        match read() {
            Err(e) if retryable(&e) && tries < ATTEMPTS => {
                tries += 1;
                std::thread::sleep(pause);
            }
            r => return r,
        }
    }
}

/// The firmware announces a TPM 2.0 (or its driver already bound one):
/// worth waiting for the node.
fn tpm_announced(sys: &Path) -> bool {
    sys.join("firmware/acpi/tables/TPM2").exists()
        || std::fs::read_dir(sys.join("class/tpm")).is_ok_and(|mut d| d.next().is_some())
}

/// The first TPM device node of [`tpmnv::DEVICES`] under `dev`, waiting up
/// to `wait` for one when `sys` says a TPM is there.
fn find_device(sys: &Path, dev: &Path, wait: Duration) -> Option<std::path::PathBuf> {
    let t0 = Instant::now();
    loop {
        for d in tpmnv::DEVICES {
            let p = dev.join(d.trim_start_matches("/dev/"));
            if p.exists() {
                return Some(p);
            }
        }
        if t0.elapsed() >= wait || !tpm_announced(sys) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads the node's minimum: the I/O around [`decide`].
pub fn read_minimum(sys: &Path, dev: &Path) -> TpmRead {
    let Some(node) = find_device(sys, dev, DEVICE_WAIT) else {
        return TpmRead::NoDevice;
    };
    let r = with_retries(RETRY_PAUSE, || {
        // Opened afresh for each try: a device left mid-command is closed.
        let mut f = tpmnv::open_device(&node.to_string_lossy())?;
        tpmnv::read_min_security_version(&mut f)
    });
    match r {
        Ok(None) => TpmRead::NoIndex,
        Ok(Some(m)) => TpmRead::Minimum(m),
        Err(e) => TpmRead::Failed(e),
    }
}

/// The check running on its own thread (started once the /var child is
/// forked: no thread may exist before that).
#[derive(Debug)]
pub struct Check {
    slot: u64,
    thread: std::thread::JoinHandle<(TpmRead, Duration)>,
}

impl Check {
    /// Starts reading the minimum for a slot of security version `slot`.
    pub fn start(slot: u64) -> std::io::Result<Check> {
        let thread = std::thread::Builder::new()
            .name("secver".into())
            .spawn(|| {
                let t0 = Instant::now();
                let r = read_minimum(Path::new("/sys"), Path::new("/dev"));
                (r, t0.elapsed())
            })?;
        Ok(Check { slot, thread })
    }

    /// Waits for the read and decides. The words for the summary line
    /// say how long the read took, and how long stage 1 waited for it.
    pub fn finish(self) -> Decision {
        let t0 = Instant::now();
        let (read, took) = match self.thread.join() {
            Ok(r) => r,
            Err(_) => (
                TpmRead::Failed(NvError::Io {
                    what: "the TPM thread".into(),
                    source: std::io::Error::other("it crashed"),
                }),
                Duration::ZERO,
            ),
        };
        let waited = t0.elapsed();
        match decide(self.slot, &read) {
            Decision::Boot(words) => Decision::Boot(format!(
                "{words}; TPM {:.0} ms, waited {:.0} ms",
                took.as_secs_f64() * 1e3,
                waited.as_secs_f64() * 1e3
            )),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn tpm(rc: u32) -> NvError {
        NvError::Tpm {
            command: "NV_ReadPublic",
            rc,
        }
    }

    #[test]
    fn the_command_line_value() {
        let c = |s: &str| slot_security_version(&Cmdline::parse(s));
        assert_eq!(c("fluxnode.slot=a").unwrap(), None);
        assert_eq!(c("fluxnode.secver=0").unwrap(), Some(0));
        assert_eq!(c("fluxnode.secver=7 x").unwrap(), Some(7));
        for bad in [
            "fluxnode.secver=",
            "fluxnode.secver=-1",
            "fluxnode.secver=x",
        ] {
            assert!(c(bad).unwrap_err().contains("fluxnode.secver"), "{bad}");
        }
        // A bare key has no value: as if absent.
        assert_eq!(c("fluxnode.secver").unwrap(), None);
    }

    #[test]
    fn an_old_slot_is_refused_with_one_line_naming_both_versions() {
        let d = decide(2, &TpmRead::Minimum(3));
        assert_eq!(
            d,
            Decision::Refuse(
                "this slot's security version 2 is below this node's minimum 3 (TPM NV index 0x0100F1A0): an old, superseded version refuses to run; boot counting moves on to the other slot".into()
            )
        );
        assert!(matches!(
            decide(0, &TpmRead::Minimum(64)),
            Decision::Refuse(_)
        ));
    }

    #[test]
    fn a_slot_at_or_above_the_minimum_boots() {
        for (slot, min) in [(3, 3), (4, 3), (0, 0), (64, 1), (u64::MAX, 64)] {
            match decide(slot, &TpmRead::Minimum(min)) {
                Decision::Boot(w) => assert!(w.contains(&format!("minimum {min}")), "{w}"),
                d => panic!("{slot} >= {min}: {d:?}"),
            }
        }
    }

    #[test]
    fn no_index_enforces_nothing() {
        assert!(matches!(decide(0, &TpmRead::NoIndex), Decision::Boot(_)));
    }

    #[test]
    fn a_foreign_index_is_tampering() {
        let e = NvError::Foreign {
            index: MIN_SECURITY_VERSION_INDEX,
            reason: "type 0x0, not TPM_NT_BITS".into(),
        };
        match decide(5, &TpmRead::Failed(e)) {
            Decision::Refuse(why) => {
                assert!(
                    why.contains("tampering") && why.contains("TPM_NT_BITS"),
                    "{why}"
                )
            }
            d => panic!("{d:?}"),
        }
    }

    #[test]
    fn no_tpm_or_a_failing_one_warns_and_boots() {
        match decide(1, &TpmRead::NoDevice) {
            Decision::Warn(w) => assert!(w.starts_with("warning: stage 1: no TPM device"), "{w}"),
            d => panic!("{d:?}"),
        }
        let failures = [
            tpm(TPM_RC_RETRY), // still busy after every retry
            tpm(0x101),        // TPM_RC_FAILURE
            NvError::Io {
                what: "opening /dev/tpmrm0".into(),
                source: std::io::ErrorKind::PermissionDenied.into(),
            },
            NvError::Malformed {
                command: "NV_Read",
                reason: "not 8 bytes",
            },
        ];
        for e in failures {
            let shown = e.to_string();
            match decide(1, &TpmRead::Failed(e)) {
                Decision::Warn(w) => assert!(w.contains(&shown) && w.contains("fail open"), "{w}"),
                d => panic!("{d:?}"),
            }
        }
    }

    #[test]
    fn busy_answers_are_retried_a_few_times_others_not() {
        for rc in [TPM_RC_RETRY, TPM_RC_TESTING, TPM_RC_YIELDED] {
            assert!(retryable(&tpm(rc)));
        }
        assert!(!retryable(&tpm(0x18B)));
        assert!(!retryable(&NvError::Malformed {
            command: "NV_Read",
            reason: "x"
        }));
        // Busy twice, then an answer.
        let mut n = 0;
        let r = with_retries(Duration::ZERO, || {
            n += 1;
            if n < 3 {
                Err(tpm(TPM_RC_RETRY))
            } else {
                Ok(Some(4))
            }
        });
        assert_eq!((r.unwrap(), n), (Some(4), 3));
        // Busy for ever: given up after ATTEMPTS tries, with the TPM's code.
        let mut n = 0;
        let r: Result<(), _> = with_retries(Duration::ZERO, || {
            n += 1;
            Err(tpm(TPM_RC_TESTING))
        });
        assert_eq!(r.unwrap_err().response_code(), Some(TPM_RC_TESTING));
        assert_eq!(n, ATTEMPTS);
        // Anything else: at once.
        let mut n = 0;
        let r: Result<(), _> = with_retries(Duration::ZERO, || {
            n += 1;
            Err(tpm(0x101))
        });
        assert!(r.is_err());
        assert_eq!(n, 1);
    }

    #[test]
    fn the_device_is_waited_for_only_when_the_firmware_announces_one() {
        let d = tempfile::tempdir().unwrap();
        let (sys, dev) = (d.path().join("sys"), d.path().join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(&sys).unwrap();
        // No TPM announced: no wait at all.
        let t0 = Instant::now();
        assert_eq!(find_device(&sys, &dev, Duration::from_secs(30)), None);
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(matches!(read_minimum(&sys, &dev), TpmRead::NoDevice));
        // Announced but absent: waited for, up to the bound.
        std::fs::create_dir_all(sys.join("firmware/acpi/tables")).unwrap();
        std::fs::write(sys.join("firmware/acpi/tables/TPM2"), b"").unwrap();
        let t0 = Instant::now();
        assert_eq!(find_device(&sys, &dev, Duration::from_millis(100)), None);
        assert!(t0.elapsed() >= Duration::from_millis(100));
        // The raw device when the resource manager is not there; the
        // resource manager first when both are.
        std::fs::write(dev.join("tpm0"), b"").unwrap();
        assert_eq!(find_device(&sys, &dev, DEVICE_WAIT), Some(dev.join("tpm0")));
        std::fs::write(dev.join("tpmrm0"), b"").unwrap();
        assert_eq!(
            find_device(&sys, &dev, DEVICE_WAIT),
            Some(dev.join("tpmrm0"))
        );
        // A regular file is no TPM: the read fails, and the policy warns.
        assert!(matches!(read_minimum(&sys, &dev), TpmRead::Failed(_)));
    }
}
