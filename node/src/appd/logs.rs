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

#[derive(Debug, Default)]
struct Inner {
    lines: VecDeque<(u64, String)>,
    bytes: usize,
    next: u64,
    file_len: u64,
}

/// One app's log.
#[derive(Debug)]
pub struct Log {
    inner: Mutex<Inner>,
    wake: Condvar,
    file: Option<PathBuf>,
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
        }
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
        if let Some(f) = &self.file {
            if g.file_len + line.len() as u64 + 1 > FILE_BYTES {
                let mut old = f.clone().into_os_string();
                old.push(".1");
                let _ = std::fs::rename(f, old);
                g.file_len = 0;
            }
            if let Ok(mut w) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(f)
            {
                if writeln!(w, "{line}").is_ok() {
                    g.file_len += line.len() as u64 + 1;
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
        drop(g);
        self.wake.notify_all();
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
        let log = Log::new(Some(f.clone()));
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
