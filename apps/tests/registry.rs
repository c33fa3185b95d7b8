//! Pull and unpack against the real CNCF distribution registry (Debian's
//! `docker-registry`), with an image built from `busybox-static` by umoci
//! and pushed by skopeo: what an app publisher does.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;

use fluxnode_apps::pull::{PullError, Puller};
use fluxnode_apps::reference::{Digest, Reference};
use fluxnode_apps::store::{Store, StoreError};
use fluxnode_apps::unpack::{unpack_layer, Options, Ownership};
use fluxnode_testkit::oci_registry::{push_busybox, OciRegistry};

/// A registry with a busybox image pushed as `hello:1.0`, and an empty store.
/// Bind `_dirs` by name: `..` would drop the temporary directories at once.
struct Pushed {
    reg: OciRegistry,
    digest: String,
    store: Store,
    reference: Reference,
    _dirs: [tempfile::TempDir; 2],
}

fn pushed(entrypoint: &[&str]) -> Option<Pushed> {
    let reg = OciRegistry::start()?;
    let work = tempfile::tempdir().unwrap();
    let digest = push_busybox(&reg, "hello:1.0", entrypoint, work.path()).unwrap();
    let st = tempfile::tempdir().unwrap();
    let store = Store::open(st.path()).unwrap();
    let reference = Reference::parse(&format!("{}/hello:1.0", reg.addr())).unwrap();
    Some(Pushed {
        reg,
        digest,
        store,
        reference,
        _dirs: [work, st],
    })
}

#[test]
fn an_image_pushed_by_skopeo_is_pulled_verified_and_unpacked() {
    let Some(Pushed {
        reg,
        digest: pushed,
        store,
        reference: r,
        _dirs,
    }) = pushed(&["/bin/busybox", "httpd", "-f"])
    else {
        return;
    };
    let img = Puller::new(&store, vec![reg.addr()], None)
        .pull(&r, &mut |_| {})
        .unwrap();
    assert_eq!(
        img.manifest,
        Digest::parse(&pushed).unwrap(),
        "the manifest skopeo pushed"
    );
    assert_eq!(
        img.config_json
            .config()
            .as_ref()
            .unwrap()
            .entrypoint()
            .as_deref(),
        Some(&["/bin/busybox".to_string(), "httpd".into(), "-f".into()][..])
    );
    // Every layer unpacks to what its config's diff_id says.
    let mut found = false;
    for (layer, diff_id) in img.layers.iter().zip(&img.diff_ids) {
        let dest = store.layer_tmp_path(layer);
        fs::create_dir_all(&dest).unwrap();
        let blob = fs::File::open(store.blob_path(layer)).unwrap();
        let opts = Options {
            ownership: Ownership::Ignore,
            ..Options::default()
        };
        let rep = unpack_layer(blob, &dest, &opts).unwrap();
        assert_eq!(rep.diff_id, *diff_id);
        if let Ok(b) = fs::read(dest.join("bin/busybox")) {
            assert_eq!(b, fs::read("/bin/busybox").unwrap());
            found = true;
        }
    }
    assert!(found, "bin/busybox is in a layer");
    // By digest, from the store, after a "reboot" (no network needed).
    let again = fluxnode_apps::pull::Image::load(&store, &img.manifest).unwrap();
    assert_eq!(again.layers, img.layers);
}

#[test]
fn a_blob_damaged_in_the_registry_is_refused() {
    let Some(Pushed {
        reg,
        digest: _,
        store,
        reference: r,
        _dirs,
    }) = pushed(&["/bin/busybox"])
    else {
        return;
    };
    // Find the layer through a first pull into another store.
    let other = tempfile::tempdir().unwrap();
    let probe = Store::open(other.path()).unwrap();
    let img = Puller::new(&probe, vec![reg.addr()], None)
        .pull(&r, &mut |_| {})
        .unwrap();
    let layer = img.layers[0];
    let data = reg.blob_data(&layer.hex());
    let mut bytes = fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    fs::write(&data, bytes).unwrap();
    let err = Puller::new(&store, vec![reg.addr()], None)
        .pull(&r, &mut |_| {})
        .unwrap_err();
    assert!(
        matches!(err, PullError::Store(StoreError::DigestMismatch { expected, .. }) if expected == layer),
        "{err}"
    );
    assert!(!store.has(&layer));
}

#[test]
fn layers_are_unpacked_once_and_checked_against_their_diff_ids() {
    let Some(Pushed {
        reg,
        digest: _,
        store,
        reference: r,
        _dirs,
    }) = pushed(&["/bin/busybox"])
    else {
        return;
    };
    let img = Puller::new(&store, vec![reg.addr()], None)
        .pull(&r, &mut |_| {})
        .unwrap();
    let opts = Options {
        ownership: Ownership::Ignore,
        ..Options::default()
    };
    let dirs = fluxnode_apps::rootfs::prepare_layers(&store, &img, &opts).unwrap();
    assert_eq!(dirs.len(), img.layers.len());
    assert!(dirs.iter().any(|d| d.join("bin/busybox").is_file()));
    // A second app of the same image reuses them (a marker survives).
    fs::write(dirs[0].join(".marker"), "").unwrap();
    fluxnode_apps::rootfs::prepare_layers(&store, &img, &opts).unwrap();
    assert!(dirs[0].join(".marker").exists());
    // A config whose diff_id does not match is refused, and nothing is left.
    let mut bad = img.clone();
    bad.diff_ids[0] = Digest::of(b"not this layer");
    fs::remove_dir_all(&dirs[0]).unwrap();
    let err = fluxnode_apps::rootfs::prepare_layers(&store, &bad, &opts).unwrap_err();
    assert!(err.to_string().contains("the image was refused"), "{err}");
    assert!(!dirs[0].exists() && !store.layer_tmp_path(&bad.layers[0]).exists());
}
