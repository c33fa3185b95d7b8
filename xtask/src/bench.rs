//! `cargo xtask bench`: the figures of docs/BENCHMARKS.md.

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which benchmark: init.
    what: String,
}

pub fn run(_args: Args) -> Result<()> {
    anyhow::bail!("not wired yet")
}
