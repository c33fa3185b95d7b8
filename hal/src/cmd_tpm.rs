//! `fluxnode-hal tpm ...`.
use anyhow::Result;
use clap::Args;
use std::process::ExitCode;
#[derive(Args, Debug)]
pub struct TpmArgs {}
pub fn run(_a: TpmArgs) -> Result<ExitCode> {
    Ok(ExitCode::SUCCESS)
}
