//! The DHCP client's socket: UDP port 68, bound to the link.
//!
//! A plain UDP socket with `SO_BINDTODEVICE` and `SO_BROADCAST` rather than
//! an `AF_PACKET` one: the kernel builds the IP and UDP headers and
//! checksums, and the same socket serves discovery (broadcast, source
//! 0.0.0.0) and renewal (unicast from the leased address). What makes this
//! work before the link has an address is the broadcast flag in our
//! DISCOVER/REQUEST: the server answers to 255.255.255.255, which the kernel
//! delivers on a link without an address, where a unicast to the offered
//! address would be dropped. RFC 2131 obliges servers to honour the flag
//! (dnsmasq and QEMU's user networking do). The cost: replies are subject to
//! the reverse-path filter; with `rp_filter` strict (1) on the link and no
//! route back to the server, the kernel drops them. The kernel default is 0
//! and the appliance sets no other.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::client::Destination;
use super::packet::Message;

/// The DHCP client port.
pub const CLIENT_PORT: u16 = 68;
/// The DHCP server port.
pub const SERVER_PORT: u16 = 67;

/// Port 68 on one link.
#[derive(Debug)]
pub struct DhcpSocket {
    sock: UdpSocket,
}

fn setsockopt(fd: RawFd, level: i32, name: i32, value: &[u8]) -> io::Result<()> {
    // SAFETY: value is valid for value.len() bytes.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            value.as_ptr().cast(),
            value.len() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl DhcpSocket {
    /// Opens UDP port 68 on link `ifname` (non-blocking).
    pub fn open(ifname: &str) -> io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let one = 1i32.to_ne_bytes();
        setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, &one)?;
        setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_BROADCAST, &one)?;
        setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            ifname.as_bytes(),
        )?;
        let sock = UdpSocket::from(fd);
        // UdpSocket::bind would create a new socket; bind this one by hand.
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: CLIENT_PORT.to_be(),
            sin_addr: libc::in_addr { s_addr: 0 },
            sin_zero: [0; 8],
        };
        let sa_ptr = &sa as *const libc::sockaddr_in as *const libc::sockaddr;
        // SAFETY: sa is a valid sockaddr_in for its size.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                sa_ptr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DhcpSocket { sock })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }

    /// Sends a message.
    pub fn send(&self, m: &Message, to: Destination) -> io::Result<()> {
        let ip = match to {
            Destination::Broadcast => Ipv4Addr::BROADCAST,
            Destination::Unicast(ip) => ip,
        };
        self.sock
            .send_to(&m.encode(), SocketAddrV4::new(ip, SERVER_PORT))
            .map(|_| ())
    }

    /// The next readable message: `Ok(None)` when nothing is waiting.
    /// Datagrams that do not parse are logged and skipped.
    pub fn recv(&self) -> io::Result<Option<Message>> {
        let mut buf = [0u8; 1500];
        loop {
            match self.sock.recv_from(&mut buf) {
                Ok((n, from)) => match Message::parse(&buf[..n]) {
                    Ok(m) => return Ok(Some(m)),
                    Err(e) => tracing::debug!(%from, error = %e, "ignoring a datagram on port 68"),
                },
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }
}
