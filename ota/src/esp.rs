//! Boot entries on the ESP: the UKIs in `EFI/Linux/`, their names, their
//! boot counters, and installing one safely.
//!
//! A UKI's name is `fluxnode-<version>-<slot>[+LEFT[-DONE]].efi`: the
//! image builder's names (the slot in the name keeps the two slots' files
//! apart when both hold the same version), with systemd-boot's boot
//! counter. A new entry is installed with `+3`: systemd-boot decrements it
//! on each try, and at `+0` it sorts last, so the other slot boots.
//!
//! Installing writes to a temporary name that systemd-boot ignores
//! (`….efi.part`), syncs it, renames it into place and syncs the
//! directory: after a power cut the entry is either absent or whole.

use std::path::{Path, PathBuf};

use crate::state::{sync_dir, StateError};

/// Where the UKIs are, under the ESP's root.
pub const UKI_DIR: &str = "EFI/Linux";

/// Tries a new entry gets.
pub const NEW_TRIES: u32 = 3;

/// A boot entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// File name in `EFI/Linux`.
    pub file: String,
    /// Its version.
    pub version: String,
    /// Its slot (`a` or `b`).
    pub slot: String,
    /// Tries left, when it carries a boot counter.
    pub left: Option<u32>,
    /// Tries used.
    pub done: u32,
}

impl Entry {
    /// Parses `fluxnode-<version>-<slot>[+L[-D]].efi`.
    pub fn parse(file: &str) -> Option<Entry> {
        let stem = file.strip_prefix("fluxnode-")?.strip_suffix(".efi")?;
        let (base, counter) = match stem.split_once('+') {
            Some((b, c)) => (b, Some(c)),
            None => (stem, None),
        };
        let (version, slot) = base.rsplit_once('-')?;
        if version.is_empty() || !matches!(slot, "a" | "b") {
            return None;
        }
        let (left, done) = match counter {
            None => (None, 0),
            Some(c) => {
                let (l, d) = match c.split_once('-') {
                    Some((l, d)) => (l, Some(d)),
                    None => (c, None),
                };
                let l: u32 = l.parse().ok()?;
                let d: u32 = match d {
                    Some(d) => d.parse().ok()?,
                    None => 0,
                };
                (Some(l), d)
            }
        };
        Some(Entry {
            file: file.to_string(),
            version: version.to_string(),
            slot: slot.to_string(),
            left,
            done,
        })
    }

    /// Whether systemd-boot considers it bad (no tries left).
    pub fn is_bad(&self) -> bool {
        self.left == Some(0)
    }

    /// The file name for a fresh entry.
    pub fn name(version: &str, slot: &str, tries: Option<u32>) -> String {
        match tries {
            Some(t) => format!("fluxnode-{version}-{slot}+{t}.efi"),
            None => format!("fluxnode-{version}-{slot}.efi"),
        }
    }
}

/// A failure on the ESP.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct EspError {
    /// What was being done.
    pub what: &'static str,
    /// The file or directory.
    pub path: PathBuf,
    /// Cause.
    #[source]
    pub source: std::io::Error,
}

impl From<StateError> for EspError {
    fn from(e: StateError) -> EspError {
        match e {
            StateError::Io { what, path, source } => EspError { what, path, source },
            StateError::Damaged { path, why } => EspError {
                what: "using",
                path,
                source: std::io::Error::other(why),
            },
        }
    }
}

/// The ESP, mounted at a directory.
#[derive(Debug, Clone)]
pub struct Esp {
    root: PathBuf,
}

impl Esp {
    /// The ESP mounted at `root`.
    pub fn at(root: &Path) -> Esp {
        Esp {
            root: root.to_path_buf(),
        }
    }

    /// `EFI/Linux` under it.
    pub fn dir(&self) -> PathBuf {
        self.root.join(UKI_DIR)
    }

    /// Our entries, in directory order.
    pub fn entries(&self) -> Result<Vec<Entry>, EspError> {
        let dir = self.dir();
        let rd = std::fs::read_dir(&dir).map_err(|source| EspError {
            what: "listing",
            path: dir.clone(),
            source,
        })?;
        let mut out = Vec::new();
        for e in rd.flatten() {
            if let Some(name) = e.file_name().to_str() {
                if let Some(entry) = Entry::parse(name) {
                    out.push(entry);
                }
            }
        }
        out.sort_by(|a, b| a.file.cmp(&b.file));
        Ok(out)
    }

    /// The entry of a slot, if any (the first one when there are several).
    pub fn entry_of(&self, slot: &str) -> Result<Option<Entry>, EspError> {
        Ok(self.entries()?.into_iter().find(|e| e.slot == slot))
    }

    /// The path of an entry.
    pub fn path(&self, e: &Entry) -> PathBuf {
        self.dir().join(&e.file)
    }

    /// Removes every entry of `slot` (and a leftover temporary file), then
    /// syncs the directory: the slot can no longer boot. Done before the
    /// first byte of a new version is written into that slot.
    pub fn remove_slot(&self, slot: &str) -> Result<Vec<String>, EspError> {
        let dir = self.dir();
        let mut removed = Vec::new();
        for e in self.entries()? {
            if e.slot == slot {
                let p = dir.join(&e.file);
                std::fs::remove_file(&p).map_err(|source| EspError {
                    what: "removing",
                    path: p,
                    source,
                })?;
                removed.push(e.file);
            }
        }
        if !removed.is_empty() {
            sync_dir(&dir)?;
        }
        Ok(removed)
    }

    /// The temporary file a slot's new UKI is written into.
    pub fn part_path(&self, version: &str, slot: &str) -> PathBuf {
        self.dir()
            .join(format!("fluxnode-{version}-{slot}.efi.part"))
    }

    /// Moves a written, synced temporary UKI into place as a new entry with
    /// [`NEW_TRIES`] tries, and syncs the directory.
    pub fn commit_part(&self, version: &str, slot: &str) -> Result<Entry, EspError> {
        let part = self.part_path(version, slot);
        let name = Entry::name(version, slot, Some(NEW_TRIES));
        let dest = self.dir().join(&name);
        std::fs::File::open(&part)
            .and_then(|f| f.sync_all())
            .map_err(|source| EspError {
                what: "syncing",
                path: part.clone(),
                source,
            })?;
        std::fs::rename(&part, &dest).map_err(|source| EspError {
            what: "renaming into place",
            path: dest.clone(),
            source,
        })?;
        sync_dir(&self.dir())?;
        Entry::parse(&name).ok_or_else(|| EspError {
            what: "naming",
            path: dest,
            source: std::io::Error::other("unparsable entry name"),
        })
    }

    /// Renames an entry (a boot counter change) durably.
    pub fn rename(&self, e: &Entry, new_name: &str) -> Result<Entry, EspError> {
        let from = self.path(e);
        let to = self.dir().join(new_name);
        std::fs::rename(&from, &to).map_err(|source| EspError {
            what: "renaming",
            path: from,
            source,
        })?;
        sync_dir(&self.dir())?;
        Entry::parse(new_name).ok_or_else(|| EspError {
            what: "naming",
            path: to,
            source: std::io::Error::other("unparsable entry name"),
        })
    }

    /// Marks an entry bad (`+0-N`): systemd-boot sorts it last, so the
    /// other slot boots next.
    pub fn mark_bad(&self, e: &Entry) -> Result<Entry, EspError> {
        let done = e.done + e.left.unwrap_or(0).max(1);
        let name = format!("fluxnode-{}-{}+0-{done}.efi", e.version, e.slot);
        self.rename(e, &name)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn names_parse_with_and_without_counters() {
        let e = Entry::parse("fluxnode-0.2.0-b+3.efi").unwrap();
        assert_eq!(
            (e.version.as_str(), e.slot.as_str(), e.left, e.done),
            ("0.2.0", "b", Some(3), 0)
        );
        let e = Entry::parse("fluxnode-0.2.0-b+0-3.efi").unwrap();
        assert!(e.is_bad() && e.done == 3);
        let e = Entry::parse("fluxnode-1.0~rc1-a.efi").unwrap();
        assert_eq!((e.left, e.slot.as_str()), (None, "a"));
        for bad in [
            "fluxnode-0.2.0-c.efi",
            "linux.efi",
            "fluxnode-0.2.0-a+x.efi",
            "fluxnode--a.efi",
            "fluxnode-0.2.0-a.efi.part",
        ] {
            assert_eq!(Entry::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn install_remove_and_mark_bad() {
        let dir = tempfile::tempdir().unwrap();
        let esp = Esp::at(dir.path());
        std::fs::create_dir_all(esp.dir()).unwrap();
        std::fs::write(esp.dir().join("fluxnode-0.1.0-a.efi"), b"a").unwrap();
        std::fs::write(esp.dir().join("fluxnode-0.0.9-b.efi"), b"old").unwrap();
        assert_eq!(
            esp.remove_slot("b").unwrap(),
            vec!["fluxnode-0.0.9-b.efi".to_string()]
        );
        std::fs::write(esp.part_path("0.2.0", "b"), b"new uki").unwrap();
        assert_eq!(
            esp.entries().unwrap().len(),
            1,
            "a .part file is not an entry"
        );
        let e = esp.commit_part("0.2.0", "b").unwrap();
        assert_eq!(e.file, "fluxnode-0.2.0-b+3.efi");
        assert_eq!(std::fs::read(esp.path(&e)).unwrap(), b"new uki");
        let bad = esp.mark_bad(&e).unwrap();
        assert_eq!(bad.file, "fluxnode-0.2.0-b+0-3.efi");
        assert!(bad.is_bad());
        assert_eq!(
            esp.entry_of("a").unwrap().unwrap().file,
            "fluxnode-0.1.0-a.efi"
        );
    }
}
