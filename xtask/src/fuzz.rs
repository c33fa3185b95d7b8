//! `cargo xtask fuzz`: runs every fuzz target of the workspace for a while.
//!
//! Targets live in `<crate>/fuzz` (cargo-fuzz layout, outside the
//! workspace). cargo-fuzz needs nightly-only flags; with only a stable
//! toolchain on these machines we set RUSTC_BOOTSTRAP=1, which lets stable
//! rustc accept them. Installs cargo-fuzz when it is missing.

use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Seconds per target.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Only targets whose name contains this.
    filter: Option<String>,
}

/// The crates that have fuzz targets.
const FUZZ_DIRS: &[&str] = &[
    "init/fuzz",
    "hal/fuzz",
    "netd/fuzz",
    "image/fuzz",
    "protocol/fuzz",
    "ota/fuzz",
    "apps/fuzz",
];

pub fn run(args: Args) -> Result<()> {
    if crate::deps::which("cargo-fuzz").is_none() {
        eprintln!("xtask: installing cargo-fuzz");
        util::run(util::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    }
    let root = util::root();
    let mut ran = 0;
    let mut failed = Vec::new();
    for dir in FUZZ_DIRS {
        let fuzz_dir = root.join(dir);
        if !fuzz_dir.join("Cargo.toml").exists() {
            continue;
        }
        let crate_dir = fuzz_dir.parent().context("fuzz dir has no parent")?;
        let list = Command::new("cargo")
            .args(["fuzz", "list", "--fuzz-dir"])
            .arg(&fuzz_dir)
            .current_dir(crate_dir)
            .output()
            .with_context(|| format!("listing fuzz targets in {}", fuzz_dir.display()))?;
        for target in String::from_utf8_lossy(&list.stdout)
            .lines()
            .map(str::trim)
            .filter(|t| !t.is_empty())
        {
            if args.filter.as_deref().is_some_and(|f| !target.contains(f)) {
                continue;
            }
            println!("==> fuzzing {dir}:{target} for {} s", args.seconds);
            let status = Command::new("cargo")
                .args(["fuzz", "run", "--fuzz-dir"])
                .arg(&fuzz_dir)
                .arg(target)
                .arg("--")
                .arg(format!("-max_total_time={}", args.seconds))
                .env("RUSTC_BOOTSTRAP", "1")
                .current_dir(crate_dir)
                .status()
                .with_context(|| format!("running cargo fuzz for {target}"))?;
            ran += 1;
            if !status.success() {
                failed.push(format!("{dir}:{target}"));
            }
        }
    }
    if ran == 0 {
        bail!("no fuzz target found");
    }
    if !failed.is_empty() {
        bail!(
            "fuzz targets found crashes (see the artifacts/ folders): {}",
            failed.join(", ")
        );
    }
    println!(
        "==> {ran} fuzz targets ran {} s each without a crash",
        args.seconds
    );
    Ok(())
}
