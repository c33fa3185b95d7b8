//! The registry against real nodes: a real registry (HTTPS, redb) on
//! loopback, nodes with real software TPMs (swtpm, EK certificates from
//! swtpm_setup's local CA), real benchmarks (the quick profile). An honest
//! node is ranked and its certificate checks offline; each attack of
//! issue 12 gets a verdict or a refusal with its own reason, and the
//! registry keeps serving after every one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use fluxnode_hal::tpm::pcr::{Bank, PcrSelection};
use fluxnode_hal::tpm::Tpm;
use fluxnode_node::attest::{Collected, Prover};
use fluxnode_node::client::{ClientError, RegistryClient};
use fluxnode_node::register::{self, Identity};
use fluxnode_node::state::StateDir;
use fluxnode_protocol::messages::{
    ActivateRequest, EvidenceOutcome, OpeningsRequest, RegisterRequest, SessionOffer,
    SessionRequest, SessionVerdict,
};
use fluxnode_protocol::session::{self, ImageInfo, Machine, SessionReport};
use fluxnode_protocol::types::{Sha256Digest, SignedQuote};
use fluxnode_protocol::verdict::{extra_data, LABEL_END, LABEL_START};
use fluxnode_registry::config::{FileConfig, RegistryDir};
use fluxnode_registry::server::{self, Running};
use fluxnode_registry::store::{AllowedImage, Policy, Store as _};
use fluxnode_testkit::swtpm::Swtpm;

fn scratch() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/registry-tests");
    std::fs::create_dir_all(&base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// A registry on loopback, trusting the given TPMs' CAs.
struct World {
    tmp: tempfile::TempDir,
    dir: RegistryDir,
    running: Option<Running>,
    url: String,
    ca: Vec<u8>,
}

struct Options {
    session_ttl_s: u64,
    heartbeat_interval_s: u64,
    /// `redb`, or a PostgreSQL URL.
    store: String,
    /// Allowed PCR 11 (the zero value swtpm boots with, unless changed).
    pcr11: Sha256Digest,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            session_ttl_s: 600,
            heartbeat_interval_s: 60,
            store: "redb".into(),
            pcr11: Sha256Digest([0; 32]),
        }
    }
}

fn world(trusted: &[&Swtpm], opts: Options) -> World {
    let tmp = scratch();
    let root = tmp.path().join("registry");
    let cfg = FileConfig {
        listen: "127.0.0.1:0".into(),
        profile: "quick".into(),
        session_ttl_s: opts.session_ttl_s,
        heartbeat_interval_s: opts.heartbeat_interval_s,
        missed_heartbeats: 2,
        store: opts.store.clone(),
        tier_policy: Some(PathBuf::from("tiers.toml")),
        ..FileConfig::default()
    };
    let dir = fluxnode_registry::pki::init(&root, &["127.0.0.1".into(), "localhost".into()], &cfg)
        .unwrap();
    // A tier any machine that runs the benchmark at all reaches, above one
    // no machine reaches: the verdict must pick the first and explain the second.
    std::fs::write(
        dir.path("tiers.toml"),
        "[[tier]]\nname = \"Test\"\ncpu_eps = 1\n\n[[tier]]\nname = \"Impossible\"\ncpu_eps = 1e12\n",
    )
    .unwrap();
    for (i, sw) in trusted.iter().enumerate() {
        std::fs::copy(sw.ca_root_cert(), dir.path(&format!("ek-ca/root{i}.pem"))).unwrap();
        std::fs::copy(
            sw.ca_intermediate_cert(),
            dir.path(&format!("ek-ca/intermediates/issuer{i}.pem")),
        )
        .unwrap();
    }
    let mut policy = Policy::default();
    policy.images.push(AllowedImage {
        version: "test".into(),
        slot: "a".into(),
        pcrs: [
            (9, Sha256Digest([0; 32])),
            (11, opts.pcr11),
            (12, Sha256Digest([0; 32])),
        ]
        .into_iter()
        .collect(),
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    if opts.store == "redb" {
        let store = server::open_redb(&dir).unwrap();
        rt.block_on(store.set_policy(&policy)).unwrap();
    } else {
        rt.block_on(async {
            let store = fluxnode_registry::store::postgres::PgStore::connect(&opts.store)
                .await
                .unwrap();
            store.set_policy(&policy).await.unwrap();
        });
    }
    let running = server::start(&dir, None).unwrap();
    let url = format!("https://127.0.0.1:{}", running.addr.port());
    let ca = std::fs::read(dir.path("ca.pem")).unwrap();
    World {
        tmp,
        dir,
        running: Some(running),
        url,
        ca,
    }
}

impl World {
    fn healthy(&self) {
        let c = RegistryClient::new(
            &self.url,
            &self.ca,
            ed25519_dalek::SigningKey::from_bytes(&[1; 32]),
        )
        .unwrap();
        let a = c.send("GET", "/v1/health", b"").unwrap();
        assert_eq!(a.status, 200, "the registry stopped serving");
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().unwrap();
        }
    }
}

/// A node: its TPM, identity and client.
struct Node {
    tpm: Tpm,
    id: Identity,
    client: RegistryClient,
    bench: PathBuf,
}

fn image() -> ImageInfo {
    ImageInfo {
        version: "test".into(),
        slot: "a".into(),
    }
}

fn identity(w: &World, sw: &Swtpm, name: &str) -> Node {
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    let sd = StateDir::new(w.tmp.path().join(name));
    let id = register::load_or_create(&sd, &mut tpm).unwrap();
    let client = RegistryClient::new(&w.url, &w.ca, id.key.clone()).unwrap();
    let bench = w.tmp.path().join(format!("{name}-bench"));
    std::fs::create_dir_all(&bench).unwrap();
    Node {
        tpm,
        id,
        client,
        bench,
    }
}

fn registered(w: &World, sw: &Swtpm, name: &str) -> Node {
    let mut n = identity(w, sw, name);
    let node_id = register::register(&n.client, &mut n.tpm, &n.id, &image()).unwrap();
    n.client = n.client.clone().as_node(&node_id);
    n
}

fn machine() -> Machine {
    fluxnode_node::attest::machine()
}

impl Node {
    fn offer(&self) -> SessionOffer {
        let o = self
            .client
            .open_session(&SessionRequest {
                node_id: self.client.node_id().into(),
                boot_id: "boot".into(),
                image: image(),
            })
            .unwrap();
        self.client.bandwidth(&o).unwrap();
        o
    }

    fn collect(&mut self, offer: &SessionOffer) -> Collected {
        let mut p = Prover {
            tpm: &mut self.tpm,
            ak: &self.id.ak,
            bench_dir: self.bench.clone(),
            machine: machine(),
            image: image(),
            event_log: None,
        };
        p.collect(offer).unwrap()
    }

    /// Quotes again with `label` over the offer's PCRs, binding `report`.
    fn quote(&mut self, offer: &SessionOffer, label: &[u8], report: Option<&str>) -> SignedQuote {
        let digest = report.map_or([0; 32], |r| session::report_digest(r.as_bytes()));
        let sel = PcrSelection(vec![(Bank::Sha256, offer.pcrs.clone())]);
        let q = self
            .tpm
            .quote(&self.id.ak, &sel, &extra_data(label, &offer.nonce, &digest))
            .unwrap();
        SignedQuote {
            attest: q.attest,
            signature: q.signature,
        }
    }

    /// Finishes a session honestly from collected evidence.
    fn finish(&self, c: &Collected) -> SessionVerdict {
        match self.client.evidence(&c.evidence).unwrap() {
            EvidenceOutcome::Verdict(v) => *v,
            EvidenceOutcome::SpotCheck(sc) => self
                .client
                .openings(&OpeningsRequest {
                    session_id: c.evidence.session_id.clone(),
                    answer: c.answer(&sc.challenge).unwrap(),
                })
                .unwrap(),
        }
    }
}

/// The evidence's verdict must be a refusal with `code`.
fn refused_with(outcome: Result<EvidenceOutcome, ClientError>, code: &str) -> String {
    match outcome {
        Ok(EvidenceOutcome::Verdict(v)) => {
            assert!(!v.accepted, "accepted, expected {code}");
            let r = v.rejection.expect("a refusal carries its reason");
            assert_eq!(r.code, code, "{}", r.message);
            assert!(!r.message.is_empty());
            r.message
        }
        Ok(EvidenceOutcome::SpotCheck(_)) => panic!("passed to the spot-check, expected {code}"),
        Err(e) => {
            assert_eq!(e.code(), Some(code), "{e}");
            e.to_string()
        }
    }
}

fn refused(r: Result<impl std::fmt::Debug, ClientError>, status: u16, code: &str) {
    match r {
        Err(ClientError::Refused {
            status: s,
            rejection,
            ..
        }) => {
            assert_eq!(
                (s, rejection.code.as_str()),
                (status, code),
                "{}",
                rejection.message
            );
        }
        other => panic!("expected HTTP {status} {code}, got {other:?}"),
    }
}

/// Rewrites the report with `f` and re-quotes the end quote over the new
/// digest: the tampering a node with its own TPM can do.
fn tamper_report(
    n: &mut Node,
    offer: &SessionOffer,
    c: &mut Collected,
    f: impl FnOnce(&mut SessionReport),
) {
    let mut r: SessionReport = serde_json::from_str(&c.evidence.report).unwrap();
    f(&mut r);
    c.evidence.report = serde_json::to_string(&r).unwrap();
    let text = c.evidence.report.clone();
    c.evidence.end_quote = n.quote(offer, LABEL_END, Some(&text));
}

#[test]
fn an_honest_node_is_ranked_and_its_certificate_checks_offline() {
    let Some(sw) = Swtpm::start() else { return };
    let w = world(&[&sw], Options::default());
    let mut n = registered(&w, &sw, "honest");
    let offer = n.offer();
    let c = n.collect(&offer);
    let v = n.finish(&c);
    assert!(v.accepted, "{:?}", v.rejection);
    assert_eq!(v.tier.as_deref(), Some("Test"));
    let bw = v.bandwidth_mbps.expect("the registry measured bandwidth");
    assert!(bw > 0.0);
    let cls = v.classification.as_ref().unwrap();
    let impossible = cls.tiers.iter().find(|t| t.name == "Impossible").unwrap();
    assert!(!impossible.met && impossible.shortfalls[0].requirement == "cpu_eps");

    // Offline check, in the library and through the CLI.
    let cert = v.certificate.clone().unwrap();
    let key = fluxnode_registry::config::verifying_key(w.dir.path("signing.pub").to_str().unwrap())
        .unwrap();
    let body =
        fluxnode_protocol::cert::verify(&cert, &key, fluxnode_registry::service::now_ms()).unwrap();
    assert_eq!(body.node_id, n.client.node_id());
    assert_eq!(body.tier.as_deref(), Some("Test"));
    let cert_path = w.tmp.path().join("cert.json");
    std::fs::write(&cert_path, serde_json::to_vec(&cert).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluxnode-registry"))
        .args(["verify-cert", cert_path.to_str().unwrap(), "--key"])
        .arg(w.dir.path("signing.pub"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("tier Test"));
    let mut forged = cert.clone();
    forged.body = forged.body.replace("\"Test\"", "\"Stratus\"");
    std::fs::write(&cert_path, serde_json::to_vec(&forged).unwrap()).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluxnode-registry"))
        .args(["verify-cert", cert_path.to_str().unwrap(), "--key"])
        .arg(w.dir.path("signing.pub"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("certificate_signature_invalid"));

    // Replayed evidence: the session is consumed.
    refused_with(n.client.evidence(&c.evidence), "session_used");

    // The node's view: tier, image, PCR 11, the verdict.
    let view = n.client.node_view(n.client.node_id()).unwrap();
    assert_eq!(view.tier.as_deref(), Some("Test"));
    assert_eq!(view.pcr11.as_deref(), Some("00".repeat(32).as_str()));
    assert!(view.verdicts[0].accepted);

    // Heartbeats: recorded, replays refused.
    let hb = |seq| fluxnode_protocol::messages::Heartbeat {
        node_id: n.client.node_id().into(),
        boot_id: "boot".into(),
        seq,
    };
    n.client.heartbeat(&hb(1)).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let ack = n.client.heartbeat(&hb(2)).unwrap();
    assert!(ack.uptime_s >= 1, "{ack:?}");
    refused(n.client.heartbeat(&hb(2)), 409, "heartbeat_replayed");
    let view = n.client.node_view(n.client.node_id()).unwrap();
    assert_eq!(view.state, "online");

    // `nodes --json` through the CLI (the server is up: it asks the API).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fluxnode-registry"))
        .arg("--dir")
        .arg(&w.dir.root)
        .args(["nodes", "--json", "--url", &w.url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nodes: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(nodes[0]["tier"], "Test");
    assert_eq!(nodes[0]["image"]["version"], "test");
    w.healthy();
}

#[test]
fn tampered_evidence_is_refused_with_its_reason() {
    let Some(sw) = Swtpm::start() else { return };
    let Some(sw2) = Swtpm::start() else { return };
    let w = world(&[&sw, &sw2], Options::default());
    let mut n = registered(&w, &sw, "a");
    let mut other = registered(&w, &sw2, "b");

    // Another session's nonce: evidence made for session A, sent as B.
    let a = n.offer();
    let b = n.offer();
    let mut c = n.collect(&a);
    c.evidence.session_id = b.session_id.clone();
    refused_with(n.client.evidence(&c.evidence), "extra_data_mismatch");
    w.healthy();

    // A tampered report with the right nonce (not re-quoted).
    let o = n.offer();
    let mut c = n.collect(&o);
    let mut r: SessionReport = serde_json::from_str(&c.evidence.report).unwrap();
    r.cpu.eps *= 2.0;
    c.evidence.report = serde_json::to_string(&r).unwrap();
    let msg = refused_with(n.client.evidence(&c.evidence), "extra_data_mismatch");
    assert!(msg.contains("end quote"), "{msg}");

    // Wrong PCR values claimed.
    let o = n.offer();
    let mut c = n.collect(&o);
    c.evidence.pcrs.sha256.insert(11, Sha256Digest([0x11; 32]));
    refused_with(n.client.evidence(&c.evidence), "pcr_digest_mismatch");

    // A PCR selection missing a required PCR.
    let mut o = n.offer();
    o.pcrs = vec![9, 11];
    let c = n.collect(&o);
    refused_with(n.client.evidence(&c.evidence), "pcr_not_selected");

    // A signature by another node's AK: node b quotes for a's session.
    let o = n.offer();
    let c = other.collect(&o);
    refused_with(n.client.evidence(&c.evidence), "signature_invalid");

    // A TPM clock that goes backwards: end quote made before the start quote.
    let o = n.offer();
    let mut c = n.collect(&o);
    let text = c.evidence.report.clone();
    c.evidence.end_quote = n.quote(&o, LABEL_END, Some(&text));
    std::thread::sleep(Duration::from_millis(50));
    c.evidence.start_quote = n.quote(&o, LABEL_START, None);
    refused_with(n.client.evidence(&c.evidence), "clock_backwards");

    // Elapsed TPM clock shorter than claimed.
    let o = n.offer();
    let mut c = n.collect(&o);
    tamper_report(&mut n, &o, &mut c, |r| r.bench_ms += 120_000);
    refused_with(n.client.evidence(&c.evidence), "elapsed_too_short");

    // Implausible figures, consistently claimed and bound by the end quote.
    let o = n.offer();
    let mut c = n.collect(&o);
    tamper_report(&mut n, &o, &mut c, |r| {
        r.cpu.events *= 100_000;
        r.cpu.eps *= 100_000.0;
        r.cpu.commitment.chunks = r.cpu.events;
    });
    refused_with(n.client.evidence(&c.evidence), "implausible_figure");

    // Report fields that do not match the session.
    let o = n.offer();
    let mut c = n.collect(&o);
    tamper_report(&mut n, &o, &mut c, |r| r.profile.cpu_ms = 100);
    refused_with(n.client.evidence(&c.evidence), "report_session_mismatch");

    // A failed spot-check opening.
    let o = n.offer();
    let c = n.collect(&o);
    let EvidenceOutcome::SpotCheck(sc) = n.client.evidence(&c.evidence).unwrap() else {
        panic!("honest evidence gets a spot-check")
    };
    let mut answer = c.answer(&sc.challenge).unwrap();
    answer.cpu.openings[0].output.0[0] ^= 1;
    let v = n
        .client
        .openings(&OpeningsRequest {
            session_id: o.session_id.clone(),
            answer,
        })
        .unwrap();
    assert!(!v.accepted);
    assert_eq!(v.rejection.unwrap().code, "opening_invalid");

    // Evidence without the registry's bandwidth measurement.
    let o = n
        .client
        .open_session(&SessionRequest {
            node_id: n.client.node_id().into(),
            boot_id: "boot".into(),
            image: image(),
        })
        .unwrap();
    let c = n.collect(&o);
    refused_with(n.client.evidence(&c.evidence), "bandwidth_not_measured");

    // Different reset counts: the TPM power-cycles between the quotes.
    let o = n.offer();
    let start = n.quote(&o, LABEL_START, None);
    let mut c = n.collect(&o);
    c.evidence.start_quote = start;
    drop(n.tpm);
    let mut sw = sw;
    sw.restart().unwrap();
    n.tpm = Tpm::open(&sw.tcti()).unwrap();
    let text = c.evidence.report.clone();
    c.evidence.end_quote = n.quote(&o, LABEL_END, Some(&text));
    refused_with(n.client.evidence(&c.evidence), "reset_count_changed");

    // After all of it the registry serves, and an honest session passes.
    w.healthy();
    let o = n.offer();
    let c = n.collect(&o);
    let v = n.finish(&c);
    assert!(v.accepted, "{:?}", v.rejection);
    // Every refusal is on record with its reason.
    let view = n.client.node_view(n.client.node_id()).unwrap();
    assert!(view.verdicts.iter().filter(|v| !v.accepted).count() >= 9);
}

#[test]
fn images_outside_the_policy_and_expired_sessions_are_refused() {
    let Some(sw) = Swtpm::start() else { return };
    let w = world(
        &[&sw],
        Options {
            session_ttl_s: 2,
            heartbeat_interval_s: 1,
            pcr11: Sha256Digest([0xab; 32]),
            ..Options::default()
        },
    );
    let mut n = registered(&w, &sw, "n");
    let o = n.offer();
    let c = n.collect(&o);
    let msg = refused_with(n.client.evidence(&c.evidence), "image_not_allowed");
    assert!(msg.contains("image not allowed"), "{msg}");

    // Expired: evidence after the session's deadline.
    let o = n.offer();
    let c = n.collect(&o);
    std::thread::sleep(Duration::from_millis(2100));
    refused_with(n.client.evidence(&c.evidence), "session_expired");

    // Heartbeats every second here; two missed and the node is offline.
    let hb = fluxnode_protocol::messages::Heartbeat {
        node_id: n.client.node_id().into(),
        boot_id: "boot".into(),
        seq: 1,
    };
    assert_eq!(n.client.heartbeat(&hb).unwrap().interval_s, 1);
    assert_eq!(
        n.client.node_view(n.client.node_id()).unwrap().state,
        "online"
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        n.client.node_view(n.client.node_id()).unwrap().state,
        "offline"
    );
    // The same heartbeat again is a replay, not a sign of life.
    refused(n.client.heartbeat(&hb), 409, "heartbeat_replayed");
    assert_eq!(
        n.client.node_view(n.client.node_id()).unwrap().state,
        "offline"
    );
    w.healthy();
}

fn e_code(e: &register::RegisterError) -> Option<&str> {
    match e {
        register::RegisterError::Client(c) => c.code(),
        _ => None,
    }
}

/// The same registry directory, served again (after changing its files).
fn restart(mut w: World) -> World {
    if let Some(r) = w.running.take() {
        r.stop().unwrap();
    }
    let running = server::start(&w.dir, None).unwrap();
    w.url = format!("https://127.0.0.1:{}", running.addr.port());
    w.running = Some(running);
    w
}

#[test]
fn registration_attacks_are_refused() {
    let Some(sw) = Swtpm::start() else { return };
    let Some(sw2) = Swtpm::start() else { return };
    let Some(untrusted) = Swtpm::start() else {
        return;
    };
    let w = world(&[&sw, &sw2], Options::default());

    // An EK certificate from an untrusted CA. Every swtpm local CA has the
    // same names, so the registry finds an allow-listed CA of that name
    // whose key did not sign it.
    let mut u = identity(&w, &untrusted, "u");
    let e = register::register(&u.client, &mut u.tpm, &u.id, &image()).unwrap_err();
    assert_eq!(e_code(&e), Some("ek_cert_signature_invalid"), "{e}");
    assert!(e.to_string().contains("another CA of the same name"), "{e}");
    // A CA of another name: not allow-listed at all.
    let w2 = world(&[], Options::default());
    std::fs::copy(w.dir.path("ca.pem"), w2.dir.path("ek-ca/unrelated.pem")).unwrap();
    let w2 = restart(w2);
    let mut u2 = identity(&w2, &untrusted, "u2");
    let e = register::register(&u2.client, &mut u2.tpm, &u2.id, &image()).unwrap_err();
    assert_eq!(e_code(&e), Some("ek_cert_untrusted"), "{e}");

    let mut a = identity(&w, &sw, "a");
    let mut b = identity(&w, &sw2, "b");
    let req = |n: &mut Node| RegisterRequest {
        ek_certificate: n.tpm.ek_certificate().unwrap().unwrap(),
        ek_public: n.tpm.ek_public().unwrap().1,
        ak_public: n.id.ak.public.clone(),
        node_key: n.id.key.verifying_key().as_bytes().to_vec(),
        image: image(),
    };

    // An EK that does not match its certificate.
    let mut r = req(&mut a);
    r.ek_public = b.tpm.ek_public().unwrap().1;
    refused(a.client.register(&r), 422, "ek_cert_key_mismatch");

    // An unrestricted key offered as the AK: its attributes are refused
    // (objectAttributes is bytes 4..8 of TPMT_PUBLIC; restricted is bit 16).
    let mut r = req(&mut a);
    r.ak_public[5] &= !0x01;
    refused(a.client.register(&r), 422, "ak_refused");

    // A request not signed by the node key it carries.
    let r = req(&mut a);
    let body = serde_json::to_vec(&r).unwrap();
    let ans = b.client.send("POST", "/v1/register", &body).unwrap();
    assert_eq!(ans.status, 401, "{}", String::from_utf8_lossy(&ans.body));

    // An AK not bound to the EK: a's EK with b's AK. a's TPM cannot
    // activate the credential; a guessed secret is refused.
    let mut r = req(&mut a);
    r.ak_public = b.id.ak.public.clone();
    let resp = a.client.register(&r).unwrap();
    let activation = a.tpm.activate_credential(
        &a.id.ak,
        &fluxnode_hal::tpm::credential::CredentialBlob {
            id_object: resp.id_object.clone(),
            encrypted_secret: resp.encrypted_secret.clone(),
        },
    );
    assert!(
        activation.is_err(),
        "a's TPM opened a credential made for b's AK"
    );
    let client = a.client.clone().as_node(&resp.node_id);
    refused(
        client.activate(&ActivateRequest {
            node_id: resp.node_id.clone(),
            secret: vec![0x42; 32],
        }),
        403,
        "activation_failed",
    );
    // The pending registration was used up by that try.
    refused(
        client.activate(&ActivateRequest {
            node_id: resp.node_id,
            secret: vec![0x42; 32],
        }),
        404,
        "no_pending_registration",
    );

    // Honest registration works; the same EK again is refused.
    let id = register::register(&a.client, &mut a.tpm, &a.id, &image()).unwrap();
    let again = identity(&w, &sw, "a-again");
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    let e = register::register(&again.client, &mut tpm, &again.id, &image()).unwrap_err();
    assert_eq!(e_code(&e), Some("ek_already_registered"), "{e}");
    assert!(!id.is_empty());
    // The same EK in its other encoding (TPMT_PUBLIC, no size prefix) is
    // the same node.
    let mut r = req(&mut a);
    r.ek_public.drain(..2);
    r.node_key = again.id.key.verifying_key().as_bytes().to_vec();
    refused(again.client.register(&r), 409, "ek_already_registered");
    let _ = &mut b;
    w.healthy();
}

/// Sends `request` over TLS as is and returns what comes back.
fn raw(w: &World, request: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut w.ca.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let conn =
        rustls::ClientConnection::new(std::sync::Arc::new(cfg), "127.0.0.1".try_into().unwrap())
            .unwrap();
    let tcp = std::net::TcpStream::connect(w.running.as_ref().unwrap().addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(request.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = tls.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
        if out.windows(4).any(|x| x == b"\r\n\r\n") && out.ends_with(b"}") {
            break;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn malformed_and_oversized_bodies_get_a_4xx_with_a_reason() {
    let Some(sw) = Swtpm::start() else { return };
    let w = world(&[&sw], Options::default());
    let n = registered(&w, &sw, "n");
    let o = n.offer();
    let paths = [
        "/v1/register".to_string(),
        "/v1/activate".into(),
        "/v1/sessions".into(),
        format!("/v1/sessions/{}/evidence", o.session_id),
        format!("/v1/sessions/{}/openings", o.session_id),
        "/v1/heartbeat".into(),
    ];
    let bodies: [&[u8]; 6] = [
        b"",
        b"{",
        b"null",
        b"[]",
        b"{\"node_id\":1}",
        &[0xff, 0xfe, 0x00],
    ];
    for p in &paths {
        for b in bodies {
            let a = n.client.send("POST", p, b).unwrap();
            assert!(
                (400..500).contains(&a.status),
                "{p} {b:?}: HTTP {}",
                a.status
            );
            let e: fluxnode_protocol::messages::ErrorBody = serde_json::from_slice(&a.body)
                .unwrap_or_else(|_| {
                    panic!(
                        "{p}: not an error body: {}",
                        String::from_utf8_lossy(&a.body)
                    )
                });
            assert!(!e.error.code.is_empty() && !e.error.message.is_empty());
        }
        // An announced body over the bound is refused before it is read
        // (a client that then keeps writing finds the connection closed).
        let head = raw(
            &w,
            &format!(
                "POST {p} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
                3 << 20
            ),
        );
        assert!(head.starts_with("HTTP/1.1 413"), "{p}: {head}");
        assert!(head.contains("body_too_large"), "{p}: {head}");
    }
    // Clients that never speak do not stop the registry, and are dropped
    // after the handshake deadline (10 s).
    let addr = w.running.as_ref().unwrap().addr;
    let silent: Vec<std::net::TcpStream> = (0..64)
        .map(|_| std::net::TcpStream::connect(addr).unwrap())
        .collect();
    w.healthy();
    let t0 = std::time::Instant::now();
    let mut s0 = &silent[0];
    s0.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut b = [0u8; 1];
    let got = std::io::Read::read(&mut s0, &mut b).unwrap_or(0);
    assert_eq!(got, 0, "a silent client got data");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "a silent client was held {:?}",
        t0.elapsed()
    );
    drop(silent);

    // Path tricks and unknown endpoints.
    for p in ["/v1/nodes/..%2F..%2Fetc", "/v1/nodes/ZZ", "/nope"] {
        let a = n.client.send("GET", p, b"").unwrap();
        assert!((400..500).contains(&a.status), "{p}: {}", a.status);
    }
    w.healthy();
}

/// Two registry instances on one PostgreSQL database: a session opened on
/// one completes on the other, and single use holds across them because
/// the database enforces it.
#[test]
fn two_instances_on_postgresql_share_sessions_and_refuse_replays() {
    let Some(pg) = fluxnode_testkit::postgres::PgCluster::start() else {
        return;
    };
    let Some(sw) = Swtpm::start() else { return };
    let url = pg.new_database("two_instances").unwrap();
    let w = world(
        &[&sw],
        Options {
            store: url,
            ..Options::default()
        },
    );
    let second = server::start(&w.dir, Some("127.0.0.1:0")).unwrap();
    let url2 = format!("https://127.0.0.1:{}", second.addr.port());

    // Register through instance 1, attest through both.
    let mut n = registered(&w, &sw, "n");
    let other = RegistryClient::new(&url2, &w.ca, n.id.key.clone())
        .unwrap()
        .as_node(n.client.node_id());
    let o = n.offer(); // instance 1
    let c = n.collect(&o);
    let EvidenceOutcome::SpotCheck(sc) = other.evidence(&c.evidence).unwrap() else {
        panic!("honest evidence gets a spot-check")
    };
    // Replays of the evidence, on either instance, find the session used.
    refused_with(n.client.evidence(&c.evidence), "session_used");
    refused_with(other.evidence(&c.evidence), "session_used");
    let v = n
        .client
        .openings(&OpeningsRequest {
            session_id: o.session_id.clone(),
            answer: c.answer(&sc.challenge).unwrap(),
        })
        .unwrap();
    assert!(v.accepted, "{:?}", v.rejection);
    assert_eq!(
        other.node_view(n.client.node_id()).unwrap().tier.as_deref(),
        Some("Test")
    );

    // The same evidence sent to both at once: exactly one instance takes it.
    let o = n.offer();
    let c = n.collect(&o);
    let (e1, e2) = (c.evidence.clone(), c.evidence.clone());
    let c1 = n.client.clone();
    let t1 = std::thread::spawn(move || c1.evidence(&e1));
    let t2 = std::thread::spawn(move || other.evidence(&e2));
    let (r1, r2) = (t1.join().unwrap(), t2.join().unwrap());
    let won = [&r1, &r2]
        .iter()
        .filter(|r| matches!(r, Ok(EvidenceOutcome::SpotCheck(_))))
        .count();
    let used = [&r1, &r2]
        .iter()
        .filter(|r| matches!(r, Err(e) if e.code() == Some("session_used")))
        .count();
    assert_eq!((won, used), (1, 1), "{r1:?} / {r2:?}");
    second.stop().unwrap();
    w.healthy();
}

/// What a quote's place can be filled with by a node that holds a real AK:
/// a quote of only the SHA-1 bank, a GetTime, a Certify. Each is signed by
/// the registered AK and carries the right extraData; each is refused by
/// its type or selection.
#[test]
fn other_attestations_and_sha1_quotes_are_refused() {
    use fluxnode_hal::tpm::quote::OtherAttestation;
    // A TPM with a SHA-1 bank allocated too (a TPM without one leaves an
    // unallocated bank out of the quote: that is `pcr_not_selected`).
    let Some(sw) = Swtpm::start_with_banks("sha1,sha256") else {
        return;
    };
    let w = world(&[&sw], Options::default());
    let mut n = registered(&w, &sw, "n");

    // A quote over SHA-1 PCRs only.
    let o = n.offer();
    let mut c = n.collect(&o);
    let sha1: PcrSelection = "sha1:9,11,12".parse().unwrap();
    let (attest, signature) = n
        .tpm
        .quote_raw(
            &n.id.ak,
            &sha1,
            &extra_data(LABEL_START, &o.nonce, &[0; 32]),
        )
        .unwrap();
    c.evidence.start_quote = SignedQuote { attest, signature };
    refused_with(n.client.evidence(&c.evidence), "pcr_selection_sha1_only");

    // GetTime and Certify structures, signed by the AK, sent as quotes.
    for (kind, name) in [
        (OtherAttestation::GetTime, "TPM_ST_ATTEST_TIME"),
        (OtherAttestation::Certify, "TPM_ST_ATTEST_CERTIFY"),
    ] {
        let o = n.offer();
        let mut c = n.collect(&o);
        let (attest, signature) = n
            .tpm
            .attest_other(&n.id.ak, kind, &extra_data(LABEL_START, &o.nonce, &[0; 32]))
            .unwrap();
        c.evidence.start_quote = SignedQuote { attest, signature };
        let msg = refused_with(n.client.evidence(&c.evidence), "not_a_quote");
        assert!(msg.contains(name), "{msg}");
    }
    w.healthy();
}
