//! The DHCP client's sockets: UDP port 68 bound to the link, and a packet
//! socket beside it.
//!
//! Sending goes through a plain UDP socket with `SO_BINDTODEVICE` and
//! `SO_BROADCAST`: the kernel builds the IP and UDP headers and checksums,
//! and the same socket serves discovery (broadcast, source 0.0.0.0) and
//! renewal (unicast from the leased address). Our DISCOVER/REQUEST set the
//! broadcast flag, so RFC 2131 servers answer to 255.255.255.255, which the
//! kernel delivers on a link without an address. Two kinds of reply never
//! reach a UDP socket: a unicast to the offered address before the link
//! holds it (servers that ignore the flag, or `request_broadcast = false`),
//! and broadcasts dropped by a strict reverse-path filter. [`RawReceiver`]
//! catches those on an `AF_PACKET` socket filtered down to UDP port 68.

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

/// The DHCP payload of an IPv4 packet (starting at the IP header), if it
/// is an unfragmented UDP datagram to port 68. Every length is checked:
/// this reads raw packets off the wire.
pub fn udp_payload(p: &[u8]) -> Option<&[u8]> {
    let first = *p.first()?;
    let ihl = usize::from(first & 0x0f) * 4;
    if first >> 4 != 4 || ihl < 20 || p.len() < ihl + 8 || p[9] != 17 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([p[2], p[3]]));
    let frag = u16::from_be_bytes([p[6], p[7]]);
    if frag & 0x3fff != 0 || total < ihl + 8 || total > p.len() {
        return None; // a fragment, or lengths that lie
    }
    let udp = &p[ihl..total];
    if u16::from_be_bytes([udp[2], udp[3]]) != CLIENT_PORT {
        return None;
    }
    let udp_len = usize::from(u16::from_be_bytes([udp[4], udp[5]]));
    if udp_len < 8 || udp_len > udp.len() {
        return None;
    }
    Some(&udp[8..udp_len])
}

/// A packet socket on the link that sees DHCP replies before the kernel's
/// IP layer does.
///
/// A server that ignores the broadcast flag (or is asked not to broadcast:
/// `request_broadcast = false`) unicasts its OFFER/ACK to the address it
/// offers, which the link does not hold yet, so the kernel drops it before
/// the UDP socket. This socket catches it. A classic BPF filter lets only
/// unfragmented UDP to port 68 through, so it costs nothing while bound;
/// a reply that reaches both sockets is handled once (the client ignores
/// what no longer fits its state). It also bypasses the reverse-path filter.
#[derive(Debug)]
pub struct RawReceiver {
    fd: OwnedFd,
}

/// IPv4 at offset 0 (SOCK_DGRAM packet socket): protocol UDP, not a
/// fragment, destination port 68.
const FILTER: [libc::sock_filter; 9] = [
    bpf(0x30, 0, 0, 9),      // ldb [9]            protocol
    bpf(0x15, 0, 6, 17),     // jeq #17, next, drop
    bpf(0x28, 0, 0, 6),      // ldh [6]            flags + fragment offset
    bpf(0x45, 4, 0, 0x3fff), // jset #0x3fff, drop, next (MF or offset)
    bpf(0xb1, 0, 0, 0),      // ldxb 4*([0]&0xf)   header length
    bpf(0x48, 0, 0, 2),      // ldh [x+2]          destination port
    bpf(0x15, 0, 1, 68),     // jeq #68, accept, drop
    bpf(0x06, 0, 0, 0xffff), // ret #65535         accept
    bpf(0x06, 0, 0, 0),      // ret #0             drop
];

const fn bpf(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

impl RawReceiver {
    /// Opens the packet socket on link `ifindex`, filter attached.
    pub fn open(ifindex: u32) -> io::Result<Self> {
        let fd = crate::sys::packet_socket(ifindex, libc::ETH_P_IP as u16, Some(&FILTER))?;
        Ok(RawReceiver { fd })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The next DHCP message seen on the link: `Ok(None)` when none waits.
    pub fn recv(&self) -> io::Result<Option<Message>> {
        let mut buf = [0u8; 2048];
        while let Some(n) = crate::sys::recv_ready(self.fd.as_raw_fd(), &mut buf)? {
            let Some(payload) = udp_payload(&buf[..n]) else {
                continue;
            };
            match Message::parse(payload) {
                Ok(m) => return Ok(Some(m)),
                Err(e) => tracing::debug!(error = %e, "ignoring a packet to port 68"),
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn packet(payload: &[u8], dport: u16, frag: u16) -> Vec<u8> {
        let total = 20 + 8 + payload.len();
        let mut p = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 255, 255, 255, 255,
        ];
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p.extend_from_slice(&67u16.to_be_bytes());
        p.extend_from_slice(&dport.to_be_bytes());
        p.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
        p.extend_from_slice(payload);
        p
    }

    #[test]
    fn unwraps_udp_to_port_68_only() {
        assert_eq!(udp_payload(&packet(b"dhcp", 68, 0)), Some(&b"dhcp"[..]));
        assert_eq!(
            udp_payload(&packet(b"dhcp", 68, 0x4000)),
            Some(&b"dhcp"[..]),
            "DF is fine"
        );
        assert_eq!(udp_payload(&packet(b"dhcp", 67, 0)), None);
        assert_eq!(
            udp_payload(&packet(b"dhcp", 68, 0x2000)),
            None,
            "more fragments"
        );
        assert_eq!(
            udp_payload(&packet(b"dhcp", 68, 0x0001)),
            None,
            "a later fragment"
        );
        // Trailing Ethernet padding beyond the IP total length is ignored.
        let mut padded = packet(b"dhcp", 68, 0);
        padded.extend_from_slice(&[0; 10]);
        assert_eq!(udp_payload(&padded), Some(&b"dhcp"[..]));
    }

    #[test]
    fn lying_lengths_are_refused() {
        let good = packet(b"dhcp", 68, 0);
        let mut p = good.clone();
        p[2..4].copy_from_slice(&500u16.to_be_bytes()); // total > captured
        assert_eq!(udp_payload(&p), None);
        let mut p = good.clone();
        p[24..26].copy_from_slice(&200u16.to_be_bytes()); // udp length > total
        assert_eq!(udp_payload(&p), None);
        let mut p = good.clone();
        p[24..26].copy_from_slice(&3u16.to_be_bytes()); // udp length < header
        assert_eq!(udp_payload(&p), None);
        let mut p = good.clone();
        p[0] = 0x44; // ihl 16 bytes
        assert_eq!(udp_payload(&p), None);
        let mut p = good.clone();
        p[0] = 0x65; // IPv6 version nibble
        assert_eq!(udp_payload(&p), None);
        for len in 0..good.len() {
            let _ = udp_payload(&good[..len]);
        }
    }
}
