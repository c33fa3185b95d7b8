//! The update client's local API for the node agent: a unix socket
//! (`/run/fluxnode/ota.sock`, 0600, root's) with init's control-socket
//! manners: one request line per connection, the answer `ok` or
//! `error: WHY` on the first line, then the body. Text, so an operator can
//! talk to it with `socat` too.
//!
//! | request | answer |
//! |---|---|
//! | `status` | JSON: the running version, the update in flight, the version waiting for its reboot, whether the agent said idle |
//! | `check` | the daemon checks the repository now instead of at its next interval |
//! | `idle` | the agent says the node is idle (no app would be disturbed): a reboot held by `reboot = { when = "idle" }` goes ahead |
//! | `busy` | the node is busy again: such a reboot waits |
//!
//! The agent says `idle` when it is; the daemon only ever reboots for an
//! update on its own policy, so a silent or dead agent delays a reboot by
//! at most the policy's `max_wait_s`, never forever.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The longest request line read.
pub const MAX_REQUEST: u64 = 256;

/// How long a client may take to send its line.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(2);

/// A request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// The state, as JSON.
    Status,
    /// Check the repository now.
    Check,
    /// The node is idle.
    Idle,
    /// The node is busy.
    Busy,
}

impl Request {
    /// Parses one request line (surrounding whitespace ignored).
    pub fn parse(line: &str) -> Result<Request, String> {
        match line.trim() {
            "status" => Ok(Request::Status),
            "check" => Ok(Request::Check),
            "idle" => Ok(Request::Idle),
            "busy" => Ok(Request::Busy),
            "" => Err("empty request (one of: status, check, idle, busy)".into()),
            other => Err(format!(
                "unknown request {:?} (one of: status, check, idle, busy)",
                other.chars().take(40).collect::<String>()
            )),
        }
    }
}

/// What the daemon and its API share.
#[derive(Debug, Default)]
pub struct Shared {
    /// A check was asked for.
    pub check_now: bool,
    /// When the agent last said idle (`None`: busy, or never said).
    pub idle_since: Option<Instant>,
    /// The version installed and waiting for its reboot.
    pub waiting: Option<String>,
    /// The status JSON the daemon last published.
    pub status: String,
}

/// The daemon's side: the shared state and a wake-up for its loop.
#[derive(Debug, Clone, Default)]
pub struct Api {
    inner: Arc<(Mutex<Shared>, Condvar)>,
}

impl Api {
    /// Runs `f` on the shared state.
    pub fn with<T>(&self, f: impl FnOnce(&mut Shared) -> T) -> T {
        let mut g = self.inner.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Sleeps up to `d`, or until a request wakes the daemon.
    pub fn sleep(&self, d: Duration) {
        let g = self.inner.0.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self.inner.1.wait_timeout(g, d);
    }

    /// Takes a pending check request.
    pub fn take_check(&self) -> bool {
        self.with(|s| std::mem::take(&mut s.check_now))
    }

    /// Whether the agent says the node is idle.
    pub fn idle(&self) -> bool {
        self.with(|s| s.idle_since.is_some())
    }

    /// Answers one request (the first line and the body).
    pub fn answer(&self, r: Request) -> String {
        let body = self.with(|s| match r {
            Request::Status => serde_json::json!({
                "node": serde_json::from_str::<serde_json::Value>(&s.status)
                    .unwrap_or(serde_json::Value::Null),
                "waiting_for_reboot": s.waiting,
                "agent_idle": s.idle_since.is_some(),
            })
            .to_string(),
            Request::Check => {
                s.check_now = true;
                "checking the repository now".into()
            }
            Request::Idle => {
                s.idle_since.get_or_insert_with(Instant::now);
                match &s.waiting {
                    Some(v) => format!("idle noted: rebooting to run {v}"),
                    None => "idle noted: no update waiting for a reboot".into(),
                }
            }
            Request::Busy => {
                s.idle_since = None;
                "busy noted: an update's reboot waits".into()
            }
        });
        self.inner.1.notify_all();
        format!("ok\n{body}\n")
    }

    /// Serves one connection: a bounded line, read with a deadline.
    pub fn serve_one(&self, mut s: UnixStream) {
        let _ = s.set_read_timeout(Some(CLIENT_TIMEOUT));
        let _ = s.set_write_timeout(Some(CLIENT_TIMEOUT));
        let mut line = String::new();
        let read = BufReader::new((&s).take(MAX_REQUEST)).read_line(&mut line);
        let answer = match read {
            Ok(_) if !line.ends_with('\n') && line.len() as u64 >= MAX_REQUEST => {
                format!("error: request longer than {MAX_REQUEST} bytes\n")
            }
            Ok(_) => match Request::parse(&line) {
                Ok(r) => self.answer(r),
                Err(e) => format!("error: {e}\n"),
            },
            Err(e) => format!("error: reading the request: {e}\n"),
        };
        let _ = s.write_all(answer.as_bytes());
    }

    /// Binds `path` (0600) and serves it on a thread, one connection at a
    /// time (each bounded by [`CLIENT_TIMEOUT`]).
    pub fn spawn(&self, path: &Path) -> std::io::Result<()> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let _ = std::fs::remove_file(path);
        let l = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let api = self.clone();
        std::thread::Builder::new()
            .name("api".into())
            .spawn(move || {
                for c in l.incoming().flatten() {
                    api.serve_one(c);
                }
            })?;
        Ok(())
    }
}

/// Sends one request to the API at `path` and returns the body, or the
/// daemon's error.
pub fn request(path: &Path, what: &str) -> Result<String, String> {
    let mut s = UnixStream::connect(path).map_err(|e| {
        format!(
            "connecting to {}: {e} (is fluxnode-ota daemon running?)",
            path.display()
        )
    })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    s.write_all(format!("{what}\n").as_bytes())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = String::new();
    s.take(1 << 20)
        .read_to_string(&mut out)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    match out.split_once('\n') {
        Some(("ok", body)) => Ok(body.trim_end().to_string()),
        Some((first, _)) => Err(first.strip_prefix("error: ").unwrap_or(first).to_string()),
        None => Err(format!("{}: no answer", path.display())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn requests_parse_and_others_are_refused_by_name() {
        assert_eq!(Request::parse("status\n"), Ok(Request::Status));
        assert_eq!(Request::parse(" idle "), Ok(Request::Idle));
        assert!(Request::parse("").unwrap_err().contains("one of"));
        assert!(Request::parse("reboot").unwrap_err().contains("\"reboot\""));
    }

    #[test]
    fn the_socket_answers_and_bounds_what_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ota.sock");
        let api = Api::default();
        api.with(|s| {
            s.status = "{\"running\":\"0.1.0\"}".into();
            s.waiting = Some("0.2.0".into());
        });
        api.spawn(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let st: serde_json::Value =
            serde_json::from_str(&request(&path, "status").unwrap()).unwrap();
        assert_eq!(st["node"]["running"], "0.1.0");
        assert_eq!(st["waiting_for_reboot"], "0.2.0");
        assert_eq!(st["agent_idle"], false);
        assert!(!api.idle());
        assert_eq!(
            request(&path, "idle").unwrap(),
            "idle noted: rebooting to run 0.2.0"
        );
        assert!(api.idle());
        request(&path, "busy").unwrap();
        assert!(!api.idle());
        request(&path, "check").unwrap();
        assert!(api.take_check() && !api.take_check());
        assert!(request(&path, "poweroff")
            .unwrap_err()
            .contains("unknown request"));
        // A flood without a newline is cut at the bound and refused (the
        // answer, or a reset when the server closes on unread bytes).
        let long = "x".repeat(10_000);
        assert!(request(&path, &long).is_err());
        let mut s = UnixStream::connect(&path).unwrap();
        s.write_all(&[b'y'; 300]).unwrap();
        let mut a = String::new();
        let _ = s.read_to_string(&mut a);
        assert!(a.is_empty() || a.contains("longer than 256 bytes"), "{a}");
        // A client that never speaks is dropped after the deadline, and
        // the next one is served.
        let silent = UnixStream::connect(&path).unwrap();
        let t0 = Instant::now();
        assert!(request(&path, "status").unwrap().contains("0.1.0"));
        assert!(t0.elapsed() < Duration::from_secs(10));
        drop(silent);
    }
}
