//! The repository on disk and the signing of single roles.
//!
//! [`Repo`] reads the current state (the newest root, the timestamp and the
//! snapshot and targets it names). [`sign_role_with`] signs any role with
//! exactly the keys it is given, whatever the root says: the normal paths
//! pass the keys the root lists (checked against its threshold first);
//! tests pass a wrong key or too few keys to make metadata a client must
//! refuse. [`refresh`] re-signs snapshot and timestamp with a new expiry.

use std::collections::HashMap;
use std::num::NonZeroU64;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use olpc_cjson::CanonicalFormatter;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tough::schema::{
    Hashes, Metafile, Role, RoleType, Root, Signature, Signed, Snapshot, Targets, Timestamp,
};

use super::keys::{KeyFile, Keystore};
use super::{file_err, io, write_atomic, PublishError, Result};

/// The TUF specification version the metadata claims (tough checks it).
pub const SPEC_VERSION: &str = "1.0.0";

/// When each role's new signature expires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expiry {
    /// root.json.
    pub root: DateTime<Utc>,
    /// targets.json.
    pub targets: DateTime<Utc>,
    /// snapshot.json.
    pub snapshot: DateTime<Utc>,
    /// timestamp.json.
    pub timestamp: DateTime<Utc>,
}

impl Expiry {
    /// The defaults counted from `now`: root 365 days, targets 90, snapshot
    /// 30, timestamp 7 (run `tuf refresh` more often than that).
    pub fn from_now(now: DateTime<Utc>) -> Expiry {
        Expiry {
            root: now + Duration::days(365),
            targets: now + Duration::days(90),
            snapshot: now + Duration::days(30),
            timestamp: now + Duration::days(7),
        }
    }

    /// Every role expiring at `at` (tests: an already expired repository).
    pub fn all(at: DateTime<Utc>) -> Expiry {
        Expiry {
            root: at,
            targets: at,
            snapshot: at,
            timestamp: at,
        }
    }

    /// The defaults, with `days` for every role but the timestamp and
    /// `timestamp_days` for it, where given.
    pub fn days(now: DateTime<Utc>, days: Option<u32>, timestamp_days: Option<u32>) -> Expiry {
        let mut e = Expiry::from_now(now);
        if let Some(d) = days {
            let at = now + Duration::days(i64::from(d));
            e.root = at;
            e.targets = at;
            e.snapshot = at;
        }
        if let Some(d) = timestamp_days {
            e.timestamp = now + Duration::days(i64::from(d));
        }
        e
    }
}

/// The current time, whole seconds (TUF expiry strings have no fraction).
pub fn now() -> DateTime<Utc> {
    let secs = Utc::now().timestamp();
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

/// A time from Unix seconds.
pub fn at_unix(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(secs, 0).unwrap_or_default()
}

/// A signed role with the exact bytes written for it.
#[derive(Debug, Clone)]
pub struct Encoded<T> {
    /// The metadata.
    pub signed: Signed<T>,
    /// The file's bytes (pretty JSON and a newline, as tough writes them).
    pub bytes: Vec<u8>,
}

impl<T: Role + Serialize> Encoded<T> {
    /// Serializes a signed role.
    pub fn new(signed: Signed<T>) -> Result<Encoded<T>> {
        let mut bytes = serde_json::to_vec_pretty(&signed)
            .map_err(|e| PublishError::Invalid(format!("serializing {}: {e}", T::TYPE)))?;
        bytes.push(b'\n');
        Ok(Encoded { signed, bytes })
    }

    /// What a snapshot or timestamp records about this file.
    pub fn metafile(&self) -> Metafile {
        Metafile {
            length: Some(self.bytes.len() as u64),
            hashes: Some(Hashes {
                sha256: Sha256::digest(&self.bytes).to_vec().into(),
                _extra: HashMap::new(),
            }),
            version: self.signed.signed.version(),
            _extra: HashMap::new(),
        }
    }

    /// The file name in `metadata/` (consistent snapshots: `N.` prefixed,
    /// except timestamp.json).
    pub fn file_name(&self) -> String {
        self.signed.signed.filename(true)
    }
}

/// The canonical JSON of a role: the bytes its signatures cover.
pub fn canonical<T: Serialize>(role: &T) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut data, CanonicalFormatter::new());
    role.serialize(&mut ser)
        .map_err(|e| PublishError::Invalid(format!("canonical JSON: {e}")))?;
    Ok(data)
}

/// Signs `role` with exactly `keys` (one signature each, no threshold or
/// root membership checked). The building block for every role here, and
/// for tests that need metadata a client must refuse (a key the root does
/// not list, fewer signatures than the threshold).
pub fn sign_role_with<T: Role + Serialize>(role: T, keys: &[KeyFile]) -> Result<Encoded<T>> {
    let data = canonical(&role)?;
    let signatures = keys
        .iter()
        .map(|k| Signature {
            keyid: k.id().clone(),
            sig: k.sign(&data).into(),
        })
        .collect();
    Encoded::new(Signed {
        signed: role,
        signatures,
    })
}

/// Signs `role` with the keys `root` lists for it, refusing when fewer
/// than its threshold are at hand, and checks the result as a client
/// would (`Root::verify_role`).
pub fn sign_role<T: Role + Serialize>(role: T, root: &Root, keys: &Keystore) -> Result<Encoded<T>> {
    let ks = keys.for_role_threshold(root, T::TYPE)?;
    let e = sign_role_with(role, &ks)?;
    root.verify_role(&e.signed)
        .map_err(|err| PublishError::Keys {
            role: T::TYPE.to_string(),
            msg: format!("the new signatures do not verify: {err}"),
        })?;
    Ok(e)
}

/// A TUF repository directory.
#[derive(Debug, Clone)]
pub struct Repo {
    /// The repository's top directory.
    pub dir: PathBuf,
}

/// The current signed state of a repository.
#[derive(Debug, Clone)]
pub struct State {
    /// The newest root.
    pub root: Signed<Root>,
    /// timestamp.json.
    pub timestamp: Signed<Timestamp>,
    /// The snapshot the timestamp names.
    pub snapshot: Signed<Snapshot>,
    /// The targets the snapshot names.
    pub targets: Signed<Targets>,
}

impl Repo {
    /// A repository at `dir` (nothing is read yet).
    pub fn new(dir: impl Into<PathBuf>) -> Repo {
        Repo { dir: dir.into() }
    }

    /// `metadata/`: what clients fetch as the metadata base URL.
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    /// `targets/`: the targets base URL.
    pub fn targets_dir(&self) -> PathBuf {
        self.dir.join("targets")
    }

    /// `metadata/N.root.json`.
    pub fn root_path(&self, version: u64) -> PathBuf {
        self.metadata_dir().join(format!("{version}.root.json"))
    }

    /// The newest root version present (1, 2, ... with no gap), 0 if none.
    pub fn latest_root_version(&self) -> u64 {
        let mut v = 0;
        while self.root_path(v + 1).is_file() {
            v += 1;
        }
        v
    }

    /// The newest root.
    pub fn latest_root(&self) -> Result<Signed<Root>> {
        let v = self.latest_root_version();
        if v == 0 {
            return Err(file_err(
                &self.root_path(1),
                "no root metadata: create the repository with `fluxnode-image tuf init`",
            ));
        }
        read_json(&self.root_path(v))
    }

    /// The current state: newest root, timestamp, the snapshot and targets
    /// it names, each checked against the root's keys and threshold.
    pub fn state(&self) -> Result<State> {
        let root = self.latest_root()?;
        let md = self.metadata_dir();
        let tpath = md.join("timestamp.json");
        let timestamp: Signed<Timestamp> = read_json(&tpath)?;
        verify(&root.signed, &timestamp, &tpath)?;
        let sv = timestamp
            .signed
            .meta
            .get("snapshot.json")
            .map(|m| m.version)
            .ok_or_else(|| file_err(&tpath, "names no snapshot.json"))?;
        let spath = md.join(format!("{sv}.snapshot.json"));
        let snapshot: Signed<Snapshot> = read_json(&spath)?;
        verify(&root.signed, &snapshot, &spath)?;
        let tv = snapshot
            .signed
            .meta
            .get("targets.json")
            .map(|m| m.version)
            .ok_or_else(|| file_err(&spath, "names no targets.json"))?;
        let gpath = md.join(format!("{tv}.targets.json"));
        let targets: Signed<Targets> = read_json(&gpath)?;
        verify(&root.signed, &targets, &gpath)?;
        Ok(State {
            root,
            timestamp,
            snapshot,
            targets,
        })
    }

    /// Writes a role's file into `metadata/` (atomically).
    pub fn write_role<T: Role + Serialize>(&self, e: &Encoded<T>) -> Result<PathBuf> {
        let p = self.metadata_dir().join(e.file_name());
        write_atomic(&p, &e.bytes)?;
        Ok(p)
    }
}

fn verify<T: Role + Serialize>(root: &Root, role: &Signed<T>, path: &Path) -> Result<()> {
    root.verify_role(role).map_err(|e| {
        file_err(
            path,
            format!("does not verify against root version {}: {e}", root.version),
        )
    })
}

/// Reads and parses a JSON file.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let bytes = std::fs::read(path).map_err(io("reading", path))?;
    serde_json::from_slice(&bytes).map_err(|e| file_err(path, format!("not valid metadata: {e}")))
}

/// The version after `v`.
pub fn next(v: NonZeroU64) -> NonZeroU64 {
    v.saturating_add(1)
}

/// A snapshot of version `version` naming `targets`.
pub fn snapshot_of(targets: Metafile, version: NonZeroU64, expires: DateTime<Utc>) -> Snapshot {
    let mut s = Snapshot::new(SPEC_VERSION.into(), version, expires);
    s.meta.insert("targets.json".into(), targets);
    s
}

/// A timestamp of version `version` naming `snapshot`.
pub fn timestamp_of(snapshot: Metafile, version: NonZeroU64, expires: DateTime<Utc>) -> Timestamp {
    let mut t = Timestamp::new(SPEC_VERSION.into(), version, expires);
    t.meta.insert("snapshot.json".into(), snapshot);
    t
}

/// What [`refresh`] re-signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refreshed {
    /// The new snapshot version, when the snapshot was re-signed.
    pub snapshot_version: Option<u64>,
    /// The new timestamp version.
    pub timestamp_version: u64,
    /// When the new timestamp expires.
    pub timestamp_expires: DateTime<Utc>,
}

/// Re-signs the timestamp (and, unless `timestamp_only`, the snapshot)
/// with new versions and expiry times; the targets stay as they are.
/// Needs the timestamp keys (and the snapshot keys) the root lists.
pub fn refresh(
    repo: &Repo,
    keys: &Keystore,
    expiry: &Expiry,
    timestamp_only: bool,
) -> Result<Refreshed> {
    let st = repo.state()?;
    let root = &st.root.signed;
    let md = repo.metadata_dir();
    let (snapshot_meta, snapshot_version) = if timestamp_only {
        let m = st
            .timestamp
            .signed
            .meta
            .get("snapshot.json")
            .cloned()
            .ok_or_else(|| file_err(&md.join("timestamp.json"), "names no snapshot.json"))?;
        (m, None)
    } else {
        let targets_meta = st
            .snapshot
            .signed
            .meta
            .get("targets.json")
            .cloned()
            .ok_or_else(|| file_err(&md, "the snapshot names no targets.json"))?;
        let version = next(st.snapshot.signed.version);
        let snap = sign_role(
            snapshot_of(targets_meta, version, expiry.snapshot),
            root,
            keys,
        )?;
        repo.write_role(&snap)?;
        (snap.metafile(), Some(version.get()))
    };
    let tv = next(st.timestamp.signed.version);
    let ts = sign_role(
        timestamp_of(snapshot_meta, tv, expiry.timestamp),
        root,
        keys,
    )?;
    repo.write_role(&ts)?;
    Ok(Refreshed {
        snapshot_version,
        timestamp_version: tv.get(),
        timestamp_expires: expiry.timestamp,
    })
}

/// A warning when `root` expires within 30 days of `now` (clients refuse
/// an expired root: rotate it, even to the same keys, before then).
pub fn root_expiry_warning(root: &Root, now: DateTime<Utc>) -> Option<String> {
    (root.expires < now + Duration::days(30)).then(|| {
        format!(
            "warning: root version {} expires {}: write a new one with `fluxnode-image tuf rotate-root` before then",
            root.version, root.expires
        )
    })
}

/// New versions of the three roles below root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopVersions {
    /// targets.json.
    pub targets: NonZeroU64,
    /// snapshot.json.
    pub snapshot: NonZeroU64,
    /// timestamp.json.
    pub timestamp: NonZeroU64,
}

impl TopVersions {
    /// Version 1 of each (a new repository).
    pub fn first() -> TopVersions {
        TopVersions {
            targets: NonZeroU64::MIN,
            snapshot: NonZeroU64::MIN,
            timestamp: NonZeroU64::MIN,
        }
    }

    /// One past each of `state`'s.
    pub fn after(state: &State) -> TopVersions {
        TopVersions {
            targets: next(state.targets.signed.version),
            snapshot: next(state.snapshot.signed.version),
            timestamp: next(state.timestamp.signed.version),
        }
    }
}

/// Signs targets (`base` plus `add`), snapshot and timestamp with tough's
/// `RepositoryEditor` against root version `root_version`, with the keys
/// that root lists (the editor refuses a role below its threshold), and
/// moves the files into `metadata/`: targets and snapshot first,
/// timestamp.json last, so a client never sees a timestamp naming files
/// that are not there yet.
pub fn sign_with_editor(
    repo: &Repo,
    root_version: u64,
    base: Option<Signed<Targets>>,
    add: Vec<(String, tough::schema::Target)>,
    versions: TopVersions,
    expiry: &Expiry,
    keys: &Keystore,
) -> Result<()> {
    use super::tuf;
    use tough::editor::RepositoryEditor;
    let root_path = repo.root_path(root_version);
    let root: Signed<Root> = read_json(&root_path)?;
    for role in [RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp] {
        keys.for_role_threshold(&root.signed, role)?;
    }
    let staging = repo.dir.join(format!(".staging-{}", std::process::id()));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io("removing", &staging))?;
    }
    let sources = keys.sources();
    let signed = super::block_on(async {
        let mut ed = RepositoryEditor::new(&root_path)
            .await
            .map_err(tuf(format!("reading {}", root_path.display())))?;
        if let Some(t) = base {
            ed.targets(t).map_err(tuf("loading the current targets"))?;
        }
        for (name, target) in add {
            ed.add_target(name.as_str(), target)
                .map_err(tuf(format!("adding target {name}")))?;
        }
        ed.targets_version(versions.targets)
            .map_err(tuf("setting the targets version"))?
            .targets_expires(expiry.targets)
            .map_err(tuf("setting the targets expiry"))?;
        ed.snapshot_version(versions.snapshot)
            .snapshot_expires(expiry.snapshot)
            .timestamp_version(versions.timestamp)
            .timestamp_expires(expiry.timestamp);
        let signed = ed
            .sign(&sources)
            .await
            .map_err(tuf("signing targets, snapshot and timestamp"))?;
        signed
            .write(&staging)
            .await
            .map_err(tuf(format!("writing metadata into {}", staging.display())))?;
        Ok::<_, PublishError>(())
    })?;
    let moved = signed.and_then(|()| {
        let md = repo.metadata_dir();
        std::fs::create_dir_all(&md).map_err(io("creating", &md))?;
        for name in [
            format!("{}.targets.json", versions.targets),
            format!("{}.snapshot.json", versions.snapshot),
            "timestamp.json".to_string(),
        ] {
            let from = staging.join(&name);
            let to = md.join(&name);
            std::fs::rename(&from, &to).map_err(io("moving into place", &to))?;
        }
        Ok(())
    });
    let _ = std::fs::remove_dir_all(&staging);
    moved
}
