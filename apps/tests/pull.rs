//! The puller against an HTTP server that misbehaves on request
//! (testkit's `FaultyHttp`), serving an image laid out as a registry's
//! API paths: dropped connections resume, corrupted bytes are refused,
//! an index resolves to linux/amd64, a pinned digest is enforced.
//!
//! The same client against the real CNCF registry is in `registry.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Write;
use std::path::Path;

use fluxnode_apps::pull::{Progress, PullError, Puller};
use fluxnode_apps::reference::{Digest, Reference};
use fluxnode_apps::store::{Store, StoreError};
use fluxnode_testkit::faulty_http::{Fault, FaultRule, FaultyHttp};

struct Built {
    manifest: Digest,
    manifest_bytes: Vec<u8>,
    layer: Digest,
    layer_bytes: Vec<u8>,
    config: Digest,
}

fn put(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, bytes).unwrap();
}

/// A one-layer image (a ~1 MiB incompressible file, gzip) under
/// `v2/app/...`, tagged `1.0`.
fn build(root: &Path) -> Built {
    let mut data = vec![0u8; 1 << 20];
    let mut x = 0x9e3779b97f4a7c15u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "data.bin", &data[..]).unwrap();
    let plain = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let layer_bytes = gz.finish().unwrap();
    let layer = Digest::of(&layer_bytes);
    let config_bytes = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Entrypoint": ["/bin/app"]},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&plain).to_string()]},
    }))
    .unwrap();
    let config = Digest::of(&config_bytes);
    let manifest_bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_bytes.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": layer.to_string(), "size": layer_bytes.len()}],
    }))
    .unwrap();
    let manifest = Digest::of(&manifest_bytes);
    put(root, &format!("v2/app/blobs/{layer}"), &layer_bytes);
    put(root, &format!("v2/app/blobs/{config}"), &config_bytes);
    put(root, "v2/app/manifests/1.0", &manifest_bytes);
    put(
        root,
        &format!("v2/app/manifests/{manifest}"),
        &manifest_bytes,
    );
    Built {
        manifest,
        manifest_bytes,
        layer,
        layer_bytes,
        config,
    }
}

fn reference(srv: &FaultyHttp, tag_or_digest: &str) -> (Reference, Vec<String>) {
    let host = srv.addr().to_string();
    let sep = if tag_or_digest.starts_with("sha256:") {
        "@"
    } else {
        ":"
    };
    (
        Reference::parse(&format!("{host}/app{sep}{tag_or_digest}")).unwrap(),
        vec![host],
    )
}

#[test]
fn a_pull_fetches_and_verifies_every_blob() {
    let repo = tempfile::tempdir().unwrap();
    let b = build(repo.path());
    let srv = FaultyHttp::start(repo.path()).unwrap();
    let st = tempfile::tempdir().unwrap();
    let store = Store::open(st.path()).unwrap();
    let (r, insecure) = reference(&srv, "1.0");
    let mut seen = Vec::new();
    let img = Puller::new(&store, insecure.clone(), None)
        .pull(&r, &mut |p| seen.push(p))
        .unwrap();
    assert_eq!(img.manifest, b.manifest);
    assert_eq!(img.config, b.config);
    assert_eq!(img.layers, vec![b.layer]);
    assert!(store.has(&b.layer) && store.has(&b.config) && store.has(&b.manifest));
    assert!(seen
        .iter()
        .any(|p| matches!(p, Progress::Bytes { done, size, .. } if done == size)));
    // Again: nothing is fetched twice.
    let before = srv.stats(&format!("/v2/app/blobs/{}", b.layer)).requests;
    let mut seen = Vec::new();
    Puller::new(&store, insecure, None)
        .pull(&r, &mut |p| seen.push(p))
        .unwrap();
    assert_eq!(
        srv.stats(&format!("/v2/app/blobs/{}", b.layer)).requests,
        before
    );
    assert!(
        seen.iter().all(|p| matches!(p, Progress::Present { .. })),
        "{seen:?}"
    );
}

#[test]
fn a_dropped_connection_resumes_where_it_stopped() {
    let repo = tempfile::tempdir().unwrap();
    let b = build(repo.path());
    let path = format!("/v2/app/blobs/{}", b.layer);
    let srv = FaultyHttp::start_with(
        repo.path(),
        [FaultRule::new(&path, Fault::DropOnce { after: 300_000 })],
    )
    .unwrap();
    let st = tempfile::tempdir().unwrap();
    let store = Store::open(st.path()).unwrap();
    let (r, insecure) = reference(&srv, "1.0");
    let mut seen = Vec::new();
    Puller::new(&store, insecure, None)
        .pull(&r, &mut |p| seen.push(p))
        .unwrap();
    assert!(store.has(&b.layer));
    let resumed_at = seen.iter().find_map(|p| match p {
        Progress::Resume { at, .. } => Some(*at),
        _ => None,
    });
    assert!(
        resumed_at.is_some_and(|a| a > 0 && a <= 300_000),
        "{seen:?}"
    );
    let s = srv.stats(&path);
    assert_eq!(s.requests, 2, "one drop, one resume");
    // The resume asked for the rest only.
    assert!(s.body_bytes < b.layer_bytes.len() as u64 + 300_000, "{s:?}");
}

#[test]
fn a_pull_cut_by_a_reboot_resumes_from_the_store() {
    let repo = tempfile::tempdir().unwrap();
    let b = build(repo.path());
    let srv = FaultyHttp::start(repo.path()).unwrap();
    let st = tempfile::tempdir().unwrap();
    // What a power cut leaves: part of the blob in partial/.
    let half = b.layer_bytes.len() / 2;
    put(
        st.path(),
        &format!("partial/sha256/{}", b.layer.hex()),
        &b.layer_bytes[..half],
    );
    let store = Store::open(st.path()).unwrap();
    let (r, insecure) = reference(&srv, "1.0");
    let mut seen = Vec::new();
    Puller::new(&store, insecure, None)
        .pull(&r, &mut |p| seen.push(p))
        .unwrap();
    assert!(
        seen.iter()
            .any(|p| matches!(p, Progress::Blob { from, .. } if *from == half as u64)),
        "{seen:?}"
    );
    assert_eq!(
        srv.stats(&format!("/v2/app/blobs/{}", b.layer)).body_bytes,
        (b.layer_bytes.len() - half) as u64
    );
    assert_eq!(fs::read(store.blob_path(&b.layer)).unwrap(), b.layer_bytes);
}

#[test]
fn a_server_that_ignores_ranges_still_gives_the_right_blob() {
    let repo = tempfile::tempdir().unwrap();
    let b = build(repo.path());
    let path = format!("/v2/app/blobs/{}", b.layer);
    let srv =
        FaultyHttp::start_with(repo.path(), [FaultRule::new(&path, Fault::IgnoreRange)]).unwrap();
    let st = tempfile::tempdir().unwrap();
    put(
        st.path(),
        &format!("partial/sha256/{}", b.layer.hex()),
        &b.layer_bytes[..1000],
    );
    let store = Store::open(st.path()).unwrap();
    let (r, insecure) = reference(&srv, "1.0");
    Puller::new(&store, insecure, None)
        .pull(&r, &mut |_| {})
        .unwrap();
    assert_eq!(fs::read(store.blob_path(&b.layer)).unwrap(), b.layer_bytes);
}

#[test]
fn a_corrupted_blob_is_refused_and_not_kept() {
    let repo = tempfile::tempdir().unwrap();
    let b = build(repo.path());
    let path = format!("/v2/app/blobs/{}", b.layer);
    let srv = FaultyHttp::start_with(
        repo.path(),
        [FaultRule::new(&path, Fault::CorruptByte { offset: 5000 })],
    )
    .unwrap();
    let st = tempfile::tempdir().unwrap();
    let store = Store::open(st.path()).unwrap();
    let (r, insecure) = reference(&srv, "1.0");
    let err = Puller::new(&store, insecure, None)
        .pull(&r, &mut |_| {})
        .unwrap_err();
    match &err {
        PullError::Store(StoreError::DigestMismatch { expected, .. }) => {
            assert_eq!(*expected, b.layer)
        }
        other => panic!("{other}"),
    }
    assert!(err.to_string().contains("digest mismatch"), "{err}");
    assert!(!store.has(&b.layer));
}

#[test]
fn a_pinned_digest_is_enforced() {
    let repo = tempfile::tempdir().unwrap();
    let b = build(repo.path());
    // The registry serves other bytes under the pinned digest's path.
    let wrong = Digest::of(b"something else");
    put(
        repo.path(),
        &format!("v2/app/manifests/{wrong}"),
        &b.manifest_bytes,
    );
    let srv = FaultyHttp::start(repo.path()).unwrap();
    let st = tempfile::tempdir().unwrap();
    let store = Store::open(st.path()).unwrap();
    let (r, insecure) = reference(&srv, &wrong.to_string());
    let err = Puller::new(&store, insecure.clone(), None)
        .pull(&r, &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(err, PullError::Store(StoreError::DigestMismatch { expected, got, .. }) if expected == wrong && got == b.manifest),
        "{err}"
    );
    let (r, _) = reference(&srv, &b.manifest.to_string());
    Puller::new(&store, insecure, None)
        .pull(&r, &mut |_| {})
        .unwrap();
}

#[test]
fn an_index_resolves_to_linux_amd64() {
    let repo = tempfile::tempdir().unwrap();
    let b = build(repo.path());
    let index = |arches: &[&str]| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": arches.iter().map(|a| {
                let d = if *a == "amd64" { b.manifest } else { Digest::of(a.as_bytes()) };
                serde_json::json!({
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": d.to_string(),
                    "size": b.manifest_bytes.len(),
                    "platform": {"os": "linux", "architecture": a},
                })
            }).collect::<Vec<_>>(),
        }))
        .unwrap()
    };
    put(
        repo.path(),
        "v2/app/manifests/multi",
        &index(&["arm64", "amd64"]),
    );
    put(
        repo.path(),
        "v2/app/manifests/armonly",
        &index(&["arm64", "riscv64"]),
    );
    let srv = FaultyHttp::start(repo.path()).unwrap();
    let st = tempfile::tempdir().unwrap();
    let store = Store::open(st.path()).unwrap();
    let (r, insecure) = reference(&srv, "multi");
    let img = Puller::new(&store, insecure.clone(), None)
        .pull(&r, &mut |_| {})
        .unwrap();
    assert_eq!(img.manifest, b.manifest);
    let (r, _) = reference(&srv, "armonly");
    let err = Puller::new(&store, insecure, None)
        .pull(&r, &mut |_| {})
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "{}/app:armonly: no linux/amd64 image in the index (it has: linux/arm64, linux/riscv64)",
            srv.addr()
        )
    );
}

#[test]
fn a_registry_that_errors_says_what_to_do() {
    let repo = tempfile::tempdir().unwrap();
    build(repo.path());
    let srv = FaultyHttp::start(repo.path()).unwrap();
    let st = tempfile::tempdir().unwrap();
    let store = Store::open(st.path()).unwrap();
    let (r, insecure) = reference(&srv, "nosuchtag");
    let err = Puller::new(&store, insecure, None)
        .pull(&r, &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(err, PullError::Status { status: 404, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("check the image reference"),
        "{err}"
    );
}

#[test]
fn a_partial_that_is_already_whole_is_committed_or_refetched() {
    // A power cut between the last write and the rename leaves every byte
    // in partial/: no request is needed (a registry would answer the range
    // `bytes=SIZE-` with 416).
    let repo = tempfile::tempdir().unwrap();
    let b = build(repo.path());
    let srv = FaultyHttp::start(repo.path()).unwrap();
    let path = format!("/v2/app/blobs/{}", b.layer);
    let st = tempfile::tempdir().unwrap();
    put(
        st.path(),
        &format!("partial/sha256/{}", b.layer.hex()),
        &b.layer_bytes,
    );
    let store = Store::open(st.path()).unwrap();
    let (r, insecure) = reference(&srv, "1.0");
    Puller::new(&store, insecure.clone(), None)
        .pull(&r, &mut |_| {})
        .unwrap();
    assert_eq!(srv.stats(&path).requests, 0);
    assert!(store.has(&b.layer));
    // The same length but damaged: fetched again from byte 0.
    let st = tempfile::tempdir().unwrap();
    let mut bad = b.layer_bytes.clone();
    bad[10] ^= 1;
    put(
        st.path(),
        &format!("partial/sha256/{}", b.layer.hex()),
        &bad,
    );
    let store = Store::open(st.path()).unwrap();
    Puller::new(&store, insecure, None)
        .pull(&r, &mut |_| {})
        .unwrap();
    assert_eq!(srv.stats(&path).requests, 1);
    assert_eq!(fs::read(store.blob_path(&b.layer)).unwrap(), b.layer_bytes);
}

#[test]
fn an_image_larger_than_the_node_accepts_is_refused_before_any_layer() {
    let repo = tempfile::tempdir().unwrap();
    let b = build(repo.path());
    let srv = FaultyHttp::start(repo.path()).unwrap();
    let st = tempfile::tempdir().unwrap();
    let store = Store::open(st.path()).unwrap();
    let (r, insecure) = reference(&srv, "1.0");
    let err = Puller::new(&store, insecure, None)
        .with_max_total(100_000)
        .pull(&r, &mut |_| {})
        .unwrap_err();
    assert!(
        err.to_string().contains("this node accepts at most 100000"),
        "{err}"
    );
    assert_eq!(srv.stats(&format!("/v2/app/blobs/{}", b.layer)).requests, 0);
}
