//! EK certificates: the TPM vendor's statement that an endorsement key
//! lives in a genuine TPM.
//!
//! [`verify_ek_certificate`] checks that a DER certificate chains to an
//! allow-listed root CA of a [`TrustStore`] (through at most two
//! intermediates), that every certificate on the way is valid at the time
//! given, signed with an accepted algorithm, and issued by a CA, and that
//! the certified key is the EK the node sent. It reads no clock and no
//! files: the caller passes "now" and the trust store's bytes.
//!
//! Signatures: RSASSA-PKCS1-v1_5 with SHA-256/384/512 (RSA of 2048 to 8192
//! bits), ECDSA with SHA-256/384/512 on P-256 and P-384. MD2, MD4, MD5 and
//! SHA-1 are refused by name; other algorithms (RSASSA-PSS, EdDSA, ...)
//! are refused as unsupported.

use p256::ecdsa::signature::hazmat::PrehashVerifier as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use thiserror::Error;
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::{PublicKey, RSAPublicKey};
use x509_parser::x509::SubjectPublicKeyInfo;

use crate::tpm::makecredential::ek_public_from_bytes;
use crate::tpm::public::{Parameters, Public, Unique};
use crate::tpm::wire::alg;

/// The largest certificate accepted (EK certificates are about 1 KiB).
pub const MAX_CERT_BYTES: usize = 16 * 1024;
/// The most certificates in a chain, the EK certificate and the root
/// included.
pub const MAX_CHAIN: usize = 4;
/// The most roots a trust store holds.
pub const MAX_ROOTS: usize = 64;
/// The most intermediates a trust store holds.
pub const MAX_INTERMEDIATES: usize = 64;
/// The largest PEM bundle [`TrustStore::add_root`] and
/// [`TrustStore::add_intermediate`] take.
pub const MAX_PEM_BYTES: usize = 1024 * 1024;
/// The most signatures one verification checks while it looks for a path
/// (several CAs may share a name): a bound on the work an input can cause.
const MAX_SIGNATURE_CHECKS: usize = 16;
/// RSA keys of CAs: at least this many bits.
const MIN_RSA_BITS: usize = 2048;
/// RSA keys of CAs: at most this many bits (the cost of a verification).
const MAX_RSA_BITS: usize = 8192;

/// Why a certificate cannot go into a [`TrustStore`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TrustStoreError {
    /// A certificate or a PEM bundle over its size bound.
    #[error("{what} of {size} bytes, at most {max} allowed")]
    TooLarge {
        /// A certificate or a PEM bundle.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The bound.
        max: usize,
    },
    /// More roots or intermediates than the store holds.
    #[error("more than {max} {kind} certificates")]
    TooMany {
        /// "root" or "intermediate".
        kind: &'static str,
        /// The bound.
        max: usize,
    },
    /// Not a DER certificate, or a PEM block that does not decode.
    #[error("malformed certificate: {0}")]
    Malformed(String),
    /// A PEM block of another kind than CERTIFICATE.
    #[error("PEM block {0:?} is not a CERTIFICATE")]
    NotACertificate(String),
    /// A PEM bundle without any certificate.
    #[error("no certificate in the PEM input")]
    Empty,
    /// The certificate is no CA (basicConstraints cA is not set).
    #[error("{0:?} is no CA certificate (basicConstraints cA is not set)")]
    NotCa(String),
}

/// A certificate held by a [`TrustStore`], with what chain building looks
/// up parsed out once.
#[derive(Debug, Clone)]
struct Anchor {
    der: Vec<u8>,
    subject_raw: Vec<u8>,
    subject: String,
    fingerprint: [u8; 32],
}

/// The allow-listed root CAs (trust anchors) and the intermediate CAs that
/// may link an EK certificate to them. Intermediates are never trusted on
/// their own: a path must end at a root.
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    roots: Vec<Anchor>,
    intermediates: Vec<Anchor>,
}

impl TrustStore {
    /// An empty store: it trusts nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// A store from lists of blobs, each a DER certificate or a PEM bundle
    /// of certificates.
    pub fn from_blobs(roots: &[&[u8]], intermediates: &[&[u8]]) -> Result<Self, TrustStoreError> {
        let mut store = Self::new();
        for r in roots {
            store.add_root(r)?;
        }
        for i in intermediates {
            store.add_intermediate(i)?;
        }
        Ok(store)
    }

    /// Adds allow-listed root CAs: one DER certificate, or every
    /// certificate of a PEM bundle. Returns how many were added (a
    /// certificate already present is not added twice).
    pub fn add_root(&mut self, blob: &[u8]) -> Result<usize, TrustStoreError> {
        let anchors = anchors_from_blob(blob)?;
        add_to(&mut self.roots, anchors, "root", MAX_ROOTS)
    }

    /// Adds intermediate CAs (DER or a PEM bundle), as [`Self::add_root`].
    pub fn add_intermediate(&mut self, blob: &[u8]) -> Result<usize, TrustStoreError> {
        let anchors = anchors_from_blob(blob)?;
        add_to(
            &mut self.intermediates,
            anchors,
            "intermediate",
            MAX_INTERMEDIATES,
        )
    }

    /// How many roots the store holds.
    pub fn root_count(&self) -> usize {
        self.roots.len()
    }

    /// How many intermediates the store holds.
    pub fn intermediate_count(&self) -> usize {
        self.intermediates.len()
    }

    /// The CAs whose subject is `issuer`: roots first, then intermediates.
    fn issuers_named<'s>(
        &'s self,
        issuer_raw: &[u8],
        issuer: &str,
    ) -> impl Iterator<Item = (&'s Anchor, bool)> + 's {
        // Names are compared as encoded and, failing that, as rendered:
        // some vendors encode the same name with other string types in the
        // issuer field. The signature check decides anyway.
        let issuer_raw = issuer_raw.to_vec();
        let issuer = issuer.to_string();
        let matches = move |a: &&Anchor| a.subject_raw == issuer_raw || a.subject == issuer;
        let roots = self.roots.iter().filter(matches.clone()).map(|a| (a, true));
        let inter = self
            .intermediates
            .iter()
            .filter(matches)
            .map(|a| (a, false));
        roots.chain(inter)
    }
}

fn add_to(
    list: &mut Vec<Anchor>,
    anchors: Vec<Anchor>,
    kind: &'static str,
    max: usize,
) -> Result<usize, TrustStoreError> {
    let mut added = 0;
    for a in anchors {
        if list.iter().any(|b| b.fingerprint == a.fingerprint) {
            continue;
        }
        if list.len() >= max {
            return Err(TrustStoreError::TooMany { kind, max });
        }
        list.push(a);
        added += 1;
    }
    Ok(added)
}

/// One DER certificate, or the certificates of a PEM bundle.
fn anchors_from_blob(blob: &[u8]) -> Result<Vec<Anchor>, TrustStoreError> {
    // DER starts with a SEQUENCE tag; PEM (text, comments allowed
    // between blocks) never does.
    if blob.first() == Some(&0x30) {
        return Ok(vec![anchor(blob)?]);
    }
    if blob.len() > MAX_PEM_BYTES {
        return Err(TrustStoreError::TooLarge {
            what: "PEM bundle",
            size: blob.len(),
            max: MAX_PEM_BYTES,
        });
    }
    let mut out = Vec::new();
    for pem in x509_parser::pem::Pem::iter_from_buffer(blob) {
        let pem = pem.map_err(|e| TrustStoreError::Malformed(format!("PEM: {e}")))?;
        if pem.label != "CERTIFICATE" {
            return Err(TrustStoreError::NotACertificate(pem.label));
        }
        // A bundle larger than the two store bounds together is a mistake.
        if out.len() >= MAX_ROOTS + MAX_INTERMEDIATES {
            return Err(TrustStoreError::TooMany {
                kind: "PEM bundle",
                max: MAX_ROOTS + MAX_INTERMEDIATES,
            });
        }
        out.push(anchor(&pem.contents)?);
    }
    if out.is_empty() {
        return Err(TrustStoreError::Empty);
    }
    Ok(out)
}

fn anchor(der: &[u8]) -> Result<Anchor, TrustStoreError> {
    if der.len() > MAX_CERT_BYTES {
        return Err(TrustStoreError::TooLarge {
            what: "certificate",
            size: der.len(),
            max: MAX_CERT_BYTES,
        });
    }
    let cert = parse_exact(der).map_err(TrustStoreError::Malformed)?;
    let subject = cert.subject().to_string();
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    if !is_ca {
        return Err(TrustStoreError::NotCa(subject));
    }
    Ok(Anchor {
        der: der.to_vec(),
        subject_raw: cert.subject().as_raw().to_vec(),
        subject,
        fingerprint: Sha256::digest(der).into(),
    })
}

/// Parses a DER certificate with nothing after it.
fn parse_exact(der: &[u8]) -> Result<X509Certificate<'_>, String> {
    let (rest, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the certificate", rest.len()));
    }
    Ok(cert)
}

/// Why an EK certificate is refused. [`EkCertError::code`] is stable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EkCertError {
    /// Not a DER X.509 certificate within the bounds, or inconsistent.
    #[error("the EK certificate is malformed ({0}); send the DER certificate read from the TPM's NV index")]
    Malformed(String),
    /// The EK public area sent with the certificate does not parse.
    #[error("the EK public area does not parse ({0}); send the EK's TPMT_PUBLIC or TPM2B_PUBLIC as the TPM returned it")]
    EkPublic(String),
    /// A certificate on the path is signed with MD2/MD4/MD5/SHA-1, or a
    /// CA's RSA key is shorter than 2048 bits.
    #[error("{cert:?} uses {algorithm}, which is refused as weak; this TPM's vendor chain cannot be accepted")]
    WeakAlgorithm {
        /// The certificate's subject.
        cert: String,
        /// The algorithm, named.
        algorithm: String,
    },
    /// An algorithm this verifier does not implement.
    #[error("{cert:?} uses the unsupported algorithm {algorithm}; supported are RSA PKCS#1 v1.5 and ECDSA P-256/P-384 with SHA-256/384/512")]
    UnsupportedAlgorithm {
        /// The certificate's subject.
        cert: String,
        /// The algorithm's OID or name.
        algorithm: String,
    },
    /// A critical extension this verifier does not process.
    #[error("{cert:?} has the critical extension {oid}, which this verifier does not process")]
    UnsupportedExtension {
        /// The certificate's subject.
        cert: String,
        /// The extension's OID.
        oid: String,
    },
    /// No allow-listed root (or intermediate leading to one) issued it.
    #[error("no allow-listed CA issued {cert:?} (issuer {issuer:?}); if this TPM vendor is accepted, add its root CA (and intermediates) to the trust store")]
    Untrusted {
        /// The subject of the certificate whose issuer is unknown.
        cert: String,
        /// The issuer it names.
        issuer: String,
    },
    /// An issuer with the right name did not sign it.
    #[error("the signature on {cert:?} does not verify with the key of its issuer {issuer:?}: forged, corrupted, or issued by another CA of the same name")]
    SignatureInvalid {
        /// The certificate's subject.
        cert: String,
        /// The issuer's subject.
        issuer: String,
    },
    /// A certificate's notAfter is before "now".
    #[error("{cert:?} expired at unix time {not_after} (now {now}); check the verifier's clock, or the node needs a current EK certificate")]
    Expired {
        /// The certificate's subject.
        cert: String,
        /// Its notAfter, unix seconds.
        not_after: i64,
        /// The time it was checked at.
        now: i64,
    },
    /// A certificate's notBefore is after "now".
    #[error("{cert:?} is valid only from unix time {not_before} (now {now}); check the verifier's clock")]
    NotYetValid {
        /// The certificate's subject.
        cert: String,
        /// Its notBefore, unix seconds.
        not_before: i64,
        /// The time it was checked at.
        now: i64,
    },
    /// An issuer on the path may not issue certificates.
    #[error("{cert:?} may not issue certificates: {why}")]
    IssuerNotCa {
        /// The issuer's subject.
        cert: String,
        /// Which rule it breaks.
        why: &'static str,
    },
    /// No path to a root within [`MAX_CHAIN`] certificates.
    #[error("no path to an allow-listed root within {max} certificates (via {cert:?})")]
    ChainTooLong {
        /// The last certificate reached.
        cert: String,
        /// The bound.
        max: usize,
    },
    /// The certificate is genuine but certifies another key than this EK.
    #[error("the EK certificate certifies another key than the EK sent ({0}): the EK and its certificate come from different TPMs")]
    KeyMismatch(&'static str),
}

impl EkCertError {
    /// A stable code, snake_case, never renamed and never reused.
    pub fn code(&self) -> &'static str {
        match self {
            EkCertError::Malformed(_) => "ek_cert_malformed",
            EkCertError::EkPublic(_) => "ek_public_malformed",
            EkCertError::WeakAlgorithm { .. } => "ek_cert_weak_algorithm",
            EkCertError::UnsupportedAlgorithm { .. } => "ek_cert_unsupported_algorithm",
            EkCertError::UnsupportedExtension { .. } => "ek_cert_unsupported_extension",
            EkCertError::Untrusted { .. } => "ek_cert_untrusted",
            EkCertError::SignatureInvalid { .. } => "ek_cert_signature_invalid",
            EkCertError::Expired { .. } => "ek_cert_expired",
            EkCertError::NotYetValid { .. } => "ek_cert_not_yet_valid",
            EkCertError::IssuerNotCa { .. } => "ek_cert_issuer_not_ca",
            EkCertError::ChainTooLong { .. } => "ek_cert_chain_too_long",
            EkCertError::KeyMismatch(_) => "ek_cert_key_mismatch",
        }
    }
}

/// One CA of a verified path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainEntry {
    /// Its subject.
    pub subject: String,
    /// SHA-256 of its DER.
    #[serde(with = "hex::serde")]
    pub fingerprint: [u8; 32],
}

/// A verified EK certificate: what a registry stores about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EkCertificate {
    /// Subject (often empty in EK certificates: the TPM's identity is in
    /// the subjectAltName).
    pub subject: String,
    /// Issuer.
    pub issuer: String,
    /// Serial number, hex, as encoded.
    pub serial: String,
    /// notBefore, unix seconds.
    pub not_before: i64,
    /// notAfter, unix seconds (vendors often use 9999-12-31).
    pub not_after: i64,
    /// SHA-256 of the certificate's DER (without any NV padding).
    #[serde(with = "hex::serde")]
    pub fingerprint: [u8; 32],
    /// The issuing CAs, from the EK certificate's issuer up to the
    /// allow-listed root (the last entry).
    pub chain: Vec<ChainEntry>,
    /// The TPM name (nameAlg ‖ SHA-256(TPMT_PUBLIC)) of the EK whose key the
    /// certificate certifies: a successful verification means the keys
    /// matched.
    #[serde(with = "hex::serde")]
    pub ek_name: Vec<u8>,
}

/// Verifies an EK certificate (DER, as read from the TPM's NV index) for
/// the EK whose public area is `ek_public` (TPMT_PUBLIC or TPM2B_PUBLIC,
/// see [`ek_public_from_bytes`]), against `trust` at unix time
/// `now_unix_s`.
///
/// In order: the size (at most [`MAX_CERT_BYTES`]; NV indexes may pad a
/// certificate with 0x00 or 0xFF bytes, which are ignored, anything else
/// after it is refused); the certificate (its signature algorithm named
/// the same inside and outside the signed part, not weak, supported; its
/// validity; no unprocessed critical extension); the EK public area; then
/// the path: each issuer is looked up by name among the roots, then the
/// intermediates, must have signed the certificate, must be a CA
/// (basicConstraints cA, its pathLenConstraint, keyCertSign when it has a
/// keyUsage), valid now, without unprocessed critical extensions, and
/// either an allow-listed root (whose own self-signature is not looked
/// at: the store vouches for it) or itself signed with an accepted
/// algorithm and issued in the same way, with at most [`MAX_CHAIN`]
/// certificates in all.
/// Last, the certified key must be the EK's: RSA modulus and exponent, or
/// EC curve and point. Never panics.
pub fn verify_ek_certificate(
    cert_der: &[u8],
    ek_public: &[u8],
    trust: &TrustStore,
    now_unix_s: i64,
) -> Result<EkCertificate, EkCertError> {
    if cert_der.len() > MAX_CERT_BYTES {
        return Err(EkCertError::Malformed(format!(
            "{} bytes, at most {MAX_CERT_BYTES} allowed",
            cert_der.len()
        )));
    }
    let (rest, leaf) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| EkCertError::Malformed(e.to_string()))?;
    let padding_ok = rest.iter().all(|&b| b == 0) || rest.iter().all(|&b| b == 0xff);
    if !padding_ok {
        return Err(EkCertError::Malformed(format!(
            "{} bytes after the certificate that are not NV padding",
            rest.len()
        )));
    }
    let der = cert_der
        .get(..cert_der.len() - rest.len())
        .unwrap_or(cert_der);
    check_certificate(&leaf, now_unix_s, false)?;
    let ek = ek_public_from_bytes(ek_public).map_err(|e| EkCertError::EkPublic(e.to_string()))?;

    let mut path = vec![Sha256::digest(der).into()];
    let mut budget = MAX_SIGNATURE_CHECKS;
    let chain = find_path(&leaf, &mut path, trust, now_unix_s, &mut budget)?;

    key_matches(leaf.public_key(), &ek)?;
    Ok(EkCertificate {
        subject: leaf.subject().to_string(),
        issuer: leaf.issuer().to_string(),
        serial: hex::encode(leaf.raw_serial()),
        not_before: leaf.validity().not_before.timestamp(),
        not_after: leaf.validity().not_after.timestamp(),
        fingerprint: Sha256::digest(der).into(),
        chain,
        ek_name: ek.name,
    })
}

/// The checks every certificate on the path gets on its own. A root's own
/// (self-)signature is never verified: it is trusted because it is in the
/// store, so its algorithm is not looked at (`is_root`).
fn check_certificate(
    cert: &X509Certificate<'_>,
    now: i64,
    is_root: bool,
) -> Result<(), EkCertError> {
    let subject = || cert.subject().to_string();
    if !is_root {
        // RFC 5280 4.1.1.2: the same algorithm inside and outside the
        // signed part; otherwise the unsigned one could be swapped.
        if cert.signature_algorithm != cert.tbs_certificate.signature {
            return Err(EkCertError::Malformed(format!(
                "{:?}: signatureAlgorithm differs from tbsCertificate.signature",
                subject()
            )));
        }
        signature_algorithm(cert)?;
    }
    let validity = cert.validity();
    let not_before = validity.not_before.timestamp();
    let not_after = validity.not_after.timestamp();
    if now < not_before {
        return Err(EkCertError::NotYetValid {
            cert: subject(),
            not_before,
            now,
        });
    }
    if now > not_after {
        return Err(EkCertError::Expired {
            cert: subject(),
            not_after,
            now,
        });
    }
    // RFC 5280 4.2: a critical extension we do not process makes the
    // certificate unusable. These are the ones processed or without
    // effect on an EK path: basicConstraints, keyUsage, extKeyUsage,
    // subjectAltName (EK certificates carry the TPM's identity there,
    // critical when the subject is empty), certificatePolicies.
    const PROCESSED: [&str; 5] = [
        "2.5.29.19",
        "2.5.29.15",
        "2.5.29.37",
        "2.5.29.17",
        "2.5.29.32",
    ];
    for ext in cert.extensions() {
        let oid = ext.oid.to_id_string();
        if ext.critical && !PROCESSED.contains(&oid.as_str()) {
            return Err(EkCertError::UnsupportedExtension {
                cert: subject(),
                oid,
            });
        }
    }
    Ok(())
}

/// The hash of a signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha256,
    Sha384,
    Sha512,
}

impl Hash {
    fn digest(self, data: &[u8]) -> Vec<u8> {
        match self {
            Hash::Sha256 => Sha256::digest(data).to_vec(),
            Hash::Sha384 => Sha384::digest(data).to_vec(),
            Hash::Sha512 => Sha512::digest(data).to_vec(),
        }
    }
}

/// The family of a signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SigKind {
    RsaPkcs1,
    Ecdsa,
}

/// The certificate's signature algorithm, or why it is refused.
fn signature_algorithm(cert: &X509Certificate<'_>) -> Result<(SigKind, Hash), EkCertError> {
    let oid = cert.signature_algorithm.algorithm.to_id_string();
    let weak = |name: &str| EkCertError::WeakAlgorithm {
        cert: cert.subject().to_string(),
        algorithm: name.to_string(),
    };
    match oid.as_str() {
        "1.2.840.113549.1.1.11" => Ok((SigKind::RsaPkcs1, Hash::Sha256)),
        "1.2.840.113549.1.1.12" => Ok((SigKind::RsaPkcs1, Hash::Sha384)),
        "1.2.840.113549.1.1.13" => Ok((SigKind::RsaPkcs1, Hash::Sha512)),
        "1.2.840.10045.4.3.2" => Ok((SigKind::Ecdsa, Hash::Sha256)),
        "1.2.840.10045.4.3.3" => Ok((SigKind::Ecdsa, Hash::Sha384)),
        "1.2.840.10045.4.3.4" => Ok((SigKind::Ecdsa, Hash::Sha512)),
        "1.2.840.113549.1.1.2" => Err(weak("md2WithRSAEncryption")),
        "1.2.840.113549.1.1.3" => Err(weak("md4WithRSAEncryption")),
        "1.2.840.113549.1.1.4" => Err(weak("md5WithRSAEncryption")),
        "1.2.840.113549.1.1.5" | "1.3.14.3.2.29" => Err(weak("sha1WithRSAEncryption")),
        "1.2.840.10045.4.1" => Err(weak("ecdsa-with-SHA1")),
        "1.2.840.10040.4.3" => Err(weak("dsa-with-sha1")),
        _ => Err(EkCertError::UnsupportedAlgorithm {
            cert: cert.subject().to_string(),
            algorithm: match oid.as_str() {
                "1.2.840.113549.1.1.10" => "RSASSA-PSS (1.2.840.113549.1.1.10)".to_string(),
                "1.2.840.113549.1.1.14" => "sha224WithRSAEncryption".to_string(),
                "1.3.101.112" => "Ed25519".to_string(),
                _ => oid,
            },
        }),
    }
}

/// Finds the issuers of `child` up to a root, depth-first. `path` holds the
/// fingerprints of the certificates so far (the EK certificate first);
/// returns the issuers, nearest first. Of the errors met, the one from an
/// issuer whose signature verified wins: it says more than "not signed by
/// a CA of that name".
fn find_path(
    child: &X509Certificate<'_>,
    path: &mut Vec<[u8; 32]>,
    trust: &TrustStore,
    now: i64,
    budget: &mut usize,
) -> Result<Vec<ChainEntry>, EkCertError> {
    let child_subject = child.subject().to_string();
    let issuer = child.issuer().to_string();
    let mut signed_err: Option<EkCertError> = None;
    let mut sig_err: Option<EkCertError> = None;
    for (anchor, is_root) in trust.issuers_named(child.issuer().as_raw(), &issuer) {
        if path.contains(&anchor.fingerprint) {
            continue; // a loop through self-issued intermediates
        }
        if *budget == 0 {
            break;
        }
        *budget -= 1;
        let ca = parse_exact(&anchor.der).map_err(EkCertError::Malformed)?;
        if let Err(e) = verify_signature(child, &ca) {
            sig_err.get_or_insert(e);
            continue;
        }
        // CAs below this one on the path (the EK certificate is no CA).
        let cas_below = path.len().saturating_sub(1);
        let above = check_ca(&ca, cas_below)
            .and_then(|()| check_certificate(&ca, now, is_root))
            .and_then(|()| {
                if is_root {
                    return Ok(Vec::new());
                }
                if path.len() + 1 >= MAX_CHAIN {
                    return Err(EkCertError::ChainTooLong {
                        cert: anchor.subject.clone(),
                        max: MAX_CHAIN,
                    });
                }
                path.push(anchor.fingerprint);
                let up = find_path(&ca, path, trust, now, budget);
                path.pop();
                up
            });
        match above {
            Ok(mut up) => {
                up.insert(
                    0,
                    ChainEntry {
                        subject: anchor.subject.clone(),
                        fingerprint: anchor.fingerprint,
                    },
                );
                return Ok(up);
            }
            Err(e) => {
                signed_err.get_or_insert(e);
            }
        }
    }
    Err(signed_err.or(sig_err).unwrap_or(EkCertError::Untrusted {
        cert: child_subject,
        issuer,
    }))
}

/// The rules for an issuer: basicConstraints cA, a pathLenConstraint that
/// allows `cas_below` CAs under it, keyCertSign when it has a keyUsage.
fn check_ca(ca: &X509Certificate<'_>, cas_below: usize) -> Result<(), EkCertError> {
    let not_ca = |why| EkCertError::IssuerNotCa {
        cert: ca.subject().to_string(),
        why,
    };
    let bc = ca
        .basic_constraints()
        .map_err(|e| EkCertError::Malformed(format!("basicConstraints: {e}")))?;
    let Some(bc) = bc else {
        return Err(not_ca("no basicConstraints"));
    };
    if !bc.value.ca {
        return Err(not_ca("basicConstraints cA is false"));
    }
    if let Some(max) = bc.value.path_len_constraint {
        if usize::try_from(max).is_ok_and(|max| cas_below > max) {
            return Err(not_ca("its pathLenConstraint is exceeded"));
        }
    }
    let ku = ca
        .key_usage()
        .map_err(|e| EkCertError::Malformed(format!("keyUsage: {e}")))?;
    if ku.is_some_and(|ku| !ku.value.key_cert_sign()) {
        return Err(not_ca("keyUsage lacks keyCertSign"));
    }
    Ok(())
}

/// Checks that `issuer`'s key signed `child`.
fn verify_signature(
    child: &X509Certificate<'_>,
    issuer: &X509Certificate<'_>,
) -> Result<(), EkCertError> {
    let (kind, hash) = signature_algorithm(child)?;
    let invalid = || EkCertError::SignatureInvalid {
        cert: child.subject().to_string(),
        issuer: issuer.subject().to_string(),
    };
    let sig = &child.signature_value;
    if sig.unused_bits != 0 {
        return Err(invalid());
    }
    let sig: &[u8] = &sig.data;
    let digest = hash.digest(child.tbs_certificate.as_ref());
    let spki = issuer.public_key();
    let unsupported = |algorithm: String| EkCertError::UnsupportedAlgorithm {
        cert: issuer.subject().to_string(),
        algorithm,
    };
    match (
        kind,
        issuer_key(spki).map_err(|e| unsupported(e.to_string()))?,
    ) {
        (SigKind::RsaPkcs1, IssuerKey::Rsa { n, e }) => {
            let n = rsa::BigUint::from_bytes_be(n);
            if n.bits() < MIN_RSA_BITS {
                return Err(EkCertError::WeakAlgorithm {
                    cert: issuer.subject().to_string(),
                    algorithm: format!("an RSA key of {} bits", n.bits()),
                });
            }
            let key = rsa::RsaPublicKey::new_with_max_size(
                n,
                rsa::BigUint::from_bytes_be(e),
                MAX_RSA_BITS,
            )
            .map_err(|e| unsupported(format!("RSA key: {e}")))?;
            if sig.len() != rsa::traits::PublicKeyParts::size(&key) {
                return Err(invalid());
            }
            let scheme = match hash {
                Hash::Sha256 => rsa::Pkcs1v15Sign::new::<Sha256>(),
                Hash::Sha384 => rsa::Pkcs1v15Sign::new::<Sha384>(),
                Hash::Sha512 => rsa::Pkcs1v15Sign::new::<Sha512>(),
            };
            key.verify(scheme, &digest, sig).map_err(|_| invalid())
        }
        (SigKind::Ecdsa, IssuerKey::P256(point)) => {
            let key = p256::ecdsa::VerifyingKey::from_sec1_bytes(point)
                .map_err(|e| unsupported(format!("P-256 key: {e}")))?;
            let sig = p256::ecdsa::Signature::from_der(sig).map_err(|_| invalid())?;
            key.verify_prehash(&digest, &sig).map_err(|_| invalid())
        }
        (SigKind::Ecdsa, IssuerKey::P384(point)) => {
            let key = p384::ecdsa::VerifyingKey::from_sec1_bytes(point)
                .map_err(|e| unsupported(format!("P-384 key: {e}")))?;
            let sig = p384::ecdsa::Signature::from_der(sig).map_err(|_| invalid())?;
            key.verify_prehash(&digest, &sig).map_err(|_| invalid())
        }
        // An RSA signature from an EC key or the reverse.
        _ => Err(invalid()),
    }
}

/// A CA's or the EK certificate's public key.
enum IssuerKey<'a> {
    Rsa { n: &'a [u8], e: &'a [u8] },
    P256(&'a [u8]),
    P384(&'a [u8]),
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
/// id-RSAES-OAEP: the TCG EK profile allows it for RSA EKs (Infineon uses it).
const OID_RSAES_OAEP: &str = "1.2.840.113549.1.1.7";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";

/// The key of a SubjectPublicKeyInfo, or the name of what it is instead.
fn issuer_key<'a>(spki: &'a SubjectPublicKeyInfo<'a>) -> Result<IssuerKey<'a>, String> {
    let oid = spki.algorithm.algorithm.to_id_string();
    let bits: &'a [u8] = &spki.subject_public_key.data;
    match oid.as_str() {
        OID_RSA | OID_RSAES_OAEP => {
            let (_, key) =
                RSAPublicKey::from_der(bits).map_err(|e| format!("RSA public key: {e}"))?;
            Ok(IssuerKey::Rsa {
                n: key.modulus,
                e: key.exponent,
            })
        }
        OID_EC => {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .map(|o| o.to_id_string())
                .unwrap_or_default();
            match (curve.as_str(), spki.parsed()) {
                (OID_P256, Ok(PublicKey::EC(_))) => Ok(IssuerKey::P256(bits)),
                (OID_P384, Ok(PublicKey::EC(_))) => Ok(IssuerKey::P384(bits)),
                _ => Err(format!("EC curve {curve:?}")),
            }
        }
        other => Err(format!("public key algorithm {other}")),
    }
}

/// `b` without leading zero bytes.
fn strip(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b.get(start..).unwrap_or(&[])
}

/// A big-endian number as exactly `n` bytes, or `None` when it does not fit.
fn pad(b: &[u8], n: usize) -> Option<Vec<u8>> {
    let b = strip(b);
    let mut out = vec![0u8; n.checked_sub(b.len())?];
    out.extend_from_slice(b);
    Some(out)
}

/// The certified key must be the EK's.
fn key_matches(spki: &SubjectPublicKeyInfo<'_>, ek: &Public) -> Result<(), EkCertError> {
    let cert_key = issuer_key(spki).map_err(|e| EkCertError::UnsupportedAlgorithm {
        cert: "the EK certificate".into(),
        algorithm: e,
    })?;
    match (cert_key, &ek.parameters, &ek.unique) {
        (IssuerKey::Rsa { n, e }, Parameters::Rsa { exponent, .. }, Unique::Rsa(modulus)) => {
            let ek_e = if *exponent == 0 { 65537 } else { *exponent };
            if strip(n) != strip(modulus) {
                return Err(EkCertError::KeyMismatch("RSA modulus differs"));
            }
            if strip(e) != strip(&ek_e.to_be_bytes()) {
                return Err(EkCertError::KeyMismatch("RSA exponent differs"));
            }
            Ok(())
        }
        (IssuerKey::P256(point), Parameters::Ecc { curve, .. }, Unique::Ecc { x, y }) => {
            ec_matches(point, alg::NIST_P256, 32, *curve, x, y)
        }
        (IssuerKey::P384(point), Parameters::Ecc { curve, .. }, Unique::Ecc { x, y }) => {
            ec_matches(point, NIST_P384, 48, *curve, x, y)
        }
        _ => Err(EkCertError::KeyMismatch("the key types differ")),
    }
}

/// TPM_ECC_NIST_P384.
const NIST_P384: u16 = 0x0004;

fn ec_matches(
    point: &[u8],
    cert_curve: u16,
    size: usize,
    ek_curve: u16,
    x: &[u8],
    y: &[u8],
) -> Result<(), EkCertError> {
    if cert_curve != ek_curve {
        return Err(EkCertError::KeyMismatch("the EC curves differ"));
    }
    let (Some(x), Some(y)) = (pad(x, size), pad(y, size)) else {
        return Err(EkCertError::KeyMismatch(
            "the EK's point does not fit its curve",
        ));
    };
    let mut sec1 = vec![0x04];
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    if point != sec1.as_slice() {
        return Err(EkCertError::KeyMismatch("EC point differs"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    use crate::tpm::public::{marshal, Scheme, Symmetric};
    use x509_parser::pem::parse_x509_pem;

    /// The TCG default EK template's attributes.
    const EK_ATTRIBUTES: u32 = 0x0003_00b2;
    /// 9999-12-31T23:59:59Z, the fixtures' notAfter.
    const END_OF_9999: i64 = 253_402_300_799;
    /// 2026-01-01, inside every fixture's validity.
    const NOW: i64 = 1_767_225_600;

    fn der(pem: &str) -> Vec<u8> {
        parse_x509_pem(pem.as_bytes()).unwrap().1.contents
    }

    fn null() -> Scheme {
        Scheme {
            scheme: alg::NULL,
            hash: None,
        }
    }

    /// The TPMT_PUBLIC of an EK with the key certified in `pem`.
    fn ek_for(pem: &str) -> Vec<u8> {
        let d = der(pem);
        let cert = parse_exact(&d).unwrap();
        let symmetric = Symmetric {
            algorithm: alg::AES,
            details: Some((128, alg::CFB)),
        };
        match issuer_key(cert.public_key()).unwrap() {
            IssuerKey::Rsa { n, .. } => marshal(
                EK_ATTRIBUTES,
                &Parameters::Rsa {
                    symmetric,
                    scheme: null(),
                    key_bits: 2048,
                    exponent: 0,
                },
                &Unique::Rsa(strip(n).to_vec()),
            ),
            IssuerKey::P256(point) => marshal(
                EK_ATTRIBUTES,
                &Parameters::Ecc {
                    symmetric,
                    scheme: null(),
                    curve: alg::NIST_P256,
                    kdf: null(),
                },
                &Unique::Ecc {
                    x: point[1..33].to_vec(),
                    y: point[33..].to_vec(),
                },
            ),
            IssuerKey::P384(_) => panic!("no P-384 EK fixture"),
        }
    }

    fn store() -> TrustStore {
        TrustStore::from_blobs(&[ROOT_P384.as_bytes()], &[INTER_RSA.as_bytes()]).unwrap()
    }

    fn code(cert: &[u8], ek: &[u8], trust: &TrustStore, now: i64) -> &'static str {
        match verify_ek_certificate(cert, ek, trust, now) {
            Ok(_) => "ok",
            Err(e) => e.code(),
        }
    }

    #[test]
    fn a_chain_through_an_rsa_intermediate_to_a_p384_root_verifies() {
        let cert = der(EK_RSA);
        let ek = ek_for(EK_RSA);
        let v = verify_ek_certificate(&cert, &ek, &store(), NOW).unwrap();
        assert_eq!(v.subject, "CN=fixture ek");
        assert_eq!(v.issuer, "CN=Fixture EK Intermediate RSA");
        assert_eq!(v.not_after, END_OF_9999);
        assert_eq!(v.fingerprint, <[u8; 32]>::from(Sha256::digest(&cert)));
        let chain: Vec<&str> = v.chain.iter().map(|c| c.subject.as_str()).collect();
        assert_eq!(
            chain,
            ["CN=Fixture EK Intermediate RSA", "CN=Fixture EK Root P-384"]
        );
        assert_eq!(
            v.chain[1].fingerprint,
            <[u8; 32]>::from(Sha256::digest(der(ROOT_P384)))
        );
        assert_eq!(v.ek_name, Public::from_tpmt(&ek).unwrap().name);
        // The TPM2B_PUBLIC form, and NV padding after the certificate.
        let mut tpm2b = (ek.len() as u16).to_be_bytes().to_vec();
        tpm2b.extend_from_slice(&ek);
        for pad in [0x00u8, 0xff] {
            let mut padded = cert.clone();
            padded.extend_from_slice(&[pad; 100]);
            let w = verify_ek_certificate(&padded, &tpm2b, &store(), NOW).unwrap();
            assert_eq!(w, v);
        }
        let mut junk = cert.clone();
        junk.extend_from_slice(&[0, 1]);
        assert_eq!(code(&junk, &ek, &store(), NOW), "ek_cert_malformed");
        // The serialized record round-trips.
        let json = serde_json::to_string(&v).unwrap();
        assert_eq!(serde_json::from_str::<EkCertificate>(&json).unwrap(), v);
    }

    #[test]
    fn an_ecc_ek_under_a_p256_root_verifies_and_its_point_is_compared() {
        let trust = TrustStore::from_blobs(&[ROOT_P256.as_bytes()], &[]).unwrap();
        let cert = der(EK_P256);
        let ek = ek_for(EK_P256);
        let v = verify_ek_certificate(&cert, &ek, &trust, NOW).unwrap();
        assert_eq!(v.chain.len(), 1);
        // Another point on the same curve, and an RSA EK: key mismatches.
        let mut other = ek.clone();
        let last = other.len() - 1;
        other[last] ^= 1;
        assert_eq!(code(&cert, &other, &trust, NOW), "ek_cert_key_mismatch");
        assert_eq!(
            code(&cert, &ek_for(EK_RSA), &trust, NOW),
            "ek_cert_key_mismatch"
        );
    }

    #[test]
    fn every_refusal_has_its_code() {
        let cert = der(EK_RSA);
        let ek = ek_for(EK_RSA);
        let s = store();
        // Trust: nothing, the root missing, the intermediate missing, the
        // root given only as an intermediate.
        assert_eq!(
            code(&cert, &ek, &TrustStore::new(), NOW),
            "ek_cert_untrusted"
        );
        let no_root =
            TrustStore::from_blobs(&[ROOT_P256.as_bytes()], &[INTER_RSA.as_bytes()]).unwrap();
        assert_eq!(code(&cert, &ek, &no_root, NOW), "ek_cert_untrusted");
        let no_inter = TrustStore::from_blobs(&[ROOT_P384.as_bytes()], &[]).unwrap();
        let e = verify_ek_certificate(&cert, &ek, &no_inter, NOW).unwrap_err();
        assert_eq!(e.code(), "ek_cert_untrusted");
        assert!(e.to_string().contains("Fixture EK Intermediate RSA"), "{e}");
        let root_as_inter = TrustStore::from_blobs(
            &[ROOT_P256.as_bytes()],
            &[INTER_RSA.as_bytes(), ROOT_P384.as_bytes()],
        )
        .unwrap();
        assert_eq!(code(&cert, &ek, &root_as_inter, NOW), "ek_cert_untrusted");
        // Time.
        assert_eq!(code(&cert, &ek, &s, 0), "ek_cert_not_yet_valid");
        assert_eq!(code(&cert, &ek, &s, END_OF_9999), "ok");
        assert_eq!(code(&cert, &ek, &s, END_OF_9999 + 1), "ek_cert_expired");
        // Signatures: the signature itself, and the signed part.
        let mut sig = cert.clone();
        let last = sig.len() - 1;
        sig[last] ^= 1;
        assert_eq!(code(&sig, &ek, &s, NOW), "ek_cert_signature_invalid");
        let mut tbs = cert.clone();
        let at = tbs.windows(10).position(|w| w == b"fixture ek").unwrap();
        tbs[at] = b'F';
        assert_eq!(code(&tbs, &ek, &s, NOW), "ek_cert_signature_invalid");
        // Algorithms and extensions.
        let e = verify_ek_certificate(&der(EK_RSA_SHA1), &ek, &s, NOW).unwrap_err();
        assert_eq!(e.code(), "ek_cert_weak_algorithm");
        assert!(e.to_string().contains("sha1WithRSAEncryption"), "{e}");
        // RSASSA-PSS named in both AlgorithmIdentifiers (SPKI's
        // rsaEncryption ends in 01 01 01 and is left alone).
        let sha256_rsa = [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
        let mut pss = cert.clone();
        let mut swapped = 0;
        for i in 0..pss.len() - sha256_rsa.len() {
            if pss[i..i + sha256_rsa.len()] == sha256_rsa {
                pss[i + sha256_rsa.len() - 1] = 0x0a;
                swapped += 1;
            }
        }
        assert_eq!(swapped, 2);
        let e = verify_ek_certificate(&pss, &ek, &s, NOW).unwrap_err();
        assert_eq!(e.code(), "ek_cert_unsupported_algorithm");
        assert!(e.to_string().contains("RSASSA-PSS"), "{e}");
        let e = verify_ek_certificate(&der(EK_RSA_CRITICAL), &ek, &s, NOW).unwrap_err();
        assert_eq!(e.code(), "ek_cert_unsupported_extension");
        assert!(e.to_string().contains("1.2.3.4.5"), "{e}");
        // The intermediate has pathLenConstraint 0: no CA may hang below it.
        let mut with_sub = store();
        with_sub.add_intermediate(SUB_CA.as_bytes()).unwrap();
        let e = verify_ek_certificate(&der(EK_RSA_UNDER_SUB), &ek, &with_sub, NOW).unwrap_err();
        assert_eq!(e.code(), "ek_cert_issuer_not_ca", "{e}");
        assert!(e.to_string().contains("pathLenConstraint"), "{e}");
        // The key.
        assert_eq!(
            code(&cert, &ek_for(SUB_CA), &s, NOW),
            "ek_cert_key_mismatch"
        );
        assert_eq!(
            code(&cert, &ek_for(EK_P256), &s, NOW),
            "ek_cert_key_mismatch"
        );
        assert_eq!(code(&cert, &ek[..20], &s, NOW), "ek_public_malformed");
    }

    #[test]
    fn every_truncation_and_byte_flip_of_a_good_certificate_is_refused() {
        let cert = der(EK_RSA);
        let ek = ek_for(EK_RSA);
        let s = store();
        for n in 0..cert.len() {
            assert_ne!(code(&cert[..n], &ek, &s, NOW), "ok", "prefix {n}");
        }
        // The outer signatureAlgorithm (bytes 642..657) is not signed, and
        // x509-parser reads its OID without looking at the tag: a flipped
        // tag there still names the same algorithm, which is harmless.
        for i in (0..642).chain(657..cert.len()) {
            let mut c = cert.clone();
            c[i] ^= 0x01;
            assert_ne!(code(&c, &ek, &s, NOW), "ok", "byte {i} flipped");
        }
    }

    #[test]
    fn trust_store_takes_bundles_once_and_only_cas() {
        let mut s = TrustStore::new();
        let bundle = format!("# vendor roots\n{ROOT_P384}\n{ROOT_P256}");
        assert_eq!(s.add_root(bundle.as_bytes()), Ok(2));
        assert_eq!(s.add_root(&der(ROOT_P384)), Ok(0), "already there");
        assert_eq!(s.root_count(), 2);
        assert_eq!(
            s.add_intermediate(EK_RSA.as_bytes()),
            Err(TrustStoreError::NotCa("CN=fixture ek".into()))
        );
        let mut big = TrustStore::new();
        let anchors: Vec<Anchor> = (0..=MAX_ROOTS)
            .map(|i| Anchor {
                der: Vec::new(),
                subject_raw: Vec::new(),
                subject: String::new(),
                fingerprint: [i as u8; 32],
            })
            .collect();
        assert_eq!(
            add_to(&mut big.roots, anchors, "root", MAX_ROOTS),
            Err(TrustStoreError::TooMany {
                kind: "root",
                max: MAX_ROOTS
            })
        );
    }

    // Fixtures made with `openssl ca` for these tests (validity 2020-01-01
    // to 9999-12-31): a P-384 root, an RSA-2048 intermediate
    // (pathLenConstraint 0, signed ecdsa-with-SHA384) and RSA EK
    // certificates under it (SHA-256; SHA-1; with an unknown critical
    // extension 1.2.3.4.5), a sub-CA under the intermediate with an EK
    // certificate (SHA-512) under it, and a P-256 root with a P-256 EK
    // certificate.
    const ROOT_P384: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBsTCCATegAwIBAgICEAAwCgYIKoZIzj0EAwMwIDEeMBwGA1UEAwwVRml4dHVy\n\
ZSBFSyBSb290IFAtMzg0MCAXDTIwMDEwMTAwMDAwMFoYDzk5OTkxMjMxMjM1OTU5\n\
WjAgMR4wHAYDVQQDDBVGaXh0dXJlIEVLIFJvb3QgUC0zODQwdjAQBgcqhkjOPQIB\n\
BgUrgQQAIgNiAAQRx7v6xmnZk0ufVtVS3T89vNCLiSMfCBvmM3d1PDnlbmbasOwx\n\
8blEMRVAVWsp/MIJ0SfVRqJVmpuyL6T/t3bjdDbuS5RMiJAehQH9FyjrzHS+B1XY\n\
7AQLvSm1yj2kkgajQjBAMA8GA1UdEwEB/wQFMAMBAf8wDgYDVR0PAQH/BAQDAgEG\n\
MB0GA1UdDgQWBBSAdzbbtHusP5p2XsdfQ6TkX3BtVjAKBggqhkjOPQQDAwNoADBl\n\
AjEA6UZPFbICdrZBntB7NsM8nygsT5LAtPBqb0YJ00NZvoWDEsiDTuIcMA7hUGa3\n\
465XAjAdIkSuU7J8hGA4S3b9e/M2mvQdB84cpBvBgy/iWXzBaz8h2Z7Oo03HeJLO\n\
FA1dRqQ=\n\
-----END CERTIFICATE-----\n";

    const INTER_RSA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIICiDCCAg+gAwIBAgICEAEwCgYIKoZIzj0EAwMwIDEeMBwGA1UEAwwVRml4dHVy\n\
ZSBFSyBSb290IFAtMzg0MCAXDTIwMDEwMTAwMDAwMFoYDzk5OTkxMjMxMjM1OTU5\n\
WjAmMSQwIgYDVQQDDBtGaXh0dXJlIEVLIEludGVybWVkaWF0ZSBSU0EwggEiMA0G\n\
CSqGSIb3DQEBAQUAA4IBDwAwggEKAoIBAQDHh7PHll1ovqZEhiXCH6FS3d0sbzAM\n\
sMaj77Jk36H0IyOVXf/OT55+3s9aEtjw6/ut8g7buNOc1jyRDiq3yY1n5gMLO2yU\n\
mLgNIQoBjevgGaYTGB+pCihjnZ0Xykpv19XTYvyXxmtxTH5ssM3e+zZMrnuN3xQx\n\
mC9adDvz388AKsiwzvrhHoc7QP+gdGrCiv1qo+giYbWGIxCN1RTh1DUUQCZTkXAm\n\
MKWtAG25YNrldYTbvXtyT0X2pyF36RfqT5/GriZ4B0k+MrxIAOb7aY5ykw6H6re2\n\
mVQQYTpN+nNZld34ob8EAGzTF42+Y06KYKKXufNKjjUEO5BfIoM2tQlVAgMBAAGj\n\
ZjBkMBIGA1UdEwEB/wQIMAYBAf8CAQAwDgYDVR0PAQH/BAQDAgEGMB0GA1UdDgQW\n\
BBSixjjibZ5SJWHfMUPZtlCt4ui8YDAfBgNVHSMEGDAWgBSAdzbbtHusP5p2Xsdf\n\
Q6TkX3BtVjAKBggqhkjOPQQDAwNnADBkAjACPTxAQknk8UbO42aO2OCdkzFxEpIq\n\
XPcRumJJU23QXLKZEr7tsP5B1n9iacRkNbICMEDzMdQ5dzbz9ZC2BSY8r5uvkLfG\n\
CmLA2sSx496U+FIDEe7zxWNCLhoU3sw6JlBHQA==\n\
-----END CERTIFICATE-----\n";

    const EK_RSA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIDkjCCAnqgAwIBAgICEAIwDQYJKoZIhvcNAQELBQAwJjEkMCIGA1UEAwwbRml4\n\
dHVyZSBFSyBJbnRlcm1lZGlhdGUgUlNBMCAXDTIwMDEwMTAwMDAwMFoYDzk5OTkx\n\
MjMxMjM1OTU5WjAVMRMwEQYDVQQDDApmaXh0dXJlIGVrMIIBIjANBgkqhkiG9w0B\n\
AQEFAAOCAQ8AMIIBCgKCAQEA15O61iarvtkxXaCqohOZLp+jQlFEu6ak2iy69bYD\n\
uKWEhm/pecMB6SzI09Yx3lZYoe1nVZ9FQKphHhLEmnayPO6Gqh1b7z/GaXmwngtB\n\
QZVBmP7NqmdTxe9kVAuD4FNN6MDPrIMHCJcnwJODLx+kyAyQN1+8CUGL5SGgD0qQ\n\
ZfhvoSPoz5Wl0qsL74QiADKQZJPD+yBtyr8vnsbVa67SjoEwuLIxnHK3JjCwpXgi\n\
CwlB5Lj0BjdCv2gPPtbLrVgETFHXpf5f/BCH21YalzghMaGQCFXVbhCvg4ILO2LM\n\
/TalVRdNL8h7nwUrQayPtQXALD6ca5+XCG0vr0v8UgRtaQIDAQABo4HYMIHVMAwG\n\
A1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQDAgUgMBAGA1UdJQQJMAcGBWeBBQgBMGMG\n\
A1UdEQEB/wRZMFekVTBTMRswGQYFZ4EFAgEMEFVURjg6aWQ6NDY0OTU4MDAxFzAV\n\
BgVngQUCAgwMVVRGODpmaXh0dXJlMRswGQYFZ4EFAgMMEFVURjg6aWQ6MDAwMTAw\n\
MDIwHwYDVR0jBBgwFoAUosY44m2eUiVh3zFD2bZQreLovGAwHQYDVR0OBBYEFIuF\n\
/z0/QJ4ovqh08nCiMz3dz27NMA0GCSqGSIb3DQEBCwUAA4IBAQAjnWeyu5ev2F0F\n\
F2zohnmLXiWI9WJa5gXaIb4KTSwUf+Gp5KXBM2fGQTvH/VhQd3BnZ43/Tl72LPko\n\
ulcgQG9b1y9tWbSlFfHyFM28qehSUIazCPQUaF+rsfXfcCBvIGnS44CuIhWOfGpg\n\
JwJE1qU5jeiuAFfBSqvqUxX5NEtKhotfVyaNexfguot9DteFcXk/+A85ktYsrvgr\n\
Lxj0uxG5IrP/ZYKDyUN6NW78rdzCrC3AJoPoiNGuly3UMMYe3r26HJMXpSe7yNCU\n\
3zASYYfeZ0MP5GNe3xPMzc51RfOqWLijwmWk6g2PzwNu2RUiUMwsNjG45on2YL68\n\
xlFAGY0V\n\
-----END CERTIFICATE-----\n";

    const EK_RSA_SHA1: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIDkjCCAnqgAwIBAgICEAMwDQYJKoZIhvcNAQEFBQAwJjEkMCIGA1UEAwwbRml4\n\
dHVyZSBFSyBJbnRlcm1lZGlhdGUgUlNBMCAXDTIwMDEwMTAwMDAwMFoYDzk5OTkx\n\
MjMxMjM1OTU5WjAVMRMwEQYDVQQDDApmaXh0dXJlIGVrMIIBIjANBgkqhkiG9w0B\n\
AQEFAAOCAQ8AMIIBCgKCAQEA15O61iarvtkxXaCqohOZLp+jQlFEu6ak2iy69bYD\n\
uKWEhm/pecMB6SzI09Yx3lZYoe1nVZ9FQKphHhLEmnayPO6Gqh1b7z/GaXmwngtB\n\
QZVBmP7NqmdTxe9kVAuD4FNN6MDPrIMHCJcnwJODLx+kyAyQN1+8CUGL5SGgD0qQ\n\
ZfhvoSPoz5Wl0qsL74QiADKQZJPD+yBtyr8vnsbVa67SjoEwuLIxnHK3JjCwpXgi\n\
CwlB5Lj0BjdCv2gPPtbLrVgETFHXpf5f/BCH21YalzghMaGQCFXVbhCvg4ILO2LM\n\
/TalVRdNL8h7nwUrQayPtQXALD6ca5+XCG0vr0v8UgRtaQIDAQABo4HYMIHVMAwG\n\
A1UdEwEB/wQCMAAwDgYDVR0PAQH/BAQDAgUgMBAGA1UdJQQJMAcGBWeBBQgBMGMG\n\
A1UdEQEB/wRZMFekVTBTMRswGQYFZ4EFAgEMEFVURjg6aWQ6NDY0OTU4MDAxFzAV\n\
BgVngQUCAgwMVVRGODpmaXh0dXJlMRswGQYFZ4EFAgMMEFVURjg6aWQ6MDAwMTAw\n\
MDIwHwYDVR0jBBgwFoAUosY44m2eUiVh3zFD2bZQreLovGAwHQYDVR0OBBYEFIuF\n\
/z0/QJ4ovqh08nCiMz3dz27NMA0GCSqGSIb3DQEBBQUAA4IBAQApXUIWC8QD/PdC\n\
I+rfz/wfXBPcjf43WocXYdLHeKnAwsj4TtcQQePr699N2NXtFaqp2XZlgmiWgO9l\n\
QnRWjQZU92+D7jiTbNODqwZSj35Wg5cGSDT/P3Kuvr1Vi+gwfC9THq3JgGumL6nt\n\
j5DqSbpps9YcAotZmG7FlzlI7pWDgbi5eOQh6P4poLpi9oejKA6u+AtY9shoBsFI\n\
by/pvKT5r/8qjQ+MHcxvfSV6iXcdj3gRbEoekDlCXG9IIilhQkFfsV9F+Nnj12bQ\n\
dmelarwNj0312LaMvh+paCKeTWCpIqyidFCIJe2YKyrg7AzQLN7ON7Fa6Vp3Qig5\n\
qU/RBGKB\n\
-----END CERTIFICATE-----\n";

    const EK_RSA_CRITICAL: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIDKDCCAhCgAwIBAgICEAQwDQYJKoZIhvcNAQELBQAwJjEkMCIGA1UEAwwbRml4\n\
dHVyZSBFSyBJbnRlcm1lZGlhdGUgUlNBMCAXDTIwMDEwMTAwMDAwMFoYDzk5OTkx\n\
MjMxMjM1OTU5WjAVMRMwEQYDVQQDDApmaXh0dXJlIGVrMIIBIjANBgkqhkiG9w0B\n\
AQEFAAOCAQ8AMIIBCgKCAQEA15O61iarvtkxXaCqohOZLp+jQlFEu6ak2iy69bYD\n\
uKWEhm/pecMB6SzI09Yx3lZYoe1nVZ9FQKphHhLEmnayPO6Gqh1b7z/GaXmwngtB\n\
QZVBmP7NqmdTxe9kVAuD4FNN6MDPrIMHCJcnwJODLx+kyAyQN1+8CUGL5SGgD0qQ\n\
ZfhvoSPoz5Wl0qsL74QiADKQZJPD+yBtyr8vnsbVa67SjoEwuLIxnHK3JjCwpXgi\n\
CwlB5Lj0BjdCv2gPPtbLrVgETFHXpf5f/BCH21YalzghMaGQCFXVbhCvg4ILO2LM\n\
/TalVRdNL8h7nwUrQayPtQXALD6ca5+XCG0vr0v8UgRtaQIDAQABo28wbTAMBgNV\n\
HRMBAf8EAjAAMA4GA1UdDwEB/wQEAwIFIDANBgQqAwQFAQH/BAIFADAdBgNVHQ4E\n\
FgQUi4X/PT9Anii+qHTycKIzPd3Pbs0wHwYDVR0jBBgwFoAUosY44m2eUiVh3zFD\n\
2bZQreLovGAwDQYJKoZIhvcNAQELBQADggEBAMQSg9JfoQbm2mOgYa7yG6+EJOuc\n\
jXdzFHMRTEqHnnsC8hD3Z2eLPZxkf9wJa1L2S9yiptEht8HCeGgfvttCed3mzpvD\n\
d2dUgNjWnkPN+u2upRDcjk3g0Hs8vIt5CR0lcGOeDEaV0RuFYVy3jYi5/50OhFvM\n\
wmxLEg5D/AodCPF/ZCivlecdC0ThKTvqy4SPthHmVu5U710riSrgxXBdFsOmvQO5\n\
uE5ekelUY5svmmi3DrXn12bBY/5MuCw5CNcFD0Jv/EZ3C4HM5oa+B05ZgXFS543/\n\
+gIIk1aY+3NwcPcfAPkqc77e9XR46HWD1LP5HmTvi+NcMXzM+jGld35ImDE=\n\
-----END CERTIFICATE-----\n";

    const SUB_CA: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIDIzCCAgugAwIBAgICEAUwDQYJKoZIhvcNAQELBQAwJjEkMCIGA1UEAwwbRml4\n\
dHVyZSBFSyBJbnRlcm1lZGlhdGUgUlNBMCAXDTIwMDEwMTAwMDAwMFoYDzk5OTkx\n\
MjMxMjM1OTU5WjAcMRowGAYDVQQDDBFGaXh0dXJlIEVLIFN1YiBDQTCCASIwDQYJ\n\
KoZIhvcNAQEBBQADggEPADCCAQoCggEBAMEX8vZnxx5EsSEnyy+3i09800fOpidl\n\
L9HiZnR7yvFjYBwSWXEk5TozbCmr5DPBq+DdE4nBdbAnKvhMdMd6u3nxAxVpl+yS\n\
/z0n7fR/KPRZeQUsHDSWDpCmUCVPmQ+5OaNHhzo864QLy6MaZMzS37zqq4smNbLx\n\
RYcjKvbOJfTzTo+FXKtA3eg42TToJCDFy5T3PJ1w7TUJfNn5WNW0LQ8tI0Pm/PWp\n\
pvLgd0avzyY19pdIXesq0W/0kPajBfnin8O44b9CqBBoxl+/jU1HtZM4bC1BZrKs\n\
Ms70AD7vU678dr5wuLosDnxh7FAOXjq71bX6d75WzxJy+kaMe/IXSMcCAwEAAaNj\n\
MGEwDwYDVR0TAQH/BAUwAwEB/zAOBgNVHQ8BAf8EBAMCAgQwHQYDVR0OBBYEFL6l\n\
Q0aPwMZVrlN5k2lefSUc+VHGMB8GA1UdIwQYMBaAFKLGOOJtnlIlYd8xQ9m2UK3i\n\
6LxgMA0GCSqGSIb3DQEBCwUAA4IBAQCerRj7SLIROX1PJM9IU3kMF/uNh4NGmobQ\n\
tcFalV5jOMQlJx84bSUbQ1hprbnylaPy9ZnDsS/Ckp7n1cV5Kz6+XGVKkvWMqVjd\n\
9rhxWrlqiPWU9KrkXL7KnrBOzNC/Ipd8M8fZLCgPoK6Gx9Y5aqQI1dZRWvYXamPw\n\
2Tx3s6d7QgE+tu66lUr/0r9hZS2XFbpo4Li4uvkxZaRahVjKQGWaODsfL+YiX6n3\n\
DvO1QbdiBg/6Lfbs3iRP3GEixYzKH/ebTk1Uqef9StOB9dTwXSrRGVHq4QUALB6p\n\
EndJ6l4RQqgBnMEUnDYFJ9MW4Pegh8EtnbY2x+C0vtmKKCGyEbLZ\n\
-----END CERTIFICATE-----\n";

    const EK_RSA_UNDER_SUB: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIDiDCCAnCgAwIBAgICEAYwDQYJKoZIhvcNAQENBQAwHDEaMBgGA1UEAwwRRml4\n\
dHVyZSBFSyBTdWIgQ0EwIBcNMjAwMTAxMDAwMDAwWhgPOTk5OTEyMzEyMzU5NTla\n\
MBUxEzARBgNVBAMMCmZpeHR1cmUgZWswggEiMA0GCSqGSIb3DQEBAQUAA4IBDwAw\n\
ggEKAoIBAQDXk7rWJqu+2TFdoKqiE5kun6NCUUS7pqTaLLr1tgO4pYSGb+l5wwHp\n\
LMjT1jHeVlih7WdVn0VAqmEeEsSadrI87oaqHVvvP8ZpebCeC0FBlUGY/s2qZ1PF\n\
72RUC4PgU03owM+sgwcIlyfAk4MvH6TIDJA3X7wJQYvlIaAPSpBl+G+hI+jPlaXS\n\
qwvvhCIAMpBkk8P7IG3Kvy+extVrrtKOgTC4sjGccrcmMLCleCILCUHkuPQGN0K/\n\
aA8+1sutWARMUdel/l/8EIfbVhqXOCExoZAIVdVuEK+Dggs7Ysz9NqVVF00vyHuf\n\
BStBrI+1BcAsPpxrn5cIbS+vS/xSBG1pAgMBAAGjgdgwgdUwDAYDVR0TAQH/BAIw\n\
ADAOBgNVHQ8BAf8EBAMCBSAwEAYDVR0lBAkwBwYFZ4EFCAEwYwYDVR0RAQH/BFkw\n\
V6RVMFMxGzAZBgVngQUCAQwQVVRGODppZDo0NjQ5NTgwMDEXMBUGBWeBBQICDAxV\n\
VEY4OmZpeHR1cmUxGzAZBgVngQUCAwwQVVRGODppZDowMDAxMDAwMjAfBgNVHSME\n\
GDAWgBS+pUNGj8DGVa5TeZNpXn0lHPlRxjAdBgNVHQ4EFgQUi4X/PT9Anii+qHTy\n\
cKIzPd3Pbs0wDQYJKoZIhvcNAQENBQADggEBAFIyJYnHApD4lSj75YpK7Pu5QpgT\n\
OlzVTeIsrCKNwf4+VUFxDs7mYDUxHxu9nRpjJ+uAzl9LZTc45Vu9xjewqpMi2Lhq\n\
DDYXV0/Y4YLzcn3TeCHPEY329Effo5cbBi+6d0SemkMJ1GOEFNl6tKwXbF8Tokxj\n\
yfjAKBV5DePJ3uDKMJKIR2RrW3GKfRgzVHx8VqJq5ZrokpODXjvt9RJIw39FZt98\n\
APMrRM6OEOi2H0gOw0azo5Mf0odDjgX2bPG3Qt3GeLEaSTZnDLcw6MFv4ceNbdPn\n\
6izRUgd6VzkHq+xHldLN4a91RByf0+XVwhmgZcwVfHvZjIyLNiAeqaC6AiU=\n\
-----END CERTIFICATE-----\n";

    const ROOT_P256: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIBdTCCARqgAwIBAgICEAcwCgYIKoZIzj0EAwIwIDEeMBwGA1UEAwwVRml4dHVy\n\
ZSBFSyBSb290IFAtMjU2MCAXDTIwMDEwMTAwMDAwMFoYDzk5OTkxMjMxMjM1OTU5\n\
WjAgMR4wHAYDVQQDDBVGaXh0dXJlIEVLIFJvb3QgUC0yNTYwWTATBgcqhkjOPQIB\n\
BggqhkjOPQMBBwNCAARvAidBCJzMo6FpviAj+mCEftXw4uKwmv1aLgaSmbZckV6j\n\
r0sgtX7szx+WCYXHcUthOwPuuubdo/RhELvN2+Dho0IwQDAPBgNVHRMBAf8EBTAD\n\
AQH/MA4GA1UdDwEB/wQEAwIBBjAdBgNVHQ4EFgQUnIhoJfL3cPG8MlWh21ykAKv0\n\
w00wCgYIKoZIzj0EAwIDSQAwRgIhANZgbuWR8nv4xUKG7aCkrNSVCMH5/eCBJ9m5\n\
soMzOYDcAiEA3C2miKstEu9+4Bifk2mPXHdOOwUzuFRaYcRm5uOGftQ=\n\
-----END CERTIFICATE-----\n";

    const EK_P256: &str = "\
-----BEGIN CERTIFICATE-----\n\
MIIB8jCCAZigAwIBAgICEAgwCgYIKoZIzj0EAwIwIDEeMBwGA1UEAwwVRml4dHVy\n\
ZSBFSyBSb290IFAtMjU2MCAXDTIwMDEwMTAwMDAwMFoYDzk5OTkxMjMxMjM1OTU5\n\
WjAZMRcwFQYDVQQDDA5maXh0dXJlIGVjYyBlazBZMBMGByqGSM49AgEGCCqGSM49\n\
AwEHA0IABLSfIIBRmwnLKEL3ldlYhsy9oWBar0hHFzCEwfLAtmKEFslHRbkl/gbt\n\
DmdPitYwuTOsCjF/Csi6bYmrnPnL8WijgcYwgcMwDAYDVR0TAQH/BAIwADAOBgNV\n\
HQ8BAf8EBAMCAwgwYwYDVR0RAQH/BFkwV6RVMFMxGzAZBgVngQUCAQwQVVRGODpp\n\
ZDo0NjQ5NTgwMDEXMBUGBWeBBQICDAxVVEY4OmZpeHR1cmUxGzAZBgVngQUCAwwQ\n\
VVRGODppZDowMDAxMDAwMjAdBgNVHQ4EFgQU7gCZDQ8rjpeCHP551DI+N1JfT4Yw\n\
HwYDVR0jBBgwFoAUnIhoJfL3cPG8MlWh21ykAKv0w00wCgYIKoZIzj0EAwIDSAAw\n\
RQIgbgAVfGMTX7dKG6JHhDOyAvbcUPDI7uUZ8N9rANQ0xhMCIQCwGO8c5oXcjZfe\n\
Wkt+P8dP6OIDFkc/uL9Khi9f0Hn/sQ==\n\
-----END CERTIFICATE-----\n";

    #[test]
    fn garbage_and_truncations_never_panic_and_are_malformed() {
        let store = TrustStore::new();
        for junk in [
            &[][..],
            &[0x30],
            &[0x30, 0x82, 0xff, 0xff],
            &[0u8; 64],
            b"-----BEGIN CERTIFICATE-----",
        ] {
            let e = verify_ek_certificate(junk, &[], &store, 0).unwrap_err();
            assert_eq!(e.code(), "ek_cert_malformed", "{e}");
        }
        let big = vec![0x30u8; MAX_CERT_BYTES + 1];
        assert_eq!(
            verify_ek_certificate(&big, &[], &store, 0)
                .unwrap_err()
                .code(),
            "ek_cert_malformed"
        );
    }

    #[test]
    fn trust_store_refuses_junk_and_bounds_its_size() {
        let mut s = TrustStore::new();
        assert_eq!(
            s.add_root(b"not a certificate"),
            Err(TrustStoreError::Empty)
        );
        assert!(matches!(
            s.add_root(&[0x30, 0x03, 1, 2, 3]),
            Err(TrustStoreError::Malformed(_))
        ));
        assert!(matches!(
            s.add_root(&[0x30; MAX_CERT_BYTES + 1]),
            Err(TrustStoreError::TooLarge { .. })
        ));
        assert_eq!(
            s.add_root(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
            Err(TrustStoreError::NotACertificate("PRIVATE KEY".into()))
        );
        assert!(matches!(
            s.add_root(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n"),
            Err(TrustStoreError::Malformed(_))
        ));
        assert!(matches!(
            s.add_root(b"-----BEGIN CERTIFICATE-----\nAAAA\n"),
            Err(TrustStoreError::Malformed(_))
        ));
        let big = vec![b'-'; MAX_PEM_BYTES + 1];
        assert!(matches!(
            s.add_root(&big),
            Err(TrustStoreError::TooLarge { .. })
        ));
        assert_eq!(s.root_count() + s.intermediate_count(), 0);
    }

    #[test]
    fn padding_and_stripping() {
        assert_eq!(strip(&[0, 0, 1, 0]), &[1, 0]);
        assert_eq!(strip(&[0, 0]), &[] as &[u8]);
        assert_eq!(pad(&[0, 1], 3), Some(vec![0, 0, 1]));
        assert_eq!(pad(&[1, 2, 3, 4], 3), None);
    }
}
