//! The sd_notify protocol, client side, without libsystemd.
//!
//! The supervisor (our init, or systemd) passes `NOTIFY_SOCKET`: the path
//! of a unix datagram socket, or an abstract name when it begins with `@`.
//! Each datagram holds newline-separated `KEY=VALUE` lines: `READY=1` once
//! the service is usable, `STATUS=...` for humans, `WATCHDOG=1` as a
//! keep-alive when `WATCHDOG_USEC` asks for one (and `WATCHDOG_PID`, when
//! set, names us). Without `NOTIFY_SOCKET` every call is a no-op, so netd
//! runs the same by hand.

use std::cell::RefCell;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// A bad `NOTIFY_SOCKET` or `WATCHDOG_USEC`.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// The socket address cannot be used.
    #[error("NOTIFY_SOCKET={value:?}: {source}")]
    Socket {
        /// The variable's value.
        value: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// `WATCHDOG_USEC` is not a positive number.
    #[error("WATCHDOG_USEC={0:?} is not a positive number of microseconds")]
    Watchdog(String),
}

/// Where notifications go, and how often to pet the watchdog.
///
/// Sending never blocks. A unix datagram socket's receive queue is short
/// (`net.unix.max_dgram_qlen`, 10 by default; systemd as PID 1 raises it
/// to 512 for its own namespace), and a blocking `sendto` into a full queue
/// waits until the supervisor reads: a supervisor that is busy, stalled or
/// simply not reading would then stop netd's whole loop, renewals and
/// SIGTERM included. So the socket is non-blocking, and what cannot go out
/// now is held, merged (the newest `STATUS=`, `READY=1` and `STOPPING=1`
/// kept, watchdog pings collapsed into one) and sent at the next try.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
    held: RefCell<Held>,
}

/// Notifications that the supervisor's queue had no room for yet.
#[derive(Debug, Default, Clone, PartialEq)]
struct Held {
    ready: bool,
    stopping: bool,
    watchdog: bool,
    status: Option<String>,
    /// Datagrams that found the queue full since the last one went out.
    deferred: u64,
}

impl Held {
    fn is_empty(&self) -> bool {
        !self.ready && !self.stopping && !self.watchdog && self.status.is_none()
    }

    /// Folds `lines` in: known keys merge, the newest status wins.
    fn merge(&mut self, lines: &str) {
        for l in lines.lines() {
            match l.split_once('=') {
                Some(("READY", "1")) => self.ready = true,
                Some(("STOPPING", "1")) => self.stopping = true,
                Some(("WATCHDOG", "1")) => self.watchdog = true,
                Some(("STATUS", s)) => self.status = Some(s.to_string()),
                _ => tracing::debug!(line = l, "not a notification netd sends; dropped"),
            }
        }
    }

    /// The one datagram that carries everything held.
    fn datagram(&self) -> String {
        let mut out = Vec::new();
        if self.ready {
            out.push("READY=1".to_string());
        }
        if self.stopping {
            out.push("STOPPING=1".to_string());
        }
        if let Some(s) = &self.status {
            out.push(format!("STATUS={s}"));
        }
        if self.watchdog {
            out.push("WATCHDOG=1".to_string());
        }
        out.join("\n")
    }
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn none() -> Self {
        Notifier {
            target: None,
            watchdog: None,
            held: RefCell::default(),
        }
    }

    /// From the process environment.
    pub fn from_env() -> Result<Self, NotifyError> {
        let var = |k| std::env::var(k).ok();
        Self::from_parts(
            var("NOTIFY_SOCKET").as_deref(),
            var("WATCHDOG_USEC").as_deref(),
            var("WATCHDOG_PID").as_deref(),
            std::process::id(),
        )
    }

    /// From the variables' values; `pid` is ours, to match `WATCHDOG_PID`.
    pub fn from_parts(
        socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Result<Self, NotifyError> {
        let target = match socket.filter(|s| !s.is_empty()) {
            None => None,
            Some(value) => {
                let err = |source| NotifyError::Socket {
                    value: value.to_string(),
                    source,
                };
                let addr = match value.strip_prefix('@') {
                    Some(name) => SocketAddr::from_abstract_name(name.as_bytes()).map_err(err)?,
                    None => SocketAddr::from_pathname(value).map_err(err)?,
                };
                let sock = UnixDatagram::unbound().map_err(err)?;
                sock.set_nonblocking(true).map_err(err)?;
                Some((sock, addr))
            }
        };
        let for_us = watchdog_pid
            .map(|p| p.trim().parse::<u32>().ok() == Some(pid))
            .unwrap_or(true);
        let watchdog = match watchdog_usec.filter(|_| for_us) {
            None => None,
            Some(v) => match v.trim().parse::<u64>() {
                Ok(us) if us > 0 => Some(Duration::from_micros(us)),
                _ => return Err(NotifyError::Watchdog(v.to_string())),
            },
        };
        Ok(Notifier {
            target,
            watchdog,
            held: RefCell::default(),
        })
    }

    /// Sends `KEY=VALUE` lines (with anything still held) without waiting.
    /// A full queue holds them for [`Notifier::flush`]; other failures are
    /// logged, not returned: a supervisor that went away must not take the
    /// network down.
    pub fn send(&self, lines: &str) {
        if self.target.is_none() {
            return;
        }
        self.held.borrow_mut().merge(lines);
        self.flush();
    }

    /// Whether notifications wait for room in the supervisor's queue; the
    /// loop then calls [`Notifier::flush`] again soon.
    pub fn has_held(&self) -> bool {
        !self.held.borrow().is_empty()
    }

    /// Tries once to send what is held.
    pub fn flush(&self) {
        let Some((sock, addr)) = &self.target else {
            return;
        };
        let mut held = self.held.borrow_mut();
        if held.is_empty() {
            return;
        }
        match sock.send_to_addr(held.datagram().as_bytes(), addr) {
            Ok(_) => {
                if held.deferred > 0 {
                    tracing::info!(
                        deferred = held.deferred,
                        "the supervisor reads notifications again; the held ones went out as one"
                    );
                }
                *held = Held::default();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if held.deferred == 0 {
                    tracing::warn!(
                        "the supervisor's notify queue is full (it is not reading); \
                         holding notifications back instead of waiting"
                    );
                }
                held.deferred += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, "sd_notify send failed");
                *held = Held::default();
            }
        }
    }

    /// At exit: tries to send what is held for at most `limit`, so a
    /// slow supervisor still hears `STOPPING=1`; a stalled one does not
    /// keep netd from exiting.
    pub fn flush_before_exit(&self, limit: Duration) {
        let t = std::time::Instant::now();
        self.flush();
        while self.has_held() && t.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(20));
            self.flush();
        }
        if self.has_held() {
            tracing::warn!("exiting with notifications the supervisor never took");
        }
    }

    /// `READY=1` with a status line.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// A `STATUS=` line.
    pub fn status(&self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// `STOPPING=1`.
    pub fn stopping(&self) {
        self.send("STOPPING=1\nSTATUS=stopping");
    }

    /// How often to send `WATCHDOG=1`: half the supervisor's timeout.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// `WATCHDOG=1`.
    pub fn ping_watchdog(&self) {
        if self.watchdog.is_some() {
            self.send("WATCHDOG=1");
        }
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', " ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn recv(s: &UnixDatagram) -> String {
        let mut b = [0u8; 512];
        let n = s.recv(&mut b).unwrap();
        String::from_utf8_lossy(&b[..n]).into_owned()
    }

    #[test]
    fn path_socket_gets_ready_and_watchdog() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify");
        let listener = UnixDatagram::bind(&p).unwrap();
        let n = Notifier::from_parts(p.to_str(), Some("2000000"), None, 1).unwrap();
        n.ready("bound 10.213.0.5/24");
        assert_eq!(recv(&listener), "READY=1\nSTATUS=bound 10.213.0.5/24");
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(1)));
        n.ping_watchdog();
        assert_eq!(recv(&listener), "WATCHDOG=1");
        n.status("two\nlines");
        assert_eq!(recv(&listener), "STATUS=two lines");
    }

    /// The cause of netd's stalls on fresh machines: a supervisor that
    /// does not read filled the queue, and a blocking send then stopped
    /// the loop. Now nothing blocks, and nothing that matters is lost.
    #[test]
    fn a_supervisor_that_does_not_read_never_blocks_netd() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify");
        let listener = UnixDatagram::bind(&p).unwrap();
        let n = Notifier::from_parts(p.to_str(), Some("2000000"), None, 1).unwrap();
        let t = std::time::Instant::now();
        for i in 0..2000 {
            n.ping_watchdog();
            n.status(&format!("status {i}"));
        }
        n.ready("bound");
        n.status("latest");
        assert!(t.elapsed() < Duration::from_secs(5), "sending blocked");
        assert!(n.has_held());
        // The supervisor wakes up and drains its queue.
        listener.set_nonblocking(true).unwrap();
        let mut b = [0u8; 512];
        while listener.recv(&mut b).is_ok() {}
        n.flush();
        assert!(!n.has_held());
        assert_eq!(
            recv(&listener),
            "READY=1\nSTATUS=latest\nWATCHDOG=1",
            "held notifications merge into one datagram"
        );
    }

    #[test]
    fn a_gone_supervisor_drops_what_is_held() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("notify");
        let n = Notifier::from_parts(p.to_str(), None, None, 1).unwrap();
        n.ready("nobody listens");
        assert!(!n.has_held(), "ENOENT is not a full queue");
    }

    #[test]
    fn abstract_socket() {
        let name = format!("fluxnode-netd-test-{}", std::process::id());
        let listener =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        let n = Notifier::from_parts(Some(&format!("@{name}")), None, None, 1).unwrap();
        n.stopping();
        assert_eq!(recv(&listener), "STOPPING=1\nSTATUS=stopping");
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn watchdog_for_another_pid_is_ignored_and_bad_values_rejected() {
        let n = Notifier::from_parts(None, Some("1000"), Some("77"), 78).unwrap();
        assert_eq!(n.watchdog_interval(), None);
        let n = Notifier::from_parts(None, Some("1000"), Some("78"), 78).unwrap();
        assert_eq!(n.watchdog_interval(), Some(Duration::from_micros(500)));
        assert!(matches!(
            Notifier::from_parts(None, Some("soon"), None, 1),
            Err(NotifyError::Watchdog(_))
        ));
        assert!(matches!(
            Notifier::from_parts(None, Some("0"), None, 1),
            Err(NotifyError::Watchdog(_))
        ));
        // No socket: silent no-ops.
        Notifier::from_parts(None, None, None, 1)
            .unwrap()
            .ready("x");
    }
}
