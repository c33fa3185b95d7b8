//! DHCPv4 messages (RFC 2131 / 2132): building and parsing.
//!
//! Everything a server sends us is outside input, so the parser checks every
//! length before it reads, never panics, and rejects what it cannot read
//! instead of guessing. It understands option overloading (option 52: the
//! `file`/`sname` fields carry more options) and long options split over
//! several instances (RFC 3396: instances of one code are concatenated).
//! Unknown options are kept as bytes; the client reads only the few it needs.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// The fixed BOOTP header is 236 bytes, then the 4-byte magic cookie.
pub const HEADER_LEN: usize = 236;
/// RFC 2131's magic cookie, in front of the options.
pub const MAGIC_COOKIE: [u8; 4] = [99, 130, 83, 99];
/// The smallest BOOTP message some servers (and relays) accept.
const MIN_MESSAGE_LEN: usize = 300;
/// BOOTREQUEST (client to server).
pub const OP_REQUEST: u8 = 1;
/// BOOTREPLY (server to client).
pub const OP_REPLY: u8 = 2;
/// The broadcast bit of `flags`: "answer me by broadcast, I have no address yet".
pub const FLAG_BROADCAST: u16 = 0x8000;

/// Option codes this crate reads or writes (RFC 2132 numbering).
pub mod opt {
    /// Padding.
    pub const PAD: u8 = 0;
    /// Subnet mask.
    pub const SUBNET_MASK: u8 = 1;
    /// Routers (the first is the default gateway).
    pub const ROUTER: u8 = 3;
    /// DNS servers.
    pub const DNS: u8 = 6;
    /// Host name.
    pub const HOST_NAME: u8 = 12;
    /// Domain name.
    pub const DOMAIN_NAME: u8 = 15;
    /// Interface MTU.
    pub const MTU: u8 = 26;
    /// Classless static routes (RFC 3442).
    pub const CLASSLESS_ROUTES: u8 = 121;
    /// Requested IP address.
    pub const REQUESTED_IP: u8 = 50;
    /// Lease time in seconds.
    pub const LEASE_TIME: u8 = 51;
    /// Option overload (1 = file, 2 = sname, 3 = both).
    pub const OVERLOAD: u8 = 52;
    /// DHCP message type.
    pub const MESSAGE_TYPE: u8 = 53;
    /// Server identifier.
    pub const SERVER_ID: u8 = 54;
    /// Parameter request list.
    pub const PARAMETER_LIST: u8 = 55;
    /// Message (text, usually with a NAK).
    pub const MESSAGE: u8 = 56;
    /// Maximum DHCP message size.
    pub const MAX_MESSAGE_SIZE: u8 = 57;
    /// Renewal time T1 in seconds.
    pub const RENEWAL_TIME: u8 = 58;
    /// Rebinding time T2 in seconds.
    pub const REBINDING_TIME: u8 = 59;
    /// Client identifier.
    pub const CLIENT_ID: u8 = 61;
    /// End of options.
    pub const END: u8 = 255;
}

/// The DHCP message type (option 53).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// DHCPDISCOVER
    Discover,
    /// DHCPOFFER
    Offer,
    /// DHCPREQUEST
    Request,
    /// DHCPDECLINE
    Decline,
    /// DHCPACK
    Ack,
    /// DHCPNAK
    Nak,
    /// DHCPRELEASE
    Release,
    /// DHCPINFORM
    Inform,
}

impl MessageType {
    /// The wire value.
    pub fn code(self) -> u8 {
        match self {
            MessageType::Discover => 1,
            MessageType::Offer => 2,
            MessageType::Request => 3,
            MessageType::Decline => 4,
            MessageType::Ack => 5,
            MessageType::Nak => 6,
            MessageType::Release => 7,
            MessageType::Inform => 8,
        }
    }

    /// The type for a wire value, if it is one.
    pub fn from_code(code: u8) -> Option<Self> {
        Some(match code {
            1 => MessageType::Discover,
            2 => MessageType::Offer,
            3 => MessageType::Request,
            4 => MessageType::Decline,
            5 => MessageType::Ack,
            6 => MessageType::Nak,
            7 => MessageType::Release,
            8 => MessageType::Inform,
            _ => return None,
        })
    }
}

/// Why a received datagram is not a DHCP message we can read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Shorter than the BOOTP header plus cookie.
    #[error("dhcp message too short: {len} bytes, need at least 240")]
    TooShort {
        /// The datagram's length.
        len: usize,
    },
    /// The magic cookie is wrong: BOOTP, or not DHCP at all.
    #[error("dhcp magic cookie missing (got {got:02x?})")]
    BadCookie {
        /// The four bytes found.
        got: [u8; 4],
    },
    /// The hardware address length does not fit `chaddr`.
    #[error("dhcp hlen {hlen} larger than the 16-byte chaddr field")]
    BadHlen {
        /// The value found.
        hlen: u8,
    },
    /// An option's length runs past the end of its field.
    #[error("dhcp option {code} at offset {offset} claims {len} bytes, only {left} left")]
    OptionTruncated {
        /// The option code.
        code: u8,
        /// Where it starts within its field.
        offset: usize,
        /// Its declared length.
        len: usize,
        /// Bytes actually left.
        left: usize,
    },
}

/// A DHCP message: the BOOTP fields and the options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// 1 = request, 2 = reply.
    pub op: u8,
    /// Hardware type (1 = Ethernet).
    pub htype: u8,
    /// Hardware address length (6 for Ethernet).
    pub hlen: u8,
    /// Relay hops.
    pub hops: u8,
    /// Transaction id chosen by the client.
    pub xid: u32,
    /// Seconds since the client began.
    pub secs: u16,
    /// Flags (broadcast bit).
    pub flags: u16,
    /// Client address (set when renewing/rebinding).
    pub ciaddr: Ipv4Addr,
    /// "Your" address: what the server offers or acknowledges.
    pub yiaddr: Ipv4Addr,
    /// Next server (boot).
    pub siaddr: Ipv4Addr,
    /// Relay agent address.
    pub giaddr: Ipv4Addr,
    /// Client hardware address (first `hlen` bytes meaningful).
    pub chaddr: [u8; 16],
    /// Options by code; repeated instances are concatenated (RFC 3396).
    pub options: BTreeMap<u8, Vec<u8>>,
}

fn ip_at(b: &[u8], at: usize) -> Ipv4Addr {
    match b.get(at..at + 4) {
        Some(s) => Ipv4Addr::new(s[0], s[1], s[2], s[3]),
        None => Ipv4Addr::UNSPECIFIED,
    }
}

fn ip_list(v: &[u8]) -> Vec<Ipv4Addr> {
    v.chunks_exact(4)
        .map(|c| Ipv4Addr::new(c[0], c[1], c[2], c[3]))
        .collect()
}

/// Reads an options field into `out`, concatenating repeated codes.
/// Stops at END; a field without END is accepted (servers differ).
fn parse_options(field: &[u8], out: &mut BTreeMap<u8, Vec<u8>>) -> Result<(), ParseError> {
    let mut i = 0;
    while i < field.len() {
        let code = field[i];
        match code {
            opt::PAD => {
                i += 1;
                continue;
            }
            opt::END => return Ok(()),
            _ => {}
        }
        let Some(&len) = field.get(i + 1) else {
            return Err(ParseError::OptionTruncated {
                code,
                offset: i,
                len: 1,
                left: 0,
            });
        };
        let len = usize::from(len);
        let start = i + 2;
        let Some(data) = field.get(start..start + len) else {
            return Err(ParseError::OptionTruncated {
                code,
                offset: i,
                len,
                left: field.len().saturating_sub(start),
            });
        };
        out.entry(code).or_default().extend_from_slice(data);
        i = start + len;
    }
    Ok(())
}

impl Message {
    /// A fresh client request of type `kind` for hardware address `mac`.
    pub fn request(kind: MessageType, xid: u32, mac: [u8; 6]) -> Self {
        let mut chaddr = [0u8; 16];
        chaddr[..6].copy_from_slice(&mac);
        let mut options = BTreeMap::new();
        options.insert(opt::MESSAGE_TYPE, vec![kind.code()]);
        Message {
            op: OP_REQUEST,
            htype: 1,
            hlen: 6,
            hops: 0,
            xid,
            secs: 0,
            flags: 0,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            chaddr,
            options,
        }
    }

    /// Parses a datagram.
    pub fn parse(b: &[u8]) -> Result<Self, ParseError> {
        if b.len() < HEADER_LEN + 4 {
            return Err(ParseError::TooShort { len: b.len() });
        }
        let cookie = [b[236], b[237], b[238], b[239]];
        if cookie != MAGIC_COOKIE {
            return Err(ParseError::BadCookie { got: cookie });
        }
        let hlen = b[2];
        if hlen > 16 {
            return Err(ParseError::BadHlen { hlen });
        }
        let mut chaddr = [0u8; 16];
        chaddr.copy_from_slice(&b[28..44]);
        let mut options = BTreeMap::new();
        parse_options(&b[240..], &mut options)?;
        // RFC 2131 §4.1: with overloading, `file` is read before `sname`.
        // An overload option inside an overloaded field is ignored.
        if let Some(&ov) = options.get(&opt::OVERLOAD).and_then(|v| v.first()) {
            if ov & 1 != 0 {
                parse_options(&b[108..236], &mut options)?;
            }
            if ov & 2 != 0 {
                parse_options(&b[44..108], &mut options)?;
            }
        }
        Ok(Message {
            op: b[0],
            htype: b[1],
            hlen,
            hops: b[3],
            xid: u32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            secs: u16::from_be_bytes([b[8], b[9]]),
            flags: u16::from_be_bytes([b[10], b[11]]),
            ciaddr: ip_at(b, 12),
            yiaddr: ip_at(b, 16),
            siaddr: ip_at(b, 20),
            giaddr: ip_at(b, 24),
            chaddr,
            options,
        })
    }

    /// Encodes the message; long options are split into 255-byte instances.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MIN_MESSAGE_LEN);
        b.extend_from_slice(&[self.op, self.htype, self.hlen, self.hops]);
        b.extend_from_slice(&self.xid.to_be_bytes());
        b.extend_from_slice(&self.secs.to_be_bytes());
        b.extend_from_slice(&self.flags.to_be_bytes());
        for a in [self.ciaddr, self.yiaddr, self.siaddr, self.giaddr] {
            b.extend_from_slice(&a.octets());
        }
        b.extend_from_slice(&self.chaddr);
        b.resize(HEADER_LEN, 0); // sname and file: empty
        b.extend_from_slice(&MAGIC_COOKIE);
        // The message type first: some servers look for it there.
        let first = self.options.get_key_value(&opt::MESSAGE_TYPE);
        let rest = self
            .options
            .iter()
            .filter(|(c, _)| **c != opt::MESSAGE_TYPE);
        for (&code, value) in first.into_iter().chain(rest) {
            if code == opt::PAD || code == opt::END {
                continue;
            }
            if value.is_empty() {
                b.extend_from_slice(&[code, 0]);
            }
            for chunk in value.chunks(255) {
                b.push(code);
                b.push(chunk.len() as u8); // chunks(255): always fits
                b.extend_from_slice(chunk);
            }
        }
        b.push(opt::END);
        if b.len() < MIN_MESSAGE_LEN {
            b.resize(MIN_MESSAGE_LEN, 0);
        }
        b
    }

    /// The message type, when option 53 holds a known one.
    pub fn message_type(&self) -> Option<MessageType> {
        match self.options.get(&opt::MESSAGE_TYPE)?.as_slice() {
            [c] => MessageType::from_code(*c),
            _ => None,
        }
    }

    /// The first 4 bytes of an option as an address (exactly 4 expected).
    pub fn option_ip(&self, code: u8) -> Option<Ipv4Addr> {
        match self.options.get(&code)?.as_slice() {
            [a, b, c, d] => Some(Ipv4Addr::new(*a, *b, *c, *d)),
            _ => None,
        }
    }

    /// An option holding a list of addresses (routers, DNS); whole entries only.
    pub fn option_ips(&self, code: u8) -> Vec<Ipv4Addr> {
        self.options
            .get(&code)
            .map(|v| ip_list(v))
            .unwrap_or_default()
    }

    /// A 32-bit option (times), exactly 4 bytes.
    pub fn option_u32(&self, code: u8) -> Option<u32> {
        match self.options.get(&code)?.as_slice() {
            [a, b, c, d] => Some(u32::from_be_bytes([*a, *b, *c, *d])),
            _ => None,
        }
    }

    /// A text option, lossily decoded, trailing NULs removed.
    pub fn option_text(&self, code: u8) -> Option<String> {
        let v = self.options.get(&code)?;
        Some(
            String::from_utf8_lossy(v)
                .trim_end_matches('\0')
                .to_string(),
        )
    }

    /// Sets an option.
    pub fn set(&mut self, code: u8, value: impl Into<Vec<u8>>) {
        self.options.insert(code, value.into());
    }
}

/// One route of option 121.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClasslessRoute {
    /// Destination network (host bits cleared).
    pub dst: Ipv4Addr,
    /// Its prefix length; 0 is the default route.
    pub prefix: u8,
    /// The router; 0.0.0.0 means on-link.
    pub gateway: Ipv4Addr,
}

/// Reads option 121 (RFC 3442): (width, the significant octets of the
/// destination, router) repeated. Anything malformed voids the whole
/// option (`None`), and the client falls back to option 3.
pub fn classless_routes(v: &[u8]) -> Option<Vec<ClasslessRoute>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let prefix = v[i];
        if prefix > 32 {
            return None;
        }
        let n = usize::from(prefix).div_ceil(8);
        let body = v.get(i + 1..i + 1 + n + 4)?;
        let mut d = [0u8; 4];
        d[..n].copy_from_slice(&body[..n]);
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
        let dst = Ipv4Addr::from(u32::from_be_bytes(d) & mask);
        let gateway = Ipv4Addr::new(body[n], body[n + 1], body[n + 2], body[n + 3]);
        out.push(ClasslessRoute {
            dst,
            prefix,
            gateway,
        });
        i += 1 + n + 4;
    }
    (!out.is_empty()).then_some(out)
}

/// Prefix length of a subnet mask; `None` when the mask is not contiguous.
pub fn mask_to_prefix(mask: Ipv4Addr) -> Option<u8> {
    let m = u32::from(mask);
    let ones = m.leading_ones();
    if m.checked_shl(ones).unwrap_or(0) == 0 {
        Some(ones as u8)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn reply(kind: MessageType) -> Message {
        let mut m = Message::request(kind, 0x1234_5678, [2, 0, 0, 0, 0, 1]);
        m.op = OP_REPLY;
        m.yiaddr = Ipv4Addr::new(10, 213, 0, 20);
        m.set(opt::SERVER_ID, [10, 213, 0, 1]);
        m.set(opt::SUBNET_MASK, [255, 255, 255, 0]);
        m.set(opt::ROUTER, [10, 213, 0, 1, 10, 213, 0, 2]);
        m.set(opt::LEASE_TIME, 120u32.to_be_bytes());
        m
    }

    #[test]
    fn roundtrip() {
        let m = reply(MessageType::Ack);
        let b = m.encode();
        assert!(b.len() >= 300);
        let p = Message::parse(&b).unwrap();
        assert_eq!(p, m);
        assert_eq!(p.message_type(), Some(MessageType::Ack));
        assert_eq!(p.option_ips(opt::ROUTER).len(), 2);
        assert_eq!(p.option_u32(opt::LEASE_TIME), Some(120));
    }

    #[test]
    fn long_option_split_and_concatenated() {
        let mut m = reply(MessageType::Offer);
        let long: Vec<u8> = (0..600u32).map(|i| (i % 251) as u8).collect();
        m.set(opt::DOMAIN_NAME, long.clone());
        let p = Message::parse(&m.encode()).unwrap();
        assert_eq!(p.options[&opt::DOMAIN_NAME], long);
    }

    #[test]
    fn overload_reads_file_and_sname() {
        let mut m = reply(MessageType::Offer);
        m.set(opt::OVERLOAD, [3]);
        let mut b = m.encode();
        // The DNS server in `file`, the host name in `sname`.
        b[108..114].copy_from_slice(&[opt::DNS, 4, 9, 9, 9, 9]);
        b[114] = opt::END;
        b[44..50].copy_from_slice(&[opt::HOST_NAME, 4, b'n', b'o', b'd', b'e']);
        b[50] = opt::END;
        let p = Message::parse(&b).unwrap();
        assert_eq!(p.option_ips(opt::DNS), vec![Ipv4Addr::new(9, 9, 9, 9)]);
        assert_eq!(p.option_text(opt::HOST_NAME).as_deref(), Some("node"));
        // Without the overload option the same fields are not options.
        let mut b2 = reply(MessageType::Offer).encode();
        b2[108..236].copy_from_slice(&b[108..236]);
        assert!(Message::parse(&b2).unwrap().option_ips(opt::DNS).is_empty());
    }

    #[test]
    fn nasty_inputs_are_errors_not_panics() {
        assert!(matches!(
            Message::parse(&[]),
            Err(ParseError::TooShort { len: 0 })
        ));
        assert!(matches!(
            Message::parse(&[0u8; 239]),
            Err(ParseError::TooShort { .. })
        ));
        assert!(matches!(
            Message::parse(&[0u8; 240]),
            Err(ParseError::BadCookie { .. })
        ));
        let mut b = vec![0u8; 240];
        b[236..240].copy_from_slice(&MAGIC_COOKIE);
        assert!(Message::parse(&b).is_ok(), "no options, no END: accepted");
        b[2] = 17;
        assert!(matches!(
            Message::parse(&b),
            Err(ParseError::BadHlen { hlen: 17 })
        ));
        b[2] = 6;
        // An option whose length byte is missing.
        let mut t = b.clone();
        t.push(opt::ROUTER);
        assert!(matches!(
            Message::parse(&t),
            Err(ParseError::OptionTruncated { code: 3, .. })
        ));
        // An option claiming more than there is.
        let mut t = b.clone();
        t.extend_from_slice(&[opt::ROUTER, 200, 1, 2]);
        assert!(matches!(
            Message::parse(&t),
            Err(ParseError::OptionTruncated {
                len: 200,
                left: 2,
                ..
            })
        ));
        // Overload into a field holding garbage lengths.
        let mut t = b.clone();
        t.extend_from_slice(&[opt::OVERLOAD, 1, 3, opt::END]);
        t[108] = opt::ROUTER;
        t[109] = 250;
        assert!(Message::parse(&t).is_err());
        // Wrong-sized typed options read as absent, not as garbage.
        let mut t = b.clone();
        t.extend_from_slice(&[
            opt::MESSAGE_TYPE,
            2,
            5,
            5,
            opt::LEASE_TIME,
            3,
            0,
            0,
            1,
            opt::SERVER_ID,
            0,
            opt::END,
        ]);
        let m = Message::parse(&t).unwrap();
        assert_eq!(m.message_type(), None);
        assert_eq!(m.option_u32(opt::LEASE_TIME), None);
        assert_eq!(m.option_ip(opt::SERVER_ID), None);
        // Routers with a ragged tail: whole entries only.
        let mut t = b.clone();
        t.extend_from_slice(&[opt::ROUTER, 6, 1, 2, 3, 4, 5, 6]);
        assert_eq!(Message::parse(&t).unwrap().option_ips(opt::ROUTER).len(), 1);
    }

    /// A cheap in-suite fuzz: mutate valid messages at random and parse them.
    /// The real fuzz target is `netd/fuzz` (cargo-fuzz); this keeps the
    /// parser exercised by plain `cargo test`.
    #[test]
    fn random_mutations_never_panic() {
        let seeds = [
            reply(MessageType::Ack).encode(),
            reply(MessageType::Nak).encode(),
        ];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000 {
            let mut b = seeds[i % 2].clone();
            for _ in 0..(next() % 8 + 1) {
                let at = (next() as usize) % b.len();
                b[at] = next() as u8;
            }
            if next() % 4 == 0 {
                let cut = (next() as usize) % b.len();
                b.truncate(cut);
            }
            if let Ok(m) = Message::parse(&b) {
                // Whatever parsed must re-encode and parse again.
                let again = Message::parse(&m.encode()).unwrap();
                assert_eq!(again.xid, m.xid);
                let _ = (
                    m.message_type(),
                    m.option_ips(opt::DNS),
                    m.option_text(opt::MESSAGE),
                );
            }
        }
    }

    #[test]
    fn classless_routes_per_rfc_3442() {
        // 10.99.0.0/16 via 10.213.0.1, default via 10.213.0.1, 192.168.5.128/25 on-link.
        let v = [
            16, 10, 99, 10, 213, 0, 1, 0, 10, 213, 0, 1, 25, 192, 168, 5, 128, 0, 0, 0, 0,
        ];
        let r = classless_routes(&v).unwrap();
        assert_eq!(r.len(), 3);
        assert_eq!(
            (r[0].dst, r[0].prefix, r[0].gateway),
            (
                Ipv4Addr::new(10, 99, 0, 0),
                16,
                Ipv4Addr::new(10, 213, 0, 1)
            )
        );
        assert_eq!((r[1].dst, r[1].prefix), (Ipv4Addr::UNSPECIFIED, 0));
        assert_eq!(
            (r[2].dst, r[2].prefix, r[2].gateway),
            (Ipv4Addr::new(192, 168, 5, 128), 25, Ipv4Addr::UNSPECIFIED)
        );
        // Host bits beyond the width are cleared.
        assert_eq!(
            classless_routes(&[8, 10, 1, 2, 3, 4]).unwrap()[0].dst,
            Ipv4Addr::new(10, 0, 0, 0)
        );
        assert_eq!(
            classless_routes(&[9, 10, 255, 1, 2, 3, 4]).unwrap()[0].dst,
            Ipv4Addr::new(10, 128, 0, 0)
        );
        // Malformed: void.
        assert_eq!(classless_routes(&[]), None);
        assert_eq!(classless_routes(&[33, 1, 2, 3, 4, 5, 1, 2, 3, 4]), None);
        assert_eq!(classless_routes(&[24, 10, 0, 0, 1, 2, 3]), None);
        assert_eq!(classless_routes(&[0, 1, 2, 3, 4, 24]), None);
        for len in 0..40 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 53 + 7) as u8).collect();
            let _ = classless_routes(&junk);
        }
    }

    #[test]
    fn masks() {
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 0)), Some(24));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 255, 255, 255)), Some(32));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(0, 0, 0, 0)), Some(0));
        assert_eq!(mask_to_prefix(Ipv4Addr::new(255, 0, 255, 0)), None);
    }
}
