//! signalfd and poll: the core of a one-thread event loop.
//!
//! fluxnode's daemons (PID 1 included) are one thread each, waiting in
//! `poll(2)` on their sockets and a signalfd. The signals they handle are
//! blocked and read from the descriptor like any other event: no signal
//! handler, no async-signal-safety rules, no flag that a handler sets
//! between the check and the wait.
//!
//! These are raw libc calls with SAFETY comments on purpose. rustix (in
//! the lock file already) has no signalfd and no stable signal mask; it
//! would only replace the one `poll` call, while nix would add a new
//! dependency tree to PID 1, whose resident memory follows the code it
//! maps. Each `unsafe` here is one syscall on memory we own.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// A signalfd for a set of signals that this thread has blocked.
#[derive(Debug)]
pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks `signals` in the calling thread and opens a non-blocking,
    /// close-on-exec signalfd for them.
    ///
    /// Call it before starting other threads: they inherit the mask, and
    /// a process-directed signal goes to any thread that has it unblocked
    /// instead of to the descriptor. Children inherit the mask across
    /// exec too, so spawn code must reset it in the child.
    pub fn block(signals: &[i32]) -> io::Result<Self> {
        // SAFETY: sigset_t is plain data; sigemptyset initialises it.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; these calls only write to it.
        unsafe {
            libc::sigemptyset(&mut set);
        }
        for &s in signals {
            // SAFETY: as above; an invalid number is reported, not UB.
            if unsafe { libc::sigaddset(&mut set, s) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: `set` is valid; a null old mask is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            // pthread_sigmask returns the error instead of setting errno.
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: `set` is valid; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(SignalFd { fd })
    }

    /// The descriptor, for poll.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The next pending signal's number; `None` when none is pending.
    pub fn read(&self) -> io::Result<Option<i32>> {
        const LEN: usize = std::mem::size_of::<libc::signalfd_siginfo>();
        loop {
            // SAFETY: signalfd_siginfo is plain data; zero is valid.
            let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is valid for LEN bytes and outlives the call.
            let n = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    LEN,
                )
            };
            if n >= 0 {
                // The kernel hands out whole records only.
                return Ok((n as usize == LEN).then_some(info.ssi_signo as i32));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::WouldBlock => return Ok(None),
                io::ErrorKind::Interrupted => continue,
                _ => return Err(e),
            }
        }
    }

    /// Every pending signal, oldest first (one per signal number: the
    /// kernel does not queue repeats of a standard signal).
    ///
    /// An error after some signals were read returns those; the error
    /// comes back on the next call, so no signal is lost to it.
    pub fn read_all(&self) -> io::Result<Vec<i32>> {
        let mut out = Vec::new();
        loop {
            match self.read() {
                Ok(Some(s)) => out.push(s),
                Ok(None) => return Ok(out),
                Err(e) if out.is_empty() => return Err(e),
                Err(_) => return Ok(out),
            }
        }
    }
}

impl AsFd for SignalFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Waits until one of `fds` is ready or `timeout` passes (`None` waits
/// for ever), and says which are ready, index for index.
///
/// "Ready" is readable, error, hang-up, or not a descriptor (POLLNVAL):
/// in each case the caller's next read says what happened. Leaving out
/// POLLNVAL would make a closed descriptor spin the loop silently.
/// An interrupted wait (EINTR) returns as a timeout: nothing is ready.
pub fn poll_readable(fds: &[RawFd], timeout: Option<Duration>) -> io::Result<Vec<bool>> {
    let mut p: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let ms = match timeout {
        None => -1,
        // Rounded up: a loop must not wake a millisecond before its timer
        // and poll again with a zero timeout.
        Some(t) => i32::try_from(t.as_micros().div_ceil(1000)).unwrap_or(i32::MAX),
    };
    // SAFETY: `p` is a live array of p.len() pollfd structures.
    let n = unsafe { libc::poll(p.as_mut_ptr(), p.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(vec![false; fds.len()]);
        }
        return Err(e);
    }
    const READY: libc::c_short = libc::POLLIN | libc::POLLERR | libc::POLLHUP | libc::POLLNVAL;
    Ok(p.iter().map(|x| x.revents & READY != 0).collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::io::Write as _;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    use super::*;

    #[test]
    fn poll_times_out_then_sees_data() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let (c, _d) = UnixDatagram::pair().unwrap();
        let fds = [a.as_raw_fd(), c.as_raw_fd()];
        let t0 = std::time::Instant::now();
        let r = poll_readable(&fds, Some(Duration::from_millis(20))).unwrap();
        assert_eq!(r, vec![false, false]);
        assert!(t0.elapsed() >= Duration::from_millis(20));
        b.send(b"x").unwrap();
        let r = poll_readable(&fds, None).unwrap();
        assert_eq!(r, vec![true, false]);
    }

    #[test]
    fn poll_sees_hang_up() {
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(b"").unwrap();
        drop(b);
        let r = poll_readable(&[a.as_raw_fd()], Some(Duration::from_secs(5))).unwrap();
        assert_eq!(r, vec![true]);
    }

    #[test]
    fn a_zero_timeout_does_not_wait() {
        let (a, _b) = UnixDatagram::pair().unwrap();
        let r = poll_readable(&[a.as_raw_fd()], Some(Duration::ZERO)).unwrap();
        assert_eq!(r, vec![false]);
        assert_eq!(poll_readable(&[], Some(Duration::ZERO)).unwrap(), vec![]);
    }

    #[test]
    fn signalfd_reads_blocked_signals() {
        // Blocked in this test thread only; raise() directs the signal at
        // this thread, so no other test thread can receive it.
        let sig = SignalFd::block(&[libc::SIGUSR1, libc::SIGUSR2]).unwrap();
        assert_eq!(sig.read().unwrap(), None);
        assert_eq!(sig.read_all().unwrap(), Vec::<i32>::new());
        // SAFETY: raise takes a plain number; the signal is blocked.
        unsafe {
            libc::raise(libc::SIGUSR2);
            libc::raise(libc::SIGUSR1);
        }
        let ready = poll_readable(&[sig.fd()], Some(Duration::from_secs(5))).unwrap();
        assert_eq!(ready, vec![true]);
        let mut got = sig.read_all().unwrap();
        got.sort_unstable();
        assert_eq!(got, vec![libc::SIGUSR1, libc::SIGUSR2]);
        assert_eq!(sig.read().unwrap(), None);
        assert_eq!(sig.as_raw_fd(), sig.fd());
    }

    #[test]
    fn an_invalid_signal_is_an_error() {
        assert!(SignalFd::block(&[9999]).is_err());
    }
}
