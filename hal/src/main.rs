//! `fluxnode-hal`: the hardware layer on the command line. Glue only: every
//! command is a few lines over the `fluxnode_hal` library.

mod cmd;
mod cmd_tpm;
mod show;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cmd::Cli::parse();
    // tpm2-tss logs its own warnings to stderr ("WARNING:tcti:..."); our
    // errors already say which TPM command failed, so keep it quiet unless
    // asked. Set before any thread starts.
    if std::env::var_os("TSS2_LOG").is_none() && !cli.verbose {
        std::env::set_var("TSS2_LOG", "all+NONE");
    }
    let filter = if cli.verbose {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    };
    cmd::init_logging(filter);
    match cmd::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("fluxnode-hal: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
