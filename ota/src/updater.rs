//! One update, end to end on the node's side of the reboot: refuse what
//! must be refused, then root into the inactive slot, then its UKI onto
//! the ESP, with the journal and the history kept on /var.
//!
//! The order is what makes it safe at any moment:
//!
//! 1. every check that needs no write (the current boot is blessed, the
//!    manifest is installable on this node) and the journal's first write
//!    (a full /var stops here, before any slot is touched);
//! 2. the target slot's boot entries are removed from the ESP: from here
//!    on a half-written slot cannot be booted;
//! 3. the root payload, chunk by verified chunk, into the target slot;
//! 4. the UKI into a temporary file on the ESP, verified, synced, renamed
//!    to `fluxnode-<version>-<slot>+3.efi`: the slot becomes bootable in
//!    one rename, with systemd-boot's tries.
//!
//! An interruption anywhere resumes at the phase the journal names, and a
//! resume re-reads and re-hashes what was written.

use std::path::PathBuf;
use std::time::Instant;

use fluxnode_protocol::update::{self, NodeFacts, Patch, Refusal};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::esp::{Esp, EspError};
use crate::fetch::Fetch;
use crate::install::{self, Counters, InstallError, Reference, Sink};
use crate::slot::Slot;
use crate::state::{self, Attempt, Bitmap, Outcome, Phase, Progress, StateDir, StateError};
use crate::tuf::Offer;

/// The manifest of the update in flight, kept beside the journal (the
/// daemon reads `raise_security_version` from it once the version is
/// blessed).
pub const MANIFEST_FILE: &str = "manifest.json";

/// What the node is and where its parts are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct System {
    /// The version running.
    pub running_version: String,
    /// The slot it runs from (`a` or `b`).
    pub running_slot: String,
    /// Its compatibility string.
    pub compatible: String,
    /// The node's minimum security version.
    pub min_security_version: u64,
    /// The running slot's partition (read only: the reference for deltas).
    pub running_root: PathBuf,
    /// Bytes of the running root payload (erofs + verity tree).
    pub running_root_len: u64,
    /// The other slot's partition (the target).
    pub target_root: PathBuf,
    /// Where the ESP is mounted.
    pub esp: PathBuf,
    /// Whether the running boot is blessed (its entry has no counter).
    pub blessed: bool,
}

impl System {
    /// The slot an update goes into.
    pub fn target_slot(&self) -> &'static str {
        if self.running_slot == "a" {
            "b"
        } else {
            "a"
        }
    }
}

/// Choices of the operator.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Allow installing an older version (never below the security minimum).
    pub allow_downgrade: bool,
    /// Write the slot and the UKI's temporary file, but do not install the
    /// boot entry (`fluxnode-ota download`); a later install verifies and
    /// commits it.
    pub stage_only: bool,
}

/// Why an update did not install.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The running boot is not blessed yet: the other slot is its fallback.
    #[error("the running version {0} is not blessed yet: the other slot is its fallback and is not overwritten until this boot passes its health checks (see `fluxnode-ota status`)")]
    NotBlessed(String),
    /// Refused by the manifest's rules.
    #[error("refused: {0}")]
    Refused(#[from] Refusal),
    /// The manifest has no UKI for the target slot.
    #[error("version {version} ships no UKI for slot {slot}")]
    NoUki {
        /// Offered version.
        version: String,
        /// Target slot.
        slot: String,
    },
    /// A payload failed.
    #[error("installing the {what} of {version}: {source}")]
    Install {
        /// `root` or `uki`.
        what: &'static str,
        /// Version.
        version: String,
        /// Cause.
        #[source]
        source: InstallError,
    },
    /// The repository does not serve a payload as signed (checked before
    /// the first write).
    #[error("checking the {what} of {version} on the server, before writing anything: {source}")]
    Probe {
        /// `root` or `uki`.
        what: &'static str,
        /// Version.
        version: String,
        /// Cause.
        #[source]
        source: InstallError,
    },
    /// The journal or history.
    #[error(transparent)]
    State(#[from] StateError),
    /// The ESP.
    #[error(transparent)]
    Esp(#[from] EspError),
}

impl UpdateError {
    /// Stable code for `--json` and the history.
    pub fn code(&self) -> &'static str {
        match self {
            UpdateError::NotBlessed(_) => "not_blessed",
            UpdateError::Refused(r) => r.code(),
            UpdateError::NoUki { .. } => "no_uki_for_slot",
            UpdateError::Install { source, .. } | UpdateError::Probe { source, .. } => {
                install_code(source)
            }
            UpdateError::State(_) => "state_io",
            UpdateError::Esp(_) => "esp_io",
        }
    }

    /// Whether nothing was written (a refusal before the first write).
    pub fn before_any_write(&self) -> bool {
        matches!(
            self,
            UpdateError::NotBlessed(_)
                | UpdateError::Refused(_)
                | UpdateError::NoUki { .. }
                | UpdateError::Probe { .. }
        )
    }
}

fn install_code(e: &InstallError) -> &'static str {
    use crate::fetch::FetchError;
    match e {
        InstallError::ChunkMismatch { .. } => "chunk_mismatch",
        InstallError::PatchMismatch { .. } => "patch_mismatch",
        InstallError::TooBig { .. } => "too_big",
        InstallError::Incomplete { .. } => "incomplete",
        InstallError::Fetch(FetchError::RangeIgnored { .. }) => "range_ignored",
        InstallError::Fetch(FetchError::Short { .. }) => "truncated",
        InstallError::Fetch(FetchError::Protocol { why, .. }) if why.contains("truncated") => {
            "truncated"
        }
        InstallError::Fetch(_) => "download",
        InstallError::Slot(_) => "slot_io",
        InstallError::State(_) => "state_io",
    }
}

/// What an install did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Installed version.
    pub version: String,
    /// Version it replaces.
    pub from: String,
    /// Slot written.
    pub slot: String,
    /// The new boot entry.
    pub entry: String,
    /// Root payload sources.
    pub root: Counters,
    /// UKI payload sources.
    pub uki: Counters,
    /// Bytes received in this run.
    pub downloaded: u64,
    /// Bytes of both payloads.
    pub payload_bytes: u64,
    /// Whether this run resumed an interrupted one.
    pub resumed: bool,
    /// Milliseconds of this run.
    pub duration_ms: u64,
}

struct Journal<'a> {
    state: &'a StateDir,
    progress: Progress,
    base_downloaded: u64,
    report: &'a mut dyn FnMut(&str, u64, u64),
}

impl Sink for Journal<'_> {
    fn checkpoint(&mut self, done: &Bitmap, received: u64) -> Result<(), InstallError> {
        if self.progress.phase == Phase::Root {
            self.progress.set_done(done);
        }
        self.progress.downloaded = self.base_downloaded + received;
        self.state.save_progress(&self.progress)?;
        Ok(())
    }
    fn progress(&mut self, what: &str, done: u64, total: u64) {
        (self.report)(what, done, total)
    }
}

fn patches_with_urls(patches: &[Patch], offer: &Offer) -> Vec<(Patch, Url)> {
    patches
        .iter()
        .filter_map(|p| offer.url(&p.target).map(|u| (p.clone(), u.clone())))
        .collect()
}

/// Installs `offer` into the inactive slot (see the module's order).
/// `report(what, done_bytes, total_bytes)` hears of progress.
pub fn install(
    sys: &System,
    offer: &Offer,
    state: &StateDir,
    fetch: &mut dyn Fetch,
    opts: &Options,
    report: &mut dyn FnMut(&str, u64, u64),
) -> Result<Report, UpdateError> {
    let t0 = Instant::now();
    let m = &offer.manifest;
    let slot = sys.target_slot();
    let esp = Esp::at(&sys.esp);

    // 1. What needs no write. A refusal is recorded in the history too.
    let uki = match refusals(sys, offer, opts, slot) {
        Ok(u) => u,
        Err(e) => {
            let _ = state.record(&Attempt {
                from: sys.running_version.clone(),
                to: m.version.clone(),
                started_at: state::now(),
                ended_at: state::now(),
                downloaded: 0,
                payload_bytes: 0,
                outcome: Outcome::Refused,
                reason: format!("{}: {e}", e.code()),
            });
            return Err(e);
        }
    };
    let target = Slot::open_target(&sys.target_root).map_err(|e| UpdateError::Install {
        what: "root",
        version: m.version.clone(),
        source: e.into(),
    })?;

    let payload_bytes = m.root.size + uki.payload.size;
    let previous = state.progress()?;
    let resumable = previous.as_ref().filter(|p| {
        p.manifest_sha256 == offer.manifest_sha256 && p.slot == slot && p.target == sys.target_root
    });
    let (mut progress, resumed) = match resumable {
        Some(p) => {
            let mut p = p.clone();
            p.resumes += 1;
            (p, true)
        }
        None => {
            if let Some(old) = &previous {
                // Another update was in flight: it is abandoned (its slot
                // is the one this one overwrites).
                state.record(&Attempt {
                    from: old.from_version.clone(),
                    to: old.version.clone(),
                    started_at: old.started_at,
                    ended_at: state::now(),
                    downloaded: old.downloaded,
                    payload_bytes: 0,
                    outcome: Outcome::Abandoned,
                    reason: format!("superseded: {} offered instead", m.version),
                })?;
            }
            (
                Progress {
                    version: m.version.clone(),
                    from_version: sys.running_version.clone(),
                    manifest_sha256: offer.manifest_sha256.clone(),
                    slot: slot.to_string(),
                    target: sys.target_root.clone(),
                    phase: Phase::Root,
                    root_done: String::new(),
                    started_at: state::now(),
                    downloaded: 0,
                    resumes: 0,
                },
                false,
            )
        }
    };
    // The journal's first write: a full /var fails here, before any slot
    // or ESP write.
    state.save_progress(&progress)?;
    state::write_atomic(&state.path().join(MANIFEST_FILE), &m.to_json())?;
    let mut attempt = Attempt {
        from: progress.from_version.clone(),
        to: m.version.clone(),
        started_at: progress.started_at,
        ended_at: 0,
        downloaded: progress.downloaded,
        payload_bytes,
        outcome: Outcome::InProgress,
        reason: String::new(),
    };
    state.record(&attempt)?;

    let result = run_phases(
        sys,
        offer,
        state,
        fetch,
        &esp,
        &mut progress,
        resumed,
        target,
        opts.stage_only,
        report,
    );
    match &result {
        Ok(r) => {
            attempt.downloaded = progress.downloaded;
            attempt.reason = if r.entry.is_empty() {
                format!("downloaded into slot {}; not installed yet", r.slot)
            } else {
                format!(
                    "installed into slot {} as {}; reboot to run it",
                    r.slot, r.entry
                )
            };
        }
        Err(e) => {
            attempt.downloaded = progress.downloaded;
            attempt.outcome = Outcome::Failed;
            attempt.ended_at = state::now();
            attempt.reason = format!("{}: {e}", e.code());
        }
    }
    state.record(&attempt)?;
    let mut r = result?;
    r.duration_ms = t0.elapsed().as_millis() as u64;
    Ok(r)
}

/// The checks that need no write; the UKI for the target slot.
fn refusals<'m>(
    sys: &System,
    offer: &'m Offer,
    opts: &Options,
    slot: &str,
) -> Result<&'m update::SlotUki, UpdateError> {
    let m = &offer.manifest;
    if !sys.blessed {
        return Err(UpdateError::NotBlessed(sys.running_version.clone()));
    }
    let slot_size = Slot::open_read(&sys.target_root)
        .map(|s| s.size())
        .map_err(|e| UpdateError::Install {
            what: "root",
            version: m.version.clone(),
            source: e.into(),
        })?;
    update::check_installable(
        m,
        &NodeFacts {
            running_version: &sys.running_version,
            compatible: &sys.compatible,
            slot_size,
            min_security_version: sys.min_security_version,
        },
        opts.allow_downgrade,
    )?;
    m.uki_for(slot).ok_or_else(|| UpdateError::NoUki {
        version: m.version.clone(),
        slot: slot.to_string(),
    })
}

#[allow(clippy::too_many_arguments)]
fn run_phases(
    sys: &System,
    offer: &Offer,
    state: &StateDir,
    fetch: &mut dyn Fetch,
    esp: &Esp,
    progress: &mut Progress,
    resumed: bool,
    target: Slot,
    stage_only: bool,
    report: &mut dyn FnMut(&str, u64, u64),
) -> Result<Report, UpdateError> {
    let m = &offer.manifest;
    let slot = sys.target_slot();
    let version = m.version.clone();
    let ierr = |what: &'static str| {
        let version = version.clone();
        move |source: InstallError| UpdateError::Install {
            what,
            version,
            source,
        }
    };
    let uki = m.uki_for(slot).ok_or_else(|| UpdateError::NoUki {
        version: m.version.clone(),
        slot: slot.to_string(),
    })?;
    let received0 = fetch.received();
    let base_downloaded = progress.downloaded;

    // 2. The server serves what was signed (range support, lengths, the
    //    last chunk of each payload), then the target slot can no longer
    //    boot (from the first write on; an install that is past its root
    //    phase keeps the entry it made).
    if progress.phase == Phase::Root {
        for (what, p) in [("root", &m.root), ("uki", &uki.payload)] {
            let url = offer.url(&p.target).ok_or_else(|| {
                ierr(what)(InstallError::Fetch(crate::fetch::FetchError::NotFound {
                    url: p.target.clone(),
                    status: 0,
                }))
            })?;
            install::probe(p, url, fetch).map_err(|source| UpdateError::Probe {
                what,
                version: m.version.clone(),
                source,
            })?;
        }
        esp.remove_slot(slot)?;
    }

    // The running version's bytes: root partition and UKI file.
    let running_root = Slot::open_read(&sys.running_root).map_err(|e| ierr("root")(e.into()))?;
    let running_entry = esp.entry_of(&sys.running_slot)?;
    let running_uki = match &running_entry {
        Some(e) => Some(Slot::open_read(&esp.path(e)).map_err(|e| ierr("uki")(e.into()))?),
        None => None,
    };
    let cache = state.path().to_path_buf();

    // 3. Root.
    let mut root_counters = Counters::default();
    if progress.phase == Phase::Root {
        let reference = Reference {
            version: &sys.running_version,
            kind: "root",
            slot: &running_root,
            len: sys.running_root_len,
        };
        let url = offer.url(&m.root.target).ok_or_else(|| {
            ierr("root")(InstallError::Fetch(crate::fetch::FetchError::NotFound {
                url: m.root.target.clone(),
                status: 0,
            }))
        })?;
        let mut done = progress.done_bitmap(m.root.chunks.len());
        let mut j = Journal {
            state,
            progress: progress.clone(),
            base_downloaded,
            report: &mut *report,
        };
        root_counters = install::install_payload(
            "root",
            &m.root,
            url,
            &patches_with_urls(&m.root.patches, offer),
            &target,
            Some(&reference),
            Some(&cache),
            fetch,
            &mut done,
            resumed,
            &mut j,
        )
        .map_err(ierr("root"))?;
        *progress = j.progress;
        progress.phase = Phase::Uki;
        progress.downloaded = base_downloaded + (fetch.received() - received0);
        state.save_progress(progress)?;
    }
    drop(target);

    // 4. The UKI, into a temporary file, then renamed into place.
    let mut uki_counters = Counters::default();
    let entry_name;
    if progress.phase == Phase::Uki {
        let part = esp.part_path(&m.version, slot);
        let existed = std::fs::metadata(&part).is_ok_and(|md| md.len() == uki.payload.size);
        if !existed {
            let f = std::fs::File::create(&part).map_err(|source| EspError {
                what: "creating",
                path: part.clone(),
                source,
            })?;
            f.set_len(uki.payload.size).map_err(|source| EspError {
                what: "sizing",
                path: part.clone(),
                source,
            })?;
        }
        let part_slot = Slot::open_target(&part).map_err(|e| ierr("uki")(e.into()))?;
        let reference = running_uki.as_ref().map(|s| Reference {
            version: &sys.running_version,
            kind: "uki",
            slot: s,
            len: s.size(),
        });
        let url = offer.url(&uki.payload.target).ok_or_else(|| {
            ierr("uki")(InstallError::Fetch(crate::fetch::FetchError::NotFound {
                url: uki.payload.target.clone(),
                status: 0,
            }))
        })?;
        let mut done = Bitmap::new(uki.payload.chunks.len());
        let base = progress.downloaded;
        let mut j = Journal {
            state,
            progress: progress.clone(),
            base_downloaded: base,
            report: &mut *report,
        };
        let r0 = fetch.received();
        uki_counters = install::install_payload(
            "uki",
            &uki.payload,
            url,
            &patches_with_urls(&uki.payload.patches, offer),
            &part_slot,
            reference.as_ref(),
            Some(&cache),
            fetch,
            &mut done,
            existed,
            &mut j,
        )
        .map_err(ierr("uki"))?;
        drop(part_slot);
        *progress = j.progress;
        progress.downloaded = base + (fetch.received() - r0);
        if stage_only {
            entry_name = String::new();
        } else {
            let entry = esp.commit_part(&m.version, slot)?;
            entry_name = entry.file;
            progress.phase = Phase::Installed;
        }
        state.save_progress(progress)?;
    } else {
        entry_name = esp.entry_of(slot)?.map(|e| e.file).unwrap_or_default();
    }

    Ok(Report {
        version: m.version.clone(),
        from: sys.running_version.clone(),
        slot: slot.to_string(),
        entry: entry_name,
        root: root_counters,
        uki: uki_counters,
        downloaded: fetch.received() - received0,
        payload_bytes: m.root.size + uki.payload.size,
        resumed,
        duration_ms: 0,
    })
}
