//! A software TPM standing in for a node's: an RSA-2048 EK in the TCG
//! default EK template with a certificate from a software CA, an
//! attestation key (ECDSA P-256 or RSASSA-2048, restricted), quotes
//! (TPMS_ATTEST of type quote, signed by the AK), a TPM clock that runs
//! with the wall clock, and ActivateCredential.
//!
//! Everything the registry checks is what a real TPM would produce: the
//! EK passes `makecredential::check_ek`, its certificate chains to a CA
//! the registry trusts, the AK's attributes are an attestation key's, and
//! the quotes pass every step of `verdict::check_quote_pair`. Only the
//! keys live in this process instead of a TPM.
//!
//! RSA key generation is slow (seconds per key in an unoptimised build),
//! and every simulated node needs its own EK (the registry binds one EK to
//! one node). [`EkPool`] therefore makes its keys from a few generated
//! ones: each distinct pair of their primes is another 2048-bit modulus,
//! so 23 generated keys (46 primes) give 1,035 EKs. Such keys share
//! factors and are worthless outside a load test; the base keys are
//! cached under `target/loadgen-keys/` (PKCS#8 DER) between runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use aes::cipher::{AsyncStreamCipher as _, KeyIvInit as _};
use anyhow::{bail, Context as _, Result};
use fluxnode_protocol::tpm::attest::{self, Attest, Attested, ClockInfo, QuoteInfo};
use fluxnode_protocol::tpm::makecredential::kdfa_sha256;
use fluxnode_protocol::tpm::pcr::{pcr_digest, PcrSelect};
use fluxnode_protocol::tpm::public::{self, Parameters, Scheme, Symmetric, Unique, AK_ATTRIBUTES};
use fluxnode_protocol::tpm::signature::{self, Signature};
use fluxnode_protocol::tpm::wire::alg;
use fluxnode_protocol::types::{PcrValues, SignedQuote};
use hmac::{Hmac, Mac as _};
use rsa::pkcs1::EncodeRsaPublicKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::traits::{PrivateKeyParts as _, PublicKeyParts as _};
use rsa::{BigUint, RsaPrivateKey, RsaPublicKey};
use sha2::{Digest as _, Sha256};

/// The TCG default EK template's attributes (template L-1): fixedTPM,
/// fixedParent, sensitiveDataOrigin, adminWithPolicy, restricted, decrypt.
pub const EK_ATTRIBUTES: u32 = 0x0003_00b2;

/// The TCG default EK template's authPolicy:
/// PolicySecret(TPM_RH_ENDORSEMENT), SHA-256.
pub const EK_AUTH_POLICY: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24,
    0xfd, 0x52, 0xd7, 0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];

/// The OAEP label of a credential's seed, with its NUL.
const IDENTITY_LABEL: &str = "IDENTITY\0";

/// The EK's TPM2B_PUBLIC for `key`: the TCG default EK template
/// (RSA-2048, nameAlg SHA-256, AES-128-CFB, NULL scheme, exponent 0 for
/// 65537) with the key's modulus as its unique field.
pub fn ek_tpm2b_public(key: &RsaPublicKey) -> Vec<u8> {
    let modulus = key.n().to_bytes_be();
    let mut t = Vec::with_capacity(64 + modulus.len());
    t.extend_from_slice(&alg::RSA.to_be_bytes());
    t.extend_from_slice(&alg::SHA256.to_be_bytes());
    t.extend_from_slice(&EK_ATTRIBUTES.to_be_bytes());
    t.extend_from_slice(&(EK_AUTH_POLICY.len() as u16).to_be_bytes());
    t.extend_from_slice(&EK_AUTH_POLICY);
    t.extend_from_slice(&alg::AES.to_be_bytes());
    t.extend_from_slice(&128u16.to_be_bytes());
    t.extend_from_slice(&alg::CFB.to_be_bytes());
    t.extend_from_slice(&alg::NULL.to_be_bytes());
    t.extend_from_slice(&2048u16.to_be_bytes());
    t.extend_from_slice(&0u32.to_be_bytes());
    // A 2048-bit modulus is 256 bytes: the cast cannot truncate.
    t.extend_from_slice(&(modulus.len() as u16).to_be_bytes());
    t.extend_from_slice(&modulus);
    let mut out = (t.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&t);
    out
}

/// EKs for simulated nodes, made from the primes of a few generated RSA
/// keys (see the module's documentation).
#[derive(Debug, Clone)]
pub struct EkPool {
    primes: Vec<BigUint>,
}

/// Number of distinct pairs of `p` primes.
fn pairs(p: usize) -> usize {
    p * p.saturating_sub(1) / 2
}

/// Base keys (two primes each) needed for `keys` distinct pairs.
pub fn base_keys_for(keys: usize) -> usize {
    let mut p = 2;
    while pairs(p) < keys {
        p += 1;
    }
    p.div_ceil(2)
}

impl EkPool {
    /// A pool from base keys (their primes, duplicates dropped).
    pub fn from_keys(keys: &[RsaPrivateKey]) -> Result<Self> {
        let mut primes: Vec<BigUint> = Vec::new();
        for k in keys {
            if k.size() != 256 || k.primes().len() != 2 {
                bail!("base keys must be two-prime RSA-2048 keys");
            }
            for p in k.primes() {
                if !primes.contains(p) {
                    primes.push(p.clone());
                }
            }
        }
        Ok(EkPool { primes })
    }

    /// A pool from a bundle of PKCS#8 PEM base keys (fixed test keys);
    /// text outside the PEM blocks is ignored.
    pub fn from_pem_bundle(text: &str) -> Result<Self> {
        const END: &str = "-----END PRIVATE KEY-----";
        let mut keys = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("-----BEGIN PRIVATE KEY-----") {
            let block = &rest[start..];
            let end = block
                .find(END)
                .context("a PEM block without its END line")?
                + END.len();
            keys.push(
                RsaPrivateKey::from_pkcs8_pem(&block[..end]).context("parsing a PKCS#8 key")?,
            );
            rest = &block[end..];
        }
        Self::from_keys(&keys)
    }

    /// Loads the base keys cached in `dir` (`ek-base-NNN.der`, PKCS#8 DER),
    /// generating (in parallel, then saving) those missing for `keys` EKs.
    pub fn load_or_generate(dir: &Path, keys: usize, progress: bool) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let want = base_keys_for(keys);
        let path = |i: usize| dir.join(format!("ek-base-{i:03}.der"));
        let mut have: Vec<Option<RsaPrivateKey>> = Vec::with_capacity(want);
        for i in 0..want {
            let p = path(i);
            have.push(match std::fs::read(&p) {
                Ok(der) => Some(
                    RsaPrivateKey::from_pkcs8_der(&der)
                        .with_context(|| format!("{}: not a PKCS#8 RSA key", p.display()))?,
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
                Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
            });
        }
        let missing: Vec<usize> = (0..want).filter(|&i| have[i].is_none()).collect();
        if !missing.is_empty() {
            if progress {
                eprintln!(
                    "loadgen: generating {} RSA-2048 base keys into {} (once; {} EKs from {} keys)",
                    missing.len(),
                    dir.display(),
                    pairs(want * 2),
                    want
                );
            }
            let next = AtomicUsize::new(0);
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
            let made: Vec<Result<Vec<(usize, RsaPrivateKey)>>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        s.spawn(|| {
                            let mut out = Vec::new();
                            loop {
                                let j = next.fetch_add(1, Ordering::Relaxed);
                                let Some(&i) = missing.get(j) else { break };
                                let k = RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                                    .context("generating an RSA-2048 key")?;
                                let der = k.to_pkcs8_der().context("encoding a key")?;
                                let tmp = dir.join(format!(".ek-base-{i:03}.tmp"));
                                std::fs::write(&tmp, der.as_bytes())
                                    .with_context(|| format!("writing {}", tmp.display()))?;
                                std::fs::rename(&tmp, path(i))
                                    .with_context(|| format!("renaming {}", tmp.display()))?;
                                out.push((i, k));
                            }
                            Ok(out)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|_| Err(anyhow::anyhow!("a key thread panicked")))
                    })
                    .collect()
            });
            for r in made {
                for (i, k) in r? {
                    have[i] = Some(k);
                }
            }
        }
        let base: Vec<RsaPrivateKey> = have.into_iter().flatten().collect();
        let pool = Self::from_keys(&base)?;
        if pool.capacity() < keys {
            bail!(
                "{} EKs from the keys in {}, {keys} needed (duplicate keys?)",
                pool.capacity(),
                dir.display()
            );
        }
        Ok(pool)
    }

    /// How many distinct EKs the pool holds.
    pub fn capacity(&self) -> usize {
        pairs(self.primes.len())
    }

    /// EK number `i` (0 ≤ i < [`EkPool::capacity`]): the pair of primes
    /// (a, b), a < b, in the order b = 1, 2, ...; a = 0..b.
    pub fn key(&self, i: usize) -> Result<RsaPrivateKey> {
        if i >= self.capacity() {
            bail!(
                "EK {i} asked of a pool of {} (generate more base keys)",
                self.capacity()
            );
        }
        let mut b = 1;
        while pairs(b + 1) <= i {
            b += 1;
        }
        let a = i - pairs(b);
        let (p, q) = (&self.primes[a], &self.primes[b]);
        let key = RsaPrivateKey::from_p_q(p.clone(), q.clone(), BigUint::from(65_537u32))
            .context("making an RSA key from two pool primes")?;
        if key.n().bits() != 2048 {
            bail!(
                "pool primes {a} and {b} give a {}-bit modulus",
                key.n().bits()
            );
        }
        Ok(key)
    }
}

/// The default cache of generated base keys: `<target>/loadgen-keys`.
pub fn default_key_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("loadgen-keys")
}

/// The RSA public key as rcgen needs it for an EK certificate's
/// SubjectPublicKeyInfo (rsaEncryption, PKCS#1 RSAPublicKey).
struct RsaSpki(Vec<u8>);

impl rcgen::PublicKeyData for RsaSpki {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &rcgen::SignatureAlgorithm {
        &rcgen::PKCS_RSA_SHA256
    }
}

/// A software EK certificate authority (ECDSA P-256, made at start), as
/// a TPM vendor's: the registry gets its certificate as a trusted root.
pub struct EkCa {
    key: rcgen::KeyPair,
    cert: rcgen::Certificate,
    serial: AtomicUsize,
}

impl std::fmt::Debug for EkCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EkCa")
    }
}

impl EkCa {
    /// A new CA, `CN=fluxnode-loadgen EK CA`.
    pub fn new() -> Result<Self> {
        let key = rcgen::KeyPair::generate().context("generating the EK CA key")?;
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).context("CA params")?;
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "fluxnode-loadgen EK CA");
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = p.self_signed(&key).context("signing the EK CA")?;
        Ok(EkCa {
            key,
            cert,
            serial: AtomicUsize::new(1),
        })
    }

    /// The CA certificate, PEM (what goes into the registry's `ek-ca/`).
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// An EK certificate (DER) for `ek`, signed by this CA.
    pub fn issue(&self, ek: &RsaPublicKey) -> Result<Vec<u8>> {
        let serial = self.serial.fetch_add(1, Ordering::Relaxed);
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).context("EK params")?;
        p.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("fluxnode-loadgen simulated TPM {serial}"),
        );
        p.serial_number = Some(rcgen::SerialNumber::from(serial as u64));
        let spki = RsaSpki(
            ek.to_pkcs1_der()
                .context("encoding the EK's public key")?
                .as_bytes()
                .to_vec(),
        );
        let cert = p
            .signed_by(&spki, &self.cert, &self.key)
            .context("signing an EK certificate")?;
        Ok(cert.der().to_vec())
    }
}

/// Which kind of attestation key a simulated TPM has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AkKind {
    /// ECDSA P-256 with SHA-256 (fast to sign).
    Ecc,
    /// RSASSA-PKCS1-v1_5 RSA-2048 with SHA-256 (what hal's `create_ak` makes).
    Rsa,
}

impl std::str::FromStr for AkKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "ecc" | "p256" | "ecdsa" => Ok(AkKind::Ecc),
            "rsa" => Ok(AkKind::Rsa),
            other => Err(format!("AK kind {other:?}: use ecc or rsa")),
        }
    }
}

impl std::fmt::Display for AkKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AkKind::Ecc => "ecdsa-p256",
            AkKind::Rsa => "rsassa-2048",
        })
    }
}

/// The AK's private half.
enum AkKey {
    Ecc(p256::ecdsa::SigningKey),
    Rsa(Box<rsa::pkcs1v15::SigningKey<Sha256>>),
}

/// An attestation key: its signer and its TPMT_PUBLIC.
pub struct Ak {
    key: AkKey,
    public: Vec<u8>,
    name: Vec<u8>,
}

impl std::fmt::Debug for Ak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ak({})", hex::encode(&self.name))
    }
}

impl Ak {
    /// A fresh ECDSA P-256 AK.
    pub fn ecc() -> Result<Self> {
        let key = loop {
            let mut b = [0u8; 32];
            getrandom::getrandom(&mut b).context("reading the random source")?;
            if let Ok(k) = p256::ecdsa::SigningKey::from_bytes(&b.into()) {
                break k;
            }
        };
        let point = key.verifying_key().to_encoded_point(false);
        let (Some(x), Some(y)) = (point.x(), point.y()) else {
            bail!("a P-256 public key without coordinates");
        };
        let public = public::marshal(
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
                x: x.to_vec(),
                y: y.to_vec(),
            },
        );
        Ok(Self::with_public(AkKey::Ecc(key), public))
    }

    /// An RSASSA-2048 AK with private key `key`.
    pub fn rsa(key: RsaPrivateKey) -> Result<Self> {
        let bits = u16::try_from(key.n().bits()).context("RSA key size")?;
        let public = public::marshal(
            AK_ATTRIBUTES,
            &Parameters::Rsa {
                symmetric: Symmetric {
                    algorithm: alg::NULL,
                    details: None,
                },
                scheme: Scheme {
                    scheme: alg::RSASSA,
                    hash: Some(alg::SHA256),
                },
                key_bits: bits,
                exponent: 0,
            },
            &Unique::Rsa(key.n().to_bytes_be()),
        );
        Ok(Self::with_public(
            AkKey::Rsa(Box::new(rsa::pkcs1v15::SigningKey::<Sha256>::new(key))),
            public,
        ))
    }

    fn with_public(key: AkKey, public: Vec<u8>) -> Self {
        let mut name = alg::SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(&Sha256::digest(&public));
        Ak { key, public, name }
    }

    /// TPMT_PUBLIC, as a TPM returns it.
    pub fn public(&self) -> &[u8] {
        &self.public
    }

    /// The TPM name: nameAlg ‖ SHA-256(TPMT_PUBLIC).
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    /// TPMT_SIGNATURE over `message` (what TPM2_Quote's signature is).
    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match &self.key {
            AkKey::Ecc(k) => {
                let s: p256::ecdsa::Signature = k.sign(message);
                let (r, s) = s.split_bytes();
                signature::marshal(&Signature::Ecdsa {
                    hash: alg::SHA256,
                    r: r.to_vec(),
                    s: s.to_vec(),
                })
            }
            AkKey::Rsa(k) => signature::marshal(&Signature::RsaSsa {
                hash: alg::SHA256,
                sig: k.sign(message).to_vec(),
            }),
        }
    }
}

/// A node's TPM, in software.
pub struct SoftTpm {
    ek: RsaPrivateKey,
    ek_public: Vec<u8>,
    ek_certificate: Vec<u8>,
    ak: Ak,
    origin: Instant,
    clock_base_ms: u64,
    reset_count: u32,
    restart_count: u32,
}

impl std::fmt::Debug for SoftTpm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SoftTpm(ak {})", hex::encode(self.ak.name()))
    }
}

impl SoftTpm {
    /// A TPM with EK `ek` (certified by `ca`) and attestation key `ak`;
    /// its clock starts at `clock_base_ms` now.
    pub fn new(ek: RsaPrivateKey, ca: &EkCa, ak: Ak, clock_base_ms: u64) -> Result<Self> {
        let ek_public = ek_tpm2b_public(&ek.to_public_key());
        let ek_certificate = ca.issue(&ek.to_public_key())?;
        Ok(SoftTpm {
            ek,
            ek_public,
            ek_certificate,
            ak,
            origin: Instant::now(),
            clock_base_ms,
            reset_count: 7,
            restart_count: 0,
        })
    }

    /// The EK's TPM2B_PUBLIC.
    pub fn ek_public(&self) -> &[u8] {
        &self.ek_public
    }

    /// The EK certificate, DER.
    pub fn ek_certificate(&self) -> &[u8] {
        &self.ek_certificate
    }

    /// The AK.
    pub fn ak(&self) -> &Ak {
        &self.ak
    }

    /// TPMS_CLOCK_INFO.clock now: milliseconds, moving with the wall clock.
    pub fn clock_ms(&self) -> u64 {
        self.clock_base_ms
            .saturating_add(u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX))
    }

    /// TPM2_Quote over the SHA-256 PCRs `pcrs` (whose values are
    /// `values`) with qualifying data `extra_data`, at the current clock.
    pub fn quote(&self, pcrs: &[u8], values: &PcrValues, extra_data: &[u8]) -> Result<SignedQuote> {
        self.quote_at(self.clock_ms(), pcrs, values, extra_data)
    }

    /// [`SoftTpm::quote`] with the clock at `clock_ms` (recorded evidence).
    pub fn quote_at(
        &self,
        clock_ms: u64,
        pcrs: &[u8],
        values: &PcrValues,
        extra_data: &[u8],
    ) -> Result<SignedQuote> {
        let selection = vec![PcrSelect::new(alg::SHA256, pcrs)];
        let digest = pcr_digest(&selection, values)
            .map_err(|e| anyhow::anyhow!("PCR digest of the claimed values: {e}"))?;
        let a = Attest {
            qualified_signer: self.ak.name().to_vec(),
            extra_data: extra_data.to_vec(),
            clock: ClockInfo {
                clock: clock_ms,
                reset_count: self.reset_count,
                restart_count: self.restart_count,
                safe: true,
            },
            firmware_version: 0x2023_0412_0000_0001,
            attested: Attested::Quote(QuoteInfo {
                selection,
                pcr_digest: digest.to_vec(),
            }),
        };
        let attest = attest::marshal(&a);
        let signature = self.ak.sign(&attest);
        Ok(SignedQuote { attest, signature })
    }

    /// TPM2_ActivateCredential with the AK loaded: the secret of a
    /// credential made for this EK and this AK's name (TPM 2.0 Part 1,
    /// §24; the inverse of `makecredential::make_credential`).
    pub fn activate_credential(
        &self,
        id_object: &[u8],
        encrypted_secret: &[u8],
    ) -> Result<Vec<u8>> {
        let seed = self
            .ek
            .decrypt(
                rsa::Oaep::new_with_label::<Sha256, _>(IDENTITY_LABEL),
                encrypted_secret,
            )
            .context("the credential's seed does not decrypt with this EK")?;
        let name = self.ak.name();
        let hmac_key: [u8; 32] =
            kdfa_sha256(&seed, b"INTEGRITY", b"", b"").map_err(|e| anyhow::anyhow!("KDFa: {e}"))?;
        let Some((size, rest)) = id_object.split_first_chunk::<2>() else {
            bail!("idObject shorter than its integrity size");
        };
        let hmac_len = usize::from(u16::from_be_bytes(*size));
        if hmac_len != 32 || rest.len() < 32 {
            bail!("idObject's integrity HMAC is not 32 bytes");
        }
        let (outer, enc) = rest.split_at(32);
        let mut mac = Hmac::<Sha256>::new_from_slice(&hmac_key)
            .map_err(|e| anyhow::anyhow!("HMAC key: {e}"))?;
        mac.update(enc);
        mac.update(name);
        mac.verify_slice(outer).map_err(|_| {
            anyhow::anyhow!("integrity check failed: the credential is not for this AK")
        })?;
        let sym: [u8; 16] =
            kdfa_sha256(&seed, b"STORAGE", name, b"").map_err(|e| anyhow::anyhow!("KDFa: {e}"))?;
        let mut plain = enc.to_vec();
        cfb_mode::Decryptor::<aes::Aes128>::new(&sym.into(), &[0u8; 16].into()).decrypt(&mut plain);
        let Some((len, secret)) = plain.split_first_chunk::<2>() else {
            bail!("encIdentity shorter than its size");
        };
        if usize::from(u16::from_be_bytes(*len)) != secret.len() {
            bail!("encIdentity's size does not match its contents");
        }
        Ok(secret.to_vec())
    }
}
