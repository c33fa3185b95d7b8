//! `cargo xtask bench boot`.

use anyhow::{bail, Result};

pub fn run(_rest: &[String]) -> Result<()> {
    bail!("bench boot is not wired yet")
}
