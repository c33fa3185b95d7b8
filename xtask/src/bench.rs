//! `cargo xtask bench WHAT`: the figures of docs/BENCHMARKS.md.
//!
//! Each benchmark prints its figures and the ratio against the peer it names.

use anyhow::{bail, Result};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Which benchmark: `init` (PID 1 memory, restart latency, 200 services),
    /// `boot` (boot timeline vs Debian with systemd), `hal` (ours vs sysbench, dd, fio).
    what: String,
    /// Extra arguments for that benchmark.
    #[arg(trailing_var_arg = true)]
    rest: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    match args.what.as_str() {
        "init" => crate::bench_init::run(&args.rest),
        "boot" => crate::bench_boot::run(&args.rest),
        "hal" => crate::bench_hal::run(&args.rest),
        other => bail!("unknown benchmark {other:?}; choose init, boot or hal"),
    }
}
