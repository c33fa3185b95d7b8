//! The installer on real files: payloads served from a directory
//! (`file://`), targets and references as files. Every source of bytes,
//! every refusal, and a resume after an interruption.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use fluxnode_ota::fetch::{Fetch, FetchError, FetchPolicy, Fetcher};
use fluxnode_ota::install::{install_payload, Counters, InstallError, Reference, Sink};
use fluxnode_ota::slot::Slot;
use fluxnode_ota::state::Bitmap;
use fluxnode_protocol::update::{chunk_stream, Patch, Payload};
use sha2::{Digest, Sha256};
use url::Url;

/// Non-periodic bytes (xorshift64), compressible like a file system is not.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// "v1" and "v2" of a payload: v2 is v1 with a few edits (one inserted
/// string, one overwritten block).
fn versions() -> (Vec<u8>, Vec<u8>) {
    let v1 = noise(10 << 20, 42);
    let mut v2 = v1.clone();
    v2.splice(700_000..700_000, b"netd: a changed string".iter().copied());
    let n = v2.len();
    v2[n - 5000..n - 4000].fill(7);
    (v1, v2)
}

fn payload(name: &str, data: &[u8]) -> Payload {
    Payload {
        target: name.into(),
        size: data.len() as u64,
        sha256: hex::encode(Sha256::digest(data)),
        chunks: chunk_stream(data, u64::MAX).unwrap(),
        patches: vec![],
    }
}

fn file_url(p: &Path) -> Url {
    Url::from_file_path(p).unwrap()
}

#[derive(Default)]
struct Journal {
    checkpoints: Vec<(usize, u64)>,
}

impl Sink for Journal {
    fn checkpoint(&mut self, done: &Bitmap, received: u64) -> Result<(), InstallError> {
        self.checkpoints.push((done.count(), received));
        Ok(())
    }
}

struct Setup {
    _dir: tempfile::TempDir,
    repo: PathBuf,
    target: PathBuf,
    reference: PathBuf,
    v1: Vec<u8>,
    v2: Vec<u8>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = versions();
    let repo = dir.path().join("repo");
    std::fs::create_dir(&repo).unwrap();
    std::fs::write(repo.join("root-2.img"), &v2).unwrap();
    // Slots are 12 MiB "partitions": the running one holds v1, the target
    // holds something else (an older version's leftovers).
    let reference = dir.path().join("slot_a");
    let mut a = v1.clone();
    a.resize(12 << 20, 0);
    std::fs::write(&reference, &a).unwrap();
    let target = dir.path().join("slot_b");
    std::fs::write(&target, noise(12 << 20, 9)).unwrap();
    Setup {
        _dir: dir,
        repo,
        target,
        reference,
        v1,
        v2,
    }
}

fn run(
    s: &Setup,
    p: &Payload,
    patches: &[(Patch, Url)],
    with_ref: bool,
    fetch: &mut dyn Fetch,
    done: &mut Bitmap,
    resumed: bool,
) -> Result<Counters, InstallError> {
    let target = Slot::open_target(&s.target).unwrap();
    let rslot = Slot::open_read(&s.reference).unwrap();
    let r = Reference {
        version: "1",
        kind: "root",
        slot: &rslot,
        len: s.v1.len() as u64,
    };
    let url = file_url(&s.repo.join("root-2.img"));
    let mut j = Journal::default();
    install_payload(
        "root",
        p,
        &url,
        patches,
        &target,
        with_ref.then_some(&r),
        None,
        fetch,
        done,
        resumed,
        &mut j,
    )
}

fn target_holds(s: &Setup, data: &[u8]) -> bool {
    let t = std::fs::read(&s.target).unwrap();
    &t[..data.len()] == data
}

#[test]
fn a_full_install_fetches_everything_and_verifies_it() {
    let s = setup();
    let p = payload("root-2.img", &s.v2);
    let mut f = Fetcher::new(FetchPolicy::default());
    let mut done = Bitmap::new(p.chunks.len());
    let c = run(&s, &p, &[], false, &mut f, &mut done, false).unwrap();
    assert!(target_holds(&s, &s.v2));
    assert_eq!(c.from_ranges, p.size);
    assert_eq!(c.received, p.size);
    assert_eq!(done.count(), p.chunks.len());
}

#[test]
fn the_running_version_supplies_every_unchanged_chunk() {
    let s = setup();
    let p = payload("root-2.img", &s.v2);
    let mut f = Fetcher::new(FetchPolicy::default());
    let mut done = Bitmap::new(p.chunks.len());
    let c = run(&s, &p, &[], true, &mut f, &mut done, false).unwrap();
    assert!(target_holds(&s, &s.v2));
    assert!(c.from_reference > p.size * 9 / 10, "{c:?}");
    assert!(
        c.received < p.size / 10,
        "only changed chunks are fetched: {c:?}"
    );
    assert_eq!(c.from_reference + c.from_ranges, p.size);
}

fn make_patch(old: &[u8], new: &[u8], repo: &Path) -> Patch {
    let mut enc = zstd::stream::write::Encoder::with_ref_prefix(Vec::new(), 19, old).unwrap();
    enc.long_distance_matching(true).unwrap();
    enc.window_log(27).unwrap();
    std::io::Write::write_all(&mut enc, new).unwrap();
    let bytes = enc.finish().unwrap();
    std::fs::write(repo.join("root-2-from-1.zst"), &bytes).unwrap();
    Patch {
        from_version: "1".into(),
        from_size: old.len() as u64,
        from_sha256: hex::encode(Sha256::digest(old)),
        target: "root-2-from-1.zst".into(),
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
        window_log: 27,
    }
}

#[test]
fn a_patch_rebuilds_the_changed_chunks() {
    let s = setup();
    let patch = make_patch(&s.v1, &s.v2, &s.repo);
    let mut p = payload("root-2.img", &s.v2);
    p.patches.push(patch.clone());
    let purl = file_url(&s.repo.join(&patch.target));
    let mut f = Fetcher::new(FetchPolicy::default());
    let mut done = Bitmap::new(p.chunks.len());
    let c = run(
        &s,
        &p,
        &[(patch.clone(), purl)],
        true,
        &mut f,
        &mut done,
        false,
    )
    .unwrap();
    assert!(target_holds(&s, &s.v2));
    assert_eq!(c.from_ranges, 0, "{c:?}");
    assert!(c.from_patch > 0);
    assert_eq!(c.received, patch.size, "only the patch was fetched");
    assert!(
        patch.size < 2000,
        "the patch of two small edits is small: {}",
        patch.size
    );
}

#[test]
fn a_tampered_patch_is_refused_before_anything_of_it_is_written() {
    let s = setup();
    let mut patch = make_patch(&s.v1, &s.v2, &s.repo);
    let mut bytes = std::fs::read(s.repo.join(&patch.target)).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    std::fs::write(s.repo.join(&patch.target), &bytes).unwrap();
    patch.size = bytes.len() as u64;
    let mut p = payload("root-2.img", &s.v2);
    p.patches.push(patch.clone());
    let purl = file_url(&s.repo.join(&patch.target));
    let mut f = Fetcher::new(FetchPolicy::default());
    let mut done = Bitmap::new(p.chunks.len());
    let e = run(&s, &p, &[(patch, purl)], true, &mut f, &mut done, false).unwrap_err();
    assert!(matches!(e, InstallError::PatchMismatch { .. }), "{e}");
}

/// A fetcher that gives up after `budget` bytes (a power cut, a reboot).
struct Cut {
    inner: Fetcher,
    budget: u64,
}

impl Fetch for Cut {
    fn range(&mut self, url: &Url, offset: u64, buf: &mut [u8]) -> Result<(), FetchError> {
        if self.inner.received() + buf.len() as u64 > self.budget {
            return Err(FetchError::Unreachable {
                url: url.to_string(),
                why: "cut".into(),
                tries: 1,
            });
        }
        self.inner.range(url, offset, buf)
    }
    fn whole(&mut self, url: &Url, max: u64) -> Result<Vec<u8>, FetchError> {
        self.inner.whole(url, max)
    }
    fn received(&self) -> u64 {
        self.inner.received()
    }
}

#[test]
fn an_interrupted_install_resumes_and_fetches_only_the_rest() {
    let s = setup();
    let p = payload("root-2.img", &s.v2);
    let mut cut = Cut {
        inner: Fetcher::new(FetchPolicy::default()),
        budget: p.size / 2,
    };
    let mut done = Bitmap::new(p.chunks.len());
    let e = run(&s, &p, &[], false, &mut cut, &mut done, false).unwrap_err();
    assert!(e.to_string().contains("cut"), "{e}");
    let written = done.count();
    assert!(written > 0 && written < p.chunks.len());
    // The journal may lag behind the disk (checkpoints every 16 MiB); a
    // resume re-reads the target and trusts nothing it does not hash. Lose
    // the bitmap entirely: the target alone tells what is there.
    let mut done = Bitmap::new(p.chunks.len());
    let mut f = Fetcher::new(FetchPolicy::default());
    let c = run(&s, &p, &[], false, &mut f, &mut done, true).unwrap();
    assert!(target_holds(&s, &s.v2));
    assert!(
        c.from_target >= p.size / 2 - (4 << 20).min(p.size / 2),
        "{c:?}"
    );
    assert!(c.received <= p.size - c.from_target, "{c:?}");
    assert_eq!(c.from_target + c.from_ranges, p.size);
}

#[test]
fn a_resume_rewrites_a_chunk_that_was_damaged_on_the_disk() {
    let s = setup();
    let p = payload("root-2.img", &s.v2);
    let mut f = Fetcher::new(FetchPolicy::default());
    let mut done = Bitmap::new(p.chunks.len());
    run(&s, &p, &[], false, &mut f, &mut done, false).unwrap();
    // A torn write: one byte of chunk 3 differs, the journal says done.
    let off: u64 = p.chunks[..3].iter().map(|c| u64::from(c.len)).sum();
    let mut t = std::fs::read(&s.target).unwrap();
    t[off as usize + 10] ^= 0xff;
    std::fs::write(&s.target, &t).unwrap();
    let mut f = Fetcher::new(FetchPolicy::default());
    let c = run(&s, &p, &[], false, &mut f, &mut done, true).unwrap();
    assert_eq!(c.from_ranges, u64::from(p.chunks[3].len), "{c:?}");
    assert!(target_holds(&s, &s.v2));
}

#[test]
fn a_chunk_that_does_not_match_is_never_written() {
    let s = setup();
    let p = payload("root-2.img", &s.v2);
    let before = std::fs::read(&s.target).unwrap();
    // The repository's file differs in chunk 0.
    let mut bad = s.v2.clone();
    bad[100] ^= 1;
    std::fs::write(s.repo.join("root-2.img"), &bad).unwrap();
    let mut f = Fetcher::new(FetchPolicy::default());
    let mut done = Bitmap::new(p.chunks.len());
    let e = run(&s, &p, &[], false, &mut f, &mut done, false).unwrap_err();
    assert!(
        matches!(e, InstallError::ChunkMismatch { index: 0, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("nothing of it was written"));
    // The bad chunk's bytes are what they were; every other byte of the
    // target is either what it was or the signed new content.
    let after = std::fs::read(&s.target).unwrap();
    let l0 = p.chunks[0].len as usize;
    assert_eq!(after[..l0], before[..l0], "the bad chunk was not written");
    for (off, ch) in p.spans() {
        let r = off as usize..off as usize + ch.len as usize;
        assert!(
            after[r.clone()] == s.v2[r.clone()] || after[r.clone()] == before[r],
            "chunk at {off}"
        );
    }
    assert!(!done.get(0), "the bad chunk is not recorded as done");
}

#[test]
fn a_payload_larger_than_the_target_is_refused_before_any_write() {
    let s = setup();
    let big = noise(13 << 20, 3);
    std::fs::write(s.repo.join("root-2.img"), &big).unwrap();
    let p = payload("root-2.img", &big);
    let before = std::fs::read(&s.target).unwrap();
    let mut f = Fetcher::new(FetchPolicy::default());
    let mut done = Bitmap::new(p.chunks.len());
    let e = run(&s, &p, &[], false, &mut f, &mut done, false).unwrap_err();
    assert!(matches!(e, InstallError::TooBig { .. }), "{e}");
    assert_eq!(f.received(), 0);
    assert_eq!(std::fs::read(&s.target).unwrap(), before);
}

#[test]
fn a_short_repository_file_is_reported_as_truncated() {
    let s = setup();
    let p = payload("root-2.img", &s.v2);
    std::fs::write(s.repo.join("root-2.img"), &s.v2[..s.v2.len() / 2]).unwrap();
    let mut f = Fetcher::new(FetchPolicy::default());
    let mut done = Bitmap::new(p.chunks.len());
    let e = run(&s, &p, &[], false, &mut f, &mut done, false).unwrap_err();
    assert!(
        matches!(e, InstallError::Fetch(FetchError::Short { .. })),
        "{e}"
    );
    assert!(e.to_string().contains("truncated"), "{e}");
}
