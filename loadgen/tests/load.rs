//! A short load run: 20 simulated nodes register and run a whole session
//! each against a real registry (HTTPS on loopback), on redb and on
//! PostgreSQL; every session must be accepted.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::sync::Mutex;

use fluxnode_loadgen::sessions::{self, Options, StoreChoice};
use fluxnode_loadgen::softnode::{AkKind, EkPool};

/// Fixed base keys: RSA key generation is slow in debug builds.
const KEYS: &str = include_str!("fixtures/ek-base.pem");

/// One run at a time: the CPU split counts this process's registry
/// threads by name, so two registries at once would count each other's.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn options(store: StoreChoice) -> Options {
    Options {
        nodes: 20,
        store,
        ak: AkKind::Ecc,
        cpu_events: 5,
        precompute: false,
        work_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/loadgen-tests"),
        progress: false,
    }
}

fn check(r: &sessions::LoadReport) {
    let table = sessions::table(r);
    eprintln!("{table}");
    assert_eq!(r.accepted, 20, "{table}");
    assert_eq!((r.failed, r.refused.len()), (0, 0), "{table}");
    // Every phase was timed for every node.
    for (name, l) in r.registration.iter().chain(&r.session) {
        assert_eq!(l.n, 20, "{name}");
    }
    let total = r
        .session
        .iter()
        .find(|(n, _)| n == "session (total)")
        .unwrap();
    // A session includes its claimed benchmark time (the quick profile's
    // 1 s of CPU and a 50 ms disk run) between the quotes.
    assert!(total.1.p50_ms >= 1_050.0, "{table}");
    assert!(
        r.sessions_per_s > 0.0 && r.registry_cpu_ms_per_session > 0.0,
        "{table}"
    );
}

#[test]
fn twenty_nodes_on_redb_are_all_accepted() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let pool = EkPool::from_pem_bundle(KEYS).unwrap();
    assert!(pool.capacity() >= 20);
    let r = sessions::run(&options(StoreChoice::Redb), &pool).unwrap();
    check(&r);
}

#[test]
fn twenty_nodes_on_postgresql_are_all_accepted() {
    let Some(pg) = fluxnode_testkit::postgres::PgCluster::start() else {
        return;
    };
    let url = pg.new_database("loadgen").unwrap();
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let pool = EkPool::from_pem_bundle(KEYS).unwrap();
    let r = sessions::run(&options(StoreChoice::Url(url)), &pool).unwrap();
    check(&r);
}
