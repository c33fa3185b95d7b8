#![no_main]
use libfuzzer_sys::fuzz_target;

use fluxnode_protocol::cert::{self, TierCertificate};
use fluxnode_protocol::messages::{
    ActivateRequest, Evidence, Heartbeat, OpeningsRequest, RegisterRequest, SessionRequest,
};
use fluxnode_protocol::session::{self, BenchProfile, Challenge, SessionReport, SessionTerms};

// Every JSON body a node sends the registry, and the report inside the
// evidence with the checks that run on it (session match, plausibility,
// spot-check openings), plus a tier certificate as a verifier reads it.
// None of it may panic, and no check may run unbounded work.
fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<RegisterRequest>(data);
    let _ = serde_json::from_slice::<ActivateRequest>(data);
    let _ = serde_json::from_slice::<SessionRequest>(data);
    let _ = serde_json::from_slice::<Evidence>(data);
    let _ = serde_json::from_slice::<Heartbeat>(data);
    let profile = BenchProfile::quick();
    let nonce = [7u8; 32];
    if let Ok(report) = SessionReport::parse(data) {
        let terms = SessionTerms {
            session_id: &report.session_id,
            nonce: &nonce,
            profile: &profile,
        };
        let _ = session::check_report(&report, &terms);
        let challenge = Challenge::draw(&nonce, &report);
        if let Ok(o) = serde_json::from_slice::<OpeningsRequest>(data) {
            let _ = session::check_openings(&report, &challenge, &o.answer);
        }
    }
    if let Ok(c) = serde_json::from_slice::<TierCertificate>(data) {
        let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]).verifying_key();
        let _ = cert::verify(&c, &key, 0);
    }
});
