//! Writing one payload into a target (the inactive root slot, or the
//! temporary UKI file on the ESP) so that no unverified byte ever reaches
//! it, while fetching as few bytes as possible.
//!
//! Every chunk of the payload comes from the cheapest source that has it,
//! and is hashed against the signed manifest before it is written:
//!
//! 1. the target itself (a resumed install: chunks written before the
//!    interruption are read back and re-verified, not trusted);
//! 2. the reference: the payload of the version the node runs (its root
//!    slot, or its UKI), through an index of its chunks computed once and
//!    cached in the state directory;
//! 3. a zstd patch from the running version, when the publisher shipped
//!    one and the running payload is exactly the patch's reference;
//! 4. byte ranges of the payload file over the network, adjacent chunks
//!    coalesced into one request.
//!
//! Progress reaches the journal only after the target was synced
//! ([`Sink::checkpoint`]), so a power cut never leaves a chunk recorded
//! that is not on the medium.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;

use fluxnode_protocol::update::{self, Chunk, Patch, Payload, CHUNK_MAX};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use url::Url;

use crate::fetch::{Fetch, FetchError};
use crate::slot::{Slot, SlotError};
use crate::state::{self, Bitmap, StateError};

/// Bytes written between two journal checkpoints at most, and the longest
/// time between two: a checkpoint is an fdatasync of the target, which
/// stops the kernel from merging writes; after a power cut, what was
/// written since the last one is found again by reading the target back
/// (not fetched again).
const CHECKPOINT_BYTES: u64 = 256 << 20;
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs fetched ahead of the one being verified and written.
const PIPELINE_DEPTH: usize = 2;

/// Largest run of adjacent chunks fetched in one range request.
const MAX_RUN: u64 = 4 << 20;

/// Largest patch file accepted (bytes).
pub const MAX_PATCH: u64 = 256 << 20;

/// Why an install stopped.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// Reading or writing the target or the reference.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// Getting bytes.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The journal.
    #[error(transparent)]
    State(#[from] StateError),
    /// Bytes that do not match the signed hash (after one more try).
    #[error("{url}: chunk {index} (bytes {offset}..{end}) does not match its signed sha256 {expected}: the repository's copy is corrupt or was tampered with; nothing of it was written")]
    ChunkMismatch {
        /// The payload URL.
        url: String,
        /// Chunk number.
        index: usize,
        /// Its offset.
        offset: u64,
        /// Its end.
        end: u64,
        /// The signed hash.
        expected: String,
    },
    /// A patch file whose hash is wrong.
    #[error("{url}: the patch does not match its signed sha256")]
    PatchMismatch {
        /// The patch URL.
        url: String,
    },
    /// The payload does not fit the target.
    #[error("{what} is {size} bytes, larger than the {target} bytes of {path}")]
    TooBig {
        /// What.
        what: String,
        /// Payload bytes.
        size: u64,
        /// Target bytes.
        target: u64,
        /// The target.
        path: String,
    },
    /// Chunks were left unwritten (a bug: every source was tried).
    #[error("{path}: {missing} chunks were not written")]
    Incomplete {
        /// The target.
        path: String,
        /// How many.
        missing: usize,
    },
}

/// Where the bytes of an install came from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Payload bytes.
    pub payload: u64,
    /// Already in the target (resumed, re-verified).
    pub from_target: u64,
    /// Copied from the running version.
    pub from_reference: u64,
    /// Rebuilt from a patch.
    pub from_patch: u64,
    /// Fetched as payload ranges.
    pub from_ranges: u64,
    /// Bytes received over the network or read from the source directory
    /// (ranges and patches, retries included).
    pub received: u64,
    /// Bytes written to the target.
    pub written: u64,
}

/// What the node already has of an older version of this payload.
#[derive(Debug)]
pub struct Reference<'a> {
    /// Its version.
    pub version: &'a str,
    /// `root` or `uki`: names the cached index.
    pub kind: &'a str,
    /// Where its bytes are.
    pub slot: &'a Slot,
    /// How many bytes of it are the payload.
    pub len: u64,
}

/// The journal hook: called with the done bitmap after the target was
/// synced; it must persist the bitmap before returning.
pub trait Sink {
    /// Records progress durably.
    fn checkpoint(&mut self, done: &Bitmap, received: u64) -> Result<(), InstallError>;
    /// Tells the operator how far it got.
    fn progress(&mut self, _what: &str, _done: u64, _total: u64) {}
}

/// A cached chunk index of a reference payload.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Index {
    version: String,
    len: u64,
    sha256: String,
    chunks: Vec<Chunk>,
}

fn load_index(r: &Reference<'_>, cache: Option<&Path>) -> Result<Index, InstallError> {
    let file = cache.map(|d| d.join(format!("index-{}-{}-{}.json", r.kind, r.version, r.len)));
    if let Some(f) = &file {
        if let Ok(bytes) = std::fs::read(f) {
            if let Ok(ix) = serde_json::from_slice::<Index>(&bytes) {
                if ix.version == r.version && ix.len == r.len {
                    return Ok(ix);
                }
            }
        }
    }
    // One pass over the reference: chunks and the whole hash.
    struct Hashing<'a> {
        slot: &'a Slot,
        at: u64,
        end: u64,
        hash: Sha256,
        err: Option<SlotError>,
    }
    impl Read for Hashing<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = (self.end - self.at).min(buf.len() as u64) as usize;
            if n == 0 {
                return Ok(0);
            }
            if let Err(e) = self.slot.read_at(self.at, &mut buf[..n]) {
                let io = std::io::Error::other(e.to_string());
                self.err = Some(e);
                return Err(io);
            }
            self.hash.update(&buf[..n]);
            self.at += n as u64;
            Ok(n)
        }
    }
    let mut rd = Hashing {
        slot: r.slot,
        at: 0,
        end: r.len.min(r.slot.size()),
        hash: Sha256::new(),
        err: None,
    };
    let chunks = update::chunk_stream(&mut rd, u64::MAX);
    if let Some(e) = rd.err.take() {
        return Err(e.into());
    }
    let chunks = chunks.map_err(|e| SlotError {
        what: "reading",
        path: r.slot.path().to_path_buf(),
        source: e,
    })?;
    let ix = Index {
        version: r.version.to_string(),
        len: r.len,
        sha256: hex::encode(rd.hash.finalize()),
        chunks,
    };
    if let Some(f) = &file {
        // A cache: failing to write it (a full /var) costs time next run,
        // nothing else.
        if let Err(e) = state::write_json(f, &ix) {
            tracing::warn!("chunk index not cached: {e}");
        }
    }
    Ok(ix)
}

/// Computes and caches the chunk index of a reference now (the daemon does
/// it once per running version, in the background after boot, so an
/// install does not pay for reading and hashing the running slot).
/// Returns the number of chunks.
pub fn warm_index(r: &Reference<'_>, cache: &Path) -> Result<usize, InstallError> {
    load_index(r, Some(cache)).map(|ix| ix.chunks.len())
}

fn sha(b: &[u8]) -> [u8; 32] {
    Sha256::digest(b).into()
}

/// Installs `payload` (served at `url`) into `target`. `done` holds the
/// chunks the journal says are written; on return every bit is set.
/// `patches`: the manifest's patches for this payload with their URLs.
#[allow(clippy::too_many_arguments)]
pub fn install_payload(
    what: &str,
    payload: &Payload,
    url: &Url,
    patches: &[(Patch, Url)],
    target: &Slot,
    reference: Option<&Reference<'_>>,
    cache: Option<&Path>,
    fetch: &mut dyn Fetch,
    done: &mut Bitmap,
    resumed: bool,
    sink: &mut dyn Sink,
) -> Result<Counters, InstallError> {
    if payload.size > target.size() {
        return Err(InstallError::TooBig {
            what: what.to_string(),
            size: payload.size,
            target: target.size(),
            path: target.path().display().to_string(),
        });
    }
    let spans: Vec<(u64, Chunk)> = payload.spans().map(|(o, c)| (o, *c)).collect();
    let n = spans.len();
    let received0 = fetch.received();
    let mut c = Counters {
        payload: payload.size,
        ..Counters::default()
    };
    let mut since_sync = (0u64, std::time::Instant::now());
    let mut buf = vec![0u8; CHUNK_MAX];

    // 1. The target: after an interruption, everything is read back and
    //    hashed, recorded or not: chunks recorded are re-verified (a torn
    //    write is caught), chunks written after the last checkpoint are
    //    found without fetching them again.
    if resumed {
        for (i, (off, ch)) in spans.iter().enumerate() {
            let b = &mut buf[..ch.len as usize];
            target.read_at(*off, b)?;
            let ok = sha(b) == ch.sha256;
            if ok {
                c.from_target += u64::from(ch.len);
            }
            done.set(i, ok);
        }
        sink.progress(what, c.from_target, payload.size);
    }

    // Writes chunks `first..end` (adjacent, verified) in one call.
    let write_span = |first: usize,
                      end: usize,
                      bytes: &[u8],
                      done: &mut Bitmap,
                      c: &mut Counters,
                      since_sync: &mut (u64, std::time::Instant),
                      received: u64,
                      sink: &mut dyn Sink|
     -> Result<(), InstallError> {
        target.write_at(spans[first].0, bytes)?;
        for i in first..end {
            done.set(i, true);
        }
        c.written += bytes.len() as u64;
        since_sync.0 += bytes.len() as u64;
        if since_sync.0 >= CHECKPOINT_BYTES || since_sync.1.elapsed() >= CHECKPOINT_EVERY {
            target.sync()?;
            sink.checkpoint(done, received)?;
            *since_sync = (0, std::time::Instant::now());
        }
        Ok(())
    };
    let write = |i: usize,
                 bytes: &[u8],
                 done: &mut Bitmap,
                 c: &mut Counters,
                 since_sync: &mut (u64, std::time::Instant),
                 received: u64,
                 sink: &mut dyn Sink|
     -> Result<(), InstallError> {
        write_span(i, i + 1, bytes, done, c, since_sync, received, sink)
    };

    let t0 = std::time::Instant::now();
    let mut phases: Vec<(&str, std::time::Duration)> = Vec::new();
    // 2. The running version's chunks, by hash.
    if let Some(r) = reference {
        if done.count() < n {
            let ix = load_index(r, cache)?;
            let mut at: HashMap<[u8; 32], (u64, u32)> = HashMap::new();
            let mut off = 0u64;
            for ch in &ix.chunks {
                at.entry(ch.sha256).or_insert((off, ch.len));
                off += u64::from(ch.len);
            }
            for (i, (_, ch)) in spans.iter().enumerate() {
                if done.get(i) {
                    continue;
                }
                let Some(&(roff, rlen)) = at.get(&ch.sha256) else {
                    continue;
                };
                if rlen != ch.len {
                    continue;
                }
                let b = &mut buf[..ch.len as usize];
                r.slot.read_at(roff, b)?;
                if sha(b) != ch.sha256 {
                    // The reference changed under its cached index: skip it.
                    continue;
                }
                c.from_reference += u64::from(ch.len);
                let b = &buf[..ch.len as usize];
                write(
                    i,
                    b,
                    done,
                    &mut c,
                    &mut since_sync,
                    fetch.received() - received0,
                    sink,
                )?;
            }
            sink.progress(what, c.from_target + c.from_reference, payload.size);

            // 3. A patch from the running version.
            let pending: u64 = spans
                .iter()
                .enumerate()
                .filter(|(i, _)| !done.get(*i))
                .map(|(_, (_, ch))| u64::from(ch.len))
                .sum();
            let usable = patches.iter().find(|(p, _)| {
                p.from_version == r.version
                    && p.from_size <= r.slot.size()
                    && p.size < pending
                    && p.size <= MAX_PATCH
                    && (p.from_size != ix.len || p.from_sha256 == ix.sha256)
            });
            if let Some((p, purl)) = usable {
                match apply_patch(p, purl, r, &spans, fetch) {
                    Ok(out) => {
                        for (i, (off, ch)) in spans.iter().enumerate() {
                            if done.get(i) {
                                continue;
                            }
                            let Some(b) =
                                out.get(*off as usize..(*off + u64::from(ch.len)) as usize)
                            else {
                                break;
                            };
                            if sha(b) != ch.sha256 {
                                continue;
                            }
                            c.from_patch += u64::from(ch.len);
                            write(
                                i,
                                b,
                                done,
                                &mut c,
                                &mut since_sync,
                                fetch.received() - received0,
                                sink,
                            )?;
                        }
                    }
                    Err(e @ InstallError::PatchMismatch { .. }) => return Err(e),
                    Err(InstallError::Fetch(e)) => {
                        tracing::warn!("patch not used ({e}); fetching the changed chunks instead")
                    }
                    Err(e) => {
                        tracing::warn!("patch not used ({e}); fetching the changed chunks instead")
                    }
                }
                sink.progress(
                    what,
                    c.from_target + c.from_reference + c.from_patch,
                    payload.size,
                );
            }
        }
    }

    phases.push(("target and reference", t0.elapsed()));
    // 4. Ranges of the payload, adjacent pending chunks in one request.
    //    A second thread fetches the next runs while this one hashes and
    //    writes the last (network or source reads overlap the writes, as
    //    no single-threaded copy can); a chunk that does not match is
    //    fetched once more alone, after the pipeline, before failing.
    let mut runs: Vec<(usize, usize, u64, u64)> = Vec::new();
    let mut i = 0usize;
    while i < n {
        if done.get(i) {
            i += 1;
            continue;
        }
        let start = i;
        let mut len = 0u64;
        while i < n && !done.get(i) && (len == 0 || len + u64::from(spans[i].1.len) <= MAX_RUN) {
            len += u64::from(spans[i].1.len);
            i += 1;
        }
        runs.push((start, i, spans[start].0, len));
    }
    let mut retry: Vec<usize> = Vec::new();
    let mut got = 0u64;
    std::thread::scope(|scope| -> Result<(), InstallError> {
        type Fetched = Result<(Vec<u8>, Vec<bool>), FetchError>;
        let (tx, rx) = std::sync::mpsc::sync_channel::<Fetched>(PIPELINE_DEPTH);
        let fetcher = &mut *fetch;
        let (runs_ref, spans_ref) = (&runs, &spans);
        // The producer fetches and hashes; the writer only writes.
        let producer = scope.spawn(move || {
            for &(start, end, off, len) in runs_ref {
                let mut b = vec![0u8; len as usize];
                let r = fetcher.range(url, off, &mut b).map(|()| {
                    let mut at = 0usize;
                    let oks = spans_ref[start..end]
                        .iter()
                        .map(|&(_, ch)| {
                            let l = ch.len as usize;
                            let ok = sha(&b[at..at + l]) == ch.sha256;
                            at += l;
                            ok
                        })
                        .collect();
                    (b, oks)
                });
                let stop = r.is_err();
                if tx.send(r).is_err() || stop {
                    return;
                }
            }
        });
        let mut result = Ok(());
        'runs: for &(start, end, _, len) in &runs {
            let (run, oks) = match rx.recv() {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => {
                    result = Err(e.into());
                    break;
                }
                Err(_) => break,
            };
            got += len;
            // Adjacent verified chunks go out in one write; a chunk that
            // does not match is left for the retry below.
            let mut j = start;
            let mut at = 0usize;
            while j < end {
                let l = spans[j].1.len as usize;
                if !oks[j - start] {
                    retry.push(j);
                    j += 1;
                    at += l;
                    continue;
                }
                let (first, from) = (j, at);
                while j < end && oks[j - start] {
                    at += spans[j].1.len as usize;
                    j += 1;
                }
                c.from_ranges += (at - from) as u64;
                let r = write_span(
                    first,
                    j,
                    &run[from..at],
                    done,
                    &mut c,
                    &mut since_sync,
                    got,
                    sink,
                );
                if let Err(e) = r {
                    result = Err(e);
                    break 'runs;
                }
            }
            sink.progress(
                what,
                c.from_target + c.from_reference + c.from_patch + c.from_ranges,
                payload.size,
            );
        }
        // Dropping the receiver stops the producer at its next send.
        drop(rx);
        let _ = producer.join();
        result
    })?;
    for j in retry {
        // One more try for this chunk alone: a flipped bit on the way is
        // not a tampered repository.
        let (joff, ch) = spans[j];
        let l = ch.len as usize;
        let b = &mut buf[..l];
        fetch.range(url, joff, b)?;
        if sha(b) != ch.sha256 {
            return Err(InstallError::ChunkMismatch {
                url: url.to_string(),
                index: j,
                offset: joff,
                end: joff + l as u64,
                expected: hex::encode(ch.sha256),
            });
        }
        c.from_ranges += l as u64;
        let b = &buf[..l];
        write(
            j,
            b,
            done,
            &mut c,
            &mut since_sync,
            fetch.received() - received0,
            sink,
        )?;
    }

    phases.push(("ranges", t0.elapsed()));
    // Durable. Every chunk was hashed against the signed manifest before
    // it was written, and the chunks tile the payload (the manifest's
    // lengths add up to its size): reading the slot back through the page
    // cache would prove nothing more. The slot's dm-verity checks every
    // block as it is read at boot; a resume reads everything back first.
    target.sync()?;
    c.received = fetch.received() - received0;
    sink.checkpoint(done, c.received)?;
    phases.push(("sync", t0.elapsed()));
    tracing::debug!("{what}: {phases:?} (cumulative)");
    if done.count() != n {
        return Err(InstallError::Incomplete {
            path: target.path().display().to_string(),
            missing: n - done.count(),
        });
    }
    Ok(c)
}

/// Checks, before anything is written, that the server serves this payload
/// as signed: it answers a range request for the last byte with 206 and
/// its file has the signed length. A server without range support, or a
/// truncated or replaced file, is refused here, with both slots as they
/// were. (Chunk hashes are checked as each chunk arrives.)
pub fn probe(payload: &Payload, url: &Url, fetch: &mut dyn Fetch) -> Result<(), InstallError> {
    if payload.size == 0 {
        return Ok(());
    }
    let mut last = [0u8; 1];
    fetch.range(url, payload.size - 1, &mut last)?;
    if let Some(len) = fetch.remote_len() {
        if len != payload.size {
            return Err(InstallError::Fetch(FetchError::Protocol {
                url: url.to_string(),
                why: format!(
                    "the file is {len} bytes, the signed payload {}: the repository's copy is {}",
                    payload.size,
                    if len < payload.size {
                        "truncated"
                    } else {
                        "not the signed one"
                    }
                ),
            }));
        }
    }
    Ok(())
}

/// Fetches a patch, checks its hash, and decodes it over the reference:
/// the new payload's bytes (every chunk is still hashed by the caller).
fn apply_patch(
    p: &Patch,
    url: &Url,
    r: &Reference<'_>,
    spans: &[(u64, Chunk)],
    fetch: &mut dyn Fetch,
) -> Result<Vec<u8>, InstallError> {
    let bytes = fetch.whole(url, p.size)?;
    if bytes.len() as u64 != p.size || hex::encode(sha(&bytes)) != p.sha256 {
        return Err(InstallError::PatchMismatch {
            url: url.to_string(),
        });
    }
    let mut reference = vec![0u8; p.from_size as usize];
    r.slot.read_at(0, &mut reference)?;
    if hex::encode(sha(&reference)) != p.from_sha256 {
        return Err(InstallError::Slot(SlotError {
            what: "using as the patch's reference (its sha256 differs)",
            path: r.slot.path().to_path_buf(),
            source: std::io::Error::other("reference mismatch"),
        }));
    }
    let total: u64 = spans.last().map_or(0, |(o, c)| o + u64::from(c.len));
    let io = |e: std::io::Error| {
        InstallError::Fetch(FetchError::Protocol {
            url: url.to_string(),
            why: format!("the patch does not decode: {e}"),
        })
    };
    let mut dec =
        zstd::stream::read::Decoder::with_ref_prefix(&bytes[..], &reference).map_err(io)?;
    dec.window_log_max(p.window_log).map_err(io)?;
    let mut out = Vec::with_capacity(total as usize);
    dec.take(total + 1).read_to_end(&mut out).map_err(io)?;
    Ok(out)
}
