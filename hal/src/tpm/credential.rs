//! ActivateCredential: the proof that the AK lives in the same TPM as the EK.
//!
//! A verifier runs MakeCredential (or `tpm2_makecredential`) with the EK's
//! public key and the AK's name over a secret; only the TPM holding that EK
//! can recover the secret, and only for a loaded object with that name.

use serde::{Deserialize, Serialize};
use tss_esapi::attributes::SessionAttributesBuilder;
use tss_esapi::constants::SessionType;
use tss_esapi::handles::AuthHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::interface_types::session_handles::PolicySession;
use tss_esapi::structures::{EncryptedSecret, IdObject, SymmetricDefinition};

use super::keys::AkBlob;
use super::Tpm;
use crate::error::{Error, Result};

/// A credential: TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET contents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialBlob {
    /// The credential (TPM2B_ID_OBJECT buffer).
    #[serde(with = "hex::serde")]
    pub id_object: Vec<u8>,
    /// The seed encrypted to the EK (TPM2B_ENCRYPTED_SECRET buffer).
    #[serde(with = "hex::serde")]
    pub encrypted_secret: Vec<u8>,
}

const MAGIC: u32 = 0xBADC_C0DE;

impl CredentialBlob {
    /// Parses the file `tpm2_makecredential -o` writes: magic 0xBADCC0DE,
    /// version 1 (both big-endian u32), then TPM2B_ID_OBJECT and
    /// TPM2B_ENCRYPTED_SECRET (u16 big-endian size + bytes). Files without the
    /// header (older tools) are accepted. Outside input: never panics.
    pub fn from_tpm2_tools(bytes: &[u8]) -> Result<Self> {
        let bad = |why: &str| Error::parse("credential blob", why.to_string());
        let mut rest = bytes;
        if rest.len() >= 8 && u32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]) == MAGIC {
            let version = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]);
            if version != 1 {
                return Err(bad(&format!("version {version}, expected 1")));
            }
            rest = &rest[8..];
        }
        let mut take = |what: &str| -> Result<Vec<u8>> {
            if rest.len() < 2 {
                return Err(bad(&format!("truncated before the size of {what}")));
            }
            let n = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
            if rest.len() < 2 + n {
                return Err(bad(&format!(
                    "{what} says {n} bytes, {} left",
                    rest.len() - 2
                )));
            }
            let v = rest[2..2 + n].to_vec();
            rest = &rest[2 + n..];
            Ok(v)
        };
        let id_object = take("TPM2B_ID_OBJECT")?;
        let encrypted_secret = take("TPM2B_ENCRYPTED_SECRET")?;
        if !rest.is_empty() {
            return Err(bad(&format!("{} trailing bytes", rest.len())));
        }
        Ok(CredentialBlob {
            id_object,
            encrypted_secret,
        })
    }
}

impl Tpm {
    /// Recovers the secret of `cred`, made for the AK in `blob` and this TPM's EK.
    pub fn activate_credential(&mut self, blob: &AkBlob, cred: &CredentialBlob) -> Result<Vec<u8>> {
        let id = IdObject::try_from(cred.id_object.clone())
            .map_err(|e| Error::tpm("ActivateCredential (credential blob)", e))?;
        let secret = EncryptedSecret::try_from(cred.encrypted_secret.clone())
            .map_err(|e| Error::tpm("ActivateCredential (encrypted secret)", e))?;
        self.with_ak(blob, |t, ak| {
            t.with_ek(|t, ek| {
                // The EK's policy is PolicySecret(endorsement hierarchy).
                let session = t
                    .ctx
                    .start_auth_session(
                        None,
                        None,
                        None,
                        SessionType::Policy,
                        SymmetricDefinition::AES_128_CFB,
                        HashingAlgorithm::Sha256,
                    )
                    .map_err(|e| Error::tpm("StartAuthSession", e))?
                    .ok_or_else(|| Error::tpm("StartAuthSession", "no session returned"))?;
                let result = (|| {
                    let (attrs, mask) = SessionAttributesBuilder::new()
                        .with_decrypt(true)
                        .with_encrypt(true)
                        .build();
                    t.ctx
                        .tr_sess_set_attributes(session, attrs, mask)
                        .map_err(|e| Error::tpm("TRSess_SetAttributes", e))?;
                    let policy = PolicySession::try_from(session)
                        .map_err(|e| Error::tpm("PolicySecret", e))?;
                    t.ctx
                        .execute_with_nullauth_session(|ctx| {
                            ctx.policy_secret(
                                policy,
                                AuthHandle::Endorsement,
                                Default::default(),
                                Default::default(),
                                Default::default(),
                                None,
                            )
                        })
                        .map_err(|e| Error::tpm("PolicySecret (endorsement)", e))?;
                    t.ctx
                        .execute_with_sessions(
                            (Some(AuthSession::Password), Some(session), None),
                            |ctx| ctx.activate_credential(ak, ek, id, secret),
                        )
                        .map_err(|e| Error::tpm("ActivateCredential", e))
                })();
                let _ = t
                    .ctx
                    .flush_context(tss_esapi::handles::SessionHandle::from(session).into());
                result.map(|d| d.value().to_vec())
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_and_without_header_and_rejects_junk() {
        let body = [0u8, 2, 0xaa, 0xbb, 0, 1, 0xcc];
        let mut with = vec![0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 1];
        with.extend_from_slice(&body);
        for b in [&body[..], &with[..]] {
            let c = CredentialBlob::from_tpm2_tools(b).map_err(|e| e.to_string());
            assert_eq!(
                c,
                Ok(CredentialBlob {
                    id_object: vec![0xaa, 0xbb],
                    encrypted_secret: vec![0xcc]
                })
            );
        }
        for junk in [
            &[][..],
            &[0],
            &[0, 5, 1],
            &[0xba, 0xdc, 0xc0, 0xde, 0, 0, 0, 2, 0, 0, 0, 0],
            &[0, 0, 0, 0, 9],
        ] {
            assert!(
                CredentialBlob::from_tpm2_tools(junk).is_err(),
                "{junk:?} accepted"
            );
        }
    }
}
