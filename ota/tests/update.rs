//! The update client end to end on the host: a real TUF repository made by
//! the publisher (`fluxnode-image publish`'s library), served by a real
//! nginx or by the fault-injecting server, installed into slots that are
//! files and an ESP that is a directory. Every bad input of issue 13 that
//! does not need a booted node: each leaves the running slot and the boot
//! entries as they were and says why.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::result_large_err
)]

use std::num::NonZeroU64;
use std::path::PathBuf;

use fluxnode_image::publish::keys::Keystore;
use fluxnode_image::publish::release::{self, BuildPayloads, PublishOptions};
use fluxnode_image::publish::roles::{self, Expiry, Repo};
use fluxnode_image::publish::trust::{self, InitOptions};
use fluxnode_ota::fetch::{Fetch, FetchError, FetchPolicy, Fetcher};
use fluxnode_ota::state::{Outcome, Phase, StateDir};
use fluxnode_ota::tuf::{self, RepoConfig};
use fluxnode_ota::updater::{self, Options, System, UpdateError};
use fluxnode_testkit::faulty_http::{Fault, FaultRule, FaultyHttp};
use tough::schema::RoleType;
use url::Url;

/// Both slots' bytes and the ESP's entries (name, bytes).
type Disk = (Vec<u8>, Vec<u8>, Vec<(String, Vec<u8>)>);

const COMPAT: &str = "fluxnode-x86_64-uefi-ab1";
const SLOT: usize = 8 << 20;

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

fn edited(old: &[u8], seed: u64) -> Vec<u8> {
    let mut new = old.to_vec();
    let n = new.len();
    new[n / 3..n / 3 + 64].copy_from_slice(&noise(64, seed));
    new.splice(n / 2..n / 2, b"a new string in netd".iter().copied());
    new
}

struct World {
    _tmp: tempfile::TempDir,
    tmp: PathBuf,
    repo: Repo,
    keys: Keystore,
    root2: Vec<u8>,
    uki_b2: Vec<u8>,
    sys: System,
    state: StateDir,
}

fn quick() -> FetchPolicy {
    FetchPolicy {
        tries: 3,
        backoff: std::time::Duration::from_millis(20),
        connect_timeout: std::time::Duration::from_secs(5),
        read_timeout: std::time::Duration::from_secs(5),
    }
}

/// A repository with 0.1.0 and 0.2.0 (with patches from 0.1.0 when
/// `patches`), and a node running 0.1.0 from slot a.
fn world(patches: bool) -> World {
    let t = tempfile::tempdir().unwrap();
    let tmp = t.path().to_path_buf();
    let repo = Repo::new(tmp.join("repo"));
    let made = trust::init_repo(
        &repo,
        Some(&tmp.join("keys")),
        &InitOptions {
            threshold: 1,
            keys_per_role: 1,
            expiry: Expiry::from_now(roles::now()),
        },
    )
    .unwrap();
    let keys = made.keys;
    let root1 = noise(6 << 20, 1);
    let (uki_a1, uki_b1) = (noise(300_000, 2), noise(300_000, 3));
    let root2 = edited(&root1, 10);
    let (uki_a2, uki_b2) = (edited(&uki_a1, 11), edited(&uki_b1, 12));
    let build = |v: &str, root: &[u8], a: &[u8], b: &[u8]| {
        let dir = tmp.join(format!("build-{v}"));
        release::write_build_dir(
            &dir,
            &BuildPayloads {
                version: v,
                compatible: COMPAT,
                security_version: 2,
                root,
                uki_a: a,
                uki_b: b,
            },
        )
        .unwrap();
        dir
    };
    let b1 = build("0.1.0", &root1, &uki_a1, &uki_b1);
    let b2 = build("0.2.0", &root2, &uki_a2, &uki_b2);
    for (b, from) in [
        (&b1, vec![]),
        (&b2, if patches { vec![b1.clone()] } else { vec![] }),
    ] {
        release::publish(
            &repo,
            &keys,
            &PublishOptions {
                build: b.clone(),
                from,
                min_version: "0.1.0".into(),
                security_version: None,
                raise_security_version: false,
                waves: vec![],
                released_at: 1_700_000_000,
                expiry: Expiry::from_now(roles::now()),
                patch_level: 3,
            },
            &mut |_| {},
        )
        .unwrap();
    }

    // The node: slot a runs 0.1.0, slot b holds leftovers, the ESP has
    // 0.1.0's blessed entry.
    let mut a = root1.clone();
    a.resize(SLOT, 0);
    std::fs::write(tmp.join("slot_a"), &a).unwrap();
    std::fs::write(tmp.join("slot_b"), noise(SLOT, 99)).unwrap();
    let esp = tmp.join("esp");
    std::fs::create_dir_all(esp.join("EFI/Linux")).unwrap();
    std::fs::write(esp.join("EFI/Linux/fluxnode-0.1.0-a.efi"), &uki_a1).unwrap();
    let sys = System {
        running_version: "0.1.0".into(),
        running_slot: "a".into(),
        compatible: COMPAT.into(),
        min_security_version: 1,
        running_root: tmp.join("slot_a"),
        running_root_len: root1.len() as u64,
        target_root: tmp.join("slot_b"),
        esp,
        blessed: true,
    };
    let state = StateDir::open(&tmp.join("var/ota")).unwrap();
    World {
        _tmp: t,
        tmp,
        repo,
        keys,
        root2,
        uki_b2,
        sys,
        state,
    }
}

impl World {
    fn trusted_root(&self) -> PathBuf {
        self.repo.root_path(1)
    }

    fn config(&self, base: &str) -> RepoConfig {
        let mut c =
            RepoConfig::from_source(base, &self.trusted_root(), &self.tmp.join("var/ota/tuf"))
                .unwrap();
        c.timeout = std::time::Duration::from_secs(5);
        c
    }

    /// The node's disk as it is: both slots and the ESP's files.
    fn snapshot(&self) -> Disk {
        let mut esp: Vec<(String, Vec<u8>)> = std::fs::read_dir(self.sys.esp.join("EFI/Linux"))
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.file_name().to_string_lossy().into_owned(),
                    std::fs::read(e.path()).unwrap(),
                )
            })
            .collect();
        esp.sort();
        (
            std::fs::read(&self.sys.running_root).unwrap(),
            std::fs::read(&self.sys.target_root).unwrap(),
            esp,
        )
    }

    fn install(
        &self,
        base: &str,
        fetch: &mut dyn Fetch,
        sys: &System,
    ) -> Result<updater::Report, UpdateError> {
        let verified = tuf::load(&self.config(base)).expect("metadata verifies");
        let offer = verified.offer(None).unwrap();
        updater::install(
            sys,
            &offer,
            &self.state,
            fetch,
            &Options::default(),
            &mut |_, _, _| {},
        )
    }

    fn repo_url(&self) -> String {
        Url::from_directory_path(self.repo.metadata_dir().parent().unwrap())
            .unwrap()
            .to_string()
    }

    /// The served file of a target (consistent snapshots: `<sha>.<name>`).
    fn target_file(&self, name: &str) -> PathBuf {
        std::fs::read_dir(self.repo.targets_dir())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .ends_with(&format!(".{name}"))
            })
            .unwrap_or_else(|| panic!("no target file for {name}"))
    }
}

#[test]
fn v1_to_v2_over_nginx_with_patches_downloads_under_one_percent() {
    let w = world(true);
    let Some(nginx) =
        fluxnode_testkit::nginx::Nginx::start(w.repo.metadata_dir().parent().unwrap())
    else {
        return;
    };
    let base = format!("{}/", nginx.base_url());
    let before = w.snapshot();
    let mut f = Fetcher::new(quick());
    let r = w.install(&base, &mut f, &w.sys).unwrap();
    let (a, b, esp) = w.snapshot();
    assert_eq!(a, before.0, "the running slot is never written");
    assert_eq!(&b[..w.root2.len()], &w.root2[..]);
    assert_eq!(r.entry, "fluxnode-0.2.0-b+3.efi");
    let entry = esp.iter().find(|(n, _)| n == &r.entry).unwrap();
    assert_eq!(entry.1, w.uki_b2);
    assert!(
        esp.iter().any(|(n, _)| n == "fluxnode-0.1.0-a.efi"),
        "the running entry stays"
    );
    let pct = r.downloaded as f64 * 100.0 / r.payload_bytes as f64;
    assert!(
        pct < 1.0,
        "downloaded {} of {} bytes ({pct:.2} %): {r:?}",
        r.downloaded,
        r.payload_bytes
    );
    assert!(r.root.from_patch > 0 && r.root.from_reference > 0, "{r:?}");
    assert!(
        !nginx.access_log().contains(" 200 ") || nginx.access_log().contains(".zst"),
        "payloads only by ranges"
    );
    let p = w.state.progress().unwrap().unwrap();
    assert_eq!(p.phase, Phase::Installed);
    let h = w.state.history().unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!((h[0].from.as_str(), h[0].to.as_str()), ("0.1.0", "0.2.0"));
    assert_eq!(
        h[0].outcome,
        Outcome::InProgress,
        "success is only after the new version is blessed"
    );
    assert_eq!(h[0].downloaded, p.downloaded);

    // Installing again is a no-op that says where it stands.
    let mut f = Fetcher::new(quick());
    let r2 = w.install(&base, &mut f, &w.sys).unwrap();
    assert!(r2.resumed && r2.entry == "fluxnode-0.2.0-b+3.efi");
    assert_eq!(f.received(), 0);
}

#[test]
fn without_patches_only_the_changed_chunks_are_fetched() {
    let w = world(false);
    let mut f = Fetcher::new(quick());
    let r = w.install(&w.repo_url(), &mut f, &w.sys).unwrap();
    assert!(r.root.from_reference > r.root.payload * 9 / 10, "{r:?}");
    assert!(r.root.from_ranges < r.root.payload / 10, "{r:?}");
    assert_eq!(r.root.from_patch, 0);
    let (_, b, _) = w.snapshot();
    assert_eq!(&b[..w.root2.len()], &w.root2[..]);
}

fn assert_untouched(w: &World, before: &Disk, e: &UpdateError, code: &str) {
    assert_eq!(e.code(), code, "{e}");
    assert!(e.before_any_write(), "{e}");
    let after = w.snapshot();
    assert!(after.0 == before.0, "running slot changed");
    assert!(after.1 == before.1, "target slot changed");
    assert_eq!(after.2, before.2, "boot entries changed");
}

#[test]
fn refusals_leave_both_slots_and_the_entries_as_they_were() {
    let w = world(true);
    let before = w.snapshot();
    let url = w.repo_url();
    let cases: Vec<(System, &str)> = vec![
        (
            System {
                running_version: "0.3.0".into(),
                ..w.sys.clone()
            },
            "downgrade",
        ),
        (
            System {
                compatible: "fluxnode-aarch64-uboot-ab1".into(),
                ..w.sys.clone()
            },
            "incompatible",
        ),
        (
            System {
                min_security_version: 3,
                ..w.sys.clone()
            },
            "below_security_minimum",
        ),
        (
            System {
                running_version: "0.0.1".into(),
                ..w.sys.clone()
            },
            "running_too_old",
        ),
        (
            System {
                blessed: false,
                ..w.sys.clone()
            },
            "not_blessed",
        ),
    ];
    for (sys, code) in cases {
        let mut f = Fetcher::new(quick());
        let e = w.install(&url, &mut f, &sys).unwrap_err();
        assert_untouched(&w, &before, &e, code);
        assert_eq!(f.received(), 0, "{code}: nothing downloaded");
    }
    // A payload bigger than the slot.
    let small = w.tmp.join("small_slot");
    std::fs::write(&small, vec![0u8; 1 << 20]).unwrap();
    let sys = System {
        target_root: small.clone(),
        ..w.sys.clone()
    };
    let e = w
        .install(&url, &mut Fetcher::new(quick()), &sys)
        .unwrap_err();
    assert_eq!(e.code(), "too_big", "{e}");
    assert!(e.to_string().contains("larger than"), "{e}");
    assert_eq!(std::fs::read(&small).unwrap(), vec![0u8; 1 << 20]);
    // Every refusal is in the history with its code.
    let h = w.state.history().unwrap();
    let codes: Vec<&str> = h
        .iter()
        .map(|a| a.reason.split(':').next().unwrap())
        .collect();
    assert_eq!(
        codes,
        [
            "downgrade",
            "incompatible",
            "below_security_minimum",
            "running_too_old",
            "not_blessed",
            "too_big"
        ]
    );
    assert!(
        h.iter()
            .all(|a| a.outcome == Outcome::Refused && a.downloaded == 0),
        "{h:?}"
    );
}

#[test]
fn a_server_without_ranges_or_with_a_truncated_file_is_refused_before_any_write() {
    let w = world(false);
    let before = w.snapshot();
    let srv = FaultyHttp::start_with(
        w.repo.metadata_dir().parent().unwrap(),
        [FaultRule::new("root-0.2.0", Fault::IgnoreRange)],
    )
    .unwrap();
    let base = format!("{}/", srv.base_url());
    let e = w
        .install(&base, &mut Fetcher::new(quick()), &w.sys)
        .unwrap_err();
    assert_untouched(&w, &before, &e, "range_ignored");
    assert!(e.to_string().contains("206"), "{e}");

    srv.faults().clear();
    let file = w.target_file("root-0.2.0.img");
    let full = std::fs::read(&file).unwrap();
    std::fs::write(&file, &full[..full.len() - 5000]).unwrap();
    let e = w
        .install(&base, &mut Fetcher::new(quick()), &w.sys)
        .unwrap_err();
    assert_untouched(&w, &before, &e, "truncated");
}

#[test]
fn a_chunk_that_does_not_match_its_hash_is_never_written() {
    let w = world(false);
    let before = w.snapshot();
    // Corrupt a byte inside the changed region (fetched by range, not
    // reused from the running slot).
    let at = (w.root2.len() / 3 + 10) as u64;
    let srv = FaultyHttp::start_with(
        w.repo.metadata_dir().parent().unwrap(),
        [FaultRule::new(
            "root-0.2.0",
            Fault::CorruptByte { offset: at },
        )],
    )
    .unwrap();
    let base = format!("{}/", srv.base_url());
    let e = w
        .install(&base, &mut Fetcher::new(quick()), &w.sys)
        .unwrap_err();
    assert_eq!(e.code(), "chunk_mismatch", "{e}");
    assert!(e.to_string().contains("tampered"), "{e}");
    let (a, b, esp) = w.snapshot();
    assert_eq!(a, before.0, "running slot untouched");
    // No unverified byte: every byte of the target is either what it was
    // or the signed new content; the corrupted chunk's bytes are the old ones.
    let m = tuf::load(&w.config(&base))
        .unwrap()
        .offer(None)
        .unwrap()
        .manifest;
    for (off, c) in m.root.spans() {
        let r = off as usize..off as usize + c.len as usize;
        assert!(
            b[r.clone()] == w.root2[r.clone()] || b[r.clone()] == before.1[r.clone()],
            "chunk at {off}"
        );
        if r.contains(&(at as usize)) {
            assert_eq!(b[r.clone()], before.1[r], "the bad chunk was not written");
        }
    }
    // The target slot can no longer boot (its entries were removed before
    // its first write); the running entry is still there.
    assert_eq!(
        esp.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(),
        vec!["fluxnode-0.1.0-a.efi"]
    );
    let h = w.state.history().unwrap();
    assert_eq!(h.last().unwrap().outcome, Outcome::Failed);
    assert!(
        h.last().unwrap().reason.starts_with("chunk_mismatch"),
        "{h:?}"
    );
}

#[test]
fn a_dropped_connection_resumes_and_an_interrupted_install_continues_where_it_stopped() {
    let w = world(false);
    let srv = FaultyHttp::start_with(
        w.repo.metadata_dir().parent().unwrap(),
        [FaultRule::new(
            "root-0.2.0",
            Fault::DropOnce { after: 50_000 },
        )],
    )
    .unwrap();
    let base = format!("{}/", srv.base_url());
    let r = w
        .install(&base, &mut Fetcher::new(quick()), &w.sys)
        .unwrap();
    assert!(!r.resumed);
    let (_, b, _) = w.snapshot();
    assert_eq!(&b[..w.root2.len()], &w.root2[..]);

    // Interrupted: the second fetch of the UKI fails (after the root is in).
    let w = world(false);
    struct Cut(Fetcher, u32);
    impl Fetch for Cut {
        fn range(&mut self, url: &Url, off: u64, buf: &mut [u8]) -> Result<(), FetchError> {
            if url.path().contains("uki-") {
                self.1 += 1;
                if self.1 > 1 {
                    return Err(FetchError::Unreachable {
                        url: url.to_string(),
                        why: "power cut".into(),
                        tries: 1,
                    });
                }
            }
            self.0.range(url, off, buf)
        }
        fn whole(&mut self, url: &Url, max: u64) -> Result<Vec<u8>, FetchError> {
            self.0.whole(url, max)
        }
        fn received(&self) -> u64 {
            self.0.received()
        }
        fn remote_len(&self) -> Option<u64> {
            self.0.remote_len()
        }
    }
    let url = w.repo_url();
    let mut cut = Cut(Fetcher::new(quick()), 0);
    let e = w.install(&url, &mut cut, &w.sys).unwrap_err();
    assert_eq!(e.code(), "download", "{e}");
    let p = w.state.progress().unwrap().unwrap();
    assert_eq!(p.phase, Phase::Uki, "the root is recorded as done");
    let first = cut.0.received();
    let mut f = Fetcher::new(quick());
    let r = w.install(&url, &mut f, &w.sys).unwrap();
    assert!(r.resumed);
    assert_eq!(r.root, Default::default(), "the root is not touched again");
    assert!(
        f.received() < first,
        "only the UKI's missing chunks: {} then {}",
        first,
        f.received()
    );
    let (_, b, esp) = w.snapshot();
    assert_eq!(&b[..w.root2.len()], &w.root2[..]);
    assert!(esp
        .iter()
        .any(|(n, d)| n == "fluxnode-0.2.0-b+3.efi" && *d == w.uki_b2));
    assert_eq!(w.state.progress().unwrap().unwrap().resumes, 1);
}

#[test]
fn bad_metadata_is_refused_before_any_manifest_is_read() {
    let w = world(true);
    let url = w.repo_url();
    let code = |w: &World| tuf::load(&w.config(&url)).unwrap_err().code();
    // A good load first: the datastore now knows these versions.
    let good = tuf::load(&w.config(&url)).unwrap();
    assert_eq!(good.versions_offered(), vec!["0.2.0", "0.1.0"]);
    let ts_path = w.repo.metadata_dir().join("timestamp.json");
    let good_ts = std::fs::read(&ts_path).unwrap();
    let st = w.repo.state().unwrap();
    let snap_meta = st.timestamp.signed.meta["snapshot.json"].clone();
    let root = w.repo.latest_root().unwrap().signed;

    // A bad signature: the timestamp signed by the targets key.
    let wrong = w.keys.for_role(&root, RoleType::Targets);
    let ts = roles::timestamp_of(
        snap_meta.clone(),
        NonZeroU64::new(50).unwrap(),
        roles::now() + chrono::Duration::days(1),
    );
    w.repo
        .write_role(&roles::sign_role_with(ts.clone(), &wrong).unwrap())
        .unwrap();
    assert_eq!(code(&w), "metadata_signature");
    // Too few signatures: none at all.
    w.repo
        .write_role(&roles::sign_role_with(ts, &[]).unwrap())
        .unwrap();
    assert_eq!(code(&w), "metadata_signature");
    // Expired: re-signed properly, in the past.
    std::fs::write(&ts_path, &good_ts).unwrap();
    roles::refresh(
        &w.repo,
        &w.keys,
        &Expiry::all(roles::now() - chrono::Duration::days(1)),
        true,
    )
    .unwrap();
    assert_eq!(code(&w), "metadata_expired");
    // A newer good one is accepted; the older one replayed is refused.
    roles::refresh(&w.repo, &w.keys, &Expiry::from_now(roles::now()), true).unwrap();
    tuf::load(&w.config(&url)).unwrap();
    std::fs::write(&ts_path, &good_ts).unwrap();
    assert_eq!(code(&w), "metadata_rollback");
}

#[test]
fn a_full_var_stops_the_install_before_any_slot_write() {
    let w = world(false);
    let var = w.tmp.join("fullvar");
    std::fs::create_dir_all(&var).unwrap();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&var)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        fluxnode_testkit::skip("cannot mount a small tmpfs here (needs root)");
        return;
    }
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(&self.0).status();
        }
    }
    let _u = Umount(var.clone());
    // Fill it.
    let _ = std::fs::write(var.join("filler"), vec![1u8; 1 << 20]);
    let state = StateDir::open(&var.join("ota")).or_else(|_| StateDir::open(&var));
    let state = state.unwrap();
    let before = w.snapshot();
    let verified = tuf::load(&w.config(&w.repo_url())).unwrap();
    let offer = verified.offer(None).unwrap();
    let e = updater::install(
        &w.sys,
        &offer,
        &state,
        &mut Fetcher::new(quick()),
        &Options::default(),
        &mut |_, _, _| {},
    )
    .unwrap_err();
    assert_eq!(e.code(), "state_io", "{e}");
    assert!(
        e.to_string().contains("full"),
        "the error says what to do: {e}"
    );
    let after = w.snapshot();
    assert!(after.0 == before.0 && after.1 == before.1 && after.2 == before.2);
}
