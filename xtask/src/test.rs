//! `cargo xtask test`: every test of the project, as CI runs it.
//!
//! It installs the packages, builds what the tests share (release binaries,
//! the appliance images), then runs `cargo test --workspace` once, streaming
//! its output, and closes with one line `summary: N passed, N failed, N skipped`.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;

use anyhow::{bail, Context, Result};

use crate::{deps, util};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Only run tests whose name contains this (passed to the test binaries).
    filter: Option<String>,
    /// Run only this package's tests.
    #[arg(short, long)]
    package: Option<String>,
}

/// Counts from the `test result:` lines of libtest.
#[derive(Default, Debug, PartialEq)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    fn add_line(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(what), Some(n)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            match what {
                "passed" => self.passed += n,
                "failed" => self.failed += n,
                "ignored" => self.ignored += n,
                _ => {}
            }
        }
    }
}

pub fn run(args: Args) -> Result<()> {
    deps::ensure(deps::PACKAGES)?;
    let t0 = std::time::Instant::now();
    let env = crate::prepare::before_tests()?;
    let mut cmd = util::cargo();
    cmd.envs(env);
    cmd.args(["test", "--no-fail-fast"]);
    match &args.package {
        Some(p) => cmd.args(["--package", p]),
        None => cmd.arg("--workspace"),
    };
    if let Some(f) = &args.filter {
        cmd.args(["--", f]);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().context("starting cargo test")?;
    let mut tally = Tally::default();
    let mut out = std::io::stdout().lock();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo test output")?;
            tally.add_line(&line);
            let _ = writeln!(out, "{line}");
        }
    }
    let status = child.wait().context("waiting for cargo test")?;
    println!(
        "xtask: tests took {:.0} s\nsummary: {} passed, {} failed, {} skipped",
        t0.elapsed().as_secs_f64(),
        tally.passed,
        tally.failed,
        tally.ignored
    );
    if !status.success() || tally.failed > 0 {
        bail!("some tests failed (cargo test: {status})");
    }
    if tally.passed == 0 {
        bail!("no test ran");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tally_sums_libtest_lines() {
        let mut t = Tally::default();
        t.add_line("test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.00s");
        t.add_line(
            "test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out",
        );
        t.add_line("running 7 tests");
        assert_eq!(
            t,
            Tally {
                passed: 7,
                failed: 3,
                ignored: 1
            }
        );
    }
}
