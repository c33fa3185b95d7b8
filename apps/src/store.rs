//! The content-addressed store on /var: every manifest, config and layer
//! blob under its SHA-256, verified while it is written.
//!
//! ```text
//! ROOT/blobs/sha256/HEX     complete, verified blobs (read-only once there)
//! ROOT/partial/sha256/HEX   a download in progress, resumed from its length
//! ROOT/layers/HEX           a layer blob unpacked (see `unpack`), shared
//! ROOT/layers/HEX.tmp       an unpack in progress, removed on open
//! ```
//!
//! A blob reaches `blobs/` only by [`BlobWriter::commit`], which checks the
//! declared size and digest, fsyncs, renames and fsyncs the directory: a
//! power cut leaves either the whole verified blob or a partial file that
//! the next pull resumes (and re-hashes, so a torn tail is caught by the
//! digest and the blob fetched again).

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use crate::reference::Digest;

/// Why the store refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the kernel said.
        source: io::Error,
    },
    /// The bytes do not hash to the digest they were fetched under.
    #[error("digest mismatch: expected {expected}, the {size} bytes received hash to {got}; the blob was discarded")]
    DigestMismatch {
        /// The digest asked for.
        expected: Digest,
        /// The digest of what arrived.
        got: Digest,
        /// How many bytes arrived.
        size: u64,
    },
    /// More or fewer bytes arrived than the descriptor declared.
    #[error("blob {digest}: the descriptor declares {declared} bytes, {got} arrived")]
    SizeMismatch {
        /// The blob.
        digest: Digest,
        /// What the descriptor says.
        declared: u64,
        /// What arrived (so far, when too many).
        got: u64,
    },
    /// A blob is larger than the caller allows.
    #[error("blob {digest} is {size} bytes; at most {limit} are accepted here")]
    TooLarge {
        /// The blob.
        digest: Digest,
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The store at a root directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// What a garbage collection removed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GcReport {
    /// Blobs removed.
    pub blobs: usize,
    /// Unpacked layers removed.
    pub layers: usize,
    /// Partial downloads removed.
    pub partials: usize,
    /// Bytes freed by blobs and partials (unpacked trees not counted).
    pub bytes: u64,
}

impl Store {
    /// Opens (creating) the store and clears unpacks a power cut left.
    pub fn open(root: &Path) -> Result<Store, StoreError> {
        let s = Store {
            root: root.to_path_buf(),
        };
        for d in [s.blobs_dir(), s.partial_dir(), s.layers_dir()] {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        let layers = s.layers_dir();
        for e in fs::read_dir(&layers).map_err(io_err(&layers))? {
            let e = e.map_err(io_err(&layers))?;
            if e.file_name().to_string_lossy().ends_with(".tmp") {
                let p = e.path();
                remove_tree(&p).map_err(io_err(&p))?;
            }
        }
        Ok(s)
    }

    /// Makes the store's directories again if something removed them
    /// under a running daemon (an operator clearing space by hand): the
    /// next write recreates them instead of failing until a restart.
    pub fn ensure_dirs(&self) -> Result<(), StoreError> {
        for d in [self.blobs_dir(), self.partial_dir(), self.layers_dir()] {
            fs::create_dir_all(&d).map_err(io_err(&d))?;
        }
        Ok(())
    }

    /// The store's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }
    fn partial_dir(&self) -> PathBuf {
        self.root.join("partial/sha256")
    }
    fn layers_dir(&self) -> PathBuf {
        self.root.join("layers")
    }

    /// Where a complete blob lives.
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs_dir().join(d.hex())
    }

    /// Where a layer blob's unpacked tree lives.
    pub fn layer_path(&self, d: &Digest) -> PathBuf {
        self.layers_dir().join(d.hex())
    }

    /// Where an unpack of a layer blob is made before it is renamed.
    pub fn layer_tmp_path(&self, d: &Digest) -> PathBuf {
        self.layers_dir().join(format!("{}.tmp", d.hex()))
    }

    /// Whether a verified blob is present.
    pub fn has(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Reads a whole blob of at most `limit` bytes (manifests, configs),
    /// verifying it again: a file changed on disk is not trusted.
    pub fn read(&self, d: &Digest, limit: u64) -> Result<Vec<u8>, StoreError> {
        let p = self.blob_path(d);
        let f = File::open(&p).map_err(io_err(&p))?;
        let size = f.metadata().map_err(io_err(&p))?.len();
        if size > limit {
            return Err(StoreError::TooLarge {
                digest: *d,
                size,
                limit,
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        f.take(limit).read_to_end(&mut buf).map_err(io_err(&p))?;
        let got = Digest::of(&buf);
        if got != *d {
            return Err(StoreError::DigestMismatch {
                expected: *d,
                got,
                size: buf.len() as u64,
            });
        }
        Ok(buf)
    }

    /// Stores bytes already in memory under their expected digest.
    pub fn put(&self, expected: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let mut w = self.begin(expected, bytes.len() as u64)?;
        if w.offset() != 0 {
            // A partial from an earlier try: start over, the bytes are here.
            w.restart()?;
        }
        w.write_all(bytes)?;
        w.commit()
    }

    /// Starts or resumes writing a blob of `size` bytes. The returned
    /// writer's [`BlobWriter::offset`] is how many bytes a resumed download
    /// already has: fetch from there.
    pub fn begin(&self, expected: &Digest, size: u64) -> Result<BlobWriter, StoreError> {
        self.ensure_dirs()?;
        let path = self.partial_dir().join(expected.hex());
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let mut hasher = Sha256::new();
        let mut have = file.metadata().map_err(io_err(&path))?.len();
        if have > size {
            // Longer than the blob can be: not a prefix of it.
            file.set_len(0).map_err(io_err(&path))?;
            have = 0;
        }
        if have > 0 {
            // Re-hash what is there: the digest state is not kept on disk,
            // and a torn tail must count against the final digest.
            let mut buf = vec![0u8; 256 * 1024];
            let mut left = have;
            let mut r = File::open(&path).map_err(io_err(&path))?;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = r.read(&mut buf[..want]).map_err(io_err(&path))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                left -= n as u64;
            }
            have -= left;
        }
        let _ = file.flush();
        Ok(BlobWriter {
            file,
            hasher,
            written: have,
            size,
            expected: *expected,
            partial: path,
            final_path: self.blob_path(expected),
            dir: self.blobs_dir(),
        })
    }

    /// Removes every blob, unpacked layer and partial download whose
    /// digest is not in `keep`.
    pub fn gc(&self, keep: &BTreeSet<Digest>) -> Result<GcReport, StoreError> {
        let mut report = GcReport::default();
        for (dir, kind) in [
            (self.blobs_dir(), 0),
            (self.partial_dir(), 1),
            (self.layers_dir(), 2),
        ] {
            for e in fs::read_dir(&dir).map_err(io_err(&dir))? {
                let e = e.map_err(io_err(&dir))?;
                let name = e.file_name().to_string_lossy().into_owned();
                let kept = Digest::parse(&format!("sha256:{name}"))
                    .map(|d| keep.contains(&d))
                    .unwrap_or(false);
                if kept || (kind == 2 && name.ends_with(".tmp")) {
                    continue;
                }
                let p = e.path();
                let len = e.metadata().map(|m| m.len()).unwrap_or(0);
                remove_tree(&p).map_err(io_err(&p))?;
                match kind {
                    0 => {
                        report.blobs += 1;
                        report.bytes += len;
                    }
                    1 => {
                        report.partials += 1;
                        report.bytes += len;
                    }
                    _ => report.layers += 1,
                }
            }
        }
        Ok(report)
    }
}

/// Removes a file or a directory tree (not following symlinks).
pub fn remove_tree(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// A blob being written; it is verified as the bytes arrive.
#[derive(Debug)]
pub struct BlobWriter {
    file: File,
    hasher: Sha256,
    written: u64,
    size: u64,
    expected: Digest,
    partial: PathBuf,
    final_path: PathBuf,
    dir: PathBuf,
}

impl BlobWriter {
    /// How many bytes are already written (resume the download here).
    pub fn offset(&self) -> u64 {
        self.written
    }

    /// The size declared for the blob.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Drops what a resumed partial held and starts from byte 0 (for a
    /// server that answers a range request with the whole blob).
    pub fn restart(&mut self) -> Result<(), StoreError> {
        self.file.set_len(0).map_err(io_err(&self.partial))?;
        self.hasher = Sha256::new();
        self.written = 0;
        Ok(())
    }

    /// Appends bytes; more than the declared size is refused at once.
    pub fn write_all(&mut self, buf: &[u8]) -> Result<(), StoreError> {
        let total = self.written + buf.len() as u64;
        if total > self.size {
            return Err(StoreError::SizeMismatch {
                digest: self.expected,
                declared: self.size,
                got: total,
            });
        }
        self.file.write_all(buf).map_err(io_err(&self.partial))?;
        self.hasher.update(buf);
        self.written = total;
        Ok(())
    }

    /// Flushes the partial file to disk (call now and then on long
    /// downloads, so a power cut loses little).
    pub fn sync(&mut self) -> Result<(), StoreError> {
        self.file.sync_data().map_err(io_err(&self.partial))
    }

    /// Checks size and digest; on success the blob is in the store, durably.
    /// On a digest mismatch the partial file is removed: it can never
    /// become the blob.
    pub fn commit(mut self) -> Result<(), StoreError> {
        if self.written != self.size {
            return Err(StoreError::SizeMismatch {
                digest: self.expected,
                declared: self.size,
                got: self.written,
            });
        }
        let got = Digest(std::mem::take(&mut self.hasher).finalize().into());
        if got != self.expected {
            let _ = fs::remove_file(&self.partial);
            return Err(StoreError::DigestMismatch {
                expected: self.expected,
                got,
                size: self.written,
            });
        }
        self.file.sync_all().map_err(io_err(&self.partial))?;
        fs::rename(&self.partial, &self.final_path).map_err(io_err(&self.final_path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(&self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_blob_is_stored_only_when_its_digest_matches() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let data = b"hello layer".to_vec();
        let d = Digest::of(&data);
        let wrong = Digest::of(b"something else");
        let mut w = s.begin(&wrong, data.len() as u64).unwrap();
        w.write_all(&data).unwrap();
        match w.commit() {
            Err(StoreError::DigestMismatch { expected, got, .. }) => {
                assert_eq!((expected, got), (wrong, d));
            }
            other => panic!("{other:?}"),
        }
        assert!(!s.has(&wrong));
        assert!(
            !s.partial_dir().join(wrong.hex()).exists(),
            "a mismatched partial is removed"
        );
        s.put(&d, &data).unwrap();
        assert_eq!(s.read(&d, 100).unwrap(), data);
        assert!(matches!(s.read(&d, 3), Err(StoreError::TooLarge { .. })));
    }

    #[test]
    fn more_bytes_than_declared_are_refused_as_they_arrive() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let d = Digest::of(b"abc");
        let mut w = s.begin(&d, 3).unwrap();
        w.write_all(b"ab").unwrap();
        assert!(matches!(
            w.write_all(b"cd"),
            Err(StoreError::SizeMismatch { got: 4, .. })
        ));
    }

    #[test]
    fn an_interrupted_write_resumes_from_its_length() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&data);
        let mut w = s.begin(&d, data.len() as u64).unwrap();
        w.write_all(&data[..300_000]).unwrap();
        w.sync().unwrap();
        drop(w); // the connection dropped, or the power went
        let mut w = s.begin(&d, data.len() as u64).unwrap();
        assert_eq!(w.offset(), 300_000);
        w.write_all(&data[300_000..]).unwrap();
        w.commit().unwrap();
        assert!(s.has(&d));
    }

    #[test]
    fn a_torn_partial_is_caught_by_the_digest() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let data = vec![7u8; 10_000];
        let d = Digest::of(&data);
        fs::write(s.partial_dir().join(d.hex()), vec![0u8; 4000]).unwrap();
        let mut w = s.begin(&d, data.len() as u64).unwrap();
        assert_eq!(w.offset(), 4000);
        w.write_all(&data[4000..]).unwrap();
        assert!(matches!(w.commit(), Err(StoreError::DigestMismatch { .. })));
        // The next try starts from zero.
        let w = s.begin(&d, data.len() as u64).unwrap();
        assert_eq!(w.offset(), 0);
    }

    #[test]
    fn gc_removes_what_nothing_references() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::open(t.path()).unwrap();
        let a = Digest::of(b"a");
        let b = Digest::of(b"b");
        s.put(&a, b"a").unwrap();
        s.put(&b, b"b").unwrap();
        fs::create_dir_all(s.layer_path(&b).join("etc")).unwrap();
        fs::create_dir_all(s.layer_tmp_path(&a)).unwrap();
        let r = s.gc(&BTreeSet::from([a])).unwrap();
        assert_eq!((r.blobs, r.layers, r.bytes), (1, 1, 1));
        assert!(s.has(&a) && !s.has(&b) && !s.layer_path(&b).exists());
        // An unpack left by a power cut is cleared when the store opens.
        let s = Store::open(t.path()).unwrap();
        assert!(!s.layer_tmp_path(&a).exists());
    }
}
