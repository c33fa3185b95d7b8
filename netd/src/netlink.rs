//! A minimal rtnetlink client: links up, addresses and routes, and dumps.
//!
//! Written by hand over a `NETLINK_ROUTE` socket because netd needs seven
//! message kinds and nothing else; the general crates (`netlink-packet-*`)
//! would be most of the binary. Requests carry `NLM_F_ACK` and wait for the
//! kernel's answer, so a failure comes back as the errno the kernel chose.
//! Replies are read with every length checked: a short or odd message is an
//! error, never a panic.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NLMSG_HDR: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_CREATE: u16 = 0x400;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;
const IFA_CACHEINFO: u16 = 6;
const IFA_FLAGS: u16 = 8;
const IFA_F_PERMANENT: u32 = 0x80;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_TABLE: u16 = 15;

const AF_INET: u8 = libc::AF_INET as u8;
const IFF_UP: u32 = libc::IFF_UP as u32;
/// The main routing table.
pub const RT_TABLE_MAIN: u8 = 254;
/// Route installed by a DHCP client.
pub const RTPROT_DHCP: u8 = 16;
/// Route installed by an administrator (static config).
pub const RTPROT_STATIC: u8 = 4;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_HOST: u8 = 254;
const RTN_UNICAST: u8 = 1;

/// A netlink failure, naming what was being done.
#[derive(Debug, thiserror::Error)]
#[error("netlink {op}: {source}")]
pub struct NetlinkError {
    /// The operation ("add address 10.0.2.15/24 on ifindex 2", ...).
    pub op: String,
    /// The kernel's errno or the socket error.
    #[source]
    pub source: io::Error,
}

/// A network interface as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name (`eth0`, `enp1s0`).
    pub name: String,
    /// Hardware address, when it is a 6-byte one.
    pub mac: Option<[u8; 6]>,
    /// `IFF_*` flags.
    pub flags: u32,
}

impl Link {
    /// True when `IFF_LOOPBACK` is set.
    pub fn is_loopback(&self) -> bool {
        self.flags & libc::IFF_LOOPBACK as u32 != 0
    }
}

/// An IPv4 address on a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    /// Interface index.
    pub index: u32,
    /// The address.
    pub address: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// False for an address with a finite lifetime (`dynamic` in `ip
    /// addr`): one a DHCP client installed.
    pub permanent: bool,
}

/// An IPv4 route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Routing table.
    pub table: u32,
    /// Destination (0.0.0.0 for the default route).
    pub dst: Ipv4Addr,
    /// Destination prefix length (0 for the default route).
    pub dst_len: u8,
    /// Next hop, if any.
    pub gateway: Option<Ipv4Addr>,
    /// Output interface index, if any.
    pub oif: Option<u32>,
}

/// An open rtnetlink socket.
#[derive(Debug)]
pub struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

fn nla(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    buf.resize(buf.len() + (4 - len % 4) % 4, 0);
}

/// One netlink message of a received buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NlMsg<'a> {
    /// `nlmsg_type`.
    pub kind: u16,
    /// `nlmsg_flags`.
    pub flags: u16,
    /// `nlmsg_seq`.
    pub seq: u32,
    /// What follows the header.
    pub payload: &'a [u8],
}

/// Splits a buffer of netlink messages.
pub fn split_messages(mut b: &[u8]) -> io::Result<Vec<NlMsg<'_>>> {
    let mut out = Vec::new();
    while b.len() >= NLMSG_HDR {
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if len < NLMSG_HDR || len > b.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("bad netlink message length {len}"),
            ));
        }
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        let flags = u16::from_ne_bytes([b[6], b[7]]);
        let seq = u32::from_ne_bytes([b[8], b[9], b[10], b[11]]);
        out.push(NlMsg {
            kind,
            flags,
            seq,
            payload: &b[NLMSG_HDR..len],
        });
        let aligned = (len + 3) & !3;
        b = b.get(aligned..).unwrap_or(&[]);
    }
    Ok(out)
}

/// The verdict of an `NLMSG_ERROR` payload: errno 0 is success.
fn errno_result(p: &[u8]) -> io::Result<()> {
    let code = p
        .get(..4)
        .map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]]))
        .unwrap_or(-libc::EIO);
    if code == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(-code))
    }
}

/// Splits attributes (`rtattr`s) after a fixed header of `skip` bytes.
pub fn split_attrs(payload: &[u8], skip: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut b = payload.get(skip..).unwrap_or(&[]);
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        if len < 4 || len > b.len() {
            break;
        }
        out.push((u16::from_ne_bytes([b[2], b[3]]) & 0x3fff, &b[4..len]));
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
    }
    out
}

fn ip4(d: &[u8]) -> Option<Ipv4Addr> {
    match d {
        [a, b, c, e] => Some(Ipv4Addr::new(*a, *b, *c, *e)),
        _ => None,
    }
}

fn u32_of(d: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(d.get(..4)?.try_into().ok()?))
}

/// Reads a `RTM_NEWLINK` payload.
pub fn parse_link(p: &[u8]) -> Option<Link> {
    let h = p.get(..16)?;
    let index = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
    let flags = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
    let mut name = None;
    let mut mac = None;
    for (k, d) in split_attrs(p, 16) {
        match k {
            IFLA_IFNAME => {
                name = Some(
                    String::from_utf8_lossy(d)
                        .trim_end_matches('\0')
                        .to_string(),
                )
            }
            IFLA_ADDRESS => mac = <[u8; 6]>::try_from(d).ok(),
            _ => {}
        }
    }
    Some(Link {
        index,
        name: name?,
        mac,
        flags,
    })
}

/// Reads a `RTM_NEWADDR` payload (IPv4 only).
pub fn parse_address(p: &[u8]) -> Option<Address> {
    let h = p.get(..8)?;
    if h[0] != AF_INET {
        return None;
    }
    let index = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
    let attrs = split_attrs(p, 8);
    let pick = |want| {
        attrs
            .iter()
            .find(|(k, _)| *k == want)
            .and_then(|(_, d)| ip4(d))
    };
    let address = pick(IFA_LOCAL).or_else(|| pick(IFA_ADDRESS))?;
    // IFA_FLAGS (32 bits) supersedes the header's 8-bit flags when present.
    let flags = attrs
        .iter()
        .find(|(k, _)| *k == IFA_FLAGS)
        .and_then(|(_, d)| u32_of(d))
        .unwrap_or(u32::from(h[2]));
    Some(Address {
        index,
        address,
        prefix: h[1],
        permanent: flags & IFA_F_PERMANENT != 0,
    })
}

/// Reads a `RTM_NEWROUTE` payload (IPv4 only).
pub fn parse_route(p: &[u8]) -> Option<Route> {
    let h = p.get(..12)?;
    if h[0] != AF_INET {
        return None;
    }
    let mut r = Route {
        table: u32::from(h[4]),
        dst: Ipv4Addr::UNSPECIFIED,
        dst_len: h[1],
        gateway: None,
        oif: None,
    };
    for (k, d) in split_attrs(p, 12) {
        match k {
            RTA_DST => r.dst = ip4(d).unwrap_or(r.dst),
            RTA_GATEWAY => r.gateway = ip4(d),
            RTA_OIF => r.oif = u32_of(d),
            RTA_TABLE => r.table = u32_of(d).unwrap_or(r.table),
            _ => {}
        }
    }
    Some(r)
}

fn ifaddrmsg(prefix: u8, scope: u8, index: u32) -> Vec<u8> {
    let mut b = vec![AF_INET, prefix, 0, scope];
    b.extend_from_slice(&index.to_ne_bytes());
    b
}

fn rtmsg(dst_len: u8, protocol: u8, scope: u8) -> Vec<u8> {
    let mut b = vec![
        AF_INET,
        dst_len,
        0,
        0,
        RT_TABLE_MAIN,
        protocol,
        scope,
        RTN_UNICAST,
    ];
    b.extend_from_slice(&0u32.to_ne_bytes());
    b
}

fn broadcast(a: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let host = u32::MAX.checked_shr(u32::from(prefix)).unwrap_or(0);
    Ipv4Addr::from(u32::from(a) | host)
}

impl Netlink {
    /// Opens a `NETLINK_ROUTE` socket.
    pub fn open() -> Result<Self, NetlinkError> {
        Self::open_with(0, 0)
    }

    /// Opens a non-blocking socket subscribed to link changes
    /// (`RTMGRP_LINK`): read them with [`Netlink::link_events`].
    pub fn open_link_monitor() -> Result<Self, NetlinkError> {
        Self::open_with(libc::SOCK_NONBLOCK, libc::RTMGRP_LINK as u32)
    }

    fn open_with(flags: i32, groups: u32) -> Result<Self, NetlinkError> {
        let err = |source| NetlinkError {
            op: "open socket".into(),
            source,
        };
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zero is a valid value.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        sa.nl_groups = groups;
        let sa_ptr = &sa as *const libc::sockaddr_nl as *const libc::sockaddr;
        let sa_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: sa is a valid sockaddr_nl for its length.
        if unsafe { libc::bind(fd.as_raw_fd(), sa_ptr, sa_len) } < 0 {
            return Err(err(io::Error::last_os_error()));
        }
        Ok(Netlink { fd, seq: 1 })
    }

    fn send(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut b = Vec::with_capacity(NLMSG_HDR + body.len());
        b.extend_from_slice(&((NLMSG_HDR + body.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        b.extend_from_slice(&self.seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(body);
        // SAFETY: b is a valid buffer of b.len() bytes; the kernel is the peer (bound by default).
        let n = unsafe { libc::send(self.fd.as_raw_fd(), b.as_ptr().cast(), b.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: buf is valid for buf.len() bytes.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Sends a request with ACK and waits for the kernel's verdict.
    fn request(&mut self, kind: u16, flags: u16, body: &[u8]) -> io::Result<()> {
        let seq = self.send(kind, flags | NLM_F_ACK, body)?;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            for m in split_messages(&buf[..n])? {
                if m.seq != seq || m.kind != NLMSG_ERROR {
                    continue;
                }
                return errno_result(m.payload);
            }
        }
    }

    /// Sends a dump request and collects the payloads of type `want`.
    fn dump(&mut self, kind: u16, body: &[u8], want: u16) -> io::Result<Vec<Vec<u8>>> {
        let seq = self.send(kind, NLM_F_DUMP, body)?;
        let mut buf = vec![0u8; 32 * 1024];
        let mut out = Vec::new();
        loop {
            let n = self.recv(&mut buf)?;
            for m in split_messages(&buf[..n])? {
                if m.seq != seq {
                    continue;
                }
                let p = m.payload;
                match m.kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        errno_result(p)?;
                        return Ok(out);
                    }
                    t if t == want => out.push(p.to_vec()),
                    _ => {}
                }
            }
        }
    }

    /// The descriptor to poll (for a link monitor).
    pub fn fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }

    /// The link changes waiting on a monitor socket (empty when none).
    /// An overrun (ENOBUFS: the kernel dropped events) ends the batch;
    /// later events still come.
    pub fn link_events(&self) -> Result<Vec<Link>, NetlinkError> {
        let mut buf = vec![0u8; 16 * 1024];
        let mut out = Vec::new();
        loop {
            match self.recv(&mut buf) {
                Ok(n) => {
                    let msgs = split_messages(&buf[..n]).map_err(|source| NetlinkError {
                        op: "read link events".into(),
                        source,
                    })?;
                    out.extend(
                        msgs.iter()
                            .filter(|m| m.kind == RTM_NEWLINK)
                            .filter_map(|m| parse_link(m.payload)),
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(out),
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => return Ok(out),
                Err(source) => {
                    return Err(NetlinkError {
                        op: "read link events".into(),
                        source,
                    })
                }
            }
        }
    }

    /// Every link.
    pub fn links(&mut self) -> Result<Vec<Link>, NetlinkError> {
        let body = [0u8; 16];
        let raw = self
            .dump(RTM_GETLINK, &body, RTM_NEWLINK)
            .map_err(|source| NetlinkError {
                op: "list links".into(),
                source,
            })?;
        Ok(raw.iter().filter_map(|p| parse_link(p)).collect())
    }

    /// Sets a link administratively up.
    pub fn set_up(&mut self, index: u32) -> Result<(), NetlinkError> {
        let mut b = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
        b.extend_from_slice(&index.to_ne_bytes());
        b.extend_from_slice(&IFF_UP.to_ne_bytes()); // flags
        b.extend_from_slice(&IFF_UP.to_ne_bytes()); // change mask
        self.request(RTM_NEWLINK, 0, &b)
            .map_err(|source| NetlinkError {
                op: format!("set ifindex {index} up"),
                source,
            })
    }

    /// Sets a link's MTU.
    pub fn set_mtu(&mut self, index: u32, mtu: u16) -> Result<(), NetlinkError> {
        let mut b = vec![libc::AF_UNSPEC as u8, 0, 0, 0];
        b.extend_from_slice(&index.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // flags
        b.extend_from_slice(&0u32.to_ne_bytes()); // change mask: none
        nla(&mut b, IFLA_MTU, &u32::from(mtu).to_ne_bytes());
        self.request(RTM_NEWLINK, 0, &b)
            .map_err(|source| NetlinkError {
                op: format!("set mtu {mtu} on ifindex {index}"),
                source,
            })
    }

    /// Adds (or refreshes) an address; `valid_s` = lifetime in seconds, `None` = forever.
    /// With a lifetime the kernel itself removes the address when the lease
    /// runs out, even if netd is gone.
    pub fn add_address(
        &mut self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
        valid_s: Option<u32>,
    ) -> Result<(), NetlinkError> {
        let scope = if address.is_loopback() {
            RT_SCOPE_HOST
        } else {
            RT_SCOPE_UNIVERSE
        };
        let mut b = ifaddrmsg(prefix, scope, index);
        nla(&mut b, IFA_LOCAL, &address.octets());
        nla(&mut b, IFA_ADDRESS, &address.octets());
        if prefix < 31 {
            nla(&mut b, IFA_BROADCAST, &broadcast(address, prefix).octets());
        }
        let life = valid_s.unwrap_or(u32::MAX);
        let mut ci = Vec::with_capacity(16);
        for v in [life, life, 0, 0] {
            ci.extend_from_slice(&v.to_ne_bytes());
        }
        nla(&mut b, IFA_CACHEINFO, &ci);
        self.request(RTM_NEWADDR, NLM_F_CREATE | NLM_F_REPLACE, &b)
            .map_err(|source| NetlinkError {
                op: format!("add address {address}/{prefix} on ifindex {index}"),
                source,
            })
    }

    /// Removes an address; absent already is fine.
    pub fn del_address(
        &mut self,
        index: u32,
        address: Ipv4Addr,
        prefix: u8,
    ) -> Result<(), NetlinkError> {
        let mut b = ifaddrmsg(prefix, 0, index);
        nla(&mut b, IFA_LOCAL, &address.octets());
        match self.request(RTM_DELADDR, 0, &b) {
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => Ok(()),
            r => r.map_err(|source| NetlinkError {
                op: format!("remove address {address}/{prefix} from ifindex {index}"),
                source,
            }),
        }
    }

    /// Adds or replaces a route in the main table. With no gateway the
    /// route is on-link (scope link).
    pub fn add_route(
        &mut self,
        index: u32,
        dst: Ipv4Addr,
        dst_len: u8,
        gateway: Option<Ipv4Addr>,
        protocol: u8,
    ) -> Result<(), NetlinkError> {
        let scope = if gateway.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        };
        let mut b = rtmsg(dst_len, protocol, scope);
        if dst_len > 0 {
            nla(&mut b, RTA_DST, &dst.octets());
        }
        if let Some(gw) = gateway {
            nla(&mut b, RTA_GATEWAY, &gw.octets());
        }
        nla(&mut b, RTA_OIF, &index.to_ne_bytes());
        self.request(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_REPLACE, &b)
            .map_err(|source| NetlinkError {
                op: format!("add route {dst}/{dst_len} via {gateway:?} dev ifindex {index}"),
                source,
            })
    }

    /// Removes a route from the main table; absent already is fine.
    pub fn del_route(
        &mut self,
        index: u32,
        dst: Ipv4Addr,
        dst_len: u8,
    ) -> Result<(), NetlinkError> {
        let mut b = rtmsg(dst_len, 0, 0);
        if dst_len > 0 {
            nla(&mut b, RTA_DST, &dst.octets());
        }
        nla(&mut b, RTA_OIF, &index.to_ne_bytes());
        match self.request(RTM_DELROUTE, 0, &b) {
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => Ok(()),
            r => r.map_err(|source| NetlinkError {
                op: format!("remove route {dst}/{dst_len}"),
                source,
            }),
        }
    }

    /// Every IPv4 address.
    pub fn addresses(&mut self) -> Result<Vec<Address>, NetlinkError> {
        let body = ifaddrmsg(0, 0, 0);
        let raw = self
            .dump(RTM_GETADDR, &body, RTM_NEWADDR)
            .map_err(|source| NetlinkError {
                op: "list addresses".into(),
                source,
            })?;
        Ok(raw.iter().filter_map(|p| parse_address(p)).collect())
    }

    /// Every IPv4 route (all tables).
    pub fn routes(&mut self) -> Result<Vec<Route>, NetlinkError> {
        let mut body = rtmsg(0, 0, 0);
        body[4] = 0; // any table
        body[7] = 0;
        let raw = self
            .dump(RTM_GETROUTE, &body, RTM_NEWROUTE)
            .map_err(|source| NetlinkError {
                op: "list routes".into(),
                source,
            })?;
        Ok(raw.iter().filter_map(|p| parse_route(p)).collect())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn msg(kind: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&seq.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        b.extend_from_slice(payload);
        b.resize((b.len() + 3) & !3, 0);
        b
    }

    #[test]
    fn builds_and_reads_back_an_address() {
        let mut p = ifaddrmsg(24, 0, 3);
        nla(&mut p, IFA_LOCAL, &[10, 213, 1, 5]);
        let a = parse_address(&p).unwrap();
        let want = Address {
            index: 3,
            address: Ipv4Addr::new(10, 213, 1, 5),
            prefix: 24,
            permanent: false,
        };
        assert_eq!(a, want);
        p[2] = 0x80;
        assert!(parse_address(&p).unwrap().permanent);
        nla(&mut p, IFA_FLAGS, &0u32.to_ne_bytes());
        assert!(
            !parse_address(&p).unwrap().permanent,
            "IFA_FLAGS wins over the header"
        );
    }

    #[test]
    fn reads_a_route_with_table_attribute() {
        let mut p = rtmsg(0, RTPROT_DHCP, 0);
        nla(&mut p, RTA_GATEWAY, &[10, 213, 1, 1]);
        nla(&mut p, RTA_OIF, &7u32.to_ne_bytes());
        nla(&mut p, RTA_TABLE, &254u32.to_ne_bytes());
        let r = parse_route(&p).unwrap();
        assert_eq!(
            (r.dst_len, r.gateway, r.oif, r.table),
            (0, Some(Ipv4Addr::new(10, 213, 1, 1)), Some(7), 254)
        );
    }

    #[test]
    fn splits_messages_and_rejects_bad_lengths() {
        let mut b = msg(RTM_NEWADDR, 5, &[1, 2, 3]);
        b.extend(msg(NLMSG_DONE, 5, &[]));
        let m = split_messages(&b).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].payload, &[1, 2, 3]);
        let mut bad = b.clone();
        bad[0] = 200;
        assert!(split_messages(&bad).is_err());
        bad[0] = 4;
        assert!(split_messages(&bad).is_err());
    }

    #[test]
    fn nasty_payloads_do_not_panic() {
        for len in 0..40 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let _ = (
                parse_link(&junk),
                parse_address(&junk),
                parse_route(&junk),
                split_attrs(&junk, 3),
            );
            let _ = split_messages(&junk);
        }
        // An attribute claiming more than there is stops the walk.
        let mut p = ifaddrmsg(24, 0, 1);
        p.extend_from_slice(&[200, 0, 2, 0, 1, 2, 3, 4]);
        assert_eq!(parse_address(&p), None);
    }

    #[test]
    fn broadcast_addresses() {
        assert_eq!(
            broadcast(Ipv4Addr::new(10, 213, 1, 5), 24),
            Ipv4Addr::new(10, 213, 1, 255)
        );
        assert_eq!(
            broadcast(Ipv4Addr::new(10, 213, 1, 5), 0),
            Ipv4Addr::BROADCAST
        );
        assert_eq!(
            broadcast(Ipv4Addr::new(10, 213, 1, 5), 32),
            Ipv4Addr::new(10, 213, 1, 5)
        );
    }
}
