//! The software TPM against the protocol's own checks: the EK is a TCG
//! default EK, its certificate chains to the software CA, a credential
//! made by the registry's MakeCredential activates, and the recorded
//! evidence of `verify` passes every check with both AK kinds.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use fluxnode_loadgen::softnode::{Ak, AkKind, EkCa, EkPool, SoftTpm};
use fluxnode_loadgen::verify;
use fluxnode_protocol::ekcert::{self, TrustStore};
use fluxnode_protocol::session::BenchProfile;
use fluxnode_protocol::tpm::makecredential::{self, ek_public_from_bytes};

const KEYS: &str = include_str!("fixtures/ek-base.pem");

#[test]
fn the_ek_its_certificate_and_activation_pass_the_registrys_checks() {
    let pool = EkPool::from_pem_bundle(KEYS).unwrap();
    assert_eq!(pool.capacity(), 28);
    let ca = EkCa::new().unwrap();
    let tpm = SoftTpm::new(pool.key(3).unwrap(), &ca, Ak::ecc().unwrap(), 1_000).unwrap();
    makecredential::check_ek(&ek_public_from_bytes(tpm.ek_public()).unwrap()).unwrap();

    let mut trust = TrustStore::default();
    trust.add_root(ca.pem().as_bytes()).unwrap();
    let now = 1_900_000_000;
    let c =
        ekcert::verify_ek_certificate(tpm.ek_certificate(), tpm.ek_public(), &trust, now).unwrap();
    assert!(c.issuer.contains("fluxnode-loadgen EK CA"), "{}", c.issuer);
    // Another TPM's EK does not match this certificate.
    let other = SoftTpm::new(pool.key(4).unwrap(), &ca, Ak::ecc().unwrap(), 1_000).unwrap();
    let e = ekcert::verify_ek_certificate(tpm.ek_certificate(), other.ek_public(), &trust, now)
        .unwrap_err();
    assert_eq!(e.code(), "ek_cert_key_mismatch");

    let secret = b"0123456789abcdef0123456789abcdef";
    let cred = makecredential::make_credential_for_ak(
        tpm.ek_public(),
        tpm.ak().public(),
        secret,
        &[9; 32],
        &mut rsa::rand_core::OsRng,
    )
    .unwrap();
    let got = tpm
        .activate_credential(&cred.id_object, &cred.encrypted_secret)
        .unwrap();
    assert_eq!(got, secret);
    // Bound to the AK: the other TPM (other EK) cannot open it, and a
    // credential for another AK fails the integrity check.
    assert!(other
        .activate_credential(&cred.id_object, &cred.encrypted_secret)
        .is_err());
    let for_other_ak = makecredential::make_credential_for_ak(
        tpm.ek_public(),
        other.ak().public(),
        secret,
        &[9; 32],
        &mut rsa::rand_core::OsRng,
    )
    .unwrap();
    let e = tpm
        .activate_credential(&for_other_ak.id_object, &for_other_ak.encrypted_secret)
        .unwrap_err();
    assert!(e.to_string().contains("integrity"), "{e}");

    // Every EK of the pool is distinct and 2048 bits.
    let eks: std::collections::BTreeSet<Vec<u8>> = (0..pool.capacity())
        .map(|i| {
            let k = pool.key(i).unwrap();
            fluxnode_loadgen::softnode::ek_tpm2b_public(&k.to_public_key())
        })
        .collect();
    assert_eq!(eks.len(), 28);
    assert!(pool.key(28).is_err());
}

#[test]
fn recorded_evidence_passes_every_check_with_both_ak_kinds() {
    let pool = EkPool::from_pem_bundle(KEYS).unwrap();
    for kind in [AkKind::Ecc, AkKind::Rsa] {
        let f = verify::measure(kind, &BenchProfile::quick(), 3, 2, 1, &pool).unwrap();
        assert!(f.quote_pair.per_s > 0.0 && f.openings.per_s > 0.0, "{kind}");
    }
}
