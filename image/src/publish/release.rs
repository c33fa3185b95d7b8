//! `fluxnode-image publish`: one build's update into the repository.
//!
//! From the build's manifest.json ([`crate::manifest::UpdateInfo`]) and
//! its payloads: the root payload and the UKI of each slot are cut into
//! content-defined chunks ([`fluxnode_protocol::update::chunk_stream`]);
//! for each older build given, zstd patches ([`super::patch`]); an
//! [`UpdateManifest`] naming all of it. Every file becomes a TUF target,
//! then targets, snapshot and timestamp are signed. Earlier targets stay.
//!
//! Which reference a patch is made against is what the node has when it
//! installs: it runs slot `s` of the old version and writes the other slot
//! `s'`. It can read its running root partition (the old root payload: the
//! same bytes in either slot) and its running UKI on the ESP (the old
//! version's UKI *for slot `s`*). The new UKI it installs is the one for
//! `s'`. So the root patch is made over the old root payload, and the
//! patch of the new `b` UKI over the old `a` UKI (and the new `a` over the
//! old `b`). `from_sha256` names the reference bytes exactly; the node
//! applies a patch only when its own bytes hash to it.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use fluxnode_protocol::update::{self, Patch, Payload, SlotUki, UpdateManifest, Wave};
use serde::Serialize;
use sha2::{Digest, Sha256};
use tough::schema::{Hashes, Target};

use super::keys::Keystore;
use super::roles::{self, Expiry, Repo, TopVersions};
use super::{file_err, io, patch, write_atomic, PublishError, Result};
use crate::build::MANIFEST_FILE;
use crate::manifest::{Manifest, UpdateInfo};

/// What to publish.
#[derive(Debug, Clone)]
pub struct PublishOptions {
    /// The build's output directory (manifest.json and its payloads).
    pub build: PathBuf,
    /// Older builds to make patches from (their output directories).
    pub from: Vec<PathBuf>,
    /// The oldest version this update may be installed over.
    pub min_version: String,
    /// The security version the manifest states; must be the build's
    /// (`fluxnode.secver=` on its UKIs); `None` takes the build's.
    pub security_version: Option<u64>,
    /// Raise the nodes' minimum security version once this version is blessed.
    pub raise_security_version: bool,
    /// Rollout waves (empty: everyone at once).
    pub waves: Vec<Wave>,
    /// Start of the release (Unix seconds).
    pub released_at: u64,
    /// Expiry of targets, snapshot and timestamp.
    pub expiry: Expiry,
    /// zstd level of the patches ([`patch::DEFAULT_LEVEL`]).
    pub patch_level: i32,
}

/// One file published.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PublishedTarget {
    /// TUF target name.
    pub name: String,
    /// `manifest`, `root`, `uki` or `patch`.
    pub kind: String,
    /// Bytes.
    pub size: u64,
    /// sha256 (hex).
    pub sha256: String,
    /// Where it lies in the repository.
    pub path: PathBuf,
}

/// One patch, for the summary.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PatchSummary {
    /// The payload it rebuilds (`root`, `uki-a`, `uki-b`).
    pub payload: String,
    /// The version it applies over.
    pub from_version: String,
    /// Patch bytes.
    pub size: u64,
    /// Payload bytes.
    pub payload_size: u64,
}

/// What [`publish`] did.
#[derive(Debug, Clone, Serialize)]
pub struct Published {
    /// The manifest, as signed.
    pub manifest: UpdateManifest,
    /// Its target name.
    pub manifest_target: String,
    /// Every target added.
    pub targets: Vec<PublishedTarget>,
    /// The patches.
    pub patches: Vec<PatchSummary>,
    /// New targets.json version.
    pub targets_version: u64,
    /// New snapshot.json version.
    pub snapshot_version: u64,
    /// New timestamp.json version.
    pub timestamp_version: u64,
}

/// The update manifest's target name for `version`.
pub fn manifest_target(version: &str) -> String {
    format!("fluxnode-{}.manifest.json", name_part(version))
}

/// A version as part of a target name: `~` (allowed in versions, not in
/// target names) becomes `+` (allowed in target names, never in versions).
pub fn name_part(version: &str) -> String {
    version.replace('~', "+")
}

/// Parses waves written as `POSITION:SECONDS,...` (e.g. `100:0,1024:3600`:
/// positions below 100 at once, the rest an hour later).
pub fn parse_waves(s: &str) -> Result<Vec<Wave>> {
    s.split(',')
        .filter(|w| !w.trim().is_empty())
        .map(|w| {
            let (p, t) = w.trim().split_once(':').ok_or_else(|| {
                PublishError::Invalid(format!(
                    "wave {w:?}: write BELOW_POSITION:START_AFTER_SECONDS"
                ))
            })?;
            Ok(Wave {
                below_position: p.trim().parse().map_err(|e| {
                    PublishError::Invalid(format!("wave {w:?}: position {p:?}: {e}"))
                })?,
                start_after_s: t.trim().parse().map_err(|e| {
                    PublishError::Invalid(format!("wave {w:?}: seconds {t:?}: {e}"))
                })?,
            })
        })
        .collect()
}

/// A build directory's update payloads.
#[derive(Debug, Clone)]
pub struct BuildDir {
    /// The directory.
    pub dir: PathBuf,
    /// What its manifest says about the update.
    pub info: UpdateInfo,
}

impl BuildDir {
    /// Reads `dir/manifest.json`.
    pub fn read(dir: &Path) -> Result<BuildDir> {
        let mp = dir.join(MANIFEST_FILE);
        let m = Manifest::read(&mp).map_err(|e| file_err(&mp, e.to_string()))?;
        let info = m
            .update_info()
            .ok_or_else(|| file_err(&mp, "has no slot a: not a build of fluxnode-image"))?;
        Ok(BuildDir {
            dir: dir.into(),
            info,
        })
    }

    /// The root payload's bytes, checked against the manifest.
    pub fn root_bytes(&self) -> Result<Vec<u8>> {
        self.payload_bytes(&self.info.root.payload)
    }

    /// The UKI for `slot`, when the build has one, checked against the manifest.
    pub fn uki_bytes(&self, slot: &str) -> Result<Option<Vec<u8>>> {
        match self.info.ukis.iter().find(|(s, _)| s == slot) {
            Some((_, u)) => Ok(Some(self.payload_bytes(&u.uki)?)),
            None => Ok(None),
        }
    }

    fn payload_bytes(&self, p: &crate::manifest::Payload) -> Result<Vec<u8>> {
        let path = self.dir.join(&p.file);
        let bytes = std::fs::read(&path).map_err(io("reading payload", &path))?;
        let sum = hex::encode(Sha256::digest(&bytes));
        if bytes.len() as u64 != p.size || sum != p.sha256 {
            return Err(file_err(
                &path,
                format!(
                    "is {} bytes with sha256 {sum}, but {} says {} bytes with sha256 {}",
                    bytes.len(),
                    MANIFEST_FILE,
                    p.size,
                    p.sha256
                ),
            ));
        }
        Ok(bytes)
    }
}

/// The slot an update for `slot` is installed from (the running one).
pub fn other_slot(slot: &str) -> &'static str {
    if slot == "a" {
        "b"
    } else {
        "a"
    }
}

fn payload_of(target: &str, bytes: &[u8]) -> Result<Payload> {
    let chunks = update::chunk_stream(bytes, bytes.len() as u64)
        .map_err(|e| PublishError::Invalid(format!("chunking {target}: {e}")))?;
    Ok(Payload {
        target: target.into(),
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
        chunks,
        patches: Vec::new(),
    })
}

/// Files to add, in memory until they are written.
struct Pending {
    name: String,
    kind: &'static str,
    bytes: Vec<u8>,
}

struct PatchJob<'a> {
    label: &'a str,
    from_version: &'a str,
    reference: &'a [u8],
    new: &'a [u8],
    target: String,
    level: i32,
    old_dir: &'a Path,
}

fn make_patch(
    j: PatchJob<'_>,
    progress: &mut dyn FnMut(&str),
) -> Result<(Patch, PatchSummary, Pending)> {
    let (label, ov) = (j.label, j.from_version);
    progress(&format!(
        "patch {label} from {ov}: zstd -{} --long",
        j.level
    ));
    let (bytes, wl) = patch::make_verified(j.reference, j.new, j.level)
        .map_err(|msg| file_err(j.old_dir, format!("patch {label} from {ov}: {msg}")))?;
    progress(&format!(
        "patch {label} from {ov}: {} bytes, {:.2}% of the {} byte payload",
        bytes.len(),
        bytes.len() as f64 * 100.0 / j.new.len().max(1) as f64,
        j.new.len()
    ));
    let patch = Patch {
        from_version: ov.into(),
        from_size: j.reference.len() as u64,
        from_sha256: hex::encode(Sha256::digest(j.reference)),
        target: j.target.clone(),
        size: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(&bytes)),
        window_log: wl,
    };
    let summary = PatchSummary {
        payload: label.into(),
        from_version: ov.into(),
        size: bytes.len() as u64,
        payload_size: j.new.len() as u64,
    };
    let pending = Pending {
        name: j.target,
        kind: "patch",
        bytes,
    };
    Ok((patch, summary, pending))
}

/// Publishes the build `opts.build` into `repo`, signing with `keys`.
pub fn publish(
    repo: &Repo,
    keys: &Keystore,
    opts: &PublishOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Published> {
    let state = repo.state()?;
    if let Some(w) = roles::root_expiry_warning(&state.root.signed, roles::now()) {
        progress(&w);
    }
    let build = BuildDir::read(&opts.build)?;
    let info = &build.info;
    let version = info.version.clone();
    let mtarget = manifest_target(&version);
    if state
        .targets
        .signed
        .targets
        .keys()
        .any(|n| n.raw() == mtarget)
    {
        return Err(PublishError::Invalid(format!(
            "version {version} is published already ({mtarget}); build a new version"
        )));
    }
    if let Some(s) = opts.security_version {
        if s != info.security_version {
            return Err(PublishError::Invalid(format!(
                "--security-version {s}, but the build's UKIs carry fluxnode.secver={}: set security_version = {s} in the spec and rebuild",
                info.security_version
            )));
        }
    }
    for slot in ["a", "b"] {
        if !info.ukis.iter().any(|(s, _)| s == slot) {
            return Err(file_err(
                &build.dir.join(MANIFEST_FILE),
                format!(
                    "has no UKI for slot {slot} (built before per-slot update UKIs): rebuild it with this fluxnode-image"
                ),
            ));
        }
    }
    progress(&format!(
        "publishing {version} ({}, security version {}) from {}",
        info.compatible,
        info.security_version,
        build.dir.display()
    ));
    let mut pending: Vec<Pending> = Vec::new();
    let mut patches = Vec::new();

    let root_bytes = build.root_bytes()?;
    let root_target = format!("root-{}.img", name_part(&version));
    let mut root = payload_of(&root_target, &root_bytes)?;
    progress(&format!(
        "root: {} bytes, {} chunks",
        root.size,
        root.chunks.len()
    ));
    let mut ukis = Vec::new();
    let mut uki_bytes = HashMap::new();
    for (slot, u) in &info.ukis {
        let bytes = build
            .uki_bytes(slot)?
            .ok_or_else(|| file_err(&build.dir, format!("no UKI for slot {slot}")))?;
        let target = format!("uki-{slot}-{}.efi", name_part(&version));
        let payload = payload_of(&target, &bytes)?;
        progress(&format!(
            "UKI for slot {slot}: {} bytes, {} chunks",
            payload.size,
            payload.chunks.len()
        ));
        ukis.push(SlotUki {
            slot: slot.clone(),
            pcr11_sha256: u.pcr11_sha256.clone(),
            pcr12_sha256: u.pcr12_sha256.clone(),
            pcr9_sha256: u.pcr9_sha256.clone(),
            payload,
        });
        uki_bytes.insert(slot.clone(), bytes);
    }

    for old_dir in &opts.from {
        let old = BuildDir::read(old_dir)?;
        let ov = old.info.version.clone();
        if update::cmp_versions(&ov, &version) != Ordering::Less {
            return Err(PublishError::Invalid(format!(
                "--from {}: version {ov} is not older than {version}",
                old_dir.display()
            )));
        }
        let old_root = old.root_bytes()?;
        let made = make_patch(
            PatchJob {
                label: "root",
                from_version: &ov,
                reference: &old_root,
                new: &root_bytes,
                target: format!("root-{}-from-{}.zst", name_part(&version), name_part(&ov)),
                level: opts.patch_level,
                old_dir,
            },
            progress,
        )?;
        drop(old_root);
        root.patches.push(made.0);
        patches.push(made.1);
        pending.push(made.2);
        for u in &mut ukis {
            // The node installing slot `u.slot` runs the other slot: its
            // UKI on the ESP is the old version's UKI for that slot.
            let running = other_slot(&u.slot);
            let Some(reference) = old.uki_bytes(running)? else {
                progress(&format!(
                    "no patch for the slot {} UKI from {ov}: that build has no UKI for slot {running}",
                    u.slot
                ));
                continue;
            };
            let new = uki_bytes
                .get(&u.slot)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let label = format!("uki-{}", u.slot);
            let made = make_patch(
                PatchJob {
                    label: &label,
                    from_version: &ov,
                    reference: &reference,
                    new,
                    target: format!(
                        "uki-{}-{}-from-{}.zst",
                        u.slot,
                        name_part(&version),
                        name_part(&ov)
                    ),
                    level: opts.patch_level,
                    old_dir,
                },
                progress,
            )?;
            u.payload.patches.push(made.0);
            patches.push(made.1);
            pending.push(made.2);
        }
    }

    let manifest = UpdateManifest {
        format: update::FORMAT,
        version: version.clone(),
        min_version: opts.min_version.clone(),
        security_version: info.security_version,
        raise_security_version: opts.raise_security_version,
        compatible: info.compatible.clone(),
        released_at: opts.released_at,
        waves: opts.waves.clone(),
        root,
        ukis,
    };
    manifest
        .validate()
        .map_err(|e| PublishError::Invalid(format!("the update manifest of {version}: {e}")))?;
    pending.push(Pending {
        name: root_target,
        kind: "root",
        bytes: root_bytes,
    });
    for u in &manifest.ukis {
        let bytes = uki_bytes.remove(&u.slot).unwrap_or_default();
        pending.push(Pending {
            name: u.payload.target.clone(),
            kind: "uki",
            bytes,
        });
    }
    pending.push(Pending {
        name: mtarget.clone(),
        kind: "manifest",
        bytes: manifest.to_json(),
    });

    // Targets first (content-addressed names, never rewritten), metadata after.
    let tdir = repo.targets_dir();
    let mut targets = Vec::new();
    let mut add = Vec::new();
    for p in &pending {
        let sum = Sha256::digest(&p.bytes);
        let path = tdir.join(format!("{}.{}", hex::encode(sum), p.name));
        if !path.is_file() {
            write_atomic(&path, &p.bytes)?;
        }
        let mut custom = HashMap::new();
        custom.insert("kind".to_string(), serde_json::json!(p.kind));
        custom.insert("version".to_string(), serde_json::json!(version));
        add.push((
            p.name.clone(),
            Target {
                length: p.bytes.len() as u64,
                hashes: Hashes {
                    sha256: sum.to_vec().into(),
                    _extra: HashMap::new(),
                },
                custom,
                _extra: HashMap::new(),
            },
        ));
        targets.push(PublishedTarget {
            name: p.name.clone(),
            kind: p.kind.into(),
            size: p.bytes.len() as u64,
            sha256: hex::encode(sum),
            path,
        });
    }
    drop(pending);
    let versions = TopVersions::after(&state);
    progress(&format!(
        "signing targets v{}, snapshot v{}, timestamp v{} (root v{})",
        versions.targets, versions.snapshot, versions.timestamp, state.root.signed.version
    ));
    roles::sign_with_editor(
        repo,
        state.root.signed.version.get(),
        Some(state.targets.clone()),
        add,
        versions,
        &opts.expiry,
        keys,
    )?;
    Ok(Published {
        manifest,
        manifest_target: mtarget,
        targets,
        patches,
        targets_version: versions.targets.get(),
        snapshot_version: versions.snapshot.get(),
        timestamp_version: versions.timestamp.get(),
    })
}

/// The payloads of a build made without the image builder (tests here and
/// the update client's tests): see [`write_build_dir`].
#[derive(Debug, Clone, Copy)]
pub struct BuildPayloads<'a> {
    /// IMAGE_VERSION.
    pub version: &'a str,
    /// The compatibility string.
    pub compatible: &'a str,
    /// The security version.
    pub security_version: u64,
    /// The root payload's bytes.
    pub root: &'a [u8],
    /// The slot a UKI's bytes.
    pub uki_a: &'a [u8],
    /// The slot b UKI's bytes.
    pub uki_b: &'a [u8],
}

/// Writes a build output directory holding only what [`publish`] reads:
/// `root_a.img`, `uki_a.efi`, `uki_b.efi` and a manifest.json naming them
/// (no disk image: its size is 0; PCR predictions empty). For tests that
/// need a published update without building a real image.
pub fn write_build_dir(dir: &Path, b: &BuildPayloads<'_>) -> Result<()> {
    use crate::manifest::{
        ImageInfo, KernelInfo, Payload as FilePayload, RootInfo, SlotInfo, UpdateUki, CHUNK,
    };
    std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
    let put = |name: &str, bytes: &[u8]| -> Result<FilePayload> {
        let p = dir.join(name);
        std::fs::write(&p, bytes).map_err(io("writing", &p))?;
        Ok(FilePayload {
            file: name.into(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
        })
    };
    let root = RootInfo {
        payload: put("root_a.img", b.root)?,
        root_hash: hex::encode(Sha256::digest(b.root)),
        salt: String::new(),
        data_blocks: (b.root.len() as u64).div_ceil(4096),
    };
    let uki = |slot: &str, bytes: &[u8]| -> Result<UpdateUki> {
        Ok(UpdateUki {
            uki: put(&format!("uki_{slot}.efi"), bytes)?,
            cmdline: format!(
                "fluxnode.slot={slot} fluxnode.roothash={} fluxnode.secver={}",
                root.root_hash, b.security_version
            ),
            pcr11_sha256: String::new(),
            pcr12_sha256: String::new(),
            pcr9_sha256: String::new(),
        })
    };
    let ua = uki("a", b.uki_a)?;
    let ub = uki("b", b.uki_b)?;
    let m = Manifest {
        format: 1,
        version: b.version.into(),
        source_date_epoch: 0,
        kernel: KernelInfo {
            package: String::new(),
            package_version: String::new(),
            release: String::new(),
        },
        image: ImageInfo {
            payload: FilePayload {
                file: crate::build::IMAGE_FILE.into(),
                size: 0,
                sha256: hex::encode(Sha256::digest(b"")),
            },
            chunk_size: CHUNK,
            chunks: Vec::new(),
        },
        partitions: Vec::new(),
        slots: vec![(
            "a".into(),
            SlotInfo {
                version: b.version.into(),
                esp_name: crate::build::uki_name(b.version, "a", None),
                uki: ua.uki.clone(),
                root: root.clone(),
                cmdline: ua.cmdline.clone(),
                pcr11_sha256: String::new(),
                pcr12_sha256: String::new(),
                pcr9_sha256: String::new(),
            },
        )],
        initrd_modules: Vec::new(),
        late_modules: Vec::new(),
        initramfs_size: 0,
        update: Some(UpdateInfo {
            version: b.version.into(),
            compatible: b.compatible.into(),
            security_version: b.security_version,
            root,
            ukis: vec![("a".into(), ua), ("b".into(), ub)],
        }),
    };
    let mp = dir.join(MANIFEST_FILE);
    let text =
        serde_json::to_string_pretty(&m).map_err(|e| file_err(&mp, format!("serializing: {e}")))?;
    std::fs::write(&mp, text + "\n").map_err(io("writing", &mp))
}
