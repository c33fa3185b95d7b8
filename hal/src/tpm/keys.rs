//! EK certificate, EK, and the attestation key (AK).
//!
//! The EK is a primary key in the endorsement hierarchy made from the TCG
//! default RSA-2048 template: re-creating it gives the same key, so it is
//! never stored. The AK is a restricted RSA-2048 signing key (RSASSA,
//! SHA-256) created under the EK; TPM2_Create returns it wrapped by the EK,
//! and that blob ([`AkBlob`]) is what we keep on /var and load again after
//! a reboot: it is useless on any other TPM.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;
use tss_esapi::abstraction::{ak, ek, AsymmetricAlgorithmSelection, DefaultKey};
use tss_esapi::handles::KeyHandle;
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
};
use tss_esapi::interface_types::key_bits::RsaKeyBits;
use tss_esapi::structures::{Private, Public, PublicBuffer};
use tss_esapi::traits::{Marshall, UnMarshall};

use super::Tpm;
use crate::error::{Error, Result};

/// The AK as kept on disk: TPM2B_PRIVATE (wrapped by the EK) and TPMT_PUBLIC, hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AkBlob {
    /// The wrapped private part.
    #[serde(with = "hex::serde")]
    pub private: Vec<u8>,
    /// The public part (TPMT_PUBLIC).
    #[serde(with = "hex::serde")]
    pub public: Vec<u8>,
}

impl AkBlob {
    /// Writes the blob (JSON) to `path`: mode 0600, atomically and durably
    /// (fsync, rename, fsync the directory). The blob is wrapped by this
    /// TPM's EK and useless elsewhere, but it is the node's identity: no
    /// other local user reads it, and a power cut never leaves it half
    /// written.
    pub fn save(&self, path: &Path) -> Result<()> {
        let json =
            serde_json::to_vec_pretty(self).map_err(|e| Error::parse("ak blob", e.to_string()))?;
        fluxnode_lowlevel::secret::write_secret(path, &json)
            .map_err(|e| Error::io(e.what, e.path, e.source))
    }

    /// Reads a blob written by [`AkBlob::save`].
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io("reading", path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| Error::parse(path.display().to_string(), e.to_string()))
    }

    fn public(&self) -> Result<Public> {
        Public::unmarshall(&self.public)
            .map_err(|e| Error::tpm("AK blob (unmarshal TPMT_PUBLIC)", e))
    }
}

/// What a verifier needs to know about an AK.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AkInfo {
    /// The TPM name (nameAlg ‖ H(TPMT_PUBLIC)), hex: `tpm2_makecredential -n`.
    pub name: String,
    /// SubjectPublicKeyInfo, PEM: `tpm2_checkquote -u`.
    pub pem: String,
    /// TPM2B_PUBLIC, hex (tpm2-tools' "tss" public format).
    pub tpm2b_public: String,
    /// Object attributes that matter.
    pub attributes: KeyAttributes,
}

/// The object attributes a verifier checks on an AK.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAttributes {
    /// Only signs digests the TPM made itself (quotes, certify).
    pub restricted: bool,
    /// A signing key.
    pub sign: bool,
    /// Decrypt.
    pub decrypt: bool,
    /// Cannot leave this TPM.
    pub fixed_tpm: bool,
    /// Cannot be re-parented.
    pub fixed_parent: bool,
    /// Generated inside the TPM.
    pub sensitive_data_origin: bool,
}

impl KeyAttributes {
    /// Reads the attributes of a public area.
    pub(crate) fn of(public: &Public) -> Self {
        let a = public.object_attributes();
        KeyAttributes {
            restricted: a.restricted(),
            sign: a.sign_encrypt(),
            decrypt: a.decrypt(),
            fixed_tpm: a.fixed_tpm(),
            fixed_parent: a.fixed_parent(),
            sensitive_data_origin: a.sensitive_data_origin(),
        }
    }

    /// True for an attestation key: restricted, sign, fixedTPM, fixedParent,
    /// sensitiveDataOrigin, not decrypt. An unrestricted key could sign a
    /// forged TPMS_ATTEST: this check is what stops it.
    pub fn is_attestation_key(&self) -> bool {
        self.restricted
            && self.sign
            && !self.decrypt
            && self.fixed_tpm
            && self.fixed_parent
            && self.sensitive_data_origin
    }
}

/// PEM and TPM2B_PUBLIC of a public area.
pub(crate) fn public_encodings(public: &Public) -> Result<(String, Vec<u8>)> {
    let spki = picky_asn1_x509::SubjectPublicKeyInfo::try_from(public.clone())
        .map_err(|e| Error::tpm("public key (to SPKI)", e))?;
    let der = picky_asn1_der::to_vec(&spki).map_err(|e| Error::tpm("public key (DER)", e))?;
    let pem = pem_encode("PUBLIC KEY", &der);
    let tpm2b = PublicBuffer::try_from(public.clone())
        .and_then(|b| b.marshall())
        .map_err(|e| Error::tpm("public key (TPM2B_PUBLIC)", e))?;
    Ok((pem, tpm2b))
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for c in der.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for k in 0..4 {
            if k <= c.len() {
                b64.push(char::from(B64[((n >> (18 - 6 * k)) & 63) as usize]));
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

impl Tpm {
    /// The EK certificate (DER) from NV: RSA-2048 (index 0x01c00002), else
    /// ECC P-256 (0x01c0000a). `None` when the TPM has neither.
    pub fn ek_certificate(&mut self) -> Result<Option<Vec<u8>>> {
        for alg in [
            AsymmetricAlgorithmSelection::Rsa(RsaKeyBits::Rsa2048),
            AsymmetricAlgorithmSelection::Ecc(tss_esapi::interface_types::ecc::EccCurve::NistP256),
        ] {
            match ek::retrieve_ek_pubcert(&mut self.ctx, alg) {
                Ok(c) if !c.is_empty() => return Ok(Some(c)),
                Ok(_) => {}
                Err(e) => tracing::debug!("no EK certificate for {alg:?}: {e}"),
            }
        }
        Ok(None)
    }

    /// Creates the EK (RSA-2048, default template) and runs `f` with it, flushing it after.
    pub(crate) fn with_ek<T>(
        &mut self,
        f: impl FnOnce(&mut Self, KeyHandle) -> Result<T>,
    ) -> Result<T> {
        let ek = ek::create_ek_object(&mut self.ctx, AsymmetricAlgorithm::Rsa, None::<DefaultKey>)
            .map_err(|e| Error::tpm("CreatePrimary (EK)", e))?;
        self.with_flushed(ek, f)
    }

    /// The EK's public part: (PEM, TPM2B_PUBLIC) — `tpm2_makecredential -u` takes the latter.
    pub fn ek_public(&mut self) -> Result<(String, Vec<u8>)> {
        self.with_ek(|t, ek| {
            let (public, _, _) = t
                .ctx
                .read_public(ek)
                .map_err(|e| Error::tpm("ReadPublic (EK)", e))?;
            public_encodings(&public)
        })
    }

    /// Creates a new AK under the EK and returns its blob (save it with [`AkBlob::save`]).
    pub fn create_ak(&mut self) -> Result<AkBlob> {
        self.with_ek(|t, ek| {
            let r = ak::create_ak(
                &mut t.ctx,
                ek,
                HashingAlgorithm::Sha256,
                SignatureSchemeAlgorithm::RsaSsa,
                None,
                DefaultKey,
            )
            .map_err(|e| Error::tpm("Create (AK)", e))?;
            let public = r
                .out_public
                .marshall()
                .map_err(|e| Error::tpm("Create (AK): marshal public", e))?;
            Ok(AkBlob {
                private: r.out_private.value().to_vec(),
                public,
            })
        })
    }

    /// Loads the AK from its blob (under a freshly made EK, which is flushed
    /// again) and runs `f` with it, flushing it after.
    pub(crate) fn with_ak<T>(
        &mut self,
        blob: &AkBlob,
        f: impl FnOnce(&mut Self, KeyHandle) -> Result<T>,
    ) -> Result<T> {
        let public = blob.public()?;
        let private = Private::try_from(blob.private.clone())
            .map_err(|e| Error::tpm("AK blob (private)", e))?;
        let ak = self.with_ek(|t, ek| {
            ak::load_ak(&mut t.ctx, ek, None, private, public)
                .map_err(|e| Error::tpm("Load (AK)", e))
        })?;
        self.with_flushed(ak, f)
    }

    /// Name, PEM and attributes of the AK in `blob`, as the TPM sees it once loaded.
    pub fn ak_info(&mut self, blob: &AkBlob) -> Result<AkInfo> {
        self.with_ak(blob, |t, ak| {
            let (public, name, _) = t
                .ctx
                .read_public(ak)
                .map_err(|e| Error::tpm("ReadPublic (AK)", e))?;
            let (pem, tpm2b) = public_encodings(&public)?;
            Ok(AkInfo {
                name: hex::encode(name.value()),
                pem,
                tpm2b_public: hex::encode(tpm2b),
                attributes: KeyAttributes::of(&public),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pem_matches_known_base64() {
        assert_eq!(
            pem_encode("X", b"any carnal pleas"),
            "-----BEGIN X-----\nYW55IGNhcm5hbCBwbGVhcw==\n-----END X-----\n"
        );
        assert_eq!(
            pem_encode("X", b"any carnal pleasu"),
            "-----BEGIN X-----\nYW55IGNhcm5hbCBwbGVhc3U=\n-----END X-----\n"
        );
    }
}

/// The fields of a certificate an operator looks at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertSummary {
    /// Subject DN (often empty for EK certificates: the identity is in the SAN).
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Serial, hex.
    pub serial: String,
    /// Not before (RFC 2822).
    pub not_before: String,
    /// Not after.
    pub not_after: String,
}

/// Parses a DER certificate. Outside input: never panics.
pub fn describe_certificate(der: &[u8]) -> Result<CertSummary> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| Error::parse("EK certificate", e.to_string()))?;
    if !rest.is_empty() {
        return Err(Error::parse(
            "EK certificate",
            format!("{} trailing bytes after the certificate", rest.len()),
        ));
    }
    Ok(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        serial: cert.raw_serial_as_string(),
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
    })
}

#[cfg(test)]
mod cert_tests {
    use super::*;

    #[test]
    fn junk_certificates_are_errors() {
        for junk in [
            &[][..],
            &[0x30],
            &[0x30, 0x82, 0xff, 0xff],
            &[0u8; 64],
            b"-----BEGIN CERTIFICATE-----",
        ] {
            assert!(describe_certificate(junk).is_err());
        }
    }
}

/// What a verifier computes itself from a key's TPM2B_PUBLIC (sent by a
/// node, so never trusted): the TPM name (`nameAlg ‖ SHA-256(TPMT_PUBLIC)`,
/// hex) and the attributes. Only SHA-256 names are accepted. Outside input:
/// never panics.
pub fn inspect_public(tpm2b_public: &[u8]) -> Result<(String, KeyAttributes)> {
    let bad = |why: String| Error::parse("TPM2B_PUBLIC", why);
    let [hi, lo, body @ ..] = tpm2b_public else {
        return Err(bad("shorter than its size field".into()));
    };
    let size = usize::from(u16::from_be_bytes([*hi, *lo]));
    if body.len() != size {
        return Err(bad(format!(
            "size field says {size} bytes, {} follow",
            body.len()
        )));
    }
    let public = Public::unmarshall(body).map_err(|e| bad(e.to_string()))?;
    if public.name_hashing_algorithm() != HashingAlgorithm::Sha256 {
        return Err(bad(format!(
            "name algorithm {:?}, only SHA-256 is accepted",
            public.name_hashing_algorithm()
        )));
    }
    let mut name = vec![0x00, 0x0b]; // TPM_ALG_SHA256
    name.extend_from_slice(&sha2::Sha256::digest(body));
    Ok((hex::encode(name), KeyAttributes::of(&public)))
}

#[cfg(test)]
mod public_tests {
    use super::*;

    #[test]
    fn junk_public_areas_are_errors() {
        for junk in [
            &[][..],
            &[0],
            &[0, 1],
            &[0, 2, 0, 1],
            &[0xff, 0xff, 1, 2, 3],
            &[0, 4, 0, 1, 0, 0x0b],
        ] {
            assert!(inspect_public(junk).is_err(), "{junk:?} accepted");
        }
    }
}
