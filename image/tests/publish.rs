//! The publisher end to end, checked with tough's own client: a repository
//! is created, versions are published from synthetic build directories,
//! roots are rotated, and metadata a client must refuse (wrong key, too
//! few signatures, expired, replayed, a root the old keys did not sign) is
//! refused. Temp dirs only; no image build, no QEMU.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err
)]

use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use chrono::Duration;
use fluxnode_image::publish::keys::{KeyFile, Keystore};
use fluxnode_image::publish::release::{self, BuildPayloads, PublishOptions};
use fluxnode_image::publish::roles::{self, Expiry, Repo};
use fluxnode_image::publish::trust::{self, InitOptions, RootChange, RotateOptions};
use fluxnode_image::publish::{block_on, patch, PublishError};
use fluxnode_protocol::update::{self, UpdateManifest, Wave};
use sha2::{Digest, Sha256};
use tough::schema::{RoleType, Root, Signed, Timestamp};
use tough::{ExpirationEnforcement, FilesystemTransport, IntoVec, RepositoryLoader, TargetName};
use url::Url;

/// Incompressible, non-periodic bytes (xorshift64).
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

/// Version 2 of some bytes: a few edits and an insertion.
fn edited(old: &[u8], seed: u64) -> Vec<u8> {
    let mut new = old.to_vec();
    let n = new.len();
    new[n / 3..n / 3 + 64].copy_from_slice(&noise(64, seed));
    new.splice(n / 2..n / 2, b"a new string in the middle".iter().copied());
    new
}

struct Fixture {
    _tmp: tempfile::TempDir,
    repo: Repo,
    keys: Keystore,
    keys_dir: PathBuf,
    tmp: PathBuf,
}

fn init(threshold: u64, keys_per_role: usize) -> Fixture {
    let t = tempfile::tempdir().unwrap();
    let repo = Repo::new(t.path().join("repo"));
    let keys_dir = t.path().join("keys");
    let made = trust::init_repo(
        &repo,
        Some(&keys_dir),
        &InitOptions {
            threshold,
            keys_per_role,
            expiry: Expiry::from_now(roles::now()),
        },
    )
    .unwrap();
    assert_eq!(made.keys.keys.len(), 4 * keys_per_role);
    let keys = Keystore::load(std::slice::from_ref(&keys_dir)).unwrap();
    assert_eq!(keys.keys.len(), 4 * keys_per_role, "every key is on disk");
    Fixture {
        tmp: t.path().to_path_buf(),
        _tmp: t,
        repo,
        keys,
        keys_dir,
    }
}

impl Fixture {
    fn trusted_root(&self) -> Vec<u8> {
        std::fs::read(self.repo.root_path(1)).unwrap()
    }

    fn datastore(&self, name: &str) -> PathBuf {
        let d = self.tmp.join("ds").join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// tough's client, metadata and targets from the repository directory.
    fn load(
        &self,
        root: &[u8],
        datastore: &Path,
    ) -> Result<tough::Repository, tough::error::Error> {
        let md = Url::from_directory_path(self.repo.metadata_dir()).unwrap();
        let td = Url::from_directory_path(self.repo.targets_dir()).unwrap();
        block_on(
            RepositoryLoader::new(&root, md, td)
                .transport(FilesystemTransport)
                .datastore(datastore)
                .expiration_enforcement(ExpirationEnforcement::Safe)
                .load(),
        )
        .unwrap()
    }

    fn build(&self, version: &str, root: &[u8], a: &[u8], b: &[u8]) -> PathBuf {
        let dir = self.tmp.join(format!("build-{version}"));
        release::write_build_dir(
            &dir,
            &BuildPayloads {
                version,
                compatible: "fluxnode-x86_64-uefi-ab1",
                security_version: 2,
                root,
                uki_a: a,
                uki_b: b,
            },
        )
        .unwrap();
        dir
    }

    fn publish(&self, build: &Path, from: &[PathBuf]) -> Result<release::Published, PublishError> {
        release::publish(
            &self.repo,
            &self.keys,
            &PublishOptions {
                build: build.into(),
                from: from.to_vec(),
                min_version: "0.1.0".into(),
                security_version: None,
                raise_security_version: false,
                waves: vec![
                    Wave {
                        below_position: 100,
                        start_after_s: 0,
                    },
                    Wave {
                        below_position: 1024,
                        start_after_s: 3600,
                    },
                ],
                released_at: 1_700_000_000,
                expiry: Expiry::from_now(roles::now()),
                patch_level: 3,
            },
            &mut |_| {},
        )
    }
}

/// An error and its sources, one line (tough's Debug carries backtraces).
fn why(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

fn read_target(repo: &tough::Repository, name: &str) -> Vec<u8> {
    let name = TargetName::new(name).unwrap();
    block_on(async {
        let stream = repo
            .read_target(&name)
            .await
            .unwrap()
            .expect("target listed");
        stream.into_vec().await.unwrap()
    })
    .unwrap()
}

#[test]
fn publish_two_versions_and_read_them_with_tough() {
    let f = init(1, 1);
    // An empty repository loads.
    let empty = f.load(&f.trusted_root(), &f.datastore("empty")).unwrap();
    assert_eq!(empty.all_targets().count(), 0);

    let root1 = noise(600_000, 1);
    let (a1, b1) = (noise(200_000, 2), noise(200_000, 3));
    let v1 = f.build("0.1.0", &root1, &a1, &b1);
    let p1 = f.publish(&v1, &[]).unwrap();
    assert!(p1.patches.is_empty());
    assert_eq!(p1.manifest_target, "fluxnode-0.1.0.manifest.json");

    let root2 = edited(&root1, 10);
    let (a2, b2) = (edited(&a1, 11), edited(&b1, 12));
    let v2 = f.build("0.2.0", &root2, &a2, &b2);
    let p2 = f.publish(&v2, std::slice::from_ref(&v1)).unwrap();
    assert_eq!(p2.patches.len(), 3, "root and both UKIs");
    assert_eq!(
        (
            p2.targets_version,
            p2.snapshot_version,
            p2.timestamp_version
        ),
        (3, 3, 3)
    );
    // The same version twice is refused.
    let again = f.publish(&v2, &[]).unwrap_err().to_string();
    assert!(again.contains("published already"), "{again}");

    let client = f.load(&f.trusted_root(), &f.datastore("c")).unwrap();
    let mut names: Vec<String> = client
        .all_targets()
        .map(|(n, _)| n.raw().to_string())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "fluxnode-0.1.0.manifest.json",
            "fluxnode-0.2.0.manifest.json",
            "root-0.1.0.img",
            "root-0.2.0-from-0.1.0.zst",
            "root-0.2.0.img",
            "uki-a-0.1.0.efi",
            "uki-a-0.2.0-from-0.1.0.zst",
            "uki-a-0.2.0.efi",
            "uki-b-0.1.0.efi",
            "uki-b-0.2.0-from-0.1.0.zst",
            "uki-b-0.2.0.efi",
        ],
        "earlier targets stay"
    );
    // tuftool's layout: consistent snapshots, content-addressed targets.
    let md = f.repo.metadata_dir();
    for file in [
        "1.root.json",
        "timestamp.json",
        "3.snapshot.json",
        "3.targets.json",
    ] {
        assert!(md.join(file).is_file(), "{file}");
    }
    let sum = hex::encode(Sha256::digest(&root2));
    assert!(f
        .repo
        .targets_dir()
        .join(format!("{sum}.root-0.2.0.img"))
        .is_file());

    let m = UpdateManifest::parse(&read_target(&client, "fluxnode-0.2.0.manifest.json")).unwrap();
    assert_eq!(m, p2.manifest);
    assert_eq!(
        (m.version.as_str(), m.min_version.as_str()),
        ("0.2.0", "0.1.0")
    );
    assert_eq!(
        (m.security_version, m.compatible.as_str()),
        (2, "fluxnode-x86_64-uefi-ab1")
    );
    assert_eq!(m.waves.len(), 2);
    assert_eq!(
        m.root.chunks,
        update::chunk_stream(&root2[..], u64::MAX).unwrap()
    );
    assert!(m.root.chunks.len() > 3);
    assert_eq!(read_target(&client, &m.root.target), root2);

    // Root patch: over the old root; UKI patches: over the old UKI of the
    // *other* slot (the one the node runs while it installs this one).
    let check = |payload: &update::Payload, reference: &[u8], new: &[u8]| {
        assert_eq!(payload.patches.len(), 1);
        let p = &payload.patches[0];
        assert_eq!(p.from_version, "0.1.0");
        assert_eq!(p.from_sha256, hex::encode(Sha256::digest(reference)));
        assert_eq!(p.from_size, reference.len() as u64);
        let bytes = read_target(&client, &p.target);
        assert_eq!(p.sha256, hex::encode(Sha256::digest(&bytes)));
        assert!(
            bytes.len() < new.len() / 10,
            "patch {} is {} bytes for a {} byte payload",
            p.target,
            bytes.len(),
            new.len()
        );
        assert_eq!(
            patch::apply(reference, &bytes, p.window_log, payload.size).unwrap(),
            new
        );
    };
    check(&m.root, &root1, &root2);
    let uki = |s: &str| &m.uki_for(s).unwrap().payload;
    check(uki("a"), &b1, &a2);
    check(uki("b"), &a1, &b2);
    assert_eq!(read_target(&client, &uki("b").target), b2);

    // The older manifest is still served and still valid.
    let m1 = UpdateManifest::parse(&read_target(&client, "fluxnode-0.1.0.manifest.json")).unwrap();
    assert_eq!(m1.version, "0.1.0");
}

#[test]
fn publish_refuses_a_wrong_security_version_and_a_newer_reference() {
    let f = init(1, 1);
    let v2 = f.build("0.2.0", &noise(70_000, 1), b"MZ a", b"MZ b");
    let v3 = f.build("0.3.0", &noise(70_000, 2), b"MZ a3", b"MZ b3");
    let e = f
        .publish(&v2, std::slice::from_ref(&v3))
        .unwrap_err()
        .to_string();
    assert!(e.contains("not older"), "{e}");
    let mut opts = PublishOptions {
        build: v2.clone(),
        from: vec![],
        min_version: "0.1.0".into(),
        security_version: Some(5),
        raise_security_version: true,
        waves: vec![],
        released_at: 1,
        expiry: Expiry::from_now(roles::now()),
        patch_level: 1,
    };
    let e = release::publish(&f.repo, &f.keys, &opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("fluxnode.secver=2"), "{e}");
    // A tampered payload is refused, naming the file.
    std::fs::write(v2.join("uki_b.efi"), b"MZ other").unwrap();
    opts.security_version = Some(2);
    let e = release::publish(&f.repo, &f.keys, &opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(e.contains("uki_b.efi"), "{e}");
    assert_eq!(
        release::parse_waves("100:0, 1024:3600").unwrap(),
        [
            Wave {
                below_position: 100,
                start_after_s: 0
            },
            Wave {
                below_position: 1024,
                start_after_s: 3600
            }
        ]
    );
    assert!(release::parse_waves("100").is_err());
    assert_eq!(
        release::manifest_target("1.0~rc1"),
        "fluxnode-1.0+rc1.manifest.json"
    );
}

#[test]
fn publishing_needs_the_snapshot_and_timestamp_keys() {
    let f = init(1, 1);
    let root = f.repo.latest_root().unwrap().signed;
    let only_targets = Keystore::from_keys(f.keys.for_role(&root, RoleType::Targets));
    let v = f.build("0.1.0", &noise(70_000, 1), b"MZ a", b"MZ b");
    let e = release::publish(
        &f.repo,
        &only_targets,
        &PublishOptions {
            build: v,
            from: vec![],
            min_version: "0.1.0".into(),
            security_version: None,
            raise_security_version: false,
            waves: vec![],
            released_at: 1,
            expiry: Expiry::from_now(roles::now()),
            patch_level: 1,
        },
        &mut |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(e, PublishError::Keys { ref role, .. } if role == "snapshot"),
        "{e}"
    );
}

#[test]
fn root_rotation_is_followed_and_a_root_without_the_old_keys_is_refused() {
    let f = init(1, 1);
    let v1_root = f.trusted_root();
    let old = f.repo.latest_root().unwrap().signed;
    let old_root_key = f.keys.for_role(&old, RoleType::Root)[0].clone();
    let old_ts_key = f.keys.for_role(&old, RoleType::Timestamp)[0].clone();
    // New root key and new timestamp key, the old ones removed.
    let r = trust::rotate_root(
        &f.repo,
        &f.keys,
        &RotateOptions {
            change: RootChange {
                add_keys: vec![RoleType::Root, RoleType::Timestamp],
                remove_keys: vec![old_root_key.id_hex()[..12].into(), old_ts_key.id_hex()],
                thresholds: vec![],
            },
            expiry: Expiry::from_now(roles::now()),
        },
    )
    .unwrap();
    assert_eq!(r.root.signed.version.get(), 2);
    assert!(
        r.resigned,
        "timestamp keys changed: the timestamp is re-signed"
    );
    assert_eq!(r.new_keys.len(), 2);
    assert!(r.new_keys.iter().all(|k| k.path.starts_with(&f.keys_dir)));
    assert_eq!(r.root.signatures.len(), 2, "old and new root key");
    assert!(old.verify_role(&r.root).is_ok());

    // A client that trusts only version 1 walks to version 2 and accepts
    // the timestamp signed by the new key.
    let c = f.load(&v1_root, &f.datastore("rot")).unwrap();
    assert_eq!(c.root().signed.version.get(), 2);
    assert!(c.timestamp().signed.version.get() >= 2);
    let state = f.repo.state().unwrap();
    assert_eq!(state.timestamp.signatures[0].keyid, *r.new_keys[1].id());

    // Removing every root key is refused (the root could never be signed).
    let e = trust::next_root(
        &r.root.signed,
        &RootChange {
            add_keys: vec![],
            remove_keys: vec![r.new_keys[0].id_hex()],
            thresholds: vec![],
        },
        roles::now() + Duration::days(30),
        None,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("could never be signed"), "{e}");

    // Version 3 whose root key is an intruder's, signed only by that key
    // (not by version 2's root key).
    let intruder = KeyFile::generate().unwrap();
    let mut v3: Root = r.root.signed.clone();
    v3.version = NonZeroU64::new(3).unwrap();
    v3.keys
        .insert(intruder.id().clone(), intruder.tuf_key().clone());
    v3.roles.get_mut(&RoleType::Root).unwrap().keyids = vec![intruder.id().clone()];
    // The library refuses to sign it without version 2's root keys...
    let e = trust::sign_rotated_root(
        &r.root.signed,
        v3.clone(),
        &Keystore::from_keys(vec![intruder.clone()]),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("old root"), "{e}");
    // ...and a client refuses it when someone writes it anyway.
    let forged = roles::sign_role_with(v3, &[intruder]).unwrap();
    f.repo.write_role(&forged).unwrap();
    let e = f.load(&v1_root, &f.datastore("forged")).unwrap_err();
    assert!(why(&e).contains("Signature threshold"), "{}", why(&e));
    // With version 2's key too it is a valid rotation.
    let v2_key = Keystore::load(std::slice::from_ref(&f.keys_dir))
        .unwrap()
        .find(&r.new_keys[0].id_hex())
        .cloned()
        .unwrap();
    let mut both = forged.signed.clone();
    let extra = roles::sign_role_with(forged.signed.signed.clone(), &[v2_key]).unwrap();
    both.signatures.extend(extra.signed.signatures);
    f.repo
        .write_role(&roles::Encoded::new(both).unwrap())
        .unwrap();
    let c = f.load(&v1_root, &f.datastore("both")).unwrap();
    assert_eq!(c.root().signed.version.get(), 3);
}

#[test]
fn a_threshold_of_two_is_not_met_by_one_signature() {
    let f = init(2, 2);
    let root = f.repo.latest_root().unwrap();
    assert_eq!(root.signatures.len(), 2);
    assert!(f.load(&f.trusted_root(), &f.datastore("ok")).is_ok());
    let ts_keys = f.keys.for_role(&root.signed, RoleType::Timestamp);
    assert_eq!(ts_keys.len(), 2);

    // The library refuses to sign below the threshold...
    let one = Keystore::from_keys(
        f.keys
            .keys
            .iter()
            .filter(|k| k.id() != ts_keys[1].id())
            .cloned()
            .collect(),
    );
    let e = roles::refresh(&f.repo, &one, &Expiry::from_now(roles::now()), true).unwrap_err();
    assert!(
        matches!(e, PublishError::Keys { ref role, .. } if role == "timestamp"),
        "{e}"
    );

    // ...and a client refuses a timestamp that carries one signature.
    let st = f.repo.state().unwrap();
    let ts = roles::timestamp_of(
        st.timestamp.signed.meta["snapshot.json"].clone(),
        roles::next(st.timestamp.signed.version),
        roles::now() + Duration::days(1),
    );
    let bad = roles::sign_role_with(ts, &ts_keys[..1]).unwrap();
    f.repo.write_role(&bad).unwrap();
    let e = f.load(&f.trusted_root(), &f.datastore("one")).unwrap_err();
    assert!(why(&e).contains("Signature threshold"), "{}", why(&e));
}

#[test]
fn wrong_key_expired_and_replayed_timestamps_are_refused() {
    let f = init(1, 1);
    let trusted = f.trusted_root();
    let root = f.repo.latest_root().unwrap().signed;
    let st = f.repo.state().unwrap();
    let snap_meta = st.timestamp.signed.meta["snapshot.json"].clone();
    let ts_path = f.repo.metadata_dir().join("timestamp.json");
    let good = std::fs::read(&ts_path).unwrap();

    // Signed by a key the root does not list for the timestamp (the
    // targets key: a real key of this repository, the wrong role).
    let wrong = f.keys.for_role(&root, RoleType::Targets);
    let ts = roles::timestamp_of(
        snap_meta.clone(),
        NonZeroU64::new(5).unwrap(),
        roles::now() + Duration::days(1),
    );
    f.repo
        .write_role(&roles::sign_role_with(ts, &wrong).unwrap())
        .unwrap();
    let e = f.load(&trusted, &f.datastore("wrong")).unwrap_err();
    assert!(why(&e).contains("Signature threshold"), "{}", why(&e));

    // Expired (signed by the right key).
    std::fs::write(&ts_path, &good).unwrap();
    assert!(f.load(&trusted, &f.datastore("x")).is_ok());
    let past = Expiry::all(roles::now() - Duration::days(1));
    roles::refresh(&f.repo, &f.keys, &past, false).unwrap();
    let e = f.load(&trusted, &f.datastore("expired")).unwrap_err();
    assert!(why(&e).contains("expired"), "{}", why(&e));

    // A fresh refresh loads; then the older timestamp replayed to a client
    // that has seen the newer one is refused.
    let r = roles::refresh(&f.repo, &f.keys, &Expiry::from_now(roles::now()), false).unwrap();
    assert_eq!(r.timestamp_version, 3);
    assert_eq!(r.snapshot_version, Some(3));
    let ds = f.datastore("replay");
    let c = f.load(&trusted, &ds).unwrap();
    assert_eq!(c.timestamp().signed.version.get(), 3);
    std::fs::write(&ts_path, &good).unwrap();
    let old: Signed<Timestamp> = serde_json::from_slice(&good).unwrap();
    assert_eq!(old.signed.version.get(), 1);
    let e = f.load(&trusted, &ds).unwrap_err();
    assert!(
        why(&e).contains("previously fetched version 3"),
        "{}",
        why(&e)
    );
    // A client without that memory still takes it (TUF's guarantee is
    // per client): the replay check is what the datastore is for.
    assert!(f.load(&trusted, &f.datastore("fresh")).is_ok());

    // --timestamp-only keeps the snapshot.
    std::fs::write(&ts_path, serde_json::to_vec(&st.timestamp).unwrap()).unwrap();
    let r = roles::refresh(&f.repo, &f.keys, &Expiry::from_now(roles::now()), true).unwrap();
    assert_eq!(r.snapshot_version, None);
    assert_eq!(r.timestamp_version, 2);
}

#[test]
fn baked_roots_are_checked() {
    let f = init(1, 1);
    let bytes = f.trusted_root();
    let root = trust::check_root(&bytes).unwrap();
    assert_eq!(root.signed.version.get(), 1);
    // A root that expires within 30 days draws a warning from publish and refresh.
    assert!(roles::root_expiry_warning(&root.signed, roles::now()).is_none());
    let late = roles::now() + Duration::days(340);
    let w = roles::root_expiry_warning(&root.signed, late).unwrap();
    assert!(w.contains("rotate-root"), "{w}");
    let tampered =
        String::from_utf8(bytes)
            .unwrap()
            .replacen("\"version\": 1", "\"version\": 7", 1);
    let e = trust::check_root(tampered.as_bytes()).unwrap_err();
    assert!(e.contains("not signed"), "{e}");
    assert!(trust::check_root(b"{}").is_err());
    // A repository is initialised once.
    let e = trust::init_repo(
        &f.repo,
        None,
        &InitOptions {
            threshold: 1,
            keys_per_role: 1,
            expiry: Expiry::from_now(roles::now()),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("initialised already"), "{e}");
    let e = trust::init_repo(
        &Repo::new(f.tmp.join("other")),
        None,
        &InitOptions {
            threshold: 2,
            keys_per_role: 1,
            expiry: Expiry::from_now(roles::now()),
        },
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("could never be signed"), "{e}");
}
