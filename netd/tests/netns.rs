//! netd against a real DHCP server, in network namespaces.
//!
//! Each test makes two fresh namespaces joined by a veth pair: the server
//! side runs Debian's `dnsmasq` (or nothing, for the static test), the
//! client side runs the real `fluxnode-netd` binary with a `NOTIFY_SOCKET`
//! the test listens on. Addresses are 10.213.N.0/24 and exist only inside
//! these namespaces: no packet leaves them. Names carry the pid and a
//! counter, so parallel tests and parallel runs do not collide, and a Drop
//! guard kills the processes and deletes the namespaces even when a test
//! fails. The tests need root, `ip` and `dnsmasq`; without them they say why
//! and return.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::File;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fluxnode_netd::dhcp::packet::{opt, Message, MessageType};

const NETD: &str = env!("CARGO_BIN_EXE_fluxnode-netd");
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the machine can run these tests; prints why not.
fn can_run(test: &str, need_dnsmasq: bool) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        fluxnode_testkit::skip_named(test, "needs root (network namespaces, veth, port 67/68)");
        return false;
    }
    if !have("ip") {
        fluxnode_testkit::skip_named(
            test,
            "`ip` (iproute2) is missing; `cargo xtask deps` installs it",
        );
        return false;
    }
    if need_dnsmasq && !have("dnsmasq") {
        fluxnode_testkit::skip_named(
            test,
            "`dnsmasq` (package dnsmasq-base) is missing; `cargo xtask deps` installs it",
        );
        return false;
    }
    if let Err(why) = netns_work() {
        fluxnode_testkit::skip_named(
            test,
            format!(
                "cannot create network namespaces here ({why}); a container needs CAP_SYS_ADMIN"
            ),
        );
        return false;
    }
    true
}

/// Whether `ip netns add` works here (checked once per run).
fn netns_work() -> Result<(), String> {
    static PROBE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    PROBE
        .get_or_init(|| {
            let name = format!("fxnetd-{}xprobe", std::process::id());
            let out = Command::new("ip")
                .args(["netns", "add", &name])
                .output()
                .map_err(|e| e.to_string())?;
            let _ = Command::new("ip").args(["netns", "del", &name]).status();
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
            }
        })
        .clone()
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two namespaces and a veth pair, deleted on drop.
struct Net {
    server: String,
    client: String,
    server_if: String,
    client_if: String,
    subnet: u8,
    dir: tempfile::TempDir,
}

/// Deletes namespaces left by test runs that were killed before their
/// Drop guards ran (the pid in the name is gone).
fn sweep_leftovers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let Ok(dir) = std::fs::read_dir("/run/netns") else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(pid) = name
                .strip_prefix("fxnetd-")
                .and_then(|r| r.split('x').next())
            else {
                continue;
            };
            if !Path::new("/proc").join(pid).exists() {
                eprintln!("removing namespace {name} left by a killed test run");
                let _ = Command::new("ip").args(["netns", "del", &name]).status();
            }
        }
    });
}

impl Net {
    fn new() -> Net {
        sweep_leftovers();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{pid}x{n}");
        let net = Net {
            server: format!("fxnetd-{tag}-s"),
            client: format!("fxnetd-{tag}-c"),
            server_if: format!("fs{tag}"),
            client_if: format!("fc{tag}"),
            subnet: (pid % 200) as u8 + n as u8,
            dir: tempfile::tempdir().unwrap(),
        };
        assert!(
            net.client_if.len() <= 15,
            "interface name too long: {}",
            net.client_if
        );
        ip(&["netns", "add", &net.server]);
        ip(&["netns", "add", &net.client]);
        ip(&[
            "link",
            "add",
            &net.server_if,
            "netns",
            &net.server,
            "type",
            "veth",
            "peer",
            "name",
            &net.client_if,
            "netns",
            &net.client,
        ]);
        ip(&["-n", &net.server, "link", "set", &net.server_if, "up"]);
        ip(&[
            "-n",
            &net.server,
            "addr",
            "add",
            &format!("{}/24", net.gw()),
            "dev",
            &net.server_if,
        ]);
        net
    }

    fn gw(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 213, self.subnet, 1)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn client_addrs(&self) -> String {
        ip(&[
            "-n",
            &self.client,
            "-4",
            "addr",
            "show",
            "dev",
            &self.client_if,
        ])
    }

    fn client_default_route(&self) -> String {
        ip(&["-n", &self.client, "-4", "route", "show", "default"])
    }

    /// dnsmasq on the server side: lease 2 min (its minimum), T1 5 s, T2 8 s, MTU 1400.
    fn dnsmasq(&self) -> Proc {
        self.dnsmasq_with((10, 50), (5, 8), &["--dhcp-option=26,1400"], "dnsmasq.log")
    }

    /// dnsmasq handing out 10.213.N.lo-hi with renewal/rebinding times
    /// `t1`/`t2` (s), `extra` arguments, logging to `log`. The router
    /// (option 3, .1) and DNS server (option 6, .53) are sent unless
    /// `extra` sets those options itself.
    fn dnsmasq_with(
        &self,
        (lo, hi): (u8, u8),
        (t1, t2): (u32, u32),
        extra: &[&str],
        log: &str,
    ) -> Proc {
        let s = self.subnet;
        let log = self.path(log);
        let sets = |o: &str| {
            extra
                .iter()
                .any(|a| a.starts_with(&format!("--dhcp-option={o},")))
        };
        let mut defaults = Vec::new();
        if !sets("3") {
            defaults.push(format!("--dhcp-option=3,10.213.{s}.1"));
        }
        if !sets("6") {
            defaults.push(format!("--dhcp-option=6,10.213.{s}.53"));
        }
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.server,
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
                "--port=0",
            ])
            .arg(format!("--interface={}", self.server_if))
            .arg("--bind-interfaces")
            .arg(format!(
                "--dhcp-range=10.213.{s}.{lo},10.213.{s}.{hi},255.255.255.0,2m"
            ))
            .args(&defaults)
            .arg(format!("--dhcp-option=58,{t1}"))
            .arg(format!("--dhcp-option=59,{t2}"))
            .arg(format!(
                "--dhcp-leasefile={}",
                self.path("leases").display()
            ))
            .arg(format!("--log-facility={}", log.display()))
            // No ping check of an address before offering it: saves 3 s a lease.
            .args(["--log-dhcp", "--user=root", "--no-ping"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting dnsmasq");
        let p = Proc(child);
        wait_for(Duration::from_secs(10), "dnsmasq to start", || {
            read(&log).contains("DHCP, IP range")
        });
        p
    }

    /// netd on the client side with `cmdline`, notifying `notify`.
    fn netd(&self, cmdline: &str, notify: &Path) -> Proc {
        std::fs::write(self.path("cmdline"), cmdline).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.client, NETD, "-v"])
            .arg("--cmdline")
            .arg(self.path("cmdline"))
            .arg("--config")
            .arg(self.path("netd.toml")) // absent unless a test writes it
            .arg("--resolv-conf")
            .arg(self.path("resolv.conf"))
            .env("NOTIFY_SOCKET", notify)
            .env("WATCHDOG_USEC", "2000000")
            .stdout(Stdio::null())
            .stderr(File::create(self.path("netd.log")).unwrap())
            .spawn()
            .expect("starting fluxnode-netd");
        Proc(child)
    }

    fn dump_logs(&self) {
        for f in ["netd.log", "dnsmasq.log", "dnsmasq2.log", "dnsmasq3.log"] {
            eprintln!("----- {f}\n{}", read(&self.path(f)));
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
        }
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn wait_for(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let t = Instant::now();
    while !ok() {
        assert!(
            t.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The test's end of NOTIFY_SOCKET.
struct Notify {
    sock: UnixDatagram,
    seen: Vec<String>,
}

impl Notify {
    fn bind(path: &Path) -> Notify {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        Notify {
            sock,
            seen: Vec::new(),
        }
    }

    /// Reads until a message contains `line` or `limit` passes; returns whether it came.
    fn until(&mut self, line: &str, limit: Duration) -> bool {
        let t = Instant::now();
        let mut b = [0u8; 1024];
        while t.elapsed() < limit {
            if let Ok(n) = self.sock.recv(&mut b) {
                let m = String::from_utf8_lossy(&b[..n]).into_owned();
                let hit = m.lines().any(|l| l == line);
                self.seen.push(m);
                if hit {
                    return true;
                }
            }
        }
        false
    }

    fn any(&self, line: &str) -> bool {
        self.seen.iter().any(|m| m.lines().any(|l| l == line))
    }
}

/// Records the DHCP messages arriving at the server side, with their IP
/// destination, through an AF_PACKET socket opened inside the server's
/// namespace (setns on a thread of its own changes only that thread).
struct Sniffer {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<(Ipv4Addr, Message)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sniffer {
    fn start(ns: &str, ifname: &str) -> Sniffer {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (ns, ifname) = (ns.to_string(), ifname.to_string());
        let (stop2, seen2) = (stop.clone(), seen.clone());
        let thread = std::thread::spawn(move || {
            let f = File::open(format!("/run/netns/{ns}")).unwrap();
            // SAFETY: f is an open netns file; setns affects this thread only.
            assert_eq!(
                unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns"
            );
            let proto = (libc::ETH_P_IP as u16).to_be();
            // SAFETY: plain socket(2).
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, i32::from(proto)) };
            assert!(fd >= 0, "AF_PACKET socket");
            // SAFETY: fresh descriptor.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let name = std::ffi::CString::new(ifname).unwrap();
            // SAFETY: valid C string.
            let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
            // SAFETY: zeroed sockaddr_ll is valid.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            let sa = &sll as *const libc::sockaddr_ll as *const libc::sockaddr;
            // SAFETY: sll valid for its size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    sa,
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 0, "bind AF_PACKET");
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            let tvp = &tv as *const libc::timeval as *const libc::c_void;
            // SAFETY: tv valid for its size.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    tvp,
                    std::mem::size_of::<libc::timeval>() as u32,
                )
            };
            ready_tx.send(()).unwrap();
            let mut b = [0u8; 2048];
            while !stop2.load(Ordering::SeqCst) {
                // SAFETY: b valid for its length.
                let n = unsafe { libc::recv(fd.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), 0) };
                if n <= 0 {
                    continue;
                }
                let p = &b[..n as usize];
                let ihl = usize::from(p[0] & 0xf) * 4;
                if p.len() < ihl + 8
                    || p[9] != 17
                    || u16::from_be_bytes([p[ihl + 2], p[ihl + 3]]) != 67
                {
                    continue;
                }
                let dst = Ipv4Addr::new(p[16], p[17], p[18], p[19]);
                if let Ok(m) = Message::parse(&p[ihl + 8..]) {
                    seen2.lock().unwrap().push((dst, m));
                }
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("sniffer ready");
        Sniffer {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    fn messages(&self) -> Vec<(Ipv4Addr, Message)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A minimal DHCP server written for the expiry test only: dnsmasq will
/// not grant a lease shorter than 2 minutes, too long for the suite. Every
/// other acceptance point is checked against dnsmasq. It offers one
/// address, answers REQUESTs while `answering` is set, and records what it
/// receives (type, ciaddr, destination broadcast or not).
struct TinyServer {
    stop: Arc<AtomicBool>,
    answering: Arc<AtomicBool>,
    /// The subnet mask (option 1) it sends; 255.255.255.0 at first.
    mask: Arc<Mutex<[u8; 4]>>,
    seen: Arc<Mutex<Vec<(MessageType, Ipv4Addr)>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TinyServer {
    fn start(net: &Net, offer: Ipv4Addr, (lease, t1, t2): (u32, u32, u32)) -> TinyServer {
        let stop = Arc::new(AtomicBool::new(false));
        let answering = Arc::new(AtomicBool::new(true));
        let mask = Arc::new(Mutex::new([255, 255, 255, 0]));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (ns, ifname, server) = (net.server.clone(), net.server_if.clone(), net.gw());
        let (stop2, answering2, seen2) = (stop.clone(), answering.clone(), seen.clone());
        let mask2 = mask.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let f = File::open(format!("/run/netns/{ns}")).unwrap();
            // SAFETY: f is an open netns file; setns affects this thread only.
            assert_eq!(
                unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
                0,
                "setns"
            );
            let sock = std::net::UdpSocket::bind("0.0.0.0:67").unwrap();
            sock.set_broadcast(true).unwrap();
            let name = ifname.as_bytes();
            // SAFETY: name is valid for its length.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_BINDTODEVICE,
                    name.as_ptr().cast(),
                    name.len() as u32,
                )
            };
            assert_eq!(rc, 0, "SO_BINDTODEVICE");
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
            ready_tx.send(()).unwrap();
            let mut b = [0u8; 1500];
            while !stop2.load(Ordering::SeqCst) {
                let Ok((n, _)) = sock.recv_from(&mut b) else {
                    continue;
                };
                let Ok(m) = Message::parse(&b[..n]) else {
                    continue;
                };
                let Some(kind) = m.message_type() else {
                    continue;
                };
                seen2.lock().unwrap().push((kind, m.ciaddr));
                let reply = match kind {
                    MessageType::Discover => MessageType::Offer,
                    MessageType::Request if answering2.load(Ordering::SeqCst) => MessageType::Ack,
                    _ => continue,
                };
                let mut r = Message::request(reply, m.xid, [0; 6]);
                r.op = 2;
                r.chaddr = m.chaddr;
                r.flags = m.flags;
                r.yiaddr = offer;
                r.set(opt::SERVER_ID, server.octets());
                r.set(opt::SUBNET_MASK, *mask2.lock().unwrap());
                r.set(opt::ROUTER, server.octets());
                r.set(opt::LEASE_TIME, lease.to_be_bytes());
                r.set(opt::RENEWAL_TIME, t1.to_be_bytes());
                r.set(opt::REBINDING_TIME, t2.to_be_bytes());
                let _ = sock.send_to(&r.encode(), "255.255.255.255:68");
            }
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("tiny server ready");
        TinyServer {
            stop,
            answering,
            mask,
            seen,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<(MessageType, Ipv4Addr)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for TinyServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn sigterm_and_wait(p: &mut Proc, limit: Duration) -> std::process::ExitStatus {
    // SAFETY: kill on our own child's pid.
    unsafe { libc::kill(p.0.id() as i32, libc::SIGTERM) };
    let t = Instant::now();
    loop {
        if let Some(st) = p.0.try_wait().unwrap() {
            return st;
        }
        assert!(
            t.elapsed() < limit,
            "netd did not exit within {limit:?} of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The whole DHCP life: no READY while there is no server; discovery; READY
/// exactly when address and default route exist; a real renewal (unicast
/// REQUEST with ciaddr, seen on the wire by the server side); watchdog
/// pings; SIGTERM → DHCPRELEASE, address removed, exit 0.
#[test]
fn dhcp_ready_renewal_and_clean_stop() {
    if !can_run("dhcp_ready_renewal_and_clean_stop", true) {
        return;
    }
    let net = Net::new();
    let sniffer = Sniffer::start(&net.server, &net.server_if);
    let mut notify = Notify::bind(&net.path("notify"));
    let mut netd = net.netd(
        &format!(
            "quiet fluxnode.net=dhcp fluxnode.net.iface={}",
            net.client_if
        ),
        &net.path("notify"),
    );

    // No server yet: netd must keep discovering and must not claim readiness.
    assert!(
        !notify.until("READY=1", Duration::from_secs(2)),
        "READY=1 without any DHCP server: {:?}",
        notify.seen
    );
    assert!(
        notify.seen.iter().any(|m| m.contains("discovering")),
        "no discovering status: {:?}",
        notify.seen
    );
    assert!(
        !net.client_addrs().contains("inet "),
        "address before any server"
    );

    let _dnsmasq = net.dnsmasq();
    // The DISCOVER retransmission (4 s ± 1, then 8 s ± 1) reaches dnsmasq.
    assert!(
        notify.until("READY=1", Duration::from_secs(25)),
        "no READY=1: {:?}",
        notify.seen
    );
    let addrs = net.client_addrs();
    let route = net.client_default_route();
    let prefix = format!("inet 10.213.{}.", net.subnet);
    assert!(
        addrs.contains(&prefix) && addrs.contains("/24"),
        "READY=1 but no leased address: {addrs}"
    );
    assert!(
        route.contains(&format!("default via {}", net.gw())),
        "READY=1 but no default route: {route:?}"
    );
    let link = ip(&["-n", &net.client, "link", "show", "dev", &net.client_if]);
    assert!(
        link.contains("mtu 1400"),
        "the lease's MTU (option 26) was not applied: {link}"
    );
    let resolv = read(&net.path("resolv.conf"));
    assert!(
        resolv.contains(&format!("nameserver 10.213.{}.53", net.subnet)),
        "resolv.conf: {resolv:?}"
    );
    let leased = leased_address(&addrs).unwrap();

    // T1 is 5 s: a renewal must reach the server as a unicast REQUEST with ciaddr.
    wait_for(Duration::from_secs(15), "a renewal REQUEST", || {
        sniffer.messages().iter().any(|(dst, m)| {
            m.message_type() == Some(MessageType::Request) && m.ciaddr == leased && *dst == net.gw()
        })
    });
    let msgs = sniffer.messages();
    let renewal = msgs
        .iter()
        .find(|(_, m)| m.ciaddr == leased)
        .map(|(_, m)| m)
        .unwrap();
    assert_eq!(
        renewal.option_ip(opt::REQUESTED_IP),
        None,
        "renewal must not carry requested-ip"
    );
    assert_eq!(
        renewal.option_ip(opt::SERVER_ID),
        None,
        "renewal must not carry server-id"
    );
    let first_request = msgs
        .iter()
        .find(|(_, m)| m.message_type() == Some(MessageType::Request))
        .map(|(_, m)| m)
        .unwrap();
    assert_eq!(
        first_request.chaddr, renewal.chaddr,
        "renewal from another client"
    );
    wait_for(Duration::from_secs(5), "dnsmasq to ACK the renewal", || {
        read(&net.path("dnsmasq.log")).matches("DHCPACK(").count() >= 2
    });
    // Renewed, not rediscovered: the address is the same and still there.
    assert!(net.client_addrs().contains(&format!("inet {leased}/24")));
    assert!(
        notify.any("WATCHDOG=1") || notify.until("WATCHDOG=1", Duration::from_secs(3)),
        "no watchdog ping"
    );

    let st = sigterm_and_wait(&mut netd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "netd exit status on SIGTERM: {st:?}");
    notify.until("STOPPING=1", Duration::from_secs(1));
    assert!(notify.any("STOPPING=1"), "no STOPPING=1: {:?}", notify.seen);
    wait_for(Duration::from_secs(5), "dnsmasq to log the release", || {
        read(&net.path("dnsmasq.log")).contains("DHCPRELEASE(")
    });
    assert!(
        !net.client_addrs().contains("inet "),
        "address left after release"
    );
    let discovers = read(&net.path("dnsmasq.log"))
        .matches("DHCPDISCOVER(")
        .count();
    assert_eq!(
        discovers, 1,
        "dnsmasq saw {discovers} DISCOVERs: the lease was not simply renewed"
    );
}

/// A notify socket whose queue holds one datagram, bound inside `ns`:
/// `net.unix.max_dgram_qlen` is per network namespace and is read when the
/// receiving socket is made, so the test does not depend on the host's
/// value (10 on a fresh machine, 512 once a systemd has run as PID 1 in
/// the host's network namespace).
fn tiny_queue_socket(ns: &str, path: &Path) -> UnixDatagram {
    let (ns, path) = (ns.to_string(), path.to_path_buf());
    std::thread::spawn(move || {
        let f = File::open(format!("/run/netns/{ns}")).unwrap();
        // SAFETY: f is an open netns file; setns affects this thread only.
        assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
        // /proc/sys/net is the namespace of the thread that opens it.
        std::fs::write("/proc/sys/net/unix/max_dgram_qlen", "1").unwrap();
        UnixDatagram::bind(path).unwrap()
    })
    .join()
    .unwrap()
}

/// The cause of the stalls seen on fresh machines: a supervisor that does
/// not read its notify socket. With a blocking send netd stopped at its
/// first notification past the queue's length: no renewal, no rebinding,
/// no exit on SIGTERM. Here the queue holds one datagram and nobody reads
/// it; netd must renew twice and stop promptly, and say why it holds
/// notifications back.
#[test]
fn a_supervisor_that_never_reads_does_not_stall_netd() {
    if !can_run("a_supervisor_that_never_reads_does_not_stall_netd", true) {
        return;
    }
    let net = Net::new();
    let sock = tiny_queue_socket(&net.client, &net.path("notify"));
    let _dnsmasq = net.dnsmasq();
    let mut netd = net.netd(
        &format!(
            "quiet fluxnode.net=dhcp fluxnode.net.iface={}",
            net.client_if
        ),
        &net.path("notify"),
    );
    // The lease, then renewals at T1 (5 s): three ACKs in all.
    wait_for(Duration::from_secs(30), "two renewals", || {
        read(&net.path("dnsmasq.log")).matches("DHCPACK(").count() >= 3
    });
    let st = sigterm_and_wait(&mut netd, Duration::from_secs(5));
    assert_eq!(st.code(), Some(0), "netd exit status on SIGTERM: {st:?}");
    wait_for(Duration::from_secs(5), "dnsmasq to log the release", || {
        read(&net.path("dnsmasq.log")).contains("DHCPRELEASE(")
    });
    let log = read(&net.path("netd.log"));
    assert!(
        log.contains("holding notifications back"),
        "netd did not say why notifications wait: {log}"
    );
    // What the supervisor finds when it reads at last: the first message.
    let mut b = [0u8; 1024];
    sock.set_nonblocking(true).unwrap();
    let n = sock.recv(&mut b).unwrap();
    assert!(
        String::from_utf8_lossy(&b[..n]).contains("STATUS="),
        "the first notification was lost"
    );
}

fn leased_address(addrs: &str) -> Option<Ipv4Addr> {
    addrs
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)?
        .split('/')
        .next()?
        .parse()
        .ok()
}

/// The server forgets the lease and refuses the renewal (NAK): netd must
/// remove the address, discover again and take the new one.
#[test]
fn nak_on_renewal_drops_the_address_and_rediscovers() {
    if !can_run("nak_on_renewal_drops_the_address_and_rediscovers", true) {
        return;
    }
    let net = Net::new();
    let mut notify = Notify::bind(&net.path("notify"));
    let first = net.dnsmasq();
    let mut netd = net.netd(
        &format!("fluxnode.net.iface={}", net.client_if),
        &net.path("notify"),
    );
    assert!(
        notify.until("READY=1", Duration::from_secs(20)),
        "no READY=1: {:?}",
        notify.seen
    );
    let old = leased_address(&net.client_addrs()).unwrap();
    assert!(old.octets()[3] <= 50);
    drop(first);
    let _ = std::fs::remove_file(net.path("leases"));
    // Authoritative, with a range that no longer holds the old address: the
    // renewal at T1 (5 s) gets "address not available".
    let _second = net.dnsmasq_with(
        (100, 150),
        (5, 8),
        &["--dhcp-authoritative"],
        "dnsmasq2.log",
    );
    wait_for(
        Duration::from_secs(25),
        "a new address from the second range",
        || leased_address(&net.client_addrs()).is_some_and(|a| a.octets()[3] >= 100),
    );
    let log = read(&net.path("dnsmasq2.log"));
    assert!(
        log.contains(&format!("DHCPNAK({}) {old}", net.server_if)),
        "no NAK for {old}: {log}"
    );
    let addrs = net.client_addrs();
    assert!(
        !addrs.contains(&format!("inet {old}/")),
        "old address kept after the NAK: {addrs}"
    );
    assert!(
        net.client_default_route().contains("default via"),
        "no default route after rebinding to the new lease"
    );
    notify.until("never", Duration::from_millis(300));
    assert!(
        notify
            .seen
            .iter()
            .any(|m| m.contains("gone; discovering again")),
        "{:?}",
        notify.seen
    );
    let st = sigterm_and_wait(&mut netd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{st:?}");
}

/// The server goes silent after the lease: the renewal at T1 (unicast)
/// goes unanswered, and at T2 netd rebinds by broadcast with ciaddr set;
/// a server that knows the lease (same lease file) acknowledges it, and the
/// address never changes nor disappears.
#[test]
fn rebinding_at_t2_when_the_server_is_silent() {
    if !can_run("rebinding_at_t2_when_the_server_is_silent", true) {
        return;
    }
    let net = Net::new();
    let sniffer = Sniffer::start(&net.server, &net.server_if);
    let mut notify = Notify::bind(&net.path("notify"));
    let first = net.dnsmasq_with((10, 50), (4, 14), &[], "dnsmasq.log");
    let mut netd = net.netd(
        &format!("fluxnode.net.iface={}", net.client_if),
        &net.path("notify"),
    );
    assert!(
        notify.until("READY=1", Duration::from_secs(20)),
        "no READY=1: {:?}",
        notify.seen
    );
    let leased = leased_address(&net.client_addrs()).unwrap();
    drop(first);
    let request_to = |dst: Ipv4Addr| {
        let msgs = sniffer.messages();
        msgs.iter().any(|(d, m)| {
            *d == dst && m.ciaddr == leased && m.message_type() == Some(MessageType::Request)
        })
    };
    wait_for(
        Duration::from_secs(10),
        "the unanswered unicast renewal at T1",
        || request_to(net.gw()),
    );
    // The same lease file: the new server knows the lease.
    let _second = net.dnsmasq_with((10, 50), (4, 14), &[], "dnsmasq2.log");
    assert!(!request_to(Ipv4Addr::BROADCAST), "rebinding before T2");
    wait_for(
        Duration::from_secs(15),
        "the broadcast rebinding REQUEST at T2",
        || request_to(Ipv4Addr::BROADCAST),
    );
    wait_for(
        Duration::from_secs(5),
        "the new server to ACK the rebinding",
        || {
            read(&net.path("dnsmasq2.log"))
                .contains(&format!("DHCPACK({}) {leased}", net.server_if))
        },
    );
    let log = read(&net.path("dnsmasq2.log"));
    assert!(
        !log.contains("DHCPDISCOVER("),
        "netd rediscovered instead of rebinding: {log}"
    );
    assert!(
        net.client_addrs().contains(&format!("inet {leased}/24")),
        "address changed or lost"
    );
    let st = sigterm_and_wait(&mut netd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{st:?}");
}

/// Carrier loss and return: netd verifies its lease at once (INIT-REBOOT:
/// broadcast REQUEST with requested-ip, no ciaddr) instead of waiting for
/// T1 (60 s here). The same server ACKs it; after the network "changes"
/// (another, authoritative server with another range) the next flap gets
/// a NAK and netd moves to an address of the new network.
#[test]
fn carrier_back_verifies_the_lease() {
    if !can_run("carrier_back_verifies_the_lease", true) {
        return;
    }
    let net = Net::new();
    let sniffer = Sniffer::start(&net.server, &net.server_if);
    let mut notify = Notify::bind(&net.path("notify"));
    let first = net.dnsmasq_with((10, 50), (60, 100), &[], "dnsmasq.log");
    let mut netd = net.netd(
        &format!("fluxnode.net.iface={}", net.client_if),
        &net.path("notify"),
    );
    assert!(
        notify.until("READY=1", Duration::from_secs(20)),
        "no READY=1: {:?}",
        notify.seen
    );
    let leased = leased_address(&net.client_addrs()).unwrap();
    let flap = || {
        ip(&["-n", &net.server, "link", "set", &net.server_if, "down"]);
        // Long enough for the kernel's link watcher to report the loss:
        // a shorter flap is folded into one "still up" event.
        std::thread::sleep(Duration::from_secs(2));
        ip(&["-n", &net.server, "link", "set", &net.server_if, "up"]);
    };
    flap();
    wait_for(
        Duration::from_secs(10),
        "the INIT-REBOOT REQUEST after the carrier came back",
        || {
            sniffer.messages().iter().any(|(_, m)| {
                m.message_type() == Some(MessageType::Request)
                    && m.ciaddr.is_unspecified()
                    && m.option_ip(opt::REQUESTED_IP) == Some(leased)
                    && m.option_ip(opt::SERVER_ID).is_none()
            })
        },
    );
    wait_for(Duration::from_secs(5), "the same server to ACK it", || {
        read(&net.path("dnsmasq.log"))
            .matches(&format!("DHCPACK({}) {leased}", net.server_if))
            .count()
            >= 2
    });
    assert!(net.client_addrs().contains(&format!("inet {leased}/24")));
    drop(first);
    let _ = std::fs::remove_file(net.path("leases"));
    let _second = net.dnsmasq_with(
        (100, 150),
        (60, 100),
        &["--dhcp-authoritative"],
        "dnsmasq2.log",
    );
    flap();
    wait_for(
        Duration::from_secs(15),
        "an address of the new network after the NAK",
        || leased_address(&net.client_addrs()).is_some_and(|a| a.octets()[3] >= 100),
    );
    let log = read(&net.path("dnsmasq2.log"));
    assert!(
        log.contains(&format!("DHCPNAK({}) {leased}", net.server_if)),
        "no NAK for {leased}: {log}"
    );
    let st = sigterm_and_wait(&mut netd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{st:?}");
}

/// netd dies (SIGKILL) holding a lease, and init restarts it: the new
/// netd asks for the address the link still holds (option 50 in its
/// DISCOVER), keeps it, and removes any other address left by an earlier
/// lease (here a dynamic .77 added by hand).
#[test]
fn restart_after_a_crash_keeps_the_address_and_clears_stale_ones() {
    if !can_run(
        "restart_after_a_crash_keeps_the_address_and_clears_stale_ones",
        true,
    ) {
        return;
    }
    let net = Net::new();
    let sniffer = Sniffer::start(&net.server, &net.server_if);
    let mut notify = Notify::bind(&net.path("notify"));
    let _dnsmasq = net.dnsmasq_with((10, 50), (60, 100), &[], "dnsmasq.log");
    let cmdline = format!("fluxnode.net.iface={}", net.client_if);
    let first = net.netd(&cmdline, &net.path("notify"));
    assert!(
        notify.until("READY=1", Duration::from_secs(20)),
        "no READY=1: {:?}",
        notify.seen
    );
    let leased = leased_address(&net.client_addrs()).unwrap();
    drop(first); // SIGKILL: no release, the address stays
    assert!(net.client_addrs().contains(&format!("inet {leased}/24")));
    let stale = format!("10.213.{}.77", net.subnet);
    let dev = net.client_if.as_str();
    ip(&[
        "-n",
        &net.client,
        "addr",
        "add",
        &format!("{stale}/24"),
        "dev",
        dev,
        "valid_lft",
        "300",
        "preferred_lft",
        "300",
    ]);
    notify.seen.clear();
    let mut second = net.netd(&cmdline, &net.path("notify"));
    assert!(
        notify.until("READY=1", Duration::from_secs(20)),
        "no READY=1 after restart: {:?}",
        notify.seen
    );
    let asked = sniffer.messages().iter().any(|(_, m)| {
        m.message_type() == Some(MessageType::Discover)
            && m.option_ip(opt::REQUESTED_IP) == Some(leased)
    });
    assert!(
        asked,
        "the restarted netd did not ask for {leased} in its DISCOVER"
    );
    let addrs = net.client_addrs();
    assert!(
        addrs.contains(&format!("inet {leased}/24")),
        "address changed across the restart: {addrs}"
    );
    assert!(
        !addrs.contains(&stale),
        "stale dynamic address left: {addrs}"
    );
    let st = sigterm_and_wait(&mut second, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{st:?}");
}

/// Option 121 (RFC 3442), turned on: its routes are installed, and its
/// default route wins over option 3's router.
#[test]
fn classless_static_routes() {
    if !can_run("classless_static_routes", true) {
        return;
    }
    let net = Net::new();
    let s = net.subnet;
    let mut notify = Notify::bind(&net.path("notify"));
    let routes = format!("--dhcp-option=121,10.99.0.0/16,10.213.{s}.2,0.0.0.0/0,10.213.{s}.254");
    let _dnsmasq = net.dnsmasq_with((10, 50), (60, 100), &[&routes], "dnsmasq.log");
    let mut netd = net.netd(
        &format!(
            "fluxnode.net.iface={} fluxnode.net.classless_routes=1",
            net.client_if
        ),
        &net.path("notify"),
    );
    assert!(
        notify.until("READY=1", Duration::from_secs(20)),
        "no READY=1: {:?}",
        notify.seen
    );
    let all = ip(&["-n", &net.client, "-4", "route", "show"]);
    assert!(
        all.contains(&format!("10.99.0.0/16 via 10.213.{s}.2")),
        "option 121 route missing: {all}"
    );
    assert!(
        all.contains(&format!("default via 10.213.{s}.254")),
        "option 121 default must win: {all}"
    );
    assert!(
        !all.contains(&format!("default via 10.213.{s}.1 ")),
        "option 3 used despite option 121: {all}"
    );
    let st = sigterm_and_wait(&mut netd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{st:?}");
    let all = ip(&["-n", &net.client, "-4", "route", "show"]);
    assert!(
        !all.contains("10.99.0.0/16"),
        "option 121 route left after the release: {all}"
    );
}

/// With the broadcast flag off, dnsmasq unicasts its OFFER and ACK to the
/// offered address, which the link does not hold yet: the kernel drops
/// them before any UDP socket, and only netd's packet socket can see them.
#[test]
fn unicast_replies_reach_netd_without_the_broadcast_flag() {
    if !can_run(
        "unicast_replies_reach_netd_without_the_broadcast_flag",
        true,
    ) {
        return;
    }
    let net = Net::new();
    let sniffer = Sniffer::start(&net.server, &net.server_if);
    let mut notify = Notify::bind(&net.path("notify"));
    std::fs::write(net.path("netd.toml"), "request_broadcast = false\n").unwrap();
    let _dnsmasq = net.dnsmasq_with((10, 50), (60, 100), &[], "dnsmasq.log");
    let mut netd = net.netd(
        &format!("fluxnode.net.iface={}", net.client_if),
        &net.path("notify"),
    );
    assert!(
        notify.until("READY=1", Duration::from_secs(20)),
        "no READY=1: {:?}",
        notify.seen
    );
    let msgs = sniffer.messages();
    assert!(msgs
        .iter()
        .any(|(_, m)| m.message_type() == Some(MessageType::Discover)));
    assert!(
        msgs.iter().all(|(_, m)| m.flags == 0),
        "broadcast flag set although configured off"
    );
    let log = read(&net.path("dnsmasq.log"));
    assert!(log.contains("DHCPACK("), "{log}");
    assert!(
        !log.contains("broadcast response"),
        "dnsmasq broadcast anyway; the unicast path was not tested: {log}"
    );
    assert!(leased_address(&net.client_addrs()).is_some());
    assert!(net.client_default_route().contains("default via"));
    let st = sigterm_and_wait(&mut netd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{st:?}");
}

/// The lease runs out (6 s; T1 2 s, T2 4 s) while the server stays silent:
/// netd renews, rebinds, then removes the address and default route, says
/// so in STATUS, and discovers again; when the server answers again netd
/// takes the lease back.
#[test]
fn lease_expiry_removes_the_address_and_rediscovers() {
    if !can_run("lease_expiry_removes_the_address_and_rediscovers", false) {
        return;
    }
    let net = Net::new();
    let addr = Ipv4Addr::new(10, 213, net.subnet, 20);
    let server = TinyServer::start(&net, addr, (6, 2, 4));
    let mut notify = Notify::bind(&net.path("notify"));
    let mut netd = net.netd(
        &format!("fluxnode.net.iface={}", net.client_if),
        &net.path("notify"),
    );
    assert!(
        notify.until("READY=1", Duration::from_secs(20)),
        "no READY=1: {:?}",
        notify.seen
    );
    assert!(net.client_addrs().contains(&format!("inet {addr}/24")));
    server.answering.store(false, Ordering::SeqCst);
    let silent_from = server.seen().len();
    let t = Instant::now();
    wait_for(
        Duration::from_secs(12),
        "netd to report the lease gone",
        || {
            notify.until("never", Duration::from_millis(100));
            notify
                .seen
                .iter()
                .any(|m| m.contains("gone; discovering again"))
        },
    );
    let gone_after = t.elapsed();
    assert!(
        !net.client_addrs().contains(&format!("inet {addr}/")),
        "address kept after expiry"
    );
    assert!(
        !net.client_default_route().contains("default"),
        "default route kept after expiry"
    );
    let after: Vec<_> = server.seen()[silent_from..].to_vec();
    let renew = after
        .iter()
        .position(|(k, c)| *k == MessageType::Request && *c == addr);
    let rediscover = after.iter().position(|(k, _)| *k == MessageType::Discover);
    assert!(
        renew.is_some(),
        "no renewal/rebinding REQUEST while silent: {after:?}"
    );
    wait_for(
        Duration::from_secs(10),
        "a DISCOVER after the expiry",
        || {
            server.seen()[silent_from..]
                .iter()
                .any(|(k, _)| *k == MessageType::Discover)
        },
    );
    if let (Some(r), Some(d)) = (renew, rediscover) {
        assert!(r < d, "discovered before trying to renew: {after:?}");
    }
    assert!(
        gone_after < Duration::from_secs(10),
        "expiry took {gone_after:?} for a 6 s lease"
    );
    server.answering.store(true, Ordering::SeqCst);
    wait_for(Duration::from_secs(15), "the lease back", || {
        net.client_addrs().contains(&format!("inet {addr}/24"))
    });
    let st = sigterm_and_wait(&mut netd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{st:?}");
}

/// The offered address is already in use on the link (the server side
/// holds it too): netd's ARP probe gets an answer, it declines the lease
/// (DHCPDECLINE) without ever configuring it, waits 10 s and discovers
/// again; a server with a free address then gets it READY.
#[test]
fn address_in_use_is_declined() {
    if !can_run("address_in_use_is_declined", true) {
        return;
    }
    let net = Net::new();
    let s = net.subnet;
    let taken = format!("10.213.{s}.10");
    ip(&[
        "-n",
        &net.server,
        "addr",
        "add",
        &format!("{taken}/24"),
        "dev",
        &net.server_if,
    ]);
    let mut notify = Notify::bind(&net.path("notify"));
    let first = net.dnsmasq_with((10, 10), (60, 100), &[], "dnsmasq.log");
    let mut netd = net.netd(
        &format!("fluxnode.net.iface={}", net.client_if),
        &net.path("notify"),
    );
    wait_for(
        Duration::from_secs(15),
        "dnsmasq to log the DHCPDECLINE",
        || {
            read(&net.path("dnsmasq.log"))
                .contains(&format!("DHCPDECLINE({}) {taken}", net.server_if))
        },
    );
    let t = Instant::now();
    assert!(
        !net.client_addrs().contains(&format!("inet {taken}/")),
        "the taken address was configured"
    );
    drop(first);
    let _second = net.dnsmasq_with((11, 11), (60, 100), &[], "dnsmasq2.log");
    assert!(
        notify.until("READY=1", Duration::from_secs(20)),
        "no READY=1 after the decline: {:?}",
        notify.seen
    );
    assert!(
        t.elapsed() >= Duration::from_secs(8),
        "rediscovered {:?} after the decline, not ~10 s",
        t.elapsed()
    );
    assert!(
        net.client_addrs()
            .contains(&format!("inet 10.213.{s}.11/24")),
        "{}",
        net.client_addrs()
    );
    assert!(
        !notify
            .seen
            .iter()
            .any(|m| m.contains(&format!("{taken}/24"))),
        "{:?}",
        notify.seen
    );
    let st = sigterm_and_wait(&mut netd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{st:?}");
}

/// Static mode: the given address, route and DNS, READY=1 with no DHCP server.
#[test]
fn static_mode_ready_without_a_server() {
    if !can_run("static_mode_ready_without_a_server", false) {
        return;
    }
    let net = Net::new();
    let s = net.subnet;
    let mut notify = Notify::bind(&net.path("notify"));
    let cmdline = format!(
        "fluxnode.net=static:10.213.{s}.5/24,10.213.{s}.1,10.213.{s}.53 fluxnode.net.iface={}",
        net.client_if
    );
    let mut netd = net.netd(&cmdline, &net.path("notify"));
    assert!(
        notify.until("READY=1", Duration::from_secs(10)),
        "no READY=1: {:?}",
        notify.seen
    );
    let addrs = net.client_addrs();
    assert!(addrs.contains(&format!("inet 10.213.{s}.5/24")), "{addrs}");
    let route = net.client_default_route();
    assert!(
        route.contains(&format!("default via 10.213.{s}.1")),
        "{route:?}"
    );
    assert!(read(&net.path("resolv.conf")).contains(&format!("nameserver 10.213.{s}.53")));
    // The address is reachable from the server side: it really is on the wire.
    if have("ping") {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &net.server,
                "ping",
                "-c",
                "1",
                "-W",
                "2",
                &format!("10.213.{s}.5"),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ping from the server side failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    } else {
        // The address was not checked on the wire: not a pass.
        fluxnode_testkit::skip(
            "ping (iputils-ping) is missing, so the static address was not checked on the wire",
        );
    }
    let st = sigterm_and_wait(&mut netd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{st:?}");
}

/// A bad command line is an error that says what is expected, exit 1.
#[test]
fn bad_command_line_fails_with_a_useful_message() {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("cmdline"), "fluxnode.net=static:10.0.0.1").unwrap();
    let out = Command::new(NETD)
        .arg("--cmdline")
        .arg(d.path().join("cmdline"))
        .arg("--config")
        .arg(d.path().join("none.toml"))
        .arg("--print-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("expected ADDR/PREFIX"), "{err}");
    let out = Command::new(NETD).arg("--help").output().unwrap();
    assert!(
        out.status.success()
            && String::from_utf8_lossy(&out.stdout).contains("fluxnode.net=static:")
    );
}

/// netd with the given extra command line keys, waited on until READY=1.
fn netd_ready(net: &Net, extra: &str) -> (Notify, Proc) {
    let mut notify = Notify::bind(&net.path("notify"));
    let netd = net.netd(
        &format!("fluxnode.net.iface={} {extra}", net.client_if),
        &net.path("notify"),
    );
    assert!(
        notify.until("READY=1", Duration::from_secs(20)),
        "no READY=1: {:?}",
        notify.seen
    );
    (notify, netd)
}

fn client_routes(net: &Net) -> String {
    ip(&["-n", &net.client, "-4", "route", "show"])
}

/// Option 121 is off by default: not asked for, and when a server
/// forces it on us anyway its routes are not installed (logged once);
/// option 3 gives the default route.
#[test]
fn classless_routes_are_off_by_default() {
    if !can_run("classless_routes_are_off_by_default", true) {
        return;
    }
    let net = Net::new();
    let s = net.subnet;
    let sniffer = Sniffer::start(&net.server, &net.server_if);
    let routes =
        format!("--dhcp-option-force=121,10.99.0.0/16,10.213.{s}.2,0.0.0.0/0,10.213.{s}.254");
    let _dnsmasq = net.dnsmasq_with((10, 50), (60, 100), &[&routes], "dnsmasq.log");
    let (_notify, mut netd) = netd_ready(&net, "");
    let asked = sniffer.messages().iter().any(|(_, m)| {
        m.options
            .get(&opt::PARAMETER_LIST)
            .is_some_and(|l| l.contains(&opt::CLASSLESS_ROUTES))
    });
    assert!(!asked, "option 121 in a parameter request list while off");
    let all = client_routes(&net);
    assert!(!all.contains("10.99.0.0/16"), "{all}");
    assert!(all.contains(&format!("default via 10.213.{s}.1 ")), "{all}");
    let log = read(&net.path("netd.log"));
    assert_eq!(
        log.matches("classless static routes (option 121); ignored")
            .count(),
        1,
        "{log}"
    );
    let st = sigterm_and_wait(&mut netd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{st:?}");
}

/// TunnelVision (CVE-2024-3661) with option 121 turned on: 0.0.0.0/1 and
/// 128.0.0.0/1 via the server's pick, and a loopback route, are refused
/// with a logged reason; the good route is installed and, with no
/// default route left in option 121, option 3 gives it.
#[test]
fn tunnelvision_routes_are_refused() {
    if !can_run("tunnelvision_routes_are_refused", true) {
        return;
    }
    let net = Net::new();
    let s = net.subnet;
    let routes = format!(
        "--dhcp-option=121,0.0.0.0/1,10.213.{s}.7,128.0.0.0/1,10.213.{s}.7,127.0.0.0/8,10.213.{s}.7,10.99.0.0/16,10.213.{s}.2"
    );
    let _dnsmasq = net.dnsmasq_with((10, 50), (60, 100), &[&routes], "dnsmasq.log");
    let (_notify, mut netd) = netd_ready(&net, "fluxnode.net.classless_routes=1");
    let all = client_routes(&net);
    for bad in ["0.0.0.0/1", "128.0.0.0/1", "127.0.0.0/8", "10.213.{s}.7"] {
        assert!(
            !all.contains(&bad.replace("{s}", &s.to_string())),
            "{bad} installed: {all}"
        );
    }
    assert!(
        all.contains(&format!("10.99.0.0/16 via 10.213.{s}.2")),
        "{all}"
    );
    assert!(all.contains(&format!("default via 10.213.{s}.1 ")), "{all}");
    let log = read(&net.path("netd.log"));
    for why in [
        format!("classless route 0.0.0.0/1 via 10.213.{s}.7: shorter than /8"),
        format!("classless route 128.0.0.0/1 via 10.213.{s}.7: shorter than /8"),
        format!("classless route 127.0.0.0/8 via 10.213.{s}.7: overlaps loopback"),
        "TunnelVision".to_string(),
    ] {
        assert!(log.contains(&why), "no {why:?} in {log}");
    }
    let st = sigterm_and_wait(&mut netd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{st:?}");
}

/// A loopback router and a multicast DNS server, each next to a good
/// one: the bad ones are dropped with a logged reason, the lease, the
/// default route and resolv.conf use the good ones.
#[test]
fn loopback_router_and_multicast_dns_are_dropped() {
    if !can_run("loopback_router_and_multicast_dns_are_dropped", true) {
        return;
    }
    let net = Net::new();
    let s = net.subnet;
    let routers = format!("--dhcp-option=3,127.0.0.1,10.213.{s}.1");
    let dns = format!("--dhcp-option=6,224.0.0.1,10.213.{s}.53");
    let _dnsmasq = net.dnsmasq_with((10, 50), (60, 100), &[&routers, &dns], "dnsmasq.log");
    let (_notify, mut netd) = netd_ready(&net, "");
    let route = net.client_default_route();
    assert!(
        route.contains(&format!("default via 10.213.{s}.1 ")) && !route.contains("127.0.0.1"),
        "{route}"
    );
    let resolv = read(&net.path("resolv.conf"));
    assert!(
        resolv.contains(&format!("nameserver 10.213.{s}.53")) && !resolv.contains("224.0.0.1"),
        "{resolv}"
    );
    let log = read(&net.path("netd.log"));
    for why in [
        "router 127.0.0.1 is loopback",
        "dns server 224.0.0.1 is multicast",
    ] {
        assert!(log.contains(why), "no {why:?} in {log}");
    }
    let st = sigterm_and_wait(&mut netd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{st:?}");
}

/// A /1 subnet mask (half the internet on the link) is refused whole. A
/// fresh node offered one takes no address ("offer refused"), takes a
/// good server's lease once one answers, and keeps it (address and
/// default route) when a server then acknowledges its renewal with that
/// mask. (dnsmasq cannot send a zero mask: it reads 0.0.0.0 in an option
/// as its own address; `a_zero_mask_is_refused` uses the test's server.)
#[test]
fn a_short_mask_is_refused_and_the_good_lease_kept() {
    if !can_run("a_short_mask_is_refused_and_the_good_lease_kept", true) {
        return;
    }
    let net = Net::new();
    let hostile = net.dnsmasq_with(
        (10, 50),
        (4, 100),
        &["--dhcp-option=1,128.0.0.0"],
        "dnsmasq.log",
    );
    let mut notify = Notify::bind(&net.path("notify"));
    let mut netd = net.netd(
        &format!("fluxnode.net.iface={}", net.client_if),
        &net.path("notify"),
    );
    wait_for(Duration::from_secs(10), "the /1 mask refused", || {
        read(&net.path("netd.log")).contains("offer refused")
    });
    let log = read(&net.path("netd.log"));
    assert!(
        log.contains("subnet mask 128.0.0.0 is shorter than /8"),
        "no reason given: {log}"
    );
    assert!(
        !net.client_addrs().contains("inet "),
        "address taken from a refused offer"
    );
    drop(hostile);
    let good = net.dnsmasq_with((10, 50), (4, 100), &[], "dnsmasq2.log");
    assert!(
        notify.until("READY=1", Duration::from_secs(25)),
        "no READY=1: {:?}",
        notify.seen
    );
    let leased = leased_address(&net.client_addrs()).unwrap();
    drop(good);
    // The same lease file: this server knows the lease and ACKs the
    // renewal at T1 (4 s), with the /1 mask.
    let _hostile = net.dnsmasq_with(
        (10, 50),
        (4, 100),
        &["--dhcp-option=1,128.0.0.0"],
        "dnsmasq3.log",
    );
    wait_for(Duration::from_secs(15), "the renewal's ACK refused", || {
        read(&net.path("netd.log")).contains("ack refused; keeping the current lease")
    });
    assert!(
        read(&net.path("dnsmasq3.log")).contains(&format!("DHCPACK({}) {leased}", net.server_if)),
        "the hostile server did not ACK the renewal"
    );
    assert!(
        net.client_addrs().contains(&format!("inet {leased}/24")),
        "{}",
        net.client_addrs()
    );
    let all = client_routes(&net);
    assert!(all.contains(&format!("default via {}", net.gw())), "{all}");
    assert!(!all.contains("default dev"), "an on-link default: {all}");
    let st = sigterm_and_wait(&mut netd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{st:?}");
}

/// A zero subnet mask must not become an on-link /0: the offer is
/// refused with a logged reason and no address is taken; once the server
/// sends a real mask the node gets its lease and default route.
#[test]
fn a_zero_mask_is_refused() {
    if !can_run("a_zero_mask_is_refused", false) {
        return;
    }
    let net = Net::new();
    let addr = Ipv4Addr::new(10, 213, net.subnet, 20);
    let server = TinyServer::start(&net, addr, (120, 60, 100));
    *server.mask.lock().unwrap() = [0, 0, 0, 0];
    let mut notify = Notify::bind(&net.path("notify"));
    let mut netd = net.netd(
        &format!("fluxnode.net.iface={}", net.client_if),
        &net.path("notify"),
    );
    wait_for(Duration::from_secs(10), "the zero mask refused", || {
        read(&net.path("netd.log")).contains("subnet mask 0.0.0.0 is zero")
    });
    assert!(!net.client_addrs().contains("inet "), "address taken");
    assert!(!client_routes(&net).contains("default"), "a default route");
    *server.mask.lock().unwrap() = [255, 255, 255, 0];
    assert!(
        notify.until("READY=1", Duration::from_secs(20)),
        "no READY=1: {:?}",
        notify.seen
    );
    assert!(net.client_addrs().contains(&format!("inet {addr}/24")));
    assert!(net
        .client_default_route()
        .contains(&format!("default via {}", net.gw())));
    let st = sigterm_and_wait(&mut netd, Duration::from_secs(10));
    assert_eq!(st.code(), Some(0), "{st:?}");
}
