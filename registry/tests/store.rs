//! The `Store` conformance suite, written once over `S: Store` and run
//! against both backends: redb (a temporary file) and PostgreSQL (a
//! private cluster from `fluxnode_testkit::postgres`; skipped, visibly,
//! when PostgreSQL is not installed).
//!
//! Besides every trait method, it checks the point of the PostgreSQL
//! backend: two `PgStore`s connected separately to one database (two
//! registry instances) agree on everything that must happen once, also
//! when they race for it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::sync::Arc;

use fluxnode_protocol::cert::TierCertificate;
use fluxnode_protocol::messages::VerdictRecord;
use fluxnode_protocol::session::{BenchProfile, ImageInfo};
use fluxnode_protocol::types::{PcrValues, Sha256Digest, SignedQuote};
use fluxnode_registry::store::postgres::PgStore;
use fluxnode_registry::store::redb::RedbStore;
use fluxnode_registry::store::{
    AllowedImage, Bandwidth, HeartbeatOutcome, NodeRecord, NodeStanding, Pending, Policy,
    SessionRecord, SessionState, Store, StoredEvidence,
};
use fluxnode_testkit::postgres::PgCluster;

/// Rounds of each race between two instances.
const RACES: usize = 50;

// ---------------------------------------------------------------- records

fn node(id: &str, ek: u8) -> NodeRecord {
    NodeRecord {
        node_id: id.to_string(),
        ek_sha256: Sha256Digest([ek; 32]),
        ek_public: format!("00{ek:02x}"),
        ek_certificate: "3082".to_string(),
        ek_issuer: "CN=test EK CA".to_string(),
        ak_public: "0001000b".to_string(),
        ak_name: "000b".to_string(),
        node_key: "ab".repeat(32),
        registered_at_ms: 1_700_000_000_000,
    }
}

fn pending(id: &str, expires_at_ms: u64) -> Pending {
    Pending {
        node_id: id.to_string(),
        secret_sha256: Sha256Digest([7; 32]),
        expires_at_ms,
        node: node(id, 0x70),
    }
}

fn profile() -> BenchProfile {
    BenchProfile {
        name: "test".to_string(),
        cpu_max_prime: 10_000,
        cpu_ms: 1_000,
        memory_bytes: 16 << 20,
        memory_passes: 2,
        disk_block_bytes: 64 << 10,
        disk_count: 16,
        disk_runs: 3,
        bandwidth_bytes: 1_000_000,
        spot_checks: 4,
    }
}

fn image() -> ImageInfo {
    ImageInfo {
        version: "1.2.3".to_string(),
        slot: "a".to_string(),
    }
}

fn session(id: &str, node_id: &str, expires_at_ms: u64) -> SessionRecord {
    SessionRecord {
        session_id: id.to_string(),
        node_id: node_id.to_string(),
        nonce: "00".repeat(32),
        pcrs: vec![9, 11, 12],
        profile: profile(),
        image: image(),
        issued_at_ms: 1_000,
        expires_at_ms,
        state: SessionState::Offered,
        version: 0,
        bandwidth: Bandwidth::default(),
        evidence: None,
    }
}

fn evidence() -> StoredEvidence {
    let mut pcrs = PcrValues::default();
    pcrs.sha256.insert(11, Sha256Digest([0x11; 32]));
    StoredEvidence {
        start_quote: SignedQuote {
            attest: vec![1, 2, 3],
            signature: vec![4, 5],
        },
        end_quote: SignedQuote {
            attest: vec![6],
            signature: vec![7, 8, 9],
        },
        pcrs,
        report: r#"{"session_id":"s"}"#.to_string(),
        event_log: "deadbeef".to_string(),
        received_at_ms: 2_000,
        challenge_nonce: "ff".repeat(16),
    }
}

fn verdict(session_id: &str, at_ms: u64, accepted: bool) -> VerdictRecord {
    VerdictRecord {
        session_id: session_id.to_string(),
        at_ms,
        accepted,
        rejection: None,
        tier: accepted.then(|| "cumulus".to_string()),
        classification: None,
        bandwidth_mbps: Some(123.25),
        image: Some(image()),
        pcr11: Some("11".repeat(32)),
    }
}

fn certificate() -> TierCertificate {
    TierCertificate {
        body: r#"{"tier":"cumulus"}"#.to_string(),
        signature: "cd".repeat(64),
    }
}

// ------------------------------------------------------ the suite, once

async fn conformance<S: Store>(s: &S) {
    pending_is_taken_once(s).await;
    nodes_are_unique_by_id_and_ek(s).await;
    sessions_change_by_compare_and_swap(s).await;
    open_sessions_count_unexpired_unclosed(s).await;
    heartbeats_grow_and_credit_uptime(s).await;
    verdicts_newest_first_and_standing(s).await;
    policy_round_trips(s).await;
}

async fn pending_is_taken_once<S: Store>(s: &S) {
    assert_eq!(s.take_pending("p-none").await.unwrap(), None);
    s.put_pending(&pending("p-1", 10)).await.unwrap();
    // A second registration of the same node replaces the first.
    s.put_pending(&pending("p-1", 20)).await.unwrap();
    s.put_pending(&pending("p-2", 30)).await.unwrap();
    assert_eq!(
        s.take_pending("p-1").await.unwrap(),
        Some(pending("p-1", 20))
    );
    assert_eq!(s.take_pending("p-1").await.unwrap(), None, "taken twice");
    assert_eq!(
        s.take_pending("p-2").await.unwrap(),
        Some(pending("p-2", 30))
    );
}

async fn nodes_are_unique_by_id_and_ek<S: Store>(s: &S) {
    assert_eq!(s.node("Zed").await.unwrap(), None);
    assert!(s.insert_node(&node("Zed", 1)).await.unwrap());
    assert_eq!(s.node("Zed").await.unwrap(), Some(node("Zed", 1)));
    // Same EK, another id: one EK, one node.
    assert!(!s.insert_node(&node("alpha", 1)).await.unwrap());
    assert_eq!(s.node("alpha").await.unwrap(), None);
    // Same id, another EK.
    assert!(!s.insert_node(&node("Zed", 2)).await.unwrap());
    assert_eq!(s.node("Zed").await.unwrap(), Some(node("Zed", 1)));
    assert!(s.insert_node(&node("alpha", 2)).await.unwrap());
    assert!(s.insert_node(&node("Mid", 3)).await.unwrap());
    // By id, in byte order ("M" < "Z" < "a").
    let ids: Vec<String> = s
        .nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.node_id)
        .collect();
    assert_eq!(ids, ["Mid", "Zed", "alpha"]);
}

async fn sessions_change_by_compare_and_swap<S: Store>(s: &S) {
    assert_eq!(s.session("s-none").await.unwrap(), None);
    let s0 = session("s-1", "n-cas", 10_000);
    s.put_session(&s0).await.unwrap();
    assert_eq!(s.session("s-1").await.unwrap(), Some(s0.clone()));

    let mut s1 = s0.clone();
    s1.state = SessionState::Challenged;
    s1.bandwidth = Bandwidth {
        download_started_ms: Some(1_500),
        down_mbps: Some(941.5),
        up_mbps: Some(0.1 + 0.2),
    };
    s1.evidence = Some(evidence());
    assert!(s.swap_session(&s1, 0).await.unwrap());
    let got = s.session("s-1").await.unwrap().unwrap();
    assert_eq!(got.version, 1, "the store sets the version");
    assert_eq!(
        got,
        SessionRecord {
            version: 1,
            ..s1.clone()
        }
    );

    // A stale version loses and changes nothing.
    let mut late = s0.clone();
    late.nonce = "late".to_string();
    assert!(!s.swap_session(&late, 0).await.unwrap());
    assert_eq!(s.session("s-1").await.unwrap(), Some(got.clone()));
    // A version from the future loses too.
    assert!(!s.swap_session(&late, 7).await.unwrap());
    // No such session.
    assert!(!s
        .swap_session(&session("s-none", "n-cas", 1), 0)
        .await
        .unwrap());
    assert_eq!(s.session("s-none").await.unwrap(), None);

    let mut s2 = got;
    s2.state = SessionState::Closed;
    assert!(s.swap_session(&s2, 1).await.unwrap());
    let closed = s.session("s-1").await.unwrap().unwrap();
    assert_eq!((closed.state, closed.version), (SessionState::Closed, 2));
    assert!(!s.swap_session(&s2, 1).await.unwrap());
}

async fn open_sessions_count_unexpired_unclosed<S: Store>(s: &S) {
    let n = "n-open";
    assert_eq!(s.open_sessions(n, 0).await.unwrap(), 0);
    s.put_session(&session("o-1", n, 1_000)).await.unwrap();
    let mut challenged = session("o-2", n, 2_000);
    challenged.state = SessionState::Challenged;
    s.put_session(&challenged).await.unwrap();
    s.put_session(&session("o-3", n, 500)).await.unwrap();
    let closing = session("o-4", n, 5_000);
    s.put_session(&closing).await.unwrap();
    // Another node's (whose id has this one's as a prefix).
    s.put_session(&session("o-5", "n-open2", 5_000))
        .await
        .unwrap();

    assert_eq!(s.open_sessions(n, 400).await.unwrap(), 4);
    assert_eq!(s.open_sessions(n, 600).await.unwrap(), 3);
    let mut closed = closing.clone();
    closed.state = SessionState::Closed;
    assert!(s.swap_session(&closed, 0).await.unwrap());
    assert_eq!(s.open_sessions(n, 600).await.unwrap(), 2);
    // Expired at exactly its expiry.
    assert_eq!(s.open_sessions(n, 1_000).await.unwrap(), 1);
    assert_eq!(s.open_sessions(n, 2_000).await.unwrap(), 0);
    // Challenging keeps it open.
    let mut c = s.session("o-2").await.unwrap().unwrap();
    c.bandwidth.up_mbps = Some(5.0);
    assert!(s.swap_session(&c, 0).await.unwrap());
    assert_eq!(s.open_sessions(n, 1_500).await.unwrap(), 1);
    assert_eq!(s.open_sessions("n-open2", 600).await.unwrap(), 1);
}

async fn heartbeats_grow_and_credit_uptime<S: Store>(s: &S) {
    const GRACE: u64 = 180_000;
    assert_eq!(
        s.heartbeat("hb-none", 1, "boot", 1_000, GRACE)
            .await
            .unwrap(),
        HeartbeatOutcome::UnknownNode
    );
    assert_eq!(
        s.standing("hb-none").await.unwrap(),
        NodeStanding::default()
    );

    assert!(s.insert_node(&node("hb", 0x40)).await.unwrap());
    assert_eq!(s.standing("hb").await.unwrap(), NodeStanding::default());
    // The first heartbeat records whatever its sequence (even 0) and
    // credits nothing.
    assert_eq!(
        s.heartbeat("hb", 0, "boot-1", 1_000, GRACE).await.unwrap(),
        HeartbeatOutcome::Recorded { uptime_ms: 0 }
    );
    assert_eq!(
        s.heartbeat("hb", 0, "boot-1", 2_000, GRACE).await.unwrap(),
        HeartbeatOutcome::Stale { last_seq: 0 }
    );
    assert_eq!(
        s.heartbeat("hb", 5, "boot-1", 61_000, GRACE).await.unwrap(),
        HeartbeatOutcome::Recorded { uptime_ms: 60_000 }
    );
    // Replays, and older sequence numbers.
    for seq in [5, 4, 0] {
        assert_eq!(
            s.heartbeat("hb", seq, "boot-1", 62_000, GRACE)
                .await
                .unwrap(),
            HeartbeatOutcome::Stale { last_seq: 5 }
        );
    }
    // Silent longer than the grace: no credit for the gap.
    assert_eq!(
        s.heartbeat("hb", 6, "boot-2", 61_000 + GRACE + 1, GRACE)
            .await
            .unwrap(),
        HeartbeatOutcome::Recorded { uptime_ms: 60_000 }
    );
    assert_eq!(
        s.heartbeat("hb", 7, "boot-2", 61_000 + GRACE + 1 + 30_000, GRACE)
            .await
            .unwrap(),
        HeartbeatOutcome::Recorded { uptime_ms: 90_000 }
    );
    let st = s.standing("hb").await.unwrap();
    assert_eq!(st.last_seq, 7);
    assert_eq!(st.last_seen_ms, Some(61_000 + GRACE + 1 + 30_000));
    assert_eq!(st.boot_id, "boot-2");
    assert_eq!(st.uptime_ms, 90_000);
    assert_eq!(st.tier, None);
}

async fn verdicts_newest_first_and_standing<S: Store>(s: &S) {
    // "v1" and "v10": one id a prefix of the other.
    assert!(s.verdicts("v1", 10).await.unwrap().is_empty());
    assert!(s.insert_node(&node("v1", 0x50)).await.unwrap());
    s.heartbeat("v1", 1, "boot", 1_000, 1).await.unwrap();
    let before = s.standing("v1").await.unwrap();

    let (a, b, c) = (
        verdict("sa", 100, false),
        verdict("sb", 300, false),
        verdict("sc", 200, false),
    );
    for v in [&a, &b, &c] {
        s.record_verdict("v1", v, None).await.unwrap();
    }
    s.record_verdict("v10", &verdict("sx", 400, false), None)
        .await
        .unwrap();
    // Not accepted: the standing does not change.
    assert_eq!(s.standing("v1").await.unwrap(), before);

    assert_eq!(
        s.verdicts("v1", 10).await.unwrap(),
        vec![b.clone(), c.clone(), a.clone()]
    );
    assert_eq!(s.verdicts("v1", 2).await.unwrap(), vec![b.clone(), c]);
    assert_eq!(s.verdicts("v1", 1).await.unwrap(), vec![b]);
    assert_eq!(
        s.verdicts("v10", 10).await.unwrap(),
        vec![verdict("sx", 400, false)]
    );

    let ok = verdict("sd", 500, true);
    s.record_verdict(
        "v1",
        &ok,
        Some((Some("cumulus".to_string()), Some(certificate()))),
    )
    .await
    .unwrap();
    let st = s.standing("v1").await.unwrap();
    assert_eq!(
        st,
        NodeStanding {
            tier: Some("cumulus".to_string()),
            certificate: Some(certificate()),
            image: Some(image()),
            pcr11: Some("11".repeat(32)),
            // The heartbeat's part is kept.
            ..before
        }
    );
    assert_eq!(s.verdicts("v1", 1).await.unwrap(), vec![ok]);

    // Accepted with no tier: tier and certificate are cleared.
    let mut none = verdict("se", 600, true);
    none.image = None;
    none.pcr11 = None;
    s.record_verdict("v1", &none, Some((None, None)))
        .await
        .unwrap();
    let st = s.standing("v1").await.unwrap();
    assert_eq!(
        (st.tier, st.certificate, st.image, st.pcr11),
        (None, None, None, None)
    );
    // A standing for a node that has none yet.
    s.record_verdict(
        "v-new",
        &verdict("sf", 1, true),
        Some((Some("nimbus".to_string()), None)),
    )
    .await
    .unwrap();
    assert_eq!(
        s.standing("v-new").await.unwrap().tier.as_deref(),
        Some("nimbus")
    );
}

async fn policy_round_trips<S: Store>(s: &S) {
    assert_eq!(s.policy().await.unwrap(), Policy::default());
    let p = Policy {
        required_pcrs: vec![4, 9, 11],
        images: vec![AllowedImage {
            version: "1.2.3".to_string(),
            slot: "b".to_string(),
            pcrs: BTreeMap::from([(11, Sha256Digest([0xaa; 32])), (4, Sha256Digest([4; 32]))]),
        }],
    };
    s.set_policy(&p).await.unwrap();
    assert_eq!(s.policy().await.unwrap(), p);
    s.set_policy(&Policy::default()).await.unwrap();
    assert_eq!(s.policy().await.unwrap(), Policy::default());
}

// --------------------------------------- two instances sharing one store

/// `a` and `b` are two handles on one store (for PostgreSQL: two
/// separately connected instances).
async fn two_instances<S: Store>(a: Arc<S>, b: Arc<S>) {
    // What one writes, the other reads and changes.
    let s0 = session("shared", "n-two", 10_000);
    a.put_session(&s0).await.unwrap();
    let mut s1 = b.session("shared").await.unwrap().unwrap();
    assert_eq!(s1, s0);
    s1.state = SessionState::Challenged;
    assert!(b.swap_session(&s1, 0).await.unwrap());
    assert_eq!(a.session("shared").await.unwrap().unwrap().version, 1);
    assert!(!a.swap_session(&s0, 0).await.unwrap(), "a stale read wins");
    assert_eq!(a.open_sessions("n-two", 0).await.unwrap(), 1);

    // Both swap the same version at once: exactly one wins, and the stored
    // record is the winner's.
    for i in 0..RACES {
        let id = format!("race-{i}");
        a.put_session(&session(&id, "n-race", 10_000))
            .await
            .unwrap();
        let mut tries = Vec::new();
        for (who, store) in [("a", a.clone()), ("b", b.clone())] {
            let mut next = session(&id, "n-race", 10_000);
            next.state = SessionState::Challenged;
            next.nonce = who.to_string();
            tries.push(tokio::spawn(async move {
                (who, store.swap_session(&next, 0).await.unwrap())
            }));
        }
        let mut winners = Vec::new();
        for t in tries {
            let (who, won) = t.await.unwrap();
            if won {
                winners.push(who);
            }
        }
        assert_eq!(winners.len(), 1, "round {i}: winners {winners:?}");
        let stored = b.session(&id).await.unwrap().unwrap();
        assert_eq!((stored.version, stored.nonce.as_str()), (1, winners[0]));
    }

    // A pending credential raced for: taken once.
    for i in 0..RACES {
        let id = format!("pend-{i}");
        a.put_pending(&pending(&id, 1)).await.unwrap();
        let (ta, tb) = (a.clone(), b.clone());
        let (ia, ib) = (id.clone(), id.clone());
        let ga = tokio::spawn(async move { ta.take_pending(&ia).await.unwrap() });
        let gb = tokio::spawn(async move { tb.take_pending(&ib).await.unwrap() });
        let got = [ga.await.unwrap(), gb.await.unwrap()];
        assert_eq!(
            got.iter().filter(|p| p.is_some()).count(),
            1,
            "round {i}: {got:?}"
        );
    }

    // One EK registered at once by two instances under two ids (and one
    // id with two EKs): one node.
    for i in 0..RACES {
        let ek = u8::try_from(i).unwrap();
        let (na, nb) = (
            node(&format!("ek-{i}-a"), ek),
            node(&format!("ek-{i}-b"), ek),
        );
        let (ta, tb) = (a.clone(), b.clone());
        let ga = tokio::spawn(async move { ta.insert_node(&na).await.unwrap() });
        let gb = tokio::spawn(async move { tb.insert_node(&nb).await.unwrap() });
        let (wa, wb) = (ga.await.unwrap(), gb.await.unwrap());
        assert!(wa ^ wb, "round {i}: EK race {wa} {wb}");

        let id = format!("id-{i}");
        let (na, nb) = (node(&id, 100 + ek), node(&id, 200 - ek));
        let (ta, tb) = (a.clone(), b.clone());
        let ga = tokio::spawn(async move { ta.insert_node(&na).await.unwrap() });
        let gb = tokio::spawn(async move { tb.insert_node(&nb).await.unwrap() });
        let (wa, wb) = (ga.await.unwrap(), gb.await.unwrap());
        assert!(wa ^ wb, "round {i}: id race {wa} {wb}");
    }

    // The same heartbeat through both: one recorded, one stale, and the
    // credited uptime adds up once.
    assert!(a.insert_node(&node("hb-two", 0xfe)).await.unwrap());
    for seq in 1..=RACES as u64 {
        let now = seq * 1_000;
        let (ta, tb) = (a.clone(), b.clone());
        let ga = tokio::spawn(async move { ta.heartbeat("hb-two", seq, "x", now, 60_000).await });
        let gb = tokio::spawn(async move { tb.heartbeat("hb-two", seq, "x", now, 60_000).await });
        let got = [ga.await.unwrap().unwrap(), gb.await.unwrap().unwrap()];
        let recorded = got
            .iter()
            .filter(|o| matches!(o, HeartbeatOutcome::Recorded { .. }))
            .count();
        assert_eq!(recorded, 1, "seq {seq}: {got:?}");
        assert!(
            got.contains(&HeartbeatOutcome::Stale { last_seq: seq }),
            "seq {seq}: {got:?}"
        );
    }
    let st = b.standing("hb-two").await.unwrap();
    assert_eq!(st.last_seq, RACES as u64);
    assert_eq!(st.uptime_ms, (RACES as u64 - 1) * 1_000);
}

// ----------------------------------------------------------- the backends

fn redb(dir: &tempfile::TempDir) -> RedbStore {
    RedbStore::open(&dir.path().join("registry.redb")).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_conformance() {
    let dir = tempfile::tempdir().unwrap();
    conformance(&redb(&dir)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_two_handles() {
    // One redb file cannot be opened twice; two handles on one database
    // are what two tasks of one registry have.
    let dir = tempfile::tempdir().unwrap();
    let s = redb(&dir);
    two_instances(Arc::new(s.clone()), Arc::new(s)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redb_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = redb(&dir);
    assert!(s.insert_node(&node("kept", 9)).await.unwrap());
    drop(s);
    assert_eq!(
        redb(&dir).node("kept").await.unwrap(),
        Some(node("kept", 9))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_conformance() {
    let Some(pg) = PgCluster::start() else { return };
    let store = PgStore::connect(&pg.url()).await.unwrap();
    conformance(&store).await;
    // Connecting again (a restarted instance) finds the schema and the data.
    let again = PgStore::connect(&pg.url()).await.unwrap();
    assert_eq!(again.node("Zed").await.unwrap(), Some(node("Zed", 1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_instances() {
    let Some(pg) = PgCluster::start() else { return };
    let url = pg.new_database("shared").unwrap();
    // Instances starting at once each create the schema: the advisory lock
    // makes that safe.
    let starts: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PgStore::connect(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for s in starts {
        stores.push(Arc::new(s.await.unwrap().unwrap()));
    }
    two_instances(stores[0].clone(), stores[1].clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_is_a_backend_error() {
    let Some(pg) = PgCluster::start() else { return };
    let url = format!("postgres://postgres@127.0.0.1:{}/no_such_db", pg.port());
    let e = PgStore::connect(&url).await.unwrap_err().to_string();
    assert!(
        e.starts_with("storage (postgres): connecting"),
        "unexpected error: {e}"
    );
}
