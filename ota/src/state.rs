//! What the update client keeps on /var (`/var/lib/fluxnode/ota` on a
//! node; a parameter everywhere so tests use temp dirs):
//!
//! - `progress.json`: the update in flight, the journal that makes an
//!   install resumable: which version into which slot, the phase, and a
//!   bitmap of the root chunks written, synced and verified. It is
//!   replaced atomically (temporary file, fsync, rename, fsync of the
//!   directory), and only after the slot writes it describes were synced,
//!   so after a power cut it never claims a chunk that is not on the disk.
//! - `history.json`: every attempt (from, to, bytes downloaded, duration,
//!   result, reason), newest last, at most [`HISTORY_MAX`] entries.
//!
//! A full /var shows up here first (the journal is written before the
//! first slot write), as an error that says so.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Attempts kept in the history.
pub const HISTORY_MAX: usize = 200;

/// Largest state file read back (a bitmap of 65,536 chunks is 16 KiB as hex).
const MAX_STATE_FILE: u64 = 4 << 20;

/// A failure reading or writing state.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// I/O on a state file.
    #[error("{what} {path}: {source}{hint}", hint = if source.raw_os_error() == Some(libc::ENOSPC) { " (the data partition /var is full: free space and retry)" } else { "" })]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A state file that does not parse.
    #[error("{path} is damaged ({why}); remove it to start over")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// Where an install stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Writing the root payload into the target slot.
    Root,
    /// Root complete; writing the UKI onto the ESP.
    Uki,
    /// Both installed; waiting for the reboot into the new version.
    Installed,
    /// Booted into the new version; health checks running.
    Booted,
}

/// The journal of the update in flight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// The version being installed.
    pub version: String,
    /// The version it replaces (running when the install started).
    pub from_version: String,
    /// sha256 of the manifest (hex): a resume applies only to the same one.
    pub manifest_sha256: String,
    /// Target slot (`a` or `b`).
    pub slot: String,
    /// The target device, as opened.
    pub target: PathBuf,
    /// Where the install stands.
    pub phase: Phase,
    /// Root chunks written, synced and verified: a bitmap as hex, bit i of
    /// byte i/8 for chunk i.
    pub root_done: String,
    /// Unix seconds when the attempt started.
    pub started_at: u64,
    /// Bytes received over the network so far (all sessions of this attempt).
    pub downloaded: u64,
    /// How many times the install was resumed after an interruption.
    pub resumes: u32,
}

impl Progress {
    /// Whether chunk `i` is recorded as done.
    pub fn is_done(&self, i: usize) -> bool {
        let Some(pair) = self.root_done.get(i / 8 * 2..i / 8 * 2 + 2) else {
            return false;
        };
        u8::from_str_radix(pair, 16).is_ok_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// Records the done chunks from a bitmap.
    pub fn set_done(&mut self, bits: &Bitmap) {
        self.root_done = hex::encode(&bits.0);
    }

    /// The done bitmap for `n` chunks.
    pub fn done_bitmap(&self, n: usize) -> Bitmap {
        let mut b = Bitmap::new(n);
        for i in 0..n {
            if self.is_done(i) {
                b.set(i, true);
            }
        }
        b
    }
}

/// A fixed-size bit set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap(Vec<u8>);

impl Bitmap {
    /// `n` bits, all clear.
    pub fn new(n: usize) -> Bitmap {
        Bitmap(vec![0; n.div_ceil(8)])
    }
    /// Bit `i`.
    pub fn get(&self, i: usize) -> bool {
        self.0.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
    }
    /// Sets bit `i`.
    pub fn set(&mut self, i: usize, on: bool) {
        if let Some(b) = self.0.get_mut(i / 8) {
            if on {
                *b |= 1 << (i % 8);
            } else {
                *b &= !(1 << (i % 8));
            }
        }
    }
    /// Bits set.
    pub fn count(&self) -> usize {
        self.0.iter().map(|b| b.count_ones() as usize).sum()
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Still going (the record of the attempt in flight).
    InProgress,
    /// Installed, booted, healthy and blessed.
    Success,
    /// Refused before anything was written.
    Refused,
    /// Failed during download or install; the slot was left unbootable.
    Failed,
    /// Abandoned (another version superseded it, or the operator cancelled).
    Abandoned,
    /// The new version booted and failed its health checks (or never
    /// booted): the node went back to the old one.
    RolledBack,
    /// A blessed version failed repeatedly and the node fell back to the
    /// other slot.
    FellBack,
}

/// One attempt in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// Version running when it started.
    pub from: String,
    /// Version offered.
    pub to: String,
    /// Unix seconds.
    pub started_at: u64,
    /// Unix seconds (0 while in progress).
    pub ended_at: u64,
    /// Bytes received over the network.
    pub downloaded: u64,
    /// Bytes of all payloads (what a full download would have been).
    pub payload_bytes: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Why (empty on success); a stable code first, then words.
    pub reason: String,
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    /// A state directory (created if missing).
    pub fn open(dir: &Path) -> Result<StateDir, StateError> {
        std::fs::create_dir_all(dir).map_err(|source| StateError::Io {
            what: "creating",
            path: dir.to_path_buf(),
            source,
        })?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
        })
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The update in flight, if any.
    pub fn progress(&self) -> Result<Option<Progress>, StateError> {
        read_json(&self.file("progress.json"))
    }

    /// Records the update in flight (atomically, durably).
    pub fn save_progress(&self, p: &Progress) -> Result<(), StateError> {
        write_json(&self.file("progress.json"), p)
    }

    /// Forgets the update in flight.
    pub fn clear_progress(&self) -> Result<(), StateError> {
        let path = self.file("progress.json");
        match std::fs::remove_file(&path) {
            Ok(()) => sync_dir(&self.dir),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(StateError::Io {
                what: "removing",
                path,
                source,
            }),
        }
    }

    /// Every attempt, oldest first.
    pub fn history(&self) -> Result<Vec<Attempt>, StateError> {
        Ok(read_json(&self.file("history.json"))?.unwrap_or_default())
    }

    /// Adds an attempt, or replaces the last one when it is the same
    /// attempt (same `to` and `started_at`) still in progress.
    pub fn record(&self, a: &Attempt) -> Result<(), StateError> {
        let mut h = self.history()?;
        match h.last_mut() {
            Some(last)
                if last.to == a.to
                    && last.started_at == a.started_at
                    && last.outcome == Outcome::InProgress =>
            {
                // The end of an attempt keeps what its start knew.
                let payload_bytes = if a.payload_bytes == 0 {
                    last.payload_bytes
                } else {
                    a.payload_bytes
                };
                *last = Attempt {
                    payload_bytes,
                    ..a.clone()
                }
            }
            _ => h.push(a.clone()),
        }
        if h.len() > HISTORY_MAX {
            h.drain(..h.len() - HISTORY_MAX);
        }
        write_json(&self.file("history.json"), &h)
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Option<T>, StateError> {
    use std::io::Read;
    let f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(StateError::Io {
                what: "reading",
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut bytes = Vec::new();
    f.take(MAX_STATE_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|source| StateError::Io {
            what: "reading",
            path: path.to_path_buf(),
            source,
        })?;
    if bytes.len() as u64 > MAX_STATE_FILE {
        return Err(StateError::Damaged {
            path: path.to_path_buf(),
            why: "too large".into(),
        });
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| StateError::Damaged {
            path: path.to_path_buf(),
            why: e.to_string(),
        })
}

/// Writes JSON to `path` atomically and durably: a temporary file in the
/// same directory, fsync, rename over `path`, fsync of the directory.
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), StateError> {
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| StateError::Damaged {
        path: path.to_path_buf(),
        why: e.to_string(),
    })?;
    write_atomic(path, &bytes)
}

/// Writes bytes to `path` atomically and durably (see [`write_json`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StateError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    let io = |what: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| StateError::Io {
            what,
            path: p,
            source,
        }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io("creating", &tmp))?;
    if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("writing", &tmp)(e));
    }
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("renaming into place", path))?;
    sync_dir(dir)
}

/// fsync of a directory (makes a rename or removal in it durable).
pub fn sync_dir(dir: &Path) -> Result<(), StateError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| StateError::Io {
            what: "syncing the directory",
            path: dir.to_path_buf(),
            source,
        })
}

/// Seconds since the Unix epoch.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn progress() -> Progress {
        Progress {
            version: "0.2.0".into(),
            from_version: "0.1.0".into(),
            manifest_sha256: "00".repeat(32),
            slot: "b".into(),
            target: "/dev/vda3".into(),
            phase: Phase::Root,
            root_done: String::new(),
            started_at: 1,
            downloaded: 0,
            resumes: 0,
        }
    }

    #[test]
    fn progress_round_trips_with_its_bitmap() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        assert_eq!(s.progress().unwrap(), None);
        let mut p = progress();
        let mut b = Bitmap::new(20);
        for i in [0, 7, 8, 19] {
            b.set(i, true);
        }
        p.set_done(&b);
        s.save_progress(&p).unwrap();
        let back = s.progress().unwrap().unwrap();
        assert_eq!(back, p);
        assert_eq!(back.done_bitmap(20), b);
        assert!(back.is_done(19) && !back.is_done(18) && !back.is_done(400));
        s.clear_progress().unwrap();
        assert_eq!(s.progress().unwrap(), None);
    }

    #[test]
    fn history_is_bounded_and_updates_the_attempt_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let s = StateDir::open(dir.path()).unwrap();
        let mut a = Attempt {
            from: "0.1.0".into(),
            to: "0.2.0".into(),
            started_at: 5,
            ended_at: 0,
            downloaded: 0,
            payload_bytes: 10,
            outcome: Outcome::InProgress,
            reason: String::new(),
        };
        s.record(&a).unwrap();
        // The end, recorded by whoever knows only the outcome, keeps the
        // payload size the start knew.
        s.record(&Attempt {
            outcome: Outcome::Success,
            payload_bytes: 0,
            ..a.clone()
        })
        .unwrap();
        a.outcome = Outcome::Success;
        assert_eq!(s.history().unwrap(), vec![a.clone()]);
        for i in 0..HISTORY_MAX + 5 {
            a.started_at = 100 + i as u64;
            s.record(&a).unwrap();
        }
        let h = s.history().unwrap();
        assert_eq!(h.len(), HISTORY_MAX);
        assert_eq!(h.last().unwrap().started_at, 100 + HISTORY_MAX as u64 + 4);
    }

    #[test]
    fn a_damaged_file_is_an_error_that_names_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("progress.json"), b"{not json").unwrap();
        let e = StateDir::open(dir.path()).unwrap().progress().unwrap_err();
        assert!(
            e.to_string().contains("progress.json") && e.to_string().contains("remove it"),
            "{e}"
        );
    }
}
