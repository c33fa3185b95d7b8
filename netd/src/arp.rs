//! ARP probes (RFC 5227) to check that an offered address is free.
//!
//! Before using a new lease netd asks the link "who has this address?"
//! from 0.0.0.0, a few times. Any host answering for it, or probing for it
//! at the same moment, means a conflict: the client declines the lease.
//! The socket is an `AF_PACKET` one for ARP, opened only while probing, so
//! the daemon is not woken by the link's ARP traffic otherwise. Replies
//! are outside input: the parser checks the sizes and types it relies on.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

const ETH_P_ARP: u16 = 0x0806;
const ARP_LEN: usize = 28;

/// An Ethernet/IPv4 ARP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Arp {
    /// 1 = request, 2 = reply.
    pub op: u16,
    /// Sender hardware address.
    pub sender_mac: [u8; 6],
    /// Sender protocol address (0.0.0.0 in a probe).
    pub sender_ip: Ipv4Addr,
    /// Target protocol address.
    pub target_ip: Ipv4Addr,
}

/// Reads an ARP packet (the payload after the Ethernet header); `None`
/// for anything but Ethernet/IPv4 ARP of full length.
pub fn parse(p: &[u8]) -> Option<Arp> {
    let p = p.get(..ARP_LEN)?;
    if p[0..2] != [0, 1] || p[2..4] != [8, 0] || p[4] != 6 || p[5] != 4 {
        return None;
    }
    let ip = |at: usize| Ipv4Addr::new(p[at], p[at + 1], p[at + 2], p[at + 3]);
    let mut sender_mac = [0u8; 6];
    sender_mac.copy_from_slice(&p[8..14]);
    Some(Arp {
        op: u16::from_be_bytes([p[6], p[7]]),
        sender_mac,
        sender_ip: ip(14),
        target_ip: ip(24),
    })
}

/// A probe for `target` from `mac`: an ARP request with sender IP 0.0.0.0.
pub fn probe(mac: [u8; 6], target: Ipv4Addr) -> [u8; ARP_LEN] {
    let mut p = [0u8; ARP_LEN];
    p[0..8].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    p[8..14].copy_from_slice(&mac);
    // sender IP 0.0.0.0, target MAC zero
    p[24..28].copy_from_slice(&target.octets());
    p
}

/// True when `a` shows another host holding or claiming `address`.
pub fn conflicts(a: &Arp, address: Ipv4Addr, our_mac: [u8; 6]) -> bool {
    if a.sender_mac == our_mac {
        return false;
    }
    a.sender_ip == address || (a.op == 1 && a.sender_ip.is_unspecified() && a.target_ip == address)
}

/// An ARP packet socket on one link.
#[derive(Debug)]
pub struct ArpSocket {
    fd: OwnedFd,
    ifindex: u32,
}

impl ArpSocket {
    /// Opens it on link `ifindex`.
    pub fn open(ifindex: u32) -> io::Result<Self> {
        let fd = crate::sys::packet_socket(ifindex, ETH_P_ARP, None)?;
        Ok(ArpSocket { fd, ifindex })
    }

    /// The descriptor to poll.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Broadcasts a probe for `target`.
    pub fn probe(&self, mac: [u8; 6], target: Ipv4Addr) -> io::Result<()> {
        let p = probe(mac, target);
        let mut sll = sockaddr(self.ifindex);
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let sa = &sll as *const libc::sockaddr_ll as *const libc::sockaddr;
        let len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        // SAFETY: p and sll are valid for their sizes.
        let n =
            unsafe { libc::sendto(self.fd.as_raw_fd(), p.as_ptr().cast(), p.len(), 0, sa, len) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Every ARP packet waiting (empty when none).
    pub fn recv_all(&self) -> io::Result<Vec<Arp>> {
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        while let Some(n) = crate::sys::recv_ready(self.fd.as_raw_fd(), &mut buf)? {
            out.extend(parse(&buf[..n]));
        }
        Ok(out)
    }
}

fn sockaddr(ifindex: u32) -> libc::sockaddr_ll {
    crate::sys::link_sockaddr(ifindex, ETH_P_ARP)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const OURS: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const THEIRS: [u8; 6] = [2, 0, 0, 0, 0, 9];
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 20);

    #[test]
    fn probe_round_trips_and_conflicts_are_recognised() {
        let p = parse(&probe(OURS, ADDR)).unwrap();
        assert_eq!(
            (p.op, p.sender_ip, p.target_ip),
            (1, Ipv4Addr::UNSPECIFIED, ADDR)
        );
        assert!(!conflicts(&p, ADDR, OURS), "our own probe");
        let theirs = Arp {
            sender_mac: THEIRS,
            ..p
        };
        assert!(conflicts(&theirs, ADDR, OURS), "a simultaneous probe");
        let reply = Arp {
            op: 2,
            sender_mac: THEIRS,
            sender_ip: ADDR,
            target_ip: Ipv4Addr::UNSPECIFIED,
        };
        assert!(conflicts(&reply, ADDR, OURS), "a host answering for it");
        let other = Arp {
            sender_ip: Ipv4Addr::new(10, 213, 0, 21),
            ..reply
        };
        assert!(!conflicts(&other, ADDR, OURS));
    }

    #[test]
    fn nasty_packets() {
        let good = probe(OURS, ADDR);
        for len in 0..ARP_LEN {
            assert_eq!(parse(&good[..len]), None);
        }
        let mut p = good;
        p[1] = 6; // not Ethernet
        assert_eq!(parse(&p), None);
        let mut p = good;
        p[3] = 0xdd; // not IPv4
        assert_eq!(parse(&p), None);
        let mut p = good;
        p[5] = 16; // IPv6-sized addresses
        assert_eq!(parse(&p), None);
        let mut long = good.to_vec();
        long.extend_from_slice(&[0; 18]); // Ethernet padding
        assert!(parse(&long).is_some());
    }
}
