//! TPMT_SIGNATURE over TPMS_ATTEST bytes, checked with the AK's public key:
//! RSASSA-PKCS1-v1_5 with SHA-256 (RSA of 2048 bits or more) and ECDSA on
//! P-256 with SHA-256. SHA-1 is refused everywhere.

use rsa::traits::PublicKeyParts as _;
use thiserror::Error;

use super::public::{Parameters, Public, PublicError, Unique};
use super::wire::{self, alg, Reader, WireError};

/// Smallest RSA modulus accepted, in bits.
pub const MIN_RSA_BITS: usize = 2048;

/// Why a signature or a key is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    /// The key's TPMT_PUBLIC.
    #[error("attestation key: {0}")]
    Public(#[from] PublicError),
    /// The key's attributes let it sign things the TPM did not generate.
    #[error("the key is no attestation key: {0}")]
    NotAnAttestationKey(&'static str),
    /// An RSA key below [`MIN_RSA_BITS`], or whose modulus does not match
    /// its keyBits.
    #[error("RSA key of {bits} bits (keyBits {key_bits}); at least 2048 required")]
    WeakRsaKey {
        /// The modulus' bit length.
        bits: usize,
        /// keyBits as declared.
        key_bits: u16,
    },
    /// An ECC key on another curve than P-256.
    #[error("ECC curve {0:#06x} is not NIST P-256")]
    UnsupportedCurve(u16),
    /// The key's numbers are not a valid key.
    #[error("invalid public key: {0}")]
    InvalidKey(String),
    /// A signature hashed with SHA-1.
    #[error("the signature uses SHA-1")]
    Sha1,
    /// A hash other than SHA-256.
    #[error("the signature's hash {0:#06x} is not SHA-256")]
    UnsupportedHash(u16),
    /// A scheme other than RSASSA and ECDSA (HMAC, RSAPSS, ECDAA, NULL...).
    #[error("signature scheme {0:#06x} is not RSASSA or ECDSA")]
    UnsupportedScheme(u16),
    /// The signature's scheme does not fit the key (its type, or the scheme
    /// the key is restricted to).
    #[error("signature scheme {scheme:#06x} does not fit the key")]
    SchemeMismatch {
        /// The signature's scheme.
        scheme: u16,
    },
    /// A field's length or value.
    #[error("malformed TPMT_SIGNATURE: {0}")]
    Wire(#[from] WireError),
    /// The signature does not verify with this key.
    #[error("the signature does not verify with the attestation key")]
    Invalid,
}

/// A parsed TPMT_SIGNATURE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signature {
    /// TPMS_SIGNATURE_RSASSA.
    RsaSsa {
        /// hash.
        hash: u16,
        /// sig, big-endian.
        sig: Vec<u8>,
    },
    /// TPMS_SIGNATURE_ECDSA.
    Ecdsa {
        /// hash.
        hash: u16,
        /// signatureR, big-endian.
        r: Vec<u8>,
        /// signatureS, big-endian.
        s: Vec<u8>,
    },
}

impl Signature {
    /// Parses a TPMT_SIGNATURE. Schemes other than RSASSA and ECDSA are
    /// refused by name; nothing may follow the structure. Never panics.
    pub fn parse(bytes: &[u8]) -> Result<Self, SignatureError> {
        let mut r = Reader::new(bytes);
        let scheme = r.u16("sigAlg")?;
        let sig = match scheme {
            alg::RSASSA => Signature::RsaSsa {
                hash: r.u16("signature.rsassa.hash")?,
                sig: r
                    .tpm2b("signature.rsassa.sig", wire::MAX_RSA_KEY_BYTES)?
                    .to_vec(),
            },
            alg::ECDSA => Signature::Ecdsa {
                hash: r.u16("signature.ecdsa.hash")?,
                r: r.tpm2b("signature.ecdsa.signatureR", wire::MAX_ECC_KEY_BYTES)?
                    .to_vec(),
                s: r.tpm2b("signature.ecdsa.signatureS", wire::MAX_ECC_KEY_BYTES)?
                    .to_vec(),
            },
            other => return Err(SignatureError::UnsupportedScheme(other)),
        };
        r.finish("TPMT_SIGNATURE")?;
        Ok(sig)
    }

    fn scheme_and_hash(&self) -> (u16, u16) {
        match self {
            Signature::RsaSsa { hash, .. } => (alg::RSASSA, *hash),
            Signature::Ecdsa { hash, .. } => (alg::ECDSA, *hash),
        }
    }
}

/// An attestation key ready to verify quotes: parsed, its attributes
/// checked, its numbers loaded.
#[derive(Debug, Clone)]
pub struct AttestationKey {
    public: Public,
    key: Key,
}

/// The key's numbers as ring takes them. Parsing and validation use the
/// RustCrypto types (`rsa`, `p256`); verification uses ring, 8-20x faster
/// per signature (docs/BENCHMARKS.md, "Registry"), which is what lets one
/// core verify thousands of sessions' quotes per second.
#[derive(Debug, Clone)]
enum Key {
    Rsa {
        /// Modulus, big-endian, no leading zeros.
        n: Vec<u8>,
        /// Public exponent, big-endian.
        e: Vec<u8>,
        /// Modulus length in bytes: a signature's length.
        size: usize,
    },
    /// SEC1 uncompressed point, validated on the curve.
    P256(Vec<u8>),
}

impl AttestationKey {
    /// From TPMT_PUBLIC bytes (hal's `AkBlob::public`).
    pub fn from_tpmt(bytes: &[u8]) -> Result<Self, SignatureError> {
        Self::new(Public::from_tpmt(bytes)?)
    }

    /// From TPM2B_PUBLIC bytes.
    pub fn from_tpm2b(bytes: &[u8]) -> Result<Self, SignatureError> {
        Self::new(Public::from_tpm2b(bytes)?)
    }

    /// Checks the attributes (restricted, sign, not decrypt, fixedTPM,
    /// fixedParent, sensitiveDataOrigin) and loads the key.
    pub fn new(public: Public) -> Result<Self, SignatureError> {
        if let Some(flaw) = public.attributes.attestation_key_flaw() {
            return Err(SignatureError::NotAnAttestationKey(flaw));
        }
        let key = match (&public.parameters, &public.unique) {
            (
                Parameters::Rsa {
                    key_bits, exponent, ..
                },
                Unique::Rsa(modulus),
            ) => {
                let n = rsa::BigUint::from_bytes_be(modulus);
                let bits = n.bits();
                if bits < MIN_RSA_BITS || bits != usize::from(*key_bits) {
                    return Err(SignatureError::WeakRsaKey {
                        bits,
                        key_bits: *key_bits,
                    });
                }
                let e = if *exponent == 0 { 65537 } else { *exponent };
                let key = rsa::RsaPublicKey::new(n, rsa::BigUint::from(e))
                    .map_err(|e| SignatureError::InvalidKey(e.to_string()))?;
                Key::Rsa {
                    n: key.n().to_bytes_be(),
                    e: key.e().to_bytes_be(),
                    size: key.size(),
                }
            }
            (Parameters::Ecc { curve, .. }, Unique::Ecc { x, y }) => {
                if *curve != alg::NIST_P256 {
                    return Err(SignatureError::UnsupportedCurve(*curve));
                }
                let mut sec1 = vec![0x04];
                sec1.extend_from_slice(&pad32(x).ok_or_else(|| bad_point("x"))?);
                sec1.extend_from_slice(&pad32(y).ok_or_else(|| bad_point("y"))?);
                p256::ecdsa::VerifyingKey::from_sec1_bytes(&sec1)
                    .map_err(|e| SignatureError::InvalidKey(e.to_string()))?;
                Key::P256(sec1)
            }
            // parse() pairs parameters and unique by type.
            _ => {
                return Err(SignatureError::InvalidKey(
                    "parameters and unique differ in type".into(),
                ))
            }
        };
        Ok(AttestationKey { public, key })
    }

    /// The parsed TPMT_PUBLIC (name, attributes).
    pub fn public(&self) -> &Public {
        &self.public
    }

    /// Verifies `signature` (TPMT_SIGNATURE bytes) over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> Result<(), SignatureError> {
        let sig = Signature::parse(signature)?;
        let (scheme, hash) = sig.scheme_and_hash();
        match hash {
            alg::SHA1 => return Err(SignatureError::Sha1),
            alg::SHA256 => {}
            other => return Err(SignatureError::UnsupportedHash(other)),
        }
        // A key bound to a scheme signs only with it.
        let key_scheme = match &self.public.parameters {
            Parameters::Rsa { scheme, .. } | Parameters::Ecc { scheme, .. } => scheme,
        };
        if key_scheme.scheme != alg::NULL
            && (key_scheme.scheme != scheme || key_scheme.hash != Some(hash))
        {
            return Err(SignatureError::SchemeMismatch { scheme });
        }
        match (&self.key, &sig) {
            (Key::Rsa { n, e, size }, Signature::RsaSsa { sig, .. }) => {
                if sig.len() != *size {
                    return Err(SignatureError::Invalid);
                }
                ring::signature::RsaPublicKeyComponents { n, e }
                    .verify(&ring::signature::RSA_PKCS1_2048_8192_SHA256, message, sig)
                    .map_err(|_| SignatureError::Invalid)
            }
            (Key::P256(point), Signature::Ecdsa { r, s, .. }) => {
                let (Some(r), Some(s)) = (pad32(r), pad32(s)) else {
                    return Err(SignatureError::Invalid);
                };
                let mut rs = [0u8; 64];
                rs[..32].copy_from_slice(&r);
                rs[32..].copy_from_slice(&s);
                ring::signature::UnparsedPublicKey::new(
                    &ring::signature::ECDSA_P256_SHA256_FIXED,
                    point,
                )
                .verify(message, &rs)
                .map_err(|_| SignatureError::Invalid)
            }
            _ => Err(SignatureError::SchemeMismatch { scheme }),
        }
    }
}

fn bad_point(coord: &str) -> SignatureError {
    SignatureError::InvalidKey(format!("P-256 {coord} coordinate longer than 32 bytes"))
}

/// A big-endian number as exactly 32 bytes (leading zeros added or
/// dropped); `None` when it does not fit.
fn pad32(b: &[u8]) -> Option<[u8; 32]> {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    let b = &b[start..];
    let mut out = [0u8; 32];
    let at = 32usize.checked_sub(b.len())?;
    out[at..].copy_from_slice(b);
    Some(out)
}

/// Marshals a TPMT_SIGNATURE (tests and the fuzz corpus).
#[doc(hidden)]
pub fn marshal(sig: &Signature) -> Vec<u8> {
    let mut out = Vec::new();
    let (scheme, hash) = sig.scheme_and_hash();
    out.extend_from_slice(&scheme.to_be_bytes());
    out.extend_from_slice(&hash.to_be_bytes());
    let mut push_2b = |b: &[u8]| {
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(b);
    };
    match sig {
        Signature::RsaSsa { sig, .. } => push_2b(sig),
        Signature::Ecdsa { r, s, .. } => {
            push_2b(r);
            push_2b(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pad32_fits_or_refuses() {
        assert_eq!(pad32(&[1]).map(|a| a[31]), Some(1));
        let mut long = vec![0u8; 40];
        long[39] = 5;
        assert_eq!(pad32(&long).map(|a| a[31]), Some(5));
        assert_eq!(pad32(&[1; 33]), None);
    }

    #[test]
    fn parse_refuses_other_schemes_and_garbage() {
        assert_eq!(
            Signature::parse(&[0x00, 0x16, 0, 0x0b, 0, 0]),
            Err(SignatureError::UnsupportedScheme(alg::RSAPSS))
        );
        assert!(matches!(
            Signature::parse(&[0x00, 0x14, 0, 0x0b, 0x02, 0x01]),
            Err(SignatureError::Wire(WireError::Oversized { .. }))
        ));
        assert!(matches!(
            Signature::parse(&[0x00, 0x14, 0, 0x0b, 0, 1, 7, 7]),
            Err(SignatureError::Wire(WireError::Trailing { .. }))
        ));
        let s = marshal(&Signature::Ecdsa {
            hash: alg::SHA256,
            r: vec![1; 32],
            s: vec![2; 32],
        });
        for n in 0..s.len() {
            assert!(Signature::parse(&s[..n]).is_err());
        }
        assert!(Signature::parse(&s).is_ok());
    }
}
