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

/// Where this init runs; it decides what "shut down" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PID 1 of the machine: ends with reboot(2), never exits.
    Machine,
    /// PID 1 of a child PID namespace (tests, the demo): ends by exiting 0.
    Namespace,
    /// Not PID 1 (development): no mounts, ends by exiting 0.
    Foreground,
}

/// The inode of the initial PID namespace (PROC_PID_INIT_INO in the kernel);
/// it is a constant, so PID 1 can tell a machine from a container.
const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;

impl Mode {
    /// Detects the mode of this process.
    pub fn detect() -> Mode {
        if std::process::id() != 1 {
            return Mode::Foreground;
        }
        match std::fs::metadata("/proc/self/ns/pid") {
            Ok(m) if std::os::unix::fs::MetadataExt::ino(&m) != PROC_PID_INIT_INO => {
                Mode::Namespace
            }
            // No /proc yet or the initial namespace: a machine.
            _ => Mode::Machine,
        }
    }
}

/// How a child ended, from a wait status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitStatus {
    /// exit(code).
    Code(i32),
    /// Killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// Decodes a raw wait status.
    pub fn from_wait(status: i32) -> Self {
        if libc::WIFSIGNALED(status) {
            ExitStatus::Signal(libc::WTERMSIG(status))
        } else {
            ExitStatus::Code(libc::WEXITSTATUS(status))
        }
    }

    /// Exit code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "exit status {c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// Reaps one exited child, if any: (pid, status).
pub fn reap_one() -> Option<(i32, ExitStatus)> {
    let mut status = 0;
    // SAFETY: waitpid writes only into `status`.
    let pid = unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) };
    (pid > 0).then(|| (pid, ExitStatus::from_wait(status)))
}

/// Sends `sig` to a process group (`pgid` > 0).
pub fn kill_group(pgid: i32, sig: i32) -> bool {
    // SAFETY: kill takes plain integers.
    pgid > 0 && unsafe { libc::kill(-pgid, sig) } == 0
}

/// Sends `sig` to every process but ourselves (kill(-1)).
pub fn kill_all(sig: i32) {
    // SAFETY: kill takes plain integers.
    unsafe {
        libc::kill(-1, sig);
    }
}

/// Wall-clock-free monotonic milliseconds, for timers and logs.
pub fn monotonic_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into `ts`.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Seconds since the kernel started (CLOCK_BOOTTIME), as the kernel's own
/// log stamps them: boot timelines line up with dmesg.
pub fn uptime() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}
