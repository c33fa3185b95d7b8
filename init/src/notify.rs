//! The sd_notify protocol: one datagram socket for all services.
//!
//! Services find it in `NOTIFY_SOCKET` and send `KEY=VALUE` lines, as with
//! systemd, so any sd_notify library works unchanged. With SO_PASSCRED the
//! kernel tells us the sender's pid; init maps it to a service by main pid
//! or, for helpers like `systemd-notify`, by process group.

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};

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

    /// Receives one datagram: (sender pid if known, bytes). `None` when empty.
    pub fn recv(&self) -> Option<(Option<i32>, Vec<u8>)> {
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
        let mut pid = None;
        // SAFETY: CMSG_* walk the control buffer the kernel filled.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                    let cred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::ucred>());
                    pid = Some(cred.pid);
                } else if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS
                {
                    // Close any descriptors a service passed (FDSTORE is not supported).
                    let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                        / std::mem::size_of::<i32>();
                    for i in 0..n {
                        libc::close(std::ptr::read_unaligned(
                            libc::CMSG_DATA(c).cast::<i32>().add(i),
                        ));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Some((pid, buf))
    }
}

/// `fluxnode-init notify KEY=VALUE...`: sends one datagram to
/// `$NOTIFY_SOCKET`, for services written as shell scripts.
pub fn notify_main(args: &[String]) -> i32 {
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        eprintln!("usage: fluxnode-init notify KEY=VALUE...   (e.g. READY=1 STATUS=\"warming up\" WATCHDOG=1)");
        return 2;
    }
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        eprintln!("notify: NOTIFY_SOCKET is not set: not running under a supervisor");
        return 1;
    };
    let msg = args.join("\n");
    let sent = UnixDatagram::unbound().and_then(|s| s.send_to(msg.as_bytes(), Path::new(&path)));
    match sent {
        Ok(_) => 0,
        Err(e) => {
            eprintln!("notify: sending to {}: {e}", Path::new(&path).display());
            1
        }
    }
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
        let (pid, msg) = s.recv().unwrap();
        assert_eq!(pid, Some(std::process::id() as i32));
        assert_eq!(msg, b"READY=1");
        assert!(s.recv().is_none());
    }
}
