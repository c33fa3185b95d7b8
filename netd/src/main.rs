//! fluxnode-netd: a thin adapter onto the library. See `lib.rs`.

use std::process::ExitCode;

use anyhow::Context;
use fluxnode_netd::cli::{self, Command};

fn run() -> anyhow::Result<()> {
    match cli::parse(std::env::args().skip(1))? {
        Command::Help => print!("{}", cli::HELP),
        Command::Version => println!("fluxnode-netd {}", env!("CARGO_PKG_VERSION")),
        Command::PrintConfig { paths, json } => {
            let cfg = fluxnode_netd::config::load(&paths.config, &paths.cmdline)?;
            println!("{}", cli::render_config(&cfg, json));
        }
        Command::Run { paths, verbose } => {
            // `-v`, or RUST_LOG=debug/trace as other services take it.
            let env_debug =
                std::env::var("RUST_LOG").is_ok_and(|v| v.contains("debug") || v.contains("trace"));
            fluxnode_netd::log::init(verbose || env_debug);
            let notify = fluxnode_netd::notify::Notifier::from_env()
                .context("reading the sd_notify environment")?;
            fluxnode_netd::run(&paths, &notify)?;
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fluxnode-netd: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
