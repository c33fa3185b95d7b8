//! Cross-check with a real (software) TPM: quotes made by hal's TPM code
//! against swtpm verify with this crate's pure functions, and tampered
//! ones do not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::Command;
use std::time::{Duration, Instant};

use fluxnode_hal::tpm::pcr::{Bank, PcrSelection};
use fluxnode_hal::tpm::Tpm;
use fluxnode_protocol::tpm::attest::Attest;
use fluxnode_protocol::tpm::signature::AttestationKey;
use fluxnode_protocol::types::{PcrPolicy, PcrValues, Sha256Digest, SignedQuote};
use fluxnode_protocol::verdict::{
    check_quote_pair, extra_data, ClockTolerance, Expected, Verdict, Which, LABEL_END, LABEL_START,
};
use fluxnode_testkit::swtpm::{which, Swtpm};

fn on_path(prog: &str) -> bool {
    which(prog).is_some()
}

#[test]
fn quotes_from_swtpm_verify_and_tampering_is_caught() {
    let Some(sw) = Swtpm::start() else { return };
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    // Non-zero PCR values when tpm2-tools is there to extend one.
    if on_path("tpm2_pcrextend") {
        let st = Command::new("tpm2_pcrextend")
            .args(["-T", &format!("swtpm:port={}", sw.port())])
            .arg(format!("11:sha256={}", "ab".repeat(32)))
            .status()
            .unwrap();
        assert!(st.success(), "tpm2_pcrextend failed");
    }
    let blob = tpm.create_ak().unwrap();

    // Our name of the AK is the one the TPM reports.
    let ak = AttestationKey::from_tpmt(&blob.public).unwrap();
    let info = tpm.ak_info(&blob).unwrap();
    assert_eq!(ak.public().name_hex(), info.name);

    let nonce = b"registry-nonce-0123456789abcdef!";
    let report = [0x5au8; 32];
    let start_xd = extra_data(LABEL_START, nonce, &[0; 32]);
    let end_xd = extra_data(LABEL_END, nonce, &report);
    let sel: PcrSelection = "sha256:9,11,12".parse().unwrap();
    let began = Instant::now();
    let qs = tpm.quote(&blob, &sel, &start_xd).unwrap();
    std::thread::sleep(Duration::from_millis(1200));
    let qe = tpm.quote(&blob, &sel, &end_xd).unwrap();
    let observed = u64::try_from(began.elapsed().as_millis()).unwrap();

    // What hal recorded matches what we parse out of the signed bytes.
    let a = Attest::parse(&qs.attest).unwrap();
    assert_eq!(a.extra_data, start_xd);
    assert_eq!(a.clock.clock, qs.clock);
    assert_eq!(a.clock.reset_count, qs.reset_count);

    let mut claimed = PcrValues::default();
    for p in &qs.pcrs {
        assert_eq!(p.bank, Bank::Sha256);
        let v: [u8; 32] = p.value.as_slice().try_into().unwrap();
        claimed.sha256.insert(p.index, Sha256Digest(v));
    }
    if on_path("tpm2_pcrextend") {
        assert_ne!(claimed.sha256[&11], Sha256Digest([0; 32]));
    }
    let mut policy = PcrPolicy {
        required: vec![9, 12],
        ..PcrPolicy::default()
    };
    policy.allowed.insert(11, vec![claimed.sha256[&11]]);
    let start = SignedQuote {
        attest: qs.attest.clone(),
        signature: qs.signature.clone(),
    };
    let end = SignedQuote {
        attest: qe.attest.clone(),
        signature: qe.signature.clone(),
    };
    let expected = Expected {
        start_extra_data: start_xd,
        end_extra_data: end_xd,
        policy: &policy,
        claimed_pcrs: &claimed,
        claimed_duration_ms: 1200,
        observed_wall_ms: observed,
        tolerance: ClockTolerance::default(),
    };
    let ok = check_quote_pair(&start, &end, &blob.public, &expected).unwrap();
    assert!(ok.elapsed_ms >= 1100, "{ok:?}");

    // Tampered claims and swapped quotes are refused with their reasons.
    let mut wrong = claimed.clone();
    wrong.sha256.insert(9, Sha256Digest([1; 32]));
    let r = check_quote_pair(
        &start,
        &end,
        &blob.public,
        &Expected {
            claimed_pcrs: &wrong,
            ..expected.clone()
        },
    );
    assert_eq!(
        r.err(),
        Some(Verdict::PcrDigestMismatch {
            which: Which::Start
        })
    );
    let r = check_quote_pair(&end, &start, &blob.public, &expected);
    assert_eq!(
        r.err(),
        Some(Verdict::ExtraDataMismatch {
            which: Which::Start
        })
    );
    let r = check_quote_pair(
        &start,
        &end,
        &blob.public,
        &Expected {
            claimed_duration_ms: 5000,
            observed_wall_ms: 6000,
            ..expected.clone()
        },
    );
    assert_eq!(r.err().map(|v| v.code()), Some("elapsed_too_short"));
    let mut flipped = start.clone();
    let last = flipped.attest.len() - 1;
    flipped.attest[last] ^= 1;
    let r = check_quote_pair(&flipped, &end, &blob.public, &expected);
    assert_eq!(
        r.err(),
        Some(Verdict::SignatureInvalid {
            which: Which::Start
        })
    );
}
