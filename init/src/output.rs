//! A service's captured output, bounded in bytes whatever it prints.
//!
//! Services write into a pipe; init reads it and splits it into lines for
//! the console and for a per-service ring (`ctl logs`). Every buffer on
//! that path has a fixed bound, so PID 1's memory does not follow what a
//! service prints (issue 10: six million short lines once took it from
//! 1.9 to 54 MiB and it stayed at 46 MiB):
//!
//! - each readiness event reads at most [`READ_BUDGET`] bytes through one
//!   stack buffer; a service that prints faster than that waits on its full
//!   pipe (back-pressure, as with any pipe) instead of init queueing lines;
//! - an unfinished line is held up to [`MAX_LINE`] bytes, then cut;
//! - the ring ([`LogRing`]) is one byte buffer of at most `log_bytes`
//!   bytes and `log_lines` lines; what falls out is counted and `ctl logs`
//!   says how many lines were dropped.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// The longest line kept whole; longer output is cut into pieces this long.
pub const MAX_LINE: usize = 4096;
/// Bytes read from one pipe per readiness event.
pub const READ_BUDGET: usize = 16 * 1024;

/// The read end of a service's stdout+stderr pipe.
#[derive(Debug)]
pub struct OutputPipe {
    fd: OwnedFd,
    /// Bytes of an unfinished line (at most [`MAX_LINE`]).
    partial: Vec<u8>,
}

/// Whether a pipe is still worth reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeState {
    /// More may come.
    Open,
    /// EOF or an error: every writer is gone.
    Closed,
}

impl OutputPipe {
    /// Wraps a non-blocking read end.
    pub fn new(fd: OwnedFd) -> Self {
        OutputPipe {
            fd,
            partial: Vec::new(),
        }
    }

    /// The descriptor, for poll.
    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Reads up to [`READ_BUDGET`] bytes, passing each line (without its
    /// newline or a trailing CR) to `on_line`. At EOF the unfinished line
    /// is passed too.
    pub fn drain(&mut self, on_line: &mut dyn FnMut(&[u8])) -> PipeState {
        let mut buf = [0u8; 4096];
        let mut budget = READ_BUDGET;
        while budget > 0 {
            let want = buf.len().min(budget);
            // SAFETY: read into a stack buffer of at least `want` bytes.
            let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), want) };
            if n < 0 {
                let e = std::io::Error::last_os_error().raw_os_error();
                if e == Some(libc::EINTR) {
                    continue;
                }
                if e == Some(libc::EAGAIN) {
                    return PipeState::Open;
                }
                // Anything else: give the pipe up.
                self.finish(on_line);
                return PipeState::Closed;
            }
            if n == 0 {
                self.finish(on_line);
                return PipeState::Closed;
            }
            let n = n as usize;
            self.feed(&buf[..n], on_line);
            budget -= n;
        }
        PipeState::Open
    }

    /// Splits `data` into lines, carrying an unfinished one over.
    fn feed(&mut self, mut data: &[u8], on_line: &mut dyn FnMut(&[u8])) {
        while !data.is_empty() {
            let room = MAX_LINE - self.partial.len();
            let window = &data[..data.len().min(room)];
            match window.iter().position(|&b| b == b'\n') {
                Some(i) if self.partial.is_empty() => {
                    emit(&data[..i], on_line);
                    data = &data[i + 1..];
                }
                Some(i) => {
                    self.partial.extend_from_slice(&data[..i]);
                    emit(&self.partial, on_line);
                    self.partial.clear();
                    data = &data[i + 1..];
                }
                None if window.len() == room => {
                    // A line longer than MAX_LINE: cut it.
                    self.partial.extend_from_slice(window);
                    emit(&self.partial, on_line);
                    self.partial.clear();
                    data = &data[room..];
                }
                None => {
                    self.partial.extend_from_slice(data);
                    data = &[];
                }
            }
        }
    }

    /// Passes the unfinished line, if any, and frees its buffer.
    fn finish(&mut self, on_line: &mut dyn FnMut(&[u8])) {
        if !self.partial.is_empty() {
            emit(&self.partial, on_line);
        }
        self.partial = Vec::new();
    }
}

fn emit(line: &[u8], on_line: &mut dyn FnMut(&[u8])) {
    on_line(line.strip_suffix(b"\r").unwrap_or(line));
}

/// The last lines a service printed: at most `max_lines` lines and
/// `max_bytes` bytes, in one byte buffer (lines end with `\n`), so a flood
/// of short lines costs no more than a few long ones.
#[derive(Debug)]
pub struct LogRing {
    buf: VecDeque<u8>,
    lines: usize,
    max_lines: usize,
    max_bytes: usize,
    dropped: u64,
}

impl LogRing {
    /// An empty ring; it allocates as lines come, never beyond `max_bytes`.
    pub fn new(max_lines: usize, max_bytes: usize) -> Self {
        LogRing {
            buf: VecDeque::new(),
            lines: 0,
            max_lines: max_lines.max(1),
            max_bytes: max_bytes.max(2),
            dropped: 0,
        }
    }

    /// Keeps `line`, dropping the oldest lines to make room (a line longer
    /// than the whole ring is cut to fit).
    pub fn push(&mut self, line: &[u8]) {
        let line = &line[..line.len().min(self.max_bytes - 1)];
        let need = line.len() + 1;
        while self.lines > 0
            && (self.lines >= self.max_lines || self.buf.len() + need > self.max_bytes)
        {
            match self.buf.iter().position(|&b| b == b'\n') {
                Some(i) => drop(self.buf.drain(..=i)),
                None => self.buf.clear(),
            }
            self.lines -= 1;
            self.dropped += 1;
        }
        if self.buf.capacity() < self.buf.len() + need {
            // Grow by doubling, but never past the bound.
            let want = (self.buf.capacity() * 2)
                .max(self.buf.len() + need)
                .max(256)
                .min(self.max_bytes);
            self.buf.reserve_exact(want - self.buf.len());
        }
        self.buf.extend(line);
        self.buf.push_back(b'\n');
        self.lines += 1;
    }

    /// Lines dropped to keep within the bounds.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Bytes allocated.
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The kept lines, each ending with a newline, after a line that says
    /// how many were dropped, if any.
    pub fn text(&self) -> String {
        let (a, b) = self.buf.as_slices();
        let mut out = String::with_capacity(self.buf.len() + 48);
        if self.dropped > 0 {
            out.push_str(&format!(
                "[{} earlier lines dropped: the ring keeps {} lines, {} bytes]\n",
                self.dropped, self.max_lines, self.max_bytes
            ));
        }
        out.push_str(&String::from_utf8_lossy(a));
        out.push_str(&String::from_utf8_lossy(b));
        out
    }

    /// The kept lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        let (a, b) = self.buf.as_slices();
        let mut all = a.to_vec();
        all.extend_from_slice(b);
        String::from_utf8_lossy(&all)
            .lines()
            .map(str::to_owned)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::os::fd::FromRawFd;

    fn pipe() -> (OutputPipe, std::fs::File) {
        let mut fds = [0; 2];
        assert_eq!(
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) },
            0
        );
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        (OutputPipe::new(r), std::fs::File::from(w))
    }

    #[test]
    fn lines_are_split_carried_over_and_cut() {
        let mut got: Vec<Vec<u8>> = Vec::new();
        let (mut p, mut w) = pipe();
        use std::io::Write;
        w.write_all(b"one\r\ntw").unwrap();
        assert_eq!(
            p.drain(&mut |l: &[u8]| got.push(l.to_vec())),
            PipeState::Open
        );
        w.write_all(b"o\n").unwrap();
        w.write_all(&vec![b'x'; MAX_LINE + 10]).unwrap();
        p.drain(&mut |l: &[u8]| got.push(l.to_vec()));
        drop(w);
        assert_eq!(
            p.drain(&mut |l: &[u8]| got.push(l.to_vec())),
            PipeState::Closed
        );
        assert_eq!(got[0], b"one");
        assert_eq!(got[1], b"two");
        assert_eq!(got[2].len(), MAX_LINE);
        assert_eq!(got[3], vec![b'x'; 10]);
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn one_event_reads_at_most_the_budget() {
        let (mut p, mut w) = pipe();
        use std::io::Write;
        let big = vec![b'y'; 60 * 1024];
        let _ = w.write(&big);
        let mut bytes = 0;
        p.drain(&mut |l: &[u8]| bytes += l.len());
        assert!(bytes <= READ_BUDGET, "{bytes}");
        assert!(bytes >= READ_BUDGET - MAX_LINE, "{bytes}");
    }

    #[test]
    fn the_ring_is_bounded_in_lines_and_bytes_and_counts_drops() {
        let mut r = LogRing::new(3, 1 << 20);
        for l in ["a", "b", "c", "d"] {
            r.push(l.as_bytes());
        }
        assert_eq!(r.lines(), ["b", "c", "d"]);
        assert_eq!(r.dropped(), 1);
        assert!(
            r.text().starts_with("[1 earlier lines dropped"),
            "{}",
            r.text()
        );
        let mut r = LogRing::new(1000, 100);
        for i in 0..10_000 {
            r.push(format!("line {i}").as_bytes());
        }
        assert!(r.capacity() <= 100, "{}", r.capacity());
        assert_eq!(r.lines().last().unwrap(), "line 9999");
        assert_eq!(r.dropped() as usize + r.lines().len(), 10_000);
        // A line longer than the ring is cut to fit.
        r.push(&[b'z'; 500]);
        assert_eq!(r.lines(), [String::from_utf8(vec![b'z'; 99]).unwrap()]);
        assert!(r.capacity() <= 100);
    }
}
