//! Kernel settings the appliance needs, from one table (as mounts are).
//!
//! Applied by stage 2 as PID 1 of the machine only: in a test namespace
//! init shares the host's network namespace and must not change it.
//!
//! Why each is here:
//! - IPv6 router advertisements and redirects are refused: netd configures
//!   IPv4 only, and a rogue RA would otherwise add a default route (and
//!   addresses) that netd never sees, steering the node's traffic past it.
//!   `accept_ra` is read per interface (the kernel does not consult `all`
//!   for it), so it is set on `default` for links that appear later and on
//!   every link that exists now.
//! - IPv4 redirects and source routes are refused for the same reason.
//! - `net.unix.max_dgram_qlen` is raised from the kernel's 10 to 512, as
//!   systemd does: services' sd_notify datagrams must not find init's
//!   notify queue full during a burst of starts.

use std::path::Path;

/// One setting: `key` is the path under /proc/sys with dots; a `*`
/// component stands for every entry that exists there now (every link).
#[derive(Debug, Clone, Copy)]
pub struct Sysctl {
    /// Dotted key, e.g. `net.ipv6.conf.default.accept_ra`.
    pub key: &'static str,
    /// The value written.
    pub value: &'static str,
    /// Absent when the kernel lacks the feature (no IPv6): skipped quietly.
    pub optional: bool,
}

const fn set(key: &'static str, value: &'static str) -> Sysctl {
    Sysctl {
        key,
        value,
        optional: true,
    }
}

/// What stage 2 sets, in order (`default` before `*`, so a link that
/// appears between the two still gets the value).
pub const SYSCTLS: &[Sysctl] = &[
    set("net.ipv6.conf.default.accept_ra", "0"),
    set("net.ipv6.conf.all.accept_ra", "0"),
    set("net.ipv6.conf.*.accept_ra", "0"),
    set("net.ipv6.conf.default.accept_redirects", "0"),
    set("net.ipv6.conf.all.accept_redirects", "0"),
    set("net.ipv6.conf.*.accept_redirects", "0"),
    set("net.ipv4.conf.default.accept_redirects", "0"),
    set("net.ipv4.conf.all.accept_redirects", "0"),
    set("net.ipv4.conf.default.secure_redirects", "0"),
    set("net.ipv4.conf.all.secure_redirects", "0"),
    set("net.ipv4.conf.default.accept_source_route", "0"),
    set("net.ipv4.conf.all.accept_source_route", "0"),
    set("net.unix.max_dgram_qlen", "512"),
];

/// The files a key names under `root` (/proc/sys), wildcards expanded.
fn files(root: &Path, key: &str) -> Vec<std::path::PathBuf> {
    let mut out = vec![root.to_path_buf()];
    for part in key.split('.') {
        if part == "*" {
            out = out
                .iter()
                .flat_map(|dir| {
                    let mut names: Vec<_> = std::fs::read_dir(dir)
                        .map(|r| r.flatten().map(|e| e.path()).collect())
                        .unwrap_or_default();
                    names.sort();
                    names
                })
                .filter(|p| p.is_dir())
                .collect();
        } else {
            for p in &mut out {
                p.push(part);
            }
        }
    }
    out
}

/// Applies `table` under `root`; returns what failed, each with why.
/// A missing optional key is not a failure (a kernel without IPv6).
pub fn apply(root: &Path, table: &[Sysctl]) -> Vec<String> {
    let mut failed = Vec::new();
    for s in table {
        for f in files(root, s.key) {
            match std::fs::write(&f, s.value) {
                Ok(()) => {}
                Err(e) if s.optional && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => failed.push(format!("{}={}: {e}", f.display(), s.value)),
            }
        }
    }
    failed
}

/// Stage 2's call: [`SYSCTLS`] under /proc/sys, failures logged.
pub fn apply_all() {
    for f in apply(Path::new("/proc/sys"), SYSCTLS) {
        tracing::warn!("sysctl not applied: {f}");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn wildcards_reach_every_existing_link_and_missing_keys_are_quiet() {
        let d = tempfile::tempdir().unwrap();
        let conf = d.path().join("net/ipv6/conf");
        for link in ["all", "default", "eth0", "lo"] {
            std::fs::create_dir_all(conf.join(link)).unwrap();
            std::fs::write(conf.join(link).join("accept_ra"), "1").unwrap();
        }
        let table = [
            set("net.ipv6.conf.default.accept_ra", "0"),
            set("net.ipv6.conf.*.accept_ra", "0"),
            // Absent here, as on a kernel without the feature.
            set("net.ipv4.conf.all.accept_redirects", "0"),
        ];
        assert_eq!(apply(d.path(), &table), Vec::<String>::new());
        for link in ["all", "default", "eth0", "lo"] {
            assert_eq!(
                std::fs::read_to_string(conf.join(link).join("accept_ra")).unwrap(),
                "0",
                "{link}"
            );
        }
    }

    #[test]
    fn a_required_key_that_is_missing_is_reported() {
        let d = tempfile::tempdir().unwrap();
        let table = [Sysctl {
            key: "net.unix.max_dgram_qlen",
            value: "512",
            optional: false,
        }];
        let failed = apply(d.path(), &table);
        assert_eq!(failed.len(), 1);
        assert!(failed[0].contains("max_dgram_qlen=512"), "{failed:?}");
    }

    #[test]
    fn the_table_refuses_router_advertisements_everywhere() {
        for key in [
            "net.ipv6.conf.default.accept_ra",
            "net.ipv6.conf.all.accept_ra",
            "net.ipv6.conf.*.accept_ra",
        ] {
            assert!(
                SYSCTLS.iter().any(|s| s.key == key && s.value == "0"),
                "{key}"
            );
        }
    }
}
