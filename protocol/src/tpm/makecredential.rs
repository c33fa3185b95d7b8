//! TPM2_MakeCredential done by the verifier, in software (TPM 2.0 Part 1,
//! §24 "Credential Protection"; Part 3, MakeCredential).
//!
//! Registration binds an attestation key to an endorsement key: the
//! verifier encrypts a secret to the EK, bound to the AK's name, and only
//! the TPM that holds that EK can recover it with ActivateCredential, and
//! only while an object with that exact name is loaded. Doing this here
//! (and not on a TPM) keeps the registry free of TPMs and of I/O.
//!
//! For an RSA-2048 EK made from the TCG default template (nameAlg SHA-256,
//! symmetric AES-128-CFB):
//!
//! ```text
//! seed            32 random bytes (from the caller)
//! encryptedSecret RSA-OAEP(EK, SHA-256, label "IDENTITY\0", seed)
//! symKey          KDFa(SHA-256, seed, "STORAGE", akName, "", 128)
//! encIdentity     AES-128-CFB(symKey, IV = 0, u16be(len) ‖ secret)
//! hmacKey         KDFa(SHA-256, seed, "INTEGRITY", "", "", 256)
//! outerHMAC       HMAC-SHA256(hmacKey, encIdentity ‖ akName)
//! idObject        u16be(32) ‖ outerHMAC ‖ encIdentity
//! ```
//!
//! ECC EKs are refused with [`CredentialError::EkUnsupported`]: their seed
//! needs ECDH and KDFe, and hal always uses the RSA-2048 EK.

use aes::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
use hmac::{Hmac, Mac as _};
use rsa::rand_core::CryptoRngCore;
use sha2::Sha256;
use thiserror::Error;

use super::public::{ObjectAttributes, Parameters, Public, PublicError, Unique};
use super::signature::{AttestationKey, SignatureError};
use super::wire::alg;

/// The largest secret: a TPM2B_DIGEST of the EK's nameAlg (SHA-256).
pub const MAX_SECRET: usize = 32;

/// Size of the seed, the EK nameAlg's digest size (SHA-256).
pub const SEED_SIZE: usize = 32;

/// The OAEP label of a credential's seed, with its terminating NUL: the
/// TPM hashes the label including the NUL.
const IDENTITY_LABEL: &str = "IDENTITY\0";

/// The RSA EK this module accepts: 2048 bits (TCG default template).
const EK_RSA_BITS: u16 = 2048;

/// A credential for ActivateCredential: the contents (without the u16 size
/// prefix) of TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET, which is what
/// hal's `CredentialBlob` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// TPMS_ID_OBJECT: `u16be(32) ‖ outerHMAC ‖ encIdentity`.
    pub id_object: Vec<u8>,
    /// The seed, RSA-OAEP encrypted to the EK (256 bytes for RSA-2048).
    pub encrypted_secret: Vec<u8>,
}

/// Why no credential can be made.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CredentialError {
    /// The EK's public area does not parse.
    #[error("the EK public area does not parse ({0}); send the EK's TPMT_PUBLIC or TPM2B_PUBLIC as the TPM returned it")]
    EkPublic(PublicError),
    /// The EK is of a kind this verifier does not make credentials for
    /// (ECC, another key size, another symmetric algorithm).
    #[error("unsupported EK: {0}; only RSA-2048 EKs with AES-128-CFB (TCG default template) are supported")]
    EkUnsupported(String),
    /// The key's attributes are not those of an endorsement key.
    #[error("the key is no endorsement key: {0}; send the EK made from the TCG default template")]
    NotAnEk(&'static str),
    /// The AK's public area does not parse or is no attestation key.
    #[error("attestation key refused: {0}")]
    Ak(SignatureError),
    /// The AK's name is not a SHA-256/384/512 TPM name.
    #[error("invalid AK name: {0}; pass nameAlg ‖ digest as the TPM computes it")]
    AkName(String),
    /// The secret is empty or longer than [`MAX_SECRET`].
    #[error("secret of {0} bytes; 1 to 32 bytes are allowed")]
    SecretSize(usize),
    /// RSA-OAEP encryption of the seed failed (the EK's numbers).
    #[error("encrypting the seed to the EK failed: {0}")]
    Encrypt(String),
}

impl CredentialError {
    /// A stable code, snake_case, never renamed and never reused.
    pub fn code(&self) -> &'static str {
        match self {
            CredentialError::EkPublic(_) => "ek_public_malformed",
            CredentialError::EkUnsupported(_) => "ek_unsupported",
            CredentialError::NotAnEk(_) => "ek_refused",
            CredentialError::Ak(_) => "ak_refused",
            CredentialError::AkName(_) => "ak_name_invalid",
            CredentialError::SecretSize(_) => "credential_secret_size",
            CredentialError::Encrypt(_) => "credential_encrypt_failed",
        }
    }
}

/// Parses an EK's public area sent as TPMT_PUBLIC or as TPM2B_PUBLIC
/// (hal's `Tpm::ek_public` gives the latter).
///
/// The two are told apart by the first two bytes: in a TPM2B_PUBLIC they
/// are the size of the rest. A TPMT_PUBLIC starts with its type
/// (0x0001 RSA, 0x0023 ECC), which equals the length of the rest only for
/// a 3- or 37-byte structure, and no RSA key fits in that: for RSA EKs the
/// choice is never ambiguous. Never panics.
pub fn ek_public_from_bytes(bytes: &[u8]) -> Result<Public, PublicError> {
    match bytes {
        [hi, lo, rest @ ..] if usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len() => {
            Public::from_tpm2b(bytes)
        }
        _ => Public::from_tpmt(bytes),
    }
}

/// Checks that `public` is an RSA-2048 endorsement key of the TCG default
/// template's kind and returns its key.
///
/// The attributes are those of a storage (parent) key that stays in the
/// TPM: restricted, decrypt, not sign, fixedTPM, fixedParent,
/// sensitiveDataOrigin. ActivateCredential runs only with such a key.
pub fn check_ek(public: &Public) -> Result<rsa::RsaPublicKey, CredentialError> {
    if let Some(flaw) = ek_attribute_flaw(public.attributes) {
        return Err(CredentialError::NotAnEk(flaw));
    }
    let (symmetric, scheme, key_bits, exponent, modulus) =
        match (&public.parameters, &public.unique) {
            (
                Parameters::Rsa {
                    symmetric,
                    scheme,
                    key_bits,
                    exponent,
                },
                Unique::Rsa(modulus),
            ) => (symmetric, scheme, *key_bits, *exponent, modulus),
            (Parameters::Ecc { .. }, _) => {
                return Err(CredentialError::EkUnsupported(
                    "an ECC EK (its seed needs ECDH, not implemented)".into(),
                ))
            }
            _ => {
                return Err(CredentialError::EkUnsupported(
                    "parameters and unique differ in type".into(),
                ))
            }
        };
    // The symmetric algorithm of the EK is the one the TPM uses for
    // encIdentity: it must be what we encrypt with.
    if symmetric.algorithm != alg::AES || symmetric.details != Some((128, alg::CFB)) {
        return Err(CredentialError::EkUnsupported(format!(
            "symmetric algorithm {:#06x} {:?} is not AES-128-CFB",
            symmetric.algorithm, symmetric.details
        )));
    }
    // A restricted decryption key has no scheme of its own (Part 2, 12.2.3.5).
    if scheme.scheme != alg::NULL {
        return Err(CredentialError::EkUnsupported(format!(
            "scheme {:#06x} on a restricted decryption key",
            scheme.scheme
        )));
    }
    let n = rsa::BigUint::from_bytes_be(modulus);
    if key_bits != EK_RSA_BITS || n.bits() != usize::from(EK_RSA_BITS) {
        return Err(CredentialError::EkUnsupported(format!(
            "RSA key of {} bits (keyBits {key_bits}), not 2048",
            n.bits()
        )));
    }
    let e = if exponent == 0 { 65537 } else { exponent };
    rsa::RsaPublicKey::new(n, rsa::BigUint::from(e))
        .map_err(|err| CredentialError::EkUnsupported(format!("invalid RSA key: {err}")))
}

/// The first attribute that keeps `a` from being an endorsement (storage)
/// key, or `None`.
fn ek_attribute_flaw(a: ObjectAttributes) -> Option<&'static str> {
    [
        (!a.restricted(), "not restricted"),
        (!a.decrypt(), "not a decryption key"),
        (a.sign(), "a signing key"),
        (!a.fixed_tpm(), "not fixedTPM"),
        (!a.fixed_parent(), "not fixedParent"),
        (!a.sensitive_data_origin(), "not sensitiveDataOrigin"),
    ]
    .into_iter()
    .find_map(|(bad, why)| bad.then_some(why))
}

/// Checks a TPM name (nameAlg ‖ digest): SHA-256, SHA-384 or SHA-512
/// with a digest of that size.
fn check_name(name: &[u8]) -> Result<(), CredentialError> {
    let [hi, lo, digest @ ..] = name else {
        return Err(CredentialError::AkName(format!(
            "{} bytes, shorter than a nameAlg",
            name.len()
        )));
    };
    let name_alg = u16::from_be_bytes([*hi, *lo]);
    let want = match name_alg {
        alg::SHA256 => 32,
        alg::SHA384 => 48,
        alg::SHA512 => 64,
        other => {
            return Err(CredentialError::AkName(format!(
                "nameAlg {other:#06x} is not SHA-256, SHA-384 or SHA-512"
            )))
        }
    };
    if digest.len() != want {
        return Err(CredentialError::AkName(format!(
            "a {}-byte digest for nameAlg {name_alg:#06x}, which has {want}",
            digest.len()
        )));
    }
    Ok(())
}

/// MakeCredential: `secret` (1 to 32 bytes) for the object named `ak_name`
/// (nameAlg ‖ digest, e.g. `Public::name`), encrypted to the EK whose
/// public area is `ek_public` (TPMT_PUBLIC or TPM2B_PUBLIC, see
/// [`ek_public_from_bytes`]).
///
/// `seed` must be fresh random bytes for every credential; `rng` supplies
/// OAEP's randomness (`rsa::rand_core::OsRng` in a registry). The crate
/// reads no randomness of its own. This function does not look at the
/// AK's attributes: use [`make_credential_for_ak`] when you hold the AK's
/// public area, which is what registration should do.
pub fn make_credential<R: CryptoRngCore>(
    ek_public: &[u8],
    ak_name: &[u8],
    secret: &[u8],
    seed: &[u8; SEED_SIZE],
    rng: &mut R,
) -> Result<Credential, CredentialError> {
    let ek = ek_public_from_bytes(ek_public).map_err(CredentialError::EkPublic)?;
    let key = check_ek(&ek)?;
    check_name(ak_name)?;
    if secret.is_empty() || secret.len() > MAX_SECRET {
        return Err(CredentialError::SecretSize(secret.len()));
    }

    let encrypted_secret = rsa::RsaPublicKey::encrypt(
        &key,
        rng,
        rsa::Oaep::new_with_label::<Sha256, _>(IDENTITY_LABEL),
        seed,
    )
    .map_err(|e| CredentialError::Encrypt(e.to_string()))?;

    // encIdentity: the credential as a TPM2B_DIGEST, encrypted in place.
    let sym_key: [u8; 16] = kdfa_sha256(seed, b"STORAGE", ak_name, b"")?;
    let mut enc_identity = Vec::with_capacity(2 + secret.len());
    // secret.len() <= 32: the cast cannot truncate.
    enc_identity.extend_from_slice(&(secret.len() as u16).to_be_bytes());
    enc_identity.extend_from_slice(secret);
    cfb_mode::Encryptor::<aes::Aes128>::new(&sym_key.into(), &[0u8; 16].into())
        .encrypt(&mut enc_identity);

    let hmac_key: [u8; 32] = kdfa_sha256(seed, b"INTEGRITY", b"", b"")?;
    let outer_hmac = hmac_sha256(&hmac_key, &[&enc_identity, ak_name])?;

    let mut id_object = Vec::with_capacity(2 + outer_hmac.len() + enc_identity.len());
    id_object.extend_from_slice(&(outer_hmac.len() as u16).to_be_bytes());
    id_object.extend_from_slice(&outer_hmac);
    id_object.extend_from_slice(&enc_identity);
    Ok(Credential {
        id_object,
        encrypted_secret,
    })
}

/// [`make_credential`] for the AK whose TPMT_PUBLIC is `ak_tpmt_public`:
/// the AK's attributes are checked first (restricted, sign, not decrypt,
/// fixedTPM, fixedParent, sensitiveDataOrigin; RSA ≥ 2048 or P-256), and
/// its name is computed here, never taken from the node. An unrestricted
/// key would pass activation and could sign a forged quote: the attribute
/// check is what stops it.
pub fn make_credential_for_ak<R: CryptoRngCore>(
    ek_public: &[u8],
    ak_tpmt_public: &[u8],
    secret: &[u8],
    seed: &[u8; SEED_SIZE],
    rng: &mut R,
) -> Result<Credential, CredentialError> {
    let ak = AttestationKey::from_tpmt(ak_tpmt_public).map_err(CredentialError::Ak)?;
    make_credential(ek_public, &ak.public().name, secret, seed, rng)
}

/// KDFa (Part 1, §11.4.10.2), SP800-108 counter mode with HMAC-SHA256,
/// for `N` bytes of output:
/// `HMAC(key, u32be(i) ‖ label ‖ 0x00 ‖ contextU ‖ contextV ‖ u32be(8·N))`
/// for i = 1, 2, ..., concatenated and cut to `N` bytes. `label` is given
/// without its terminating NUL, which is always added.
///
/// Public so that a software ActivateCredential (the load generator's
/// simulated TPM) derives its keys with this very function.
pub fn kdfa_sha256<const N: usize>(
    key: &[u8],
    label: &[u8],
    context_u: &[u8],
    context_v: &[u8],
) -> Result<[u8; N], CredentialError> {
    // N is a compile-time constant of this module (16, 20 or 32).
    let bits = u32::try_from(N * 8)
        .map_err(|_| CredentialError::Encrypt("KDFa output too long".into()))?;
    let mut out = [0u8; N];
    for (i, chunk) in out.chunks_mut(32).enumerate() {
        let counter = u32::try_from(i + 1)
            .map_err(|_| CredentialError::Encrypt("KDFa counter overflow".into()))?;
        let block = hmac_sha256(
            key,
            &[
                &counter.to_be_bytes(),
                label,
                &[0],
                context_u,
                context_v,
                &bits.to_be_bytes(),
            ],
        )?;
        chunk.copy_from_slice(block.get(..chunk.len()).unwrap_or(&block));
    }
    Ok(out)
}

/// HMAC-SHA256 over the concatenation of `parts`.
fn hmac_sha256(key: &[u8], parts: &[&[u8]]) -> Result<[u8; 32], CredentialError> {
    // HMAC takes keys of any length; this error cannot happen.
    let mut mac = Hmac::<Sha256>::new_from_slice(key)
        .map_err(|e| CredentialError::Encrypt(format!("HMAC key: {e}")))?;
    for p in parts {
        mac.update(p);
    }
    Ok(mac.finalize().into_bytes().into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::tpm::public::{marshal, Scheme, Symmetric, AK_ATTRIBUTES};
    use rsa::pkcs8::DecodePrivateKey as _;
    use rsa::traits::PublicKeyParts as _;

    /// A fixed RSA-2048 key (made with `openssl genpkey` for this test):
    /// key generation is slow in debug builds.
    const EK_KEY: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDOUPWBBlW83xtE\n\
PxHIU51AO7D0SjbvmZzQIUefzf2sMH5WevwQVs/++QAiCiOjg0/6riEzcfSAadnR\n\
KTNt1DnXJWgvERqvEs3b0AOLnLBki15MYsFEICzN4A0ZgA6QZqKjQ5pRxE8yEl3M\n\
xCiDi37qVdyjZEtp4Qt2oqKDcgahS05EBXuy6NHG1u1CbjYcEZq1wflfjZeaSELc\n\
OYomr4544EHlZs50qI2+H10L5JFCjzgjuOvgSDgPlepB/54H5AhBpEhJFVWfjiUR\n\
1Tzn2AMD74CWKYFy/sn4swVKqB7fchdAd0xYZbiNqJfzDlNYs43J+IqI86G0NlOD\n\
HXaVo+CZAgMBAAECggEAMszG4l3VsxNpQpDX91A1PjlkXQZACBd1/95N5TiCf0kS\n\
dodCNOC3RqP3ZypBc7Ozt/jzplfm+M53ajOfnOmeU0373Oj0fcqewwKxOMlcOmmB\n\
jsPbLAPTHF8QQqjgDSikX5hX8U2ppV3V2EMtaZRpq9f344hgtEGMAcpSQxTKsqBn\n\
eQ8TK0AK2CA4Gl/FkC4BSwTszcIGzWxmm8t83oRLFLcETpUhKJyFgNza0se4f0O+\n\
mZd1q7r6jqiVBxN/EIxvzZ9YftCoAh289fnSJd3YMgTOyz4Zsfv9EluHyMD8HPRg\n\
WAPf+7+tPZh+Ee99sJ/MFV7d4nDOXA9in950VEo6HQKBgQD3dR72GKOdGT//A5WQ\n\
1NRAZeg9DdL+oFqJr7u6k+SevPbxpP8NaKUdilgQyMazQ+7STP9NE1mSS0qrWs/n\n\
n2IhVp9hWZm25JGyazTNva8AYv3YZUAbSDw/VEwUOrQtPopMhloMJoUdjzSSRZ0K\n\
4aPti4YbZk7bOdmveeiZmOs9PQKBgQDVcEGx6yzreh7WYEI6bKCEhdNiffgwrzhK\n\
HakhRWVHnWL/Qx+B+WG9DSGPOUSksEvRoM0O2AbpWtta5K/2TzIcQNTSuL+O5r6D\n\
ETD/J6964Aljn9FIPtNTQg2VRzppZdmwC3eqgBIMCxr3+cwEfwRqGZpLGjVtGp7I\n\
1FVIcN4ejQKBgQCNlDz6oG472855oRtZmes2TRfqlpY5iJVEYX8O6L7M82B2MOic\n\
S1rs49IvCDBnMF7bg6It/vwob1txXqvE4bPLTzww/oqr0Wpqolu7uuL9XaXOwV9E\n\
PLf7o8dDa7LakAWgct3iRcezedOiPKH1L9QSfNllo8tKMncRprYl6w/sIQKBgBTE\n\
tI/Ea32KR3/io+8dbM0YXIZD7aeHFToZAsELCJzcUqq19FXoVztXEMHn96byxJ3k\n\
QK/GE34XairA/+I+uIiJQmwyr+kOyNDmFldtnCSfsiowfePCwTtjvQCeiq+AyprX\n\
stAzYA4t8nTYqKJzXZGZZisSpMo2AedWyemfme1tAoGAHqW5u6P0HJob5yW+U1lz\n\
wj0ZVCs/Bz2ASOu2oouyGkYrHSOddPZCxU6GaoUdnedFpWZ7SzvyAj9+kzvcwams\n\
DO8jnI/Q245SqOheu16kMzxcXYlDW+jT3nd/ZVLUUJvbA+/dl3foL8PnclOyWWw/\n\
R/DuBz60TLiLnp5bmVBREvA=\n\
-----END PRIVATE KEY-----\n\
";

    /// The TCG default EK template's attributes: fixedTPM, fixedParent,
    /// sensitiveDataOrigin, adminWithPolicy, restricted, decrypt.
    const EK_ATTRIBUTES: u32 = 0x0003_00b2;

    fn ek_key() -> rsa::RsaPrivateKey {
        rsa::RsaPrivateKey::from_pkcs8_pem(EK_KEY).unwrap()
    }

    fn ek_tpmt(attributes: u32, symmetric: Symmetric, key: &rsa::RsaPrivateKey) -> Vec<u8> {
        marshal(
            attributes,
            &Parameters::Rsa {
                symmetric,
                scheme: Scheme {
                    scheme: alg::NULL,
                    hash: None,
                },
                key_bits: 2048,
                exponent: 0,
            },
            &Unique::Rsa(key.n().to_bytes_be()),
        )
    }

    fn aes128cfb() -> Symmetric {
        Symmetric {
            algorithm: alg::AES,
            details: Some((128, alg::CFB)),
        }
    }

    fn name() -> Vec<u8> {
        let mut n = alg::SHA256.to_be_bytes().to_vec();
        n.extend_from_slice(&[0x42; 32]);
        n
    }

    /// ActivateCredential in software, from the spec, to check the
    /// structure end to end without a TPM (the swtpm cross-test in
    /// tests/credential.rs checks it against a real implementation).
    fn activate(key: &rsa::RsaPrivateKey, name: &[u8], c: &Credential) -> Option<Vec<u8>> {
        let seed = key
            .decrypt(
                rsa::Oaep::new_with_label::<Sha256, _>(IDENTITY_LABEL),
                &c.encrypted_secret,
            )
            .ok()?;
        let hmac_key: [u8; 32] = kdfa_sha256(&seed, b"INTEGRITY", b"", b"").ok()?;
        let (size, rest) = c.id_object.split_at(2);
        assert_eq!(size, [0, 32]);
        let (hmac, enc) = rest.split_at(32);
        if hmac_sha256(&hmac_key, &[enc, name]).ok()? != hmac {
            return None;
        }
        let sym: [u8; 16] = kdfa_sha256(&seed, b"STORAGE", name, b"").ok()?;
        let mut plain = enc.to_vec();
        cfb_mode::Decryptor::<aes::Aes128>::new(&sym.into(), &[0u8; 16].into()).decrypt(&mut plain);
        let n = usize::from(u16::from_be_bytes([plain[0], plain[1]]));
        assert_eq!(n + 2, plain.len());
        Some(plain[2..].to_vec())
    }

    #[test]
    fn kdfa_matches_the_reference_implementations_self_test_vector() {
        // The KDFa self-test of the TCG reference implementation (libtpms
        // KdfTestData.h, SHA-256 case): 160 bits, label "KDFSELFTESTLABEL".
        let key = hex::decode("271fa08bbdc5060ec3dfa928ff9b73123a12da0c").unwrap();
        let out: [u8; 20] = kdfa_sha256(
            &key,
            b"KDFSELFTESTLABEL",
            &hex::decode("ce244f395dca7391").unwrap(),
            &hex::decode("da504031ddf12e83").unwrap(),
        )
        .unwrap();
        assert_eq!(hex::encode(out), "bb0259e1c8ba607e6a2cd704b69a902e9ade84c4");
        // More than one HMAC block: the counter goes on, the prefix stays.
        let long: [u8; 40] = kdfa_sha256(&key, b"L", b"u", b"v").unwrap();
        let short: [u8; 32] = kdfa_sha256(&key, b"L", b"u", b"v").unwrap();
        assert_ne!(long[..32], short[..], "the bit length is part of the input");
    }

    #[test]
    fn credential_round_trips_through_a_software_activation() {
        let key = ek_key();
        let ek = ek_tpmt(EK_ATTRIBUTES, aes128cfb(), &key);
        let secret = b"registration secret 0123456789ab";
        let seed = [7u8; 32];
        let c = make_credential(&ek, &name(), secret, &seed, &mut rsa::rand_core::OsRng).unwrap();
        assert_eq!(c.encrypted_secret.len(), 256);
        assert_eq!(c.id_object.len(), 2 + 32 + 2 + secret.len());
        assert_eq!(activate(&key, &name(), &c).as_deref(), Some(&secret[..]));
        // Bound to the name: another name fails the outer HMAC.
        let mut other = name();
        other[33] ^= 1;
        assert_eq!(activate(&key, &other, &c), None);
        // The TPM2B_PUBLIC form gives the same credential parts.
        let mut tpm2b = (ek.len() as u16).to_be_bytes().to_vec();
        tpm2b.extend_from_slice(&ek);
        let c2 = make_credential(&tpm2b, &name(), b"x", &seed, &mut rsa::rand_core::OsRng).unwrap();
        assert_eq!(activate(&key, &name(), &c2).as_deref(), Some(&b"x"[..]));
    }

    #[test]
    fn wrong_eks_names_and_secrets_are_refused_by_type() {
        let key = ek_key();
        let seed = [1u8; 32];
        let mut rng = rsa::rand_core::OsRng;
        let make = |ek: &[u8], name: &[u8], secret: &[u8]| {
            make_credential(ek, name, secret, &seed, &mut rsa::rand_core::OsRng)
        };
        let good = ek_tpmt(EK_ATTRIBUTES, aes128cfb(), &key);
        assert!(make(&good, &name(), b"s").is_ok());
        // An AK (restricted signing key) is no EK.
        assert_eq!(
            make(&ek_tpmt(AK_ATTRIBUTES, aes128cfb(), &key), &name(), b"s")
                .unwrap_err()
                .code(),
            "ek_refused"
        );
        for (attrs, why) in [
            (EK_ATTRIBUTES & !(1 << 16), "not restricted"),
            (EK_ATTRIBUTES & !(1 << 17), "not a decryption key"),
            (EK_ATTRIBUTES | (1 << 18), "a signing key"),
            (EK_ATTRIBUTES & !(1 << 1), "not fixedTPM"),
        ] {
            assert_eq!(
                make(&ek_tpmt(attrs, aes128cfb(), &key), &name(), b"s"),
                Err(CredentialError::NotAnEk(why))
            );
        }
        let aes256 = Symmetric {
            algorithm: alg::AES,
            details: Some((256, alg::CFB)),
        };
        let e = make(&ek_tpmt(EK_ATTRIBUTES, aes256, &key), &name(), b"s").unwrap_err();
        assert_eq!(e.code(), "ek_unsupported", "{e}");
        // ECC EKs are unsupported, by name.
        let ecc = marshal(
            EK_ATTRIBUTES,
            &Parameters::Ecc {
                symmetric: aes128cfb(),
                scheme: Scheme {
                    scheme: alg::NULL,
                    hash: None,
                },
                curve: alg::NIST_P256,
                kdf: Scheme {
                    scheme: alg::NULL,
                    hash: None,
                },
            },
            &Unique::Ecc {
                x: vec![1; 32],
                y: vec![2; 32],
            },
        );
        let e = make(&ecc, &name(), b"s").unwrap_err();
        assert!(e.to_string().contains("ECC"), "{e}");
        assert_eq!(e.code(), "ek_unsupported");
        // Names and secrets.
        for bad in [&[][..], &[0, 0x0b], &[0, 0x04, 1, 2], &name()[..33]] {
            assert_eq!(
                make(&good, bad, b"s").unwrap_err().code(),
                "ak_name_invalid"
            );
        }
        assert_eq!(
            make(&good, &name(), &[]),
            Err(CredentialError::SecretSize(0))
        );
        assert_eq!(
            make(&good, &name(), &[0; 33]),
            Err(CredentialError::SecretSize(33))
        );
        // make_credential_for_ak refuses an EK passed as the AK.
        let e = make_credential_for_ak(&good, &good, b"s", &seed, &mut rng).unwrap_err();
        assert_eq!(e.code(), "ak_refused", "{e}");
    }

    #[test]
    fn truncations_and_garbage_never_panic() {
        let key = ek_key();
        let good = ek_tpmt(EK_ATTRIBUTES, aes128cfb(), &key);
        let seed = [0u8; 32];
        let mut rng = rsa::rand_core::OsRng;
        for n in 0..good.len() {
            let e = make_credential(&good[..n], &name(), b"s", &seed, &mut rng).unwrap_err();
            assert_eq!(e.code(), "ek_public_malformed", "prefix {n}: {e}");
        }
        let mut x: u32 = 0x1234_5678;
        for len in [0usize, 1, 2, 3, 10, 37, 64, 300, 600] {
            let junk: Vec<u8> = (0..len)
                .map(|_| {
                    // xorshift: deterministic garbage.
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            let _ = make_credential(&junk, &junk, &junk, &seed, &mut rng);
            let _ = make_credential_for_ak(&junk, &junk, b"s", &seed, &mut rng);
            let _ = ek_public_from_bytes(&junk);
        }
    }
}
