//! Which kernel modules go where, resolved from the kernel's own
//! modules.dep, modules.softdep and modules.alias (never hand-listed
//! dependencies): the closure of what the spec names, in load order.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use crate::error::{io, ImageError, Result};

/// The kernel's module database, as depmod wrote it.
#[derive(Debug, Default)]
pub struct ModDb {
    /// normalized name → (relative path, dependency names)
    deps: BTreeMap<String, (String, Vec<String>)>,
    /// normalized name → soft pre-dependencies (module names or aliases)
    softdeps: BTreeMap<String, Vec<String>>,
    /// alias → module names
    aliases: BTreeMap<String, Vec<String>>,
    builtin: BTreeSet<String>,
}

/// `dm-verity` and `dm_verity` are the same module to the kernel.
pub fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

fn name_of(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    normalize(file.split(".ko").next().unwrap_or(file))
}

impl ModDb {
    /// Reads `modules.dep`, `.softdep`, `.alias`, `.builtin` from `dir`.
    pub fn load(dir: &Path) -> Result<ModDb> {
        let read = |n: &str| {
            let p = dir.join(n);
            std::fs::read_to_string(&p).map_err(io("reading", p))
        };
        let mut db = ModDb::parse_dep(&read("modules.dep")?);
        db.parse_softdep(&read("modules.softdep").unwrap_or_default());
        db.parse_alias(&read("modules.alias").unwrap_or_default());
        for l in read("modules.builtin").unwrap_or_default().lines() {
            db.builtin.insert(name_of(l.trim()));
        }
        Ok(db)
    }

    /// Parses modules.dep text.
    pub fn parse_dep(text: &str) -> ModDb {
        let mut db = ModDb::default();
        for line in text.lines() {
            let Some((path, deps)) = line.split_once(':') else {
                continue;
            };
            let path = path.trim();
            if path.is_empty() {
                continue;
            }
            let deps = deps.split_whitespace().map(name_of).collect();
            db.deps.insert(name_of(path), (path.to_string(), deps));
        }
        db
    }

    fn parse_softdep(&mut self, text: &str) {
        for line in text.lines() {
            let mut w = line.split_whitespace();
            if w.next() != Some("softdep") {
                continue;
            }
            let Some(m) = w.next() else { continue };
            let mut pre = false;
            for word in w {
                match word {
                    "pre:" => pre = true,
                    "post:" => pre = false,
                    d if pre => self
                        .softdeps
                        .entry(normalize(m))
                        .or_default()
                        .push(d.to_string()),
                    _ => {}
                }
            }
        }
    }

    fn parse_alias(&mut self, text: &str) {
        for line in text.lines() {
            let mut w = line.split_whitespace();
            if let (Some("alias"), Some(a), Some(m)) = (w.next(), w.next(), w.next()) {
                self.aliases
                    .entry(a.to_string())
                    .or_default()
                    .push(normalize(m));
            }
        }
    }

    /// The relative path of a module (`kernel/fs/erofs/erofs.ko`).
    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.deps.get(&normalize(name)).map(|(p, _)| p.as_str())
    }

    /// The closure of `names` (hard and soft pre-dependencies, aliases
    /// resolved), dependencies before dependents; built-in modules dropped.
    pub fn closure(&self, names: &[String]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        let mut seen = BTreeSet::new();
        for n in names {
            let n = normalize(n);
            if self.builtin.contains(&n) {
                continue;
            }
            if !self.deps.contains_key(&n) {
                return Err(ImageError::UnknownModule(n));
            }
            self.visit(&n, &mut seen, &mut order, 0);
        }
        Ok(order)
    }

    fn visit(&self, n: &str, seen: &mut BTreeSet<String>, order: &mut Vec<String>, depth: usize) {
        if depth > 64 || !seen.insert(n.to_string()) {
            return;
        }
        for t in self.soft_targets(n) {
            self.visit(&t, seen, order, depth + 1);
        }
        if let Some((_, deps)) = self.deps.get(n) {
            for d in deps {
                self.visit(d, seen, order, depth + 1);
            }
        }
        order.push(n.to_string());
    }

    /// The modules `n`'s soft pre-dependencies name (directly or by alias,
    /// like `crypto-crc32c`), those that are modules.
    fn soft_targets(&self, n: &str) -> Vec<String> {
        let mut out = Vec::new();
        for soft in self.softdeps.get(n).into_iter().flatten() {
            let soft_n = normalize(soft);
            let targets: Vec<String> = if self.deps.contains_key(&soft_n) {
                vec![soft_n]
            } else {
                self.aliases.get(soft.as_str()).cloned().unwrap_or_default()
            };
            out.extend(
                targets
                    .into_iter()
                    .filter(|t| self.deps.contains_key(t) && t != n),
            );
        }
        out
    }

    /// modules.alias lines of exactly `names` (what stage 1 matches devices against).
    pub fn alias_lines(&self, names: &[String]) -> String {
        let mut out = String::new();
        for (alias, mods) in &self.aliases {
            for m in mods {
                if names.contains(m) {
                    out.push_str(&format!("alias {alias} {m}\n"));
                }
            }
        }
        out
    }

    /// modules.dep lines for exactly `names` (a trimmed database for the
    /// device). Soft pre-dependencies among `names` are written as hard
    /// ones: the device has no modprobe to read modules.softdep, and its
    /// loader starts a module as soon as its listed dependencies are in
    /// (libcrc32c, which erofs needs, fails to initialise when no crc32c
    /// implementation is loaded yet).
    pub fn dep_lines(&self, names: &[String]) -> String {
        let mut out = String::new();
        for n in names {
            if let Some((path, deps)) = self.deps.get(n) {
                let mut all: Vec<String> = self
                    .soft_targets(n)
                    .into_iter()
                    .filter(|t| names.contains(t))
                    .collect();
                for d in deps {
                    if !all.contains(d) {
                        all.push(d.clone());
                    }
                }
                let paths: Vec<&str> = all.iter().filter_map(|d| self.path_of(d)).collect();
                out.push_str(&format!("{path}: {}\n", paths.join(" ")));
            }
        }
        out
    }
}

const SIG_MAGIC: &[u8] = b"~Module signature appended~\n";

/// A module file without its appended signature (unchanged when unsigned).
pub fn strip_signature(ko: &[u8]) -> &[u8] {
    // struct module_signature (12 bytes, sig_len big-endian last) precedes the magic.
    let Some(body) = ko.strip_suffix(SIG_MAGIC) else {
        return ko;
    };
    if body.len() < 12 {
        return ko;
    }
    let info = &body[body.len() - 12..];
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    match body.len().checked_sub(12 + sig_len) {
        Some(end) => &body[..end],
        None => ko,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const DEP: &str = "kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko kernel/drivers/md/dm-mod.ko\n\
kernel/drivers/md/dm-bufio.ko:\nkernel/drivers/md/dm-mod.ko:\nkernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\n\
kernel/fs/jbd2/jbd2.ko:\nkernel/crypto/crc32c_generic.ko:\n";

    #[test]
    fn closure_orders_dependencies_first_and_follows_softdeps() {
        let mut db = ModDb::parse_dep(DEP);
        db.parse_softdep("softdep ext4 pre: crypto-crc32c\n");
        db.parse_alias("alias crypto-crc32c crc32c_generic\n");
        let order = db.closure(&["dm-verity".into(), "ext4".into()]).unwrap();
        assert_eq!(
            order,
            vec![
                "dm_bufio",
                "dm_mod",
                "dm_verity",
                "crc32c_generic",
                "jbd2",
                "ext4"
            ]
        );
        let lines = db.dep_lines(&order);
        assert!(lines.contains("kernel/drivers/md/dm-verity.ko: kernel/drivers/md/dm-bufio.ko"));
        // The soft pre-dependency becomes a listed one on the device...
        assert!(lines.contains(
            "kernel/fs/ext4/ext4.ko: kernel/crypto/crc32c_generic.ko kernel/fs/jbd2/jbd2.ko\n"
        ));
        // ...but only when it is on the device.
        assert!(db
            .dep_lines(&["jbd2".into(), "ext4".into()])
            .contains("kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko\n"));
        assert!(matches!(
            db.closure(&["nope".into()]),
            Err(ImageError::UnknownModule(_))
        ));
    }

    #[test]
    fn strips_appended_signatures() {
        let mut ko = b"\x7fELF-body".to_vec();
        ko.extend_from_slice(b"SIGNATURE");
        ko.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        ko.extend_from_slice(&9u32.to_be_bytes());
        ko.extend_from_slice(SIG_MAGIC);
        assert_eq!(strip_signature(&ko), b"\x7fELF-body");
        assert_eq!(strip_signature(b"plain"), b"plain");
        let mut bad = vec![0u8; 4];
        bad.extend_from_slice(SIG_MAGIC);
        assert_eq!(strip_signature(&bad), &bad[..]);
        let mut huge = vec![0u8; 12];
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        huge.extend_from_slice(SIG_MAGIC);
        assert_eq!(strip_signature(&huge), &huge[..]);
    }

    #[test]
    fn odd_lines_are_skipped() {
        let db = ModDb::parse_dep(":\n\n  : a\nx.ko\nkernel/a.ko: kernel/a.ko\n");
        assert_eq!(db.closure(&["a".into()]).unwrap(), vec!["a"]);
    }
}
