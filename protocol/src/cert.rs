//! Tier certificates: the registry's signed statement that a node, with
//! this TPM and this image, earned this tier until a given time. Anyone
//! holding the registry's public key checks one offline
//! (`fluxnode-registry verify-cert CERT --key PUB`).
//!
//! The body travels as JSON text and the signature covers
//! `"fluxnode/tier-certificate/v1\0" ‖ body`, the text exactly as sent,
//! so a verifier in any language checks the bytes it holds and never a
//! re-encoding.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use fluxnode_hal::tier::Facts;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::session::ImageInfo;

const DOMAIN: &[u8] = b"fluxnode/tier-certificate/v1\0";
/// Largest certificate body accepted, bytes.
pub const MAX_BODY_BYTES: usize = 16 << 10;

/// What a certificate states.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertBody {
    /// Format version: 1.
    pub version: u32,
    /// The node.
    pub node_id: String,
    /// SHA-256 of the EK's public area.
    pub ek_sha256: String,
    /// The AK's TPM name, hex.
    pub ak_name: String,
    /// The tier (`None`: attested, below the lowest tier).
    pub tier: Option<String>,
    /// The figures the tier was assigned on.
    pub facts: Facts,
    /// The image.
    pub image: ImageInfo,
    /// PCR 11 as quoted.
    pub pcr11: String,
    /// The session that earned it.
    pub session_id: String,
    /// Issued (Unix ms).
    pub issued_at_ms: u64,
    /// Not valid after (Unix ms).
    pub expires_at_ms: u64,
    /// The issuing registry's key id ([`key_id`]).
    pub key_id: String,
}

/// A signed certificate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TierCertificate {
    /// [`CertBody`] as JSON text.
    pub body: String,
    /// ed25519 signature, hex.
    pub signature: String,
}

/// Why a certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CertError {
    /// The body does not parse, or is too large.
    #[error("the certificate does not parse: {0}")]
    Malformed(String),
    /// Signed by another key.
    #[error("the certificate was issued by key {found}, not by key {expected}")]
    WrongKey {
        /// The body's key id.
        found: String,
        /// The key given.
        expected: String,
    },
    /// The signature does not verify.
    #[error("the certificate's signature does not verify with the registry key")]
    BadSignature,
    /// Past its expiry.
    #[error("the certificate expired at {expired_at_ms} (Unix ms); now is {now_ms}")]
    Expired {
        /// Expiry.
        expired_at_ms: u64,
        /// Now.
        now_ms: u64,
    },
}

impl CertError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            CertError::Malformed(_) => "certificate_malformed",
            CertError::WrongKey { .. } => "certificate_wrong_key",
            CertError::BadSignature => "certificate_signature_invalid",
            CertError::Expired { .. } => "certificate_expired",
        }
    }
}

/// A registry key's id: hex of the first 8 bytes of SHA-256 of the public key.
pub fn key_id(key: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(key.as_bytes())[..8])
}

fn message(body: &str) -> Vec<u8> {
    let mut m = DOMAIN.to_vec();
    m.extend_from_slice(body.as_bytes());
    m
}

/// Signs `body` (its `key_id` is set to the key's).
pub fn issue(mut body: CertBody, key: &SigningKey) -> Result<TierCertificate, CertError> {
    body.key_id = key_id(&key.verifying_key());
    let text = serde_json::to_string(&body).map_err(|e| CertError::Malformed(e.to_string()))?;
    let signature = hex::encode(key.sign(&message(&text)).to_bytes());
    Ok(TierCertificate {
        body: text,
        signature,
    })
}

/// Checks a certificate: the key id, the signature, then the expiry
/// against `now_ms`. Returns what it states.
pub fn verify(
    cert: &TierCertificate,
    key: &VerifyingKey,
    now_ms: u64,
) -> Result<CertBody, CertError> {
    if cert.body.len() > MAX_BODY_BYTES {
        return Err(CertError::Malformed(format!(
            "body of {} bytes, more than {MAX_BODY_BYTES}",
            cert.body.len()
        )));
    }
    let body: CertBody =
        serde_json::from_str(&cert.body).map_err(|e| CertError::Malformed(e.to_string()))?;
    let expected = key_id(key);
    if body.key_id != expected {
        return Err(CertError::WrongKey {
            found: body.key_id,
            expected,
        });
    }
    let mut sig = [0u8; 64];
    hex::decode_to_slice(cert.signature.trim(), &mut sig)
        .map_err(|_| CertError::Malformed("signature is not 128 hex digits".into()))?;
    key.verify_strict(&message(&cert.body), &Signature::from_bytes(&sig))
        .map_err(|_| CertError::BadSignature)?;
    if now_ms >= body.expires_at_ms {
        return Err(CertError::Expired {
            expired_at_ms: body.expires_at_ms,
            now_ms,
        });
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> CertBody {
        CertBody {
            version: 1,
            node_id: "00".repeat(16),
            ek_sha256: "11".repeat(32),
            ak_name: "000b".to_string() + &"22".repeat(32),
            tier: Some("Cumulus".into()),
            facts: Facts::default(),
            image: ImageInfo {
                version: "1".into(),
                slot: "a".into(),
            },
            pcr11: "33".repeat(32),
            session_id: "s".into(),
            issued_at_ms: 1_000,
            expires_at_ms: 2_000,
            key_id: String::new(),
        }
    }

    #[test]
    fn issue_and_verify() -> Result<(), CertError> {
        let k = SigningKey::from_bytes(&[9; 32]);
        let c = issue(body(), &k)?;
        let b = verify(&c, &k.verifying_key(), 1_500)?;
        assert_eq!(b.tier.as_deref(), Some("Cumulus"));
        assert_eq!(
            verify(&c, &k.verifying_key(), 2_000).map_err(|e| e.code()),
            Err("certificate_expired")
        );
        let other = SigningKey::from_bytes(&[10; 32]).verifying_key();
        assert_eq!(
            verify(&c, &other, 1_500).map_err(|e| e.code()),
            Err("certificate_wrong_key")
        );
        let mut t = c.clone();
        t.body = t.body.replace("Cumulus", "Stratus");
        assert_eq!(
            verify(&t, &k.verifying_key(), 1_500),
            Err(CertError::BadSignature)
        );
        let mut t = c;
        t.signature = "00".into();
        assert_eq!(
            verify(&t, &k.verifying_key(), 1_500).map_err(|e| e.code()),
            Err("certificate_malformed")
        );
        Ok(())
    }
}
