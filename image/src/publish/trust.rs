//! Root metadata: the first root of a repository, root rotation, and the
//! check a build runs on the root it bakes into an image.
//!
//! A root lists every top-level role's keys and threshold. A client ships
//! with one root (the image's `/usr/lib/fluxnode/tuf/root.json`) and walks
//! `2.root.json`, `3.root.json`, ... on each update check, accepting
//! version N+1 only when the threshold of version N's root keys signed it
//! *and* the threshold of its own root keys did (TUF 5.3.4). So a rotation
//! signs the new root with both the old and the new root keys
//! ([`rotate_root`]); a root signed by the new keys alone is refused by
//! every client that trusts the old one.

use std::collections::HashMap;
use std::num::NonZeroU64;

use chrono::{DateTime, Utc};
use tough::schema::{Role, RoleKeys, RoleType, Root, Signed};

use super::keys::{KeyFile, Keystore, ROLES};
use super::roles::{self, Encoded, Expiry, Repo, TopVersions, SPEC_VERSION};
use super::{file_err, PublishError, Result};

/// Checks bytes meant to be an image's trusted root: a root whose own root
/// keys signed it (at their threshold), every role with at least as many
/// keys as its threshold. Returns the parsed root.
pub fn check_root(bytes: &[u8]) -> std::result::Result<Signed<Root>, String> {
    let root: Signed<Root> =
        serde_json::from_slice(bytes).map_err(|e| format!("not TUF root metadata: {e}"))?;
    if root.signed.spec_version != SPEC_VERSION {
        return Err(format!(
            "spec_version {:?}, not {SPEC_VERSION}",
            root.signed.spec_version
        ));
    }
    for role in ROLES {
        let rk = root
            .signed
            .roles
            .get(&role)
            .ok_or_else(|| format!("lists no keys for the {role} role"))?;
        if rk.threshold.get() > rk.keyids.len() as u64 {
            return Err(format!(
                "the {role} role has threshold {} but {} key(s)",
                rk.threshold,
                rk.keyids.len()
            ));
        }
    }
    root.signed.verify_role(&root).map_err(|e| {
        format!(
            "root version {} is not signed by its own root keys: {e}",
            root.signed.version
        )
    })?;
    Ok(root)
}

/// A root of `version` with these keys and thresholds per role
/// (consistent snapshots on).
pub fn new_root(
    version: NonZeroU64,
    expires: DateTime<Utc>,
    roles: &[(RoleType, Vec<KeyFile>, NonZeroU64)],
) -> Root {
    let mut keys = HashMap::new();
    let mut role_keys = HashMap::new();
    for (role, ks, threshold) in roles {
        for k in ks {
            keys.insert(k.id().clone(), k.tuf_key().clone());
        }
        role_keys.insert(
            *role,
            RoleKeys {
                keyids: ks.iter().map(|k| k.id().clone()).collect(),
                threshold: *threshold,
                _extra: HashMap::new(),
            },
        );
    }
    Root {
        spec_version: SPEC_VERSION.into(),
        consistent_snapshot: true,
        version,
        expires,
        keys,
        roles: role_keys,
        _extra: HashMap::new(),
    }
}

/// How to create a repository.
#[derive(Debug, Clone)]
pub struct InitOptions {
    /// Signatures each role needs.
    pub threshold: u64,
    /// Keys generated per role (at least the threshold).
    pub keys_per_role: usize,
    /// Expiry of each role's first version.
    pub expiry: Expiry,
}

/// A new repository.
#[derive(Debug, Clone)]
pub struct Initialized {
    /// The keys generated (saved in the keystore directory when one was given).
    pub keys: Keystore,
    /// `metadata/1.root.json`.
    pub root: Signed<Root>,
}

/// Creates a repository at `repo`: new keys for each role (saved in
/// `keystore_dir`, or kept in memory when `None`), root version 1 signed
/// by the root keys, and an empty targets, snapshot and timestamp. Refuses
/// a directory that already has a root.
pub fn init_repo(
    repo: &Repo,
    keystore_dir: Option<&std::path::Path>,
    opts: &InitOptions,
) -> Result<Initialized> {
    if repo.latest_root_version() > 0 {
        return Err(file_err(
            &repo.root_path(1),
            "exists: this repository is initialised already (rotate keys with `tuf rotate-root`)",
        ));
    }
    let threshold = NonZeroU64::new(opts.threshold)
        .ok_or_else(|| PublishError::Invalid("--threshold must be at least 1".into()))?;
    if (opts.keys_per_role as u64) < threshold.get() {
        return Err(PublishError::Invalid(format!(
            "--keys-per-role {} is below --threshold {threshold}: the roles could never be signed",
            opts.keys_per_role
        )));
    }
    let mut all = Vec::new();
    let mut roles = Vec::new();
    for role in ROLES {
        let mut ks = Vec::new();
        for _ in 0..opts.keys_per_role {
            let k = KeyFile::generate()?;
            let k = match keystore_dir {
                Some(d) => k.save(d, &role.to_string())?,
                None => k,
            };
            ks.push(k);
        }
        all.extend(ks.iter().cloned());
        roles.push((role, ks, threshold));
    }
    let mut keys = Keystore::from_keys(all);
    if let Some(d) = keystore_dir {
        keys.dirs = vec![d.to_path_buf()];
    }
    let root = new_root(NonZeroU64::MIN, opts.expiry.root, &roles);
    let signed = roles::sign_role(root.clone(), &root, &keys)?;
    std::fs::create_dir_all(repo.targets_dir())
        .map_err(super::io("creating", repo.targets_dir()))?;
    repo.write_role(&signed)?;
    roles::sign_with_editor(
        repo,
        1,
        None,
        Vec::new(),
        TopVersions::first(),
        &opts.expiry,
        &keys,
    )?;
    Ok(Initialized {
        keys,
        root: signed.signed,
    })
}

/// A change of keys for a root rotation.
#[derive(Debug, Clone, Default)]
pub struct RootChange {
    /// Roles that get one new key each (a role named twice gets two).
    pub add_keys: Vec<RoleType>,
    /// Keys (ids or unique id prefixes) removed from every role.
    pub remove_keys: Vec<String>,
    /// New thresholds.
    pub thresholds: Vec<(RoleType, u64)>,
}

/// How to rotate the root.
#[derive(Debug, Clone)]
pub struct RotateOptions {
    /// The key changes.
    pub change: RootChange,
    /// Expiry of the new root (and of the other roles when they are re-signed).
    pub expiry: Expiry,
}

/// What a rotation wrote.
#[derive(Debug, Clone)]
pub struct Rotated {
    /// The new root.
    pub root: Signed<Root>,
    /// Keys generated for it.
    pub new_keys: Vec<KeyFile>,
    /// Whether targets, snapshot and timestamp were re-signed (their keys
    /// or thresholds changed).
    pub resigned: bool,
}

/// The next root after `old`: version + 1, `change` applied, new keys
/// generated (saved in `keystore_dir` when given). Nothing is signed.
pub fn next_root(
    old: &Root,
    change: &RootChange,
    expires: DateTime<Utc>,
    keystore_dir: Option<&std::path::Path>,
) -> Result<(Root, Vec<KeyFile>)> {
    let mut root = old.clone();
    root.version = roles::next(old.version);
    root.expires = expires;
    for prefix in &change.remove_keys {
        let p = prefix.to_ascii_lowercase();
        let hits: Vec<_> = root
            .keys
            .keys()
            .filter(|id| hex::encode(id.as_ref()).starts_with(&p))
            .cloned()
            .collect();
        let [id] = hits.as_slice() else {
            return Err(PublishError::Invalid(format!(
                "--remove-key {prefix}: {} keys of root version {} match; give more of the key id",
                hits.len(),
                old.version
            )));
        };
        root.keys.remove(id);
        for rk in root.roles.values_mut() {
            rk.keyids.retain(|k| k != id);
        }
    }
    let mut new_keys = Vec::new();
    for role in &change.add_keys {
        let k = KeyFile::generate()?;
        let k = match keystore_dir {
            Some(d) => k.save(d, &role.to_string())?,
            None => k,
        };
        root.keys.insert(k.id().clone(), k.tuf_key().clone());
        let rk = root.roles.entry(*role).or_insert_with(|| RoleKeys {
            keyids: Vec::new(),
            threshold: NonZeroU64::MIN,
            _extra: HashMap::new(),
        });
        rk.keyids.push(k.id().clone());
        new_keys.push(k);
    }
    for (role, t) in &change.thresholds {
        let t = NonZeroU64::new(*t).ok_or_else(|| {
            PublishError::Invalid(format!("threshold of {role} must be at least 1"))
        })?;
        if let Some(rk) = root.roles.get_mut(role) {
            rk.threshold = t;
        }
    }
    for role in ROLES {
        let rk = root.roles.get(&role);
        let (n, t) = rk.map_or((0, 1), |r| (r.keyids.len() as u64, r.threshold.get()));
        if n < t {
            return Err(PublishError::Invalid(format!(
                "after the change the {role} role has {n} key(s) for threshold {t}: it could never be signed"
            )));
        }
    }
    Ok((root, new_keys))
}

/// Signs a new root for a rotation: with the old root's keys (at its
/// threshold) and the new root's keys (at its threshold), then checks both
/// as a client does.
pub fn sign_rotated_root(old: &Root, new: Root, keys: &Keystore) -> Result<Encoded<Root>> {
    let old_keys =
        keys.for_role_threshold(old, RoleType::Root)
            .map_err(|e| PublishError::Keys {
                role: "root".into(),
                msg: format!("signing with the old root's keys (clients trust those): {e}"),
            })?;
    let new_keys =
        keys.for_role_threshold(&new, RoleType::Root)
            .map_err(|e| PublishError::Keys {
                role: "root".into(),
                msg: format!("signing with the new root's keys: {e}"),
            })?;
    let mut all = old_keys;
    for k in new_keys {
        if !all.iter().any(|o| o.id() == k.id()) {
            all.push(k);
        }
    }
    let e = roles::sign_role_with(new, &all)?;
    old.verify_role(&e.signed)
        .map_err(|err| PublishError::Keys {
            role: "root".into(),
            msg: format!("the old root does not accept the new one: {err}"),
        })?;
    e.signed
        .signed
        .verify_role(&e.signed)
        .map_err(|err| PublishError::Keys {
            role: "root".into(),
            msg: format!("the new root does not accept itself: {err}"),
        })?;
    Ok(e)
}

/// Rotates the root: writes `metadata/<N+1>.root.json` signed by the old
/// and the new root keys; when the keys or threshold of targets, snapshot
/// or timestamp changed, re-signs those too (new versions) so clients can
/// verify them with the new root.
pub fn rotate_root(repo: &Repo, keys: &Keystore, opts: &RotateOptions) -> Result<Rotated> {
    let old = repo.state()?;
    let dir = keys.dirs.first().map(std::path::PathBuf::as_path);
    let (new, new_keys) = next_root(&old.root.signed, &opts.change, opts.expiry.root, dir)?;
    let mut keys = keys.clone();
    keys.keys.extend(new_keys.iter().cloned());
    let changed = [RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp]
        .into_iter()
        .any(|r| old.root.signed.roles.get(&r) != new.roles.get(&r));
    if changed {
        // Check before writing anything that the other roles can be signed.
        for r in [RoleType::Targets, RoleType::Snapshot, RoleType::Timestamp] {
            keys.for_role_threshold(&new, r)?;
        }
    }
    let signed = sign_rotated_root(&old.root.signed, new, &keys)?;
    repo.write_role(&signed)?;
    if changed {
        let versions = TopVersions::after(&old);
        roles::sign_with_editor(
            repo,
            signed.signed.signed.version().get(),
            Some(old.targets.clone()),
            Vec::new(),
            versions,
            &opts.expiry,
            &keys,
        )?;
    }
    Ok(Rotated {
        root: signed.signed,
        new_keys,
        resigned: changed,
    })
}
