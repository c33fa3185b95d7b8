//! # fluxnode-testkit
//!
//! libtest has no "skipped at run time": a test that finds the machine
//! cannot run it (no root, no QEMU, no network namespaces) can only return,
//! and is then counted as passed. That hid 43 tests that never ran.
//!
//! [`skip`] makes a skip visible: it prints the reason and appends one line
//! `test<TAB>reason` to the file named by `FLUXNODE_SKIP_LOG`, which
//! `cargo xtask test` sets, reads after the run, subtracts from the passed
//! count, and prints in its summary. On the project's own machines nothing
//! may skip: `cargo xtask test` fails when anything did, unless it is told
//! `--allow-skips` (a developer's laptop without root, say).
#![deny(missing_docs)]

use std::io::Write;

pub mod faulty_http;
pub mod nginx;
pub mod oci_registry;
pub mod postgres;
pub mod swtpm;

/// The variable `cargo xtask test` sets to the file that collects skips.
pub const SKIP_LOG_VAR: &str = "FLUXNODE_SKIP_LOG";

/// Records that the running test cannot run here, and why. The caller
/// returns right after. The test's name is libtest's thread name.
pub fn skip(reason: impl std::fmt::Display) {
    let current = std::thread::current();
    skip_named(current.name().unwrap_or("unnamed test"), reason);
}

/// [`skip`] for a test whose name is not its thread's (a `harness = false`
/// test binary runs on `main`).
pub fn skip_named(test: &str, reason: impl std::fmt::Display) {
    // One line, whatever the reason holds: the log is line-based.
    let reason = reason.to_string().replace(['\n', '\t'], " ");
    eprintln!("SKIP {test}: {reason}");
    let Some(path) = std::env::var_os(SKIP_LOG_VAR) else {
        return;
    };
    let line = format!("{test}\t{reason}\n");
    // O_APPEND and one write: lines from parallel tests and test binaries
    // do not interleave.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!(
            "SKIP {test}: cannot record the skip in {}: {e}",
            std::path::Path::new(&path).display()
        );
    }
}

/// One recorded skip, as `cargo xtask test` reads it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The test's name.
    pub test: String,
    /// Why it could not run.
    pub reason: String,
}

/// Parses the skip log's text; malformed lines are kept whole as the reason.
pub fn parse_log(text: &str) -> Vec<Skipped> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| match l.split_once('\t') {
            Some((t, r)) => Skipped {
                test: t.to_string(),
                reason: r.to_string(),
            },
            None => Skipped {
                test: "?".to_string(),
                reason: l.to_string(),
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn skips_are_logged_one_line_each_and_read_back() {
        let dir = std::env::temp_dir().join(format!("testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("skips");
        // Only this test sets the variable in this binary.
        std::env::set_var(SKIP_LOG_VAR, &log);
        skip("no root\there");
        skip_named("qemu_dhcp", "no /dev/kvm\nand no tcg");
        let got = parse_log(&std::fs::read_to_string(&log).unwrap());
        std::env::remove_var(SKIP_LOG_VAR);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            got,
            vec![
                Skipped {
                    test: "tests::skips_are_logged_one_line_each_and_read_back".into(),
                    reason: "no root here".into()
                },
                Skipped {
                    test: "qemu_dhcp".into(),
                    reason: "no /dev/kvm and no tcg".into()
                },
            ]
        );
    }
}
