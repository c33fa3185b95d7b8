//! `cargo xtask bench hal`.

use anyhow::{bail, Result};

pub fn run(_rest: &[String]) -> Result<()> {
    bail!("bench hal is not wired yet")
}
