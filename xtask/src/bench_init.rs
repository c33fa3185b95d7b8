//! `cargo xtask bench init`.

use anyhow::{bail, Result};

pub fn run(_rest: &[String]) -> Result<()> {
    bail!("bench init is not wired yet")
}
