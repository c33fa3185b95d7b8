//! A small HTTP/1.1 file server that misbehaves on request: for testing
//! what a download client does with servers and networks that are not
//! [`crate::nginx`].
//!
//! ```no_run
//! use fluxnode_testkit::faulty_http::{Fault, FaultRule, FaultyHttp};
//! let srv = FaultyHttp::start_with("/some/repo", [FaultRule::new("root.img", Fault::DropOnce { after: 4096 })]).unwrap();
//! let url = srv.url("targets/root.img"); // http://127.0.0.1:P/targets/root.img
//! // ... the client downloads, resumes with a range request ...
//! assert_eq!(srv.stats("/targets/root.img").requests, 2);
//! srv.faults().set(vec![FaultRule::new("", Fault::Status(503))]); // every path now
//! ```
//!
//! It serves the files of one directory on a free port of 127.0.0.1 to
//! `GET` and `HEAD` (anything else: 405), one thread a connection, one
//! request a connection (`Connection: close`). `Range: bytes=a-b`, `a-`
//! and `-n` get 206 with `Content-Range`; a range past the end gets 416;
//! a malformed or multi-range header is ignored (200, the whole file), as
//! RFC 9110 allows. Bounds: a request head of at most [`MAX_HEAD`] bytes
//! (else 431), at most [`MAX_CONNECTIONS`] open connections (more are
//! closed at once), 30 s to read a head or write a chunk; a path with a
//! `..` segment gets 400, one that leaves the directory through a
//! symbolic link 403.
//!
//! Faults ([`Fault`]) apply to requests whose (decoded) path contains a
//! rule's substring; they are set at start and can be changed at any time
//! through [`FaultyHttp::faults`]. Every request is counted per path
//! ([`FaultyHttp::stats`]) and logged ([`FaultyHttp::served`]) before its
//! response is written, so a client that has read a response always finds
//! it counted.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

/// The longest request head (request line and headers) read, bytes.
pub const MAX_HEAD: usize = 16 * 1024;
/// The most connections open at once; more are closed unanswered.
pub const MAX_CONNECTIONS: usize = 256;
/// How long reading a request head, or writing one chunk, may take.
const IO_TIMEOUT: Duration = Duration::from_secs(30);
/// The size of the chunks a body is read and written in.
const CHUNK: usize = 64 * 1024;

/// What goes wrong with a matching request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Answer a range request with 200 and the whole file (and no
    /// `Accept-Ranges`), as a server without range support does.
    IgnoreRange,
    /// Send the headers with the full `Content-Length`, then close the
    /// connection after `after` bytes of the body (every time).
    Truncate {
        /// Body bytes sent before closing.
        after: u64,
    },
    /// [`Fault::Truncate`] once: the rule is removed when it first cuts
    /// a body short (a body of at most `after` bytes, or a `HEAD`, leaves
    /// it in place); later requests are served normally.
    DropOnce {
        /// Body bytes sent before closing.
        after: u64,
    },
    /// Flip (XOR 0xFF) the byte at this offset of the file in whatever
    /// is served of it (nothing when the range served misses it).
    CorruptByte {
        /// The offset in the file.
        offset: u64,
    },
    /// Read the request, then never answer; the connection is closed
    /// when the server is dropped.
    Stall,
    /// Answer with this status and an empty body.
    Status(u16),
}

/// One fault and the requests it applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultRule {
    /// Applies to requests whose decoded path (`/targets/x`, no query)
    /// contains this; `""` matches every request.
    pub path_contains: String,
    /// What goes wrong.
    pub fault: Fault,
}

impl FaultRule {
    /// A rule for the paths containing `path_contains`.
    pub fn new(path_contains: impl Into<String>, fault: Fault) -> Self {
        FaultRule {
            path_contains: path_contains.into(),
            fault,
        }
    }
}

/// The server's rules, shared: changes apply to the next request.
/// Every matching rule applies (the first [`Fault::Stall`] or
/// [`Fault::Status`] wins over the rest; several truncations: the
/// shortest; several corruptions: all).
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<Mutex<Vec<FaultRule>>>);

impl Faults {
    /// Replaces all rules.
    pub fn set(&self, rules: Vec<FaultRule>) {
        *lock(&self.0) = rules;
    }

    /// Adds one rule.
    pub fn add(&self, path_contains: impl Into<String>, fault: Fault) {
        lock(&self.0).push(FaultRule::new(path_contains, fault));
    }

    /// Removes every rule: the server behaves from now on.
    pub fn clear(&self) {
        lock(&self.0).clear();
    }

    /// The rules now (a fired [`Fault::DropOnce`] is gone).
    pub fn rules(&self) -> Vec<FaultRule> {
        lock(&self.0).clone()
    }
}

/// What one path (or all of them) was asked and sent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathStats {
    /// Requests (every method and outcome, stalled ones too).
    pub requests: u64,
    /// Body bytes sent: what the server wrote or began to write, a
    /// truncated body's first bytes only (an over-count only when the
    /// client hung up first).
    pub body_bytes: u64,
}

/// One request, as the server answered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// `GET`, `HEAD`, ...
    pub method: String,
    /// The decoded path (`/targets/x`), or the raw target when it could
    /// not be decoded.
    pub path: String,
    /// The `Range` header as sent, if any.
    pub range: Option<String>,
    /// The status sent; `None`: stalled, never answered.
    pub status: Option<u16>,
    /// The `Content-Length` sent (0 for `HEAD`'s body).
    pub content_length: u64,
    /// The body bytes sent: less than `content_length` when truncated.
    pub body_bytes: u64,
}

#[derive(Debug, Default)]
struct Stats {
    per_path: HashMap<String, PathStats>,
    log: Vec<Served>,
}

#[derive(Debug, Default)]
struct Conns {
    next: u64,
    open: HashMap<u64, TcpStream>,
    threads: Vec<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    faults: Faults,
    stats: Mutex<Stats>,
    stopped: Mutex<bool>,
    stop: Condvar,
    conns: Mutex<Conns>,
}

impl Shared {
    fn is_stopped(&self) -> bool {
        *lock(&self.stopped)
    }
}

/// The running server; stopped on drop (every connection closed, stalled
/// ones included, and every thread joined).
#[derive(Debug)]
pub struct FaultyHttp {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl FaultyHttp {
    /// Serves `root` (a directory) without faults.
    pub fn start(root: impl AsRef<Path>) -> io::Result<Self> {
        Self::start_with(root, [])
    }

    /// Serves `root` with these fault rules.
    pub fn start_with(
        root: impl AsRef<Path>,
        rules: impl IntoIterator<Item = FaultRule>,
    ) -> io::Result<Self> {
        let root = root.as_ref().canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            root,
            faults: Faults(Arc::new(Mutex::new(rules.into_iter().collect()))),
            stats: Mutex::default(),
            stopped: Mutex::new(false),
            stop: Condvar::new(),
            conns: Mutex::default(),
        });
        let sh = Arc::clone(&shared);
        let acceptor = std::thread::Builder::new()
            .name("faulty-http-accept".into())
            .spawn(move || accept_loop(&sh, &listener))?;
        Ok(FaultyHttp {
            addr,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The URL of a file of the directory (`a/b` or `/a/b`).
    pub fn url(&self, path: &str) -> String {
        format!("{}/{}", self.base_url(), path.trim_start_matches('/'))
    }

    /// The address listened on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The served directory (canonical).
    pub fn root(&self) -> &Path {
        &self.shared.root
    }

    /// The fault rules, to change while the server runs.
    pub fn faults(&self) -> Faults {
        self.shared.faults.clone()
    }

    /// What the path (`/a/b` or `a/b`, decoded, no query) was asked and
    /// sent so far.
    pub fn stats(&self, path: &str) -> PathStats {
        let key = format!("/{}", path.trim_start_matches('/'));
        lock(&self.shared.stats)
            .per_path
            .get(&key)
            .copied()
            .unwrap_or_default()
    }

    /// The sums over every path.
    pub fn total(&self) -> PathStats {
        lock(&self.shared.stats)
            .per_path
            .values()
            .fold(PathStats::default(), |a, s| PathStats {
                requests: a.requests + s.requests,
                body_bytes: a.body_bytes + s.body_bytes,
            })
    }

    /// Every request so far, in the order they were answered.
    pub fn served(&self) -> Vec<Served> {
        lock(&self.shared.stats).log.clone()
    }

    /// Forgets the counts and the log.
    pub fn reset_stats(&self) {
        *lock(&self.shared.stats) = Stats::default();
    }
}

impl Drop for FaultyHttp {
    fn drop(&mut self) {
        *lock(&self.shared.stopped) = true;
        self.shared.stop.notify_all();
        // Wake the acceptor, which then sees `stopped`. Should that fail,
        // it is left behind rather than waited for.
        let woke = TcpStream::connect_timeout(&self.addr, Duration::from_secs(5)).is_ok();
        if let Some(a) = self.acceptor.take() {
            if woke {
                let _ = a.join();
            }
        }
        let threads = {
            let mut c = lock(&self.shared.conns);
            for s in c.open.values() {
                let _ = s.shutdown(Shutdown::Both);
            }
            std::mem::take(&mut c.threads)
        };
        for t in threads {
            let _ = t.join();
        }
    }
}

/// A poisoned lock still holds good data here: a panicking connection
/// thread leaves nothing half-changed.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn accept_loop(sh: &Arc<Shared>, listener: &TcpListener) {
    for conn in listener.incoming() {
        if sh.is_stopped() {
            return;
        }
        let Ok(stream) = conn else {
            // Out of descriptors, say: do not spin.
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        let mut c = lock(&sh.conns);
        c.threads.retain(|t| !t.is_finished());
        if c.open.len() >= MAX_CONNECTIONS {
            continue; // closes it
        }
        let Ok(clone) = stream.try_clone() else {
            continue;
        };
        let id = c.next;
        c.next += 1;
        c.open.insert(id, clone);
        let sh2 = Arc::clone(sh);
        let spawned = std::thread::Builder::new()
            .name("faulty-http-conn".into())
            .spawn(move || {
                handle(&sh2, stream);
                lock(&sh2.conns).open.remove(&id);
            });
        match spawned {
            Ok(t) => c.threads.push(t),
            Err(_) => {
                c.open.remove(&id);
            }
        }
    }
}

/// A parsed request head.
#[derive(Debug)]
struct Request {
    method: String,
    /// Decoded path, or the raw target when `bad` is set.
    path: String,
    range: Option<String>,
    /// A status to answer with at once (400, 405).
    bad: Option<u16>,
}

fn handle(sh: &Shared, mut s: TcpStream) {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let _ = s.set_nodelay(true);
    let head = match read_head(&mut s) {
        Ok(Some(h)) => h,
        Ok(None) => {
            let _ = write_head(&mut s, 431, 0, &[]);
            drain(&mut s);
            return;
        }
        Err(_) => return,
    };
    let Some(req) = parse_head(&head) else {
        let _ = write_head(&mut s, 400, 0, &[]);
        drain(&mut s);
        return;
    };
    if let Some(status) = req.bad {
        record(sh, &req, Some(status), 0, 0);
        let _ = write_head(&mut s, status, 0, &[]);
        drain(&mut s);
        return;
    }
    serve(sh, s, &req);
}

/// After an early answer: reads (a little of) what the client still
/// sends, so that closing does not reset the connection and lose the
/// answer before the client has read it.
fn drain(s: &mut TcpStream) {
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 4096];
    let mut left = 1usize << 20;
    while left > 0 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// What the matching rules make of one request.
#[derive(Debug, Default)]
struct Plan {
    stall: bool,
    status: Option<u16>,
    ignore_range: bool,
    corrupt: Vec<u64>,
    truncate: Option<u64>,
}

/// Applies the rules to a request for `path` whose body would be
/// `body_len` bytes; removes a [`Fault::DropOnce`] that fires.
fn plan(faults: &Faults, path: &str, body_len: Option<u64>) -> Plan {
    let mut rules = lock(&faults.0);
    let mut p = Plan::default();
    let mut fired = None;
    for (i, r) in rules.iter().enumerate() {
        if !path.contains(&r.path_contains) {
            continue;
        }
        match r.fault {
            Fault::Stall => {
                if p.status.is_none() {
                    p.stall = true;
                }
            }
            Fault::Status(code) => {
                if !p.stall && p.status.is_none() {
                    p.status = Some(code);
                }
            }
            Fault::IgnoreRange => p.ignore_range = true,
            Fault::CorruptByte { offset } => p.corrupt.push(offset),
            Fault::Truncate { after } => {
                p.truncate = Some(p.truncate.map_or(after, |t| t.min(after)));
            }
            Fault::DropOnce { after } => {
                if fired.is_none() && body_len.is_some_and(|l| l > after) {
                    fired = Some(i);
                    p.truncate = Some(p.truncate.map_or(after, |t| t.min(after)));
                }
            }
        }
    }
    // Only a body actually cut short uses it up.
    if let Some(i) = fired {
        if !p.stall && p.status.is_none() {
            rules.remove(i);
        }
    }
    p
}

fn serve(sh: &Shared, mut s: TcpStream, req: &Request) {
    let file = open(&sh.root, &req.path);
    let len = file.as_ref().ok().map(|(_, l)| *l);
    // The body the response would have without faults, for DropOnce.
    let range = req
        .range
        .as_deref()
        .map(|r| parse_range(r, len.unwrap_or(0)));
    let natural_body = match (len, &range) {
        _ if req.method == "HEAD" => None,
        (Some(_), Some(Range::Bytes(a, b))) => Some(b - a + 1),
        (Some(_), Some(Range::Unsatisfiable)) => None,
        (Some(l), _) => Some(l),
        (None, _) => None,
    };
    let p = plan(&sh.faults, &req.path, natural_body);
    if p.stall {
        record(sh, req, None, 0, 0);
        let mut stopped = lock(&sh.stopped);
        while !*stopped {
            stopped = sh.stop.wait(stopped).unwrap_or_else(|e| e.into_inner());
        }
        return;
    }
    if let Some(code) = p.status {
        record(sh, req, Some(code), 0, 0);
        let _ = write_head(&mut s, code, 0, &[]);
        return;
    }
    let (mut f, len) = match file {
        Ok(f) => f,
        Err(code) => {
            record(sh, req, Some(code), 0, 0);
            let _ = write_head(&mut s, code, 0, &[]);
            return;
        }
    };
    let range = if p.ignore_range { None } else { range };
    let mut headers = Vec::new();
    if !p.ignore_range {
        headers.push("Accept-Ranges: bytes".to_string());
    }
    let (status, start, count) = match range {
        Some(Range::Bytes(a, b)) => {
            headers.push(format!("Content-Range: bytes {a}-{b}/{len}"));
            (206, a, b - a + 1)
        }
        Some(Range::Unsatisfiable) => {
            headers.push(format!("Content-Range: bytes */{len}"));
            record(sh, req, Some(416), 0, 0);
            let _ = write_head(&mut s, 416, 0, &headers);
            return;
        }
        Some(Range::Ignored) | None => (200, 0, len),
    };
    let head_only = req.method == "HEAD";
    let send = if head_only {
        0
    } else {
        p.truncate.map_or(count, |t| t.min(count))
    };
    record(sh, req, Some(status), count, send);
    if write_head(&mut s, status, count, &headers).is_err() || head_only {
        return;
    }
    if f.seek(SeekFrom::Start(start)).is_err() {
        return;
    }
    let mut buf = vec![0u8; CHUNK];
    let mut pos = start;
    let end = start + send;
    while pos < end {
        let want = usize::try_from(end - pos).map_or(CHUNK, |r| r.min(CHUNK));
        let n = match f.read(&mut buf[..want]) {
            Ok(0) | Err(_) => break, // the file shrank under us: close
            Ok(n) => n,
        };
        for &o in &p.corrupt {
            if o >= pos && o < pos + n as u64 {
                let i = (o - pos) as usize;
                buf[i] ^= 0xFF;
            }
        }
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
        pos += n as u64;
    }
    let _ = s.flush();
    // EOF to the client (a truncated body ends here, short).
    let _ = s.shutdown(Shutdown::Write);
}

fn record(sh: &Shared, req: &Request, status: Option<u16>, content_length: u64, sent: u64) {
    let mut st = lock(&sh.stats);
    let e = st.per_path.entry(req.path.clone()).or_default();
    e.requests += 1;
    e.body_bytes += sent;
    st.log.push(Served {
        method: req.method.clone(),
        path: req.path.clone(),
        range: req.range.clone(),
        status,
        content_length,
        body_bytes: sent,
    });
}

/// The file for a decoded path and its length, or the status to answer.
fn open(root: &Path, path: &str) -> Result<(File, u64), u16> {
    let full = root.join(path.trim_start_matches('/'));
    let real = full.canonicalize().map_err(|_| 404u16)?;
    if !real.starts_with(root) {
        return Err(403);
    }
    let f = File::open(&real).map_err(|_| 404u16)?;
    let m = f.metadata().map_err(|_| 404u16)?;
    if !m.is_file() {
        return Err(404);
    }
    Ok((f, m.len()))
}

/// Reads up to the end of the head (`\r\n\r\n`): `None` when it is longer
/// than [`MAX_HEAD`]; an error when the client closes or times out first.
fn read_head(s: &mut TcpStream) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let from = head.len().saturating_sub(3);
        head.extend_from_slice(&buf[..n]);
        if let Some(i) = head[from..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = from + i;
            if end > MAX_HEAD {
                return Ok(None);
            }
            head.truncate(end);
            return Ok(Some(head));
        }
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
    }
}

/// The request in a head; `None` when it is not an HTTP/1.x request.
fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target, version) = (first.next()?, first.next()?, first.next()?);
    if first.next().is_some() || !version.starts_with("HTTP/1.") || method.is_empty() {
        return None;
    }
    let mut range = None;
    for l in lines {
        let (name, value) = l.split_once(':')?;
        if name.trim().eq_ignore_ascii_case("range") {
            range = Some(value.trim().to_string());
        }
    }
    let mut req = Request {
        method: method.to_string(),
        path: target.to_string(),
        range,
        bad: None,
    };
    let raw = target.split(['?', '#']).next().unwrap_or("");
    match decode(raw) {
        Some(p) if p.starts_with('/') && !p.split('/').any(|seg| seg == "..") => req.path = p,
        _ => req.bad = Some(400),
    }
    if req.bad.is_none() && method != "GET" && method != "HEAD" {
        req.bad = Some(405);
    }
    Some(req)
}

/// Percent-decoding; `None` for a bad escape, NUL, a backslash or
/// something not UTF-8.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if out.contains(&0) || out.contains(&b'\\') {
        return None;
    }
    String::from_utf8(out).ok()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Range {
    /// First and last byte, inclusive, within the file.
    Bytes(u64, u64),
    /// Starts past the end (or asks for a suffix of an empty file): 416.
    Unsatisfiable,
    /// Malformed, another unit, or several ranges: the whole file.
    Ignored,
}

fn parse_range(v: &str, len: u64) -> Range {
    let Some(spec) = v
        .trim()
        .get(..6)
        .filter(|u| u.eq_ignore_ascii_case("bytes="))
        .and_then(|_| v.trim().get(6..))
    else {
        return Range::Ignored;
    };
    if spec.contains(',') {
        return Range::Ignored;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return Range::Ignored;
    };
    let num = |t: &str| -> Option<u64> {
        (!t.is_empty() && t.bytes().all(|c| c.is_ascii_digit()))
            .then(|| t.parse().ok())
            .flatten()
    };
    match (a.is_empty(), num(a), num(b)) {
        // -n: the last n bytes
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                Range::Unsatisfiable
            } else {
                Range::Bytes(len - n.min(len), len - 1)
            }
        }
        (false, Some(a), None) if b.is_empty() => {
            if a >= len {
                Range::Unsatisfiable
            } else {
                Range::Bytes(a, len - 1)
            }
        }
        (false, Some(a), Some(b)) if a <= b => {
            if a >= len {
                Range::Unsatisfiable
            } else {
                Range::Bytes(a, b.min(len - 1))
            }
        }
        _ => Range::Ignored,
    }
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        416 => "Range Not Satisfiable",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Injected",
    }
}

fn write_head(s: &mut TcpStream, status: u16, len: u64, extra: &[String]) -> io::Result<()> {
    let mut h = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n",
        reason(status)
    );
    for e in extra {
        h.push_str(e);
        h.push_str("\r\n");
    }
    h.push_str("\r\n");
    s.write_all(h.as_bytes())?;
    if len == 0 {
        let _ = s.shutdown(Shutdown::Write);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::time::Instant;

    const LEN: usize = 200_000;

    fn content() -> Vec<u8> {
        (0..LEN as u32).map(|i| (i % 251) as u8).collect()
    }

    /// A directory with `targets/img` (LEN bytes) and `other`.
    fn repo() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("targets")).unwrap();
        std::fs::write(d.path().join("targets/img"), content()).unwrap();
        std::fs::write(d.path().join("other"), b"hello").unwrap();
        d
    }

    struct Resp {
        head: String,
        body: Vec<u8>,
    }

    impl Resp {
        fn status(&self) -> u16 {
            self.head[9..12].parse().unwrap()
        }
        fn header(&self, name: &str) -> Option<String> {
            self.head.lines().skip(1).find_map(|l| {
                let (n, v) = l.split_once(':')?;
                n.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
            })
        }
    }

    /// Sends `request` raw and reads until the server closes.
    fn raw(srv: &FaultyHttp, request: &str) -> Resp {
        let mut s = TcpStream::connect(srv.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        Resp {
            head: String::from_utf8(out[..end].to_vec()).unwrap(),
            body: out[end + 4..].to_vec(),
        }
    }

    fn get(srv: &FaultyHttp, path: &str, range: Option<&str>) -> Resp {
        let range = range.map_or(String::new(), |r| format!("Range: {r}\r\n"));
        raw(
            srv,
            &format!("GET {path} HTTP/1.1\r\nHost: x\r\n{range}\r\n"),
        )
    }

    #[test]
    fn serves_files_ranges_and_head() {
        let d = repo();
        let srv = FaultyHttp::start(d.path()).unwrap();
        let c = content();

        let r = get(&srv, "/targets/img", None);
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("content-length").unwrap(), LEN.to_string());
        assert_eq!(r.header("accept-ranges").unwrap(), "bytes");
        assert_eq!(r.body, c);

        let r = get(&srv, "/targets/img", Some("bytes=100-199"));
        assert_eq!(r.status(), 206);
        assert_eq!(r.header("content-range").unwrap(), "bytes 100-199/200000");
        assert_eq!(r.body, &c[100..200]);

        let r = get(&srv, "/targets/img", Some("bytes=199990-"));
        assert_eq!(r.body, &c[199_990..]);
        let r = get(&srv, "/targets/img", Some("bytes=-10"));
        assert_eq!(
            r.header("content-range").unwrap(),
            "bytes 199990-199999/200000"
        );
        assert_eq!(r.body, &c[199_990..]);
        let r = get(&srv, "/targets/img", Some("bytes=199990-300000"));
        assert_eq!(r.body, &c[199_990..]);

        let r = get(&srv, "/targets/img", Some("bytes=200000-"));
        assert_eq!(r.status(), 416);
        assert_eq!(r.header("content-range").unwrap(), "bytes */200000");
        // Malformed or several ranges: the whole file.
        assert_eq!(get(&srv, "/targets/img", Some("bytes=5-1")).status(), 200);
        assert_eq!(
            get(&srv, "/targets/img", Some("bytes=0-1,5-6")).status(),
            200
        );

        let r = raw(&srv, "HEAD /targets/img HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("content-length").unwrap(), LEN.to_string());
        assert!(r.body.is_empty());

        let r = get(&srv, "/targets/img?x=1", Some("bytes=0-0"));
        assert_eq!(r.body, &c[..1]);

        let st = srv.stats("targets/img");
        assert_eq!(st.requests, 10);
        assert_eq!(
            st.body_bytes,
            (LEN + 100 + 10 + 10 + 10 + LEN + LEN + 1) as u64
        );
        let log = srv.served();
        assert_eq!(log[1].range.as_deref(), Some("bytes=100-199"));
        assert_eq!(log[1].status, Some(206));
        assert_eq!(log[8].method, "HEAD");
        assert_eq!(srv.stats("/other"), PathStats::default());
        srv.reset_stats();
        assert_eq!(srv.total(), PathStats::default());
    }

    #[test]
    fn refuses_what_it_must() {
        let d = repo();
        let srv = FaultyHttp::start(d.path().join("targets")).unwrap();
        assert_eq!(get(&srv, "/../other", None).status(), 400);
        assert_eq!(get(&srv, "/%2e%2e/other", None).status(), 400);
        assert_eq!(get(&srv, "/a%zz", None).status(), 400);
        assert_eq!(get(&srv, "/missing", None).status(), 404);
        assert_eq!(get(&srv, "/", None).status(), 404);
        std::os::unix::fs::symlink(d.path().join("other"), d.path().join("targets/link")).unwrap();
        assert_eq!(get(&srv, "/link", None).status(), 403);
        let r = raw(&srv, "PUT /img HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r.status(), 405);
        let r = raw(&srv, "garbage\r\n\r\n");
        assert_eq!(r.status(), 400);
        let big = format!("GET /img HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        let mut s = TcpStream::connect(srv.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(big.as_bytes());
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(
            out.starts_with(b"HTTP/1.1 431"),
            "{:?}",
            String::from_utf8_lossy(&out)
        );
        assert_eq!(srv.stats("/img").requests, 1); // the PUT
    }

    #[test]
    fn ignore_range_answers_200_with_everything() {
        let d = repo();
        let srv =
            FaultyHttp::start_with(d.path(), [FaultRule::new("img", Fault::IgnoreRange)]).unwrap();
        let r = get(&srv, "/targets/img", Some("bytes=100-199"));
        assert_eq!(r.status(), 200);
        assert_eq!(r.header("content-range"), None);
        assert_eq!(r.header("accept-ranges"), None);
        assert_eq!(r.body, content());
        // Other paths keep their ranges.
        assert_eq!(get(&srv, "/other", Some("bytes=1-2")).body, b"el");
    }

    #[test]
    fn truncate_closes_after_n_body_bytes_every_time() {
        let d = repo();
        let srv = FaultyHttp::start_with(
            d.path(),
            [FaultRule::new("img", Fault::Truncate { after: 1000 })],
        )
        .unwrap();
        for _ in 0..2 {
            let r = get(&srv, "/targets/img", None);
            assert_eq!(r.status(), 200);
            assert_eq!(r.header("content-length").unwrap(), LEN.to_string());
            assert_eq!(r.body, &content()[..1000]);
        }
        // Counted from the range's start; a shorter body is whole.
        let r = get(&srv, "/targets/img", Some("bytes=5000-"));
        assert_eq!(r.body, &content()[5000..6000]);
        let r = get(&srv, "/targets/img", Some("bytes=5000-5099"));
        assert_eq!(r.body, &content()[5000..5100]);
        assert_eq!(srv.stats("/targets/img").body_bytes, 3100);
        let log = srv.served();
        assert_eq!(
            (log[0].content_length, log[0].body_bytes),
            (LEN as u64, 1000)
        );
        // A real client notices.
        let resp = ureq::get(&srv.url("targets/img")).call().unwrap();
        let mut b = Vec::new();
        assert!(resp.into_reader().read_to_end(&mut b).is_err());
    }

    #[test]
    fn drop_once_cuts_one_body_then_serves() {
        let d = repo();
        let srv = FaultyHttp::start_with(
            d.path(),
            [FaultRule::new("img", Fault::DropOnce { after: 4096 })],
        )
        .unwrap();
        // HEAD and a body of at most `after` bytes leave it armed.
        raw(&srv, "HEAD /targets/img HTTP/1.1\r\n\r\n");
        assert_eq!(
            get(&srv, "/targets/img", Some("bytes=0-99")).body.len(),
            100
        );
        assert_eq!(srv.faults().rules().len(), 1);
        let r = get(&srv, "/targets/img", None);
        assert_eq!(r.body, &content()[..4096]);
        assert!(srv.faults().rules().is_empty());
        // The client resumes.
        let r = get(&srv, "/targets/img", Some("bytes=4096-"));
        assert_eq!(r.status(), 206);
        assert_eq!(r.body, &content()[4096..]);
        assert_eq!(srv.stats("/targets/img").requests, 4);
        assert_eq!(srv.stats("/targets/img").body_bytes, LEN as u64 + 100);
    }

    #[test]
    fn corrupt_byte_flips_one_file_offset() {
        let d = repo();
        let srv = FaultyHttp::start_with(
            d.path(),
            [FaultRule::new("img", Fault::CorruptByte { offset: 70_000 })],
        )
        .unwrap();
        let c = content();
        let r = get(&srv, "/targets/img", None);
        let diff: Vec<usize> = (0..LEN).filter(|&i| r.body[i] != c[i]).collect();
        assert_eq!(diff, vec![70_000]);
        assert_eq!(r.body[70_000], c[70_000] ^ 0xFF);
        let r = get(&srv, "/targets/img", Some("bytes=69990-70009"));
        assert_eq!(r.body[10], c[70_000] ^ 0xFF);
        assert_eq!(r.body[9], c[69_999]);
        let r = get(&srv, "/targets/img", Some("bytes=0-69999"));
        assert_eq!(r.body, &c[..70_000]);
    }

    #[test]
    fn stall_never_answers_until_dropped() {
        let d = repo();
        let srv = FaultyHttp::start_with(d.path(), [FaultRule::new("img", Fault::Stall)]).unwrap();
        let mut s = TcpStream::connect(srv.addr()).unwrap();
        s.write_all(b"GET /targets/img HTTP/1.1\r\n\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let mut b = [0u8; 16];
        let e = s.read(&mut b).unwrap_err();
        assert!(matches!(
            e.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ));
        // Others are served meanwhile.
        assert_eq!(get(&srv, "/other", None).body, b"hello");
        assert_eq!(srv.served()[0].status, None);
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let t = Instant::now();
        drop(srv);
        assert_eq!(s.read(&mut b).unwrap_or(0), 0);
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn status_answers_that_status_and_faults_change_while_running() {
        let d = repo();
        let srv = FaultyHttp::start(d.path()).unwrap();
        assert_eq!(get(&srv, "/other", None).status(), 200);
        srv.faults().add("", Fault::Status(503));
        let r = get(&srv, "/other", None);
        assert_eq!(r.status(), 503);
        assert_eq!(r.header("content-length").unwrap(), "0");
        assert_eq!(get(&srv, "/missing", None).status(), 503);
        srv.faults()
            .set(vec![FaultRule::new("targets/", Fault::Status(404))]);
        assert_eq!(get(&srv, "/targets/img", None).status(), 404);
        assert_eq!(get(&srv, "/other", None).status(), 200);
        srv.faults().clear();
        assert_eq!(get(&srv, "/targets/img", None).status(), 200);
        let err = ureq::get(&srv.url("missing")).call().unwrap_err();
        assert!(matches!(err, ureq::Error::Status(404, _)));
        assert_eq!(srv.stats("/other").requests, 3);
        assert_eq!(srv.stats("/other").body_bytes, 10);
    }

    #[test]
    fn range_parsing() {
        assert_eq!(parse_range("bytes=0-0", 10), Range::Bytes(0, 0));
        assert_eq!(parse_range("Bytes=3-", 10), Range::Bytes(3, 9));
        assert_eq!(parse_range("bytes=-100", 10), Range::Bytes(0, 9));
        assert_eq!(parse_range("bytes=-0", 10), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-", 0), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=10-20", 10), Range::Unsatisfiable);
        assert_eq!(parse_range("items=0-1", 10), Range::Ignored);
        assert_eq!(parse_range("bytes=a-1", 10), Range::Ignored);
        assert_eq!(parse_range("bytes=+1-2", 10), Range::Ignored);
        assert_eq!(parse_range("bytes=-", 10), Range::Ignored);
    }
}
