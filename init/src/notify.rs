//! The sd_notify protocol: one datagram socket for all services.
//!
//! Services find it in `NOTIFY_SOCKET` and send `KEY=VALUE` lines, as with
//! systemd, so any sd_notify library works unchanged. With SO_PASSCRED the
//! kernel attaches the sender's pid and uid to every message, and checks
//! them: a process can claim another pid only with CAP_SYS_ADMIN, another
//! uid only with CAP_SETUID. init maps the pid to a service (its main pid,
//! or a process in its cgroup; see `supervisor::events`), so any service,
//! whatever its user, may send, but only for itself. That is why the
//! socket can be writable by everyone (mode 0666 in a directory of its
//! own), while the control socket is not.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fluxnode_lowlevel::signals::poll_readable;

/// One message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// `READY=1`.
    Ready,
    /// `STATUS=...`.
    Status(String),
    /// `WATCHDOG=1`.
    Watchdog,
    /// `WATCHDOG=trigger`: the service asks to be treated as hung.
    WatchdogTrigger,
    /// `STOPPING=1`.
    Stopping,
    /// `RELOADING=1`.
    Reloading,
}

/// Parses a datagram; unknown keys are ignored, as systemd does.
pub fn parse(msg: &[u8]) -> Vec<Notification> {
    String::from_utf8_lossy(msg)
        .split('\n')
        .filter_map(|line| {
            let (k, v) = line.split_once('=')?;
            Some(match (k, v) {
                ("READY", "1") => Notification::Ready,
                ("STATUS", s) => Notification::Status(s.chars().take(256).collect()),
                ("WATCHDOG", "1") => Notification::Watchdog,
                ("WATCHDOG", "trigger") => Notification::WatchdogTrigger,
                ("STOPPING", "1") => Notification::Stopping,
                ("RELOADING", "1") => Notification::Reloading,
                _ => return None,
            })
        })
        .collect()
}

/// The socket.
#[derive(Debug)]
pub struct NotifySocket {
    sock: UnixDatagram,
    path: PathBuf,
}

impl NotifySocket {
    /// Binds at `path` (replacing a stale one) with SO_PASSCRED on.
    pub fn bind(path: &Path) -> std::io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let sock = UnixDatagram::bind(path)?;
        sock.set_nonblocking(true)?;
        let one: libc::c_int = 1;
        // SAFETY: setsockopt reads one int.
        let rc = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as u32,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(NotifySocket {
            sock,
            path: path.into(),
        })
    }

    /// The path services are given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The descriptor, for poll.
    pub fn raw(&self) -> i32 {
        self.sock.as_raw_fd()
    }

    /// Makes the socket writable by every user: services that are not
    /// root must reach it; the credentials decide what a message may do.
    pub fn open_to_all(&self) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o666))
    }

    /// Receives one datagram. `None` when empty. Dropping its descriptors
    /// after the message is handled releases a sender waiting on
    /// `BARRIER=1`.
    pub fn recv(&self) -> Option<Datagram> {
        let mut buf = vec![0u8; 4096];
        let mut cmsg = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain data; we point it at live buffers.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg);
        // SAFETY: recvmsg writes into the buffers described by `msg`.
        let n = unsafe {
            libc::recvmsg(
                self.sock.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
            )
        };
        if n < 0 {
            return None;
        }
        buf.truncate(n as usize);
        let mut creds = None;
        let mut fds = Vec::new();
        // SAFETY: CMSG_* walk the control buffer the kernel filled.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                    let cred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::ucred>());
                    creds = Some((cred.pid, cred.uid));
                } else if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS
                {
                    // Descriptors are kept until the message is handled, then
                    // closed (the barrier protocol; FDSTORE is not supported).
                    let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                        / std::mem::size_of::<i32>();
                    for i in 0..n {
                        let fd = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>().add(i));
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        // A cut message is not judged: with its control data cut
        // (MSG_CTRUNC) the credentials may be missing and descriptors lost
        // (the kernel closes what did not fit); with its bytes cut
        // (MSG_TRUNC) a line may be half there. The descriptors that did
        // arrive are closed with `fds`, so a BARRIER=1 sender is released.
        if msg.msg_flags & (libc::MSG_CTRUNC | libc::MSG_TRUNC) != 0 {
            tracing::warn!(
                "notify: dropped a message cut short ({}; from pid {:?})",
                if msg.msg_flags & libc::MSG_CTRUNC != 0 {
                    "too much control data"
                } else {
                    "over 4096 bytes"
                },
                creds.map(|c| c.0)
            );
            return Some(Datagram {
                pid: None,
                uid: None,
                msg: Vec::new(),
                fds,
            });
        }
        Some(Datagram {
            pid: creds.map(|c| c.0),
            uid: creds.map(|c| c.1),
            msg: buf,
            fds,
        })
    }
}

/// One message and what the kernel vouches for about its sender.
#[derive(Debug)]
pub struct Datagram {
    /// The sender's pid (as seen in init's PID namespace; 0 when the sender
    /// is outside it).
    pub pid: Option<i32>,
    /// The sender's uid.
    pub uid: Option<u32>,
    /// The bytes.
    pub msg: Vec<u8>,
    /// Descriptors it carried (the barrier's pipe).
    pub fds: Vec<OwnedFd>,
}

/// `fluxnode-init notify KEY=VALUE...`: sends one datagram to
/// `$NOTIFY_SOCKET`, for services written as shell scripts.
///
/// A helper like this one is not the service's main process, so init must
/// look up its process group to know whose message it is — and a helper
/// that exits at once may be gone by then. So it waits, as
/// `sd_notify_barrier()` does: it adds `BARRIER=1` with a pipe's write end,
/// and init closes that only after it has handled the message.
///
/// `--pid N` sends on behalf of process N, as `systemd-notify --pid=` and
/// `sd_pid_notify()` do: the kernel accepts that only from a process with
/// CAP_SYS_ADMIN, and init then still checks the sender's uid.
pub fn notify_main(args: &[String]) -> i32 {
    let (as_pid, args) = match args {
        [flag, pid, rest @ ..] if flag == "--pid" => match pid.parse::<i32>() {
            Ok(p) => (Some(p), rest),
            Err(_) => {
                eprintln!("notify: --pid needs a number, got {pid:?}");
                return 2;
            }
        },
        _ => (None, args),
    };
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("usage: fluxnode-init notify [--pid PID] KEY=VALUE...   (e.g. READY=1 STATUS=\"warming up\" WATCHDOG=1)");
        return 2;
    }
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        eprintln!("notify: NOTIFY_SOCKET is not set: not running under a supervisor");
        return 1;
    };
    let msg = format!("{}\nBARRIER=1", args.join("\n"));
    match send_with_barrier(Path::new(&path), msg.as_bytes(), as_pid) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("notify: sending to {}: {e}", Path::new(&path).display());
            1
        }
    }
}

fn send_with_barrier(path: &Path, msg: &[u8], as_pid: Option<i32>) -> std::io::Result<()> {
    let sock = UnixDatagram::unbound()?;
    sock.connect(path)?;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both are fresh descriptors we own.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr() as *mut libc::c_void,
        iov_len: msg.len(),
    };
    let mut cmsg = [0u64; 8];
    // SAFETY: msghdr and the control buffer are plain data we fill in.
    unsafe {
        let mut m: libc::msghdr = std::mem::zeroed();
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        m.msg_control = cmsg.as_mut_ptr().cast();
        let rights = libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) as usize;
        let creds = libc::CMSG_SPACE(std::mem::size_of::<libc::ucred>() as u32) as usize;
        m.msg_controllen = rights + if as_pid.is_some() { creds } else { 0 };
        let c = libc::CMSG_FIRSTHDR(&m);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), write.as_raw_fd());
        if let Some(pid) = as_pid {
            let c = libc::CMSG_NXTHDR(&m, c);
            if c.is_null() {
                return Err(std::io::Error::other("no room for the credentials"));
            }
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_CREDENTIALS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::ucred>() as u32) as usize;
            let cred = libc::ucred {
                pid,
                uid: libc::getuid(),
                gid: libc::getgid(),
            };
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<libc::ucred>(), cred);
        }
        if libc::sendmsg(sock.as_raw_fd(), &m, libc::MSG_NOSIGNAL) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    drop(write);
    // Wait (bounded) until init has closed its copy: the message is handled.
    // The read end turns readable (hang-up) when the last write end closes.
    let ready = poll_readable(&[read.as_raw_fd()], Some(Duration::from_secs(5)));
    if matches!(ready.as_deref(), Ok([false])) {
        eprintln!("notify: init did not confirm the message within 5 s");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_standard_keys() {
        let n = parse(b"READY=1\nSTATUS=warming up\nWATCHDOG=1\nFOO=bar\nSTOPPING=1\nnonsense");
        assert_eq!(
            n,
            vec![
                Notification::Ready,
                Notification::Status("warming up".into()),
                Notification::Watchdog,
                Notification::Stopping
            ]
        );
        assert!(parse(b"READY=0").is_empty());
        assert!(parse(&[0xff, 0xfe, b'=', 0]).is_empty());
    }

    #[test]
    fn receives_with_sender_pid() {
        let dir = tempfile::tempdir().unwrap();
        let s = NotifySocket::bind(&dir.path().join("n.sock")).unwrap();
        let c = UnixDatagram::unbound().unwrap();
        c.send_to(b"READY=1", s.path()).unwrap();
        let d = s.recv().unwrap();
        assert_eq!(d.pid, Some(std::process::id() as i32));
        // SAFETY: getuid has no preconditions.
        assert_eq!(d.uid, Some(unsafe { libc::getuid() }));
        assert_eq!(d.msg, b"READY=1");
        assert!(d.fds.is_empty());
        assert!(s.recv().is_none());
    }

    /// A message longer than the buffer is not judged on its first 4096
    /// bytes: it carries no sender, so the loop drops it.
    #[test]
    fn a_message_cut_short_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let s = NotifySocket::bind(&dir.path().join("n.sock")).unwrap();
        let c = UnixDatagram::unbound().unwrap();
        let mut long = b"STATUS=".to_vec();
        long.resize(5000, b'x');
        long.extend_from_slice(b"\nREADY=1");
        c.send_to(&long, s.path()).unwrap();
        let d = s.recv().unwrap();
        assert_eq!((d.pid, d.uid), (None, None));
        assert!(d.msg.is_empty());
        // The next message is judged as usual.
        c.send_to(b"READY=1", s.path()).unwrap();
        assert_eq!(s.recv().unwrap().pid, Some(std::process::id() as i32));
    }

    #[test]
    fn barrier_waits_until_the_message_is_handled() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("n.sock");
        let s = NotifySocket::bind(&path).unwrap();
        let sender = std::thread::spawn(move || {
            let t = std::time::Instant::now();
            send_with_barrier(&path, b"WATCHDOG=1\nBARRIER=1", None).unwrap();
            t.elapsed()
        });
        let d = loop {
            if let Some(r) = s.recv() {
                break r;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        };
        assert_eq!(d.pid, Some(std::process::id() as i32));
        assert_eq!(parse(&d.msg), vec![Notification::Watchdog]);
        let fds = d.fds;
        assert_eq!(fds.len(), 1);
        std::thread::sleep(std::time::Duration::from_millis(300));
        drop(fds);
        let waited = sender.join().unwrap();
        assert!(
            waited >= std::time::Duration::from_millis(250),
            "{waited:?}"
        );
    }
}
