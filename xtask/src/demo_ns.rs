//! `cargo xtask demo --namespace`: init supervising sample services as PID 1
//! of a fresh PID and mount namespace.

use anyhow::{bail, Result};

pub fn run() -> Result<()> {
    bail!("namespace demo not wired yet")
}
