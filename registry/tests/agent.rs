//! The node agent's state machine against a real registry: down at first
//! (the agent backs off and records why), then up (it registers and is
//! ranked), and restarted (it keeps its identity and state from /var).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::time::Duration;

use fluxnode_node::agent::{Agent, Config};
use fluxnode_protocol::session::ImageInfo;
use fluxnode_protocol::types::Sha256Digest;
use fluxnode_registry::config::FileConfig;
use fluxnode_registry::server;
use fluxnode_registry::store::{AllowedImage, Policy, Store as _};
use fluxnode_testkit::swtpm::Swtpm;

#[test]
fn the_agent_waits_out_a_down_registry_registers_attests_and_keeps_its_state() {
    let Some(sw) = Swtpm::start() else { return };
    let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/registry-tests");
    std::fs::create_dir_all(&base).unwrap();
    let tmp = tempfile::tempdir_in(base).unwrap();
    let cfg = FileConfig {
        listen: "127.0.0.1:0".into(),
        profile: "quick".into(),
        ..FileConfig::default()
    };
    let dir =
        fluxnode_registry::pki::init(&tmp.path().join("reg"), &["127.0.0.1".into()], &cfg).unwrap();
    std::fs::copy(sw.ca_root_cert(), dir.path("ek-ca/root.pem")).unwrap();
    std::fs::copy(
        sw.ca_intermediate_cert(),
        dir.path("ek-ca/intermediates/issuer.pem"),
    )
    .unwrap();
    let mut policy = Policy::default();
    policy.images.push(AllowedImage {
        version: "test".into(),
        slot: "a".into(),
        pcrs: [9u8, 11, 12]
            .into_iter()
            .map(|i| (i, Sha256Digest([0; 32])))
            .collect(),
    });
    {
        let store = server::open_redb(&dir).unwrap();
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(store.set_policy(&policy))
            .unwrap();
    }
    // A port that nothing listens on yet: the registry comes up there later.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let state = tmp.path().join("node");
    // The update client's real local API: the agent tells it when the node
    // is idle (an update's reboot held for that may go ahead).
    let ota = fluxnode_ota::api::Api::default();
    let ota_sock = tmp.path().join("ota.sock");
    ota.spawn(&ota_sock).unwrap();
    let config = Config {
        registry: format!("https://127.0.0.1:{port}"),
        ca_pem: std::fs::read(dir.path("ca.pem")).unwrap(),
        state_dir: state.clone(),
        bench_dir: state.clone(),
        tcti: sw.tcti(),
        session_interval: Duration::from_secs(6 * 3600),
        jitter: Duration::from_secs(60),
        retry_refused: Duration::from_secs(3600),
        heartbeat: Duration::from_secs(60),
        image: ImageInfo {
            version: "test".into(),
            slot: "a".into(),
        },
        boot_id: "boot-1".into(),
        event_log: None,
        ota_socket: Some(ota_sock),
    };

    // Down: the agent records why and waits, growing its wait.
    let mut agent = Agent::new(config.clone()).unwrap();
    let wait = agent.step();
    assert!(wait >= Duration::from_secs(3), "{wait:?}");
    let st = agent.state().clone();
    assert!(st.node_id.is_none());
    assert_eq!(st.registry_reachable, Some(false));
    assert!(
        st.last_error.as_deref().unwrap().contains("unreachable"),
        "{st:?}"
    );
    let key = std::fs::read(state.join("node.key")).unwrap();
    let ak = std::fs::read(state.join("ak.json")).unwrap();

    assert!(ota.idle(), "nothing in flight: idle");
    // Watch the update client's view while the agent works: busy during
    // the session (seconds of benchmarks), idle again after.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![true]));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (ota, seen, stop) = (ota.clone(), seen.clone(), stop.clone());
        std::thread::spawn(move || {
            loop {
                // Read once more after `stop`: the last word was taken
                // before the agent's step returned.
                let last = stop.load(std::sync::atomic::Ordering::Relaxed);
                let now = ota.idle();
                let mut s = seen.lock().unwrap();
                if s.last() != Some(&now) {
                    s.push(now);
                }
                drop(s);
                if last {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };

    // Up: it registers on its next turn, then attests.
    let running = server::start(&dir, Some(&format!("127.0.0.1:{port}"))).unwrap();
    let mut agent = Agent::new(config.clone()).unwrap(); // as after a restart: no backoff left
    for _ in 0..4 {
        agent.step();
        if agent.state().last_verdict.is_some() {
            break;
        }
    }
    let st = agent.state().clone();
    let v = st.last_verdict.as_ref().expect("a verdict");
    assert!(v.accepted, "{:?}", v.rejection);
    assert!(st.next_session_ms.is_some());
    assert_eq!(st.attested_boot_id.as_deref(), Some("boot-1"));
    assert!(state.join("tier-certificate.json").exists());
    assert!(st.last_heartbeat_ms.is_some(), "a heartbeat went out");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    assert_eq!(
        *seen.lock().unwrap(),
        [true, false, true],
        "the update client heard busy for the session, then idle"
    );

    // Restarted on the same boot: same identity, nothing to do but wait.
    drop(agent);
    let mut agent = Agent::new(config.clone()).unwrap();
    assert_eq!(agent.state().node_id, st.node_id);
    let wait = agent.step();
    assert!(wait >= Duration::from_secs(5), "{wait:?}");
    assert_eq!(
        agent.state().last_verdict_ms,
        st.last_verdict_ms,
        "no new session on the same boot"
    );
    assert_eq!(std::fs::read(state.join("node.key")).unwrap(), key);
    assert_eq!(std::fs::read(state.join("ak.json")).unwrap(), ak);

    // A new boot attests again.
    let mut agent = Agent::new(Config {
        boot_id: "boot-2".into(),
        ..config
    })
    .unwrap();
    agent.step();
    assert_eq!(agent.state().attested_boot_id.as_deref(), Some("boot-2"));
    assert!(agent.state().last_verdict_ms > st.last_verdict_ms);
    running.stop().unwrap();
}
