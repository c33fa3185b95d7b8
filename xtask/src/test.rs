//! `cargo xtask test`: every test of the project, as CI runs it.
//!
//! It installs the packages, checks formatting (`cargo fmt --check`) and
//! lints (`cargo clippy --workspace --all-targets -- -D warnings`: the deny
//! lints of Cargo.toml are enforced here, and a warning fails the run),
//! builds what the tests share (release binaries, the appliance images),
//! then runs `cargo test --workspace` once, streaming its output, and closes
//! with one line `summary: N passed, N failed, N skipped`.
//!
//! A test that returns early because this machine cannot run it records
//! why through `fluxnode_testkit::skip`; those are counted as skipped, not
//! passed, and listed with their reasons. On the project's machines
//! (Debian, root, `cargo xtask deps` done) nothing may skip, so any skip
//! fails the run unless `--allow-skips` is given.

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
    /// Let tests that cannot run on this machine skip (they are still
    /// counted and listed). Without it, any skip fails the run.
    #[arg(long)]
    allow_skips: bool,
    /// Do not run `cargo fmt --check` and clippy first.
    #[arg(long)]
    no_lint: bool,
}

/// Counts from the `test result:` lines of libtest.
#[derive(Default, Debug, PartialEq)]
struct Tally {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Tally {
    /// (passed, skipped) once `skips` tests that returned early are taken
    /// off the passed count: libtest counted them as passed.
    fn with_skips(&self, skips: u64) -> (u64, u64) {
        let moved = skips.min(self.passed);
        (self.passed - moved, self.ignored + moved)
    }

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

/// `cargo fmt --check` and clippy with warnings denied; the problems found.
fn lint(package: Option<&str>) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    for tool in ["fmt", "clippy"] {
        let there = util::cargo()
            .args([tool, "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !there {
            let component = if tool == "fmt" { "rustfmt" } else { "clippy" };
            bail!(
                "`cargo {tool}` is missing: install it with `rustup component add {component}` \
                 (rustup's default profile has it), or pass --no-lint"
            );
        }
    }
    eprintln!("xtask: cargo fmt --check");
    let mut fmt = util::cargo();
    fmt.args(["fmt", "--check"]);
    match package {
        Some(p) => fmt.args(["--package", p]),
        None => fmt.arg("--all"),
    };
    if !fmt.status().context("starting cargo fmt")?.success() {
        problems.push("cargo fmt --check: files need formatting (run `cargo fmt --all`)".into());
    }
    eprintln!("xtask: cargo clippy --all-targets -- -D warnings");
    let mut clippy = util::cargo();
    clippy.arg("clippy");
    match package {
        Some(p) => clippy.args(["--package", p]),
        None => clippy.arg("--workspace"),
    };
    clippy.args(["--all-targets", "--", "-D", "warnings"]);
    if !clippy.status().context("starting cargo clippy")?.success() {
        problems.push("cargo clippy: warnings or errors (see above)".into());
    }
    Ok(problems)
}

pub fn run(args: Args) -> Result<()> {
    deps::ensure(deps::PACKAGES)?;
    let t0 = std::time::Instant::now();
    let mut problems = if args.no_lint {
        Vec::new()
    } else {
        lint(args.package.as_deref())?
    };
    let env = crate::prepare::before_tests()?;
    let skip_log = util::target_dir().join(format!("xtask-skips-{}.log", std::process::id()));
    let _ = std::fs::remove_file(&skip_log);
    if let Some(dir) = skip_log.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut cmd = util::cargo();
    cmd.envs(env);
    cmd.env(fluxnode_testkit::SKIP_LOG_VAR, &skip_log);
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
    let skips = match std::fs::read_to_string(&skip_log) {
        Ok(text) => fluxnode_testkit::parse_log(&text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e).with_context(|| format!("reading {}", skip_log.display())),
    };
    let _ = std::fs::remove_file(&skip_log);
    let (passed, skipped) = tally.with_skips(skips.len() as u64);
    for s in &skips {
        println!("skipped: {}: {}", s.test, s.reason);
    }
    for p in &problems {
        println!("lint: {p}");
    }
    println!(
        "xtask: tests took {:.0} s\nsummary: {} passed, {} failed, {} skipped",
        t0.elapsed().as_secs_f64(),
        passed,
        tally.failed,
        skipped
    );
    if !status.success() || tally.failed > 0 {
        problems.push(format!("some tests failed (cargo test: {status})"));
    }
    if !skips.is_empty() && !args.allow_skips {
        problems.push(format!(
            "{} test(s) could not run on this machine (listed above); on the project's \
             machines nothing may skip: run `cargo xtask deps` as root, or pass --allow-skips",
            skips.len()
        ));
    }
    if passed == 0 && problems.is_empty() {
        bail!("no test ran");
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
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
        assert_eq!(t.with_skips(2), (5, 3), "skips move from passed to skipped");
        assert_eq!(t.with_skips(99), (0, 8), "never below zero");
    }
}
