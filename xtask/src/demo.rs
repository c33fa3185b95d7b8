//! `cargo xtask demo`: build the appliance and show it running.

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Leave the machine running.
    #[arg(long)]
    interactive: bool,
}

pub fn run(_args: Args) -> Result<()> {
    anyhow::bail!("not wired yet")
}
