//! `cargo xtask yocto-crates`: writes the Yocto layer's crates include
//! (`yocto-layer/meta-fluxnode/recipes-fluxnode/fluxnode-crates.inc`) from
//! Cargo.lock, so the layer's recipes fetch and verify exactly the locked
//! crates. `--check` only says whether it is up to date.

use anyhow::{bail, Context, Result};
use fluxnode_tests::{fixture, yocto};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Do not write: exit with an error if the include differs from what
    /// Cargo.lock gives.
    #[arg(long)]
    check: bool,
}

pub fn run(args: Args) -> Result<()> {
    let lock_path = fixture::workspace().join("Cargo.lock");
    let lock = std::fs::read_to_string(&lock_path)
        .with_context(|| format!("reading {}", lock_path.display()))?;
    let text = yocto::crates_inc(&lock)
        .map_err(anyhow::Error::msg)
        .with_context(|| format!("making the crates include from {}", lock_path.display()))?;
    let inc = yocto::in_workspace(yocto::CRATES_INC);
    let old = std::fs::read_to_string(&inc).unwrap_or_default();
    let n = text.matches("crate://").count();
    if old == text {
        println!("{}: up to date ({n} crates)", inc.display());
        return Ok(());
    }
    if args.check {
        bail!(
            "{} is stale: Cargo.lock changed; run `cargo xtask yocto-crates` and commit the result",
            inc.display()
        );
    }
    // Written whole to a temporary file and renamed: an interrupted run
    // leaves the old include, never half of one.
    let tmp = inc.with_extension("inc.tmp");
    std::fs::write(&tmp, &text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &inc).with_context(|| format!("renaming into {}", inc.display()))?;
    println!("{}: written ({n} crates)", inc.display());
    Ok(())
}
