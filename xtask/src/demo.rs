//! `cargo xtask demo`: build the appliance and show it running.

use anyhow::Result;

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Leave the machine running.
    #[arg(long)]
    interactive: bool,
    /// Instead of the image, run init as PID 1 of a fresh namespace with sample services.
    #[arg(long)]
    namespace: bool,
}

pub fn run(args: Args) -> Result<()> {
    if args.namespace {
        return crate::demo_ns::run();
    }
    crate::demo_ns::run()
}
