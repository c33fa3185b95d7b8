//! The control socket's server side, shaped so that no client can hold
//! PID 1's loop.
//!
//! Nothing here blocks. The listener and every open connection are in the
//! loop's poll set; each readiness event moves a connection on by what the
//! kernel has (a bounded read, or a bounded write), never by waiting for
//! the client. Per-read timeouts are not enough: a client that drips one
//! byte just inside the timeout would hold a blocking reader for as long as
//! it likes (issue 10 measured ~100 s, past the hardware watchdog fed from
//! the same loop). So:
//!
//! - every connection has one deadline for its request ([`REQUEST_MS`] from
//!   accept) and one for the answer to be taken ([`ANSWER_MS`]); past it,
//!   it is told so (best effort) and closed;
//! - at most [`MAX_CONNECTIONS`] are open; a new one beyond that closes the
//!   oldest, so idle clients cannot starve the ones that talk;
//! - at most [`ACCEPT_PER_TURN`] are accepted per turn of the loop, so a
//!   connection storm cannot keep the loop from its other work.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use super::access::{Access, Peer};
use super::protocol::{encode_answer, received, Received, Request, MAX_REQUEST};

/// Time from accept for the whole request line to arrive.
pub const REQUEST_MS: u64 = 1000;
/// Time from the answer for the client to take all of it.
pub const ANSWER_MS: u64 = 2000;
/// Connections held open at once; the oldest is closed beyond this.
pub const MAX_CONNECTIONS: usize = 16;
/// Connections accepted per turn of the loop.
pub const ACCEPT_PER_TURN: usize = 8;

/// Which connection a request came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnId(u64);

#[derive(Debug)]
enum Phase {
    /// Bytes of the request so far (at most [`MAX_REQUEST`]).
    Reading(Vec<u8>),
    /// A whole request, handed to the supervisor, not answered yet.
    Handling,
    /// The answer, and how much of it is written.
    Writing(Vec<u8>, usize),
}

#[derive(Debug)]
struct Conn {
    id: ConnId,
    stream: UnixStream,
    /// The client's credentials, taken at accept.
    peer: Option<Peer>,
    phase: Phase,
    deadline_ms: u64,
}

/// What the loop polls for on one descriptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interest {
    /// The descriptor.
    pub fd: RawFd,
    /// POLLIN or POLLOUT.
    pub events: i16,
}

/// The listener and its open connections.
#[derive(Debug)]
pub struct ControlServer {
    listener: UnixListener,
    conns: VecDeque<Conn>,
    next_id: u64,
    /// Requests read and not yet taken by the supervisor.
    ready: Vec<ReadyRequest>,
    /// Connections closed before their time (bound, deadline), for status.
    dropped: u64,
    /// Not accepting until then: accept failed for want of descriptors,
    /// and the pending connection would keep poll waking the loop at once.
    paused_until_ms: u64,
}

/// A whole request and who made it.
pub type ReadyRequest = (ConnId, Result<Request, String>, Option<Peer>);

/// How long to stop accepting after accept failed (EMFILE and the like).
const ACCEPT_PAUSE_MS: u64 = 100;

impl ControlServer {
    /// Binds at `path` (replacing a stale socket), non-blocking, with the
    /// mode [`Access`] calls for: 0600, or 0660 for its group. The socket
    /// is born with the umask's mode; its directory (0700 or 0710, see
    /// `Supervisor::new`) keeps others out until the chmod.
    pub fn bind(path: &Path, access: &Access) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        let mode = match access.socket_group() {
            Some(gid) => {
                std::os::unix::fs::chown(path, Some(0), Some(gid))?;
                0o660
            }
            None => 0o600,
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
        Ok(ControlServer {
            listener,
            conns: VecDeque::new(),
            next_id: 0,
            ready: Vec::new(),
            dropped: 0,
            paused_until_ms: 0,
        })
    }

    /// The listening descriptor, while it is worth polling.
    pub fn listener_fd(&self, now: u64) -> Option<RawFd> {
        (now >= self.paused_until_ms).then(|| self.listener.as_raw_fd())
    }

    /// Open connections.
    pub fn open(&self) -> usize {
        self.conns.len()
    }

    /// Connections closed early (at the bound or their deadline) so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// The connections to poll, and for what.
    pub fn interests(&self) -> impl Iterator<Item = Interest> + '_ {
        self.conns.iter().filter_map(|c| {
            let events = match c.phase {
                Phase::Reading(_) => libc::POLLIN,
                Phase::Writing(..) => libc::POLLOUT,
                Phase::Handling => return None,
            };
            Some(Interest {
                fd: c.stream.as_raw_fd(),
                events,
            })
        })
    }

    /// The earliest deadline of an open connection, or the end of a
    /// pause in accepting.
    pub fn next_deadline(&self) -> Option<u64> {
        self.conns
            .iter()
            .map(|c| c.deadline_ms)
            .chain((self.paused_until_ms > 0).then_some(self.paused_until_ms))
            .min()
    }

    /// Accepts up to [`ACCEPT_PER_TURN`] connections and reads what each
    /// has sent already (a client usually writes its line at once).
    pub fn accept(&mut self, now: u64) {
        if now < self.paused_until_ms {
            return;
        }
        self.paused_until_ms = 0;
        for _ in 0..ACCEPT_PER_TURN {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and the like: leave it queued and look again a
                    // little later, rather than wake at once every turn;
                    // the oldest connection gives its descriptor back.
                    tracing::warn!("control: accept: {e}; pausing for {ACCEPT_PAUSE_MS} ms");
                    self.paused_until_ms = now + ACCEPT_PAUSE_MS;
                    if let Some(old) = self.conns.pop_front() {
                        self.dropped += 1;
                        self.forget(old.id);
                    }
                    return;
                }
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if self.conns.len() >= MAX_CONNECTIONS {
                if let Some(old) = self.conns.pop_front() {
                    self.dropped += 1;
                    tracing::debug!(
                        "control: {MAX_CONNECTIONS} connections open; closing the oldest"
                    );
                    self.forget(old.id);
                }
            }
            let id = ConnId(self.next_id);
            self.next_id += 1;
            let peer = Peer::of(stream.as_raw_fd());
            self.conns.push_back(Conn {
                id,
                peer,
                stream,
                phase: Phase::Reading(Vec::new()),
                deadline_ms: now + REQUEST_MS,
            });
            self.progress(id);
        }
    }

    /// The descriptor `fd` is ready: read or write what the kernel takes.
    pub fn ready_fd(&mut self, fd: RawFd) {
        if let Some(id) = self
            .conns
            .iter()
            .find(|c| c.stream.as_raw_fd() == fd)
            .map(|c| c.id)
        {
            self.progress(id);
        }
    }

    /// Whole requests read since the last call, with their clients.
    pub fn take_requests(&mut self) -> Vec<ReadyRequest> {
        std::mem::take(&mut self.ready)
    }

    /// Sends the answer to the request on `id` (as much as the socket
    /// takes now; the rest when it is writable again).
    pub fn answer(&mut self, id: ConnId, result: Result<String, String>, now: u64) {
        if let Some(c) = self.conns.iter_mut().find(|c| c.id == id) {
            c.phase = Phase::Writing(encode_answer(result), 0);
            c.deadline_ms = now + ANSWER_MS;
            self.progress(id);
        }
    }

    /// Closes every connection whose deadline has passed, telling a client
    /// that never finished its request why (best effort, never waiting).
    pub fn expire(&mut self, now: u64) {
        let before = self.conns.len();
        self.conns.retain(|c| {
            if now < c.deadline_ms {
                return true;
            }
            if let Phase::Reading(_) = c.phase {
                let msg = format!("error: no complete request within {REQUEST_MS} ms\n");
                let _ = (&c.stream).write(msg.as_bytes());
            }
            false
        });
        let gone = before - self.conns.len();
        if gone > 0 {
            self.dropped += gone as u64;
            tracing::debug!("control: {gone} connection(s) closed at their deadline");
        }
    }

    /// Closes every connection (after a caught panic: their state may be
    /// half-updated; a client sees EOF and can ask again).
    pub fn reset(&mut self) {
        self.conns.clear();
        self.ready.clear();
    }

    fn forget(&mut self, id: ConnId) {
        self.ready.retain(|(r, _, _)| *r != id);
    }

    fn close(&mut self, id: ConnId) {
        self.conns.retain(|c| c.id != id);
        self.forget(id);
    }

    /// Moves connection `id` on by what the kernel has now.
    fn progress(&mut self, id: ConnId) {
        let Some(c) = self.conns.iter_mut().find(|c| c.id == id) else {
            return;
        };
        let keep = match &mut c.phase {
            Phase::Reading(buf) => match read_some(&c.stream, buf) {
                Err(()) => false,
                Ok(eof) => match received(buf, eof) {
                    Received::Partial => true,
                    Received::Nothing => false,
                    Received::Request(r) => {
                        c.phase = Phase::Handling;
                        self.ready.push((id, r, c.peer.clone()));
                        true
                    }
                },
            },
            Phase::Writing(out, at) => write_some(&c.stream, out, at),
            Phase::Handling => true,
        };
        if !keep {
            self.close(id);
        }
    }
}

/// Writes what the socket takes of `out[*at..]`; false once it is all
/// written or the connection is broken (either way: close it).
fn write_some(mut stream: &UnixStream, out: &[u8], at: &mut usize) -> bool {
    loop {
        let Some(rest) = out.get(*at..).filter(|r| !r.is_empty()) else {
            return false;
        };
        match stream.write(rest) {
            Ok(0) => return false,
            Ok(n) => *at += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
}

/// Reads what is there, up to [`MAX_REQUEST`] bytes in all. `Ok(true)` at
/// EOF, `Ok(false)` when it would block or the request is long enough to
/// judge; `Err` on a broken connection.
fn read_some(mut stream: &UnixStream, buf: &mut Vec<u8>) -> Result<bool, ()> {
    let mut chunk = [0u8; MAX_REQUEST];
    while buf.len() < MAX_REQUEST && !buf.contains(&b'\n') {
        let room = MAX_REQUEST - buf.len();
        match stream.read(&mut chunk[..room]) {
            Ok(0) => return Ok(true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(_) => return Err(()),
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn server() -> (tempfile::TempDir, std::path::PathBuf, ControlServer) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("control.sock");
        let s = ControlServer::bind(&p, &Access::default()).unwrap();
        (d, p, s)
    }

    #[test]
    fn a_request_is_read_without_waiting_and_answered() {
        let (_d, p, mut s) = server();
        let mut c = UnixStream::connect(&p).unwrap();
        c.write_all(b"status\n").unwrap();
        s.accept(0);
        let reqs = s.take_requests();
        assert_eq!(reqs.len(), 1);
        assert_eq!(reqs[0].1, Ok(Request::Status));
        s.answer(reqs[0].0, Ok("body\n".into()), 0);
        assert_eq!(s.open(), 0, "a small answer is written at once");
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        assert_eq!(out, "ok\nbody\n");
    }

    #[test]
    fn a_silent_client_is_closed_at_its_deadline() {
        let (_d, p, mut s) = server();
        let mut silent = UnixStream::connect(&p).unwrap();
        s.accept(100);
        assert_eq!((s.open(), s.next_deadline()), (1, Some(100 + REQUEST_MS)));
        s.expire(100 + REQUEST_MS - 1);
        assert_eq!(s.open(), 1);
        s.expire(100 + REQUEST_MS);
        assert_eq!(s.open(), 0);
        let mut out = String::new();
        silent.read_to_string(&mut out).unwrap();
        assert!(out.starts_with("error: no complete request"), "{out}");
    }

    #[test]
    fn the_oldest_goes_at_the_bound_and_accepts_are_capped_per_turn() {
        let (_d, p, mut s) = server();
        let idle: Vec<UnixStream> = (0..MAX_CONNECTIONS + 4)
            .map(|_| UnixStream::connect(&p).unwrap())
            .collect();
        s.accept(0);
        assert_eq!(s.open(), ACCEPT_PER_TURN);
        for _ in 0..10 {
            s.accept(0);
        }
        assert_eq!(s.open(), MAX_CONNECTIONS);
        assert_eq!(s.dropped(), 4);
        // The four oldest were closed: they read EOF.
        let mut first = &idle[0];
        let mut b = [0u8; 1];
        assert_eq!(first.read(&mut b).unwrap(), 0);
        // A talking client still gets through.
        let mut c = UnixStream::connect(&p).unwrap();
        c.write_all(b"status\n").unwrap();
        s.accept(0);
        assert_eq!(s.take_requests().len(), 1);
        assert_eq!(s.open(), MAX_CONNECTIONS);
    }

    #[test]
    fn a_dripping_client_is_read_piecewise_and_still_bounded_in_time() {
        let (_d, p, mut s) = server();
        let mut c = UnixStream::connect(&p).unwrap();
        s.accept(0);
        for b in b"statu" {
            c.write_all(&[*b]).unwrap();
            let fd = s.interests().next().unwrap().fd;
            s.ready_fd(fd);
            assert!(s.take_requests().is_empty());
        }
        s.expire(REQUEST_MS);
        assert_eq!(s.open(), 0);
    }

    #[test]
    fn an_overlong_request_is_refused() {
        let (_d, p, mut s) = server();
        let mut c = UnixStream::connect(&p).unwrap();
        c.write_all(&[b'x'; MAX_REQUEST + 10]).unwrap();
        s.accept(0);
        let reqs = s.take_requests();
        assert!(reqs[0].1.is_err());
    }
}
