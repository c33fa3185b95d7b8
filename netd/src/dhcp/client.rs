//! The DHCPv4 client state machine (RFC 2131 §4.4), with no I/O.
//!
//! The machine is fed the time, the timer firing and the messages received,
//! and answers with [`Action`]s (send this, configure that lease, remove
//! it). The daemon does the I/O; the unit tests drive every transition —
//! NAK, expiry, rebinding — with a fake clock in milliseconds, which no
//! real server could do inside a test's time budget.
//!
//! States: `Selecting` (DISCOVER sent, waiting for an OFFER) → `Requesting`
//! (REQUEST broadcast, waiting for ACK/NAK) → `Bound` → at T1 `Renewing`
//! (REQUEST unicast to the server, ciaddr set) → at T2 `Rebinding` (REQUEST
//! broadcast) → at lease end the address is removed and discovery starts
//! again. A NAK anywhere drops the lease and restarts discovery.
//!
//! Every OFFER and ACK passes [`check`] before it is used: a hostile
//! offer is ignored, a hostile ACK sends the client back to discovery
//! (requesting) or is treated as no answer (renewing, rebinding,
//! rebooting), and while requesting or renewing only the chosen server's
//! ACK or NAK is heard.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

pub use super::check::MTU_RANGE;
use super::check::{self, Offered};
use super::packet::{opt, ClasslessRoute, Message, MessageType, FLAG_BROADCAST, OP_REPLY};

/// A lease the server acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// Our address.
    pub address: Ipv4Addr,
    /// Prefix length, from the subnet mask (classful when the server sent none).
    pub prefix: u8,
    /// Routers (option 3).
    pub routers: Vec<Ipv4Addr>,
    /// The default gateway: option 121's default entry when that option is
    /// present (RFC 3442: option 3 is then ignored), else the first router.
    pub gateway: Option<Ipv4Addr>,
    /// Option 121's other routes.
    pub routes: Vec<ClasslessRoute>,
    /// DNS servers.
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (search), if any.
    pub domain: Option<String>,
    /// Link MTU (option 26), only when within [`MTU_RANGE`].
    pub mtu: Option<u16>,
    /// The server that granted it (option 54).
    pub server: Ipv4Addr,
    /// Lease duration; `None` = infinite.
    pub duration: Option<Duration>,
    /// Renewal time T1 after `start`.
    pub t1: Duration,
    /// Rebinding time T2 after `start`.
    pub t2: Duration,
    /// When the lease began: the time the REQUEST was sent (RFC 2131 §4.4.1).
    pub start: Instant,
}

impl Lease {
    fn at(&self, d: Duration) -> Instant {
        self.start + d
    }

    /// When the lease runs out, if it does.
    pub fn expiry(&self) -> Option<Instant> {
        self.duration.map(|d| self.at(d))
    }
}

/// Where a message goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255:67 out of the link.
    Broadcast,
    /// The server's address, port 67 (renewal).
    Unicast(Ipv4Addr),
}

/// What the daemon must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send a message.
    Send(Message, Destination),
    /// Install (or refresh) this lease: address, default route, DNS.
    Configure(Lease),
    /// Remove this lease's address and route (expired, NAKed or released).
    Deconfigure(Lease),
    /// Send an ARP probe for this address (RFC 5227: "who has it?", from
    /// 0.0.0.0) and report any answer through [`Client::on_conflict`].
    Probe(Ipv4Addr),
}

#[derive(Debug, Clone)]
enum State {
    /// Not started.
    Init,
    /// DISCOVER sent; `attempt` counts retransmissions.
    Selecting { attempt: u32, next: Instant },
    /// REQUEST broadcast for an offer.
    Requesting {
        address: Ipv4Addr,
        server: Ipv4Addr,
        attempt: u32,
        next: Instant,
        sent: Instant,
    },
    /// A lease is held.
    Bound { lease: Lease },
    /// Unicast REQUEST to the lease's server.
    Renewing {
        lease: Lease,
        next: Instant,
        sent: Instant,
    },
    /// Broadcast REQUEST to any server.
    Rebinding {
        lease: Lease,
        next: Instant,
        sent: Instant,
    },
    /// Carrier came back while holding a lease: verify it (RFC 2131 §3.2,
    /// INIT-REBOOT) with a broadcast REQUEST for the same address.
    Rebooting {
        lease: Lease,
        attempt: u32,
        next: Instant,
        sent: Instant,
    },
    /// Acknowledged, not yet used: ARP-probing the address (RFC 2131
    /// §4.4.1, RFC 5227) before configuring it.
    Checking {
        lease: Lease,
        probes: u32,
        next: Instant,
    },
    /// After a NAK: wait a little before discovering again.
    Backoff { until: Instant },
    /// Released: the daemon is stopping.
    Stopped,
}

/// Retransmissions of a REQUEST in `Requesting` before starting over.
const MAX_REQUEST_ATTEMPTS: u32 = 4;
/// REQUESTs sent to verify a lease after the carrier came back; with no
/// answer the lease is kept (RFC 2131 §3.2 allows it) until T1.
const MAX_REBOOT_ATTEMPTS: u32 = 3;
/// RFC 2131 §4.4.5: while renewing or rebinding, retransmit no faster than this.
const MIN_RENEW_RETRY: Duration = Duration::from_secs(60);
/// ARP probes sent for a new address, and the pause after each: a
/// conflict on the LAN answers within milliseconds, so 2 × 100 ms is
/// enough — the same 200 ms window NetworkManager uses by default for its
/// duplicate-address check (RFC 5227's 1–2 s spacing is for slow links).
/// It sits on the boot's critical path: every 100 ms here is 100 ms
/// before the node is ready.
const PROBES: u32 = 2;
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// RFC 2131 §3.1: after a DHCPDECLINE wait at least 10 s before starting over.
const DECLINE_BACKOFF: Duration = Duration::from_secs(10);
/// Pause after a NAK before discovering again.
const NAK_BACKOFF: Duration = Duration::from_secs(2);
/// Pause after refusing an ACK while requesting (see [`check`]): the
/// server granted nonsense, and asking it again at once would get the same.
const REFUSED_BACKOFF: Duration = Duration::from_secs(10);

/// The client.
#[derive(Debug)]
pub struct Client {
    mac: [u8; 6],
    hostname: Option<String>,
    xid: u32,
    rng: u64,
    state: State,
    started: Option<Instant>,
    hint: Option<Ipv4Addr>,
    broadcast: bool,
    arp_check: bool,
    /// Whether option 121 is asked for and used.
    classless: bool,
    /// Whether the "option 121 ignored" line was logged already.
    told_classless_off: bool,
}

impl Client {
    /// A client for the link with hardware address `mac`; `seed` feeds
    /// transaction ids and retransmission jitter.
    pub fn new(mac: [u8; 6], hostname: Option<String>, seed: u64) -> Self {
        Client {
            mac,
            hostname,
            xid: 0,
            rng: seed | 1,
            state: State::Init,
            started: None,
            hint: None,
            broadcast: true,
            arp_check: true,
            classless: false,
            told_classless_off: false,
        }
    }

    fn random(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// RFC 2131 §4.1: 4 s, 8 s, 16 s ... 64 s, each randomized by ±1 s.
    fn backoff(&mut self, attempt: u32) -> Duration {
        let base = 4_000u64 << attempt.min(4);
        let jitter = self.random() % 2_001;
        Duration::from_millis(base + jitter - 1_000)
    }

    /// The lease held now, if any (bound, renewing or rebinding).
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Bound { lease }
            | State::Renewing { lease, .. }
            | State::Rebinding { lease, .. }
            | State::Rebooting { lease, .. } => Some(lease),
            _ => None,
        }
    }

    /// A short name of the state, for logs and STATUS lines.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Init => "init",
            State::Selecting { .. } => "selecting",
            State::Requesting { .. } => "requesting",
            State::Bound { .. } => "bound",
            State::Renewing { .. } => "renewing",
            State::Rebinding { .. } => "rebinding",
            State::Rebooting { .. } => "rebooting",
            State::Checking { .. } => "checking",
            State::Backoff { .. } => "backoff",
            State::Stopped => "stopped",
        }
    }

    /// When [`Client::on_timer`] must be called next.
    pub fn deadline(&self) -> Option<Instant> {
        match &self.state {
            State::Init | State::Stopped => None,
            State::Selecting { next, .. } | State::Requesting { next, .. } => Some(*next),
            State::Bound { lease } => lease.duration.map(|_| lease.at(lease.t1)),
            State::Renewing { next, .. } | State::Rebinding { next, .. } => Some(*next),
            State::Rebooting { next, .. } => Some(*next),
            State::Checking { next, .. } => Some(*next),
            State::Backoff { until } => Some(*until),
        }
    }

    fn base(&self, kind: MessageType) -> Message {
        let mut m = Message::request(kind, self.xid, self.mac);
        let mut id = vec![1u8];
        id.extend_from_slice(&self.mac);
        m.set(opt::CLIENT_ID, id);
        // RFC 2131 table 5: RELEASE and DECLINE carry no parameter list,
        // size or host name.
        if !matches!(kind, MessageType::Release | MessageType::Decline) {
            m.set(opt::MAX_MESSAGE_SIZE, 1500u16.to_be_bytes());
            let mut wanted = vec![
                opt::SUBNET_MASK,
                opt::ROUTER,
                opt::DNS,
                opt::DOMAIN_NAME,
                opt::MTU,
                opt::LEASE_TIME,
                opt::RENEWAL_TIME,
                opt::REBINDING_TIME,
            ];
            if self.classless {
                wanted.push(opt::CLASSLESS_ROUTES);
            }
            m.set(opt::PARAMETER_LIST, wanted);
            if let Some(h) = &self.hostname {
                m.set(opt::HOST_NAME, h.as_bytes());
            }
        }
        m
    }

    fn secs(&self, now: Instant) -> u16 {
        self.started
            .map(|s| {
                now.saturating_duration_since(s)
                    .as_secs()
                    .min(u64::from(u16::MAX)) as u16
            })
            .unwrap_or(0)
    }

    fn discover(&mut self, now: Instant) -> Vec<Action> {
        self.xid = self.random() as u32;
        self.started = Some(now);
        let next = now + self.backoff(0);
        self.state = State::Selecting { attempt: 0, next };
        vec![self.discover_msg(now)]
    }

    fn discover_msg(&self, now: Instant) -> Action {
        let mut m = self.base(MessageType::Discover);
        m.flags = self.flags();
        if let Some(h) = self.hint {
            m.set(opt::REQUESTED_IP, h.octets());
        }
        m.secs = self.secs(now);
        Action::Send(m, Destination::Broadcast)
    }

    fn request_selecting(&self, now: Instant, address: Ipv4Addr, server: Ipv4Addr) -> Action {
        let mut m = self.base(MessageType::Request);
        m.flags = self.flags();
        m.secs = self.secs(now);
        m.set(opt::REQUESTED_IP, address.octets());
        m.set(opt::SERVER_ID, server.octets());
        Action::Send(m, Destination::Broadcast)
    }

    fn request_renew(&self, now: Instant, lease: &Lease, to: Destination) -> Action {
        let mut m = self.base(MessageType::Request);
        m.ciaddr = lease.address;
        m.secs = self.secs(now);
        Action::Send(m, to)
    }

    /// INIT-REBOOT's REQUEST: broadcast, requested-ip set, no ciaddr, no server id.
    fn request_reboot(&self, now: Instant, lease: &Lease) -> Action {
        let mut m = self.base(MessageType::Request);
        m.flags = self.flags();
        m.secs = self.secs(now);
        m.set(opt::REQUESTED_IP, lease.address.octets());
        Action::Send(m, Destination::Broadcast)
    }

    /// The link's carrier came back after a loss: the machine may have
    /// been moved to another network. A held lease is verified at once
    /// (INIT-REBOOT); a client still looking for one starts over now
    /// instead of waiting out its backoff.
    pub fn on_carrier_up(&mut self, now: Instant) -> Vec<Action> {
        match self.state.clone() {
            State::Init | State::Stopped => Vec::new(),
            State::Selecting { .. }
            | State::Requesting { .. }
            | State::Backoff { .. }
            | State::Checking { .. } => self.discover(now),
            State::Bound { lease }
            | State::Renewing { lease, .. }
            | State::Rebinding { lease, .. }
            | State::Rebooting { lease, .. } => {
                if lease.expiry().is_some_and(|e| now >= e) {
                    return self.renew_or_rebind(now, lease);
                }
                tracing::info!(address = %lease.address, "carrier back: verifying the lease");
                self.xid = self.random() as u32;
                self.started = Some(now);
                let next = now + self.backoff(0);
                let action = self.request_reboot(now, &lease);
                self.state = State::Rebooting {
                    lease,
                    attempt: 0,
                    next,
                    sent: now,
                };
                vec![action]
            }
        }
    }

    /// Whether to set the broadcast flag (default on): "answer by
    /// broadcast, I have no address yet". Off, servers unicast their
    /// replies to the offered address, which netd receives through its
    /// packet socket; needed where broadcasts are filtered out.
    pub fn request_broadcast(&mut self, on: bool) {
        self.broadcast = on;
    }

    /// Whether to ARP-probe a new address before using it (default on).
    pub fn arp_check(&mut self, on: bool) {
        self.arp_check = on;
    }

    /// Whether to ask for and use classless static routes (option 121,
    /// default off). Off, option 121 is not in the parameter request list
    /// and a server sending it anyway is ignored (logged once). On, its
    /// routes still pass [`check::check_route`].
    pub fn classless_routes(&mut self, on: bool) {
        self.classless = on;
    }

    /// The address being probed, if the client is checking one.
    pub fn probing(&self) -> Option<Ipv4Addr> {
        match &self.state {
            State::Checking { lease, .. } => Some(lease.address),
            _ => None,
        }
    }

    /// Another host answered for (or probed) `address` while we checked it:
    /// decline it (DHCPDECLINE) and start over after 10 s.
    pub fn on_conflict(&mut self, now: Instant, address: Ipv4Addr) -> Vec<Action> {
        let State::Checking { lease, .. } = self.state.clone() else {
            return Vec::new();
        };
        if lease.address != address {
            return Vec::new();
        }
        tracing::warn!(%address, server = %lease.server, "address in use on the link; declining it");
        let mut m = self.base(MessageType::Decline);
        m.set(opt::REQUESTED_IP, address.octets());
        m.set(opt::SERVER_ID, lease.server.octets());
        self.hint = None;
        self.state = State::Backoff {
            until: now + DECLINE_BACKOFF,
        };
        vec![Action::Send(m, Destination::Broadcast)]
    }

    fn flags(&self) -> u16 {
        if self.broadcast {
            FLAG_BROADCAST
        } else {
            0
        }
    }

    /// Asks for `address` in DISCOVERs (option 50, RFC 2131 §4.4.1): the
    /// address this link held before netd restarted, so a restart keeps it
    /// when the server agrees.
    pub fn prefer(&mut self, address: Ipv4Addr) {
        self.hint = Some(address);
    }

    /// Starts discovery.
    pub fn start(&mut self, now: Instant) -> Vec<Action> {
        self.discover(now)
    }

    /// The deadline passed: retransmit, move on to renewing/rebinding, or expire.
    pub fn on_timer(&mut self, now: Instant) -> Vec<Action> {
        match self.state.clone() {
            State::Init | State::Stopped => Vec::new(),
            State::Checking {
                lease,
                probes,
                next,
            } => {
                if now < next {
                    return Vec::new();
                }
                if probes < PROBES {
                    let address = lease.address;
                    self.state = State::Checking {
                        lease,
                        probes: probes + 1,
                        next: now + PROBE_INTERVAL,
                    };
                    return vec![Action::Probe(address)];
                }
                tracing::debug!(address = %lease.address, "no other host answers for the address");
                self.state = State::Bound {
                    lease: lease.clone(),
                };
                vec![Action::Configure(lease)]
            }
            State::Backoff { until } => {
                if now < until {
                    return Vec::new();
                }
                self.discover(now)
            }
            State::Selecting { attempt, next } => {
                if now < next {
                    return Vec::new();
                }
                let next = now + self.backoff(attempt + 1);
                self.state = State::Selecting {
                    attempt: attempt + 1,
                    next,
                };
                vec![self.discover_msg(now)]
            }
            State::Requesting {
                address,
                server,
                attempt,
                next,
                sent,
            } => {
                if now < next {
                    return Vec::new();
                }
                if attempt + 1 >= MAX_REQUEST_ATTEMPTS {
                    tracing::warn!(%address, %server, "no answer to our request; discovering again");
                    return self.discover(now);
                }
                let next = now + self.backoff(attempt + 1);
                self.state = State::Requesting {
                    address,
                    server,
                    attempt: attempt + 1,
                    next,
                    sent,
                };
                vec![self.request_selecting(now, address, server)]
            }
            State::Bound { lease } => {
                if lease.duration.is_none() || now < lease.at(lease.t1) {
                    return Vec::new();
                }
                self.renew_or_rebind(now, lease)
            }
            State::Renewing { lease, next, .. } | State::Rebinding { lease, next, .. } => {
                if now < next {
                    return Vec::new();
                }
                self.renew_or_rebind(now, lease)
            }
            State::Rebooting {
                lease,
                attempt,
                next,
                sent,
            } => {
                if now < next {
                    return Vec::new();
                }
                let due = lease.duration.is_some() && now >= lease.at(lease.t1);
                if attempt + 1 >= MAX_REBOOT_ATTEMPTS || due {
                    tracing::info!(address = %lease.address, "no answer verifying the lease; keeping it");
                    self.state = State::Bound {
                        lease: lease.clone(),
                    };
                    return if due {
                        self.renew_or_rebind(now, lease)
                    } else {
                        Vec::new()
                    };
                }
                let next = now + self.backoff(attempt + 1);
                let action = self.request_reboot(now, &lease);
                self.state = State::Rebooting {
                    lease,
                    attempt: attempt + 1,
                    next,
                    sent,
                };
                vec![action]
            }
        }
    }

    /// Chooses by time: renew before T2, rebind before expiry, else expire.
    fn renew_or_rebind(&mut self, now: Instant, lease: Lease) -> Vec<Action> {
        let (t2, end) = (lease.at(lease.t2), lease.expiry());
        if end.is_some_and(|e| now >= e) {
            tracing::warn!(address = %lease.address, "lease expired; removing the address and discovering again");
            let mut out = vec![Action::Deconfigure(lease)];
            out.extend(self.discover(now));
            return out;
        }
        // A new transaction per renewal attempt series keeps late answers apart.
        if !matches!(self.state, State::Renewing { .. } | State::Rebinding { .. }) {
            self.xid = self.random() as u32;
            self.started = Some(now);
        }
        let renewing = now < t2;
        let limit = if renewing { t2 } else { end.unwrap_or(t2) };
        // RFC 2131 §4.4.5: wait half the remaining time, at least 60 s, not past the limit.
        let half = limit.saturating_duration_since(now) / 2;
        let next = (now + half.max(MIN_RENEW_RETRY)).min(limit);
        let sent = match &self.state {
            State::Renewing { sent, .. } if renewing => *sent,
            State::Rebinding { sent, .. } if !renewing => *sent,
            _ => now,
        };
        let action = if renewing {
            tracing::info!(address = %lease.address, server = %lease.server, "renewing lease");
            self.request_renew(now, &lease, Destination::Unicast(lease.server))
        } else {
            tracing::info!(address = %lease.address, "rebinding lease (server silent past T2)");
            self.request_renew(now, &lease, Destination::Broadcast)
        };
        self.state = if renewing {
            State::Renewing { lease, next, sent }
        } else {
            State::Rebinding { lease, next, sent }
        };
        vec![action]
    }

    /// A datagram arrived on port 68.
    pub fn on_message(&mut self, now: Instant, m: &Message) -> Vec<Action> {
        if m.op != OP_REPLY || m.xid != self.xid || m.chaddr[..6] != self.mac {
            return Vec::new();
        }
        let Some(kind) = m.message_type() else {
            return Vec::new();
        };
        let from = m.option_ip(opt::SERVER_ID);
        match (self.state.clone(), kind) {
            (State::Selecting { .. }, MessageType::Offer) => {
                match check::check(m, self.classless) {
                    Ok(o) => {
                        tracing::info!(address = %o.address, server = %o.server, "offer received; requesting it");
                        for d in &o.dropped {
                            tracing::debug!(reason = %d, "offer: a value left out");
                        }
                        let next = now + self.backoff(0);
                        self.state = State::Requesting {
                            address: o.address,
                            server: o.server,
                            attempt: 0,
                            next,
                            sent: now,
                        };
                        vec![self.request_selecting(now, o.address, o.server)]
                    }
                    Err(why) => {
                        tracing::warn!(address = %m.yiaddr, server = %show(from), reason = %why, "offer refused; still selecting");
                        Vec::new()
                    }
                }
            }
            // RFC 2131 §4.4.1/§4.4.5: the answer to a REQUEST naming a
            // server (selecting) or unicast to it (renewing) comes from
            // that server; another one's ACK or NAK is not ours to take.
            (
                State::Requesting { server, .. }
                | State::Renewing {
                    lease: Lease { server, .. },
                    ..
                },
                MessageType::Ack | MessageType::Nak,
            ) if from != Some(server) => {
                tracing::warn!(
                    expected = %server, from = %show(from), kind = ?kind, state = self.state_name(),
                    "reply from another server ignored"
                );
                Vec::new()
            }
            (State::Requesting { sent, .. }, MessageType::Ack) => {
                let o = match check::check(m, self.classless) {
                    Ok(o) => o,
                    Err(why) => {
                        tracing::warn!(
                            address = %m.yiaddr, reason = %why,
                            "ack refused; discovering again after {REFUSED_BACKOFF:?}"
                        );
                        self.hint = None;
                        self.state = State::Backoff {
                            until: now + REFUSED_BACKOFF,
                        };
                        return Vec::new();
                    }
                };
                let out = self.bind(m, o, sent, None);
                match (self.arp_check, out.as_slice()) {
                    (true, [Action::Configure(lease)]) => {
                        let address = lease.address;
                        self.state = State::Checking {
                            lease: lease.clone(),
                            probes: 1,
                            next: now + PROBE_INTERVAL,
                        };
                        vec![Action::Probe(address)]
                    }
                    _ => out,
                }
            }
            (
                State::Renewing { lease, sent, .. }
                | State::Rebinding { lease, sent, .. }
                | State::Rebooting { lease, sent, .. },
                MessageType::Ack,
            ) => match check::check(m, self.classless) {
                Ok(o) => self.bind(m, o, sent, Some(lease)),
                Err(why) => {
                    // Like no answer at all: the lease held is still
                    // good, and the retries and timers go on.
                    tracing::warn!(
                        address = %m.yiaddr, reason = %why, state = self.state_name(),
                        "ack refused; keeping the current lease"
                    );
                    Vec::new()
                }
            },
            (State::Requesting { .. }, MessageType::Nak) => self.nak(now, m, None),
            (State::Renewing { lease, .. }, MessageType::Nak)
            | (State::Rebinding { lease, .. }, MessageType::Nak)
            | (State::Rebooting { lease, .. }, MessageType::Nak) => self.nak(now, m, Some(lease)),
            _ => Vec::new(),
        }
    }

    fn nak(&mut self, now: Instant, m: &Message, lease: Option<Lease>) -> Vec<Action> {
        let why = m.option_text(opt::MESSAGE).unwrap_or_default();
        tracing::warn!(reason = %why, "server refused (NAK); starting over");
        self.hint = None;
        self.state = State::Backoff {
            until: now + NAK_BACKOFF,
        };
        lease.map(Action::Deconfigure).into_iter().collect()
    }

    /// Takes an ACK whose values passed [`check::check`].
    fn bind(&mut self, m: &Message, o: Offered, sent: Instant, old: Option<Lease>) -> Vec<Action> {
        for d in &o.dropped {
            tracing::warn!(server = %o.server, reason = %d, "refused a value from the server; using the rest of the lease");
        }
        if o.classless_ignored && !std::mem::replace(&mut self.told_classless_off, true) {
            tracing::info!(
                server = %o.server,
                "the server offers classless static routes (option 121); ignored, they are off (fluxnode.net.classless_routes=1 turns them on)"
            );
        }
        let duration = match m.option_u32(opt::LEASE_TIME) {
            Some(u32::MAX) => None,
            Some(s) => Some(Duration::from_secs(u64::from(s.max(1)))),
            None => {
                tracing::warn!("ack without a lease time; assuming one hour");
                Some(Duration::from_secs(3600))
            }
        };
        let (t1, t2) = timers(
            duration,
            m.option_u32(opt::RENEWAL_TIME),
            m.option_u32(opt::REBINDING_TIME),
        );
        let lease = Lease {
            address: o.address,
            prefix: o.prefix,
            routers: o.routers,
            gateway: o.gateway,
            routes: o.routes,
            dns: o.dns,
            domain: m.option_text(opt::DOMAIN_NAME).filter(|d| !d.is_empty()),
            mtu: o.mtu,
            server: o.server,
            duration,
            t1,
            t2,
            start: sent,
        };
        tracing::info!(
            address = %lease.address, prefix = lease.prefix, server = %lease.server,
            lease_s = duration.map(|d| d.as_secs()).unwrap_or(0), t1_s = t1.as_secs(), t2_s = t2.as_secs(),
            "lease acknowledged"
        );
        let mut out = Vec::new();
        if let Some(old) = old {
            if old.address != lease.address || old.prefix != lease.prefix {
                out.push(Action::Deconfigure(old));
            }
        }
        out.push(Action::Configure(lease.clone()));
        // Asked for again in a later DISCOVER (after expiry, say).
        self.hint = Some(lease.address);
        self.state = State::Bound { lease };
        out
    }

    /// The daemon stops: release the lease (RFC 2131 §4.4.6) and forget it.
    pub fn release(&mut self) -> Vec<Action> {
        let out = match self.lease().cloned() {
            Some(lease) => {
                let mut m = self.base(MessageType::Release);
                m.xid = self.random() as u32;
                m.ciaddr = lease.address;
                m.set(opt::SERVER_ID, lease.server.octets());
                vec![
                    Action::Send(m, Destination::Unicast(lease.server)),
                    Action::Deconfigure(lease),
                ]
            }
            None => Vec::new(),
        };
        self.state = State::Stopped;
        out
    }
}

/// T1 and T2 from the options, sane whatever the server sent:
/// defaults 0.5 and 0.875 of the lease, and T1 ≤ T2 ≤ lease.
fn timers(lease: Option<Duration>, t1: Option<u32>, t2: Option<u32>) -> (Duration, Duration) {
    let Some(lease) = lease else {
        return (Duration::MAX, Duration::MAX);
    };
    let secs = |v: u32| Duration::from_secs(u64::from(v));
    let mut t2 = t2
        .map(secs)
        .filter(|t| *t <= lease)
        .unwrap_or(lease * 7 / 8);
    let t1 = t1
        .map(secs)
        .filter(|t| *t <= t2)
        .unwrap_or(lease / 2)
        .min(t2);
    if t2 < t1 {
        t2 = t1;
    }
    (t1, t2)
}

/// An optional address for a log line.
fn show(a: Option<Ipv4Addr>) -> String {
    a.map_or_else(|| "none".into(), |a| a.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 7];
    const SERVER: Ipv4Addr = Ipv4Addr::new(10, 213, 9, 1);
    const ADDR: Ipv4Addr = Ipv4Addr::new(10, 213, 9, 20);

    /// A client without the ARP check, so an ACK configures at once.
    fn plain(seed: u64) -> Client {
        let mut c = Client::new(MAC, Some("node".into()), seed);
        c.arp_check(false);
        c
    }

    /// A fake server answer to the client's last message.
    fn answer(req: &Message, kind: MessageType, lease_s: u32, t1: Option<u32>) -> Message {
        let mut m = Message::request(kind, req.xid, MAC);
        m.op = OP_REPLY;
        if kind != MessageType::Nak {
            m.yiaddr = ADDR;
            m.set(opt::SUBNET_MASK, [255, 255, 255, 0]);
            m.set(opt::ROUTER, SERVER.octets());
            m.set(opt::DNS, SERVER.octets());
            m.set(opt::LEASE_TIME, lease_s.to_be_bytes());
            if let Some(t1) = t1 {
                m.set(opt::RENEWAL_TIME, t1.to_be_bytes());
            }
        }
        m.set(opt::SERVER_ID, SERVER.octets());
        m
    }

    fn sent(actions: &[Action]) -> (Message, Destination) {
        actions
            .iter()
            .find_map(|a| match a {
                Action::Send(m, d) => Some((m.clone(), *d)),
                _ => None,
            })
            .expect("a message was sent")
    }

    fn bound(c: &mut Client, t0: Instant, lease_s: u32, t1: Option<u32>) -> Lease {
        let (disc, d) = sent(&c.start(t0));
        assert_eq!(d, Destination::Broadcast);
        assert_eq!(disc.message_type(), Some(MessageType::Discover));
        assert_eq!(disc.flags, FLAG_BROADCAST);
        let (req, d) = sent(&c.on_message(t0, &answer(&disc, MessageType::Offer, lease_s, t1)));
        assert_eq!(d, Destination::Broadcast);
        assert_eq!(req.message_type(), Some(MessageType::Request));
        assert_eq!(req.option_ip(opt::REQUESTED_IP), Some(ADDR));
        assert_eq!(req.option_ip(opt::SERVER_ID), Some(SERVER));
        let acts = c.on_message(t0, &answer(&req, MessageType::Ack, lease_s, t1));
        match acts.as_slice() {
            [Action::Configure(l)] => l.clone(),
            other => panic!("expected one configure, got {other:?}"),
        }
    }

    #[test]
    fn discover_offer_request_ack() {
        let t0 = Instant::now();
        let mut c = plain(42);
        let l = bound(&mut c, t0, 120, None);
        assert_eq!(
            (l.address, l.prefix, l.routers.clone(), l.dns.clone()),
            (ADDR, 24, vec![SERVER], vec![SERVER])
        );
        assert_eq!(
            (l.t1, l.t2),
            (Duration::from_secs(60), Duration::from_secs(105))
        );
        assert_eq!(c.state_name(), "bound");
        assert_eq!(c.deadline(), Some(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn mtu_is_taken_only_when_sane() {
        for (sent_mtu, want) in [
            (&[5u8, 0x78][..], Some(1400)),
            (&[0, 68][..], None),
            (&[5, 0x78, 0][..], None),
        ] {
            let t0 = Instant::now();
            let mut c = plain(37);
            let (disc, _) = sent(&c.start(t0));
            let (req, _) = sent(&c.on_message(t0, &answer(&disc, MessageType::Offer, 60, None)));
            let mut ack = answer(&req, MessageType::Ack, 60, None);
            ack.set(opt::MTU, sent_mtu);
            match c.on_message(t0, &ack).as_slice() {
                [Action::Configure(l)] => assert_eq!(l.mtu, want, "{sent_mtu:?}"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_preferred_address_is_asked_for_in_discover() {
        let mut c = plain(41);
        c.prefer(ADDR);
        let (m, _) = sent(&c.start(Instant::now()));
        assert_eq!(m.option_ip(opt::REQUESTED_IP), Some(ADDR));
        let mut c = plain(41);
        let (m, _) = sent(&c.start(Instant::now()));
        assert_eq!(m.option_ip(opt::REQUESTED_IP), None);
    }

    #[test]
    fn classless_routes_override_the_router_option() {
        let t0 = Instant::now();
        let mut c = plain(43);
        c.classless_routes(true);
        let (disc, _) = sent(&c.start(t0));
        let (req, _) = sent(&c.on_message(t0, &answer(&disc, MessageType::Offer, 60, None)));
        let mut ack = answer(&req, MessageType::Ack, 60, None);
        ack.set(
            opt::CLASSLESS_ROUTES,
            [16, 10, 99, 10, 213, 9, 2, 0, 10, 213, 9, 3],
        );
        match c.on_message(t0, &ack).as_slice() {
            [Action::Configure(l)] => {
                assert_eq!(
                    l.gateway,
                    Some(Ipv4Addr::new(10, 213, 9, 3)),
                    "option 3 must be ignored"
                );
                assert_eq!(l.routes.len(), 1);
                assert_eq!(
                    (l.routes[0].dst, l.routes[0].prefix),
                    (Ipv4Addr::new(10, 99, 0, 0), 16)
                );
            }
            other => panic!("{other:?}"),
        }
        // A malformed option 121 is void: option 3 applies.
        let mut c = plain(43);
        c.classless_routes(true);
        let (disc, _) = sent(&c.start(t0));
        let (req, _) = sent(&c.on_message(t0, &answer(&disc, MessageType::Offer, 60, None)));
        let mut ack = answer(&req, MessageType::Ack, 60, None);
        ack.set(opt::CLASSLESS_ROUTES, [40, 1]);
        match c.on_message(t0, &ack).as_slice() {
            [Action::Configure(l)] => assert_eq!((l.gateway, l.routes.len()), (Some(SERVER), 0)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_new_address_is_probed_then_used() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, None, 47);
        let (disc, _) = sent(&c.start(t0));
        let (req, _) = sent(&c.on_message(t0, &answer(&disc, MessageType::Offer, 60, None)));
        assert_eq!(
            c.on_message(t0, &answer(&req, MessageType::Ack, 60, None)),
            vec![Action::Probe(ADDR)]
        );
        assert_eq!(c.probing(), Some(ADDR));
        let mut probes = 1;
        let lease = loop {
            match c.on_timer(c.deadline().unwrap()).as_slice() {
                [Action::Probe(a)] => {
                    assert_eq!(*a, ADDR);
                    probes += 1;
                }
                [Action::Configure(l)] => break l.clone(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!((probes, lease.address, c.probing()), (PROBES, ADDR, None));
        assert!(
            c.deadline().unwrap() - t0 >= Duration::from_secs(30),
            "bound, next timer is T1"
        );
    }

    #[test]
    fn a_conflict_declines_the_address_and_waits_ten_seconds() {
        let t0 = Instant::now();
        let mut c = Client::new(MAC, Some("node".into()), 53);
        let (disc, _) = sent(&c.start(t0));
        let (req, _) = sent(&c.on_message(t0, &answer(&disc, MessageType::Offer, 60, None)));
        c.on_message(t0, &answer(&req, MessageType::Ack, 60, None));
        assert!(
            c.on_conflict(t0, Ipv4Addr::new(10, 213, 9, 99)).is_empty(),
            "another address"
        );
        let (m, d) = sent(&c.on_conflict(t0, ADDR));
        assert_eq!(
            (m.message_type(), d),
            (Some(MessageType::Decline), Destination::Broadcast)
        );
        assert_eq!(
            (m.option_ip(opt::REQUESTED_IP), m.option_ip(opt::SERVER_ID)),
            (Some(ADDR), Some(SERVER))
        );
        assert_eq!(m.ciaddr, Ipv4Addr::UNSPECIFIED);
        for absent in [opt::PARAMETER_LIST, opt::MAX_MESSAGE_SIZE, opt::HOST_NAME] {
            assert!(
                !m.options.contains_key(&absent),
                "DECLINE must not carry option {absent}"
            );
        }
        assert_eq!(c.state_name(), "backoff");
        assert_eq!(c.deadline(), Some(t0 + DECLINE_BACKOFF));
        assert_eq!(c.lease(), None);
        assert!(c.on_conflict(t0, ADDR).is_empty(), "only while checking");
    }

    #[test]
    fn foreign_replies_are_ignored() {
        let t0 = Instant::now();
        let mut c = plain(1);
        let (disc, _) = sent(&c.start(t0));
        let mut wrong_xid = answer(&disc, MessageType::Offer, 60, None);
        wrong_xid.xid ^= 1;
        assert!(c.on_message(t0, &wrong_xid).is_empty());
        let mut wrong_mac = answer(&disc, MessageType::Offer, 60, None);
        wrong_mac.chaddr[5] ^= 1;
        assert!(c.on_message(t0, &wrong_mac).is_empty());
        let mut request = answer(&disc, MessageType::Offer, 60, None);
        request.op = 1;
        assert!(c.on_message(t0, &request).is_empty());
        // An ACK while selecting is not ours to take.
        assert!(c
            .on_message(t0, &answer(&disc, MessageType::Ack, 60, None))
            .is_empty());
        assert_eq!(c.state_name(), "selecting");
    }

    #[test]
    fn discover_backs_off_exponentially() {
        let t0 = Instant::now();
        let mut c = plain(7);
        c.start(t0);
        let mut prev = t0;
        let mut gaps = Vec::new();
        for _ in 0..6 {
            let d = c.deadline().unwrap();
            gaps.push(d - prev);
            prev = d;
            let (m, _) = sent(&c.on_timer(d));
            assert_eq!(m.message_type(), Some(MessageType::Discover));
        }
        let secs: Vec<u64> = gaps
            .iter()
            .map(|g| (g.as_millis() as u64 + 500) / 1000)
            .collect();
        for (s, base) in secs.iter().zip([4u64, 8, 16, 32, 64, 64]) {
            assert!((base - 1..=base + 1).contains(s), "gaps {secs:?}");
        }
    }

    #[test]
    fn renewal_is_unicast_with_ciaddr_then_rebinding_then_expiry() {
        let t0 = Instant::now();
        let mut c = plain(3);
        let l = bound(&mut c, t0, 200, Some(50));
        assert_eq!(l.t1, Duration::from_secs(50));
        // Before T1 nothing happens.
        assert!(c.on_timer(t0 + Duration::from_secs(49)).is_empty());
        let t1 = t0 + Duration::from_secs(50);
        let (m, d) = sent(&c.on_timer(t1));
        assert_eq!(d, Destination::Unicast(SERVER));
        assert_eq!(m.ciaddr, ADDR);
        assert_eq!(
            m.option_ip(opt::REQUESTED_IP),
            None,
            "no requested-ip when renewing"
        );
        assert_eq!(
            m.option_ip(opt::SERVER_ID),
            None,
            "no server-id when renewing"
        );
        assert_eq!(c.state_name(), "renewing");
        // The server is silent: the retry waits half the time left to T2
        // (175 s), at least 60 s, never past T2.
        let next = c.deadline().unwrap();
        assert_eq!(next, t1 + Duration::from_millis(62_500));
        let t2 = t0 + Duration::from_secs(175);
        let mut retries = 0;
        while c.deadline() != Some(t2) {
            let (m, d) = sent(&c.on_timer(c.deadline().unwrap()));
            assert_eq!((d, m.ciaddr), (Destination::Unicast(SERVER), ADDR));
            retries += 1;
            assert!(retries < 5, "renewal retries never reach T2");
        }
        let (m, d) = sent(&c.on_timer(t2));
        assert_eq!(d, Destination::Broadcast);
        assert_eq!(m.ciaddr, ADDR);
        assert_eq!(c.state_name(), "rebinding");
        let end = t0 + Duration::from_secs(200);
        assert_eq!(c.deadline(), Some(end));
        let acts = c.on_timer(end);
        assert!(matches!(acts.first(), Some(Action::Deconfigure(l)) if l.address == ADDR));
        let (m, _) = sent(&acts);
        assert_eq!(m.message_type(), Some(MessageType::Discover));
        assert_eq!(c.lease(), None);
    }

    #[test]
    fn renewal_ack_extends_the_lease_from_the_request_time() {
        let t0 = Instant::now();
        let mut c = plain(5);
        bound(&mut c, t0, 100, Some(10));
        let t1 = t0 + Duration::from_secs(10);
        let (req, _) = sent(&c.on_timer(t1));
        let later = t1 + Duration::from_millis(300);
        let acts = c.on_message(later, &answer(&req, MessageType::Ack, 100, Some(10)));
        match acts.as_slice() {
            [Action::Configure(l)] => assert_eq!(l.start, t1),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.deadline(), Some(t1 + Duration::from_secs(10)));
    }

    #[test]
    fn nak_while_renewing_drops_the_address_and_restarts() {
        let t0 = Instant::now();
        let mut c = plain(9);
        bound(&mut c, t0, 100, None);
        let t1 = t0 + Duration::from_secs(50);
        let (req, _) = sent(&c.on_timer(t1));
        let acts = c.on_message(t1, &answer(&req, MessageType::Nak, 0, None));
        assert!(matches!(acts.as_slice(), [Action::Deconfigure(l)] if l.address == ADDR));
        assert_eq!(c.state_name(), "backoff");
        let (m, _) = sent(&c.on_timer(c.deadline().unwrap()));
        assert_eq!(m.message_type(), Some(MessageType::Discover));
        assert_ne!(m.xid, req.xid);
    }

    #[test]
    fn nak_while_requesting_restarts_without_deconfigure() {
        let t0 = Instant::now();
        let mut c = plain(11);
        let (disc, _) = sent(&c.start(t0));
        let (req, _) = sent(&c.on_message(t0, &answer(&disc, MessageType::Offer, 60, None)));
        assert!(c
            .on_message(t0, &answer(&req, MessageType::Nak, 0, None))
            .is_empty());
        assert_eq!(c.state_name(), "backoff");
    }

    #[test]
    fn unanswered_requests_fall_back_to_discovery() {
        let t0 = Instant::now();
        let mut c = plain(13);
        let (disc, _) = sent(&c.start(t0));
        c.on_message(t0, &answer(&disc, MessageType::Offer, 60, None));
        for _ in 0..MAX_REQUEST_ATTEMPTS - 1 {
            let (m, _) = sent(&c.on_timer(c.deadline().unwrap()));
            assert_eq!(m.message_type(), Some(MessageType::Request));
        }
        let (m, _) = sent(&c.on_timer(c.deadline().unwrap()));
        assert_eq!(m.message_type(), Some(MessageType::Discover));
    }

    #[test]
    fn release_sends_to_the_server_and_deconfigures() {
        let t0 = Instant::now();
        let mut c = plain(17);
        bound(&mut c, t0, 100, None);
        let acts = c.release();
        let (m, d) = sent(&acts);
        assert_eq!(
            (m.message_type(), d, m.ciaddr),
            (
                Some(MessageType::Release),
                Destination::Unicast(SERVER),
                ADDR
            )
        );
        assert!(matches!(acts.last(), Some(Action::Deconfigure(_))));
        assert_eq!(c.deadline(), None);
    }

    #[test]
    fn carrier_back_verifies_the_lease_init_reboot() {
        let t0 = Instant::now();
        let mut c = plain(23);
        bound(&mut c, t0, 100, None);
        let t = t0 + Duration::from_secs(3);
        let (m, d) = sent(&c.on_carrier_up(t));
        assert_eq!(c.state_name(), "rebooting");
        assert_eq!(
            (d, m.ciaddr, m.flags),
            (
                Destination::Broadcast,
                Ipv4Addr::UNSPECIFIED,
                FLAG_BROADCAST
            )
        );
        assert_eq!(m.option_ip(opt::REQUESTED_IP), Some(ADDR));
        assert_eq!(
            m.option_ip(opt::SERVER_ID),
            None,
            "INIT-REBOOT carries no server id"
        );
        // ACK: bound again, the lease restarted from this REQUEST.
        match c
            .on_message(t, &answer(&m, MessageType::Ack, 100, None))
            .as_slice()
        {
            [Action::Configure(l)] => assert_eq!(l.start, t),
            other => panic!("{other:?}"),
        }
        // NAK after another flap: the address goes.
        let (m, _) = sent(&c.on_carrier_up(t));
        let acts = c.on_message(t, &answer(&m, MessageType::Nak, 0, None));
        assert!(matches!(acts.as_slice(), [Action::Deconfigure(l)] if l.address == ADDR));
    }

    #[test]
    fn carrier_back_with_no_answer_keeps_the_lease() {
        let t0 = Instant::now();
        let mut c = plain(29);
        bound(&mut c, t0, 1000, None);
        c.on_carrier_up(t0);
        for _ in 0..MAX_REBOOT_ATTEMPTS - 1 {
            let (m, _) = sent(&c.on_timer(c.deadline().unwrap()));
            assert_eq!(m.option_ip(opt::REQUESTED_IP), Some(ADDR));
        }
        assert!(c.on_timer(c.deadline().unwrap()).is_empty());
        assert_eq!(c.state_name(), "bound");
        assert_eq!(c.lease().map(|l| l.address), Some(ADDR));
        // While discovering, carrier back restarts discovery at once.
        let mut d = plain(31);
        let (first, _) = sent(&d.start(t0));
        let (again, _) = sent(&d.on_carrier_up(t0 + Duration::from_secs(1)));
        assert_eq!(again.message_type(), Some(MessageType::Discover));
        assert_ne!(again.xid, first.xid);
    }

    #[test]
    fn timers_are_sane_whatever_the_server_says() {
        let s = Duration::from_secs;
        assert_eq!(
            timers(Some(s(100)), None, None),
            (s(50), s(87) + Duration::from_millis(500))
        );
        assert_eq!(
            timers(Some(s(100)), Some(500), Some(900)),
            (s(50), s(87) + Duration::from_millis(500))
        );
        assert_eq!(timers(Some(s(100)), Some(90), Some(80)), (s(50), s(80)));
        assert_eq!(timers(Some(s(100)), Some(10), Some(20)), (s(10), s(20)));
        assert_eq!(timers(None, Some(10), None).0, Duration::MAX);
        assert_eq!(check::classful_prefix(Ipv4Addr::new(10, 0, 0, 1)), 8);
        assert_eq!(check::classful_prefix(Ipv4Addr::new(172, 16, 0, 1)), 16);
        assert_eq!(check::classful_prefix(Ipv4Addr::new(192, 168, 0, 1)), 24);
    }

    #[test]
    fn infinite_lease_has_no_timer() {
        let t0 = Instant::now();
        let mut c = plain(19);
        let l = bound(&mut c, t0, u32::MAX, None);
        assert_eq!(l.duration, None);
        assert_eq!(c.deadline(), None);
    }

    const OTHER: Ipv4Addr = Ipv4Addr::new(10, 213, 9, 2);

    /// A client in `Requesting`, and its REQUEST.
    fn requesting(c: &mut Client, t0: Instant) -> Message {
        let (disc, _) = sent(&c.start(t0));
        let (req, _) = sent(&c.on_message(t0, &answer(&disc, MessageType::Offer, 60, None)));
        assert_eq!(c.state_name(), "requesting");
        req
    }

    /// A named change to a server's answer.
    type Edit = (&'static str, Box<dyn Fn(&mut Message)>);

    /// Changes to a good answer, each of which must refuse it whole.
    fn hostile_edits() -> Vec<Edit> {
        let ip = |a: [u8; 4]| Ipv4Addr::from(a);
        vec![
            ("no address", Box::new(move |m| m.yiaddr = ip([0, 0, 0, 0]))),
            (
                "this network",
                Box::new(move |m| m.yiaddr = ip([0, 0, 0, 9])),
            ),
            ("loopback", Box::new(move |m| m.yiaddr = ip([127, 0, 0, 5]))),
            (
                "multicast",
                Box::new(move |m| m.yiaddr = ip([224, 0, 0, 5])),
            ),
            ("class E", Box::new(move |m| m.yiaddr = ip([240, 0, 0, 5]))),
            (
                "broadcast",
                Box::new(move |m| m.yiaddr = Ipv4Addr::BROADCAST),
            ),
            (
                "subnet broadcast",
                Box::new(move |m| m.yiaddr = ip([10, 213, 9, 255])),
            ),
            (
                "subnet network",
                Box::new(move |m| m.yiaddr = ip([10, 213, 9, 0])),
            ),
            (
                "zero mask",
                Box::new(|m| m.set(opt::SUBNET_MASK, [0, 0, 0, 0])),
            ),
            (
                "/4 mask",
                Box::new(|m| m.set(opt::SUBNET_MASK, [240, 0, 0, 0])),
            ),
            (
                "holey mask",
                Box::new(|m| m.set(opt::SUBNET_MASK, [255, 0, 255, 0])),
            ),
            (
                "short mask",
                Box::new(|m| m.set(opt::SUBNET_MASK, [255, 255, 255])),
            ),
            (
                "no server id",
                Box::new(|m| {
                    m.options.remove(&opt::SERVER_ID);
                }),
            ),
            (
                "loopback router only",
                Box::new(|m| m.set(opt::ROUTER, [127, 0, 0, 1])),
            ),
            (
                "ourselves as the only router",
                Box::new(|m| m.set(opt::ROUTER, ADDR.octets())),
            ),
            (
                "broadcast router only",
                Box::new(|m| m.set(opt::ROUTER, [10, 213, 9, 255])),
            ),
            (
                "multicast router only",
                Box::new(|m| m.set(opt::ROUTER, [239, 1, 1, 1])),
            ),
        ]
    }

    #[test]
    fn hostile_offers_are_ignored_and_selecting_goes_on() {
        let t0 = Instant::now();
        for (what, edit) in hostile_edits() {
            let mut c = plain(59);
            let (disc, _) = sent(&c.start(t0));
            let mut offer = answer(&disc, MessageType::Offer, 60, None);
            edit(&mut offer);
            assert!(c.on_message(t0, &offer).is_empty(), "{what}");
            assert_eq!(c.state_name(), "selecting", "{what}");
            // A good offer after it is taken.
            let (req, _) = sent(&c.on_message(t0, &answer(&disc, MessageType::Offer, 60, None)));
            assert_eq!(req.message_type(), Some(MessageType::Request), "{what}");
        }
        // A server identifier that is not unicast.
        let mut c = plain(59);
        let (disc, _) = sent(&c.start(t0));
        let mut offer = answer(&disc, MessageType::Offer, 60, None);
        offer.set(opt::SERVER_ID, [127, 0, 0, 1]);
        assert!(c.on_message(t0, &offer).is_empty());
        assert_eq!(c.state_name(), "selecting");
    }

    #[test]
    fn a_hostile_ack_while_requesting_backs_off_then_discovers() {
        let t0 = Instant::now();
        for (what, edit) in hostile_edits() {
            if what == "no server id" {
                continue; // not matched to the server: ignored, see below
            }
            let mut c = plain(61);
            let req = requesting(&mut c, t0);
            let mut ack = answer(&req, MessageType::Ack, 60, None);
            edit(&mut ack);
            assert!(c.on_message(t0, &ack).is_empty(), "{what}");
            assert_eq!(c.state_name(), "backoff", "{what}");
            assert_eq!(c.deadline(), Some(t0 + REFUSED_BACKOFF), "{what}");
            assert_eq!(c.lease(), None);
            let (m, _) = sent(&c.on_timer(t0 + REFUSED_BACKOFF));
            assert_eq!(m.message_type(), Some(MessageType::Discover), "{what}");
            assert_eq!(
                m.option_ip(opt::REQUESTED_IP),
                None,
                "{what}: the refused address is not asked for again"
            );
        }
    }

    #[test]
    fn a_hostile_ack_while_renewing_rebinding_or_rebooting_keeps_the_lease() {
        let t0 = Instant::now();
        for (what, edit) in hostile_edits() {
            if what == "no server id" {
                continue;
            }
            let mut c = plain(67);
            let held = bound(&mut c, t0, 100, Some(10));
            // Renewing.
            let t1 = t0 + Duration::from_secs(10);
            let (req, _) = sent(&c.on_timer(t1));
            let deadline = c.deadline();
            let mut ack = answer(&req, MessageType::Ack, 100, None);
            edit(&mut ack);
            assert!(c.on_message(t1, &ack).is_empty(), "{what}");
            assert_eq!(c.state_name(), "renewing", "{what}");
            assert_eq!(c.lease(), Some(&held), "{what}");
            assert_eq!(c.deadline(), deadline, "{what}: the retry stays as it was");
            // Rebinding (past T2).
            let t2 = t0 + Duration::from_millis(87_500);
            let (req, d) = sent(&c.on_timer(t2));
            assert_eq!(d, Destination::Broadcast);
            let mut ack = answer(&req, MessageType::Ack, 100, None);
            edit(&mut ack);
            assert!(c.on_message(t2, &ack).is_empty(), "{what}");
            assert_eq!(
                (c.state_name(), c.lease()),
                ("rebinding", Some(&held)),
                "{what}"
            );
            // Rebooting (carrier back).
            let (req, _) = sent(&c.on_carrier_up(t2));
            let mut ack = answer(&req, MessageType::Ack, 100, None);
            edit(&mut ack);
            assert!(c.on_message(t2, &ack).is_empty(), "{what}");
            assert_eq!(
                (c.state_name(), c.lease()),
                ("rebooting", Some(&held)),
                "{what}"
            );
            // A good answer is still taken.
            let acts = c.on_message(t2, &answer(&req, MessageType::Ack, 100, None));
            assert!(matches!(acts.as_slice(), [Action::Configure(_)]), "{what}");
        }
    }

    #[test]
    fn bad_routers_dns_servers_and_mtus_are_dropped_from_a_good_lease() {
        let t0 = Instant::now();
        let mut c = plain(71);
        let req = requesting(&mut c, t0);
        let mut ack = answer(&req, MessageType::Ack, 60, None);
        let flat = |l: &[[u8; 4]]| l.concat();
        ack.set(
            opt::ROUTER,
            flat(&[
                [127, 0, 0, 1],
                ADDR.octets(),
                [10, 213, 9, 255],
                [224, 0, 0, 1],
                [0, 0, 0, 0],
                SERVER.octets(),
            ]),
        );
        ack.set(
            opt::DNS,
            flat(&[
                [224, 0, 0, 1],
                [0, 0, 0, 0],
                [127, 0, 0, 53],
                [255, 255, 255, 255],
                [10, 213, 9, 0],
                [10, 213, 9, 53],
                [9, 9, 9, 9],
            ]),
        );
        ack.set(opt::MTU, [0, 68]);
        match c.on_message(t0, &ack).as_slice() {
            [Action::Configure(l)] => {
                assert_eq!((l.routers.clone(), l.gateway), (vec![SERVER], Some(SERVER)));
                assert_eq!(
                    l.dns,
                    vec![Ipv4Addr::new(10, 213, 9, 53), Ipv4Addr::new(9, 9, 9, 9)]
                );
                assert_eq!(l.mtu, None);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_router_outside_the_subnet_is_taken_with_a_host_mask() {
        // Cloud DHCP (GCE, Hetzner): a /32 and a router off the subnet,
        // which the daemon makes reachable with an on-link host route.
        let t0 = Instant::now();
        let mut c = plain(73);
        let req = requesting(&mut c, t0);
        let mut ack = answer(&req, MessageType::Ack, 60, None);
        ack.set(opt::SUBNET_MASK, [255, 255, 255, 255]);
        ack.set(opt::ROUTER, [172, 31, 1, 1]);
        match c.on_message(t0, &ack).as_slice() {
            [Action::Configure(l)] => assert_eq!(
                (l.prefix, l.gateway),
                (32, Some(Ipv4Addr::new(172, 31, 1, 1)))
            ),
            other => panic!("{other:?}"),
        }
    }

    /// 0/1 + 128/1 (TunnelVision), 127/8, 224/4, 240/8, 0/8, the link's
    /// own subnet via a router, a part of it on-link, our own /32, an
    /// on-link default, routers that cannot be, then one good route.
    const HOSTILE_ROUTES: [u8; 79] = [
        1, 0, 10, 213, 9, 1, //
        1, 128, 10, 213, 9, 1, //
        8, 127, 10, 213, 9, 1, //
        4, 224, 10, 213, 9, 1, //
        8, 240, 10, 213, 9, 1, //
        8, 0, 10, 213, 9, 1, //
        24, 10, 213, 9, 10, 213, 9, 1, //
        25, 10, 213, 9, 128, 0, 0, 0, 0, //
        0, 0, 0, 0, 0, //
        16, 10, 98, 127, 0, 0, 1, //
        16, 10, 97, 10, 213, 9, 20, //
        16, 10, 99, 10, 213, 9, 2,
    ];

    #[test]
    fn classless_routes_that_hijack_traffic_are_refused() {
        let t0 = Instant::now();
        let mut c = plain(79);
        c.classless_routes(true);
        let req = requesting(&mut c, t0);
        let mut ack = answer(&req, MessageType::Ack, 60, None);
        ack.set(opt::CLASSLESS_ROUTES, HOSTILE_ROUTES);
        let own = [32u8, 10, 213, 9, 20, 0, 0, 0, 0];
        ack.options
            .get_mut(&opt::CLASSLESS_ROUTES)
            .unwrap()
            .extend_from_slice(&own);
        let o = check::check(&ack, true).unwrap();
        assert_eq!(o.dropped.len(), 12, "{:#?}", o.dropped);
        match c.on_message(t0, &ack).as_slice() {
            [Action::Configure(l)] => {
                assert_eq!(
                    l.routes,
                    vec![ClasslessRoute {
                        dst: Ipv4Addr::new(10, 99, 0, 0),
                        prefix: 16,
                        gateway: OTHER,
                    }]
                );
                assert_eq!(
                    l.gateway,
                    Some(SERVER),
                    "no usable 121 default: option 3's router"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn classless_routes_are_off_by_default_and_not_even_asked_for() {
        let t0 = Instant::now();
        let mut c = plain(83);
        let (disc, _) = sent(&c.start(t0));
        let prl = disc.options[&opt::PARAMETER_LIST].clone();
        assert!(!prl.contains(&opt::CLASSLESS_ROUTES), "{prl:?}");
        assert!(prl.contains(&opt::ROUTER));
        let (req, _) = sent(&c.on_message(t0, &answer(&disc, MessageType::Offer, 60, None)));
        assert!(!req.options[&opt::PARAMETER_LIST].contains(&opt::CLASSLESS_ROUTES));
        let mut ack = answer(&req, MessageType::Ack, 60, None);
        // Sent anyway: a good default and route, still not taken.
        ack.set(
            opt::CLASSLESS_ROUTES,
            [16, 10, 99, 10, 213, 9, 2, 0, 10, 213, 9, 3],
        );
        match c.on_message(t0, &ack).as_slice() {
            [Action::Configure(l)] => {
                assert_eq!((l.gateway, l.routes.len()), (Some(SERVER), 0));
            }
            other => panic!("{other:?}"),
        }
        assert!(c.told_classless_off, "the ignored option is logged (once)");
        let mut on = plain(83);
        on.classless_routes(true);
        let (disc, _) = sent(&on.start(t0));
        assert!(disc.options[&opt::PARAMETER_LIST].contains(&opt::CLASSLESS_ROUTES));
    }

    fn from(mut m: Message, server: Option<Ipv4Addr>) -> Message {
        match server {
            Some(s) => m.set(opt::SERVER_ID, s.octets()),
            None => {
                m.options.remove(&opt::SERVER_ID);
            }
        }
        m
    }

    #[test]
    fn while_requesting_only_the_chosen_server_is_heard() {
        let t0 = Instant::now();
        let mut c = plain(89);
        let req = requesting(&mut c, t0);
        for kind in [MessageType::Ack, MessageType::Nak] {
            for server in [Some(OTHER), None] {
                let m = from(answer(&req, kind, 60, None), server);
                assert!(c.on_message(t0, &m).is_empty(), "{kind:?} from {server:?}");
                assert_eq!(c.state_name(), "requesting", "{kind:?} from {server:?}");
            }
        }
        match c
            .on_message(t0, &answer(&req, MessageType::Ack, 60, None))
            .as_slice()
        {
            [Action::Configure(l)] => assert_eq!(l.server, SERVER),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn while_renewing_only_the_leases_server_is_heard_rebinding_any() {
        let t0 = Instant::now();
        let mut c = plain(97);
        let held = bound(&mut c, t0, 100, Some(10));
        let t1 = t0 + Duration::from_secs(10);
        let (req, _) = sent(&c.on_timer(t1));
        for kind in [MessageType::Ack, MessageType::Nak] {
            for server in [Some(OTHER), None] {
                let m = from(answer(&req, kind, 100, None), server);
                assert!(c.on_message(t1, &m).is_empty(), "{kind:?} from {server:?}");
                assert_eq!(
                    (c.state_name(), c.lease()),
                    ("renewing", Some(&held)),
                    "{kind:?} from {server:?}"
                );
            }
        }
        // Rebinding is a broadcast to any server: another one may answer.
        let t2 = t0 + Duration::from_millis(87_500);
        let (req, _) = sent(&c.on_timer(t2));
        assert_eq!(c.state_name(), "rebinding");
        match c
            .on_message(
                t2,
                &from(answer(&req, MessageType::Ack, 100, None), Some(OTHER)),
            )
            .as_slice()
        {
            [Action::Configure(l)] => assert_eq!(l.server, OTHER),
            other => panic!("{other:?}"),
        }
        // So may INIT-REBOOT's (RFC 2131 §4.3.2: no server was named).
        let (req, _) = sent(&c.on_carrier_up(t2));
        let acts = c.on_message(
            t2,
            &from(answer(&req, MessageType::Nak, 0, None), Some(SERVER)),
        );
        assert!(matches!(acts.as_slice(), [Action::Deconfigure(l)] if l.server == OTHER));
    }
}
