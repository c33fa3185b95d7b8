//! Registration against a real (software) TPM: credentials made by this
//! crate's MakeCredential are opened by swtpm's ActivateCredential (and
//! only for the right AK on the right TPM), and swtpm's EK certificates
//! verify against the local CA that made them (and fail where they must).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{SystemTime, UNIX_EPOCH};

use fluxnode_hal::tpm::credential::CredentialBlob;
use fluxnode_hal::tpm::{AkBlob, Tpm};
use fluxnode_protocol::ekcert::{verify_ek_certificate, TrustStore};
use fluxnode_protocol::tpm::makecredential::{
    make_credential, make_credential_for_ak, Credential, SEED_SIZE,
};
use fluxnode_protocol::tpm::public::Public;
use fluxnode_testkit::swtpm::{which, Swtpm};
use rsa::rand_core::{OsRng, RngCore as _};

fn now() -> i64 {
    let s = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
    i64::try_from(s.as_secs()).unwrap()
}

fn seed() -> [u8; SEED_SIZE] {
    let mut s = [0u8; SEED_SIZE];
    OsRng.fill_bytes(&mut s);
    s
}

fn blob(c: &Credential) -> CredentialBlob {
    CredentialBlob {
        id_object: c.id_object.clone(),
        encrypted_secret: c.encrypted_secret.clone(),
    }
}

/// The EK's TPM2B_PUBLIC, a fresh AK and its name as the TPM reports it.
fn ek_and_ak(tpm: &mut Tpm) -> (Vec<u8>, AkBlob, Vec<u8>) {
    let (_, ek) = tpm.ek_public().unwrap();
    let ak = tpm.create_ak().unwrap();
    let name = hex::decode(tpm.ak_info(&ak).unwrap().name).unwrap();
    (ek, ak, name)
}

/// The harness's local CA as a trust store: root and intermediate.
fn local_ca(sw: &Swtpm) -> TrustStore {
    let root = std::fs::read(sw.ca_root_cert()).unwrap();
    let inter = std::fs::read(sw.ca_intermediate_cert()).unwrap();
    TrustStore::from_blobs(&[&root], &[&inter]).unwrap()
}

fn activation_fails(tpm: &mut Tpm, ak: &AkBlob, c: &Credential) {
    let err = tpm
        .activate_credential(ak, &blob(c))
        .unwrap_err()
        .to_string();
    assert!(err.contains("ActivateCredential"), "{err}");
}

#[test]
fn swtpm_activates_our_credentials_only_for_the_named_ak() {
    let Some(mut sw) = Swtpm::start() else { return };
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    let (ek, ak, name) = ek_and_ak(&mut tpm);
    // The name we compute from the AK's public area is the TPM's.
    assert_eq!(Public::from_tpmt(&ak.public).unwrap().name, name);

    // (a) Our MakeCredential, swtpm's ActivateCredential.
    let secret = b"fluxnode registration secret #1!";
    let c = make_credential_for_ak(&ek, &ak.public, secret, &seed(), &mut OsRng).unwrap();
    assert_eq!(tpm.activate_credential(&ak, &blob(&c)).unwrap(), secret);
    // Short secrets too, and the name-based entry point.
    let c = make_credential(&ek, &name, b"k", &seed(), &mut OsRng).unwrap();
    assert_eq!(tpm.activate_credential(&ak, &blob(&c)).unwrap(), b"k");

    // (b) A credential for another name does not open with this AK: a
    // second AK of the same TPM, and a name with one byte flipped.
    let ak2 = tpm.create_ak().unwrap();
    let c2 = make_credential_for_ak(&ek, &ak2.public, secret, &seed(), &mut OsRng).unwrap();
    activation_fails(&mut tpm, &ak, &c2);
    assert_eq!(tpm.activate_credential(&ak2, &blob(&c2)).unwrap(), secret);
    let mut flipped = name.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    let c3 = make_credential(&ek, &flipped, secret, &seed(), &mut OsRng).unwrap();
    activation_fails(&mut tpm, &ak, &c3);

    // The EK survives a power cycle: a credential made before opens after.
    let c4 = make_credential(&ek, &name, secret, &seed(), &mut OsRng).unwrap();
    drop(tpm);
    sw.restart().unwrap();
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    assert_eq!(tpm.activate_credential(&ak, &blob(&c4)).unwrap(), secret);
}

#[test]
fn swtpm_ek_certificate_verifies_against_its_local_ca_only() {
    let Some(sw) = Swtpm::start() else { return };
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    let (_, ek) = tpm.ek_public().unwrap();
    let cert = tpm
        .ek_certificate()
        .unwrap()
        .expect("swtpm_setup --create-ek-cert wrote one");

    // (d) Root and intermediate as swtpm_localca made them; the key matches.
    let v = verify_ek_certificate(&cert, &ek, &local_ca(&sw), now()).unwrap();
    assert_eq!(v.issuer, "CN=swtpm-localca");
    let chain: Vec<&str> = v.chain.iter().map(|c| c.subject.as_str()).collect();
    assert_eq!(chain, ["CN=swtpm-localca", "CN=swtpm-localca-rootca"]);
    assert_eq!(v.ek_name, Public::from_tpm2b(&ek).unwrap().name);

    // (e) Untrusted: the root without the intermediate, and an unrelated
    // root (made with openssl where it is installed).
    let root_only =
        TrustStore::from_blobs(&[&std::fs::read(sw.ca_root_cert()).unwrap()], &[]).unwrap();
    let e = verify_ek_certificate(&cert, &ek, &root_only, now()).unwrap_err();
    assert_eq!(e.code(), "ek_cert_untrusted", "{e}");
    if which("openssl").is_some() {
        let other = sw.dir().join("other-root.pem");
        let st = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args([
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                "/CN=not-the-ca",
            ])
            .args(["-days", "1", "-keyout"])
            .arg(sw.dir().join("other.key"))
            .arg("-out")
            .arg(&other)
            .output()
            .unwrap();
        assert!(st.status.success(), "{st:?}");
        let unrelated = TrustStore::from_blobs(&[&std::fs::read(&other).unwrap()], &[]).unwrap();
        let e = verify_ek_certificate(&cert, &ek, &unrelated, now()).unwrap_err();
        assert_eq!(e.code(), "ek_cert_untrusted", "{e}");
    }

    // (g) A flipped signature byte.
    let mut bad = cert.clone();
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let e = verify_ek_certificate(&bad, &ek, &local_ca(&sw), now()).unwrap_err();
    assert_eq!(e.code(), "ek_cert_signature_invalid", "{e}");
}

#[test]
fn credentials_and_certificates_do_not_cross_between_tpms() {
    let Some(one) = Swtpm::start() else { return };
    let Some(two) = Swtpm::start() else { return };
    let mut t1 = Tpm::open(&one.tcti()).unwrap();
    let mut t2 = Tpm::open(&two.tcti()).unwrap();
    let (ek1, ak1, name1) = ek_and_ak(&mut t1);
    let (_, ek2) = t2.ek_public().unwrap();
    assert_ne!(ek1, ek2);

    // (c) Encrypted to TPM #2's EK, for TPM #1's AK: TPM #1 cannot open it.
    let c = make_credential(&ek2, &name1, b"secret", &seed(), &mut OsRng).unwrap();
    activation_fails(&mut t1, &ak1, &c);
    let c = make_credential(&ek1, &name1, b"secret", &seed(), &mut OsRng).unwrap();
    assert_eq!(t1.activate_credential(&ak1, &blob(&c)).unwrap(), b"secret");

    // (f) TPM #1's genuine certificate presented with TPM #2's EK.
    let cert1 = t1.ek_certificate().unwrap().unwrap();
    let e = verify_ek_certificate(&cert1, &ek2, &local_ca(&one), now()).unwrap_err();
    assert_eq!(e.code(), "ek_cert_key_mismatch", "{e}");
    assert!(verify_ek_certificate(&cert1, &ek1, &local_ca(&one), now()).is_ok());

    // Every swtpm_localca names its CAs alike: TPM #2's CA matches TPM #1's
    // certificate by name, but its key did not sign it.
    let e = verify_ek_certificate(&cert1, &ek1, &local_ca(&two), now()).unwrap_err();
    assert_eq!(e.code(), "ek_cert_signature_invalid", "{e}");
}
