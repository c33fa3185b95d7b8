//! What the update daemon does when it starts, decided from facts alone
//! (no I/O: every case is a unit test). It runs on every boot, before
//! init may bless it, and answers: is this the first boot of a new
//! version (then health decides before this boot is blessed), did a new
//! version fail and the node come back (report it), did a blessed version
//! fail and the node fall back (report it), or is an install to be
//! resumed.

use std::cmp::Ordering;

use fluxnode_protocol::update::cmp_versions;

use crate::esp::Entry;
use crate::state::{Outcome, Phase, Progress};

/// What the daemon knows at start.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    /// The version running.
    pub running_version: &'a str,
    /// The slot it runs from.
    pub running_slot: &'a str,
    /// The update in flight.
    pub progress: Option<&'a Progress>,
    /// The boot entries on the ESP.
    pub entries: &'a [Entry],
    /// The entry whose fall-back was last reported (so it is reported once).
    pub reported_fallback: Option<&'a str>,
}

/// What to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Nothing special: say ready, then check for updates on schedule.
    Normal,
    /// The first boot of the version just installed: run its health
    /// checks before saying ready; pass → blessed by init → success;
    /// fail → mark this entry bad and reboot into the old version.
    FirstBoot {
        /// The new version.
        version: String,
    },
    /// A new version was installed and the node runs the old one again:
    /// record it and forget the update.
    RolledBack {
        /// The version that failed.
        version: String,
        /// Why, in words.
        reason: String,
    },
    /// A blessed version failed boot after boot and systemd-boot fell back
    /// to this slot: record it once.
    FellBack {
        /// The entry that ran out of tries.
        entry: String,
        /// Its version.
        version: String,
    },
    /// An install was interrupted: say ready, then resume it.
    Resume {
        /// The version being installed.
        version: String,
    },
}

impl Decision {
    /// The history outcome this decision records, if any.
    pub fn outcome(&self) -> Option<Outcome> {
        match self {
            Decision::RolledBack { .. } => Some(Outcome::RolledBack),
            Decision::FellBack { .. } => Some(Outcome::FellBack),
            _ => None,
        }
    }
}

/// Decides (see the module).
pub fn decide(f: &Facts<'_>) -> Decision {
    if let Some(p) = f.progress {
        match p.phase {
            Phase::Installed | Phase::Booted
                if p.version == f.running_version && p.slot == f.running_slot =>
            {
                return Decision::FirstBoot {
                    version: p.version.clone(),
                };
            }
            Phase::Installed | Phase::Booted => {
                let entry = f.entries.iter().find(|e| e.slot == p.slot);
                let reason = match (p.phase, entry) {
                    (Phase::Booted, _) => format!(
                        "{} booted but did not pass its health checks; back on {}",
                        p.version, f.running_version
                    ),
                    (_, Some(e)) if e.is_bad() => format!(
                        "{} did not come up in {} tries; back on {}",
                        p.version, e.done, f.running_version
                    ),
                    (_, Some(e)) => format!(
                        "{} was not booted (entry {} has tries left: was the machine rebooted into the old version by hand?); staying on {}",
                        p.version, e.file, f.running_version
                    ),
                    (_, None) => format!(
                        "{}'s boot entry is gone; staying on {}",
                        p.version, f.running_version
                    ),
                };
                return Decision::RolledBack {
                    version: p.version.clone(),
                    reason,
                };
            }
            Phase::Root | Phase::Uki => {
                return Decision::Resume {
                    version: p.version.clone(),
                };
            }
        }
    }
    // A newer entry on the other slot with no tries left: a blessed
    // version that failed boot after boot.
    if let Some(e) = f.entries.iter().find(|e| {
        e.slot != f.running_slot
            && e.is_bad()
            && cmp_versions(&e.version, f.running_version) == Ordering::Greater
    }) {
        if f.reported_fallback != Some(e.file.as_str()) {
            return Decision::FellBack {
                entry: e.file.clone(),
                version: e.version.clone(),
            };
        }
    }
    Decision::Normal
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn progress(version: &str, slot: &str, phase: Phase) -> Progress {
        Progress {
            version: version.into(),
            from_version: "0.1.0".into(),
            manifest_sha256: String::new(),
            slot: slot.into(),
            target: "/dev/vda3".into(),
            phase,
            root_done: String::new(),
            started_at: 0,
            downloaded: 0,
            resumes: 0,
        }
    }

    fn entries(names: &[&str]) -> Vec<Entry> {
        names.iter().map(|n| Entry::parse(n).unwrap()).collect()
    }

    fn facts<'a>(v: &'a str, s: &'a str, p: Option<&'a Progress>, e: &'a [Entry]) -> Facts<'a> {
        Facts {
            running_version: v,
            running_slot: s,
            progress: p,
            entries: e,
            reported_fallback: None,
        }
    }

    #[test]
    fn the_first_boot_of_a_new_version_runs_its_health_checks() {
        let p = progress("0.2.0", "b", Phase::Installed);
        let e = entries(&["fluxnode-0.1.0-a+3.efi", "fluxnode-0.2.0-b+2-1.efi"]);
        assert_eq!(
            decide(&facts("0.2.0", "b", Some(&p), &e)),
            Decision::FirstBoot {
                version: "0.2.0".into()
            }
        );
        // Again after a crash during the checks (phase Booted).
        let p = progress("0.2.0", "b", Phase::Booted);
        assert!(matches!(
            decide(&facts("0.2.0", "b", Some(&p), &e)),
            Decision::FirstBoot { .. }
        ));
    }

    #[test]
    fn back_on_the_old_version_is_a_rollback_with_its_reason() {
        let e = entries(&["fluxnode-0.1.0-a+3.efi", "fluxnode-0.2.0-b+0-3.efi"]);
        let p = progress("0.2.0", "b", Phase::Installed);
        let d = decide(&facts("0.1.0", "a", Some(&p), &e));
        let Decision::RolledBack { reason, .. } = &d else {
            panic!("{d:?}")
        };
        assert!(reason.contains("3 tries"), "{reason}");
        assert_eq!(d.outcome(), Some(Outcome::RolledBack));
        let p = progress("0.2.0", "b", Phase::Booted);
        let Decision::RolledBack { reason, .. } = decide(&facts("0.1.0", "a", Some(&p), &e)) else {
            panic!()
        };
        assert!(reason.contains("health"), "{reason}");
    }

    #[test]
    fn an_interrupted_install_resumes() {
        let e = entries(&["fluxnode-0.1.0-a+3.efi"]);
        for phase in [Phase::Root, Phase::Uki] {
            let p = progress("0.2.0", "b", phase);
            assert_eq!(
                decide(&facts("0.1.0", "a", Some(&p), &e)),
                Decision::Resume {
                    version: "0.2.0".into()
                }
            );
        }
    }

    #[test]
    fn a_blessed_version_that_ran_out_of_tries_is_reported_once() {
        let e = entries(&["fluxnode-0.1.0-a+2-1.efi", "fluxnode-0.2.0-b+0-3.efi"]);
        let d = decide(&facts("0.1.0", "a", None, &e));
        assert_eq!(
            d,
            Decision::FellBack {
                entry: "fluxnode-0.2.0-b+0-3.efi".into(),
                version: "0.2.0".into()
            }
        );
        let mut f = facts("0.1.0", "a", None, &e);
        f.reported_fallback = Some("fluxnode-0.2.0-b+0-3.efi");
        assert_eq!(decide(&f), Decision::Normal);
        // An older bad entry is not a fall-back from it.
        let e = entries(&["fluxnode-0.2.0-a+3.efi", "fluxnode-0.1.0-b+0-3.efi"]);
        assert_eq!(decide(&facts("0.2.0", "a", None, &e)), Decision::Normal);
    }
}
