//! TPMT_PUBLIC (TPM 2.0 Part 2, 12.2.4) for RSA and ECC keys: enough to
//! check an attestation key's attributes, compute its TPM name, and verify
//! its signatures.

use sha2::{Digest as _, Sha256};
use thiserror::Error;

use super::wire::{self, alg, Reader, WireError};

/// Why bytes are not a usable public key.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PublicError {
    /// Neither TPM_ALG_RSA nor TPM_ALG_ECC.
    #[error("key type {0:#06x} is neither RSA nor ECC")]
    UnsupportedType(u16),
    /// The TPM name is computed with SHA-256 only.
    #[error("nameAlg {0:#06x} is not SHA-256")]
    NameAlg(u16),
    /// A field's length or value.
    #[error("malformed TPMT_PUBLIC: {0}")]
    Wire(#[from] WireError),
}

/// TPMA_OBJECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectAttributes(pub u32);

impl ObjectAttributes {
    /// Reserved bits: 0, 3, 8, 9, 12–15, 20–31.
    pub const RESERVED: u32 = 0xfff0_f309;

    /// fixedTPM (bit 1): cannot be duplicated off this TPM.
    pub fn fixed_tpm(self) -> bool {
        self.0 & (1 << 1) != 0
    }
    /// fixedParent (bit 4).
    pub fn fixed_parent(self) -> bool {
        self.0 & (1 << 4) != 0
    }
    /// sensitiveDataOrigin (bit 5): the TPM generated the private part.
    pub fn sensitive_data_origin(self) -> bool {
        self.0 & (1 << 5) != 0
    }
    /// restricted (bit 16): signs only TPM-generated structures.
    pub fn restricted(self) -> bool {
        self.0 & (1 << 16) != 0
    }
    /// decrypt (bit 17).
    pub fn decrypt(self) -> bool {
        self.0 & (1 << 17) != 0
    }
    /// sign (bit 18).
    pub fn sign(self) -> bool {
        self.0 & (1 << 18) != 0
    }

    /// The first attribute that keeps this from being an attestation key,
    /// or `None`. An unrestricted signing key would sign a forged
    /// TPMS_ATTEST: this check is what stops that.
    pub fn attestation_key_flaw(self) -> Option<&'static str> {
        [
            (!self.restricted(), "not restricted"),
            (!self.sign(), "not a signing key"),
            (self.decrypt(), "a decryption key"),
            (!self.fixed_tpm(), "not fixedTPM"),
            (!self.fixed_parent(), "not fixedParent"),
            (!self.sensitive_data_origin(), "not sensitiveDataOrigin"),
        ]
        .into_iter()
        .find_map(|(bad, why)| bad.then_some(why))
    }
}

/// TPMT_SYM_DEF_OBJECT: NULL or an algorithm with key size and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Symmetric {
    /// The algorithm (TPM_ALG_NULL for a signing key).
    pub algorithm: u16,
    /// keyBits and mode, absent for TPM_ALG_NULL.
    pub details: Option<(u16, u16)>,
}

/// A scheme with its hash (TPMT_RSA_SCHEME, TPMT_ECC_SCHEME, TPMT_KDF_SCHEME).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scheme {
    /// The scheme (TPM_ALG_NULL: any, chosen per signature).
    pub scheme: u16,
    /// Its hash algorithm, absent for TPM_ALG_NULL.
    pub hash: Option<u16>,
}

/// Algorithm-specific parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parameters {
    /// TPMS_RSA_PARMS.
    Rsa {
        /// symmetric.
        symmetric: Symmetric,
        /// scheme.
        scheme: Scheme,
        /// keyBits.
        key_bits: u16,
        /// exponent (0 means 65537).
        exponent: u32,
    },
    /// TPMS_ECC_PARMS.
    Ecc {
        /// symmetric.
        symmetric: Symmetric,
        /// scheme.
        scheme: Scheme,
        /// curveID (TPM_ECC_CURVE).
        curve: u16,
        /// kdf.
        kdf: Scheme,
    },
}

/// The public key itself (TPMU_PUBLIC_ID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unique {
    /// The RSA modulus, big-endian.
    Rsa(Vec<u8>),
    /// The ECC point.
    Ecc {
        /// x, big-endian.
        x: Vec<u8>,
        /// y, big-endian.
        y: Vec<u8>,
    },
}

/// A parsed TPMT_PUBLIC, and its TPM name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Public {
    /// type (TPM_ALG_RSA or TPM_ALG_ECC).
    pub key_type: u16,
    /// nameAlg.
    pub name_alg: u16,
    /// objectAttributes.
    pub attributes: ObjectAttributes,
    /// authPolicy.
    pub auth_policy: Vec<u8>,
    /// parameters.
    pub parameters: Parameters,
    /// unique.
    pub unique: Unique,
    /// The TPM name: nameAlg (SHA-256) ‖ SHA-256(TPMT_PUBLIC as sent).
    pub name: Vec<u8>,
}

impl Public {
    /// Parses a TPMT_PUBLIC (what hal's AK blob holds). Nothing may follow
    /// it. Never panics.
    pub fn from_tpmt(bytes: &[u8]) -> Result<Self, PublicError> {
        let mut r = Reader::new(bytes);
        let public = parse(&mut r, bytes)?;
        r.finish("TPMT_PUBLIC")?;
        Ok(public)
    }

    /// Parses a TPM2B_PUBLIC (a size, then a TPMT_PUBLIC of that size).
    pub fn from_tpm2b(bytes: &[u8]) -> Result<Self, PublicError> {
        let mut r = Reader::new(bytes);
        let inner = r.tpm2b("TPM2B_PUBLIC.size", usize::from(u16::MAX))?;
        r.finish("TPM2B_PUBLIC")?;
        Self::from_tpmt(inner)
    }

    /// The TPM name, hex (what tpm2-tools and MakeCredential use).
    pub fn name_hex(&self) -> String {
        hex::encode(&self.name)
    }
}

fn parse(r: &mut Reader<'_>, all: &[u8]) -> Result<Public, PublicError> {
    let key_type = r.u16("type")?;
    if key_type != alg::RSA && key_type != alg::ECC {
        return Err(PublicError::UnsupportedType(key_type));
    }
    let name_alg = r.u16("nameAlg")?;
    if name_alg != alg::SHA256 {
        return Err(PublicError::NameAlg(name_alg));
    }
    let attributes = r.u32("objectAttributes")?;
    if attributes & ObjectAttributes::RESERVED != 0 {
        // A TPM refuses these (TPM_RC_RESERVED_BITS): no TPM made this key.
        return Err(WireError::BadValue {
            field: "objectAttributes (reserved bits)",
            value: u64::from(attributes),
        }
        .into());
    }
    let attributes = ObjectAttributes(attributes);
    let auth_policy = r.tpm2b("authPolicy", wire::MAX_DIGEST)?.to_vec();
    let symmetric = symmetric(r)?;
    let (parameters, unique) = if key_type == alg::RSA {
        let scheme = parse_scheme(r, "parameters.rsaDetail.scheme")?;
        let key_bits = r.u16("parameters.rsaDetail.keyBits")?;
        let exponent = r.u32("parameters.rsaDetail.exponent")?;
        let modulus = r.tpm2b("unique.rsa", wire::MAX_RSA_KEY_BYTES)?.to_vec();
        (
            Parameters::Rsa {
                symmetric,
                scheme,
                key_bits,
                exponent,
            },
            Unique::Rsa(modulus),
        )
    } else {
        let scheme = parse_scheme(r, "parameters.eccDetail.scheme")?;
        let curve = r.u16("parameters.eccDetail.curveID")?;
        let kdf = parse_scheme(r, "parameters.eccDetail.kdf")?;
        let x = r.tpm2b("unique.ecc.x", wire::MAX_ECC_KEY_BYTES)?.to_vec();
        let y = r.tpm2b("unique.ecc.y", wire::MAX_ECC_KEY_BYTES)?.to_vec();
        (
            Parameters::Ecc {
                symmetric,
                scheme,
                curve,
                kdf,
            },
            Unique::Ecc { x, y },
        )
    };
    // The name covers exactly the TPMT_PUBLIC's bytes.
    let used = all.len().saturating_sub(r.rest().len());
    let mut name = alg::SHA256.to_be_bytes().to_vec();
    name.extend_from_slice(&Sha256::digest(all.get(..used).unwrap_or(all)));
    Ok(Public {
        key_type,
        name_alg,
        attributes,
        auth_policy,
        parameters,
        unique,
        name,
    })
}

fn symmetric(r: &mut Reader<'_>) -> Result<Symmetric, WireError> {
    let algorithm = r.u16("parameters.symmetric.algorithm")?;
    let details = if algorithm == alg::NULL {
        None
    } else {
        Some((
            r.u16("parameters.symmetric.keyBits")?,
            r.u16("parameters.symmetric.mode")?,
        ))
    };
    Ok(Symmetric { algorithm, details })
}

fn parse_scheme(r: &mut Reader<'_>, field: &'static str) -> Result<Scheme, WireError> {
    let scheme = r.u16(field)?;
    // Every signing, encryption and KDF scheme's details start with a
    // hashAlg (TPMS_SCHEME_HASH); ECDAA adds a count; RSAES has none.
    let hash = match scheme {
        alg::NULL => None,
        0x0015 => None, // TPM_ALG_RSAES
        0x001A => {
            // TPM_ALG_ECDAA: TPMS_SCHEME_ECDAA {hashAlg, count}
            let h = r.u16(field)?;
            r.u16(field)?;
            Some(h)
        }
        _ => Some(r.u16(field)?),
    };
    Ok(Scheme { scheme, hash })
}

/// Builds TPMT_PUBLIC bytes (tests and the fuzz corpus).
#[doc(hidden)]
pub fn marshal(attributes: u32, parameters: &Parameters, unique: &Unique) -> Vec<u8> {
    let mut out = Vec::new();
    let key_type = match parameters {
        Parameters::Rsa { .. } => alg::RSA,
        Parameters::Ecc { .. } => alg::ECC,
    };
    out.extend_from_slice(&key_type.to_be_bytes());
    out.extend_from_slice(&alg::SHA256.to_be_bytes());
    out.extend_from_slice(&attributes.to_be_bytes());
    out.extend_from_slice(&0u16.to_be_bytes()); // empty authPolicy
    let push_sym = |out: &mut Vec<u8>, s: &Symmetric| {
        out.extend_from_slice(&s.algorithm.to_be_bytes());
        if let Some((bits, mode)) = s.details {
            out.extend_from_slice(&bits.to_be_bytes());
            out.extend_from_slice(&mode.to_be_bytes());
        }
    };
    let push_scheme = |out: &mut Vec<u8>, s: &Scheme| {
        out.extend_from_slice(&s.scheme.to_be_bytes());
        if let Some(h) = s.hash {
            out.extend_from_slice(&h.to_be_bytes());
        }
    };
    let push_2b = |out: &mut Vec<u8>, b: &[u8]| {
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(b);
    };
    match parameters {
        Parameters::Rsa {
            symmetric,
            scheme,
            key_bits,
            exponent,
        } => {
            push_sym(&mut out, symmetric);
            push_scheme(&mut out, scheme);
            out.extend_from_slice(&key_bits.to_be_bytes());
            out.extend_from_slice(&exponent.to_be_bytes());
        }
        Parameters::Ecc {
            symmetric,
            scheme,
            curve,
            kdf,
        } => {
            push_sym(&mut out, symmetric);
            push_scheme(&mut out, scheme);
            out.extend_from_slice(&curve.to_be_bytes());
            push_scheme(&mut out, kdf);
        }
    }
    match unique {
        Unique::Rsa(n) => push_2b(&mut out, n),
        Unique::Ecc { x, y } => {
            push_2b(&mut out, x);
            push_2b(&mut out, y);
        }
    }
    out
}

/// The attributes of an attestation key: fixedTPM, fixedParent,
/// sensitiveDataOrigin, userWithAuth, restricted, sign.
pub const AK_ATTRIBUTES: u32 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 16) | (1 << 18);

#[cfg(test)]
mod tests {
    use super::*;

    fn ecc() -> Vec<u8> {
        marshal(
            AK_ATTRIBUTES,
            &Parameters::Ecc {
                symmetric: Symmetric {
                    algorithm: alg::NULL,
                    details: None,
                },
                scheme: Scheme {
                    scheme: alg::ECDSA,
                    hash: Some(alg::SHA256),
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
        )
    }

    #[test]
    fn parses_and_names() -> Result<(), PublicError> {
        let b = ecc();
        let p = Public::from_tpmt(&b)?;
        assert_eq!(p.attributes.attestation_key_flaw(), None);
        assert_eq!(p.name.len(), 34);
        assert_eq!(&p.name[..2], &[0, 0x0b]);
        assert_eq!(&p.name[2..], Sha256::digest(&b).as_slice());
        let mut b2 = (b.len() as u16).to_be_bytes().to_vec();
        b2.extend_from_slice(&b);
        assert_eq!(Public::from_tpm2b(&b2)?, p);
        Ok(())
    }

    #[test]
    fn attribute_flaws_are_named() {
        let a = ObjectAttributes(AK_ATTRIBUTES & !(1 << 16));
        assert_eq!(a.attestation_key_flaw(), Some("not restricted"));
        let a = ObjectAttributes(AK_ATTRIBUTES | (1 << 17));
        assert_eq!(a.attestation_key_flaw(), Some("a decryption key"));
    }

    #[test]
    fn truncated_trailing_and_foreign_inputs_are_errors() {
        let b = ecc();
        for n in 0..b.len() {
            assert!(Public::from_tpmt(&b[..n]).is_err(), "prefix {n} parsed");
        }
        let mut t = b.clone();
        t.push(0);
        assert!(matches!(
            Public::from_tpmt(&t),
            Err(PublicError::Wire(WireError::Trailing { .. }))
        ));
        let mut k = b.clone();
        k[1] = 0x08; // KEYEDHASH
        assert_eq!(
            Public::from_tpmt(&k),
            Err(PublicError::UnsupportedType(0x0008))
        );
        let mut n = b;
        n[3] = 0x04; // nameAlg SHA-1
        assert_eq!(Public::from_tpmt(&n), Err(PublicError::NameAlg(0x0004)));
    }
}
