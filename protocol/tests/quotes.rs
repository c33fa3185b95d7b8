//! The session checks against TPM structures built here and signed with
//! software keys: every refusal with its reason.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::OnceLock;

use fluxnode_protocol::tpm::attest::{self, Attest, Attested, ClockInfo, QuoteInfo};
use fluxnode_protocol::tpm::pcr::{pcr_digest, PcrSelect};
use fluxnode_protocol::tpm::public::{self, Parameters, Scheme, Symmetric, Unique, AK_ATTRIBUTES};
use fluxnode_protocol::tpm::signature::{self as sig, Signature};
use fluxnode_protocol::tpm::wire::alg;
use fluxnode_protocol::types::{PcrPolicy, PcrValues, Sha256Digest, SignedQuote};
use fluxnode_protocol::verdict::{
    check_quote_pair, extra_data, ClockTolerance, Expected, Verdict, Which, LABEL_END, LABEL_START,
};
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::signature::{SignatureEncoding as _, Signer as _};
use rsa::traits::PublicKeyParts as _;
use sha2::Sha256;

// Fixed test keys (RSA key generation is slow in debug builds), made with
// `openssl genrsa -traditional BITS`. Test-only: they sign nothing real.
const RSA_A: &str = "
-----BEGIN RSA PRIVATE KEY-----
MIIEpAIBAAKCAQEAxmDuP5b7J1tr2OcVJC97kSUPIgQOsUSBAy2jMhla2dXkgqDr
i8O4RPO93krcZqhCFVBHKVWO1C8VfiNPcCCmkbihfqNuyYY7gzMxNBrLj7+agnTC
2/HSLgFUFYh1NeyilAjUIqqhTY/XKUKIXOwRl6o1JWXIRqHywZvbn41hafND8tsO
bAsX6QUnp1ypTxmU2wQrgv/DH0dnsgO0zPLueKfSYUjBhhQrlyKpjq0mKr4kwpoq
X5JdGKcp/lgxS5JL56cP46x7UkKFWluftxoSFFyeZaeSuXRHnRaMUkbC8CNr2/ch
BQR0/3FsnDlrGrHz/CzfnJSswSRnEjtHV0y6iwIDAQABAoIBACl+ZNcQMYBN8wTv
cNCcze/SHJQ03Q3fEk0j4pq8CvC9eIqKNjqJuaVShkhUyD0AvLHQlNHkf3eKUaiM
ojUF31FjmQPwE2A7n38V2hjX8fQjU6It4gQ3VIsi4/+NB1c8I9Vq81Q89HhQueR7
ciJdjmB2zZ8A5x8/CJPOkeWRoOqUBNJVjQTpQwJ3kAWhUN3Yd6v/mI3GLDWCF1r5
h65WXmHiCgJ+JaPvx/YP2m4Hog4WGcdrT3eggCt9g+HyVoiiDYcGY1ar0VTGT7s5
UEWSrzb65BhMUvA6HP21oz20wq41DYNtj6zbP6q6GZv7ebWq9JLxn3dqHvokVRnN
MgT0PuECgYEA9+sl1ZfzWHJFOFY14x3Q0SfvQbB2zBXY5ghGOuoMmOXJPgAulweO
2RN20KfdkTgUKqDFie1kdqfCj4fJ6u69krowtJfXQNIKmcgmcrIogPfpnlH3VHRZ
U0sq6zQdIPtsFXnHdiLVxuSe1Kfbqs+KfNpsMFn//GMkMTV9US0b7ecCgYEAzNhg
v1GfVN7o0w7KxU/P3ruJXJyzDyvTaUpnvp0XP/r+oNgsKprOTphxDGj53GeRZyrG
OvKEG9owlf25Ecrau9jAyg7RazHdJi7C5JSJyuYHEyQKRaew2zlLc++fukDERBKl
oxHJc1pcL7U5Q/hMZoNFYhMduG4TDJZn1bRYUb0CgYEA2jQ7Xp2Y7xXUWtt2HmnV
quFtMfHw/XuVJhHOTnhFkiVdVJawavmZ/vGkt82ns/MZvNM4SkeJDu5kzhOD4qUy
cXwy9iBWspSsA+IoBPdNswWAt3oJKGonXKpiIhYCNU9VOCmxJwdOBPqf2SfMrbBx
gaZ1ZrEwH6Ha7vzXSaVcWa0CgYBOyb7Ud1l4NFCKtTrKj3sdaTZZF7BLWojzC3pB
t3w00J5VUTATpv1I/5sjsdDAtFkZvDsIezTS3aYoWrFvJX3iGGl2jiKAP2qXAA9Y
CcXB852vAAKvbeM5Pp1F11mxMq4KnL12riW0p4Gjm+mNuhfwqfbq1P1ubXAIPGVt
rfL2ZQKBgQDYnRtvsOBDoS/4cHqzC5XgipGj+ii4KKTNsIcGtDeC10k45otAazLe
U23QXyvr+SQk8CiCJ756vX19OcQlKU6YKIE0peNYiwFl+22gj3hPM2j666EQY/iT
XyFJdAK3yMqiSOPOyKxzURVBDcA73J8kCQybRHiKU48O92XETNtVdA==
-----END RSA PRIVATE KEY-----
";
const RSA_B: &str = "
-----BEGIN RSA PRIVATE KEY-----
MIIEogIBAAKCAQEAoVm5RfolJdfo2phIJDvzygrYpnGymbHMcWcJyrUzCGL9ENVj
X4l6kLk3gRrB01FyaRe3C5GBtnzyp0ljuZYQbUxMqtCqptriWC763d5/4OniPOcD
BDt5h2oorT0IpnLclXQRwnrnJB6etft0qHCkFQLJf8RgtFAii05B9htUpCCFEdaG
3OFKa0E4USUaPM92YBXwrdZcrFSU31gafc2J8MUrO2uXlgcIi3B45zjwrIXucmT6
CDkPGbeoI23BVkXTzX+lw8mrABo72kgIAFS4jHA0L/3dH73hIf2uuWe1MS6IfHex
cxFZN80xd3jcSRNWUicrcNNwLXtyWXoQKFy6MwIDAQABAoIBAA1PiBPIR5FAJxMF
dgobMgjsbSQKBChevRVr4ShqW1vpQqRFXk3O2yAeT4BkkzHaKbyWusCHD/Lciu4X
BVWVliRWI4sB7NoX+403zvVHujf1Q3cvvZV3TJbJwLJN8y08E4t2yFJJblER/5jW
tjCBHmAnWzUhn7KwW7EvUwy5A3oInSI9BB8q81GU7Gg1k6gn+oYvM6kugb43X3XF
xiIGyBJlQOpburZHkZDalYasyaIDnrBYLsjJk2XHllnlj+Bb9ndaSjM2FNSW66VL
yI6l5sxJxMJjDJNgCKYkppE26CAGOuSHshCnRGSKDxquyuw4uOs+vRa4uXg+IgMd
b+ES/BUCgYEA2q7YNKx+I6JTHHZ10GMmHbG0nLpqkf1C37woUH0riw8dMd4BVBSY
2HMmEkfmx7PeCEQCl9jZighT7gleXkKQwm6E2ZMpumRhmcegqhnw6VtDLSJHEZRo
BNuy9RfSAkunIJFePNOn4s3OkeZeW6V6nG7Fb9kHKsJYUXcBF390230CgYEAvOJP
xTfXcduA8WX3ewM6j8QCNVIXG+02CmidbvUDJ23AJ8lkDrWe91NOSg7K6aZHIQQJ
ExZtE7G4ASbfXFthN/JYgGfSb+bavOkJPz5qjzBkNlNaFbLYGLuQjpiW4+JEw5+w
keR08V5ZRNT8N4eCy9XnMqI/Xvcx48RoTePW+28CgYAFpjClo7Mafo4BFTpT6MvK
RpXw2ov4O3+nwfeUpLckP360lBSatHGCXe8k18CpdgcNVZxvicWM4EwywQE0FCoj
K7G44SlZzFANJfALlOH5VUc1+kW1uYy6W2aTGEtvjb7Cg57YmWsj28czU60qVusE
8YOeMRATVbPsXtOjZMKDDQKBgHSF8MwrzN9SmNNTIj9jGIeEVhBq2hLCXepB6419
3To/vKFO3kksxiqx28RYJ9nIWG0HvklmNlhF9MvRHU4umWUYPnzIj8u00RBleuzn
Jnm7Urco6JQmRqXLYDx36e4fsmg0ZYs7MuGMYOnTstzW3lu9U+mqqgl92es3SVlz
yzZFAoGAQNaxyzWuh5wHj1jPgQE3lpJV2C0cqFqTC8JhUr/TzzWQPLiA21x8uNIq
/RQVCS49X7LwywIH/EuuQZEdLQhTuyjNw1ZyUDvCwLfUOi9MGGE8ZcYLI+u2MTTV
rzUQnZShmAVaHt3DG6gJY+Vm7A7e+0MBNP9+T1O+UtMBQQR181k=
-----END RSA PRIVATE KEY-----
";
const RSA_1024: &str = "
-----BEGIN RSA PRIVATE KEY-----
MIICXgIBAAKBgQCQ+Q87Mf4Tmf2feBcsSukt+nGhNb3WEWtAkFR89oso58SybF/T
cwcuAMZVCAVku9JVNadRAXdUWwKDY9X0fFCOJAEuKqAyHpq2VYNtTUvTlV/m8dtp
2eOFklM3wqpTQlhNDPVky4IOnJzXHezOkOa4hf0WsCFTv3lLIMHCHxP7EwIDAQAB
AoGAY4hLl8Wr/kM0aP8nUcagr2uKBjeCfW16KFqvVxhh1JTDbAiSBfesjz4C7TBT
m6SENPJgTHJoPic544FwzKlpGBVB9lcGnm/eTRG5lf1tMiYwm3soK/3ZzIXgJen3
dkMrwTRY82OYeIt6Dc46tf5TF19RumCz3orN2MkcPwLOyNkCQQDA712YEY0YITPA
B/jhIuiYllhZRhYx2tVuShU6n/4Mfty0gUIbtCFvFAL9AZT/IuhdQHjzysYCFQhC
gyaE4bK9AkEAwFxDsEp25zwnl1ybmbhwQbBWVW0Z3LKEo/pSERN2llCqk8KljdJa
JNTxAcndrvUUlaxojxlsj3U6zPceSN2qDwJBAKFOP1kpq2Z2M/ckcy9/6SnR4VHa
aCoMhQ8tvywBofy+gDYmL6hL5PwiphD0JqddfxqgEb/6U6xf+0Tos+a7cJ0CQQCV
fh7MvtIxWrqaE0qJ6KC1LEmsEiHrNoGGvl9RDgM3RnGKa9clpLiRrzut3CgAdE8P
EvIfY+7Ofpi3+cT7c+lZAkEAtJEvPwNvmsuqUg29dzSvuVX0e3IQ76zrzotHhvPR
rxChWO5RxsS2SwA395thRSDh8Q1UaJg7cUloYQcYiGJ5xw==
-----END RSA PRIVATE KEY-----
";

fn rsa_key(pem: &str) -> rsa::RsaPrivateKey {
    rsa::RsaPrivateKey::from_pkcs1_pem(pem.trim()).unwrap()
}

fn rsa_a() -> &'static rsa::RsaPrivateKey {
    static K: OnceLock<rsa::RsaPrivateKey> = OnceLock::new();
    K.get_or_init(|| rsa_key(RSA_A))
}

/// A software signer standing in for the TPM's AK.
enum Signer {
    Rsa(Box<rsa::RsaPrivateKey>),
    Ecc(p256::ecdsa::SigningKey),
}

impl Signer {
    fn rsa() -> Self {
        Signer::Rsa(Box::new(rsa_a().clone()))
    }

    fn ecc(seed: u8) -> Self {
        let mut b = [0u8; 32];
        b[31] = seed;
        b[0] = 0x11;
        Signer::Ecc(p256::ecdsa::SigningKey::from_bytes(&b.into()).unwrap())
    }

    fn tpmt_public(&self, attributes: u32) -> Vec<u8> {
        let null = Symmetric {
            algorithm: alg::NULL,
            details: None,
        };
        match self {
            Signer::Rsa(k) => public::marshal(
                attributes,
                &Parameters::Rsa {
                    symmetric: null,
                    scheme: Scheme {
                        scheme: alg::RSASSA,
                        hash: Some(alg::SHA256),
                    },
                    key_bits: k.n().bits() as u16,
                    exponent: 0,
                },
                &Unique::Rsa(k.n().to_bytes_be()),
            ),
            Signer::Ecc(k) => {
                let p = k.verifying_key().to_encoded_point(false);
                public::marshal(
                    attributes,
                    &Parameters::Ecc {
                        symmetric: null,
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
                        x: p.x().unwrap().to_vec(),
                        y: p.y().unwrap().to_vec(),
                    },
                )
            }
        }
    }

    fn sign_with_hash(&self, msg: &[u8], hash: u16) -> Vec<u8> {
        match self {
            Signer::Rsa(k) => {
                let s = rsa::pkcs1v15::SigningKey::<Sha256>::new(k.as_ref().clone()).sign(msg);
                sig::marshal(&Signature::RsaSsa {
                    hash,
                    sig: s.to_vec(),
                })
            }
            Signer::Ecc(k) => {
                let s: p256::ecdsa::Signature = k.sign(msg);
                let (r, s) = s.split_bytes();
                sig::marshal(&Signature::Ecdsa {
                    hash,
                    r: r.to_vec(),
                    s: s.to_vec(),
                })
            }
        }
    }

    fn sign(&self, attest: Vec<u8>) -> SignedQuote {
        let signature = self.sign_with_hash(&attest, alg::SHA256);
        SignedQuote { attest, signature }
    }
}

const NONCE: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A consistent session: PCRs 9, 11, 12 claimed, pinned and quoted.
struct Session {
    policy: PcrPolicy,
    pcrs: PcrValues,
    start_xd: [u8; 32],
    end_xd: [u8; 32],
}

impl Session {
    fn new() -> Self {
        let mut pcrs = PcrValues::default();
        for i in [9u8, 11, 12] {
            pcrs.sha256.insert(i, Sha256Digest([i; 32]));
        }
        let mut policy = PcrPolicy {
            required: vec![9, 12],
            ..PcrPolicy::default()
        };
        policy
            .allowed
            .insert(11, vec![Sha256Digest([0xee; 32]), Sha256Digest([11; 32])]);
        let report = [0x42u8; 32];
        Session {
            policy,
            pcrs,
            start_xd: extra_data(LABEL_START, NONCE, &[0; 32]),
            end_xd: extra_data(LABEL_END, NONCE, &report),
        }
    }

    fn expected(&self) -> Expected<'_> {
        Expected {
            start_extra_data: self.start_xd,
            end_extra_data: self.end_xd,
            policy: &self.policy,
            claimed_pcrs: &self.pcrs,
            claimed_duration_ms: 60_000,
            observed_wall_ms: 61_000,
            tolerance: ClockTolerance::default(),
        }
    }

    fn attest(&self, which: Which, clock: u64) -> Attest {
        let selection = vec![PcrSelect::new(alg::SHA256, &[9, 11, 12])];
        let digest = pcr_digest(&selection, &self.pcrs).unwrap();
        Attest {
            qualified_signer: vec![0, 0x0b, 0xaa, 0xbb],
            extra_data: match which {
                Which::Start => self.start_xd.to_vec(),
                Which::End => self.end_xd.to_vec(),
            },
            clock: ClockInfo {
                clock,
                reset_count: 3,
                restart_count: 1,
                safe: true,
            },
            firmware_version: 0x0001_0002_0003_0004,
            attested: Attested::Quote(QuoteInfo {
                selection,
                pcr_digest: digest.to_vec(),
            }),
        }
    }

    /// Start and end attestations (60.5 s apart) after `edit`, signed by
    /// `signer`, checked against `signer`'s public key.
    fn check_with(
        &self,
        signer: &Signer,
        edit: impl Fn(&mut Attest, &mut Attest),
    ) -> Result<u64, Verdict> {
        let mut s = self.attest(Which::Start, 1_000_000);
        let mut e = self.attest(Which::End, 1_060_500);
        edit(&mut s, &mut e);
        let start = signer.sign(attest::marshal(&s));
        let end = signer.sign(attest::marshal(&e));
        check_quote_pair(
            &start,
            &end,
            &signer.tpmt_public(AK_ATTRIBUTES),
            &self.expected(),
        )
        .map(|a| a.elapsed_ms)
    }

    fn check(&self, edit: impl Fn(&mut Attest, &mut Attest)) -> Result<u64, Verdict> {
        self.check_with(&Signer::ecc(1), edit)
    }
}

fn quote_mut(a: &mut Attest) -> &mut QuoteInfo {
    match &mut a.attested {
        Attested::Quote(q) => q,
        Attested::Other(_) => panic!("not a quote"),
    }
}

fn code(r: Result<u64, Verdict>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(v) => {
            // Every verdict has a message, and its wire form carries both.
            let rej = v.to_rejection();
            assert_eq!(rej.code, v.code());
            assert!(!rej.message.is_empty());
            v.code()
        }
    }
}

#[test]
fn a_consistent_session_passes_with_rsa_and_ecdsa() {
    let s = Session::new();
    assert_eq!(s.check_with(&Signer::rsa(), |_, _| {}), Ok(60_500));
    assert_eq!(s.check_with(&Signer::ecc(7), |_, _| {}), Ok(60_500));
}

#[test]
fn bad_magic() {
    let s = Session::new();
    let signer = Signer::ecc(1);
    let mut b = attest::marshal(&s.attest(Which::Start, 1));
    b[0] = 0x00;
    let start = signer.sign(b);
    let end = signer.sign(attest::marshal(&s.attest(Which::End, 2)));
    let r = check_quote_pair(
        &start,
        &end,
        &signer.tpmt_public(AK_ATTRIBUTES),
        &s.expected(),
    );
    assert!(matches!(
        r,
        Err(Verdict::BadMagic {
            which: Which::Start,
            found: 0x0054_4347
        })
    ));
}

#[test]
fn get_time_and_certify_structures_are_not_quotes() {
    let s = Session::new();
    let signer = Signer::ecc(1);
    for tag in [0x8019u16, 0x8017] {
        // A GetTime / Certify attestation: same header, another body.
        let mut b = attest::marshal(&s.attest(Which::Start, 1_000_000));
        b[4..6].copy_from_slice(&tag.to_be_bytes());
        let start = signer.sign(b);
        let end = signer.sign(attest::marshal(&s.attest(Which::End, 1_060_500)));
        let r = check_quote_pair(
            &start,
            &end,
            &signer.tpmt_public(AK_ATTRIBUTES),
            &s.expected(),
        );
        let v = r.err().unwrap();
        assert_eq!(v.code(), "not_a_quote", "{v}");
        assert!(
            v.to_string()
                .contains(if tag == 0x8019 { "GetTime" } else { "CERTIFY" }),
            "{v}"
        );
    }
}

#[test]
fn wrong_extra_data() {
    let s = Session::new();
    let r =
        s.check(|_, e| e.extra_data = extra_data(LABEL_END, b"other nonce", &[0x42; 32]).to_vec());
    assert_eq!(r, Err(Verdict::ExtraDataMismatch { which: Which::End }));
    // The start binding replayed as the end one.
    let r = s.check(|st, e| e.extra_data = st.extra_data.clone());
    assert_eq!(code(r), "extra_data_mismatch");
}

#[test]
fn wrong_pcr_digest() {
    let s = Session::new();
    let r = s.check(|st, _| quote_mut(st).pcr_digest = vec![0; 32]);
    assert_eq!(
        r,
        Err(Verdict::PcrDigestMismatch {
            which: Which::Start
        })
    );
    // Digest of other values than those claimed.
    let r = s.check(|_, e| {
        let mut other = PcrValues::default();
        for i in [9u8, 11, 12] {
            other.sha256.insert(i, Sha256Digest([0xee; 32]));
        }
        let sel = quote_mut(e).selection.clone();
        quote_mut(e).pcr_digest = pcr_digest(&sel, &other).unwrap().to_vec();
    });
    assert_eq!(code(r), "pcr_digest_mismatch");
}

#[test]
fn missing_required_pcr() {
    let s = Session::new();
    let r = s.check(|st, _| {
        let sel = vec![PcrSelect::new(alg::SHA256, &[9, 11])];
        let q = quote_mut(st);
        q.pcr_digest = pcr_digest(&sel, &Session::new().pcrs).unwrap().to_vec();
        q.selection = sel;
    });
    assert_eq!(
        r,
        Err(Verdict::PcrNotSelected {
            which: Which::Start,
            index: 12
        })
    );
}

#[test]
fn pcr_value_outside_policy() {
    let mut s = Session::new();
    s.policy.allowed.insert(11, vec![Sha256Digest([0xee; 32])]);
    assert_eq!(code(s.check(|_, _| {})), "pcr_value_not_allowed");
}

#[test]
fn sha1_only_selection() {
    let s = Session::new();
    let r =
        s.check(|st, _| quote_mut(st).selection = vec![PcrSelect::new(alg::SHA1, &[9, 11, 12])]);
    assert_eq!(
        r,
        Err(Verdict::PcrSelectionSha1Only {
            which: Which::Start
        })
    );
}

#[test]
fn sha1_signature() {
    let s = Session::new();
    let signer = Signer::ecc(1);
    let a = attest::marshal(&s.attest(Which::Start, 1));
    let start = SignedQuote {
        signature: signer.sign_with_hash(&a, alg::SHA1),
        attest: a,
    };
    let end = signer.sign(attest::marshal(&s.attest(Which::End, 2)));
    let r = check_quote_pair(
        &start,
        &end,
        &signer.tpmt_public(AK_ATTRIBUTES),
        &s.expected(),
    );
    assert_eq!(r.err().map(|v| v.code()), Some("signature_sha1"));
}

#[test]
fn signature_by_another_key() {
    let s = Session::new();
    for (signer, other) in [
        (Signer::ecc(1), Signer::ecc(2)),
        (Signer::rsa(), Signer::Rsa(Box::new(rsa_key(RSA_B)))),
    ] {
        let start = other.sign(attest::marshal(&s.attest(Which::Start, 1)));
        let end = signer.sign(attest::marshal(&s.attest(Which::End, 2)));
        let r = check_quote_pair(
            &start,
            &end,
            &signer.tpmt_public(AK_ATTRIBUTES),
            &s.expected(),
        );
        assert_eq!(
            r.err(),
            Some(Verdict::SignatureInvalid {
                which: Which::Start
            })
        );
    }
    // An ECDSA signature presented for an RSA key.
    let start = Signer::ecc(1).sign(attest::marshal(&s.attest(Which::Start, 1)));
    let end = start.clone();
    let r = check_quote_pair(
        &start,
        &end,
        &Signer::rsa().tpmt_public(AK_ATTRIBUTES),
        &s.expected(),
    );
    assert_eq!(r.err().map(|v| v.code()), Some("signature_malformed"));
}

#[test]
fn unsuitable_attestation_keys() {
    let s = Session::new();
    let signer = Signer::ecc(1);
    let start = signer.sign(attest::marshal(&s.attest(Which::Start, 1)));
    // Unrestricted: could have signed a forged TPMS_ATTEST.
    let unrestricted = signer.tpmt_public(AK_ATTRIBUTES & !(1 << 16));
    let r = check_quote_pair(&start, &start, &unrestricted, &s.expected());
    assert_eq!(r.err().map(|v| v.code()), Some("ak_refused"));
    // RSA-1024.
    let weak = Signer::Rsa(Box::new(rsa_key(RSA_1024))).tpmt_public(AK_ATTRIBUTES);
    let r = check_quote_pair(&start, &start, &weak, &s.expected());
    assert!(
        matches!(
            r,
            Err(Verdict::AkRefused(sig::SignatureError::WeakRsaKey {
                bits: 1024,
                ..
            }))
        ),
        "{r:?}"
    );
}

#[test]
fn reset_and_restart_count_changes() {
    let s = Session::new();
    let r = s.check(|_, e| e.clock.reset_count += 1);
    assert_eq!(r, Err(Verdict::ResetCountChanged { start: 3, end: 4 }));
    let r = s.check(|_, e| e.clock.restart_count += 1);
    assert_eq!(r, Err(Verdict::RestartCountChanged { start: 1, end: 2 }));
}

#[test]
fn clock_going_backwards() {
    let s = Session::new();
    let r = s.check(|_, e| e.clock.clock = 999_999);
    assert_eq!(
        r,
        Err(Verdict::ClockBackwards {
            start: 1_000_000,
            end: 999_999
        })
    );
}

#[test]
fn elapsed_clock_shorter_than_claimed_or_longer_than_observed() {
    let s = Session::new();
    // 60 s claimed: 58.6 s of TPM time is beyond the 2% + 100 ms allowance.
    let r = s.check(|_, e| e.clock.clock = 1_058_600);
    assert_eq!(
        r,
        Err(Verdict::ElapsedTooShort {
            elapsed_ms: 58_600,
            claimed_ms: 60_000
        })
    );
    // Within the allowance.
    assert_eq!(s.check(|_, e| e.clock.clock = 1_059_000), Ok(59_000));
    // More than the 61 s the verifier saw pass (+ allowance).
    let r = s.check(|_, e| e.clock.clock = 1_063_000);
    assert_eq!(code(r), "elapsed_too_long");
}

#[test]
fn truncated_and_oversized_inputs() {
    let s = Session::new();
    let signer = Signer::ecc(1);
    let good = attest::marshal(&s.attest(Which::Start, 1));
    let end = signer.sign(attest::marshal(&s.attest(Which::End, 2)));
    let ak = signer.tpmt_public(AK_ATTRIBUTES);
    for bytes in [
        good[..good.len() - 1].to_vec(),
        [good.clone(), vec![0; 9]].concat(),
        vec![],
    ] {
        let r = check_quote_pair(&signer.sign(bytes), &end, &ak, &s.expected());
        assert_eq!(r.err().map(|v| v.code()), Some("attest_malformed"));
    }
    // A truncated or padded signature.
    let mut q = signer.sign(good);
    q.signature.pop();
    let r = check_quote_pair(&q, &end, &ak, &s.expected());
    assert_eq!(r.err().map(|v| v.code()), Some("signature_malformed"));
    q.signature.extend_from_slice(&[0, 0]);
    let r = check_quote_pair(&q, &end, &ak, &s.expected());
    assert_eq!(r.err().map(|v| v.code()), Some("signature_malformed"));
    // A truncated or oversized AK.
    let r = check_quote_pair(&q, &end, &ak[..ak.len() - 3], &s.expected());
    assert_eq!(r.err().map(|v| v.code()), Some("ak_refused"));
    let r = check_quote_pair(&q, &end, &[ak.clone(), vec![1]].concat(), &s.expected());
    assert_eq!(r.err().map(|v| v.code()), Some("ak_refused"));
}

#[test]
fn codes_name_the_failed_check() {
    // The codes are part of the wire protocol: renaming one breaks clients.
    let s = Session::new();
    let all = [
        s.check(|_, e| e.clock.clock = 0).err().map(|v| v.code()),
        s.check(|_, e| e.clock.reset_count = 0)
            .err()
            .map(|v| v.code()),
    ];
    assert_eq!(all, [Some("clock_backwards"), Some("reset_count_changed")]);
}

#[test]
fn every_single_byte_change_is_refused() {
    let s = Session::new();
    let signer = Signer::ecc(1);
    let start = signer.sign(attest::marshal(&s.attest(Which::Start, 1_000_000)));
    let end = signer.sign(attest::marshal(&s.attest(Which::End, 1_060_500)));
    let ak = signer.tpmt_public(AK_ATTRIBUTES);
    let exp = s.expected();
    assert!(check_quote_pair(&start, &end, &ak, &exp).is_ok());
    for i in 0..start.attest.len() {
        let mut q = start.clone();
        q.attest[i] ^= 0x01;
        assert!(
            check_quote_pair(&q, &end, &ak, &exp).is_err(),
            "attest byte {i}"
        );
    }
    for i in 0..start.signature.len() {
        let mut q = start.clone();
        q.signature[i] ^= 0x80;
        assert!(
            check_quote_pair(&q, &end, &ak, &exp).is_err(),
            "signature byte {i}"
        );
    }
    for i in 0..ak.len() {
        let mut k = ak.clone();
        k[i] ^= 0x01;
        // Refused, except for attribute bits that leave an attestation key
        // (stClear, noDA, ...): those change the AK's name, which the
        // registry binds at registration, not the key.
        let r = check_quote_pair(&start, &end, &k, &exp);
        assert!(r.is_err() || (4..8).contains(&i), "AK byte {i}");
    }
}
