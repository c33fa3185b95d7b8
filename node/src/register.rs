//! The node's identity and its registration.
//!
//! The node key (ed25519) is made on first boot and kept on /var. The AK is
//! made under the EK through hal and kept wrapped by the EK (useless on any
//! other TPM). Registration sends both with the EK certificate; the
//! registry answers with a credential only this TPM, holding this AK, can
//! activate, and the node proves it by sending back the secret.

use ed25519_dalek::SigningKey;
use fluxnode_hal::tpm::credential::CredentialBlob;
use fluxnode_hal::tpm::keys::AkBlob;
use fluxnode_hal::tpm::Tpm;
use fluxnode_protocol::messages::{ActivateRequest, RegisterRequest};
use fluxnode_protocol::session::ImageInfo;
use thiserror::Error;

use crate::client::{ClientError, RegistryClient};
use crate::state::StateDir;

/// Why the identity could not be made or registered.
#[derive(Debug, Error)]
pub enum RegisterError {
    /// A file on /var.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was done.
        what: &'static str,
        /// The file.
        path: std::path::PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The TPM.
    #[error("TPM: {0}")]
    Tpm(#[from] fluxnode_hal::Error),
    /// The TPM has no EK certificate: the registry cannot trust it.
    #[error("the TPM has no EK certificate in NV; a registry accepts only TPMs whose EK certificate chains to a CA it trusts")]
    NoEkCertificate,
    /// The registry.
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// The node's keys.
#[derive(Debug)]
pub struct Identity {
    /// Signs requests.
    pub key: SigningKey,
    /// The AK.
    pub ak: AkBlob,
}

/// Loads the node key and AK from `dir`, making what is missing.
pub fn load_or_create(dir: &StateDir, tpm: &mut Tpm) -> Result<Identity, RegisterError> {
    std::fs::create_dir_all(&dir.root).map_err(|source| RegisterError::Io {
        what: "creating",
        path: dir.root.clone(),
        source,
    })?;
    let kp = dir.path("node.key");
    let key = match std::fs::read_to_string(&kp) {
        Ok(t) => {
            let mut b = [0u8; 32];
            hex::decode_to_slice(t.trim(), &mut b).map_err(|e| RegisterError::Io {
                what: "parsing",
                path: kp.clone(),
                source: std::io::Error::other(e),
            })?;
            SigningKey::from_bytes(&b)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut b = [0u8; 32];
            getrandom::getrandom(&mut b).map_err(|e| RegisterError::Io {
                what: "drawing randomness for",
                path: kp.clone(),
                source: std::io::Error::other(e),
            })?;
            fluxnode_lowlevel::secret::write_secret(&kp, hex::encode(b).as_bytes()).map_err(
                |e| RegisterError::Io {
                    what: e.what,
                    path: e.path,
                    source: e.source,
                },
            )?;
            tracing::info!("made a new node key in {}", kp.display());
            SigningKey::from_bytes(&b)
        }
        Err(source) => {
            return Err(RegisterError::Io {
                what: "reading",
                path: kp,
                source,
            })
        }
    };
    let ap = dir.path("ak.json");
    let ak = if ap.exists() {
        AkBlob::load(&ap)?
    } else {
        let ak = tpm.create_ak()?;
        ak.save(&ap)?;
        tracing::info!("made a new AK in {}", ap.display());
        ak
    };
    Ok(Identity { key, ak })
}

/// Registers and activates; returns the node id.
pub fn register(
    client: &RegistryClient,
    tpm: &mut Tpm,
    id: &Identity,
    image: &ImageInfo,
) -> Result<String, RegisterError> {
    let ek_certificate = tpm
        .ek_certificate()?
        .ok_or(RegisterError::NoEkCertificate)?;
    let (_, ek_public) = tpm.ek_public()?;
    let resp = client.register(&RegisterRequest {
        ek_certificate,
        ek_public,
        ak_public: id.ak.public.clone(),
        node_key: id.key.verifying_key().as_bytes().to_vec(),
        image: image.clone(),
    })?;
    let secret = tpm.activate_credential(
        &id.ak,
        &CredentialBlob {
            id_object: resp.id_object,
            encrypted_secret: resp.encrypted_secret,
        },
    )?;
    let client = client.clone().as_node(&resp.node_id);
    client.activate(&ActivateRequest {
        node_id: resp.node_id.clone(),
        secret,
    })?;
    tracing::info!(node = %resp.node_id, "registered");
    Ok(resp.node_id)
}
