//! An app's output: a bounded ring in memory (what `fluxnode app logs`
//! shows and follows) and a file on /var rotated at a size, so a chatty
//! app can neither grow the daemon nor fill the disk.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};

/// The longest line kept; longer ones are cut into pieces.
pub const MAX_LINE: usize = 4096;
/// Lines in the ring.
pub const RING_LINES: usize = 1000;
/// Bytes in the ring.
pub const RING_BYTES: usize = 256 * 1024;
/// The file is rotated (to `.1`) past this size.
pub const FILE_BYTES: u64 = 1 << 20;
/// Lines kept per second; more are counted and dropped, so an app that
/// floods its output spends the daemon's time (the node's reserve) no
/// faster than this.
pub const LINES_PER_SECOND: u32 = 1000;

#[derive(Debug, Default)]
struct Inner {
    lines: VecDeque<(u64, String)>,
    bytes: usize,
    next: u64,
    file_len: u64,
    /// The log file, kept open (appends; reopened after rotation).
    file: Option<std::fs::File>,
    /// The current second (since the log began) and lines kept in it.
    second: u64,
    in_second: u32,
    dropped: u64,
}

/// One app's log.
#[derive(Debug)]
pub struct Log {
    inner: Mutex<Inner>,
    wake: Condvar,
    file: Option<PathBuf>,
    born: std::time::Instant,
    rate: u32,
}

impl Log {
    /// A log that also appends to `file` (and its `.1`), if given.
    pub fn new(file: Option<PathBuf>) -> Log {
        let file_len = file
            .as_ref()
            .and_then(|f| std::fs::metadata(f).ok())
            .map_or(0, |m| m.len());
        Log {
            inner: Mutex::new(Inner {
                file_len,
                ..Default::default()
            }),
            wake: Condvar::new(),
            file,
            born: std::time::Instant::now(),
            rate: LINES_PER_SECOND,
        }
    }

    /// The same log keeping at most `rate` lines a second.
    pub fn with_rate(mut self, rate: u32) -> Log {
        self.rate = rate;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds one line (without its newline), cut at [`MAX_LINE`].
    pub fn push(&self, line: &str) {
        let mut rest = line;
        loop {
            let mut cut = rest.len().min(MAX_LINE);
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            let (piece, tail) = rest.split_at(cut);
            self.push_one(piece);
            if tail.is_empty() {
                break;
            }
            rest = tail;
        }
    }

    fn push_one(&self, line: &str) {
        let mut g = self.lock();
        let now = self.born.elapsed().as_secs();
        if now != g.second {
            g.second = now;
            g.in_second = 0;
            if g.dropped > 0 {
                let note = format!(
                    "[fluxnode] {} lines dropped (more than {LINES_PER_SECOND} a second)",
                    g.dropped
                );
                g.dropped = 0;
                g.in_second += 1;
                self.keep(&mut g, &note);
            }
        }
        if g.in_second >= self.rate {
            g.dropped += 1;
            return;
        }
        g.in_second += 1;
        self.keep(&mut g, line);
        drop(g);
        self.wake.notify_all();
    }

    fn keep(&self, g: &mut Inner, line: &str) {
        if let Some(f) = &self.file {
            if g.file_len + line.len() as u64 + 1 > FILE_BYTES {
                let mut old = f.clone().into_os_string();
                old.push(".1");
                let _ = std::fs::rename(f, old);
                g.file = None;
                g.file_len = 0;
            }
            if g.file.is_none() {
                g.file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(f)
                    .ok();
            }
            if let Some(w) = g.file.as_mut() {
                // One write per line: no partial line in the file.
                let mut buf = Vec::with_capacity(line.len() + 1);
                buf.extend_from_slice(line.as_bytes());
                buf.push(b'\n');
                if w.write_all(&buf).is_ok() {
                    g.file_len += buf.len() as u64;
                }
            }
        }
        let n = g.next;
        g.next += 1;
        g.bytes += line.len();
        g.lines.push_back((n, line.to_string()));
        while g.lines.len() > RING_LINES || g.bytes > RING_BYTES {
            if let Some((_, l)) = g.lines.pop_front() {
                g.bytes -= l.len();
            }
        }
    }

    /// The last `n` lines, and the sequence number after them.
    pub fn tail(&self, n: usize) -> (Vec<String>, u64) {
        let g = self.lock();
        let skip = g.lines.len().saturating_sub(n);
        (
            g.lines.iter().skip(skip).map(|(_, l)| l.clone()).collect(),
            g.next,
        )
    }

    /// Lines from sequence number `from` on, waiting up to `wait` for one
    /// to arrive; and the next sequence number. Lines that fell out of the
    /// ring meanwhile are skipped.
    pub fn since(&self, from: u64, wait: std::time::Duration) -> (Vec<String>, u64) {
        let mut g = self.lock();
        if g.next <= from {
            g = self
                .wake
                .wait_timeout(g, wait)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let out = g
            .lines
            .iter()
            .filter(|(n, _)| *n >= from)
            .map(|(_, l)| l.clone())
            .collect();
        (out, g.next)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_ring_and_the_file_stay_bounded() {
        let t = tempfile::tempdir().unwrap();
        let f = t.path().join("log");
        let log = Log::new(Some(f.clone())).with_rate(u32::MAX);
        let line = "x".repeat(1000);
        for _ in 0..3000 {
            log.push(&line);
        }
        let (lines, next) = log.tail(usize::MAX);
        assert_eq!(next, 3000);
        assert!(lines.len() * 1000 <= RING_BYTES, "{}", lines.len());
        assert!(std::fs::metadata(&f).unwrap().len() <= FILE_BYTES);
        assert!(std::fs::metadata(t.path().join("log.1")).unwrap().len() <= FILE_BYTES);
        // A huge line is cut, not kept whole.
        log.push(&"y".repeat(MAX_LINE * 2 + 1));
        let (tail, _) = log.tail(3);
        assert_eq!(
            tail.iter().map(String::len).collect::<Vec<_>>(),
            [MAX_LINE, MAX_LINE, 1]
        );
    }

    #[test]
    fn a_flood_is_cut_to_the_rate_and_said_so() {
        let log = Log::new(None);
        for _ in 0..(LINES_PER_SECOND * 5) {
            log.push("");
        }
        let (lines, next) = log.tail(usize::MAX);
        // Within one or two seconds of pushing: at most two seconds' worth.
        assert!(next <= u64::from(LINES_PER_SECOND) * 2 + 1, "{next}");
        assert!(lines.len() as u64 == next);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        log.push("after");
        let (tail, _) = log.tail(2);
        assert!(tail[0].contains("lines dropped"), "{tail:?}");
        assert_eq!(tail[1], "after");
    }

    #[test]
    fn since_returns_new_lines_and_times_out() {
        let log = Log::new(None);
        log.push("a");
        let (l, next) = log.since(0, std::time::Duration::from_millis(1));
        assert_eq!((l, next), (vec!["a".to_string()], 1));
        let (l, next) = log.since(1, std::time::Duration::from_millis(20));
        assert!(l.is_empty());
        assert_eq!(next, 1);
    }
}
