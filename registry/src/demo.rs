//! A registry on this host for an appliance booted under QEMU: the demo
//! (`cargo xtask demo`) and the end-to-end QEMU test run the same one.
//!
//! QEMU's user networking shows the host's loopback to the guest as
//! 10.0.2.2, so a registry listening on 127.0.0.1:8443 is the
//! `https://10.0.2.2:8443` that image/services/demo/node.toml names. Its
//! TLS identity is the demo's (image/services/demo/registry-tls, whose CA
//! the demo image pins); its signing key is new each time.

use std::path::Path;

use anyhow::{Context as _, Result};

use crate::config::{FileConfig, RegistryDir};
use crate::store::{Policy, Store as _};

/// Where the registry listens: 10.0.2.2:8443 from the guest.
pub const LISTEN: &str = "127.0.0.1:8443";

/// What the registry is made from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// The demo's TLS files (ca.pem, server.pem, server-key.pem).
    pub tls_from: &'a Path,
    /// The EK CA root the guest's TPM was manufactured with.
    pub ek_root: &'a Path,
    /// Its intermediate.
    pub ek_intermediate: &'a Path,
    /// The image's manifest.json: its slots are the allowed images.
    pub manifest: &'a Path,
    /// The tier table (image/services/demo/tiers.toml).
    pub tiers: &'a Path,
}

/// Makes the registry directory `root` (replacing one there).
pub fn prepare(root: &Path, inputs: &Inputs<'_>) -> Result<RegistryDir> {
    if root.exists() {
        std::fs::remove_dir_all(root).with_context(|| format!("removing {}", root.display()))?;
    }
    let cfg = FileConfig {
        listen: LISTEN.into(),
        profile: "quick".into(),
        tier_policy: Some("tiers.toml".into()),
        ..FileConfig::default()
    };
    let names = [
        "10.0.2.2".to_string(),
        "127.0.0.1".into(),
        "localhost".into(),
    ];
    let dir = crate::pki::init_with(root, &names, &cfg, Some(inputs.tls_from))?;
    std::fs::copy(inputs.tiers, dir.path("tiers.toml"))
        .with_context(|| format!("copying {}", inputs.tiers.display()))?;
    std::fs::copy(inputs.ek_root, dir.path("ek-ca/tpm-root.pem"))
        .with_context(|| format!("copying {}", inputs.ek_root.display()))?;
    std::fs::copy(
        inputs.ek_intermediate,
        dir.path("ek-ca/intermediates/tpm-issuer.pem"),
    )
    .with_context(|| format!("copying {}", inputs.ek_intermediate.display()))?;
    let mut policy = Policy::default();
    crate::policy::allow(
        &mut policy,
        crate::policy::images_of_manifest(inputs.manifest)?,
    );
    set_policy(&dir, &policy)?;
    Ok(dir)
}

/// Replaces the policy of a registry that is not running.
pub fn set_policy(dir: &RegistryDir, policy: &Policy) -> Result<()> {
    let store = crate::server::open_redb(dir)?;
    tokio::runtime::Builder::new_current_thread()
        .build()
        .context("tokio runtime")?
        .block_on(store.set_policy(policy))?;
    Ok(())
}
