//! `cargo xtask bench registry`: the registry's figures (issue 12), with
//! the release build of `fluxnode-loadgen` (the registry's code runs in
//! it, built as the registry binary is):
//!
//! 1. `fluxnode-loadgen verify --profile both`: evidence checks per second
//!    on one core, on recorded evidence (quote pair, report, openings);
//! 2. `fluxnode-loadgen sessions --nodes 1000 --store redb`: 1,000
//!    simulated nodes register and run one session each against a real
//!    registry over HTTPS on loopback: p50/p99/max per phase, sessions/s;
//! 3. the same with `--store postgres` (a private PostgreSQL cluster).
//!
//! Each step prints the command it runs, then its figures.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::util;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Simulated nodes for the session figures.
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Hold every node's evidence until all have their end quote (the
    /// evidence and openings phases then run without the load
    /// generator's benchmark work).
    #[arg(long)]
    precompute: bool,
    /// Skip the PostgreSQL run (figure 3).
    #[arg(long)]
    skip_postgres: bool,
    /// Skip the verification figures (figure 1).
    #[arg(long)]
    skip_verify: bool,
    /// The PostgreSQL to use instead of a private cluster (an empty database).
    #[arg(long)]
    postgres_url: Option<String>,
    /// JSON from each step on stdout instead of tables.
    #[arg(long)]
    json: bool,
    /// Flags after `--`, for every `fluxnode-loadgen sessions` run.
    #[arg(last = true)]
    pub extra: Vec<String>,
}

fn step(bin: &PathBuf, args: &[String]) -> Result<()> {
    eprintln!("\n$ fluxnode-loadgen {}", args.join(" "));
    util::run(Command::new(bin).args(args))
}

pub fn run(a: Args) -> Result<()> {
    eprintln!("xtask: cargo build --release -p fluxnode-loadgen");
    util::run(util::cargo().args(["build", "--release", "-p", "fluxnode-loadgen"]))
        .context("building the load generator")?;
    let bin = util::target_dir().join("release/fluxnode-loadgen");
    if !bin.is_file() {
        bail!("{} was not built", bin.display());
    }
    let json: Vec<String> = if a.json {
        vec!["--json".into()]
    } else {
        vec![]
    };
    let mut failed = Vec::new();
    if !a.skip_verify {
        let mut args: Vec<String> = ["verify", "--profile", "both"].map(String::from).to_vec();
        args.extend(json.iter().cloned());
        if let Err(e) = step(&bin, &args) {
            failed.push(format!("verify: {e:#}"));
        }
    }
    let mut stores = vec!["redb".to_string()];
    if !a.skip_postgres {
        stores.push(a.postgres_url.clone().unwrap_or_else(|| "postgres".into()));
    }
    for store in stores {
        let mut args = vec![
            "sessions".to_string(),
            "--nodes".into(),
            a.nodes.to_string(),
            "--store".into(),
            store.clone(),
        ];
        if a.precompute {
            args.push("--precompute".into());
        }
        args.extend(json.iter().cloned());
        args.extend(a.extra.iter().cloned());
        if let Err(e) = step(&bin, &args) {
            failed.push(format!("sessions on {store}: {e:#}"));
        }
    }
    if !failed.is_empty() {
        bail!("bench registry: {}", failed.join("; "));
    }
    Ok(())
}
