//! `fluxnode-registry init`: a new registry directory with its CA, TLS
//! certificate, tier-certificate key and admin token.

use std::path::Path;

use anyhow::{bail, Context as _, Result};
use ed25519_dalek::SigningKey;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use crate::config::{FileConfig, RegistryDir};

fn random32() -> Result<[u8; 32]> {
    let mut b = [0u8; 32];
    getrandom::getrandom(&mut b).context("reading the kernel's random source")?;
    Ok(b)
}

fn write(dir: &RegistryDir, name: &str, data: &[u8], secret: bool) -> Result<()> {
    let p = dir.path(name);
    if secret {
        fluxnode_lowlevel::secret::write_secret(&p, data)
            .map_err(|e| anyhow::anyhow!("{} {}: {}", e.what, e.path.display(), e.source))?;
    } else {
        std::fs::write(&p, data).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

/// Makes a registry directory at `root`. `names` are the DNS names and IP
/// addresses nodes reach it by (they go into the TLS certificate).
pub fn init(root: &Path, names: &[String], config: &FileConfig) -> Result<RegistryDir> {
    init_with(root, names, config, None)
}

/// [`init`], taking `ca.pem`, `server.pem` and `server-key.pem` from
/// `tls_from` instead of making them (an image already pins that CA: the
/// demo's, or a CA an operator runs elsewhere).
pub fn init_with(
    root: &Path,
    names: &[String],
    config: &FileConfig,
    tls_from: Option<&Path>,
) -> Result<RegistryDir> {
    let dir = RegistryDir::new(root);
    if dir.path("registry.toml").exists() {
        bail!(
            "{} already holds a registry (registry.toml exists); pick another --dir",
            root.display()
        );
    }
    if names.is_empty() {
        bail!(
            "give at least one --name: the host name or IP address nodes use to reach the registry"
        );
    }
    std::fs::create_dir_all(dir.path("ek-ca/intermediates"))
        .with_context(|| format!("creating {}", root.display()))?;
    if let Some(from) = tls_from {
        for (name, secret) in [
            ("ca.pem", false),
            ("server.pem", false),
            ("server-key.pem", true),
        ] {
            let p = from.join(name);
            let b = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
            write(&dir, name, &b, secret)?;
        }
    } else {
        make_tls(&dir, names)?;
    }
    let signing = SigningKey::from_bytes(&random32()?);
    write(
        &dir,
        "signing.key",
        hex::encode(signing.to_bytes()).as_bytes(),
        true,
    )?;
    write(
        &dir,
        "signing.pub",
        format!("{}\n", hex::encode(signing.verifying_key().as_bytes())).as_bytes(),
        false,
    )?;
    write(
        &dir,
        "admin.token",
        hex::encode(random32()?).as_bytes(),
        true,
    )?;
    dir.write_config(config)?;
    Ok(dir)
}

fn make_tls(dir: &RegistryDir, names: &[String]) -> Result<()> {
    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "fluxnode registry CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca
        .self_signed(&ca_key)
        .context("signing the CA certificate")?;

    let srv_key = KeyPair::generate().context("generating the TLS key")?;
    let mut srv = CertificateParams::new(names.to_vec()).context("TLS certificate names")?;
    srv.distinguished_name
        .push(DnType::CommonName, names[0].clone());
    let srv_cert = srv
        .signed_by(&srv_key, &ca_cert, &ca_key)
        .context("signing the TLS certificate")?;

    write(dir, "ca.pem", ca_cert.pem().as_bytes(), false)?;
    write(dir, "ca-key.pem", ca_key.serialize_pem().as_bytes(), true)?;
    write(dir, "server.pem", srv_cert.pem().as_bytes(), false)?;
    write(
        dir,
        "server-key.pem",
        srv_key.serialize_pem().as_bytes(),
        true,
    )?;
    Ok(())
}
