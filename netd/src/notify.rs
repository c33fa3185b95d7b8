//! The sd_notify protocol, client side, without libsystemd.
//!
//! The supervisor (our init, or systemd) passes `NOTIFY_SOCKET`: the path
//! of a unix datagram socket, or an abstract name when it begins with `@`.
//! Each datagram holds newline-separated `KEY=VALUE` lines: `READY=1` once
//! the service is usable, `STATUS=...` for humans, `WATCHDOG=1` as a
//! keep-alive when `WATCHDOG_USEC` asks for one (and `WATCHDOG_PID`, when
//! set, names us). Without `NOTIFY_SOCKET` every call is a no-op, so netd
//! runs the same by hand.

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
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// A notifier that sends nothing.
    pub fn none() -> Self {
        Notifier {
            target: None,
            watchdog: None,
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
                Some((UnixDatagram::unbound().map_err(err)?, addr))
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
        Ok(Notifier { target, watchdog })
    }

    /// Sends one datagram of `KEY=VALUE` lines. Failures are logged, not
    /// returned: a supervisor that went away must not take the network down.
    pub fn send(&self, lines: &str) {
        if let Some((sock, addr)) = &self.target {
            if let Err(e) = sock.send_to_addr(lines.as_bytes(), addr) {
                tracing::warn!(error = %e, "sd_notify send failed");
            }
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
