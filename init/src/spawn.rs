//! Starting a service's process.
//!
//! The child gets a clean state before exec: its own session (so the whole
//! service can be signalled as a process group), an empty signal mask and
//! default dispositions (a SIGPIPE left ignored kills services later on a
//! closed pipe), stdin from /dev/null, stdout and stderr into one pipe that
//! init reads line by line, and its cgroup joined before exec so nothing it
//! forks escapes the limits.

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::config::ServiceSpec;

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    /// Its pid (also its process group).
    pub pid: i32,
    /// The read end of its stdout+stderr pipe, non-blocking.
    pub output: OwnedFd,
}

/// The PATH services get.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `spec`'s program.
pub fn spawn(
    spec: &ServiceSpec,
    notify_socket: &Path,
    cgroup_procs: Option<&Path>,
) -> std::io::Result<Spawned> {
    let (read, write) = pipe()?;
    let write2 = write.try_clone()?;
    let argv = &spec.cfg.argv;
    let mut cmd = Command::new(argv.first().map(String::as_str).unwrap_or("/"));
    cmd.args(argv.iter().skip(1))
        .env_clear()
        .env("PATH", DEFAULT_PATH)
        .env("NOTIFY_SOCKET", notify_socket)
        .envs(&spec.cfg.env)
        .stdin(Stdio::null())
        .stdout(Stdio::from(write))
        .stderr(Stdio::from(write2));
    if spec.cfg.watchdog_ms > 0 {
        cmd.env("WATCHDOG_USEC", (spec.cfg.watchdog_ms * 1000).to_string());
    }
    if let Some(dir) = &spec.cfg.working_dir {
        cmd.current_dir(dir);
    }
    if let Some((uid, gid)) = spec.ids {
        cmd.uid(uid).gid(gid);
    }
    let procs = cgroup_procs.and_then(|p| CString::new(p.as_os_str().as_encoded_bytes()).ok());
    // SAFETY: the closure only makes async-signal-safe syscalls (setsid,
    // sigprocmask, sigaction, open, write, close) on data prepared before fork.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            for sig in 1..32 {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            if let Some(p) = &procs {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    // The Child handle is dropped without waiting: init's single reaper
    // collects every exit and routes it by pid.
    let pid = child.id() as i32;
    drop(child);
    set_nonblocking(&read)?;
    Ok(Spawned { pid, output: read })
}

/// Sets O_NONBLOCK.
pub fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd.as_raw_fd(), libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
