//! The TPM against a real swtpm (with an EK certificate from swtpm's local
//! CA), checked by independent tools: openssl for the certificate chain,
//! tpm2-tools for quotes (`tpm2_checkquote`) and credentials
//! (`tpm2_makecredential`).
#![cfg(feature = "tpm")]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use fluxnode_hal::inventory::{self, ProbeOptions, Roots};
use fluxnode_hal::tpm::credential::CredentialBlob;
use fluxnode_hal::tpm::pcr::PcrSelection;
use fluxnode_hal::tpm::{keys, AkBlob, Tpm};
use fluxnode_testkit::swtpm::Swtpm;

/// A manufactured swtpm (EK + EK certificate + platform certificate from
/// its own local CA), from the shared harness. `None` (after saying why)
/// when swtpm or the tools these tests check with are not available; as
/// root, missing tools are installed first.
fn start() -> Option<Swtpm> {
    for (prog, pkg) in [
        ("swtpm", "swtpm"),
        ("swtpm_setup", "swtpm-tools"),
        ("tpm2_checkquote", "tpm2-tools"),
        ("openssl", "openssl"),
    ] {
        if !common::ensure_tool(prog, pkg) {
            return None;
        }
    }
    Swtpm::start()
}

/// A scratch file in the TPM's directory.
fn path(sw: &Swtpm, name: &str) -> PathBuf {
    sw.dir().join(name)
}

fn tpm(sw: &Swtpm) -> Tpm {
    Tpm::open(&sw.tcti()).unwrap()
}

fn run_ok(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn ek_certificate_parses_and_chains_to_the_swtpm_local_ca() {
    let Some(sw) = start() else { return };
    let der = tpm(&sw)
        .ek_certificate()
        .unwrap()
        .expect("swtpm_setup --create-ek-cert wrote one");
    let summary = keys::describe_certificate(&der).unwrap();
    assert!(summary.issuer.contains("swtpm-localca"), "{summary:?}");
    let ek = path(&sw, "ek.der");
    std::fs::write(&ek, &der).unwrap();
    let pem = path(&sw, "ek.pem");
    assert!(
        run_ok(
            Command::new("openssl")
                .args(["x509", "-inform", "der", "-in"])
                .arg(&ek)
                .arg("-out")
                .arg(&pem)
        )
        .0
    );
    let verify = |root: &Path| {
        run_ok(
            Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(root)
                .arg("-untrusted")
                .arg(sw.ca_intermediate_cert())
                .arg(&pem),
        )
    };
    let (ok, text) = verify(&sw.ca_root_cert());
    assert!(ok, "EK certificate does not chain to the local CA: {text}");
    // And it does not chain to an unrelated root (the check can fail).
    let other = path(&sw, "other-root.pem");
    let (ok, _) = run_ok(
        Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=not-the-ca",
                "-days",
                "1",
                "-keyout",
            ])
            .arg(path(&sw, "other.key"))
            .arg("-out")
            .arg(&other),
    );
    assert!(ok);
    assert!(
        !verify(&other).0,
        "EK certificate chained to an unrelated root"
    );
}

#[test]
fn ak_is_a_restricted_signing_key_and_reloads_from_its_blob() {
    let Some(mut sw) = start() else { return };
    let blob_path = path(&sw, "ak.json");
    let name = {
        let mut t = tpm(&sw);
        let blob = t.create_ak().unwrap();
        blob.save(&blob_path).unwrap();
        // The node's identity: readable by its owner only, whatever the umask.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&blob_path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "AK blob mode {mode:o}");
        let info = t.ak_info(&blob).unwrap();
        let a = info.attributes;
        assert!(
            a.restricted
                && a.sign
                && a.fixed_tpm
                && a.fixed_parent
                && a.sensitive_data_origin
                && !a.decrypt,
            "{a:?}"
        );
        assert!(a.is_attestation_key());
        // A verifier, from the public part alone, gets the same name and attributes.
        let (name, attrs) =
            keys::inspect_public(&hex::decode(&info.tpm2b_public).unwrap()).unwrap();
        assert_eq!((name.as_str(), attrs), (info.name.as_str(), a));
        // The EK is a decrypt key, not an attestation key: the check can fail.
        let (_, ek_pub) = t.ek_public().unwrap();
        assert!(!keys::inspect_public(&ek_pub)
            .unwrap()
            .1
            .is_attestation_key());
        info.name
    };
    // Reboot: a power cycle of the same TPM, the blob from disk, the same key.
    sw.restart().unwrap();
    let again = tpm(&sw)
        .ak_info(&AkBlob::load(&blob_path).unwrap())
        .unwrap();
    assert_eq!(again.name, name);
    // Repeated loads must not leak transient handles (swtpm has 3 slots).
    let mut t = tpm(&sw);
    let blob = AkBlob::load(&blob_path).unwrap();
    for _ in 0..5 {
        t.ak_info(&blob).unwrap();
    }
}

#[test]
fn quote_is_accepted_by_tpm2_checkquote_and_rejected_with_a_wrong_nonce() {
    let Some(sw) = start() else { return };
    let mut t = tpm(&sw);
    let blob = t.create_ak().unwrap();
    let info = t.ak_info(&blob).unwrap();
    std::fs::write(path(&sw, "ak.pem"), &info.pem).unwrap();
    // Make the PCRs non-trivial first (tpm2-tools talks to the same swtpm).
    let port = sw.port();
    let (ok, text) = run_ok(Command::new("tpm2_pcrextend").args([
        "-T",
        &format!("swtpm:port={port}"),
        &format!("16:sha256={}", "ab".repeat(32)),
    ]));
    assert!(ok, "tpm2_pcrextend: {text}");
    let nonce = b"fluxnode-test-nonce-0123456789";
    let sel: PcrSelection = "sha256:0,7,16".parse().unwrap();
    let q = t.quote(&blob, &sel, nonce).unwrap();
    assert_eq!(q.extra_data, nonce);
    assert_eq!(q.pcrs.len(), 3);
    assert_ne!(q.pcrs[2].value, vec![0u8; 32], "PCR 16 was extended");
    for (name, bytes) in [
        ("quote.msg", &q.attest),
        ("quote.sig", &q.signature),
        ("quote.pcrs", &q.pcr_values),
    ] {
        std::fs::write(path(&sw, name), bytes).unwrap();
    }
    let check = |nonce_hex: &str, pcrs: &str| {
        run_ok(
            Command::new("tpm2_checkquote")
                .arg("-u")
                .arg(path(&sw, "ak.pem"))
                .arg("-m")
                .arg(path(&sw, "quote.msg"))
                .arg("-s")
                .arg(path(&sw, "quote.sig"))
                .arg("-f")
                .arg(path(&sw, pcrs))
                .args(["-l", &q.selection, "-g", "sha256", "-q", nonce_hex]),
        )
    };
    let (ok, text) = check(&hex::encode(nonce), "quote.pcrs");
    assert!(ok, "tpm2_checkquote rejected our quote: {text}");
    let mut wrong = nonce.to_vec();
    wrong[0] ^= 1;
    assert!(
        !check(&hex::encode(&wrong), "quote.pcrs").0,
        "tpm2_checkquote accepted a wrong nonce"
    );
    let mut bad_pcrs = q.pcr_values.clone();
    bad_pcrs[0] ^= 1;
    std::fs::write(path(&sw, "bad.pcrs"), &bad_pcrs).unwrap();
    assert!(
        !check(&hex::encode(nonce), "bad.pcrs").0,
        "tpm2_checkquote accepted tampered PCR values"
    );
}

#[test]
fn activate_credential_round_trips_a_tpm2_makecredential_blob() {
    let Some(sw) = start() else { return };
    let mut t = tpm(&sw);
    let blob = t.create_ak().unwrap();
    let info = t.ak_info(&blob).unwrap();
    let (_, ek_tpm2b) = t.ek_public().unwrap();
    std::fs::write(path(&sw, "ek.pub"), ek_tpm2b).unwrap();
    let secret: Vec<u8> = (0..32u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    std::fs::write(path(&sw, "secret.bin"), &secret).unwrap();
    let make = |name_hex: &str, out: &str| {
        run_ok(
            Command::new("tpm2_makecredential")
                .args(["-T", "none", "-u"])
                .arg(path(&sw, "ek.pub"))
                .arg("-s")
                .arg(path(&sw, "secret.bin"))
                .args(["-n", name_hex, "-o"])
                .arg(path(&sw, out)),
        )
    };
    let (ok, text) = make(&info.name, "cred.out");
    assert!(ok, "tpm2_makecredential: {text}");
    let cred =
        CredentialBlob::from_tpm2_tools(&std::fs::read(path(&sw, "cred.out")).unwrap()).unwrap();
    assert_eq!(t.activate_credential(&blob, &cred).unwrap(), secret);
    // A credential bound to another key's name must not open with this AK.
    let mut other = hex::decode(&info.name).unwrap();
    let last = other.len() - 1;
    other[last] ^= 1;
    assert!(make(&hex::encode(other), "other.out").0);
    let cred =
        CredentialBlob::from_tpm2_tools(&std::fs::read(path(&sw, "other.out")).unwrap()).unwrap();
    let err = t.activate_credential(&blob, &cred).unwrap_err().to_string();
    assert!(err.contains("ActivateCredential"), "{err}");
}

#[test]
fn probe_reports_the_swtpm() {
    let Some(sw) = start() else { return };
    let empty = tempfile::tempdir().unwrap();
    let inv = inventory::probe(&ProbeOptions {
        roots: Roots::under(empty.path()),
        tcti: Some(sw.tcti()),
        skip_gpu: true,
    });
    assert!(inv.tpm.present);
    assert_eq!(inv.tpm.version.as_deref(), Some("2.0"));
    assert_eq!(inv.tpm.manufacturer.as_deref(), Some("IBM"));
    assert_eq!(inv.tpm.vendor.as_deref(), Some("SWTPM"));
    assert!(
        inv.tpm.firmware.is_some() && inv.tpm.error.is_none(),
        "{:?}",
        inv.tpm
    );
}
