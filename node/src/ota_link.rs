//! Tells the update client whether the node is idle.
//!
//! The update client (`fluxnode-ota`) may hold an update's reboot until
//! the agent says nothing would be disturbed (`reboot = { when = "idle" }`
//! in its settings). The agent says `busy` on the client's local API
//! (`/run/fluxnode/ota.sock`, one request line per connection, the answer
//! `ok` or `error: WHY` first) before an attested benchmark session, which
//! a reboot would waste, and `idle` once the session is over. Apps will be
//! a second reason to be busy.
//!
//! Nothing here can stop the agent: no update client (no socket) is
//! normal on an image without one, and a client that does not answer
//! costs at most [`TIMEOUT`] per request. The update client bounds its own
//! wait too (`max_wait_s`), so a dead agent delays a reboot, never stops it.

use std::io::{Read as _, Write as _};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where `fluxnode-ota daemon` serves its local API.
pub const DEFAULT_SOCKET: &str = "/run/fluxnode/ota.sock";

/// The longest wait for the update client to take a request or answer it.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// How often an unchanged activity is said again: the update client keeps
/// it in memory only, and a restarted client has forgotten it.
pub const RESAY: Duration = Duration::from_secs(60);

/// The longest answer read.
const MAX_ANSWER: u64 = 4096;

/// What the agent tells the update client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Nothing would be disturbed by a reboot.
    Idle,
    /// A reboot now would waste work (a benchmark session, apps).
    Busy,
}

impl Activity {
    /// The API's request word.
    pub fn request(self) -> &'static str {
        match self {
            Activity::Idle => "idle",
            Activity::Busy => "busy",
        }
    }
}

/// Why the update client was not told.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Nothing listens at the socket (no update client, or not started yet).
    #[error("no update client at {path}: {source}")]
    Absent {
        /// The socket.
        path: PathBuf,
        /// The connect error.
        source: std::io::Error,
    },
    /// Writing the request or reading the answer failed or timed out.
    #[error("talking to the update client at {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The client answered with an error.
    #[error("the update client at {path} refused {request:?}: {reason}")]
    Refused {
        /// The socket.
        path: PathBuf,
        /// What was asked.
        request: &'static str,
        /// Its `error:` line.
        reason: String,
    },
    /// The connection closed without a first line.
    #[error("the update client at {path} closed the connection without an answer")]
    NoAnswer {
        /// The socket.
        path: PathBuf,
    },
}

/// Says `what` once on the API at `path`; returns the answer's body.
pub fn tell(path: &Path, what: Activity) -> Result<String, LinkError> {
    let io = |source| LinkError::Io {
        path: path.into(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(|source| LinkError::Absent {
        path: path.into(),
        source,
    })?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    s.write_all(format!("{}\n", what.request()).as_bytes())
        .map_err(io)?;
    let mut answer = Vec::new();
    (&mut s)
        .take(MAX_ANSWER)
        .read_to_end(&mut answer)
        .map_err(io)?;
    let answer = String::from_utf8_lossy(&answer);
    match answer.split_once('\n') {
        Some(("ok", body)) => Ok(body.trim_end().to_string()),
        Some((first, _)) => Err(LinkError::Refused {
            path: path.into(),
            request: what.request(),
            reason: first.strip_prefix("error: ").unwrap_or(first).to_string(),
        }),
        None => Err(LinkError::NoAnswer { path: path.into() }),
    }
}

/// The agent's side: says an activity when it changes, and again every
/// [`RESAY`]; logs what goes wrong and never fails the caller.
#[derive(Debug)]
pub struct OtaLink {
    path: Option<PathBuf>,
    said: Option<(Activity, Instant)>,
}

impl OtaLink {
    /// A link to the API at `path`; `None` says nothing, ever.
    pub fn new(path: Option<PathBuf>) -> Self {
        OtaLink { path, said: None }
    }

    /// What was last said and taken, if anything.
    pub fn said(&self) -> Option<Activity> {
        self.said.map(|(a, _)| a)
    }

    /// Says `what` unless it was said, and taken, less than [`RESAY`] ago.
    pub fn say(&mut self, what: Activity) {
        let Some(path) = &self.path else { return };
        if self
            .said
            .is_some_and(|(a, at)| a == what && at.elapsed() < RESAY)
        {
            return;
        }
        match tell(path, what) {
            Ok(body) => {
                tracing::debug!("told the update client {}: {body}", what.request());
                self.said = Some((what, Instant::now()));
            }
            Err(e) => {
                // Said again on the next turn: the client may come up later.
                self.said = None;
                match e {
                    LinkError::Absent { .. } => tracing::debug!("{e}"),
                    _ => tracing::warn!("{e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::BufRead as _;
    use std::os::unix::net::UnixListener;
    use std::sync::{Arc, Mutex};

    /// A recording fake of the update client's API: answers `ok` to each
    /// request line and keeps the lines.
    fn recording(path: &Path) -> Arc<Mutex<Vec<String>>> {
        let l = UnixListener::bind(path).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let keep = seen.clone();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let mut line = String::new();
                let _ = std::io::BufReader::new(&c).read_line(&mut line);
                keep.lock().unwrap().push(line.trim().to_string());
                let _ = (&c).write_all(b"ok\nnoted\n");
            }
        });
        seen
    }

    #[test]
    fn says_changes_once_and_the_same_again_only_after_a_while() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ota.sock");
        let seen = recording(&path);
        let mut link = OtaLink::new(Some(path));
        link.say(Activity::Busy);
        link.say(Activity::Busy);
        link.say(Activity::Idle);
        link.say(Activity::Idle);
        assert_eq!(*seen.lock().unwrap(), ["busy", "idle"]);
        assert_eq!(link.said(), Some(Activity::Idle));
        // As if RESAY had passed.
        link.said = Some((Activity::Idle, Instant::now() - RESAY));
        link.say(Activity::Idle);
        assert_eq!(seen.lock().unwrap().len(), 3);
    }

    #[test]
    fn no_client_is_no_error_and_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ota.sock");
        let mut link = OtaLink::new(Some(path.clone()));
        link.say(Activity::Idle);
        assert_eq!(link.said(), None);
        assert!(matches!(
            tell(&path, Activity::Idle),
            Err(LinkError::Absent { .. })
        ));
        // The client comes up: the next turn tells it.
        let seen = recording(&path);
        link.say(Activity::Idle);
        assert_eq!(*seen.lock().unwrap(), ["idle"]);
        // No socket configured: nothing, ever.
        let mut none = OtaLink::new(None);
        none.say(Activity::Busy);
        assert_eq!(none.said(), None);
    }

    #[test]
    fn a_client_that_never_answers_costs_at_most_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ota.sock");
        let l = UnixListener::bind(&path).unwrap();
        // Accepts and holds the connection, reading nothing and answering
        // nothing.
        let held = std::thread::spawn(move || {
            let c = l.accept().unwrap();
            std::thread::sleep(TIMEOUT * 2);
            drop(c);
        });
        let t0 = Instant::now();
        let e = tell(&path, Activity::Busy).unwrap_err();
        assert!(matches!(e, LinkError::Io { .. }), "{e}");
        assert!(t0.elapsed() < TIMEOUT * 2, "{:?}", t0.elapsed());
        assert!(e.to_string().contains("ota.sock"), "{e}");
        held.join().unwrap();
    }

    #[test]
    fn errors_and_floods_are_reported_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ota.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let mut answers = [
                b"error: unknown request\n".to_vec(),
                Vec::new(),
                vec![b'x'; 1 << 20],
            ]
            .into_iter();
            for c in l.incoming().flatten() {
                let mut line = String::new();
                let _ = std::io::BufReader::new(&c).read_line(&mut line);
                let _ = (&c).write_all(&answers.next().unwrap_or_default());
            }
        });
        let e = tell(&path, Activity::Idle).unwrap_err();
        assert!(
            matches!(&e, LinkError::Refused { reason, .. } if reason == "unknown request"),
            "{e}"
        );
        assert!(matches!(
            tell(&path, Activity::Idle),
            Err(LinkError::NoAnswer { .. })
        ));
        // A megabyte with no newline: read up to the bound, then refused
        // as no answer.
        assert!(matches!(
            tell(&path, Activity::Idle),
            Err(LinkError::NoAnswer { .. })
        ));
    }
}
