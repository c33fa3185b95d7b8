//! The app daemon's local API: one JSON request per line on a Unix socket
//! (mode 0600: root only), one JSON reply per line. `logs` with
//! `follow` keeps sending `{"line": ...}` until the client goes away.
//!
//! The requests are `fluxnode_apps::api::Request`.
//!
//! Bounded against a hostile or broken client: a request line is at most
//! `MAX_REQUEST` bytes and must arrive within [`REQUEST_TIMEOUT`]; at
//! most [`MAX_CLIENTS`] connections are served at once (more are told so
//! and closed).

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use fluxnode_apps::api::{self, Request, MAX_LOG_LINES, MAX_REQUEST};
use serde_json::{json, Value};

use super::manager::Manager;

/// A request must arrive within this.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once.
pub const MAX_CLIENTS: usize = 32;

/// How the server bounds its clients.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// A request line must arrive within this.
    pub request_timeout: Duration,
    /// Connections served at once; more are told so and closed.
    pub max_clients: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            request_timeout: REQUEST_TIMEOUT,
            max_clients: MAX_CLIENTS,
        }
    }
}

fn err(e: impl std::fmt::Display) -> Value {
    json!({"ok": false, "error": e.to_string()})
}

/// Answers one request (all but a following `logs`).
pub fn answer(mgr: &Arc<Manager>, req: Request) -> Value {
    match req {
        Request::Deploy { spec } => match mgr.deploy(*spec) {
            Ok(app) => json!({"ok": true, "app": mgr.inspect(&app)}),
            Err(e) => err(e),
        },
        Request::Ls {} => {
            let mut v = mgr.list();
            v["ok"] = json!(true);
            v
        }
        Request::Inspect { name } => match mgr.get(&name) {
            Ok(app) => json!({"ok": true, "app": mgr.inspect(&app)}),
            Err(e) => err(e),
        },
        Request::Logs { name, lines, .. } => match mgr.get(&name) {
            Ok(app) => {
                let (l, _) = app.log.tail(lines.unwrap_or(100).min(MAX_LOG_LINES));
                json!({"ok": true, "lines": l})
            }
            Err(e) => err(e),
        },
        Request::Stop { name } => match mgr.stop(&name) {
            Ok(app) => json!({"ok": true, "app": mgr.inspect(&app)}),
            Err(e) => err(e),
        },
        Request::Start { name } => match mgr.start(&name) {
            Ok(app) => json!({"ok": true, "app": mgr.inspect(&app)}),
            Err(e) => err(e),
        },
        Request::Rm { name } => match mgr.rm(&name) {
            Ok(()) => json!({"ok": true}),
            Err(e) => err(e),
        },
    }
}

fn send(s: &mut UnixStream, v: &Value) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(v).map_err(std::io::Error::other)?;
    line.push(b'\n');
    s.write_all(&line)
}

fn serve_one(mgr: &Arc<Manager>, mut s: UnixStream, limits: Limits) -> std::io::Result<()> {
    s.set_read_timeout(Some(limits.request_timeout))?;
    s.set_write_timeout(Some(Duration::from_secs(30)))?;
    let mut line = Vec::new();
    let read = BufReader::new((&s).take(MAX_REQUEST as u64)).read_until(b'\n', &mut line);
    if let Err(e) = read {
        if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            return send(
                &mut s,
                &err(format!(
                    "no request within {} s",
                    limits.request_timeout.as_secs_f64()
                )),
            );
        }
        return Err(e);
    }
    let req = match api::parse(&line) {
        Ok(r) => r,
        Err(e) => return send(&mut s, &err(e)),
    };
    if let Request::Logs {
        name,
        lines,
        follow: true,
    } = &req
    {
        let app = match mgr.get(name) {
            Ok(a) => a,
            Err(e) => return send(&mut s, &err(e)),
        };
        let (old, mut next) = app.log.tail(lines.unwrap_or(100).min(MAX_LOG_LINES));
        send(&mut s, &json!({"ok": true, "lines": old}))?;
        loop {
            let (new, n) = app.log.since(next, Duration::from_secs(5));
            next = n;
            // An empty line now and then finds a client that went away.
            for l in if new.is_empty() { vec![] } else { new } {
                send(&mut s, &json!({"line": l}))?;
            }
            send(&mut s, &json!({"tick": true}))?;
            if mgr.get(name).is_err() {
                return Ok(());
            }
        }
    }
    send(&mut s, &answer(mgr, req))
}

/// Serves the API on `path` until the process ends.
pub fn serve(mgr: Arc<Manager>, path: &Path, limits: Limits) -> std::io::Result<()> {
    let _ = std::fs::remove_file(path);
    // Created 0600, not chmod-ed after: no moment where others may connect.
    // SAFETY: umask only swaps the process's mask; restored right after.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = bound?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let busy = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name("api".into())
        .spawn(move || {
            for conn in l.incoming() {
                let Ok(mut s) = conn else { continue };
                if busy.fetch_add(1, Ordering::SeqCst) >= limits.max_clients {
                    busy.fetch_sub(1, Ordering::SeqCst);
                    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = send(&mut s, &err("too many clients; try again"));
                    continue;
                }
                let (m, b) = (Arc::clone(&mgr), Arc::clone(&busy));
                let spawned =
                    std::thread::Builder::new()
                        .name("api-client".into())
                        .spawn(move || {
                            let _ = serve_one(&m, s, limits);
                            b.fetch_sub(1, Ordering::SeqCst);
                        });
                if spawned.is_err() {
                    busy.fetch_sub(1, Ordering::SeqCst);
                }
            }
        })?;
    Ok(())
}

/// A client of the API (the CLI).
#[derive(Debug)]
pub struct Client {
    path: std::path::PathBuf,
}

/// The API could not be reached or said no.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No daemon.
    #[error("cannot reach the app daemon at {path}: {source} (is the `appd` service running? `fluxnode-init ctl status appd`)")]
    Connect {
        /// The socket.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The conversation broke.
    #[error("talking to the app daemon at {path}: {why}")]
    Io {
        /// The socket.
        path: std::path::PathBuf,
        /// Why.
        why: String,
    },
    /// The daemon refused.
    #[error("{0}")]
    Refused(String),
}

impl Client {
    /// A client of the socket at `path`.
    pub fn new(path: &Path) -> Client {
        Client { path: path.into() }
    }

    fn connect(&self, req: &Value) -> Result<BufReader<UnixStream>, ClientError> {
        let mut s = UnixStream::connect(&self.path).map_err(|source| ClientError::Connect {
            path: self.path.clone(),
            source,
        })?;
        send(&mut s, req).map_err(|e| self.io(e))?;
        Ok(BufReader::new(s))
    }

    fn io(&self, e: impl std::fmt::Display) -> ClientError {
        ClientError::Io {
            path: self.path.clone(),
            why: e.to_string(),
        }
    }

    fn read(&self, r: &mut BufReader<UnixStream>) -> Result<Option<Value>, ClientError> {
        let mut line = Vec::new();
        let n = r
            .by_ref()
            .take(16 << 20)
            .read_until(b'\n', &mut line)
            .map_err(|e| self.io(e))?;
        if n == 0 {
            return Ok(None);
        }
        serde_json::from_slice(&line)
            .map(Some)
            .map_err(|e| self.io(e))
    }

    /// Sends `req` and returns the reply, or the daemon's refusal.
    pub fn call(&self, req: &Value) -> Result<Value, ClientError> {
        let mut r = self.connect(req)?;
        r.get_ref()
            .set_read_timeout(Some(Duration::from_secs(120)))
            .map_err(|e| self.io(e))?;
        let v = self
            .read(&mut r)?
            .ok_or_else(|| self.io("the daemon closed the connection"))?;
        if v["ok"] == json!(true) {
            Ok(v)
        } else {
            Err(ClientError::Refused(
                v["error"].as_str().unwrap_or("refused").to_string(),
            ))
        }
    }

    /// Follows an app's log, calling `each` per line, until the daemon
    /// ends it or `each` returns false.
    pub fn follow(
        &self,
        name: &str,
        lines: usize,
        each: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let mut r =
            self.connect(&json!({"op": "logs", "name": name, "lines": lines, "follow": true}))?;
        let first = self
            .read(&mut r)?
            .ok_or_else(|| self.io("the daemon closed the connection"))?;
        if first["ok"] != json!(true) {
            return Err(ClientError::Refused(
                first["error"].as_str().unwrap_or("refused").to_string(),
            ));
        }
        for l in first["lines"].as_array().into_iter().flatten() {
            if !each(l.as_str().unwrap_or_default()) {
                return Ok(());
            }
        }
        while let Some(v) = self.read(&mut r)? {
            if let Some(l) = v["line"].as_str() {
                if !each(l) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
