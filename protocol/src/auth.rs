//! Node keys: an ed25519 key the node makes on first boot and keeps on
//! /var. It signs every request after registration, and the registration
//! itself (proof of possession).
//!
//! The signed message is
//! `"fluxnode/request/v1\0" ‖ METHOD ‖ "\0" ‖ PATH ‖ "\0" ‖ BODY`, the body
//! exactly as sent. The method and path are in it so that a signature on
//! one endpoint is worthless on another. Replays of the same request are
//! stopped where they matter: a session is used once, a heartbeat's
//! sequence number only grows.

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

/// Header naming the node.
pub const HEADER_NODE: &str = "x-fluxnode-node";
/// Header carrying the request signature, hex.
pub const HEADER_SIGNATURE: &str = "x-fluxnode-signature";

const DOMAIN: &[u8] = b"fluxnode/request/v1\0";

fn message(method: &str, path: &str, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + method.len() + path.len() + body.len() + 2);
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(method.as_bytes());
    m.push(0);
    m.extend_from_slice(path.as_bytes());
    m.push(0);
    m.extend_from_slice(body);
    m
}

/// Signs a request; the hex signature goes in [`HEADER_SIGNATURE`].
pub fn sign_request(key: &SigningKey, method: &str, path: &str, body: &[u8]) -> String {
    hex::encode(key.sign(&message(method, path, body)).to_bytes())
}

/// Why a request signature is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// The node key is not a valid ed25519 public key.
    #[error("the node key is not a valid ed25519 public key")]
    BadKey,
    /// The signature header is not 64 bytes of hex.
    #[error("the request signature is not 128 hex digits")]
    Malformed,
    /// The signature does not verify.
    #[error("the request signature does not verify with the node key")]
    Invalid,
}

impl AuthError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::BadKey => "node_key_invalid",
            AuthError::Malformed => "signature_malformed",
            AuthError::Invalid => "request_signature_invalid",
        }
    }
}

/// Parses a node key (32 bytes).
pub fn node_key(bytes: &[u8]) -> Result<VerifyingKey, AuthError> {
    let b: [u8; 32] = bytes.try_into().map_err(|_| AuthError::BadKey)?;
    VerifyingKey::from_bytes(&b).map_err(|_| AuthError::BadKey)
}

/// Verifies a request signature (strict: no malleable or small-order forms).
pub fn verify_request(
    key: &VerifyingKey,
    method: &str,
    path: &str,
    body: &[u8],
    signature_hex: &str,
) -> Result<(), AuthError> {
    let mut sig = [0u8; 64];
    hex::decode_to_slice(signature_hex.trim(), &mut sig).map_err(|_| AuthError::Malformed)?;
    key.verify_strict(&message(method, path, body), &Signature::from_bytes(&sig))
        .map_err(|_| AuthError::Invalid)
}

/// The node id an EK gives: hex of the first 16 bytes of SHA-256 of the
/// EK's public area as sent. One EK, one node.
pub fn node_id_of(ek_public: &[u8]) -> String {
    hex::encode(&Sha256::digest(ek_public)[..16])
}

/// Whether `s` has the form of a node id (32 lowercase hex digits); URLs
/// and storage keys take nothing else.
pub fn is_node_id(s: &str) -> bool {
    s.len() == 32
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_method_path_and_body() {
        let k = SigningKey::from_bytes(&[7; 32]);
        let v = k.verifying_key();
        let s = sign_request(&k, "POST", "/v1/heartbeat", b"{}");
        assert_eq!(
            verify_request(&v, "POST", "/v1/heartbeat", b"{}", &s),
            Ok(())
        );
        assert_eq!(
            verify_request(&v, "POST", "/v1/sessions", b"{}", &s),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            verify_request(&v, "POST", "/v1/heartbeat", b"{ }", &s),
            Err(AuthError::Invalid)
        );
        assert_eq!(
            verify_request(&v, "POST", "/v1/heartbeat", b"{}", "zz"),
            Err(AuthError::Malformed)
        );
        let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
        assert_eq!(
            verify_request(&other, "POST", "/v1/heartbeat", b"{}", &s),
            Err(AuthError::Invalid)
        );
        assert_eq!(node_key(&[0; 5]), Err(AuthError::BadKey));
    }

    #[test]
    fn node_ids() {
        let id = node_id_of(b"ek");
        assert!(is_node_id(&id));
        assert!(!is_node_id("../../etc/passwd"));
        assert!(!is_node_id(&id.to_uppercase()));
    }
}
