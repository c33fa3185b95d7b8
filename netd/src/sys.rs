//! The few syscalls the event loop needs: signalfd, poll, getrandom, and
//! the packet sockets of DHCP's raw receiver and the ARP check.
//!
//! netd is one thread with one loop: the DHCP socket, a signalfd for
//! SIGTERM/SIGINT, and a timeout (the next DHCP timer or watchdog ping).
//! Blocking the signals and reading them from a descriptor means no signal
//! handler and no flag races. signalfd and poll themselves come from
//! `fluxnode-lowlevel`, shared with init; this module stays the one place
//! netd's other files import them from.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

pub use fluxnode_lowlevel::signals::{poll_readable, SignalFd};

/// The signals that stop netd: SIGTERM from init, SIGINT from a
/// terminal, SIGHUP when the terminal goes.
pub const STOP_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// A signalfd for the signals that stop netd ([`STOP_SIGNALS`]).
#[derive(Debug)]
pub struct Signals(SignalFd);

impl Signals {
    /// Blocks [`STOP_SIGNALS`] for this thread and opens a signalfd for
    /// them. Call before any other thread exists.
    pub fn open() -> io::Result<Self> {
        SignalFd::block(&STOP_SIGNALS).map(Signals)
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> RawFd {
        self.0.fd()
    }

    /// The next pending signal number, if any.
    pub fn read(&self) -> io::Result<Option<i32>> {
        self.0.read()
    }
}

/// 64 random bits from the kernel (for DHCP transaction ids and jitter);
/// falls back to time and pid if getrandom is unavailable.
pub fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: b is valid for 8 bytes.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), libc::GRND_NONBLOCK) };
    if n == 8 {
        return u64::from_ne_bytes(b);
    }
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    t ^ (u64::from(std::process::id()) << 32)
}

/// The link-layer address of `ifindex` for EtherType `ethertype` (host
/// order), as packet sockets bind and send to it.
pub fn link_sockaddr(ifindex: u32, ethertype: u16) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; zero is valid.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ethertype.to_be();
    sll.sll_ifindex = ifindex as i32;
    sll
}

/// Opens a non-blocking `AF_PACKET` datagram socket for `ethertype` on link
/// `ifindex`. A `filter` (classic BPF) is attached before the bind, so no
/// unfiltered frame is ever queued.
///
/// The socket is made with protocol 0, which receives nothing, and gets
/// its EtherType only with the bind. Made with the EtherType, it would
/// receive from every link at once, and the bind would then have to
/// unhook it, which waits for an RCU grace period (`synchronize_net`):
/// 20-30 ms under TCG, on the way to the first DISCOVER.
pub fn packet_socket(
    ifindex: u32,
    ethertype: u16,
    filter: Option<&[libc::sock_filter]>,
) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if let Some(filter) = filter {
        let prog = libc::sock_fprog {
            len: u16::try_from(filter.len())
                .map_err(|_| io::Error::other("BPF filter too long"))?,
            filter: filter.as_ptr().cast_mut(),
        };
        // SAFETY: prog points at `filter`, alive for the call; the kernel copies it.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ATTACH_FILTER,
                (&prog as *const libc::sock_fprog).cast(),
                std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let sll = link_sockaddr(ifindex, ethertype);
    // SAFETY: sll is a valid sockaddr_ll for its size.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// One datagram from a non-blocking socket into `buf`: its length, or
/// `None` when nothing waits. An interrupted call is retried.
pub fn recv_ready(fd: RawFd, buf: &mut [u8]) -> io::Result<Option<usize>> {
    loop {
        // SAFETY: buf is valid for buf.len() bytes.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 0 {
            return Ok(Some(n as usize));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(None),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn random_bits_differ() {
        assert_ne!(random_u64(), random_u64());
    }
}
