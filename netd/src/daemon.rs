//! The service: loopback, the link, DHCP or static, readiness, shutdown.
//!
//! Readiness is checked, not assumed: after configuring, netd dumps the
//! kernel's addresses and routes and sends `READY=1` only when the link
//! holds the address and a default route through it exists. Services
//! ordered after netd can then connect out at once.

use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::arp::{self, ArpSocket};
use crate::config::{self, Config, Mode};
use crate::dhcp::{Action, Client, DhcpSocket, Lease, Message, RawReceiver};
use crate::error::Error;
use crate::guard::LoopGuard;
use crate::netlink::{Address, Link, Netlink, RTPROT_DHCP, RTPROT_STATIC};
use crate::notify::Notifier;
use crate::sys::{poll_readable, random_u64, Signals};
use crate::{link, resolv};

/// Where netd reads and writes; defaults are the appliance's paths.
#[derive(Debug, Clone)]
pub struct Paths {
    /// Kernel command line.
    pub cmdline: PathBuf,
    /// Optional config file.
    pub config: PathBuf,
    /// sysfs root (link classification).
    pub sys: PathBuf,
    /// Where resolv.conf is written.
    pub resolv_conf: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            cmdline: "/proc/cmdline".into(),
            config: "/etc/fluxnode/netd.toml".into(),
            sys: "/sys".into(),
            resolv_conf: "/run/netd/resolv.conf".into(),
        }
    }
}

/// How soon to try again to send notifications the supervisor had no room for.
const NOTIFY_RETRY: Duration = Duration::from_millis(250);
/// How long to wait for carrier before sending the first DHCP message.
const CARRIER_WAIT: Duration = Duration::from_secs(10);
const IFF_RUNNING: u32 = libc::IFF_RUNNING as u32;
const IFF_LOWER_UP: u32 = libc::IFF_LOWER_UP as u32;

/// The running service's state outside the DHCP machine.
struct Service<'a> {
    nl: Netlink,
    notify: &'a Notifier,
    signals: Signals,
    paths: &'a Paths,
    ready: bool,
    stopping: bool,
    /// Dynamic addresses found on the link at start (a previous netd's
    /// lease): removed once a lease is configured, unless it is the same.
    stale: Vec<Address>,
    /// Open only while the DHCP client probes a new address.
    arp: Option<ArpSocket>,
    next_watchdog: Option<Instant>,
    /// Whether `lo` has been brought up (see [`Service::loopback`]).
    loopback_done: bool,
    /// Logs a loop turn that overran its deadline.
    guard: LoopGuard,
}

fn in_subnet(a: Ipv4Addr, b: Ipv4Addr, prefix: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    u32::from(a) & mask == u32::from(b) & mask
}

impl Service<'_> {
    /// Waits for a signal or `deadline`, pinging the watchdog meanwhile.
    /// `extra` are polled too; `what` names what is awaited, for the
    /// overrun guard. Returns (stop requested, which of `extra` are readable).
    fn wait(
        &mut self,
        what: &'static str,
        extra: &[RawFd],
        deadline: Option<Instant>,
    ) -> Result<(bool, Vec<bool>), Error> {
        let now = Instant::now();
        self.guard.before_wait(now);
        if self.next_watchdog.is_some_and(|w| now >= w) {
            self.notify.ping_watchdog();
            self.next_watchdog = self.notify.watchdog_interval().map(|i| now + i);
        }
        self.notify.flush();
        let retry = self.notify.has_held().then(|| now + NOTIFY_RETRY);
        let until = [deadline, self.next_watchdog, retry]
            .into_iter()
            .flatten()
            .min();
        let timeout = until.map(|u| u.saturating_duration_since(now));
        let mut fds = vec![self.signals.fd()];
        fds.extend_from_slice(extra);
        self.guard.waiting(what, until);
        let ready = poll_readable(&fds, timeout).map_err(Error::Poll)?;
        self.guard.woke(Instant::now());
        if ready[0] {
            if let Some(sig) = self.signals.read().map_err(Error::Poll)? {
                tracing::info!(signal = sig, "stop requested");
                return Ok((true, vec![false; extra.len()]));
            }
        }
        Ok((false, ready[1..].to_vec()))
    }

    /// True when the link holds `address` and a default route leaves through it.
    fn has_address_and_default_route(
        &mut self,
        index: u32,
        address: Ipv4Addr,
    ) -> Result<bool, Error> {
        let addr_ok = self
            .nl
            .addresses()?
            .iter()
            .any(|a| a.index == index && a.address == address);
        let route_ok = self
            .nl
            .routes()?
            .iter()
            .any(|r| r.dst_len == 0 && r.table == 254 && r.oif == Some(index));
        Ok(addr_ok && route_ok)
    }

    /// Sends READY=1 the first time the kernel shows address and route.
    fn check_ready(&mut self, index: u32, address: Ipv4Addr, status: &str) -> Result<(), Error> {
        if self.ready {
            self.notify.status(status);
            return Ok(());
        }
        if self.has_address_and_default_route(index, address)? {
            tracing::info!(status, "ready: address and default route in place");
            self.notify.ready(status);
            self.ready = true;
        } else {
            tracing::warn!(
                status,
                "configured, but no address or default route shows yet; not ready"
            );
            self.notify.status(&format!("{status} (no default route)"));
        }
        Ok(())
    }

    /// Address, on-link route to a gateway outside the subnet, default route.
    fn install(
        &mut self,
        link: &Link,
        address: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
        valid_s: Option<u32>,
        protocol: u8,
    ) -> Result<(), Error> {
        self.nl.add_address(link.index, address, prefix, valid_s)?;
        if let Some(gw) = gateway {
            if !in_subnet(address, gw, prefix) {
                self.nl.add_route(link.index, gw, 32, None, protocol)?;
            }
            self.nl
                .add_route(link.index, Ipv4Addr::UNSPECIFIED, 0, Some(gw), protocol)?;
        }
        Ok(())
    }

    fn write_resolv(&self, dns: &[Ipv4Addr], domain: Option<&str>) {
        if dns.is_empty() {
            return;
        }
        if let Err(e) = resolv::write(&self.paths.resolv_conf, dns, domain) {
            tracing::warn!(path = %self.paths.resolv_conf.display(), error = %e, "cannot write resolv.conf");
        }
    }

    /// Brings `lo` up (the kernel gives it 127.0.0.1/8 when it comes up),
    /// once. DHCP does it after its first DISCOVER is out, or as soon as
    /// it has to wait (for a link, for carrier): ~20 ms under TCG that the
    /// lease need not wait for, and nothing on the node uses loopback
    /// before netd is ready.
    fn loopback(&mut self) -> Result<(), Error> {
        if std::mem::replace(&mut self.loopback_done, true) {
            return Ok(());
        }
        let links = self.nl.links()?;
        match links.iter().find(|l| l.is_loopback()) {
            Some(lo) => {
                self.nl.set_up(lo.index)?;
                tracing::info!(name = %lo.name, "loopback up");
            }
            None => tracing::warn!("no loopback link found"),
        }
        Ok(())
    }

    /// Waits for the configured (or first wired) link to exist, then sets it up.
    fn find_link(&mut self, wanted: Option<&str>) -> Result<Option<Link>, Error> {
        let mut told = false;
        loop {
            let links = self.nl.links()?;
            if let Some(l) = link::pick(&self.paths.sys, &links, wanted) {
                self.nl.set_up(l.index)?;
                tracing::info!(name = %l.name, index = l.index, "link up");
                return self.wait_for_carrier(l);
            }
            if !told {
                self.loopback()?;
                let what = wanted
                    .map(|w| format!("link {w}"))
                    .unwrap_or_else(|| "a wired link".into());
                tracing::info!("waiting for {what} to appear");
                self.notify.status(&format!("waiting for {what}"));
                told = true;
            }
            if self
                .wait(
                    "a link to appear",
                    &[],
                    Some(Instant::now() + Duration::from_secs(1)),
                )?
                .0
            {
                return Ok(None);
            }
        }
    }

    /// Waits (bounded) for the link to report carrier (`IFF_RUNNING`):
    /// a real NIC needs a second or more of autonegotiation after coming
    /// up, and a DISCOVER sent before that is lost and costs a 4 s
    /// retransmission. Past the bound netd goes on anyway: retransmission
    /// covers a late carrier. `None` when a stop was requested.
    ///
    /// Woken by the kernel's link notification rather than by polling: a
    /// virtual NIC has carrier a few ms after coming up, and a 100 ms poll
    /// cost up to that much on every boot.
    ///
    /// A carrier present when the link came up (`IFF_LOWER_UP` at the first
    /// look) is enough: bringing a link up with carrier attaches its queue
    /// at once (the kernel's `dev_activate` in `dev_open`), while
    /// `IFF_RUNNING` follows later through the kernel's link-watch work,
    /// 0.4 s later on some boots under TCG. A carrier that appears after
    /// that first look is waited for as `IFF_RUNNING`: until link-watch
    /// has run, the queue still drops what is sent.
    fn wait_for_carrier(&mut self, l: Link) -> Result<Option<Link>, Error> {
        let until = Instant::now() + CARRIER_WAIT;
        // Subscribed before the first look, so no change falls between.
        let monitor = Netlink::open_link_monitor()?;
        if self
            .nl
            .links()?
            .iter()
            .any(|x| x.index == l.index && x.flags & IFF_LOWER_UP != 0)
        {
            return Ok(Some(l));
        }
        loop {
            let running = self
                .nl
                .links()?
                .iter()
                .any(|x| x.index == l.index && x.flags & IFF_RUNNING != 0);
            if running {
                return Ok(Some(l));
            }
            if Instant::now() >= until {
                tracing::warn!(name = %l.name, "no carrier after {CARRIER_WAIT:?}; going on anyway");
                return Ok(Some(l));
            }
            self.loopback()?;
            let (stop, readable) = self.wait("carrier", &[monitor.fd()], Some(until))?;
            if stop {
                return Ok(None);
            }
            if readable.first().copied().unwrap_or(false) {
                // Drained; the next look at the links decides.
                monitor.link_events()?;
            }
        }
    }

    /// Static mode: configure, report, then idle until stopped.
    fn run_static(&mut self, link: &Link, s: &config::Static) -> Result<(), Error> {
        self.install(link, s.address, s.prefix, s.gateway, None, RTPROT_STATIC)?;
        self.write_resolv(&s.dns, None);
        let status = format!(
            "static {}/{} on {} via {:?}",
            s.address, s.prefix, link.name, s.gateway
        );
        tracing::info!("{status}");
        self.check_ready(link.index, s.address, &status)?;
        while !self.wait("a stop (static)", &[], None)?.0 {}
        Ok(())
    }

    fn apply(&mut self, link: &Link, sock: &DhcpSocket, action: Action) -> Result<(), Error> {
        match action {
            Action::Send(m, to) => {
                tracing::debug!(kind = ?m.message_type(), xid = m.xid, ciaddr = %m.ciaddr, ?to, "sending");
                if let Err(e) = sock.send(&m, to) {
                    // Retransmission covers it (no carrier yet, no route for a unicast).
                    tracing::warn!(error = %e, ?to, "sending a dhcp message failed");
                }
            }
            Action::Configure(lease) => self.configure(link, &lease)?,
            Action::Deconfigure(lease) => self.deconfigure(link, &lease),
            Action::Probe(address) => {
                if self.arp.is_none() {
                    self.arp =
                        Some(
                            ArpSocket::open(link.index).map_err(|source| Error::DhcpSocket {
                                iface: link.name.clone(),
                                source,
                            })?,
                        );
                }
                let sent = self
                    .arp
                    .as_ref()
                    .map(|a| a.probe(link.mac.unwrap_or_default(), address));
                if let Some(Err(e)) = sent {
                    tracing::warn!(error = %e, %address, "sending an arp probe failed");
                }
            }
        }
        Ok(())
    }

    fn configure(&mut self, link: &Link, lease: &Lease) -> Result<(), Error> {
        // The kernel drops the address by itself when the lease runs out,
        // should netd be gone by then.
        let valid = lease.expiry().map(|e| {
            let left = e.saturating_duration_since(Instant::now()).as_secs();
            u32::try_from(left).unwrap_or(u32::MAX - 1).max(1)
        });
        if let Some(mtu) = lease.mtu {
            // Not fatal: the link works at its old MTU.
            if let Err(e) = self.nl.set_mtu(link.index, mtu) {
                tracing::warn!(error = %e, "setting the mtu from the lease");
            }
        }
        let gateway = lease.gateway;
        self.install(
            link,
            lease.address,
            lease.prefix,
            gateway,
            valid,
            RTPROT_DHCP,
        )?;
        // Option 121's routes are here only when turned on, and only those
        // that passed `dhcp::check::check_route` (no short, loopback,
        // multicast or own-subnet routes, no bad routers).
        for r in &lease.routes {
            // On-link routes (router 0.0.0.0) first, as listed; a failed
            // route is logged, not fatal: the default route is what matters.
            let gw = Some(r.gateway).filter(|g| !g.is_unspecified());
            if let Some(g) = gw.filter(|g| !in_subnet(lease.address, *g, lease.prefix)) {
                let _ = self.nl.add_route(link.index, g, 32, None, RTPROT_DHCP);
            }
            if let Err(e) = self
                .nl
                .add_route(link.index, r.dst, r.prefix, gw, RTPROT_DHCP)
            {
                tracing::warn!(error = %e, "adding a classless route (option 121)");
            }
        }
        for old in std::mem::take(&mut self.stale) {
            if old.address != lease.address {
                tracing::info!(address = %old.address, "removing the address of an earlier lease");
                if let Err(e) = self.nl.del_address(link.index, old.address, old.prefix) {
                    tracing::warn!(error = %e, "removing an earlier lease's address");
                }
            }
        }
        self.write_resolv(&lease.dns, lease.domain.as_deref());
        let status = format!(
            "dhcp {}/{} on {} via {} (lease {}s from {})",
            lease.address,
            lease.prefix,
            link.name,
            gateway
                .map(|g| g.to_string())
                .unwrap_or_else(|| "no router".into()),
            lease.duration.map(|d| d.as_secs()).unwrap_or(0),
            lease.server
        );
        self.check_ready(link.index, lease.address, &status)
    }

    fn deconfigure(&mut self, link: &Link, lease: &Lease) {
        for r in &lease.routes {
            if let Err(e) = self.nl.del_route(link.index, r.dst, r.prefix) {
                tracing::warn!(error = %e, "removing a classless route");
            }
        }
        if lease.gateway.is_some() {
            if let Err(e) = self.nl.del_route(link.index, Ipv4Addr::UNSPECIFIED, 0) {
                tracing::warn!(error = %e, "removing the default route");
            }
        }
        if let Err(e) = self.nl.del_address(link.index, lease.address, lease.prefix) {
            tracing::warn!(error = %e, "removing the address");
        }
        if let Err(e) = resolv::remove(&self.paths.resolv_conf) {
            tracing::warn!(error = %e, "removing resolv.conf");
        }
        let what = if self.stopping {
            "released"
        } else {
            "gone; discovering again"
        };
        self.notify
            .status(&format!("lease on {} {what}", link.name));
    }

    /// DHCP mode: the client machine driven by the socket and its timers.
    fn run_dhcp(&mut self, link: &Link, cfg: &Config) -> Result<(), Error> {
        let mac = link.mac.ok_or_else(|| Error::NoMac {
            iface: link.name.clone(),
        })?;
        let sock = DhcpSocket::open(&link.name).map_err(|source| Error::DhcpSocket {
            iface: link.name.clone(),
            source,
        })?;
        let raw = RawReceiver::open(link.index).map_err(|source| Error::DhcpSocket {
            iface: link.name.clone(),
            source,
        })?;
        // Subscribed before the first message, so no carrier change is missed.
        let monitor = Netlink::open_link_monitor()?;
        let mut carrier = self
            .nl
            .links()?
            .iter()
            .any(|l| l.index == link.index && l.flags & IFF_LOWER_UP != 0);
        let mut client = Client::new(mac, cfg.hostname.clone(), random_u64());
        client.request_broadcast(cfg.request_broadcast);
        client.arp_check(cfg.arp_check);
        client.classless_routes(cfg.classless_routes);
        self.stale = self
            .nl
            .addresses()?
            .into_iter()
            .filter(|a| a.index == link.index && !a.permanent && !a.address.is_loopback())
            .collect();
        if let Some(a) = self.stale.first() {
            tracing::info!(address = %a.address, "the link holds a lease from before; asking for it again");
            client.prefer(a.address);
        }
        self.notify
            .status(&format!("dhcp: discovering on {}", link.name));
        tracing::info!(link = %link.name, "dhcp: discovering");
        for a in client.start(Instant::now()) {
            self.apply(link, &sock, a)?;
        }
        self.loopback()?;
        loop {
            let mut fds = vec![sock.fd(), monitor.fd(), raw.fd()];
            fds.extend(self.arp.as_ref().map(ArpSocket::fd));
            let (stop, readable) = self.wait(client.state_name(), &fds, client.deadline())?;
            if stop {
                break;
            }
            let now = Instant::now();
            if readable[1] {
                for l in monitor
                    .link_events()?
                    .iter()
                    .filter(|l| l.index == link.index)
                {
                    // The carrier itself, not the operational state: that
                    // lags behind it, and any link message sent before the
                    // kernel's link-watch has run (an MTU change) would
                    // read as a carrier loss.
                    let up = l.flags & IFF_LOWER_UP != 0;
                    if up == carrier {
                        continue;
                    }
                    carrier = up;
                    if up {
                        tracing::info!(link = %link.name, "carrier back");
                        for a in client.on_carrier_up(now) {
                            self.apply(link, &sock, a)?;
                        }
                    } else {
                        tracing::warn!(link = %link.name, "carrier lost");
                        self.notify.status(&format!("no carrier on {}", link.name));
                    }
                }
            }
            // The same reply may come through both sockets; the client
            // ignores the copy, which no longer fits its state.
            let sockets: [&dyn Fn() -> std::io::Result<Option<Message>>; 2] =
                [&|| sock.recv(), &|| raw.recv()];
            for (recv, ready) in sockets.iter().zip([readable[0], readable[2]]) {
                if !ready {
                    continue;
                }
                while let Some(m) = recv().map_err(|source| Error::DhcpSocket {
                    iface: link.name.clone(),
                    source,
                })? {
                    tracing::debug!(kind = ?m.message_type(), xid = m.xid, yiaddr = %m.yiaddr, "received");
                    for a in client.on_message(now, &m) {
                        self.apply(link, &sock, a)?;
                    }
                }
            }
            if readable.get(3).copied().unwrap_or(false) {
                let seen = self.arp.as_ref().map(ArpSocket::recv_all).transpose();
                let seen = seen.map_err(|source| Error::DhcpSocket {
                    iface: link.name.clone(),
                    source,
                })?;
                if let (Some(address), Some(packets)) = (client.probing(), seen) {
                    if packets.iter().any(|p| arp::conflicts(p, address, mac)) {
                        for a in client.on_conflict(now, address) {
                            self.apply(link, &sock, a)?;
                        }
                    }
                }
            }
            if client.deadline().is_some_and(|d| now >= d) {
                for a in client.on_timer(now) {
                    self.apply(link, &sock, a)?;
                }
            }
            if client.probing().is_none() {
                self.arp = None;
            }
        }
        self.stopping = true;
        if cfg.release_on_stop {
            for a in client.release() {
                self.apply(link, &sock, a)?;
            }
        }
        Ok(())
    }
}

/// Runs the service until SIGTERM/SIGINT; `Ok` is a clean stop (exit 0).
pub fn run(paths: &Paths, notify: &Notifier) -> Result<(), Error> {
    // Signals first: a stop during setup must still be a clean one.
    let signals = Signals::open().map_err(Error::Signals)?;
    let cfg = config::load(&paths.config, &paths.cmdline)?;
    tracing::info!(mode = ?cfg.mode, interface = ?cfg.interface, "starting");
    let nl = Netlink::open()?;
    let next_watchdog = notify.watchdog_interval().map(|i| Instant::now() + i);
    let mut svc = Service {
        nl,
        notify,
        signals,
        paths,
        ready: false,
        stopping: false,
        stale: Vec::new(),
        arp: None,
        next_watchdog,
        loopback_done: false,
        guard: LoopGuard::default(),
    };
    match &cfg.mode {
        Mode::Off => {
            svc.loopback()?;
            notify.ready("loopback only (fluxnode.net=off)");
            while !svc.wait("a stop (off)", &[], None)?.0 {}
        }
        Mode::Static(s) => {
            svc.loopback()?;
            if let Some(link) = svc.find_link(cfg.interface.as_deref())? {
                svc.run_static(&link, s)?;
            }
        }
        Mode::Dhcp => {
            if let Some(link) = svc.find_link(cfg.interface.as_deref())? {
                svc.run_dhcp(&link, &cfg)?;
            }
        }
    }
    notify.stopping();
    notify.flush_before_exit(Duration::from_secs(1));
    tracing::info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets() {
        let a = Ipv4Addr::new(10, 213, 1, 5);
        assert!(in_subnet(a, Ipv4Addr::new(10, 213, 1, 1), 24));
        assert!(!in_subnet(a, Ipv4Addr::new(10, 213, 2, 1), 24));
        assert!(in_subnet(a, Ipv4Addr::new(1, 2, 3, 4), 0));
        assert!(!in_subnet(a, Ipv4Addr::new(10, 213, 1, 1), 32));
    }
}
